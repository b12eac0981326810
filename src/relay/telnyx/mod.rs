//! The Telnyx dialect: TeXML for calls, JSON events for texts. Every webhook is signed with
//! Ed25519 over `"{telnyx-timestamp}|{raw body}"` under the account's public key
//! (<https://developers.telnyx.com/docs/messaging/messages/receiving-webhooks>); a timestamp
//! more than five minutes from now is a replay. Calls are answered with TeXML, whose
//! requests carry Twilio's form fields. Texts are answered 200 at once and relayed through
//! `POST /v2/messages` by the outbound queue, so the provider never waits on a second API.

use std::sync::RwLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{Value, json};

use super::calls::answered;
use super::dialect::{
    self, CallApi, Dialect, Hook, Path, Read, Recorded, RestApi, Sent, bridge_url, status_url,
};
use super::outbound::{self, OutboundSms, SendError, Via};
use super::{Inbound, Webhook, forbidden, form_urlencoded, param, xml_escape};
use crate::broker::{CallStart, Decision, RecordingView, RelayOutcome};
use crate::config::Providers;
use crate::domain::E164;
use crate::domain::session::Kind;
use crate::http::calls::{CallError, Placed};
use crate::http::{ApiError, AppState};

/// The provider name interactions record.
const PROVIDER: &str = "telnyx";

/// How far a webhook's timestamp may be from now, either way, in seconds.
pub const MAX_SKEW_SECS: i64 = 300;

/// Telnyx's side of the [`Dialect`] contract.
pub struct Telnyx;

impl Dialect for Telnyx {
    const NAME: &'static str = PROVIDER;
    const PATHS: &'static [Path] = &[
        Path::post("/hooks/telnyx/voice", Hook::VOICE),
        Path::post("/hooks/telnyx/sms", Hook::SMS),
        Path::post("/hooks/telnyx/status", Hook::Status),
        Path::post("/hooks/telnyx/recording", Hook::Recording),
        Path::post("/hooks/telnyx/bridge", Hook::Bridge),
        Path::post("/hooks/telnyx/digits", Hook::Digits),
    ];

    /// Telnyx is enabled when the public key that checks its webhooks is set.
    fn enabled(p: &Providers) -> bool {
        p.telnyx_public_key
            .as_ref()
            .is_some_and(|k| !k.expose().trim().is_empty())
    }

    async fn verify(state: &AppState, _: Hook, hook: &Webhook) -> Result<(), Response> {
        verified(state, &hook.headers, &hook.body)
            .then_some(())
            .ok_or_else(forbidden)
    }

    async fn read(state: &AppState, kind: Kind, hook: &Webhook) -> Result<Read, ApiError> {
        match kind {
            Kind::Voice => read_call(&hook.body),
            Kind::Sms => read_text(state, &hook.body).await,
        }
    }

    async fn read_digits(_: &AppState, hook: &Webhook) -> Result<dialect::Digits, ApiError> {
        read_digits(&hook.body)
    }

    fn unrouted(kind: Kind) -> Response {
        match kind {
            Kind::Voice => texml(render_call(None)),
            // Not a pool's number: nothing to relay and nobody to answer.
            Kind::Sms => accepted(),
        }
    }

    async fn answer(state: &AppState, inbound: Inbound, outcome: RelayOutcome) -> Response {
        match inbound.kind {
            Kind::Voice => {
                let recorded = dialect::recorded::<Self>(state, &outcome);
                texml(render_call_with(
                    Some(&outcome.decision),
                    recorded.as_ref(),
                    &state.public_url,
                ))
            }
            Kind::Sms => {
                outbound::queue_answer(&state.broker, Via::Telnyx, inbound, outcome, accepted).await
            }
        }
    }

    async fn status(state: &AppState, hook: &Webhook) -> Response {
        status(state, &hook.body, super::param(hook.query(), "ref")).await
    }

    /// TeXML's recording callback carries Twilio's fields (`RecordingUrl`,
    /// `RecordingStatus`, `RecordingDuration`, `RecordingChannels`, `RecordingSid`)
    /// (<https://developers.telnyx.com/api-reference/callbacks/texml-recording-completed>),
    /// as a form or as a JSON object.
    fn read_recording(hook: &Webhook, channels: u8) -> Result<Option<RecordingView>, ApiError> {
        if !hook.body.trim_ascii_start().starts_with(b"{") {
            return super::twilio::read_recording(hook.form(), channels);
        }
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&hook.body) else {
            return Err(ApiError::InvalidRequest("the callback is not JSON".into()));
        };
        let params: Vec<(String, String)> = map
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                Value::Number(n) => Some((k, n.to_string())),
                _ => None,
            })
            .collect();
        super::twilio::read_recording(&params, channels)
    }

    fn recorded() -> Response {
        accepted()
    }
}

