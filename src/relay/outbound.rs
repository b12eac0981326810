//! Texts hush sends through a provider's API (Telnyx, Vonage), where the provider's webhook
//! is answered at once and the relayed text goes out afterwards. Each text is recorded in
//! Redis before the webhook is answered, so a hush restart neither loses nor doubles it.

use crate::domain::E164;

/// Which provider API sends the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Telnyx,
    Vonage,
}

/// One text to send: from the proxy number to the other participant.
#[derive(Clone, Debug)]
pub struct OutboundSms {
    pub via: Via,
    pub from: E164,
    pub to: E164,
    pub text: String,
    pub media: Vec<String>,
    /// Unique per relayed text (provider + inbound message id): sending is idempotent on it.
    pub key: String,
}

/// Why one attempt to send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth trying again later (timeouts, 5xx, 429).
    #[error("temporary failure: {0}")]
    Retry(String),
    /// The provider refused the text for good (4xx other than 429).
    #[error("refused: {0}")]
    Permanent(String),
}
