//! The use-cases: pools, numbers, sessions, routing, erasure and reaping, over the store.
//! The broker knows nothing of HTTP; it takes typed values and returns views or errors.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{Crypto, CryptoError};
use crate::domain::{
    Capabilities, Clock, CloseReason, E164, GeoMatch, InterceptFallback, Millis, Mode, NumberError,
    NumberState, PoolName, PoolPolicy, SessionId, rfc3339, session::Kind,
};
use crate::store::{
    CreateArgs, Created, EndEvents, EndOp, Ended, EventDraft, IdemBegin, IdemMark, Lease, PoolRow,
    PoolSet, RouteRow, ShardKeys, Store, StoreError,
};
use crate::telemetry::METRICS;

/// How long two participants who shared a number get it again when free.
pub const STICKY_WINDOW_MS: i64 = 30 * 24 * 3600 * 1000;
/// How long an idempotent response is replayed.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;
/// How long a running request holds its idempotency key without renewing it: a request
/// that died (crash, lost connection) blocks its retries for no longer than this.
pub const IDEMPOTENCY_LEASE_MS: i64 = 3000;
/// Longest session a client may ask for (30 days).
pub const MAX_TTL_SECS: u32 = 2_592_000;

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
    #[error("pool `{0}` has no number free for these participants")]
    PoolExhausted(String),
    #[error("number {0} still carries a session (open or cooling off)")]
    NumberInUse(String),
    #[error("pool `{0}` still has numbers carrying sessions (open or cooling off)")]
    PoolInUse(String),
    #[error("the session has ended")]
    SessionClosed,
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

/// The scopes an API key may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Sessions,
    Pools,
    Relay,
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s.trim() {
            "sessions" => Some(Scope::Sessions),
            "pools" => Some(Scope::Pools),
            "relay" => Some(Scope::Relay),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Sessions => "sessions",
            Scope::Pools => "pools",
            Scope::Relay => "relay",
            Scope::Admin => "admin",
        }
    }
}

/// Who is calling: an API key's name, scopes and the pools it may see.
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub pools: PoolLimit,
}

impl Principal {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }
}

/// The pools an API key may see: all of them, or a named few. Data of any other pool
/// answers as if it did not exist, so one app cannot even learn what another app holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PoolLimit {
    /// Every pool: keys made without `--pools`, and keys stored before limits existed.
    #[default]
    All,
    /// Only these pools (never empty).
    Only(BTreeSet<PoolName>),
}

impl PoolLimit {
    /// The limit a list of pool names asks for, as given on a command line (empty entries,
    /// as `a,,b` leaves, are skipped).
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<PoolLimit> {
        let mut set = BTreeSet::new();
        for name in names
            .iter()
            .map(|n| n.as_ref().trim())
            .filter(|n| !n.is_empty())
        {
            if name == "*" {
                return Err(BrokerError::Validation(
                    "`*` is not a pool name; leave the pools out for a key that sees every pool"
                        .into(),
                ));
            }
            set.insert(PoolName::parse(name).ok_or_else(|| {
                BrokerError::Validation(format!(
                    "`{name}` is not a pool name (lower-case letters, digits, - and _)"
                ))
            })?);
        }
        if set.is_empty() {
            return Err(BrokerError::Validation(
                "name at least one pool, or leave the pools out for a key that sees every pool"
                    .into(),
            ));
        }
        Ok(PoolLimit::Only(set))
    }

    /// Whether data of the pool named `pool` is visible.
    pub fn sees(&self, pool: &str) -> bool {
        match self {
            PoolLimit::All => true,
            PoolLimit::Only(set) => set.iter().any(|p| p.as_str() == pool),
        }
    }

    /// The stored form: comma-separated names, or `None` for every pool.
    fn to_stored(&self) -> Option<String> {
        match self {
            PoolLimit::All => None,
            PoolLimit::Only(set) => Some(
                set.iter()
                    .map(PoolName::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        }
    }

    /// Reads the stored form. A record without the field (older keys) sees every pool; a
    /// field that names no valid pool sees none rather than all.
    fn from_stored(text: Option<&str>) -> PoolLimit {
        match text {
            None => PoolLimit::All,
            Some(t) => PoolLimit::Only(t.split(',').filter_map(PoolName::parse).collect()),
        }
    }
}

impl std::fmt::Display for PoolLimit {
    /// `*` for every pool, else the names separated by commas.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.to_stored().as_deref().unwrap_or("*"))
    }
}

// ---- inputs and views

#[derive(Clone, Debug)]
pub struct Participant {
    pub number: E164,
    pub label: Option<String>,
}

#[derive(Clone, Debug)]
pub struct NewSession {
    pub pool: PoolName,
    pub participants: [Participant; 2],
    pub ttl_secs: Option<u32>,
    pub mode: Mode,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ParticipantView {
    pub number: Option<String>,
    pub label: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionView {
    pub id: String,
    pub pool: String,
    pub status: String,
    pub mode: String,
    pub proxy_number: String,
    pub geo_match: String,
    pub participants: Vec<ParticipantView>,
    pub created_at: String,
    pub expires_at: String,
    pub closed_at: Option<String>,
    pub close_reason: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// An idempotent request whose key this instance holds (see [`Broker::idem_begin`]).
#[derive(Clone, Debug)]
pub struct IdemTicket {
    digest: String,
    fingerprint: String,
    /// Who holds the lease: only its holder renews, frees or lapses it.
    token: String,
    /// Taken over from a request that stopped: that one may have made the session already.
    pub takeover: bool,
}

/// What starting an idempotent request gave.
#[derive(Debug)]
pub enum IdemStart {
    /// Go ahead, holding the key.
    Run(IdemTicket),
    /// The stored response.
    Replay(String),
}

/// The answer of an idempotent create: the response body, and whether it repeats an earlier
/// request's answer rather than being this request's own.
#[derive(Debug)]
pub struct IdemAnswer {
    pub body: String,
    pub replayed: bool,
}

/// What an idempotent create did.
#[derive(Debug)]
pub enum Once {
    /// It made the session.
    Created(SessionView),
    /// An earlier attempt with the same key had made it.
    Found(SessionView),
}

#[derive(Clone, Debug, Serialize)]
pub struct NumberCounts {
    pub total: i64,
    pub active: i64,
    pub draining: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PoolView {
    pub name: String,
    pub default_ttl_secs: u32,
    pub cooloff_secs: u32,
    pub geo_match: GeoMatch,
    pub out_of_session_message: String,
    pub callback_url: Option<String>,
    pub callback_include_numbers: bool,
    pub intercept_url: Option<String>,
    pub intercept_timeout_ms: u32,
    pub intercept_fallback: InterceptFallback,
    pub low_threshold_pct: u8,
    pub numbers: NumberCounts,
    pub open_sessions: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct NumberView {
    pub number: String,
    pub capabilities: Vec<&'static str>,
    pub state: NumberState,
    pub open_sessions: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub number: String,
    pub code: &'static str,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AddReport {
    pub added: Vec<String>,
    pub skipped: Vec<Skipped>,
}

/// What hush answers an inbound call or text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Connect {
        session_id: String,
        caller_id: E164,
        to: E164,
    },
    Relay {
        session_id: String,
        from: E164,
        to: E164,
    },
    Announce {
        message: String,
    },
}

/// What the relay answers an inbound call or text, and the interaction it recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayOutcome {
    pub decision: Decision,
    /// The interaction this call or text is, when it reached a session.
    pub interaction: Option<String>,
    /// True when the provider sent this call or message id before.
    pub replay: bool,
    /// True while the pool's intercept has not decided this interaction: the first request
    /// asks the app, a retry meanwhile gets the pool's fallback.
    pub pending: bool,
}

/// What the app's intercept decided for an interaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InterceptVerdict {
    Allowed,
    /// Blocked, answered with this message or, for `None`, the pool's message.
    Blocked(Option<String>),
}

/// One relayed call or text. Holds no numbers and no message body.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct InteractionView {
    pub id: String,
    pub kind: &'static str,
    pub from_participant: u8,
    pub status: String,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u32>,
    pub provider: String,
    pub provider_ref: String,
}

/// What the relay asks the app's intercept, and what it does without an answer.
#[derive(Clone, Debug)]
pub struct InterceptPlan {
    pub url: String,
    pub timeout_ms: u32,
    pub fallback: InterceptFallback,
    pub secrets: Vec<String>,
    /// The `webhook-id` of the question.
    pub id: String,
    pub body: String,
    /// The pool's out-of-session message, for a block without a message of its own.
    pub message: String,
}

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

/// How long a provider's call or message id is remembered: longer than any provider retries
/// a webhook or sends status callbacks for a call.
pub const PROVIDER_REF_TTL_MS: i64 = 48 * 3600 * 1000;

/// How long the answer to a request that named no reference of its own (`POST /v1/route`
/// without `reference`) is remembered: nothing can retry it, so only long enough for the
/// app's intercept to give its verdict.
pub const UNNAMED_REF_TTL_MS: i64 = 60 * 1000;

/// What a reaper pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    pub expired: usize,
    pub released: usize,
}

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

