//! Sessions on the Redis side: creating one (routes, the number's load, the record and its
//! bucket's due time in one script), reading it, ending or extending it, and what is due.

use std::collections::HashMap;

use redis::Value;

use super::{EventDraft, IdemMark, Result, ShardKeys, Store, StoreError, strings};
use crate::domain::SessionOptions;

/// Everything the session-create script needs; built by the broker.
pub struct CreateArgs<'a> {
    pub shard: &'a ShardKeys,
    pub session_key: &'a str,
    pub now: i64,
    pub expires: i64,
    pub cooloff_ms: i64,
    pub class: &'a str,
    pub idx_a: &'a str,
    pub idx_b: &'a str,
    pub levels: &'a str,
    pub blob: &'a str,
    /// The session's metadata, sealed, or `""` when it has none.
    pub metadata: &'a str,
    /// The session's options as its record keeps them ([`SessionOptions::encode`]).
    pub options: &'a str,
    pub sticky_window_ms: i64,
    pub area_tag: &'a str,
    pub country_tag: &'a str,
    /// The session.created event, recorded in the same step (`__PROXY__` in its body
    /// stands for the number chosen).
    pub event: Option<&'a EventDraft>,
    /// The pool.low event to record if this session takes the pool over its threshold
    /// (percent of numbers carrying an open session).
    pub low: Option<(&'a EventDraft, u8)>,
    /// For an idempotent create: the script refuses to make a second session for a request
    /// its shard already holds one for, and marks the one it makes.
    pub idempotency: Option<IdemMark<'a>>,
    /// The number the app asked for: the script claims that one or refuses
    /// ([`Created::Refused`]) instead of allocating.
    pub proxy_number: Option<&'a str>,
    /// Take the pair's last shared number only when no other is free.
    pub avoid_sticky: bool,
    /// For a PIN session: the PIN length and each side's candidate PIN indexes, in order;
    /// the script takes the first of each that is free on the number it chooses.
    pub pins: Option<PinCandidates<'a>>,
}

/// The PINs a PIN session may get, as blind indexes, for side 0 and side 1.
#[derive(Clone, Copy, Debug)]
pub struct PinCandidates<'a> {
    pub length: u8,
    pub side: [&'a [String]; 2],
}

/// The session.closed events a session change may record: one for an expiry the change
/// notices, one for the ending the change itself makes (close, erase).
#[derive(Clone, Debug, Default)]
pub struct EndEvents {
    pub expired: Option<EventDraft>,
    pub own: Option<EventDraft>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    Ok {
        number: String,
        level: String,
        reap_due: bool,
        /// The numbers the two participants held in the shard before this one.
        held: u64,
        /// For a PIN session: which candidate of each side it got (0-based).
        pins: Option<[usize; 2]>,
    },
    Exhausted {
        reap_due: bool,
        /// The numbers the two participants hold in the shard, all refused to them.
        held: u64,
    },
    /// The shard already holds the session of this idempotent request.
    Existing {
        session_key: String,
        fingerprint: String,
        reap_due: bool,
    },
    /// The number asked for cannot be had.
    Refused { why: Refusal, reap_due: bool },
}

/// Why the create script refused the number asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The shard does not hold it (removed since its owner entry was read).
    Missing,
    /// It lacks the capability the session's mode needs.
    Capability,
    Draining,
    /// The participant of this side (0 or 1) holds it, open or cooling off.
    Held(u8),
}

/// How a session changes in [`Store::session_end`].
#[derive(Clone, Debug)]
pub enum EndOp<'a> {
    Close,
    Extend {
        expires: i64,
    },
    /// `read` is the record's `a|b` as the caller read them; the erase is refused
    /// ([`Ended::Retry`]) if they changed since.
    Erase {
        side: &'a str,
        blob: &'a str,
        read: &'a str,
        /// The session's metadata sealed apart, when the blob being replaced held it
        /// (records of layout 1 keep metadata inside their blob).
        metadata: &'a str,
    },
    Reap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Ok,
    Missing,
    AlreadyClosed,
    NotDue,
    /// The record changed since the caller read it: read again and retry.
    Retry,
}

