//! Reaping: advancing due sessions (expiry, end of cool-off, end of readability) shard by
//! shard, and the loop that runs a pass on an interval. Routing never depends on it being
//! on time.

use crate::domain::{Millis, SessionId};
use crate::store::{EndEvents, EndOp, Ended, ShardKeys};
use crate::telemetry::METRICS;

use super::{Broker, Result};

/// Session buckets one pass works through per shard: a shard has at most 4,096, and a
/// bucket's due sessions are all handled in one visit.
pub(super) const BUCKETS_PER_PASS: usize = 4096;
/// Participant buckets tidied per shard and pass.
const TIDY_PER_PASS: usize = 4;
const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// What a reaper pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    pub expired: usize,
    pub released: usize,
}

impl Broker {
    /// Advances due sessions of one shard (expiry, end of hold), working through at most
    /// `limit` session buckets.
    pub async fn reap_shard(&self, shard: &ShardKeys, now: Millis, limit: usize) -> Result<Reaped> {
        let mut done = Reaped::default();
        let store = &self.inner.store;
        for bucket in store.due_buckets(shard, now, limit).await? {
            for (key, rec) in store.bucket_sessions(shard, &bucket).await? {
                let g = |k: &str| rec.get(k).map(String::as_str).unwrap_or("");
                let expiring = g("t") == "o";
                let next: Millis = g(if expiring { "e" } else { "h" }).parse().unwrap_or(0);
                if next > now {
                    continue;
                }
                // Whole, with its metadata, which the expiry's event carries.
                let rec = store.session(shard, &key).await?;
                if !rec.is_empty() {
                    self.reap_session(shard, &key, &rec, now, &mut done).await?;
                }
            }
            store.bucket_settle(shard, &bucket).await?;
        }
        Ok(done)
    }

    /// Sticky memory past its window leaves the participant buckets that nothing else
    /// rewrites: four random ones a pass, in one script, visit each of the 4,096 about every
    /// 17 minutes at the default pace.
    async fn tidy_shard(&self, shard: &ShardKeys) -> Result<()> {
        let names: Vec<String> = (0..TIDY_PER_PASS)
            .map(|_| {
                let pick: [u8; 2] = rand::random();
                pick.iter()
                    .map(|b| BASE64URL[(*b & 63) as usize] as char)
                    .collect()
            })
            .collect();
        self.inner.store.entries_tidy(shard, &names).await?;
        Ok(())
    }

    async fn reap_session(
        &self,
        shard: &ShardKeys,
        key: &str,
        rec: &std::collections::HashMap<String, String>,
        now: Millis,
        done: &mut Reaped,
    ) -> Result<()> {
        let g = |k: &str| rec.get(k).map(String::as_str).unwrap_or("");
        let expiring = g("t") == "o";
        // A record whose events cannot be built (a blob sealed under a key no longer
        // configured) still expires and frees its number: one bad record must not stop
        // the reaper.
        let events = match SessionId::from_key(shard.pool_id, shard.shard, key) {
            Some(id) if expiring => match self.end_events(&id, rec, None).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "expiry event not built");
                    EndEvents::default()
                }
            },
            _ => EndEvents::default(),
        };
        let ended = self
            .inner
            .store
            .session_end(shard, key, now, EndOp::Reap, &events)
            .await?;
        if expiring {
            done.expired += 1;
            let pool = self.pool_name(shard.pool_id).await.unwrap_or_default();
            METRICS
                .sessions_closed
                .with_label_values(&[pool.as_str(), "expired"])
                .inc();
        }
        if ended == Ended::Ok {
            done.released += 1;
        }
        Ok(())
    }

    /// One reaper pass over every pool. Idempotent; any instance may run it at any time.
    pub async fn reap_once(&self, now: Millis) -> Result<Reaped> {
        self.reap_pass(now, None).await
    }

    /// [`Broker::reap_once`], skipping the shards another instance's pass visited less than
    /// `turn_ms` ago (when given): however many instances run, a shard is reaped and tidied
    /// about once per turn, not once per instance.
    async fn reap_pass(&self, now: Millis, turn_ms: Option<Millis>) -> Result<Reaped> {
        let mut total = Reaped::default();
        for row in self.inner.store.pool_list().await? {
            for s in 0..row.shards {
                let shard = self.shard(row.id, s);
                if let Some(ms) = turn_ms {
                    match self.inner.store.reaper_turn(&shard, ms).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        // The pass below meets the same error and says so.
                        Err(_) => {}
                    }
                }
                match self.reap_shard(&shard, now, BUCKETS_PER_PASS).await {
                    Ok(r) => {
                        total.expired += r.expired;
                        total.released += r.released;
                    }
                    // Other shards still get their pass.
                    Err(e) => {
                        tracing::warn!(pool = %row.name, error = %e, "reaping a shard failed")
                    }
                }
                if let Err(e) = self.tidy_shard(&shard).await {
                    tracing::warn!(pool = %row.name, error = %e, "tidying a shard failed");
                }
            }
        }
        Ok(total)
    }
}

/// How often the reaper loop trims the audit log.
const AUDIT_TRIM_EVERY_MS: Millis = 3_600_000;

/// Runs a reaper pass every `interval` until `shutdown`, finishing the pass in hand. Each
/// shard takes one instance's pass per interval: an instance skips the shards another
/// visited within the last nine tenths of it: a little less than the interval, so that an
/// instance's own next pass, an interval later, finds its last turn over.
pub async fn run_reaper(
    broker: Broker,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let turn = (interval.as_millis() as Millis * 9 / 10).max(1);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The audit log is trimmed far less often than sessions are reaped: by the hour it
    // keeps at most an hour past its 90 days. Any instance may do it; it is idempotent.
    let mut trimmed_at: Millis = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = broker.now();
        if now - trimmed_at >= AUDIT_TRIM_EVERY_MS {
            match broker.audit_trim(now).await {
                Ok(n) => {
                    trimmed_at = now;
                    if n > 0 {
                        tracing::info!(removed = n, "audit log trimmed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "audit trim failed; retrying next tick"),
            }
        }
        match broker.reap_pass(broker.now(), Some(turn)).await {
            Ok(r) if r.expired + r.released > 0 => {
                tracing::debug!(expired = r.expired, released = r.released, "reaped")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reaper pass failed; retrying next tick"),
        }
    }
}
