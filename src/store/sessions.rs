//! Sessions on the Redis side: creating one (routes, the number's load, the record and its
//! transition entry in one script), reading it, ending or extending it, and what is due.

use std::collections::HashMap;

use redis::Value;

use super::{EventDraft, IdemMark, Result, ShardKeys, Store, StoreError, strings};

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
    pub sealed_a: &'a str,
    pub sealed_b: &'a str,
    pub blob: &'a str,
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
    },
    Exhausted {
        reap_due: bool,
    },
    /// The shard already holds the session of this idempotent request.
    Existing {
        session_key: String,
        fingerprint: String,
        reap_due: bool,
    },
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
                        a.sealed_a,
                        a.sealed_b,
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
                ),
            )
            .await?;
        let v = strings(reply)?;
        match v.first().map(String::as_str) {
            Some("1") if v.len() == 4 => Ok(Created::Ok {
                number: v[1].clone(),
                level: v[2].clone(),
                reap_due: v[3] == "1",
            }),
            Some("2") if v.len() == 4 => Ok(Created::Existing {
                session_key: v[1].clone(),
                fingerprint: v[2].clone(),
                reap_due: v[3] == "1",
            }),
            Some("0") => Ok(Created::Exhausted {
                reap_due: v.get(1).is_some_and(|d| d == "1"),
            }),
            _ => Err(StoreError::Corrupt("session_create reply")),
        }
    }

    pub async fn session(&self, shard: &ShardKeys, key: &str) -> Result<HashMap<String, String>> {
        self.query("HGETALL", shard.session(key)).await
    }

    /// Runs one change on a session. `idx_a`/`idx_b` are the participants' blind indexes as
    /// stored in the record (empty when that side was erased).
    #[allow(clippy::too_many_arguments)]
    pub async fn session_end(
        &self,
        shard: &ShardKeys,
        key: &str,
        idx_a: &str,
        idx_b: &str,
        now: i64,
        op: EndOp<'_>,
        events: &EndEvents,
    ) -> Result<Ended> {
        let expired = events.expired.as_ref();
        let own = events.own.as_ref();
        let numbers = expired.or(own).map(|e| e.numbers.as_str()).unwrap_or("");
        // The reaper's changes are acknowledged to no one and redone by the next pass.
        let acked = !matches!(op, EndOp::Reap);
        let (name, arg, blob, read) = match op {
            EndOp::Close => ("close", "closed".to_string(), "", ""),
            EndOp::Extend { expires } => ("extend", expires.to_string(), "", ""),
            EndOp::Erase { side, blob, read } => ("erase", side.to_string(), blob, read),
            EndOp::Reap => ("reap", String::new(), "", ""),
        };
        let keys = shard.end_script_keys(key, idx_a, idx_b);
        let args = (
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

    /// Sessions whose next transition is due, oldest first.
    pub async fn due(&self, shard: &ShardKeys, now: i64, limit: usize) -> Result<Vec<String>> {
        self.query(
            "ZRANGEBYSCORE",
            (shard.transitions(), "-inf", now, "LIMIT", 0, limit),
        )
        .await
    }
}
