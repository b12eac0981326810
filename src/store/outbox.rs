//! The outbound text queue: texts hush must still send through a provider's API.
//!
//! One queue per pool shard, under the shard's hash tag (`<prefix>:{p7.0}:ox:`), so each
//! script touches one slot and a Redis Cluster node that fails holds up only the texts of
//! its own shards. A text waits in the shard of the proxy number it is sent from:
//! - `<tag>q` ZSET text id → time it may next be claimed (due time, or the end of the lease
//!   of the worker holding it);
//! - `<tag>m:<id>` HASH: `b` the sealed text, `s` state (`q` queued, `d` done, `f` failed),
//!   `n` claims so far, `l` the current lease token, `r` why it failed;
//! - `<tag>r:<provider>:<provider's message id>` STRING: the inbound reference a sent text
//!   belongs to, so the provider's delivery reports (which name the proxy number, hence the
//!   shard) find its interaction.
//!
//! Earlier versions kept every text under the one tag `<prefix>:{ox}:`. Workers still serve
//! that queue, so texts queued before an upgrade are sent; it also takes a text whose proxy
//! number no pool owns any more.
//!
//! Ids are keyed digests of the relayed text's key, so putting the same text twice is a
//! no-op, and a done or failed record is kept (without its text) long enough to absorb a
//! provider's webhook retries. A claim moves the text's score to the end of its lease and
//! sets a fresh token: nobody else can claim it until the lease runs out, and only the token
//! holder can settle it. A worker that dies holding a lease leaves the text to be claimed
//! again when the lease ends: at least once, never lost.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::{Result, ShardKeys, Store, StoreError, script, strings};

struct Scripts {
    put: Script,
    claim: Script,
    settle: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    put: script(include_str!("lua/outbox_put.lua")),
    claim: script(include_str!("lua/outbox_claim.lua")),
    settle: script(include_str!("lua/outbox_settle.lua")),
});

/// A text claimed by one worker until `lease_until`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leased {
    pub id: String,
    /// Proves the lease; settling with another token does nothing. Empty for a text given
    /// up at claim time as of unknown outcome (see [`Store::outbox_claim`]).
    pub token: String,
    pub sealed: String,
    /// How many times the text has been claimed, this claim included.
    pub claims: u32,
}

/// How a claimed text leaves the worker's hands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle<'a> {
    /// Sent: forget the text, keep the id for `keep_ms` so a retried webhook adds nothing.
    Done { keep_ms: i64 },
    /// Try again at `due` (ms).
    Retry { due: i64 },
    /// Not tried (the worker is stopping): due at once, and this claim does not count.
    Release { due: i64 },
    /// Given up: forget the text, keep the failure (`reason`) visible for `keep_ms`.
    Failed { keep_ms: i64, reason: &'a str },
}

/// The queue every text shared before texts were queued per pool shard: still served until
/// it is empty, so texts queued by an earlier version are sent after an upgrade.
fn legacy_tag(prefix: &str) -> String {
    format!("{prefix}:{{ox}}:")
}

impl Store {
    /// Where a text from a proxy number of `shard` waits; `None` (a number no pool owns any
    /// more) is the old shared queue, which every worker serves too.
    pub fn outbox_tag(&self, shard: Option<&ShardKeys>) -> String {
        match shard {
            Some(shard) => shard.outbox_tag(),
            None => legacy_tag(self.keys.prefix()),
        }
    }

    /// Every text queue: each pool shard's, then the old shared one.
    pub async fn outbox_tags(&self) -> Result<Vec<String>> {
        let mut tags: Vec<String> = self
            .every_shard()
            .await?
            .iter()
            .map(ShardKeys::outbox_tag)
            .collect();
        tags.push(self.outbox_tag(None));
        Ok(tags)
    }

    /// Queues a sealed text under `id` in the queue `tag`, due at `due`. False when the id
    /// was queued there before (whether it is still waiting, sent or failed).
    pub async fn outbox_put(&self, tag: &str, id: &str, sealed: &str, due: i64) -> Result<bool> {
        let added: i64 = SCRIPTS
            .put
            .key(format!("{tag}q"))
            .arg(tag)
            .arg(id)
            .arg(sealed)
            .arg(due)
            .invoke_async(&mut self.c())
            .await?;
        Ok(added == 1)
    }

    /// Whether the queue `tag` has a record of `id` (waiting, sent or given up).
    pub async fn outbox_seen(&self, tag: &str, id: &str) -> Result<bool> {
        self.query("EXISTS", format!("{tag}m:{id}")).await
    }

    /// Claims up to `limit` texts of the queue `tag` due at `now` for `lease_ms`. Each gets a
    /// token made of `token` and its position, so `token` must be unique per call.
    ///
    /// A text is sent at most once: one whose earlier lease ran out unsettled (its worker died
    /// or hung between claiming and settling, perhaps after the provider took it) is given up
    /// as of unknown outcome, kept for `unknown_keep_ms`, and returned with an empty token
    /// instead of being sent again.
    pub async fn outbox_claim(
        &self,
        tag: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
        token: &str,
        unknown_keep_ms: i64,
    ) -> Result<Vec<Leased>> {
        self.queue_claim(tag, now, lease_ms, limit, token, Some(unknown_keep_ms))
            .await
    }

