use super::*;
use ed25519_dalek::{Signer, SigningKey};

/// Telnyx publishes no fixed vector; this one signs a `message.received` event with the
/// RFC 8032 section 7.1 TEST 1 key. Its timestamp is old: freshness is checked apart.
fn vector() -> Value {
    json!({
        "public_key_base64": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
        "timestamp": "1700000000",
        "body": "{\"data\":{\"event_type\":\"message.received\",\"id\":\"0ccc7b54-4df3-4bca-a65a-3da1ecc777f0\",\"payload\":{\"text\":\"hi\"},\"record_type\":\"event\"}}",
        "signature": "njOXZj9fT7eiCPS0HwnfY1JA+rQSGe9A89Wh6cmNScV3Kh6SPD8oBCd6g+1y0s7un5cpScI9EmSrDw8GUtq4BA=="
    })
}

/// RFC 8032 section 7.1, TEST 1: the secret key behind the vector's public key.
fn rfc8032_key() -> SigningKey {
    let hex = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    SigningKey::from_bytes(&bytes.try_into().unwrap())
}

/// The published vector's key, timestamp, body and signature.
fn vector_fields() -> (String, String, String, String) {
    let v = vector();
    let s = |k: &str| v[k].as_str().unwrap().to_string();
    (
        s("public_key_base64"),
        s("timestamp"),
        s("body"),
        s("signature"),
    )
}

fn sign(ts: &str, body: &str) -> String {
    B64.encode(
        rfc8032_key()
            .sign(format!("{ts}|{body}").as_bytes())
            .to_bytes(),
    )
}

#[test]
fn the_key_decoded_once_follows_the_key_given() {
    let (key, ts, body, sig) = vector_fields();
    let other = SigningKey::from_bytes(&[9; 32]);
    let other_key = B64.encode(other.verifying_key().to_bytes());
    let other_sig = B64.encode(other.sign(format!("{ts}|x").as_bytes()).to_bytes());
    // Alternating keys (and a key that does not decode) each check with their own key,
    // whichever was decoded last.
    for _ in 0..2 {
        assert!(verify(&key, &ts, &sig, body.as_bytes(), None));
        assert!(!verify(&other_key, &ts, &sig, body.as_bytes(), None));
        assert!(verify(&other_key, &ts, &other_sig, b"x", None));
        assert!(!verify("not base64!", &ts, &sig, body.as_bytes(), None));
        assert!(!verify(&key, &ts, &other_sig, b"x", None));
    }
}

#[test]
fn the_published_vector_verifies() {
    let (key, ts, body, sig) = vector_fields();
    assert!(verify(&key, &ts, &sig, body.as_bytes(), None));
    assert_eq!(
        B64.encode(rfc8032_key().verifying_key().to_bytes()),
        key,
        "the vector's key is RFC 8032's"
    );
    assert_eq!(sign(&ts, &body), sig);
    // One changed byte anywhere fails.
    let tampered = body.replace("\"hi\"", "\"hI\"");
    assert!(!verify(&key, &ts, &sig, tampered.as_bytes(), None));
    assert!(!verify(&key, "1700000001", &sig, body.as_bytes(), None));
    let mut other = B64.decode(&sig).unwrap();
    other[0] ^= 1;
    assert!(!verify(
        &key,
        &ts,
        &B64.encode(other),
        body.as_bytes(),
        None
    ));
    // Another key, and keys or signatures that are not Ed25519 at all.
    let wrong = B64.encode(SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes());
    assert!(!verify(&wrong, &ts, &sig, body.as_bytes(), None));
    assert!(!verify("not base64!", &ts, &sig, body.as_bytes(), None));
    assert!(!verify(&key, &ts, "c2hvcnQ=", body.as_bytes(), None));
    assert!(!verify(&key, "", &sig, body.as_bytes(), None));
}

#[test]
fn stale_and_future_timestamps_are_replays() {
    let key = B64.encode(rfc8032_key().verifying_key().to_bytes());
    let body = r#"{"data":{}}"#;
    let now = 1_800_000_000i64;
    for (age, ok) in [
        (0, true),
        (300, true),
        (-300, true),
        (301, false),
        (-301, false),
    ] {
        let ts = (now - age).to_string();
        assert_eq!(
            verify(&key, &ts, &sign(&ts, body), body.as_bytes(), Some(now)),
            ok,
            "a timestamp {age} s old"
        );
    }
    // The vector itself is years old.
    let v = vector();
    let s = |k: &str| v[k].as_str().unwrap().to_string();
    assert!(!verify(
        &s("public_key_base64"),
        &s("timestamp"),
        &s("signature"),
        s("body").as_bytes(),
        Some(now)
    ));
}

