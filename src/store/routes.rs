//! Routes and the relay on the Redis side: a participant's entry (routes and sticky memory),
//! forgetting a participant, single-use tokens, and claiming and updating an inbound
//! interaction.

use std::collections::HashMap;

use redis::Value;

use super::{EventDraft, Result, ShardKeys, Store, StoreError, strings};
use crate::domain::{Access, CallOptions, PoolPolicy, SessionOptions};

/// A participant's entry in its bucket (see `lua/common.lua`): the routes it holds, proxy
/// number → session key, the PIN sessions it is in (proxy number, session key), and its
/// sticky memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub routes: Vec<(String, String)>,
    pub pins: Vec<(String, String)>,
    pub stubs: Vec<Stub>,
}

/// Which number a participant last shared with another, named by the first eight
/// characters of the other's index, and when that ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stub {
    pub number: String,
    pub other: String,
    pub at: i64,
}

impl Entry {
    pub fn parse(raw: &str) -> Entry {
        let mut entry = Entry::default();
        for item in raw.split(',').filter(|i| !i.is_empty()) {
            if let Some((number, key)) = item.split_once('=') {
                entry.routes.push((number.to_string(), key.to_string()));
            } else if let Some((number, key)) = item.split_once('#') {
                entry.pins.push((number.to_string(), key.to_string()));
            } else {
                let mut parts = item.splitn(3, '~');
                if let (Some(number), Some(other), Some(Ok(at))) =
                    (parts.next(), parts.next(), parts.next().map(str::parse))
                {
                    entry.stubs.push(Stub {
                        number: number.to_string(),
                        other: other.to_string(),
                        at,
                    });
                }
            }
        }
        entry
    }

    /// The keys of every session the participant is in here, by route or by PIN, once each.
    pub fn session_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        for (_, key) in self.routes.iter().chain(&self.pins) {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
        keys
    }

    /// The number this participant last shared with `other_idx`, and when that ended.
    pub fn sticky_for(&self, other_idx: &str) -> Option<&Stub> {
        let short = other_idx.get(..8).unwrap_or(other_idx);
        self.stubs
            .iter()
            .filter(|s| s.other == short)
            .max_by_key(|s| s.at)
    }
}

/// What a caller reaches: the session, the caller's side (0 or 1) and the session's sealed
/// blob, whose other participant is the one to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reach {
    pub session_key: String,
    pub side: usize,
    pub blob: String,
    /// What a call connected to the other party carries, from the session's options.
    pub call: CallOptions,
}

impl Reach {
    /// `<session key>|<side>|<blob>[|<options>]`: the blob is base64, so the options (the
    /// record's last field, absent from records written before there were any) follow it.
    pub fn parse(raw: &str) -> Option<Reach> {
        let mut it = raw.splitn(4, '|');
        Some(Reach {
            session_key: it.next()?.to_string(),
            side: it.next()?.parse().ok().filter(|s| *s < 2)?,
            blob: it.next()?.to_string(),
            call: SessionOptions::parse(it.next().unwrap_or("")).call(),
        })
    }
}

/// What the relay script answered for an inbound call or text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    Connect {
        reach: Reach,
        interaction: String,
        replay: bool,
        /// The pool's intercept has not answered for this interaction yet.
        pending: bool,
        /// How the caller reached the session.
        access: Access,
        /// The text opened with the session's PIN, which is not to be passed on.
        strip_pin: bool,
    },
    /// Ask the caller for a PIN: the `attempt`th prompt; `own_route` when silence connects
    /// the caller's own session.
    Gather {
        attempt: u8,
        own_route: bool,
    },
    /// The app's intercept blocked this interaction: its message, sealed, or `""` for the
    /// pool's message.
    Block {
        sealed_message: String,
        interaction: String,
    },
    Announce(Unreached),
}

