//! Pools on the Redis side: the name → id index, each pool's policy hash and shard count,
//! creating and re-sizing a pool, and emptying a shard of a pool being deleted.

use std::collections::HashMap;

use redis::Value;

use super::{Result, ShardKeys, Store, StoreError, strings};

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
}

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

    /// Creates a pool, or replaces the fields given of an existing one. Returns the row and
    /// whether it was new.
    pub async fn pool_put(
        &self,
        name: &str,
        fields: &[(&str, String)],
        shards: u16,
    ) -> Result<(PoolRow, bool)> {
        // A pool deleted between finding its id and writing to it is made anew.
        for _ in 0..3 {
            let (id, created) = match self.pool_id(name).await? {
                Some(id) => {
                    if self.pool_set(id, "*", fields).await? == PoolSet::Gone {
                        continue;
                    }
                    (id, false)
                }
                None => self.pool_create(name, fields, shards).await?,
            };
            if let Some(row) = self.pool_by_id(id).await? {
                return Ok((row, created));
            }
        }
        Err(StoreError::Corrupt("pool vanished while written"))
    }

    /// A new pool, or the one a concurrent request created under the same name.
    async fn pool_create(
        &self,
        name: &str,
        fields: &[(&str, String)],
        shards: u16,
    ) -> Result<(u32, bool)> {
        let fresh: u32 = self.query("INCR", self.keys.pool_seq()).await?;
        // Write the policy before publishing the name, so a reader that finds the name
        // always finds a whole pool.
        let mut init = redis::cmd("HSET");
        init.arg(self.keys.pool(fresh))
            .arg("name")
            .arg(name)
            .arg("shards")
            .arg(shards);
        for (k, v) in fields {
            init.arg(*k).arg(v);
        }
        let _: i64 = init.query_async(&mut self.c()).await?;
        let won: bool = self
            .query_acked("HSETNX", (self.keys.pools(), name, fresh))
            .await?;
        if won {
            return Ok((fresh, true));
        }
        let _: i64 = self.query("DEL", self.keys.pool(fresh)).await?;
        let id = self
            .pool_id(name)
            .await?
            .ok_or(StoreError::Corrupt("pool vanished while created"))?;
        if self.pool_set(id, "*", fields).await? == PoolSet::Gone {
            return Err(StoreError::Corrupt("pool vanished while created"));
        }
        Ok((id, false))
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
        let r: i64 = self
            .run_acked(&self.scripts.pool_set, self.keys.pool(id), args)
            .await?;
        Ok(match r {
            1 => PoolSet::Written,
            0 => PoolSet::Moved,
            _ => PoolSet::Gone,
        })
    }

    /// Empties one shard of a pool being deleted: `None` while one of its numbers holds a
    /// session, else the numbers it held (their owner entries are deleted here too).
    pub async fn pool_shard_delete(&self, shard: &ShardKeys) -> Result<Option<Vec<String>>> {
        let reply: Value = self
            .run(
                &self.scripts.pool_shard_delete,
                (shard.nums(), shard.transitions()),
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

    pub async fn shard_counts(&self, shard: &ShardKeys) -> Result<ShardCounts> {
        let v: (Option<i64>, Option<i64>, Option<i64>) = self
            .query("HMGET", (shard.nums(), "#total", "#draining", "#open"))
            .await?;
        Ok(ShardCounts {
            total: v.0.unwrap_or(0),
            draining: v.1.unwrap_or(0),
            open: v.2.unwrap_or(0),
        })
    }
}
