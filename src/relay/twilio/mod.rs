//! Twilio's dialect. Checks `X-Twilio-Signature` (the account auth token with HMAC-SHA1, or a
//! shared key named by `X-Twilio-Webhooks-Signature-Settings`), reads Twilio's form fields
//! into an [`Inbound`], and answers in TwiML: `<Dial>` a call, `<Message>` a text, `<Say>` the
//! pool's message when nothing is open. Status callbacks close the interaction they report on.

mod calls;
mod messages;

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
        Path::post("/hooks/twilio/bridge", Hook::Bridge),
        Path::post("/hooks/twilio/digits", Hook::Digits),
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

    // `<Gather action>` posts the call's fields as the voice webhook does, with `Digits`
    // (https://www.twilio.com/docs/voice/twiml/gather#action); `finishOnKey` is not sent.
    async fn read_digits(_: &AppState, hook: &Webhook) -> Result<dialect::Digits, ApiError> {
        let params = hook.form();
        Ok(dialect::Digits {
            call: parse(Kind::Voice, params)?,
            digits: param(params, "Digits").unwrap_or_default().to_string(),
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
        // `actionOnEmptyResult` posts to `action` when nothing was typed in time too, so the
        // broker decides what silence means (the caller's own route, or another prompt)
        // (https://www.twilio.com/docs/voice/twiml/gather#actiononemptyresult); `numDigits`
        // ends the prompt as soon as a whole PIN came. The prompt is inside `<Gather>`, so
        // typing may start while it plays.
        Decision::Gather {
            digits,
            attempt,
            timeout_secs,
            prompt,
        } => format!(
            "<Response><Gather input=\"dtmf\" numDigits=\"{digits}\" timeout=\"{timeout_secs}\" \
             actionOnEmptyResult=\"true\" method=\"POST\" action=\"{}\"><Say>{}</Say></Gather>\
             </Response>",
            xml_escape(&dialect::digits_url::<Twilio>(public_url, *attempt)),
            xml_escape(prompt),
        ),
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
            // A call hush placed for the app names its interaction as `ref` in the signed
            // URL, and comes from the proxy number.
            let (reference, proxy) = match (param(query, "ref"), get("ParentCallSid")) {
                (Some(ours), _) => (ours, get("From")),
                (None, Some(parent)) => (parent, get("From")),
                (None, None) => (call, get("To")),
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
mod tests;
