//! API keys: making, listing and revoking them, and turning a bearer key into the
//! [`Principal`] behind it, with its scopes and the pools it may see. Keys are stored only
//! as digests.

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::domain::{Millis, PoolName, rfc3339};

use super::{Broker, BrokerError, Result};

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

/// How long a looked-up API key is trusted before it is read again (revocation delay).
const PRINCIPAL_CACHE_MS: Millis = 5_000;

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
}
