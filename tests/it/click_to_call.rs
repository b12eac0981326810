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
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
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

/// A second session on the pool `ride` made, between participants 2 and 3, with one call
/// participant 2 made through it: `(session id, that call's interaction, proxy, 2)`.
async fn ride_again(app: &TestApp) -> (String, String, String, String) {
    let (a, b) = (participant(2), participant(3));
    let s = app.open_session("rides", &a, &b, None).await;
    let (id, proxy) = (
        s["id"].as_str().unwrap(),
        s["proxy_number"].as_str().unwrap(),
    );
    let twilio = Twilio { app };
    let sid = relay_twilio::sid("CA");
    relay_twilio::assert_dials(&twilio.call(&a, proxy, &sid).await, proxy, &b);
    let relayed = app.interactions(id).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    (id.to_string(), relayed, proxy.to_string(), a)
}

async fn start_call(app: &TestApp, session: &str, from: &str) -> Resp {
    app.post(
        &format!("/v1/sessions/{session}/calls"),
        &json!({ "from": from }),
    )
    .await
}

async fn interaction(app: &TestApp, session: &str, id: &str) -> Value {
    app.interactions(session)
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
        // Calls the app starts are audited only on request (HUSH_AUDIT_SESSIONS=all).
        c.audit_all_sessions = true;
        c.public_url = Some(PUBLIC.into());
        c.providers.twilio_auth_token = Some(Secret::new(relay_twilio::TOKEN.into()));
        c.providers.twilio_account_sid = Some(Secret::new(TWILIO_SID.into()));
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
    // B is rung first; the proxy number stands for A, whom the interaction is "from".
    assert_eq!(made["to_participant"], 1);
    assert_eq!(made["from_participant"], 0);
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
    assert_eq!(i["initiated_by"], "app");
    assert_eq!(i["from_participant"], 0);
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
    assert_eq!(app.interactions(&id).await.len(), 1);

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
    assert_eq!(by_label["to_participant"], 0);
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
    assert!(app.interactions(&id).await.is_empty());
}

#[tokio::test]
async fn a_provider_down_is_503_a_refusal_502_and_neither_connects() {
    let (api, app) = twilio_world().await;
    let twilio = Twilio { app: &app };
    let (id, proxy, a, b) = ride(&app).await;

    api.answer_next(&[503]);
    let down = start_call(&app, &id, &a).await;
    down.expect_problem(503, "provider_down");
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
    let list = app.interactions(&id).await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|i| i["status"] == "failed"), "{list:?}");
    let form = api.made()[0].form();
    let bridge = on_public(field(&form, "Url")[0]);
    let params = twilio_bridge("CA99990000999900009999000099990000", &proxy, &a);
    relay_twilio::assert_says_ended(&twilio.post(&bridge, &borrowed(&params)).await);
    assert!(
        app.interactions(&id)
            .await
            .iter()
            .all(|i| i["status"] == "failed")
    );

    assert_no_numbers_stored_or_logged(&app, &[&a, &b]).await;
}

