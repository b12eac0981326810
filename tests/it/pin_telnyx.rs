//! PIN sessions through Telnyx: calls to a shared proxy number get a TeXML `<Gather>` (and a
//! `<Redirect>` to the same digits URL, so silence reaches hush too), the typed PIN comes
//! back on the signed digits hook, and texts that open with a PIN are relayed without it
//! through the messaging API.

use std::time::Duration;

use hush::config::Secret;
use serde_json::{Value, json};

use crate::harness::*;
use crate::relay_telnyx::{API_KEY, FakeTelnyx, Hook, form, public_key, signing_key};

const PUBLIC: &str = "https://hush.example.test";
const XML_HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;
const MESSAGE: &str = "This conversation has ended.";
const PROMPT: &str = "Please enter your PIN.";

fn texml(inner: &str) -> String {
    format!("{XML_HEAD}<Response>{inner}</Response>")
}

/// The TeXML asking for a PIN at the `attempt`th prompt.
fn prompt(digits: u8, timeout: u32, attempt: u8) -> String {
    let url = format!("{PUBLIC}/hooks/telnyx/digits?attempt={attempt}");
    texml(&format!(
        r#"<Gather input="dtmf" numDigits="{digits}" timeout="{timeout}" action="{url}"><Say>{PROMPT}</Say></Gather><Redirect method="POST">{url}</Redirect>"#
    ))
}

fn dial(proxy: &str, to: &str) -> String {
    texml(&format!(
        r#"<Dial callerId="{proxy}"><Number>{to}</Number></Dial>"#
    ))
}

fn announce() -> String {
    texml(&format!("<Say>{MESSAGE}</Say><Hangup/>"))
}

/// hush with Telnyx's webhooks and messaging API (at the stand-in `api`).
async fn app(api: &FakeTelnyx) -> TestApp {
    let base = api.base.clone();
    TestApp::start_with(|c| {
        c.providers.telnyx_public_key = Some(Secret::new(public_key(&signing_key())));
        c.providers.telnyx_api_key = Some(Secret::new(API_KEY.into()));
        c.providers.telnyx_api_base = base;
        c.public_url = Some(PUBLIC.into());
    })
    .await
}

/// A Telnyx call id, new each time.
fn call_id() -> String {
    format!("v3:{:032x}", rand::random::<u128>())
}

fn id_of(session: &Value) -> &str {
    session["id"].as_str().unwrap()
}

/// A TeXML call request; `from: None` is a caller ID Telnyx did not send at all.
fn call_form(call: &str, from: Option<&str>, to: &str, digits: Option<&str>) -> String {
    let mut fields = vec![
        ("AccountSid", "f5586561-8ff0-4291-a51b-c7dfe4139ff9"),
        ("CallSid", call),
        ("To", to),
        ("CallStatus", "in-progress"),
        ("Direction", "inbound"),
    ];
    if let Some(from) = from {
        fields.push(("From", from));
    }
    if let Some(d) = digits {
        fields.push(("Digits", d));
    }
    form(&fields)
}

/// The end of the `attempt`th prompt of a call: what `<Gather action>` posts with the digits
/// typed, or, with `None`, the `<Redirect>` after a prompt nobody answered, which carries no
/// `Digits`.
async fn digits(
    hook: &Hook<'_>,
    call: &str,
    from: Option<&str>,
    to: &str,
    attempt: u8,
    typed: Option<&str>,
) -> Resp {
    hook.post(
        &format!("/hooks/telnyx/digits?attempt={attempt}"),
        "application/x-www-form-urlencoded",
        &call_form(call, from, to, typed),
    )
    .await
}

/// A `message.received` event to the proxy.
async fn text(hook: &Hook<'_>, id: &str, from: &str, to: &str, body: &str) -> Resp {
    let event = json!({ "data": {
        "event_type": "message.received", "id": format!("evt-{id}"),
        "payload": {
            "id": id, "direction": "inbound", "type": "SMS", "text": body,
            "from": { "phone_number": from },
            "to": [{ "phone_number": to, "status": "webhook_delivered" }],
            "media": [],
        },
        "record_type": "event",
    } });
    hook.post("/hooks/telnyx/sms", "application/json", &event.to_string())
        .await
}

#[track_caller]
fn assert_texml(r: &Resp, expected: &str) {
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.content_type().contains("xml"), "{:?}", r.content_type());
    assert_eq!(r.text, expected);
}

