//! PIN sessions through Plivo: the prompt is a `<GetDigits>` whose answer, or the `<Redirect>`
//! after a silent prompt, comes back signed to `/hooks/plivo/digits?attempt=N`; a text opens
//! with the PIN. Every request is signed as Plivo signs it (see `relay_plivo`).

use serde_json::json;

use crate::harness::*;
use std::time::Duration;

use crate::relay_plivo::{PUBLIC_URL, Plivo, Sign, TOKEN, dialled, digits, uuid};

const ENDED: &str = "This conversation has ended.";

async fn plivo_app() -> TestApp {
    TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC_URL.into());
        c.providers.plivo_auth_token = Some(hush::config::Secret::new(TOKEN.into()));
    })
    .await
}

/// The path Plivo posts a prompt's end to.
fn digits_path(attempt: u8) -> String {
    format!("/hooks/plivo/digits?attempt={attempt}")
}

/// What Plivo posts when a prompt ends: the `<GetDigits action>` request with `Digits`, or,
/// for `None`, the `<Redirect>` that follows a silent prompt (no `Digits`, `Event=Redirect`).
fn report(call: &str, from: &str, to: &str, typed: Option<&str>) -> Vec<(String, String)> {
    let mut p = vec![
        ("CallUUID".to_string(), call.to_string()),
        ("From".to_string(), digits(from)),
        ("To".to_string(), digits(to)),
        ("Direction".to_string(), "inbound".to_string()),
        ("CallStatus".to_string(), "in-progress".to_string()),
    ];
    match typed {
        Some(typed) => p.push(("Digits".to_string(), typed.to_string())),
        None => p.push(("Event".to_string(), "Redirect".to_string())),
    }
    p
}

fn pairs(p: &[(String, String)]) -> Vec<(&str, &str)> {
    p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Sends the end of prompt `attempt` of `call` from `from` to `to`.
async fn typed(
    plivo: &Plivo<'_>,
    call: &str,
    from: &str,
    to: &str,
    attempt: u8,
    typed: Option<&str>,
) -> Resp {
    let p = report(call, from, to, typed);
    plivo.post(&digits_path(attempt), &pairs(&p)).await
}

/// The value of attribute `name` on the first `<element` in `doc`.
#[track_caller]
fn attr<'a>(doc: &'a str, element: &str, name: &str) -> &'a str {
    let at = doc
        .find(&format!("<{element} "))
        .unwrap_or_else(|| panic!("no <{element}> in {doc}"));
    let tag = &doc[at..at + doc[at..].find('>').expect("a closed tag")];
    let key = format!(" {name}=\"");
    let start = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} on <{element}>: {doc}"))
        + key.len();
    &tag[start..start + tag[start..].find('"').expect("a closed attribute")]
}

/// A PIN prompt as Plivo reads it: `(attempt, numDigits, timeout, what is said)`. Both the
/// `<GetDigits>` and the `<Redirect>` after it name the same digits URL.
#[track_caller]
fn prompt(r: &Resp) -> (u8, u8, u32, String) {
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.content_type().starts_with("text/xml"), "{r:?}");
    let doc = r.text.as_str();
    assert!(
        doc.starts_with("<Response><GetDigits ") && doc.ends_with("</Redirect></Response>"),
        "not a prompt: {doc}"
    );
    let action = attr(doc, "GetDigits", "action");
    assert_eq!(attr(doc, "GetDigits", "method"), "POST", "{doc}");
    assert_eq!(attr(doc, "Redirect", "method"), "POST", "{doc}");
    let redirect = &doc[doc.find("<Redirect ").unwrap()..];
    let redirect =
        &redirect[redirect.find('>').unwrap() + 1..redirect.find("</Redirect>").unwrap()];
    assert_eq!(action, redirect, "{doc}");
    let attempt = action
        .strip_prefix(&format!("{PUBLIC_URL}/hooks/plivo/digits?attempt="))
        .unwrap_or_else(|| panic!("digits URL {action}"))
        .parse()
        .expect("attempt");
    let said_at = doc.find("<Speak>").expect("a <Speak>") + "<Speak>".len();
    let said = &doc[said_at..said_at + doc[said_at..].find("</Speak>").unwrap()];
    (
        attempt,
        attr(doc, "GetDigits", "numDigits").parse().unwrap(),
        attr(doc, "GetDigits", "timeout").parse().unwrap(),
        said.to_string(),
    )
}

