//! Routing: `POST /v1/route` through a hush server in this process, against raw Redis GETs
//! (one connection per caller, one GET in flight each) and against a minimal axum handler
//! doing one GET, all at the same concurrency and from the same client. The three are
//! measured in turns, a slice at a time, so a change in the machine's load touches all alike.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use redis::aio::MultiplexedConnection;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::fixtures::{Participants, bench_config, bench_pool, new_session};
use super::load::{Http, ROUNDS, Rate, Samples, Tally, Window, drive_http};

const ROUTE_NUMBERS: usize = 20;
const ROUTE_SESSIONS: usize = 200;
/// A stand-in for a route record: the value the raw and minimal baselines GET.
const BASELINE_KEY: &str = "bench:baseline";
const BASELINE_VALUE: &str = "s0123456789abcdef|v|1767225600000|1767229200000|\
                              c2VhbGVkLW51bWJlci1zdGFuZC1pbi1mb3ItdGhlLWJlbmNo";

/// Raw GETs, the minimal server and hush, measured in turns so that a change in the
/// machine's load during the run touches all three alike.
pub(super) async fn routing(
    url: &str,
    concurrency: usize,
    slice: Duration,
) -> anyhow::Result<(Rate, Rate, Rate)> {
    let client = redis::Client::open(url)?;
    let mut setup = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("SET")
        .arg(BASELINE_KEY)
        .arg(BASELINE_VALUE)
        .query_async(&mut setup)
        .await?;

    // The minimal server: it gets the very requests hush gets and answers each with one GET
    // over one shared multiplexed connection, as hush's store has.
    let app = axum::Router::new()
        .route("/v1/route", axum::routing::post(minimal_get))
        .with_state(client.get_multiplexed_async_connection().await?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let minimal_addr = listener.local_addr()?;
    let token = CancellationToken::new();
    let serve = axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned());
    let minimal_server = tokio::spawn(async move { serve.await });

    // hush, in this process, routing calls of open sessions.
    let config = bench_config(url, "route");
    let broker = hush::build_broker(&config)?;
    let pool = bench_pool(&broker, ROUTE_NUMBERS).await?;
    let key = hush::create_api_key(&config, "bench", &["admin"]).await?;
    let people = Participants::default();
    let mut requests = Vec::with_capacity(2 * ROUTE_SESSIONS);
    for _ in 0..ROUTE_SESSIONS {
        let (a, b) = people.pair();
        let view = broker.create_session(new_session(&pool, &a, &b)).await?;
        requests.push(route_request(&key, a.reveal(), &view.proxy_number));
        requests.push(route_request(&key, b.reveal(), &view.proxy_number));
    }
    let requests = Arc::new(requests);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let hush_addr = listener.local_addr()?;
    let hush_server = tokio::spawn(hush::run(config, listener, token.clone()));

    let measured = async {
        // One call first: the bench must time connected calls, not refusals.
        let mut http = Http::connect(hush_addr).await?;
        let (status, body) = http.send(&requests[0]).await?;
        if status != 200 || !String::from_utf8_lossy(body).contains("\"connect\"") {
            bail!(
                "hush answered a route with {status}: {}",
                String::from_utf8_lossy(body)
            );
        }
        drop(http);
        let (mut raw, mut minimal, mut route) = Default::default();
        for _ in 0..ROUNDS {
            let (w, window) = raw_get(&client, concurrency, slice).await?;
            Samples::add(&mut raw, w, window).await?;
            let (w, window) = drive_http(minimal_addr, &requests, concurrency, slice);
            Samples::add(&mut minimal, w, window).await?;
            let (w, window) = drive_http(hush_addr, &requests, concurrency, slice);
            Samples::add(&mut route, w, window).await?;
        }
        Ok((
            raw.rate("raw Redis GET")?,
            minimal.rate("minimal axum handler")?,
            route.rate("hush POST /v1/route")?,
        ))
    }
    .await;

    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), minimal_server).await;
    match tokio::time::timeout(Duration::from_secs(10), hush_server).await {
        Ok(Ok(Err(e))) => return Err(e.context("hush server failed")),
        Ok(Err(e)) => return Err(anyhow::Error::new(e).context("hush server panicked")),
        _ => {}
    }
    measured
}

/// GETs of one small key, one connection per caller, each caller waiting for its reply.
async fn raw_get(
    client: &redis::Client,
    concurrency: usize,
    slice: Duration,
) -> anyhow::Result<(JoinSet<anyhow::Result<Tally>>, Window)> {
    let mut conns = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        conns.push(client.get_multiplexed_async_connection().await?);
    }
    let window = Window::after_warmup(slice);
    let mut workers = JoinSet::new();
    for mut conn in conns {
        workers.spawn(async move {
            let mut tally = Tally::default();
            while window.running() {
                let got: redis::RedisResult<Option<String>> = redis::cmd("GET")
                    .arg(BASELINE_KEY)
                    .query_async(&mut conn)
                    .await;
                tally.record(&window, matches!(got, Ok(Some(_))));
            }
            Ok(tally)
        });
    }
    Ok((workers, window))
}

async fn minimal_get(State(conn): State<MultiplexedConnection>, _body: Bytes) -> Response {
    let mut conn = conn.clone();
    match redis::cmd("GET")
        .arg(BASELINE_KEY)
        .query_async::<Option<String>>(&mut conn)
        .await
    {
        Ok(Some(v)) => (StatusCode::OK, v).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

fn route_request(key: &str, from: &str, to: &str) -> Vec<u8> {
    let body = serde_json::json!({ "from": from, "to": to, "kind": "voice" }).to_string();
    format!(
        "POST /v1/route HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
