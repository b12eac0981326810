//! PIN sessions through Vonage: the answer webhook asks for a PIN with a `talk` and an
//! `input` action, the `input` report comes back signed to the digits hook, and its answer
//! is the NCCO that follows. Texts that open with a PIN leave through the SMS API without it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use hush::config::{Config, Secret};
use serde_json::{Value, json};

use crate::harness::*;
use crate::relay_vonage::{
    PUBLIC, SIGNATURE_SECRET, answer_post, digits, sms_sig, token_for_body, uuid,
};

const ENDED: &str = "This ride has ended.";
const PROMPT: &str = "Enter the PIN <you> were \"sent\" & press #";

// ---------------------------------------------------------------------------------------------
// hush with Vonage, and an SMS API that records what it is asked to send
// ---------------------------------------------------------------------------------------------

/// The form fields of one request to the SMS API, in order.
type Fields = Vec<(String, String)>;

#[derive(Clone, Default)]
struct SmsApi {
    sent: Arc<Mutex<Vec<Fields>>>,
}

impl SmsApi {
    async fn start() -> (SmsApi, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let api = SmsApi::default();
        let app = axum::Router::new()
            .route("/sms/json", axum::routing::post(record))
            .with_state(api.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (api, base)
    }

    /// Waits until `n` texts were sent and returns them as (from, to, text).
    async fn wait_for(&self, n: usize) -> Vec<(String, String, String)> {
        eventually(
            Duration::from_secs(15),
            &format!("{n} text(s) sent"),
            || {
                let sent = self.sent.lock().unwrap().clone();
                async move { (sent.len() >= n).then_some(sent) }
            },
        )
        .await
        .iter()
        .map(|f| (field(f, "from"), field(f, "to"), field(f, "text")))
        .collect()
    }
}

fn field(fields: &[(String, String)], name: &str) -> String {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no `{name}` in {fields:?}"))
}

async fn record(State(api): State<SmsApi>, body: Bytes) -> axum::Json<Value> {
    let url =
        reqwest::Url::parse(&format!("http://x/?{}", String::from_utf8_lossy(&body))).unwrap();
    let fields = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    api.sent.lock().unwrap().push(fields);
    axum::Json(json!({
        "message-count": "1",
        "messages": [{ "status": "0", "message-id": format!("0A{:014X}", rand::random::<u64>()) }],
    }))
}

fn configure(c: &mut Config, sms_api: &str) {
    c.public_url = Some(PUBLIC.into());
    let p = &mut c.providers;
    p.vonage_signature_secret = Some(Secret::new(SIGNATURE_SECRET.into()));
    p.vonage_signature_method = "md5hash".into();
    p.vonage_api_key = Some(Secret::new("abcd1234".into()));
    p.vonage_api_secret = Some(Secret::new("vonage-test-api-secret".into()));
    p.vonage_api_base = sms_api.to_string();
}

async fn vonage_app() -> (TestApp, SmsApi) {
    let (api, base) = SmsApi::start().await;
    (TestApp::start_with(|c| configure(c, &base)).await, api)
}

/// A PIN that is not `right`.
fn wrong(right: &str) -> &'static str {
    if right == "000000" {
        "000001"
    } else {
        "000000"
    }
}

// ---------------------------------------------------------------------------------------------
// Vonage's side of a call
// ---------------------------------------------------------------------------------------------

/// A signed answer webhook for `call`; `from` as Vonage writes it (`Unknown` when withheld).
async fn answer(app: &TestApp, from: &str, proxy: &str, call: &str) -> Resp {
    answer_post(app, from, proxy, call).await
}

/// The `input` action's report as Vonage posts it to the digits hook, with the token that
/// signs it: kept whole so a test can send the very same request again.
struct Report {
    attempt: u8,
    body: String,
    token: String,
}

/// The report of the `attempt`th prompt of `call`: `typed` digits, or silence when empty
/// (the shape of the NCCO reference's example).
fn report(from: &str, proxy: &str, call: &str, attempt: u8, typed: &str) -> Report {
    let body = json!({
        "speech": { "results": [] },
        "dtmf": { "digits": typed, "timed_out": typed.is_empty() },
        "from": digits(from),
        "to": digits(proxy),
        "uuid": call,
        "conversation_uuid": format!("CON-{call}"),
        "timestamp": "2026-12-03T08:00:00.000Z",
    })
    .to_string();
    let token = token_for_body(body.as_bytes());
    Report {
        attempt,
        body,
        token,
    }
}

