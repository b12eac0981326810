//! Events on the Redis side: recording one with no other change, listing and reading a
//! shard's events, redelivering one, and what waits for delivery.

use std::collections::HashMap;

use super::{Result, ShardKeys, Store};

/// An event to record with a change: its id and the JSON the app will receive (which
/// holds no participant number; `numbers` carries them, sealed, for pools that send them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventDraft {
    pub id: String,
    pub body: String,
    pub numbers: String,
}

impl Store {
    /// How many events of a shard wait for delivery, and when the oldest of the first
    /// `look_at` of them was created (`None` when none waits).
    pub async fn events_pending(
        &self,
        shard: &ShardKeys,
        look_at: usize,
    ) -> Result<(i64, Option<i64>)> {
        let (count, oldest): (i64, i64) = self
            .run(
                &self.scripts.events_pending,
                format!("{}q", shard.events_tag()),
                (shard.tag(), look_at),
            )
            .await?;
        Ok((count, (oldest >= 0).then_some(oldest)))
    }

    /// Records an event that goes with no other change.
    pub async fn event_put(
        &self,
        shard: &ShardKeys,
        kind: &str,
        e: &EventDraft,
        now: i64,
    ) -> Result<()> {
        let _: i64 = self
            .run(
                &self.scripts.event_put,
                format!("{}q", shard.events_tag()),
                (shard.tag(), &e.id, kind, &e.body, &e.numbers, now),
            )
            .await?;
        Ok(())
    }

    /// The newest events of a shard (up to `limit`), each as its stored fields.
    pub async fn events(
        &self,
        shard: &ShardKeys,
        limit: usize,
    ) -> Result<Vec<(String, HashMap<String, String>)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let tag = shard.events_tag();
        let ids: Vec<String> = self
            .query(
                "ZREVRANGE",
                (format!("{tag}all"), 0, limit.saturating_sub(1)),
            )
            .await?;
        // Redis refuses an empty pipeline ("empty command"): a shard that never had an event
        // has nothing to read.
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(format!("{tag}m:{id}"));
        }
        let records: Vec<HashMap<String, String>> = pipe.query_async(&mut self.c()).await?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, rec) in ids.into_iter().zip(records) {
            if rec.is_empty() {
                gone.push(id);
            } else {
                out.push((id, rec));
            }
        }
        if !gone.is_empty() {
            // Records expire on their own; their index entries go when next seen.
            let _: i64 = self.query("ZREM", (format!("{tag}all"), &gone)).await?;
        }
        Ok(out)
    }

    /// One event's stored fields (empty when unknown).
    pub async fn event(&self, shard: &ShardKeys, key: &str) -> Result<HashMap<String, String>> {
        self.query("HGETALL", format!("{}m:{key}", shard.events_tag()))
            .await
    }

    /// Puts a delivered or failed event back in the queue. False when it is unknown, still
    /// queued, or its body is gone.
    pub async fn event_redeliver(&self, shard: &ShardKeys, id: &str, now: i64) -> Result<bool> {
        let r: i64 = self
            .run_acked(
                &self.scripts.event_redeliver,
                format!("{}q", shard.events_tag()),
                (shard.events_tag(), id, now),
            )
            .await?;
        Ok(r == 1)
    }
}
