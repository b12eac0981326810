//! Routing: `POST /v1/route` and each provider's signed webhook through a hush server in
//! this process, against a *floor router* (a minimal axum handler that parses the same
//! JSON body, does one Redis GET of a route-sized value and answers JSON) and, for context,
//! raw Redis GETs (one connection per caller, one GET in flight each) and a *relay floor*
//! (the floor router with hush's own Redis step, the relay function, in place of the GET),
//! all at the same concurrency and from the same client. They are measured in turns, a slice at a time, so
//! a change in the machine's load touches all alike. Beside Twilio's voice webhook (a call
//! connected by its route) goes the report of a PIN typed at the prompt of a PIN session's
//! call, on a pool with `pin: always` in the same server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use redis::aio::MultiplexedConnection;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use hush::broker::{Broker, UNNAMED_REF_TTL_MS};
use hush::domain::session::Kind;
use hush::domain::{
    Access, E164, Initiator, Mode, PinMode, PoolName, PoolPolicy, SessionId, interaction_code,
};
use hush::store::{Claimed, PinClaim, ShardKeys};

use super::fixtures::{Participants, bench_config, bench_pool, named_pool, new_session};
use super::load::{
    Http, ROUNDS, RanOut, Rate, Samples, Tally, Window, drive_http, drive_http_once, redis_cpu,
    send_all,
};
use super::webhooks::{Hook, Signers};

const ROUTE_NUMBERS: usize = 20;
const ROUTE_SESSIONS: usize = 200;
/// PIN sessions: a pool of their own (its numbers follow the direct pool's), every session
/// given PINs, none a route.
const PIN_POOL: &str = "bench-pin";
const PIN_NUMBERS: usize = 4;
const PIN_SESSIONS: usize = 200;
/// Times a slice of PIN calls is taken before running out of prepared calls is an error.
const PIN_SLICE_TRIES: u32 = 3;
/// What hush answers a call it asks for a PIN.
const PROMPT_MARK: &str = "<Gather";
/// A stand-in for a route record: the value the raw and floor baselines GET.
const BASELINE_KEY: &str = "bench:baseline";
const BASELINE_VALUE: &str = "s0123456789abcdef|b|1767225600000|1767229200000|\
                              c2VhbGVkLW51bWJlci1zdGFuZC1pbi1mb3ItdGhlLWJlbmNoLWFuZC1zb21l\
                              LW1vcmUtYnl0ZXMtb2YtYS1ub25jZS1hbmQtdGFn";

/// What the routing measurement found.
pub(super) struct Routing {
    pub(super) raw: Rate,
    pub(super) floor: Rate,
    /// The floor router doing hush's Redis step instead of its GET.
    pub(super) relay_floor: Rate,
    pub(super) route: Rate,
    pub(super) hooks: Vec<(Hook, Rate)>,
    /// Twilio's digits webhook with the right PIN, each call asked for it first (untimed).
    pub(super) pin: Rate,
}

/// A participant of a PIN session, who calls its proxy number and types their PIN.
struct PinCaller {
    from: String,
    proxy: String,
    pin: String,
}