#[tokio::test]
async fn an_unreachable_provider_is_503() {
    // A port nothing listens on: the connection is refused at once.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let app = TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        c.providers.twilio_auth_token = Some(Secret::new(relay_twilio::TOKEN.into()));
        c.providers.twilio_account_sid = Some(Secret::new(TWILIO_SID.into()));
        c.providers.twilio_api_base = closed;
    })
    .await;
    let (id, _, a, _) = ride(&app).await;
    let r = start_call(&app, &id, &a).await;
    r.expect_problem(503, "provider_down");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(app.interactions(&id).await[0]["status"], "failed");
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

    // A signed bridge naming no call the app started (a made-up interaction, or a call a
    // participant made) reaches nobody: Twilio is told to reject it.
    let open = ride_again(&app).await;
    for interaction in ["int_madeup".to_string(), open.1.clone()] {
        let path = format!(
            "/hooks/twilio/bridge?session={}&interaction={interaction}",
            open.0
        );
        let params = twilio_bridge("CA34343434343434343434343434343434", &open.2, &open.3);
        let r = twilio.post(&path, &borrowed(&params)).await;
        let doc = relay_twilio::twiml(&r);
        assert_eq!(doc.names(), ["Reject"], "{}", r.text);
    }

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
    assert_eq!(app.interactions(&id).await.len(), 1);

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
    send2().await.expect_problem(503, "provider_down");
    send2().await.expect(201);
    send2().await.expect(201);
    assert_eq!(api.made().len(), 3);

    // The audit log has one entry per call placed, naming no number.
    let page = app.get("/v1/audit?action=session.call").await.expect(200);
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{page}");
    for e in entries {
        assert_eq!(e["target"], format!("session:{id}"), "{e}");
        assert_eq!(e["detail"]["provider"], "twilio", "{e}");
        assert!(!e.to_string().contains(&national_digits(&a)), "{e}");
    }
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
        .expect_problem(409, "provider_unavailable");
    assert!(app.interactions(&id).await.is_empty());
}

#[tokio::test]
async fn with_several_providers_and_none_named_the_call_is_ambiguous() {
    use crate::relay_plivo as rp;
    let app = TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        c.providers.twilio_auth_token = Some(Secret::new(relay_twilio::TOKEN.into()));
        c.providers.twilio_account_sid = Some(Secret::new(TWILIO_SID.into()));
        c.providers.plivo_auth_token = Some(Secret::new(rp::TOKEN.into()));
        c.providers.plivo_auth_id = Some(Secret::new(PLIVO_AUTH_ID.into()));
    })
    .await;
    let (id, _, a, _) = ride(&app).await;
    start_call(&app, &id, &a)
        .await
        .expect_problem(409, "provider_ambiguous");
    assert!(app.interactions(&id).await.is_empty());
}

#[tokio::test]
async fn the_pools_provider_places_the_call() {
    use crate::relay_plivo as rp;
    let plivo_api = CallApi::start(201, json!({ "request_uuid": "r-1" })).await;
    let twilio_api = CallApi::start(201, json!({ "sid": "CA1" })).await;
    let (pb, tb) = (plivo_api.base.clone(), twilio_api.base.clone());
    let app = TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        c.providers.twilio_auth_token = Some(Secret::new(relay_twilio::TOKEN.into()));
        c.providers.twilio_account_sid = Some(Secret::new(TWILIO_SID.into()));
        c.providers.twilio_api_base = tb;
        c.providers.plivo_auth_token = Some(Secret::new(rp::TOKEN.into()));
        c.providers.plivo_auth_id = Some(Secret::new(PLIVO_AUTH_ID.into()));
        c.providers.plivo_api_base = pb;
    })
    .await;
    let (id, _, a, _) = ride(&app).await;
    app.patch("/v1/pools/rides", &json!({ "provider": "plivo" }))
        .await
        .expect(200);
    // The pool's policy is cached for a moment.
    let made = eventually(
        std::time::Duration::from_secs(5),
        "a call through plivo",
        || async {
            let r = start_call(&app, &id, &a).await;
            (r.status == 201 && r.json["provider"] == "plivo").then_some(r.json)
        },
    )
    .await;
    assert_eq!(made["provider_call_id"], "r-1");
    assert_eq!(plivo_api.made().len(), 1);

    // A pool naming a provider that cannot place calls.
    app.patch("/v1/pools/rides", &json!({ "provider": "vonage" }))
        .await
        .expect(200);
    eventually(
        std::time::Duration::from_secs(5),
        "provider_unavailable",
        || async {
            let r = start_call(&app, &id, &a).await;
            (r.status == 409).then_some(r)
        },
    )
    .await
    .expect_problem(409, "provider_unavailable");
}

