//! Twilio's dialect. Checks `X-Twilio-Signature` (the account auth token with HMAC-SHA1, or a
//! shared key named by `X-Twilio-Webhooks-Signature-Settings`), reads Twilio's form fields
//! into an [`Inbound`], and answers in TwiML: `<Dial>` a call, `<Message>` a text, `<Say>` the
//! pool's message when nothing is open. Status callbacks close the interaction they report on.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::dialect::{self, Dialect, Hook, Path, Read, Recorded};
use super::{Inbound, Webhook, forbidden, form_urlencoded, param, same, xml_escape};
use crate::broker::{BrokerError, Decision, RecordingView, RelayOutcome};
use crate::config::Providers;
use crate::domain::session::Kind;
use crate::domain::{E164, RecordChannels};
use crate::http::{ApiError, AppState};

const PROVIDER: &str = "twilio";
const STATUS_PATH: &str = "/hooks/twilio/status";
const RECORDING_PATH: &str = "/hooks/twilio/recording";

/// Twilio is served when something can check its signatures: the auth token or a shared key.
pub fn enabled(p: &Providers) -> bool {
    p.twilio_auth_token
        .as_ref()
        .is_some_and(|t| !t.expose().is_empty())
        || p.twilio_shared_keys
            .iter()
            .any(|(_, k)| !k.expose().is_empty())
}

/// Twilio's side of the [`Dialect`] contract.
pub struct Twilio;

impl Dialect for Twilio {
    const NAME: &'static str = PROVIDER;
    const PATHS: &'static [Path] = &[
        Path::post("/hooks/twilio/voice", Hook::VOICE),
        Path::post("/hooks/twilio/sms", Hook::SMS),
        Path::post(STATUS_PATH, Hook::Status),
        Path::post(RECORDING_PATH, Hook::Recording),
    ];

    fn enabled(p: &Providers) -> bool {
        enabled(p)
    }

    async fn verify(s: &AppState, _: Hook, hook: &Webhook) -> Result<(), Response> {
        verify(&s.config.providers, hook)
            .then_some(())
            .ok_or_else(forbidden)
    }

    async fn read(_: &AppState, kind: Kind, hook: &Webhook) -> Result<Read, ApiError> {
        parse(kind, hook.form()).map(Read::Route)
    }

    // The dialled number is no pool's. A call is refused before it is answered, so the
    // caller is not billed and hears a plain rejection
    // (https://www.twilio.com/docs/voice/twiml/reject); a text gets no reply at all.
    fn unrouted(kind: Kind) -> Response {
        twiml(match kind {
            Kind::Voice => "<Response><Reject/></Response>".into(),
            Kind::Sms => "<Response/>".into(),
        })
    }

    // A retry (`replay`) gets the same decision from the broker, so the same document.
    async fn answer(s: &AppState, inbound: Inbound, outcome: RelayOutcome) -> Response {
        let recorded = dialect::recorded::<Self>(s, &outcome);
        twiml(render_with(
            &outcome.decision,
            &inbound,
            &s.public_url,
            recorded.as_ref(),
        ))
    }

    async fn status(s: &AppState, hook: &Webhook) -> Response {
        status(s, hook).await
    }

    fn read_recording(hook: &Webhook, channels: u8) -> Result<Option<RecordingView>, ApiError> {
        read_recording(hook.form(), channels)
    }

    fn recorded() -> Response {
        twiml("<Response/>".into())
    }
}

/// A `<Dial>`'s recording status callback
/// (https://www.twilio.com/docs/voice/twiml/dial#recordingstatuscallback): `RecordingSid`,
/// `RecordingUrl`, `RecordingStatus`, `RecordingDuration`, `RecordingChannels`. Only a
/// `completed` recording has a file; the dial asks for no other event, and any other is
/// acknowledged without effect. TeXML sends the same fields.
pub(super) fn read_recording(
    params: &[(String, String)],
    channels: u8,
) -> Result<Option<RecordingView>, ApiError> {
    let get = |name: &str| param(params, name).filter(|v| !v.is_empty());
    if get("RecordingStatus").is_some_and(|s| s != "completed") {
        return Ok(None);
    }
    let Some(url) = get("RecordingUrl") else {
        return Err(ApiError::InvalidRequest(
            "the `RecordingUrl` parameter is missing".into(),
        ));
    };
    Ok(Some(RecordingView {
        url: url.to_string(),
        duration_secs: dialect::seconds(get("RecordingDuration")),
        channels: match get("RecordingChannels") {
            Some("1") => 1,
            Some("2") => 2,
            _ => channels,
        },
        provider_recording_id: get("RecordingSid").map(str::to_string),
    }))
}