struct Inner {
    store: Store,
    crypto: Arc<Crypto>,
    clock: Arc<dyn Clock>,
    /// proxy number → (pool id, shard). Numbers rarely move; a route miss re-reads it.
    owners: RwLock<HashMap<String, (u32, u16)>>,
    /// pool id → name; ids are never reused for another name.
    names: RwLock<HashMap<u32, String>>,
    /// pool id → (row, fetched at): policy lookups on hot paths (events, intercept).
    pools: RwLock<HashMap<u32, (PoolRow, Millis)>>,
    /// API key digest → (principal, fetched at), so authentication is not a round trip.
    principals: RwLock<HashMap<String, (Arc<Principal>, Millis)>>,
}

/// How many of a shard's newest events a status-filtered listing looks through.
const EVENT_SCAN_WINDOW: usize = 5000;

/// How long a rotated-out signing secret keeps signing beside the new one.
pub const SECRET_OVERLAP_MS: Millis = 24 * 3600 * 1000;

/// How long a pool's policy is trusted before it is read again on hot paths.
const POOL_CACHE_MS: Millis = 2_000;

/// How long a looked-up API key is trusted before it is read again (revocation delay).
const PRINCIPAL_CACHE_MS: Millis = 5_000;

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
    }
}

/// A policy as the pool hash stores it.
fn policy_fields(policy: &PoolPolicy) -> Vec<(&'static str, String)> {
    let flag = |on: bool| if on { "1" } else { "0" }.to_string();
    vec![
        ("ttl", policy.default_ttl_secs.to_string()),
        ("cooloff", policy.cooloff_secs.to_string()),
        ("geo", policy.geo_match.as_str().to_string()),
        ("msg", policy.out_of_session_message.clone()),
        ("cb", policy.callback_url.clone().unwrap_or_default()),
        ("cbn", flag(policy.callback_include_numbers)),
        ("iu", policy.intercept_url.clone().unwrap_or_default()),
        ("it", policy.intercept_timeout_ms.to_string()),
        ("low", policy.low_threshold_pct.to_string()),
        (
            "if",
            match policy.intercept_fallback {
                InterceptFallback::Allow => "allow",
                InterceptFallback::Block => "block",
            }
            .into(),
        ),
    ]
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Voice => "voice",
        Kind::Sms => "sms",
    }
}

/// A session record's sealed blob: whole in `z`, or in the chunks `z1`, `z2`, ... that keep
/// the record's hash in Redis's compact encoding.
fn blob_text(rec: &HashMap<String, String>) -> String {
    if let Some(whole) = rec.get("z") {
        return whole.clone();
    }
    (1..)
        .map_while(|i| rec.get(&format!("z{i}")))
        .map(String::as_str)
        .collect()
}

/// Which shard of a pool a number lives in: stable for a given shard count.
fn shard_of(number: &str, shards: u16) -> u16 {
    let h = Sha256::digest(number.as_bytes());
    (u16::from_be_bytes([h[0], h[1]])) % shards.max(1)
}

