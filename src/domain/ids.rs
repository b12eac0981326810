//! Identifiers. A session id carries its pool id and shard, so every operation on a session
//! knows its Redis hash slot without a lookup.

use std::fmt;

/// A pool's name: lower-case letters, digits, `-` and `_`, 1 to 63 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolName(String);

impl PoolName {
    pub fn parse(s: &str) -> Option<PoolName> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && (b == b'-' || b == b'_'))
            });
        ok.then(|| PoolName(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

fn encode32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn decode32(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Leftover bits must be zero padding, so every id has exactly one spelling.
    (acc & ((1 << bits) - 1) == 0).then_some(out)
}

/// `ses_` + base32 of pool id (4 bytes) and shard (2 bytes), then base32 of 10 random bytes.
/// The two parts are encoded apart so the random part — the key stored in Redis — is a
/// suffix of the id, which scripts can join to a shard's prefix.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct SessionId {
    pub pool_id: u32,
    pub shard: u16,
    random: [u8; 10],
}

impl SessionId {
    pub fn new(pool_id: u32, shard: u16) -> SessionId {
        let random: [u8; 10] = rand::random();
        SessionId {
            pool_id,
            shard,
            random,
        }
    }

    pub fn parse(s: &str) -> Option<SessionId> {
        let body = s.strip_prefix("ses_")?;
        if body.len() != 26 {
            return None;
        }
        let (place, key) = (body.get(..10)?, body.get(10..)?);
        let place = decode32(place)?;
        if place.len() != 6 {
            return None;
        }
        SessionId::from_key(
            u32::from_be_bytes(place[0..4].try_into().ok()?),
            u16::from_be_bytes(place[4..6].try_into().ok()?),
            key,
        )
    }

    /// Rebuilds an id from its shard and the short key stored inside that shard.
    pub fn from_key(pool_id: u32, shard: u16, key: &str) -> Option<SessionId> {
        let random: [u8; 10] = decode32(key)?.try_into().ok()?;
        Some(SessionId {
            pool_id,
            shard,
            random,
        })
    }

    /// The part stored in Redis; the shard is already in the key's hash tag.
    pub fn key(&self) -> String {
        encode32(&self.random)
    }

    /// What every session id of a shard starts with: the id is this plus [`SessionId::key`].
    pub fn shard_prefix(pool_id: u32, shard: u16) -> String {
        let mut place = Vec::with_capacity(6);
        place.extend_from_slice(&pool_id.to_be_bytes());
        place.extend_from_slice(&shard.to_be_bytes());
        format!("ses_{}", encode32(&place))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            SessionId::shard_prefix(self.pool_id, self.shard),
            self.key()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pool_names() {
        assert!(PoolName::parse("rides-eu_1").is_some());
        assert!(PoolName::parse("").is_none());
        assert!(PoolName::parse("-x").is_none());
        assert!(PoolName::parse("Rides").is_none());
        assert!(PoolName::parse(&"a".repeat(64)).is_none());
    }

    proptest! {
        #[test]
        fn session_ids_round_trip(pool in any::<u32>(), shard in any::<u16>()) {
            let id = SessionId::new(pool, shard);
            let text = id.to_string();
            prop_assert_eq!(text.len(), 30);
            prop_assert_eq!(SessionId::parse(&text), Some(id.clone()));
            prop_assert_eq!(SessionId::from_key(pool, shard, &id.key()), Some(id.clone()));
            prop_assert_eq!(text, format!("{}{}", SessionId::shard_prefix(pool, shard), id.key()));
        }

        #[test]
        fn session_id_parse_never_panics(s in "\\PC{0,40}") {
            let _ = SessionId::parse(&s);
        }
    }
}