/// Why a call or text reached nobody.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreached {
    /// No session of the caller's, and no PIN asked for.
    Nobody,
    /// A wrong PIN after the last prompt (or in a text).
    WrongPin,
    /// Too many wrong PINs from this caller on this number within a minute.
    Limited,
    /// The PIN of a session that has ended.
    Ended,
    /// A text that needs a PIN and opened with none.
    NeedsPin,
}

/// What a PIN lookup brings to the relay script: the PIN's blind index (typed at a prompt,
/// or the digits a text opened with), the prompt it answers, and the pool's PIN rules.
#[derive(Clone, Copy, Debug, Default)]
pub struct PinClaim<'a> {
    pub pin_index: &'a str,
    /// `None` for a call or text arriving; the prompt the typed digits answer.
    pub attempt: Option<u8>,
    pub prompts: u8,
    pub failure_limit: u8,
    pub caller_check: bool,
}

impl<'a> PinClaim<'a> {
    /// The pool's PIN rules, for `pin_index` typed at prompt `attempt` (none: a call or text
    /// arriving).
    pub fn under(policy: &PoolPolicy, pin_index: &'a str, attempt: Option<u8>) -> PinClaim<'a> {
        PinClaim {
            pin_index,
            attempt,
            prompts: policy.pin_retry.saturating_add(1),
            failure_limit: policy.pin_failure_limit,
            caller_check: policy.pin_caller_check,
        }
    }
}

/// What recording a call the app starts came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallStarted {
    Recorded,
    /// No such session.
    Gone,
    /// The session has ended.
    Closed,
    /// The session carries texts only.
    TextsOnly,
}

impl Store {
    /// A participant's entry in one shard (empty when it holds nothing there).
    pub async fn entry_of(&self, shard: &ShardKeys, idx: &str) -> Result<Entry> {
        let raw: Option<String> = self.query("HGET", (shard.entries(idx), idx)).await?;
        Ok(raw.map(|r| Entry::parse(&r)).unwrap_or_default())
    }

