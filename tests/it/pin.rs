//! PIN sessions through Twilio's webhooks and `POST /v1/route`: falling back to a PIN when a
//! pool runs out, the prompt, right and wrong PINs, the brute-force limit, withheld callers,
//! a caller with a route and PIN sessions on one number, texts that open with a PIN,
//! uniqueness under racing creates on two instances, erasure, and what Redis and the logs
//! keep.

use std::collections::HashSet;
use std::time::Duration;

use hush::config::Secret;
use serde_json::{Value, json};

use crate::harness::*;
use crate::receiver::Receiver;
use crate::relay_twilio::{El, PUBLIC, TOKEN, Twilio, sid, twiml};

const ENDED: &str = "This conversation has ended.";

async fn pin_app() -> TestApp {
    TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        c.providers.twilio_auth_token = Some(Secret::new(TOKEN.into()));
        c.callback_allow_private = true;
        c.event_retry_schedule_ms = vec![200, 400, 800];
    })
    .await
}

/// The digits report of a call's `attempt`th prompt, as `<Gather action>` posts it.
async fn digits(
    tw: &Twilio<'_>,
    from: &str,
    to: &str,
    call: &str,
    attempt: u8,
    typed: &str,
) -> Resp {
    tw.post(
        &format!("/hooks/twilio/digits?attempt={attempt}"),
        &[
            ("AccountSid", "AC00000000000000000000000000000001"),
            ("CallSid", call),
            ("CallStatus", "in-progress"),
            ("Digits", typed),
            ("Direction", "inbound"),
            ("From", from),
            ("To", to),
        ],
    )
    .await
}

/// The `<Gather>` of a prompt, checked whole: DTMF, `digits` digits, the prompt inside, and
/// the digits hook for `attempt` as its action, posted on silence too.
#[track_caller]
fn assert_gather(r: &Resp, attempt: u8, digits: u8, timeout: u32) -> El {
    let doc = twiml(r);
    assert_eq!(doc.names(), ["Gather"], "{}", r.text);
    let g = doc.child("Gather");
    assert_eq!(g.attr("input"), Some("dtmf"));
    assert_eq!(g.attr("numDigits"), Some(digits.to_string().as_str()));
    assert_eq!(g.attr("timeout"), Some(timeout.to_string().as_str()));
    assert_eq!(g.attr("actionOnEmptyResult"), Some("true"));
    assert_eq!(g.attr("method"), Some("POST"));
    assert_eq!(
        g.attr("action"),
        Some(format!("{PUBLIC}/hooks/twilio/digits?attempt={attempt}").as_str())
    );
    assert_eq!(g.names(), ["Say"]);
    g.clone()
}

/// A `<Dial>` to `to` showing `proxy`.
#[track_caller]
fn assert_dial(r: &Resp, proxy: &str, to: &str) {
    let doc = twiml(r);
    let dial = doc.child("Dial");
    assert_eq!(dial.attr("callerId"), Some(proxy), "{}", r.text);
    assert_eq!(dial.child("Number").text, to, "{}", r.text);
}

#[track_caller]
fn assert_ended(r: &Resp) {
    let doc = twiml(r);
    assert_eq!(doc.names(), ["Say", "Hangup"], "{}", r.text);
    assert_eq!(doc.child("Say").text, ENDED);
}

