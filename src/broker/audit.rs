//! The audit log: who changed what and when, through the API, the console or the CLI. An
//! entry is written after its change succeeded, and a failed write is logged and counted
//! but never fails the change. Entries name sessions by id and proxy numbers in plain,
//! never a participant's number. Kept [`AUDIT_KEEP_MS`]; the reaper loop trims them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{Millis, rfc3339};
use crate::store::audit::day_of;
use crate::telemetry::METRICS;

use super::{Broker, PoolLimit, Result};

/// How long entries are kept: 90 days.
pub const AUDIT_KEEP_MS: Millis = 90 * 86_400_000;
/// Most entries one page holds.
pub const AUDIT_PAGE_MAX: usize = 200;
/// Most entries one listing reads before it answers with what it found and a cursor to go
/// on from: a filter that matches little must not read 90 days in one request.
const SCAN_BUDGET: usize = 5_000;
const BATCH: usize = 250;

/// Through what a change came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Api,
    Cli,
    Console,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Cli => "cli",
            Via::Console => "console",
        }
    }
}

/// Who made a change: an API key's name, or `cli:<OS user>`.
#[derive(Clone, Debug)]
pub struct Actor {
    pub name: String,
    pub via: Via,
}

impl Actor {
    /// The operator running the CLI, by the OS user's name.
    pub fn cli() -> Actor {
        let user = ["USER", "LOGNAME", "USERNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "unknown".into());
        Actor {
            name: format!("cli:{user}"),
            via: Via::Cli,
        }
    }
}

/// One entry as stored and as shown. `id` comes first: entries of one millisecond sort by
/// their stored text, and so by id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: String,
    pub at: String,
    pub actor: String,
    pub via: String,
    pub action: String,
    pub target: String,
    /// The pool the change belongs to, so a key limited to some pools sees only theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub detail: Value,
}

/// As [`AuditEntry`] without what only the store needs.
#[derive(Clone, Debug, Serialize)]
pub struct AuditView {
    pub id: String,
    pub at: String,
    pub actor: String,
    pub via: String,
    pub action: String,
    pub target: String,
    pub detail: Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditPage {
    pub entries: Vec<AuditView>,
    pub next_cursor: Option<String>,
}

/// Where a listing goes on from: the id of the last entry it read, which holds its time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditCursor {
    at: Millis,
    id: String,
}

impl AuditCursor {
    pub fn parse(raw: &str) -> Option<AuditCursor> {
        let at = entry_time(raw)?;
        Some(AuditCursor {
            at,
            id: raw.to_string(),
        })
    }
}

/// The time an entry id holds: `aud_` then 12 hex digits of ms, then 8 random hex digits.
fn entry_time(id: &str) -> Option<Millis> {
    let hex = id.strip_prefix("aud_")?;
    if hex.len() != 20 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    i64::from_str_radix(&hex[..12], 16).ok()
}

fn entry_id(at: Millis) -> String {
    format!("aud_{:012x}{:08x}", at.max(0), rand::random::<u32>())
}

/// What a listing asks for.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub limit: usize,
    pub cursor: Option<AuditCursor>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub since: Option<Millis>,
    pub until: Option<Millis>,
}

impl AuditQuery {
    fn matches(&self, e: &AuditEntry, within: &PoolLimit) -> bool {
        let same = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        same(&self.actor, &e.actor)
            && same(&self.action, &e.action)
            && same(&self.target, &e.target)
            && (*within == PoolLimit::All || e.pool.as_deref().is_some_and(|p| within.sees(p)))
    }
}

