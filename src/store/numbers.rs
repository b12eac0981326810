//! Proxy numbers on the Redis side: which shard owns a number (`owner` entries outside any
//! shard), and adding, draining and removing a number inside its shard.

use std::collections::HashMap;

use super::{Result, ShardKeys, Store, StoreError};

/// A number's row in its shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberRow {
    pub number: String,
    pub caps: String,
    pub state: String,
    pub holding: i64,
    pub open: i64,
}

impl Store {
    /// Which shard owns a proxy number, if any: `(pool id, shard)`.
    pub async fn number_owner(&self, number: &str) -> Result<Option<(u32, u16)>> {
        let v: Option<String> = self.query("GET", self.keys.owner(number)).await?;
        Ok(v.and_then(|s| parse_owner(&s)))
    }

    /// Claims a number for a shard; returns the owner afterwards (ours or someone else's).
    pub async fn number_claim(&self, number: &str, shard: &ShardKeys) -> Result<(u32, u16)> {
        let owner = format!("{}.{}", shard.pool_id, shard.shard);
        let set: Option<String> = self
            .query_acked("SET", (self.keys.owner(number), &owner, "NX"))
            .await?;
        if set.is_some() {
            return Ok((shard.pool_id, shard.shard));
        }
        self.number_owner(number)
            .await?
            .ok_or(StoreError::Corrupt("number owner vanished"))
    }

    /// Forgets which shard a number belongs to (its pool is gone).
    pub async fn number_disown(&self, number: &str) -> Result<()> {
        let _: i64 = self.query("DEL", self.keys.owner(number)).await?;
        Ok(())
    }

    /// `Some(true)` added, `Some(false)` already in the shard, `None` its pool was deleted.
    pub async fn number_add(
        &self,
        shard: &ShardKeys,
        number: &str,
        caps: &str,
        geos: &str,
    ) -> Result<Option<bool>> {
        let added: i64 = self
            .run_acked(
                &self.scripts.number_add,
                &shard.number_script_keys(),
                (shard.tag(), number, caps, geos),
            )
            .await?;
        Ok((added >= 0).then_some(added == 1))
    }

    pub async fn number_set_state(
        &self,
        shard: &ShardKeys,
        number: &str,
        state: &str,
    ) -> Result<bool> {
        let r: i64 = self
            .run_acked(
                &self.scripts.number_state,
                &shard.number_script_keys(),
                (shard.tag(), number, state),
            )
            .await?;
        Ok(r == 1)
    }

    /// `Some(true)` removed, `Some(false)` still held by a session, `None` not in the shard.
    pub async fn number_remove(&self, shard: &ShardKeys, number: &str) -> Result<Option<bool>> {
        let r: i64 = self
            .run_acked(
                &self.scripts.number_remove,
                &shard.number_script_keys(),
                (shard.tag(), number),
            )
            .await?;
        if r == 1 {
            // Only the owner entry is left; removing it last means a crash in between leaves
            // a claim that re-adding the number to the same pool repairs.
            let _: i64 = self.query("DEL", self.keys.owner(number)).await?;
        }
        Ok(match r {
            1 => Some(true),
            0 => Some(false),
            _ => None,
        })
    }

    pub async fn numbers(&self, shard: &ShardKeys) -> Result<Vec<NumberRow>> {
        let all: HashMap<String, String> = self.query("HGETALL", shard.nums()).await?;
        let mut rows = Vec::new();
        for (field, meta) in &all {
            if !field.starts_with('+') || field.contains(':') {
                continue;
            }
            let mut parts = meta.splitn(3, '|');
            let caps = parts.next().unwrap_or_default().to_string();
            let state = parts.next().unwrap_or_default().to_string();
            let count = |suffix: &str| {
                all.get(&format!("{field}:{suffix}"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            rows.push(NumberRow {
                number: field.clone(),
                caps,
                state,
                holding: count("h"),
                open: count("o"),
            });
        }
        rows.sort_by(|a, b| a.number.cmp(&b.number));
        Ok(rows)
    }
}

pub(super) fn parse_owner(s: &str) -> Option<(u32, u16)> {
    let (p, sh) = s.split_once('.')?;
    Some((p.parse().ok()?, sh.parse().ok()?))
}
