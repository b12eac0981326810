//! The key scheme: one function per key. Every key starts with the configured prefix.
//! Keys of one pool shard share the hash tag `{p<pool id>.<shard>}`, so each Lua script
//! touches a single hash slot and runs unchanged on one Redis, Sentinel or Redis Cluster.
//! Participants appear only as blind indexes; proxy numbers are ours and appear in plain.

#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// HASH pool name → pool id.
    pub fn pools(&self) -> String {
        format!("{}:pools", self.prefix)
    }
    /// STRING the layout of the data under the prefix (see `Store::layout`).
    pub fn layout(&self) -> String {
        format!("{}:layout", self.prefix)
    }
    /// Counter handing out pool ids.
    pub fn pool_seq(&self) -> String {
        format!("{}:pool_seq", self.prefix)
    }
    /// HASH of one pool's policy.
    pub fn pool(&self, id: u32) -> String {
        format!("{}:pool:{id}", self.prefix)
    }
    /// STRING `<pool id>.<shard>`: the one place a proxy number belongs.
    pub fn owner(&self, number: &str) -> String {
        format!("{}:n:{number}", self.prefix)
    }
    /// HASH of one API key (by SHA-256 of the key).
    pub fn api_key(&self, digest: &str) -> String {
        format!("{}:key:{digest}", self.prefix)
    }
    /// HASH key name → SHA-256 of the key.
    pub fn api_keys(&self) -> String {
        format!("{}:keys", self.prefix)
    }
    /// STRING idempotency record.
    pub fn idempotency(&self, digest: &str) -> String {
        format!("{}:idem:{digest}", self.prefix)
    }
    /// SET of idempotency records whose stored response names this participant, so
    /// erasure can find them.
    pub fn idempotency_of(&self, idx: &str) -> String {
        format!("{}:ie:{idx}", self.prefix)
    }
    /// STRING digest of the request a provider's single-use webhook token came with, by
    /// keyed digest of the token's id. Not in a shard: a token may name any number, so its
    /// one use must be seen from every shard.
    pub fn token(&self, provider: &str, digest: &str) -> String {
        format!("{}:jti:{provider}:{digest}", self.prefix)
    }
    /// ZSET one UTC day of the audit log: entry (JSON, starting with its id) → when, in ms.
    /// Every audit key shares the tag `{audit}`, so a write and its index are one slot.
    pub fn audit_day(&self, day: i64) -> String {
        format!("{}:{{audit}}:d:{day}", self.prefix)
    }
    /// ZSET the days (since the epoch) that hold audit entries, scored by themselves.
    pub fn audit_days(&self) -> String {
        format!("{}:{{audit}}:days", self.prefix)
    }
    /// HASH one hour (since the epoch) of a pool's per-minute counts: `c<minute of the
    /// hour>` sessions created, `x<minute>` creates refused as exhausted. By pool id, so a
    /// pool deleted and made again starts afresh.
    pub fn pool_minutes(&self, pool_id: u32, hour: i64) -> String {
        format!("{}:{{ps{pool_id}}}:m:{hour}", self.prefix)
    }
    /// ZSET minute of the hour → the most numbers one create needed in that minute.
    pub fn pool_peaks(&self, pool_id: u32, hour: i64) -> String {
        format!("{}:{{ps{pool_id}}}:p:{hour}", self.prefix)
    }
    pub fn shard(&self, pool_id: u32, shard: u16) -> ShardKeys {
        ShardKeys {
            tag: format!("{}:{{p{pool_id}.{shard}}}:", self.prefix),
            pool_id,
            shard,
        }
    }
    /// The shard whose keys start with `key` (any of its keys or tags, such as a queue's
    /// tag a doorbell names), if it is one of this prefix's shards.
    pub fn shard_of(&self, key: &str) -> Option<ShardKeys> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(":{p")?;
        let (ids, _) = rest.split_once("}:")?;
        let (pool_id, shard) = ids.split_once('.')?;
        let keys = self.shard(pool_id.parse().ok()?, shard.parse().ok()?);
        key.starts_with(keys.tag()).then_some(keys)
    }
}

/// Keys of one pool shard; all in one hash slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardKeys {
    tag: String,
    pub pool_id: u32,
    pub shard: u16,
}