impl Store {
    pub async fn session_create(&self, a: &CreateArgs<'_>) -> Result<Created> {
        let s = a.shard;
        let reply: Value = self
            .run_acked(
                &self.scripts.session_create,
                &s.create_script_keys(a.idx_a, a.idx_b, a.session_key),
                (
                    (
                        s.tag(),
                        a.now,
                        a.expires,
                        a.cooloff_ms,
                        a.class,
                        a.idx_a,
                        a.idx_b,
                        a.levels,
                        rand::random::<u32>(),
                        a.session_key,
                        a.metadata,
                        a.options,
                    ),
                    (
                        a.blob,
                        a.sticky_window_ms,
                        a.area_tag,
                        a.country_tag,
                        a.event.map(|e| e.id.as_str()).unwrap_or(""),
                        a.event.map(|e| e.body.as_str()).unwrap_or(""),
                        a.event.map(|e| e.numbers.as_str()).unwrap_or(""),
                        a.low.map(|(e, _)| e.id.as_str()).unwrap_or(""),
                        a.low.map(|(_, t)| t).unwrap_or(100),
                        a.low.map(|(e, _)| e.body.as_str()).unwrap_or(""),
                        a.idempotency.map(|m| m.digest).unwrap_or(""),
                        a.idempotency.map(|m| m.fingerprint).unwrap_or(""),
                    ),
                    a.idempotency.map(|m| m.ttl_ms).unwrap_or(0),
                    if a.avoid_sticky { "1" } else { "" },
                    a.proxy_number.unwrap_or(""),
                    (
                        if a.pins.is_some() { "1" } else { "" },
                        a.pins.map(|p| p.length).unwrap_or(0),
                        a.pins.map(|p| p.side[0].join(",")).unwrap_or_default(),
                        a.pins.map(|p| p.side[1].join(",")).unwrap_or_default(),
                    ),
                ),
            )
            .await?;
        let v = strings(reply)?;
        match v.first().map(String::as_str) {
            Some("1") if v.len() >= 4 => Ok(Created::Ok {
                number: v[1].clone(),
                level: v[2].clone(),
                reap_due: v[3] == "1",
                held: v.get(4).and_then(|n| n.parse().ok()).unwrap_or(0),
                pins: match (v.get(5), v.get(6)) {
                    (Some(x), Some(y)) => {
                        let at =
                            |p: &String| p.parse::<usize>().ok().and_then(|p| p.checked_sub(1));
                        Some([
                            at(x).ok_or(StoreError::Corrupt("session_create pin"))?,
                            at(y).ok_or(StoreError::Corrupt("session_create pin"))?,
                        ])
                    }
                    _ => None,
                },
            }),
            Some("2") if v.len() == 4 => Ok(Created::Existing {
                session_key: v[1].clone(),
                fingerprint: v[2].clone(),
                reap_due: v[3] == "1",
            }),
            Some("3") if v.len() == 3 => Ok(Created::Refused {
                why: match v[1].as_str() {
                    "missing" => Refusal::Missing,
                    "capability" => Refusal::Capability,
                    "draining" => Refusal::Draining,
                    "held_a" => Refusal::Held(0),
                    "held_b" => Refusal::Held(1),
                    _ => return Err(StoreError::Corrupt("session_create refusal")),
                },
                reap_due: v[2] == "1",
            }),
            Some("0") => Ok(Created::Exhausted {
                reap_due: v.get(1).is_some_and(|d| d == "1"),
                held: v.get(2).and_then(|n| n.parse().ok()).unwrap_or(0),
            }),
            _ => Err(StoreError::Corrupt("session_create reply")),
        }
    }

    /// A session record as its fields (the names of `SFIELDS` in `lua/common.lua`, `h` the
    /// end of its hold, and `y` its sealed metadata; empty fields left out); empty when there
    /// is none. One round trip.
    pub async fn session(&self, shard: &ShardKeys, key: &str) -> Result<HashMap<String, String>> {
        let (raw, metadata): (Option<String>, Option<String>) = redis::pipe()
            .cmd("HGET")
            .arg(shard.session_bucket(key))
            .arg(key)
            .cmd("GET")
            .arg(shard.metadata(key))
            .query_async(&mut self.c())
            .await?;
        let Some(raw) = raw else {
            return Ok(HashMap::new());
        };
        let mut rec = session_fields(&raw);
        if let Some(m) = metadata {
            rec.insert("y".into(), m);
        }
        Ok(rec)
    }