async fn send(app: &TestApp, r: &Report) -> Resp {
    app.send(
        app.client
            .post(app.url(&format!("/hooks/vonage/digits?attempt={}", r.attempt)))
            .header("content-type", "application/json")
            .bearer_auth(&r.token)
            .body(r.body.clone()),
    )
    .await
}

/// Reports what `from` typed at the `attempt`th prompt of `call`.
async fn typed(app: &TestApp, from: &str, proxy: &str, call: &str, attempt: u8, pin: &str) -> Resp {
    send(app, &report(from, proxy, call, attempt, pin)).await
}

#[track_caller]
fn ncco(r: &Resp) -> &Value {
    assert_eq!(r.status, 200, "{} {}", r.status, r.text);
    assert!(
        r.content_type().starts_with("application/json"),
        "{}",
        r.content_type()
    );
    &r.json
}

/// The prompt: the pool's words said with barge-in, then DTMF input of `digits` digits
/// reported to the digits hook for `attempt`. The words are returned.
#[track_caller]
fn assert_gather(r: &Resp, attempt: u8, digits: u8, timeout: u32) -> String {
    let doc = ncco(r);
    let prompt = doc[0]["text"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        doc,
        &json!([
            { "action": "talk", "text": prompt, "bargeIn": true },
            {
                "action": "input",
                "type": ["dtmf"],
                "dtmf": { "maxDigits": digits, "timeOut": timeout, "submitOnHash": true },
                "eventUrl": [format!("{PUBLIC}/hooks/vonage/digits?attempt={attempt}")],
                "eventMethod": "POST",
            },
        ]),
        "{}",
        r.text
    );
    prompt
}

/// A `connect` to `to` showing `proxy`.
#[track_caller]
fn assert_connect(r: &Resp, proxy: &str, to: &str) {
    assert_eq!(
        ncco(r),
        &json!([{
            "action": "connect",
            "from": digits(proxy),
            "endpoint": [{ "type": "phone", "number": digits(to) }],
        }]),
        "{}",
        r.text
    );
}

#[track_caller]
fn assert_ended(r: &Resp) {
    assert_eq!(
        ncco(r),
        &json!([{ "action": "talk", "text": ENDED }]),
        "{}",
        r.text
    );
}

// ---------------------------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_pool_that_ran_out_gives_a_pin_and_the_right_one_connects() {
    let (app, _) = vonage_app().await;
    // Eight-digit PINs: long enough that finding one in the logs would not be chance.
    let policy = json!({ "pin": "fallback", "pin_length": 8, "out_of_session_message": ENDED });
    let (proxy, _) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, c) = (participant(0), participant(2));
    let s = app.open_session("rides", &a, &c, None).await;
    assert_eq!(s["access"], "pin", "{s}");
    assert_eq!(s["proxy_number"], proxy.as_str());

    // C has no route on the number: the prompt, in the pool's words.
    let call = uuid();
    let r = answer(&app, &c, &proxy, &call).await;
    assert_eq!(assert_gather(&r, 1, 8, 4), "Please enter your PIN.");
    // Vonage retrying the answer webhook: the same prompt.
    assert_eq!(answer(&app, &c, &proxy, &call).await.json, r.json);

    // The right PIN: A rings, seeing the proxy number.
    let right = report(&c, &proxy, &call, 1, &pin_of(&s, &c));
    let r = send(&app, &right).await;
    assert_connect(&r, &proxy, &a);
    // Vonage resending the same report: the same answer, and nothing recorded twice.
    let again = send(&app, &right).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json, r.json);
    let list = app.interactions(s["id"].as_str().unwrap()).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["access"], "pin");
    assert_eq!(list[0]["kind"], "voice");
    assert_eq!(list[0]["provider"], "vonage");
    assert_eq!(list[0]["from_participant"], 1);
    assert_eq!(list[0]["provider_ref"], call.as_str());

    // The other way: A holds the direct session too, so A hears the prompt, types the PIN
    // given to A, and reaches C.
    let call = uuid();
    assert_gather(&answer(&app, &a, &proxy, &call).await, 1, 8, 4);
    assert_connect(
        &typed(&app, &a, &proxy, &call, 1, &pin_of(&s, &a)).await,
        &proxy,
        &c,
    );

    // The digits hook is signed like every voice webhook.
    let forged = report(&c, &proxy, &uuid(), 1, &pin_of(&s, &c));
    let r = app
        .send(
            app.client
                .post(app.url("/hooks/vonage/digits?attempt=1"))
                .header("content-type", "application/json")
                .body(forged.body.clone()),
        )
        .await;
    r.expect_problem(403, "invalid_signature");
    // A report changed after Vonage signed it.
    let mut moved = report(&c, &proxy, &uuid(), 1, &pin_of(&s, &c));
    moved.body = moved.body.replace(digits(&c), digits(&participant(7)));
    send(&app, &moved)
        .await
        .expect_problem(403, "invalid_signature");
    // A signed report Vonage would never send is a clear problem that echoes nothing.
    let body = json!({
        "uuid": uuid(),
        "from": digits(&c),
        "to": digits(&proxy),
        "dtmf": { "digits": format!("{}x", pin_of(&s, &c)) },
    });
    let odd = Report {
        attempt: 1,
        token: token_for_body(body.to_string().as_bytes()),
        body: body.to_string(),
    };
    let r = send(&app, &odd).await;
    r.expect_problem(400, "invalid_request");
    assert!(!r.text.contains(&pin_of(&s, &c)), "{}", r.text);
    assert!(!r.text.contains(&national_digits(&c)), "{}", r.text);

    // Neither the PINs nor the participants' numbers were logged on the way.
    let logs = captured_logs();
    for needle in [
        pin_of(&s, &a),
        pin_of(&s, &c),
        national_digits(&a),
        national_digits(&c),
    ] {
        assert!(!logs.contains(&needle), "{needle} in the logs");
    }
}