    /// Settles a claimed text of the queue `tag`. False when the lease was lost (another
    /// worker holds it now).
    pub async fn outbox_settle(
        &self,
        tag: &str,
        id: &str,
        token: &str,
        how: Settle<'_>,
    ) -> Result<bool> {
        self.queue_settle(tag, id, token, how, false, "").await
    }

    /// Claims due items of the leased queue under `tag` (the outbound texts, or one shard's
    /// events): the same scripts serve every queue.
    pub(crate) async fn queue_claim(
        &self,
        tag: &str,
        now: i64,
        lease_ms: i64,
        limit: usize,
        token: &str,
        unknown_keep_ms: Option<i64>,
    ) -> Result<Vec<Leased>> {
        let reply: Value = SCRIPTS
            .claim
            .key(format!("{tag}q"))
            .arg(tag)
            .arg(now)
            .arg(lease_ms)
            .arg(limit)
            .arg(token)
            .arg(unknown_keep_ms.map(|ms| ms.to_string()).unwrap_or_default())
            .invoke_async(&mut self.c())
            .await?;
        let flat = strings(reply)?;
        if flat.len() % 4 != 0 {
            return Err(StoreError::Corrupt("queue claim reply"));
        }
        flat.chunks(4)
            .map(|c| {
                Ok(Leased {
                    id: c[0].clone(),
                    token: c[1].clone(),
                    sealed: c[2].clone(),
                    claims: c[3]
                        .parse()
                        .map_err(|_| StoreError::Corrupt("queue claim count"))?,
                })
            })
            .collect()
    }

    /// Settles a claimed item of the queue under `tag`, appending `attempt` to its log.
    pub(crate) async fn queue_settle(
        &self,
        tag: &str,
        id: &str,
        token: &str,
        how: Settle<'_>,
        keep_body: bool,
        attempt: &str,
    ) -> Result<bool> {
        let (op, at, reason) = match how {
            Settle::Done { keep_ms } => ("done", keep_ms, ""),
            Settle::Retry { due } => ("retry", due, ""),
            Settle::Release { due } => ("release", due, ""),
            Settle::Failed { keep_ms, reason } => ("failed", keep_ms, reason),
        };
        let changed: i64 = SCRIPTS
            .settle
            .key(format!("{tag}q"))
            .arg(tag)
            .arg(id)
            .arg(token)
            .arg(op)
            .arg(at)
            .arg(reason)
            .arg(if keep_body { "1" } else { "0" })
            .arg(attempt)
            .invoke_async(&mut self.c())
            .await?;
        Ok(changed == 1)
    }

    /// Remembers which inbound reference a provider's outbound message id belongs to, in the
    /// queue `tag` the text was sent from.
    pub async fn outbox_alias(
        &self,
        tag: &str,
        provider: &str,
        message_id: &str,
        reference: &str,
        keep_ms: i64,
    ) -> Result<()> {
        let _: () = self
            .query(
                "SET",
                (
                    format!("{tag}r:{provider}:{message_id}"),
                    reference,
                    "PX",
                    keep_ms,
                ),
            )
            .await?;
        Ok(())
    }

    /// The inbound reference of a provider's outbound message id, if hush sent it from the
    /// queue `tag`.
    pub async fn outbox_alias_of(
        &self,
        tag: &str,
        provider: &str,
        message_id: &str,
    ) -> Result<Option<String>> {
        self.query("GET", format!("{tag}r:{provider}:{message_id}"))
            .await
    }

    /// How many texts wait to be sent (due or leased), in every queue.
    pub async fn outbox_pending(&self) -> Result<u64> {
        let mut n = 0;
        for tag in self.outbox_tags().await? {
            n += self.query::<u64>("ZCARD", format!("{tag}q")).await?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::{Keys, hash_slot};
    use super::legacy_tag;

    #[test]
    fn outbox_keys_share_a_slot_and_scripts_derive_keys_from_the_tag() {
        let keys = Keys::new("hush");
        let tags = [
            legacy_tag("hush"),
            keys.shard(7, 0).outbox_tag(),
            keys.shard(7, 1).outbox_tag(),
        ];
        for tag in &tags {
            assert!(tag.starts_with("hush:"));
            let slot = hash_slot(&format!("{tag}q"));
            for k in ["m:abc", "r:telnyx:40"] {
                assert_eq!(hash_slot(&format!("{tag}{k}")), slot);
            }
        }
        // A shard's texts live in its slot, beside its sessions, not in a slot of their own.
        assert_eq!(
            hash_slot(&format!("{}q", tags[1])),
            hash_slot(&keys.shard(7, 0).transitions())
        );
        assert_ne!(
            hash_slot(&format!("{}q", tags[1])),
            hash_slot(&format!("{}q", tags[2]))
        );
        for body in [
            include_str!("lua/outbox_put.lua"),
            include_str!("lua/outbox_claim.lua"),
            include_str!("lua/outbox_settle.lua"),
        ] {
            for (i, _) in body.match_indices("redis.call(") {
                let call = &body[i..body[i..].find(')').map(|e| i + e).unwrap_or(body.len())];
                let key_arg = call.split(',').nth(1).unwrap_or("").trim();
                assert!(
                    key_arg.starts_with("KEYS[") || key_arg == "m" || key_arg == "q",
                    "script builds a key outside the outbox tag: {call}"
                );
            }
        }
    }
}
