//! The use cases over the store, one module each, around the shared core kept here: the
//! [`Broker`] handle, its error, the sealed session record and the pool lookups every use
//! case makes. The broker knows nothing of HTTP; it takes typed values and returns views or
//! errors.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{Crypto, CryptoError};
use crate::domain::{
    Clock, E164, GeoMatch, InterceptFallback, Millis, NumberError, NumberSelection, PinMode,
    PoolName, PoolPolicy, RecordChannels, session::Kind,
};
use crate::store::{PoolRow, ShardKeys, Store, StoreError};

mod audit;
mod calls;
mod capacity;
mod erasure;
mod events;
mod idempotency;
mod interactions;
mod keys;
mod pools;
mod reaper;
mod recordings;
mod rotation;
mod routing;
mod sessions;
mod texts;
mod views;

pub use audit::{
    AUDIT_KEEP_MS, AUDIT_PAGE_MAX, Actor, AuditCursor, AuditPage, AuditQuery, AuditView, Via,
};
pub use calls::CallStart;
pub use capacity::{CAPACITY_MARGIN_PCT, CapacityView, StatsView};
pub use events::{AttemptView, EventId, EventView, SECRET_OVERLAP_MS};
pub use idempotency::{
    IDEMPOTENCY_LEASE_MS, IDEMPOTENCY_TTL_MS, IdemAnswer, IdemStart, IdemTicket, Once,
};
pub use keys::{PoolLimit, Principal, Scope};
pub use reaper::{Reaped, run_reaper};
pub use recordings::{RecordingRef, RecordingView, channel_count};
pub use rotation::Rotation;
pub use routing::{Input, PROVIDER_REF_TTL_MS, UNNAMED_REF_TTL_MS};
pub use sessions::{MAX_TTL_SECS, STICKY_WINDOW_MS};
// `Via` at the root is how a change came (audit); the texts' is which provider sends.
pub use texts::{AppText, OutboundSms, Recipient, TEXT_MAX_CHARS, Via as TextVia};
pub use views::{
    AddReport, Decision, InteractionView, InterceptPlan, InterceptVerdict, NewSession,
    NumberCounts, NumberView, OptionsView, Participant, ParticipantView, PinView, PoolView,
    RelayOutcome, SessionChoices, SessionView, Skipped,
};

/// How long a pool's policy is trusted before it is read again on hot paths.
const POOL_CACHE_MS: Millis = 2_000;

/// Why a use case failed. Each edge (the API, the relay) maps it to its own answer.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{field} is not a valid number: {reason}")]
    InvalidNumber {
        field: String,
        #[source]
        reason: NumberError,
    },
    #[error("{0}")]
    Validation(String),
    #[error("pool `{0}` does not exist")]
    PoolNotFound(String),
    #[error("session not found")]
    SessionNotFound,
    #[error("{0}")]
    NumberNotFound(String),
    #[error(
        "pool `{pool}` has {current} shards and shards can only grow (asked for {asked}): \
         its numbers stay in the shards they were added to"
    )]
    ShardsShrink {
        pool: String,
        current: u16,
        asked: u16,
    },
    #[error("pool `{0}` has no number free for these participants")]
    PoolExhausted(String),
    #[error("number {0} still carries a session (open or cooling off)")]
    NumberInUse(String),
    /// The number a create asked for exists in the pool but cannot serve this session; the
    /// text says why.
    #[error("{0}")]
    NumberUnavailable(String),
    /// The number a create asked for is no number of the pool. The number is not repeated:
    /// it may be anybody's.
    #[error("proxy_number is not a number of pool `{0}`")]
    NumberNotInPool(String),
    #[error("pool `{0}` still has numbers carrying sessions (open or cooling off)")]
    PoolInUse(String),
    #[error("the session has ended")]
    SessionClosed,
    #[error("`to` or `from` names neither participant of the session (by number or label)")]
    NotAParticipant,
    #[error("{0}")]
    ProviderUnavailable(String),
    #[error(
        "pool `{0}` names no provider and several have API credentials: set the pool's \
         `provider`"
    )]
    ProviderAmbiguous(String),
    #[error("event not found, or not redeliverable")]
    EventNotFound,
    #[error("this Idempotency-Key was used with another request body")]
    IdempotencyConflict,
    #[error("a request with this Idempotency-Key is still in progress")]
    IdempotencyRunning,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored data cannot be decrypted")]
    Crypto(#[from] CryptoError),
}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

