//! Events to the app: a durable outbox in Redis, written in the same step as the change it
//! describes, delivered at least once with Standard Webhooks signatures, behind an SSRF guard.

pub mod delivery;
pub mod intercept;
pub mod signing;
pub mod ssrf;
