//! Calls the app starts: `POST /v1/sessions/{id}/calls` rings one participant from the
//! proxy number through the provider's call API, and the provider's signed bridge webhook
//! then connects the other with the proxy as caller ID.
//!
//! A local stand-in for each provider's call API checks the authentication and the exact
//! body hush sends, and answers as the provider does; the test then plays the provider's
//! part: it fetches the bridge URL hush gave (signed exactly as in the `relay_*` tests) and
//! posts the status callbacks to the status URL hush gave.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine as _;
use hush::config::Secret;
use serde_json::{Value, json};

use crate::harness::*;
use crate::relay_twilio::{self, PUBLIC, Twilio};

// ---------------------------------------------------------------------------------------------
// A stand-in for a provider's call API
// ---------------------------------------------------------------------------------------------

/// One request hush made to the call API.
#[derive(Clone, Debug)]
struct Made {
    method: String,
    path: String,
    authorization: String,
    content_type: String,
    body: String,
}

impl Made {
    fn form(&self) -> Vec<(String, String)> {
        decode_form(&self.body)
    }
}

#[derive(Default)]
struct ApiState {
    made: Vec<Made>,
    /// Statuses to answer before answering success again, first first.
    script: Vec<u16>,
    /// What a success answers: status and JSON body.
    success: Option<(u16, Value)>,
}

#[derive(Clone)]
struct CallApi {
    base: String,
    state: Arc<Mutex<ApiState>>,
}

