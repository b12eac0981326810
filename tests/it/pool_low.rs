//! pool.low: the app hears once when a pool's numbers fill up past its threshold, and again
//! only after the pool has come back below it.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::receiver::Receiver;

#[tokio::test]
async fn pool_low_fires_once_per_crossing() {
    let app = TestApp::start_with(|c| {
        c.callback_allow_private = true;
        c.event_retry_schedule_ms = vec![200, 400];
    })
    .await;
    let receiver = Receiver::start().await;
    app.pool(
        "busy",
        json!({
            "callback_url": receiver.url("/events"),
            "low_threshold_pct": 50,
            "cooloff_secs": 0,
        }),
        &proxies(4),
    )
    .await;
    let secret = app.callback_secret("busy").await;
    receiver.set_secrets(vec![secret]);

    // One participant in every session, so each takes a number of its own: 1/4, then 2/4.
    let hub = participant(60);
    let first = app.open_session("busy", &hub, &participant(61), None).await;
    let second = app.open_session("busy", &hub, &participant(62), None).await;
    let lows = receiver
        .wait_for_type("pool.low", 1, Duration::from_secs(5))
        .await;
    assert_eq!(lows[0].body["data"]["pool"], json!("busy"));
    assert_eq!(lows[0].body["data"]["busy_numbers"], json!(2));
    assert_eq!(lows[0].body["data"]["total_numbers"], json!(4));
    assert!(lows[0].verified());

    // Further sessions above the threshold say nothing new.
    let third = app.open_session("busy", &hub, &participant(63), None).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.of_type("pool.low").len(), 1);

    // Back below the threshold, then over it again: a second pool.low.
    for s in [&first, &second, &third] {
        app.close_session(s["id"].as_str().unwrap())
            .await
            .expect(200);
    }
    app.open_session("busy", &hub, &participant(64), None).await;
    app.open_session("busy", &hub, &participant(65), None).await;
    receiver
        .wait_for_type("pool.low", 2, Duration::from_secs(5))
        .await;
}
