//! The HTTP edge: heads hyper refuses before any route runs, limits on the head and on a
//! declared body, all answered problem+json; and metric labels that clients cannot grow.

use hush::config::Secret;
use reqwest::Method;

use crate::harness::*;

/// A request with `extra` header lines, framed as HTTP/1.1.
fn request(method: &str, target: &str, extra: &str) -> Vec<u8> {
    format!("{method} {target} HTTP/1.1\r\nHost: hush.test\r\n{extra}\r\n").into_bytes()
}

#[tokio::test]
async fn heads_hyper_refuses_are_problem_json() {
    let app = TestApp::start().await;
    let big = format!("X-Big: {}\r\n", "a".repeat(1024 * 1024));
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_path = format!("/v1/sessions/{}", "a".repeat(70 * 1024));
    let cases = [
        (
            "Content-Length: -1",
            request("POST", "/v1/sessions", "Content-Length: -1\r\n"),
            400,
            "invalid_request",
        ),
        (
            "a 1 MB header",
            request("GET", "/healthz", &big),
            431,
            "header_too_large",
        ),
        (
            "500 headers",
            request("GET", "/healthz", &many),
            431,
            "header_too_large",
        ),
        (
            "a 70 KB path",
            request("GET", &long_path, ""),
            414,
            "uri_too_long",
        ),
    ];
    for (what, bytes, status, code) in cases {
        let r = app.raw(bytes).await;
        assert_eq!(
            (r.status, r.code()),
            (status, code),
            "{what}: {} {:?} {}",
            r.status,
            r.headers,
            r.text
        );
        r.expect_problem(status, code);
        assert_eq!(r.header("connection").as_deref(), Some("close"), "{what}");
        assert!(r.header("date").is_some(), "{what}: hyper's Date is kept");
    }
    // The server still serves after all that.
    app.get("/healthz").await.expect(200);
}

#[tokio::test]
async fn a_bad_head_after_a_good_request_on_one_connection_is_problem_json() {
    use tokio::io::AsyncWriteExt as _;
    let app = TestApp::start().await;
    let (mut rd, mut wr) = app.connect().await.into_split();
    wr.write_all(&request("GET", "/healthz", "")).await.unwrap();
    let first = read_response(&mut rd).await.expect("an answer");
    assert_eq!(first.status, 200, "{}", first.text);
    wr.write_all(&request("POST", "/v1/route", "Content-Length: x\r\n"))
        .await
        .unwrap();
    let second = read_response(&mut rd).await.expect("an answer");
    second.expect_problem(400, "invalid_request");
}

#[tokio::test]
async fn heads_over_hush_limits_are_problem_json() {
    let app = TestApp::start().await;
    // Under hyper's limits, over hush's: refused by hush before any route runs.
    let r = app
        .raw(request(
            "GET",
            &format!("/healthz?{}", "a".repeat(9 * 1024)),
            "",
        ))
        .await;
    r.expect_problem(414, "uri_too_long");
    let wide: String = (0..5)
        .map(|i| format!("X-Wide-{i}: {}\r\n", "b".repeat(8 * 1024)))
        .collect();
    let r = app.raw(request("GET", "/healthz", &wide)).await;
    r.expect_problem(431, "header_too_large");
    // At the limits, requests are served.
    let r = app
        .raw(request(
            "GET",
            &format!("/healthz?{}", "a".repeat(7 * 1024)),
            "Connection: close\r\n",
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let app = TestApp::start_with(|c| {
        c.providers.twilio_auth_token = Some(Secret::new("edge-token".into()));
    })
    .await;
    let auth = format!("Authorization: Bearer {}\r\n", app.admin_key);
    let huge = "Content-Length: 1000000000000\r\n";
    for (target, headers) in [
        (
            "/v1/sessions",
            format!("{auth}Content-Type: application/json\r\n{huge}"),
        ),
        (
            "/hooks/twilio/voice",
            format!("Content-Type: application/x-www-form-urlencoded\r\n{huge}"),
        ),
        ("/v1/nowhere", huge.to_string()),
    ] {
        // Only the head is sent: an answer proves hush did not wait for the body.
        let r = app.raw(request("POST", target, &headers)).await;
        r.expect_problem(413, "payload_too_large");
        assert_eq!(r.header("connection").as_deref(), Some("close"), "{target}");
    }
}

/// The values of label `name` in a Prometheus text page.
fn label_values(page: &str, name: &str) -> Vec<String> {
    let needle = format!("{name}=\"");
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let start = l.find(&needle)? + needle.len();
            let len = l[start..].find('"')?;
            Some(l[start..start + len].to_string())
        })
        .collect()
}

#[tokio::test]
async fn invented_methods_and_paths_add_no_metric_series() {
    let app = TestApp::start().await;
    for i in 0..40 {
        let method = Method::from_bytes(format!("INVENTED{i}").as_bytes()).unwrap();
        let r = app.call(method, "/healthz", None, None).await;
        r.expect_problem(405, "method_not_allowed");
        let r = app
            .call(Method::GET, &format!("/invented/{i}"), None, None)
            .await;
        r.expect_problem(404, "not_found");
        let method = Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        let r = app
            .call(method, &format!("/invented/{i}"), None, None)
            .await;
        assert_eq!(r.status, 404, "{}", r.text);
    }
    let page = app.get("/metrics").await.text;
    let methods = label_values(&page, "method");
    assert!(
        methods.iter().any(|m| m == "other"),
        "invented methods are counted as `other`: {methods:?}"
    );
    let standard = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "other",
    ];
    let stray: Vec<_> = methods
        .iter()
        .filter(|m| !standard.contains(&m.as_str()))
        .collect();
    assert!(
        stray.is_empty(),
        "method labels outside the fixed set: {stray:?}"
    );
    let routes = label_values(&page, "route");
    let mut known: Vec<&str> = hush::api::ROUTES.iter().map(|(_, p)| *p).collect();
    known.extend(hush::console::ROUTES);
    let stray: Vec<_> = routes
        .iter()
        .filter(|r| *r != "unmatched" && !known.contains(&r.as_str()) && !r.starts_with("/hooks/"))
        .collect();
    assert!(
        stray.is_empty(),
        "route labels outside the fixed set: {stray:?}"
    );
    assert!(!page.contains("invented/"), "a raw path in a label");
}