impl ShardKeys {
    /// The common start of every key in the shard; scripts derive keys from it.
    pub fn tag(&self) -> &str {
        &self.tag
    }
    /// HASH number → `caps|state|geos`, `number:h` holding count, `number:o` open count,
    /// and the shard's counters `#total`, `#draining`, `#open`.
    pub fn nums(&self) -> String {
        format!("{}nums", self.tag)
    }
    /// ZSET session bucket key → the earliest next transition (expiry, end of hold) among
    /// the bucket's records; early, never late (the reaper sets it exactly).
    pub fn due_buckets(&self) -> String {
        format!("{}xb", self.tag)
    }
    /// STRING, set for a moment by the instance whose reaper passes over the shard, so the
    /// other instances' reapers skip it in that pass.
    pub fn reaper_pass(&self) -> String {
        format!("{}rp", self.tag)
    }
    /// HASH participant index → entry: the routes the participant holds and its sticky
    /// memory (see `lua/common.lua`). One bucket per first two characters of the index.
    pub fn entries(&self, idx: &str) -> String {
        format!("{}u:{}", self.tag, idx.get(..2).unwrap_or(idx))
    }
    /// HASH session key → session record. One bucket per first twelve bits of the key.
    pub fn session_bucket(&self, key: &str) -> String {
        self.session_bucket_named(&session_bucket_name(key))
    }
    /// STRING a session's metadata, sealed, when it has any; goes with the record.
    pub fn metadata(&self, key: &str) -> String {
        format!("{}y:{key}", self.tag)
    }
    /// The session bucket `name`s (as `xb` lists them).
    pub fn session_bucket_named(&self, name: &str) -> String {
        format!("{}s:{name}", self.tag)
    }
    /// STRING `<session key>|<request fingerprint>`: the session an idempotent create made
    /// in this shard (24 h), so a retry of a create whose answer was lost finds it.
    pub fn idem_marker(&self, digest: &str) -> String {
        format!("{}ik:{digest}", self.tag)
    }
    /// HASH interaction id → interaction record, one per session.
    pub fn interactions(&self, session_key: &str) -> String {
        format!("{}i:{session_key}", self.tag)
    }
    /// STRING `action|session key|interaction id`: what a provider's call or message id
    /// was answered, so retries get the same answer and status callbacks find it.
    pub fn provider_ref(&self, provider: &str, reference: &str) -> String {
        format!("{}ref:{provider}:{reference}", self.tag)
    }
    /// The start of the shard's event queue keys: `q` (ZSET id → when it may next be
    /// claimed), `all` (ZSET id → created), `m:<id>` (HASH the event record).
    pub fn events_tag(&self) -> String {
        format!("{}ev:", self.tag)
    }
    /// The start of the shard's outbound text queue keys (see `store::outbox`): texts sent
    /// from the shard's proxy numbers through a provider's API.
    pub fn outbox_tag(&self) -> String {
        format!("{}ox:", self.tag)
    }
    /// ZSET number → holding count, for active numbers of a class (`v`, `s`, `b`) at a
    /// geo level (`*`, `c1`, `a1415`).
    pub fn load(&self, class: &str, geo: &str) -> String {
        format!("{}l:{class}:{geo}", self.tag)
    }
}

/// The KEYS of each shard script, in the order the script reads them. Every list must hash
/// to one slot (tested below), which is what lets the scripts run on Redis Cluster.
impl ShardKeys {
    pub fn number_script_keys(&self) -> [String; 1] {
        [self.nums()]
    }
    pub fn create_script_keys(&self, idx_a: &str, idx_b: &str, session: &str) -> [String; 5] {
        [
            self.nums(),
            self.due_buckets(),
            self.entries(idx_a),
            self.entries(idx_b),
            self.session_bucket(session),
        ]
    }
    pub fn end_script_keys(&self, session: &str) -> [String; 3] {
        [
            self.nums(),
            self.due_buckets(),
            self.session_bucket(session),
        ]
    }
    pub fn forget_script_keys(&self, idx: &str) -> [String; 1] {
        [self.entries(idx)]
    }
    /// A withheld caller has no index; a throwaway key in the same slot stands in.
    pub fn relay_script_keys(
        &self,
        idx: Option<&str>,
        provider: &str,
        reference: &str,
    ) -> [String; 2] {
        [
            self.entries(idx.unwrap_or("-")),
            self.provider_ref(provider, reference),
        ]
    }
    pub fn interaction_script_keys(&self, provider: &str, reference: &str) -> [String; 1] {
        [self.provider_ref(provider, reference)]
    }
}