/// Raw GETs, the floor router, hush's `POST /v1/route` and every provider webhook,
/// measured in turns so that a change in the machine's load during the run touches all
/// alike.
pub(super) async fn routing(
    url: &str,
    concurrency: usize,
    slice: Duration,
) -> anyhow::Result<Routing> {
    let client = redis::Client::open(url)?;
    let mut setup = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("SET")
        .arg(BASELINE_KEY)
        .arg(BASELINE_VALUE)
        .query_async(&mut setup)
        .await?;

    // The floor router: it gets the very requests hush gets and answers each with one GET
    // over one shared multiplexed connection, as hush's store has.
    let app = axum::Router::new()
        .route("/v1/route", axum::routing::post(floor_route))
        .with_state(client.get_multiplexed_async_connection().await?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let floor_addr = listener.local_addr()?;
    let token = CancellationToken::new();
    let serve = axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned());
    let floor_server = tokio::spawn(async move { serve.await });

    // hush, in this process, routing calls and texts of open sessions, with every provider
    // configured.
    let signers = Arc::new(Signers::new());
    let mut config = bench_config(url, "route");
    signers.configure(&mut config);
    let broker = hush::build_broker(&config)?;
    let pool = bench_pool(&broker, ROUTE_NUMBERS).await?;
    let key = hush::create_api_key(&config, "bench", &["admin"]).await?;
    let people = Participants::default();
    let mut requests = Vec::with_capacity(2 * ROUTE_SESSIONS);
    let mut pairs = Vec::with_capacity(2 * ROUTE_SESSIONS);
    for _ in 0..ROUTE_SESSIONS {
        let (a, b) = people.pair();
        let mut new = new_session(&pool, &a, &b);
        new.mode = Mode::VoiceSms;
        let view = broker.create_session(new).await?;
        for caller in [&a, &b] {
            requests.push(route_request(&key, caller.reveal(), &view.proxy_number));
            pairs.push((caller.reveal().to_string(), view.proxy_number.clone()));
        }
    }
    let pin_callers = Arc::new(
        pin_sessions(&broker, &people)
            .await
            .context("setting up PIN sessions")?,
    );
    let requests = Arc::new(requests);
    let pairs = Arc::new(pairs);
    let relay_floor_addr = serve_relay_floor(&broker, &pairs, &token).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let hush_addr = listener.local_addr()?;
    let hush_server = tokio::spawn(hush::run(config, listener, token.clone()));

    let measured = async {
        // One call of each kind first: the bench must time connected calls, not refusals.
        let mut http = Http::connect(hush_addr).await?;
        let (status, body) = http.send(&requests[0]).await?;
        if status != 200 || !String::from_utf8_lossy(body).contains("\"connect\"") {
            bail!(
                "hush answered a route with {status}: {}",
                String::from_utf8_lossy(body)
            );
        }
        for hook in Hook::ALL {
            let (from, to) = &pairs[0];
            let (status, body) = http.send(&signers.request(hook, from, to, 0)).await?;
            let body = String::from_utf8_lossy(body);
            if status != 200 || !body.contains(hook.connected_mark()) {
                bail!(
                    "hush answered a {} webhook with {status}: {body}",
                    hook.name()
                );
            }
        }
        // A PIN call: the prompt first, then the PIN connects.
        let first = pin_call(&signers, &pin_callers, 0, 0);
        let (status, body) = http.send(&first.voice).await?;
        let body = String::from_utf8_lossy(body);
        if status != 200 || !body.contains(PROMPT_MARK) {
            bail!("hush did not ask a call to a PIN session for its PIN: {status}: {body}");
        }
        let (status, body) = http.send(&first.digits).await?;
        let body = String::from_utf8_lossy(body);
        if status != 200 || !body.contains(Hook::TwilioVoice.connected_mark()) {
            bail!("hush answered the right PIN of a PIN session's call with {status}: {body}");
        }
        drop(http);
        let (mut raw, mut floor, mut route) = <(Samples, Samples, Samples)>::default();
        let mut relay_floor = Samples::default();
        let mut hooks = vec![Samples::default(); Hook::ALL.len()];
        let mut pin = Samples::default();
        let mut sent = 1u64;
        let mut pin_rate_last = 0.0f64;
        for _ in 0..ROUNDS {
            let raw_before = raw.ok();
            let (w, window) = raw_get(&client, concurrency, slice).await?;
            raw.add_sampled(w, window, redis_cpu(&client, window))
                .await?;
            let before = floor.ok();
            let (w, window) = drive_http(floor_addr, &requests, concurrency, slice);
            floor
                .add_sampled(w, window, redis_cpu(&client, window))
                .await?;
            let (w, window) = drive_http(relay_floor_addr, &requests, concurrency, slice);
            relay_floor
                .add_sampled(w, window, redis_cpu(&client, window))
                .await?;
            let (w, window) = drive_http(hush_addr, &requests, concurrency, slice);
            route
                .add_sampled(w, window, redis_cpu(&client, window))
                .await?;
            // Enough fresh requests for the slice and its warm-up at the pace of raw GETs or
            // of the floor router, whichever was faster in this round, with room to spare: no
            // webhook is faster than either, and running out would end the bench.
            let per_sec =
                (raw.ok() - raw_before).max(floor.ok() - before) as f64 / slice.as_secs_f64();
            let count = (per_sec * (slice.as_secs_f64() + 0.5) * 1.5) as usize + 2_000;
            let hooks_before: Vec<u64> = hooks.iter().map(Samples::ok).collect();
            for (hook, samples) in Hook::ALL.into_iter().zip(hooks.iter_mut()) {
                let fresh = Arc::new(
                    fresh_requests(&signers, &pairs, hook, count, sent)
                        .await
                        .with_context(|| format!("signing {} webhooks", hook.name()))?,
                );
                sent += count as u64;
                let (w, window) = drive_http_once(hush_addr, &fresh, concurrency, slice);
                samples
                    .add_sampled(w, window, redis_cpu(&client, window))
                    .await
                    .with_context(|| format!("{} webhooks", hook.name()))?;
            }
            // PIN calls: each is asked for its PIN first, untimed, so they are prepared by
            // the pace of this round's fastest webhook (or of the last round's PIN calls, if
            // faster), not the floor's, which would make the asking outlast the timing;
            // `pin_slice` takes the slice again with more should they run out.
            let mut per_sec = pin_rate_last;
            for (samples, before) in hooks.iter().zip(&hooks_before) {
                per_sec = per_sec.max((samples.ok() - before) as f64 / slice.as_secs_f64());
            }
            let count = (per_sec * (slice.as_secs_f64() + 0.5) * 2.0) as usize + 4_000;
            let round = pin_slice(
                hush_addr,
                &client,
                &signers,
                &pin_callers,
                (count, &mut sent),
                concurrency,
                slice,
            )
            .await?;
            pin_rate_last = round.ok() as f64 / slice.as_secs_f64();
            pin.merge(&round)?;
        }
        let mut rates = Vec::with_capacity(hooks.len());
        for (hook, samples) in Hook::ALL.into_iter().zip(&hooks) {
            rates.push((hook, samples.rate(hook.name())?));
        }
        Ok(Routing {
            raw: raw.rate("raw Redis GET")?,
            floor: floor.rate("floor router")?,
            relay_floor: relay_floor.rate("relay floor")?,
            route: route.rate("hush POST /v1/route")?,
            hooks: rates,
            pin: pin.rate("twilio_pin")?,
        })
    }
    .await;

    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), floor_server).await;
    match tokio::time::timeout(Duration::from_secs(10), hush_server).await {
        Ok(Ok(Err(e))) => return Err(e.context("hush server failed")),
        Ok(Err(e)) => return Err(anyhow::Error::new(e).context("hush server panicked")),
        _ => {}
    }
    measured
}

