//! Calls the app starts, placed through Twilio's call API.

use super::{PROVIDER, Twilio};
use crate::broker::CallStart;
use crate::config::Providers;
use crate::http::calls::{CallError, Placed};
use crate::relay::calls::answered;
use crate::relay::dialect::{CallApi, bridge_url, status_url};

/// Calls the app starts are placed through the Calls resource
/// (<https://www.twilio.com/docs/voice/api/call-resource#create-a-call-resource>) with the
/// account SID and auth token as Basic auth: Twilio rings `To` from `From` and, once
/// answered, fetches `Url` for what to do next, reporting each `StatusCallbackEvent` to
/// `StatusCallback`.
impl CallApi for Twilio {
    fn places_calls(p: &Providers) -> bool {
        p.twilio_account_sid.is_some() && p.twilio_auth_token.is_some()
    }

    async fn place_call(
        http: &reqwest::Client,
        p: &Providers,
        public_url: &str,
        call: &CallStart,
    ) -> Placed {
        let (Some(sid), Some(token)) = (&p.twilio_account_sid, &p.twilio_auth_token) else {
            return Err(CallError::Refused(
                "twilio has no account configured".into(),
            ));
        };
        let sid = sid.expose();
        let bridge = bridge_url::<Twilio>(public_url, call);
        let status = status_url::<Twilio>(public_url, call);
        let form = [
            ("To", call.to.reveal()),
            ("From", call.proxy.reveal()),
            ("Url", &bridge),
            ("Method", "POST"),
            ("StatusCallback", &status),
            ("StatusCallbackMethod", "POST"),
            ("StatusCallbackEvent", "initiated"),
            ("StatusCallbackEvent", "ringing"),
            ("StatusCallbackEvent", "answered"),
            ("StatusCallbackEvent", "completed"),
        ];
        let sent = http
            .post(format!(
                "{}/2010-04-01/Accounts/{sid}/Calls.json",
                p.twilio_api_base
            ))
            .basic_auth(sid, Some(token.expose()))
            .form(&form)
            .send()
            .await;
        let body = answered(PROVIDER, sent).await?;
        Ok(body.get("sid").and_then(|v| v.as_str()).map(str::to_string))
    }
}
