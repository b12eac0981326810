//! Relay through vonage: signed webhooks in, the provider's answer document out.
//!
//! A small Vonage stands in for the real one on both sides. Towards hush it signs voice
//! webhooks with an HS256 JWT carrying `payload_hash`, and inbound texts with a `sig` made the
//! way Vonage's SDKs make it (checked below against the published vectors). Behind hush, a
//! local HTTP server plays Vonage's SMS API (`POST /sms/json`): it records every text hush
//! sends and answers what each test tells it to.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use hush::config::{Config, Secret};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::harness::*;

pub(crate) const PUBLIC: &str = "https://hush.example.test";
pub(crate) const SIGNATURE_SECRET: &str = "vonage-test-signature-secret-7f3a";
const API_KEY: &str = "abcd1234";
const API_SECRET: &str = "vonage-test-api-secret";
const ENDED: &str = "This ride has ended. <Call> support & \"ask\" for 'Sam' 😀";

// ---------------------------------------------------------------------------------------------
// A signing Vonage
// ---------------------------------------------------------------------------------------------

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&sha2::Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_secs() -> i64 {
    now_ms() / 1000
}

/// A JWT with this header and these claims, HS256-signed with `secret` (whatever `alg` the
/// header names, so tests can forge).
fn jwt(secret: &str, header: &Value, claims: &Value) -> String {
    let head = b64url(header.to_string().as_bytes());
    let body = b64url(claims.to_string().as_bytes());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", b64url(&mac.finalize().into_bytes()))
}

/// The claims Vonage puts in a voice webhook's token.
fn claims(payload_hash: Option<String>) -> Value {
    let mut c = json!({
        "iat": now_secs(),
        "jti": format!("{:032x}", rand::random::<u128>()),
        "iss": "Vonage",
        "api_key": API_KEY,
        "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
    });
    if let Some(h) = payload_hash {
        c["payload_hash"] = json!(h);
    }
    c
}

fn hs256() -> Value {
    json!({ "alg": "HS256", "typ": "JWT" })
}

/// The token Vonage sends with a POST: `payload_hash` is the SHA-256 of the body.
pub(crate) fn token_for_body(body: &[u8]) -> String {
    jwt(SIGNATURE_SECRET, &hs256(), &claims(Some(sha256_hex(body))))
}

/// The token Vonage sends with a GET: `payload_hash` covers the query parameters as a
/// compact JSON object, in order (written out by hand here, not by a JSON library).
fn token_for_query(params: &[(&str, &str)]) -> String {
    let fields: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("\"{k}\":\"{v}\""))
        .collect();
    let text = format!("{{{}}}", fields.join(","));
    jwt(
        SIGNATURE_SECRET,
        &hs256(),
        &claims(Some(sha256_hex(text.as_bytes()))),
    )
}

/// The `sig` of a signed SMS as Vonage's SDKs compute it: parameters but `sig` sorted by
/// name, `&name=value` with `&` and `=` in values made `_`; `md5hash` is MD5 over that text
/// and the secret, the rest HMACs keyed with the secret. Lower-case hex.
pub(crate) fn sms_sig(method: &str, secret: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().filter(|(k, _)| k != "sig").collect();
    sorted.sort();
    let text: String = sorted
        .iter()
        .map(|(k, v)| format!("&{k}={}", v.replace(['&', '='], "_")))
        .collect();
    let key = secret.as_bytes();
    fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], text: &str) -> Vec<u8> {
        let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key).unwrap();
        m.update(text.as_bytes());
        m.finalize().into_bytes().to_vec()
    }
    let digest = match method {
        "md5hash" => md5::Md5::digest(format!("{text}{secret}").as_bytes()).to_vec(),
        "md5" => mac::<Hmac<md5::Md5>>(key, &text),
        "sha1" => mac::<Hmac<sha1::Sha1>>(key, &text),
        "sha256" => mac::<Hmac<sha2::Sha256>>(key, &text),
        "sha512" => mac::<Hmac<sha2::Sha512>>(key, &text),
        other => panic!("no signature method {other}"),
    };
    hex(&digest)
}

fn owned(params: &[(&str, &str)]) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An inbound text as Vonage sends it, signed with `method`, `timestamp` now.
fn inbound_sms(method: &str, from: &str, to: &str, id: &str, text: &str) -> Vec<(String, String)> {
    let ts = now_secs().to_string();
    let mut p = owned(&[
        ("msisdn", from.trim_start_matches('+')),
        ("to", to.trim_start_matches('+')),
        ("messageId", id),
        ("text", text),
        ("type", "unicode"),
        ("keyword", text.split_whitespace().next().unwrap_or("")),
        ("api-key", API_KEY),
        ("message-timestamp", "2026-11-29 18:52:00"),
        ("timestamp", &ts),
        ("nonce", "6f1b2a4e-51d3-4c8a-9a77-0d7a2f5e8c11"),
    ]);
    let sig = sms_sig(method, SIGNATURE_SECRET, &p);
    p.push(("sig".into(), sig));
    p
}

