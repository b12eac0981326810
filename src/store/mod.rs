//! Redis, and nothing else. The key scheme lives in [`keys`]; the Lua scripts in `lua/`.
//!
//! Why each step is atomic: everything that must change together — creating a session
//! (both routes, the number's load, the session record, its transition entry), ending or
//! extending one, adding, draining or removing a number — is one Lua script over the keys of
//! one pool shard, which Redis runs without interleaving. Invariant 1 only involves one
//! proxy number's routes, and a number lives in exactly one shard, so a shard-local script
//! is enough on any number of hush instances and on Redis Cluster. An expired session never
//! routes because every route record carries its own open-until and held-until times and
//! readers compare them with the clock; the reaper only frees memory and fixes counters.

pub mod keys;
pub mod outbox;

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, Value};

pub use keys::{Keys, ShardKeys};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached or cannot take writes now; worth retrying.
    #[error("redis is unavailable")]
    Unavailable(#[source] RedisError),
    #[error("redis command failed")]
    Redis(#[source] RedisError),
    #[error("stored data is malformed: {0}")]
    Corrupt(&'static str),
}

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        let transient_code = matches!(
            e.code(),
            Some(
                "OOM" | "BUSY" | "LOADING" | "MASTERDOWN" | "READONLY" | "TRYAGAIN" | "CLUSTERDOWN"
            )
        );
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_cluster_error()
            || transient_code
        {
            StoreError::Unavailable(e)
        } else {
            StoreError::Redis(e)
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

const COMMON: &str = include_str!("lua/common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

struct Scripts {
    number_add: Script,
    number_state: Script,
    number_remove: Script,
    session_create: Script,
    session_end: Script,
    participant_forget: Script,
    idempotency_begin: Script,
    idempotency_lease: Script,
    relay_claim: Script,
    interaction_update: Script,
    event_put: Script,
    event_redeliver: Script,
    pool_set: Script,
    pool_shard_delete: Script,
    events_pending: Script,
}

impl Scripts {
    fn load() -> Scripts {
        Scripts {
            number_add: script(include_str!("lua/number_add.lua")),
            number_state: script(include_str!("lua/number_state.lua")),
            number_remove: script(include_str!("lua/number_remove.lua")),
            session_create: script(include_str!("lua/session_create.lua")),
            session_end: script(include_str!("lua/session_end.lua")),
            participant_forget: script(include_str!("lua/participant_forget.lua")),
            idempotency_begin: script(include_str!("lua/idempotency_begin.lua")),
            idempotency_lease: script(include_str!("lua/idempotency_lease.lua")),
            relay_claim: script(include_str!("lua/relay_claim.lua")),
            interaction_update: script(include_str!("lua/interaction_update.lua")),
            event_put: script(include_str!("lua/event_put.lua")),
            event_redeliver: script(include_str!("lua/event_redeliver.lua")),
            pool_set: script(include_str!("lua/pool_set.lua")),
            pool_shard_delete: script(include_str!("lua/pool_shard_delete.lua")),
            events_pending: script(include_str!("lua/events_pending.lua")),
        }
    }
}

/// A pool as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRow {
    pub id: u32,
    pub name: String,
    pub fields: HashMap<String, String>,
    pub shards: u16,
}

/// A number's row in its shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumberRow {
    pub number: String,
    pub caps: String,
    pub state: String,
    pub holding: i64,
    pub open: i64,
}

/// What [`Store::pool_set`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolSet {
    Written,
    /// The pool changed since the caller read it; nothing was written.
    Moved,
    /// The pool no longer exists.
    Gone,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardCounts {
    pub total: i64,
    pub draining: i64,
    pub open: i64,
}

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

/// The marker an idempotent create leaves in its shard.
#[derive(Clone, Copy, Debug)]
pub struct IdemMark<'a> {
    pub digest: &'a str,
    pub fingerprint: &'a str,
    /// As long as the idempotency record.
    pub ttl_ms: i64,
}

/// An event to record with a change: its id and the JSON the app will receive (which
/// holds no participant number; `numbers` carries them, sealed, for pools that send them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventDraft {
    pub id: String,
    pub body: String,
    pub numbers: String,
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

/// What starting an idempotent request found.
pub enum IdemBegin {
    /// No record: the caller holds the key now.
    Fresh,
    /// A request held the key and stopped renewing its lease: the caller holds it now.
    Takeover,
    /// Another request holds the lease for this many more ms.
    Running(i64),
    /// The key was used with another body.
    Conflict,
    /// The sealed response to replay.
    Done(String),
}

/// What the holder of an idempotency lease does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Still working: extend the lease by this many ms.
    Renew(i64),
    /// Created nothing: free the key.
    Drop,
    /// Cannot tell what happened: let the next retry take over at once.
    Lapse,
}

