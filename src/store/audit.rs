//! The audit log on the Redis side: one sorted set per UTC day, entries scored by their time
//! in ms, and an index of the days that hold any. A day's key expires a day after its last
//! entry is due to be trimmed, so a log nobody trims still ends; the trim itself is exact.

use super::{Result, Store};

/// A UTC day, as days since the epoch.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

impl Store {
    /// Adds `entry` (its JSON, which starts with its id) at `at`, kept `keep_ms`.
    pub async fn audit_put(&self, at: i64, entry: &str, keep_ms: i64) -> Result<()> {
        let day = day_of(at);
        let key = self.keys.audit_day(day);
        // Expiry in seconds: the end of the day, plus what is kept, plus a day of slack.
        let expire_at = ((day + 2) * 86_400_000 + keep_ms) / 1000;
        let _: () = redis::pipe()
            .cmd("ZADD")
            .arg(&key)
            .arg(at)
            .arg(entry)
            .ignore()
            .cmd("EXPIREAT")
            .arg(&key)
            .arg(expire_at)
            .ignore()
            .cmd("ZADD")
            .arg(self.keys.audit_days())
            .arg(day)
            .arg(day)
            .ignore()
            .query_async(&mut self.c())
            .await?;
        Ok(())
    }

    /// The days from `to` down to `from` (inclusive) that hold entries, newest first.
    pub async fn audit_days(&self, from: i64, to: i64) -> Result<Vec<i64>> {
        self.query(
            "ZRANGE",
            (self.keys.audit_days(), to, from, "BYSCORE", "REV"),
        )
        .await
    }

    /// Entries of `day` timed `min..=max` ms, newest first, `count` from `offset`:
    /// `(entry, at)`. Entries of one ms come in descending order of id.
    pub async fn audit_range(
        &self,
        day: i64,
        max: i64,
        min: i64,
        offset: usize,
        count: usize,
    ) -> Result<Vec<(String, i64)>> {
        self.query(
            "ZRANGE",
            (
                self.keys.audit_day(day),
                max,
                min,
                "BYSCORE",
                "REV",
                "LIMIT",
                offset,
                count,
                "WITHSCORES",
            ),
        )
        .await
    }

    /// Removes the entries older than `cutoff` ms: whole days before its day, and the
    /// earlier part of its day. Returns how many entries went.
    pub async fn audit_trim(&self, cutoff: i64) -> Result<u64> {
        let last = day_of(cutoff);
        let old: Vec<i64> = self
            .query(
                "ZRANGE",
                (self.keys.audit_days(), "-inf", last - 1, "BYSCORE"),
            )
            .await?;
        let mut removed = 0u64;
        for day in &old {
            let key = self.keys.audit_day(*day);
            let (n, _): (u64, i64) = redis::pipe()
                .cmd("ZCARD")
                .arg(&key)
                .cmd("DEL")
                .arg(&key)
                .query_async(&mut self.c())
                .await?;
            removed += n;
        }
        if !old.is_empty() {
            let _: i64 = self
                .query(
                    "ZREMRANGEBYSCORE",
                    (self.keys.audit_days(), "-inf", last - 1),
                )
                .await?;
        }
        let n: u64 = self
            .query(
                "ZREMRANGEBYSCORE",
                (self.keys.audit_day(last), "-inf", format!("({cutoff}")),
            )
            .await?;
        Ok(removed + n)
    }
}
