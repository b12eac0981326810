//! Relay through Plivo: signed webhooks in, Plivo XML out. A test client signs every request
//! exactly as Plivo does (`X-Plivo-Signature-V3` over the public URL and the sorted parameters,
//! checked here against Plivo's published vectors), and every answer is read with an XML
//! parser, so a relayed text is compared as the other end would read it.

use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::Rng;
use reqwest::Method;
use serde_json::json;
use sha2::Sha256;

use crate::harness::*;

pub(crate) const PUBLIC_URL: &str = "https://hush.example.test";
pub(crate) const TOKEN: &str = "MjU3ZDUxYmQ0ZmQ5ZjE2ZjI0ZWE4YjM0YmYwNDM5";
const MESSAGE: &str = "Ride over <&> \"bye\" — 'for now'";

// ---------------------------------------------------------------------------------------------
// Signing as Plivo signs
// ---------------------------------------------------------------------------------------------

/// Decodes `a=1&b=x+y` as the SDKs' query parsers do.
fn decode_query(query: &str) -> Vec<(String, String)> {
    fn unescape(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("percent escape"));
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).expect("utf-8 query")
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

/// `X-Plivo-Signature-V3` as plivo-python's `signature_v3.py` computes it: the URL without
/// its query; `?` when there is a query or a parameter; for GET every `k=v` sorted and joined
/// by `&`; for POST the query's sorted `k=v`, `.` if parameters follow, then every `kv`
/// sorted; then `.` and the nonce; HMAC-SHA256 under the auth token, base64.
fn plivo_signature(
    token: &str,
    method: &str,
    url: &str,
    params: &[(&str, &str)],
    nonce: &str,
) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let query = decode_query(query);
    let mut text = base.to_string();
    let sorted_pairs = |pairs: Vec<(String, String)>, eq: &str, sep: &str| {
        let mut pairs = pairs;
        pairs.sort();
        pairs
            .iter()
            .map(|(k, v)| format!("{k}{eq}{v}"))
            .collect::<Vec<_>>()
            .join(sep)
    };
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if method == "GET" {
        let mut all = query;
        for (k, v) in params {
            if !all.iter().any(|(q, _)| *q == k) {
                all.push((k, v));
            }
        }
        let q = sorted_pairs(all, "=", "&");
        if !q.is_empty() {
            text = format!("{text}?{q}");
        }
    } else {
        let q = sorted_pairs(query, "=", "&");
        let p = sorted_pairs(params, "", "");
        if !q.is_empty() || !p.is_empty() {
            text.push('?');
            text.push_str(&q);
            if !q.is_empty() && !p.is_empty() {
                text.push('.');
            }
            text.push_str(&p);
        }
    }
    text.push('.');
    text.push_str(nonce);
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(text.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[test]
fn the_test_client_signs_plivos_published_vectors() {
    // plivo-go utils_test.go TestValidateSignatureV3Pass1..4 (plivo-python signs the same).
    let params = [
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
    ];
    let token = "Y2Q2ZDgxZmY5YWRiOTI5YmQ1Njg0MTAxZWIyOTc4";
    let nonce = "31627761595286130198";
    let with_query =
        "https://plivobin.non-prod.plivops.com/api/v1/validate_signature03.xml/?a=b&c=d";
    let plain = "https://plivobin.non-prod.plivops.com/api/v1/validate_signature03.xml";
    for (method, url, expected) in [
        (
            "POST",
            with_query,
            "k7Pusd4OxCIjR5IfA9iedDNu/h/gbdYqdzG/MiYtd1c=",
        ),
        (
            "GET",
            with_query,
            "UBq8jAtd32wR8EK9VgxbBn4n5rpI/l1H9iN4WfSEHFQ=",
        ),
        (
            "POST",
            plain,
            "iAjE5QqI37mbkYe4w3jTMudqEzbDufdqi7sYwTu64e0=",
        ),
        ("GET", plain, "i/MQsaQSAd6fiKhOh2qeeeLHZ9faldADSb3/7+Akfbc="),
    ] {
        assert_eq!(
            plivo_signature(token, method, url, &params, nonce),
            expected,
            "{method} {url}"
        );
    }
}

/// How a request is signed.
#[derive(Clone, Debug)]
pub(crate) enum Sign {
    /// As Plivo signs it, with the configured token.
    Plivo,
    /// With another auth token.
    Token(&'static str),
    /// Over another URL than the one hush is reachable at.
    Url(String),
    /// Over other parameters than the ones sent.
    Params(Vec<(String, String)>),
    /// With a signature for another nonce.
    OtherNonce,
    /// This header value, with a good nonce.
    Header(String),
    NoSignature,
    NoNonce,
}

static IDS: AtomicUsize = AtomicUsize::new(0);

/// A fresh Plivo-style UUID.
pub(crate) fn uuid() -> String {
    let n = IDS.fetch_add(1, Ordering::SeqCst);
    let r: u64 = rand::rng().random();
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        r >> 32,
        r & 0xffff,
        n & 0xfff,
        (r >> 16) & 0xfff,
        n
    )
}

fn nonce() -> String {
    let n: u64 = rand::rng().random();
    format!("{:020}", n)
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Plivo's form of a number: digits with the country code, no `+`.
pub(crate) fn digits(e164: &str) -> String {
    e164.trim_start_matches('+').to_string()
}

/// A client that calls hush's Plivo routes as Plivo would.
pub(crate) struct Plivo<'a> {
    app: &'a TestApp,
}

impl<'a> Plivo<'a> {
    pub(crate) fn new(app: &'a TestApp) -> Self {
        Plivo { app }
    }

    /// POSTs the form to `path_and_query`, signed as `how` says.
    pub(crate) async fn send(
        &self,
        path_and_query: &str,
        params: &[(&str, &str)],
        how: Sign,
    ) -> Resp {
        let url = format!("{PUBLIC_URL}{path_and_query}");
        let nonce = nonce();
        let (header, nonce_header) = match &how {
            Sign::Plivo => (
                Some(plivo_signature(TOKEN, "POST", &url, params, &nonce)),
                Some(nonce),
            ),
            Sign::Token(token) => (
                Some(plivo_signature(token, "POST", &url, params, &nonce)),
                Some(nonce),
            ),
            Sign::Url(other) => (
                Some(plivo_signature(TOKEN, "POST", other, params, &nonce)),
                Some(nonce),
            ),
            Sign::Params(other) => {
                let other: Vec<(&str, &str)> = other
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                (
                    Some(plivo_signature(TOKEN, "POST", &url, &other, &nonce)),
                    Some(nonce),
                )
            }
            Sign::OtherNonce => (
                Some(plivo_signature(TOKEN, "POST", &url, params, "12345")),
                Some(nonce),
            ),
            Sign::Header(value) => (Some(value.clone()), Some(nonce)),
            Sign::NoSignature => (None, Some(nonce)),
            Sign::NoNonce => (
                Some(plivo_signature(TOKEN, "POST", &url, params, &nonce)),
                None,
            ),
        };
        let mut req = self
            .app
            .client
            .request(Method::POST, self.app.url(path_and_query))
            .header("user-agent", "PlivoHTTP/1.0")
            .form(params);
        if let Some(sig) = header {
            req = req.header("X-Plivo-Signature-V3", sig);
        }
        if let Some(nonce) = nonce_header {
            req = req.header("X-Plivo-Signature-V3-Nonce", nonce);
        }
        self.app.send(req).await
    }

    pub(crate) async fn post(&self, path_and_query: &str, params: &[(&str, &str)]) -> Resp {
        self.send(path_and_query, params, Sign::Plivo).await
    }

    /// The answer-URL request of an inbound call from `from` to `to` (E.164, or anything
    /// Plivo might put in `From` for a withheld caller).
    pub(crate) async fn call(&self, call_uuid: &str, from: &str, to: &str) -> Resp {
        self.post(
            "/hooks/plivo/voice",
            &[
                ("CallUUID", call_uuid),
                ("From", &digits(from)),
                ("To", &digits(to)),
                ("Direction", "inbound"),
                ("CallStatus", "ringing"),
                ("CallerName", "+14155550000"),
                ("Event", "StartApp"),
            ],
        )
        .await
    }

    /// The message-URL request of an inbound text.
    async fn text(&self, message_uuid: &str, from: &str, to: &str, text: &str) -> Resp {
        self.post(
            "/hooks/plivo/sms",
            &[
                ("MessageUUID", message_uuid),
                ("From", &digits(from)),
                ("To", &digits(to)),
                ("Text", text),
                ("Type", "sms"),
                ("Units", "1"),
                ("TotalRate", "0.00000"),
                ("TotalAmount", "0.00000"),
                ("MessageIntent", ""),
                ("PowerpackUUID", ""),
            ],
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Reading Plivo XML as an XML parser reads it
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Node {
    El(El),
    Text(String),
}

#[derive(Clone, Debug, PartialEq)]
struct El {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
}

impl El {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        self.children
            .iter()
            .map(|c| match c {
                Node::Text(t) => t.clone(),
                Node::El(_) => String::new(),
            })
            .collect()
    }

    fn elements(&self) -> Vec<&El> {
        self.children
            .iter()
            .filter_map(|c| match c {
                Node::El(e) => Some(e),
                Node::Text(_) => None,
            })
            .collect()
    }

    fn names(&self) -> Vec<&str> {
        self.elements().iter().map(|e| e.name.as_str()).collect()
    }

    #[track_caller]
    fn only(&self, name: &str) -> &El {
        let els = self.elements();
        assert!(
            els.len() == 1 && els[0].name == name,
            "expected one <{name}> in <{}>, found {:?}",
            self.name,
            self.names()
        );
        els[0]
    }
}

/// A strict, small XML 1.0 reader: elements, attributes, text, the five named entities and
/// character references, with the line-end normalisation every parser applies first.
fn parse_xml(doc: &str) -> El {
    struct P<'a> {
        s: &'a str,
        i: usize,
    }
    impl P<'_> {
        fn rest(&self) -> &str {
            &self.s[self.i..]
        }
        fn skip_ws(&mut self) {
            while self.rest().starts_with([' ', '\t', '\n']) {
                self.i += 1;
            }
        }
        fn expect(&mut self, tok: &str) {
            assert!(
                self.rest().starts_with(tok),
                "expected {tok:?} at {}: {:?}",
                self.i,
                self.s
            );
            self.i += tok.len();
        }
        fn name(&mut self) -> String {
            let len = self
                .rest()
                .find(|c: char| c.is_whitespace() || "/>=".contains(c))
                .expect("unterminated name");
            assert!(len > 0, "empty name at {}: {:?}", self.i, self.s);
            let n = self.rest()[..len].to_string();
            self.i += len;
            n
        }
        fn element(&mut self) -> El {
            self.expect("<");
            let name = self.name();
            let mut attrs = Vec::new();
            loop {
                self.skip_ws();
                if self.rest().starts_with("/>") {
                    self.i += 2;
                    return El {
                        name,
                        attrs,
                        children: Vec::new(),
                    };
                }
                if self.rest().starts_with('>') {
                    self.i += 1;
                    break;
                }
                let key = self.name();
                self.skip_ws();
                self.expect("=");
                self.skip_ws();
                let quote = self.rest().chars().next().expect("attribute value");
                assert!(quote == '"' || quote == '\'', "unquoted attribute {key}");
                self.i += 1;
                let end = self.rest().find(quote).expect("unterminated attribute");
                let raw = &self.rest()[..end];
                assert!(!raw.contains('<'), "raw < in attribute {key}: {raw:?}");
                let value = decode_entities(raw);
                self.i += end + 1;
                assert!(
                    !attrs.iter().any(|(k, _)| *k == key),
                    "duplicate attribute {key}"
                );
                attrs.push((key, value));
            }
            let mut children = Vec::new();
            loop {
                if self.rest().starts_with("</") {
                    self.i += 2;
                    let close = self.name();
                    assert_eq!(close, name, "mismatched closing tag");
                    self.skip_ws();
                    self.expect(">");
                    return El {
                        name,
                        attrs,
                        children,
                    };
                }
                if self.rest().starts_with('<') {
                    children.push(Node::El(self.element()));
                    continue;
                }
                let end = self.rest().find('<').expect("unclosed element");
                let raw = &self.rest()[..end];
                assert!(!raw.contains("]]>"), "]]> in text");
                children.push(Node::Text(decode_entities(raw)));
                self.i += end;
            }
        }
    }
    let normalised = doc.replace("\r\n", "\n").replace('\r', "\n");
    let mut p = P {
        s: &normalised,
        i: 0,
    };
    if p.rest().starts_with("<?xml") {
        let end = p.rest().find("?>").expect("unterminated declaration");
        p.i += end + 2;
    }
    p.skip_ws();
    let root = p.element();
    p.skip_ws();
    assert_eq!(p.i, normalised.len(), "content after the root: {doc:?}");
    root
}

fn decode_entities(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let end = rest[amp..]
            .find(';')
            .unwrap_or_else(|| panic!("bare & in {raw:?}"));
        let entity = &rest[amp + 1..amp + end];
        match entity {
            "lt" => out.push('<'),
            "gt" => out.push('>'),
            "amp" => out.push('&'),
            "quot" => out.push('"'),
            "apos" => out.push('\''),
            e if e.starts_with("#x") => out.push(
                char::from_u32(u32::from_str_radix(&e[2..], 16).expect("hex reference"))
                    .expect("character"),
            ),
            e if e.starts_with('#') => out.push(
                char::from_u32(e[1..].parse().expect("decimal reference")).expect("character"),
            ),
            e => panic!("unknown entity &{e}; in {raw:?}"),
        }
        rest = &rest[amp + end + 1..];
    }
    out.push_str(rest);
    out
}