#[tokio::test]
async fn a_pool_of_one_number_falls_back_to_pins_and_a_pool_without_them_runs_out() {
    let app = pin_app().await;
    let policy = json!({ "out_of_session_message": ENDED });
    let (strict, _) = app.exhausted_pool("strict", policy, &proxy(1)).await;
    app.create_session("strict", &participant(0), &participant(2), None)
        .await
        .expect_problem(409, "pool_exhausted");

    let policy = json!({ "pin": "fallback", "out_of_session_message": ENDED });
    let (proxy2, _) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    assert_ne!(strict, proxy2);
    let (a, c) = (participant(0), participant(2));
    let r = app
        .create_session_with(&json!({
            "pool": "rides",
            "participants": [{ "number": a, "label": "courier" }, { "number": c }],
        }))
        .await;
    let s = r.expect(201);
    assert_eq!(s["access"], "pin", "{s}");
    assert_eq!(s["proxy_number"], proxy2.as_str());
    let pins = s["pins"].as_array().unwrap();
    assert_eq!(pins.len(), 2);
    assert_eq!(pins[0]["label"], "courier");
    let (pa, pc) = (pin_of(&s, &a), pin_of(&s, &c));
    for p in [&pa, &pc] {
        assert_eq!(p.len(), 6, "{s}");
        assert!(p.bytes().all(|b| b.is_ascii_digit()), "{s}");
    }
    assert_ne!(pa, pc);

    // The session reads back with the same PINs while open, and without them once closed.
    let id = s["id"].as_str().unwrap();
    let read = app.get_session(id).await.expect(200);
    assert_eq!(read["access"], "pin");
    assert_eq!(read["pins"], s["pins"]);
    app.close_session(id).await.expect(200);
    let closed = app.get_session(id).await.expect(200);
    assert_eq!(closed["access"], "pin");
    assert!(closed.get("pins").is_none(), "{closed}");

    // `always` gives a PIN even when a number is free.
    app.pool(
        "pins",
        json!({ "pin": "always", "pin_length": 4 }),
        &[proxy(5)],
    )
    .await;
    let s = app
        .open_session("pins", &participant(3), &participant(4), None)
        .await;
    assert_eq!(s["access"], "pin");
    assert_eq!(pin_of(&s, &participant(3)).len(), 4);
    // The number carries no route of theirs: a direct session of the two still fits.
    app.put_pool("pins", json!({ "pin": "off", "pin_length": 4 }))
        .await
        .expect(200);
    let d = app
        .open_session("pins", &participant(3), &participant(4), None)
        .await;
    assert_eq!(d["access"], "direct");
    assert_eq!(d["proxy_number"], proxy(5).as_str());
}

#[tokio::test]
async fn a_call_is_asked_for_its_pin_and_the_right_one_connects() {
    let app = pin_app().await;
    let policy = json!({ "pin": "fallback", "out_of_session_message": ENDED });
    let (proxy, _) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, c) = (participant(0), participant(2));
    let s = app.open_session("rides", &a, &c, None).await;
    let tw = Twilio { app: &app };

    // C has no route on the number: the prompt, with the pool's words.
    let call = sid("CA");
    let r = tw.call(&c, &proxy, &call).await;
    let g = assert_gather(&r, 1, 6, 4);
    assert_eq!(g.child("Say").text, "Please enter your PIN.");
    // The voice webhook again (a retry): the same prompt.
    assert_eq!(tw.call(&c, &proxy, &call).await.text, r.text);

    let r = digits(&tw, &c, &proxy, &call, 1, &pin_of(&s, &c)).await;
    assert_dial(&r, &proxy, &a);
    // A retried report gets the same answer and records nothing more.
    let again = digits(&tw, &c, &proxy, &call, 1, &pin_of(&s, &c)).await;
    assert_eq!(again.text, r.text);
    let list = app.interactions(s["id"].as_str().unwrap()).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["access"], "pin");
    assert_eq!(list[0]["kind"], "voice");
    assert_eq!(list[0]["from_participant"], 1);
    assert_eq!(list[0]["provider_ref"], call.as_str());

    // The other way: A types the PIN given to A and reaches C. A also holds the direct
    // session on this number, so A hears the short prompt first.
    let call = sid("CA");
    assert_gather(&tw.call(&a, &proxy, &call).await, 1, 6, 4);
    let r = digits(&tw, &a, &proxy, &call, 1, &pin_of(&s, &a)).await;
    assert_dial(&r, &proxy, &c);

    // `POST /v1/route` speaks the same flow.
    let reference = sid("RT");
    let r = app
        .post(
            "/v1/route",
            &json!({ "from": c, "to": proxy, "kind": "voice", "reference": reference }),
        )
        .await
        .expect(200);
    assert_eq!(
        r,
        json!({ "action": "gather", "digits": 6, "attempt": 1, "timeout_secs": 4,
                "prompt": "Please enter your PIN." })
    );
    let r = app
        .post(
            "/v1/route",
            &json!({ "from": c, "to": proxy, "kind": "voice", "reference": reference,
                     "digits": pin_of(&s, &c), "attempt": 1 }),
        )
        .await
        .expect(200);
    assert_eq!(r["action"], "connect", "{r}");
    assert_eq!(r["to"], a.as_str());
    app.post(
        "/v1/route",
        &json!({ "from": c, "to": proxy, "kind": "voice", "digits": "12" }),
    )
    .await
    .expect_problem(422, "validation_failed");
}