/// Calls the app starts are TeXML calls
/// (<https://developers.telnyx.com/api-reference/texml-rest-commands/initiate-an-outbound-call>):
/// the TeXML application rings `To` from `From` and fetches `Url` once answered, reporting
/// progress to `StatusCallback`; the API key is the bearer.
impl CallApi for Telnyx {
    fn places_calls(p: &Providers) -> bool {
        p.telnyx_api_key.is_some()
            && p.telnyx_account_sid.is_some()
            && p.telnyx_texml_app_id.is_some()
    }

    async fn place_call(
        http: &reqwest::Client,
        p: &Providers,
        public_url: &str,
        call: &CallStart,
    ) -> Placed {
        let (Some(key), Some(account), Some(app)) = (
            &p.telnyx_api_key,
            &p.telnyx_account_sid,
            &p.telnyx_texml_app_id,
        ) else {
            return Err(CallError::Refused(
                "telnyx has no TeXML application configured".into(),
            ));
        };
        let body = json!({
            "ApplicationSid": app,
            "To": call.to.reveal(),
            "From": call.proxy.reveal(),
            "Url": bridge_url::<Telnyx>(public_url, call),
            "UrlMethod": "POST",
            "StatusCallback": status_url::<Telnyx>(public_url, call),
            "StatusCallbackMethod": "POST",
        });
        let sent = http
            .post(format!(
                "{}/v2/texml/Accounts/{account}/Calls",
                p.telnyx_api_base
            ))
            .bearer_auth(key.expose())
            .json(&body)
            .send()
            .await;
        let answer = answered(PROVIDER, sent).await?;
        Ok(["/call_sid", "/sid", "/data/call_sid"]
            .iter()
            .find_map(|at| text_at(&answer, at))
            .map(str::to_string))
    }
}

/// Checks `signature_b64` over `"{timestamp}|{body}"` with the base64 Ed25519 public key.
/// With `now_secs`, a timestamp more than [`MAX_SKEW_SECS`] away from it fails too.
pub fn verify(
    public_key_b64: &str,
    timestamp: &str,
    signature_b64: &str,
    body: &[u8],
    now_secs: Option<i64>,
) -> bool {
    let Ok(ts) = timestamp.trim().parse::<i64>() else {
        return false;
    };
    if now_secs.is_some_and(|now| now.abs_diff(ts) > MAX_SKEW_SECS as u64) {
        return false;
    }
    let key = verifying_key(public_key_b64);
    let signature = B64
        .decode(signature_b64.trim())
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b));
    let (Some(key), Some(signature)) = (key, signature) else {
        return false;
    };
    let mut signed = Vec::with_capacity(timestamp.len() + 1 + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'|');
    signed.extend_from_slice(body);
    key.verify_strict(&signed, &signature).is_ok()
}

/// The public key, decoded once per process: decoding is a point decompression, about a
/// fifth of what checking a signature costs, and the key is the same on every request.
fn verifying_key(public_key_b64: &str) -> Option<VerifyingKey> {
    static DECODED: RwLock<Option<(String, VerifyingKey)>> = RwLock::new(None);
    if let Some((text, key)) = DECODED.read().expect("lock poisoned").as_ref()
        && text == public_key_b64
    {
        return Some(*key);
    }
    let key = B64
        .decode(public_key_b64.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())?;
    *DECODED.write().expect("lock poisoned") = Some((public_key_b64.to_string(), key));
    Some(key)
}

