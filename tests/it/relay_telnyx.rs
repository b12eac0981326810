//! Relay through Telnyx: webhooks signed as Telnyx signs them (Ed25519 over
//! `timestamp|body`), TeXML answers for calls, and texts sent through a local stand-in for
//! Telnyx's `POST /v2/messages` that records every request and fails on demand — including
//! across a hush restart between receipt and send.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey};
use hush::config::Secret;
use hush::relay::outbound::{self, OutboundSms, Via};
use serde_json::{Value, json};

use crate::harness::*;

pub(crate) const API_KEY: &str = "KEYtelnyx-test-api-key";
const MESSAGE: &str = "This conversation has ended. <Bye> & \"thanks\"";
const XML_HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

pub(crate) fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

pub(crate) fn public_key(key: &SigningKey) -> String {
    B64.encode(key.verifying_key().to_bytes())
}

// ---------------------------------------------------------------------------------------------
// A stand-in for Telnyx's messaging API
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Sent {
    authorization: Option<String>,
    body: Value,
    status: u16,
}

#[derive(Default)]
struct ApiState {
    requests: Vec<Sent>,
    /// Statuses to answer before answering 200 again, first first.
    script: Vec<u16>,
    /// Answer 500 to everything while set.
    down: bool,
}

#[derive(Clone)]
pub(crate) struct FakeTelnyx {
    pub(crate) base: String,
    state: Arc<Mutex<ApiState>>,
}

async fn messages(
    State(state): State<Arc<Mutex<ApiState>>>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let mut s = state.lock().unwrap();
    let status = if s.down {
        500
    } else if s.script.is_empty() {
        200
    } else {
        s.script.remove(0)
    };
    let n = s.requests.len();
    s.requests.push(Sent {
        authorization: headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string()),
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
        status,
    });
    let code = StatusCode::from_u16(status).unwrap();
    if status == 200 {
        (
            code,
            axum::Json(json!({ "data": { "id": format!("out-{n}"),
            "record_type": "message" } })),
        )
            .into_response()
    } else {
        (code, axum::Json(json!({ "errors": [{ "code": "10007" }] }))).into_response()
    }
}

impl FakeTelnyx {
    pub(crate) async fn start() -> FakeTelnyx {
        let state = Arc::new(Mutex::new(ApiState::default()));
        let app = axum::Router::new()
            .route("/v2/messages", axum::routing::post(messages))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeTelnyx { base, state }
    }

    fn answer_next(&self, statuses: &[u16]) {
        self.state.lock().unwrap().script = statuses.to_vec();
    }

    fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    fn requests(&self) -> Vec<Sent> {
        self.state.lock().unwrap().requests.clone()
    }

    pub(crate) fn delivered(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200)
            .map(|r| r.body)
            .collect()
    }

    /// Waits until `n` texts were accepted, and returns them.
    pub(crate) async fn wait_delivered(&self, n: usize, limit: Duration) -> Vec<Value> {
        eventually(limit, &format!("{n} texts sent through the API"), || {
            let got = self.delivered();
            async move { (got.len() >= n).then_some(got) }
        })
        .await
    }

    async fn wait_requests(&self, n: usize) -> Vec<Sent> {
        eventually(
            Duration::from_secs(10),
            &format!("{n} API requests"),
            || {
                let got = self.requests();
                async move { (got.len() >= n).then_some(got) }
            },
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Signed webhooks
// ---------------------------------------------------------------------------------------------

/// Posts a body to a Telnyx hook with the headers Telnyx sends.
pub(crate) struct Hook<'a> {
    app: &'a TestApp,
    key: SigningKey,
}

impl Hook<'_> {
    pub(crate) fn new(app: &TestApp) -> Hook<'_> {
        Hook {
            app,
            key: signing_key(),
        }
    }

    fn sign_with(key: &SigningKey, ts: &str, body: &str) -> String {
        B64.encode(key.sign(format!("{ts}|{body}").as_bytes()).to_bytes())
    }

    pub(crate) async fn raw(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
        headers: Option<(String, String)>,
    ) -> Resp {
        let mut req = self
            .app
            .client
            .post(self.app.url(path))
            .header("content-type", content_type)
            .body(body.to_string());
        if let Some((ts, sig)) = headers {
            req = req
                .header("telnyx-timestamp", ts)
                .header("telnyx-signature-ed25519", sig);
        }
        self.app.send(req).await
    }

    pub(crate) async fn post(&self, path: &str, content_type: &str, body: &str) -> Resp {
        let ts = (now_ms() / 1000).to_string();
        let sig = Self::sign_with(&self.key, &ts, body);
        self.raw(path, content_type, body, Some((ts, sig))).await
    }

    pub(crate) async fn call(&self, sid: &str, from: &str, to: &str) -> Resp {
        let body = form(&[
            ("AccountSid", "f5586561-8ff0-4291-a51b-c7dfe4139ff9"),
            ("CallSid", sid),
            ("From", from),
            ("To", to),
            ("CallStatus", "ringing"),
            ("Direction", "inbound"),
        ]);
        self.post(
            "/hooks/telnyx/voice",
            "application/x-www-form-urlencoded",
            &body,
        )
        .await
    }

    async fn text(&self, id: &str, from: &str, to: &str, text: &str, media: &[&str]) -> Resp {
        let body = received(id, from, to, text, media).to_string();
        self.post("/hooks/telnyx/sms", "application/json", &body)
            .await
    }

    async fn status_json(&self, event: &Value) -> Resp {
        self.post(
            "/hooks/telnyx/status",
            "application/json",
            &event.to_string(),
        )
        .await
    }
}

