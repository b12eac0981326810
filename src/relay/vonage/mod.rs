//! The Vonage dialect. Voice webhooks (answer, event, PIN digits) carry a JWT signed HS256
//! with the account's signature secret and are answered with NCCO JSON; inbound SMS carry a
//! `sig` parameter made with the account's signature method, are answered `204` at once, and
//! the relayed text leaves later through Vonage's SMS API ([`send`], called by the outbound
//! queue); the SMS API's delivery receipts, signed the same way, may come to the same hook.
//! Vonage writes numbers as digits without `+`, in both directions.

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::outbound::{self, OutboundSms, SendError, Via};
pub mod calls;
mod digits;
mod sign;

use super::dialect::{self, Dialect, Hook, Path, Read, Recorded, RestApi, Sent};
use super::{Inbound, Params, Webhook, forbidden, param};
use crate::broker::{Decision, RecordingView, RelayOutcome};
use crate::config::Providers;
use crate::domain::session::Kind;
use crate::domain::{E164, RecordChannels};
use crate::http::{ApiError, AppState, scrub};
use sign::{check_voice, sms_signed};

/// The provider name interactions are recorded under.
const PROVIDER: &str = "vonage";

/// Vonage's side of the [`Dialect`] contract.
pub struct Vonage;

impl Dialect for Vonage {
    const NAME: &'static str = PROVIDER;
    /// `answer_url` and `event_url` of the Vonage application, and the account's inbound
    /// SMS webhook. Answer and SMS may be configured as GET or POST in Vonage's dashboard.
    const PATHS: &'static [Path] = &[
        Path::get_or_post("/hooks/vonage/answer", Hook::VOICE),
        Path::post("/hooks/vonage/event", Hook::Status),
        Path::get_or_post("/hooks/vonage/sms", Hook::SMS),
        Path::post("/hooks/vonage/recording", Hook::Recording),
        Path::get_or_post("/hooks/vonage/bridge", Hook::Bridge),
        Path::get_or_post("/hooks/vonage/digits", Hook::Digits),
    ];

    /// Vonage is enabled when its signature secret is set: both kinds of webhook are signed
    /// with it, so without it nothing could be verified.
    fn enabled(p: &Providers) -> bool {
        p.vonage_signature_secret
            .as_ref()
            .is_some_and(|s| !s.expose().is_empty())
    }

    async fn verify(s: &AppState, hook: Hook, w: &Webhook) -> Result<(), Response> {
        match hook {
            Hook::Inbound(Kind::Voice)
            | Hook::Status
            | Hook::Recording
            | Hook::Bridge
            | Hook::Digits => check_voice(s, w).await,
            Hook::Inbound(Kind::Sms) => sms_signed(s, w).then_some(()).ok_or_else(forbidden),
        }
    }

    async fn read(s: &AppState, kind: Kind, w: &Webhook) -> Result<Read, ApiError> {
        match kind {
            Kind::Voice => read_call(w),
            Kind::Sms => match receipt(w) {
                Some(r) => Ok(Read::Answered(delivery_receipt(s, r).await)),
                None => Ok(read_text(w)),
            },
        }
    }

    async fn read_digits(_: &AppState, w: &Webhook) -> Result<dialect::Digits, ApiError> {
        digits::read(w)
    }

    fn unrouted(kind: Kind) -> Response {
        match kind {
            Kind::Voice => ncco(reject()),
            Kind::Sms => no_content(),
        }
    }

    async fn answer(s: &AppState, inbound: Inbound, outcome: RelayOutcome) -> Response {
        match inbound.kind {
            Kind::Voice => {
                let recorded = dialect::recorded::<Self>(s, &outcome);
                ncco(voice_ncco_with(
                    &outcome.decision,
                    recorded.as_ref(),
                    &s.public_url,
                ))
            }
            // Queued even when this is a resent webhook: if the first attempt failed after
            // the broker recorded it, this is the text's only chance.
            Kind::Sms => {
                outbound::queue_answer(&s.broker, Via::Vonage, inbound, outcome, no_content).await
            }
        }
    }

    async fn status(s: &AppState, w: &Webhook) -> Response {
        event(s, w).await
    }

    /// The `record` action's event: `recording_url`, `recording_uuid`, `start_time` and
    /// `end_time` (<https://developer.vonage.com/en/voice/voice-api/webhook-reference#recording>).
    /// Vonage does not say how many channels: the action asked for them.
    fn read_recording(w: &Webhook, channels: u8) -> Result<Option<RecordingView>, ApiError> {
        let Some(p) = params(w) else {
            return Err(ApiError::InvalidRequest(
                "the webhook parameters could not be read".into(),
            ));
        };
        let Some(url) = param(p, "recording_url").filter(|u| !u.is_empty()) else {
            return Err(ApiError::InvalidRequest(
                "the `recording_url` parameter is missing".into(),
            ));
        };
        let at = |name: &str| {
            param(p, name).and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
        };
        let duration_secs = match (at("start_time"), at("end_time")) {
            (Some(start), Some(end)) if end >= start => {
                u32::try_from((end - start).whole_seconds()).ok()
            }
            _ => None,
        };
        Ok(Some(RecordingView {
            url: url.to_string(),
            duration_secs,
            channels,
            provider_recording_id: param(p, "recording_uuid").map(str::to_string),
        }))
    }

    fn recorded() -> Response {
        no_content()
    }
}