async fn record(
    State(state): State<Arc<Mutex<ApiState>>>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let mut s = state.lock().unwrap();
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    s.made.push(Made {
        method: method.to_string(),
        path: uri.path().to_string(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body,
    });
    let (status, answer) = if s.script.is_empty() {
        s.success.clone().expect("a success answer")
    } else {
        let status = s.script.remove(0);
        (status, json!({ "error": "scripted", "to": "+14155550100" }))
    };
    (StatusCode::from_u16(status).unwrap(), axum::Json(answer)).into_response()
}

impl CallApi {
    async fn start(success_status: u16, success: Value) -> CallApi {
        let state = Arc::new(Mutex::new(ApiState {
            success: Some((success_status, success)),
            ..Default::default()
        }));
        let app = axum::Router::new()
            .fallback(record)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        CallApi { base, state }
    }

    fn answer_next(&self, statuses: &[u16]) {
        self.state.lock().unwrap().script = statuses.to_vec();
    }

    fn made(&self) -> Vec<Made> {
        self.state.lock().unwrap().made.clone()
    }

    #[track_caller]
    fn only(&self) -> Made {
        let made = self.made();
        assert_eq!(made.len(), 1, "{made:?}");
        made[0].clone()
    }
}

fn decode_form(body: &str) -> Vec<(String, String)> {
    fn unescape(s: &str) -> String {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
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

fn field<'a>(form: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    form.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The path and query of a URL hush handed the provider, which must be on `PUBLIC`.
#[track_caller]
fn on_public(url: &str) -> String {
    url.strip_prefix(PUBLIC)
        .unwrap_or_else(|| panic!("{url} is not on {PUBLIC}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// The app's side
// ---------------------------------------------------------------------------------------------

/// A pool with one proxy number and a session between participants 0 and 1 on it:
/// `(session id, proxy number, A, B)`. Participant 0 is labelled `rider:7`.
async fn ride(app: &TestApp) -> (String, String, String, String) {
    app.pool(
        "rides",
        json!({ "out_of_session_message": relay_twilio::ENDED }),
        &proxies(1),
    )
    .await;
    let (a, b) = (participant(0), participant(1));
    let s = app
        .create_session_with(&json!({
            "pool": "rides",
            "participants": [{ "number": a, "label": "rider:7" }, { "number": b }],
        }))
        .await
        .expect(201);
    (
        s["id"].as_str().unwrap().to_string(),
        s["proxy_number"].as_str().unwrap().to_string(),
        a,
        b,
    )
}

async fn start_call(app: &TestApp, session: &str, from: &str) -> Resp {
    app.post(
        &format!("/v1/sessions/{session}/calls"),
        &json!({ "from": from }),
    )
    .await
}

async fn interactions(app: &TestApp, session: &str) -> Vec<Value> {
    app.get(&format!("/v1/sessions/{session}/interactions"))
        .await
        .expect(200)["interactions"]
        .as_array()
        .unwrap()
        .clone()
}

async fn interaction(app: &TestApp, session: &str, id: &str) -> Value {
    interactions(app, session)
        .await
        .into_iter()
        .find(|i| i["id"] == id)
        .unwrap_or_else(|| panic!("no interaction {id}"))
}

/// Neither participant's number, in any form, in any Redis key or value, nor in any log
/// line captured so far.
async fn assert_no_numbers_stored_or_logged(app: &TestApp, numbers: &[&str]) {
    let mut needles = Vec::new();
    for n in numbers {
        needles.push(n.to_string());
        needles.push(national_digits(n));
    }
    for (key, values) in app.dump().await {
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
    let logs = captured_logs();
    for line in logs.lines() {
        for needle in &needles {
            assert!(
                !line.contains(needle.as_str()),
                "a log line holds {needle}: {line}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Twilio
// ---------------------------------------------------------------------------------------------

const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";

async fn twilio_world() -> (CallApi, TestApp) {
    let api = CallApi::start(
        201,
        json!({ "sid": "CA11112222333344445555666677778888", "status": "queued" }),
    )
    .await;
    let base = api.base.clone();
    let app = TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        c.providers.twilio_auth_token = Some(Secret::new(relay_twilio::TOKEN.into()));
        c.providers.twilio_account_sid = Some(TWILIO_SID.into());
        c.providers.twilio_api_base = base;
    })
    .await;
    (api, app)
}

/// The signed request Twilio makes once the participant answers a call hush placed.
fn twilio_bridge(call_sid: &str, proxy: &str, called: &str) -> Vec<(String, String)> {
    [
        ("AccountSid", TWILIO_SID),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call_sid),
        ("CallStatus", "in-progress"),
        ("Called", called),
        ("Caller", proxy),
        ("Direction", "outbound-api"),
        ("From", proxy),
        ("To", called),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn borrowed(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[tokio::test]
async fn twilio_places_the_call_and_its_bridge_dials_the_other_with_the_proxy() {
    let (api, app) = twilio_world().await;
    let twilio = Twilio { app: &app };
    let (id, proxy, a, b) = ride(&app).await;

    // The app asks for a call that rings B first, naming B by number.
    let made = start_call(&app, &id, &b).await.expect(201);
    let iid = made["id"].as_str().unwrap().to_string();
    assert!(iid.starts_with("int_"), "{made}");
    assert_eq!(made["session_id"], id.as_str());
    assert_eq!(made["kind"], "voice");
    assert_eq!(made["initiated_by"], "app");
    assert_eq!(made["status"], "initiated");
    assert_eq!(made["from_participant"], 1);
    assert_eq!(made["provider"], "twilio");
    assert_eq!(
        made["provider_call_id"],
        "CA11112222333344445555666677778888"
    );
    assert!(!made.to_string().contains(&national_digits(&b)), "{made}");

    // Twilio's Calls resource got exactly this.
    let req = api.only();
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.path,
        format!("/2010-04-01/Accounts/{TWILIO_SID}/Calls.json")
    );
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{TWILIO_SID}:{}", relay_twilio::TOKEN));
    assert_eq!(req.authorization, format!("Basic {basic}"));
    assert!(
        req.content_type
            .starts_with("application/x-www-form-urlencoded")
    );
    let form = req.form();
    assert_eq!(field(&form, "To"), [b.as_str()]);
    assert_eq!(field(&form, "From"), [proxy.as_str()]);
    assert_eq!(field(&form, "Method"), ["POST"]);
    assert_eq!(field(&form, "StatusCallbackMethod"), ["POST"]);
    assert_eq!(
        field(&form, "StatusCallbackEvent"),
        ["initiated", "ringing", "answered", "completed"]
    );
    let bridge = on_public(field(&form, "Url")[0]);
    assert_eq!(
        bridge,
        format!("/hooks/twilio/bridge?session={id}&interaction={iid}")
    );
    let status = on_public(field(&form, "StatusCallback")[0]);
    assert_eq!(status, format!("/hooks/twilio/status?ref={iid}"));
    let names: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names.len(), 10, "{names:?}");

    // The interaction is there, started by the app, before anyone answered.
    let i = interaction(&app, &id, &iid).await;
    assert_eq!(i["kind"], "voice");
    assert_eq!(i["status"], "initiated");
    assert_eq!(i["from_participant"], 1);
    assert_eq!(i["provider"], "twilio");

    // Twilio reports B's phone ringing.
    let call_sid = "CA11112222333344445555666677778888";
    let ringing = [
        ("CallSid", call_sid),
        ("CallStatus", "ringing"),
        ("Direction", "outbound-api"),
        ("From", proxy.as_str()),
        ("To", b.as_str()),
    ];
    relay_twilio::twiml(&twilio.post(&status, &ringing).await);
    assert_eq!(interaction(&app, &id, &iid).await["status"], "ringing");

    // B answers: Twilio fetches the bridge, which dials A with the proxy as caller ID.
    let params = twilio_bridge(call_sid, &proxy, &b);
    let answer = twilio.post(&bridge, &borrowed(&params)).await;
    relay_twilio::assert_dials(&answer, &proxy, &a);
    // Twilio retrying the bridge gets the same document, and nothing new is recorded.
    let again = twilio.post(&bridge, &borrowed(&params)).await;
    assert_eq!(again.text, answer.text);
    assert_eq!(interactions(&app, &id).await.len(), 1);

    // The call ends: the interaction completes with its duration.
    let completed = [
        ("CallDuration", "61"),
        ("CallSid", call_sid),
        ("CallStatus", "completed"),
        ("Direction", "outbound-api"),
        ("From", proxy.as_str()),
        ("To", b.as_str()),
    ];
    relay_twilio::twiml(&twilio.post(&status, &completed).await);
    let i = interaction(&app, &id, &iid).await;
    assert_eq!(i["status"], "completed");
    assert_eq!(i["duration_secs"], 61);
    assert!(i["ended_at"].is_string(), "{i}");

    // The same works naming the participant by label.
    let by_label = start_call(&app, &id, "rider:7").await.expect(201);
    assert_eq!(by_label["from_participant"], 0);
    assert_eq!(field(&api.made()[1].form(), "To"), [a.as_str()]);

    assert_no_numbers_stored_or_logged(&app, &[&a, &b]).await;
}

#[tokio::test]
async fn a_call_is_refused_for_an_ended_unknown_or_wrong_session_and_records_nothing() {
    let (api, app) = twilio_world().await;
    let (id, _, a, _) = ride(&app).await;

    // Neither participant.
    start_call(&app, &id, &participant(5))
        .await
        .expect_problem(422, "not_a_participant");
    start_call(&app, &id, "driver:1")
        .await
        .expect_problem(422, "not_a_participant");
    start_call(&app, &id, "")
        .await
        .expect_problem(422, "validation_failed");
    // Unknown sessions.
    start_call(&app, "ses_nope", &a)
        .await
        .expect_problem(404, "session_not_found");
    let other = id[..id.len() - 2].to_string() + "zz";
    start_call(&app, &other, &a)
        .await
        .expect_problem(404, "session_not_found");
    // A key without the `sessions` scope.
    let relay_only = app.key(&["relay"]).await;
    app.call(
        reqwest::Method::POST,
        &format!("/v1/sessions/{id}/calls"),
        Some(&relay_only),
        Some(&json!({ "from": a })),
    )
    .await
    .expect_problem(403, "forbidden");
    // An ended session (cooling off).
    app.close_session(&id).await.expect(200);
    start_call(&app, &id, &a)
        .await
        .expect_problem(409, "session_closed");

    assert!(api.made().is_empty(), "{:?}", api.made());
    assert!(interactions(&app, &id).await.is_empty());
}

#[tokio::test]
async fn a_provider_down_is_503_a_refusal_502_and_neither_connects() {
    let (api, app) = twilio_world().await;
    let twilio = Twilio { app: &app };
    let (id, proxy, a, b) = ride(&app).await;

    api.answer_next(&[503]);
    let down = start_call(&app, &id, &a).await;
    down.expect_problem(503, "provider_unavailable");
    assert_eq!(down.header("retry-after").as_deref(), Some("1"));
    assert!(!down.text.contains(&national_digits(&a)), "{}", down.text);

    api.answer_next(&[400]);
    let refused = start_call(&app, &id, &a).await;
    refused.expect_problem(502, "provider_refused");
    assert!(
        !refused.text.contains(&national_digits(&a)),
        "{}",
        refused.text
    );

    // Both calls are recorded as failed, never connected; a late bridge for one of them
    // connects nobody.
    let list = interactions(&app, &id).await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|i| i["status"] == "failed"), "{list:?}");
    let form = api.made()[0].form();
    let bridge = on_public(field(&form, "Url")[0]);
    let params = twilio_bridge("CA99990000999900009999000099990000", &proxy, &a);
    relay_twilio::assert_says_ended(&twilio.post(&bridge, &borrowed(&params)).await);
    assert!(
        interactions(&app, &id)
            .await
            .iter()
            .all(|i| i["status"] == "failed")
    );

    assert_no_numbers_stored_or_logged(&app, &[&a, &b]).await;
}

#[tokio::test]
async fn a_bridge_after_the_session_ended_hears_the_pools_message() {
    let (api, app) = twilio_world().await;
    let twilio = Twilio { app: &app };
    let (id, proxy, a, _) = ride(&app).await;
    start_call(&app, &id, &a).await.expect(201);
    let form = api.only().form();
    let bridge = on_public(field(&form, "Url")[0]);

    app.close_session(&id).await.expect(200);
    let params = twilio_bridge("CA12121212121212121212121212121212", &proxy, &a);
    relay_twilio::assert_says_ended(&twilio.post(&bridge, &borrowed(&params)).await);
    // Retried, the same.
    relay_twilio::assert_says_ended(&twilio.post(&bridge, &borrowed(&params)).await);

    // An unsigned or tampered bridge is refused before anything is read.
    let r = app
        .client
        .post(app.url(&bridge))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("CallSid=CA1&From=%2B1&To=%2B2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn an_idempotency_key_places_one_call() {
    let (api, app) = twilio_world().await;
    let (id, _, a, _) = ride(&app).await;
    let send = || async {
        app.send(
            app.client
                .post(app.url(&format!("/v1/sessions/{id}/calls")))
                .bearer_auth(&app.admin_key)
                .header("idempotency-key", "call-1")
                .json(&json!({ "from": a })),
        )
        .await
    };
    let first = send().await;
    let first_body = first.expect(201);
    let second = send().await;
    assert_eq!(second.expect(201), first_body);
    assert_eq!(
        second.header("idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(api.made().len(), 1);
    assert_eq!(interactions(&app, &id).await.len(), 1);

    // A failure frees the key: the retry places the call.
    api.answer_next(&[500]);
    let send2 = || async {
        app.send(
            app.client
                .post(app.url(&format!("/v1/sessions/{id}/calls")))
                .bearer_auth(&app.admin_key)
                .header("idempotency-key", "call-2")
                .json(&json!({ "from": a })),
        )
        .await
    };
    send2().await.expect_problem(503, "provider_unavailable");
    send2().await.expect(201);
    send2().await.expect(201);
    assert_eq!(api.made().len(), 3);
}

#[tokio::test]
async fn without_call_credentials_calls_are_not_configured() {
    let app = TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        c.providers.twilio_auth_token = Some(Secret::new(relay_twilio::TOKEN.into()));
    })
    .await;
    let (id, _, a, _) = ride(&app).await;
    start_call(&app, &id, &a)
        .await
        .expect_problem(409, "calls_not_configured");
    assert!(interactions(&app, &id).await.is_empty());
}