/// `application/x-www-form-urlencoded`, every byte but letters and digits escaped.
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A `message.received` event as Telnyx sends it.
fn received(id: &str, from: &str, to: &str, text: &str, media: &[&str]) -> Value {
    json!({
        "data": {
            "event_type": "message.received",
            "id": format!("evt-{id}"),
            "occurred_at": "2026-01-23T18:10:02.574Z",
            "payload": {
                "direction": "inbound",
                "id": id,
                "type": if media.is_empty() { "SMS" } else { "MMS" },
                "from": { "phone_number": from, "carrier": "T-MOBILE USA, INC.",
                          "line_type": "Wireless" },
                "to": [{ "phone_number": to, "status": "webhook_delivered",
                         "carrier": "TELNYX LLC", "line_type": "VoIP" }],
                "cc": [],
                "text": text,
                "media": media.iter().map(|u| json!({ "url": u,
                    "content_type": "image/jpeg", "size": 1024 })).collect::<Vec<_>>(),
                "encoding": "UCS-2",
                "parts": 1,
            },
            "record_type": "event",
        },
        "meta": { "attempt": 1, "delivered_to": "https://hush.example/hooks/telnyx/sms" },
    })
}

fn texml(inner: &str) -> String {
    format!("{XML_HEAD}<Response>{inner}</Response>")
}

// ---------------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------------

struct World {
    app: TestApp,
    api: FakeTelnyx,
    a: String,
    b: String,
    proxy: String,
    session: String,
}

/// hush with Telnyx configured against a fresh stand-in API, and a session A–B on a pool of
/// two numbers.
async fn world() -> World {
    let api = FakeTelnyx::start().await;
    let app = telnyx_app(&api).await;
    app.pool(
        "tx",
        json!({ "cooloff_secs": 0, "out_of_session_message": MESSAGE }),
        &proxies(2),
    )
    .await;
    let (a, b) = (participant(10), participant(11));
    let s = app.open_session("tx", &a, &b, None).await;
    World {
        proxy: s["proxy_number"].as_str().unwrap().to_string(),
        session: s["id"].as_str().unwrap().to_string(),
        app,
        api,
        a,
        b,
    }
}

/// hush with Telnyx's webhooks and its API, at the stand-in `api`.
async fn telnyx_app(api: &FakeTelnyx) -> TestApp {
    let base = api.base.clone();
    TestApp::start_with(|c| {
        c.providers.telnyx_public_key = Some(Secret::new(public_key(&signing_key())));
        c.providers.telnyx_api_key = Some(Secret::new(API_KEY.into()));
        c.providers.telnyx_api_base = base;
    })
    .await
}

impl World {
    async fn interactions(&self) -> Vec<Value> {
        self.app.interactions(&self.session).await
    }

    async fn wait_interaction_status(&self, status: &str) -> Value {
        eventually(
            Duration::from_secs(10),
            &format!("an interaction with status {status}"),
            || async {
                self.interactions()
                    .await
                    .into_iter()
                    .find(|i| i["status"] == status)
            },
        )
        .await
    }
}

/// A second look after the fact: long enough for the worker (polling every 100 ms) to have
/// sent anything it was going to.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

