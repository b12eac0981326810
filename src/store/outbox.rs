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

use super::{EventDraft, Result, ShardKeys, Store, StoreError, script, strings};

struct Scripts {
    put: Script,
    claim: Script,
    settle: Script,
    app_text: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    put: script(include_str!("lua/outbox_put.lua")),
    claim: script(include_str!("lua/outbox_claim.lua")),
    settle: script(include_str!("lua/outbox_settle.lua")),
    app_text: script(include_str!("lua/app_text.lua")),
});

/// What recording and queueing a text the app sends came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppTextQueued {
    /// Recorded and queued as this interaction.
    Queued(String),
    /// The reference was queued before, as this interaction: nothing new was written.
    Again(String),
    /// The session has ended.
    Closed,
    /// The recipient is not (or no longer) that side of the session.
    Stranger,
    /// No such session.
    Missing,
}

/// What a claim of a queue took, and when to come back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    pub items: Vec<Leased>,
    /// When the queue's earliest item falls due after the claim (a retry, or a lease that
    /// may run out unsettled), in ms; `None` when the queue is empty.
    pub next_due: Option<i64>,
}

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
    /// The participants' numbers stored sealed beside an event, for pools that send them;
    /// empty for texts and for other events.
    pub numbers: String,
}

/// One claimed item's settlement, for [`Store::queue_settle_many`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement<'a> {
    pub id: &'a str,
    pub token: &'a str,
    pub how: Settle<'a>,
    /// An attempt to append to the item's log, or empty.
    pub attempt: &'a str,
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
pub(super) fn legacy_tag(prefix: &str) -> String {
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

    /// Records a text the app sends in a session of `shard` as an interaction, and queues
    /// it (sealed, under `id`) in the shard's queue, due at once, in one step; the event,
    /// when the pool wants events, in the same step. Once per `reference`.
    #[allow(clippy::too_many_arguments)]
    pub async fn app_text(
        &self,
        shard: &ShardKeys,
        session_key: &str,
        recipient_idx: &str,
        side: u8,
        interaction: &str,
        provider: &str,
        reference: &str,
        ref_ttl_ms: i64,
        id: &str,
        sealed: &str,
        event: Option<&EventDraft>,
    ) -> Result<AppTextQueued> {
        let reply: Value = self
            .run_acked(
                &SCRIPTS.app_text,
                &shard.interaction_script_keys(provider, reference),
                &[
                    shard.tag(),
                    session_key,
                    recipient_idx,
                    if side == 0 { "0" } else { "1" },
                    interaction,
                    provider,
                    reference,
                    &ref_ttl_ms.to_string(),
                    id,
                    sealed,
                    event.map(|e| e.id.as_str()).unwrap_or(""),
                    event.map(|e| e.body.as_str()).unwrap_or(""),
                ],
            )
            .await?;
        let v = strings(reply)?;
        match (v.first().map(String::as_str), v.get(1)) {
            (Some("queued"), Some(iid)) => Ok(AppTextQueued::Queued(iid.clone())),
            (Some("again"), Some(iid)) => Ok(AppTextQueued::Again(iid.clone())),
            (Some("closed"), _) => Ok(AppTextQueued::Closed),
            (Some("stranger"), _) => Ok(AppTextQueued::Stranger),
            (Some("missing"), _) => Ok(AppTextQueued::Missing),
            _ => Err(StoreError::Corrupt("app_text reply")),
        }
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
    ) -> Result<Claim> {
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
    ) -> Result<Claim> {
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
        let Some((next_due, flat)) = flat.split_first().filter(|(_, rest)| rest.len() % 5 == 0)
        else {
            return Err(StoreError::Corrupt("queue claim reply"));
        };
        // A score is a double: Redis may print a whole number of ms with an exponent.
        let next_due = match next_due.as_str() {
            "" => None,
            due => Some(
                due.parse::<f64>()
                    .map_err(|_| StoreError::Corrupt("queue claim due time"))?
                    as i64,
            ),
        };
        let items = flat
            .chunks(5)
            .map(|c| {
                Ok(Leased {
                    id: c[0].clone(),
                    token: c[1].clone(),
                    sealed: c[2].clone(),
                    claims: c[3]
                        .parse()
                        .map_err(|_| StoreError::Corrupt("queue claim count"))?,
                    numbers: c[4].clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Claim { items, next_due })
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
        let one = Settlement {
            id,
            token,
            how,
            attempt,
        };
        let settled = self
            .queue_settle_many(tag, std::slice::from_ref(&one), keep_body)
            .await?;
        Ok(settled.first() == Some(&true))
    }

    /// Settles many claimed items of the queue under `tag` in one script, so a busy worker
    /// spends one round trip per shard, not one per item. One flag per item: false when
    /// its lease was lost (another worker holds it now).
    pub(crate) async fn queue_settle_many(
        &self,
        tag: &str,
        items: &[Settlement<'_>],
        keep_body: bool,
    ) -> Result<Vec<bool>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = SCRIPTS.settle.key(format!("{tag}q"));
        invocation.arg(tag).arg(if keep_body { "1" } else { "0" });
        for item in items {
            let (op, at, reason) = match item.how {
                Settle::Done { keep_ms } => ("done", keep_ms, ""),
                Settle::Retry { due } => ("retry", due, ""),
                Settle::Release { due } => ("release", due, ""),
                Settle::Failed { keep_ms, reason } => ("failed", keep_ms, reason),
            };
            invocation
                .arg(item.id)
                .arg(item.token)
                .arg(op)
                .arg(at)
                .arg(reason)
                .arg(item.attempt);
        }
        // Delivery bookkeeping: not confirmed by replicas (see HUSH_REDIS_WAIT_REPLICAS in
        // docs/operations.md); a settle lost in a failover means one more delivery attempt.
        let flags: Vec<i64> = invocation.invoke_async(&mut self.c()).await?;
        if flags.len() != items.len() {
            return Err(StoreError::Corrupt("queue settle reply"));
        }
        Ok(flags.into_iter().map(|f| f == 1).collect())
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
            hash_slot(&keys.shard(7, 0).due_buckets())
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
