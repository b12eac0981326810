//! Several hush instances on one Redis and prefix behave as one: a change made through one
//! is seen at once through the others, whatever each keeps in memory.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn a_number_moved_between_pools_routes_on_every_instance() {
    let one = TestApp::start().await;
    let two = one.peer().await;
    one.pool("from", json!({ "cooloff_secs": 0 }), &proxies(1))
        .await;
    one.put_pool("to", json!({})).await.expect(201);
    let (a, b, c, d) = (
        participant(0),
        participant(1),
        participant(2),
        participant(3),
    );

    // Instance two learns where the number lives.
    let s = one.open_session("from", &a, &b, None).await;
    two.assert_connects(&a, &proxy(0), &b, s["id"].as_str().unwrap())
        .await;
    one.close_session(s["id"].as_str().unwrap())
        .await
        .expect(200);

    // Through instance one, the number moves to another pool and serves a session there.
    let path = format!("/v1/pools/from/numbers/{}", path_number(&proxy(0)));
    assert_eq!(one.delete(&path).await.status, 204);
    one.add_numbers("to", &[proxy(0)]).await.expect(200);
    let moved = one.open_session("to", &c, &d, None).await;
    assert_eq!(moved["proxy_number"], proxy(0));

    two.assert_connects(&c, &proxy(0), &d, moved["id"].as_str().unwrap())
        .await;
    two.assert_connects(&d, &proxy(0), &c, moved["id"].as_str().unwrap())
        .await;
    two.assert_announces(&a, &proxy(0)).await;
}

#[tokio::test]
async fn a_policy_change_is_seen_by_every_instance() {
    let one = TestApp::start().await;
    let two = one.peer().await;
    one.pool(
        "policy",
        json!({ "out_of_session_message": "Old message." }),
        &proxies(1),
    )
    .await;
    let r = two.route(&participant(0), &proxy(0), "voice").await;
    assert_eq!(r.expect(200)["message"], "Old message.");

    one.put_pool(
        "policy",
        json!({ "out_of_session_message": "New message.", "default_ttl_secs": 120 }),
    )
    .await
    .expect(200);
    let r = two.route(&participant(0), &proxy(0), "voice").await;
    assert_eq!(r.expect(200)["message"], "New message.");
    let s = two
        .open_session("policy", &participant(0), &participant(1), None)
        .await;
    let ttl = ts_ms(&s["expires_at"]) - ts_ms(&s["created_at"]);
    assert!(
        (ttl - 120_000).abs() <= 1000,
        "instance two used a stale default TTL: {s}"
    );
    // And a session made on one is closed on two.
    let closed = two
        .close_session(s["id"].as_str().unwrap())
        .await
        .expect(200);
    assert_eq!(closed["status"], "closed");
    one.assert_announces(&participant(0), &proxy(0)).await;
}

/// Two reapers and explicit closes race on the same expiring sessions: every session is
/// counted out exactly once, so counters end at zero (not below) and the numbers are whole
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_reapers_and_closes_count_each_session_out_once() {
    let one = TestApp::start_with(|c| c.reaper_interval_ms = 50).await;
    let two = one.peer().await;
    one.pool("reaped", json!({ "cooloff_secs": 1 }), &proxies(3))
        .await;
    let mut sessions = Vec::new();
    for i in 0..12 {
        // Participant 0 is in every session, so it holds all three numbers several times over
        // the test; the others are fresh pairs.
        let (a, b) = if i % 4 == 0 {
            (participant(0), participant(100 + i))
        } else {
            (participant(10 + 2 * i), participant(11 + 2 * i))
        };
        sessions.push(one.open_session("reaped", &a, &b, Some(2)).await);
    }
    let expiry = sessions
        .iter()
        .map(|s| ts_ms(&s["expires_at"]))
        .max()
        .unwrap();
    // Close half of them from both instances right around their expiry.
    sleep_until_ms(expiry - 30).await;
    let mut closes = tokio::task::JoinSet::new();
    for (i, s) in sessions.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let app = if i % 4 == 0 { &one } else { &two };
        let req = app
            .client
            .delete(app.url(&format!("/v1/sessions/{}", s["id"].as_str().unwrap())))
            .bearer_auth(&app.admin_key);
        closes.spawn(async move { req.send().await.unwrap().status().as_u16() });
    }
    while let Some(status) = closes.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }

    eventually(
        std::time::Duration::from_secs(6),
        "counters back to zero",
        || async {
            let shown = one.get("/v1/pools/reaped").await.expect(200);
            let listed = one.get("/v1/pools/reaped/numbers").await.expect(200);
            let loads: Vec<i64> = listed["numbers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["open_sessions"].as_i64().unwrap())
                .collect();
            assert!(
                loads.iter().all(|l| *l >= 0),
                "a number's count went below zero: {listed}"
            );
            let open = shown["open_sessions"].as_i64().unwrap();
            assert!(open >= 0, "the pool's count went below zero: {shown}");
            (open == 0 && loads.iter().all(|l| *l == 0)).then_some(())
        },
    )
    .await;

    // Once cool-off is over, participant 0 can hold every number again.
    sleep_until_ms(expiry + 1000 + 100).await;
    for i in 0..3 {
        let s = eventually(
            std::time::Duration::from_secs(3),
            "a session for participant 0",
            || async {
                let r = two
                    .create_session("reaped", &participant(0), &participant(200 + i), None)
                    .await;
                (r.status == 201).then_some(r.json)
            },
        )
        .await;
        assert_eq!(s["status"], "open");
    }
    let listed = one.get("/v1/pools/reaped/numbers").await.expect(200);
    let loads: Vec<u64> = listed["numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["open_sessions"].as_u64().unwrap())
        .collect();
    assert_eq!(loads, [1, 1, 1], "{listed}");
}