#[tokio::test]
async fn the_digits_hook_is_signed_like_the_voice_hook() {
    let app = plivo_app().await;
    app.pool("pins", json!({ "pin": "fallback" }), &proxies(1))
        .await;
    let plivo = Plivo::new(&app);
    let (caller, proxy) = (participant(0), proxy(0));
    let call = uuid();
    let p = report(&call, &caller, &proxy, Some("123456"));
    for how in [
        Sign::NoSignature,
        Sign::NoNonce,
        Sign::Token("a-wrong-auth-token"),
        Sign::OtherNonce,
        // The attempt is signed: a report for one prompt is not one for another.
        Sign::Url(format!("{PUBLIC_URL}{}", digits_path(2))),
        Sign::Url(format!("{PUBLIC_URL}/hooks/plivo/digits")),
    ] {
        let r = plivo.send(&digits_path(1), &pairs(&p), how.clone()).await;
        r.expect_problem(403, "invalid_signature");
    }
    // Only POST, as Plivo is told to use.
    let r = app.send(app.client.get(app.url(&digits_path(1)))).await;
    r.expect_problem(405, "method_not_allowed");
}

#[tokio::test]
async fn a_malformed_digits_report_is_a_bad_request() {
    let app = plivo_app().await;
    app.pool("pins", json!({ "pin": "fallback" }), &proxies(1))
        .await;
    let plivo = Plivo::new(&app);
    let (caller, proxy) = (participant(0), proxy(0));
    let full = report(&uuid(), &caller, &proxy, Some("123456"));
    let without = |name: &str| -> Vec<(String, String)> {
        full.iter().filter(|(k, _)| k != name).cloned().collect()
    };
    let with = |name: &str, value: &str| -> Vec<(String, String)> {
        full.iter()
            .map(|(k, v)| (k.clone(), if k == name { value.into() } else { v.clone() }))
            .collect()
    };
    for (what, p) in [
        ("no CallUUID", without("CallUUID")),
        ("no To", without("To")),
        ("To no number", with("To", "sip:hush@example.test")),
        ("not keypad digits", with("Digits", "12ab56")),
        ("nothing", Vec::new()),
    ] {
        let r = plivo.post(&digits_path(1), &pairs(&p)).await;
        let body = r.expect_problem(400, "invalid_request");
        assert!(!r.text.contains("12ab56"), "{what}: {body}");
    }
}

/// The pool's out-of-session message, then the end of the call.
#[track_caller]
fn assert_ended(r: &Resp) {
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.text,
        format!("<Response><Speak>{ENDED}</Speak><Hangup/></Response>")
    );
}

/// A `<Dial>` to `to` showing `proxy`, in Plivo's digits-only form.
#[track_caller]
fn assert_dial(r: &Resp, proxy: &str, to: &str) {
    assert_eq!(dialled(r), (digits(proxy), digits(to)), "{}", r.text);
}

/// A text's answer: `(src, dst, what is sent)` of its one `<Message>`.
#[track_caller]
fn message(r: &Resp) -> (String, String, String) {
    assert_eq!(r.status, 200, "{}", r.text);
    let doc = r.text.as_str();
    assert!(
        doc.starts_with("<Response><Message ") && doc.ends_with("</Message></Response>"),
        "not one message: {doc}"
    );
    assert_eq!(attr(doc, "Message", "type"), "sms", "{doc}");
    let body = &doc[doc.find('>').unwrap() + 1..];
    let body = &body[body.find('>').unwrap() + 1..body.find("</Message>").unwrap()];
    (
        attr(doc, "Message", "src").to_string(),
        attr(doc, "Message", "dst").to_string(),
        body.to_string(),
    )
}

/// The message-URL request of an inbound text.
async fn text(plivo: &Plivo<'_>, message: &str, from: &str, to: &str, body: &str) -> Resp {
    plivo
        .post(
            "/hooks/plivo/sms",
            &[
                ("MessageUUID", message),
                ("From", &digits(from)),
                ("To", &digits(to)),
                ("Text", body),
                ("Type", "sms"),
            ],
        )
        .await
}

#[tokio::test]
async fn an_exhausted_pool_gives_a_pin_and_the_right_one_connects() {
    let app = plivo_app().await;
    let policy = json!({ "pin": "fallback", "out_of_session_message": ENDED });
    let (proxy, _) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, c) = (participant(0), participant(2));
    let s = app.open_session("rides", &a, &c, None).await;
    assert_eq!(s["access"], "pin", "{s}");
    assert_eq!(s["proxy_number"], proxy.as_str(), "{s}");
    let plivo = Plivo::new(&app);

    // C has no route on the number: the prompt, with the pool's words.
    let call = uuid();
    let r = plivo.call(&call, &c, &proxy).await;
    assert_eq!(prompt(&r), (1, 6, 4, "Please enter your PIN.".into()));
    // The answer URL again (a retry): the same prompt.
    assert_eq!(plivo.call(&call, &c, &proxy).await.text, r.text);

    let r = typed(&plivo, &call, &c, &proxy, 1, Some(&pin_of(&s, &c))).await;
    assert_dial(&r, &proxy, &a);
    assert!(!r.text.contains(&digits(&c)), "{}", r.text);
    // Plivo retries a report it got no answer to: the same answer, nothing more recorded.
    let again = typed(&plivo, &call, &c, &proxy, 1, Some(&pin_of(&s, &c))).await;
    assert_eq!(again.text, r.text);
    let list = app.interactions(s["id"].as_str().unwrap()).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["access"], "pin");
    assert_eq!(list[0]["kind"], "voice");
    assert_eq!(list[0]["provider"], "plivo");
    assert_eq!(list[0]["provider_ref"], call.as_str());
    assert_eq!(list[0]["from_participant"], 1);

    // The other way: A types the PIN given to A and reaches C.
    let call = uuid();
    assert_eq!(prompt(&plivo.call(&call, &a, &proxy).await).0, 1);
    let r = typed(&plivo, &call, &a, &proxy, 1, Some(&pin_of(&s, &a))).await;
    assert_dial(&r, &proxy, &c);
    assert_eq!(app.interactions(s["id"].as_str().unwrap()).await.len(), 2);
}

