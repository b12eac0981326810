use super::*;
use crate::config::Secret;
use axum::http::{HeaderMap, Method};

// Twilio's published request-validation vectors (twilio-python
// tests/unit/test_request_validator.py; the same values are in twilio-node).
const TOKEN: &str = "12345";
const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
const PARAMS: &[(&str, &str)] = &[
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+14158675309"),
    ("Digits", "1234"),
    ("From", "+14158675309"),
    ("To", "+18005551212"),
];
const URL_CASES: &[(&str, &str)] = &[
    (
        "https://mycompany.com/myapp.php?foo=1&bar=2",
        "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
    ),
    (
        "https://mycompany.com:443/myapp.php?foo=1&bar=2",
        "kvajT1Ptam85bY51eRf/AJRuM3w=",
    ),
    (
        "http://mycompany.com:80/myapp.php?foo=1&bar=2",
        "0ZXoZLH/DfblKGATFgpif+LLRf4=",
    ),
    (
        "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
        "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
    ),
];
const REPEATED: &[(&str, &str)] = &[
    ("Sid", "CA123"),
    ("SidAccount", "AC123"),
    ("Digits", "5678"),
    ("Digits", "1234"),
    ("Digits", "1234"),
];
const REPEATED_SUFFIX: &str = "Digits1234Digits5678SidCA123SidAccountAC123";
const REPEATED_SIGNATURE: &str = "IK+Dwps556ElfBT0I3Rgjkr1wJU=";
const JSON_BODY: &str = "{\"property\": \"value\", \"boolean\": true}";
const JSON_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2\
    &bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
const JSON_SIGNATURE: &str = "a9nBmqA0ju/hNViExpshrM61xv4=";
// HMAC-SHA256 under a shared key over the same URL and parameters, computed separately
// (Python's hmac module) since Twilio publishes no vector for it.
const SHARED_SECRET: &str = "whsk-test-secret-0001";
const SHARED_SIGNATURE: &str = "W7/qypa9lvK3kJSpjMVHY9iMA2W3HyO2qQWdt5l76Hc=";