/// A 200 answer in Plivo XML, parsed; its root is `<Response>`.
#[track_caller]
fn xml_answer(r: &Resp) -> El {
    assert_eq!(
        r.status, 200,
        "expected Plivo XML, got {}: {}",
        r.status, r.text
    );
    assert!(
        r.content_type().starts_with("text/xml"),
        "content type {:?}: {}",
        r.content_type(),
        r.text
    );
    let root = parse_xml(&r.text);
    assert_eq!(root.name, "Response", "{}", r.text);
    root
}

/// The `(callerId, number dialled)` of a `<Dial>` answer.
#[track_caller]
pub(crate) fn dialled(r: &Resp) -> (String, String) {
    let root = xml_answer(r);
    let dial = root.only("Dial");
    let number = dial.only("Number");
    (
        dial.attr("callerId").expect("callerId").to_string(),
        number.text(),
    )
}

/// The `<Message>` of an SMS answer.
#[track_caller]
fn message(r: &Resp) -> El {
    let root = xml_answer(r);
    let m = root.only("Message").clone();
    assert_eq!(m.attr("type"), Some("sms"), "{}", r.text);
    m
}

/// A `<Speak>` then `<Hangup/>` answer; returns what is spoken.
#[track_caller]
fn spoken(r: &Resp) -> String {
    let root = xml_answer(r);
    assert_eq!(root.names(), ["Speak", "Hangup"], "{}", r.text);
    root.elements()[0].text()
}