/// The typed facade over Redis.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    keys: Keys,
    scripts: std::sync::Arc<Scripts>,
}

fn strings(v: Value) -> Result<Vec<String>> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::BulkString(b) => {
                    String::from_utf8(b).map_err(|_| StoreError::Corrupt("utf8"))
                }
                Value::SimpleString(s) => Ok(s),
                Value::Int(n) => Ok(n.to_string()),
                Value::Nil => Ok(String::new()),
                _ => Err(StoreError::Corrupt("unexpected script reply")),
            })
            .collect(),
        _ => Err(StoreError::Corrupt("unexpected script reply")),
    }
}

impl Store {
    /// Connects lazily: hush starts while Redis is down and reconnects by itself.
    pub fn connect(url: &str, prefix: &str) -> Result<Store> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Store {
            conn,
            keys: Keys::new(prefix),
            scripts: std::sync::Arc::new(Scripts::load()),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn c(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.c()).await?;
        Ok(())
    }

    // ---- pools

    pub async fn pool_id(&self, name: &str) -> Result<Option<u32>> {
        let id: Option<u32> = redis::cmd("HGET")
            .arg(self.keys.pools())
            .arg(name)
            .query_async(&mut self.c())
            .await?;
        Ok(id)
    }

    pub async fn pool_by_id(&self, id: u32) -> Result<Option<PoolRow>> {
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.pool(id))
            .query_async(&mut self.c())
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let name = fields
            .get("name")
            .cloned()
            .ok_or(StoreError::Corrupt("pool without name"))?;
        let shards = fields
            .get("shards")
            .and_then(|s| s.parse().ok())
            .filter(|&s: &u16| s > 0)
            .ok_or(StoreError::Corrupt("pool without shards"))?;
        Ok(Some(PoolRow {
            id,
            name,
            fields,
            shards,
        }))
    }

    pub async fn pool(&self, name: &str) -> Result<Option<PoolRow>> {
        match self.pool_id(name).await? {
            Some(id) => self.pool_by_id(id).await,
            None => Ok(None),
        }
    }

    /// Creates a pool, or replaces the fields given of an existing one. Returns the row and
    /// whether it was new.
    pub async fn pool_put(
        &self,
        name: &str,
        fields: &[(&str, String)],
        shards: u16,
    ) -> Result<(PoolRow, bool)> {
        // A pool deleted between finding its id and writing to it is made anew.
        for _ in 0..3 {
            let (id, created) = match self.pool_id(name).await? {
                Some(id) => {
                    if self.pool_set(id, "*", fields).await? == PoolSet::Gone {
                        continue;
                    }
                    (id, false)
                }
                None => self.pool_create(name, fields, shards).await?,
            };
            if let Some(row) = self.pool_by_id(id).await? {
                return Ok((row, created));
            }
        }
        Err(StoreError::Corrupt("pool vanished while written"))
    }

    /// A new pool, or the one a concurrent request created under the same name.
    async fn pool_create(
        &self,
        name: &str,
        fields: &[(&str, String)],
        shards: u16,
    ) -> Result<(u32, bool)> {
        let fresh: u32 = redis::cmd("INCR")
            .arg(self.keys.pool_seq())
            .query_async(&mut self.c())
            .await?;
        // Write the policy before publishing the name, so a reader that finds the name
        // always finds a whole pool.
        let mut init = redis::cmd("HSET");
        init.arg(self.keys.pool(fresh))
            .arg("name")
            .arg(name)
            .arg("shards")
            .arg(shards);
        for (k, v) in fields {
            init.arg(*k).arg(v);
        }
        let _: i64 = init.query_async(&mut self.c()).await?;
        let won: bool = redis::cmd("HSETNX")
            .arg(self.keys.pools())
            .arg(name)
            .arg(fresh)
            .query_async(&mut self.c())
            .await?;
        if won {
            return Ok((fresh, true));
        }
        let _: i64 = redis::cmd("DEL")
            .arg(self.keys.pool(fresh))
            .query_async(&mut self.c())
            .await?;
        let id = self
            .pool_id(name)
            .await?
            .ok_or(StoreError::Corrupt("pool vanished while created"))?;
        if self.pool_set(id, "*", fields).await? == PoolSet::Gone {
            return Err(StoreError::Corrupt("pool vanished while created"));
        }
        Ok((id, false))
    }

    /// Writes policy fields of pool `id` if its version is still `version` (`*`: any).
    pub async fn pool_set(
        &self,
        id: u32,
        version: &str,
        fields: &[(&str, String)],
    ) -> Result<PoolSet> {
        let mut call = self.scripts.pool_set.key(self.keys.pool(id));
        call.arg("").arg(version);
        for (k, v) in fields {
            call.arg(*k).arg(v);
        }
        let r: i64 = call.invoke_async(&mut self.c()).await?;
        Ok(match r {
            1 => PoolSet::Written,
            0 => PoolSet::Moved,
            _ => PoolSet::Gone,
        })
    }

    /// Empties one shard of a pool being deleted: `None` while one of its numbers holds a
    /// session, else the numbers it held (their owner entries are deleted here too).
    pub async fn pool_shard_delete(&self, shard: &ShardKeys) -> Result<Option<Vec<String>>> {
        let reply: Value = self
            .scripts
            .pool_shard_delete
            .key(shard.nums())
            .key(shard.transitions())
            .arg(shard.tag())
            .invoke_async(&mut self.c())
            .await?;
        let mut items = strings(reply)?.into_iter();
        if items.next().as_deref() != Some("1") {
            return Ok(None);
        }
        let numbers: Vec<String> = items.collect();
        // The owner entries live outside the shard's slot, so they go in a second step, one
        // round trip for all.
        if !numbers.is_empty() {
            let mut del = redis::cmd("DEL");
            for n in &numbers {
                del.arg(self.keys.owner(n));
            }
            let _: i64 = del.query_async(&mut self.c()).await?;
        }
        Ok(Some(numbers))
    }

    /// How many events of a shard wait for delivery, and when the oldest of the first
    /// `look_at` of them was created (`None` when none waits).
    pub async fn events_pending(
        &self,
        shard: &ShardKeys,
        look_at: usize,
    ) -> Result<(i64, Option<i64>)> {
        let (count, oldest): (i64, i64) = self
            .scripts
            .events_pending
            .key(format!("{}q", shard.events_tag()))
            .arg(shard.tag())
            .arg(look_at)
            .invoke_async(&mut self.c())
            .await?;
        Ok((count, (oldest >= 0).then_some(oldest)))
    }

    /// Removes a pool's name (if it still names pool `id`) and its policy hash.
    pub async fn pool_forget(&self, id: u32, name: &str) -> Result<()> {
        if self.pool_id(name).await? == Some(id) {
            let _: i64 = redis::cmd("HDEL")
                .arg(self.keys.pools())
                .arg(name)
                .query_async(&mut self.c())
                .await?;
        }
        let _: i64 = redis::cmd("DEL")
            .arg(self.keys.pool(id))
            .query_async(&mut self.c())
            .await?;
        Ok(())
    }

    /// Sets a pool field only if it has no value yet.
    pub async fn pool_field_init(&self, id: u32, field: &str, value: &str) -> Result<bool> {
        Ok(redis::cmd("HSETNX")
            .arg(self.keys.pool(id))
            .arg(field)
            .arg(value)
            .query_async(&mut self.c())
            .await?)
    }

    /// Sets pool fields (a policy update, a secret rotation).
    pub async fn pool_fields_set(&self, id: u32, fields: &[(&str, String)]) -> Result<()> {
        // HSET without a field is a syntax error, and nothing to do.
        if fields.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.keys.pool(id));
        for (k, v) in fields {
            cmd.arg(*k).arg(v);
        }
        let _: i64 = cmd.query_async(&mut self.c()).await?;
        Ok(())
    }

    pub async fn pool_list(&self) -> Result<Vec<PoolRow>> {
        let ids: HashMap<String, u32> = redis::cmd("HGETALL")
            .arg(self.keys.pools())
            .query_async(&mut self.c())
            .await?;
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids.values() {
            if let Some(row) = self.pool_by_id(*id).await? {
                rows.push(row);
            }
        }
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }

    pub async fn shard_counts(&self, shard: &ShardKeys) -> Result<ShardCounts> {
        let v: (Option<i64>, Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(shard.nums())
            .arg("#total")
            .arg("#draining")
            .arg("#open")
            .query_async(&mut self.c())
            .await?;
        Ok(ShardCounts {
            total: v.0.unwrap_or(0),
            draining: v.1.unwrap_or(0),
            open: v.2.unwrap_or(0),
        })
    }

    // ---- numbers

    /// Which shard owns a proxy number, if any: `(pool id, shard)`.
    pub async fn number_owner(&self, number: &str) -> Result<Option<(u32, u16)>> {
        let v: Option<String> = redis::cmd("GET")
            .arg(self.keys.owner(number))
            .query_async(&mut self.c())
            .await?;
        Ok(v.and_then(|s| parse_owner(&s)))
    }

    /// Claims a number for a shard; returns the owner afterwards (ours or someone else's).
    pub async fn number_claim(&self, number: &str, shard: &ShardKeys) -> Result<(u32, u16)> {
        let owner = format!("{}.{}", shard.pool_id, shard.shard);
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.owner(number))
            .arg(&owner)
            .arg("NX")
            .query_async(&mut self.c())
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
        let _: i64 = redis::cmd("DEL")
            .arg(self.keys.owner(number))
            .query_async(&mut self.c())
            .await?;
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
            .scripts
            .number_add
            .key(&shard.number_script_keys())
            .arg(shard.tag())
            .arg(number)
            .arg(caps)
            .arg(geos)
            .invoke_async(&mut self.c())
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
            .scripts
            .number_state
            .key(&shard.number_script_keys())
            .arg(shard.tag())
            .arg(number)
            .arg(state)
            .invoke_async(&mut self.c())
            .await?;
        Ok(r == 1)
    }

    /// `Some(true)` removed, `Some(false)` still held by a session, `None` not in the shard.
    pub async fn number_remove(&self, shard: &ShardKeys, number: &str) -> Result<Option<bool>> {
        let r: i64 = self
            .scripts
            .number_remove
            .key(&shard.number_script_keys())
            .arg(shard.tag())
            .arg(number)
            .invoke_async(&mut self.c())
            .await?;
        if r == 1 {
            // Only the owner entry is left; removing it last means a crash in between leaves
            // a claim that re-adding the number to the same pool repairs.
            let _: i64 = redis::cmd("DEL")
                .arg(self.keys.owner(number))
                .query_async(&mut self.c())
                .await?;
        }
        Ok(match r {
            1 => Some(true),
            0 => Some(false),
            _ => None,
        })
    }

    pub async fn numbers(&self, shard: &ShardKeys) -> Result<Vec<NumberRow>> {
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(shard.nums())
            .query_async(&mut self.c())
            .await?;
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

    // ---- sessions

    pub async fn session_create(&self, a: &CreateArgs<'_>) -> Result<Created> {
        let s = a.shard;
        let reply: Value = self
            .scripts
            .session_create
            .key(&s.create_script_keys(a.idx_a, a.idx_b, a.session_key))
            .arg(s.tag())
            .arg(a.now)
            .arg(a.expires)
            .arg(a.cooloff_ms)
            .arg(a.class)
            .arg(a.idx_a)
            .arg(a.idx_b)
            .arg(a.levels)
            .arg(rand::random::<u32>())
            .arg(a.session_key)
            .arg(a.sealed_a)
            .arg(a.sealed_b)
            .arg(a.blob)
            .arg(a.sticky_window_ms)
            .arg(a.area_tag)
            .arg(a.country_tag)
            .arg(a.event.map(|e| e.id.as_str()).unwrap_or(""))
            .arg(a.event.map(|e| e.body.as_str()).unwrap_or(""))
            .arg(a.event.map(|e| e.numbers.as_str()).unwrap_or(""))
            .arg(a.low.map(|(e, _)| e.id.as_str()).unwrap_or(""))
            .arg(a.low.map(|(_, t)| t).unwrap_or(100))
            .arg(a.low.map(|(e, _)| e.body.as_str()).unwrap_or(""))
            .arg(a.idempotency.map(|m| m.digest).unwrap_or(""))
            .arg(a.idempotency.map(|m| m.fingerprint).unwrap_or(""))
            .arg(a.idempotency.map(|m| m.ttl_ms).unwrap_or(0))
            .invoke_async(&mut self.c())
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
        Ok(redis::cmd("HGETALL")
            .arg(shard.session(key))
            .query_async(&mut self.c())
            .await?)
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
        let (name, arg, blob, read) = match op {
            EndOp::Close => ("close", "closed".to_string(), "", ""),
            EndOp::Extend { expires } => ("extend", expires.to_string(), "", ""),
            EndOp::Erase { side, blob, read } => ("erase", side.to_string(), blob, read),
            EndOp::Reap => ("reap", String::new(), "", ""),
        };
        let reply: Value = self
            .scripts
            .session_end
            .key(&shard.end_script_keys(key, idx_a, idx_b))
            .arg(shard.tag())
            .arg(now)
            .arg(key)
            .arg(name)
            .arg(arg)
            .arg(blob)
            .arg(expired.map(|e| e.id.as_str()).unwrap_or(""))
            .arg(expired.map(|e| e.body.as_str()).unwrap_or(""))
            .arg(own.map(|e| e.id.as_str()).unwrap_or(""))
            .arg(own.map(|e| e.body.as_str()).unwrap_or(""))
            .arg(numbers)
            .arg(read)
            .invoke_async(&mut self.c())
            .await?;
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
        Ok(redis::cmd("ZRANGEBYSCORE")
            .arg(shard.transitions())
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.c())
            .await?)
    }

    // ---- routes

    pub async fn routes_of(&self, shard: &ShardKeys, idx: &str) -> Result<HashMap<String, String>> {
        Ok(redis::cmd("HGETALL")
            .arg(shard.routes(idx))
            .query_async(&mut self.c())
            .await?)
    }

    pub async fn forget_participant(&self, shard: &ShardKeys, idx: &str, now: i64) -> Result<()> {
        let _: i64 = self
            .scripts
            .participant_forget
            .key(&shard.forget_script_keys(idx))
            .arg(shard.tag())
            .arg(idx)
            .arg(now)
            .invoke_async(&mut self.c())
            .await?;
        Ok(())
    }

    // ---- relay

    /// Remembers that a single-use token was used for the request `fingerprint` names, for
    /// `ttl_ms`. True when this is its first use or the same request again; false when the
    /// token already came with another request. One atomic `SET NX GET`, so two deliveries
    /// racing cannot both be first.
    pub async fn token_once(&self, key: &str, fingerprint: &str, ttl_ms: i64) -> Result<bool> {
        let before: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(fingerprint)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async(&mut self.c())
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
            .scripts
            .relay_claim
            .key(&shard.relay_script_keys(idx, provider, provider_ref))
            .arg(shard.tag())
            .arg(proxy)
            .arg(now)
            .arg(kind)
            .arg(provider)
            .arg(provider_ref)
            .arg(new_interaction)
            .arg(ref_ttl_ms)
            .arg(idx.unwrap_or(""))
            .arg(event.map(|e| e.id.as_str()).unwrap_or(""))
            .arg(event.map(|e| e.body.as_str()).unwrap_or(""))
            .arg(if intercept { "1" } else { "0" })
            .invoke_async(&mut self.c())
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
            .scripts
            .interaction_update
            .key(&shard.interaction_script_keys(provider, provider_ref))
            .arg(shard.tag())
            .arg(status)
            .arg(now)
            .arg(duration_secs.map(|d| d.to_string()).unwrap_or_default())
            .arg(if last { "1" } else { "0" })
            .arg(event.map(|e| e.id.as_str()).unwrap_or(""))
            .arg(event.map(|e| e.body.as_str()).unwrap_or(""))
            .arg(verdict.map(|v| v.0).unwrap_or(""))
            .arg(verdict.map(|v| v.1).unwrap_or(""))
            .invoke_async(&mut self.c())
            .await?;
        Ok(changed == 1)
    }

    pub async fn interactions(
        &self,
        shard: &ShardKeys,
        session_key: &str,
    ) -> Result<HashMap<String, String>> {
        Ok(redis::cmd("HGETALL")
            .arg(shard.interactions(session_key))
            .query_async(&mut self.c())
            .await?)
    }

    // ---- events

    /// Records an event that goes with no other change.
    pub async fn event_put(
        &self,
        shard: &ShardKeys,
        kind: &str,
        e: &EventDraft,
        now: i64,
    ) -> Result<()> {
        let _: i64 = self
            .scripts
            .event_put
            .key(format!("{}q", shard.events_tag()))
            .arg(shard.tag())
            .arg(&e.id)
            .arg(kind)
            .arg(&e.body)
            .arg(&e.numbers)
            .arg(now)
            .invoke_async(&mut self.c())
            .await?;
        Ok(())
    }

    /// The newest events of a shard (up to `limit`), each as its stored fields.
    pub async fn events(
        &self,
        shard: &ShardKeys,
        limit: usize,
    ) -> Result<Vec<(String, HashMap<String, String>)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let tag = shard.events_tag();
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(format!("{tag}all"))
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut self.c())
            .await?;
        // Redis refuses an empty pipeline ("empty command"): a shard that never had an event
        // has nothing to read.
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(format!("{tag}m:{id}"));
        }
        let records: Vec<HashMap<String, String>> = pipe.query_async(&mut self.c()).await?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, rec) in ids.into_iter().zip(records) {
            if rec.is_empty() {
                gone.push(id);
            } else {
                out.push((id, rec));
            }
        }
        if !gone.is_empty() {
            // Records expire on their own; their index entries go when next seen.
            let _: i64 = redis::cmd("ZREM")
                .arg(format!("{tag}all"))
                .arg(&gone)
                .query_async(&mut self.c())
                .await?;
        }
        Ok(out)
    }

    /// One event's stored fields (empty when unknown).
    pub async fn event(&self, shard: &ShardKeys, key: &str) -> Result<HashMap<String, String>> {
        Ok(redis::cmd("HGETALL")
            .arg(format!("{}m:{key}", shard.events_tag()))
            .query_async(&mut self.c())
            .await?)
    }

    /// Puts a delivered or failed event back in the queue. False when it is unknown, still
    /// queued, or its body is gone.
    pub async fn event_redeliver(&self, shard: &ShardKeys, id: &str, now: i64) -> Result<bool> {
        let r: i64 = self
            .scripts
            .event_redeliver
            .key(format!("{}q", shard.events_tag()))
            .arg(shard.events_tag())
            .arg(id)
            .arg(now)
            .invoke_async(&mut self.c())
            .await?;
        Ok(r == 1)
    }

    // ---- API keys

    pub async fn api_key_put(
        &self,
        name: &str,
        digest: &str,
        scopes: &str,
        pools: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let fresh: bool = redis::cmd("HSETNX")
            .arg(self.keys.api_keys())
            .arg(name)
            .arg(digest)
            .query_async(&mut self.c())
            .await?;
        if !fresh {
            return Ok(false);
        }
        let mut put = redis::cmd("HSET");
        put.arg(self.keys.api_key(digest))
            .arg("name")
            .arg(name)
            .arg("scopes")
            .arg(scopes)
            .arg("created")
            .arg(now);
        // No field at all means every pool, which is how keys made before limits read.
        if let Some(pools) = pools {
            put.arg("pools").arg(pools);
        }
        let _: i64 = put.query_async(&mut self.c()).await?;
        Ok(true)
    }

    /// `(name, scopes, pools)` of the key with this digest; `pools` is absent for a key
    /// that sees every pool.
    pub async fn api_key(&self, digest: &str) -> Result<Option<(String, String, Option<String>)>> {
        let v: (Option<String>, Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.api_key(digest))
            .arg("name")
            .arg("scopes")
            .arg("pools")
            .query_async(&mut self.c())
            .await?;
        Ok(match v {
            (Some(n), Some(s), p) => Some((n, s, p)),
            _ => None,
        })
    }

    /// `(name, scopes, pools, created ms)` of every key.
    pub async fn api_keys(&self) -> Result<Vec<(String, String, Option<String>, i64)>> {
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.api_keys())
            .query_async(&mut self.c())
            .await?;
        let mut out = Vec::new();
        for (name, digest) in all {
            let v: (Option<String>, Option<String>, Option<i64>) = redis::cmd("HMGET")
                .arg(self.keys.api_key(&digest))
                .arg("scopes")
                .arg("pools")
                .arg("created")
                .query_async(&mut self.c())
                .await?;
            out.push((name, v.0.unwrap_or_default(), v.1, v.2.unwrap_or(0)));
        }
        out.sort();
        Ok(out)
    }

    pub async fn api_key_revoke(&self, name: &str) -> Result<bool> {
        let digest: Option<String> = redis::cmd("HGET")
            .arg(self.keys.api_keys())
            .arg(name)
            .query_async(&mut self.c())
            .await?;
        let Some(digest) = digest else {
            return Ok(false);
        };
        let _: i64 = redis::cmd("DEL")
            .arg(self.keys.api_key(&digest))
            .query_async(&mut self.c())
            .await?;
        let _: i64 = redis::cmd("HDEL")
            .arg(self.keys.api_keys())
            .arg(name)
            .query_async(&mut self.c())
            .await?;
        Ok(true)
    }

    // ---- idempotency

    /// Starts an idempotent request under `token`, or says who holds it or what it answered.
    pub async fn idem_begin(
        &self,
        digest: &str,
        fingerprint: &str,
        token: &str,
        lease_ms: i64,
        ttl_ms: i64,
    ) -> Result<IdemBegin> {
        let reply: Value = self
            .scripts
            .idempotency_begin
            .key(self.keys.idempotency(digest))
            .arg("")
            .arg(fingerprint)
            .arg(lease_ms)
            .arg(ttl_ms)
            .arg(token)
            .invoke_async(&mut self.c())
            .await?;
        let v = strings(reply)?;
        Ok(match v.first().map(String::as_str) {
            Some("fresh") => IdemBegin::Fresh,
            Some("takeover") => IdemBegin::Takeover,
            Some("running") => {
                IdemBegin::Running(v.get(1).and_then(|ms| ms.parse().ok()).unwrap_or(0))
            }
            Some("conflict") => IdemBegin::Conflict,
            Some("done") => IdemBegin::Done(v.get(1).cloned().unwrap_or_default()),
            _ => return Err(StoreError::Corrupt("idempotency reply")),
        })
    }

    /// Renews, drops or lapses the lease `token` holds; false when it no longer holds it.
    pub async fn idem_lease(&self, digest: &str, token: &str, lease: Lease) -> Result<bool> {
        let (op, ms) = match lease {
            Lease::Renew(ms) => ("renew", ms),
            Lease::Drop => ("drop", 0),
            Lease::Lapse => ("lapse", 0),
        };
        let held: i64 = self
            .scripts
            .idempotency_lease
            .key(self.keys.idempotency(digest))
            .arg("")
            .arg(token)
            .arg(op)
            .arg(ms)
            .invoke_async(&mut self.c())
            .await?;
        Ok(held == 1)
    }

    /// The markers idempotent creates left for `digest` in these shards: `(session key,
    /// fingerprint)` where one is found.
    pub async fn idem_markers(
        &self,
        shards: &[ShardKeys],
        digest: &str,
    ) -> Result<Vec<Option<(String, String)>>> {
        let mut pipe = redis::pipe();
        for shard in shards {
            pipe.cmd("GET").arg(shard.idem_marker(digest));
        }
        let found: Vec<Option<String>> = pipe.query_async(&mut self.c()).await?;
        Ok(found
            .into_iter()
            .map(|m| {
                m.and_then(|m| {
                    m.split_once('|')
                        .map(|(k, fp)| (k.to_string(), fp.to_string()))
                })
            })
            .collect())
    }

    /// Stores the response and indexes it under each participant it names.
    pub async fn idem_finish(
        &self,
        digest: &str,
        fingerprint: &str,
        sealed: &str,
        ttl_ms: i64,
        participants: &[String],
    ) -> Result<()> {
        // Not MULTI: the record and its index live in different hash slots. A crash between
        // them can only leave a record erasure misses, and it expires in 24 hours.
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.idempotency(digest))
            .arg(format!("d|{fingerprint}|{sealed}"))
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        for idx in participants {
            let set = self.keys.idempotency_of(idx);
            pipe.cmd("SADD").arg(&set).arg(digest).ignore();
            pipe.cmd("PEXPIRE").arg(&set).arg(ttl_ms).ignore();
        }
        let _: () = pipe.query_async(&mut self.c()).await?;
        Ok(())
    }

    /// Deletes every stored idempotent response that names the participant.
    pub async fn idem_forget(&self, idx: &str) -> Result<()> {
        let set = self.keys.idempotency_of(idx);
        let digests: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&set)
            .query_async(&mut self.c())
            .await?;
        let mut pipe = redis::pipe();
        for d in &digests {
            pipe.cmd("DEL").arg(self.keys.idempotency(d)).ignore();
        }
        pipe.cmd("DEL").arg(&set).ignore();
        let _: () = pipe.query_async(&mut self.c()).await?;
        Ok(())
    }
}