#[tokio::test]
async fn the_bridge_meets_the_intercept_and_the_call_sends_interaction_events() {
    let api = CallApi::start(201, json!({ "sid": "CA5555", "status": "queued" })).await;
    let base = api.base.clone();
    let app = TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        c.providers.twilio_auth_token = Some(Secret::new(relay_twilio::TOKEN.into()));
        c.providers.twilio_account_sid = Some(Secret::new(TWILIO_SID.into()));
        c.providers.twilio_api_base = base;
        c.callback_allow_private = true;
    })
    .await;
    let twilio = Twilio { app: &app };
    let receiver = crate::receiver::Receiver::start().await;
    app.pool(
        "asks",
        json!({
            "callback_url": receiver.url("/events"),
            "intercept_url": receiver.intercept_url(),
        }),
        &proxies(1),
    )
    .await;
    receiver.set_secrets(vec![app.callback_secret("asks").await]);
    let (a, b) = (participant(60), participant(61));
    let s = app.open_session("asks", &a, &b, None).await;
    let (id, proxy) = (
        s["id"].as_str().unwrap(),
        s["proxy_number"].as_str().unwrap(),
    );
    let wait = std::time::Duration::from_secs(10);

    let iid = start_call(&app, id, &a).await.expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = receiver
        .wait_for_type("interaction.started", 1, wait)
        .await
        .remove(0);
    assert!(started.verified());
    assert_eq!(
        started.data(),
        &json!({
            "session_id": id,
            "interaction_id": iid,
            "kind": "voice",
            "initiated_by": "app",
            "access": "direct",
            "from_participant": 1,
            "pool": "asks",
            "proxy_number": proxy,
            "provider": "twilio",
        })
    );

    // The app blocks the call when A answers: A hears the block message, B is not dialled.
    receiver.intercept_answer(
        200,
        Some(json!({ "action": "block", "message": "Your driver has left." })),
    );
    let form = api.only().form();
    let bridge = on_public(field(&form, "Url")[0]);
    let params = twilio_bridge("CA5555", proxy, &a);
    let answer = twilio.post(&bridge, &borrowed(&params)).await;
    let doc = relay_twilio::twiml(&answer);
    assert_eq!(doc.names(), ["Say", "Hangup"], "{}", answer.text);
    assert!(
        answer.text.contains("Your driver has left."),
        "{}",
        answer.text
    );
    assert_eq!(interaction(&app, id, &iid).await["status"], "blocked");
    // Retried, the same answer, and the app is not asked again.
    let again = twilio.post(&bridge, &borrowed(&params)).await;
    assert_eq!(again.text, answer.text);
    assert_eq!(receiver.of_type("interaction.pending").len(), 1);

    // A second call, allowed, completes with an event that says the app started it.
    receiver.intercept_answer(200, Some(json!({ "action": "allow" })));
    let iid2 = start_call(&app, id, &b).await.expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let form = api.made()[1].form();
    let bridge = on_public(field(&form, "Url")[0]);
    let status = on_public(field(&form, "StatusCallback")[0]);
    let params = twilio_bridge("CA6666", proxy, &b);
    relay_twilio::assert_dials(&twilio.post(&bridge, &borrowed(&params)).await, proxy, &a);
    let completed = [
        ("CallDuration", "9"),
        ("CallSid", "CA6666"),
        ("CallStatus", "completed"),
        ("From", proxy),
        ("To", b.as_str()),
    ];
    relay_twilio::twiml(&twilio.post(&status, &completed).await);
    let done = receiver
        .wait_for_type("interaction.completed", 2, wait)
        .await
        .into_iter()
        .find(|d| d.data()["interaction_id"] == iid2.as_str())
        .expect("the second call's interaction.completed");
    assert_eq!(done.data()["initiated_by"], "app");
    assert_eq!(done.data()["status"], "completed");
    assert_eq!(done.data()["duration_secs"], 9);
    assert_eq!(done.data()["from_participant"], 0);
}