#[tokio::test]
async fn a_wrong_pin_is_asked_again_then_ends_and_too_many_are_refused() {
    let app = pin_app().await;
    let policy = json!({
        "pin": "fallback",
        "pin_failure_limit": 4,
        "pin_prompt": "PIN?",
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
    let tw = Twilio { app: &app };

    let call = sid("CA");
    tw.call(&c, &proxy, &call).await;
    // Two more prompts after the first wrong PIN (pin_retry 2), then the end.
    let r = digits(&tw, &c, &proxy, &call, 1, wrong).await;
    assert_eq!(assert_gather(&r, 2, 6, 4).child("Say").text, "PIN?");
    // A retried report of the first prompt: the same second prompt, not a third.
    assert_eq!(digits(&tw, &c, &proxy, &call, 1, wrong).await.text, r.text);
    assert_gather(&digits(&tw, &c, &proxy, &call, 2, "").await, 3, 6, 4);
    assert_ended(&digits(&tw, &c, &proxy, &call, 3, wrong).await);
    // The call is over: even the right PIN now reaches nobody.
    assert_ended(&digits(&tw, &c, &proxy, &call, 4, &right).await);

    // Two wrong PINs so far (silence and the retry are not counted). Two more reach the
    // limit of four; after that even the right PIN is refused, on any call.
    let call = sid("CA");
    tw.call(&c, &proxy, &call).await;
    assert_gather(&digits(&tw, &c, &proxy, &call, 1, wrong).await, 2, 6, 4);
    assert_gather(&digits(&tw, &c, &proxy, &call, 2, wrong).await, 3, 6, 4);
    assert_ended(&digits(&tw, &c, &proxy, &call, 3, &right).await);
    let call = sid("CA");
    tw.call(&c, &proxy, &call).await;
    assert_ended(&digits(&tw, &c, &proxy, &call, 1, &right).await);
    assert!(app.interactions(s["id"].as_str().unwrap()).await.is_empty());

    // Another caller is not held back by C's mistakes; A's own PIN still works.
    let call = sid("CA");
    tw.call(&a, &proxy, &call).await;
    assert_dial(
        &digits(&tw, &a, &proxy, &call, 1, &pin_of(&s, &a)).await,
        &proxy,
        &c,
    );

    let metrics = app.get("/metrics").await.text;
    let failures = |reason: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("hush_pin_failures_total")
                    && l.contains("pool=\"rides\"")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(failures("limited"), 2, "{metrics}");
    assert!(failures("wrong") >= 1, "{metrics}");
}

#[tokio::test]
async fn a_pin_is_its_participants_unless_the_pool_accepts_any_caller() {
    let app = pin_app().await;
    let policy = json!({ "pin": "fallback", "out_of_session_message": ENDED });
    let (proxy, _) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, c, stranger) = (participant(0), participant(2), participant(7));
    let s = app.open_session("rides", &a, &c, None).await;
    let tw = Twilio { app: &app };

    // The default: only C's phone can use C's PIN; a withheld caller cannot be told apart.
    for from in ["anonymous", stranger.as_str()] {
        let call = sid("CA");
        assert_gather(&tw.call(from, &proxy, &call).await, 1, 6, 4);
        assert_gather(
            &digits(&tw, from, &proxy, &call, 1, &pin_of(&s, &c)).await,
            2,
            6,
            4,
        );
    }

    app.patch("/v1/pools/rides", &json!({ "pin_caller_check": false }))
        .await
        .expect(200);
    // The pool's policy is cached for a moment.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let call = sid("CA");
    assert_gather(&tw.call("anonymous", &proxy, &call).await, 1, 6, 4);
    let r = digits(&tw, "anonymous", &proxy, &call, 1, &pin_of(&s, &c)).await;
    assert_dial(&r, &proxy, &a);
}

#[tokio::test]
async fn a_caller_with_a_route_and_pin_sessions_reaches_the_route_on_silence() {
    let app = pin_app().await;
    let policy = json!({ "pin": "fallback", "out_of_session_message": ENDED });
    let (proxy, direct) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let (a, b, c) = (participant(0), participant(1), participant(2));
    let tw = Twilio { app: &app };

    // Before A has a PIN session here, A's call connects at once.
    assert_dial(&tw.call(&a, &proxy, &sid("CA")).await, &proxy, &b);

    let s = app.open_session("rides", &a, &c, None).await;
    let call = sid("CA");
    assert_gather(&tw.call(&a, &proxy, &call).await, 1, 6, 4);
    assert_dial(&digits(&tw, &a, &proxy, &call, 1, "").await, &proxy, &b);
    let list = app.interactions(direct["id"].as_str().unwrap()).await;
    assert_eq!(list.last().unwrap()["access"], "direct");
    assert_eq!(list.last().unwrap()["provider_ref"], call.as_str());

    // B has no PIN session: no prompt.
    assert_dial(&tw.call(&b, &proxy, &sid("CA")).await, &proxy, &a);

    // Once the PIN session is closed, A is connected without a prompt again.
    app.close_session(s["id"].as_str().unwrap())
        .await
        .expect(200);
    assert_dial(&tw.call(&a, &proxy, &sid("CA")).await, &proxy, &b);
}

#[tokio::test]
async fn a_text_opening_with_the_pin_is_relayed_without_it_and_the_reply_needs_none() {
    let app = pin_app().await;
    app.pool(
        "rides",
        json!({ "pin": "always", "out_of_session_message": ENDED }),
        &proxies(1),
    )
    .await;
    let proxy = proxy(0);
    let (c, d, stranger) = (participant(2), participant(3), participant(7));
    let s = app.open_session("rides", &c, &d, None).await;
    let tw = Twilio { app: &app };

    // Without the PIN, the sender is told how to write.
    let r = tw.text(&c, &proxy, &sid("SM"), "hello there").await;
    let doc = twiml(&r);
    assert_eq!(
        doc.child("Message").text,
        "Start your message with your PIN, then a space."
    );
    assert!(doc.child("Message").attr("to").is_none());

    let message = sid("SM");
    let r = tw
        .text(
            &c,
            &proxy,
            &message,
            &format!("  {} hello there", pin_of(&s, &c)),
        )
        .await;
    let m = twiml(&r).child("Message").clone();
    assert_eq!(m.attr("to"), Some(d.as_str()));
    assert_eq!(m.attr("from"), Some(proxy.as_str()));
    assert_eq!(m.child("Body").text, "hello there");
    // A retry of the same text is answered the same, PIN left out.
    assert_eq!(
        tw.text(
            &c,
            &proxy,
            &message,
            &format!("  {} hello there", pin_of(&s, &c))
        )
        .await
        .text,
        r.text
    );

    // The reply needs no PIN, nor do C's next texts.
    let r = tw.text(&d, &proxy, &sid("SM"), "on my way").await;
    let m = twiml(&r).child("Message").clone();
    assert_eq!(m.attr("to"), Some(c.as_str()));
    assert_eq!(m.child("Body").text, "on my way");
    let r = tw.text(&c, &proxy, &sid("SM"), "1234 Main St").await;
    assert_eq!(
        twiml(&r).child("Message").child("Body").text,
        "1234 Main St"
    );

    // Someone else's PIN from a stranger is a wrong PIN.
    let r = tw
        .text(
            &stranger,
            &proxy,
            &sid("SM"),
            &format!("{} hi", pin_of(&s, &d)),
        )
        .await;
    assert!(
        twiml(&r).child("Message").attr("to").is_none(),
        "{}",
        r.text
    );

    let list = app.interactions(s["id"].as_str().unwrap()).await;
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(
        list.iter()
            .all(|i| i["access"] == "pin" && i["kind"] == "sms")
    );

    // The temporary routes end with the session.
    app.close_session(s["id"].as_str().unwrap())
        .await
        .expect(200);
    let r = tw.text(&d, &proxy, &sid("SM"), "still there?").await;
    assert!(
        twiml(&r).child("Message").attr("to").is_none(),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn pins_are_unique_on_a_number_under_racing_creates_on_two_instances() {
    let app = pin_app().await;
    let peer = app.peer().await;
    // 4-digit PINs: 400 of them drawn at random would collide almost surely.
    app.pool(
        "rides",
        json!({ "pin": "always", "pin_length": 4 }),
        &proxies(1),
    )
    .await;
    let person = |i: usize| format!("+1415556{:04}", 1000 + i);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let on = if i % 2 == 0 { &app } else { &peer };
        let (client, url, key) = (
            on.client.clone(),
            on.url("/v1/sessions"),
            on.admin_key.clone(),
        );
        let body = json!({
            "pool": "rides",
            "participants": [{ "number": person(2 * i) }, { "number": person(2 * i + 1) }],
        });
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let r = client.post(&url).bearer_auth(&key).json(&body).send().await;
            let r = r.expect("create request");
            assert_eq!(r.status().as_u16(), 201);
            (i, r.json::<Value>().await.expect("a JSON answer"))
        });
    }
    let mut sessions = tasks.join_all().await;
    sessions.sort_by_key(|(i, _)| *i);
    let sessions: Vec<Value> = sessions.into_iter().map(|(_, s)| s).collect();
    let mut seen = HashSet::new();
    for s in &sessions {
        assert_eq!(s["access"], "pin");
        for p in s["pins"].as_array().unwrap() {
            let pin = p["pin"].as_str().unwrap().to_string();
            assert!(seen.insert(pin.clone()), "PIN {pin} given twice");
        }
    }
    assert_eq!(seen.len(), 400);

    // Every PIN reaches its own session's other participant, through either instance.
    let tw = Twilio { app: &peer };
    for (i, s) in sessions.iter().enumerate().step_by(37) {
        let (x, y) = (person(2 * i), person(2 * i + 1));
        let call = sid("CA");
        assert_gather(&tw.call(&x, &proxy(0), &call).await, 1, 4, 4);
        assert_dial(
            &digits(&tw, &x, &proxy(0), &call, 1, &pin_of(s, &x)).await,
            &proxy(0),
            &y,
        );
    }
}

