//! The Plivo dialect: verifies `X-Plivo-Signature-V3`, parses Plivo's form posts (numbers as
//! digits without `+`) into an [`Inbound`], and answers in Plivo XML. Its routes: the answer
//! URL of calls, the message URL of texts, one status URL for hangup, dial and message
//! delivery callbacks, and the URLs its own documents name (recordings, bridges, PIN
//! prompts). Nothing here touches Redis: the broker decides, this module translates.

mod calls;
mod digits;
mod messages;

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
    /// Calls the app starts fetch `/hooks/plivo/bridge` once answered; a PIN prompt reports
    /// to `/hooks/plivo/digits`.
    const PATHS: &'static [Path] = &[
        Path::post("/hooks/plivo/voice", Hook::VOICE),
        Path::post("/hooks/plivo/sms", Hook::SMS),
        Path::post(STATUS_PATH, Hook::Status),
        Path::post(RECORDING_PATH, Hook::Recording),
        Path::post("/hooks/plivo/bridge", Hook::Bridge),
        Path::post("/hooks/plivo/digits", Hook::Digits),
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

    async fn read_digits(_: &AppState, hook: &Webhook) -> Result<dialect::Digits, ApiError> {
        digits::read(hook.form())
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
        let recorded = dialect::recorded::<Self>(s, &outcome);
        xml(render_with(
            &inbound,
            &outcome.decision,
            &s.public_url,
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
fn render(inbound: &Inbound, decision: &Decision, public_url: &str) -> String {
    render_with(inbound, decision, public_url, None)
}

/// Renders the broker's decision. `public_url` is where hush is reached: Plivo reports on a
/// relayed text and a PIN prompt there. `recorded` when the session records its calls.
fn render_with(
    inbound: &Inbound,
    decision: &Decision,
    public_url: &str,
    recorded: Option<&Recorded>,
) -> String {
    let status_url = format!("{public_url}{STATUS_PATH}");
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
        Decision::Gather {
            digits,
            attempt,
            timeout_secs,
            prompt,
        } => digits::gather(
            *digits,
            *timeout_secs,
            prompt,
            &dialect::digits_url::<Plivo>(public_url, *attempt),
        ),
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
        // A call hush placed for the app names its interaction as `ref` in the signed URL,
        // and comes from the proxy number.
        match param(query, "ref") {
            Some(ours) => (ours, status, required(params, "From")?, duration, last),
            None => (call, status, required(params, "To")?, duration, last),
        }
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
mod tests;