/// The sealed part of a session record: numbers, labels, metadata.
#[derive(Serialize, Deserialize)]
struct Blob {
    p: [BlobParticipant; 2],
    #[serde(default)]
    m: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct BlobParticipant {
    n: Option<String>,
    l: Option<String>,
}

/// A pool's row and its policy as cached, and when they were read.
type CachedPool = (Arc<PoolRow>, Arc<PoolPolicy>, Millis);

/// What the clones of one [`Broker`] share: the store, the sealing keys, the clock, and
/// the caches that spare hot paths a round trip.
struct Inner {
    store: Store,
    crypto: Arc<Crypto>,
    clock: Arc<dyn Clock>,
    /// Whether apps' own session changes go into the audit log (`HUSH_AUDIT_SESSIONS=all`).
    audit_all_sessions: bool,
    /// proxy number → (pool id, shard). Numbers rarely move; a route miss re-reads it.
    owners: RwLock<HashMap<String, (u32, u16)>>,
    /// pool id → name; ids are never reused for another name.
    names: RwLock<HashMap<u32, String>>,
    /// pool id → (row, its policy, fetched at): policy lookups on hot paths (events,
    /// intercept), shared rather than copied, as every routed call reads them.
    pools: RwLock<HashMap<u32, CachedPool>>,
    /// API key digest → (principal, fetched at), so authentication is not a round trip.
    principals: RwLock<HashMap<String, (Arc<Principal>, Millis)>>,
}

/// The handle the edges and the background loops hold; its clones share one state.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

fn policy_of(row: &PoolRow) -> PoolPolicy {
    let d = PoolPolicy::default();
    let f = &row.fields;
    PoolPolicy {
        default_ttl_secs: f
            .get("ttl")
            .and_then(|v| v.parse().ok())
            .unwrap_or(d.default_ttl_secs),
        cooloff_secs: f
            .get("cooloff")
            .and_then(|v| v.parse().ok())
            .unwrap_or(d.cooloff_secs),
        geo_match: f
            .get("geo")
            .and_then(|v| GeoMatch::parse(v))
            .unwrap_or(d.geo_match),
        out_of_session_message: f.get("msg").cloned().unwrap_or(d.out_of_session_message),
        callback_url: f.get("cb").filter(|v| !v.is_empty()).cloned(),
        callback_include_numbers: f.get("cbn").is_some_and(|v| v == "1"),
        intercept_url: f.get("iu").filter(|v| !v.is_empty()).cloned(),
        intercept_timeout_ms: f
            .get("it")
            .and_then(|v| v.parse().ok())
            .unwrap_or(d.intercept_timeout_ms),
        intercept_fallback: match f.get("if").map(String::as_str) {
            Some("block") => InterceptFallback::Block,
            _ => InterceptFallback::Allow,
        },
        low_threshold_pct: f
            .get("low")
            .and_then(|v| v.parse().ok())
            .unwrap_or(d.low_threshold_pct),
        shards: row.shards,
        record: f.get("rec").is_some_and(|v| v == "1"),
        record_channels: f
            .get("rch")
            .and_then(|v| RecordChannels::parse(v))
            .unwrap_or(d.record_channels),
        max_call_secs: f.get("mcs").and_then(|v| v.parse().ok()),
        idle_ttl_secs: f.get("idle").and_then(|v| v.parse().ok()),
        provider: f.get("prov").filter(|v| !v.is_empty()).cloned(),
        number_selection: f
            .get("nsel")
            .and_then(|v| NumberSelection::parse(v))
            .unwrap_or(d.number_selection),
        pin: f
            .get("pin")
            .and_then(|v| PinMode::parse(v))
            .unwrap_or(d.pin),
        pin_length: f
            .get("pinl")
            .and_then(|v| v.parse().ok())
            .unwrap_or(d.pin_length),
        pin_prompt_timeout_secs: f
            .get("pint")
            .and_then(|v| v.parse().ok())
            .unwrap_or(d.pin_prompt_timeout_secs),
        pin_retry: f
            .get("pinr")
            .and_then(|v| v.parse().ok())
            .unwrap_or(d.pin_retry),
        pin_caller_check: f.get("pinc").is_none_or(|v| v != "0"),
        pin_failure_limit: f
            .get("pinf")
            .and_then(|v| v.parse().ok())
            .unwrap_or(d.pin_failure_limit),
        pin_prompt: f.get("pinp").cloned().unwrap_or(d.pin_prompt),
        pin_text_prompt: f.get("pins").cloned().unwrap_or(d.pin_text_prompt),
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Voice => "voice",
        Kind::Sms => "sms",
    }
}

/// Which shard of a pool a number lives in: stable for a given shard count.
fn shard_of(number: &str, shards: u16) -> u16 {
    let h = Sha256::digest(number.as_bytes());
    (u16::from_be_bytes([h[0], h[1]])) % shards.max(1)
}

impl Broker {
    /// Records apps' session changes in the audit log too, not only people's. Set once, on
    /// a broker not yet cloned.
    pub fn audit_all_sessions(mut self, on: bool) -> Broker {
        Arc::get_mut(&mut self.inner)
            .expect("set before the broker is shared")
            .audit_all_sessions = on;
        self
    }