#[tokio::test]
async fn a_pin_session_is_asked_for_its_pin_and_the_right_one_connects() {
    let api = FakeTelnyx::start().await;
    let app = app(&api).await;
    let policy = json!({ "pin": "fallback", "out_of_session_message": MESSAGE });
    let (proxy, _) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, c) = (participant(0), participant(2));
    let s = app.open_session("rides", &a, &c, None).await;
    assert_eq!(s["access"], "pin", "{s}");
    assert_eq!(s["proxy_number"], json!(proxy));
    let hook = Hook::new(&app);

    // C has no route on the number: the prompt, whose action and redirect are the signed
    // digits hook of the first attempt.
    let call = call_id();
    let r = hook.call(&call, &c, &proxy).await;
    assert_texml(&r, &prompt(6, 4, 1));
    // The voice webhook again (a retry): the same prompt.
    assert_eq!(hook.call(&call, &c, &proxy).await.text, r.text);

    let r = digits(&hook, &call, Some(&c), &proxy, 1, Some(&pin_of(&s, &c))).await;
    assert_texml(&r, &dial(&proxy, &a));
    // A retried report: the same answer, and nothing more recorded.
    let again = digits(&hook, &call, Some(&c), &proxy, 1, Some(&pin_of(&s, &c))).await;
    assert_eq!(again.text, r.text);
    let list = app.interactions(id_of(&s)).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["access"], "pin");
    assert_eq!(list[0]["kind"], "voice");
    assert_eq!(list[0]["provider"], "telnyx");
    assert_eq!(list[0]["provider_ref"], call.as_str());
    assert_eq!(list[0]["from_participant"], 1);

    // A finishing `#` is not part of the PIN.
    let call = call_id();
    hook.call(&call, &c, &proxy).await;
    let hashed = format!("{}#", pin_of(&s, &c));
    let r = digits(&hook, &call, Some(&c), &proxy, 1, Some(&hashed)).await;
    assert_texml(&r, &dial(&proxy, &a));

    // The other way: A holds the direct session too, so A hears the short prompt; A's PIN
    // reaches C.
    let call = call_id();
    assert_texml(&hook.call(&call, &a, &proxy).await, &prompt(6, 4, 1));
    let r = digits(&hook, &call, Some(&a), &proxy, 1, Some(&pin_of(&s, &a))).await;
    assert_texml(&r, &dial(&proxy, &c));
}

#[tokio::test]
async fn digits_reports_are_signed_and_read_strictly() {
    let api = FakeTelnyx::start().await;
    let app = app(&api).await;
    let policy = json!({ "pin": "fallback", "out_of_session_message": MESSAGE });
    let (proxy, _) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, c) = (participant(0), participant(2));
    let s = app.open_session("rides", &a, &c, None).await;
    let hook = Hook::new(&app);
    let call = call_id();
    hook.call(&call, &c, &proxy).await;
    let body = call_form(&call, Some(&c), &proxy, Some(&pin_of(&s, &c)));
    let path = "/hooks/telnyx/digits?attempt=1";
    let ct = "application/x-www-form-urlencoded";

    // Unsigned, or signed over something else: refused before anything is read.
    let r = hook.raw(path, ct, &body, None).await;
    r.expect_problem(403, "invalid_signature");
    let ts = (now_ms() / 1000).to_string();
    let other = telnyx_sign(&ts, "CallSid=x");
    let r = hook.raw(path, ct, &body, Some((ts, other))).await;
    r.expect_problem(403, "invalid_signature");
    assert!(app.interactions(id_of(&s)).await.is_empty());

    // Signed but not a call's fields: a 400 problem, never a 500.
    for bad in [
        String::new(),
        form(&[("Digits", "123456")]),
        form(&[("CallSid", &call), ("Digits", "123456")]),
        form(&[("CallSid", &call), ("To", "sip:someone@example.com")]),
        json!({ "CallSid": call, "To": proxy }).to_string(),
    ] {
        let r = hook.post(path, ct, &bad).await;
        r.expect_problem(400, "invalid_request");
    }
    // A call id the broker cannot take is refused as well.
    let r = digits(&hook, "v3:not valid!", Some(&c), &proxy, 1, Some("1")).await;
    assert!(r.status >= 400 && r.status < 500, "{} {}", r.status, r.text);
    assert!(r.content_type().contains("problem+json"), "{}", r.text);
    assert!(app.interactions(id_of(&s)).await.is_empty());

    // The genuine report still connects.
    let r = hook.post(path, ct, &body).await;
    assert_texml(&r, &dial(&proxy, &a));
}

/// Signs as Telnyx does, with the test key.
fn telnyx_sign(ts: &str, body: &str) -> String {
    use base64::Engine as _;
    use ed25519_dalek::Signer as _;
    base64::engine::general_purpose::STANDARD.encode(
        signing_key()
            .sign(format!("{ts}|{body}").as_bytes())
            .to_bytes(),
    )
}