/// `count` signed webhooks of kind `hook`, ids numbered from `first`, callers and proxy
/// numbers taken in turn from `pairs`; signed on the blocking pool, two halves side by side.
async fn fresh_requests(
    signers: &Arc<Signers>,
    pairs: &Arc<Vec<(String, String)>>,
    hook: Hook,
    count: usize,
    first: u64,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let half = count / 2;
    let make = |from: usize, to: usize| {
        let (signers, pairs) = (signers.clone(), pairs.clone());
        tokio::task::spawn_blocking(move || {
            (from..to)
                .map(|i| {
                    let (caller, proxy) = &pairs[i % pairs.len()];
                    signers.request(hook, caller, proxy, first + i as u64)
                })
                .collect::<Vec<_>>()
        })
    };
    let (a, b) = (make(0, half), make(half, count));
    let mut out = a.await?;
    out.extend(b.await?);
    Ok(out)
}

/// A pool with `pin: always` and [`PIN_SESSIONS`] sessions on it between new pairs; each
/// participant with the PIN they were given.
async fn pin_sessions(broker: &Broker, people: &Participants) -> anyhow::Result<Vec<PinCaller>> {
    let policy = PoolPolicy {
        pin: PinMode::Always,
        ..PoolPolicy::default()
    };
    let pool: PoolName = named_pool(broker, PIN_POOL, ROUTE_NUMBERS, PIN_NUMBERS, &policy).await?;
    let mut callers = Vec::with_capacity(2 * PIN_SESSIONS);
    for _ in 0..PIN_SESSIONS {
        let (a, b) = people.pair();
        let view = broker.create_session(new_session(&pool, &a, &b)).await?;
        let pins = match (&view.access, &view.pins) {
            (Access::Pin, Some(pins)) => pins,
            _ => bail!("a session on a pool with `pin: always` came without PINs"),
        };
        for caller in [&a, &b] {
            let pin = pins
                .iter()
                .find(|p| p.participant.as_deref() == Some(caller.reveal()))
                .context("a PIN session without a participant's PIN")?;
            callers.push(PinCaller {
                from: caller.reveal().to_string(),
                proxy: view.proxy_number.clone(),
                pin: pin.pin.clone(),
            });
        }
    }
    Ok(callers)
}