#[test]
fn received_events_parse() {
    let event = json!({ "data": {
        "event_type": "message.received", "id": "evt-1",
        "payload": {
            "id": "msg-1", "direction": "inbound", "text": "a <b> & 😀",
            "from": { "phone_number": "+14155550100" },
            "to": [{ "phone_number": "+12015550100", "status": "webhook_delivered" }],
            "media": [{ "url": "https://m.example/1.jpg", "content_type": "image/jpeg" },
                      { "url": "https://m.example/2.png" }]
        } } });
    let m = parse_received(&event).unwrap();
    assert_eq!(m.id, "msg-1");
    assert_eq!(m.from.as_deref(), Some("+14155550100"));
    assert_eq!(m.to, "+12015550100");
    assert_eq!(m.text, "a <b> & 😀");
    assert_eq!(m.media.len(), 2);
    // No payload id: the event's; no text: empty.
    let bare = json!({ "data": { "event_type": "message.received", "id": "evt-2",
        "payload": { "to": [{ "phone_number": "+12015550100" }], "text": null } } });
    let m = parse_received(&bare).unwrap();
    assert_eq!(
        (m.id.as_str(), m.text.as_str(), m.from),
        ("evt-2", "", None)
    );
    let sent = json!({ "data": { "event_type": "message.sent", "payload": {} } });
    assert!(parse_received(&sent).is_none());
}

#[test]
fn texml_answers_escape_what_they_carry() {
    let n = |s: &str| E164::parse_syntax(s).unwrap();
    let connect = Decision::Connect {
        session_id: "s".into(),
        caller_id: n("+12015550100"),
        to: n("+14155550101"),
        call: Default::default(),
    };
    assert_eq!(
        render_call(Some(&connect)),
        format!(
            "{XML_HEAD}<Response><Dial callerId=\"+12015550100\"><Number>+14155550101\
             </Number></Dial></Response>"
        )
    );
    let say = Decision::Announce {
        message: "Ended <now> & \"done\"".into(),
    };
    assert!(render_call(Some(&say)).ends_with(
        "<Response><Say>Ended &lt;now&gt; &amp; &quot;done&quot;</Say><Hangup/></Response>"
    ));
    assert!(render_call(None).ends_with("<Response><Reject/></Response>"));
}