    /// Runs one change on a session.
    pub async fn session_end(
        &self,
        shard: &ShardKeys,
        key: &str,
        now: i64,
        op: EndOp<'_>,
        events: &EndEvents,
    ) -> Result<Ended> {
        let expired = events.expired.as_ref();
        let own = events.own.as_ref();
        let numbers = expired.or(own).map(|e| e.numbers.as_str()).unwrap_or("");
        // The reaper's changes are acknowledged to no one and redone by the next pass.
        let acked = !matches!(op, EndOp::Reap);
        let (name, arg, blob, read, metadata) = match op {
            EndOp::Close => ("close", "closed".to_string(), "", "", ""),
            EndOp::Extend { expires } => ("extend", expires.to_string(), "", "", ""),
            EndOp::Erase {
                side,
                blob,
                read,
                metadata,
            } => ("erase", side.to_string(), blob, read, metadata),
            EndOp::Reap => ("reap", String::new(), "", "", ""),
        };
        let keys = shard.end_script_keys(key);
        let args = (
            (
                shard.tag(),
                now,
                key,
                name,
                arg,
                blob,
                expired.map(|e| e.id.as_str()).unwrap_or(""),
                expired.map(|e| e.body.as_str()).unwrap_or(""),
                own.map(|e| e.id.as_str()).unwrap_or(""),
                own.map(|e| e.body.as_str()).unwrap_or(""),
                numbers,
                read,
            ),
            (STICKY_WINDOW_MS, metadata),
        );
        let script = &self.scripts.session_end;
        let reply: Value = if acked {
            self.run_acked(script, &keys, args).await?
        } else {
            self.run(script, &keys, args).await?
        };
        let v = strings(reply)?;
        Ok(match v.first().map(String::as_str) {
            Some("ok") => Ended::Ok,
            Some("missing") => Ended::Missing,
            Some("closed") => Ended::AlreadyClosed,
            Some("not_due") => Ended::NotDue,
            Some("retry") => Ended::Retry,
            _ => return Err(StoreError::Corrupt("session_end reply")),
        })
    }

    /// Session buckets holding a record whose next transition may be due, earliest first.
    pub async fn due_buckets(
        &self,
        shard: &ShardKeys,
        now: i64,
        limit: usize,
    ) -> Result<Vec<String>> {
        self.query(
            "ZRANGEBYSCORE",
            (shard.due_buckets(), "-inf", now, "LIMIT", 0, limit),
        )
        .await
    }

    /// Every record of a session bucket (by its name in `xb`), by session key.
    pub async fn bucket_sessions(
        &self,
        shard: &ShardKeys,
        bucket: &str,
    ) -> Result<Vec<(String, HashMap<String, String>)>> {
        let all: HashMap<String, String> = self
            .query("HGETALL", shard.session_bucket_named(bucket))
            .await?;
        Ok(all
            .into_iter()
            .map(|(key, raw)| (key, session_fields(&raw)))
            .collect())
    }

    /// The names of a shard's session buckets that hold any record (as `xb` lists them).
    pub async fn session_buckets(&self, shard: &ShardKeys) -> Result<Vec<String>> {
        self.query("ZRANGE", (shard.due_buckets(), 0, -1)).await
    }

    /// The session keys a bucket holds (by its name in `xb`), without their records.
    pub async fn bucket_keys(&self, shard: &ShardKeys, bucket: &str) -> Result<Vec<String>> {
        self.query("HKEYS", shard.session_bucket_named(bucket))
            .await
    }

    /// Puts a bucket back in the due order at its earliest transition, once the reaper has
    /// worked through it.
    pub async fn bucket_settle(&self, shard: &ShardKeys, bucket: &str) -> Result<()> {
        let _: i64 = self
            .run(
                &self.scripts.bucket_settle,
                &[shard.due_buckets()],
                (shard.tag(), bucket),
            )
            .await?;
        Ok(())
    }

    /// Whether this instance's reaper takes its turn at `shard` now: true unless another pass
    /// over it began less than `ms` ago (one `SET NX`).
    pub async fn reaper_turn(&self, shard: &ShardKeys, ms: i64) -> Result<bool> {
        let set: Option<String> = self
            .query("SET", (shard.reaper_pass(), "1", "NX", "PX", ms.max(1)))
            .await?;
        Ok(set.is_some())
    }