    pub async fn forget_participant(&self, shard: &ShardKeys, idx: &str, now: i64) -> Result<()> {
        let _: i64 = self
            .run_acked(
                &self.scripts.participant_forget,
                &shard.forget_script_keys(idx),
                (shard.tag(), idx, now, super::STICKY_WINDOW_MS),
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
        pin: PinClaim<'_>,
    ) -> Result<Claimed> {
        let reply: Value = self
            .run_function(
                &self.scripts.relay_claim,
                &shard.relay_script_keys(idx, provider, provider_ref),
                (
                    (shard.tag(), proxy, now, kind, provider, provider_ref),
                    new_interaction,
                    ref_ttl_ms,
                    idx.unwrap_or(""),
                    event.map(|e| e.id.as_str()).unwrap_or(""),
                    event.map(|e| e.body.as_str()).unwrap_or(""),
                    if intercept { "1" } else { "0" },
                    (
                        pin.pin_index,
                        pin.attempt.map(|a| a.to_string()).unwrap_or_default(),
                        pin.prompts,
                        pin.failure_limit,
                        if pin.caller_check { "1" } else { "0" },
                        super::STICKY_WINDOW_MS,
                    ),
                ),
            )
            .await?;
        let v = strings(reply)?;
        match v.first().map(String::as_str) {
            Some("connect") if v.len() >= 5 => Ok(Claimed::Connect {
                reach: Reach::parse(&v[1]).ok_or(StoreError::Corrupt("relay_claim reach"))?,
                interaction: v[2].clone(),
                replay: v[3] == "1",
                pending: v[4] == "1",
                access: if v.get(5).is_some_and(|a| a == "p") {
                    Access::Pin
                } else {
                    Access::Direct
                },
                strip_pin: v.get(6).is_some_and(|s| s == "1"),
            }),
            Some("gather") if v.len() == 3 => Ok(Claimed::Gather {
                attempt: v[1]
                    .parse()
                    .map_err(|_| StoreError::Corrupt("relay_claim prompt"))?,
                own_route: v[2] == "1",
            }),
            Some("block") if v.len() == 3 => Ok(Claimed::Block {
                sealed_message: v[1].clone(),
                interaction: v[2].clone(),
            }),
            Some("announce") => Ok(Claimed::Announce(match v.get(1).map(String::as_str) {
                Some("wrong") => Unreached::WrongPin,
                Some("limited") => Unreached::Limited,
                Some("ended") => Unreached::Ended,
                Some("prompt") => Unreached::NeedsPin,
                _ => Unreached::Nobody,
            })),
            _ => Err(StoreError::Corrupt("relay_claim reply")),
        }
    }

    /// Records a call the app starts as an interaction of session `session_key` (see
    /// `lua/call_start.lua`), under `reference` for `provider`, before the provider places it.
    /// `side` is the participant the proxy number stands for, `code` the record's kind.
    #[allow(clippy::too_many_arguments)]
    pub async fn call_start(
        &self,
        shard: &ShardKeys,
        session_key: &str,
        code: &str,
        side: usize,
        interaction: &str,
        provider: &str,
        reference: &str,
        ref_ttl_ms: i64,
        event: Option<&EventDraft>,
    ) -> Result<CallStarted> {
        let reply: String = self
            .run_acked(
                &self.scripts.call_start,
                &shard.interaction_script_keys(provider, reference),
                (
                    shard.tag(),
                    session_key,
                    side,
                    interaction,
                    provider,
                    reference,
                    ref_ttl_ms,
                    event.map(|e| e.id.as_str()).unwrap_or(""),
                    event.map(|e| e.body.as_str()).unwrap_or(""),
                    code,
                ),
            )
            .await?;
        match reply.as_str() {
            "ok" => Ok(CallStarted::Recorded),
            "gone" => Ok(CallStarted::Gone),
            "closed" => Ok(CallStarted::Closed),
            "mode" => Ok(CallStarted::TextsOnly),
            _ => Err(StoreError::Corrupt("call_start reply")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_reads_routes_pin_sessions_and_sticky_memory() {
        let e = Entry::parse(
            "+12015550100=0abc,+12015550100#0def,+12015550100#0ghi,+12015550101~k3j8a9Zq~1767225600000",
        );
        assert_eq!(e.routes, [("+12015550100".to_string(), "0abc".to_string())]);
        assert_eq!(e.pins.len(), 2);
        assert_eq!(e.stubs.len(), 1);
        assert_eq!(e.session_keys(), ["0abc", "0def", "0ghi"]);
        let twice = Entry::parse("+12015550100=0abc,+12015550101#0abc");
        assert_eq!(twice.session_keys(), ["0abc"]);
    }

    #[test]
    fn entries_parse_routes_and_sticky_memory() {
        let e = Entry::parse("+12125550100=k9z0,+12125550101~AbCdEfGh~100,+1212~AbCdEfGh~200,bad");
        assert_eq!(e.routes, vec![("+12125550100".into(), "k9z0".into())]);
        assert_eq!(e.stubs.len(), 2);
        assert_eq!(e.sticky_for("AbCdEfGhIjKl").unwrap().number, "+1212");
        assert!(e.sticky_for("Zz").is_none());
        assert_eq!(Entry::parse(""), Entry::default());
    }

    #[test]
    fn a_reach_names_its_side() {
        let r = Reach::parse("k9z0|1|c2Vh").unwrap();
        assert_eq!(
            (r.session_key.as_str(), r.side, r.blob.as_str()),
            ("k9z0", 1, "c2Vh")
        );
        assert_eq!(r.call, CallOptions::default());
        // The session's options follow its blob.
        let r = Reach::parse("k9z0|0|c2Vh|rm,l90,d60,w5").unwrap();
        assert_eq!((r.blob.as_str(), r.side), ("c2Vh", 0));
        assert_eq!(r.call.max_call_secs, Some(90));
        assert_eq!(r.call.record, Some(crate::domain::RecordChannels::Mono));
        assert!(Reach::parse("k9z0|2|c2Vh").is_none());
        assert!(Reach::parse("k9z0").is_none());
    }
}
