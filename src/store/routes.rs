//! Routes and the relay on the Redis side: a participant's route records, forgetting a
//! participant, single-use tokens, and claiming and updating an inbound interaction.

use std::collections::HashMap;

use redis::Value;

use super::{EventDraft, Result, ShardKeys, Store, StoreError, strings};

/// A route record: what one participant reaches through one proxy number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRow {
    pub session_key: String,
    pub mode: String,
    pub open_until: i64,
    pub held_until: i64,
    pub sealed_other: String,
}

impl RouteRow {
    pub fn parse(rec: &str) -> Option<RouteRow> {
        let mut it = rec.splitn(5, '|');
        Some(RouteRow {
            session_key: it.next()?.to_string(),
            mode: it.next()?.to_string(),
            open_until: it.next()?.parse().ok()?,
            held_until: it.next()?.parse().ok()?,
            sealed_other: it.next()?.to_string(),
        })
    }
}

/// What the relay script answered for an inbound call or text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    Connect {
        record: String,
        interaction: String,
        replay: bool,
        /// The pool's intercept has not answered for this interaction yet.
        pending: bool,
    },
    /// The app's intercept blocked this interaction: its message, sealed, or `""` for the
    /// pool's message.
    Block {
        sealed_message: String,
        interaction: String,
    },
    Announce,
}

impl Store {
    pub async fn routes_of(&self, shard: &ShardKeys, idx: &str) -> Result<HashMap<String, String>> {
        self.query("HGETALL", shard.routes(idx)).await
    }

    pub async fn forget_participant(&self, shard: &ShardKeys, idx: &str, now: i64) -> Result<()> {
        let _: i64 = self
            .run_acked(
                &self.scripts.participant_forget,
                &shard.forget_script_keys(idx),
                (shard.tag(), idx, now),
            )
            .await?;
        Ok(())
    }

    /// Remembers that a single-use token was used for the request `fingerprint` names, for
    /// `ttl_ms`. True when this is its first use or the same request again; false when the
    /// token already came with another request. One atomic `SET NX GET`, so two deliveries
    /// racing cannot both be first.
    pub async fn token_once(&self, key: &str, fingerprint: &str, ttl_ms: i64) -> Result<bool> {
        let before: Option<String> = self
            .query("SET", (key, fingerprint, "NX", "GET", "PX", ttl_ms.max(1)))
            .await?;
        Ok(before.is_none_or(|b| b == fingerprint))
    }

    /// Resolves and records an inbound call or text in one step (one round trip).
    #[allow(clippy::too_many_arguments)]
    pub async fn relay_claim(
        &self,
        shard: &ShardKeys,
        idx: Option<&str>,
        proxy: &str,
        now: i64,
        kind: &str,
        provider: &str,
        provider_ref: &str,
        new_interaction: &str,
        ref_ttl_ms: i64,
        event: Option<&EventDraft>,
        intercept: bool,
    ) -> Result<Claimed> {
        let reply: Value = self
            .run(
                &self.scripts.relay_claim,
                &shard.relay_script_keys(idx, provider, provider_ref),
                (
                    shard.tag(),
                    proxy,
                    now,
                    kind,
                    provider,
                    provider_ref,
                    new_interaction,
                    ref_ttl_ms,
                    idx.unwrap_or(""),
                    event.map(|e| e.id.as_str()).unwrap_or(""),
                    event.map(|e| e.body.as_str()).unwrap_or(""),
                    if intercept { "1" } else { "0" },
                ),
            )
            .await?;
        let v = strings(reply)?;
        match v.first().map(String::as_str) {
            Some("connect") if v.len() == 5 => Ok(Claimed::Connect {
                record: v[1].clone(),
                interaction: v[2].clone(),
                replay: v[3] == "1",
                pending: v[4] == "1",
            }),
            Some("block") if v.len() == 3 => Ok(Claimed::Block {
                sealed_message: v[1].clone(),
                interaction: v[2].clone(),
            }),
            Some("announce") => Ok(Claimed::Announce),
            _ => Err(StoreError::Corrupt("relay_claim reply")),
        }
    }

    /// Applies a status callback; false when the reference is unknown or already final.
    /// `verdict` is the intercept's answer (`"c"` allowed, `"b"` blocked, with the block
    /// message sealed or `""`): it becomes what retries of the request are answered.
    #[allow(clippy::too_many_arguments)]
    pub async fn interaction_update(
        &self,
        shard: &ShardKeys,
        provider: &str,
        provider_ref: &str,
        status: &str,
        now: i64,
        duration_secs: Option<u32>,
        last: bool,
        event: Option<&EventDraft>,
        verdict: Option<(&str, &str)>,
    ) -> Result<bool> {
        let changed: i64 = self
            .run(
                &self.scripts.interaction_update,
                &shard.interaction_script_keys(provider, provider_ref),
                (
                    shard.tag(),
                    status,
                    now,
                    duration_secs.map(|d| d.to_string()).unwrap_or_default(),
                    if last { "1" } else { "0" },
                    event.map(|e| e.id.as_str()).unwrap_or(""),
                    event.map(|e| e.body.as_str()).unwrap_or(""),
                    verdict.map(|v| v.0).unwrap_or(""),
                    verdict.map(|v| v.1).unwrap_or(""),
                ),
            )
            .await?;
        Ok(changed == 1)
    }

    pub async fn interactions(
        &self,
        shard: &ShardKeys,
        session_key: &str,
    ) -> Result<HashMap<String, String>> {
        self.query("HGETALL", shard.interactions(session_key)).await
    }
}