/// The `<Dial>` attributes of a recorded call: dual records each party on a channel of its
/// own, from the moment the other party answers
/// (https://www.twilio.com/docs/voice/twiml/dial#record); TeXML takes the same.
pub(super) fn dial_recording(r: &Recorded) -> String {
    format!(
        " record=\"{}\" recordingStatusCallback=\"{}\" recordingStatusCallbackEvent=\"completed\"",
        match r.channels {
            RecordChannels::Dual => "record-from-answer-dual",
            RecordChannels::Mono => "record-from-answer",
        },
        xml_escape(&r.callback),
    )
}

/// Reads Twilio's request fields: `CallSid` or `MessageSid`, `From`, `To`, and for texts
/// `Body`, `NumMedia` and `MediaUrl0..`
/// (https://www.twilio.com/docs/messaging/guides/webhook-request).
fn parse(kind: Kind, params: &[(String, String)]) -> Result<Inbound, ApiError> {
    let required = |name: &str| {
        param(params, name)
            .ok_or_else(|| ApiError::InvalidRequest(format!("the `{name}` parameter is missing")))
    };
    let provider_ref = match kind {
        Kind::Voice => required("CallSid")?,
        Kind::Sms => required("MessageSid")?,
    };
    let to = E164::parse_syntax(required("To")?).map_err(|_| {
        ApiError::InvalidRequest("the `To` parameter is not an E.164 number".into())
    })?;
    // A withheld caller arrives as `anonymous`, `Restricted`, an empty value or a short code,
    // and a text may come from an alphanumeric sender: none of them can hold a route.
    let from = E164::parse_syntax(required("From")?).ok();
    let (body, media) = match kind {
        Kind::Voice => (None, Vec::new()),
        Kind::Sms => (
            Some(param(params, "Body").unwrap_or_default().to_string()),
            media_urls(params),
        ),
    };
    Ok(Inbound {
        kind,
        from,
        to,
        body,
        media,
        provider_ref: provider_ref.to_string(),
    })
}