/// The signature check every route runs before it reads anything else.
fn verified(state: &AppState, headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(key), Some(ts), Some(sig)) = (
        state.config.providers.telnyx_public_key.as_ref(),
        get("telnyx-timestamp"),
        get("telnyx-signature-ed25519"),
    ) else {
        return false;
    };
    let ok = verify(
        key.expose(),
        ts,
        sig,
        body,
        Some(state.broker.now_ms().div_euclid(1000)),
    );
    if !ok {
        tracing::debug!("telnyx webhook with a bad or stale signature");
    }
    ok
}

// ---- voice (TeXML)

const XML_HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// TeXML's range for `timeLimit`, in seconds
/// (<https://developers.telnyx.com/docs/voice/programmable-voice/texml-verbs/dial>).
const TIME_LIMIT_SECS: (u32, u32) = (60, 14_400);

/// The TeXML answer to a call that is not recorded.
pub fn render_call(decision: Option<&Decision>) -> String {
    render_call_with(decision, None, "")
}

/// The TeXML answer to a call, from hush at `public_url`; `recorded` when the session
/// records its calls. `<Dial>` takes TwiML's recording attributes, and a time limit within
/// TeXML's range.
pub fn render_call_with(
    decision: Option<&Decision>,
    recorded: Option<&Recorded>,
    public_url: &str,
) -> String {
    let body = match decision {
        Some(Decision::Connect {
            caller_id,
            to,
            call,
            ..
        }) => format!(
            r#"<Dial callerId="{}"{}{}><Number>{}</Number></Dial>"#,
            xml_escape(caller_id.reveal()),
            call.max_call_secs
                .map(|secs| format!(
                    r#" timeLimit="{}""#,
                    secs.clamp(TIME_LIMIT_SECS.0, TIME_LIMIT_SECS.1)
                ))
                .unwrap_or_default(),
            recorded
                .map(super::twilio::dial_recording)
                .unwrap_or_default(),
            xml_escape(to.reveal())
        ),
        Some(Decision::Announce { message }) => {
            format!("<Say>{}</Say><Hangup/>", xml_escape(message))
        }
        Some(Decision::Gather {
            digits,
            attempt,
            timeout_secs,
            prompt,
        }) => gather(
            *digits,
            *timeout_secs,
            prompt,
            &dialect::digits_url::<Telnyx>(public_url, *attempt),
        ),
        // A number that is no pool's, or an answer that is not a call's.
        Some(Decision::Relay { .. }) | None => "<Reject/>".into(),
    };
    format!("{XML_HEAD}<Response>{body}</Response>")
}

/// TeXML's range for `<Gather timeout>`, in seconds
/// (<https://developers.telnyx.com/docs/voice/programmable-voice/texml-verbs/gather>).
const GATHER_TIMEOUT_SECS: (u32, u32) = (1, 120);

/// A PIN prompt. TeXML's `<Gather>` documents no `method` (its `action` is requested with
/// the TeXML application's method) and no `actionOnEmptyResult`, so nothing says silence
/// reaches `action`; the `<Redirect>` after it
/// (<https://developers.telnyx.com/docs/voice/programmable-voice/texml-verbs/redirect>)
/// asks the same URL when the prompt ends with nothing typed, and is never reached once
/// `action` took the call. Either way hush hears of the prompt exactly once, and decides
/// what silence means. The prompt is inside `<Gather>`, so typing may start while it
/// plays; `numDigits` ends the prompt as soon as a whole PIN came.
fn gather(digits: u8, timeout_secs: u32, prompt: &str, digits_url: &str) -> String {
    let url = xml_escape(digits_url);
    format!(
        r#"<Gather input="dtmf" numDigits="{digits}" timeout="{}" action="{url}"><Say>{}</Say></Gather><Redirect method="POST">{url}</Redirect>"#,
        timeout_secs.clamp(GATHER_TIMEOUT_SECS.0, GATHER_TIMEOUT_SECS.1),
        xml_escape(prompt),
    )
}

fn texml(doc: String) -> Response {
    let mut resp = doc.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    resp
}

