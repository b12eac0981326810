//! Texts hush sends through Twilio's Messaging API (the app's texts; relayed ones are
//! answered inline in TwiML).
//! <https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource>

use serde_json::Value;

use super::Twilio;
use crate::config::Providers;
use crate::relay::dialect::{RestApi, Sent};
use crate::relay::outbound::{OutboundSms, SendError};

impl RestApi for Twilio {
    async fn send_text(http: &reqwest::Client, p: &Providers, msg: &OutboundSms) -> Sent {
        send(http, p, msg).await
    }
}

/// `POST {HUSH_TWILIO_API_BASE}/2010-04-01/Accounts/{AccountSid}/Messages.json`, a form of
/// `To`, `From`, `Body`, one `MediaUrl` per file and `StatusCallback`, with HTTP Basic auth
/// `AccountSid:AuthToken`. Twilio answers 201 with the message's `sid`, which its status
/// callbacks carry as `MessageSid`. 429, 5xx and transport failures are worth retrying;
/// any other answer refuses the text for good.
pub async fn send(
    http: &reqwest::Client,
    p: &Providers,
    msg: &OutboundSms,
) -> Result<Option<String>, SendError> {
    let (Some(sid), Some(token)) = (&p.twilio_account_sid, &p.twilio_auth_token) else {
        return Err(SendError::Permanent(
            "HUSH_TWILIO_ACCOUNT_SID and HUSH_TWILIO_AUTH_TOKEN must be set to send texts".into(),
        ));
    };
    let mut form: Vec<(&str, &str)> = vec![
        ("To", msg.to.reveal()),
        ("From", msg.from.reveal()),
        ("Body", msg.text.as_str()),
    ];
    for url in &msg.media {
        form.push(("MediaUrl", url));
    }
    if let Some(url) = &msg.report_url {
        form.push(("StatusCallback", url));
    }
    let resp = http
        .post(format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            p.twilio_api_base,
            sid.expose()
        ))
        .basic_auth(sid.expose(), Some(token.expose()))
        .form(&form)
        .send()
        .await;
    let answer = crate::relay::rest_answer("the Twilio API", resp).await?;
    Ok(answer
        .pointer("/sid")
        .and_then(Value::as_str)
        .map(str::to_string))
}
