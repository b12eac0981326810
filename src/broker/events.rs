//! Events to the app: drafting them beside the change they report, the pool's signing
//! secrets and their rotation, where to deliver, and listing and redelivering events.

use std::collections::HashMap;

use serde::Serialize;

use crate::crypto::CryptoError;
use crate::domain::{CloseReason, Millis, PoolName, PoolPolicy, SessionId, rfc3339};
use crate::store::{EndEvents, EventDraft, PoolRow};

use super::{Broker, BrokerError, PoolLimit, Result, policy_of};

/// How many of a shard's newest events a status-filtered listing looks through.
const EVENT_SCAN_WINDOW: usize = 5000;

/// How long a rotated-out signing secret keeps signing beside the new one.
pub const SECRET_OVERLAP_MS: Millis = 24 * 3600 * 1000;

/// An event as the API lists it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EventView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub pool: String,
    /// `pending` (waiting or being retried), `delivered` or `failed`.
    pub status: String,
    pub created_at: String,
    #[serde(skip)]
    pub created_ms: Millis,
    pub attempts: Vec<AttemptView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// One delivery attempt of an event.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AttemptView {
    pub at: String,
    /// The HTTP status the app answered, or 0 when there was no answer.
    pub status: u16,
    pub latency_ms: u64,
}

