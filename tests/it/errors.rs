//! Every error code of the contract, reached over HTTP, each as a well-formed
//! `application/problem+json` body; and no input a client can send gets a 5xx.
//! (`store_unavailable` is in `outage.rs`, `unauthorized`/`forbidden` in `auth.rs`.)

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::*;

async fn app_with_pool() -> TestApp {
    let app = TestApp::start().await;
    app.pool("errs", json!({ "cooloff_secs": 60 }), &proxies(1))
        .await;
    app
}

fn session_body(a: &str, b: &str) -> Value {
    json!({ "pool": "errs", "participants": [{ "number": a }, { "number": b }] })
}

#[tokio::test]
async fn invalid_request_for_bad_json_or_content_type() {
    let app = app_with_pool().await;
    let body = session_body(&participant(0), &participant(1)).to_string();

    // Valid JSON, announced as text.
    let r = app
        .send(
            app.client
                .post(app.url("/v1/sessions"))
                .bearer_auth(&app.admin_key)
                .header("content-type", "text/plain")
                .body(body.clone()),
        )
        .await;
    r.expect_problem(400, "invalid_request");

    // No content type at all.
    let r = app
        .send(
            app.client
                .post(app.url("/v1/sessions"))
                .bearer_auth(&app.admin_key)
                .body(body.clone()),
        )
        .await;
    r.expect_problem(400, "invalid_request");

    // Malformed JSON, on each kind of write.
    for (method, path) in [
        (Method::POST, "/v1/sessions"),
        (Method::PUT, "/v1/pools/errs"),
        (Method::POST, "/v1/pools/errs/numbers"),
        (Method::POST, "/v1/route"),
    ] {
        let r = app
            .send(
                app.client
                    .request(method.clone(), app.url(path))
                    .bearer_auth(&app.admin_key)
                    .header("content-type", "application/json")
                    .body("{,"),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_request"),
            "{method} {path} with malformed JSON: {}",
            r.text
        );
        assert_problem_shape(&r);
    }
}

#[tokio::test]
async fn validation_failed_for_impossible_requests() {
    let app = app_with_pool().await;
    let (a, b) = (participant(0), participant(1));
    let cases = [
        ("same participant twice", session_body(&a, &a)),
        (
            "one participant",
            json!({ "pool": "errs", "participants": [{ "number": a }] }),
        ),
        (
            "three participants",
            json!({ "pool": "errs", "participants": [
                { "number": a }, { "number": b }, { "number": participant(2) }
            ]}),
        ),
        (
            "ttl 0",
            json!({ "pool": "errs", "ttl_secs": 0,
                    "participants": [{ "number": a }, { "number": b }] }),
        ),
        (
            "ttl over 30 days",
            json!({ "pool": "errs", "ttl_secs": 2_592_001,
                    "participants": [{ "number": a }, { "number": b }] }),
        ),
        (
            "17 metadata keys",
            json!({ "pool": "errs", "participants": [{ "number": a }, { "number": b }],
                    "metadata": (0..17).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>() }),
        ),
        (
            "metadata over 2 KiB",
            json!({ "pool": "errs", "participants": [{ "number": a }, { "number": b }],
                    "metadata": { "note": "x".repeat(3000) } }),
        ),
    ];
    for (what, body) in cases {
        let r = app.create_session_with(&body).await;
        assert_eq!(
            (r.status, r.code()),
            (422, "validation_failed"),
            "{what}: {}",
            r.text
        );
        assert_problem_shape(&r);
    }

    for (what, body) in [
        ("ttl below 60", json!({ "default_ttl_secs": 59 })),
        ("ttl over 30 days", json!({ "default_ttl_secs": 2_592_001 })),
        ("cool-off over 7 days", json!({ "cooloff_secs": 604_801 })),
        ("unknown geo match", json!({ "geo_match": "planet" })),
        (
            "huge message",
            json!({ "out_of_session_message": "x".repeat(5000) }),
        ),
    ] {
        let r = app.put_pool("errs", body).await;
        assert_eq!(
            (r.status, r.code()),
            (422, "validation_failed"),
            "PUT pool with {what}: {}",
            r.text
        );
        assert_problem_shape(&r);
    }
    // A bad pool name.
    let r = app.put_pool("Not%20A%20Pool", json!({})).await;
    assert!(
        r.status == 422 || r.status == 404,
        "bad pool name: {} {}",
        r.status,
        r.text
    );
    assert_problem_shape(&r);

    // Over 1,000 numbers in one import.
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({ "number": format!("+1201555{:04}", 1000 + i) }))
        .collect();
    let r = app
        .post("/v1/pools/errs/numbers", &json!({ "numbers": many }))
        .await;
    r.expect_problem(422, "validation_failed");

    // A state that does not exist.
    let r = app
        .patch(
            &format!("/v1/pools/errs/numbers/{}", path_number(&proxy(0))),
            &json!({ "state": "asleep" }),
        )
        .await;
    assert!(
        matches!(
            (r.status, r.code()),
            (422, "validation_failed") | (400, "invalid_request")
        ),
        "unknown number state: {} {}",
        r.text,
        r.status
    );
    assert_problem_shape(&r);
}

