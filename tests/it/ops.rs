//! Operations endpoints: health, readiness and the Prometheus metrics the contract names.

use std::time::Duration;

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
async fn readiness_names_the_kind_of_store() {
    let app = TestApp::start().await;
    let kind = match std::env::var("HUSH_TEST_REDIS").as_deref() {
        Ok("cluster") => "cluster",
        Ok("sentinel") => "sentinel",
        _ => "single",
    };
    let r = app.get("/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text, format!("ok\nstore: {kind}\n"));
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

/// Event delivery, the event queue, and refused webhook signatures show in the metrics, with
/// labels from fixed sets.
#[tokio::test]
async fn metrics_follow_event_delivery_and_signature_failures() {
    use crate::receiver::Receiver;
    use hush::config::Secret;

    let app = TestApp::start_with(|c| {
        c.callback_allow_private = true;
        c.event_retry_schedule_ms = vec![60_000];
        c.public_url = Some("https://hush.example.test".into());
        c.providers.twilio_auth_token = Some(Secret::new("token".into()));
    })
    .await;
    let count =
        |m: &str, name: &str, labels: &[(&str, &str)]| sample(m, name, labels).unwrap_or(0.0);
    let before = app.get("/metrics").await.text;

    // A webhook with a wrong signature is refused and counted for its provider.
    let r = app
        .client
        .post(app.url("/hooks/twilio/voice"))
        .header("X-Twilio-Signature", "bm90IGEgc2lnbmF0dXJl")
        .form(&[
            ("From", participant(0)),
            ("To", proxy(0)),
            ("CallSid", "CA1".into()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // One event delivered, one waiting for its retry after a refusal by the app.
    let receiver = Receiver::start().await;
    app.pool(
        "evmetered",
        json!({ "cooloff_secs": 0, "callback_url": receiver.url("/events") }),
        &proxies(2),
    )
    .await;
    app.open_session("evmetered", &participant(0), &participant(1), None)
        .await;
    eventually(
        Duration::from_secs(20),
        "the first event delivered",
        || async { (!receiver.deliveries().is_empty()).then_some(()) },
    )
    .await;
    receiver.fail_next(1, 500);
    app.open_session("evmetered", &participant(2), &participant(3), None)
        .await;
    eventually(
        Duration::from_secs(20),
        "the second event refused",
        || async { (receiver.deliveries().len() >= 2).then_some(()) },
    )
    .await;

    let m = eventually(Duration::from_secs(20), "attempts counted", || async {
        let m = app.get("/metrics").await.text;
        let failed = count(
            &m,
            "hush_event_delivery_attempts_total",
            &[("outcome", "failed")],
        );
        (failed
            > count(
                &before,
                "hush_event_delivery_attempts_total",
                &[("outcome", "failed")],
            ))
        .then_some(m)
    })
    .await;
    let delivered = ("outcome", "delivered");
    assert!(
        count(&m, "hush_event_delivery_attempts_total", &[delivered])
            > count(&before, "hush_event_delivery_attempts_total", &[delivered]),
        "{m}"
    );
    let twilio = [("provider", "twilio")];
    assert!(
        count(&m, "hush_webhook_signature_failures_total", &twilio)
            > count(&before, "hush_webhook_signature_failures_total", &twilio),
        "{m}"
    );
    // The queue gauges cover this app's prefix, refreshed by this scrape; other tests'
    // scrapes may set them in between, so the page is fetched until it shows ours.
    eventually(
        Duration::from_secs(20),
        "a pending event in the gauges",
        || async {
            let m = app.get("/metrics").await.text;
            let pending = sample(&m, "hush_events_pending", &[])?;
            let age = sample(&m, "hush_event_oldest_pending_seconds", &[])?;
            (pending >= 1.0 && age > 0.0).then_some(())
        },
    )
    .await;
    // Label values come from fixed sets: no pool name, number or URL.
    for line in m.lines().filter(|l| {
        l.starts_with("hush_event_delivery_attempts_total")
            || l.starts_with("hush_webhook_signature_failures_total")
    }) {
        assert!(!line.contains("evmetered") && !line.contains('+'), "{line}");
    }
}