#[tokio::test]
async fn a_wrong_pin_is_asked_again_then_ends_and_too_many_are_refused() {
    let api = FakeTelnyx::start().await;
    let app = app(&api).await;
    let policy = json!({
        "pin": "fallback",
        "pin_failure_limit": 4,
        "out_of_session_message": MESSAGE,
    });
    let (proxy, _) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, c) = (participant(0), participant(2));
    let s = app.open_session("rides", &a, &c, None).await;
    let right = pin_of(&s, &c);
    let wrong = if right == "000000" {
        "000001"
    } else {
        "000000"
    };
    let hook = Hook::new(&app);
    let ended = announce();

    let call = call_id();
    hook.call(&call, &c, &proxy).await;
    // Two more prompts after the first wrong PIN (pin_retry 2), then the pool's message.
    let r = digits(&hook, &call, Some(&c), &proxy, 1, Some(wrong)).await;
    assert_texml(&r, &prompt(6, 4, 2));
    // A retried report of the first prompt: the same second prompt, not a third.
    let again = digits(&hook, &call, Some(&c), &proxy, 1, Some(wrong)).await;
    assert_eq!(again.text, r.text);
    // Silence at the second prompt (the redirect, no `Digits`): the third.
    let r = digits(&hook, &call, Some(&c), &proxy, 2, None).await;
    assert_texml(&r, &prompt(6, 4, 3));
    let r = digits(&hook, &call, Some(&c), &proxy, 3, Some(wrong)).await;
    assert_texml(&r, &ended);
    // The call is over: even the right PIN reaches nobody now.
    let r = digits(&hook, &call, Some(&c), &proxy, 4, Some(&right)).await;
    assert_texml(&r, &ended);

    // Two wrong PINs so far; two more reach the limit of four, after which even the right
    // PIN is refused, on any call.
    let call = call_id();
    hook.call(&call, &c, &proxy).await;
    let r = digits(&hook, &call, Some(&c), &proxy, 1, Some(wrong)).await;
    assert_texml(&r, &prompt(6, 4, 2));
    let r = digits(&hook, &call, Some(&c), &proxy, 2, Some(wrong)).await;
    assert_texml(&r, &prompt(6, 4, 3));
    let r = digits(&hook, &call, Some(&c), &proxy, 3, Some(&right)).await;
    assert_texml(&r, &ended);
    let call = call_id();
    hook.call(&call, &c, &proxy).await;
    let r = digits(&hook, &call, Some(&c), &proxy, 1, Some(&right)).await;
    assert_texml(&r, &ended);
    assert!(app.interactions(id_of(&s)).await.is_empty());

    // Another caller is not held back by C's mistakes.
    let call = call_id();
    hook.call(&call, &a, &proxy).await;
    let r = digits(&hook, &call, Some(&a), &proxy, 1, Some(&pin_of(&s, &a))).await;
    assert_texml(&r, &dial(&proxy, &c));
}

#[tokio::test]
async fn a_withheld_caller_reaches_a_pin_session_only_when_the_pool_accepts_any_caller() {
    let api = FakeTelnyx::start().await;
    let app = app(&api).await;
    let policy = json!({ "pin": "fallback", "out_of_session_message": MESSAGE });
    let (proxy, _) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, c) = (participant(0), participant(2));
    let s = app.open_session("rides", &a, &c, None).await;
    let pin = pin_of(&s, &c);
    let hook = Hook::new(&app);

    // The default: only C's phone can use C's PIN, and a withheld caller (`anonymous`, or
    // no `From` at all) cannot be told apart.
    for from in [Some("anonymous"), None] {
        let call = call_id();
        let r = hook
            .post(
                "/hooks/telnyx/voice",
                "application/x-www-form-urlencoded",
                &call_form(&call, from, &proxy, None),
            )
            .await;
        assert_texml(&r, &prompt(6, 4, 1));
        let r = digits(&hook, &call, from, &proxy, 1, Some(&pin)).await;
        assert_texml(&r, &prompt(6, 4, 2));
    }

    app.patch("/v1/pools/rides", &json!({ "pin_caller_check": false }))
        .await
        .expect(200);
    // The pool's policy is cached for a moment.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let call = call_id();
    assert_texml(
        &hook.call(&call, "anonymous", &proxy).await,
        &prompt(6, 4, 1),
    );
    let r = digits(&hook, &call, Some("anonymous"), &proxy, 1, Some(&pin)).await;
    assert_texml(&r, &dial(&proxy, &a));
    let list = app.interactions(id_of(&s)).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["access"], "pin");
}

