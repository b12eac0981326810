//! Texts the app sends (`POST /v1/sessions/{id}/messages`) through each provider's messaging
//! API: a local stand-in answers each provider's path as the provider does, and checks the
//! credentials and the exact body; delivery reports come back signed as each provider signs
//! them. The text is recorded as an interaction the app started, goes out once (through
//! retries, restarts and retried requests), and is never stored or logged in clear.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey};
use hush::config::{Config, Secret};
use serde_json::{Value, json};

use crate::harness::*;
use crate::relay_plivo::Plivo;
use crate::relay_twilio::{self, Twilio};

const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
const PLIVO_ID: &str = "MAXXXXXXXXXXXXXXXXXX";
const TELNYX_KEY: &str = "KEYapp-texts-telnyx";
const VONAGE_KEY: &str = "abcd1234";
const VONAGE_SECRET: &str = "vonage-api-secret";
const PROVIDERS: [&str; 4] = ["twilio", "telnyx", "plivo", "vonage"];

// ---------------------------------------------------------------------------------------------
// A stand-in for the four messaging APIs
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Request {
    provider: &'static str,
    authorization: Option<String>,
    content_type: String,
    body: String,
    /// The provider's id for the message, when it took it.
    id: Option<String>,
    status: u16,
}

#[derive(Default)]
struct ApiState {
    requests: Vec<Request>,
    /// Statuses to answer before taking texts again, first first.
    script: Vec<u16>,
    /// Answer 503 to everything while set.
    down: bool,
}

#[derive(Clone)]
struct FakeApi {
    base: String,
    state: Arc<Mutex<ApiState>>,
}

fn provider_of(path: &str) -> Option<&'static str> {
    if path == format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json") {
        Some("twilio")
    } else if path == "/v2/messages" {
        Some("telnyx")
    } else if path == format!("/v1/Account/{PLIVO_ID}/Message/") {
        Some("plivo")
    } else if path == "/sms/json" {
        Some("vonage")
    } else {
        None
    }
}

/// Answers as each provider answers a message it took: Twilio 201 with the Message resource,
/// Telnyx 200 with `data.id`, Plivo 202 with `message_uuid: [..]`, Vonage 200 with a status
/// per part.
async fn api(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<ApiState>>>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let Some(provider) = provider_of(uri.path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut s = state.lock().unwrap();
    let failure = if s.down {
        Some(503)
    } else if s.script.is_empty() {
        None
    } else {
        Some(s.script.remove(0))
    };
    let n = s.requests.len();
    let id = match provider {
        "twilio" => format!("SM{n:032x}"),
        "vonage" => format!("0B{n:014X}"),
        _ => format!("4031{n:04x}-0000-4000-a000-00000000{n:04x}"),
    };
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_string());
    let (status, answer) = match failure {
        Some(status) => (status, json!({ "error": "stand-in failure" })),
        None => match provider {
            "twilio" => (
                201,
                json!({ "sid": id, "status": "queued", "direction": "outbound-api" }),
            ),
            "telnyx" => (
                200,
                json!({ "data": { "id": id, "record_type": "message" } }),
            ),
            "plivo" => (
                202,
                json!({ "api_id": "a1", "message": "message(s) queued", "message_uuid": [id] }),
            ),
            _ => (
                200,
                json!({ "message-count": "1", "messages": [{ "message-id": id, "status": "0" }] }),
            ),
        },
    };
    s.requests.push(Request {
        provider,
        authorization: header("authorization"),
        content_type: header("content-type").unwrap_or_default(),
        body,
        id: failure.is_none().then_some(id),
        status,
    });
    (StatusCode::from_u16(status).unwrap(), axum::Json(answer)).into_response()
}

impl FakeApi {
    async fn start() -> FakeApi {
        let state = Arc::new(Mutex::new(ApiState::default()));
        let app = axum::Router::new()
            .fallback(axum::routing::post(api))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeApi { base, state }
    }

    fn answer_next(&self, statuses: &[u16]) {
        self.state.lock().unwrap().script = statuses.to_vec();
    }

    fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    fn taken(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.id.is_some())
            .collect()
    }

    async fn wait_requests(&self, n: usize) -> Vec<Request> {
        eventually(
            Duration::from_secs(15),
            &format!("{n} API requests"),
            || {
                let got = self.requests();
                async move { (got.len() >= n).then_some(got) }
            },
        )
        .await
    }

    async fn wait_taken(&self, n: usize, limit: Duration) -> Vec<Request> {
        eventually(limit, &format!("{n} texts taken by the API"), || {
            let got = self.taken();
            async move { (got.len() >= n).then_some(got) }
        })
        .await
    }
}

/// Decodes `application/x-www-form-urlencoded`, in order.
fn decode_form(body: &str) -> Vec<(String, String)> {
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", B64.encode(format!("{user}:{password}")))
}

fn digits(e164: &str) -> String {
    e164.trim_start_matches('+').to_string()
}

/// Checks one request as the provider would: the path and its credentials, and a body with
/// exactly the fields of a text from `from` to `to` saying `text` (`reference` names the
/// interaction in the delivery-report URL of the providers that take one).
fn assert_request(r: &Request, from: &str, to: &str, text: &str, reference: &str) {
    let public = relay_twilio::PUBLIC;
    match r.provider {
        "twilio" => {
            assert_eq!(
                r.authorization,
                Some(basic(TWILIO_SID, relay_twilio::TOKEN))
            );
            assert_eq!(r.content_type, "application/x-www-form-urlencoded");
            let report = format!("{public}/hooks/twilio/status?ref={reference}");
            assert_eq!(
                decode_form(&r.body),
                pairs(&[
                    ("To", to),
                    ("From", from),
                    ("Body", text),
                    ("StatusCallback", &report)
                ]),
                "{}",
                r.body
            );
        }
        "telnyx" => {
            assert_eq!(r.authorization, Some(format!("Bearer {TELNYX_KEY}")));
            assert_eq!(r.content_type, "application/json");
            let body: Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(body, json!({ "from": from, "to": to, "text": text }));
        }
        "plivo" => {
            assert_eq!(
                r.authorization,
                Some(basic(PLIVO_ID, crate::relay_plivo::TOKEN))
            );
            assert_eq!(r.content_type, "application/json");
            let body: Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(
                body,
                json!({
                    "src": digits(from),
                    "dst": digits(to),
                    "text": text,
                    "type": "sms",
                    "url": format!("{public}/hooks/plivo/status?ref={reference}"),
                    "method": "POST",
                })
            );
        }
        "vonage" => {
            assert_eq!(
                r.authorization, None,
                "Vonage's SMS API takes the key in the form"
            );
            assert_eq!(r.content_type, "application/x-www-form-urlencoded");
            assert_eq!(
                decode_form(&r.body),
                pairs(&[
                    ("api_key", VONAGE_KEY),
                    ("api_secret", VONAGE_SECRET),
                    ("from", &digits(from)),
                    ("to", &digits(to)),
                    ("text", text),
                    ("type", "unicode"),
                ])
            );
        }
        other => panic!("unexpected provider {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------------

fn telnyx_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// API credentials (and webhook secrets, for delivery reports) of `provider` alone, its API
/// at `base`.
fn configure(c: &mut Config, provider: &str, base: &str) {
    c.public_url = Some(relay_twilio::PUBLIC.into());
    let p = &mut c.providers;
    match provider {
        "twilio" => {
            p.twilio_auth_token = Some(Secret::new(relay_twilio::TOKEN.into()));
            p.twilio_account_sid = Some(Secret::new(TWILIO_SID.into()));
            p.twilio_api_base = base.into();
        }
        "telnyx" => {
            p.telnyx_public_key = Some(Secret::new(
                B64.encode(telnyx_key().verifying_key().to_bytes()),
            ));
            p.telnyx_api_key = Some(Secret::new(TELNYX_KEY.into()));
            p.telnyx_api_base = base.into();
        }
        "plivo" => {
            p.plivo_auth_token = Some(Secret::new(crate::relay_plivo::TOKEN.into()));
            p.plivo_auth_id = Some(Secret::new(PLIVO_ID.into()));
            p.plivo_api_base = base.into();
        }
        "vonage" => {
            p.vonage_signature_secret =
                Some(Secret::new(crate::relay_vonage::SIGNATURE_SECRET.into()));
            p.vonage_api_key = Some(Secret::new(VONAGE_KEY.into()));
            p.vonage_api_secret = Some(Secret::new(VONAGE_SECRET.into()));
            p.vonage_api_base = base.into();
        }
        other => panic!("unknown provider {other}"),
    }
}

struct World {
    app: TestApp,
    api: FakeApi,
    provider: &'static str,
    a: String,
    b: String,
    proxy: String,
    session: String,
}

/// hush with `provider`'s API at a fresh stand-in, and a session between rider A and driver
/// B on a pool of one number.
async fn world(provider: &'static str) -> World {
    let api = FakeApi::start().await;
    let base = api.base.clone();
    let app = TestApp::start_with(|c| {
        configure(c, provider, &base);
        // Texts the app sends are audited only on request (HUSH_AUDIT_SESSIONS=all).
        c.audit_all_sessions = true;
    })
    .await;
    app.pool("texts", json!({ "cooloff_secs": 60 }), &proxies(1))
        .await;
    let (a, b) = (participant(30), participant(31));
    let s = app
        .create_session_with(&json!({
            "pool": "texts",
            "participants": [
                { "number": a, "label": "rider:30" },
                { "number": b, "label": "driver:31" },
            ],
        }))
        .await
        .expect(201);
    World {
        proxy: s["proxy_number"].as_str().unwrap().to_string(),
        session: s["id"].as_str().unwrap().to_string(),
        app,
        api,
        provider,
        a,
        b,
    }
}

impl World {
    async fn send(&self, to: &str, body: &str) -> Resp {
        self.send_as(to, body, None).await
    }

    async fn send_as(&self, to: &str, body: &str, key: Option<&str>) -> Resp {
        let mut req = self
            .app
            .client
            .post(
                self.app
                    .url(&format!("/v1/sessions/{}/messages", self.session)),
            )
            .bearer_auth(&self.app.admin_key)
            .json(&json!({ "to": to, "body": body }));
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        self.app.send(req).await
    }

    async fn interactions(&self) -> Vec<Value> {
        self.app.interactions(&self.session).await
    }

    async fn wait_status(&self, id: &str, status: &str) -> Value {
        eventually(
            Duration::from_secs(15),
            &format!("interaction {id} with status {status}"),
            || async {
                self.interactions()
                    .await
                    .into_iter()
                    .find(|i| i["id"] == id && i["status"] == status)
            },
        )
        .await
    }

    /// The provider's delivery report saying the text `r` was delivered, signed as the
    /// provider signs it.
    async fn report_delivered(&self, r: &Request, reference: &str) {
        let id = r.id.clone().unwrap();
        let resp = match self.provider {
            "twilio" => {
                let path = format!("/hooks/twilio/status?ref={reference}");
                Twilio { app: &self.app }
                    .post(
                        &path,
                        &[
                            ("AccountSid", TWILIO_SID),
                            ("MessageSid", &id),
                            ("SmsSid", &id),
                            ("MessageStatus", "delivered"),
                            ("SmsStatus", "delivered"),
                            ("From", &self.proxy),
                            ("To", &self.b),
                            ("ApiVersion", "2010-04-01"),
                        ],
                    )
                    .await
            }
            "plivo" => {
                let path = format!("/hooks/plivo/status?ref={reference}");
                let (from, to) = (digits(&self.proxy), digits(&self.b));
                Plivo::new(&self.app)
                    .post(
                        &path,
                        &[
                            ("MessageUUID", &id),
                            ("Status", "delivered"),
                            ("From", &from),
                            ("To", &to),
                            ("Units", "1"),
                            ("ErrorCode", "000"),
                        ],
                    )
                    .await
            }
            "telnyx" => {
                let event = json!({ "data": {
                    "event_type": "message.finalized",
                    "id": "evt-app-1",
                    "payload": {
                        "id": id,
                        "from": { "phone_number": self.proxy },
                        "to": [{ "phone_number": self.b, "status": "delivered" }],
                    },
                }})
                .to_string();
                let ts = (now_ms() / 1000).to_string();
                let sig = B64.encode(
                    telnyx_key()
                        .sign(format!("{ts}|{event}").as_bytes())
                        .to_bytes(),
                );
                let req = self
                    .app
                    .client
                    .post(self.app.url("/hooks/telnyx/status"))
                    .header("content-type", "application/json")
                    .header("telnyx-timestamp", ts)
                    .header("telnyx-signature-ed25519", sig)
                    .body(event);
                self.app.send(req).await
            }
            _ => {
                // A delivery receipt of the SMS API, to the account's SMS webhook, signed as
                // inbound texts are.
                let ts = (now_ms() / 1000).to_string();
                let (from, to) = (digits(&self.proxy), digits(&self.b));
                let mut params = pairs(&[
                    ("msisdn", &to),
                    ("to", &from),
                    ("network-code", "310260"),
                    ("messageId", &id),
                    ("price", "0.00590000"),
                    ("status", "delivered"),
                    ("scts", "2612021530"),
                    ("err-code", "0"),
                    ("api-key", VONAGE_KEY),
                    ("message-timestamp", "2026-12-02 15:30:00"),
                    ("timestamp", &ts),
                ]);
                let sig = crate::relay_vonage::sms_sig(
                    "md5hash",
                    crate::relay_vonage::SIGNATURE_SECRET,
                    &params,
                );
                params.push(("sig".into(), sig));
                let req = self
                    .app
                    .client
                    .post(self.app.url("/hooks/vonage/sms"))
                    .form(&params);
                self.app.send(req).await
            }
        };
        assert!(resp.status < 300, "{} {}", resp.status, resp.text);
    }

    /// Neither number nor `text` is anywhere in Redis, in a key or a value.
    async fn assert_nothing_in_clear(&self, text: &str) {
        let mut needles = vec![text.to_string()];
        for n in [&self.a, &self.b] {
            needles.push(n.clone());
            needles.push(national_digits(n));
        }
        for (key, values) in self.app.dump().await {
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
    }
}

/// A second look after the fact: long enough for the worker (polling every 100 ms) to have
/// sent anything it was going to.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(600)).await;
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// For each provider: 202 with the interaction, the text out once from the proxy number to
/// the participant in the provider's exact format, `sent` once taken, and `delivered` from
/// the provider's report; nothing in clear in Redis or the logs.
#[tokio::test]
async fn each_provider_sends_the_text_once_from_the_proxy() {
    for provider in PROVIDERS {
        let w = world(provider).await;
        let text = format!("Your driver is outside ({provider}) — «gate 4» & 🚗");
        let r = w.send(&w.b, &text).await;
        let it = r.expect(202);
        assert_eq!(it["kind"], "sms", "{it}");
        assert_eq!(it["initiated_by"], "app", "{it}");
        assert_eq!(it["status"], "queued", "{it}");
        assert_eq!(it["provider"], provider, "{it}");
        // B sees the text coming from the number that stands for A.
        assert_eq!(it["from_participant"], 0, "{it}");
        let (id, reference) = (
            it["id"].as_str().unwrap().to_string(),
            it["provider_ref"].as_str().unwrap().to_string(),
        );
        assert!(
            !r.text.contains(&w.b) && !r.text.contains(&text),
            "{}",
            r.text
        );

        let taken = w.api.wait_taken(1, Duration::from_secs(10)).await;
        assert_eq!(taken[0].provider, provider);
        assert_request(&taken[0], &w.proxy, &w.b, &text, &reference);
        w.wait_status(&id, "sent").await;
        w.report_delivered(&taken[0], &reference).await;
        let done = w.wait_status(&id, "delivered").await;
        assert!(done["ended_at"].is_string(), "{done}");
        settle().await;
        assert_eq!(w.api.requests().len(), 1, "{provider}: sent once");
        assert_eq!(w.interactions().await.len(), 1);
        w.assert_nothing_in_clear(&text).await;

        let logs = captured_logs();
        for needle in [w.a.as_str(), w.b.as_str(), text.as_str()] {
            assert!(!logs.contains(needle), "the logs hold {needle}");
        }
        for n in [&w.a, &w.b] {
            assert!(!logs.contains(&national_digits(n)), "the logs hold {n}");
        }
    }
}

/// `to` may be a participant's label; the text then goes to that participant's number.
#[tokio::test]
async fn a_label_names_the_recipient() {
    let w = world("twilio").await;
    let it = w.send("rider:30", "your ride is here").await.expect(202);
    assert_eq!(it["from_participant"], 1, "{it}");
    let taken = w.api.wait_taken(1, Duration::from_secs(10)).await;
    let reference = it["provider_ref"].as_str().unwrap();
    assert_request(&taken[0], &w.proxy, &w.a, "your ride is here", reference);
}

#[tokio::test]
async fn a_provider_5xx_is_retried_and_the_text_sent_once() {
    for provider in ["twilio", "plivo", "telnyx", "vonage"] {
        let w = world(provider).await;
        w.api.answer_next(&[503]);
        let it = w.send(&w.b, "second time lucky").await.expect(202);
        let id = it["id"].as_str().unwrap();
        // Retried 1 s after the first failure.
        let taken = w.api.wait_taken(1, Duration::from_secs(10)).await;
        let reference = it["provider_ref"].as_str().unwrap();
        assert_request(&taken[0], &w.proxy, &w.b, "second time lucky", reference);
        w.wait_status(id, "sent").await;
        settle().await;
        let statuses: Vec<u16> = w.api.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses.len(), 2, "{provider}: {statuses:?}");
        assert_eq!(statuses[0], 503);
    }
}

#[tokio::test]
async fn a_provider_4xx_fails_the_interaction_without_retrying() {
    for provider in ["twilio", "plivo", "telnyx", "vonage"] {
        let w = world(provider).await;
        w.api.answer_next(&[400]);
        let it = w.send(&w.b, "to a landline").await.expect(202);
        let failed = w.wait_status(it["id"].as_str().unwrap(), "failed").await;
        assert!(failed["ended_at"].is_string(), "{failed}");
        settle().await;
        assert_eq!(w.api.requests().len(), 1, "{provider}: not retried");
    }
}

/// hush stops after answering 202 and before the text is taken; another start sends it,
/// once. The text waits sealed meanwhile, and a retry of the request after the restart (same
/// Idempotency-Key) gets the first answer and sends nothing more.
#[tokio::test]
async fn a_restart_between_the_answer_and_the_send_sends_once() {
    for provider in ["twilio", "plivo", "telnyx", "vonage"] {
        restart_between_the_answer_and_the_send(provider).await;
    }
}

async fn restart_between_the_answer_and_the_send(provider: &'static str) {
    let mut w = world(provider).await;
    let text = "meet at the north gate";
    w.api.set_down(true);
    let first = w.send_as(&w.b, text, Some("restart-1")).await.expect(202);
    w.api.wait_requests(1).await;
    w.app.stop().await;

    assert_eq!(w.app.scan_keys("{p*}:ox:q").await.len(), 1);
    w.assert_nothing_in_clear(text).await;

    w.api.set_down(false);
    w.app.restart().await;
    let taken = w.api.wait_taken(1, Duration::from_secs(10)).await;
    let reference = first["provider_ref"].as_str().unwrap();
    assert_request(&taken[0], &w.proxy, &w.b, text, reference);
    w.wait_status(first["id"].as_str().unwrap(), "sent").await;

    let again = w.send_as(&w.b, text, Some("restart-1")).await;
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(again.expect(202)["id"], first["id"]);
    settle().await;
    assert_eq!(w.api.taken().len(), 1);
    assert_eq!(w.interactions().await.len(), 1);
    // Sent and settled: the queue forgot the words.
    w.assert_nothing_in_clear(text).await;
}

/// The same Idempotency-Key, in turn or at once, queues one text; another key queues
/// another; the same key with another body is a conflict.
#[tokio::test]
async fn an_idempotency_key_sends_once() {
    let w = world("plivo").await;
    let (r1, r2) = tokio::join!(
        w.send_as(&w.b, "once only", Some("k-1")),
        w.send_as(&w.b, "once only", Some("k-1")),
    );
    // One of two racing requests may find the other still running (409): it retries.
    let mut ids = Vec::new();
    for r in [r1, r2] {
        if r.status == 409 {
            r.expect_problem(409, "idempotency_conflict");
        } else {
            ids.push(r.expect(202)["id"].clone());
        }
    }
    let later = w.send_as(&w.b, "once only", Some("k-1")).await;
    assert_eq!(later.header("idempotent-replayed").as_deref(), Some("true"));
    ids.push(later.expect(202)["id"].clone());
    assert!(ids.windows(2).all(|p| p[0] == p[1]), "{ids:?}");

    w.send_as(&w.b, "other words", Some("k-1"))
        .await
        .expect_problem(422, "idempotency_conflict");
    w.send_as(&w.b, "once only", Some("k-2")).await.expect(202);
    w.api.wait_taken(2, Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(w.api.requests().len(), 2);
    assert_eq!(w.interactions().await.len(), 2);

    // The audit log has one entry per text sent, naming neither recipient nor words.
    let page = w
        .app
        .get("/v1/audit?action=session.message")
        .await
        .expect(200);
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{page}");
    for e in entries {
        assert_eq!(e["target"], format!("session:{}", w.session), "{e}");
        assert_eq!(e["detail"]["provider"], "plivo", "{e}");
        let raw = e.to_string();
        assert!(!raw.contains(&w.b) && !raw.contains("once only"), "{raw}");
    }
}

#[tokio::test]
async fn bad_requests_are_refused_and_send_nothing() {
    let w = world("vonage").await;
    // Someone who is not in the session, by number or by label.
    w.send(&participant(99), "hi")
        .await
        .expect_problem(422, "not_a_participant");
    w.send("rider:99", "hi")
        .await
        .expect_problem(422, "not_a_participant");
    w.send("+1 not a number", "hi")
        .await
        .expect_problem(422, "invalid_number");
    // An empty body, or one over 1,600 characters.
    w.send(&w.b, "")
        .await
        .expect_problem(422, "validation_failed");
    w.send(&w.b, "   ")
        .await
        .expect_problem(422, "validation_failed");
    let long = "é".repeat(1601);
    w.send(&w.b, &long)
        .await
        .expect_problem(422, "validation_failed");
    w.send(&w.b, &"é".repeat(1600)).await.expect(202);
    // An unknown field, or none of them.
    let r = w
        .app
        .post(
            &format!("/v1/sessions/{}/messages", w.session),
            &json!({ "to": w.b, "body": "x", "media": [] }),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    // An unknown session.
    let r = w
        .app
        .post(
            "/v1/sessions/ses_0000000000000000000000/messages",
            &json!({ "to": w.b, "body": "x" }),
        )
        .await;
    r.expect_problem(404, "session_not_found");
    // A session that relays calls only.
    w.app.pool("calls", json!({}), &[proxy(5)]).await;
    let voice = w
        .app
        .create_session_with(&json!({
            "pool": "calls",
            "mode": "voice",
            "participants": [{ "number": w.a }, { "number": w.b }],
        }))
        .await
        .expect(201);
    w.app
        .post(
            &format!("/v1/sessions/{}/messages", voice["id"].as_str().unwrap()),
            &json!({ "to": w.b, "body": "x" }),
        )
        .await
        .expect_problem(422, "validation_failed");
    // An ended session.
    w.app.close_session(&w.session).await.expect(200);
    w.send(&w.b, "too late")
        .await
        .expect_problem(409, "session_closed");

    w.api.wait_taken(1, Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(w.api.requests().len(), 1);
    // Problems never echo the numbers.
    let r = w.send(&participant(99), "hi").await;
    assert!(!r.text.contains(&participant(99)), "{}", r.text);
}

/// Without any provider's API credentials there is no one to send: 409, nothing queued.
#[tokio::test]
async fn without_api_credentials_the_text_is_refused() {
    let app = TestApp::start().await;
    app.pool("texts", json!({}), &proxies(1)).await;
    let (a, b) = (participant(40), participant(41));
    let s = app.open_session("texts", &a, &b, None).await;
    let id = s["id"].as_str().unwrap();
    app.post(
        &format!("/v1/sessions/{id}/messages"),
        &json!({ "to": b, "body": "hello" }),
    )
    .await
    .expect_problem(409, "provider_unavailable");
    assert!(app.scan_keys("{p*}:ox:q").await.is_empty());
}

/// A key without the `sessions` scope may not send.
#[tokio::test]
async fn sending_needs_the_sessions_scope() {
    let w = world("telnyx").await;
    let key = w.app.key(&["pools"]).await;
    let r = w
        .app
        .send(
            w.app
                .client
                .post(w.app.url(&format!("/v1/sessions/{}/messages", w.session)))
                .bearer_auth(key)
                .json(&json!({ "to": w.b, "body": "hi" })),
        )
        .await;
    r.expect_problem(403, "forbidden");
}

/// With several providers configured, the pool's `provider` sends; a pool naming none is
/// `409 provider_ambiguous`, and one naming a provider without API credentials is
/// `409 provider_unavailable`.
#[tokio::test]
async fn the_pools_provider_chooses_among_several() {
    let api = FakeApi::start().await;
    let base = api.base.clone();
    let app = TestApp::start_with(|c| {
        configure(c, "twilio", &base);
        configure(c, "plivo", &base);
    })
    .await;
    let (a, b) = (participant(50), participant(51));
    let mut sessions = Vec::new();
    for (i, (pool, provider)) in [
        ("none", None),
        ("viaplivo", Some("plivo")),
        ("viavonage", Some("vonage")),
    ]
    .into_iter()
    .enumerate()
    {
        let mut policy = json!({});
        if let Some(p) = provider {
            policy["provider"] = json!(p);
        }
        app.pool(pool, policy, &[proxy(i)]).await;
        let s = app.open_session(pool, &a, &b, None).await;
        sessions.push(s["id"].as_str().unwrap().to_string());
    }
    let body = json!({ "to": b, "body": "which way?" });
    let path = |id: &str| format!("/v1/sessions/{id}/messages");
    app.post(&path(&sessions[0]), &body)
        .await
        .expect_problem(409, "provider_ambiguous");
    let it = app.post(&path(&sessions[1]), &body).await.expect(202);
    assert_eq!(it["provider"], "plivo", "{it}");
    app.post(&path(&sessions[2]), &body)
        .await
        .expect_problem(409, "provider_unavailable");
    let taken = api.wait_taken(1, Duration::from_secs(10)).await;
    assert_eq!(taken[0].provider, "plivo");
    let reference = it["provider_ref"].as_str().unwrap();
    assert_request(&taken[0], &proxy(1), &b, "which way?", reference);
    settle().await;
    assert_eq!(api.requests().len(), 1);
}

/// The app's text is announced like a relayed one: `interaction.started` when queued and
/// `interaction.completed` with the provider's final status, both `initiated_by: app`, with
/// neither number nor words.
#[tokio::test]
async fn the_texts_interaction_events_say_the_app_started_it() {
    let receiver = crate::receiver::Receiver::start().await;
    let api = FakeApi::start().await;
    let base = api.base.clone();
    let app = TestApp::start_with(|c| {
        configure(c, "twilio", &base);
        c.callback_allow_private = true;
    })
    .await;
    app.pool(
        "texts",
        json!({ "callback_url": receiver.url("/events") }),
        &proxies(1),
    )
    .await;
    receiver.set_secrets(vec![app.callback_secret("texts").await]);
    let (a, b) = (participant(60), participant(61));
    let s = app.open_session("texts", &a, &b, None).await;
    let w = World {
        proxy: s["proxy_number"].as_str().unwrap().to_string(),
        session: s["id"].as_str().unwrap().to_string(),
        app,
        api,
        provider: "twilio",
        a,
        b,
    };
    let text = "the gate code is 4417";
    let it = w.send(&w.a, text).await.expect(202);
    let started = receiver
        .wait_for_type("interaction.started", 1, Duration::from_secs(10))
        .await
        .remove(0);
    assert_eq!(
        started.data(),
        &json!({
            "session_id": w.session,
            "interaction_id": it["id"],
            "kind": "sms",
            "initiated_by": "app",
            "access": "direct",
            "from_participant": 1,
            "pool": "texts",
            "proxy_number": w.proxy,
            "provider": "twilio",
        })
    );
    let taken = w.api.wait_taken(1, Duration::from_secs(10)).await;
    let reference = it["provider_ref"].as_str().unwrap();
    w.wait_status(it["id"].as_str().unwrap(), "sent").await;
    // The report is about the text to A this time.
    let id = taken[0].id.clone().unwrap();
    Twilio { app: &w.app }
        .post(
            &format!("/hooks/twilio/status?ref={reference}"),
            &[
                ("AccountSid", TWILIO_SID),
                ("MessageSid", &id),
                ("MessageStatus", "undelivered"),
                ("From", &w.proxy),
                ("To", &w.a),
            ],
        )
        .await
        .expect(200);
    let done = receiver
        .wait_for_type("interaction.completed", 1, Duration::from_secs(10))
        .await
        .remove(0);
    assert_eq!(done.data()["initiated_by"], "app", "{}", done.data());
    assert_eq!(done.data()["kind"], "sms");
    assert_eq!(done.data()["status"], "undelivered");
    assert_eq!(done.data()["from_participant"], 1);
    assert_eq!(done.data()["interaction_id"], it["id"]);
    for event in [&started, &done] {
        let raw = event.data().to_string();
        for needle in [w.a.as_str(), w.b.as_str(), text] {
            assert!(!raw.contains(needle), "{raw} holds {needle}");
        }
    }
}

/// An instance that dies holding the text (after claiming it, maybe after the provider took
/// it) leaves it given up once its lease runs out, not sent a second time; the interaction
/// says `failed`, and a later start sends nothing.
#[tokio::test]
async fn a_worker_dying_with_the_text_gives_it_up_rather_than_send_twice() {
    use hush::relay::outbound;
    let mut w = world("twilio").await;
    w.api.set_down(true);
    let it = w.send(&w.b, "exactly once or not at all").await.expect(202);
    w.api.wait_requests(1).await;
    w.app.stop().await;
    w.api.set_down(false);

    // Another instance claims the text when its retry falls due, and dies holding it.
    let due = crate::relay_telnyx::broker_at(&w.app.config, 10_000);
    let mut held = 0;
    for tag in due.store().outbox_tags().await.unwrap() {
        held += due
            .store()
            .outbox_claim(&tag, due.now_ms(), outbound::LEASE_MS, 10, "died", 60_000)
            .await
            .unwrap()
            .items
            .len();
    }
    assert_eq!(held, 1);
    let later = crate::relay_telnyx::broker_at(&w.app.config, outbound::LEASE_MS + 20_000);
    let http = http_client();
    assert_eq!(
        outbound::deliver_once(&later, &http, &w.app.config.providers)
            .await
            .unwrap(),
        1
    );

    w.app.restart().await;
    let failed = w.wait_status(it["id"].as_str().unwrap(), "failed").await;
    assert!(failed["ended_at"].is_string(), "{failed}");
    settle().await;
    assert!(w.api.taken().is_empty(), "{:?}", w.api.taken());
    assert_eq!(w.api.requests().len(), 1);
}
