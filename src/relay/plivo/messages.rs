//! Texts hush sends through Plivo's Message API (the app's texts; relayed ones are answered
//! inline in Plivo XML). <https://www.plivo.com/docs/messaging/api/message/send-a-message>

use serde_json::{Value, json};

use super::Plivo;
use crate::config::Providers;
use crate::relay::dialect::{RestApi, Sent};
use crate::relay::outbound::{OutboundSms, SendError};

impl RestApi for Plivo {
    async fn send_text(http: &reqwest::Client, p: &Providers, msg: &OutboundSms) -> Sent {
        send(http, p, msg).await
    }
}

/// `POST {HUSH_PLIVO_API_BASE}/v1/Account/{auth_id}/Message/`, JSON `src`, `dst` (numbers as
/// digits, as Plivo writes them), `text`, `type` (`mms` with `media_urls` when there are
/// files) and `url`/`method` for delivery reports, with HTTP Basic auth
/// `auth_id:auth_token`. Plivo answers 202 with `message_uuid: [..]`, one id per
/// destination; its delivery reports carry it as `MessageUUID`. 429, 5xx and transport
/// failures are worth retrying; any other answer refuses the text for good.
pub async fn send(
    http: &reqwest::Client,
    p: &Providers,
    msg: &OutboundSms,
) -> Result<Option<String>, SendError> {
    let (Some(id), Some(token)) = (&p.plivo_auth_id, &p.plivo_auth_token) else {
        return Err(SendError::Permanent(
            "HUSH_PLIVO_AUTH_ID and HUSH_PLIVO_AUTH_TOKEN must be set to send texts".into(),
        ));
    };
    let mut body = json!({
        "src": msg.from.reveal_digits(),
        "dst": msg.to.reveal_digits(),
        "text": msg.text,
        "type": "sms",
    });
    if !msg.media.is_empty() {
        body["type"] = json!("mms");
        body["media_urls"] = json!(msg.media);
    }
    if let Some(url) = &msg.report_url {
        body["url"] = json!(url);
        body["method"] = json!("POST");
    }
    let resp = http
        .post(format!(
            "{}/v1/Account/{}/Message/",
            p.plivo_api_base,
            id.expose()
        ))
        .basic_auth(id.expose(), Some(token.expose()))
        .json(&body)
        .send()
        .await;
    let answer = crate::relay::rest_answer("the Plivo API", resp).await?;
    Ok(answer
        .pointer("/message_uuid/0")
        .and_then(Value::as_str)
        .map(str::to_string))
}