/// One timed slice of PIN calls: `count` calls signed (ids from `sent`, which moves on),
/// every one asked for its PIN, then their digits reports timed. Should they run out before
/// the window ends (the machine's load changed), the slice is taken again with twice as
/// many, up to [`PIN_SLICE_TRIES`] times.
async fn pin_slice(
    addr: SocketAddr,
    client: &redis::Client,
    signers: &Arc<Signers>,
    callers: &Arc<Vec<PinCaller>>,
    (mut count, sent): (usize, &mut u64),
    concurrency: usize,
    slice: Duration,
) -> anyhow::Result<Samples> {
    let mut tries = 1;
    loop {
        let (voice, digits) = fresh_pin_calls(signers, callers, count, *sent)
            .await
            .context("signing PIN calls")?;
        *sent += count as u64;
        send_all(addr, &Arc::new(voice), concurrency, PROMPT_MARK)
            .await
            .context("asking PIN calls for their PIN (untimed)")?;
        let mut samples = Samples::default();
        let (w, window) = drive_http_once(addr, &Arc::new(digits), concurrency, slice);
        match samples
            .add_sampled(w, window, redis_cpu(client, window))
            .await
        {
            Ok(()) => return Ok(samples),
            Err(e) if e.downcast_ref::<RanOut>().is_some() && tries < PIN_SLICE_TRIES => {
                tries += 1;
                count *= 2;
            }
            Err(e) => return Err(e.context("twilio_pin webhooks")),
        }
    }
}

/// The `i`th caller's call, its CallSid unique by `n`.
fn pin_call(
    signers: &Signers,
    callers: &[PinCaller],
    i: usize,
    n: u64,
) -> super::webhooks::PinCall {
    let c = &callers[i % callers.len()];
    signers.twilio_pin_call(&c.from, &c.proxy, &c.pin, n)
}

/// `count` PIN calls, ids numbered from `first`, callers taken in turn: their voice
/// webhooks and their digits reports, in the same order; signed on the blocking pool, two
/// halves side by side.
async fn fresh_pin_calls(
    signers: &Arc<Signers>,
    callers: &Arc<Vec<PinCaller>>,
    count: usize,
    first: u64,
) -> anyhow::Result<(Vec<Vec<u8>>, Vec<Vec<u8>>)> {
    let half = count / 2;
    let make = |from: usize, to: usize| {
        let (signers, callers) = (signers.clone(), callers.clone());
        tokio::task::spawn_blocking(move || {
            (from..to)
                .map(|i| {
                    let call = pin_call(&signers, &callers, i, first + i as u64);
                    (call.voice, call.digits)
                })
                .unzip::<_, _, Vec<_>, Vec<_>>()
        })
    };
    let (a, b) = (make(0, half), make(half, count));
    let (mut voice, mut digits) = a.await?;
    let (more_voice, more_digits) = b.await?;
    voice.extend(more_voice);
    digits.extend(more_digits);
    Ok((voice, digits))
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
                let started = std::time::Instant::now();
                let got: redis::RedisResult<Option<String>> = redis::cmd("GET")
                    .arg(BASELINE_KEY)
                    .query_async(&mut conn)
                    .await;
                tally.record(&window, started, matches!(got, Ok(Some(_))));
            }
            Ok(tally)
        });
    }
    Ok((workers, window))
}