#[tokio::test]
async fn a_wrong_pin_is_asked_again_then_ends_and_too_many_are_refused() {
    let (app, _) = vonage_app().await;
    let policy = json!({
        "pin": "fallback",
        "pin_failure_limit": 4,
        "pin_prompt": PROMPT,
        "out_of_session_message": ENDED,
    });
    let (proxy, _) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, c) = (participant(0), participant(2));
    let s = app.open_session("rides", &a, &c, None).await;
    let right = pin_of(&s, &c);
    let wrong = wrong(&right);

    let call = uuid();
    // The pool's words reach Vonage intact, quotes and all.
    assert_eq!(
        assert_gather(&answer(&app, &c, &proxy, &call).await, 1, 6, 4),
        PROMPT
    );
    // Two more prompts after the first wrong PIN (pin_retry 2), then the pool's message.
    let first = report(&c, &proxy, &call, 1, wrong);
    let r = send(&app, &first).await;
    assert_eq!(assert_gather(&r, 2, 6, 4), PROMPT);
    // The first report again: the same second prompt, not a third.
    assert_eq!(send(&app, &first).await.json, r.json);
    assert_gather(&typed(&app, &c, &proxy, &call, 2, "").await, 3, 6, 4);
    assert_ended(&typed(&app, &c, &proxy, &call, 3, wrong).await);
    // The call is over: even the right PIN reaches nobody now.
    assert_ended(&typed(&app, &c, &proxy, &call, 4, &right).await);

    // Two wrong PINs so far (silence and the resent report do not count). Two more reach
    // the limit of four; past it even the right PIN is refused, on a new call too.
    let call = uuid();
    answer(&app, &c, &proxy, &call).await;
    assert_gather(&typed(&app, &c, &proxy, &call, 1, wrong).await, 2, 6, 4);
    assert_gather(&typed(&app, &c, &proxy, &call, 2, wrong).await, 3, 6, 4);
    assert_ended(&typed(&app, &c, &proxy, &call, 3, &right).await);
    let call = uuid();
    answer(&app, &c, &proxy, &call).await;
    assert_ended(&typed(&app, &c, &proxy, &call, 1, &right).await);
    assert!(app.interactions(s["id"].as_str().unwrap()).await.is_empty());

    // A is not held back by C's mistakes.
    let call = uuid();
    answer(&app, &a, &proxy, &call).await;
    assert_connect(
        &typed(&app, &a, &proxy, &call, 1, &pin_of(&s, &a)).await,
        &proxy,
        &c,
    );
}

#[tokio::test]
async fn a_withheld_caller_reaches_a_pin_session_only_when_the_pool_allows_any_caller() {
    let (app, _) = vonage_app().await;
    let policy = json!({ "pin": "fallback", "out_of_session_message": ENDED });
    let (proxy, _) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, c) = (participant(0), participant(2));
    let s = app.open_session("rides", &a, &c, None).await;

    // By default a PIN is its participant's, and a withheld caller cannot be told apart.
    let call = uuid();
    assert_gather(&answer(&app, "Unknown", &proxy, &call).await, 1, 6, 4);
    assert_gather(
        &typed(&app, "Unknown", &proxy, &call, 1, &pin_of(&s, &c)).await,
        2,
        6,
        4,
    );

    app.patch("/v1/pools/rides", &json!({ "pin_caller_check": false }))
        .await
        .expect(200);
    // The pool's policy is cached for a moment.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let call = uuid();
    assert_gather(&answer(&app, "Unknown", &proxy, &call).await, 1, 6, 4);
    assert_connect(
        &typed(&app, "Unknown", &proxy, &call, 1, &pin_of(&s, &c)).await,
        &proxy,
        &a,
    );
    let list = app.interactions(s["id"].as_str().unwrap()).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["access"], "pin");
}

