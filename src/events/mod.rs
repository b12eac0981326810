//! Events to the app: a durable outbox in Redis, written in the same step as the change it
//! describes, delivered at least once with Standard Webhooks signatures, behind an SSRF guard.

mod attempt;
pub mod delivery;
mod flight;
pub mod intercept;
pub mod ssrf;

/// Standard Webhooks signing. It lives in [`crate::crypto::webhook`], beneath the broker, which
/// mints the secrets, so that the broker never imports `events`.
pub use crate::crypto::webhook as signing;
