//! Relay through twilio: signed webhooks in, the provider's answer document out.
//!
//! A small Twilio stands in for the real one: it signs each form exactly as Twilio does
//! (checked against Twilio's published vectors below) for the public URL hush is configured
//! with, posts it to the local server, and reads the TwiML back with a tiny XML reader, so
//! what is asserted is what Twilio's parser would see.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use hush::config::Secret;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::harness::*;

pub const PUBLIC: &str = "https://hush.example.test";
pub const TOKEN: &str = "twilio-test-auth-token";
const SHARED_KEY_ID: &str = "wk_hush";
const SHARED_SECRET: &str = "twilio-test-shared-key";
pub(crate) const ENDED: &str = "This ride has ended. <Call> support & \"ask\" for 'Sam'.";

// ---------------------------------------------------------------------------------------------
// A signing Twilio
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Algo {
    Sha1,
    Sha256,
}

/// base64 HMAC of the URL followed by every parameter's name and value, sorted by name then
/// value, exact repeats once (as Twilio's helper libraries compute it).
fn signature(algo: Algo, key: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    match algo {
        Algo::Sha1 => {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).unwrap();
            mac.update(data.as_bytes());
            b64.encode(mac.finalize().into_bytes())
        }
        Algo::Sha256 => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
            mac.update(data.as_bytes());
            b64.encode(mac.finalize().into_bytes())
        }
    }
}

/// `application/x-www-form-urlencoded`, every byte outside the unreserved set escaped.
fn form(params: &[(&str, &str)]) -> String {
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
}

/// A fresh Twilio sid (`CA…`, `SM…`).
pub fn sid(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

pub struct Twilio<'a> {
    pub app: &'a TestApp,
}

impl Twilio<'_> {
    /// Posts `params` to `path` (which may carry a query), signed with the auth token over
    /// the public URL.
    pub async fn post(&self, path: &str, params: &[(&str, &str)]) -> Resp {
        let sig = signature(Algo::Sha1, TOKEN, &format!("{PUBLIC}{path}"), params);
        self.send(path, &form(params), &[("x-twilio-signature", &sig)])
            .await
    }

    /// Posts a raw body with exactly these headers.
    async fn send(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = self
            .app
            .client
            .post(self.app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.app.send(req).await
    }

    pub async fn call(&self, from: &str, to: &str, call_sid: &str) -> Resp {
        self.post("/hooks/twilio/voice", &call_params(from, to, call_sid))
            .await
    }

    pub async fn text(&self, from: &str, to: &str, message_sid: &str, body: &str) -> Resp {
        self.post(
            "/hooks/twilio/sms",
            &text_params(from, to, message_sid, body),
        )
        .await
    }
}

/// The form of an inbound call webhook, as Twilio sends it.
fn call_params<'a>(from: &'a str, to: &'a str, call_sid: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call_sid),
        ("CallStatus", "ringing"),
        ("Called", to),
        ("Caller", from),
        ("Direction", "inbound"),
        ("From", from),
        ("To", to),
    ]
}

/// The form of an inbound text webhook without media.
fn text_params<'a>(
    from: &'a str,
    to: &'a str,
    message_sid: &'a str,
    body: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("ApiVersion", "2010-04-01"),
        ("Body", body),
        ("From", from),
        ("MessageSid", message_sid),
        ("NumMedia", "0"),
        ("NumSegments", "1"),
        ("SmsMessageSid", message_sid),
        ("SmsSid", message_sid),
        ("SmsStatus", "received"),
        ("To", to),
    ]
}

async fn twilio_app() -> TestApp {
    TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        c.providers.twilio_auth_token = Some(Secret::new(TOKEN.into()));
    })
    .await
}