#[test]
fn a_recorded_call_dials_with_recording_and_a_limit_in_texmls_range() {
    let n = |s: &str| E164::parse_syntax(s).unwrap();
    let connect = |record, max_call_secs| Decision::Connect {
        session_id: "s".into(),
        caller_id: n("+12015550100"),
        to: n("+14155550101"),
        call: crate::domain::CallOptions {
            record,
            max_call_secs,
        },
    };
    let recorded = |channels| Recorded {
        channels,
        callback: "https://h.test/hooks/telnyx/recording?s=a&i=b".into(),
    };
    use crate::domain::RecordChannels;
    let dual = connect(Some(RecordChannels::Dual), Some(600));
    assert_eq!(
        render_call_with(Some(&dual), Some(&recorded(RecordChannels::Dual)), ""),
        format!(
            "{XML_HEAD}<Response><Dial callerId=\"+12015550100\" timeLimit=\"600\" \
             record=\"record-from-answer-dual\" recordingStatusCallback=\
             \"https://h.test/hooks/telnyx/recording?s=a&amp;i=b\" \
             recordingStatusCallbackEvent=\"completed\"><Number>+14155550101</Number>\
             </Dial></Response>"
        )
    );
    let mono = connect(Some(RecordChannels::Mono), None);
    let doc = render_call_with(Some(&mono), Some(&recorded(RecordChannels::Mono)), "");
    assert!(doc.contains(r#" record="record-from-answer" "#), "{doc}");
    assert!(!doc.contains("timeLimit"), "{doc}");
    // TeXML takes 60 s to 4 h.
    let short = connect(None, Some(5));
    assert!(render_call(Some(&short)).contains(r#"timeLimit="60""#));
    let long = connect(None, Some(86_400));
    assert!(render_call(Some(&long)).contains(r#"timeLimit="14400""#));
}

#[test]
fn a_pin_prompt_gathers_then_redirects_to_the_same_digits_url() {
    let prompt = Decision::Gather {
        digits: 6,
        attempt: 2,
        timeout_secs: 4,
        prompt: "Enter the <PIN> & \"wait\"".into(),
    };
    let url = "https://h.test/hooks/telnyx/digits?attempt=2";
    assert_eq!(dialect::digits_url::<Telnyx>("https://h.test", 2), url);
    assert_eq!(
        render_call_with(Some(&prompt), None, "https://h.test"),
        format!(
            "{XML_HEAD}<Response><Gather input=\"dtmf\" numDigits=\"6\" timeout=\"4\" \
             action=\"{url}\"><Say>Enter the &lt;PIN&gt; &amp; &quot;wait&quot;</Say>\
             </Gather><Redirect method=\"POST\">{url}</Redirect></Response>"
        )
    );
    // A URL that needs escaping is escaped in both places; TeXML takes 1 to 120 s.
    let doc = gather(4, 0, "", "https://h.test/d?a=1&b=2");
    assert_eq!(
        doc,
        "<Gather input=\"dtmf\" numDigits=\"4\" timeout=\"1\" \
         action=\"https://h.test/d?a=1&amp;b=2\"><Say></Say></Gather>\
         <Redirect method=\"POST\">https://h.test/d?a=1&amp;b=2</Redirect>"
    );
    assert!(gather(4, 600, "", "u").contains(r#"timeout="120""#));
}

fn digits_of(body: &str) -> Result<dialect::Digits, ApiError> {
    read_digits(body.as_bytes())
}

#[test]
fn a_digits_request_reads_as_the_call_it_ends() {
    let typed = digits_of(
        "CallSid=v3%3Acall-1&AccountSid=acc&From=%2B14155550100&To=%2B12015550100\
         &Digits=123456&CallStatus=in-progress",
    )
    .unwrap();
    assert_eq!(typed.digits, "123456");
    assert_eq!(typed.call.provider_ref, "v3:call-1");
    assert_eq!(typed.call.kind, Kind::Voice);
    assert_eq!(typed.call.from.unwrap().reveal(), "+14155550100");
    assert_eq!(typed.call.to.reveal(), "+12015550100");
    // A finishing `#` is not part of the PIN.
    let hashed = digits_of("CallSid=c&From=%2B14155550100&To=%2B12015550100&Digits=1234%23");
    assert_eq!(hashed.unwrap().digits, "1234");
}

#[test]
fn silence_reads_as_no_digits() {
    // The `<Redirect>` after the prompt carries no `Digits`; an action on an empty
    // result would carry an empty one.
    for body in [
        "CallSid=c&From=%2B14155550100&To=%2B12015550100",
        "CallSid=c&From=%2B14155550100&To=%2B12015550100&Digits=",
        "CallSid=c&From=%2B14155550100&To=%2B12015550100&Digits=%23",
    ] {
        let typed = digits_of(body).unwrap();
        assert_eq!(typed.digits, "", "{body}");
        assert_eq!(typed.call.provider_ref, "c");
    }
}

#[test]
fn a_withheld_caller_reads_as_none() {
    for from in ["anonymous", "Restricted", "", "266696687"] {
        let body = format!("CallSid=c&From={from}&To=%2B12015550100&Digits=123456");
        let typed = digits_of(&body).unwrap();
        assert!(typed.call.from.is_none(), "{from}");
        assert_eq!(typed.digits, "123456");
    }
    let typed = digits_of("CallSid=c&To=%2B12015550100&Digits=1").unwrap();
    assert!(typed.call.from.is_none());
}

#[test]
fn a_malformed_digits_request_is_a_clear_400() {
    for body in [
        "",
        "Digits=123456",
        "From=%2B14155550100&To=%2B12015550100&Digits=123456",
        "CallSid=&To=%2B12015550100",
        "CallSid=c&From=%2B14155550100&Digits=123456",
        "CallSid=c&To=sip%3Abob%40example.com&Digits=1",
        "{\"CallSid\":\"c\",\"To\":\"+12015550100\"}",
        "\u{0}\u{ff}%%%&&==",
    ] {
        let Err(e) = digits_of(body) else {
            panic!("{body:?} read as digits");
        };
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json",
            "{body:?}"
        );
    }
}
