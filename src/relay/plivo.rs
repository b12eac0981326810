//! The Plivo dialect: verifies `X-Plivo-Signature-V3`, parses Plivo's form posts (numbers as
//! digits without `+`) into an [`Inbound`], and answers in Plivo XML. Three routes: the answer
//! URL of calls, the message URL of texts, and one status URL for hangup, dial and message
//! delivery callbacks. Nothing here touches Redis: the broker decides, this module translates.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::dialect::{self, Dialect, Hook, Path, Read, Recorded};
use super::{Inbound, Webhook, forbidden, form_urlencoded, param, same, xml_escape};
use crate::broker::{Decision, RecordingView, RelayOutcome};
use crate::config::Providers;
use crate::domain::session::Kind;
use crate::domain::{E164, RecordChannels};
use crate::http::{ApiError, AppState};

/// The provider name interactions are recorded under.
const PROVIDER: &str = "plivo";
/// Signed with the token of the account (or subaccount) that owns the number.
const SIGNATURE: &str = "x-plivo-signature-v3";
/// Signed with the main account's token, whichever account owns the number.
const SIGNATURE_MA: &str = "x-plivo-signature-ma-v3";
const NONCE: &str = "x-plivo-signature-v3-nonce";
/// The status route; relayed texts name it as their delivery-report URL.
const STATUS_PATH: &str = "/hooks/plivo/status";
/// Where `<Record callbackUrl>` reports a recorded call's file.
const RECORDING_PATH: &str = "/hooks/plivo/recording";

/// Plivo's side of the [`Dialect`] contract.
pub struct Plivo;

impl Dialect for Plivo {
    const NAME: &'static str = PROVIDER;
    /// Plivo application URLs: Answer URL → `/hooks/plivo/voice`, Message URL →
    /// `/hooks/plivo/sms`, Hangup URL → `/hooks/plivo/status` (all `POST`).
    const PATHS: &'static [Path] = &[
        Path::post("/hooks/plivo/voice", Hook::VOICE),
        Path::post("/hooks/plivo/sms", Hook::SMS),
        Path::post(STATUS_PATH, Hook::Status),
        Path::post(RECORDING_PATH, Hook::Recording),
    ];

    /// Plivo is enabled when its auth token is configured: without it no request can be
    /// verified.
    fn enabled(p: &Providers) -> bool {
        p.plivo_auth_token
            .as_ref()
            .is_some_and(|t| !t.expose().is_empty())
    }

    async fn verify(s: &AppState, _: Hook, hook: &Webhook) -> Result<(), Response> {
        signed(s, hook).then_some(()).ok_or_else(forbidden)
    }

    async fn read(_: &AppState, kind: Kind, hook: &Webhook) -> Result<Read, ApiError> {
        Ok(match parse(kind, hook.form())? {
            Some(inbound) => Read::Route(inbound),
            None => Read::Answered(Self::unrouted(kind)),
        })
    }

    fn unrouted(kind: Kind) -> Response {
        xml(unknown_number(kind))
    }

    async fn answer(s: &AppState, inbound: Inbound, outcome: RelayOutcome) -> Response {
        if outcome.replay {
            // Plivo retries a webhook it got no answer to: the broker gave the first decision
            // again and recorded nothing new, so the answer is the same document.
            tracing::debug!(provider = PROVIDER, "repeated webhook answered as before");
        }
        let status_url = format!("{}{STATUS_PATH}", s.public_url);
        let recorded = dialect::recorded::<Self>(s, &outcome);
        xml(render_with(
            &inbound,
            &outcome.decision,
            &status_url,
            recorded.as_ref(),
        ))
    }

    async fn status(s: &AppState, hook: &Webhook) -> Response {
        status(s, hook).await
    }

    /// `<Record callbackUrl>` posts `RecordUrl`, `RecordingID` and `RecordingDuration` once
    /// the file is ready (<https://www.plivo.com/docs/voice/xml/record>); the names of the
    /// record API's callback (`record_url`, `recording_id`, `recording_duration`) are read
    /// too. Plivo does not say how many channels: the dial asked for them.
    fn read_recording(hook: &Webhook, channels: u8) -> Result<Option<RecordingView>, ApiError> {
        let params = hook.form();
        let get = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| param(params, n).filter(|v| !v.is_empty()))
        };
        let Some(url) = get(["RecordUrl", "record_url"]) else {
            return Err(ApiError::InvalidRequest(
                "the `RecordUrl` parameter is missing".into(),
            ));
        };
        Ok(Some(RecordingView {
            url: url.to_string(),
            duration_secs: dialect::seconds(get(["RecordingDuration", "recording_duration"])),
            channels,
            provider_recording_id: get(["RecordingID", "recording_id"]).map(str::to_string),
        }))
    }

    fn recorded() -> Response {
        StatusCode::OK.into_response()
    }
}