/// serde would read a struct from a JSON array, filling its fields in order: every body is
/// an object, and anything else well-formed is refused as its wrong shape.
#[tokio::test]
async fn bodies_that_are_not_objects_fail_validation() {
    let app = app_with_pool().await;
    for body in [
        json!([null, null]),
        json!([]),
        json!(null),
        json!(7),
        json!("rides"),
    ] {
        app.put("/v1/pools/errs", &body)
            .await
            .expect_problem(422, "validation_failed");
        app.post("/v1/sessions", &body)
            .await
            .expect_problem(422, "validation_failed");
        app.patch("/v1/pools/errs", &body)
            .await
            .expect_problem(422, "validation_failed");
    }
    // The pool kept its policy.
    let pool = app.get("/v1/pools/errs").await.expect(200);
    assert_eq!(pool["name"], "errs", "{pool}");
}

#[tokio::test]
async fn invalid_number_for_a_participant() {
    let app = app_with_pool().await;
    for bad in ["+1415", "12345", "+999123", "+15550001111", "4155550100"] {
        let r = app
            .create_session_with(&session_body(bad, &participant(0)))
            .await;
        assert_eq!(
            (r.status, r.code()),
            (422, "invalid_number"),
            "participant {bad:?}: {}",
            r.text
        );
        assert_problem_shape(&r);
        let r = app
            .create_session_with(&session_body(&participant(0), bad))
            .await;
        assert_eq!((r.status, r.code()), (422, "invalid_number"), "{}", r.text);
    }
    let r = app.get("/v1/sessions?participant=12345").await;
    r.expect_problem(422, "invalid_number");
}

#[tokio::test]
async fn not_found_codes() {
    let app = app_with_pool().await;
    app.create_session_with(&json!({
        "pool": "nope", "participants": [{ "number": participant(0) }, { "number": participant(1) }],
    }))
    .await
    .expect_problem(404, "pool_not_found");
    app.get("/v1/pools/nope")
        .await
        .expect_problem(404, "pool_not_found");
    app.add_numbers("nope", &[proxy(5)])
        .await
        .expect_problem(404, "pool_not_found");
    app.get("/v1/pools/nope/numbers")
        .await
        .expect_problem(404, "pool_not_found");

    // A well-formed id that was never issued, and one that is not an id at all.
    let s = app
        .open_session("errs", &participant(0), &participant(1), None)
        .await;
    let id = s["id"].as_str().unwrap();
    let mut forged: Vec<char> = id.chars().collect();
    forged[20] = if forged[20] == 'a' { 'b' } else { 'a' };
    let forged: String = forged.into_iter().collect();
    for missing in [forged.as_str(), "ses_nope", "garbage"] {
        app.get_session(missing)
            .await
            .expect_problem(404, "session_not_found");
        app.patch(
            &format!("/v1/sessions/{missing}"),
            &json!({ "ttl_secs": 60 }),
        )
        .await
        .expect_problem(404, "session_not_found");
        app.close_session(missing)
            .await
            .expect_problem(404, "session_not_found");
    }

    let stranger = "+12025550199";
    app.route(&participant(0), stranger, "voice")
        .await
        .expect_problem(404, "number_not_found");
    let path = format!("/v1/pools/errs/numbers/{}", path_number(stranger));
    app.delete(&path)
        .await
        .expect_problem(404, "number_not_found");
    app.patch(&path, &json!({ "state": "draining" }))
        .await
        .expect_problem(404, "number_not_found");
}