impl EventView {
    fn from_record(
        key: &str,
        pool: &str,
        pool_id: u32,
        shard: u16,
        rec: &HashMap<String, String>,
    ) -> EventView {
        let attempts = rec
            .get("a")
            .map(|log| {
                log.split(';')
                    .filter_map(|a| {
                        let mut f = a.split(',');
                        Some(AttemptView {
                            at: rfc3339(f.next()?.parse().ok()?),
                            status: f.next()?.parse().ok()?,
                            latency_ms: f.next()?.parse().ok()?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        EventView {
            id: EventId {
                pool_id,
                shard,
                key: key.to_string(),
            }
            .to_string(),
            kind: rec.get("t").cloned().unwrap_or_default(),
            pool: pool.to_string(),
            status: match rec.get("s").map(String::as_str) {
                Some("d") => "delivered",
                Some("f") => "failed",
                _ => "pending",
            }
            .into(),
            created_at: rfc3339(rec.get("c").and_then(|v| v.parse().ok()).unwrap_or(0)),
            created_ms: rec.get("c").and_then(|v| v.parse().ok()).unwrap_or(0),
            attempts,
            failure: rec.get("r").cloned(),
        }
    }
}

/// An event's id as the app sees it (`webhook-id`): the shard's session-id prefix with
/// `evt_` in place of `ses_`, then the event's key in that shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventId {
    pub pool_id: u32,
    pub shard: u16,
    pub key: String,
}

impl EventId {
    pub fn parse(text: &str) -> Option<EventId> {
        let session = SessionId::parse(&text.replacen("evt_", "ses_", 1))?;
        text.starts_with("evt_").then(|| EventId {
            pool_id: session.pool_id,
            shard: session.shard,
            key: session.key(),
        })
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = SessionId::shard_prefix(self.pool_id, self.shard);
        write!(f, "evt_{}{}", &prefix["ses_".len()..], self.key)
    }
}

impl Broker {
    /// The policy of a pool that wants events, or `None`.
    pub(super) async fn events_policy(&self, pool_id: u32) -> Result<Option<(String, PoolPolicy)>> {
        Ok(self
            .pool_policy_cached(pool_id)
            .await?
            .and_then(|(row, policy)| {
                policy
                    .callback_url
                    .is_some()
                    .then(|| (row.name.clone(), PoolPolicy::clone(&policy)))
            }))
    }

    /// An event's id and body. Placeholders (`"__NAME__"`) are filled in by the script that
    /// records the event, with values only Redis knows at that moment.
    pub(super) fn draft(
        &self,
        kind: &str,
        data: serde_json::Value,
        numbers: Option<[Option<String>; 2]>,
    ) -> EventDraft {
        let body =
            serde_json::json!({ "type": kind, "timestamp": rfc3339(self.now()), "data": data })
                .to_string()
                .replace("\"__SIDE__\"", "__SIDE__")
                .replace("\"__DURATION__\"", "__DURATION__")
                .replace("\"__BUSY__\"", "__BUSY__")
                .replace("\"__TOTAL__\"", "__TOTAL__");
        EventDraft {
            // The key within its shard; the app sees it as an [`EventId`].
            id: SessionId::new(0, 0).key(),
            body,
            numbers: numbers
                .map(|n| {
                    self.inner.crypto.seal(
                        "event-numbers",
                        serde_json::to_string(&n)
                            .expect("numbers serialise")
                            .as_bytes(),
                    )
                })
                .unwrap_or_default(),
        }
    }

    /// The session.closed event of a stored session, when its pool wants events.
    async fn closed_event(
        &self,
        id: &SessionId,
        rec: &HashMap<String, String>,
        reason: CloseReason,
        at: Millis,
    ) -> Result<Option<EventDraft>> {
        let Some((pool, policy)) = self.events_policy(id.pool_id).await? else {
            return Ok(None);
        };
        let blob = self.open_blob(rec)?;
        let numbers = (policy.callback_include_numbers && reason != CloseReason::Erased)
            .then(|| [blob.p[0].n.clone(), blob.p[1].n.clone()]);
        Ok(Some(self.draft(
            "session.closed",
            serde_json::json!({
                "session_id": id.to_string(),
                "pool": pool,
                "proxy_number": rec.get("n"),
                "reason": reason.as_str(),
                "closed_at": rfc3339(at),
                "participants": [{ "label": blob.p[0].l }, { "label": blob.p[1].l }],
            }),
            numbers,
        )))
    }

    /// Both session.closed events a change may record: the expiry it may notice, and its own.
    pub(super) async fn end_events(
        &self,
        id: &SessionId,
        rec: &HashMap<String, String>,
        own: Option<CloseReason>,
    ) -> Result<EndEvents> {
        let expires = rec.get("e").and_then(|v| v.parse().ok()).unwrap_or(0);
        let now = self.now();
        // `e` is the idle deadline when that came first (`hard` then holds the expiry).
        let reason = if rec.contains_key("hard") {
            CloseReason::Idle
        } else {
            CloseReason::Expired
        };
        Ok(EndEvents {
            expired: self.closed_event(id, rec, reason, expires.min(now)).await?,
            own: match own {
                Some(reason) => self.closed_event(id, rec, reason, now).await?,
                None => None,
            },
        })
    }

    /// The pool's current callback signing secret (`whsec_…`).
    pub async fn callback_secret(&self, name: &PoolName) -> Result<String> {
        let row = self.pool_row(name).await?;
        Ok(self
            .signing_secrets(&row)?
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    /// Makes a new signing secret; the previous one keeps signing beside it for
    /// [`SECRET_OVERLAP_MS`], so apps can switch without missing an event.
    pub async fn rotate_callback_secret(&self, name: &PoolName) -> Result<String> {
        let row = self.pool_row(name).await?;
        let current = self.signing_secrets(&row)?.into_iter().next();
        let fresh = crate::crypto::webhook::SigningSecret::generate().to_text();
        let seal = |t: &str| self.inner.crypto.seal("callback-secret", t.as_bytes());
        let mut fields = vec![("sec", seal(&fresh))];
        if let Some(old) = current {
            fields.push(("sec_old", seal(&old)));
            fields.push((
                "sec_old_until",
                (self.now() + SECRET_OVERLAP_MS).to_string(),
            ));
        }
        self.inner.store.pool_fields_set(row.id, &fields).await?;
        self.forget_cached_pool(row.id);
        Ok(fresh)
    }

    /// The secrets events are signed with now: the current one, then the previous one while
    /// its overlap lasts.
    pub(super) fn signing_secrets(&self, row: &PoolRow) -> Result<Vec<String>> {
        let open = |field: &str| -> Result<Option<String>> {
            match row.fields.get(field) {
                None => Ok(None),
                Some(sealed) => {
                    let plain = self.inner.crypto.open("callback-secret", sealed)?;
                    Ok(Some(
                        String::from_utf8(plain).map_err(|_| CryptoError::Corrupt)?,
                    ))
                }
            }
        };
        let mut out: Vec<String> = open("sec")?.into_iter().collect();
        let until: Millis = row
            .fields
            .get("sec_old_until")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if until > self.now()
            && let Some(old) = open("sec_old")?
        {
            out.push(old);
        }
        Ok(out)
    }

    /// Where and how to deliver a pool's events: its URL and signing secrets.
    pub async fn delivery_target(
        &self,
        pool_id: u32,
    ) -> Result<Option<(String, String, Vec<String>)>> {
        let Some(row) = self.pool_cached(pool_id).await? else {
            return Ok(None);
        };
        let policy = policy_of(&row);
        let Some(url) = policy.callback_url else {
            return Ok(None);
        };
        Ok(Some((row.name.clone(), url, self.signing_secrets(&row)?)))
    }

    /// Opens what is sealed beside an event: the participants' numbers (a list), or values
    /// by the JSON pointer of their place in the body (an object).
    pub fn event_sealed_part(&self, sealed: &str) -> Result<serde_json::Value> {
        let plain = self.inner.crypto.open("event-numbers", sealed)?;
        serde_json::from_slice(&plain).map_err(|_| BrokerError::Crypto(CryptoError::Corrupt))
    }

    /// Events of one pool or all `within` a key's pools, newest first, optionally of one
    /// status.
    pub async fn list_events(
        &self,
        pool: Option<&PoolName>,
        status: Option<&str>,
        limit: usize,
        within: &PoolLimit,
    ) -> Result<Vec<EventView>> {
        let rows = self.pool_rows(pool, within).await?;
        // A status filter looks further back than the page it fills, so older failed events
        // are found behind newer delivered ones.
        let window = if status.is_some() {
            EVENT_SCAN_WINDOW.max(limit)
        } else {
            limit
        };
        let mut out = Vec::new();
        for row in rows {
            for sh in 0..row.shards {
                let shard = self.shard(row.id, sh);
                for (id, rec) in self.inner.store.events(&shard, window).await? {
                    let view = EventView::from_record(&id, &row.name, row.id, sh, &rec);
                    if status.is_none_or(|s| s == view.status) {
                        out.push(view);
                    }
                }
            }
        }
        out.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        out.truncate(limit);
        Ok(out)
    }

    /// Queues a delivered or failed event again.
    pub async fn redeliver_event(&self, id: &str) -> Result<EventView> {
        let parsed = EventId::parse(id).ok_or(BrokerError::EventNotFound)?;
        let shard = self.shard(parsed.pool_id, parsed.shard);
        if !self
            .inner
            .store
            .event_redeliver(&shard, &parsed.key, self.now())
            .await?
        {
            // Unknown, still queued, or without its body any more.
            return Err(BrokerError::EventNotFound);
        }
        self.find_event(&parsed)
            .await?
            .ok_or(BrokerError::EventNotFound)
    }

    async fn find_event(&self, id: &EventId) -> Result<Option<EventView>> {
        let shard = self.shard(id.pool_id, id.shard);
        let rec = self.inner.store.event(&shard, &id.key).await?;
        if rec.is_empty() {
            return Ok(None);
        }
        let pool = self.pool_name(id.pool_id).await?;
        Ok(Some(EventView::from_record(
            &id.key, &pool, id.pool_id, id.shard, &rec,
        )))
    }
}
