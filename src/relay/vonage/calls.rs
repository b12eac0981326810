//! Calls the app starts, placed through Vonage's Voice API
//! (<https://developer.vonage.com/en/api/voice#createCall>): `POST /v1/calls` with a JWT
//! signed RS256 by the application's private key
//! (<https://developer.vonage.com/en/getting-started/concepts/authentication#json-web-tokens>).
//! Vonage rings `to` from `from`, fetches `answer_url` for the NCCO once answered, and posts
//! the call's progress to `event_url`.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::json;

use super::{PROVIDER, Vonage};
use crate::broker::CallStart;
use crate::config::Providers;
use crate::http::calls::{CallError, Placed};
use crate::relay::calls::answered;
use crate::relay::dialect::{CallApi, bridge_url, status_url};

/// How long a minted token is good for: one request, made at once.
const TOKEN_SECS: u64 = 300;

impl CallApi for Vonage {
    fn places_calls(p: &Providers) -> bool {
        p.vonage_application_id.is_some() && p.vonage_private_key.is_some()
    }

    async fn place_call(
        http: &reqwest::Client,
        p: &Providers,
        public_url: &str,
        call: &CallStart,
    ) -> Placed {
        let (Some(app), Some(key)) = (&p.vonage_application_id, &p.vonage_private_key) else {
            return Err(CallError::Refused(
                "vonage has no application configured".into(),
            ));
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let token = jwt(app, key.expose(), now)
            .ok_or_else(|| CallError::Refused("vonage's private key cannot sign".into()))?;
        let body = json!({
            "to": [{ "type": "phone", "number": call.to.reveal_digits() }],
            "from": { "type": "phone", "number": call.proxy.reveal_digits() },
            "answer_url": [bridge_url::<Vonage>(public_url, call)],
            "answer_method": "POST",
            "event_url": [status_url::<Vonage>(public_url, call)],
            "event_method": "POST",
        });
        let sent = http
            .post(format!("{}/v1/calls", p.vonage_voice_api_base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await;
        let answer = answered(PROVIDER, sent).await?;
        Ok(answer
            .get("uuid")
            .and_then(|v| v.as_str())
            .map(str::to_string))
    }
}

/// A JWT for application `app`, signed RS256 with its PKCS#8 PEM key, issued at `now`:
/// the claims Vonage asks for (`application_id`, `iat`, `jti`) and an `exp`.
pub fn jwt(app: &str, pem: &str, now: u64) -> Option<String> {
    let der = STANDARD
        .decode(
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::trim)
                .collect::<String>(),
        )
        .ok()?;
    let key = RsaKeyPair::from_pkcs8(&der).ok()?;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        json!({
            "application_id": app,
            "iat": now,
            "exp": now + TOKEN_SECS,
            "jti": URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()),
        })
        .to_string(),
    );
    let signed = format!("{header}.{claims}");
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .ok()?;
    Some(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_is_no_pkcs8_rsa_key_signs_nothing() {
        assert!(jwt("app", "not a key", 0).is_none());
        let ed25519 = "-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
            -----END PRIVATE KEY-----\n";
        assert!(jwt("app", ed25519, 0).is_none());
    }
}
