//! Time: sessions expire on time whatever the reaper does, cool-off keeps a number from the
//! same participant until it ends, extension moves expiry both ways, and closing is
//! idempotent.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn session_routes_until_expiry_then_announces() {
    // A reaper that never runs during the test: expiry must not depend on it.
    let app = TestApp::start_with(|c| c.reaper_interval_ms = 600_000).await;
    app.pool("short", json!({ "cooloff_secs": 2 }), &proxies(1))
        .await;
    let (a, b, c) = (participant(0), participant(1), participant(2));
    let s = app.open_session("short", &a, &b, Some(2)).await;
    let id = s["id"].as_str().unwrap();
    let p = s["proxy_number"].as_str().unwrap();
    let expires = ts_ms(&s["expires_at"]);
    assert!(
        (expires - ts_ms(&s["created_at"]) - 2000).abs() <= 1000,
        "ttl_secs 2: {s}"
    );

    app.assert_connects(&a, p, &b, id).await;
    app.assert_connects(&b, p, &a, id).await;

    sleep_until_ms(expires + 150).await;
    let got = app.get_session(id).await.expect(200);
    assert_eq!(
        (got["status"].as_str(), got["close_reason"].as_str()),
        (Some("closed"), Some("expired")),
        "a session past its expires_at must read as expired at once: {got}"
    );
    let closed_at = ts_ms(&got["closed_at"]);
    assert!(
        (closed_at - expires).abs() <= 1000,
        "closed_at of an expired session is its expires_at: {got}"
    );
    app.assert_announces(&a, p).await;
    app.assert_announces(&b, p).await;

    let listed = app
        .get(&format!("/v1/sessions?participant={}", path_number(&a)))
        .await
        .expect(200);
    assert_eq!(
        listed["sessions"],
        json!([]),
        "expired sessions are not listed"
    );
    app.patch(&format!("/v1/sessions/{id}"), &json!({ "ttl_secs": 60 }))
        .await
        .expect_problem(409, "session_closed");
    let closed = app.close_session(id).await.expect(200);
    assert_eq!(closed["status"], "closed");
    assert_eq!(
        closed["close_reason"], "expired",
        "closing an expired session keeps its reason"
    );

    // Cooling off after expiry: the single number stays away from a and b.
    if now_ms() < expires + 1500 {
        app.create_session("short", &a, &c, None)
            .await
            .expect_problem(409, "pool_exhausted");
    }
    let at = number_back_at(&app, "short", &a, &c).await;
    assert!(
        at >= expires + 2000 - 100,
        "the number came back {} ms after expiry, before the 2 s cool-off ended",
        at - expires
    );
}