// ---------------------------------------------------------------------------------------------
// Plivo
// ---------------------------------------------------------------------------------------------

const PLIVO_AUTH_ID: &str = "MAXXXXXXXXXXXXXXXXXX";

#[tokio::test]
async fn plivo_places_the_call_and_its_bridge_dials_the_other_with_the_proxy() {
    use crate::relay_plivo::{self as rp, Plivo};
    let api = CallApi::start(
        201,
        json!({ "api_id": "97ceeb52-58b6-11e1-86da-77300b68f8bb", "message": "call fired",
                "request_uuid": "75cfc5c5-0d6f-4d7b-9a8b-2cd3e6b5e5a1" }),
    )
    .await;
    let base = api.base.clone();
    let app = TestApp::start_with(|c| {
        c.public_url = Some(rp::PUBLIC_URL.into());
        c.providers.plivo_auth_token = Some(Secret::new(rp::TOKEN.into()));
        c.providers.plivo_auth_id = Some(Secret::new(PLIVO_AUTH_ID.into()));
        c.providers.plivo_api_base = base;
    })
    .await;
    let plivo = Plivo::new(&app);
    let (id, proxy, a, b) = ride(&app).await;

    let made = start_call(&app, &id, &a).await.expect(201);
    let iid = made["id"].as_str().unwrap().to_string();
    assert_eq!(made["provider"], "plivo");
    assert_eq!(
        made["provider_call_id"],
        "75cfc5c5-0d6f-4d7b-9a8b-2cd3e6b5e5a1"
    );

    let req = api.only();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, format!("/v1/Account/{PLIVO_AUTH_ID}/Call/"));
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{PLIVO_AUTH_ID}:{}", rp::TOKEN));
    assert_eq!(req.authorization, format!("Basic {basic}"));
    assert!(req.content_type.starts_with("application/json"));
    let bridge = format!("{PUBLIC}/hooks/plivo/bridge?session={id}&interaction={iid}");
    let status = format!("{PUBLIC}/hooks/plivo/status?ref={iid}");
    assert_eq!(
        req.json(),
        json!({
            "from": rp::digits(&proxy),
            "to": rp::digits(&a),
            "answer_url": bridge,
            "answer_method": "POST",
            "hangup_url": status,
            "hangup_method": "POST",
        })
    );

    // A answers: Plivo posts to the answer URL, whose XML dials B from the proxy.
    let call_uuid = "9f3c1d2e-0000-4000-a000-000000000001";
    let (pa, pp) = (rp::digits(&a), rp::digits(&proxy));
    let answer_params = [
        ("CallUUID", call_uuid),
        ("From", pp.as_str()),
        ("To", pa.as_str()),
        ("Direction", "outbound"),
        ("CallStatus", "in-progress"),
        ("RequestUUID", "75cfc5c5-0d6f-4d7b-9a8b-2cd3e6b5e5a1"),
        ("Event", "StartApp"),
    ];
    let answer = plivo.post(&on_public(&bridge), &answer_params).await;
    assert_eq!(rp::dialled(&answer), (rp::digits(&proxy), rp::digits(&b)));
    let again = plivo.post(&on_public(&bridge), &answer_params).await;
    assert_eq!(again.text, answer.text);

    // The hangup URL completes the interaction.
    let hangup = [
        ("CallUUID", call_uuid),
        ("From", pp.as_str()),
        ("To", pa.as_str()),
        ("Direction", "outbound"),
        ("CallStatus", "completed"),
        ("Duration", "33"),
        ("BillDuration", "60"),
        ("Event", "Hangup"),
    ];
    assert_eq!(plivo.post(&on_public(&status), &hangup).await.status, 200);
    let i = interaction(&app, &id, &iid).await;
    assert_eq!(i["status"], "completed");
    assert_eq!(i["duration_secs"], 33);
    assert_eq!(i["initiated_by"], "app");

    assert_no_numbers_stored_or_logged(&app, &[&a, &b]).await;
}