/// Plivo's longest call, and what a recording of a whole call may last
/// (<https://www.plivo.com/docs/voice/xml/dial>: `timeLimit` defaults to 14,400 s).
const LONGEST_CALL_SECS: u32 = 14_400;

/// The `<Record>` before a recorded call's `<Dial>`: it starts when the dialled party
/// answers, records in the background (`redirect="false"` goes on to the dial at once),
/// one channel per party for `stereo`, and reports the file to `callbackUrl`. `maxLength`
/// otherwise defaults to 60 s, so it is the call's own limit.
fn record_element(r: &Recorded, max_call_secs: Option<u32>) -> String {
    format!(
        r#"<Record startOnDialAnswer="true" redirect="false" recordChannelType="{}" maxLength="{}" callbackUrl="{}" callbackMethod="POST"/>"#,
        match r.channels {
            RecordChannels::Dual => "stereo",
            RecordChannels::Mono => "mono",
        },
        max_call_secs.unwrap_or(LONGEST_CALL_SECS),
        xml_escape(&r.callback),
    )
}

// ---- signature V3

/// The text Plivo's V3 signature covers, built as Plivo's SDKs build it
/// (<https://www.plivo.com/docs/voice/xml/request/validation>):
/// the URL without its query; then, if there is a query or there are parameters, `?`;
/// for `GET`, every query and form parameter as `k=v` sorted and joined by `&`; for `POST`,
/// the query's `k=v` pairs sorted and joined by `&`, a `.` when both a query and parameters
/// exist, then every form parameter as `kv` sorted and concatenated. Values are the decoded
/// ones; a repeated name contributes each of its values, sorted. The caller appends
/// `.` + nonce.
fn canonical(method: &Method, url: &str, params: &[(String, String)]) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, form_urlencoded(query.as_bytes())),
        None => (url, Vec::new()),
    };
    let mut out = base.to_string();
    if method == Method::GET {
        // Plivo's SDKs merge the form into the query as maps: a query name wins.
        let mut merged = grouped(params);
        merged.extend(grouped(&query));
        let joined = joined(&merged, "=", "&");
        if !joined.is_empty() {
            out.push('?');
            out.push_str(&joined);
        }
        return out;
    }
    let query = joined(&grouped(&query), "=", "&");
    if query.is_empty() && params.is_empty() {
        return out;
    }
    out.push('?');
    out.push_str(&query);
    if !query.is_empty() && !params.is_empty() {
        out.push('.');
    }
    out.push_str(&joined(&grouped(params), "", ""));
    out
}

/// Parameters by name, each name's values sorted, names in byte (= code point) order as
/// Python's `sorted` and Go's `sort.Strings` put them.
fn grouped(params: &[(String, String)]) -> BTreeMap<&str, Vec<&str>> {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in params {
        map.entry(k.as_str()).or_default().push(v.as_str());
    }
    for values in map.values_mut() {
        values.sort_unstable();
    }
    map
}