#[tokio::test]
async fn cooloff_keeps_the_number_from_that_participant_until_it_ends() {
    let app = TestApp::start().await;
    app.pool(
        "cool",
        json!({ "cooloff_secs": 2, "out_of_session_message": "Ended." }),
        &proxies(1),
    )
    .await;
    let (a, b, c, d, e) = (
        participant(0),
        participant(1),
        participant(2),
        participant(3),
        participant(4),
    );
    let s = app.open_session("cool", &a, &b, None).await;
    let id = s["id"].as_str().unwrap();
    // Local clock readings bracket the moment hush closed the session.
    let before_close = now_ms();
    app.close_session(id).await.expect(200);

    // While cooling off, calls on the old route hear that the conversation has ended...
    let r = app.route(&a, &proxy(0), "voice").await.expect(200);
    assert_eq!(r, json!({ "action": "announce", "message": "Ended." }));
    app.assert_announces(&b, &proxy(0)).await;
    // ...the number is not given to either of them...
    if now_ms() < before_close + 1500 {
        app.create_session("cool", &a, &c, None)
            .await
            .expect_problem(409, "pool_exhausted");
        app.create_session("cool", &d, &b, None)
            .await
            .expect_problem(409, "pool_exhausted");
    }
    // ...but it still serves other pairs (cool-off is per participant, not per number).
    let other = app.open_session("cool", &c, &d, None).await;
    assert_eq!(other["proxy_number"], proxy(0));
    // The ended session stays readable while cooling off.
    let got = app.get_session(id).await.expect(200);
    assert_eq!(got["status"], "closed");

    let at = number_back_at(&app, "cool", &a, &e).await;
    assert!(
        at >= before_close + 2000 - 50,
        "the number came back {} ms after close, before the 2 s cool-off ended",
        at - before_close
    );
    // Once cool-off is over, the ended session is gone.
    eventually(
        Duration::from_secs(5),
        "the ended session reads as 404 after cool-off",
        || async {
            let r = app.get_session(id).await;
            match r.status {
                404 => {
                    r.expect_problem(404, "session_not_found");
                    Some(())
                }
                200 => None,
                _ => panic!("unexpected {} {}", r.status, r.text),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn extend_moves_expiry_both_ways() {
    let app = TestApp::start_with(|c| c.reaper_interval_ms = 600_000).await;
    app.pool("ext", json!({ "cooloff_secs": 5 }), &proxies(1))
        .await;
    let (a, b) = (participant(0), participant(1));
    let s = app.open_session("ext", &a, &b, Some(2)).await;
    let id = s["id"].as_str().unwrap();
    let first_expiry = ts_ms(&s["expires_at"]);

    for bad in [
        json!({ "ttl_secs": 0 }),
        json!({ "ttl_secs": 100_000_000u64 }),
    ] {
        app.patch(&format!("/v1/sessions/{id}"), &bad)
            .await
            .expect_problem(422, "validation_failed");
    }

    let before = now_ms();
    let r = app
        .patch(&format!("/v1/sessions/{id}"), &json!({ "ttl_secs": 30 }))
        .await;
    let ext = r.expect(200);
    assert_eq!(ext["id"], id);
    assert_eq!(ext["status"], "open");
    let new_expiry = ts_ms(&ext["expires_at"]);
    assert!(
        new_expiry >= before + 30_000 - 1000 && new_expiry <= now_ms() + 30_000 + 1000,
        "PATCH ttl_secs 30 should move expiry to now + 30 s: {ext}"
    );
    assert_eq!(
        app.get_session(id).await.expect(200)["expires_at"],
        ext["expires_at"]
    );

    // Past the original expiry it still routes: the routes moved too, not just the record.
    sleep_until_ms(first_expiry + 300).await;
    app.assert_connects(&a, &proxy(0), &b, id).await;
    assert_eq!(app.get_session(id).await.expect(200)["status"], "open");

    // Shortening works the same way.
    let ext = app
        .patch(&format!("/v1/sessions/{id}"), &json!({ "ttl_secs": 1 }))
        .await
        .expect(200);
    let short = ts_ms(&ext["expires_at"]);
    assert!(short < new_expiry - 20_000, "{ext}");
    sleep_until_ms(short + 150).await;
    app.assert_announces(&a, &proxy(0)).await;
    let got = app.get_session(id).await.expect(200);
    assert_eq!(got["close_reason"], "expired", "{got}");
}

#[tokio::test]
async fn close_is_idempotent() {
    let app = TestApp::start().await;
    app.pool("close", json!({ "cooloff_secs": 60 }), &proxies(1))
        .await;
    let (a, b) = (participant(0), participant(1));
    let s = app.open_session("close", &a, &b, None).await;
    let id = s["id"].as_str().unwrap();

    let first = app.close_session(id).await.expect(200);
    assert_eq!(first["id"], id);
    assert_eq!(first["status"], "closed");
    assert_eq!(first["close_reason"], "closed");
    let closed_at = ts_ms(&first["closed_at"]);
    assert!((closed_at - now_ms()).abs() < 2000, "{first}");
    assert_eq!(first["participants"], s["participants"]);
    assert_eq!(first["proxy_number"], s["proxy_number"]);

    let second = app.close_session(id).await.expect(200);
    assert_eq!(second, first, "closing twice returns the same session");
    assert_eq!(app.get_session(id).await.expect(200), first);

    app.assert_announces(&a, &proxy(0)).await;
    app.assert_announces(&b, &proxy(0)).await;
    app.patch(&format!("/v1/sessions/{id}"), &json!({ "ttl_secs": 60 }))
        .await
        .expect_problem(409, "session_closed");
}

#[tokio::test]
async fn the_reaper_frees_everything_once_cooloff_ends() {
    let app = TestApp::start().await; // reaper every 200 ms
    app.pool("reap", json!({ "cooloff_secs": 1 }), &proxies(2))
        .await;
    let expiring = app
        .open_session("reap", &participant(0), &participant(1), Some(2))
        .await;
    let closed = app
        .open_session("reap", &participant(2), &participant(3), None)
        .await;
    app.close_session(closed["id"].as_str().unwrap())
        .await
        .expect(200);
    assert!(!route_records(&app).await.is_empty());
    let shown = app.get("/v1/pools/reap").await.expect(200);
    assert_eq!(shown["open_sessions"], 1);

    sleep_until_ms(ts_ms(&expiring["expires_at"]) + 1000).await;
    eventually(
        Duration::from_secs(5),
        "the reaper to clear routes and counters",
        || async {
            let shown = app.get("/v1/pools/reap").await.expect(200);
            let numbers = app.get("/v1/pools/reap/numbers").await.expect(200);
            let loads: u64 = numbers["numbers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["open_sessions"].as_u64().unwrap())
                .sum();
            let records = route_records(&app).await;
            (shown["open_sessions"] == 0 && loads == 0 && records.is_empty()).then_some(())
        },
    )
    .await;
    for s in [&expiring, &closed] {
        app.get_session(s["id"].as_str().unwrap())
            .await
            .expect_problem(404, "session_not_found");
    }
}

/// When `a` can first have a new session (with `other`) in `pool`, polling until then: the
/// moment its cool-off ended, as seen from outside.
async fn number_back_at(app: &TestApp, pool: &str, a: &str, other: &str) -> i64 {
    eventually(
        Duration::from_secs(6),
        "a new session for a after cool-off",
        || async {
            let r = app.create_session(pool, a, other, None).await;
            match r.status {
                201 => Some(now_ms()),
                409 => None,
                _ => panic!("unexpected {} {}", r.status, r.text),
            }
        },
    )
    .await
}