#[track_caller]
fn assert_rejected(r: &Resp) {
    let root = xml_answer(r);
    let hangup = root.only("Hangup");
    assert_eq!(hangup.attr("reason"), Some("rejected"), "{}", r.text);
}

#[track_caller]
fn assert_empty(r: &Resp) {
    let root = xml_answer(r);
    assert!(root.children.is_empty(), "expected <Response/>: {}", r.text);
}

// ---------------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------------

async fn plivo_app() -> TestApp {
    TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC_URL.into());
        c.providers.plivo_auth_token = Some(hush::config::Secret::new(TOKEN.into()));
    })
    .await
}

/// An app with one pool of one number and a session between participants 0 and 1.
/// Returns `(app, session id, proxy, a, b)`.
async fn with_session() -> (TestApp, String, String, String, String) {
    let app = plivo_app().await;
    app.pool(
        "rides",
        json!({ "out_of_session_message": MESSAGE, "cooloff_secs": 600 }),
        &proxies(1),
    )
    .await;
    let (a, b) = (participant(0), participant(1));
    let s = app.open_session("rides", &a, &b, None).await;
    let id = s["id"].as_str().unwrap().to_string();
    let p = s["proxy_number"].as_str().unwrap().to_string();
    (app, id, p, a, b)
}

// ---------------------------------------------------------------------------------------------
// Calls and texts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_call_reaches_the_other_party_with_the_proxy_as_caller_id() {
    let (app, id, p, a, b) = with_session().await;
    let plivo = Plivo::new(&app);

    let (a_call, b_call) = (uuid(), uuid());
    let r = plivo.call(&a_call, &a, &p).await;
    assert_eq!(dialled(&r), (digits(&p), digits(&b)), "{}", r.text);
    assert!(!r.text.contains('+'), "Plivo wants digits only: {}", r.text);
    assert!(
        !r.text.contains(&digits(&a)),
        "the caller's own number is in the answer: {}",
        r.text
    );

    // B calls back through the same number and reaches A.
    let r = plivo.call(&b_call, &b, &p).await;
    assert_eq!(dialled(&r), (digits(&p), digits(&a)), "{}", r.text);

    let list = app.interactions(&id).await;
    assert_eq!(list.len(), 2, "{list:?}");
    for (uuid, side) in [(&a_call, 0), (&b_call, 1)] {
        // Two calls in one millisecond may list in either order.
        let it = list
            .iter()
            .find(|i| i["provider_ref"] == uuid.as_str())
            .unwrap_or_else(|| panic!("no interaction for {uuid}: {list:?}"));
        assert_eq!(it["kind"], "voice", "{it}");
        assert_eq!(it["from_participant"], side, "{it}");
        assert_eq!(it["provider"], "plivo", "{it}");
        assert_eq!(it["provider_ref"], uuid.as_str(), "{it}");
        assert_eq!(it["status"], "started", "{it}");
    }
    let text = serde_json::to_string(&list).unwrap();
    for n in [&a, &b] {
        assert!(
            !text.contains(&digits(n)[1..]),
            "an interaction holds a number: {text}"
        );
    }
}