/// A form body as Twilio sends it.
fn form(params: &[(&str, &str)]) -> Vec<u8> {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

fn sha1_ok(url: &str, params: &[(&str, &str)], signature: &str) -> bool {
    signature_valid(
        Algorithm::HmacSha1,
        TOKEN.as_bytes(),
        url,
        &form(params),
        signature,
    )
}

#[test]
fn every_published_url_case_verifies() {
    for (url, signature) in URL_CASES {
        assert!(sha1_ok(url, PARAMS, signature), "{url}");
        assert_eq!(
            sign(
                Algorithm::HmacSha1,
                TOKEN.as_bytes(),
                url,
                &param_strings(&form_urlencoded(&form(PARAMS)))[0]
            ),
            *signature,
            "{url}"
        );
    }
}

#[test]
fn the_default_port_may_be_present_or_absent_on_either_side() {
    let (with_443, with_80) = (URL_CASES[1].1, URL_CASES[2].1);
    // Signed with :443, called without it; signed without, called with it.
    assert!(sha1_ok(URL, PARAMS, with_443));
    assert!(sha1_ok(URL_CASES[1].0, PARAMS, URL_CASES[0].1));
    // Signed with :80, called without it.
    assert!(sha1_ok(
        "http://mycompany.com/myapp.php?foo=1&bar=2",
        PARAMS,
        with_80
    ));
    // Another port is part of the URL: it is never added or dropped.
    assert!(!sha1_ok(
        "http://mycompany.com/myapp.php?foo=1&bar=2",
        PARAMS,
        URL_CASES[3].1
    ));
    // And :443 is no default for http.
    assert!(!sha1_ok(
        "http://mycompany.com/myapp.php?foo=1&bar=2",
        PARAMS,
        with_443
    ));
}

#[test]
fn url_variants_add_or_drop_only_the_default_port() {
    assert_eq!(
        url_variants("https://h.test/p?q=1"),
        ["https://h.test/p?q=1", "https://h.test:443/p?q=1"]
    );
    assert_eq!(
        url_variants("http://u:pw@h.test:80"),
        ["http://u:pw@h.test:80", "http://u:pw@h.test"]
    );
    assert_eq!(
        url_variants("https://[::1]:8443/x"),
        ["https://[::1]:8443/x"]
    );
    assert_eq!(
        url_variants("https://[::1]/x"),
        ["https://[::1]/x", "https://[::1]:443/x"]
    );
}

#[test]
fn anything_changed_breaks_the_signature() {
    let (url, signature) = URL_CASES[0];
    let mut tampered = PARAMS.to_vec();
    tampered[2] = ("Digits", "1235");
    assert!(!sha1_ok(url, &tampered, signature));
    assert!(!sha1_ok(&url.replace("foo=1", "foo=2"), PARAMS, signature));
    assert!(!sha1_ok(url, &PARAMS[1..], signature));
    assert!(!sha1_ok(url, PARAMS, ""));
    assert!(!signature_valid(
        Algorithm::HmacSha1,
        b"12346",
        url,
        &form(PARAMS),
        signature
    ));
    assert!(!signature_valid(
        Algorithm::HmacSha256,
        TOKEN.as_bytes(),
        url,
        &form(PARAMS),
        signature
    ));
}

#[test]
fn repeated_parameters_sign_each_distinct_value() {
    let strings = param_strings(&form_urlencoded(&form(REPEATED)));
    assert_eq!(strings[0], REPEATED_SUFFIX);
    assert!(sha1_ok(URL, REPEATED, REPEATED_SIGNATURE));
    // The order the values arrived in does not matter.
    let mut reordered = REPEATED.to_vec();
    reordered.reverse();
    assert!(sha1_ok(URL, &reordered, REPEATED_SIGNATURE));
    // Dropping one distinct value breaks it.
    assert!(!sha1_ok(URL, &REPEATED[..3], REPEATED_SIGNATURE));
}

#[test]
fn a_json_body_is_signed_through_its_hash_in_the_url() {
    let ok = |url: &str, body: &str, signature: &str| {
        signature_valid(
            Algorithm::HmacSha1,
            TOKEN.as_bytes(),
            url,
            body.as_bytes(),
            signature,
        )
    };
    assert!(ok(JSON_URL, JSON_BODY, JSON_SIGNATURE));
    // Another body no longer matches the hash the signature covers.
    assert!(!ok(
        JSON_URL,
        &JSON_BODY.replace("true", "false"),
        JSON_SIGNATURE
    ));
    // A hash for the altered body in an unsigned URL does not help either.
    let altered = JSON_BODY.replace("true", "false");
    let url = format!(
        "{URL}&bodySHA256={}",
        hex(&Sha256::digest(altered.as_bytes()))
    );
    assert!(!ok(&url, &altered, JSON_SIGNATURE));
}

#[test]
fn shared_keys_sign_with_hmac_sha256() {
    assert!(signature_valid(
        Algorithm::HmacSha256,
        SHARED_SECRET.as_bytes(),
        URL,
        &form(PARAMS),
        SHARED_SIGNATURE
    ));
    assert!(!signature_valid(
        Algorithm::HmacSha1,
        SHARED_SECRET.as_bytes(),
        URL,
        &form(PARAMS),
        SHARED_SIGNATURE
    ));
    assert_eq!(
        signature_settings("key=wk_1, algorithm=HMAC_SHA256"),
        Some(("wk_1", Algorithm::HmacSha256))
    );
    assert_eq!(signature_settings("key=wk_1,algorithm=MD5"), None);
    assert_eq!(signature_settings("algorithm=HMAC_SHA256"), None);
}

fn hook(headers: &[(&str, &str)], body: Vec<u8>) -> Webhook {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    Webhook::new(
        "https://mycompany.com",
        Method::POST,
        &"/myapp.php?foo=1&bar=2".parse().unwrap(),
        map,
        body.into(),
    )
}

#[test]
fn the_settings_header_chooses_the_key() {
    let providers = Providers {
        twilio_auth_token: Some(Secret::new(TOKEN.into())),
        twilio_shared_keys: vec![("wk_1".into(), Secret::new(SHARED_SECRET.into()))],
        ..Providers::default()
    };
    let settings = "key=wk_1,algorithm=HMAC_SHA256";
    let legacy = URL_CASES[0].1;
    let body = || form(PARAMS);
    assert!(verify(
        &providers,
        &hook(&[("x-twilio-signature", legacy)], body())
    ));
    assert!(verify(
        &providers,
        &hook(
            &[
                ("x-twilio-signature", SHARED_SIGNATURE),
                ("x-twilio-webhooks-signature-settings", settings)
            ],
            body()
        )
    ));
    // A shared-key signature without its settings is checked against the auth token.
    assert!(!verify(
        &providers,
        &hook(&[("x-twilio-signature", SHARED_SIGNATURE)], body())
    ));
    // Naming a key makes that key the only one tried.
    assert!(!verify(
        &providers,
        &hook(
            &[
                ("x-twilio-signature", legacy),
                ("x-twilio-webhooks-signature-settings", settings)
            ],
            body()
        )
    ));
    assert!(!verify(
        &providers,
        &hook(
            &[
                ("x-twilio-signature", SHARED_SIGNATURE),
                (
                    "x-twilio-webhooks-signature-settings",
                    "key=wk_2,algorithm=HMAC_SHA256"
                )
            ],
            body()
        )
    ));
    // No signature at all.
    assert!(!verify(&providers, &hook(&[], body())));
    // Shared keys alone: the legacy header has nothing to be checked against.
    let shared_only = Providers {
        twilio_auth_token: None,
        ..providers.clone()
    };
    assert!(!verify(
        &shared_only,
        &hook(&[("x-twilio-signature", legacy)], body())
    ));
    assert!(enabled(&shared_only));
    assert!(!enabled(&Providers::default()));
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn texts_parse_with_their_media_and_withheld_callers_parse_as_none() {
    let p = params(&[
        ("MessageSid", "SM1"),
        ("From", "Acme"),
        ("To", "+12015550100"),
        ("Body", "hi"),
        ("NumMedia", "2"),
        ("MediaUrl1", "https://m.test/2"),
        ("MediaUrl0", "https://m.test/1"),
        ("MediaUrl2", "https://m.test/not-counted"),
    ]);
    let i = parse(Kind::Sms, &p).unwrap();
    assert_eq!(i.from, None);
    assert_eq!(i.to.reveal(), "+12015550100");
    assert_eq!(i.body.as_deref(), Some("hi"));
    assert_eq!(i.media, ["https://m.test/1", "https://m.test/2"]);
    assert_eq!(i.provider_ref, "SM1");
    assert!(parse(Kind::Voice, &p).is_err(), "a text has no CallSid");
    let no_to = params(&[("CallSid", "CA1"), ("From", "+14155550100")]);
    assert!(parse(Kind::Voice, &no_to).is_err());
    let bad_to = params(&[("CallSid", "CA1"), ("From", "+1"), ("To", "client:x")]);
    assert!(parse(Kind::Voice, &bad_to).is_err());
}

#[test]
fn decisions_render_as_twiml() {
    let n = |s: &str| E164::parse_syntax(s).unwrap();
    let (proxy, other) = (n("+12015550100"), n("+14155550101"));
    let call = Inbound {
        kind: Kind::Voice,
        from: Some(n("+14155550100")),
        to: proxy.clone(),
        body: None,
        media: Vec::new(),
        provider_ref: "CA1".into(),
    };
    let connect = Decision::Connect {
        session_id: "ses_1".into(),
        caller_id: proxy.clone(),
        to: other.clone(),
        call: Default::default(),
    };
    assert_eq!(
        render(&connect, &call, "https://h.test"),
        "<Response><Dial callerId=\"+12015550100\" answerOnBridge=\"true\">\
         <Number statusCallback=\"https://h.test/hooks/twilio/status\">+14155550101</Number>\
         </Dial></Response>"
    );
    let text = Inbound {
        kind: Kind::Sms,
        body: Some("<hi> & 'bye'".into()),
        media: vec!["https://m.test/1?a=1&b=2".into()],
        provider_ref: "SM1".into(),
        ..call.clone()
    };
    let relay = Decision::Relay {
        session_id: "ses_1".into(),
        from: proxy,
        to: other,
    };
    assert_eq!(
        render(&relay, &text, "https://h.test"),
        "<Response><Message to=\"+14155550101\" from=\"+12015550100\" \
         action=\"https://h.test/hooks/twilio/status?ref=SM1\">\
         <Body>&lt;hi&gt; &amp; &apos;bye&apos;</Body>\
         <Media>https://m.test/1?a=1&amp;b=2</Media></Message></Response>"
    );
    let ended = Decision::Announce {
        message: "Ended & gone".into(),
    };
    assert_eq!(
        render(&ended, &call, "https://h.test"),
        "<Response><Say>Ended &amp; gone</Say><Hangup/></Response>"
    );
    assert_eq!(
        render(&ended, &text, "https://h.test"),
        "<Response><Message>Ended &amp; gone</Message></Response>"
    );
}

#[test]
fn rendered_text_survives_xml_parsing() {
    assert_eq!(xml_escape("a\r\nb\u{1}<&>"), "a&#13;\nb&lt;&amp;&gt;");
    assert_eq!(xml_escape("😀\t'\""), "😀\t&apos;&quot;");
}

#[test]
fn status_reports_name_the_recorded_interaction() {
    let parent = params(&[
        ("CallSid", "CA1"),
        ("CallStatus", "completed"),
        ("CallDuration", "42"),
        ("From", "+14155550100"),
        ("To", "+12015550100"),
    ]);
    assert_eq!(
        StatusReport::parse(&parent, &[]).unwrap(),
        StatusReport {
            reference: "CA1".into(),
            proxy: Some("+12015550100".into()),
            status: "completed".into(),
            duration_secs: Some(42),
            last: true,
        }
    );
    let leg = params(&[
        ("CallSid", "CA2"),
        ("ParentCallSid", "CA1"),
        ("CallStatus", "no-answer"),
        ("From", "+12015550100"),
        ("To", "+14155550101"),
    ]);
    let r = StatusReport::parse(&leg, &[]).unwrap();
    assert_eq!(
        (r.reference.as_str(), r.proxy.as_deref(), r.last),
        ("CA1", Some("+12015550100"), true)
    );
    // A call hush placed for the app: its own leg, from the proxy, named by `ref`.
    let placed = params(&[
        ("CallSid", "CA7"),
        ("CallStatus", "ringing"),
        ("From", "+12015550100"),
        ("To", "+14155550101"),
    ]);
    let r = StatusReport::parse(&placed, &params(&[("ref", "int_x")])).unwrap();
    assert_eq!(
        (r.reference.as_str(), r.proxy.as_deref(), r.last),
        ("int_x", Some("+12015550100"), false)
    );
    let sent = params(&[
        ("MessageSid", "SM9"),
        ("SmsStatus", "sent"),
        ("From", "+12015550100"),
    ]);
    let r = StatusReport::parse(&sent, &params(&[("ref", "SM1")])).unwrap();
    assert_eq!(
        (r.reference.as_str(), r.status.as_str(), r.last),
        ("SM1", "sent", false)
    );
    let ringing = params(&[("CallSid", "CA1"), ("CallStatus", "ringing")]);
    assert!(!StatusReport::parse(&ringing, &[]).unwrap().last);
    let odd = params(&[("CallSid", "CA1"), ("CallStatus", "x|y")]);
    assert!(StatusReport::parse(&odd, &[]).is_err());
    assert!(StatusReport::parse(&params(&[("CallSid", "CA1")]), &[]).is_err());
    assert!(StatusReport::parse(&[], &[]).is_err());
}

#[test]
fn a_recorded_call_dials_with_recording_and_a_limit() {
    let n = |s: &str| E164::parse_syntax(s).unwrap();
    let connect = Decision::Connect {
        session_id: "ses_x".into(),
        caller_id: n("+12015550100"),
        to: n("+14155550101"),
        call: crate::domain::CallOptions {
            record: Some(RecordChannels::Mono),
            max_call_secs: Some(900),
        },
    };
    let call = Inbound::call(Some(n("+14155550102")), n("+12015550100"), "CA1".into());
    let recorded = Recorded {
        channels: RecordChannels::Mono,
        callback: "https://h.test/hooks/twilio/recording?s=a&i=b".into(),
    };
    assert_eq!(
        render_with(&connect, &call, "https://h.test", Some(&recorded)),
        "<Response><Dial callerId=\"+12015550100\" answerOnBridge=\"true\" \
         timeLimit=\"900\" record=\"record-from-answer\" recordingStatusCallback=\
         \"https://h.test/hooks/twilio/recording?s=a&amp;i=b\" \
         recordingStatusCallbackEvent=\"completed\"><Number statusCallback=\
         \"https://h.test/hooks/twilio/status\">+14155550101</Number></Dial></Response>"
    );
}

#[test]
fn recording_callbacks_read_twilios_fields() {
    let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let done = p(&[
        ("RecordingSid", "RE1"),
        ("RecordingUrl", "https://api.twilio.com/r/RE1"),
        ("RecordingStatus", "completed"),
        ("RecordingDuration", "42"),
        ("RecordingChannels", "1"),
    ]);
    assert_eq!(
        read_recording(&done, 2).unwrap(),
        Some(RecordingView {
            url: "https://api.twilio.com/r/RE1".into(),
            duration_secs: Some(42),
            channels: 1,
            provider_recording_id: Some("RE1".into()),
        })
    );
    let absent = p(&[("RecordingSid", "RE1"), ("RecordingStatus", "absent")]);
    assert_eq!(read_recording(&absent, 2).unwrap(), None);
    assert!(read_recording(&p(&[("RecordingStatus", "completed")]), 2).is_err());
}