#[test]
fn the_test_signer_matches_the_published_vectors() {
    // /work/shared/vectors/vonage.json: vonage-python-sdk's signature tests.
    let params = owned(&[("a", "1"), ("b", "2"), ("timestamp", "1461605396")]);
    let vectors = [
        ("md5hash", "6af838ef94998832dbfc29020b564830"),
        ("md5", "c15c21ced558c93a226c305f58f902f2"),
        ("sha1", "3e19a4e6880fdc2c1426bfd0587c98b9532f0210"),
        (
            "sha256",
            "a321e824b9b816be7c3f28859a31749a098713d39f613c80d455bbaffae1cd24",
        ),
        (
            "sha512",
            "812a18f76680fa0fe1b8bd9ee1625466ceb1bd96242e4d050d2cfd9a7b40166c63ed26ec9702168781b6edcf1633db8ff95af9341701004eec3fcf9550572ee8",
        ),
    ];
    for (method, expected) in vectors {
        assert_eq!(sms_sig(method, "secret", &params), expected, "{method}");
    }
}

// ---------------------------------------------------------------------------------------------
// A recording SMS API
// ---------------------------------------------------------------------------------------------

/// The form fields of one request, in order.
type Fields = Vec<(String, String)>;

#[derive(Clone, Default)]
struct SmsApi {
    /// Every request's form fields, in arrival order.
    calls: Arc<Mutex<Vec<Fields>>>,
    /// Scripted answers `(HTTP status, body)`, used first; then a plain success.
    script: Arc<Mutex<VecDeque<(u16, Value)>>>,
    base: String,
}

impl SmsApi {
    async fn start() -> SmsApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = SmsApi {
            base: format!("http://{}", listener.local_addr().unwrap()),
            ..SmsApi::default()
        };
        let app = axum::Router::new()
            .route("/sms/json", axum::routing::post(record))
            .with_state(api.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        api
    }

    fn then_answer(&self, status: u16, body: Value) {
        self.script.lock().unwrap().push_back((status, body));
    }

    fn calls(&self) -> Vec<Fields> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until `n` texts were posted and returns them.
    async fn wait_for(&self, n: usize) -> Vec<Fields> {
        eventually(
            Duration::from_secs(15),
            &format!("{n} SMS API call(s)"),
            || {
                let calls = self.calls();
                async move { (calls.len() >= n).then_some(calls) }
            },
        )
        .await
    }
}

/// Decodes a form body with the URL parser, independently of hush's own decoder.
fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    let url = reqwest::Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(body))).unwrap();
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn success() -> Value {
    json!({
        "message-count": "1",
        "messages": [{
            "to": "14155550101",
            "message-id": format!("0A0000{:010X}", rand::random::<u32>()),
            "status": "0",
            "remaining-balance": "3.14159265",
            "message-price": "0.03330000",
            "network": "12345",
        }],
    })
}

async fn record(State(api): State<SmsApi>, body: Bytes) -> Response {
    api.calls.lock().unwrap().push(form_fields(&body));
    let (status, body) = api
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| (200, success()));
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no `{name}` in {fields:?}"))
}

// ---------------------------------------------------------------------------------------------
// hush with Vonage configured
// ---------------------------------------------------------------------------------------------

fn configure(c: &mut Config, api: &SmsApi, method: &str) {
    c.public_url = Some(PUBLIC.into());
    let p = &mut c.providers;
    p.vonage_signature_secret = Some(Secret::new(SIGNATURE_SECRET.into()));
    p.vonage_signature_method = method.into();
    p.vonage_api_key = Some(Secret::new(API_KEY.into()));
    p.vonage_api_secret = Some(Secret::new(API_SECRET.into()));
    p.vonage_api_base = api.base.clone();
}

async fn vonage_app(api: &SmsApi, method: &str) -> TestApp {
    TestApp::start_with(|c| configure(c, api, method)).await
}

/// A pool of one number with the `ENDED` message, and an open session between participants
/// 0 and 1 on it: (session id, proxy, a, b).
async fn ride(app: &TestApp) -> (String, String, String, String) {
    app.pool(
        "rides",
        json!({ "out_of_session_message": ENDED }),
        &[proxy(0)],
    )
    .await;
    let (a, b) = (participant(0), participant(1));
    let s = app.open_session("rides", &a, &b, None).await;
    (
        s["id"].as_str().unwrap().to_string(),
        s["proxy_number"].as_str().unwrap().to_string(),
        a,
        b,
    )
}

pub(crate) fn digits(e164: &str) -> &str {
    e164.trim_start_matches('+')
}