#[tokio::test]
async fn a_text_relays_with_its_body_byte_identical() {
    let (app, id, p, a, b) = with_session().await;
    let plivo = Plivo::new(&app);

    let long: String = "<&>\"'😀é x+%20;".chars().cycle().take(1600).collect();
    assert_eq!(long.chars().count(), 1600);
    let bodies = [
        "<&\"'>".to_string(),
        "&amp; is not an ampersand, &lt;b&gt; is not a tag".to_string(),
        "emoji 😀👍🏽🇫🇷 and ünïcödé, 漢字".to_string(),
        "a+b%20c=d&e=f?g#h".to_string(),
        "  spaced\tout\nover lines\r\nand a lone\rreturn  ".to_string(),
        "]]> <![CDATA[ x ]]>".to_string(),
        long,
    ];
    for (i, body) in bodies.iter().enumerate() {
        // Alternate directions: A → B, then B → A.
        let (from, to) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let r = plivo.text(&uuid(), from, &p, body).await;
        let m = message(&r);
        assert_eq!(m.attr("src"), Some(digits(&p).as_str()), "{}", r.text);
        assert_eq!(m.attr("dst"), Some(digits(to).as_str()), "{}", r.text);
        assert_eq!(&m.text(), body, "body #{i} changed on its way: {}", r.text);
    }

    let list = app.interactions(&id).await;
    assert_eq!(list.len(), bodies.len());
    assert!(list.iter().all(|i| i["kind"] == "sms"), "{list:?}");
    // Interactions hold no bodies.
    let text = serde_json::to_string(&list).unwrap();
    assert!(
        !text.contains("spaced") && !text.contains("emoji"),
        "{text}"
    );
}

