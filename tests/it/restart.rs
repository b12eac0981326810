//! Nothing lost: everything the API accepted is still there after hush restarts.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn sessions_survive_a_restart() {
    let mut app = TestApp::start().await;
    app.pool("keep", json!({ "cooloff_secs": 0 }), &proxies(2))
        .await;
    let (a, b, c) = (participant(0), participant(1), participant(2));
    let s = app.open_session("keep", &a, &b, None).await;
    let id = s["id"].as_str().unwrap().to_string();
    let p = s["proxy_number"].as_str().unwrap().to_string();
    let idem = app
        .send(
            app.client
                .post(app.url("/v1/sessions"))
                .bearer_auth(&app.admin_key)
                .header("Idempotency-Key", "before-restart")
                .json(&json!({ "pool": "keep",
                    "participants": [{ "number": c }, { "number": b }] })),
        )
        .await
        .expect(201);
    let pool_before = app.get("/v1/pools/keep").await.expect(200);

    app.restart().await;

    assert_eq!(app.get_session(&id).await.expect(200), s);
    app.assert_connects(&a, &p, &b, &id).await;
    app.assert_connects(&b, &p, &a, &id).await;
    assert_eq!(app.get("/v1/pools/keep").await.expect(200), pool_before);

    // The idempotency record survived too: a replay returns the same session.
    let replay = app
        .send(
            app.client
                .post(app.url("/v1/sessions"))
                .bearer_auth(&app.admin_key)
                .header("Idempotency-Key", "before-restart")
                .json(&json!({ "pool": "keep",
                    "participants": [{ "number": c }, { "number": b }] })),
        )
        .await
        .expect(201);
    assert_eq!(replay, idem);

    // Allocation state survived: a still holds p, so a's next session gets the other number.
    let s2 = app.open_session("keep", &a, &participant(3), None).await;
    assert_ne!(s2["proxy_number"], p);

    // And the session can still be closed.
    app.close_session(&id).await.expect(200);
    app.assert_announces(&a, &p).await;
}