#[tokio::test]
async fn a_wrong_pin_is_asked_again_then_ends_and_too_many_are_refused() {
    let app = plivo_app().await;
    let policy = json!({
        "pin": "fallback",
        "pin_failure_limit": 4,
        "pin_prompt": "Your <PIN> & then #",
        "out_of_session_message": ENDED,
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
    let plivo = Plivo::new(&app);
    let said = "Your &lt;PIN&gt; &amp; then #".to_string();

    let call = uuid();
    assert_eq!(
        prompt(&plivo.call(&call, &c, &proxy).await),
        (1, 6, 4, said.clone())
    );
    // Two more prompts after the first wrong PIN (pin_retry 2), then the end.
    let r = typed(&plivo, &call, &c, &proxy, 1, Some(wrong)).await;
    assert_eq!(prompt(&r), (2, 6, 4, said.clone()));
    // A retried report of the first prompt: the same second prompt, not a third.
    assert_eq!(
        typed(&plivo, &call, &c, &proxy, 1, Some(wrong)).await.text,
        r.text
    );
    // Silence comes back through the `<Redirect>`: asked again.
    assert_eq!(
        prompt(&typed(&plivo, &call, &c, &proxy, 2, None).await).0,
        3
    );
    assert_ended(&typed(&plivo, &call, &c, &proxy, 3, Some(wrong)).await);
    // The call is over: even the right PIN now reaches nobody.
    assert_ended(&typed(&plivo, &call, &c, &proxy, 4, Some(&right)).await);

    // Two wrong PINs so far (silence and the retry are not counted). Two more reach the
    // limit of four; after that even the right PIN is refused, on any call.
    let call = uuid();
    plivo.call(&call, &c, &proxy).await;
    assert_eq!(
        prompt(&typed(&plivo, &call, &c, &proxy, 1, Some(wrong)).await).0,
        2
    );
    assert_eq!(
        prompt(&typed(&plivo, &call, &c, &proxy, 2, Some(wrong)).await).0,
        3
    );
    assert_ended(&typed(&plivo, &call, &c, &proxy, 3, Some(&right)).await);
    let call = uuid();
    plivo.call(&call, &c, &proxy).await;
    assert_ended(&typed(&plivo, &call, &c, &proxy, 1, Some(&right)).await);
    assert!(app.interactions(s["id"].as_str().unwrap()).await.is_empty());

    // Another caller is not held back by C's mistakes.
    let call = uuid();
    plivo.call(&call, &a, &proxy).await;
    assert_dial(
        &typed(&plivo, &call, &a, &proxy, 1, Some(&pin_of(&s, &a))).await,
        &proxy,
        &c,
    );
}

#[tokio::test]
async fn a_withheld_caller_reaches_the_session_only_when_the_pool_accepts_any_caller() {
    let app = plivo_app().await;
    let policy = json!({ "pin": "fallback", "out_of_session_message": ENDED });
    let (proxy, _) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, c) = (participant(0), participant(2));
    let s = app.open_session("rides", &a, &c, None).await;
    let plivo = Plivo::new(&app);

    // Plivo's withheld caller IDs; the default checks the caller, who cannot be told apart.
    for withheld in ["anonymous", ""] {
        let call = uuid();
        assert_eq!(prompt(&plivo.call(&call, withheld, &proxy).await).0, 1);
        let r = typed(&plivo, &call, withheld, &proxy, 1, Some(&pin_of(&s, &c))).await;
        assert_eq!(prompt(&r).0, 2, "From {withheld:?}");
    }
    assert!(app.interactions(s["id"].as_str().unwrap()).await.is_empty());

    app.patch("/v1/pools/rides", &json!({ "pin_caller_check": false }))
        .await
        .expect(200);
    // The pool's policy is cached for a moment.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let call = uuid();
    assert_eq!(prompt(&plivo.call(&call, "anonymous", &proxy).await).0, 1);
    let r = typed(&plivo, &call, "anonymous", &proxy, 1, Some(&pin_of(&s, &c))).await;
    assert_dial(&r, &proxy, &a);
    // A call with no `From` at all is withheld too.
    let call = uuid();
    let r = plivo
        .post(
            "/hooks/plivo/voice",
            &[("CallUUID", &call), ("To", &digits(&proxy))],
        )
        .await;
    assert_eq!(prompt(&r).0, 1);
    let mut p = report(&call, "", &proxy, Some(&pin_of(&s, &c)));
    p.retain(|(k, _)| k != "From");
    let r = plivo.post(&digits_path(1), &pairs(&p)).await;
    assert_dial(&r, &proxy, &a);
}

#[tokio::test]
async fn a_caller_with_a_route_and_a_pin_session_reaches_the_route_on_silence() {
    let app = plivo_app().await;
    let policy = json!({
        "pin": "fallback",
        "pin_prompt_timeout_secs": 3,
        "out_of_session_message": ENDED,
    });
    let (proxy, direct) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, b, c) = (participant(0), participant(1), participant(2));
    let plivo = Plivo::new(&app);

    // Before A has a PIN session here, A's call connects at once.
    assert_dial(&plivo.call(&uuid(), &a, &proxy).await, &proxy, &b);

    let s = app.open_session("rides", &a, &c, None).await;
    // The short prompt; nothing typed reaches A's own route, through the `<Redirect>` or
    // through an empty `Digits`.
    for silence in [None, Some("")] {
        let call = uuid();
        let r = plivo.call(&call, &a, &proxy).await;
        assert_eq!(prompt(&r), (1, 6, 3, "Please enter your PIN.".into()));
        let r = typed(&plivo, &call, &a, &proxy, 1, silence).await;
        assert_dial(&r, &proxy, &b);
        let list = app.interactions(direct["id"].as_str().unwrap()).await;
        assert_eq!(list.last().unwrap()["access"], "direct", "{list:?}");
        assert_eq!(list.last().unwrap()["provider_ref"], call.as_str());
    }
    // Typing the PIN instead reaches the PIN session.
    let call = uuid();
    plivo.call(&call, &a, &proxy).await;
    let r = typed(&plivo, &call, &a, &proxy, 1, Some(&pin_of(&s, &a))).await;
    assert_dial(&r, &proxy, &c);

    // B has no PIN session: no prompt.
    assert_dial(&plivo.call(&uuid(), &b, &proxy).await, &proxy, &a);
}