// ---------------------------------------------------------------------------------------------
// Telnyx
// ---------------------------------------------------------------------------------------------

const TELNYX_ACCOUNT: &str = "f5586561-8ff0-4291-a51b-c7dfe4139ff9";
const TELNYX_APP: &str = "1293384261075731499";

#[tokio::test]
async fn telnyx_places_a_texml_call_and_its_bridge_dials_the_other_with_the_proxy() {
    use crate::relay_telnyx as rt;
    let api = CallApi::start(
        200,
        json!({ "from": "+13120001234", "to": "+13121230000", "status": "queued",
                "call_sid": "v3:app-call-1" }),
    )
    .await;
    let base = api.base.clone();
    let app = TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        c.providers.telnyx_public_key = Some(Secret::new(rt::public_key(&rt::signing_key())));
        c.providers.telnyx_api_key = Some(Secret::new(rt::API_KEY.into()));
        c.providers.telnyx_api_base = base;
        c.providers.telnyx_account_sid = Some(TELNYX_ACCOUNT.into());
        c.providers.telnyx_texml_app_id = Some(TELNYX_APP.into());
    })
    .await;
    let hook = rt::Hook::new(&app);
    let (id, proxy, a, b) = ride(&app).await;

    let made = start_call(&app, &id, &b).await.expect(201);
    let iid = made["id"].as_str().unwrap().to_string();
    assert_eq!(made["provider"], "telnyx");
    assert_eq!(made["provider_call_id"], "v3:app-call-1");

    let req = api.only();
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.path,
        format!("/v2/texml/Accounts/{TELNYX_ACCOUNT}/Calls")
    );
    assert_eq!(req.authorization, format!("Bearer {}", rt::API_KEY));
    assert!(req.content_type.starts_with("application/json"));
    let bridge = format!("{PUBLIC}/hooks/telnyx/bridge?session={id}&interaction={iid}");
    let status = format!("{PUBLIC}/hooks/telnyx/status?ref={iid}");
    assert_eq!(
        req.json(),
        json!({
            "ApplicationSid": TELNYX_APP,
            "To": b,
            "From": proxy,
            "Url": bridge,
            "UrlMethod": "POST",
            "StatusCallback": status,
            "StatusCallbackMethod": "POST",
        })
    );

    // B answers: Telnyx fetches the TeXML, which dials A from the proxy.
    let form = rt::form(&[
        ("AccountSid", TELNYX_ACCOUNT),
        ("CallSid", "v3:app-call-1"),
        ("From", &proxy),
        ("To", &b),
        ("CallStatus", "in-progress"),
        ("Direction", "outbound"),
    ]);
    let ct = "application/x-www-form-urlencoded";
    let answer = hook.post(&on_public(&bridge), ct, &form).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(
        answer.text.contains(&format!(
            r#"<Dial callerId="{proxy}"><Number>{a}</Number></Dial>"#
        )),
        "{}",
        answer.text
    );

    // The status callback completes the interaction.
    let done = rt::form(&[
        ("CallSid", "v3:app-call-1"),
        ("CallStatus", "completed"),
        ("CallDuration", "12"),
        ("From", &proxy),
        ("To", &b),
    ]);
    let r = hook.post(&on_public(&status), ct, &done).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let i = interaction(&app, &id, &iid).await;
    assert_eq!(i["status"], "completed");
    assert_eq!(i["duration_secs"], 12);

    assert_no_numbers_stored_or_logged(&app, &[&a, &b]).await;
}

// ---------------------------------------------------------------------------------------------
// Vonage
// ---------------------------------------------------------------------------------------------

const VONAGE_APP: &str = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab";