/// `MediaUrl0` .. `MediaUrl{NumMedia-1}`, in order. Twilio carries at most 10 per message.
fn media_urls(params: &[(String, String)]) -> Vec<String> {
    const MAX_MEDIA: usize = 10;
    let count = param(params, "NumMedia")
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(MAX_MEDIA)
        .min(MAX_MEDIA);
    (0..count)
        .filter_map(|i| param(params, &format!("MediaUrl{i}")))
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// The TwiML answering `decision`, for a call that is not recorded.
#[cfg(test)]
fn render(decision: &Decision, inbound: &Inbound, public_url: &str) -> String {
    render_with(decision, inbound, public_url, None)
}

/// The TwiML answering `decision`; `recorded` when the session records its calls.
fn render_with(
    decision: &Decision,
    inbound: &Inbound,
    public_url: &str,
    recorded: Option<&Recorded>,
) -> String {
    let status_url = format!("{public_url}{STATUS_PATH}");
    match decision {
        // `answerOnBridge` keeps the caller's leg ringing until the other party picks up, so
        // the caller hears real ringback and is not billed for an unanswered call
        // (https://www.twilio.com/docs/voice/twiml/dial#answeronbridge). The `<Number>`
        // status callback reports the bridged leg's outcome and length; it names the inbound
        // call as `ParentCallSid`
        // (https://www.twilio.com/docs/voice/twiml/number#attributes-status-callback).
        // `timeLimit` ends the call after that many seconds
        // (https://www.twilio.com/docs/voice/twiml/dial#timelimit).
        Decision::Connect {
            caller_id,
            to,
            call,
            ..
        } => format!(
            "<Response><Dial callerId=\"{}\" answerOnBridge=\"true\"{}{}>\
             <Number statusCallback=\"{}\">{}</Number></Dial></Response>",
            xml_escape(caller_id.reveal()),
            call.max_call_secs
                .map(|secs| format!(" timeLimit=\"{secs}\""))
                .unwrap_or_default(),
            recorded.map(dial_recording).unwrap_or_default(),
            xml_escape(&status_url),
            xml_escape(to.reveal()),
        ),
        // The relayed text is a new message with its own sid; `action` is where Twilio sends
        // its status callbacks (https://www.twilio.com/docs/messaging/twiml/message), and the
        // `ref` in that URL names the inbound text the interaction was recorded under. The
        // URL is signed like any other, so `ref` cannot be forged. Message sids are
        // alphanumeric (the broker refuses anything else), so they need no escaping in a URL.
        Decision::Relay { from, to, .. } => {
            let mut doc = format!(
                "<Response><Message to=\"{}\" from=\"{}\" action=\"{}\">",
                xml_escape(to.reveal()),
                xml_escape(from.reveal()),
                xml_escape(&format!("{status_url}?ref={}", inbound.provider_ref)),
            );
            let body = inbound.body.as_deref().unwrap_or_default();
            if !body.is_empty() || inbound.media.is_empty() {
                doc.push_str(&format!("<Body>{}</Body>", xml_escape(body)));
            }
            for url in &inbound.media {
                doc.push_str(&format!("<Media>{}</Media>", xml_escape(url)));
            }
            doc.push_str("</Message></Response>");
            doc
        }
        Decision::Announce { message } => match inbound.kind {
            Kind::Voice => format!(
                "<Response><Say>{}</Say><Hangup/></Response>",
                xml_escape(message)
            ),
            // Without `to` and `from`, `<Message>` replies to the sender from the number it
            // wrote to: the proxy number.
            Kind::Sms => format!(
                "<Response><Message>{}</Message></Response>",
                xml_escape(message)
            ),
        },
    }
}

fn twiml(doc: String) -> Response {
    let mut resp = doc.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    resp
}

// ---- status callbacks

/// Call statuses after which nothing more happens to a call
/// (https://www.twilio.com/docs/voice/api/call-resource#call-status-values).
const FINAL_CALL: &[&str] = &["completed", "busy", "no-answer", "failed", "canceled"];
/// The same for messages
/// (https://www.twilio.com/docs/messaging/api/message-resource#message-status-values).
const FINAL_MESSAGE: &[&str] = &["delivered", "undelivered", "failed", "canceled"];

/// Status callbacks of three kinds land here, each naming the interaction differently:
/// - a number's own call status callback (set in the console) reports the inbound call:
///   `CallSid` is the one recorded and `To` is the proxy number;
/// - the `<Number>` callback of a connected call reports the dialled leg: the inbound call is
///   `ParentCallSid`, and the leg comes `From` the proxy number (its caller ID);
/// - a relayed text's `action` callback reports the message hush sent `From` the proxy
///   number, and carries the inbound text's sid as `ref` in its URL.
///
/// Unknown references change nothing and are answered like the others, so Twilio does not
/// log errors for calls that reached nobody. The answer is an empty TwiML document because a
/// `<Message action>` response may be read as the next instructions.
async fn status(s: &AppState, hook: &Webhook) -> Response {
    let report = match StatusReport::parse(hook.form(), hook.query()) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let Some(proxy) = report
        .proxy
        .as_deref()
        .and_then(|p| E164::parse_syntax(p).ok())
    else {
        return twiml("<Response/>".into());
    };
    match s
        .broker
        .interaction_status(
            PROVIDER,
            &report.reference,
            &proxy,
            &report.status,
            report.duration_secs,
            report.last,
        )
        .await
    {
        Ok(changed) => {
            tracing::debug!(
                reference = %report.reference,
                status = %report.status,
                changed,
                "twilio status callback"
            );
            twiml("<Response/>".into())
        }
        // An unknown proxy number or reference is not an error; only the store failing is.
        Err(BrokerError::NumberNotFound(_)) => twiml("<Response/>".into()),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// What one status callback says about one interaction.
#[derive(Debug, PartialEq, Eq)]
struct StatusReport {
    reference: String,
    proxy: Option<String>,
    status: String,
    duration_secs: Option<u32>,
    last: bool,
}

impl StatusReport {
    fn parse(params: &[(String, String)], query: &[(String, String)]) -> Result<Self, ApiError> {
        let get = |name: &str| param(params, name).filter(|v| !v.is_empty());
        let missing = |what: &str| ApiError::InvalidRequest(format!("the {what} is missing"));
        let (reference, proxy, status, duration_secs, last) = if let Some(call) = get("CallSid") {
            let status = get("CallStatus").ok_or_else(|| missing("`CallStatus` parameter"))?;
            let (reference, proxy) = match get("ParentCallSid") {
                Some(parent) => (parent, get("From")),
                None => (call, get("To")),
            };
            let duration = get("CallDuration").and_then(|d| d.trim().parse().ok());
            (
                reference,
                proxy,
                status,
                duration,
                FINAL_CALL.contains(&status),
            )
        } else if let Some(message) = get("MessageSid").or_else(|| get("SmsSid")) {
            // `SmsStatus` is the older name Twilio still sends next to `MessageStatus`.
            let status = get("MessageStatus")
                .or_else(|| get("SmsStatus"))
                .ok_or_else(|| missing("`MessageStatus` parameter"))?;
            let reference = param(query, "ref").unwrap_or(message);
            (
                reference,
                get("From"),
                status,
                None,
                FINAL_MESSAGE.contains(&status),
            )
        } else {
            return Err(missing("`CallSid` or `MessageSid` parameter"));
        };
        // Statuses are stored as given; Twilio's are short lowercase words with hyphens.
        if status.len() > 32 || !status.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            return Err(ApiError::InvalidRequest(
                "the status is not one Twilio sends".into(),
            ));
        }
        Ok(StatusReport {
            reference: reference.to_string(),
            proxy: proxy.map(str::to_string),
            status: status.to_string(),
            duration_secs,
            last,
        })
    }
}

// ---- signatures

/// The hash a signature was made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algorithm {
    HmacSha1,
    HmacSha256,
}

/// Checks a webhook's signature, before anything else in it is read.
///
/// Without `X-Twilio-Webhooks-Signature-Settings` the signer is the account auth token with
/// HMAC-SHA1. With it (`key=<id>,algorithm=HMAC_SHA256`, from a Webhook Rule) the signer is
/// that shared key with that algorithm over the same string
/// (https://www.twilio.com/docs/usage/webhooks/webhook-shared-keys). A request naming a key
/// hush does not hold fails; it never falls back to the auth token.
fn verify(p: &Providers, hook: &Webhook) -> bool {
    let Some(signature) = hook.header("x-twilio-signature") else {
        return false;
    };
    let (key, algorithm) = match hook.header("x-twilio-webhooks-signature-settings") {
        None => match &p.twilio_auth_token {
            Some(token) => (token.expose().as_str(), Algorithm::HmacSha1),
            None => return false,
        },
        Some(settings) => {
            let Some((id, algorithm)) = signature_settings(settings) else {
                return false;
            };
            match p.twilio_shared_keys.iter().find(|(k, _)| k == id) {
                Some((_, secret)) => (secret.expose().as_str(), algorithm),
                None => return false,
            }
        }
    };
    !key.is_empty()
        && signature_valid_with(
            algorithm,
            key.as_bytes(),
            &hook.url,
            &hook.body,
            hook.form(),
            signature,
        )
}

/// `key=<id>,algorithm=<HMAC_SHA256|HMAC_SHA1>` → the key id and the algorithm.
fn signature_settings(header: &str) -> Option<(&str, Algorithm)> {
    let (mut key, mut algorithm) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("key", v)) => key = Some(v.trim()),
            Some(("algorithm", v)) => {
                algorithm = match v.trim() {
                    "HMAC_SHA256" => Some(Algorithm::HmacSha256),
                    "HMAC_SHA1" => Some(Algorithm::HmacSha1),
                    _ => return None,
                }
            }
            _ => {}
        }
    }
    Some((key.filter(|k| !k.is_empty())?, algorithm?))
}

