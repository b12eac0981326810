//! Session options: what a pool's policy gives its sessions and what a create request may
//! choose instead (recording, call time limit, idle expiry), and idle expiry itself: exact to
//! the millisecond for routing and the API, pushed forward by every relayed call or text.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

fn body(pool: &str, a: &str, b: &str, extra: Value) -> Value {
    let mut v = json!({
        "pool": pool,
        "participants": [{ "number": a }, { "number": b }],
        "ttl_secs": 600,
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

#[tokio::test]
async fn a_pool_gives_its_options_and_a_session_may_choose_others() {
    let app = TestApp::start().await;
    app.pool(
        "rec",
        json!({ "record": true, "max_call_secs": 900, "idle_ttl_secs": 3600,
                "provider": "twilio", "number_selection": "avoid_sticky" }),
        &proxies(3),
    )
    .await;
    let pool = app.get("/v1/pools/rec").await.expect(200);
    assert_eq!(
        (
            &pool["record"],
            &pool["record_channels"],
            &pool["max_call_secs"],
            &pool["idle_ttl_secs"],
            &pool["provider"],
            &pool["number_selection"]
        ),
        (
            &json!(true),
            &json!("dual"),
            &json!(900),
            &json!(3600),
            &json!("twilio"),
            &json!("avoid_sticky")
        ),
        "{pool}"
    );
    // A PATCH leaves what it does not name.
    let patched = app
        .patch("/v1/pools/rec", &json!({ "record_channels": "mono" }))
        .await
        .expect(200);
    assert_eq!(
        (&patched["record"], &patched["record_channels"]),
        (&json!(true), &json!("mono"))
    );

    let (a, b, c) = (participant(0), participant(1), participant(2));
    let s = app
        .create_session_with(&body("rec", &a, &b, json!({})))
        .await
        .expect(201);
    assert_eq!(
        (
            &s["record"],
            &s["record_channels"],
            &s["max_call_secs"],
            &s["idle_ttl_secs"]
        ),
        (&json!(true), &json!("mono"), &json!(900), &json!(3600)),
        "{s}"
    );
    let idle_at = ts_ms(&s["idle_expires_at"]);
    assert!(
        (idle_at - ts_ms(&s["created_at"]) - 3_600_000).abs() <= 1000,
        "{s}"
    );
    // Read back as created.
    let got = app.get_session(s["id"].as_str().unwrap()).await.expect(200);
    for k in [
        "record",
        "record_channels",
        "max_call_secs",
        "idle_ttl_secs",
        "expires_at",
    ] {
        assert_eq!(got[k], s[k], "{k}: {got}");
    }

    let chosen = app
        .create_session_with(&body(
            "rec",
            &a,
            &c,
            json!({ "record": false, "max_call_secs": null, "idle_ttl_secs": 120 }),
        ))
        .await
        .expect(201);
    assert_eq!(
        (
            &chosen["record"],
            chosen.get("record_channels"),
            &chosen["max_call_secs"],
            &chosen["idle_ttl_secs"]
        ),
        (&json!(false), None, &json!(null), &json!(120)),
        "{chosen}"
    );

    for (bad, field) in [
        (json!({ "record_channels": "stereo" }), "record_channels"),
        (json!({ "max_call_secs": 0 }), "max_call_secs"),
        (json!({ "max_call_secs": 14401 }), "max_call_secs"),
        (json!({ "idle_ttl_secs": 0 }), "idle_ttl_secs"),
        // A wrong type is named by the type it should have.
        (json!({ "record": "yes" }), "boolean"),
    ] {
        let r = app
            .create_session_with(&body("rec", &b, &c, bad.clone()))
            .await;
        let p = r.expect_problem(422, "validation_failed");
        assert!(
            p["detail"].as_str().unwrap_or("").contains(field),
            "{bad}: {p}"
        );
    }
    for bad in [
        json!({ "max_call_secs": 14401 }),
        json!({ "idle_ttl_secs": 59 }),
        json!({ "provider": "acme" }),
        json!({ "number_selection": "random" }),
        json!({ "record_channels": "both" }),
    ] {
        app.patch("/v1/pools/rec", &bad)
            .await
            .expect_problem(422, "validation_failed");
    }
}

#[tokio::test]
async fn an_idle_session_ends_on_time_and_every_interaction_pushes_it() {
    // The reaper does not run: ending must not wait for it.
    let app = TestApp::start_with(|c| c.reaper_interval_ms = 600_000).await;
    app.pool("idle", json!({ "cooloff_secs": 1 }), &proxies(1))
        .await;
    let (a, b) = (participant(0), participant(1));
    let s = app
        .create_session_with(&body("idle", &a, &b, json!({ "idle_ttl_secs": 2 })))
        .await
        .expect(201);
    let id = s["id"].as_str().unwrap();
    let p = s["proxy_number"].as_str().unwrap();
    let first = ts_ms(&s["idle_expires_at"]);

    // A call a second in moves the deadline two seconds on from then.
    sleep_until_ms(first - 1000).await;
    let routed_at = now_ms();
    app.assert_connects(&a, p, &b, id).await;
    let got = app.get_session(id).await.expect(200);
    let moved = ts_ms(&got["idle_expires_at"]);
    assert!(moved > first, "the call pushed the idle deadline: {got}");
    assert!(
        (moved - routed_at - 2000).abs() <= 500,
        "{moved} vs {routed_at}: {got}"
    );
    // The hard expiry is still the one it was made with.
    assert_eq!(got["expires_at"], s["expires_at"]);

    // Past the first deadline, still open.
    sleep_until_ms(first + 200).await;
    assert_eq!(app.get_session(id).await.expect(200)["status"], "open");
    app.assert_connects(&b, p, &a, id).await;
    let got = app.get_session(id).await.expect(200);
    let last = ts_ms(&got["idle_expires_at"]);

    sleep_until_ms(last + 150).await;
    let ended = app.get_session(id).await.expect(200);
    assert_eq!(
        (ended["status"].as_str(), ended["close_reason"].as_str()),
        (Some("closed"), Some("idle")),
        "{ended}"
    );
    assert!((ts_ms(&ended["closed_at"]) - last).abs() <= 50, "{ended}");
    assert!(ended.get("idle_expires_at").is_none(), "{ended}");
    app.assert_announces(&a, p).await;
    app.assert_announces(&b, p).await;
    // An ended session cannot be extended back to life.
    app.patch(&format!("/v1/sessions/{id}"), &json!({ "ttl_secs": 60 }))
        .await
        .expect_problem(409, "session_closed");
    // Closing it now keeps the reason it ended with.
    let closed = app.close_session(id).await.expect(200);
    assert_eq!(closed["close_reason"], "idle", "{closed}");

    // After the cool-off the pair can have the number again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = app
        .create_session_with(&body("idle", &a, &b, json!({})))
        .await
        .expect(201);
    assert_eq!(again["proxy_number"], s["proxy_number"]);
    assert!(again.get("idle_expires_at").is_none(), "{again}");
}

#[tokio::test]
async fn the_reaper_ends_an_idle_session_with_its_reason_and_frees_the_number() {
    let receiver = crate::receiver::Receiver::start().await;
    let app = TestApp::start_with(|c| {
        c.reaper_interval_ms = 100;
        c.callback_allow_private = true;
    })
    .await;
    app.pool(
        "reap",
        json!({ "cooloff_secs": 0, "callback_url": receiver.url("/events"), "idle_ttl_secs": 60 }),
        &proxies(1),
    )
    .await;
    let (a, b) = (participant(0), participant(1));
    let s = app
        .create_session_with(&body("reap", &a, &b, json!({ "idle_ttl_secs": 1 })))
        .await
        .expect(201);
    let id = s["id"].as_str().unwrap().to_string();
    let closed = eventually(Duration::from_secs(10), "session.closed", || async {
        receiver
            .of_type("session.closed")
            .into_iter()
            .find(|d| d.data()["session_id"] == id.as_str())
    })
    .await;
    assert_eq!(closed.data()["reason"], "idle", "{}", closed.data());
    // The number is free again: a second pair gets it while the first is gone.
    eventually(Duration::from_secs(10), "the record released", || async {
        let r = app.get_session(&id).await;
        (r.status == 404).then_some(())
    })
    .await;
    let pool = app.get("/v1/pools/reap").await.expect(200);
    assert_eq!(pool["open_sessions"], 0, "{pool}");
    // Extending an open idle session keeps its idle deadline.
    let s = app
        .create_session_with(&body("reap", &a, &b, json!({})))
        .await
        .expect(201);
    let id = s["id"].as_str().unwrap();
    let extended = app
        .patch(&format!("/v1/sessions/{id}"), &json!({ "ttl_secs": 7200 }))
        .await
        .expect(200);
    assert_eq!(
        extended["idle_expires_at"], s["idle_expires_at"],
        "{extended}"
    );
    assert_ne!(extended["expires_at"], s["expires_at"]);
}
