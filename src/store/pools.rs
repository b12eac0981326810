//! Pools on the Redis side: the name → id index, each pool's policy hash and shard count,
//! creating and re-sizing a pool, and emptying a shard of a pool being deleted.

use std::collections::HashMap;

use redis::Value;

/// The layout of the data this version writes and reads (`P:layout`): 2 keeps session
/// records and participant entries in bucket hashes.
pub const LAYOUT: &str = "2";

use super::{Entry, Result, ShardKeys, Store, StoreError, StoreKind, strings};

/// A pool as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRow {
    pub id: u32,
    pub name: String,
    pub fields: HashMap<String, String>,
    pub shards: u16,
}

/// What [`Store::pool_set`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolSet {
    Written,
    /// The pool changed since the caller read it; nothing was written.
    Moved,
    /// The pool no longer exists.
    Gone,
    /// The change would lower the pool's shard count (this one); nothing was written.
    Shrink(u16),
}

/// One shard's `#total`, `#draining`, `#open` counters and a sticky entry, as read.
type Survey = (Vec<Option<i64>>, Option<String>);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardCounts {
    pub total: i64,
    pub draining: i64,
    pub open: i64,
}

impl Store {
    pub async fn pool_id(&self, name: &str) -> Result<Option<u32>> {
        let id: Option<u32> = self.query("HGET", (self.keys.pools(), name)).await?;
        Ok(id)
    }