/// Reads the end of a PIN prompt: the `<Gather>` action or the `<Redirect>` after it, both
/// TeXML requests with the call's form fields (`CallSid`, `From`, `To`), the first with
/// `Digits`. A finishing `#` (`finishOnKey`'s default) is not part of a PIN.
fn read_digits(body: &[u8]) -> Result<dialect::Digits, ApiError> {
    let form = form_urlencoded(body);
    let (Some(call), Some(to)) = (param(&form, "CallSid"), param(&form, "To")) else {
        return Err(ApiError::InvalidRequest(
            "a TeXML digits request needs CallSid and To".into(),
        ));
    };
    if call.is_empty() {
        return Err(ApiError::InvalidRequest(
            "a TeXML digits request needs a CallSid".into(),
        ));
    }
    let to = E164::parse_syntax(to).map_err(|_| {
        ApiError::InvalidRequest("the `To` parameter is not an E.164 number".into())
    })?;
    let from = param(&form, "From").and_then(|f| E164::parse_syntax(f).ok());
    let digits = param(&form, "Digits").unwrap_or_default().trim();
    Ok(dialect::Digits {
        call: Inbound::call(from, to, call.to_string()),
        digits: digits.strip_suffix('#').unwrap_or(digits).to_string(),
    })
}

/// Reads a TeXML call request: Twilio's form fields.
fn read_call(body: &[u8]) -> Result<Read, ApiError> {
    let form = form_urlencoded(body);
    let (Some(call), Some(to)) = (param(&form, "CallSid"), param(&form, "To")) else {
        return Err(ApiError::InvalidRequest(
            "a TeXML call request needs CallSid and To".into(),
        ));
    };
    let Ok(to) = E164::parse_syntax(to) else {
        return Ok(Read::Answered(texml(render_call(None))));
    };
    // A withheld or unusable caller ID reaches nobody; the broker answers it.
    let from = param(&form, "From").and_then(|f| E164::parse_syntax(f).ok());
    Ok(Read::Route(Inbound::call(from, to, call.to_string())))
}

// ---- texts (JSON events)

/// An inbound text, as read from a `message.received` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundText {
    pub id: String,
    pub from: Option<String>,
    pub to: String,
    pub text: String,
    pub media: Vec<String>,
}