/// A key for tests only: Vonage's applications hold RSA keys, PKCS#8 PEM.
const VONAGE_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEuwIBADANBgkqhkiG9w0BAQEFAASCBKUwggShAgEAAoIBAQC2sa2yD2vu/NEV
FyH5IuuhZRbJA4tNqqPPjDHLCegPwWFeMliVFAXxVLO11iFwL9WtHOkUowEkt3Wm
nBb3D8cCDmAibrRN5Kgf2Grou2eiz9CCNYINZDhEHLEC1uK2kjHj3iZGDHd9mQ7k
5qAHK2ayKwN8ZQRP5APaP8HfzMuQWWzsKfh47tojNNGm9b0DyZf1KGGZ73U9b5l7
ESVwJUw0Lso18mNxYmKoiy6XkhgOfPJZunMDJ5OE8e+aKbkKo+9GpBShYt9cMx1T
ylS9i0UME/3b6v7JsHRb+dBonRt29NbmSbv+SrXt4cVTa7XuaZkVIFvyN5y7eelo
NHhAdDnhAgMBAAECgf9rgnCOZQTfK2erp/4WEYN+nQs+v32UKha7/4RN0RNlZVqN
h1/mWru+Ilo4mqPGB5N2vzMD/rVtjFVvwx5aK+Hj4KtlMXOcljKM8Vsrs4M8csIB
ES8dmLYdXvgyJsJdLffhLTM/HzCYeLm+RvllPrHwc9+MeuW1HdLzXEThSC/pGura
4THLEn8O5Aic7NUXZQaI+o0PP3Onawkv32X8qYo29Xd8FvqI0Sajpkq7SLd/ZyPh
48jHXNIWSoMEliiP4Zf/F+BiQvO+/KEgCyqBM3SYquMNlUV8uJc2xgPvzXk+TZpK
bdfYMl6isBXWQh4oM0zTJ66IkenOtyLqgdWCPu0CgYEA6F4GUvQDJRNc+QW0xKw9
bvStBu65zkvEYsb4sXsTjVAG5YOViqaAFfPWiXHpzB+Lr4SKBRHB0+/pbVUt0XWY
WjLo96i5ycoYqUD/SunVwdn3q2tbHitBBXZ/Od9DBvR3wo+66F1lkcTnxtPYc9lJ
h5ZHcYCVHtPPQKMS8LjIWuUCgYEAyUZZQqpyZQ7YdHMaUZy/iQwHp8CJqdRoMYMO
Xe9byiVTgxUqhlXPNRMvnyWHP3l8taVNi080TLW5lAMNyZeG22GUwT908INWkMVv
i73YE3iXuEcmZOAKiD3RiuEBW+MiLGTHL5sMtf2L7c2Vi0vlmabbdBtkY0OimRVD
ma94J00CgYEAkFZfbUW/cldNyC2gNQ6cdoCrvgOqDRgJXCYmMvC1m3DbZ9PNnzt/
kqNNX0EQLkhmF1en+DAoi0KaZ9yiQlrekSDQj44SIeNUYEZMjjckHW8MpkFgbyQF
FqSdsNAbLYXLomJvgokJX3vFUT8kVAnj38IcjMeHWYfOVGM3j6noYnUCgYBO7pSw
rTFBamn+eOk4WjVO5HXYFoymGlNmH1QyCF1B0BOJE3LizaH92XFSgyAgB1+dyJ65
ZC1Ja/bEEdKFXTQYspLomh8c9xSqn5LYBXJIaIFvVg+7fZUDyuJzCTxEMbXEHR10
EOUSNcV7U6UyxGfdMu9bACcFOo/4Yrto+MQw/QKBgAc3oqXBpSQ+Db3qeF19YHja
6R554TOtzmhYEhzjS8jWZ0HLk3Ue11FlVTZGHBjGIs1BQBz14mCOOs2afIWQyIoj
uwX7+Tv/LlEUe76xV1OC9nJHwYhgHhBArDUnzC51M0uQUnU/ePry+oyzXBoPx9N2
HhBupNet/eYTBzK3qRqk
-----END PRIVATE KEY-----";