    pub fn new(store: Store, crypto: Crypto, clock: Arc<dyn Clock>) -> Broker {
        Broker {
            inner: Arc::new(Inner {
                store,
                crypto: Arc::new(crypto),
                clock,
                audit_all_sessions: false,
                owners: RwLock::new(HashMap::new()),
                names: RwLock::new(HashMap::new()),
                pools: RwLock::new(HashMap::new()),
                principals: RwLock::new(HashMap::new()),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Sealing for records other modules keep (the outbound text queue).
    pub fn crypto(&self) -> &Crypto {
        &self.inner.crypto
    }

    pub fn now_ms(&self) -> Millis {
        self.now()
    }

    fn now(&self) -> Millis {
        self.inner.clock.now_ms()
    }

    fn shard(&self, pool_id: u32, shard: u16) -> ShardKeys {
        self.inner.store.keys().shard(pool_id, shard)
    }

    fn idx(&self, n: &E164) -> String {
        self.inner.crypto.blind_index(n)
    }

    /// Opens the sealed part of a session record.
    /// Opens the sealed parts of a session record: numbers and labels (`z`) and metadata
    /// (`y`, when the session has any).
    fn open_blob(&self, rec: &HashMap<String, String>) -> Result<Blob> {
        let mut blob = self.open_sealed_blob(rec.get("z").map(String::as_str).unwrap_or(""))?;
        if let Some(sealed) = rec.get("y") {
            blob.m = serde_json::from_slice(&self.inner.crypto.open("metadata", sealed)?)
                .map_err(|_| BrokerError::Crypto(CryptoError::Corrupt))?;
        }
        Ok(blob)
    }

    /// Opens a session's numbers and labels; its metadata is not in this part.
    fn open_sealed_blob(&self, sealed: &str) -> Result<Blob> {
        let plain = self.inner.crypto.open("session", sealed)?;
        let corrupt = |_| BrokerError::Crypto(CryptoError::Corrupt);
        if plain.first() == Some(&b'{') {
            // Records written before numbers and metadata were sealed apart.
            return serde_json::from_slice(&plain).map_err(corrupt);
        }
        let mut parts: Vec<Option<String>> = if plain.first() == Some(&b'[') {
            serde_json::from_slice(&plain).map_err(corrupt)?
        } else {
            // Two numbers and no labels: `n0,n1`, a side left empty once erased.
            let text = std::str::from_utf8(&plain).map_err(|_| CryptoError::Corrupt)?;
            let (n0, n1) = text.split_once(',').ok_or(CryptoError::Corrupt)?;
            [n0, n1]
                .map(|n| (!n.is_empty()).then(|| n.to_string()))
                .into()
        };
        if !(2..=4).contains(&parts.len()) {
            return Err(BrokerError::Crypto(CryptoError::Corrupt));
        }
        parts.resize(4, None);
        let mut parts = parts.into_iter();
        let mut next = || parts.next().flatten();
        let (n0, n1, l0, l1) = (next(), next(), next(), next());
        Ok(Blob {
            p: [
                BlobParticipant { n: n0, l: l0 },
                BlobParticipant { n: n1, l: l1 },
            ],
            m: BTreeMap::new(),
        })
    }

    /// Seals a session's numbers and labels: `n0,n1` when neither has a label (numbers hold
    /// no comma), else the array `[n0, n1, l0, l1]`; and its metadata apart, if any.
    fn seal_blob(&self, blob: &Blob) -> (String, Option<String>) {
        let [a, b] = &blob.p;
        let plain = if a.l.is_none() && b.l.is_none() {
            let n = |p: &BlobParticipant| p.n.clone().unwrap_or_default();
            format!("{},{}", n(a), n(b)).into_bytes()
        } else {
            serde_json::to_vec(&[&a.n, &b.n, &a.l, &b.l]).expect("strings serialise")
        };
        let crypto = &self.inner.crypto;
        let numbers = crypto.seal("session", &plain);
        let metadata = (!blob.m.is_empty()).then(|| {
            crypto.seal(
                "metadata",
                &serde_json::to_vec(&blob.m).expect("strings serialise"),
            )
        });
        (numbers, metadata)
    }

    pub async fn ping(&self) -> Result<()> {
        Ok(self.inner.store.ping().await?)
    }

    async fn pool_row(&self, name: &PoolName) -> Result<PoolRow> {
        self.inner
            .store
            .pool(name.as_str())
            .await?
            .ok_or_else(|| BrokerError::PoolNotFound(name.to_string()))
    }

    /// A pool's name by its id (cached).
    pub async fn pool_name(&self, id: u32) -> Result<String> {
        if let Some(n) = self.inner.names.read().expect("lock poisoned").get(&id) {
            return Ok(n.clone());
        }
        let row = self
            .inner
            .store
            .pool_by_id(id)
            .await?
            .ok_or(BrokerError::SessionNotFound)?;
        self.inner
            .names
            .write()
            .expect("lock poisoned")
            .insert(id, row.name.clone());
        Ok(row.name)
    }

    /// Whether data of pool `pool_id` (from a session or event id) is visible `within` a
    /// key's pools. Pool names are cached, so a limited key pays no round trip once the pool
    /// is known, and an unlimited key pays nothing.
    pub async fn sees_pool_id(&self, within: &PoolLimit, pool_id: u32) -> Result<bool> {
        if *within == PoolLimit::All {
            return Ok(true);
        }
        match self.pool_name(pool_id).await {
            Ok(name) => Ok(within.sees(&name)),
            Err(BrokerError::SessionNotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The pools a listing covers: `pool` alone (not found when missing or outside
    /// `within`), or every pool `within` a key's pools.
    async fn pool_rows(&self, pool: Option<&PoolName>, within: &PoolLimit) -> Result<Vec<PoolRow>> {
        match pool {
            Some(p) if !within.sees(p.as_str()) => Err(BrokerError::PoolNotFound(p.to_string())),
            Some(p) => Ok(vec![self.pool_row(p).await?]),
            None => {
                let mut rows = self.inner.store.pool_list().await?;
                rows.retain(|r| within.sees(&r.name));
                Ok(rows)
            }
        }
    }

    /// A pool's row, at most [`POOL_CACHE_MS`] old.
    async fn pool_cached(&self, id: u32) -> Result<Option<Arc<PoolRow>>> {
        Ok(self.pool_policy_cached(id).await?.map(|(row, _)| row))
    }

    /// A pool's row and its policy, at most [`POOL_CACHE_MS`] old.
    async fn pool_policy_cached(&self, id: u32) -> Result<Option<(Arc<PoolRow>, Arc<PoolPolicy>)>> {
        let now = self.now();
        if let Some((row, policy, at)) = self.inner.pools.read().expect("lock poisoned").get(&id)
            && now - at < POOL_CACHE_MS
        {
            return Ok(Some((row.clone(), policy.clone())));
        }
        let Some(row) = self.inner.store.pool_by_id(id).await? else {
            return Ok(None);
        };
        let policy = Arc::new(policy_of(&row));
        let row = Arc::new(row);
        self.inner
            .pools
            .write()
            .expect("lock poisoned")
            .insert(id, (row.clone(), policy.clone(), now));
        Ok(Some((row, policy)))
    }

    /// Drops a pool's cached row, so this instance reads a change it made at once.
    fn forget_cached_pool(&self, id: u32) {
        self.inner.pools.write().expect("lock poisoned").remove(&id);
    }
}