#[tokio::test]
async fn out_of_session_callers_hear_the_pools_message() {
    let (app, id, p, a, _b) = with_session().await;
    let plivo = Plivo::new(&app);
    let stranger = participant(7);

    let r = plivo.call(&uuid(), &stranger, &p).await;
    assert_eq!(spoken(&r), MESSAGE, "{}", r.text);

    // A text gets the message as a reply from the proxy number, to the sender.
    let r = plivo.text(&uuid(), &stranger, &p, "hello?").await;
    let m = message(&r);
    assert_eq!(m.attr("src"), Some(digits(&p).as_str()));
    assert_eq!(m.attr("dst"), Some(digits(&stranger).as_str()));
    assert_eq!(m.text(), MESSAGE, "{}", r.text);

    // A withheld caller ID is nobody's route.
    for withheld in ["", "anonymous", "sip:someone@example.test"] {
        let r = plivo
            .post(
                "/hooks/plivo/voice",
                &[
                    ("CallUUID", &uuid()),
                    ("From", withheld),
                    ("To", &digits(&p)),
                ],
            )
            .await;
        assert_eq!(spoken(&r), MESSAGE, "From {withheld:?}: {}", r.text);
        // There is no number to reply to.
        let r = plivo
            .post(
                "/hooks/plivo/sms",
                &[
                    ("MessageUUID", &uuid()),
                    ("From", withheld),
                    ("To", &digits(&p)),
                    ("Text", "hi"),
                ],
            )
            .await;
        assert_empty(&r);
    }
    // So is a call without any `From`.
    let r = plivo
        .post(
            "/hooks/plivo/voice",
            &[("CallUUID", &uuid()), ("To", &digits(&p))],
        )
        .await;
    assert_eq!(spoken(&r), MESSAGE, "{}", r.text);
    assert!(app.interactions(&id).await.is_empty());

    // Once the session is closed, its own participants hear the message too (cool-off).
    app.close_session(&id).await.expect(200);
    let r = plivo.call(&uuid(), &a, &p).await;
    assert_eq!(spoken(&r), MESSAGE, "{}", r.text);
    let r = plivo.text(&uuid(), &a, &p, "still there?").await;
    assert_eq!(message(&r).attr("dst"), Some(digits(&a).as_str()));
    assert!(app.interactions(&id).await.is_empty());
}