/// The bucket of a session key (base32, see `domain::ids`): its first two characters and the
/// top two bits of the third, as `sbucket` in `lua/common.lua` names it.
fn session_bucket_name(key: &str) -> String {
    const ALPHABET: &str = "0123456789abcdefghjkmnpqrstvwxyz";
    let third = key
        .chars()
        .nth(2)
        .and_then(|c| ALPHABET.find(c))
        .unwrap_or(0);
    format!("{}{}", key.get(..2).unwrap_or(key), third / 8)
}

/// The Redis Cluster hash slot of a key (CRC16/XMODEM of the hash tag, mod 16384).
pub fn hash_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    let data = tagged.unwrap_or(bytes);
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_named_by_the_start_of_a_key() {
        let s = Keys::new("hush").shard(7, 0);
        assert_eq!(s.entries("AbCdEf"), "hush:{p7.0}:u:Ab");
        // 'z' is the last of 32 letters: its top two bits are 3.
        assert_eq!(s.session_bucket("k9z0000000000000"), "hush:{p7.0}:s:k93");
        assert_eq!(s.session_bucket("k970000000000000"), "hush:{p7.0}:s:k90");
    }

    #[test]
    fn a_shard_is_found_from_its_keys_and_only_under_its_prefix() {
        let keys = Keys::new("hush");
        let shard = keys.shard(7, 3);
        assert_eq!(keys.shard_of(&shard.events_tag()), Some(shard.clone()));
        assert_eq!(keys.shard_of(&shard.outbox_tag()), Some(shard));
        for other in [
            "hush2:{p7.3}:ev:",
            "hush:{ox}:",
            "hush:{p7}:ev:",
            "hush:{p7.x}:ev:",
            "hush:{p07.3}:ev:",
        ] {
            assert_eq!(keys.shard_of(other), None, "{other}");
        }
    }

    #[test]
    fn slot_matches_redis_reference_values() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(hash_slot("123456789"), 12739);
        assert_eq!(hash_slot("foo"), 12182);
        assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
        assert_eq!(hash_slot("foo{}{bar}"), hash_slot("foo{}{bar}"));
    }

    #[test]
    fn shard_keys_share_a_slot_and_prefix() {
        let k = Keys::new("hush");
        let s = k.shard(7, 3);
        let all = [
            s.nums(),
            s.due_buckets(),
            s.entries("abc"),
            s.session_bucket("xyz"),
            s.metadata("xyz"),
            s.load("b", "a1415"),
            s.interactions("xyz"),
            s.provider_ref("twilio", "CA123"),
            s.idem_marker("digest"),
            format!("{}l:v:*", s.tag()),
        ];
        let slot = hash_slot(&all[0]);
        for key in &all {
            assert!(key.starts_with("hush:"), "{key}");
            assert_eq!(hash_slot(key), slot, "{key}");
        }
        assert_ne!(hash_slot(&k.shard(7, 4).nums()), slot);
    }

    #[test]
    fn every_script_touches_one_slot() {
        let s = Keys::new("p").shard(12, 5);
        let lists: Vec<Vec<String>> = vec![
            s.number_script_keys().to_vec(),
            s.create_script_keys("AAAA", "BBBB", "sess").to_vec(),
            s.end_script_keys("sess").to_vec(),
            s.forget_script_keys("AAAA").to_vec(),
            s.relay_script_keys(None, "twilio", "CA1").to_vec(),
            s.relay_script_keys(Some("AAAA"), "plivo", "x-y").to_vec(),
            s.interaction_script_keys("vonage", "u-1").to_vec(),
        ];
        for keys in lists {
            let slot = hash_slot(&keys[0]);
            for key in &keys {
                assert_eq!(hash_slot(key), slot, "{key} leaves the slot of {}", keys[0]);
                // Keys the scripts derive inside are built from the same tag.
                assert!(key.starts_with(s.tag()), "{key}");
            }
        }
    }
}
