//! Recordings of relayed calls: the provider's URL of each, sealed, kept beside the
//! interaction it belongs to (field `r:<interaction id>` of the session's interactions hash),
//! so it lives and goes with the session's interactions and an erasure can drop it alone.

use std::sync::LazyLock;

use redis::Script;

use super::{EventDraft, Result, ShardKeys, Store, script};

static RECORDING_PUT: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/recording_put.lua")));

impl Store {
    /// Attaches a sealed recording to an interaction and records its event, in one step;
    /// false when it was attached before (a retried callback) or has nowhere to go.
    pub async fn recording_put(
        &self,
        shard: &ShardKeys,
        session_key: &str,
        interaction: &str,
        sealed: &str,
        now: i64,
        event: Option<&EventDraft>,
    ) -> Result<bool> {
        let done: i64 = self
            .run(
                &RECORDING_PUT,
                &[shard.interactions(session_key)],
                (
                    shard.tag(),
                    session_key,
                    interaction,
                    sealed,
                    now,
                    event.map(|e| e.id.as_str()).unwrap_or(""),
                    event.map(|e| e.body.as_str()).unwrap_or(""),
                    event.map(|e| e.numbers.as_str()).unwrap_or(""),
                ),
            )
            .await?;
        Ok(done == 1)
    }

    /// Drops every recording of a session's interactions; how many went.
    pub async fn recordings_drop(&self, shard: &ShardKeys, session_key: &str) -> Result<usize> {
        let key = shard.interactions(session_key);
        let fields: Vec<String> = self.query("HKEYS", &key).await?;
        let recordings: Vec<&String> = fields.iter().filter(|f| f.starts_with("r:")).collect();
        if recordings.is_empty() {
            return Ok(0);
        }
        let dropped: usize = self.query("HDEL", (&key, recordings)).await?;
        Ok(dropped)
    }
}
