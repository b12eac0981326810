//! Pure types and rules, no I/O: numbers, ids, sessions, pool policy, and the clock that
//! expiry rules are written against. Everything here is testable without Redis.

pub mod ids;
pub mod number;
pub mod pool;
pub mod session;

pub use ids::{PoolName, SessionId};
pub use number::{Capabilities, E164, Geo, NumberError};
pub use pool::{GeoMatch, InterceptFallback, NumberState, PoolPolicy};
pub use session::{CloseReason, Mode, Status};

/// Milliseconds since the Unix epoch; the unit every stored time uses.
pub type Millis = i64;

/// Where "now" comes from, so expiry rules can be tested without sleeping.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        d.as_millis() as Millis
    }
}

/// RFC 3339 UTC text of a stored time, as the API shows it.
pub fn rfc3339(ms: Millis) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