#[tokio::test]
async fn conflict_codes() {
    let app = app_with_pool().await;
    let (a, b, c) = (participant(0), participant(1), participant(2));
    let s = app.open_session("errs", &a, &b, None).await;
    let id = s["id"].as_str().unwrap();

    let p = app
        .create_session("errs", &a, &c, None)
        .await
        .expect_problem(409, "pool_exhausted");
    assert!(p["detail"].as_str().unwrap().contains("errs"), "{p}");

    let number = format!("/v1/pools/errs/numbers/{}", path_number(&proxy(0)));
    app.delete(&number)
        .await
        .expect_problem(409, "number_in_use");

    app.close_session(id).await.expect(200);
    app.patch(&format!("/v1/sessions/{id}"), &json!({ "ttl_secs": 60 }))
        .await
        .expect_problem(409, "session_closed");
    // Cooling off for 60 s: still in use.
    app.delete(&number)
        .await
        .expect_problem(409, "number_in_use");
}

#[tokio::test]
async fn idempotency_conflict_for_a_reused_key() {
    let app = app_with_pool().await;
    let post = |body: Value| {
        app.send(
            app.client
                .post(app.url("/v1/sessions"))
                .bearer_auth(&app.admin_key)
                .header("Idempotency-Key", "k-1")
                .json(&body),
        )
    };
    post(session_body(&participant(0), &participant(1)))
        .await
        .expect(201);
    post(session_body(&participant(0), &participant(2)))
        .await
        .expect_problem(422, "idempotency_conflict");

    let r = app
        .send(
            app.client
                .post(app.url("/v1/sessions"))
                .bearer_auth(&app.admin_key)
                .header("Idempotency-Key", "k".repeat(256))
                .json(&session_body(&participant(3), &participant(4))),
        )
        .await;
    assert!(
        matches!(
            (r.status, r.code()),
            (422, "validation_failed") | (400, "invalid_request")
        ),
        "an Idempotency-Key over 255 characters: {} {}",
        r.status,
        r.text
    );
    assert_problem_shape(&r);
}

#[tokio::test]
async fn payload_too_large_over_64_kib() {
    let app = app_with_pool().await;
    let big = json!({
        "pool": "errs",
        "participants": [{ "number": participant(0) }, { "number": participant(1) }],
        "metadata": { "blob": "x".repeat(70 * 1024) },
    });
    app.create_session_with(&big)
        .await
        .expect_problem(413, "payload_too_large");
    app.put_pool(
        "errs",
        json!({ "out_of_session_message": "x".repeat(70 * 1024) }),
    )
    .await
    .expect_problem(413, "payload_too_large");
    // Just under the limit is not refused for its size.
    let r = app
        .create_session_with(&json!({
            "pool": "errs",
            "participants": [{ "number": participant(0) }, { "number": participant(1) }],
            "metadata": { "blob": "x".repeat(60 * 1024) },
        }))
        .await;
    assert_ne!(r.status, 413, "{}", r.text);
}

