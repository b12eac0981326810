//! Placing a call the app starts, as both edges see it: the API asks for one through a
//! [`Dialer`], which the provider webhooks' side implements once per provider with a call
//! API, so neither edge reaches into the other.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::broker::CallStart;

/// Why a provider did not place a call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The provider refused the request (4xx other than 429): retrying will not help.
    #[error("refused: {0}")]
    Refused(String),
    /// The provider failed or could not be reached (5xx, 429, timeout): worth a retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// What placing a call came to: the provider's id for it, when its answer names one.
pub type Placed = Result<Option<String>, CallError>;

/// A provider that places calls the app starts: it rings `call.to` from `call.proxy` and,
/// once answered, fetches the signed bridge webhook that connects the other participant.
pub trait Dialer: Send + Sync {
    /// The provider's name, as interactions record it.
    fn provider(&self) -> &'static str;

    fn place<'a>(
        &'a self,
        public_url: &'a str,
        call: &'a CallStart,
    ) -> Pin<Box<dyn Future<Output = Placed> + Send + 'a>>;
}

/// The providers configured to place calls, in a fixed order.
pub type Dialers = Arc<[Arc<dyn Dialer>]>;