#[tokio::test]
async fn a_number_of_no_pool_is_rejected_or_ignored() {
    let (app, id, _p, a, _b) = with_session().await;
    let plivo = Plivo::new(&app);
    let nobody = proxy202(9);

    assert_rejected(&plivo.call(&uuid(), &a, &nobody).await);
    assert_empty(&plivo.text(&uuid(), &a, &nobody, "hi").await);

    // A `To` that is no phone number at all is no pool's either.
    let r = plivo
        .post(
            "/hooks/plivo/voice",
            &[
                ("CallUUID", &uuid()),
                ("From", &digits(&a)),
                ("To", "sip:hush@example.test"),
            ],
        )
        .await;
    assert_rejected(&r);
    assert!(app.interactions(&id).await.is_empty());
}

#[tokio::test]
async fn a_retried_webhook_relays_once() {
    let (app, id, p, a, b) = with_session().await;
    let plivo = Plivo::new(&app);

    let call = uuid();
    let first = plivo.call(&call, &a, &p).await;
    let again = plivo.call(&call, &a, &p).await;
    assert_eq!(dialled(&first), (digits(&p), digits(&b)));
    assert_eq!(first.text, again.text);

    let text = uuid();
    let first = plivo.text(&text, &b, &p, "on my way <3").await;
    let again = plivo.text(&text, &b, &p, "on my way <3").await;
    assert_eq!(message(&first).text(), "on my way <3");
    assert_eq!(first.text, again.text);

    let list = app.interactions(&id).await;
    assert_eq!(list.len(), 2, "a retry was recorded twice: {list:?}");
    let refs: Vec<&str> = list
        .iter()
        .map(|i| i["provider_ref"].as_str().unwrap())
        .collect();
    assert!(refs.contains(&call.as_str()) && refs.contains(&text.as_str()));
}

// ---------------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_missing_or_bad_signature_is_refused_and_records_nothing() {
    let (app, id, p, a, _b) = with_session().await;
    let plivo = Plivo::new(&app);
    let call = uuid();
    let voice = [
        ("CallUUID", call.as_str()),
        ("From", &digits(&a)),
        ("To", &digits(&p)),
    ];
    let msg = uuid();
    let sms = [
        ("MessageUUID", msg.as_str()),
        ("From", &digits(&a)),
        ("To", &digits(&p)),
        ("Text", "hello"),
    ];
    let cases = [
        Sign::NoSignature,
        Sign::NoNonce,
        Sign::Header(String::new()),
        Sign::Header("not-a-signature".into()),
        Sign::Header("k7Pusd4OxCIjR5IfA9iedDNu/h/gbdYqdzG/MiYtd1c=".into()),
        Sign::Token("a-wrong-auth-token"),
        Sign::OtherNonce,
        // The URL hush is configured with is what Plivo calls; another one is not it.
        Sign::Url(format!("http://hush.example.test{}", "/hooks/plivo/voice")),
        Sign::Url(app.url("/hooks/plivo/voice")),
        Sign::Params(owned(&[
            ("CallUUID", "another"),
            ("From", "1"),
            ("To", "2"),
        ])),
    ];
    for how in cases {
        let r = plivo.send("/hooks/plivo/voice", &voice, how.clone()).await;
        r.expect_problem(403, "invalid_signature");
        let r = plivo.send("/hooks/plivo/sms", &sms, how.clone()).await;
        r.expect_problem(403, "invalid_signature");
        let r = plivo
            .send(
                "/hooks/plivo/status",
                &[
                    ("CallUUID", &call),
                    ("CallStatus", "completed"),
                    ("To", &digits(&p)),
                ],
                how.clone(),
            )
            .await;
        r.expect_problem(403, "invalid_signature");
    }
    // A body changed after signing.
    let mut tampered = sms;
    tampered[3] = ("Text", "hellO");
    let r = plivo
        .send("/hooks/plivo/sms", &tampered, Sign::Params(owned(&sms)))
        .await;
    r.expect_problem(403, "invalid_signature");

    assert!(
        app.interactions(&id).await.is_empty(),
        "a refused webhook was recorded"
    );
    // The same requests, signed, go through (so the refusals above were the signature's).
    assert_eq!(
        dialled(&plivo.post("/hooks/plivo/voice", &voice).await).0,
        digits(&p)
    );
    assert_eq!(
        message(&plivo.post("/hooks/plivo/sms", &sms).await).text(),
        "hello"
    );
    assert_eq!(app.interactions(&id).await.len(), 2);
}

