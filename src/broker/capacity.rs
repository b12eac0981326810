//! Per-minute counts of each pool and the capacity rule read from them. A create counts
//! after its script, in one pipelined write that never fails the create; the webhook path
//! writes nothing here.

use serde::Serialize;

use crate::domain::{Millis, PoolName, rfc3339};
use crate::store::{CreateOutcome, STATS_MINUTES};
use crate::telemetry::METRICS;

use super::{Broker, Result};

/// The margin over the observed peak, as a share of it (rounded up, at least one number):
/// see "Capacity" in docs/operations.md.
pub const CAPACITY_MARGIN_PCT: u64 = 10;

/// One minute of a pool's counts as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MinuteView {
    pub at: String,
    pub created: u64,
    pub exhausted: u64,
    pub peak_holdings: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StatsView {
    pub pool: String,
    pub minutes: Vec<MinuteView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CapacityView {
    pub pool: String,
    pub numbers_active: i64,
    pub numbers_total: i64,
    pub peak_holdings: u64,
    pub peak_at: Option<String>,
    pub cooloff_secs: u32,
    pub numbers_needed: u64,
    pub headroom: i64,
    pub warning: Option<String>,
}

/// The numbers a pool needs for a peak of `peak`: the peak plus its margin; none without
/// traffic.
pub fn numbers_needed(peak: u64) -> u64 {
    if peak == 0 {
        return 0;
    }
    peak + (peak * CAPACITY_MARGIN_PCT).div_ceil(100).max(1)
}

/// Why a pool is short of numbers or about to be, if it is.
pub fn capacity_warning(pool: &str, active: i64, needed: u64, exhausted: u64) -> Option<String> {
    let needed = needed as i64;
    let mut said = Vec::new();
    if exhausted > 0 {
        said.push(format!(
            "pool `{pool}` refused {exhausted} session(s) as exhausted in the last 48 hours"
        ));
    }
    if active < needed {
        said.push(format!(
            "it has {active} active numbers and needs {needed}: add at least {}",
            needed - active
        ));
    } else if needed > 0 && active * 100 < needed * 110 {
        said.push(format!(
            "it has {active} active numbers, within 10 % of the {needed} it needs"
        ));
    }
    if said.is_empty() {
        return None;
    }
    let mut text = said.join("; ");
    if exhausted == 0 {
        text = format!("pool `{pool}`: {text}");
    }
    Some(text + ".")
}

impl Broker {
    /// Counts one create of pool `pool_id` that needed `holdings` numbers free for its
    /// pair. A failure is logged and counted, never passed on: the session stands.
    pub(super) async fn note_create(
        &self,
        pool_id: u32,
        now: Millis,
        outcome: CreateOutcome,
        holdings: u64,
    ) {
        let minute = now.div_euclid(60_000);
        if let Err(e) = self
            .inner
            .store
            .stats_note(pool_id, minute, outcome, holdings)
            .await
        {
            METRICS
                .record_write_failures
                .with_label_values(&["pool_stats"])
                .inc();
            tracing::warn!(error = %e, pool_id, "pool counts not recorded");
        }
    }

    /// The last `minutes` minutes of `pool`'s counts, oldest first, the current one last.
    pub async fn pool_stats(&self, pool: &PoolName, minutes: i64) -> Result<StatsView> {
        let row = self.pool_row(pool).await?;
        let to = self.now().div_euclid(60_000);
        let from = to - minutes.clamp(1, STATS_MINUTES) + 1;
        let counts = self.inner.store.stats_read(row.id, from, to).await?;
        let minutes = (from..=to)
            .map(|m| {
                let c = counts.get(&m).copied().unwrap_or_default();
                MinuteView {
                    at: rfc3339(m * 60_000),
                    created: c.created,
                    exhausted: c.exhausted,
                    peak_holdings: c.peak_holdings,
                }
            })
            .collect();
        Ok(StatsView {
            pool: row.name,
            minutes,
        })
    }

    /// `pool`'s numbers against what its last 48 hours needed.
    pub async fn pool_capacity(&self, pool: &PoolName) -> Result<CapacityView> {
        let view = self.get_pool(pool).await?;
        let row = self.pool_row(pool).await?;
        let to = self.now().div_euclid(60_000);
        let counts = self
            .inner
            .store
            .stats_read(row.id, to - STATS_MINUTES + 1, to)
            .await?;
        let mut peak: Option<(u64, i64)> = None;
        let mut exhausted = 0;
        for (m, c) in &counts {
            exhausted += c.exhausted;
            // The latest minute of the highest peak.
            if c.peak_holdings > 0 && peak.is_none_or(|(p, at)| (c.peak_holdings, *m) > (p, at)) {
                peak = Some((c.peak_holdings, *m));
            }
        }
        let peak_holdings = peak.map_or(0, |(p, _)| p);
        let needed = numbers_needed(peak_holdings);
        let active = view.numbers.active;
        Ok(CapacityView {
            warning: capacity_warning(&view.name, active, needed, exhausted),
            pool: view.name,
            numbers_active: active,
            numbers_total: view.numbers.total,
            peak_holdings,
            peak_at: peak.map(|(_, m)| rfc3339(m * 60_000)),
            cooloff_secs: view.policy.cooloff_secs,
            numbers_needed: needed,
            headroom: active - needed as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_tenth_rounded_up_and_at_least_one() {
        assert_eq!(numbers_needed(0), 0);
        assert_eq!(numbers_needed(1), 2);
        assert_eq!(numbers_needed(7), 8);
        assert_eq!(numbers_needed(10), 11);
        assert_eq!(numbers_needed(11), 13);
        assert_eq!(numbers_needed(40), 44);
    }

    #[test]
    fn a_warning_says_why() {
        assert_eq!(capacity_warning("rides", 10, 8, 0), None);
        let near = capacity_warning("rides", 12, 11, 0).unwrap();
        assert!(near.contains("within 10 %"), "{near}");
        let short = capacity_warning("rides", 2, 3, 0).unwrap();
        assert!(short.contains("add at least 1"), "{short}");
        let ran_out = capacity_warning("rides", 2, 3, 4).unwrap();
        assert!(ran_out.starts_with("pool `rides` refused 4"), "{ran_out}");
        assert_eq!(capacity_warning("idle", 0, 0, 0), None);
    }
}