#[tokio::test]
async fn nothing_a_client_sends_gets_a_5xx() {
    let app = app_with_pool().await;
    let k = Some(app.admin_key.as_str());
    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (Method::POST, "/v1/sessions".into(), Some(json!(null))),
        (Method::POST, "/v1/sessions".into(), Some(json!([]))),
        (Method::POST, "/v1/sessions".into(), Some(json!("x"))),
        (Method::POST, "/v1/sessions".into(), Some(json!({}))),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(json!({ "pool": 7, "participants": "no" })),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(json!({ "pool": "errs", "participants": [{ "number": 14155550100u64 }, {}] })),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(json!({ "pool": "errs", "ttl_secs": -1,
                "participants": [{ "number": participant(0) }, { "number": participant(1) }] })),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(json!({ "pool": "errs", "ttl_secs": 1e300,
                "participants": [{ "number": participant(0) }, { "number": participant(1) }] })),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(json!({ "pool": "errs", "mode": "fax",
                "participants": [{ "number": participant(0) }, { "number": participant(1) }] })),
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(json!({ "pool": "ÄÖÜ\u{0}", "participants": [] })),
        ),
        (Method::PATCH, "/v1/sessions/ses_x".into(), Some(json!({}))),
        (
            Method::PATCH,
            "/v1/sessions/%00".into(),
            Some(json!({ "ttl_secs": "x" })),
        ),
        (Method::GET, "/v1/sessions".into(), None),
        (Method::GET, "/v1/sessions?participant=".into(), None),
        (
            Method::GET,
            "/v1/sessions?participant=%2B14155550100&pool=NOPE".into(),
            None,
        ),
        (
            Method::PUT,
            "/v1/pools/errs".into(),
            Some(json!({ "default_ttl_secs": "soon" })),
        ),
        (
            Method::PUT,
            "/v1/pools/errs".into(),
            Some(json!({ "cooloff_secs": -5 })),
        ),
        (
            Method::PUT,
            format!("/v1/pools/{}", "a".repeat(300)),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/pools/errs/numbers".into(),
            Some(json!({ "numbers": [] })),
        ),
        (
            Method::POST,
            "/v1/pools/errs/numbers".into(),
            Some(json!({ "numbers": [{}] })),
        ),
        (
            Method::POST,
            "/v1/pools/errs/numbers".into(),
            Some(json!({ "numbers": [{ "number": proxy(3), "capabilities": ["fax"] }] })),
        ),
        (
            Method::PATCH,
            "/v1/pools/errs/numbers/garbage".into(),
            Some(json!({ "state": "draining" })),
        ),
        (Method::DELETE, "/v1/pools/errs/numbers/%2B1".into(), None),
        (
            Method::POST,
            "/v1/route".into(),
            Some(json!({ "from": "x", "to": "y", "kind": "voice" })),
        ),
        (
            Method::POST,
            "/v1/route".into(),
            Some(json!({ "from": participant(0), "to": proxy(0), "kind": "fax" })),
        ),
        (Method::POST, "/v1/route".into(), Some(json!({}))),
        (Method::DELETE, "/v1/participants/garbage".into(), None),
        (Method::DELETE, "/v1/participants/%2B1415".into(), None),
        (Method::GET, "/v1/nothing-here".into(), None),
        (Method::DELETE, "/v1/pools".into(), None),
    ];
    for (method, path, body) in cases {
        let r = app.call(method.clone(), &path, k, body.as_ref()).await;
        assert!(
            r.status < 500,
            "{method} {path} {body:?} got a server error: {} {}",
            r.status,
            r.text
        );
        if r.status >= 400 {
            assert_problem_shape(&r);
        }
    }
}

#[tokio::test]
async fn events_listing_answers_for_pools_without_events() {
    // A pool without a callback URL never records an event.
    let app = app_with_pool().await;
    for path in [
        "/v1/events?pool=errs",
        "/v1/events?pool=errs&status=failed",
        "/v1/events",
        "/v1/events?status=pending&limit=1",
    ] {
        let body = app.get(path).await.expect(200);
        assert_eq!(body["events"], json!([]), "{path}: {body}");
    }
    app.get("/v1/events?pool=nope")
        .await
        .expect_problem(404, "pool_not_found");
}