#[tokio::test]
async fn a_caller_with_a_route_and_a_pin_session_reaches_the_route_on_silence() {
    let (app, _) = vonage_app().await;
    let policy = json!({ "pin": "fallback", "out_of_session_message": ENDED });
    let (proxy, direct) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, b, c) = (participant(0), participant(1), participant(2));

    // Before A has a PIN session here, A's call connects at once.
    assert_connect(&answer(&app, &a, &proxy, &uuid()).await, &proxy, &b);

    app.open_session("rides", &a, &c, None).await;
    let call = uuid();
    assert_gather(&answer(&app, &a, &proxy, &call).await, 1, 6, 4);
    // Vonage reports the silence (`timed_out`, no digits): A's own route connects.
    assert_connect(&typed(&app, &a, &proxy, &call, 1, "").await, &proxy, &b);
    let list = app.interactions(direct["id"].as_str().unwrap()).await;
    let last = list.last().unwrap();
    assert_eq!(last["access"], "direct", "{list:?}");
    assert_eq!(last["provider_ref"], call.as_str());

    // B holds no PIN session: no prompt.
    assert_connect(&answer(&app, &b, &proxy, &uuid()).await, &proxy, &a);
}

// ---------------------------------------------------------------------------------------------
// Texts
// ---------------------------------------------------------------------------------------------

/// An inbound text as Vonage posts it, signed with `md5hash`.
async fn text(app: &TestApp, from: &str, proxy: &str, id: &str, body: &str) -> Resp {
    let ts = (now_ms() / 1000).to_string();
    let mut p: Vec<(String, String)> = [
        ("msisdn", digits(from)),
        ("to", digits(proxy)),
        ("messageId", id),
        ("text", body),
        ("type", "unicode"),
        ("api-key", "abcd1234"),
        ("message-timestamp", "2026-12-03 08:00:00"),
        ("timestamp", ts.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sig = sms_sig("md5hash", SIGNATURE_SECRET, &p);
    p.push(("sig".into(), sig));
    let r = app
        .send(app.client.post(app.url("/hooks/vonage/sms")).form(&p))
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    r
}

fn message_id() -> String {
    format!("0B{:014X}", rand::random::<u64>())
}

#[tokio::test]
async fn a_text_opening_with_the_pin_leaves_without_it_and_the_reply_needs_none() {
    let (app, api) = vonage_app().await;
    app.pool(
        "rides",
        json!({ "pin": "always", "out_of_session_message": ENDED }),
        &[proxy(0)],
    )
    .await;
    let proxy = proxy(0);
    let (c, d) = (participant(2), participant(3));
    let s = app.open_session("rides", &c, &d, None).await;
    let (p, c_, d_) = (
        digits(&proxy).to_string(),
        digits(&c).to_string(),
        digits(&d).to_string(),
    );

    // Without the PIN, the sender is told how to write, from the proxy number.
    text(&app, &c, &proxy, &message_id(), "hello there").await;
    let sent = api.wait_for(1).await;
    assert_eq!(
        sent[0],
        (
            p.clone(),
            c_.clone(),
            "Start your message with your PIN, then a space.".into()
        )
    );

    // With it, the text goes on to D without the PIN; Vonage resending it changes nothing.
    let id = message_id();
    let with_pin = format!("  {} hello there", pin_of(&s, &c));
    text(&app, &c, &proxy, &id, &with_pin).await;
    text(&app, &c, &proxy, &id, &with_pin).await;
    let sent = api.wait_for(2).await;
    assert_eq!(sent[1], (p.clone(), d_.clone(), "hello there".into()));

    // The reply needs no PIN, nor does C's next text.
    text(&app, &d, &proxy, &message_id(), "on my way").await;
    let sent = api.wait_for(3).await;
    assert_eq!(sent[2], (p.clone(), c_.clone(), "on my way".into()));
    text(&app, &c, &proxy, &message_id(), "1234 Main St").await;
    let sent = api.wait_for(4).await;
    assert_eq!(sent[3], (p.clone(), d_.clone(), "1234 Main St".into()));

    // The resent text was sent once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.wait_for(4).await.len(), 4);
    let list = app.interactions(s["id"].as_str().unwrap()).await;
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(
        list.iter()
            .all(|i| i["access"] == "pin" && i["kind"] == "sms"),
        "{list:?}"
    );
}