/// Checks a Vonage API JWT as Vonage would: RS256 under the application's public key, with
/// the application id and a fresh `iat`.
fn assert_vonage_jwt(authorization: &str) {
    use ring::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let token = authorization
        .strip_prefix("Bearer ")
        .expect("a bearer token");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let header: Value = serde_json::from_slice(&b64url.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let claims: Value = serde_json::from_slice(&b64url.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["application_id"], VONAGE_APP);
    let iat = claims["iat"].as_i64().unwrap();
    assert!((iat - now_ms() / 1000).abs() < 60, "{claims}");
    assert!(claims["jti"].is_string(), "{claims}");
    assert!(claims["exp"].as_i64().unwrap() > iat, "{claims}");
    let der: String = VONAGE_KEY
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let pair = RsaKeyPair::from_pkcs8(&b64.decode(der).unwrap()).unwrap();
    let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public_key().as_ref());
    public
        .verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &b64url.decode(parts[2]).unwrap(),
        )
        .expect("the JWT verifies under the application's public key");
}

#[tokio::test]
async fn vonage_places_the_call_with_a_signed_jwt_and_its_bridge_connects_the_other() {
    use crate::relay_vonage as rv;
    let api = CallApi::start(
        201,
        json!({ "uuid": "63f61863-4a51-4f6b-86e1-46edebcf9356", "status": "started",
                "direction": "outbound",
                "conversation_uuid": "CON-f972836a-550f-45fa-956c-12a2ab5b7d22" }),
    )
    .await;
    let base = api.base.clone();
    let app = TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        c.providers.vonage_signature_secret = Some(Secret::new(rv::SIGNATURE_SECRET.into()));
        c.providers.vonage_application_id = Some(VONAGE_APP.into());
        c.providers.vonage_private_key = Some(Secret::new(VONAGE_KEY.into()));
        c.providers.vonage_voice_api_base = base;
    })
    .await;
    let (id, proxy, a, b) = ride(&app).await;
    let digits = |n: &str| n.trim_start_matches('+').to_string();

    let made = start_call(&app, &id, &a).await.expect(201);
    let iid = made["id"].as_str().unwrap().to_string();
    assert_eq!(made["provider"], "vonage");
    assert_eq!(
        made["provider_call_id"],
        "63f61863-4a51-4f6b-86e1-46edebcf9356"
    );

    let req = api.only();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/calls");
    assert_vonage_jwt(&req.authorization);
    assert!(req.content_type.starts_with("application/json"));
    let bridge = format!("{PUBLIC}/hooks/vonage/bridge?session={id}&interaction={iid}");
    let status = format!("{PUBLIC}/hooks/vonage/event?ref={iid}");
    assert_eq!(
        req.json(),
        json!({
            "to": [{ "type": "phone", "number": digits(&a) }],
            "from": { "type": "phone", "number": digits(&proxy) },
            "answer_url": [bridge],
            "answer_method": "POST",
            "event_url": [status],
            "event_method": "POST",
        })
    );

    // A answers: Vonage posts to the answer URL, whose NCCO connects B from the proxy.
    let post = |path: String, body: Value| {
        let app = &app;
        async move {
            let body = body.to_string();
            let token = rv::token_for_body(body.as_bytes());
            app.send(
                app.client
                    .post(app.url(&path))
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {token}"))
                    .body(body),
            )
            .await
        }
    };
    let leg = "63f61863-4a51-4f6b-86e1-46edebcf9356";
    let answer_body = json!({
        "from": digits(&proxy),
        "to": digits(&a),
        "uuid": leg,
        "conversation_uuid": "CON-f972836a-550f-45fa-956c-12a2ab5b7d22",
    });
    let answer = post(on_public(&bridge), answer_body.clone()).await;
    assert_eq!(
        answer.expect(200),
        json!([{
            "action": "connect",
            "from": digits(&proxy),
            "endpoint": [{ "type": "phone", "number": digits(&b) }],
        }])
    );

    // The event URL completes the interaction.
    let completed = json!({
        "from": digits(&proxy),
        "to": digits(&a),
        "uuid": leg,
        "conversation_uuid": "CON-f972836a-550f-45fa-956c-12a2ab5b7d22",
        "status": "completed",
        "direction": "outbound",
        "duration": "27",
        "timestamp": "2020-01-01T12:00:00.000Z",
    });
    let r = post(on_public(&status), completed).await;
    assert!(r.status < 300, "{} {}", r.status, r.text);
    let i = interaction(&app, &id, &iid).await;
    assert_eq!(i["status"], "completed");
    assert_eq!(i["duration_secs"], 27);

    assert_no_numbers_stored_or_logged(&app, &[&a, &b]).await;
}

