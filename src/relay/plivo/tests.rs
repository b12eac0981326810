use super::*;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};

// plivo-go utils_test.go TestValidateSignatureV3Pass1..4, the same logic as
// plivo-python's signature_v3.py.
const TOKEN: &str = "Y2Q2ZDgxZmY5YWRiOTI5YmQ1Njg0MTAxZWIyOTc4";
const NONCE_VALUE: &str = "31627761595286130198";
const URL_QUERY: &str =
    "https://plivobin.non-prod.plivops.com/api/v1/validate_signature03.xml/?a=b&c=d";
const URL_PLAIN: &str = "https://plivobin.non-prod.plivops.com/api/v1/validate_signature03.xml";
const VECTORS: [(&str, &str, &str); 4] = [
    (
        "POST",
        URL_QUERY,
        "k7Pusd4OxCIjR5IfA9iedDNu/h/gbdYqdzG/MiYtd1c=",
    ),
    (
        "GET",
        URL_QUERY,
        "UBq8jAtd32wR8EK9VgxbBn4n5rpI/l1H9iN4WfSEHFQ=",
    ),
    (
        "POST",
        URL_PLAIN,
        "iAjE5QqI37mbkYe4w3jTMudqEzbDufdqi7sYwTu64e0=",
    ),
    (
        "GET",
        URL_PLAIN,
        "i/MQsaQSAd6fiKhOh2qeeeLHZ9faldADSb3/7+Akfbc=",
    ),
];

