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
    let secret = app.callback_secret("asks").await;
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

// ---------------------------------------------------------------------------------------------
// Retries get the first answer
// ---------------------------------------------------------------------------------------------

/// The message the app blocks with in the retry tests: not the pool's, so a retry that
/// re-derived its answer would show.
pub const BLOCKED: &str = "Your driver has left <for good> & \"won't\" call back.";

/// An open session on a pool whose intercept (at `receiver`) blocks everything with
/// [`BLOCKED`]. The app must allow private callback targets.
pub struct Blocking {
    pub receiver: Receiver,
    pub session: String,
    pub proxy: String,
    pub a: String,
    pub b: String,
}

pub async fn blocking_pool(app: &TestApp) -> Blocking {
    let receiver = Receiver::start().await;
    app.pool(
        "blocks",
        json!({
            "out_of_session_message": "This trip is over.",
            "intercept_url": receiver.intercept_url(),
        }),
        &[proxy202(7)],
    )
    .await;
    let secret = app.callback_secret("blocks").await;
    receiver.set_secrets(vec![secret]);
    receiver.intercept_answer(200, Some(json!({ "action": "block", "message": BLOCKED })));
    let (a, b) = (participant(60), participant(61));
    let s = app.open_session("blocks", &a, &b, None).await;
    Blocking {
        receiver,
        session: s["id"].as_str().unwrap().into(),
        proxy: s["proxy_number"].as_str().unwrap().into(),
        a,
        b,
    }
}

/// The retry script every provider's test follows: `send` delivers the same webhook again
/// each time it is called and `blocked` says whether an answer carries [`BLOCKED`].
pub async fn retries_stay_blocked<F, Fut>(
    app: &TestApp,
    p: &Blocking,
    send: F,
    blocked: fn(&Resp) -> bool,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    let first = send().await;
    assert!(blocked(&first), "the first answer: {}", first.text);
    assert_eq!(p.receiver.of_type("interaction.pending").len(), 1);

    // The app changes its mind; the provider retries: the first answer again, unasked.
    p.receiver
        .intercept_answer(200, Some(json!({ "action": "allow" })));
    let again = send().await;
    assert!(blocked(&again), "a retry: {}", again.text);
    assert_eq!(p.receiver.of_type("interaction.pending").len(), 1);

    // A retry across the session's end still hears the block message.
    app.close_session(&p.session).await.expect(200);
    let after = send().await;
    assert!(
        blocked(&after),
        "a retry after the session ended: {}",
        after.text
    );
    let list = app
        .get(&format!("/v1/sessions/{}/interactions", p.session))
        .await
        .expect(200);
    let list = list["interactions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["status"], "blocked");
}

fn twilio_blocked(r: &Resp) -> bool {
    r.status == 200
        && !r.text.contains("<Dial")
        && r.text.contains(&hush::relay::xml_escape(BLOCKED))
}

async fn twilio_blocking_app() -> TestApp {
    TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        c.providers.twilio_auth_token = Some(Secret::new(TOKEN.into()));
        c.callback_allow_private = true;
    })
    .await
}

#[tokio::test]
async fn a_retried_twilio_call_hears_the_block_message_it_heard_first() {
    let app = twilio_blocking_app().await;
    let p = blocking_pool(&app).await;
    let call = sid("CA");
    let twilio = Twilio { app: &app };
    retries_stay_blocked(
        &app,
        &p,
        || twilio.call(&p.a, &p.proxy, &call),
        twilio_blocked,
    )
    .await;
}

#[tokio::test]
async fn a_retried_twilio_text_gets_the_block_message_it_got_first() {
    let app = twilio_blocking_app().await;
    let p = blocking_pool(&app).await;
    let message = sid("SM");
    let twilio = Twilio { app: &app };
    retries_stay_blocked(
        &app,
        &p,
        || twilio.text(&p.b, &p.proxy, &message, "are you there?"),
        |r| twilio_blocked(r) && r.text.contains("<Message"),
    )
    .await;
}