#[tokio::test]
async fn erasure_removes_pin_sessions_and_redis_and_logs_hold_no_pin_or_number() {
    let receiver = Receiver::start().await;
    let app = pin_app().await;
    let policy = json!({
        "pin": "fallback",
        "pin_length": 8,
        "callback_url": receiver.url("/events"),
        "out_of_session_message": ENDED,
    });
    let (proxy, _) = app.exhausted_pool("rides", policy, &proxy(0)).await;
    let secret = app.callback_secret("rides").await;
    receiver.set_secrets(vec![secret]);
    let (a, c, e) = (participant(0), participant(2), participant(4));
    let s = app.open_session("rides", &a, &c, None).await;
    let other = app.open_session("rides", &a, &e, None).await;
    let (pa, pc) = (pin_of(&s, &a), pin_of(&s, &c));
    let tw = Twilio { app: &app };
    let call = sid("CA");
    tw.call(&c, &proxy, &call).await;
    assert_dial(&digits(&tw, &c, &proxy, &call, 1, &pc).await, &proxy, &a);
    tw.text(&c, &proxy, &sid("SM"), &format!("{pc} see you"))
        .await;
    let call = sid("CA");
    tw.call(&c, &proxy, &call).await;
    digits(&tw, &c, &proxy, &call, 1, "99999999").await;

    // The events say how the session is reached; the pool never ran out for the app.
    let created = receiver
        .wait_for_type("session.created", 3, Duration::from_secs(10))
        .await;
    let access: Vec<&str> = created
        .iter()
        .map(|d| d.body["data"]["access"].as_str().unwrap())
        .collect();
    assert_eq!(
        access.iter().filter(|a| **a == "pin").count(),
        2,
        "{access:?}"
    );
    let started = receiver
        .wait_for_type("interaction.started", 2, Duration::from_secs(10))
        .await;
    assert!(started.iter().all(|d| d.body["data"]["access"] == "pin"));
    assert!(receiver.of_type("pool.exhausted").is_empty());

    // Redis holds neither the participants' digits nor a PIN, in keys or values.
    let mut needles: Vec<String> = [&a, &c, &e].iter().map(|n| national_digits(n)).collect();
    needles.extend([pa.clone(), pc.clone()]);
    needles.extend(
        other["pins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pin"].as_str().unwrap().to_string()),
    );
    let dump = app.dump().await;
    let mut pin_keys = 0;
    for (key, values) in &dump {
        pin_keys += usize::from(key.contains(":k:"));
        for n in &needles {
            assert!(!key.contains(n.as_str()), "{n} in key {key}");
            for v in values {
                assert!(!contains_bytes(v, n.as_bytes()), "{n} in a value of {key}");
            }
        }
    }
    assert_eq!(pin_keys, 1, "one PIN hash for the number");
    let logs = captured_logs();
    for n in &needles {
        assert!(!logs.contains(n.as_str()), "{n} in the logs");
    }

    // Erasing C ends C's PIN session: A's PIN for it reaches nobody, C's is gone.
    app.delete(&format!("/v1/participants/{}", path_number(&c)))
        .await
        .expect(200);
    let read = app.get_session(s["id"].as_str().unwrap()).await.expect(200);
    assert_eq!(read["status"], "closed");
    assert_eq!(read["close_reason"], "erased");
    let call = sid("CA");
    tw.call(&a, &proxy, &call).await;
    assert_ended(&digits(&tw, &a, &proxy, &call, 1, &pa).await);
    // A's other PIN session is untouched.
    let call = sid("CA");
    tw.call(&a, &proxy, &call).await;
    assert_dial(
        &digits(&tw, &a, &proxy, &call, 1, &pin_of(&other, &a)).await,
        &proxy,
        &e,
    );
    // Nothing in Redis names C any more.
    let c_index = {
        let crypto = hush::crypto::Crypto::new(
            app.config.index_key.as_ref().expect("an index key"),
            &app.config.data_keys,
        )
        .unwrap();
        crypto.blind_index(&hush::domain::E164::parse(&c).unwrap())
    };
    for (key, values) in app.dump().await {
        assert!(!key.contains(&c_index), "C's index in key {key}");
        for v in values {
            let text = String::from_utf8_lossy(&v);
            assert!(
                !text.contains(&format!("#{}", s["id"].as_str().unwrap())),
                "a PIN item of the erased session in {key}"
            );
        }
    }
}