fn parse_owner(s: &str) -> Option<(u32, u16)> {
    let (p, sh) = s.split_once('.')?;
    Some((p.parse().ok()?, sh.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_rows_parse() {
        let r = RouteRow::parse("abc|b|10|20|AAAA|x").unwrap();
        assert_eq!(r.session_key, "abc");
        assert_eq!(r.held_until, 20);
        assert_eq!(r.sealed_other, "AAAA|x");
        assert!(RouteRow::parse("abc|b|x|20|A").is_none());
        assert_eq!(parse_owner("7.0"), Some((7, 0)));
        assert_eq!(parse_owner("7"), None);
    }

    #[test]
    fn scripts_declare_only_shard_keys_and_derive_from_the_tag() {
        // Every key a script derives is built from TAG (ARGV[1]), which is the shard's tag:
        // no script builds a key from anything else.
        for body in [
            include_str!("lua/common.lua"),
            include_str!("lua/number_add.lua"),
            include_str!("lua/number_state.lua"),
            include_str!("lua/number_remove.lua"),
            include_str!("lua/session_create.lua"),
            include_str!("lua/session_end.lua"),
            include_str!("lua/participant_forget.lua"),
            include_str!("lua/idempotency_begin.lua"),
            include_str!("lua/idempotency_lease.lua"),
            include_str!("lua/relay_claim.lua"),
            include_str!("lua/interaction_update.lua"),
            include_str!("lua/event_put.lua"),
            include_str!("lua/event_redeliver.lua"),
            include_str!("lua/outbox_put.lua"),
            include_str!("lua/outbox_claim.lua"),
            include_str!("lua/outbox_settle.lua"),
            include_str!("lua/pool_set.lua"),
            include_str!("lua/pool_shard_delete.lua"),
            include_str!("lua/events_pending.lua"),
        ] {
            for (i, _) in body.match_indices("redis.call(") {
                let call = &body[i..body[i..].find(')').map(|e| i + e).unwrap_or(body.len())];
                let key_arg = call.split(',').nth(1).unwrap_or("").trim();
                let ok = key_arg.is_empty()
                    || key_arg.starts_with("TAG ..")
                    // EV is TAG .. 'ev:' (common.lua): the shard's event queue.
                    || key_arg.starts_with("EV ..")
                    || key_arg.starts_with("KEYS[")
                    || key_arg
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_');
                assert!(ok, "script builds a key outside its shard: {call}");
            }
        }
    }
}
