//! Calls the app starts, placed through Plivo's call API.

use super::{PROVIDER, Plivo};
use crate::broker::CallStart;
use crate::config::Providers;
use crate::http::calls::{CallError, Placed};
use crate::relay::calls::answered;
use crate::relay::dialect::{CallApi, bridge_url, status_url};

/// Calls the app starts go through the Call API
/// (<https://www.plivo.com/docs/voice/api/call/make-a-call>) with the auth id and token as
/// Basic auth: Plivo rings `to` from `from` (digits, no `+`), fetches `answer_url` once
/// answered and posts to `hangup_url` when the call ends.
impl CallApi for Plivo {
    fn places_calls(p: &Providers) -> bool {
        p.plivo_auth_id.is_some() && p.plivo_auth_token.is_some()
    }

    async fn place_call(
        http: &reqwest::Client,
        p: &Providers,
        public_url: &str,
        call: &CallStart,
    ) -> Placed {
        let (Some(id), Some(token)) = (&p.plivo_auth_id, &p.plivo_auth_token) else {
            return Err(CallError::Refused("plivo has no account configured".into()));
        };
        let id = id.expose();
        let body = serde_json::json!({
            "from": call.proxy.reveal_digits(),
            "to": call.to.reveal_digits(),
            "answer_url": bridge_url::<Plivo>(public_url, call),
            "answer_method": "POST",
            "hangup_url": status_url::<Plivo>(public_url, call),
            "hangup_method": "POST",
        });
        let sent = http
            .post(format!("{}/v1/Account/{id}/Call/", p.plivo_api_base))
            .basic_auth(id, Some(token.expose()))
            .json(&body)
            .send()
            .await;
        let answer = answered(PROVIDER, sent).await?;
        Ok(answer
            .get("request_uuid")
            .and_then(|v| v.as_str())
            .map(str::to_string))
    }
}