fn joined(map: &BTreeMap<&str, Vec<&str>>, kv: &str, sep: &str) -> String {
    let mut out = String::new();
    for (k, values) in map {
        for v in values {
            if !out.is_empty() {
                out.push_str(sep);
            }
            out.push_str(k);
            out.push_str(kv);
            out.push_str(v);
        }
    }
    out
}

/// `base64(HMAC-SHA256(auth_token, canonical + "." + nonce))`.
fn signature(
    auth_token: &str,
    method: &Method,
    url: &str,
    params: &[(String, String)],
    nonce: &str,
) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(canonical(method, url, params).as_bytes());
    mac.update(b".");
    mac.update(nonce.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// True when any signature the request carries matches. Plivo sends several, comma-separated,
/// while it rotates an auth token; the main-account header counts too, so hush may be given
/// either the subaccount's token or the main account's.
fn verify(auth_token: &str, hook: &Webhook, params: &[(String, String)]) -> bool {
    let Some(nonce) = hook.header(NONCE) else {
        return false;
    };
    let expected = signature(auth_token, &hook.method, &hook.url, params, nonce);
    let mut ok = false;
    for name in [SIGNATURE, SIGNATURE_MA] {
        for candidate in hook.header(name).unwrap_or_default().split(',') {
            // Every candidate is compared, each in constant time.
            ok |= same(candidate.trim().as_bytes(), expected.as_bytes());
        }
    }
    ok
}

/// Whether a webhook's signature verifies.
fn signed(s: &AppState, hook: &Webhook) -> bool {
    let Some(token) = s.config.providers.plivo_auth_token.as_ref() else {
        return false;
    };
    verify(token.expose(), hook, hook.form())
}

// ---- parsing

/// Plivo writes numbers as digits with the country code and no `+` (`14155550123`).
/// Anything else (`anonymous`, a SIP URI, an empty caller ID) is no number.
fn number(raw: &str) -> Option<E164> {
    let raw = raw.trim();
    let digits = raw.strip_prefix('+').unwrap_or(raw);
    E164::parse_syntax(&format!("+{digits}")).ok()
}

fn required<'a>(params: &'a [(String, String)], name: &str) -> Result<&'a str, ApiError> {
    param(params, name).ok_or_else(|| ApiError::InvalidRequest(format!("`{name}` is missing")))
}

/// The inbound call or text, or `None` when `To` is no phone number at all (so no pool's).
/// A `From` that is absent or no number is a withheld caller: it reaches nobody, and hears
/// the pool's message rather than an error.
fn parse(kind: Kind, params: &[(String, String)]) -> Result<Option<Inbound>, ApiError> {
    let (id, body, media) = match kind {
        // https://www.plivo.com/docs/voice/xml/request
        Kind::Voice => (required(params, "CallUUID")?, None, Vec::new()),
        // https://www.plivo.com/docs/messaging/api/message/handling-incoming: a text carries
        // `Text`; an MMS carries its text in `Body` and its files in `Media0`, `Media1`, ...
        Kind::Sms => {
            let media = media(params);
            let body = match (param(params, "Text"), param(params, "Body")) {
                (Some(text), _) | (None, Some(text)) => text.to_string(),
                (None, None) if !media.is_empty() => String::new(),
                (None, None) => return Err(ApiError::InvalidRequest("`Text` is missing".into())),
            };
            (required(params, "MessageUUID")?, Some(body), media)
        }
    };
    let from = param(params, "From").and_then(number);
    let Some(to) = number(required(params, "To")?) else {
        return Ok(None);
    };
    Ok(Some(Inbound {
        kind,
        from,
        to,
        body,
        media,
        provider_ref: id.to_string(),
    }))
}

/// `MediaN` URLs in index order.
fn media(params: &[(String, String)]) -> Vec<String> {
    let mut found: Vec<(u32, &str)> = params
        .iter()
        .filter_map(|(k, v)| {
            let n = k.strip_prefix("Media")?.parse::<u32>().ok()?;
            (!v.is_empty()).then_some((n, v.as_str()))
        })
        .collect();
    found.sort_by_key(|(n, _)| *n);
    found.into_iter().map(|(_, v)| v.to_string()).collect()
}