    pub async fn pool_by_id(&self, id: u32) -> Result<Option<PoolRow>> {
        let fields: HashMap<String, String> = self.query("HGETALL", self.keys.pool(id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let name = fields
            .get("name")
            .cloned()
            .ok_or(StoreError::Corrupt("pool without name"))?;
        let shards = fields
            .get("shards")
            .and_then(|s| s.parse().ok())
            .filter(|&s: &u16| s > 0)
            .ok_or(StoreError::Corrupt("pool without shards"))?;
        Ok(Some(PoolRow {
            id,
            name,
            fields,
            shards,
        }))
    }

    pub async fn pool(&self, name: &str) -> Result<Option<PoolRow>> {
        match self.pool_id(name).await? {
            Some(id) => self.pool_by_id(id).await,
            None => Ok(None),
        }
    }

    /// Whether the data under the prefix is of the layout this version reads: `Err` with the
    /// layout found when it is older (pools made by a version that kept a hash per
    /// participant and per session).
    pub async fn layout(&self) -> Result<std::result::Result<(), String>> {
        let (layout, pools) = self.layout_mark().await?;
        Ok(match layout {
            Some(l) if l == LAYOUT => Ok(()),
            None if pools == 0 => Ok(()),
            Some(l) => Err(l),
            None => Err("1".into()),
        })
    }

    /// The layout mark, if any, and how many pools there are.
    pub(super) async fn layout_mark(&self) -> Result<(Option<String>, u64)> {
        Ok(redis::pipe()
            .cmd("GET")
            .arg(self.keys.layout())
            .cmd("HLEN")
            .arg(self.keys.pools())
            .query_async(&mut self.c())
            .await?)
    }

    /// Creates a pool (of one shard unless `fields` says `shards`), or replaces the fields
    /// given of an existing one. Returns the row and whether it was new, or the shard count a
    /// change would have lowered.
    pub async fn pool_put(
        &self,
        name: &str,
        fields: &[(&str, String)],
    ) -> Result<std::result::Result<(PoolRow, bool), u16>> {
        // A pool deleted between finding its id and writing to it is made anew.
        for _ in 0..3 {
            let (id, created) = match self.pool_id(name).await? {
                Some(id) => match self.pool_set(id, "*", fields).await? {
                    PoolSet::Gone => continue,
                    PoolSet::Shrink(current) => return Ok(Err(current)),
                    PoolSet::Written | PoolSet::Moved => (id, false),
                },
                None => match self.pool_create(name, fields).await? {
                    Ok(made) => made,
                    Err(current) => return Ok(Err(current)),
                },
            };
            if let Some(row) = self.pool_by_id(id).await? {
                return Ok(Ok((row, created)));
            }
        }
        Err(StoreError::Corrupt("pool vanished while written"))
    }

    /// A new pool, or the one a concurrent request created under the same name.
    async fn pool_create(
        &self,
        name: &str,
        fields: &[(&str, String)],
    ) -> Result<std::result::Result<(u32, bool), u16>> {
        // A prefix whose first pool this is takes the current layout (see [`Store::layout`]);
        // one holding data of an earlier layout keeps its mark until `hush store upgrade`.
        if self.layout().await?.is_ok() {
            let _: Option<String> = self
                .query("SET", (self.keys.layout(), LAYOUT, "NX"))
                .await?;
        }
        let fresh: u32 = self.query("INCR", self.keys.pool_seq()).await?;
        // Write the policy before publishing the name, so a reader that finds the name
        // always finds a whole pool.
        let mut init = redis::cmd("HSET");
        init.arg(self.keys.pool(fresh))
            .arg("name")
            .arg(name)
            .arg("shards")
            .arg(1);
        for (k, v) in fields {
            init.arg(*k).arg(v);
        }
        let _: i64 = init.query_async(&mut self.c()).await?;
        let won: bool = self
            .query_acked("HSETNX", (self.keys.pools(), name, fresh))
            .await?;
        if won {
            return Ok(Ok((fresh, true)));
        }
        let _: i64 = self.query("DEL", self.keys.pool(fresh)).await?;
        let id = self
            .pool_id(name)
            .await?
            .ok_or(StoreError::Corrupt("pool vanished while created"))?;
        match self.pool_set(id, "*", fields).await? {
            PoolSet::Gone => Err(StoreError::Corrupt("pool vanished while created")),
            PoolSet::Shrink(current) => Ok(Err(current)),
            PoolSet::Written | PoolSet::Moved => Ok(Ok((id, false))),
        }
    }

    /// Writes policy fields of pool `id` if its version is still `version` (`*`: any).
    pub async fn pool_set(
        &self,
        id: u32,
        version: &str,
        fields: &[(&str, String)],
    ) -> Result<PoolSet> {
        let mut args = vec!["", version];
        for (k, v) in fields {
            args.extend([*k, v.as_str()]);
        }
        let r: Vec<i64> = self
            .run_acked(&self.scripts.pool_set, self.keys.pool(id), args)
            .await?;
        Ok(match r.as_slice() {
            [1] => PoolSet::Written,
            [0] => PoolSet::Moved,
            [-2, current] => PoolSet::Shrink(u16::try_from(*current).unwrap_or(u16::MAX)),
            _ => PoolSet::Gone,
        })
    }

    /// Empties one shard of a pool being deleted: `None` while one of its numbers holds a
    /// session, else the numbers it held (their owner entries are deleted here too).
    pub async fn pool_shard_delete(&self, shard: &ShardKeys) -> Result<Option<Vec<String>>> {
        let reply: Value = self
            .run(
                &self.scripts.pool_shard_delete,
                (shard.nums(), shard.due_buckets()),
                shard.tag(),
            )
            .await?;
        let mut items = strings(reply)?.into_iter();
        if items.next().as_deref() != Some("1") {
            return Ok(None);
        }
        let numbers: Vec<String> = items.collect();
        // The owner entries live outside the shard's slot, so they go in a second step, one
        // round trip for all.
        if !numbers.is_empty() {
            let mut del = redis::cmd("DEL");
            for n in &numbers {
                del.arg(self.keys.owner(n));
            }
            let _: i64 = del.query_async(&mut self.c()).await?;
        }
        Ok(Some(numbers))
    }

    /// Removes a pool's name (if it still names pool `id`) and its policy hash.
    pub async fn pool_forget(&self, id: u32, name: &str) -> Result<()> {
        if self.pool_id(name).await? == Some(id) {
            let _: i64 = self.query("HDEL", (self.keys.pools(), name)).await?;
        }
        let _: i64 = self.query("DEL", self.keys.pool(id)).await?;
        Ok(())
    }

    /// Sets a pool field only if it has no value yet.
    pub async fn pool_field_init(&self, id: u32, field: &str, value: &str) -> Result<bool> {
        self.query("HSETNX", (self.keys.pool(id), field, value))
            .await
    }

    /// Sets pool fields (a policy update, a secret rotation).
    pub async fn pool_fields_set(&self, id: u32, fields: &[(&str, String)]) -> Result<()> {
        // HSET without a field is a syntax error, and nothing to do.
        if fields.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.keys.pool(id));
        for (k, v) in fields {
            cmd.arg(*k).arg(v);
        }
        let _: i64 = cmd.query_async(&mut self.c()).await?;
        Ok(())
    }

    pub async fn pool_list(&self) -> Result<Vec<PoolRow>> {
        let ids: HashMap<String, u32> = self.query("HGETALL", self.keys.pools()).await?;
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids.values() {
            if let Some(row) = self.pool_by_id(*id).await? {
                rows.push(row);
            }
        }
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }

    /// Each shard's counters and, when `pair` names two participants' indexes, the first
    /// one's sticky entry for the second (`<number>|<ms>`) in that shard: what allocation
    /// orders the shards by. One pipelined round trip on one server or Sentinel; on a Cluster,
    /// whose client refuses a pipeline across slots, one small pipeline per shard, all sent
    /// at once.
    pub async fn shard_survey(
        &self,
        shards: &[ShardKeys],
        pair: Option<(&str, &str)>,
    ) -> Result<Vec<(ShardCounts, Option<String>)>> {
        let ask = |pipe: &mut redis::Pipeline, shard: &ShardKeys| {
            pipe.cmd("HMGET")
                .arg(shard.nums())
                .arg(&["#total", "#draining", "#open"]);
            // Without a pair, a read of a field no shard has keeps every shard's reply the
            // same shape, on a key of the shard's slot so a Cluster sends it with the rest.
            match pair {
                Some((a, _)) => pipe.cmd("HGET").arg(shard.entries(a)).arg(a),
                None => pipe.cmd("HGET").arg(shard.nums()).arg("#none"),
            };
        };
        let replies: Vec<Survey> = if self.kind() == StoreKind::Cluster {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, shard) in shards.iter().enumerate() {
                let mut pipe = redis::pipe();
                ask(&mut pipe, shard);
                let mut conn = self.c();
                tasks.spawn(async move {
                    let v: Vec<Survey> = pipe.query_async(&mut conn).await?;
                    Ok::<_, StoreError>((i, v))
                });
            }
            let mut replies = vec![Survey::default(); shards.len()];
            while let Some(done) = tasks.join_next().await {
                let (i, v) = done.map_err(|_| StoreError::Corrupt("shard survey task"))??;
                replies[i] = v.into_iter().next().unwrap_or_default();
            }
            replies
        } else {
            let mut pipe = redis::pipe();
            for shard in shards {
                ask(&mut pipe, shard);
            }
            pipe.query_async(&mut self.c()).await?
        };
        Ok(replies
            .into_iter()
            .map(|(c, entry)| {
                let c = |i: usize| c.get(i).copied().flatten().unwrap_or(0);
                let counts = ShardCounts {
                    total: c(0),
                    draining: c(1),
                    open: c(2),
                };
                let sticky = pair.zip(entry).and_then(|((_, b), raw)| {
                    Entry::parse(&raw)
                        .sticky_for(b)
                        .map(|s| format!("{}|{}", s.number, s.at))
                });
                (counts, sticky)
            })
            .collect())
    }
}