/// Lower-case hex SHA-256; on the path of every authenticated request, so no allocation
/// per byte.
fn sha256_hex(data: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(data) {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

impl Broker {
    pub fn new(store: Store, crypto: Crypto, clock: Arc<dyn Clock>) -> Broker {
        Broker {
            inner: Arc::new(Inner {
                store,
                crypto: Arc::new(crypto),
                clock,
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

    pub async fn ping(&self) -> Result<()> {
        Ok(self.inner.store.ping().await?)
    }

    // ---- API keys

    /// A new key that sees every pool.
    pub async fn create_api_key(&self, name: &str, scopes: &[Scope]) -> Result<String> {
        self.create_api_key_limited(name, scopes, &PoolLimit::All)
            .await
    }

    /// A new key that sees only the pools in `pools`; the key is returned, stored hashed.
    pub async fn create_api_key_limited(
        &self,
        name: &str,
        scopes: &[Scope],
        pools: &PoolLimit,
    ) -> Result<String> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(BrokerError::Validation(
                "key name: 1 to 64 letters, digits, `-`, `_` or `.`".into(),
            ));
        }
        if scopes.is_empty() {
            return Err(BrokerError::Validation(
                "a key needs at least one scope".into(),
            ));
        }
        if matches!(pools, PoolLimit::Only(set) if set.is_empty()) {
            return Err(BrokerError::Validation(
                "a key limited to pools needs at least one pool name".into(),
            ));
        }
        let raw: [u8; 32] = rand::random();
        let key = format!(
            "hush_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let scopes_text = scopes
            .iter()
            .map(Scope::as_str)
            .collect::<Vec<_>>()
            .join(",");
        let fresh = self
            .inner
            .store
            .api_key_put(
                name,
                &sha256_hex(key.as_bytes()),
                &scopes_text,
                pools.to_stored().as_deref(),
                self.now(),
            )
            .await?;
        if !fresh {
            return Err(BrokerError::Validation(format!(
                "a key named `{name}` exists; revoke it first"
            )));
        }
        Ok(key)
    }

    /// `(name, scopes, pools, created at)` of every key, by name.
    pub async fn list_api_keys(&self) -> Result<Vec<(String, String, PoolLimit, String)>> {
        Ok(self
            .inner
            .store
            .api_keys()
            .await?
            .into_iter()
            .map(|(n, s, p, c)| (n, s, PoolLimit::from_stored(p.as_deref()), rfc3339(c)))
            .collect())
    }

    pub async fn revoke_api_key(&self, name: &str) -> Result<bool> {
        let done = self.inner.store.api_key_revoke(name).await?;
        self.inner
            .principals
            .write()
            .expect("lock poisoned")
            .retain(|_, (p, _)| p.name != name);
        Ok(done)
    }

    /// The principal behind a bearer key, or `None` for an unknown key.
    pub async fn authenticate(&self, key: &str) -> Result<Option<Arc<Principal>>> {
        let digest = sha256_hex(key.as_bytes());
        let now = self.now();
        if let Some((p, at)) = self
            .inner
            .principals
            .read()
            .expect("lock poisoned")
            .get(&digest)
            && now - at < PRINCIPAL_CACHE_MS
        {
            return Ok(Some(p.clone()));
        }
        let Some((name, scopes, pools)) = self.inner.store.api_key(&digest).await? else {
            return Ok(None);
        };
        let p = Arc::new(Principal {
            name,
            scopes: scopes.split(',').filter_map(Scope::parse).collect(),
            pools: PoolLimit::from_stored(pools.as_deref()),
        });
        let mut cache = self.inner.principals.write().expect("lock poisoned");
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(digest, (p.clone(), now));
        Ok(Some(p))
    }

    // ---- pools

    async fn pool_row(&self, name: &PoolName) -> Result<PoolRow> {
        self.inner
            .store
            .pool(name.as_str())
            .await?
            .ok_or_else(|| BrokerError::PoolNotFound(name.to_string()))
    }

    async fn pool_name(&self, id: u32) -> Result<String> {
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
    async fn pool_cached(&self, id: u32) -> Result<Option<PoolRow>> {
        let now = self.now();
        if let Some((row, at)) = self.inner.pools.read().expect("lock poisoned").get(&id)
            && now - at < POOL_CACHE_MS
        {
            return Ok(Some(row.clone()));
        }
        let row = self.inner.store.pool_by_id(id).await?;
        if let Some(row) = &row {
            self.inner
                .pools
                .write()
                .expect("lock poisoned")
                .insert(id, (row.clone(), now));
        }
        Ok(row)
    }

    /// The policy of a pool that wants events, or `None`.
    async fn events_policy(&self, pool_id: u32) -> Result<Option<(String, PoolPolicy)>> {
        Ok(self.pool_cached(pool_id).await?.and_then(|row| {
            let policy = policy_of(&row);
            policy.callback_url.is_some().then_some((row.name, policy))
        }))
    }

    /// An event's id and body. Placeholders (`"__NAME__"`) are filled in by the script that
    /// records the event, with values only Redis knows at that moment.
    fn draft(
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
        let blob: Blob =
            serde_json::from_slice(&self.inner.crypto.open("session", &blob_text(rec))?)
                .map_err(|_| BrokerError::Crypto(CryptoError::Corrupt))?;
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
    async fn end_events(
        &self,
        id: &SessionId,
        rec: &HashMap<String, String>,
        own: Option<CloseReason>,
    ) -> Result<EndEvents> {
        let expires = rec.get("e").and_then(|v| v.parse().ok()).unwrap_or(0);
        let now = self.now();
        Ok(EndEvents {
            expired: self
                .closed_event(id, rec, CloseReason::Expired, expires.min(now))
                .await?,
            own: match own {
                Some(reason) => self.closed_event(id, rec, reason, now).await?,
                None => None,
            },
        })
    }

    /// A pool's policy, if the pool exists.
    pub async fn pool_policy(&self, name: &PoolName) -> Result<Option<PoolPolicy>> {
        Ok(self
            .inner
            .store
            .pool(name.as_str())
            .await?
            .map(|row| policy_of(&row)))
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
        let fresh = crate::events::signing::SigningSecret::generate().to_text();
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
        self.inner
            .pools
            .write()
            .expect("lock poisoned")
            .remove(&row.id);
        Ok(fresh)
    }

    /// The secrets events are signed with now: the current one, then the previous one while
    /// its overlap lasts.
    fn signing_secrets(&self, row: &PoolRow) -> Result<Vec<String>> {
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

    /// Opens the numbers sealed beside an event, for pools that send them.
    pub fn event_numbers(&self, sealed: &str) -> Result<Vec<Option<String>>> {
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

    /// Creates a pool with this policy, or replaces the policy of an existing one whole.
    pub async fn put_pool(&self, name: &PoolName, policy: &PoolPolicy) -> Result<(PoolView, bool)> {
        let (row, created) = self
            .inner
            .store
            .pool_put(name.as_str(), &policy_fields(policy), 1)
            .await?;
        // Every pool has a signing secret from the start, so callbacks can be turned on
        // later without a separate step.
        let secret = crate::events::signing::SigningSecret::generate().to_text();
        self.inner
            .store
            .pool_field_init(
                row.id,
                "sec",
                &self.inner.crypto.seal("callback-secret", secret.as_bytes()),
            )
            .await?;
        self.forget_cached_pool(row.id);
        Ok((self.pool_view(&row).await?, created))
    }

    /// Changes an existing pool's policy to what `merge` makes of the current one. A change
    /// that lands between the read and the write sends `merge` round again with the newer
    /// policy, so concurrent changes never undo each other.
    pub async fn patch_pool<E: From<BrokerError>>(
        &self,
        name: &PoolName,
        merge: impl Fn(&PoolPolicy) -> std::result::Result<PoolPolicy, E>,
    ) -> std::result::Result<PoolView, E> {
        const ATTEMPTS: usize = 100;
        for _ in 0..ATTEMPTS {
            let row = self.pool_row(name).await?;
            let version = row.fields.get("v").cloned().unwrap_or_default();
            let policy = merge(&policy_of(&row))?;
            let store = &self.inner.store;
            match store
                .pool_set(row.id, &version, &policy_fields(&policy))
                .await
                .map_err(BrokerError::from)?
            {
                PoolSet::Written => {
                    self.forget_cached_pool(row.id);
                    return Ok(self.get_pool(name).await?);
                }
                PoolSet::Moved => tokio::task::yield_now().await,
                PoolSet::Gone => return Err(BrokerError::PoolNotFound(name.to_string()).into()),
            }
        }
        Err(BrokerError::Validation(format!(
            "pool `{name}` kept changing while this change was applied; try again"
        ))
        .into())
    }

    /// Deletes a pool: its numbers, settings, signing secrets and event queue. Refused while
    /// any of its numbers carries a session, open or cooling off.
    pub async fn delete_pool(&self, name: &PoolName) -> Result<()> {
        let row = self.pool_row(name).await?;
        for sh in 0..row.shards {
            let shard = self.shard(row.id, sh);
            // Sessions whose cool-off has ended no longer hold their number, even if no
            // reaper has visited them yet.
            const REAP_BATCH: usize = 1000;
            for _ in 0..10 {
                let r = self.reap_shard(&shard, self.now(), REAP_BATCH).await?;
                if r.expired + r.released < REAP_BATCH {
                    break;
                }
            }
            let Some(numbers) = self.inner.store.pool_shard_delete(&shard).await? else {
                return Err(BrokerError::PoolInUse(name.to_string()));
            };
            let mut owners = self.inner.owners.write().expect("lock poisoned");
            for n in &numbers {
                owners.remove(n);
            }
        }
        self.inner.store.pool_forget(row.id, name.as_str()).await?;
        self.forget_cached_pool(row.id);
        self.inner
            .names
            .write()
            .expect("lock poisoned")
            .remove(&row.id);
        // Its gauges would otherwise report the last values seen until the process restarts.
        let m = &*METRICS;
        let _ = m
            .pool_numbers
            .remove_label_values(&[name.as_str(), "active"]);
        let _ = m
            .pool_numbers
            .remove_label_values(&[name.as_str(), "draining"]);
        let _ = m.pool_open_sessions.remove_label_values(&[name.as_str()]);
        let _ = m.pool_utilisation.remove_label_values(&[name.as_str()]);
        tracing::info!(pool = %name, "pool deleted");
        Ok(())
    }

    fn forget_cached_pool(&self, id: u32) {
        self.inner.pools.write().expect("lock poisoned").remove(&id);
    }

    async fn pool_view(&self, row: &PoolRow) -> Result<PoolView> {
        let policy = policy_of(row);
        let mut counts = NumberCounts {
            total: 0,
            active: 0,
            draining: 0,
        };
        let mut open = 0;
        for s in 0..row.shards {
            let c = self
                .inner
                .store
                .shard_counts(&self.shard(row.id, s))
                .await?;
            counts.total += c.total;
            counts.draining += c.draining;
            open += c.open;
        }
        counts.active = counts.total - counts.draining;
        Ok(PoolView {
            name: row.name.clone(),
            default_ttl_secs: policy.default_ttl_secs,
            cooloff_secs: policy.cooloff_secs,
            geo_match: policy.geo_match,
            out_of_session_message: policy.out_of_session_message,
            callback_url: policy.callback_url,
            callback_include_numbers: policy.callback_include_numbers,
            intercept_url: policy.intercept_url,
            intercept_timeout_ms: policy.intercept_timeout_ms,
            intercept_fallback: policy.intercept_fallback,
            low_threshold_pct: policy.low_threshold_pct,
            numbers: counts,
            open_sessions: open,
        })
    }

    pub async fn get_pool(&self, name: &PoolName) -> Result<PoolView> {
        let row = self.pool_row(name).await?;
        self.pool_view(&row).await
    }

    /// Every pool `within` a key's pools, by name.
    pub async fn list_pools(&self, within: &PoolLimit) -> Result<Vec<PoolView>> {
        let mut out = Vec::new();
        for row in self.pool_rows(None, within).await? {
            out.push(self.pool_view(&row).await?);
        }
        Ok(out)
    }

    /// Refreshes the per-pool gauges and the event queue's; called when metrics are scraped.
    pub async fn refresh_pool_gauges(&self) -> Result<()> {
        // Queued events looked at per shard for the oldest one's age: bounded work per scrape.
        const PENDING_LOOK_AT: usize = 1000;
        let (mut pending, mut oldest) = (0i64, None::<Millis>);
        for row in self.inner.store.pool_list().await? {
            for s in 0..row.shards {
                let (n, o) = self
                    .inner
                    .store
                    .events_pending(&self.shard(row.id, s), PENDING_LOOK_AT)
                    .await?;
                pending += n;
                oldest = match (oldest, o) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let view = self.pool_view(&row).await?;
            let mut busy = 0i64;
            for s in 0..row.shards {
                busy += self
                    .inner
                    .store
                    .numbers(&self.shard(row.id, s))
                    .await?
                    .iter()
                    .filter(|n| n.state == "active" && n.open > 0)
                    .count() as i64;
            }
            let m = &*METRICS;
            m.pool_numbers
                .with_label_values(&[&view.name, "active"])
                .set(view.numbers.active);
            m.pool_numbers
                .with_label_values(&[&view.name, "draining"])
                .set(view.numbers.draining);
            m.pool_open_sessions
                .with_label_values(&[&view.name])
                .set(view.open_sessions);
            let util = if view.numbers.active > 0 {
                busy as f64 / view.numbers.active as f64
            } else {
                0.0
            };
            m.pool_utilisation
                .with_label_values(&[&view.name])
                .set(util);
        }
        METRICS.events_pending.set(pending);
        METRICS
            .event_oldest_pending_seconds
            .set(oldest.map_or(0.0, |c| (self.now() - c).max(0) as f64 / 1000.0));
        Ok(())
    }

    // ---- numbers

    /// Adds numbers in bulk; each one is added, or skipped with a reason.
    pub async fn add_numbers(
        &self,
        pool: &PoolName,
        numbers: &[(String, Option<Vec<String>>)],
    ) -> Result<AddReport> {
        let row = self.pool_row(pool).await?;
        let mut report = AddReport::default();
        let mut seen = HashSet::new();
        for (raw, caps) in numbers {
            let skip = |code| Skipped {
                number: raw.clone(),
                code,
            };
            let Ok(number) = E164::parse(raw) else {
                report.skipped.push(skip("invalid_number"));
                continue;
            };
            let caps = match caps {
                None => Capabilities::ALL,
                Some(list) => match Capabilities::parse_list(list.iter().map(String::as_str)) {
                    Some(c) => c,
                    None => {
                        report.skipped.push(skip("invalid_capabilities"));
                        continue;
                    }
                },
            };
            if !seen.insert(number.reveal().to_string()) {
                report.skipped.push(skip("duplicate"));
                continue;
            }
            let shard = self.shard(row.id, shard_of(number.reveal(), row.shards));
            let owner = self
                .inner
                .store
                .number_claim(number.reveal(), &shard)
                .await?;
            if owner != (shard.pool_id, shard.shard) {
                report.skipped.push(skip("in_another_pool"));
                continue;
            }
            let geo = number.geo();
            let mut geos = vec![geo.country_tag()];
            geos.extend(geo.area_tag());
            let Some(added) = self
                .inner
                .store
                .number_add(&shard, number.reveal(), caps.code(), &geos.join(","))
                .await?
            else {
                // The pool was deleted while these numbers were added.
                self.inner.store.number_disown(number.reveal()).await?;
                return Err(BrokerError::PoolNotFound(pool.to_string()));
            };
            if added {
                report.added.push(number.reveal().to_string());
            } else {
                report.skipped.push(skip("duplicate"));
            }
        }
        Ok(report)
    }

    pub async fn list_numbers(&self, pool: &PoolName) -> Result<Vec<NumberView>> {
        let row = self.pool_row(pool).await?;
        let mut out = Vec::new();
        for s in 0..row.shards {
            for n in self.inner.store.numbers(&self.shard(row.id, s)).await? {
                out.push(NumberView {
                    capabilities: Capabilities::from_code(&n.caps).names(),
                    state: NumberState::parse(&n.state).unwrap_or(NumberState::Active),
                    open_sessions: n.open.max(0),
                    number: n.number,
                });
            }
        }
        out.sort_by(|a, b| a.number.cmp(&b.number));
        Ok(out)
    }

    async fn number_shard(&self, pool: &PoolName, number: &E164) -> Result<(PoolRow, ShardKeys)> {
        let row = self.pool_row(pool).await?;
        let shard = self.shard(row.id, shard_of(number.reveal(), row.shards));
        Ok((row, shard))
    }

    pub async fn set_number_state(
        &self,
        pool: &PoolName,
        number: &E164,
        state: NumberState,
    ) -> Result<NumberView> {
        let (_, shard) = self.number_shard(pool, number).await?;
        if !self
            .inner
            .store
            .number_set_state(&shard, number.reveal(), state.as_str())
            .await?
        {
            return Err(BrokerError::NumberNotFound(format!(
                "number {} is not in pool `{pool}`",
                number.reveal()
            )));
        }
        self.list_numbers(pool)
            .await?
            .into_iter()
            .find(|n| n.number == number.reveal())
            .ok_or_else(|| {
                BrokerError::NumberNotFound(format!("number {} vanished", number.reveal()))
            })
    }

    pub async fn remove_number(&self, pool: &PoolName, number: &E164) -> Result<()> {
        let (_, shard) = self.number_shard(pool, number).await?;
        // Sessions whose cool-off has ended no longer hold the number, even if no reaper
        // has visited them yet.
        self.reap_shard(&shard, self.now(), 1000).await?;
        match self
            .inner
            .store
            .number_remove(&shard, number.reveal())
            .await?
        {
            Some(true) => {
                self.inner
                    .owners
                    .write()
                    .expect("lock poisoned")
                    .remove(number.reveal());
                Ok(())
            }
            Some(false) => Err(BrokerError::NumberInUse(number.reveal().to_string())),
            None => Err(BrokerError::NumberNotFound(format!(
                "number {} is not in pool `{pool}`",
                number.reveal()
            ))),
        }
    }

    // ---- sessions

    pub async fn create_session(&self, req: NewSession) -> Result<SessionView> {
        match self.create_in(req, None).await? {
            Once::Created(view) | Once::Found(view) => Ok(view),
        }
    }

    /// Creates the session of the idempotent request `ticket` holds, unless an earlier
    /// attempt with the same key made it already; then that one is answered.
    pub async fn create_session_once(&self, req: NewSession, ticket: &IdemTicket) -> Result<Once> {
        self.create_in(req, Some(ticket)).await
    }

    /// The session an earlier attempt of `ticket`'s request made in `shard`.
    async fn made_before(
        &self,
        shard: &ShardKeys,
        session_key: &str,
        fingerprint: &str,
        ticket: &IdemTicket,
    ) -> Result<Once> {
        if fingerprint != ticket.fingerprint {
            return Err(BrokerError::IdempotencyConflict);
        }
        let id = SessionId::from_key(shard.pool_id, shard.shard, session_key)
            .ok_or(StoreError::Corrupt("idempotency marker"))?;
        // Read as it is now, ended or not: a retry must not make a second session because
        // the first one has since been closed.
        let rec = self.inner.store.session(shard, session_key).await?;
        if rec.is_empty() {
            return Err(BrokerError::SessionNotFound);
        }
        tracing::info!(session = %id, "idempotent create found the session an earlier attempt made");
        Ok(Once::Found(self.view(&id, &rec, None).await?))
    }

    async fn create_in(&self, req: NewSession, idem: Option<&IdemTicket>) -> Result<Once> {
        let [a, b] = &req.participants;
        if a.number == b.number {
            return Err(BrokerError::Validation(
                "the two participants must have different numbers".into(),
            ));
        }
        let row = self.pool_row(&req.pool).await?;
        let policy = policy_of(&row);
        let ttl = req.ttl_secs.unwrap_or(policy.default_ttl_secs);
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return Err(BrokerError::Validation(format!(
                "ttl_secs must be between 1 and {MAX_TTL_SECS}"
            )));
        }
        let now = self.now();
        let expires = now + ttl as i64 * 1000;
        let (idx_a, idx_b) = (self.idx(&a.number), self.idx(&b.number));
        let crypto = &self.inner.crypto;
        let sealed_a = crypto.seal_number(&a.number);
        let sealed_b = crypto.seal_number(&b.number);
        let blob = Blob {
            p: [
                BlobParticipant {
                    n: Some(a.number.reveal().into()),
                    l: a.label.clone(),
                },
                BlobParticipant {
                    n: Some(b.number.reveal().into()),
                    l: b.label.clone(),
                },
            ],
            m: req.metadata.clone(),
        };
        let sealed_blob = crypto.seal(
            "session",
            &serde_json::to_vec(&blob).expect("blob serialises"),
        );
        let geo = a.number.geo();
        let area_tag = geo.area_tag().unwrap_or_default();
        let country_tag = geo.country_tag();
        let mut levels = Vec::new();
        if policy.geo_match == GeoMatch::AreaCode && !area_tag.is_empty() {
            levels.push(area_tag.clone());
        }
        if policy.geo_match != GeoMatch::Any {
            levels.push(country_tag.clone());
        }
        levels.push("*".to_string());
        let levels = levels.join(",");

        // A request taken over may have made its session in any shard; each shard's script
        // only sees its own marker, so look in all of them before making one.
        if let Some(ticket) = idem.filter(|t| t.takeover && row.shards > 1) {
            let shards: Vec<ShardKeys> = (0..row.shards).map(|s| self.shard(row.id, s)).collect();
            let markers = self
                .inner
                .store
                .idem_markers(&shards, &ticket.digest)
                .await?;
            for (shard, marker) in shards.iter().zip(markers) {
                if let Some((key, fp)) = marker {
                    return self.made_before(shard, &key, &fp, ticket).await;
                }
            }
        }

        // A pair of participants tries shards in an order of its own, so sticky memory
        // (kept per shard) is found again.
        let mut pair = [idx_a.as_str(), idx_b.as_str()];
        pair.sort();
        let start = shard_of(&pair.concat(), row.shards);
        for i in 0..row.shards {
            let shard = self.shard(row.id, (start + i) % row.shards);
            let id = SessionId::new(row.id, shard.shard);
            let key = id.key();
            let event = policy.callback_url.is_some().then(|| {
                self.draft(
                    "session.created",
                    serde_json::json!({
                        "session_id": id.to_string(),
                        "pool": row.name,
                        "proxy_number": "__PROXY__",
                        "mode": req.mode.as_str(),
                        "participants": [{ "label": a.label }, { "label": b.label }],
                        "expires_at": rfc3339(expires),
                        "metadata": req.metadata,
                    }),
                    policy.callback_include_numbers.then(|| {
                        [
                            Some(a.number.reveal().to_string()),
                            Some(b.number.reveal().to_string()),
                        ]
                    }),
                )
            });
            let low = policy.callback_url.is_some().then(|| {
                self.draft(
                    "pool.low",
                    serde_json::json!({
                        "pool": row.name,
                        "busy_numbers": "__BUSY__",
                        "total_numbers": "__TOTAL__",
                        "threshold_pct": policy.low_threshold_pct,
                    }),
                    None,
                )
            });
            let outcome = self
                .inner
                .store
                .session_create(&CreateArgs {
                    shard: &shard,
                    session_key: &key,
                    now,
                    expires,
                    cooloff_ms: policy.cooloff_secs as i64 * 1000,
                    class: req.mode.code(),
                    idx_a: &idx_a,
                    idx_b: &idx_b,
                    levels: &levels,
                    sealed_a: &sealed_a,
                    sealed_b: &sealed_b,
                    blob: &sealed_blob,
                    sticky_window_ms: STICKY_WINDOW_MS,
                    area_tag: &area_tag,
                    country_tag: &country_tag,
                    event: event.as_ref(),
                    low: low.as_ref().map(|e| (e, policy.low_threshold_pct)),
                    idempotency: idem.map(|t| IdemMark {
                        digest: &t.digest,
                        fingerprint: &t.fingerprint,
                        ttl_ms: IDEMPOTENCY_TTL_MS,
                    }),
                })
                .await?;
            let due = match &outcome {
                Created::Ok { reap_due, .. }
                | Created::Exhausted { reap_due }
                | Created::Existing { reap_due, .. } => *reap_due,
            };
            if due {
                let broker = self.clone();
                let shard = shard.clone();
                tokio::spawn(async move {
                    if let Err(e) = broker.reap_shard(&shard, broker.now(), 100).await {
                        tracing::warn!(error = %e, "lazy reap failed");
                    }
                });
            }
            if let (
                Created::Existing {
                    session_key,
                    fingerprint,
                    ..
                },
                Some(ticket),
            ) = (&outcome, idem)
            {
                return self
                    .made_before(&shard, session_key, fingerprint, ticket)
                    .await;
            }
            if let Created::Ok { number, level, .. } = outcome {
                METRICS
                    .allocations
                    .with_label_values(&[row.name.as_str(), "ok"])
                    .inc();
                METRICS
                    .sessions_created
                    .with_label_values(&[row.name.as_str()])
                    .inc();
                tracing::info!(session = %id, pool = %row.name, proxy = %number, geo = %level, "session created");
                return Ok(Once::Created(SessionView {
                    id: id.to_string(),
                    pool: row.name.clone(),
                    status: "open".into(),
                    mode: req.mode.as_str().into(),
                    proxy_number: number,
                    geo_match: level,
                    participants: blob
                        .p
                        .into_iter()
                        .map(|p| ParticipantView {
                            number: p.n,
                            label: p.l,
                        })
                        .collect(),
                    created_at: rfc3339(now),
                    expires_at: rfc3339(expires),
                    closed_at: None,
                    close_reason: None,
                    metadata: req.metadata,
                }));
            }
        }
        METRICS
            .allocations
            .with_label_values(&[row.name.as_str(), "exhausted"])
            .inc();
        tracing::warn!(pool = %row.name, "pool exhausted");
        if policy.callback_url.is_some() {
            let event = self.draft(
                "pool.exhausted",
                serde_json::json!({ "pool": row.name, "mode": req.mode.as_str() }),
                None,
            );
            self.inner
                .store
                .event_put(&self.shard(row.id, start), "pool.exhausted", &event, now)
                .await?;
        }
        Err(BrokerError::PoolExhausted(row.name))
    }

    /// The raw record of a live (readable) session, with its shard.
    async fn record(&self, id: &SessionId) -> Result<(ShardKeys, HashMap<String, String>)> {
        let shard = self.shard(id.pool_id, id.shard);
        let rec = self.inner.store.session(&shard, &id.key()).await?;
        let held: Millis = rec.get("h").and_then(|v| v.parse().ok()).unwrap_or(0);
        if rec.is_empty() || held <= self.now() {
            return Err(BrokerError::SessionNotFound);
        }
        Ok((shard, rec))
    }

    async fn view(
        &self,
        id: &SessionId,
        rec: &HashMap<String, String>,
        closing: Option<(Millis, CloseReason)>,
    ) -> Result<SessionView> {
        let get = |k: &str| rec.get(k).map(String::as_str).unwrap_or("");
        let num = |k: &str| get(k).parse::<Millis>().unwrap_or(0);
        let now = self.now();
        let blob: Blob =
            serde_json::from_slice(&self.inner.crypto.open("session", &blob_text(rec))?)
                .map_err(|_| BrokerError::Crypto(CryptoError::Corrupt))?;
        let expires = num("e");
        let open = get("t") == "o" && expires > now && closing.is_none();
        let (closed_at, reason) = if open {
            (None, None)
        } else if let Some((at, reason)) = closing {
            (Some(at), Some(reason))
        } else if get("t") == "o" {
            (Some(expires), Some(CloseReason::Expired))
        } else {
            let at = rec.get("x").and_then(|v| v.parse().ok()).unwrap_or(expires);
            (
                Some(at),
                Some(CloseReason::parse(get("r")).unwrap_or(CloseReason::Closed)),
            )
        };
        Ok(SessionView {
            id: id.to_string(),
            pool: self.pool_name(id.pool_id).await?,
            status: if open { "open" } else { "closed" }.into(),
            mode: Mode::from_code(get("m"))
                .unwrap_or(Mode::VoiceSms)
                .as_str()
                .into(),
            proxy_number: get("n").into(),
            geo_match: get("g").into(),
            participants: blob
                .p
                .into_iter()
                .map(|p| ParticipantView {
                    number: p.n,
                    label: p.l,
                })
                .collect(),
            created_at: rfc3339(num("c")),
            expires_at: rfc3339(if open {
                expires
            } else {
                expires.min(closed_at.unwrap_or(expires))
            }),
            closed_at: closed_at.map(rfc3339),
            close_reason: reason.map(|r| r.as_str().to_string()),
            metadata: blob.m,
        })
    }

    pub async fn get_session(&self, id: &SessionId) -> Result<SessionView> {
        let (_, rec) = self.record(id).await?;
        self.view(id, &rec, None).await
    }

    pub async fn extend_session(&self, id: &SessionId, ttl_secs: u32) -> Result<SessionView> {
        if !(1..=MAX_TTL_SECS).contains(&ttl_secs) {
            return Err(BrokerError::Validation(format!(
                "ttl_secs must be between 1 and {MAX_TTL_SECS}"
            )));
        }
        let (shard, rec) = self.record(id).await?;
        let now = self.now();
        let g = |k: &str| rec.get(k).map(String::as_str).unwrap_or("");
        match self
            .inner
            .store
            .session_end(
                &shard,
                &id.key(),
                g("a"),
                g("b"),
                now,
                EndOp::Extend {
                    expires: now + ttl_secs as i64 * 1000,
                },
                &EndEvents::default(),
            )
            .await?
        {
            Ended::Ok => self.get_session(id).await,
            Ended::Missing => Err(BrokerError::SessionNotFound),
            _ => Err(BrokerError::SessionClosed),
        }
    }

    /// Closes a session; closing a closed session returns it unchanged.
    pub async fn close_session(&self, id: &SessionId) -> Result<SessionView> {
        let (shard, rec) = self.record(id).await?;
        let now = self.now();
        let g = |k: &str| rec.get(k).map(String::as_str).unwrap_or("");
        let events = self.end_events(id, &rec, Some(CloseReason::Closed)).await?;
        let ended = self
            .inner
            .store
            .session_end(
                &shard,
                &id.key(),
                g("a"),
                g("b"),
                now,
                EndOp::Close,
                &events,
            )
            .await?;
        match ended {
            Ended::Ok => {
                let pool = self.pool_name(id.pool_id).await?;
                METRICS
                    .sessions_closed
                    .with_label_values(&[pool.as_str(), "closed"])
                    .inc();
                tracing::info!(session = %id, "session closed");
                // With no cool-off the record is gone already; show what was closed.
                let fresh = self.inner.store.session(&shard, &id.key()).await?;
                if fresh.is_empty() {
                    self.view(id, &rec, Some((now, CloseReason::Closed))).await
                } else {
                    self.view(id, &fresh, None).await
                }
            }
            Ended::Missing => Err(BrokerError::SessionNotFound),
            _ => self.get_session(id).await,
        }
    }

    /// Open sessions of a participant, in one pool or all `within` a key's pools.
    pub async fn sessions_of(
        &self,
        participant: &E164,
        pool: Option<&PoolName>,
        within: &PoolLimit,
    ) -> Result<Vec<SessionView>> {
        let rows = self.pool_rows(pool, within).await?;
        let idx = self.idx(participant);
        let now = self.now();
        let mut out = Vec::new();
        for row in rows {
            for s in 0..row.shards {
                let shard = self.shard(row.id, s);
                for rec in self.inner.store.routes_of(&shard, &idx).await?.values() {
                    let Some(r) = RouteRow::parse(rec) else {
                        continue;
                    };
                    if r.open_until <= now {
                        continue;
                    }
                    let Some(id) = SessionId::from_key(row.id, s, &r.session_key) else {
                        continue;
                    };
                    match self.get_session(&id).await {
                        Ok(v) if v.status == "open" => out.push(v),
                        Ok(_) | Err(BrokerError::SessionNotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    // ---- routing

    async fn owner(&self, number: &E164, fresh: bool) -> Result<Option<(u32, u16)>> {
        if !fresh
            && let Some(o) = self
                .inner
                .owners
                .read()
                .expect("lock poisoned")
                .get(number.reveal())
        {
            return Ok(Some(*o));
        }
        let o = self.inner.store.number_owner(number.reveal()).await?;
        let mut cache = self.inner.owners.write().expect("lock poisoned");
        match o {
            Some(o) => {
                if cache.len() > 1_000_000 {
                    cache.clear();
                }
                cache.insert(number.reveal().to_string(), o);
            }
            None => {
                cache.remove(number.reveal());
            }
        }
        Ok(o)
    }

    /// Whether `number` belongs to a pool `within` a key's pools. A cached owner outside them
    /// is checked once more against Redis, so a number that moved into a visible pool is not
    /// refused.
    pub async fn number_visible(&self, within: &PoolLimit, number: &E164) -> Result<bool> {
        if *within == PoolLimit::All {
            return Ok(true);
        }
        for fresh in [false, true] {
            if let Some((pool_id, _)) = self.owner(number, fresh).await?
                && self.sees_pool_id(within, pool_id).await?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The answer to a caller who holds an open route: the other party, behind the proxy.
    fn decide(
        &self,
        pool_id: u32,
        shard: u16,
        r: &RouteRow,
        proxy: &E164,
        kind: Kind,
    ) -> Result<Decision> {
        let other = self.inner.crypto.open_number(&r.sealed_other)?;
        let session_id = SessionId::from_key(pool_id, shard, &r.session_key)
            .map(|s| s.to_string())
            .ok_or(StoreError::Corrupt("session key in route record"))?;
        let (action, decision) = match kind {
            Kind::Voice => (
                "connect",
                Decision::Connect {
                    session_id,
                    caller_id: proxy.clone(),
                    to: other,
                },
            ),
            Kind::Sms => (
                "relay",
                Decision::Relay {
                    session_id,
                    from: proxy.clone(),
                    to: other,
                },
            ),
        };
        METRICS.routes.with_label_values(&[action]).inc();
        Ok(decision)
    }

    /// The answer to anyone else: the pool's out-of-session message.
    async fn announce(&self, pool_id: u32) -> Result<Decision> {
        let message = match self.inner.store.pool_by_id(pool_id).await? {
            Some(row) => policy_of(&row).out_of_session_message,
            None => PoolPolicy::DEFAULT_MESSAGE.to_string(),
        };
        METRICS.routes.with_label_values(&["announce"]).inc();
        Ok(Decision::Announce { message })
    }

    // ---- relay

    /// Answers an inbound call or text and records it as an interaction of its session,
    /// once per provider reference. `from` is `None` for a withheld caller ID. One Redis
    /// round trip when the number's owner is cached.
    pub async fn relay(
        &self,
        provider: &str,
        provider_ref: &str,
        from: Option<&E164>,
        to: &E164,
        kind: Kind,
    ) -> Result<RelayOutcome> {
        self.relay_remembered(provider, provider_ref, PROVIDER_REF_TTL_MS, from, to, kind)
            .await
    }

    /// [`Broker::relay`], remembering the answer for `ref_ttl_ms`.
    pub async fn relay_remembered(
        &self,
        provider: &str,
        provider_ref: &str,
        ref_ttl_ms: i64,
        from: Option<&E164>,
        to: &E164,
        kind: Kind,
    ) -> Result<RelayOutcome> {
        if provider_ref.is_empty()
            || provider_ref.len() > 128
            || !provider_ref
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(BrokerError::Validation(
                "the provider's call or message id is missing or malformed".into(),
            ));
        }
        let idx = from.map(|f| self.idx(f));
        let mut fresh = false;
        loop {
            let Some((pool_id, shard)) = self.owner(to, fresh).await? else {
                return Err(BrokerError::NumberNotFound(format!(
                    "{to} is not a number of any pool"
                )));
            };
            let keys = self.shard(pool_id, shard);
            let interaction = format!("int_{}", SessionId::new(0, 0).key());
            let intercept = self
                .pool_cached(pool_id)
                .await?
                .is_some_and(|row| policy_of(&row).intercept_url.is_some());
            let event = self.events_policy(pool_id).await?.map(|(pool, _)| {
                self.draft(
                "interaction.started",
                serde_json::json!({
                    "session_id": format!("{}__SKEY__", SessionId::shard_prefix(pool_id, shard)),
                    "interaction_id": interaction,
                    "kind": kind_name(kind),
                    "from_participant": "__SIDE__",
                    "pool": pool,
                    "proxy_number": to.reveal(),
                    "provider": provider,
                }),
                None,
            )
            });
            let claimed = self
                .inner
                .store
                .relay_claim(
                    &keys,
                    idx.as_deref(),
                    to.reveal(),
                    self.now(),
                    match kind {
                        Kind::Voice => "v",
                        Kind::Sms => "s",
                    },
                    provider,
                    provider_ref,
                    &interaction,
                    ref_ttl_ms,
                    event.as_ref(),
                    intercept,
                )
                .await?;
            return match claimed {
                crate::store::Claimed::Connect {
                    record,
                    interaction,
                    replay,
                    pending,
                } => {
                    let r = RouteRow::parse(&record).ok_or(StoreError::Corrupt("route record"))?;
                    Ok(RelayOutcome {
                        decision: self.decide(pool_id, shard, &r, to, kind)?,
                        interaction: Some(interaction),
                        replay,
                        pending,
                    })
                }
                crate::store::Claimed::Block {
                    sealed_message,
                    interaction,
                } => {
                    let decision = if sealed_message.is_empty() {
                        self.announce(pool_id).await?
                    } else {
                        let message = self.inner.crypto.open("block", &sealed_message)?;
                        METRICS.routes.with_label_values(&["announce"]).inc();
                        Decision::Announce {
                            message: String::from_utf8(message)
                                .map_err(|_| BrokerError::Crypto(CryptoError::Corrupt))?,
                        }
                    };
                    Ok(RelayOutcome {
                        decision,
                        interaction: Some(interaction),
                        replay: true,
                        pending: false,
                    })
                }
                crate::store::Claimed::Announce => {
                    // The number may have moved since its owner was cached: then the call is
                    // for its shard now, asked once.
                    if !fresh {
                        fresh = true;
                        if self.owner(to, true).await? != Some((pool_id, shard)) {
                            continue;
                        }
                    }
                    Ok(RelayOutcome {
                        decision: self.announce(pool_id).await?,
                        interaction: None,
                        replay: false,
                        pending: false,
                    })
                }
            };
        }
    }

    /// Accepts a provider's single-use webhook token (`token_id`, its JWT `jti`) for one
    /// request (`request`, the bytes that identify it) and that same request again, for
    /// `ttl_ms`. False when the token already came with another request. Both are kept only
    /// as keyed digests.
    pub async fn token_once(
        &self,
        provider: &str,
        token_id: &str,
        request: &[u8],
        ttl_ms: i64,
    ) -> Result<bool> {
        let crypto = &self.inner.crypto;
        let key = self
            .inner
            .store
            .keys()
            .token(provider, &crypto.digest("token", token_id.as_bytes()));
        Ok(self
            .inner
            .store
            .token_once(&key, &crypto.digest("request", request), ttl_ms)
            .await?)
    }

    /// Applies a provider's status callback to the interaction it reported on. `proxy` is
    /// the proxy number the call or message went through (it names the shard).
    pub async fn interaction_status(
        &self,
        provider: &str,
        provider_ref: &str,
        proxy: &E164,
        status: &str,
        duration_secs: Option<u32>,
        last: bool,
    ) -> Result<bool> {
        self.update_interaction(
            provider,
            provider_ref,
            proxy,
            status,
            duration_secs,
            last,
            None,
        )
        .await
    }

    /// Records the intercept's verdict on an interaction: its status (`allowed`, or
    /// `blocked`, which is final), and the answer every retry of the request gets from now
    /// on. Only the first verdict is kept.
    pub async fn intercept_verdict(
        &self,
        provider: &str,
        provider_ref: &str,
        proxy: &E164,
        verdict: &InterceptVerdict,
    ) -> Result<bool> {
        let (status, last, code, sealed) = match verdict {
            InterceptVerdict::Allowed => ("allowed", false, "c", String::new()),
            InterceptVerdict::Blocked(message) => (
                "blocked",
                true,
                "b",
                message
                    .as_deref()
                    .map(|m| self.inner.crypto.seal("block", m.as_bytes()))
                    .unwrap_or_default(),
            ),
        };
        self.update_interaction(
            provider,
            provider_ref,
            proxy,
            status,
            None,
            last,
            Some((code, &sealed)),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn update_interaction(
        &self,
        provider: &str,
        provider_ref: &str,
        proxy: &E164,
        status: &str,
        duration_secs: Option<u32>,
        last: bool,
        verdict: Option<(&str, &str)>,
    ) -> Result<bool> {
        // The status is stored in a `|`-separated record: only a plain word may go in.
        if status.is_empty()
            || status.len() > 32
            || !status
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-' || b == b'_')
        {
            return Err(BrokerError::Validation(
                "a status is 1 to 32 lower-case letters, `-` or `_`".into(),
            ));
        }
        let Some((pool_id, shard)) = self.owner(proxy, false).await? else {
            return Ok(false);
        };
        let event = match self.events_policy(pool_id).await? {
            Some((pool, _)) if last => Some(self.draft(
                "interaction.completed",
                serde_json::json!({
                    "session_id": format!("{}__SKEY__", SessionId::shard_prefix(pool_id, shard)),
                    "interaction_id": "__IID__",
                    "kind": "__KIND__",
                    "from_participant": "__SIDE__",
                    "status": status,
                    "duration_secs": "__DURATION__",
                    "pool": pool,
                    "proxy_number": proxy.reveal(),
                    "provider": provider,
                }),
                None,
            )),
            _ => None,
        };
        Ok(self
            .inner
            .store
            .interaction_update(
                &self.shard(pool_id, shard),
                provider,
                provider_ref,
                status,
                self.now(),
                duration_secs,
                last,
                event.as_ref(),
                verdict,
            )
            .await?)
    }

    /// What to ask the app before an interaction connects, when its pool has an intercept.
    pub async fn intercept_plan(
        &self,
        session_id: &str,
        interaction: &str,
    ) -> Result<Option<InterceptPlan>> {
        let id = SessionId::parse(session_id).ok_or(BrokerError::SessionNotFound)?;
        let Some(row) = self.pool_cached(id.pool_id).await? else {
            return Ok(None);
        };
        let policy = policy_of(&row);
        let Some(url) = policy.intercept_url.clone() else {
            return Ok(None);
        };
        let (_, rec) = self.record(&id).await?;
        let blob: Blob =
            serde_json::from_slice(&self.inner.crypto.open("session", &blob_text(&rec))?)
                .map_err(|_| BrokerError::Crypto(CryptoError::Corrupt))?;
        let found = self
            .interactions(&id)
            .await?
            .into_iter()
            .find(|i| i.id == interaction);
        let draft = self.draft(
            "interaction.pending",
            serde_json::json!({
                "session_id": session_id,
                "interaction_id": interaction,
                "kind": found.as_ref().map(|i| i.kind),
                "from_participant": found.as_ref().map(|i| i.from_participant),
                "participants": [{ "label": blob.p[0].l }, { "label": blob.p[1].l }],
                "pool": row.name,
                "proxy_number": rec.get("n"),
            }),
            None,
        );
        Ok(Some(InterceptPlan {
            url,
            timeout_ms: policy.intercept_timeout_ms,
            fallback: policy.intercept_fallback,
            secrets: self.signing_secrets(&row)?,
            id: EventId {
                pool_id: id.pool_id,
                shard: id.shard,
                key: draft.id,
            }
            .to_string(),
            body: draft.body,
            message: policy.out_of_session_message,
        }))
    }

    /// The current status of one interaction.
    pub async fn interaction_status_of(
        &self,
        session_id: &str,
        interaction: &str,
    ) -> Result<Option<String>> {
        let id = SessionId::parse(session_id).ok_or(BrokerError::SessionNotFound)?;
        Ok(self
            .interactions(&id)
            .await?
            .into_iter()
            .find(|i| i.id == interaction)
            .map(|i| i.status))
    }

    /// The interactions of a readable session, oldest first.
    pub async fn interactions(&self, id: &SessionId) -> Result<Vec<InteractionView>> {
        let (shard, _) = self.record(id).await?;
        let mut out = Vec::new();
        for (iid, rec) in self.inner.store.interactions(&shard, &id.key()).await? {
            let f: Vec<&str> = rec.splitn(8, '|').collect();
            if f.len() != 8 {
                continue;
            }
            let ms = |s: &str| s.parse::<Millis>().ok();
            out.push(InteractionView {
                id: iid,
                kind: if f[0] == "v" { "voice" } else { "sms" },
                from_participant: if f[1] == "0" { 0 } else { 1 },
                status: f[2].to_string(),
                started_at: rfc3339(ms(f[3]).unwrap_or(0)),
                ended_at: ms(f[4]).map(rfc3339),
                duration_secs: f[5].parse().ok(),
                provider: f[6].to_string(),
                provider_ref: f[7].to_string(),
            });
        }
        out.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    // ---- erasure

    /// Closes every session of a number in every pool `within` a key's pools, releases its
    /// routes there without cool-off and removes what hush holds about it there. Returns how
    /// many open sessions it closed. Stored replays of idempotent requests that hold the
    /// number go whichever key made them: they are copies of the number, not sessions.
    pub async fn erase_participant(&self, number: &E164, within: &PoolLimit) -> Result<usize> {
        let idx = self.idx(number);
        let now = self.now();
        let mut closed = 0;
        for row in self.pool_rows(None, within).await? {
            for s in 0..row.shards {
                let shard = self.shard(row.id, s);
                let keys: HashSet<String> = self
                    .inner
                    .store
                    .routes_of(&shard, &idx)
                    .await?
                    .values()
                    .filter_map(|r| RouteRow::parse(r).map(|r| r.session_key))
                    .collect();
                for key in keys {
                    let Some(id) = SessionId::from_key(row.id, s, &key) else {
                        continue;
                    };
                    if self.erase_from(&shard, &id, &idx).await? {
                        closed += 1;
                        METRICS
                            .sessions_closed
                            .with_label_values(&[row.name.as_str(), "erased"])
                            .inc();
                        tracing::info!(session = %id, "session erased");
                    }
                }
                self.inner
                    .store
                    .forget_participant(&shard, &idx, now)
                    .await?;
            }
        }
        self.inner.store.idem_forget(&idx).await?;
        Ok(closed)
    }

    /// Erases one side of one session; true when the session was open. Retried when the
    /// record changes under it (the other side being erased at the same moment).
    async fn erase_from(&self, shard: &ShardKeys, id: &SessionId, idx: &str) -> Result<bool> {
        let key = id.key();
        for _ in 0..5 {
            let rec = self.inner.store.session(shard, &key).await?;
            if rec.is_empty() {
                return Ok(false);
            }
            let g = |k: &str| rec.get(k).map(String::as_str).unwrap_or("");
            let side = if g("a") == idx {
                "a"
            } else if g("b") == idx {
                "b"
            } else {
                return Ok(false);
            };
            let mut blob: Blob =
                serde_json::from_slice(&self.inner.crypto.open("session", &blob_text(&rec))?)
                    .map_err(|_| BrokerError::Crypto(CryptoError::Corrupt))?;
            let erased = &mut blob.p[if side == "a" { 0 } else { 1 }];
            erased.n = None;
            erased.l = None;
            let sealed = self.inner.crypto.seal(
                "session",
                &serde_json::to_vec(&blob).expect("blob serialises"),
            );
            let now = self.now();
            let was_open = g("t") == "o" && g("e").parse::<Millis>().unwrap_or(0) > now;
            // The events describe the scrubbed session: no trace of the erased side.
            let mut scrubbed = rec.clone();
            scrubbed.insert("z".into(), sealed.clone());
            let mut events = self
                .end_events(id, &scrubbed, Some(CloseReason::Erased))
                .await?;
            if let Some(e) = events.expired.as_mut() {
                e.numbers.clear();
            }
            let read = format!("{}|{}", g("a"), g("b"));
            let ended = self
                .inner
                .store
                .session_end(
                    shard,
                    &key,
                    g("a"),
                    g("b"),
                    now,
                    EndOp::Erase {
                        side,
                        blob: &sealed,
                        read: &read,
                    },
                    &events,
                )
                .await?;
            if ended != Ended::Retry {
                return Ok(was_open);
            }
        }
        Err(BrokerError::Store(StoreError::Corrupt(
            "a session kept changing while it was erased",
        )))
    }

    // ---- reaping

    /// Advances due sessions of one shard: expiry, end of cool-off, end of readability.
    pub async fn reap_shard(&self, shard: &ShardKeys, now: Millis, limit: usize) -> Result<Reaped> {
        let mut done = Reaped::default();
        for key in self.inner.store.due(shard, now, limit).await? {
            let rec = self.inner.store.session(shard, &key).await?;
            let g = |k: &str| rec.get(k).map(String::as_str).unwrap_or("");
            let expiring = g("t") == "o";
            // A record whose events cannot be built (a blob sealed under a key no longer
            // configured) still expires and frees its number: one bad record must not stop
            // the reaper.
            let events = match SessionId::from_key(shard.pool_id, shard.shard, &key) {
                Some(id) if expiring && !rec.is_empty() => {
                    match self.end_events(&id, &rec, None).await {
                        Ok(events) => events,
                        Err(e) => {
                            tracing::warn!(session = %id, error = %e, "expiry event not built");
                            EndEvents::default()
                        }
                    }
                }
                _ => EndEvents::default(),
            };
            let ended = self
                .inner
                .store
                .session_end(shard, &key, g("a"), g("b"), now, EndOp::Reap, &events)
                .await?;
            if expiring && g("e").parse::<Millis>().unwrap_or(i64::MAX) <= now {
                done.expired += 1;
                let pool = self.pool_name(shard.pool_id).await.unwrap_or_default();
                METRICS
                    .sessions_closed
                    .with_label_values(&[pool.as_str(), "expired"])
                    .inc();
            }
            if ended == Ended::Ok {
                done.released += 1;
            }
        }
        Ok(done)
    }

    /// One reaper pass over every pool. Idempotent; any instance may run it at any time.
    pub async fn reap_once(&self, now: Millis) -> Result<Reaped> {
        let mut total = Reaped::default();
        for row in self.inner.store.pool_list().await? {
            for s in 0..row.shards {
                let shard = self.shard(row.id, s);
                loop {
                    let r = match self.reap_shard(&shard, now, 500).await {
                        Ok(r) => r,
                        // Other shards still get their pass.
                        Err(e) => {
                            tracing::warn!(pool = %row.name, error = %e, "reaping a shard failed");
                            break;
                        }
                    };
                    total.expired += r.expired;
                    total.released += r.released;
                    if r.expired + r.released < 500 {
                        break;
                    }
                }
            }
        }
        Ok(total)
    }

    // ---- idempotency

    /// Starts an idempotent request: either a stored response to replay, or a ticket that
    /// holds the key for this request (fresh, or taken over from one that stopped).
    pub async fn idem_begin(&self, principal: &str, key: &str, body: &[u8]) -> Result<IdemStart> {
        let crypto = &self.inner.crypto;
        let ticket = IdemTicket {
            digest: crypto.digest("idempotency", format!("{principal}\n{key}").as_bytes()),
            // Keyed, like every other digest hush stores: the body holds participants'
            // numbers, which a plain hash would let anyone holding the data guess.
            fingerprint: crypto.digest("idempotency-body", body),
            token: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(rand::random::<[u8; 12]>()),
            takeover: false,
        };
        let begun = self
            .inner
            .store
            .idem_begin(
                &ticket.digest,
                &ticket.fingerprint,
                &ticket.token,
                IDEMPOTENCY_LEASE_MS,
                IDEMPOTENCY_TTL_MS,
            )
            .await?;
        match begun {
            IdemBegin::Fresh => Ok(IdemStart::Run(ticket)),
            IdemBegin::Takeover => {
                tracing::info!("idempotent request taken over from one that stopped");
                Ok(IdemStart::Run(IdemTicket {
                    takeover: true,
                    ..ticket
                }))
            }
            IdemBegin::Running(_) => Err(BrokerError::IdempotencyRunning),
            IdemBegin::Conflict => Err(BrokerError::IdempotencyConflict),
            IdemBegin::Done(sealed) => {
                let plain = crypto.open("idempotency", &sealed)?;
                Ok(IdemStart::Replay(
                    String::from_utf8(plain).map_err(|_| CryptoError::Corrupt)?,
                ))
            }
        }
    }

    /// Stores the response of the request `ticket` holds, indexed under each participant it
    /// names so erasure finds it.
    pub async fn idem_finish(
        &self,
        ticket: &IdemTicket,
        response: &str,
        participants: &[&E164],
    ) -> Result<()> {
        let sealed = self.inner.crypto.seal("idempotency", response.as_bytes());
        let idxs: Vec<String> = participants.iter().map(|n| self.idx(n)).collect();
        Ok(self
            .inner
            .store
            .idem_finish(
                &ticket.digest,
                &ticket.fingerprint,
                &sealed,
                IDEMPOTENCY_TTL_MS,
                &idxs,
            )
            .await?)
    }

    /// Gives up the key after `failure`: freed when the failure created nothing, handed to
    /// the next retry at once when that cannot be known (Redis may have run the step and
    /// lost the answer), so the retry looks for what was made before making anything.
    pub async fn idem_release(&self, ticket: &IdemTicket, failure: &BrokerError) -> Result<()> {
        let lease = match failure {
            BrokerError::Store(_) => Lease::Lapse,
            _ => Lease::Drop,
        };
        self.inner
            .store
            .idem_lease(&ticket.digest, &ticket.token, lease)
            .await?;
        Ok(())
    }

    /// Runs `work` while keeping the lease of `ticket` alive, so a slow request is not taken
    /// over while a dead one frees its key within [`IDEMPOTENCY_LEASE_MS`].
    pub async fn idem_leased<T>(
        &self,
        ticket: &IdemTicket,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let every = std::time::Duration::from_millis(IDEMPOTENCY_LEASE_MS as u64 / 3);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tick.tick() => {
                    let renew = Lease::Renew(IDEMPOTENCY_LEASE_MS);
                    let renewed = self.inner.store.idem_lease(&ticket.digest, &ticket.token, renew);
                    if let Err(e) = renewed.await {
                        tracing::warn!(error = %e, "idempotency lease not renewed");
                    }
                }
            }
        }
    }

    /// Creates a session under an `Idempotency-Key`: at most one session per key and body,
    /// whatever fails where. A retry gets the stored response, or the session that a request
    /// which died before answering made, rebuilt from its record.
    pub async fn create_session_idempotent(
        &self,
        principal: &str,
        key: &str,
        body: &[u8],
        req: NewSession,
    ) -> Result<IdemAnswer> {
        let ticket = match self.idem_begin(principal, key, body).await? {
            IdemStart::Replay(body) => {
                return Ok(IdemAnswer {
                    body,
                    replayed: true,
                });
            }
            IdemStart::Run(ticket) => ticket,
        };
        let numbers = [
            req.participants[0].number.clone(),
            req.participants[1].number.clone(),
        ];
        let outcome = self
            .idem_leased(&ticket, self.create_session_once(req, &ticket))
            .await;
        match outcome {
            Ok(once) => {
                let (view, replayed) = match once {
                    Once::Created(v) => (v, false),
                    Once::Found(v) => (v, true),
                };
                let text = serde_json::to_string(&view).expect("session view serialises");
                self.idem_finish(&ticket, &text, &[&numbers[0], &numbers[1]])
                    .await?;
                Ok(IdemAnswer {
                    body: text,
                    replayed,
                })
            }
            Err(e) => {
                if let Err(release) = self.idem_release(&ticket, &e).await {
                    tracing::warn!(error = %release, "idempotency key not released");
                }
                Err(e)
            }
        }
    }
}

/// Runs [`Broker::reap_once`] every `interval` until `shutdown`, finishing the pass in hand.
pub async fn run_reaper(
    broker: Broker,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match broker.reap_once(broker.now()).await {
            Ok(r) if r.expired + r.released > 0 => {
                tracing::debug!(expired = r.expired, released = r.released, "reaped")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reaper pass failed; retrying next tick"),
        }
    }
}