#[tokio::test]
async fn a_pin_session_extends_and_its_pins_and_items_go_when_its_hold_ends() {
    let app = TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        c.providers.twilio_auth_token = Some(Secret::new(TOKEN.into()));
    })
    .await; // the reaper runs every 200 ms
    app.pool(
        "rides",
        json!({ "pin": "always", "cooloff_secs": 0 }),
        &proxies(1),
    )
    .await;
    let (c, d) = (participant(2), participant(3));
    let s = app.open_session("rides", &c, &d, Some(1)).await;
    let id = s["id"].as_str().unwrap();
    let extended = app
        .patch(&format!("/v1/sessions/{id}"), &json!({ "ttl_secs": 2 }))
        .await
        .expect(200);
    assert_eq!(extended["status"], "open");
    assert_eq!(extended["pins"], s["pins"]);
    // A text with the PIN gives both a route for the session's life.
    let tw = Twilio { app: &app };
    tw.text(&c, &proxy(0), &sid("SM"), &format!("{} hi", pin_of(&s, &c)))
        .await;
    assert!(!app.scan_keys("*:k:*").await.is_empty());

    sleep_until_ms(ts_ms(&extended["expires_at"]) + 100).await;
    // Expired: the PIN reaches nobody at once, whatever the reaper has done.
    let call = sid("CA");
    tw.call(&c, &proxy(0), &call).await;
    let r = digits(&tw, &c, &proxy(0), &call, 1, &pin_of(&s, &c)).await;
    assert_eq!(twiml(&r).names(), ["Say", "Hangup"], "{}", r.text);
    // Then the reaper gives everything back: PINs, PIN items, routes, the number's load.
    eventually(
        Duration::from_secs(10),
        "the PIN session released",
        || async {
            let keys = app.scan_keys("*:k:*").await;
            let pool = app.get("/v1/pools/rides").await.json;
            (keys.is_empty() && pool["open_sessions"] == 0).then_some(())
        },
    )
    .await;
    for (key, values) in app.dump().await {
        for v in values {
            assert!(
                !String::from_utf8_lossy(&v).contains(&format!("#{}", &id[id.len() - 6..])),
                "a PIN item left in {key}"
            );
        }
    }
}
