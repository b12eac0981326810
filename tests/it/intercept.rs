//! The pre-connect intercept: the app is asked, signed, before a call connects, and its
//! answer (or its silence) decides.

use std::time::{Duration, Instant};

use hush::config::Secret;
use serde_json::{Value, json};

use crate::harness::*;
use crate::receiver::Receiver;
use crate::relay_twilio::{PUBLIC, TOKEN, Twilio, sid};

struct Setup {
    app: TestApp,
    receiver: Receiver,
    session: String,
    proxy: String,
    a: String,
}

/// A Twilio-enabled hush, a receiver for the intercept, and an open session on a pool that
/// asks it.
async fn setup(policy: Value) -> Setup {
    let app = TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        c.providers.twilio_auth_token = Some(Secret::new(TOKEN.into()));
        c.callback_allow_private = true;
    })
    .await;
    let receiver = Receiver::start().await;
    let mut body = json!({
        "out_of_session_message": "This trip is over.",
        "intercept_url": receiver.intercept_url(),
    });
    for (k, v) in policy.as_object().unwrap() {
        body[k] = v.clone();
    }
    app.pool("asks", body, &proxies(1)).await;
    let secret = app.get("/v1/pools/asks/callback-secret").await.expect(200)["secret"]
        .as_str()
        .unwrap()
        .to_string();
    receiver.set_secrets(vec![secret]);
    let (a, b) = (participant(40), participant(41));
    let s = app.open_session("asks", &a, &b, None).await;
    Setup {
        session: s["id"].as_str().unwrap().into(),
        proxy: s["proxy_number"].as_str().unwrap().into(),
        app,
        receiver,
        a,
    }
}

async fn status_of(app: &TestApp, session: &str) -> String {
    let list = app
        .get(&format!("/v1/sessions/{session}/interactions"))
        .await
        .expect(200);
    list["interactions"][0]["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn dials(r: &Resp) -> bool {
    r.status == 200 && r.text.contains("<Dial")
}

fn says(r: &Resp, message: &str) -> bool {
    r.status == 200
        && r.text.contains("<Say>")
        && r.text.contains(message)
        && !r.text.contains("<Dial")
}

#[tokio::test]
async fn an_allowing_app_is_asked_once_with_a_signed_pending_event() {
    let s = setup(json!({})).await;
    s.receiver
        .intercept_answer(200, Some(json!({ "action": "allow" })));
    let call = sid("CA");
    let r = Twilio { app: &s.app }.call(&s.a, &s.proxy, &call).await;
    assert!(dials(&r), "{}", r.text);
    let asked = s.receiver.of_type("interaction.pending");
    assert_eq!(asked.len(), 1);
    assert!(
        asked[0].verified(),
        "the question is signed with the pool's secret"
    );
    assert_eq!(asked[0].body["data"]["session_id"], json!(s.session));
    assert_eq!(asked[0].body["data"]["kind"], json!("voice"));
    assert_eq!(asked[0].body["data"]["from_participant"], json!(0));
    assert!(
        !asked[0]
            .raw
            .windows(10)
            .any(|w| w == national_digits(&s.a).as_bytes())
    );
    assert_eq!(status_of(&s.app, &s.session).await, "allowed");

    // Twilio retrying the webhook gets the same answer without a second question.
    let again = Twilio { app: &s.app }.call(&s.a, &s.proxy, &call).await;
    assert!(dials(&again));
    assert_eq!(s.receiver.of_type("interaction.pending").len(), 1);
}

#[tokio::test]
async fn a_block_answers_with_its_message_and_is_the_interactions_status() {
    let s = setup(json!({})).await;
    s.receiver.intercept_answer(
        200,
        Some(json!({ "action": "block", "message": "Your driver has left." })),
    );
    let call = sid("CA");
    let r = Twilio { app: &s.app }.call(&s.a, &s.proxy, &call).await;
    assert!(says(&r, "Your driver has left."), "{}", r.text);
    assert_eq!(status_of(&s.app, &s.session).await, "blocked");
    let again = Twilio { app: &s.app }.call(&s.a, &s.proxy, &call).await;
    assert!(
        !dials(&again),
        "a retried blocked call stays blocked: {}",
        again.text
    );
}

#[tokio::test]
async fn a_403_blocks_with_the_pools_message() {
    let s = setup(json!({})).await;
    s.receiver.intercept_answer(403, None);
    let r = Twilio { app: &s.app }
        .call(&s.a, &s.proxy, &sid("CA"))
        .await;
    assert!(says(&r, "This trip is over."), "{}", r.text);
}

#[tokio::test]
async fn an_empty_2xx_allows() {
    let s = setup(json!({})).await;
    s.receiver.intercept_answer(204, None);
    let r = Twilio { app: &s.app }
        .call(&s.a, &s.proxy, &sid("CA"))
        .await;
    assert!(dials(&r), "{}", r.text);
}

#[tokio::test]
async fn a_slow_app_gets_the_fallback_in_time() {
    for (fallback, connects) in [("allow", true), ("block", false)] {
        let s = setup(json!({ "intercept_timeout_ms": 300, "intercept_fallback": fallback })).await;
        s.receiver.delay(Duration::from_secs(3));
        let started = Instant::now();
        let r = Twilio { app: &s.app }
            .call(&s.a, &s.proxy, &sid("CA"))
            .await;
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(2500),
            "waited {waited:?} for a 300 ms intercept"
        );
        if connects {
            assert!(dials(&r), "fallback allow: {}", r.text);
            assert_eq!(status_of(&s.app, &s.session).await, "allowed");
        } else {
            assert!(says(&r, "This trip is over."), "fallback block: {}", r.text);
            assert_eq!(status_of(&s.app, &s.session).await, "blocked");
        }
    }
}

#[tokio::test]
async fn pools_without_an_intercept_ask_nobody() {
    let s = setup(json!({ "intercept_url": null })).await;
    let r = Twilio { app: &s.app }
        .call(&s.a, &s.proxy, &sid("CA"))
        .await;
    assert!(dials(&r), "{}", r.text);
    assert!(s.receiver.deliveries().is_empty());
}