// ---- rendering

fn xml(doc: String) -> Response {
    let mut resp = doc.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    resp
}

/// The answer for a `To` that is no pool's number. A call is refused before it is answered
/// (<https://www.plivo.com/docs/voice/xml/hangup>), so the caller is not billed and hears
/// nothing from hush; a text gets no reply.
fn unknown_number(kind: Kind) -> String {
    match kind {
        Kind::Voice => r#"<Response><Hangup reason="rejected"/></Response>"#.into(),
        Kind::Sms => "<Response/>".into(),
    }
}

/// Renders the broker's decision for a call that is not recorded.
#[cfg(test)]
fn render(inbound: &Inbound, decision: &Decision, status_url: &str) -> String {
    render_with(inbound, decision, status_url, None)
}

/// Renders the broker's decision. `status_url` is where Plivo reports on a relayed text;
/// `recorded` when the session records its calls.
fn render_with(
    inbound: &Inbound,
    decision: &Decision,
    status_url: &str,
    recorded: Option<&Recorded>,
) -> String {
    match decision {
        // https://www.plivo.com/docs/voice/xml/dial: `callerId` is what the other party
        // sees, so it is the proxy number; both numbers in Plivo's digits-only form.
        // `timeLimit` ends the call after that many seconds.
        Decision::Connect {
            caller_id,
            to,
            call,
            ..
        } => format!(
            r#"<Response>{}<Dial callerId="{}"{}><Number>{}</Number></Dial></Response>"#,
            recorded
                .map(|r| record_element(r, call.max_call_secs))
                .unwrap_or_default(),
            xml_escape(caller_id.reveal_digits()),
            call.max_call_secs
                .map(|secs| format!(r#" timeLimit="{secs}""#))
                .unwrap_or_default(),
            xml_escape(to.reveal_digits()),
        ),
        // https://www.plivo.com/docs/messaging/xml/message. Message XML can send text only
        // (`type` allows `sms` alone), so MMS files are not relayed; a text without words
        // has nothing to send. The delivery report for the relayed text has a new
        // MessageUUID, so the callback URL carries the inbound one the interaction is
        // recorded under.
        Decision::Relay { from, to, .. } => match inbound.body.as_deref() {
            Some(body) if !body.is_empty() => format!(
                r#"<Response><Message src="{}" dst="{}" type="sms" callbackUrl="{}" callbackMethod="POST">{}</Message></Response>"#,
                xml_escape(from.reveal_digits()),
                xml_escape(to.reveal_digits()),
                xml_escape(&format!(
                    "{status_url}?ref={}",
                    query_escape(&inbound.provider_ref)
                )),
                xml_escape(body),
            ),
            _ => {
                tracing::debug!(
                    media = inbound.media.len(),
                    "plivo text without words: nothing XML can relay"
                );
                "<Response/>".into()
            }
        },
        Decision::Announce { message } => match (inbound.kind, &inbound.from) {
            (Kind::Voice, _) => format!(
                "<Response><Speak>{}</Speak><Hangup/></Response>",
                xml_escape(message)
            ),
            // The reply goes back to the sender, from the number it wrote to.
            (Kind::Sms, Some(sender)) => format!(
                r#"<Response><Message src="{}" dst="{}" type="sms">{}</Message></Response>"#,
                xml_escape(inbound.to.reveal_digits()),
                xml_escape(sender.reveal_digits()),
                xml_escape(message),
            ),
            // No number to reply to.
            (Kind::Sms, None) => "<Response/>".into(),
        },
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A status callback, as the interaction it updates.
#[derive(Debug, PartialEq, Eq)]
struct StatusUpdate {
    reference: String,
    proxy: E164,
    status: String,
    duration: Option<u32>,
    last: bool,
}

/// Reads a hangup callback (<https://www.plivo.com/docs/voice/xml/request>), a `Dial` action
/// callback (`DialStatus`, <https://www.plivo.com/docs/voice/xml/dial>) or a message delivery
/// report (<https://www.plivo.com/docs/messaging/api/message/message-status-callbacks>).
/// `None` when there is nothing hush could update.
fn parse_status(
    params: &[(String, String)],
    query: &[(String, String)],
) -> Result<Option<StatusUpdate>, ApiError> {
    let (reference, status, proxy, duration, last) = if let Some(call) = param(params, "CallUUID") {
        // Callbacks about an inbound call describe its first leg: `To` is the proxy number.
        let (status, last) = match (param(params, "DialStatus"), param(params, "CallStatus")) {
            // A `Dial` action reports how the dial ended. `completed` means the other party
            // answered: the caller's own hangup follows with the call's duration, so it is
            // not the last word. Any other dial status means the call reached nobody.
            (Some(dial), _) => (dial, !dial.eq_ignore_ascii_case("completed")),
            (None, Some(call)) => (call, is_final(call)),
            (None, None) => {
                return Err(ApiError::InvalidRequest(
                    "`CallStatus` or `DialStatus` is missing".into(),
                ));
            }
        };
        let duration = ["Duration", "BillDuration"]
            .iter()
            .find_map(|name| param(params, name).and_then(|d| d.trim().parse::<u32>().ok()));
        (call, status, required(params, "To")?, duration, last)
    } else if let Some(message) = param(params, "MessageUUID") {
        // A delivery report is about the relayed text, which the proxy number sent.
        let status = required(params, "Status")?;
        let reference = param(query, "ref").unwrap_or(message);
        (
            reference,
            status,
            required(params, "From")?,
            None,
            is_final(status),
        )
    } else {
        return Err(ApiError::InvalidRequest(
            "`CallUUID` or `MessageUUID` is missing".into(),
        ));
    };
    let status = status.trim().to_ascii_lowercase();
    // Both go into a stored record: keep to the characters Plivo uses.
    let plain = |s: &str, extra: &[u8]| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    };
    let Some(proxy) = number(proxy) else {
        return Ok(None);
    };
    if !plain(&status, b"-_") || !plain(reference, b"-_.:") {
        return Ok(None);
    }
    Ok(Some(StatusUpdate {
        reference: reference.to_string(),
        proxy,
        status,
        duration,
        last,
    }))
}

/// Whether a call or message status is the last one Plivo sends. Unknown statuses are not,
/// so a later final callback can still land.
fn is_final(status: &str) -> bool {
    matches!(
        status.trim().to_ascii_lowercase().as_str(),
        "completed"
            | "busy"
            | "failed"
            | "timeout"
            | "no-answer"
            | "cancel"
            | "canceled"
            | "cancelled"
            | "delivered"
            | "undelivered"
            | "rejected"
            | "read"
    )
}

async fn status(s: &AppState, hook: &Webhook) -> Response {
    let params = hook.form();
    let update = match parse_status(params, hook.query()) {
        Ok(Some(update)) => update,
        Ok(None) => return StatusCode::OK.into_response(),
        Err(e) => return e.into_response(),
    };
    match s
        .broker
        .interaction_status(
            PROVIDER,
            &update.reference,
            &update.proxy,
            &update.status,
            update.duration,
            update.last,
        )
        .await
    {
        // An unknown or already final reference is no error: Plivo reports on calls and
        // texts that reached nobody too, and would retry anything but a 2xx.
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
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
    fn hook(
        url: &str,
        method: Method,
        body: &str,
        sigs: Option<&str>,
        nonce: Option<&str>,
    ) -> Webhook {
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
        let url = "https://h/hooks/plivo/status";

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
                "https://h.test/hooks/plivo/status",
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
            "https://h.test/hooks/plivo/status",
            Some(&recorded(RecordChannels::Mono)),
        );
        assert!(
            mono.contains(r#"recordChannelType="mono" maxLength="14400""#),
            "{mono}"
        );
        assert!(!mono.contains("timeLimit"), "{mono}");
    }
}