    /// Drops sticky memory past its window from every entry of some participant buckets
    /// (each named by its two characters), in one script. Returns how many entries it read.
    pub async fn entries_tidy(&self, shard: &ShardKeys, buckets: &[String]) -> Result<usize> {
        let keys: Vec<String> = buckets.iter().map(|b| shard.entries(b)).collect();
        let n: i64 = self
            .run(
                &self.scripts.entries_tidy,
                &keys,
                (shard.tag(), 0, STICKY_WINDOW_MS),
            )
            .await?;
        Ok(n as usize)
    }
}

/// How long two participants' last shared number is preferred for them again.
pub const STICKY_WINDOW_MS: i64 = 30 * 24 * 3600 * 1000;

/// The fields of a session record in the order `lua/common.lua` writes them; the sealed
/// blob is last, followed by `|<options>` when the session has any (`o`).
pub(super) const SESSION_FIELDS: [&str; 13] = [
    "t", "m", "n", "c", "e", "co", "a", "b", "g", "x", "r", "i", "z",
];

/// A record's fields by name, read as `get_session` in `lua/common.lua` reads them: `c` the
/// creation time, `h` the end of the hold, and for an open session whose idle deadline
/// (`w`, from its options `o`) comes before its expiry, `e` that deadline and `hard` the
/// expiry, so that every reader sees the session end at whichever comes first.
fn session_fields(raw: &str) -> HashMap<String, String> {
    let mut rec: HashMap<String, String> = SESSION_FIELDS
        .iter()
        .copied()
        .chain(["o"])
        .zip(raw.splitn(SESSION_FIELDS.len() + 1, '|'))
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let ms = |k: &str| rec.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let (expires, cooloff) = (ms("e"), ms("co"));
    // Stored as its distance to the expiry, and the geo level as one letter (common.lua).
    let created = expires - ms("c");
    rec.insert("c".into(), created.to_string());
    let idle = rec
        .get("o")
        .and_then(|o| SessionOptions::parse(o).idle_until)
        .filter(|&w| w < expires && rec.get("t").is_some_and(|t| t == "o"));
    let ends = match idle {
        Some(w) => {
            rec.insert("hard".into(), expires.to_string());
            rec.insert("e".into(), w.to_string());
            w
        }
        None => expires,
    };
    rec.insert("h".into(), (ends + cooloff).to_string());
    let level = match rec.get("g").map(String::as_str) {
        Some("a") => Some("area_code"),
        Some("c") => Some("country"),
        Some("*") => Some("any"),
        _ => None,
    };
    if let Some(level) = level {
        rec.insert("g".into(), level.into());
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_by_field_names() {
        let rec = session_fields("o|v|+12125550100|1500|2000|60|AAA|BBB|c||||c2Vh");
        assert_eq!(rec["t"], "o");
        assert_eq!(rec["c"], "500");
        assert_eq!(rec["h"], "2060");
        assert_eq!(rec["g"], "country");
        assert_eq!(rec["n"], "+12125550100");
        assert_eq!(rec["b"], "BBB");
        assert_eq!(rec["z"], "c2Vh");
        assert!(!rec.contains_key("x"));
        assert_eq!(session_fields("").get("t"), None);
        assert!(!rec.contains_key("o"));
    }

    #[test]
    fn an_idle_deadline_before_the_expiry_is_when_an_open_session_ends() {
        let rec = session_fields("o|v|+12125550100|1500|2000|60|AAA|BBB|c||||c2Vh|r,d60,w1800");
        assert_eq!(rec["z"], "c2Vh");
        assert_eq!(rec["o"], "r,d60,w1800");
        assert_eq!((rec["e"].as_str(), rec["hard"].as_str()), ("1800", "2000"));
        assert_eq!(rec["h"], "1860");
        assert_eq!(rec["c"], "500");
        // Past the expiry, or once closed, the deadline no longer matters.
        let rec = session_fields("o|v|+12125550100|1500|2000|60|AAA|BBB|c||||c2Vh|d60,w2500");
        assert_eq!((rec["e"].as_str(), rec.get("hard")), ("2000", None));
        let rec = session_fields("c|v|+12125550100|0|1000|60|AAA|BBB|c||idle||c2Vh|d60,w1000");
        assert_eq!((rec["e"].as_str(), rec["h"].as_str()), ("1000", "1060"));
    }

    #[test]
    fn the_scripts_know_the_same_fields() {
        let common = include_str!("lua/common.lua");
        let list: Vec<String> = SESSION_FIELDS.iter().map(|f| format!("'{f}'")).collect();
        assert!(common.contains(&list.join(", ")), "SFIELDS differs");
    }
}
