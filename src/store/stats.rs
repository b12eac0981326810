//! Per-minute counts of each pool, for capacity planning: sessions created, creates refused
//! as exhausted, and the most numbers one create needed. One hash and one sorted set per pool
//! and hour, expiring after the window is read, so nothing needs trimming.

use std::collections::HashMap;

use super::{Result, Store, StoreError};

/// How long the counts are kept, in minutes (48 hours).
pub const STATS_MINUTES: i64 = 2880;

/// One minute's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MinuteCounts {
    pub created: u64,
    pub exhausted: u64,
    pub peak_holdings: u64,
}

/// What one create did, for [`Store::stats_note`].
#[derive(Clone, Copy, Debug)]
pub enum CreateOutcome {
    Created,
    Exhausted,
}

impl Store {
    /// Counts one create of pool `pool_id` in `minute` (since the epoch) that needed
    /// `holdings` numbers free for its pair. One pipelined write.
    pub async fn stats_note(
        &self,
        pool_id: u32,
        minute: i64,
        outcome: CreateOutcome,
        holdings: u64,
    ) -> Result<()> {
        let (hour, m) = (minute.div_euclid(60), minute.rem_euclid(60));
        let counts = self.keys.pool_minutes(pool_id, hour);
        let peaks = self.keys.pool_peaks(pool_id, hour);
        // Kept a little over the window, so the oldest minute it shows is still there.
        let ttl = (STATS_MINUTES + 120) * 60;
        let field = match outcome {
            CreateOutcome::Created => format!("c{m}"),
            CreateOutcome::Exhausted => format!("x{m}"),
        };
        let _: () = redis::pipe()
            .cmd("HINCRBY")
            .arg(&counts)
            .arg(field)
            .arg(1)
            .ignore()
            .cmd("EXPIRE")
            .arg(&counts)
            .arg(ttl)
            .ignore()
            // GT keeps the largest score: a maximum kept without reading first.
            .cmd("ZADD")
            .arg(&peaks)
            .arg("GT")
            .arg(holdings)
            .arg(m)
            .ignore()
            .cmd("EXPIRE")
            .arg(&peaks)
            .arg(ttl)
            .ignore()
            .query_async(&mut self.c())
            .await?;
        Ok(())
    }

    /// The counts of minutes `from..=to` of pool `pool_id`, by minute; minutes with nothing
    /// counted are absent. One pipelined read.
    pub async fn stats_read(
        &self,
        pool_id: u32,
        from: i64,
        to: i64,
    ) -> Result<HashMap<i64, MinuteCounts>> {
        let hours: Vec<i64> = (from.div_euclid(60)..=to.div_euclid(60)).collect();
        let mut pipe = redis::pipe();
        for h in &hours {
            pipe.cmd("HGETALL").arg(self.keys.pool_minutes(pool_id, *h));
            pipe.cmd("ZRANGE")
                .arg(self.keys.pool_peaks(pool_id, *h))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES");
        }
        let replies: Vec<redis::Value> = pipe.query_async(&mut self.c()).await?;
        let mut out: HashMap<i64, MinuteCounts> = HashMap::new();
        let parse = |v: redis::Value| -> Result<_> {
            use redis::FromRedisValue as _;
            let counts = HashMap::<String, u64>::from_redis_value(v)
                .map_err(|e| StoreError::Redis(e.into()))?;
            Ok(counts)
        };
        let mut replies = replies.into_iter();
        for h in &hours {
            let (Some(c), Some(p)) = (replies.next(), replies.next()) else {
                return Err(StoreError::Corrupt("pool stats reply"));
            };
            let counts = parse(c)?;
            let peaks = <Vec<(String, f64)> as redis::FromRedisValue>::from_redis_value(p)
                .map_err(|e| StoreError::Redis(e.into()))?;
            for (field, n) in counts {
                let (kind, m) = field.split_at(1);
                let Ok(m) = m.parse::<i64>() else { continue };
                let entry = out.entry(h * 60 + m).or_default();
                match kind {
                    "c" => entry.created = n,
                    "x" => entry.exhausted = n,
                    _ => {}
                }
            }
            for (m, peak) in peaks {
                let Ok(m) = m.parse::<i64>() else { continue };
                out.entry(h * 60 + m).or_default().peak_holdings = peak as u64;
            }
        }
        out.retain(|m, _| (from..=to).contains(m));
        Ok(out)
    }
}