fn vector_params() -> Vec<(String, String)> {
    [
        ("Direction", "outbound"),
        ("From", "19792014278"),
        ("ALegUUID", "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36"),
        ("CallStatus", "in-progress"),
        ("BillRate", "0.002"),
        ("ParentAuthID", "MANWVLYTK4ZWU1YTY4QA"),
        (
            "To",
            "sip:PlivoSignature382029104058171078704104@phone-qa.voice.plivodev.com",
        ),
        ("ALegRequestUUID", "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36"),
        ("CallUUID", "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36"),
        ("RequestUUID", "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36"),
        (
            "SIP-H-To",
            "<sip:PlivoSignature382029104058171078704104@52.9.11.55;transport=udp>;tag=1",
        ),
        ("SessionStart", "2020-04-08 11:34:33.238707"),
        ("Event", "StartApp"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn encode(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A request as it reaches hush: `url` split into the public URL and the path it called.
fn hook(url: &str, method: Method, body: &str, sigs: Option<&str>, nonce: Option<&str>) -> Webhook {
    let (origin, path) = url.split_at(url.find("/api").unwrap());
    let mut headers = HeaderMap::new();
    if let Some(sigs) = sigs {
        headers.insert(SIGNATURE, sigs.parse().unwrap());
    }
    if let Some(nonce) = nonce {
        headers.insert(NONCE, nonce.parse().unwrap());
    }
    Webhook::new(
        origin,
        method,
        &path.parse::<Uri>().unwrap(),
        headers,
        Bytes::from(body.to_string()),
    )
}

#[test]
fn published_vectors_compute() {
    let params = vector_params();
    for (method, url, expected) in VECTORS {
        let method: Method = method.parse().unwrap();
        assert_eq!(
            signature(TOKEN, &method, url, &params, NONCE_VALUE),
            expected,
            "{method} {url}"
        );
    }
}

#[test]
fn published_post_vectors_verify_from_the_wire() {
    let params = vector_params();
    let body = encode(&params);
    for (method, url, expected) in VECTORS.into_iter().filter(|v| v.0 == "POST") {
        let method: Method = method.parse().unwrap();
        let h = hook(url, method, &body, Some(expected), Some(NONCE_VALUE));
        let form = h.form();
        assert!(verify(TOKEN, &h, form), "{url}");
        assert!(!verify("another-token", &h, form), "{url}");
        // The nonce is signed.
        let h = hook(url, Method::POST, &body, Some(expected), Some("1"));
        assert!(!verify(TOKEN, &h, h.form()));
        // Every parameter is signed.
        let tampered = body.replace("in-progress", "completed");
        let h = hook(
            url,
            Method::POST,
            &tampered,
            Some(expected),
            Some(NONCE_VALUE),
        );
        assert!(!verify(TOKEN, &h, h.form()));
    }
}

#[test]
fn any_of_several_signatures_verifies() {
    let body = encode(&vector_params());
    let good = VECTORS[0].2;
    let other = VECTORS[2].2;
    for sigs in [
        format!("{other},{good}"),
        format!("{good},{other}"),
        format!("{other}, {good}"),
        format!(",{good},"),
    ] {
        let h = hook(
            URL_QUERY,
            Method::POST,
            &body,
            Some(&sigs),
            Some(NONCE_VALUE),
        );
        assert!(verify(TOKEN, &h, h.form()), "{sigs}");
    }
    for sigs in [other.to_string(), format!("{other},{other}"), String::new()] {
        let h = hook(
            URL_QUERY,
            Method::POST,
            &body,
            Some(&sigs),
            Some(NONCE_VALUE),
        );
        assert!(!verify(TOKEN, &h, h.form()), "{sigs:?}");
    }
    // The main-account header counts too; missing headers never verify.
    let mut h = hook(URL_QUERY, Method::POST, &body, None, Some(NONCE_VALUE));
    assert!(!verify(TOKEN, &h, h.form()));
    h.headers
        .insert(SIGNATURE_MA, format!("x,{good}").parse().unwrap());
    assert!(verify(TOKEN, &h, h.form()));
    let h = hook(URL_QUERY, Method::POST, &body, Some(good), None);
    assert!(!verify(TOKEN, &h, h.form()));
}

#[test]
fn canonical_text_follows_the_sdks() {
    let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let post = Method::POST;
    assert_eq!(canonical(&post, "https://h/x", &[]), "https://h/x");
    assert_eq!(
        canonical(&post, "https://h/x", &p(&[("b", "2"), ("a", "1")])),
        "https://h/x?a1b2"
    );
    assert_eq!(
        canonical(&post, "https://h/x?z=1&y=a+b", &[]),
        "https://h/x?y=a b&z=1"
    );
    assert_eq!(
        canonical(
            &post,
            "https://h/x?z=1",
            &p(&[("T", "é"), ("A", "x"), ("A", "w")])
        ),
        "https://h/x?z=1.AwAxTé"
    );
    assert_eq!(
        canonical(&Method::GET, "https://h/x?b=2", &p(&[("a", "1")])),
        "https://h/x?a=1&b=2"
    );
}

fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn numbers_are_digits_without_plus() {
    assert_eq!(number("14155550123").unwrap().reveal(), "+14155550123");
    assert_eq!(number("+14155550123").unwrap().reveal(), "+14155550123");
    for raw in ["", "anonymous", "sip:a@b.c", "+", "0123456789", "1415 555"] {
        assert!(number(raw).is_none(), "{raw:?}");
    }
}

#[test]
fn parses_calls_and_texts() {
    let call = parse(
        Kind::Voice,
        &form(&[
            ("CallUUID", "c-1"),
            ("From", "14155550100"),
            ("To", "12015550100"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(call.provider_ref, "c-1");
    assert_eq!(call.from.unwrap().reveal(), "+14155550100");
    assert_eq!(call.to.reveal(), "+12015550100");

    let withheld = parse(
        Kind::Voice,
        &form(&[("CallUUID", "c-2"), ("From", ""), ("To", "12015550100")]),
    )
    .unwrap()
    .unwrap();
    assert!(withheld.from.is_none());

    let not_a_number = parse(
        Kind::Voice,
        &form(&[
            ("CallUUID", "c-3"),
            ("From", "14155550100"),
            ("To", "sip:x@y"),
        ]),
    )
    .unwrap();
    assert!(not_a_number.is_none());

    for missing in ["CallUUID", "To"] {
        let mut p = form(&[
            ("CallUUID", "c"),
            ("From", "14155550100"),
            ("To", "12015550100"),
        ]);
        p.retain(|(k, _)| k != missing);
        assert!(parse(Kind::Voice, &p).is_err(), "{missing}");
    }
    let no_from = form(&[("CallUUID", "c"), ("To", "12015550100")]);
    assert!(
        parse(Kind::Voice, &no_from)
            .unwrap()
            .unwrap()
            .from
            .is_none()
    );

    let text = parse(
        Kind::Sms,
        &form(&[
            ("MessageUUID", "m-1"),
            ("From", "14155550100"),
            ("To", "12015550100"),
            ("Text", "<&>"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(text.body.as_deref(), Some("<&>"));
    assert!(text.media.is_empty());

    let mms = parse(
        Kind::Sms,
        &form(&[
            ("MessageUUID", "m-2"),
            ("From", "14155550100"),
            ("To", "12015550100"),
            ("Type", "mms"),
            ("Body", "look"),
            ("MediaCount", "2"),
            ("Media2", "https://m/2"),
            ("Media1", "https://m/1"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(mms.body.as_deref(), Some("look"));
    assert_eq!(mms.media, vec!["https://m/1", "https://m/2"]);

    assert!(
        parse(
            Kind::Sms,
            &form(&[
                ("MessageUUID", "m"),
                ("From", "14155550100"),
                ("To", "12015550100")
            ]),
        )
        .is_err()
    );
}

#[test]
fn renders_every_decision_escaped() {
    let proxy = E164::parse_syntax("+12015550100").unwrap();
    let a = E164::parse_syntax("+14155550100").unwrap();
    let b = E164::parse_syntax("+14155550101").unwrap();
    let inbound = |kind, from: Option<&E164>, body: Option<&str>| Inbound {
        kind,
        from: from.cloned(),
        to: proxy.clone(),
        body: body.map(String::from),
        media: Vec::new(),
        provider_ref: "ref 1".into(),
    };
    let url = "https://h";

    let connect = Decision::Connect {
        session_id: "s".into(),
        caller_id: proxy.clone(),
        to: b.clone(),
        call: Default::default(),
    };
    assert_eq!(
        render(&inbound(Kind::Voice, Some(&a), None), &connect, url),
        r#"<Response><Dial callerId="12015550100"><Number>14155550101</Number></Dial></Response>"#
    );

    let relay = Decision::Relay {
        session_id: "s".into(),
        from: proxy.clone(),
        to: b.clone(),
    };
    assert_eq!(
        render(
            &inbound(Kind::Sms, Some(&a), Some("<a href=\"x\">&'😀")),
            &relay,
            url
        ),
        concat!(
            r#"<Response><Message src="12015550100" dst="14155550101" type="sms" "#,
            r#"callbackUrl="https://h/hooks/plivo/status?ref=ref%201" callbackMethod="POST">"#,
            r#"&lt;a href=&quot;x&quot;&gt;&amp;&apos;😀</Message></Response>"#
        )
    );
    assert_eq!(
        render(&inbound(Kind::Sms, Some(&a), Some("")), &relay, url),
        "<Response/>"
    );

    let announce = Decision::Announce {
        message: "Ride <over> & out".into(),
    };
    assert_eq!(
        render(&inbound(Kind::Voice, None, None), &announce, url),
        "<Response><Speak>Ride &lt;over&gt; &amp; out</Speak><Hangup/></Response>"
    );
    assert_eq!(
        render(&inbound(Kind::Sms, Some(&a), Some("hi")), &announce, url),
        r#"<Response><Message src="12015550100" dst="14155550100" type="sms">Ride &lt;over&gt; &amp; out</Message></Response>"#
    );
    assert_eq!(
        render(&inbound(Kind::Sms, None, Some("hi")), &announce, url),
        "<Response/>"
    );
    assert_eq!(
        unknown_number(Kind::Voice),
        r#"<Response><Hangup reason="rejected"/></Response>"#
    );
    assert_eq!(unknown_number(Kind::Sms), "<Response/>");
    // A parser folds a raw CR into LF: it travels as a reference.
    assert!(
        render(&inbound(Kind::Sms, Some(&a), Some("a\r\nb")), &relay, url)
            .contains(">a&#13;\nb</Message>")
    );
}

#[test]
fn status_callbacks_name_the_interaction() {
    let hangup = form(&[
        ("CallUUID", "c-1"),
        ("CallStatus", "completed"),
        ("Duration", "42"),
        ("BillDuration", "60"),
        ("From", "14155550100"),
        ("To", "12015550100"),
    ]);
    let u = parse_status(&hangup, &[]).unwrap().unwrap();
    assert_eq!(
        (
            u.reference.as_str(),
            u.proxy.reveal(),
            u.status.as_str(),
            u.duration,
            u.last
        ),
        ("c-1", "+12015550100", "completed", Some(42), true)
    );

    let ringing = form(&[
        ("CallUUID", "c-1"),
        ("CallStatus", "ringing"),
        ("To", "12015550100"),
    ]);
    assert!(!parse_status(&ringing, &[]).unwrap().unwrap().last);

    let dial = |s: &str| {
        form(&[
            ("CallUUID", "c-1"),
            ("CallStatus", "in-progress"),
            ("DialStatus", s),
            ("To", "12015550100"),
        ])
    };
    let u = parse_status(&dial("no-answer"), &[]).unwrap().unwrap();
    assert_eq!((u.status.as_str(), u.last), ("no-answer", true));
    let u = parse_status(&dial("completed"), &[]).unwrap().unwrap();
    assert_eq!((u.status.as_str(), u.last), ("completed", false));

    let report = |s: &str| {
        form(&[
            ("MessageUUID", "out-1"),
            ("Status", s),
            ("From", "12015550100"),
            ("To", "14155550101"),
        ])
    };
    let query = form(&[("ref", "in-1")]);
    let u = parse_status(&report("sent"), &query).unwrap().unwrap();
    assert_eq!(
        (u.reference.as_str(), u.proxy.reveal(), u.last),
        ("in-1", "+12015550100", false)
    );
    let u = parse_status(&report("delivered"), &[]).unwrap().unwrap();
    assert_eq!((u.reference.as_str(), u.last), ("out-1", true));

    // Nothing to update, but nothing wrong either.
    assert!(parse_status(&report("a|b"), &[]).unwrap().is_none());
    let anon = form(&[
        ("CallUUID", "c"),
        ("CallStatus", "completed"),
        ("To", "anonymous"),
    ]);
    assert!(parse_status(&anon, &[]).unwrap().is_none());
    // Malformed.
    assert!(parse_status(&form(&[("CallStatus", "completed")]), &[]).is_err());
    assert!(parse_status(&form(&[("CallUUID", "c"), ("To", "12015550100")]), &[]).is_err());
}

#[test]
fn a_recorded_call_records_from_the_answer_then_dials_with_a_limit() {
    let n = |s: &str| E164::parse_syntax(s).unwrap();
    let connect = |record, max_call_secs| Decision::Connect {
        session_id: "ses_x".into(),
        caller_id: n("+12015550100"),
        to: n("+14155550101"),
        call: crate::domain::CallOptions {
            record,
            max_call_secs,
        },
    };
    let call = Inbound::call(Some(n("+14155550102")), n("+12015550100"), "u-1".into());
    let recorded = |channels| Recorded {
        channels,
        callback: "https://h.test/hooks/plivo/recording?s=a&i=b".into(),
    };
    assert_eq!(
        render_with(
            &call,
            &connect(Some(RecordChannels::Dual), Some(300)),
            "https://h.test",
            Some(&recorded(RecordChannels::Dual)),
        ),
        "<Response><Record startOnDialAnswer=\"true\" redirect=\"false\" \
         recordChannelType=\"stereo\" maxLength=\"300\" callbackUrl=\
         \"https://h.test/hooks/plivo/recording?s=a&amp;i=b\" callbackMethod=\"POST\"/>\
         <Dial callerId=\"12015550100\" timeLimit=\"300\"><Number>14155550101</Number>\
         </Dial></Response>"
    );
    let mono = render_with(
        &call,
        &connect(Some(RecordChannels::Mono), None),
        "https://h.test",
        Some(&recorded(RecordChannels::Mono)),
    );
    assert!(
        mono.contains(r#"recordChannelType="mono" maxLength="14400""#),
        "{mono}"
    );
    assert!(!mono.contains("timeLimit"), "{mono}");
}

#[test]
fn a_pin_prompt_asks_then_reports_silence_to_the_same_attempt() {
    let proxy = E164::parse_syntax("+12015550100").unwrap();
    let caller = E164::parse_syntax("+14155550100").unwrap();
    let call = Inbound::call(Some(caller), proxy, "u-1".into());
    let gather = |attempt, prompt: &str| Decision::Gather {
        digits: 6,
        attempt,
        timeout_secs: 4,
        prompt: prompt.into(),
    };
    assert_eq!(
        render(&call, &gather(1, "Enter the PIN"), "https://h.test"),
        "<Response><GetDigits action=\"https://h.test/hooks/plivo/digits?attempt=1\" \
         method=\"POST\" numDigits=\"6\" timeout=\"4\" digitTimeout=\"4\" retries=\"1\" redirect=\"true\" \
         log=\"false\"><Speak>Enter the PIN</Speak></GetDigits>\
         <Redirect method=\"POST\">https://h.test/hooks/plivo/digits?attempt=1</Redirect>\
         </Response>"
    );
    // The prompt is text, whatever it holds; the attempt travels in both URLs.
    let doc = render(
        &call,
        &gather(3, "Type <PIN> & \"#\" — it's quick"),
        "https://h.test",
    );
    assert!(
        doc.contains("<Speak>Type &lt;PIN&gt; &amp; &quot;#&quot; — it&apos;s quick</Speak>"),
        "{doc}"
    );
    assert_eq!(
        doc.matches("/hooks/plivo/digits?attempt=3").count(),
        2,
        "{doc}"
    );
    // Plivo takes positive integers only.
    let zero = Decision::Gather {
        digits: 0,
        attempt: 1,
        timeout_secs: 0,
        prompt: String::new(),
    };
    let doc = render(&call, &zero, "https://h.test");
    assert!(
        doc.contains(r#"numDigits="1" timeout="1" digitTimeout="2""#),
        "{doc}"
    );
    assert!(doc.contains("<Speak></Speak>"), "{doc}");
}

#[test]
fn the_digits_hook_is_served_like_the_voice_hook() {
    let voice = Plivo::PATHS.iter().find(|p| p.hook == Hook::VOICE).unwrap();
    let digits = Plivo::PATHS
        .iter()
        .find(|p| p.hook == Hook::Digits)
        .unwrap();
    assert_eq!(digits.path, "/hooks/plivo/digits");
    assert_eq!(digits.methods, voice.methods);
    assert_eq!(
        dialect::digits_url::<Plivo>("https://h.test", 2),
        "https://h.test/hooks/plivo/digits?attempt=2"
    );
}

/// A digits report as it reaches hush, signed as Plivo signs it.
fn digits_hook(params: &[(&str, &str)], attempt: u8) -> Webhook {
    let params = form(params);
    let url = format!("https://h.test/hooks/plivo/digits?attempt={attempt}");
    let sig = signature(TOKEN, &Method::POST, &url, &params, NONCE_VALUE);
    let mut headers = HeaderMap::new();
    headers.insert(SIGNATURE, sig.parse().unwrap());
    headers.insert(NONCE, NONCE_VALUE.parse().unwrap());
    Webhook::new(
        "https://h.test",
        Method::POST,
        &format!("/hooks/plivo/digits?attempt={attempt}")
            .parse::<Uri>()
            .unwrap(),
        headers,
        Bytes::from(encode(&params)),
    )
}

#[test]
fn reads_what_was_typed_at_a_prompt() {
    // The `<GetDigits action>` request: the call's fields and `Digits`.
    let h = digits_hook(
        &[
            ("CallUUID", "c-1"),
            ("From", "14155550100"),
            ("To", "12015550100"),
            ("Direction", "inbound"),
            ("CallStatus", "in-progress"),
            ("Digits", "123456"),
        ],
        2,
    );
    // Signed over the URL with its attempt, as the voice hook is verified.
    assert!(verify(TOKEN, &h, h.form()));
    let typed = digits::read(h.form()).unwrap();
    assert_eq!(typed.digits, "123456");
    assert_eq!(typed.call.provider_ref, "c-1");
    assert_eq!(typed.call.from.unwrap().reveal(), "+14155550100");
    assert_eq!(typed.call.to.reveal(), "+12015550100");
    assert_eq!(typed.call.kind, Kind::Voice);

    // A finishing `#`, should one come through, is not part of the PIN.
    let typed = digits::read(&form(&[
        ("CallUUID", "c-1"),
        ("From", "14155550100"),
        ("To", "12015550100"),
        ("Digits", "1234#"),
    ]))
    .unwrap();
    assert_eq!(typed.digits, "1234");
}

#[test]
fn silence_reads_as_no_digits() {
    // The `<Redirect>` after a silent prompt carries no `Digits` at all
    // (`Event=Redirect`); an empty `Digits` means the same.
    for extra in [("Event", "Redirect"), ("Digits", "")] {
        let typed = digits::read(&form(&[
            ("CallUUID", "c-1"),
            ("From", "14155550100"),
            ("To", "12015550100"),
            ("CallStatus", "in-progress"),
            extra,
        ]))
        .unwrap();
        assert_eq!(typed.digits, "", "{extra:?}");
        assert_eq!(typed.call.provider_ref, "c-1");
        assert!(typed.call.from.is_some());
    }
}

#[test]
fn a_withheld_caller_types_too() {
    for from in [None, Some(""), Some("anonymous"), Some("sip:x@y.z")] {
        let mut params = vec![
            ("CallUUID", "c-2"),
            ("To", "12015550100"),
            ("Digits", "654321"),
        ];
        if let Some(from) = from {
            params.push(("From", from));
        }
        let typed = digits::read(&form(&params)).unwrap();
        assert!(typed.call.from.is_none(), "{from:?}");
        assert_eq!(typed.digits, "654321");
        assert_eq!(typed.call.to.reveal(), "+12015550100");
    }
}

#[test]
fn a_malformed_digits_report_is_a_clear_client_error() {
    let full = [
        ("CallUUID", "c-3"),
        ("From", "14155550100"),
        ("To", "12015550100"),
        ("Digits", "12"),
    ];
    let without = |name: &str| {
        let mut p = form(&full);
        p.retain(|(k, _)| k != name);
        p
    };
    let with = |name: &str, value: &str| {
        let mut p = form(&full);
        for (k, v) in &mut p {
            if k == name {
                *v = value.to_string();
            }
        }
        p
    };
    let long = "1".repeat(100);
    for (what, params) in [
        ("no CallUUID", without("CallUUID")),
        ("no To", without("To")),
        ("To no number", with("To", "sip:proxy@example.test")),
        ("letters", with("Digits", "12ab")),
        ("markup", with("Digits", "<1>")),
        ("too long", with("Digits", &long)),
        ("nothing", Vec::new()),
    ] {
        let err = digits::read(&params).expect_err(what);
        let resp = err.into_response();
        assert!(resp.status().is_client_error(), "{what}: {}", resp.status());
        assert_eq!(
            resp.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{what}"
        );
    }
    // The typed value is never echoed back.
    let body = format!("{:?}", digits::read(&with("Digits", "98765x")).unwrap_err());
    assert!(!body.contains("98765"), "{body}");
}