pub(crate) fn uuid() -> String {
    let r: u128 = rand::random();
    let h = format!("{r:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// `POST /hooks/vonage/answer` with this JSON body and `Authorization` value (if any).
async fn answer_post_raw(app: &TestApp, body: &str, auth: Option<String>) -> Resp {
    let mut req = app
        .client
        .post(app.url("/hooks/vonage/answer"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    app.send(req).await
}

fn answer_body(from: &str, to: &str, call: &str) -> String {
    json!({
        "from": digits(from),
        "to": digits(to),
        "uuid": call,
        "conversation_uuid": format!("CON-{call}"),
        "region_url": "https://api-us-3.vonage.com",
    })
    .to_string()
}

/// A signed POST answer webhook: `from` calls `to` (E.164; sent as digits).
pub(crate) async fn answer_post(app: &TestApp, from: &str, to: &str, call: &str) -> Resp {
    let body = answer_body(from, to, call);
    let token = token_for_body(body.as_bytes());
    answer_post_raw(app, &body, Some(format!("Bearer {token}"))).await
}

/// A signed GET answer webhook.
async fn answer_get(app: &TestApp, from: &str, to: &str, call: &str) -> Resp {
    let conversation = format!("CON-{call}");
    let params = [
        ("to", digits(to)),
        ("from", digits(from)),
        ("uuid", call),
        ("conversation_uuid", conversation.as_str()),
    ];
    answer_get_with(app, &params, &token_for_query(&params)).await
}

/// A signed event webhook with this JSON body.
async fn event(app: &TestApp, body: &Value) -> Resp {
    let text = body.to_string();
    let token = token_for_body(text.as_bytes());
    app.send(
        app.client
            .post(app.url("/hooks/vonage/event"))
            .header("content-type", "application/json")
            .bearer_auth(token)
            .body(text),
    )
    .await
}

/// An inbound text posted as a form (Vonage's `POST` setting).
async fn sms_form(app: &TestApp, params: &[(String, String)]) -> Resp {
    app.send(app.client.post(app.url("/hooks/vonage/sms")).form(params))
        .await
}

/// An inbound text as a GET (Vonage's `GET` setting).
async fn sms_get(app: &TestApp, params: &[(String, String)]) -> Resp {
    app.send(app.client.get(app.url("/hooks/vonage/sms")).query(params))
        .await
}

/// An inbound text as a JSON body (Vonage's `POST-JSON` setting).
async fn sms_json(app: &TestApp, params: &[(String, String)]) -> Resp {
    let body: serde_json::Map<String, Value> =
        params.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    app.send(app.client.post(app.url("/hooks/vonage/sms")).json(&body))
        .await
}

fn connect_ncco(proxy: &str, other: &str) -> Value {
    json!([{
        "action": "connect",
        "from": digits(proxy),
        "endpoint": [{ "type": "phone", "number": digits(other) }],
    }])
}

#[track_caller]
fn assert_ncco(r: &Resp, expected: &Value) {
    assert_eq!(r.status, 200, "answer webhook: {} {}", r.status, r.text);
    assert!(
        r.content_type().starts_with("application/json"),
        "NCCO content type {:?}",
        r.content_type()
    );
    assert_eq!(&r.json, expected, "NCCO {}", r.text);
}

#[track_caller]
fn assert_refused(r: &Resp, what: &str) {
    assert_eq!(
        r.status, 403,
        "{what}: expected 403, got {} {}",
        r.status, r.text
    );
    r.expect_problem(403, "invalid_signature");
}

// ---------------------------------------------------------------------------------------------
// Voice
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_call_reaches_the_other_party_both_ways() {
    let api = SmsApi::start().await;
    let app = vonage_app(&api, "md5hash").await;
    let (id, proxy, a, b) = ride(&app).await;

    // A calls the proxy (POST answer webhook): B rings, seeing the proxy number.
    let first = uuid();
    let r = answer_post(&app, &a, &proxy, &first).await;
    assert_ncco(&r, &connect_ncco(&proxy, &b));

    // B calls back (GET answer webhook): A rings, seeing the proxy number.
    let second = uuid();
    let r = answer_get(&app, &b, &proxy, &second).await;
    assert_ncco(&r, &connect_ncco(&proxy, &a));

    // Vonage retrying the first answer webhook gets the same NCCO and no second interaction.
    let r = answer_post(&app, &a, &proxy, &first).await;
    assert_ncco(&r, &connect_ncco(&proxy, &b));

    let list = app.interactions(&id).await;
    assert_eq!(list.len(), 2, "{list:?}");
    let by_ref = |r: &str| {
        list.iter()
            .find(|i| i["provider_ref"] == r)
            .unwrap_or_else(|| panic!("no interaction {r}: {list:?}"))
            .clone()
    };
    let (i1, i2) = (by_ref(&first), by_ref(&second));
    for (i, side) in [(&i1, 0), (&i2, 1)] {
        assert_eq!(i["kind"], "voice");
        assert_eq!(i["provider"], "vonage");
        assert_eq!(i["from_participant"], side);
        assert_eq!(i["status"], "started");
    }
    // Nothing went to the SMS API for calls.
    assert!(api.calls().is_empty());
}

#[tokio::test]
async fn strangers_hear_the_pool_message_and_unknown_numbers_are_hung_up() {
    let api = SmsApi::start().await;
    let app = vonage_app(&api, "md5hash").await;
    let (id, proxy, _, _) = ride(&app).await;
    let talk = json!([{ "action": "talk", "text": ENDED }]);

    let stranger = participant(7);
    assert_ncco(&answer_post(&app, &stranger, &proxy, &uuid()).await, &talk);
    assert_ncco(&answer_get(&app, &stranger, &proxy, &uuid()).await, &talk);

    // A withheld caller ID arrives as a word, not a number: the caller holds no route.
    let body = json!({ "from": "Unknown", "to": digits(&proxy), "uuid": uuid() }).to_string();
    let token = token_for_body(body.as_bytes());
    let r = answer_post_raw(&app, &body, Some(format!("Bearer {token}"))).await;
    assert_ncco(&r, &talk);

    // A number hush does not own: an NCCO with no actions, so Vonage hangs up at once.
    let r = answer_post(&app, &participant(0), &crate::harness::proxy(50), &uuid()).await;
    assert_ncco(&r, &json!([]));

    assert!(app.interactions(&id).await.is_empty());
}

#[tokio::test]
async fn voice_webhooks_without_a_valid_token_are_refused() {
    let api = SmsApi::start().await;
    let app = vonage_app(&api, "md5hash").await;
    let (id, proxy, a, b) = ride(&app).await;
    let call = uuid();
    let body = answer_body(&a, &proxy, &call);
    let hash = Some(sha256_hex(body.as_bytes()));

    let cases: Vec<(&str, Option<String>, String)> = vec![
        ("no Authorization header", None, body.clone()),
        (
            "not a bearer token",
            Some(format!("Basic {}", b64url(b"a:b"))),
            body.clone(),
        ),
        ("not a JWT", Some("Bearer not-a-jwt".into()), body.clone()),
        (
            "signed with another secret",
            Some(format!(
                "Bearer {}",
                jwt("someone-elses-secret", &hs256(), &claims(hash.clone()))
            )),
            body.clone(),
        ),
        (
            "alg none",
            Some(format!(
                "Bearer {}.{}.",
                b64url(
                    json!({ "alg": "none", "typ": "JWT" })
                        .to_string()
                        .as_bytes()
                ),
                b64url(claims(hash.clone()).to_string().as_bytes())
            )),
            body.clone(),
        ),
        (
            "HS512 named",
            Some(format!(
                "Bearer {}",
                jwt(
                    SIGNATURE_SECRET,
                    &json!({ "alg": "HS512" }),
                    &claims(hash.clone())
                )
            )),
            body.clone(),
        ),
        (
            "body changed after signing",
            Some(format!("Bearer {}", token_for_body(body.as_bytes()))),
            answer_body(&participant(9), &proxy, &call),
        ),
        (
            "body without a payload_hash",
            Some(format!(
                "Bearer {}",
                jwt(SIGNATURE_SECRET, &hs256(), &claims(None))
            )),
            body.clone(),
        ),
        (
            "token from two days ago",
            Some(format!("Bearer {}", {
                let mut c = claims(hash.clone());
                c["iat"] = json!(now_secs() - 2 * 86_400);
                jwt(SIGNATURE_SECRET, &hs256(), &c)
            })),
            body.clone(),
        ),
        (
            "expired token",
            Some(format!("Bearer {}", {
                let mut c = claims(hash.clone());
                c["exp"] = json!(now_secs() - 3600);
                jwt(SIGNATURE_SECRET, &hs256(), &c)
            })),
            body.clone(),
        ),
    ];
    for (what, auth, body) in cases {
        assert_refused(&answer_post_raw(&app, &body, auth).await, what);
    }

    // A GET whose query was changed after Vonage signed it.
    let signed = [
        ("to", digits(&proxy)),
        ("from", digits(&b)),
        ("uuid", call.as_str()),
    ];
    let token = token_for_query(&signed);
    let forged = [
        ("to", digits(&proxy)),
        ("from", digits(&a)),
        ("uuid", call.as_str()),
    ];
    let r = app
        .send(
            app.client
                .get(app.url("/hooks/vonage/answer"))
                .query(&forged)
                .bearer_auth(token),
        )
        .await;
    assert_refused(&r, "GET query changed after signing");

    // Events are held to the same rule.
    let text = json!({ "uuid": call, "status": "completed", "to": digits(&proxy) }).to_string();
    let r = app
        .send(
            app.client
                .post(app.url("/hooks/vonage/event"))
                .header("content-type", "application/json")
                .bearer_auth(jwt("someone-elses-secret", &hs256(), &claims(None)))
                .body(text),
        )
        .await;
    assert_refused(&r, "event signed with another secret");

    // Nothing was recorded: the same call, properly signed, is a first call.
    assert!(app.interactions(&id).await.is_empty());
    let r = answer_post(&app, &a, &proxy, &call).await;
    assert_ncco(&r, &connect_ncco(&proxy, &b));
    assert_eq!(app.interactions(&id).await.len(), 1);
}

#[tokio::test]
async fn event_callbacks_update_the_interaction() {
    let api = SmsApi::start().await;
    let app = vonage_app(&api, "md5hash").await;
    let (id, proxy, a, b) = ride(&app).await;
    let call = uuid();
    assert_ncco(
        &answer_post(&app, &a, &proxy, &call).await,
        &connect_ncco(&proxy, &b),
    );
    let status = |status: &str| {
        json!({
            "from": digits(&a), "to": digits(&proxy), "uuid": call,
            "conversation_uuid": format!("CON-{call}"), "status": status,
            "direction": "inbound", "timestamp": "2026-11-29T18:52:00.000Z",
        })
    };
    let only = |list: Vec<Value>| {
        assert_eq!(list.len(), 1, "{list:?}");
        list[0].clone()
    };

    assert_eq!(event(&app, &status("answered")).await.status, 204);
    let i = only(app.interactions(&id).await);
    assert_eq!(i["status"], "in-progress");
    assert!(i.get("ended_at").is_none(), "{i}");

    // The leg hush dialled has its own uuid and reports too: it is not the interaction.
    let leg = json!({
        "from": digits(&proxy), "to": digits(&b), "uuid": uuid(),
        "conversation_uuid": format!("CON-{call}"), "status": "completed",
        "direction": "outbound", "duration": "3",
    });
    assert_eq!(event(&app, &leg).await.status, 204);
    // Events without a call status (DTMF input, recordings) are acknowledged and ignored.
    let input = json!({ "uuid": call, "dtmf": { "digits": "1" }, "to": digits(&proxy) });
    assert_eq!(event(&app, &input).await.status, 204);
    assert_eq!(only(app.interactions(&id).await)["status"], "in-progress");

    let mut done = status("completed");
    done["duration"] = json!("42");
    done["start_time"] = json!("2026-11-29T18:52:00.000Z");
    done["end_time"] = json!("2026-11-29T18:52:42.000Z");
    assert_eq!(event(&app, &done).await.status, 204);
    let i = only(app.interactions(&id).await);
    assert_eq!(i["status"], "completed");
    assert_eq!(i["duration_secs"], 42);
    assert!(i["ended_at"].is_string(), "{i}");
    assert_eq!(i["provider_ref"], call.as_str());

    // A late, out-of-order callback does not reopen a finished call.
    assert_eq!(event(&app, &status("ringing")).await.status, 204);
    assert_eq!(only(app.interactions(&id).await)["status"], "completed");
}

#[tokio::test]
async fn vonage_routes_are_absent_without_its_secret() {
    let app = TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        // API credentials alone do not enable the webhooks: nothing could verify them.
        c.providers.vonage_api_key = Some(Secret::new(API_KEY.into()));
        c.providers.vonage_api_secret = Some(Secret::new(API_SECRET.into()));
    })
    .await;
    let body = answer_body(&participant(0), &proxy(0), &uuid());
    let token = token_for_body(body.as_bytes());
    let r = answer_post_raw(&app, &body, Some(format!("Bearer {token}"))).await;
    r.expect_problem(404, "not_found");
    for (method, path) in [
        (reqwest::Method::GET, "/hooks/vonage/answer"),
        (reqwest::Method::POST, "/hooks/vonage/event"),
        (reqwest::Method::GET, "/hooks/vonage/sms"),
        (reqwest::Method::POST, "/hooks/vonage/sms"),
    ] {
        let r = app
            .send(app.client.request(method.clone(), app.url(path)))
            .await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text);
    }
}

// ---------------------------------------------------------------------------------------------
// Texts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn texts_relay_byte_identical_through_the_sms_api() {
    let api = SmsApi::start().await;
    let app = vonage_app(&api, "sha256").await;
    let (id, proxy, a, b) = ride(&app).await;

    let long: String = "0123456789 <&>\"' ".chars().cycle().take(1600).collect();
    let texts = [
        (
            "metacharacters",
            "<Response><Say>hi</Say></Response> & a=b&c=d; \"q\" 'a' %20 + \\",
        ),
        ("emoji", "on my way 🚗💨 — café 👍🏽 ありがとう"),
        ("1600 characters", long.as_str()),
    ];
    let mut sent = 0;
    for (i, (what, text)) in texts.iter().enumerate() {
        // One per way Vonage may deliver a webhook, A→B and B→A.
        let (from, to) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let p = inbound_sms("sha256", from, &proxy, &format!("0B00000{i:09}"), text);
        let r = match i {
            0 => sms_form(&app, &p).await,
            1 => sms_get(&app, &p).await,
            _ => sms_json(&app, &p).await,
        };
        assert_eq!(r.status, 204, "{what}: {} {}", r.status, r.text);
        assert!(r.text.is_empty(), "{what}: a 204 has no body: {}", r.text);
        sent += 1;
        let calls = api.wait_for(sent).await;
        let c = &calls[sent - 1];
        assert_eq!(field(c, "text"), *text, "{what}: text changed on the way");
        assert_eq!(
            field(c, "from"),
            digits(&proxy),
            "{what}: sender is the proxy"
        );
        assert_eq!(field(c, "to"), digits(to), "{what}: recipient");
        assert_eq!(field(c, "type"), "unicode");
        assert_eq!(field(c, "api_key"), API_KEY);
        assert_eq!(field(c, "api_secret"), API_SECRET);
    }

    let list = app.interactions(&id).await;
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(
        list.iter()
            .all(|i| i["kind"] == "sms" && i["provider"] == "vonage")
    );
    // Once sent, the interaction says so (the queue records it after the API answered).
    eventually(Duration::from_secs(10), "interactions marked sent", || {
        let app = &app;
        let id = id.clone();
        async move {
            let list = app.interactions(&id).await;
            list.iter().all(|i| i["status"] == "sent").then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn every_signature_method_is_verified() {
    let api = SmsApi::start().await;
    for method in ["md5hash", "md5", "sha1", "sha256", "sha512"] {
        let app = vonage_app(&api, method).await;
        let (id, proxy, a, _) = ride(&app).await;
        let good = inbound_sms(method, &a, &proxy, "0C0000000000000A", "hello");

        let mut tampered = good.clone();
        tampered.iter_mut().find(|(k, _)| k == "text").unwrap().1 = "hellO".into();
        let unsigned: Vec<(String, String)> =
            good.iter().filter(|(k, _)| k != "sig").cloned().collect();
        let other = if method == "sha1" { "sha256" } else { "sha1" };
        let wrong_method = inbound_sms(other, &a, &proxy, "0C0000000000000A", "hello");
        let stale = {
            let mut p: Vec<(String, String)> = unsigned.clone();
            p.iter_mut().find(|(k, _)| k == "timestamp").unwrap().1 =
                (now_secs() - 301).to_string();
            let sig = sms_sig(method, SIGNATURE_SECRET, &p);
            p.push(("sig".into(), sig));
            p
        };
        let doubled = {
            let mut p = good.clone();
            p.push(("to".into(), digits(&participant(5)).into()));
            p
        };
        let other_secret = {
            let mut p = unsigned.clone();
            let sig = sms_sig(method, "someone-elses-secret", &p);
            p.push(("sig".into(), sig));
            p
        };
        for (what, p) in [
            ("tampered text", &tampered),
            ("no sig", &unsigned),
            ("another method", &wrong_method),
            ("timestamp 301 s old", &stale),
            ("a parameter sent twice", &doubled),
            ("another secret", &other_secret),
        ] {
            assert_refused(&sms_form(&app, p).await, &format!("{method}: {what}"));
        }
        assert!(
            app.interactions(&id).await.is_empty(),
            "{method}: a refused text was recorded"
        );

        // The signed text passes, in either case of hex.
        let mut upper = good.clone();
        upper.last_mut().unwrap().1 = upper.last().unwrap().1.to_ascii_uppercase();
        let r = sms_form(&app, &upper).await;
        assert_eq!(r.status, 204, "{method}: {}", r.text);
        assert_eq!(app.interactions(&id).await.len(), 1, "{method}");
    }
}

#[tokio::test]
async fn a_resent_text_is_sent_once() {
    let api = SmsApi::start().await;
    let app = vonage_app(&api, "md5hash").await;
    let (id, proxy, a, b) = ride(&app).await;
    let p = inbound_sms("md5hash", &a, &proxy, "0D00000000000001", "see you at 5");
    for _ in 0..3 {
        assert_eq!(sms_form(&app, &p).await.status, 204);
    }
    let calls = api.wait_for(1).await;
    assert_eq!(field(&calls[0], "to"), digits(&b));
    // Give a would-be second send every chance to happen.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(api.calls().len(), 1, "a resent webhook sent the text again");
    assert_eq!(app.interactions(&id).await.len(), 1);
}

#[tokio::test]
async fn strangers_get_the_pool_message_and_unknown_numbers_nothing() {
    let api = SmsApi::start().await;
    let app = vonage_app(&api, "md5hash").await;
    let (id, proxy, _, _) = ride(&app).await;

    // To a number of no pool: acknowledged, nothing sent.
    let p = inbound_sms(
        "md5hash",
        &participant(0),
        &crate::harness::proxy(50),
        "0E00000000000001",
        "hi",
    );
    let r = sms_form(&app, &p).await;
    assert_eq!(r.status, 204, "{}", r.text);

    // From a stranger: the pool's message comes back from the proxy number.
    let stranger = participant(8);
    let p = inbound_sms(
        "md5hash",
        &stranger,
        &proxy,
        "0E00000000000002",
        "who is this?",
    );
    assert_eq!(sms_form(&app, &p).await.status, 204);
    let calls = api.wait_for(1).await;
    assert_eq!(field(&calls[0], "from"), digits(&proxy));
    assert_eq!(field(&calls[0], "to"), digits(&stranger));
    assert_eq!(field(&calls[0], "text"), ENDED);

    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(api.calls().len(), 1, "{:?}", api.calls());
    assert!(app.interactions(&id).await.is_empty());
}

#[tokio::test]
async fn a_failing_sms_api_is_retried_across_a_restart() {
    let api = SmsApi::start().await;
    let mut app = vonage_app(&api, "md5hash").await;
    let (id, proxy, a, b) = ride(&app).await;
    // The first attempt meets a Vonage outage, the second a throttle; the third goes through.
    api.then_answer(503, json!({ "error": "unavailable" }));
    api.then_answer(
        200,
        json!({ "message-count": "1", "messages": [{ "status": "1", "error-text": "Throttled" }] }),
    );
    let p = inbound_sms("md5hash", &a, &proxy, "0F00000000000001", "running late");
    assert_eq!(sms_form(&app, &p).await.status, 204);
    api.wait_for(1).await;

    // hush restarts while the text waits for its retry: it is neither lost nor doubled.
    app.restart().await;
    let calls = api.wait_for(3).await;
    for c in &calls {
        assert_eq!(field(c, "text"), "running late");
        assert_eq!(field(c, "to"), digits(&b));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(api.calls().len(), 3, "sent again after success");
    let list = app.interactions(&id).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["status"], "sent");
}

// ---------------------------------------------------------------------------------------------
// The sender on its own
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn send_reads_what_the_sms_api_answers() {
    use hush::domain::E164;
    use hush::relay::outbound::{OutboundSms, SendError, Via};
    use hush::relay::vonage::send;

    let api = SmsApi::start().await;
    let mut config = Config::default();
    configure(&mut config, &api, "md5hash");
    let p = config.providers;
    let msg = OutboundSms {
        via: Via::Vonage,
        from: E164::parse(&proxy(0)).unwrap(),
        to: E164::parse(&participant(1)).unwrap(),
        text: "a=b&c 😀".into(),
        media: vec![],
        key: "vonage:0A00000000000001".into(),
        report_url: None,
    };
    let http = http_client();

    send(&http, &p, &msg).await.expect("accepted");
    let calls = api.calls();
    let c = &calls[0];
    let names: Vec<&str> = c.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["api_key", "api_secret", "from", "to", "text", "type"]
    );
    assert_eq!(field(c, "from"), digits(&proxy(0)));
    assert_eq!(field(c, "to"), digits(&participant(1)));
    assert_eq!(field(c, "text"), "a=b&c 😀");

    let status = |code: &str| json!({ "messages": [{ "status": code, "error-text": "x" }] });
    let cases = [
        (200, status("1"), true),
        (200, status("5"), true),
        (200, status("4"), false),
        (200, status("15"), false),
        (500, json!({}), true),
        (429, json!({}), true),
        (401, json!({}), false),
        (200, json!({ "unexpected": true }), true),
    ];
    for (http_status, body, retry) in cases {
        api.then_answer(http_status, body.clone());
        match send(&http, &p, &msg).await {
            Err(SendError::Retry(_)) if retry => {}
            Err(SendError::Permanent(_)) if !retry => {}
            other => panic!("HTTP {http_status} {body}: got {other:?}"),
        }
    }

    // Vonage out of reach is worth retrying; no credentials never will be.
    let mut down = p.clone();
    down.vonage_api_base = format!("http://127.0.0.1:{}", free_port());
    assert!(matches!(
        send(&http, &down, &msg).await,
        Err(SendError::Retry(_))
    ));
    let mut unset = p.clone();
    unset.vonage_api_key = None;
    assert!(matches!(
        send(&http, &unset, &msg).await,
        Err(SendError::Permanent(_))
    ));
}

#[tokio::test]
async fn a_retried_call_hears_the_block_message_it_heard_first() {
    let api = SmsApi::start().await;
    let app = TestApp::start_with(|c| {
        configure(c, &api, "md5hash");
        c.callback_allow_private = true;
    })
    .await;
    let p = crate::intercept::blocking_pool(&app).await;
    let call = uuid();
    // Each retry comes with a token of its own, as Vonage signs every delivery.
    crate::intercept::retries_stay_blocked(
        &app,
        &p,
        || answer_post(&app, &p.a, &p.proxy, &call),
        |r| r.json == json!([{ "action": "talk", "text": crate::intercept::BLOCKED }]),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------------------------

/// `GET /hooks/vonage/answer` with this query and bearer token.
async fn answer_get_with(app: &TestApp, params: &[(&str, &str)], token: &str) -> Resp {
    app.send(
        app.client
            .get(app.url("/hooks/vonage/answer"))
            .query(params)
            .bearer_auth(token),
    )
    .await
}

#[tokio::test]
async fn a_get_token_is_good_for_its_own_query_only() {
    let api = SmsApi::start().await;
    let app = vonage_app(&api, "md5hash").await;
    let (id, proxy, a, b) = ride(&app).await;
    // Vonage signs a GET without `payload_hash`: nothing in the token names the query.
    let token = jwt(SIGNATURE_SECRET, &hs256(), &claims(None));
    let call = uuid();
    let stranger = participant(7);
    let asked = [
        ("to", digits(&proxy)),
        ("from", digits(&stranger)),
        ("uuid", call.as_str()),
    ];
    let talk = json!([{ "action": "talk", "text": ENDED }]);
    assert_ncco(&answer_get_with(&app, &asked, &token).await, &talk);

    // Someone who captured it asks which number the proxy connects a participant to.
    for from in [&a, &b] {
        let probe = [
            ("to", digits(&proxy)),
            ("from", digits(from)),
            ("uuid", call.as_str()),
        ];
        assert_refused(&answer_get_with(&app, &probe, &token).await, "other from");
        let other_call = uuid();
        let probe = [
            ("to", digits(&proxy)),
            ("from", digits(from)),
            ("uuid", other_call.as_str()),
        ];
        assert_refused(&answer_get_with(&app, &probe, &token).await, "other call");
    }
    // Vonage resending the very same request with the same token gets the first answer.
    assert_ncco(&answer_get_with(&app, &asked, &token).await, &talk);
    assert!(app.interactions(&id).await.is_empty());
}

#[tokio::test]
async fn a_token_signed_for_a_post_body_is_refused_on_get() {
    let api = SmsApi::start().await;
    let app = vonage_app(&api, "md5hash").await;
    let (_, proxy, a, b) = ride(&app).await;
    let call = uuid();
    // A compact body of strings in the order a GET would carry them: its hash is the
    // query's hash too, so only the token's single use tells the two apart.
    let body = format!(
        r#"{{"to":"{}","from":"{}","uuid":"{call}"}}"#,
        digits(&proxy),
        digits(&a)
    );
    let token = token_for_body(body.as_bytes());
    let r = answer_post_raw(&app, &body, Some(format!("Bearer {token}"))).await;
    assert_ncco(&r, &connect_ncco(&proxy, &b));
    let same = [
        ("to", digits(&proxy)),
        ("from", digits(&a)),
        ("uuid", call.as_str()),
    ];
    assert_refused(
        &answer_get_with(&app, &same, &token).await,
        "POST token on GET",
    );
}

#[tokio::test]
async fn stale_or_unbounded_tokens_are_refused() {
    let api = SmsApi::start().await;
    let app = vonage_app(&api, "md5hash").await;
    let (id, proxy, a, _) = ride(&app).await;
    let body = answer_body(&a, &proxy, &uuid());
    let hash = Some(sha256_hex(body.as_bytes()));
    let signed = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims(hash.clone());
        edit(&mut c);
        Some(format!("Bearer {}", jwt(SIGNATURE_SECRET, &hs256(), &c)))
    };
    let cases: Vec<(&str, Option<String>)> = vec![
        (
            "signed six minutes ago",
            signed(&|c| c["iat"] = json!(now_secs() - 360)),
        ),
        (
            "signed a minute ahead",
            signed(&|c| c["iat"] = json!(now_secs() + 90)),
        ),
        (
            "no iat",
            signed(&|c| {
                c.as_object_mut().unwrap().remove("iat");
            }),
        ),
        (
            "no jti",
            signed(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
        ),
    ];
    for (what, auth) in cases {
        assert_refused(&answer_post_raw(&app, &body, auth).await, what);
    }
    assert!(app.interactions(&id).await.is_empty());

    // The window is the operator's to set.
    let strict = TestApp::start_with(|c| {
        configure(c, &api, "md5hash");
        c.providers.vonage_token_max_age_secs = 30;
    })
    .await;
    let (_, proxy, a, _) = ride(&strict).await;
    let body = answer_body(&a, &proxy, &uuid());
    let mut c = claims(Some(sha256_hex(body.as_bytes())));
    c["iat"] = json!(now_secs() - 60);
    let auth = Some(format!("Bearer {}", jwt(SIGNATURE_SECRET, &hs256(), &c)));
    assert_refused(
        &answer_post_raw(&strict, &body, auth).await,
        "older than 30 s",
    );
}

#[tokio::test]
async fn a_token_racing_itself_on_many_queries_passes_once() {
    let api = SmsApi::start().await;
    let app = vonage_app(&api, "md5hash").await;
    let (_, proxy, _, _) = ride(&app).await;
    let token = jwt(SIGNATURE_SECRET, &hs256(), &claims(None));
    let mut racing = tokio::task::JoinSet::new();
    for i in 0..12 {
        let (from, call) = (participant(20 + i), uuid());
        let params = [
            ("to", digits(&proxy)),
            ("from", digits(&from)),
            ("uuid", call.as_str()),
        ];
        let req = app
            .client
            .get(app.url("/hooks/vonage/answer"))
            .query(&params)
            .bearer_auth(&token);
        racing.spawn(async move { req.send().await.unwrap().status().as_u16() });
    }
    let answers: Vec<u16> = racing.join_all().await;
    assert_eq!(
        answers.iter().filter(|s| **s == 200).count(),
        1,
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|s| *s == 200 || *s == 403),
        "{answers:?}"
    );
}