/// A pool with one proxy number and a session between participants 0 and 1 on it:
/// `(session id, proxy number, A, B)`.
async fn ride(app: &TestApp) -> (String, String, String, String) {
    app.pool(
        "rides",
        json!({ "out_of_session_message": ENDED }),
        &proxies(1),
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

// ---------------------------------------------------------------------------------------------
// Reading TwiML
// ---------------------------------------------------------------------------------------------

/// One XML element: what a parser hands Twilio.
#[derive(Debug, Clone)]
pub(crate) struct El {
    pub(crate) name: String,
    pub(crate) attrs: Vec<(String, String)>,
    pub(crate) children: Vec<El>,
    pub(crate) text: String,
}

impl El {
    pub(crate) fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    pub(crate) fn child(&self, name: &str) -> &El {
        self.children
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("<{}> has no <{name}>: {self:?}", self.name))
    }

    pub(crate) fn names(&self) -> Vec<&str> {
        self.children.iter().map(|c| c.name.as_str()).collect()
    }
}

/// Resolves entity and character references after folding raw line ends, as XML 1.0 does.
fn unescape(raw: &str) -> String {
    let raw = raw.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::new();
    let mut rest = raw.as_str();
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let end = rest[i..].find(';').expect("unterminated reference") + i;
        let name = &rest[i + 1..end];
        let c = match name {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            n if n.starts_with("#x") => char::from_u32(u32::from_str_radix(&n[2..], 16).unwrap())
                .expect("a character reference"),
            n if n.starts_with('#') => {
                char::from_u32(n[1..].parse().unwrap()).expect("a character reference")
            }
            other => panic!("unknown entity &{other};"),
        };
        out.push(c);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[track_caller]
pub(crate) fn twiml(r: &Resp) -> El {
    assert_eq!(
        r.status, 200,
        "expected TwiML, got {}: {}",
        r.status, r.text
    );
    assert!(
        r.content_type().starts_with("text/xml"),
        "TwiML content type is {:?}",
        r.content_type()
    );
    let mut doc = r.text.trim();
    if doc.starts_with("<?xml") {
        doc = doc[doc.find("?>").unwrap() + 2..].trim_start();
    }
    let (root, rest) = element(doc);
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
    assert_eq!(root.name, "Response", "{}", r.text);
    root
}

pub(crate) fn element(s: &str) -> (El, &str) {
    assert!(s.starts_with('<'), "expected an element at {s:?}");
    let name_end = s[1..]
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .expect("an element name")
        + 1;
    let name = s[1..name_end].to_string();
    let mut rest = &s[name_end..];
    let mut attrs = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("/>") {
            let el = El {
                name,
                attrs,
                children: Vec::new(),
                text: String::new(),
            };
            return (el, r);
        }
        if let Some(r) = rest.strip_prefix('>') {
            rest = r;
            break;
        }
        let eq = rest.find('=').expect("an attribute");
        let key = rest[..eq].trim().to_string();
        let value = rest[eq + 1..].trim_start();
        let quote = value.chars().next().expect("a quoted value");
        assert!(quote == '"' || quote == '\'', "unquoted attribute {key}");
        let close = value[1..].find(quote).expect("a closing quote") + 1;
        attrs.push((key, unescape(&value[1..close])));
        rest = &value[close + 1..];
    }
    let (mut children, mut text) = (Vec::new(), String::new());
    loop {
        if let Some(r) = rest.strip_prefix("</") {
            let close = r.find('>').expect("a closing tag");
            assert_eq!(r[..close].trim(), name, "mismatched closing tag");
            let el = El {
                name,
                attrs,
                children,
                text,
            };
            return (el, &r[close + 1..]);
        }
        if rest.starts_with('<') {
            let (child, r) = element(rest);
            children.push(child);
            rest = r;
        } else {
            let next = rest.find('<').expect("content runs to the end");
            text.push_str(&unescape(&rest[..next]));
            rest = &rest[next..];
        }
    }
}

/// Asserts a call was connected to `other` with `proxy` as caller ID.
#[track_caller]
pub(crate) fn assert_dials(r: &Resp, proxy: &str, other: &str) -> El {
    let doc = twiml(r);
    assert_eq!(doc.names(), ["Dial"], "{}", r.text);
    let dial = doc.child("Dial");
    assert_eq!(dial.attr("callerId"), Some(proxy), "{}", r.text);
    assert_eq!(dial.attr("answerOnBridge"), Some("true"), "{}", r.text);
    assert_eq!(dial.names(), ["Number"], "{}", r.text);
    assert_eq!(dial.child("Number").text, other, "{}", r.text);
    dial.child("Number").clone()
}

/// Asserts the pool's message is spoken and the call hung up.
#[track_caller]
pub(crate) fn assert_says_ended(r: &Resp) {
    let doc = twiml(r);
    assert_eq!(doc.names(), ["Say", "Hangup"], "{}", r.text);
    assert_eq!(doc.child("Say").text, ENDED, "{}", r.text);
}

/// Asserts the pool's message comes back as a reply to the sender (no `to`, no `from`).
#[track_caller]
fn assert_replies_ended(r: &Resp) {
    let doc = twiml(r);
    assert_eq!(doc.names(), ["Message"], "{}", r.text);
    let m = doc.child("Message");
    assert_eq!(m.attr("to"), None, "{}", r.text);
    assert_eq!(m.attr("from"), None, "{}", r.text);
    assert_eq!(m.text, ENDED, "{}", r.text);
}

/// The path and query of a callback URL hush put in its TwiML, which must be on `PUBLIC`.
#[track_caller]
fn callback_path(url: Option<&str>) -> String {
    let url = url.expect("a callback URL");
    url.strip_prefix(PUBLIC)
        .unwrap_or_else(|| panic!("callback {url} is not on {PUBLIC}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn the_signing_client_matches_twilios_published_vectors() {
    // twilio-python tests/unit/test_request_validator.py (the same values in twilio-node).
    let params = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+14158675309"),
        ("Digits", "1234"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
    ];
    for (url, expected) in [
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
    ] {
        assert_eq!(
            signature(Algo::Sha1, "12345", url, &params),
            expected,
            "{url}"
        );
    }
    let repeated = [
        ("Sid", "CA123"),
        ("SidAccount", "AC123"),
        ("Digits", "5678"),
        ("Digits", "1234"),
        ("Digits", "1234"),
    ];
    assert_eq!(
        signature(
            Algo::Sha1,
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &repeated
        ),
        "IK+Dwps556ElfBT0I3Rgjkr1wJU="
    );
    // The JSON-body form signs the URL (holding the body's hash) alone.
    let body = "{\"property\": \"value\", \"boolean\": true}";
    let hash: String = sha2::Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let url = format!("https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256={hash}");
    assert_eq!(
        hash,
        "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
    );
    assert_eq!(
        signature(Algo::Sha1, "12345", &url, &[]),
        "a9nBmqA0ju/hNViExpshrM61xv4="
    );
}

#[tokio::test]
async fn calls_connect_both_ways_with_the_proxy_as_caller_id() {
    let app = twilio_app().await;
    let twilio = Twilio { app: &app };
    let (id, proxy, a, b) = ride(&app).await;

    let (first, second) = (sid("CA"), sid("CA"));
    let r = twilio.call(&a, &proxy, &first).await;
    assert_dials(&r, &proxy, &b);
    assert!(
        !r.text.contains(&a),
        "the caller's own number is in the answer: {}",
        r.text
    );

    // B calls the proxy number back and reaches A, still seeing only the proxy number.
    let r = twilio.call(&b, &proxy, &second).await;
    assert_dials(&r, &proxy, &a);
    assert!(!r.text.contains(&b), "{}", r.text);

    let list = app.interactions(&id).await;
    assert_eq!(list.len(), 2, "{list:?}");
    let refs: Vec<(&str, u64, &str, &str, &str)> = list
        .iter()
        .map(|i| {
            (
                i["provider_ref"].as_str().unwrap(),
                i["from_participant"].as_u64().unwrap(),
                i["kind"].as_str().unwrap(),
                i["provider"].as_str().unwrap(),
                i["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        refs.contains(&(first.as_str(), 0, "voice", "twilio", "started")),
        "{list:?}"
    );
    assert!(
        refs.contains(&(second.as_str(), 1, "voice", "twilio", "started")),
        "{list:?}"
    );
}

#[tokio::test]
async fn texts_relay_byte_identical_with_their_media() {
    let app = twilio_app().await;
    let twilio = Twilio { app: &app };
    let (id, proxy, a, b) = ride(&app).await;

    let pattern = "Gate <B7> & \"door\" 'north' 😀 élan 🚗💨 ";
    let long: String = pattern.chars().cycle().take(1600).collect();
    assert_eq!(long.chars().count(), 1600);
    let bodies = [
        "<b>\"Tom & Jerry's\"</b> 5 > 3 && 2 < 4 ]]> <![CDATA[x]]> &amp; &#60;".to_string(),
        "On my way 🚗💨 — 5 min 👍🏽 (ZWJ: 👩‍👩‍👧)".to_string(),
        "line one\r\nline two\n\ttabbed  double  spaced ".to_string(),
        long,
    ];
    for body in &bodies {
        let r = twilio.text(&a, &proxy, &sid("SM"), body).await;
        let doc = twiml(&r);
        assert_eq!(doc.names(), ["Message"], "{}", r.text);
        let m = doc.child("Message");
        assert_eq!(m.attr("to"), Some(b.as_str()), "{}", r.text);
        assert_eq!(m.attr("from"), Some(proxy.as_str()), "{}", r.text);
        assert_eq!(m.names(), ["Body"], "{}", r.text);
        assert_eq!(&m.child("Body").text, body, "the body changed on the way");
    }

    // B answers with pictures: the media URLs (with their own `&`) go through untouched.
    let media = [
        "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1?a=1&b=2",
        "https://media.example.test/p/2.jpg?sig=x%2By&t=<1>",
    ];
    let message_sid = sid("MM");
    let mut params = text_params(&b, &proxy, &message_sid, "photos 📷");
    params.retain(|(k, _)| *k != "NumMedia");
    params.extend([
        ("NumMedia", "2"),
        ("MediaContentType0", "image/jpeg"),
        ("MediaUrl0", media[0]),
        ("MediaContentType1", "image/png"),
        ("MediaUrl1", media[1]),
    ]);
    let r = twilio.post("/hooks/twilio/sms", &params).await;
    let doc = twiml(&r);
    let m = doc.child("Message");
    assert_eq!(m.attr("to"), Some(a.as_str()), "{}", r.text);
    assert_eq!(m.attr("from"), Some(proxy.as_str()), "{}", r.text);
    assert_eq!(m.names(), ["Body", "Media", "Media"], "{}", r.text);
    assert_eq!(m.child("Body").text, "photos 📷");
    let urls: Vec<&str> = m.children[1..].iter().map(|c| c.text.as_str()).collect();
    assert_eq!(urls, media);

    // A picture with no words carries no body.
    let message_sid = sid("MM");
    let mut params = text_params(&a, &proxy, &message_sid, "");
    params.retain(|(k, _)| *k != "NumMedia");
    params.extend([("NumMedia", "1"), ("MediaUrl0", media[0])]);
    let r = twilio.post("/hooks/twilio/sms", &params).await;
    assert_eq!(twiml(&r).child("Message").names(), ["Media"], "{}", r.text);

    let list = app.interactions(&id).await;
    assert_eq!(list.len(), bodies.len() + 2, "{list:?}");
    assert!(list.iter().all(|i| i["kind"] == "sms"), "{list:?}");
    // Interactions hold no bodies.
    let raw = serde_json::to_string(&list).unwrap();
    assert!(!raw.contains("Gate") && !raw.contains("photos"), "{raw}");
}

#[tokio::test]
async fn out_of_session_calls_and_texts_get_the_pools_message() {
    let app = twilio_app().await;
    let twilio = Twilio { app: &app };
    let (id, proxy, a, _) = ride(&app).await;
    let stranger = participant(7);

    assert_says_ended(&twilio.call(&stranger, &proxy, &sid("CA")).await);
    assert_replies_ended(&twilio.text(&stranger, &proxy, &sid("SM"), "hello?").await);

    // A withheld caller ID reaches nobody.
    for withheld in ["anonymous", "Restricted", "", "+266696687"] {
        assert_says_ended(&twilio.call(withheld, &proxy, &sid("CA")).await);
    }
    // An alphanumeric sender cannot be relayed to either.
    assert_replies_ended(&twilio.text("ACME", &proxy, &sid("SM"), "promo").await);

    // Once the session is closed, its own participants hear the message too.
    app.close_session(&id).await.expect(200);
    assert_says_ended(&twilio.call(&a, &proxy, &sid("CA")).await);
    assert_replies_ended(&twilio.text(&a, &proxy, &sid("SM"), "still there?").await);

    assert_eq!(app.interactions(&id).await, Vec::<Value>::new());
}

#[tokio::test]
async fn a_number_of_no_pool_is_rejected_or_ignored() {
    let app = twilio_app().await;
    let twilio = Twilio { app: &app };
    let (_, _, a, _) = ride(&app).await;
    let unknown = proxy(50);

    let r = twilio.call(&a, &unknown, &sid("CA")).await;
    let doc = twiml(&r);
    assert_eq!(doc.names(), ["Reject"], "{}", r.text);

    let r = twilio.text(&a, &unknown, &sid("SM"), "hi").await;
    let doc = twiml(&r);
    assert!(
        doc.children.is_empty() && doc.text.trim().is_empty(),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn malformed_webhooks_are_400_after_the_signature() {
    let app = twilio_app().await;
    let twilio = Twilio { app: &app };
    let (_, proxy, a, _) = ride(&app).await;
    let call_sid = sid("CA");

    let mut no_to = call_params(&a, &proxy, &call_sid);
    no_to.retain(|(k, _)| *k != "To");
    twilio
        .post("/hooks/twilio/voice", &no_to)
        .await
        .expect_problem(400, "invalid_request");

    let mut sip = call_params(&a, &proxy, &call_sid);
    sip.retain(|(k, _)| *k != "To");
    sip.push(("To", "sip:rider@example.test"));
    twilio
        .post("/hooks/twilio/voice", &sip)
        .await
        .expect_problem(400, "invalid_request");

    let mut no_sid = text_params(&a, &proxy, "", "hi");
    no_sid.retain(|(k, _)| *k != "MessageSid");
    twilio
        .post("/hooks/twilio/sms", &no_sid)
        .await
        .expect_problem(400, "invalid_request");
}

#[tokio::test]
async fn bad_signatures_are_refused_and_record_nothing() {
    let app = twilio_app().await;
    let twilio = Twilio { app: &app };
    let (id, proxy, a, b) = ride(&app).await;
    let voice_url = format!("{PUBLIC}/hooks/twilio/voice");

    let mut sids = Vec::new();
    let refused = |path: &'static str, body: String, headers: Vec<(String, String)>| {
        let twilio = &twilio;
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            twilio
                .send(path, &body, &headers)
                .await
                .expect_problem(403, "invalid_signature");
        }
    };

    // No signature at all.
    let s = sid("CA");
    let params = call_params(&a, &proxy, &s);
    refused("/hooks/twilio/voice", form(&params), vec![]).await;
    sids.push(s);

    // Signed with another auth token.
    let s = sid("CA");
    let params = call_params(&a, &proxy, &s);
    let sig = signature(Algo::Sha1, "not-the-token", &voice_url, &params);
    refused(
        "/hooks/twilio/voice",
        form(&params),
        vec![("x-twilio-signature".into(), sig)],
    )
    .await;
    sids.push(s);

    // Signed, then altered on the way: the caller is swapped.
    let s = sid("CA");
    let params = call_params(&a, &proxy, &s);
    let sig = signature(Algo::Sha1, TOKEN, &voice_url, &params);
    let forged = call_params(&b, &proxy, &s);
    refused(
        "/hooks/twilio/voice",
        form(&forged),
        vec![("x-twilio-signature".into(), sig)],
    )
    .await;
    sids.push(s);

    // Signed for another hook (a text's signature replayed on the voice hook).
    let s = sid("CA");
    let params = call_params(&a, &proxy, &s);
    let sig = signature(
        Algo::Sha1,
        TOKEN,
        &format!("{PUBLIC}/hooks/twilio/sms"),
        &params,
    );
    refused(
        "/hooks/twilio/voice",
        form(&params),
        vec![("x-twilio-signature".into(), sig)],
    )
    .await;
    sids.push(s);

    // Signed over the address hush listens on rather than its public URL.
    let s = sid("CA");
    let params = call_params(&a, &proxy, &s);
    let sig = signature(Algo::Sha1, TOKEN, &app.url("/hooks/twilio/voice"), &params);
    refused(
        "/hooks/twilio/voice",
        form(&params),
        vec![("x-twilio-signature".into(), sig)],
    )
    .await;
    sids.push(s);

    // Garbage, and an empty header.
    for garbage in ["not base64 at all", ""] {
        let s = sid("SM");
        let params = text_params(&a, &proxy, &s, "hi");
        refused(
            "/hooks/twilio/sms",
            form(&params),
            vec![("x-twilio-signature".into(), garbage.into())],
        )
        .await;
        sids.push(s);
    }

    // A status callback is held to the same rule.
    let s = sids[0].clone();
    let params = [
        ("CallSid", s.as_str()),
        ("CallStatus", "completed"),
        ("To", proxy.as_str()),
    ];
    refused("/hooks/twilio/status", form(&params), vec![]).await;

    // Nothing was recorded: no interaction, and no provider reference in Redis.
    assert_eq!(app.interactions(&id).await, Vec::<Value>::new());
    let keys = app.scan_keys("*").await;
    for s in &sids {
        assert!(
            !keys.iter().any(|k| k.contains(s.as_str())),
            "a refused webhook left a key for {s}: {keys:?}"
        );
    }

    // The same request, signed properly, goes through.
    let s = sid("CA");
    assert_dials(&twilio.call(&a, &proxy, &s).await, &proxy, &b);
    assert_eq!(app.interactions(&id).await.len(), 1);
}

#[tokio::test]
async fn retried_webhooks_get_the_same_answer_and_one_interaction() {
    let app = twilio_app().await;
    let twilio = Twilio { app: &app };
    let (id, proxy, a, b) = ride(&app).await;

    let call_sid = sid("CA");
    let first = twilio.call(&a, &proxy, &call_sid).await;
    assert_dials(&first, &proxy, &b);
    for _ in 0..2 {
        let again = twilio.call(&a, &proxy, &call_sid).await;
        assert_eq!(again.text, first.text);
    }
    let list = app.interactions(&id).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["provider_ref"], call_sid.as_str());

    let message_sid = sid("SM");
    let first = twilio
        .text(&b, &proxy, &message_sid, "at the corner & waiting")
        .await;
    assert_eq!(twiml(&first).child("Message").attr("to"), Some(a.as_str()));
    let again = twilio
        .text(&b, &proxy, &message_sid, "at the corner & waiting")
        .await;
    assert_eq!(again.text, first.text);

    let list = app.interactions(&id).await;
    assert_eq!(list.len(), 2, "one call and one text: {list:?}");
    let texts: Vec<&Value> = list.iter().filter(|i| i["kind"] == "sms").collect();
    assert_eq!(texts.len(), 1, "{list:?}");
    assert_eq!(texts[0]["provider_ref"], message_sid.as_str());
    assert_eq!(texts[0]["from_participant"], 1);
}

#[tokio::test]
async fn status_callbacks_complete_the_interaction() {
    let app = twilio_app().await;
    let twilio = Twilio { app: &app };
    let (id, proxy, a, b) = ride(&app).await;
    let find = |list: &[Value], reference: &str| -> Value {
        list.iter()
            .find(|i| i["provider_ref"] == reference)
            .unwrap_or_else(|| panic!("no interaction {reference}: {list:?}"))
            .clone()
    };

    // 1. The number's own call status callback (set in Twilio's console) reports the
    //    inbound call: CallSid and To.
    let call_sid = sid("CA");
    assert_dials(&twilio.call(&a, &proxy, &call_sid).await, &proxy, &b);
    let ringing = [
        ("CallSid", call_sid.as_str()),
        ("CallStatus", "in-progress"),
        ("Direction", "inbound"),
        ("From", a.as_str()),
        ("To", proxy.as_str()),
    ];
    twiml(&twilio.post("/hooks/twilio/status", &ringing).await);
    let i = find(&app.interactions(&id).await, &call_sid);
    assert_eq!(i["status"], "in-progress");
    assert!(i.get("ended_at").is_none(), "{i}");

    let before = now_ms();
    let completed = [
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("CallDuration", "42"),
        ("CallSid", call_sid.as_str()),
        ("CallStatus", "completed"),
        ("Direction", "inbound"),
        ("From", a.as_str()),
        ("To", proxy.as_str()),
    ];
    let doc = twiml(&twilio.post("/hooks/twilio/status", &completed).await);
    assert!(doc.children.is_empty());
    let i = find(&app.interactions(&id).await, &call_sid);
    assert_eq!(i["status"], "completed", "{i}");
    assert_eq!(i["duration_secs"], 42, "{i}");
    let ended = ts_ms(&i["ended_at"]);
    assert!(ended >= before - 1000 && ended <= now_ms() + 1000, "{i}");

    // A late, out-of-order callback does not reopen it.
    twiml(&twilio.post("/hooks/twilio/status", &ringing).await);
    assert_eq!(
        find(&app.interactions(&id).await, &call_sid)["status"],
        "completed"
    );

    // 2. The `<Number>` callback of a connected call reports the dialled leg: its own sid,
    //    the inbound call as ParentCallSid, and the proxy number as From.
    let call_sid = sid("CA");
    let number = assert_dials(&twilio.call(&b, &proxy, &call_sid).await, &proxy, &a);
    let path = callback_path(number.attr("statusCallback"));
    let leg = sid("CA");
    let busy = [
        ("CallDuration", "0"),
        ("CallSid", leg.as_str()),
        ("CallStatus", "busy"),
        ("Direction", "outbound-dial"),
        ("From", proxy.as_str()),
        ("ParentCallSid", call_sid.as_str()),
        ("To", a.as_str()),
    ];
    twiml(&twilio.post(&path, &busy).await);
    let i = find(&app.interactions(&id).await, &call_sid);
    assert_eq!(i["status"], "busy", "{i}");
    assert_eq!(i["duration_secs"], 0, "{i}");
    assert!(i["ended_at"].is_string(), "{i}");

    // 3. A relayed text's `action` callbacks report the message hush sent from the proxy
    //    number; its URL names the inbound text.
    let message_sid = sid("SM");
    let r = twilio.text(&a, &proxy, &message_sid, "running late").await;
    let path = callback_path(twiml(&r).child("Message").attr("action"));
    let sent_sid = sid("SM");
    let report = |status: &'static str| {
        vec![
            ("MessageSid", sent_sid.clone()),
            ("MessageStatus", status.to_string()),
            ("SmsSid", sent_sid.clone()),
            ("SmsStatus", status.to_string()),
            ("From", proxy.clone()),
            ("To", b.clone()),
        ]
    };
    for (status, ended) in [("sent", false), ("delivered", true)] {
        let params = report(status);
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        twiml(&twilio.post(&path, &params).await);
        let i = find(&app.interactions(&id).await, &message_sid);
        assert_eq!(i["status"], status, "{i}");
        assert_eq!(i["ended_at"].is_string(), ended, "{i}");
    }

    // A callback about something hush never relayed changes nothing and is still answered.
    let before = app.interactions(&id).await;
    let stray = sid("CA");
    let unknown = [
        ("CallSid", stray.as_str()),
        ("CallStatus", "completed"),
        ("CallDuration", "5"),
        ("To", proxy.as_str()),
    ];
    twiml(&twilio.post("/hooks/twilio/status", &unknown).await);
    let elsewhere = [
        ("CallSid", stray.as_str()),
        ("CallStatus", "completed"),
        ("To", "+19995550100"),
    ];
    twiml(&twilio.post("/hooks/twilio/status", &elsewhere).await);
    assert_eq!(app.interactions(&id).await, before);
}

#[tokio::test]
async fn the_default_port_shared_keys_and_json_bodies_verify() {
    let app = TestApp::start_with(|c| {
        c.public_url = Some(PUBLIC.into());
        c.providers.twilio_auth_token = Some(Secret::new(TOKEN.into()));
        c.providers.twilio_shared_keys =
            vec![(SHARED_KEY_ID.into(), Secret::new(SHARED_SECRET.into()))];
    })
    .await;
    let twilio = Twilio { app: &app };
    let (_, proxy, a, b) = ride(&app).await;
    let path = "/hooks/twilio/voice";

    // Twilio may sign the URL with the default port spelled out.
    let call_sid = sid("CA");
    let params = call_params(&a, &proxy, &call_sid);
    let with_port = "https://hush.example.test:443/hooks/twilio/voice";
    let sig = signature(Algo::Sha1, TOKEN, with_port, &params);
    let r = twilio
        .send(path, &form(&params), &[("x-twilio-signature", &sig)])
        .await;
    assert_dials(&r, &proxy, &b);

    // A Webhook Rule signs with a shared key and says which.
    let settings = format!("key={SHARED_KEY_ID},algorithm=HMAC_SHA256");
    let call_sid = sid("CA");
    let params = call_params(&a, &proxy, &call_sid);
    let sig = signature(
        Algo::Sha256,
        SHARED_SECRET,
        &format!("{PUBLIC}{path}"),
        &params,
    );
    let r = twilio
        .send(
            path,
            &form(&params),
            &[
                ("x-twilio-signature", &sig),
                ("x-twilio-webhooks-signature-settings", &settings),
            ],
        )
        .await;
    assert_dials(&r, &proxy, &b);

    // The same signature under a key id hush does not hold, or with no settings at all.
    let other = "key=wk_other,algorithm=HMAC_SHA256";
    for headers in [
        vec![
            ("x-twilio-signature", sig.as_str()),
            ("x-twilio-webhooks-signature-settings", other),
        ],
        vec![("x-twilio-signature", sig.as_str())],
    ] {
        twilio
            .send(path, &form(&params), &headers)
            .await
            .expect_problem(403, "invalid_signature");
    }
    // The auth token's signature does not pass for a request that names a shared key.
    let legacy = signature(Algo::Sha1, TOKEN, &format!("{PUBLIC}{path}"), &params);
    twilio
        .send(
            path,
            &form(&params),
            &[
                ("x-twilio-signature", &legacy),
                ("x-twilio-webhooks-signature-settings", &settings),
            ],
        )
        .await
        .expect_problem(403, "invalid_signature");

    // A JSON body is signed through its SHA-256 in the URL. It verifies (and then lacks the
    // form fields hush reads); another body under the same URL does not.
    let body = "{\"CallSid\":\"CA1\",\"CallStatus\":\"completed\"}";
    let hash: String = sha2::Sha256::digest(body.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let json_path = format!("/hooks/twilio/status?bodySHA256={hash}");
    let sig = signature(Algo::Sha1, TOKEN, &format!("{PUBLIC}{json_path}"), &[]);
    let send_json = |body: &'static str| {
        let req = app
            .client
            .post(app.url(&json_path))
            .header("content-type", "application/json")
            .header("x-twilio-signature", &sig)
            .body(body);
        app.send(req)
    };
    send_json(body).await.expect_problem(400, "invalid_request");
    send_json("{\"CallSid\":\"CA1\",\"CallStatus\":\"failed\"}")
        .await
        .expect_problem(403, "invalid_signature");
}

#[tokio::test]
async fn hooks_are_404_without_twilio_credentials() {
    let app = TestApp::start().await;
    let twilio = Twilio { app: &app };
    let (a, number) = (participant(0), proxy(0));
    for path in [
        "/hooks/twilio/voice",
        "/hooks/twilio/sms",
        "/hooks/twilio/status",
    ] {
        let params = call_params(&a, &number, "CA1");
        let r = twilio.post(path, &params).await;
        r.expect_problem(404, "not_found");
    }
}