/// [`signature_valid_with`], decoding the body's form itself.
#[cfg(test)]
fn signature_valid(
    algorithm: Algorithm,
    key: &[u8],
    url: &str,
    body: &[u8],
    signature: &str,
) -> bool {
    signature_valid_with(algorithm, key, url, body, &form_urlencoded(body), signature)
}

/// Whether `signature` signs a request to `url` carrying `body` (whose form
/// parameters are `params`, decoded once for the check and the reading alike) under `key`.
///
/// Twilio signs the URL it called followed by every POST parameter's name and value, sorted
/// by name then value (https://www.twilio.com/docs/usage/webhooks/webhooks-security). Two
/// quirks, both handled as Twilio's own validators handle them:
/// - whether the signed URL names the default port (`:443`, `:80`) is inconsistent on
///   Twilio's side, so the URL is tried with and without it;
/// - a JSON body is not signed as parameters: the URL carries `bodySHA256` (the hex SHA-256
///   of the raw body), which must match, and the signature covers the URL alone.
fn signature_valid_with(
    algorithm: Algorithm,
    key: &[u8],
    url: &str,
    body: &[u8],
    params: &[(String, String)],
    signature: &str,
) -> bool {
    let query = url
        .split_once('?')
        .map(|(_, q)| form_urlencoded(q.as_bytes()))
        .unwrap_or_default();
    let payloads = match param(&query, "bodySHA256") {
        Some(claimed) => {
            let actual = hex(&Sha256::digest(body));
            if !same(actual.as_bytes(), claimed.to_ascii_lowercase().as_bytes()) {
                return false;
            }
            vec![String::new()]
        }
        None => param_strings(params),
    };
    let mut valid = false;
    for url in url_variants(url) {
        for payload in &payloads {
            // No early exit: every candidate is computed and compared in constant time.
            valid |= same(
                sign(algorithm, key, &url, payload).as_bytes(),
                signature.as_bytes(),
            );
        }
    }
    valid
}

