//! Pure types and rules, no I/O: numbers, ids, sessions, pool policy, and the clock that
//! expiry rules are written against. Everything here is testable without Redis.

pub mod ids;
pub mod number;
pub mod pool;
pub mod session;

pub use ids::{PoolName, SessionId};
pub use number::{Capabilities, E164, Geo, NumberError};
pub use pool::{
    GeoMatch, InterceptFallback, NumberSelection, NumberState, PROVIDERS, PinMode, PoolPolicy,
    ShardLoad, emptiest_shard, shard_order,
};
pub use session::{
    Access, CallOptions, CloseReason, Initiator, Mode, RecordChannels, SessionOptions, Status,
    interaction_access, interaction_code, parse_interaction_code,
};

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

/// RFC 3339 UTC text of a stored time, as every answer, event and CLI listing shows it:
/// always milliseconds and `Z` (`2026-05-04T09:30:00.000Z`), so clients can parse it with
/// one fixed format and compare texts in order.
pub fn rfc3339(ms: Millis) -> String {
    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(FORMAT).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn times_always_carry_three_fractional_digits() {
        assert_eq!(rfc3339(1_777_887_000_000), "2026-05-04T09:30:00.000Z");
        assert_eq!(rfc3339(1_777_887_000_120), "2026-05-04T09:30:00.120Z");
        assert_eq!(rfc3339(1_777_887_000_007), "2026-05-04T09:30:00.007Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
