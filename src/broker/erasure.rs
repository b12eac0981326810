//! Erasure: removing what hush holds about a participant's number, closing its sessions
//! without cool-off.

use std::collections::HashSet;

use crate::domain::{CloseReason, E164, Millis, SessionId};
use crate::store::{EndOp, Ended, ShardKeys, StoreError};
use crate::telemetry::METRICS;

use super::{Broker, BrokerError, PoolLimit, Result};

impl Broker {
    /// Closes every session of a number in every pool `within` a key's pools, releases its
    /// routes there without cool-off and removes what hush holds about it there. Returns how
    /// many open sessions it closed. Stored replays of idempotent requests that hold the
    /// number go whichever key made them: they are copies of the number, not sessions.
    pub async fn erase_participant(&self, number: &E164, within: &PoolLimit) -> Result<usize> {
        let idx = self.idx(number);
        let now = self.now();
        let mut closed = 0;
        for row in self.pool_rows(None, within).await? {
            for s in 0..row.shards {
                let shard = self.shard(row.id, s);
                let keys: HashSet<String> = self
                    .inner
                    .store
                    .entry_of(&shard, &idx)
                    .await?
                    .session_keys()
                    .into_iter()
                    .collect();
                for key in keys {
                    let Some(id) = SessionId::from_key(row.id, s, &key) else {
                        continue;
                    };
                    if self.erase_from(&shard, &id, &idx).await? {
                        closed += 1;
                        METRICS
                            .sessions_closed
                            .with_label_values(&[row.name.as_str(), "erased"])
                            .inc();
                        tracing::info!(session = %id, "session erased");
                    }
                }
                self.inner
                    .store
                    .forget_participant(&shard, &idx, now)
                    .await?;
            }
        }
        self.inner.store.idem_forget(&idx).await?;
        Ok(closed)
    }

    /// Erases one side of one session; true when the session was open. Retried when the
    /// record changes under it (the other side being erased at the same moment).
    async fn erase_from(&self, shard: &ShardKeys, id: &SessionId, idx: &str) -> Result<bool> {
        let key = id.key();
        for _ in 0..5 {
            let rec = self.inner.store.session(shard, &key).await?;
            if rec.is_empty() {
                return Ok(false);
            }
            let g = |k: &str| rec.get(k).map(String::as_str).unwrap_or("");
            let side = if g("a") == idx {
                "a"
            } else if g("b") == idx {
                "b"
            } else {
                return Ok(false);
            };
            let mut blob = self.open_blob(&rec)?;
            let erased = &mut blob.p[if side == "a" { 0 } else { 1 }];
            erased.n = None;
            erased.l = None;
            // A record of layout 1 held its metadata inside the blob: it moves out now.
            let (sealed, metadata) = self.seal_blob(&blob);
            let metadata = metadata.filter(|_| !rec.contains_key("y"));
            let now = self.now();
            let was_open = g("t") == "o" && g("e").parse::<Millis>().unwrap_or(0) > now;
            // The events describe the scrubbed session: no trace of the erased side.
            let mut scrubbed = rec.clone();
            scrubbed.insert("z".into(), sealed.clone());
            let mut events = self
                .end_events(id, &scrubbed, Some(CloseReason::Erased))
                .await?;
            if let Some(e) = events.expired.as_mut() {
                e.numbers.clear();
            }
            let read = format!("{}|{}", g("a"), g("b"));
            let ended = self
                .inner
                .store
                .session_end(
                    shard,
                    &key,
                    now,
                    EndOp::Erase {
                        side,
                        blob: &sealed,
                        read: &read,
                        metadata: metadata.as_deref().unwrap_or(""),
                    },
                    &events,
                )
                .await?;
            if ended != Ended::Retry {
                // The provider's recordings name the call: the app deletes them at the
                // provider (it had their ids in `recording.completed`); hush forgets them.
                self.inner.store.recordings_drop(shard, &key).await?;
                return Ok(was_open);
            }
        }
        Err(BrokerError::Store(StoreError::Corrupt(
            "a session kept changing while it was erased",
        )))
    }
}