#[tokio::test]
async fn a_text_opening_with_the_pin_is_relayed_without_it_and_the_reply_needs_none() {
    let app = plivo_app().await;
    app.pool(
        "rides",
        json!({ "pin": "always", "out_of_session_message": ENDED }),
        &proxies(1),
    )
    .await;
    let proxy = proxy(0);
    let (c, d) = (participant(2), participant(3));
    let s = app.open_session("rides", &c, &d, None).await;
    assert_eq!(s["access"], "pin", "{s}");
    let plivo = Plivo::new(&app);

    // Without the PIN, the sender is told how to write, from the proxy number.
    let r = text(&plivo, &uuid(), &c, &proxy, "hello there").await;
    assert_eq!(
        message(&r),
        (
            digits(&proxy),
            digits(&c),
            "Start your message with your PIN, then a space.".into()
        )
    );

    // Plivo relays a text inline: the `<Message>` carries the text without the PIN.
    let uuid_1 = uuid();
    let body = format!("  {} hello <there> & bye", pin_of(&s, &c));
    let r = text(&plivo, &uuid_1, &c, &proxy, &body).await;
    assert_eq!(
        message(&r),
        (
            digits(&proxy),
            digits(&d),
            "hello &lt;there&gt; &amp; bye".into()
        )
    );
    assert!(!r.text.contains(&pin_of(&s, &c)), "{}", r.text);
    // A retry of the same text is answered the same, PIN left out.
    assert_eq!(text(&plivo, &uuid_1, &c, &proxy, &body).await.text, r.text);

    // The reply needs no PIN, nor do C's next texts.
    let r = text(&plivo, &uuid(), &d, &proxy, "on my way").await;
    assert_eq!(
        message(&r),
        (digits(&proxy), digits(&c), "on my way".into())
    );
    let r = text(&plivo, &uuid(), &c, &proxy, "1234 Main St").await;
    assert_eq!(
        message(&r),
        (digits(&proxy), digits(&d), "1234 Main St".into())
    );

    let list = app.interactions(s["id"].as_str().unwrap()).await;
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(
        list.iter()
            .all(|i| i["access"] == "pin" && i["kind"] == "sms" && i["provider"] == "plivo"),
        "{list:?}"
    );
}