/// The sorted `name value` concatenation of the parameters. Twilio's helper libraries drop
/// exact repeats of a name and value before signing (each distinct value of a repeated name
/// is signed); a request with such repeats also verifies when every copy was signed.
fn param_strings(params: &[(String, String)]) -> Vec<String> {
    fn concat(params: &[&(String, String)]) -> String {
        params.iter().flat_map(|(k, v)| [k.as_str(), v]).collect()
    }
    let mut params: Vec<&(String, String)> = params.iter().collect();
    params.sort();
    let every = concat(&params);
    params.dedup();
    let distinct = concat(&params);
    if distinct == every {
        vec![every]
    } else {
        vec![distinct, every]
    }
}

/// The URL as given, and the same URL with its default port added or removed.
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let (scheme, default_port) = if url.starts_with("https://") {
        ("https://", "443")
    } else if url.starts_with("http://") {
        ("http://", "80")
    } else {
        return out;
    };
    let rest = &url[scheme.len()..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, host_port) = authority.split_at(authority.rfind('@').map_or(0, |i| i + 1));
    // A colon inside `[...]` belongs to an IPv6 address, not to a port.
    match host_port
        .rfind(':')
        .filter(|&i| !host_port[i..].contains(']'))
    {
        Some(i) if &host_port[i + 1..] == default_port => {
            out.push(format!("{scheme}{userinfo}{}{tail}", &host_port[..i]));
        }
        Some(_) => {}
        None => out.push(format!(
            "{scheme}{userinfo}{host_port}:{default_port}{tail}"
        )),
    }
    out
}

/// base64 of the HMAC of `url` followed by `payload`.
fn sign(algorithm: Algorithm, key: &[u8], url: &str, payload: &str) -> String {
    match algorithm {
        Algorithm::HmacSha1 => {
            let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(url.as_bytes());
            mac.update(payload.as_bytes());
            B64.encode(mac.finalize().into_bytes())
        }
        Algorithm::HmacSha256 => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(url.as_bytes());
            mac.update(payload.as_bytes());
            B64.encode(mac.finalize().into_bytes())
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
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
}