#[tokio::test]
async fn a_caller_with_a_route_and_a_pin_session_reaches_the_route_on_silence() {
    let api = FakeTelnyx::start().await;
    let app = app(&api).await;
    let policy = json!({ "pin": "fallback", "out_of_session_message": MESSAGE });
    let (proxy, direct) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, b, c) = (participant(0), participant(1), participant(2));
    let hook = Hook::new(&app);

    // Before A has a PIN session here, A's call connects at once.
    assert_texml(&hook.call(&call_id(), &a, &proxy).await, &dial(&proxy, &b));

    let s = app.open_session("rides", &a, &c, None).await;
    // The short prompt; nothing typed, so TeXML goes on to the `<Redirect>`, which carries
    // no `Digits`: A's own route.
    let call = call_id();
    assert_texml(&hook.call(&call, &a, &proxy).await, &prompt(6, 4, 1));
    let r = digits(&hook, &call, Some(&a), &proxy, 1, None).await;
    assert_texml(&r, &dial(&proxy, &b));
    let list = app.interactions(id_of(&direct)).await;
    let last = list.last().unwrap();
    assert_eq!(last["access"], "direct");
    assert_eq!(last["provider_ref"], call.as_str());
    // Were the action posted with an empty `Digits` instead, silence reads the same.
    let call = call_id();
    hook.call(&call, &a, &proxy).await;
    let r = digits(&hook, &call, Some(&a), &proxy, 1, Some("")).await;
    assert_texml(&r, &dial(&proxy, &b));
    // Typing the PIN at the short prompt reaches the PIN session instead.
    let call = call_id();
    hook.call(&call, &a, &proxy).await;
    let r = digits(&hook, &call, Some(&a), &proxy, 1, Some(&pin_of(&s, &a))).await;
    assert_texml(&r, &dial(&proxy, &c));

    // B has no PIN session: no prompt.
    assert_texml(&hook.call(&call_id(), &b, &proxy).await, &dial(&proxy, &a));
    // Once the PIN session is closed, A connects without a prompt again.
    app.close_session(id_of(&s)).await.expect(200);
    assert_texml(&hook.call(&call_id(), &a, &proxy).await, &dial(&proxy, &b));
}

#[tokio::test]
async fn a_text_opening_with_the_pin_is_relayed_without_it_and_the_reply_needs_none() {
    let api = FakeTelnyx::start().await;
    let app = app(&api).await;
    app.pool(
        "rides",
        json!({ "pin": "always", "cooloff_secs": 0, "out_of_session_message": MESSAGE }),
        &[proxy(0)],
    )
    .await;
    let proxy = proxy(0);
    let (c, d) = (participant(2), participant(3));
    let s = app.open_session("rides", &c, &d, None).await;
    assert_eq!(s["access"], "pin", "{s}");
    let hook = Hook::new(&app);

    // Without the PIN, the sender is told how to write, from the proxy.
    text(&hook, "msg-nopin", &c, &proxy, "hello there")
        .await
        .expect(200);
    let sent = api.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(
        sent[0],
        json!({ "from": proxy, "to": c,
                "text": "Start your message with your PIN, then a space." })
    );

    // With it, the rest goes to D through the messaging API.
    let body = format!("  {} hello there", pin_of(&s, &c));
    text(&hook, "msg-pin", &c, &proxy, &body).await.expect(200);
    let sent = api.wait_delivered(2, Duration::from_secs(10)).await;
    assert_eq!(
        sent[1],
        json!({ "from": proxy, "to": d, "text": "hello there" })
    );
    // Telnyx retrying the same event sends nothing more.
    text(&hook, "msg-pin", &c, &proxy, &body).await.expect(200);

    // The reply needs no PIN, nor do C's next texts.
    text(&hook, "msg-reply", &d, &proxy, "on my way")
        .await
        .expect(200);
    text(&hook, "msg-next", &c, &proxy, "1234 Main St")
        .await
        .expect(200);
    let sent = api.wait_delivered(4, Duration::from_secs(10)).await;
    let to_c = sent.iter().find(|m| m["text"] == "on my way").unwrap();
    assert_eq!(
        to_c,
        &json!({ "from": proxy, "to": c, "text": "on my way" })
    );
    let to_d = sent.iter().find(|m| m["text"] == "1234 Main St").unwrap();
    assert_eq!(
        to_d,
        &json!({ "from": proxy, "to": d, "text": "1234 Main St" })
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(api.delivered().len(), 4, "{:?}", api.delivered());
    // The PIN went nowhere.
    let pin = pin_of(&s, &c);
    assert!(
        api.delivered()
            .iter()
            .all(|m| !m.to_string().contains(&pin))
    );

    let list = app.interactions(id_of(&s)).await;
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(
        list.iter()
            .all(|i| i["access"] == "pin" && i["kind"] == "sms" && i["provider"] == "telnyx")
    );
}