#[tokio::test]
async fn the_bridge_records_and_limits_the_call_as_the_session_says() {
    let (api, app) = twilio_world().await;
    let twilio = Twilio { app: &app };
    app.pool("rides", json!({}), &proxies(1)).await;
    let (a, b) = (participant(70), participant(71));
    let s = app
        .create_session_with(&json!({
            "pool": "rides",
            "participants": [{ "number": a }, { "number": b }],
            "record": true,
            "record_channels": "dual",
            "max_call_secs": 600,
        }))
        .await
        .expect(201);
    let (id, proxy) = (
        s["id"].as_str().unwrap(),
        s["proxy_number"].as_str().unwrap(),
    );
    let iid = start_call(&app, id, &a).await.expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let form = api.only().form();
    let bridge = on_public(field(&form, "Url")[0]);
    let params = twilio_bridge("CA70707070707070707070707070707070", proxy, &a);
    let answer = twilio.post(&bridge, &borrowed(&params)).await;
    let dial = relay_twilio::twiml(&answer);
    let dial = dial.child("Dial");
    assert_eq!(dial.attr("callerId"), Some(proxy), "{}", answer.text);
    assert_eq!(dial.attr("timeLimit"), Some("600"), "{}", answer.text);
    assert_eq!(
        dial.attr("record"),
        Some("record-from-answer-dual"),
        "{}",
        answer.text
    );
    // The recording is reported for the call's own interaction.
    let hook = dial
        .attr("recordingStatusCallback")
        .expect("a recording hook");
    assert!(hook.contains(&iid), "{hook}");
    assert_eq!(dial.child("Number").text, b);
}

#[tokio::test]
async fn a_pin_sessions_call_is_bridged_by_its_session_without_a_pin() {
    let (_api, app) = twilio_world().await;
    let twilio = Twilio { app: &app };
    app.pool(
        "rides",
        json!({ "pin": "always", "out_of_session_message": relay_twilio::ENDED }),
        &proxies(1),
    )
    .await;
    let (a, b) = (participant(0), participant(1));
    let s = app.open_session("rides", &a, &b, None).await;
    assert_eq!(s["access"], "pin");
    let (id, proxy) = (
        s["id"].as_str().unwrap().to_string(),
        s["proxy_number"].as_str().unwrap().to_string(),
    );
    let made = start_call(&app, &id, &b).await.expect(201);
    let iid = made["id"].as_str().unwrap().to_string();

    // B answers: the bridge names the session, so B is connected to A at once.
    let bridge = format!("/hooks/twilio/bridge?session={id}&interaction={iid}");
    let params = twilio_bridge("CA11112222333344445555666677778888", &proxy, &b);
    let answer = twilio.post(&bridge, &borrowed(&params)).await;
    relay_twilio::assert_dials(&answer, &proxy, &a);
    let again = twilio.post(&bridge, &borrowed(&params)).await;
    assert_eq!(again.text, answer.text);
    let list = app.interactions(&id).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["initiated_by"], "app");
}