impl Broker {
    /// Records a change `actor` made. Never fails: a change that happened stands even when
    /// its entry cannot be written, which is logged and counted.
    pub async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        pool: Option<&str>,
        detail: Value,
    ) {
        // An app makes a session change on every ride: a log of people's changes would be
        // buried under them, and Redis would carry tens of gigabytes of them at scale.
        if actor.via == Via::Api && action.starts_with("session.") && !self.inner.audit_all_sessions
        {
            return;
        }
        if let Err(e) = self
            .audit_at(self.now(), actor, action, target, pool, detail)
            .await
        {
            METRICS
                .record_write_failures
                .with_label_values(&["audit"])
                .inc();
            tracing::warn!(error = %e, action, target, "audit entry not recorded");
        }
    }

    /// Writes one entry timed `at`; its id.
    pub async fn audit_at(
        &self,
        at: Millis,
        actor: &Actor,
        action: &str,
        target: &str,
        pool: Option<&str>,
        detail: Value,
    ) -> Result<String> {
        let entry = AuditEntry {
            id: entry_id(at),
            at: rfc3339(at),
            actor: actor.name.clone(),
            via: actor.via.as_str().into(),
            action: action.into(),
            target: target.into(),
            pool: pool.map(Into::into),
            detail,
        };
        let text = serde_json::to_string(&entry).expect("an entry serialises");
        self.inner.store.audit_put(at, &text, AUDIT_KEEP_MS).await?;
        Ok(entry.id)
    }

    /// Removes entries older than [`AUDIT_KEEP_MS`] at `now`; how many went.
    pub async fn audit_trim(&self, now: Millis) -> Result<u64> {
        Ok(self.inner.store.audit_trim(now - AUDIT_KEEP_MS).await?)
    }

    /// One page of entries, newest first, of those `within` a key's pools.
    pub async fn audit_list(&self, q: &AuditQuery, within: &PoolLimit) -> Result<AuditPage> {
        let limit = q.limit.clamp(1, AUDIT_PAGE_MAX);
        let min = q
            .since
            .unwrap_or(Millis::MIN)
            .max(self.now() - AUDIT_KEEP_MS);
        // An open end is fixed now, so entries written during the listing do not shift it.
        let mut max = q.until.unwrap_or_else(|| self.now()).max(min - 1);
        if let Some(c) = &q.cursor {
            max = max.min(c.at);
        }
        let mut entries = Vec::new();
        let mut scanned = 0usize;
        let mut last_read: Option<String> = None;
        let days = if max < min {
            Vec::new()
        } else {
            self.inner
                .store
                .audit_days(day_of(min), day_of(max))
                .await?
        };
        'days: for day in days {
            let mut offset = 0;
            loop {
                let batch = self
                    .inner
                    .store
                    .audit_range(day, max, min, offset, BATCH)
                    .await?;
                let done = batch.len() < BATCH;
                offset += batch.len();
                for (text, _) in batch {
                    let Ok(e) = serde_json::from_str::<AuditEntry>(&text) else {
                        tracing::warn!("an audit entry does not parse; skipped");
                        continue;
                    };
                    // Entries of the cursor's millisecond up to the cursor were on pages
                    // already (ids of one millisecond come in descending order).
                    if let Some(c) = &q.cursor
                        && entry_time(&e.id) == Some(c.at)
                        && e.id >= c.id
                    {
                        continue;
                    }
                    if q.matches(&e, within) {
                        if entries.len() == limit {
                            // One more matches: there is a next page, after the last shown.
                            let next = entries.last().map(|v: &AuditView| v.id.clone());
                            return Ok(AuditPage {
                                entries,
                                next_cursor: next,
                            });
                        }
                        entries.push(AuditView {
                            id: e.id.clone(),
                            at: e.at,
                            actor: e.actor,
                            via: e.via,
                            action: e.action,
                            target: e.target,
                            detail: e.detail,
                        });
                    }
                    last_read = Some(e.id);
                    scanned += 1;
                    if scanned >= SCAN_BUDGET && entries.len() < limit {
                        break 'days;
                    }
                }
                if done {
                    break;
                }
            }
        }
        let next_cursor = (scanned >= SCAN_BUDGET).then_some(last_read).flatten();
        Ok(AuditPage {
            entries,
            next_cursor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_hold_their_time_and_sort_by_it() {
        let a = entry_id(1_764_680_000_123);
        let b = entry_id(1_764_680_000_124);
        assert_eq!(entry_time(&a), Some(1_764_680_000_123));
        assert!(a < b);
        assert_eq!(AuditCursor::parse(&a).unwrap().at, 1_764_680_000_123);
        for bad in [
            "",
            "aud_",
            "aud_zz",
            "ses_0000000000000000000a",
            "aud_00000000000g00000000",
        ] {
            assert!(AuditCursor::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn stored_text_starts_with_the_id() {
        let e = AuditEntry {
            id: entry_id(5),
            at: rfc3339(5),
            actor: "k".into(),
            via: "api".into(),
            action: "pool.update".into(),
            target: "pool:rides".into(),
            pool: None,
            detail: Value::Null,
        };
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.starts_with("{\"id\":\"aud_"), "{text}");
    }
}