#[tokio::test]
async fn any_of_several_signatures_may_match() {
    let (app, id, p, a, b) = with_session().await;
    let path = "/hooks/plivo/voice";
    let call = uuid();
    let params = [
        ("CallUUID", call.as_str()),
        ("From", &digits(&a)),
        ("To", &digits(&p)),
    ];
    // While Plivo rotates an auth token it signs with the old and the new one. The nonce is
    // the header's, so both signatures are computed over it: use a fixed one.
    let nonce = "08675309112358132134";
    let url = format!("{PUBLIC_URL}{path}");
    let old = plivo_signature("the-old-auth-token", "POST", &url, &params, nonce);
    let new = plivo_signature(TOKEN, "POST", &url, &params, nonce);
    for header in [format!("{old},{new}"), format!("{new},{old}")] {
        let req = app
            .client
            .post(app.url(path))
            .header("X-Plivo-Signature-V3", header)
            .header("X-Plivo-Signature-V3-Nonce", nonce)
            .form(&params);
        let r = app.send(req).await;
        assert_eq!(dialled(&r), (digits(&p), digits(&b)));
    }
    let req = app
        .client
        .post(app.url(path))
        .header("X-Plivo-Signature-V3", format!("{old},{old}"))
        .header("X-Plivo-Signature-V3-Nonce", nonce)
        .form(&params);
    app.send(req).await.expect_problem(403, "invalid_signature");
    assert_eq!(app.interactions(&id).await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Status callbacks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn status_callbacks_update_the_interaction() {
    let (app, id, p, a, b) = with_session().await;
    let plivo = Plivo::new(&app);

    // A call, then the hangup callback Plivo sends to the application's Hangup URL.
    let call = uuid();
    dialled(&plivo.call(&call, &a, &p).await);
    let (caller, proxy_digits) = (digits(&a), digits(&p));
    let hangup = |status: &'static str| {
        [
            ("CallUUID", call.as_str()),
            ("CallStatus", status),
            ("Direction", "inbound"),
            ("Duration", "42"),
            ("BillDuration", "60"),
            ("HangupCause", "NORMAL_CLEARING"),
            ("From", caller.as_str()),
            ("To", proxy_digits.as_str()),
        ]
    };
    let r = plivo
        .post("/hooks/plivo/status", &hangup("completed"))
        .await;
    assert_eq!((r.status, r.text.as_str()), (200, ""), "{}", r.text);

    let list = app.interactions(&id).await;
    let it = &list[0];
    assert_eq!(it["status"], "completed", "{it}");
    assert_eq!(it["duration_secs"], 42, "{it}");
    assert!(it["ended_at"].is_string(), "{it}");

    // A late, out-of-order callback does not reopen a finished call.
    let r = plivo
        .post("/hooks/plivo/status", &hangup("in-progress"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(app.interactions(&id).await[0]["status"], "completed");

    // A text: Plivo reports on the relayed text at the callback URL the answer names, with
    // the relayed text's own MessageUUID and the proxy number as `From`.
    let inbound = uuid();
    let r = plivo.text(&inbound, &b, &p, "five minutes").await;
    let m = message(&r);
    assert_eq!(m.attr("callbackMethod"), Some("POST"), "{}", r.text);
    let callback = m.attr("callbackUrl").expect("callbackUrl").to_string();
    let path = callback
        .strip_prefix(PUBLIC_URL)
        .unwrap_or_else(|| panic!("callback {callback} is not under {PUBLIC_URL}"))
        .to_string();
    assert!(path.starts_with("/hooks/plivo/status"), "{path}");

    let outbound = uuid();
    for (status, final_) in [("queued", false), ("sent", false), ("delivered", true)] {
        let r = plivo
            .post(
                &path,
                &[
                    ("MessageUUID", &outbound),
                    ("Status", status),
                    ("From", &digits(&p)),
                    ("To", &digits(&a)),
                    ("Type", "sms"),
                    ("Units", "1"),
                    ("ParentMessageUUID", &outbound),
                    ("ErrorCode", ""),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let list = app.interactions(&id).await;
        let it = list
            .iter()
            .find(|i| i["provider_ref"] == inbound.as_str())
            .expect("the text's interaction");
        assert_eq!(it["status"], status, "{it}");
        assert_eq!(it["ended_at"].is_string(), final_, "{it}");
    }

    // Callbacks about calls and texts hush never relayed are answered and change nothing.
    let r = plivo
        .post(
            "/hooks/plivo/status",
            &[
                ("CallUUID", &uuid()),
                ("CallStatus", "completed"),
                ("From", &digits(&participant(9))),
                ("To", &digits(&p)),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = plivo
        .post(
            "/hooks/plivo/status",
            &[
                ("MessageUUID", &uuid()),
                ("Status", "delivered"),
                ("From", &digits(&proxy202(3))),
                ("To", &digits(&a)),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(app.interactions(&id).await.len(), 2);

    // A callback that names nothing is malformed.
    let r = plivo
        .post("/hooks/plivo/status", &[("CallStatus", "completed")])
        .await;
    r.expect_problem(400, "invalid_request");
}

#[tokio::test]
async fn a_dial_status_ends_a_call_that_reached_nobody() {
    let (app, id, p, a, _b) = with_session().await;
    let plivo = Plivo::new(&app);
    let call = uuid();
    dialled(&plivo.call(&call, &a, &p).await);
    let r = plivo
        .post(
            "/hooks/plivo/status",
            &[
                ("CallUUID", &call),
                ("CallStatus", "in-progress"),
                ("DialStatus", "no-answer"),
                ("DialALegUUID", &call),
                ("DialBLegUUID", ""),
                ("DialHangupCause", "NO_ANSWER"),
                ("From", &digits(&a)),
                ("To", &digits(&p)),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let it = &app.interactions(&id).await[0];
    assert_eq!(it["status"], "no-answer", "{it}");
    assert!(it["ended_at"].is_string(), "{it}");
}

// ---------------------------------------------------------------------------------------------
// Malformed requests and configuration
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_webhook_missing_its_parameters_is_a_bad_request() {
    let (app, id, p, a, _b) = with_session().await;
    let plivo = Plivo::new(&app);
    let (from, to) = (digits(&a), digits(&p));
    let r = plivo
        .post("/hooks/plivo/voice", &[("From", &from), ("To", &to)])
        .await;
    r.expect_problem(400, "invalid_request");
    let r = plivo
        .post(
            "/hooks/plivo/voice",
            &[("CallUUID", &uuid()), ("From", &from)],
        )
        .await;
    r.expect_problem(400, "invalid_request");
    let r = plivo
        .post(
            "/hooks/plivo/sms",
            &[("MessageUUID", &uuid()), ("From", &from), ("To", &to)],
        )
        .await;
    r.expect_problem(400, "invalid_request");
    let r = plivo
        .post(
            "/hooks/plivo/sms",
            &[("From", &from), ("To", &to), ("Text", "hi")],
        )
        .await;
    r.expect_problem(400, "invalid_request");
    assert!(app.interactions(&id).await.is_empty());
}

#[tokio::test]
async fn plivo_routes_are_absent_until_plivo_is_configured() {
    let app = TestApp::start_with(|c| c.public_url = Some(PUBLIC_URL.into())).await;
    app.pool("rides", json!({}), &proxies(1)).await;
    let plivo = Plivo::new(&app);
    for path in [
        "/hooks/plivo/voice",
        "/hooks/plivo/sms",
        "/hooks/plivo/status",
    ] {
        let r = plivo
            .post(
                path,
                &[
                    ("CallUUID", &uuid()),
                    ("From", &digits(&participant(0))),
                    ("To", &digits(&proxy(0))),
                ],
            )
            .await;
        r.expect_problem(404, "not_found");
    }
}

#[tokio::test]
async fn a_retried_call_hears_the_block_message_it_heard_first() {
    let app = TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC_URL.into());
        c.providers.plivo_auth_token = Some(hush::config::Secret::new(TOKEN.into()));
        c.callback_allow_private = true;
    })
    .await;
    let p = crate::intercept::blocking_pool(&app).await;
    let plivo = Plivo::new(&app);
    let call = uuid();
    crate::intercept::retries_stay_blocked(
        &app,
        &p,
        || plivo.call(&call, &p.a, &p.proxy),
        |r| {
            r.status == 200
                && !r.text.contains("<Dial")
                && r.text
                    .contains(&hush::relay::xml_escape(crate::intercept::BLOCKED))
        },
    )
    .await;
}