/// Query strings that do not decode into the documented parameters: each a problem with a
/// code, never axum's plain-text 400.
#[tokio::test]
async fn malformed_query_strings_are_problems() {
    let app = app_with_pool().await;
    let p = "%2B14155550100";
    for path in [
        "/v1/events?status=failed&status=failed".to_string(),
        "/v1/events?status=failed&status=delivered".to_string(),
        "/v1/events?pool=errs&pool=errs".to_string(),
        "/v1/events?limit=10&limit=20".to_string(),
        "/v1/events?limit=-1".to_string(),
        "/v1/events?limit=18446744073709551616".to_string(),
        "/v1/events?limit=ten".to_string(),
        "/v1/events?limit=".to_string(),
        format!("/v1/sessions?participant={p}&participant={p}"),
        format!("/v1/sessions?participant={p}&pool=errs&pool=errs"),
    ] {
        let r = app.get(&path).await;
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_query"),
            "GET {path}: {}",
            r.text
        );
        assert_problem_shape(&r);
        assert!(
            !r.text.contains("14155550100"),
            "the problem echoes a number: {}",
            r.text
        );
    }
}

/// Well-typed query values outside what the contract states (range, enum, pattern).
#[tokio::test]
async fn query_values_outside_the_contract_fail_validation() {
    let app = app_with_pool().await;
    for path in [
        "/v1/events?limit=0",
        "/v1/events?limit=501",
        "/v1/events?status=lost",
        "/v1/events?pool=NOPE",
        "/v1/events?pool=",
        "/v1/sessions?participant=%2B14155550100&pool=NOPE",
    ] {
        let r = app.get(path).await;
        assert_eq!(
            (r.status, r.code()),
            (422, "validation_failed"),
            "GET {path}: {}",
            r.text
        );
        assert_problem_shape(&r);
    }
    // The bounds themselves are accepted.
    for path in ["/v1/events?limit=1", "/v1/events?limit=500"] {
        app.get(path).await.expect(200);
    }
}

/// A path segment that is not UTF-8 once percent-decoded, on every route that takes one.
#[tokio::test]
async fn undecodable_path_segments_are_problems() {
    let app = app_with_pool().await;
    let number = path_number(&proxy(0));
    let state = json!({ "state": "draining" });
    let cases: Vec<(Method, String, Option<&Value>)> = vec![
        (Method::GET, "/v1/pools/%FF".into(), None),
        (Method::PUT, "/v1/pools/%FF".into(), Some(&state)),
        (Method::GET, "/v1/pools/%FF/numbers".into(), None),
        (Method::GET, "/v1/pools/%FF/callback-secret".into(), None),
        (
            Method::PATCH,
            format!("/v1/pools/errs/numbers/%FF{number}"),
            Some(&state),
        ),
        (
            Method::DELETE,
            format!("/v1/pools/%FF/numbers/{number}"),
            None,
        ),
        (Method::GET, "/v1/sessions/ses_%FF".into(), None),
        (Method::DELETE, "/v1/sessions/%FF".into(), None),
        (Method::GET, "/v1/sessions/%FF/interactions".into(), None),
        (Method::POST, "/v1/events/evt_%FF/redeliver".into(), None),
        (Method::DELETE, "/v1/participants/%2B1415%FF".into(), None),
    ];
    for (method, path, body) in cases {
        let r = app
            .call(method.clone(), &path, Some(&app.admin_key), body)
            .await;
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_path"),
            "{method} {path}: {}",
            r.text
        );
        assert_problem_shape(&r);
    }
}

/// Store calls whose argument lists come from data (event ids found, fields given) answer
/// on empty input instead of sending Redis a command without arguments.
#[tokio::test]
async fn store_calls_take_empty_input() {
    let app = TestApp::start().await;
    let store = hush::store::Store::connect(&app.config.redis_url, &app.config.redis_prefix)
        .expect("a store");
    let shard = store.keys().shard(7, 0);
    assert!(store.events(&shard, 10).await.expect("events").is_empty());
    assert!(store.events(&shard, 0).await.expect("events").is_empty());

    let (row, created) = store
        .pool_put("bare", &[])
        .await
        .expect("pool")
        .expect("no shrink");
    assert!(created);
    let (again, created) = store
        .pool_put("bare", &[])
        .await
        .expect("pool")
        .expect("no shrink");
    assert!(!created);
    assert_eq!(again.id, row.id);
    store.pool_fields_set(row.id, &[]).await.expect("no fields");
}
