//! Redis going away: hush answers 503 `store_unavailable` with `Retry-After` (never a 500
//! and never a hang), `/readyz` says so, and hush recovers by itself when Redis is back.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_503_with_retry_after_and_hush_recovers() {
    // A private, persistent Redis: this test kills it.
    let redis = RedisServer::start(true);
    let app = TestApp::start_on(fresh_config(&redis.url())).await;
    app.pool("outage", json!({}), &proxies(2)).await;
    let (a, b) = (participant(0), participant(1));
    let s = app.open_session("outage", &a, &b, None).await;
    app.get("/readyz").await.expect(200);

    redis.kill();

    let started = Instant::now();
    let r = app
        .create_session("outage", &a, &participant(2), None)
        .await;
    r.expect_problem(503, "store_unavailable");
    let retry = r
        .header("retry-after")
        .expect("a 503 must carry Retry-After");
    assert!(
        retry.trim().parse::<u64>().is_ok(),
        "Retry-After should be a number of seconds: {retry:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "hush took {:?} to report the outage",
        started.elapsed()
    );
    for r in [
        app.get_session(s["id"].as_str().unwrap()).await,
        app.route(&a, s["proxy_number"].as_str().unwrap(), "voice")
            .await,
        app.get("/v1/pools").await,
    ] {
        r.expect_problem(503, "store_unavailable");
        assert!(
            r.header("retry-after").is_some(),
            "no Retry-After: {}",
            r.text
        );
    }
    let r = app.get("/readyz").await;
    assert_eq!(r.status, 503, "/readyz with Redis down: {}", r.text);
    let r = app.get("/healthz").await;
    assert_eq!(r.status, 200, "/healthz is about the process, not Redis");

    // Redis comes back on the same port with its data; hush reconnects on its own.
    redis.spawn().expect("restarting redis-server");
    eventually(Duration::from_secs(15), "/readyz back to 200", || async {
        (app.get("/readyz").await.status == 200).then_some(())
    })
    .await;
    let recovered = eventually(
        Duration::from_secs(10),
        "a session create succeeds",
        || async {
            let r = app
                .create_session("outage", &a, &participant(2), None)
                .await;
            match r.status {
                201 => Some(r.json),
                503 => None,
                _ => panic!("after recovery: {} {}", r.status, r.text),
            }
        },
    )
    .await;
    assert_ne!(recovered["proxy_number"], s["proxy_number"]);
    app.assert_connects(
        &a,
        s["proxy_number"].as_str().unwrap(),
        &b,
        s["id"].as_str().unwrap(),
    )
    .await;
}