/// The body `POST /v1/route` takes.
#[derive(serde::Deserialize)]
struct FloorRequest {
    from: String,
    to: String,
    kind: String,
    #[serde(default)]
    reference: Option<String>,
}

/// An answer the size and shape of hush's `connect`.
#[derive(serde::Serialize)]
struct FloorAnswer<'a> {
    action: &'static str,
    kind: &'a str,
    caller_id: &'a str,
    to: &'a str,
    reference: Option<&'a str>,
    record: &'a str,
}

/// The floor router's one handler: parse, one GET, answer JSON.
async fn floor_route(
    State(mut conn): State<MultiplexedConnection>,
    axum::Json(req): axum::Json<FloorRequest>,
) -> Response {
    match redis::cmd("GET")
        .arg(BASELINE_KEY)
        .query_async::<Option<String>>(&mut conn)
        .await
    {
        Ok(Some(record)) => axum::Json(FloorAnswer {
            action: "connect",
            kind: &req.kind,
            caller_id: &req.to,
            to: &req.from,
            reference: req.reference.as_deref(),
            record: &record,
        })
        .into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// What the relay floor knows of each caller before a request: what hush works out in
/// process before its one Redis call (the proxy number's shard from its cache, the caller's
/// blind index), so that the floor's request costs the floor router's work plus hush's
/// Redis step and nothing of hush's own.
struct RelayFloor {
    broker: Broker,
    callers: HashMap<String, (ShardKeys, String)>,
}

/// Serves the relay floor beside the floor router, for the callers and numbers of `pairs`,
/// until `token` is cancelled.
async fn serve_relay_floor(
    broker: &Broker,
    pairs: &[(String, String)],
    token: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let mut callers = HashMap::with_capacity(pairs.len());
    for (from, to) in pairs {
        let proxy = E164::parse_syntax(to).map_err(|e| anyhow::anyhow!("{to}: {e:?}"))?;
        let caller = E164::parse_syntax(from).map_err(|e| anyhow::anyhow!("caller: {e:?}"))?;
        let shard = broker
            .shard_of_number(&proxy)
            .await?
            .context("a bench number without a pool")?;
        callers.insert(from.clone(), (shard, broker.crypto().blind_index(&caller)));
    }
    let state = Arc::new(RelayFloor {
        broker: broker.clone(),
        callers,
    });
    let app = axum::Router::new()
        .route("/v1/route", axum::routing::post(relay_floor_route))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serve = axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned());
    tokio::spawn(async move { serve.await });
    Ok(addr)
}

/// The relay floor's one handler: parse, the relay function with the arguments hush would
/// give it for this request (a new reference and interaction, as hush makes for a route
/// without a reference of its own), answer JSON.
async fn relay_floor_route(
    State(floor): State<Arc<RelayFloor>>,
    axum::Json(req): axum::Json<FloorRequest>,
) -> Response {
    let Some((shard, idx)) = floor.callers.get(&req.from) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let reference = format!("unnamed_{}", SessionId::new(0, 0).key());
    let interaction = format!("int_{}", SessionId::new(0, 0).key());
    let claimed = floor
        .broker
        .store()
        .relay_claim(
            shard,
            Some(idx),
            &req.to,
            floor.broker.now_ms(),
            interaction_code(Kind::Voice, Initiator::Participant),
            "api",
            &reference,
            &interaction,
            UNNAMED_REF_TTL_MS,
            None,
            false,
            PinClaim::under(&PoolPolicy::default(), "", None),
        )
        .await;
    match claimed {
        Ok(Claimed::Connect { reach, .. }) => axum::Json(FloorAnswer {
            action: "connect",
            kind: &req.kind,
            caller_id: &req.to,
            to: &req.from,
            reference: Some(&reference),
            record: &reach.blob,
        })
        .into_response(),
        Ok(_) => StatusCode::NOT_FOUND.into_response(),
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