#[tokio::test]
async fn a_retry_while_the_app_is_still_deciding_gets_the_fallback_then_the_verdict_sticks() {
    let s = setup(json!({ "intercept_timeout_ms": 5000, "intercept_fallback": "block" })).await;
    s.receiver
        .intercept_answer(200, Some(json!({ "action": "allow" })));
    // The app answers late, but in time: the retry below lands while it deliberates.
    s.receiver.delay(Duration::from_millis(2000));
    let call = sid("CA");
    let twilio = Twilio { app: &s.app };
    let (first, retry) = tokio::join!(twilio.call(&s.a, &s.proxy, &call), async {
        eventually(Duration::from_secs(5), "the app to be asked", || async {
            (!s.receiver.of_type("interaction.pending").is_empty()).then_some(())
        })
        .await;
        twilio.call(&s.a, &s.proxy, &call).await
    });
    assert!(dials(&first), "the app allowed: {}", first.text);
    assert!(
        says(&retry, "This trip is over."),
        "fallback meanwhile: {}",
        retry.text
    );
    // Once decided, retries get the decision.
    let later = twilio.call(&s.a, &s.proxy, &call).await;
    assert!(dials(&later), "{}", later.text);
    assert_eq!(s.receiver.of_type("interaction.pending").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// POST /v1/route takes the same path
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_route_api_records_interactions_sends_events_and_asks_the_intercept() {
    let app = TestApp::start_with(|c| c.callback_allow_private = true).await;
    let receiver = Receiver::start().await;
    app.pool(
        "api",
        json!({
            "out_of_session_message": "This trip is over.",
            "callback_url": receiver.url("/events"),
            "intercept_url": receiver.intercept_url(),
        }),
        &proxies(1),
    )
    .await;
    let secret = app.callback_secret("api").await;
    receiver.set_secrets(vec![secret]);
    let (a, b) = (participant(70), participant(71));
    let s = app.open_session("api", &a, &b, None).await;
    let (session, proxy) = (
        s["id"].as_str().unwrap(),
        s["proxy_number"].as_str().unwrap(),
    );
    let app = &app;
    let route = |body: Value| async move { app.post("/v1/route", &body).await };

    // Allowed: connects, asked once, one interaction and its event.
    receiver.intercept_answer(200, Some(json!({ "action": "allow" })));
    let call = json!({ "from": a, "to": proxy, "kind": "voice", "reference": "call-1" });
    let r = route(call.clone()).await.expect(200);
    assert_eq!(r["action"], "connect", "{r}");
    assert_eq!(r["to"], json!(b));
    assert_eq!(receiver.of_type("interaction.pending").len(), 1);
    let started = receiver
        .wait_for_type("interaction.started", 1, Duration::from_secs(10))
        .await;
    assert_eq!(started[0].body["data"]["provider"], "api");
    assert_eq!(started[0].body["data"]["session_id"], json!(session));

    // Blocked with the app's message, and a retry of it gets that message again.
    receiver.intercept_answer(200, Some(json!({ "action": "block", "message": BLOCKED })));
    let text = json!({ "from": b, "to": proxy, "kind": "sms", "reference": "msg-1" });
    let r = route(text.clone()).await.expect(200);
    assert_eq!(r, json!({ "action": "announce", "message": BLOCKED }));
    receiver.intercept_answer(200, Some(json!({ "action": "allow" })));
    assert_eq!(route(text).await.expect(200), r);
    assert_eq!(route(call).await.expect(200)["action"], "connect");
    assert_eq!(receiver.of_type("interaction.pending").len(), 2);

    // Without a reference each request is an interaction of its own.
    let unnamed = json!({ "from": a, "to": proxy, "kind": "voice" });
    assert_eq!(
        route(unnamed.clone()).await.expect(200)["action"],
        "connect"
    );
    assert_eq!(route(unnamed).await.expect(200)["action"], "connect");

    let list = app
        .get(&format!("/v1/sessions/{session}/interactions"))
        .await
        .expect(200);
    let list = list["interactions"].as_array().unwrap();
    let statuses: Vec<(&str, &str)> = list
        .iter()
        .map(|i| {
            (
                i["provider_ref"].as_str().unwrap(),
                i["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(list.len(), 4, "{list:?}");
    assert!(statuses.contains(&("call-1", "allowed")), "{statuses:?}");
    assert!(statuses.contains(&("msg-1", "blocked")), "{statuses:?}");
    assert!(list.iter().all(|i| i["provider"] == "api"), "{list:?}");

    // A reference must be one a retry can name again.
    app.post(
        "/v1/route",
        &json!({ "from": a, "to": proxy, "kind": "voice", "reference": "no spaces" }),
    )
    .await
    .expect_problem(422, "validation_failed");
}