fn text_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Reads a `message.received` event; `None` for any other event or a malformed one.
pub fn parse_received(event: &Value) -> Option<InboundText> {
    if text_at(event, "/data/event_type") != Some("message.received") {
        return None;
    }
    let p = event.pointer("/data/payload")?;
    Some(InboundText {
        // The message's id; the event's id when a payload has none.
        id: text_at(p, "/id")
            .or_else(|| text_at(event, "/data/id"))?
            .to_string(),
        from: text_at(p, "/from/phone_number").map(str::to_string),
        to: text_at(p, "/to/0/phone_number")?.to_string(),
        text: text_at(p, "/text").unwrap_or_default().to_string(),
        media: p
            .get("media")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|m| text_at(m, "/url").map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn accepted() -> Response {
    StatusCode::OK.into_response()
}

/// Reads a messaging event: a received text to route, or a report on one hush sent.
async fn read_text(state: &AppState, body: &[u8]) -> Result<Read, ApiError> {
    let Ok(event) = serde_json::from_slice::<Value>(body) else {
        return Err(ApiError::InvalidRequest("the event is not JSON".into()));
    };
    let Some(msg) = parse_received(&event) else {
        // A messaging profile has one webhook URL: delivery reports for the texts hush sent
        // arrive here too.
        return Ok(Read::Answered(message_report(state, &event).await));
    };
    let Ok(to) = E164::parse_syntax(&msg.to) else {
        return Ok(Read::Answered(accepted()));
    };
    let from = msg.from.as_deref().and_then(|f| E164::parse_syntax(f).ok());
    Ok(Read::Route(Inbound::text(
        from, to, msg.text, msg.media, msg.id,
    )))
}

// ---- status callbacks

/// Call statuses after which nothing more happens to a call.
fn call_is_over(status: &str) -> bool {
    matches!(
        status,
        "completed" | "busy" | "no-answer" | "failed" | "canceled"
    )
}

async fn status(state: &AppState, body: &[u8], ours: Option<&str>) -> Response {
    if body.trim_ascii_start().starts_with(b"{") {
        return match serde_json::from_slice::<Value>(body) {
            Ok(event) => message_report(state, &event).await,
            Err(_) => ApiError::InvalidRequest("the event is not JSON".into()).into_response(),
        };
    }
    // A TeXML status callback: Twilio's form fields.
    let form = form_urlencoded(body);
    let (Some(call), Some(status)) = (param(&form, "CallSid"), param(&form, "CallStatus")) else {
        return ApiError::InvalidRequest("a call status needs CallSid and CallStatus".into())
            .into_response();
    };
    let duration = param(&form, "CallDuration").and_then(|d| d.parse().ok());
    let last = call_is_over(status);
    // Status callbacks report on the inbound call, whose called number is the proxy; a call
    // hush placed for the app names its interaction as `ref` in the signed URL, and comes
    // from the proxy.
    let (call, proxy) = match ours {
        Some(ours) => (ours, param(&form, "From")),
        None => (call, param(&form, "To")),
    };
    let Some(proxy) = proxy.and_then(|n| E164::parse_syntax(n).ok()) else {
        return accepted();
    };
    if let Err(e) = state
        .broker
        .interaction_status(PROVIDER, call, &proxy, status, duration, last)
        .await
    {
        return ApiError::from(e).into_response();
    }
    accepted()
}

/// Applies a `message.sent` or `message.finalized` event about a text hush sent.
async fn message_report(state: &AppState, event: &Value) -> Response {
    let kind = text_at(event, "/data/event_type").unwrap_or_default();
    let last = match kind {
        "message.sent" => false,
        "message.finalized" => true,
        _ => return accepted(),
    };
    let p = event.pointer("/data/payload").unwrap_or(&Value::Null);
    let (Some(id), Some(proxy), Some(status)) = (
        text_at(p, "/id"),
        text_at(p, "/from/phone_number").and_then(|n| E164::parse_syntax(n).ok()),
        text_at(p, "/to/0/status"),
    ) else {
        return accepted();
    };
    match outbound::delivery_report(&state.broker, PROVIDER, id, &proxy, status, last).await {
        Ok(_) => accepted(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

// ---- sending

impl RestApi for Telnyx {
    async fn send_text(http: &reqwest::Client, p: &Providers, msg: &OutboundSms) -> Sent {
        post_message(http, p, msg).await
    }
}

/// Sends a text through `POST {HUSH_TELNYX_API_BASE}/v2/messages`.
pub async fn send(
    http: &reqwest::Client,
    providers: &Providers,
    msg: &OutboundSms,
) -> Result<(), SendError> {
    post_message(http, providers, msg).await.map(|_| ())
}

/// As [`send`], returning Telnyx's id for the message (its delivery reports name it).
/// 2xx is sent; 429, 5xx and transport failures are worth retrying; other answers refuse
/// the text for good.
pub async fn post_message(
    http: &reqwest::Client,
    providers: &Providers,
    msg: &OutboundSms,
) -> Result<Option<String>, SendError> {
    let Some(key) = providers.telnyx_api_key.as_ref() else {
        return Err(SendError::Permanent(
            "HUSH_TELNYX_API_KEY is not set".into(),
        ));
    };
    let mut body = json!({
        "from": msg.from.reveal(),
        "to": msg.to.reveal(),
        "text": msg.text,
    });
    if !msg.media.is_empty() {
        body["media_urls"] = json!(msg.media);
        if msg.text.is_empty() {
            // A picture without words: Telnyx takes an MMS without text, not with an empty one.
            body.as_object_mut().map(|o| o.remove("text"));
        }
    }
    let resp = http
        .post(format!("{}/v2/messages", providers.telnyx_api_base))
        .bearer_auth(key.expose())
        .json(&body)
        .send()
        .await;
    let answer = super::rest_answer("the Telnyx API", resp).await?;
    Ok(answer
        .pointer("/data/id")
        .and_then(Value::as_str)
        .map(str::to_string))
}

#[cfg(test)]
mod tests;