// ---- handlers

/// An inbound call was answered by Vonage, which asks what to do with it.
/// <https://developer.vonage.com/en/voice/voice-api/webhook-reference#answer-webhook>
fn read_call(w: &Webhook) -> Result<Read, ApiError> {
    let Some(p) = params(w) else {
        return Err(ApiError::InvalidRequest(
            "the webhook parameters could not be read".into(),
        ));
    };
    // A `to` that is no number (a SIP or app endpoint) is no pool's number either.
    let Some(to) = number(param(p, "to")) else {
        return Ok(Read::Answered(ncco(reject())));
    };
    // Withheld callers come as `Unknown`, `Restricted` or nothing: they hold no route and
    // hear the out-of-session message.
    let from = number(param(p, "from"));
    let uuid = param(p, "uuid").unwrap_or_default();
    Ok(Read::Route(Inbound::call(from, to, uuid.to_string())))
}

/// Call progress. Only the inbound leg is the interaction hush recorded (its `uuid` is the
/// one the answer webhook carried); the leg hush's `connect` placed has a uuid of its own.
/// <https://developer.vonage.com/en/voice/voice-api/webhook-reference#event-webhook>
async fn event(s: &AppState, w: &Webhook) -> Response {
    let Some(p) = params(w) else {
        return ApiError::InvalidRequest("the webhook parameters could not be read".into())
            .into_response();
    };
    // Other events (recordings, input, transfers) carry no call status: nothing to update.
    let (Some(uuid), Some(raw)) = (param(p, "uuid"), param(p, "status")) else {
        return no_content();
    };
    // A call hush placed for the app names its interaction as `ref` in the signed URL, and
    // its legs come from the proxy number; otherwise only the inbound leg is reported on.
    let (reference, proxy) = match super::param(w.query(), "ref") {
        Some(ours) => (ours, param(p, "from")),
        None if param(p, "direction") == Some("outbound") => return no_content(),
        None => (uuid, param(p, "to")),
    };
    if !is_provider_ref(reference) {
        return no_content();
    }
    let Some((status, last)) = call_status(raw) else {
        return no_content();
    };
    let Some(proxy) = number(proxy) else {
        return no_content();
    };
    let duration = last
        .then(|| param(p, "duration").and_then(|d| d.trim().parse::<u32>().ok()))
        .flatten();
    match s
        .broker
        .interaction_status(PROVIDER, reference, &proxy, &status, duration, last)
        .await
    {
        Ok(_) => no_content(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A delivery receipt of the SMS API: `messageId` names the text hush sent, `to` the proxy
/// number it went from, `status` how it fared.
/// <https://developer.vonage.com/en/messaging/sms/guides/delivery-receipts>
struct Receipt<'a> {
    message_id: &'a str,
    proxy: E164,
    status: &'a str,
}

/// The receipt these signed SMS-webhook parameters are, if they are one: a receipt has a
/// `status` and no `text`.
fn receipt(w: &Webhook) -> Option<Receipt<'_>> {
    let p = params(w)?;
    if param(p, "text").is_some() {
        return None;
    }
    Some(Receipt {
        message_id: param(p, "messageId")?,
        proxy: number(param(p, "to"))?,
        status: param(p, "status")?,
    })
}

/// Applies a delivery receipt to the interaction of the text it reports on (found by the
/// message id the SMS API answered); a receipt about anything else changes nothing.
async fn delivery_receipt(s: &AppState, r: Receipt<'_>) -> Response {
    let status = r.status.trim().to_ascii_lowercase();
    if status.is_empty() || status.len() > 32 || !status.bytes().all(|b| b.is_ascii_lowercase()) {
        return no_content();
    }
    // `accepted` and `buffered` are on the way; `unknown` may still turn into an answer.
    let last = matches!(
        status.as_str(),
        "delivered" | "expired" | "failed" | "rejected"
    );
    match outbound::delivery_report(&s.broker, PROVIDER, r.message_id, &r.proxy, &status, last)
        .await
    {
        Ok(_) => no_content(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Reads an inbound text, answered `204` as soon as the text to send is recorded; Vonage
/// resends for 24 hours anything not answered 200/204, and a resent message has the same
/// `messageId`, so it is relayed once.
/// <https://developer.vonage.com/en/messaging/sms/guides/inbound-sms>
///
/// Long texts reach hush as several webhooks (`concat`, `concat-ref`, `concat-part`), each
/// with its own `messageId`. Reassembling them would need state shared by every instance,
/// which a dialect does not hold, so each part is relayed as it comes; phones show the
/// parts as separate texts, in the order the network delivers them.
///
/// Anything else that reaches the SMS webhook is answered `204` at once (delivery receipts
/// are read before, see [`receipt`]).
fn read_text(w: &Webhook) -> Read {
    // The signature check has read these parameters already.
    let Some(p) = params(w) else {
        return Read::Answered(forbidden());
    };
    // Binary messages carry no `text`: not a text between participants.
    let (Some(id), Some(text)) = (param(p, "messageId"), param(p, "text")) else {
        return Read::Answered(no_content());
    };
    if param(p, "type") == Some("binary") {
        return Read::Answered(no_content());
    }
    let Some(to) = number(param(p, "to")) else {
        return Read::Answered(no_content());
    };
    let from = number(param(p, "msisdn"));
    Read::Route(Inbound::text(
        from,
        to,
        text.to_string(),
        Vec::new(),
        id.to_string(),
    ))
}

// ---- requests

/// The parameters of a webhook, whichever way Vonage sent them: the query of a GET, the JSON
/// object of a POST-JSON, or the form of a POST. `None` when a body does not parse.
/// JSON scalars other than strings are taken as their JSON text (`1`, `true`). Read once per
/// request: the signature check of a text reads them, and so does the reading after it.
fn params(w: &Webhook) -> Option<&[(String, String)]> {
    if w.method == Method::GET {
        return Some(w.query());
    }
    if !is_json(w) {
        return Some(w.form());
    }
    w.params_with(json_params)
}

/// Whether the webhook's parameters are a JSON body (a POST saying so).
fn is_json(w: &Webhook) -> bool {
    w.method != Method::GET
        && w.header(header::CONTENT_TYPE.as_str())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

fn json_params(w: &Webhook) -> Option<Params> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&w.body) else {
        return None;
    };
    Some(
        map.into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                Value::Number(_) | Value::Bool(_) => Some((k, v.to_string())),
                _ => None,
            })
            .collect(),
    )
}

/// A number as Vonage writes it (`14155550123`, sometimes with `+`) in E.164 form. Only the
/// form is checked, as routing does: an unknown number simply matches nothing.
fn number(raw: Option<&str>) -> Option<E164> {
    let raw = raw?.trim();
    let digits = raw.strip_prefix('+').unwrap_or(raw);
    E164::parse_syntax(&format!("+{digits}")).ok()
}

/// The same shape the broker accepts for a provider reference: a call uuid is fine, a key
/// fragment is not.
fn is_provider_ref(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

// ---- NCCO

fn ncco(actions: Value) -> Response {
    axum::Json(actions).into_response()
}

/// A call to a number of no pool. An NCCO ends the call when its last action ends, so an
/// NCCO without actions hangs up at once, without a word: hush does not announce itself
/// to callers it has nothing for.
/// <https://developer.vonage.com/en/voice/voice-api/ncco-reference>
fn reject() -> Value {
    json!([])
}

/// Vonage's longest call: `limit` on `connect` may not exceed it
/// (<https://developer.vonage.com/en/voice/voice-api/ncco-reference#connect>).
const LONGEST_CALL_SECS: u32 = 7200;

/// The NCCO of a routing decision for a call that is not recorded.
#[cfg(test)]
fn voice_ncco(decision: &Decision) -> Value {
    voice_ncco_with(decision, None, "https://h.test")
}

/// The NCCO of a routing decision. `connect` dials the other party showing the proxy number
/// (`from`); `talk` speaks the pool's message, after which the NCCO ends and so does the call.
/// A recorded call starts with a `record` action, which runs beside what follows until the
/// call ends; `split: conversation` with two channels puts each party on its own
/// (<https://developer.vonage.com/en/voice/voice-api/ncco-reference#record>).
/// A PIN prompt's result goes to the digits hook under `public_url`, naming its attempt.
fn voice_ncco_with(decision: &Decision, recorded: Option<&Recorded>, public_url: &str) -> Value {
    match decision {
        Decision::Connect {
            caller_id,
            to,
            call,
            ..
        } => {
            let mut connect = json!({
                "action": "connect",
                "from": caller_id.reveal_digits(),
                "endpoint": [{ "type": "phone", "number": to.reveal_digits() }],
            });
            if let Some(secs) = call.max_call_secs {
                connect["limit"] = json!(secs.min(LONGEST_CALL_SECS));
            }
            let Some(r) = recorded else {
                return json!([connect]);
            };
            let mut record = json!({
                "action": "record",
                "eventUrl": [r.callback],
                "eventMethod": "POST",
            });
            if r.channels == RecordChannels::Dual {
                record["split"] = json!("conversation");
                record["channels"] = json!(2);
            }
            json!([record, connect])
        }
        Decision::Gather {
            digits,
            attempt,
            timeout_secs,
            prompt,
        } => digits::gather(
            *digits,
            *timeout_secs,
            prompt,
            &dialect::digits_url::<Vonage>(public_url, *attempt),
        ),
        Decision::Announce { message } => json!([{ "action": "talk", "text": message }]),
        Decision::Relay { .. } => reject(),
    }
}

/// A Vonage call status as an interaction status (the vocabulary the API documents, shared
/// by every provider) and whether it is final. `None` for statuses that are not about the
/// call's progress (answering-machine detection).
/// <https://developer.vonage.com/en/voice/voice-api/guides/call-flow#event-objects>
fn call_status(raw: &str) -> Option<(String, bool)> {
    let raw = raw.trim().to_ascii_lowercase();
    let (status, last) = match raw.as_str() {
        "" | "machine" | "human" => return None,
        "answered" => ("in-progress", false),
        "timeout" | "unanswered" => ("no-answer", true),
        "cancelled" => ("canceled", true),
        "completed" | "busy" | "failed" | "rejected" => (raw.as_str(), true),
        other => (other, false),
    };
    Some((status.replace(['_', ' '], "-"), last))
}

// ---- sending

/// The id the SMS API gives the text (its first part's, for a long one) is what its delivery
/// receipts name.
impl RestApi for Vonage {
    async fn send_text(http: &reqwest::Client, p: &Providers, msg: &OutboundSms) -> Sent {
        send_message(http, p, msg).await
    }
}

/// [`send_message`], without the message id.
pub async fn send(
    http: &reqwest::Client,
    p: &Providers,
    msg: &OutboundSms,
) -> Result<(), SendError> {
    send_message(http, p, msg).await.map(|_| ())
}

/// Sends one text through Vonage's SMS API, from the proxy number to the other party.
/// `type=unicode` keeps any character intact (Vonage would otherwise take the text as GSM-7
/// and mangle emoji); Vonage splits a long text into parts itself.
/// <https://developer.vonage.com/en/api/sms#send-an-sms>
///
/// Time limits are `http`'s own: the queue sets them to fit its leases.
/// Timeouts, unreachable hosts, HTTP 429 and 5xx are worth retrying; so are the statuses
/// Vonage documents as transient (throttled, internal error, too many binds). Anything else
/// is refused for good, and so is a text Vonage accepted only some parts of: sending it again
/// would repeat the parts already on their way.
pub async fn send_message(
    http: &reqwest::Client,
    p: &Providers,
    msg: &OutboundSms,
) -> Result<Option<String>, SendError> {
    let (Some(key), Some(secret)) = (&p.vonage_api_key, &p.vonage_api_secret) else {
        return Err(SendError::Permanent(
            "HUSH_VONAGE_API_KEY and HUSH_VONAGE_API_SECRET must be set to send texts".into(),
        ));
    };
    let form = [
        ("api_key", key.expose().as_str()),
        ("api_secret", secret.expose().as_str()),
        ("from", msg.from.reveal_digits()),
        ("to", msg.to.reveal_digits()),
        ("text", msg.text.as_str()),
        ("type", "unicode"),
    ];
    let resp = http
        .post(format!("{}/sms/json", p.vonage_api_base))
        .form(&form)
        .send()
        .await
        .map_err(|e| SendError::Retry(format!("Vonage SMS API: {}", e.without_url())))?;
    let status = resp.status();
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Err(SendError::Retry(format!(
            "Vonage SMS API answered HTTP {status}"
        )));
    }
    if !status.is_success() {
        return Err(SendError::Permanent(format!(
            "Vonage SMS API answered HTTP {status}"
        )));
    }
    // A 2xx without the documented body is not an acceptance, and most likely came from
    // something in between rather than from Vonage.
    let body: Value = resp.json().await.map_err(|e| {
        SendError::Retry(format!(
            "Vonage SMS API answer unreadable: {}",
            e.without_url()
        ))
    })?;
    outcome(&body)?;
    Ok(body["messages"][0]["message-id"]
        .as_str()
        .map(str::to_string))
}

/// Reads the `messages[].status` of an SMS API answer: `"0"` for each part is success.
/// <https://developer.vonage.com/en/messaging/sms/guides/troubleshooting-sms>
fn outcome(body: &Value) -> Result<(), SendError> {
    let Some(parts) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return Err(SendError::Retry(
            "Vonage SMS API answer holds no message status".into(),
        ));
    };
    let code = |m: &Value| match &m["status"] {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let accepted = parts.iter().filter(|m| code(m) == "0").count();
    let Some(failed) = parts.iter().find(|m| code(m) != "0") else {
        return Ok(());
    };
    // Error texts are Vonage's words, but scrubbed in case one quotes a number.
    let why = format!(
        "Vonage SMS status {}: {}",
        code(failed),
        scrub(failed["error-text"].as_str().unwrap_or("no error text"))
    );
    if accepted > 0 {
        return Err(SendError::Permanent(format!(
            "{why} ({accepted} of {} parts accepted)",
            parts.len()
        )));
    }
    let transient = |m: &Value| matches!(code(m).as_str(), "1" | "5" | "10");
    if parts.iter().all(transient) {
        Err(SendError::Retry(why))
    } else {
        Err(SendError::Permanent(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_arrive_as_digits() {
        let n = number(Some("14155550100")).unwrap();
        assert_eq!(n.reveal(), "+14155550100");
        assert_eq!(number(Some("+14155550100")), Some(n));
        for bad in [
            "",
            "Unknown",
            "Restricted",
            "sip:alice@example.com",
            "0123456789",
        ] {
            assert_eq!(number(Some(bad)), None, "{bad:?}");
        }
        assert_eq!(number(None), None);
    }

    #[test]
    fn decisions_render_as_ncco() {
        let proxy = E164::parse_syntax("+12015550100").unwrap();
        let other = E164::parse_syntax("+14155550101").unwrap();
        let connect = Decision::Connect {
            session_id: "ses_x".into(),
            caller_id: proxy,
            to: other,
            call: Default::default(),
        };
        assert_eq!(
            voice_ncco(&connect),
            json!([{
                "action": "connect",
                "from": "12015550100",
                "endpoint": [{ "type": "phone", "number": "14155550101" }],
            }])
        );
        let announce = Decision::Announce {
            message: "Ended <&> 😀".into(),
        };
        assert_eq!(
            voice_ncco(&announce),
            json!([{ "action": "talk", "text": "Ended <&> 😀" }])
        );
    }

    #[test]
    fn a_pin_prompt_reports_to_the_digits_hook_naming_its_attempt() {
        let gather = |attempt| Decision::Gather {
            digits: 6,
            attempt,
            timeout_secs: 4,
            prompt: "Enter the PIN <you> got & press \"#\"".into(),
        };
        assert_eq!(
            voice_ncco(&gather(1)),
            json!([
                {
                    "action": "talk",
                    "text": "Enter the PIN <you> got & press \"#\"",
                    "bargeIn": true,
                },
                {
                    "action": "input",
                    "type": ["dtmf"],
                    "dtmf": { "maxDigits": 6, "timeOut": 4, "submitOnHash": true },
                    "eventUrl": ["https://h.test/hooks/vonage/digits?attempt=1"],
                    "eventMethod": "POST",
                },
            ])
        );
        assert_eq!(
            voice_ncco(&gather(3))[1]["eventUrl"],
            json!(["https://h.test/hooks/vonage/digits?attempt=3"])
        );
        let digits = Vonage::PATHS
            .iter()
            .find(|p| p.hook == Hook::Digits)
            .expect("a digits hook");
        assert_eq!(digits.path, "/hooks/vonage/digits");
        let answer = Vonage::PATHS
            .iter()
            .find(|p| p.hook == Hook::VOICE)
            .unwrap();
        assert_eq!(
            digits.methods, answer.methods,
            "called as the answer webhook is"
        );
    }

    #[test]
    fn call_statuses_are_normalised() {
        assert_eq!(call_status("ringing"), Some(("ringing".into(), false)));
        assert_eq!(call_status("answered"), Some(("in-progress".into(), false)));
        assert_eq!(call_status("completed"), Some(("completed".into(), true)));
        assert_eq!(call_status("unanswered"), Some(("no-answer".into(), true)));
        assert_eq!(call_status("timeout"), Some(("no-answer".into(), true)));
        assert_eq!(call_status("cancelled"), Some(("canceled".into(), true)));
        assert_eq!(call_status("BUSY"), Some(("busy".into(), true)));
        assert_eq!(call_status("machine"), None);
    }

    #[test]
    fn sms_api_answers_are_read() {
        let ok =
            json!({ "message-count": "2", "messages": [{ "status": "0" }, { "status": "0" }] });
        assert!(outcome(&ok).is_ok());
        let throttled = json!({ "messages": [{ "status": "1", "error-text": "Throttled" }] });
        assert!(matches!(outcome(&throttled), Err(SendError::Retry(_))));
        let internal = json!({ "messages": [{ "status": 5 }] });
        assert!(matches!(outcome(&internal), Err(SendError::Retry(_))));
        let refused = json!({ "messages": [{ "status": "4", "error-text": "Bad Credentials" }] });
        assert!(matches!(outcome(&refused), Err(SendError::Permanent(_))));
        let partly = json!({ "messages": [{ "status": "0" }, { "status": "1" }] });
        assert!(matches!(outcome(&partly), Err(SendError::Permanent(_))));
        assert!(matches!(outcome(&json!({})), Err(SendError::Retry(_))));
        let quoting = json!({ "messages": [{ "status": "6", "error-text": "bad 14155550100" }] });
        let Err(SendError::Permanent(text)) = outcome(&quoting) else {
            panic!("status 6 is permanent");
        };
        assert!(!text.contains("14155550100"), "{text}");
    }

    #[test]
    fn a_recorded_call_records_before_it_connects_with_a_limit() {
        let connect = |record, max_call_secs| Decision::Connect {
            session_id: "ses_x".into(),
            caller_id: E164::parse_syntax("+12015550100").unwrap(),
            to: E164::parse_syntax("+14155550101").unwrap(),
            call: crate::domain::CallOptions {
                record,
                max_call_secs,
            },
        };
        let recorded = |channels| Recorded {
            channels,
            callback: "https://h.test/hooks/vonage/recording?s=a".into(),
        };
        assert_eq!(
            voice_ncco_with(
                &connect(Some(RecordChannels::Dual), Some(600)),
                Some(&recorded(RecordChannels::Dual)),
                "https://h.test",
            ),
            json!([
                {
                    "action": "record",
                    "eventUrl": ["https://h.test/hooks/vonage/recording?s=a"],
                    "eventMethod": "POST",
                    "split": "conversation",
                    "channels": 2,
                },
                {
                    "action": "connect",
                    "from": "12015550100",
                    "endpoint": [{ "type": "phone", "number": "14155550101" }],
                    "limit": 600,
                },
            ])
        );
        let mono = voice_ncco_with(
            &connect(Some(RecordChannels::Mono), Some(10_000)),
            Some(&recorded(RecordChannels::Mono)),
            "https://h.test",
        );
        assert!(mono[0].get("split").is_none(), "{mono}");
        assert_eq!(mono[1]["limit"], 7200, "Vonage's longest call");
    }
}
