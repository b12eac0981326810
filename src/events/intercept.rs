//! The pre-connect intercept: before a call or text reaches the other party, a pool may ask
//! the app whether it should (to block calls once a trip is over, say). The question is a
//! signed `interaction.pending` event; the app answers within the pool's timeout or the pool's
//! fallback applies.

use std::time::Duration;

use super::signing::{self, SigningSecret};
use super::ssrf;

/// What the app decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Block, answering with this message (or the pool's out-of-session message).
    Block(Option<String>),
    /// No usable answer in time: the pool's fallback decides.
    NoAnswer,
}

/// Everything needed to ask.
pub struct Question<'a> {
    pub url: &'a str,
    pub id: &'a str,
    pub body: &'a str,
    pub secrets: &'a [String],
    pub timeout: Duration,
    pub allow_private: bool,
}

/// Asks the app. Never fails: anything but a clear answer is [`Verdict::NoAnswer`].
pub async fn ask(http: &reqwest::Client, now_secs: i64, q: Question<'_>) -> Verdict {
    let Ok(url) = ssrf::check_url(q.url, q.allow_private) else {
        return Verdict::NoAnswer;
    };
    let secrets: Vec<SigningSecret> = q
        .secrets
        .iter()
        .filter_map(|s| SigningSecret::parse(s).ok())
        .collect();
    let refs: Vec<&SigningSecret> = secrets.iter().collect();
    let request = http
        .post(url)
        .timeout(q.timeout)
        .header("content-type", "application/json")
        .header("webhook-id", q.id)
        .header("webhook-timestamp", now_secs.to_string())
        .header(
            "webhook-signature",
            signing::sign(&refs, q.id, now_secs, q.body.as_bytes()),
        )
        .body(q.body.to_string());
    // The timeout covers reading the answer too: a slow body is no answer.
    let answer = tokio::time::timeout(q.timeout, async {
        let resp = request.send().await.ok()?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.ok()?;
        Some((status, bytes))
    })
    .await;
    match answer {
        Ok(Some((status, body))) => verdict(status, &body),
        _ => Verdict::NoAnswer,
    }
}

/// Reads an answer: 2xx with no body or `{"action":"allow"}` allows; 403 or
/// `{"action":"block", "message"?}` blocks; anything else is no answer.
pub fn verdict(status: u16, body: &[u8]) -> Verdict {
    if status == 403 {
        return Verdict::Block(None);
    }
    if !(200..300).contains(&status) {
        return Verdict::NoAnswer;
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Verdict::Allow;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Verdict::NoAnswer;
    };
    match v.get("action").and_then(|a| a.as_str()) {
        Some("allow") => Verdict::Allow,
        Some("block") => Verdict::Block(
            v.get("message")
                .and_then(|m| m.as_str())
                .filter(|m| !m.trim().is_empty())
                .map(|m| m.chars().take(1000).collect()),
        ),
        _ => Verdict::NoAnswer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_the_contract_says() {
        assert_eq!(verdict(204, b""), Verdict::Allow);
        assert_eq!(verdict(200, b" \n"), Verdict::Allow);
        assert_eq!(verdict(200, br#"{"action":"allow"}"#), Verdict::Allow);
        assert_eq!(verdict(403, b"whatever"), Verdict::Block(None));
        assert_eq!(
            verdict(200, br#"{"action":"block","message":"Trip is over."}"#),
            Verdict::Block(Some("Trip is over.".into()))
        );
        assert_eq!(verdict(200, br#"{"action":"block"}"#), Verdict::Block(None));
        assert_eq!(verdict(200, br#"{"action":"maybe"}"#), Verdict::NoAnswer);
        assert_eq!(verdict(200, b"not json"), Verdict::NoAnswer);
        assert_eq!(verdict(500, b""), Verdict::NoAnswer);
        assert_eq!(verdict(302, b""), Verdict::NoAnswer);
    }
}