// ---------------------------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn calls_reach_the_other_party_with_the_proxy_as_caller_id() {
    let w = world().await;
    let hook = Hook::new(&w.app);
    let (a, b, p) = (&w.a, &w.b, &w.proxy);

    let r = hook.call("v3:call-a", a, p).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.content_type().contains("xml"), "{:?}", r.content_type());
    assert_eq!(
        r.text,
        texml(&format!(
            r#"<Dial callerId="{p}"><Number>{b}</Number></Dial>"#
        ))
    );
    let r = hook.call("v3:call-b", b, p).await;
    assert_eq!(
        r.text,
        texml(&format!(
            r#"<Dial callerId="{p}"><Number>{a}</Number></Dial>"#
        ))
    );
    // A retried webhook: the same answer, still one interaction per call.
    let again = hook.call("v3:call-a", a, p).await;
    assert!(again.text.contains(&format!("<Number>{b}</Number>")));
    let calls = w.interactions().await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|i| i["kind"] == "voice" && i["provider"] == "telnyx")
    );

    // Out of session: a stranger, and a withheld caller ID, hear the pool's message.
    let escaped = "This conversation has ended. &lt;Bye&gt; &amp; &quot;thanks&quot;";
    for (sid, from) in [
        ("v3:stranger", participant(12)),
        ("v3:hidden", "anonymous".into()),
    ] {
        let r = hook.call(sid, &from, p).await;
        assert_eq!(r.text, texml(&format!("<Say>{escaped}</Say><Hangup/>")));
    }
    // A number that is no pool's is rejected.
    let r = hook.call("v3:nowhere", a, &proxy202(7)).await;
    assert_eq!(r.text, texml("<Reject/>"));

    // Status callbacks (TeXML's form fields) complete the interaction.
    let status = form(&[
        ("CallSid", "v3:call-a"),
        ("CallStatus", "completed"),
        ("CallDuration", "42"),
        ("From", a),
        ("To", p),
    ]);
    let r = hook
        .post(
            "/hooks/telnyx/status",
            "application/x-www-form-urlencoded",
            &status,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let done = w.wait_interaction_status("completed").await;
    assert_eq!(done["duration_secs"], 42);
    assert_eq!(done["provider_ref"], "v3:call-a");
    assert_eq!(done["from_participant"], 0);
    // No text went anywhere.
    assert!(w.api.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Texts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn texts_relay_byte_identical_from_the_proxy() {
    let w = world().await;
    let hook = Hook::new(&w.app);
    let (a, b, p) = (&w.a, &w.b, &w.proxy);
    let long: String = "<&>\"'😀é".chars().cycle().take(1600).collect();
    assert_eq!(long.chars().count(), 1600);
    let media = [
        "https://media.example/a.jpg?x=1&y=<2>",
        "https://media.example/b.png",
    ];
    let cases: Vec<(&str, &String, &String, String, Vec<&str>)> = vec![
        (
            "msg-1",
            a,
            b,
            "<Body>Tom & \"Jerry\" 'here'</Body> ]]> 👋🏽".into(),
            media.to_vec(),
        ),
        ("msg-2", b, a, "ok, at the north gate ✓".into(), vec![]),
        ("msg-3", a, b, long.clone(), vec![]),
    ];
    for (id, from, _, text, media) in &cases {
        let r = hook.text(id, from, p, text, media).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let sent = w.api.wait_delivered(3, Duration::from_secs(10)).await;
    assert_eq!(sent.len(), 3);
    for (_, _, to, text, media) in &cases {
        let got = sent
            .iter()
            .find(|s| s["text"] == json!(text))
            .unwrap_or_else(|| panic!("no text {text:?} among {sent:?}"));
        assert_eq!(got["from"], json!(p), "the sender is always the proxy");
        assert_eq!(got["to"], json!(to));
        if media.is_empty() {
            assert!(got.get("media_urls").is_none_or(|m| m == &json!([])));
        } else {
            assert_eq!(got["media_urls"], json!(media));
        }
    }
    for r in w.api.requests() {
        assert_eq!(
            r.authorization.as_deref(),
            Some(&*format!("Bearer {API_KEY}"))
        );
    }
    // Each text is an interaction, marked sent once the API accepted it.
    let texts = w.interactions().await;
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(texts.iter().all(|i| i["kind"] == "sms"));
    eventually(Duration::from_secs(5), "all texts marked sent", || async {
        w.interactions()
            .await
            .iter()
            .all(|i| i["status"] == "sent")
            .then_some(())
    })
    .await;

    // Telnyx's delivery report for a text hush sent finishes its interaction; one for a
    // message hush does not know changes nothing.
    let report = |id: &str, status: &str| {
        json!({ "data": { "event_type": "message.finalized", "id": "evt-f",
            "payload": { "id": id, "direction": "outbound",
                "from": { "phone_number": p },
                "to": [{ "phone_number": b, "status": status }] } } })
    };
    let first = w.api.requests()[0].clone();
    assert_eq!(first.status, 200);
    let out_id = "out-0";
    hook.status_json(&report("out-unknown", "delivery_failed"))
        .await
        .expect(200);
    // The sms URL gets delivery reports too (a messaging profile has one URL).
    let r = hook
        .post(
            "/hooks/telnyx/sms",
            "application/json",
            &report(out_id, "delivered").to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let delivered = w.wait_interaction_status("delivered").await;
    let expected_ref = cases
        .iter()
        .find(|c| json!(c.3) == first.body["text"])
        .unwrap()
        .0;
    assert_eq!(delivered["provider_ref"], expected_ref);
    assert!(delivered.get("ended_at").is_some());
    assert_eq!(
        w.interactions()
            .await
            .iter()
            .filter(|i| i["status"] == "delivery_failed")
            .count(),
        0
    );
}

#[tokio::test]
async fn texts_out_of_session_get_the_pool_message_and_unknown_numbers_nothing() {
    let w = world().await;
    let hook = Hook::new(&w.app);
    let stranger = participant(12);
    // To a number that is no pool's: 200, and nothing is sent.
    let r = hook
        .text("msg-nowhere", &w.a, &proxy202(7), "hello?", &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = hook
        .text("msg-stranger", &stranger, &w.proxy, "hi it's me", &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sent = w.api.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(
        sent[0],
        json!({ "from": w.proxy, "to": stranger, "text": MESSAGE })
    );
    settle().await;
    assert_eq!(w.api.requests().len(), 1);
    assert!(w.interactions().await.is_empty());
}

#[tokio::test]
async fn bad_signatures_are_refused_before_anything_is_read() {
    let w = world().await;
    let hook = Hook::new(&w.app);
    let now = now_ms() / 1000;
    let wrong = SigningKey::from_bytes(&[9; 32]);
    let call = form(&[("CallSid", "v3:x"), ("From", &w.a), ("To", &w.proxy)]);
    let text = received("msg-forged", &w.a, &w.proxy, "forged", &[]).to_string();
    let status = form(&[
        ("CallSid", "v3:x"),
        ("CallStatus", "completed"),
        ("To", &w.proxy),
    ]);
    let routes = [
        (
            "/hooks/telnyx/voice",
            "application/x-www-form-urlencoded",
            &call,
        ),
        ("/hooks/telnyx/sms", "application/json", &text),
        (
            "/hooks/telnyx/status",
            "application/x-www-form-urlencoded",
            &status,
        ),
    ];
    for (path, ct, body) in routes {
        let key = &hook.key;
        let ts = now.to_string();
        // Well past the 300 s window: hush reads its own clock later than `now`, and the exact
        // boundary is the unit tests' to check.
        let stale = (now - 330).to_string();
        let future = (now + 330).to_string();
        let cases: Vec<(&str, Option<(String, String)>)> = vec![
            ("no signature", None),
            (
                "signature of another body",
                Some((ts.clone(), Hook::sign_with(key, &ts, "{}"))),
            ),
            (
                "signature over another timestamp",
                Some((
                    ts.clone(),
                    Hook::sign_with(key, &(now - 1).to_string(), body),
                )),
            ),
            (
                "stale timestamp",
                Some((stale.clone(), Hook::sign_with(key, &stale, body))),
            ),
            (
                "future timestamp",
                Some((future.clone(), Hook::sign_with(key, &future, body))),
            ),
            (
                "wrong key",
                Some((ts.clone(), Hook::sign_with(&wrong, &ts, body))),
            ),
            ("garbage", Some((ts.clone(), "not-a-signature".into()))),
            (
                "no timestamp",
                Some((String::new(), Hook::sign_with(key, "", body))),
            ),
        ];
        for (what, headers) in cases {
            let r = hook.raw(path, ct, body, headers).await;
            assert_eq!(r.status, 403, "{what} on {path}: {}", r.text);
            r.expect_problem(403, "invalid_signature");
        }
    }
    settle().await;
    assert!(w.api.requests().is_empty(), "a forged text was sent");
    assert!(
        w.interactions().await.is_empty(),
        "a forged webhook was recorded"
    );
    assert!(
        w.app.scan_keys("*:ox:*").await.is_empty() && w.app.scan_keys("{ox}*").await.is_empty(),
        "a forged text was queued"
    );

    // The same requests, signed by the configured key and fresh, go through.
    let r = hook.call("v3:x", &w.a, &w.proxy).await;
    assert!(r.text.contains("<Dial"), "{}", r.text);
    hook.post("/hooks/telnyx/sms", "application/json", &text)
        .await
        .expect(200);
    w.api.wait_delivered(1, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_retried_text_webhook_relays_once() {
    let w = world().await;
    let hook = Hook::new(&w.app);
    let body = "only once, please";
    // Telnyx retries a webhook it thinks failed; several copies may even arrive together.
    let (r1, r2, r3) = tokio::join!(
        hook.text("msg-dup", &w.a, &w.proxy, body, &[]),
        hook.text("msg-dup", &w.a, &w.proxy, body, &[]),
        hook.text("msg-dup", &w.a, &w.proxy, body, &[]),
    );
    for r in [r1, r2, r3] {
        assert_eq!(r.status, 200, "{}", r.text);
    }
    w.api.wait_delivered(1, Duration::from_secs(10)).await;
    // And once more after it was sent.
    hook.text("msg-dup", &w.a, &w.proxy, body, &[])
        .await
        .expect(200);
    settle().await;
    assert_eq!(w.api.requests().len(), 1, "{:?}", w.api.requests());
    assert_eq!(w.interactions().await.len(), 1);
}

#[tokio::test]
async fn api_failures_are_retried_and_the_text_is_sent_once() {
    let w = world().await;
    let hook = Hook::new(&w.app);
    w.api.answer_next(&[500, 503]);
    hook.text("msg-flaky", &w.a, &w.proxy, "third time lucky", &[])
        .await
        .expect(200);
    // Backoff: 1 s after the first failure, 5 s after the second.
    let sent = w.api.wait_delivered(1, Duration::from_secs(15)).await;
    assert_eq!(sent[0]["text"], "third time lucky");
    let statuses: Vec<u16> = w.api.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 503, 200]);
    w.wait_interaction_status("sent").await;
    settle().await;
    assert_eq!(w.api.requests().len(), 3);
}

#[tokio::test]
async fn a_refused_text_is_not_retried_and_its_interaction_fails() {
    let w = world().await;
    let hook = Hook::new(&w.app);
    w.api.answer_next(&[422]);
    hook.text("msg-refused", &w.a, &w.proxy, "to a landline", &[])
        .await
        .expect(200);
    w.api.wait_requests(1).await;
    w.wait_interaction_status("failed").await;
    // The next text goes out as usual.
    hook.text("msg-next", &w.a, &w.proxy, "next", &[])
        .await
        .expect(200);
    w.api.wait_delivered(1, Duration::from_secs(10)).await;
    settle().await;
    let statuses: Vec<u16> = w.api.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [422, 200]);
}

#[tokio::test]
async fn a_restart_between_receipt_and_send_sends_the_text_once() {
    let mut w = world().await;
    let text = "meet at the north gate";
    w.api.set_down(true);
    Hook::new(&w.app)
        .text("msg-restart", &w.a, &w.proxy, text, &[])
        .await
        .expect(200);
    w.api.wait_requests(1).await;
    w.app.stop().await;

    // While hush is down the text waits in Redis, sealed: neither the numbers nor the words
    // can be read there.
    // It waits in the queue of the proxy number's shard.
    assert_eq!(w.app.scan_keys("{p*}:ox:q").await.len(), 1);
    let mut needles = vec![text.to_string()];
    for n in [&w.a, &w.b] {
        needles.push(n.clone());
        needles.push(national_digits(n));
    }
    for (key, values) in w.app.dump().await {
        for needle in &needles {
            assert!(!key.contains(needle.as_str()), "{key} holds {needle}");
            for v in &values {
                assert!(
                    !contains_bytes(v, needle.as_bytes()),
                    "{key} holds {needle}"
                );
            }
        }
    }

    w.api.set_down(false);
    w.app.restart().await;
    let sent = w.api.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(sent[0]["text"], text);
    assert_eq!(sent[0]["to"], json!(w.b));
    // The same webhook, retried by Telnyx after the restart, adds nothing.
    Hook::new(&w.app)
        .text("msg-restart", &w.a, &w.proxy, text, &[])
        .await
        .expect(200);
    settle().await;
    assert_eq!(w.api.delivered().len(), 1);
    assert_eq!(w.app.scan_keys("*:ox:q").await.len(), 0);
}

#[tokio::test]
async fn texts_wait_in_their_shards_slot_and_two_instances_send_each_once() {
    let api = FakeTelnyx::start().await;
    let app = telnyx_app(&api).await;
    let peer = app.peer().await;
    let policy = json!({ "cooloff_secs": 0 });
    app.pool("tx-a", policy.clone(), &[proxy(0)]).await;
    app.pool("tx-b", policy, &[proxy(1)]).await;
    let (a, b) = (participant(10), participant(11));
    let (c, d) = (participant(12), participant(13));
    app.open_session("tx-a", &a, &b, None).await;
    app.open_session("tx-b", &c, &d, None).await;
    let (to_app, to_peer) = (Hook::new(&app), Hook::new(&peer));
    let send = |round: &'static str| {
        let (to_app, to_peer, a, c) = (&to_app, &to_peer, &a, &c);
        async move {
            for i in 0..3 {
                // Each instance takes webhooks for both pools.
                let hook = if i % 2 == 0 { to_app } else { to_peer };
                for (from, proxy) in [(a, proxy(0)), (c, proxy(1))] {
                    let id = format!("msg-{round}-{i}-{}", &proxy[proxy.len() - 2..]);
                    hook.text(&id, from, &proxy, &format!("text {id}"), &[])
                        .await
                        .expect(200);
                }
            }
        }
    };

    // While the API fails, the texts wait: each pool's in its own shard's queue, in the
    // shard's slot, which on a Cluster is not one node for every text.
    api.set_down(true);
    send("first").await;
    api.wait_requests(6).await;
    let queues = app.scan_keys("*:ox:q").await;
    assert_eq!(queues.len(), 2, "{queues:?}");
    assert!(app.scan_keys("{ox}*").await.is_empty());
    let slots: Vec<u16> = queues
        .iter()
        .map(|k| hush::store::keys::hash_slot(k))
        .collect();
    assert_ne!(slots[0], slots[1], "{queues:?}");
    for q in &queues {
        let tag = &q[..q.len() - "ox:q".len()];
        let transitions = format!("{tag}x");
        assert_eq!(
            hush::store::keys::hash_slot(q),
            hush::store::keys::hash_slot(&transitions),
            "{q} is not in its shard's slot"
        );
    }

    // Once it answers, both instances work both queues; with more texts arriving meanwhile,
    // every text goes out exactly once.
    api.set_down(false);
    send("second").await;
    api.wait_delivered(12, Duration::from_secs(20)).await;
    settle().await;
    let sent = api.delivered();
    assert_eq!(sent.len(), 12, "{sent:?}");
    let mut texts: Vec<&str> = sent.iter().map(|s| s["text"].as_str().unwrap()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 12, "a text went out twice: {sent:?}");
    for s in &sent {
        let pool_a = s["from"] == json!(proxy(0));
        assert_eq!(s["to"], json!(if pool_a { &b } else { &d }), "{s}");
    }
    let broker = broker_at(&app.config, 0);
    assert_eq!(broker.store().outbox_pending().await.unwrap(), 0);
    assert!(app.scan_keys("*:ox:q").await.is_empty());
}

#[tokio::test]
async fn a_text_queued_by_an_earlier_version_is_sent_after_the_upgrade() {
    let mut w = world().await;
    // A text relayed while the API is down waits in the queue...
    w.api.set_down(true);
    let hook = Hook::new(&w.app);
    hook.text("msg-old", &w.a, &w.proxy, "queued before the upgrade", &[])
        .await
        .expect(200);
    w.api.wait_requests(1).await;
    w.app.stop().await;
    // ...which is moved, as it is, to where every text waited before texts were queued per
    // shard: the shared `{ox}` tag, due now.
    let mut con = w.app.redis().await;
    let queue = w.app.scan_keys("{p*}:ox:q").await.pop().unwrap();
    let tag = queue.strip_suffix("q").unwrap();
    let old = format!("{}:{{ox}}:", w.app.prefix);
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(&queue)
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    let record: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(format!("{tag}m:{}", ids[0]))
        .query_async(&mut con)
        .await
        .unwrap();
    let mut hset = redis::cmd("HSET");
    hset.arg(format!("{old}m:{}", ids[0]));
    for (f, v) in &record {
        hset.arg(f).arg(v);
    }
    let _: () = hset.query_async(&mut con).await.unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(format!("{old}q"))
        .arg(0)
        .arg(&ids[0])
        .query_async(&mut con)
        .await
        .unwrap();
    for k in [queue.clone(), format!("{tag}m:{}", ids[0])] {
        let _: () = redis::cmd("DEL")
            .arg(k)
            .query_async(&mut con)
            .await
            .unwrap();
    }

    w.api.set_down(false);
    w.app.restart().await;
    let sent = w.api.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(sent[0]["text"], "queued before the upgrade");
    assert_eq!(sent[0]["to"], json!(w.b));
    w.wait_interaction_status("sent").await;
    assert!(w.app.scan_keys("{ox}:q").await.is_empty());
    // Its delivery report still finds the interaction.
    let out_id = format!("out-{}", w.api.requests().len() - 1);
    let report = json!({ "data": { "event_type": "message.finalized", "id": "evt-old",
        "payload": { "id": out_id, "direction": "outbound",
            "from": { "phone_number": w.proxy },
            "to": [{ "phone_number": w.b, "status": "delivered" }] } } });
    Hook::new(&w.app).status_json(&report).await.expect(200);
    w.wait_interaction_status("delivered").await;
    // Telnyx sending the webhook again finds the text it sent before the upgrade.
    Hook::new(&w.app)
        .text("msg-old", &w.a, &w.proxy, "queued before the upgrade", &[])
        .await
        .expect(200);
    settle().await;
    assert_eq!(w.api.delivered().len(), 1);
    assert!(w.app.scan_keys("{p*}:ox:m:*").await.is_empty());
}

#[tokio::test]
async fn routes_are_absent_when_telnyx_is_not_configured() {
    let app = TestApp::start().await;
    for path in [
        "/hooks/telnyx/voice",
        "/hooks/telnyx/sms",
        "/hooks/telnyx/status",
    ] {
        let r = app.send(app.client.post(app.url(path)).body("{}")).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text);
    }
}

// ---------------------------------------------------------------------------------------------
// The queue itself, driven step by step with a clock the test moves
// ---------------------------------------------------------------------------------------------

struct ShiftedClock(AtomicI64);

impl hush::domain::Clock for ShiftedClock {
    fn now_ms(&self) -> i64 {
        now_ms() + self.0.load(Ordering::SeqCst)
    }
}

/// A broker on this config's Redis and prefix whose clock runs `shift` ahead.
pub(crate) fn broker_at(config: &hush::config::Config, shift: i64) -> hush::broker::Broker {
    let crypto =
        hush::crypto::Crypto::new(config.index_key.as_ref().unwrap(), &config.data_keys).unwrap();
    let store = hush::store::Store::connect(&config.redis_url, &config.redis_prefix).unwrap();
    hush::broker::Broker::new(store, crypto, Arc::new(ShiftedClock(AtomicI64::new(shift))))
}

#[tokio::test]
async fn a_worker_that_dies_holding_a_text_leaves_it_to_another_and_none_sends_twice() {
    let api = FakeTelnyx::start().await;
    let mut config = fresh_config(&shared_redis().url());
    config.providers.telnyx_api_key = Some(Secret::new(API_KEY.into()));
    config.providers.telnyx_api_base = api.base.clone();
    let broker = broker_at(&config, 0);
    let http = http_client();
    let msg = |key: &str| OutboundSms {
        via: Via::Telnyx,
        from: hush::domain::E164::parse(&proxy(0)).unwrap(),
        to: hush::domain::E164::parse(&participant(20)).unwrap(),
        text: format!("text {key}"),
        media: vec![],
        key: format!("telnyx:{key}"),
        report_url: None,
    };

    // An instance claims a text and dies holding it: it may have died before the request to
    // the provider, or after the provider took the text and before it could record that.
    // No pool owns the number, so the text waits in the shared queue.
    outbound::enqueue(&broker, msg("crash")).await.unwrap();
    let tag = broker.store().outbox_tag(None);
    let held = broker
        .store()
        .outbox_claim(&tag, now_ms(), outbound::LEASE_MS, 10, "dead", 60_000)
        .await
        .unwrap()
        .items;
    assert_eq!(held.len(), 1);
    // Nobody else may take it while the lease lasts...
    let p = &config.providers;
    assert_eq!(outbound::deliver_once(&broker, &http, p).await.unwrap(), 0);
    // ...and once it has run out, the next instance gives it up instead of sending it a
    // second time: a person never gets the same text twice.
    let later = broker_at(&config, outbound::LEASE_MS + 1_000);
    assert_eq!(outbound::deliver_once(&later, &http, p).await.unwrap(), 1);
    assert_eq!(outbound::deliver_once(&later, &http, p).await.unwrap(), 0);
    assert!(api.delivered().is_empty(), "{:?}", api.delivered());
    let record: Vec<Option<String>> = {
        let mut con = later.store().connection();
        redis::cmd("HMGET")
            .arg(format!("{tag}m:{}", held[0].id))
            .arg("s")
            .arg("r")
            .arg("b")
            .query_async(&mut con)
            .await
            .unwrap()
    };
    assert_eq!(
        record,
        [Some("f".into()), Some("outcome unknown".into()), None],
        "given up, its text forgotten"
    );
    // The dead instance's token settles nothing now.
    let stale = broker
        .store()
        .outbox_settle(
            &tag,
            &held[0].id,
            &held[0].token,
            hush::store::outbox::Settle::Retry { due: 0 },
        )
        .await
        .unwrap();
    assert!(!stale);
    assert_eq!(outbound::deliver_once(&later, &http, p).await.unwrap(), 0);
    assert!(api.delivered().is_empty());

    // A worker that stops cleanly hands its texts back untried; they are sent, once.
    outbound::enqueue(&broker, msg("handed-back"))
        .await
        .unwrap();
    let held = broker
        .store()
        .outbox_claim(&tag, now_ms(), outbound::LEASE_MS, 10, "stopping", 60_000)
        .await
        .unwrap()
        .items;
    assert_eq!(held.len(), 1);
    let release = hush::store::outbox::Settle::Release { due: now_ms() };
    assert!(
        broker
            .store()
            .outbox_settle(&tag, &held[0].id, &held[0].token, release)
            .await
            .unwrap()
    );
    assert_eq!(outbound::deliver_once(&broker, &http, p).await.unwrap(), 1);
    assert_eq!(api.delivered().len(), 1);

    // Many instances racing on the same due texts: each text goes out exactly once.
    for i in 0..5 {
        outbound::enqueue(&broker, msg(&format!("race-{i}")))
            .await
            .unwrap();
    }
    let racers: Vec<_> = (0..8).map(|_| broker_at(&config, 0)).collect();
    let mut passes = tokio::task::JoinSet::new();
    for b in racers {
        let (http, p) = (http.clone(), config.providers.clone());
        passes.spawn(async move { outbound::deliver_once(&b, &http, &p).await.unwrap() });
    }
    let mut handled = 0;
    while let Some(n) = passes.join_next().await {
        handled += n.unwrap();
    }
    assert_eq!(handled, 5);
    let sent = api.delivered();
    assert_eq!(sent.len(), 6);
    let mut texts: Vec<&str> = sent.iter().map(|s| s["text"].as_str().unwrap()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 6, "a text went out twice: {sent:?}");
    assert_eq!(broker.store().outbox_pending().await.unwrap(), 0);
}

#[tokio::test]
async fn a_retried_call_hears_the_block_message_it_heard_first() {
    let app = TestApp::start_with(|c| {
        c.providers.telnyx_public_key = Some(Secret::new(public_key(&signing_key())));
        c.callback_allow_private = true;
    })
    .await;
    let p = crate::intercept::blocking_pool(&app).await;
    let hook = Hook::new(&app);
    let call = format!("v3:{:032x}", rand::random::<u128>());
    crate::intercept::retries_stay_blocked(
        &app,
        &p,
        || hook.call(&call, &p.a, &p.proxy),
        |r| {
            r.text
                == texml(&format!(
                    "<Say>{}</Say><Hangup/>",
                    hush::relay::xml_escape(crate::intercept::BLOCKED)
                ))
        },
    )
    .await;
}

#[tokio::test]
async fn texts_sent_through_the_api_are_counted_by_provider_and_outcome() {
    let api = FakeTelnyx::start().await;
    let mut config = fresh_config(&shared_redis().url());
    config.providers.telnyx_api_key = Some(Secret::new(API_KEY.into()));
    config.providers.telnyx_api_base = api.base.clone();
    let broker = broker_at(&config, 0);
    let sent = || {
        hush::telemetry::METRICS
            .outbound_texts
            .with_label_values(&["telnyx", "sent"])
            .get()
    };
    let before = sent();
    outbound::enqueue(
        &broker,
        OutboundSms {
            via: Via::Telnyx,
            from: hush::domain::E164::parse(&proxy(0)).unwrap(),
            to: hush::domain::E164::parse(&participant(21)).unwrap(),
            text: "counted".into(),
            media: vec![],
            key: "telnyx:counted".into(),
            report_url: None,
        },
    )
    .await
    .unwrap();
    let http = http_client();
    assert_eq!(
        outbound::deliver_once(&broker, &http, &config.providers)
            .await
            .unwrap(),
        1
    );
    assert!(sent() > before, "a sent text was not counted");
    let page = hush::telemetry::render();
    assert!(
        page.contains("hush_outbound_texts_total{outcome=\"sent\",provider=\"telnyx\"}"),
        "{page}"
    );
}
