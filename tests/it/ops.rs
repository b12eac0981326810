//! Operations endpoints: health, readiness and the Prometheus metrics the contract names.

use reqwest::Method;
use serde_json::json;

use crate::harness::*;

/// The value of the sample `name{labels}` in a Prometheus text page (labels in any order).
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let body = rest.strip_suffix('}')?;
        let all = labels
            .iter()
            .all(|(k, v)| body.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::start().await;
    let r = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, 200);
    let r = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn metrics_count_sessions_allocations_and_requests() {
    let app = TestApp::start().await;
    // Metrics are per process; a pool name no other test uses keeps these samples ours.
    app.pool("metered", json!({ "cooloff_secs": 0 }), &proxies(1))
        .await;
    let (a, b, c) = (participant(0), participant(1), participant(2));
    let s = app.open_session("metered", &a, &b, None).await;
    app.create_session("metered", &a, &c, None)
        .await
        .expect_problem(409, "pool_exhausted");
    let page = app.get("/metrics").await;
    assert_eq!(page.status, 200);
    assert!(
        page.content_type().starts_with("text/plain"),
        "{}",
        page.content_type()
    );
    let m = &page.text;
    assert_eq!(
        sample(m, "hush_sessions_created_total", &[("pool", "metered")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            m,
            "hush_allocations_total",
            &[("pool", "metered"), ("result", "exhausted")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "hush_pool_open_sessions", &[("pool", "metered")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(m, "hush_pool_utilisation", &[("pool", "metered")]),
        Some(1.0),
        "{m}"
    );
    assert!(
        sample(
            m,
            "hush_http_request_duration_seconds_count",
            &[
                ("route", "/v1/sessions"),
                ("method", "POST"),
                ("status", "409")
            ]
        )
        .is_some_and(|n| n >= 1.0),
        "request latency histogram by route: {m}"
    );
    // Routing decisions are counted by what they were.
    let p = s["proxy_number"].as_str().unwrap();
    app.route(&a, p, "voice").await.expect(200);
    app.route(&a, p, "sms").await.expect(200);
    app.route(&c, p, "voice").await.expect(200);
    let m = &app.get("/metrics").await.text;
    let decisions: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("hush_route_decisions_total"))
        .collect();
    for action in ["connect", "relay", "announce"] {
        assert!(
            sample(m, "hush_route_decisions_total", &[("action", action)])
                .is_some_and(|n| n >= 1.0),
            "no hush_route_decisions_total{{action=\"{action}\"}} after such a decision: {decisions:?}"
        );
    }
    // Labels name route templates, never concrete paths.
    assert!(!m.contains("ses_"), "a session id in a metric label: {m}");

    app.close_session(s["id"].as_str().unwrap())
        .await
        .expect(200);
    let m = app.get("/metrics").await.text;
    assert_eq!(
        sample(
            &m,
            "hush_sessions_closed_total",
            &[("pool", "metered"), ("reason", "closed")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "hush_pool_open_sessions", &[("pool", "metered")]),
        Some(0.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_answers_within_its_timeout_while_redis_is_frozen() {
    // A private Redis: this test freezes it.
    let redis = RedisServer::start(false);
    let mut config = fresh_config(&redis.url());
    config.readiness_timeout_ms = 300;
    let app = TestApp::start_on(config).await;
    app.get("/readyz").await.expect(200);

    redis.pause();
    let started = std::time::Instant::now();
    let r = app.get("/readyz").await;
    let took = started.elapsed();
    redis.resume();
    r.expect_problem(503, "store_unavailable");
    assert!(
        r.header("retry-after").is_some(),
        "no Retry-After: {}",
        r.text
    );
    // The store's own response timeout is 3 s; the probe must not wait for it.
    assert!(
        took < std::time::Duration::from_millis(2500),
        "/readyz took {took:?} with Redis frozen"
    );
    eventually(
        std::time::Duration::from_secs(15),
        "/readyz back to 200",
        || async { (app.get("/readyz").await.status == 200).then_some(()) },
    )
    .await;
}
