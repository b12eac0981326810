//! Participant numbers at rest. Keys name a participant only by a blind index (truncated
//! HMAC-SHA256 under the index key, which never rotates so lookups stay stable); values hold
//! numbers only as XChaCha20-Poly1305 ciphertext tagged with the id of the data key that
//! sealed them, so data keys can rotate while old records stay readable. `webhook` holds the
//! Standard Webhooks secrets and signatures: the broker mints secrets and events sign with them,
//! so they live beneath both.

pub mod webhook;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD as B64, URL_SAFE_NO_PAD as B64URL};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::Secret;
use crate::domain::E164;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("no data key with id {0:04x} is configured (was HUSH_DATA_KEYS shortened?)")]
    UnknownKey(u16),
    #[error("ciphertext is malformed or was sealed for another purpose")]
    Corrupt,
    #[error("two data keys share the id {0:04x}; generate a new one")]
    KeyIdClash(u16),
    #[error("no data key is configured")]
    NoKeys,
}

struct DataKey {
    id: u16,
    cipher: XChaCha20Poly1305,
}

/// Blind index and sealing, built once from the configured keys.
pub struct Crypto {
    index: HmacSha256,
    keys: Vec<DataKey>,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crypto([redacted])")
    }
}

fn key_id(key: &[u8; 32]) -> u16 {
    let h = Sha256::digest(key);
    u16::from_be_bytes([h[0], h[1]])
}

impl Crypto {
    pub fn new(
        index_key: &Secret<[u8; 32]>,
        data_keys: &[Secret<[u8; 32]>],
    ) -> Result<Crypto, CryptoError> {
        if data_keys.is_empty() {
            return Err(CryptoError::NoKeys);
        }
        let mut keys: Vec<DataKey> = Vec::new();
        for k in data_keys {
            let id = key_id(k.expose());
            if keys.iter().any(|d| d.id == id) {
                return Err(CryptoError::KeyIdClash(id));
            }
            keys.push(DataKey {
                id,
                cipher: XChaCha20Poly1305::new(k.expose().into()),
            });
        }
        let index = <HmacSha256 as Mac>::new_from_slice(index_key.expose())
            .expect("HMAC takes keys of any length");
        Ok(Crypto { index, keys })
    }

    /// The participant's name in Redis keys: 16 bytes of HMAC, base64url (22 characters).
    pub fn blind_index(&self, number: &E164) -> String {
        let mut mac = self.index.clone();
        mac.update(b"participant:");
        mac.update(number.reveal().as_bytes());
        let out = mac.finalize().into_bytes();
        B64URL.encode(&out[..16])
    }

    /// A keyed digest of arbitrary text (idempotency keys), so the text itself is not stored.
    pub fn digest(&self, domain: &str, text: &[u8]) -> String {
        let mut mac = self.index.clone();
        mac.update(domain.as_bytes());
        mac.update(b":");
        mac.update(text);
        B64URL.encode(&mac.finalize().into_bytes()[..16])
    }

    /// The PIN a PIN session's participant gets, the `attempt`th candidate of that side:
    /// keyed and derived from the session key, so it reads as random, is never stored, and
    /// can be shown again by whoever holds the index key (see [`Crypto::pin_index`]).
    pub fn pin(&self, session_key: &str, side: usize, attempt: usize, length: u8) -> String {
        let mut mac = self.index.clone();
        mac.update(b"pin-of:");
        mac.update(session_key.as_bytes());
        mac.update(format!(":{side}:{attempt}").as_bytes());
        let out = mac.finalize().into_bytes();
        let mut n = [0u8; 8];
        n.copy_from_slice(&out[..8]);
        // A 64-bit draw modulo at most 10^8 leaves a bias below one in 10^11.
        let value = u64::from_be_bytes(n) % 10u64.pow(u32::from(length));
        format!("{value:0width$}", width = usize::from(length))
    }

    /// A PIN's name in Redis: 8 bytes of keyed digest as upper-case hex, so no option of a
    /// session record (lower-case letters and digits) can be read inside it.
    pub fn pin_index(&self, pin: &str) -> String {
        let mut mac = self.index.clone();
        mac.update(b"pin:");
        mac.update(pin.as_bytes());
        mac.finalize().into_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect()
    }

    /// Seals `plain` under the newest data key. `purpose` is bound as associated data, so a
    /// ciphertext moved to another field fails to open.
    pub fn seal(&self, purpose: &str, plain: &[u8]) -> String {
        let key = &self.keys[0];
        let nonce_bytes: [u8; 24] = rand::random();
        let nonce = XNonce::from_slice(&nonce_bytes);
        let ct = key
            .cipher
            .encrypt(
                nonce,
                Payload {
                    msg: plain,
                    aad: purpose.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption does not fail for in-memory buffers");
        let mut out = Vec::with_capacity(2 + 24 + ct.len());
        out.extend_from_slice(&key.id.to_be_bytes());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ct);
        B64.encode(out)
    }

    pub fn open(&self, purpose: &str, sealed: &str) -> Result<Vec<u8>, CryptoError> {
        let raw = B64.decode(sealed).map_err(|_| CryptoError::Corrupt)?;
        if raw.len() < 2 + 24 + 16 {
            return Err(CryptoError::Corrupt);
        }
        let id = u16::from_be_bytes([raw[0], raw[1]]);
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(CryptoError::UnknownKey(id))?;
        key.cipher
            .decrypt(
                XNonce::from_slice(&raw[2..26]),
                Payload {
                    msg: &raw[26..],
                    aad: purpose.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Corrupt)
    }

    /// The id of the data key `sealed` names, if it has the form of a ciphertext.
    pub fn key_id_of(sealed: &str) -> Option<u16> {
        let raw = B64.decode(sealed).ok()?;
        (raw.len() >= 2 + 24 + 16).then(|| u16::from_be_bytes([raw[0], raw[1]]))
    }

    /// The id of the data key that seals now (the first of `HUSH_DATA_KEYS`).
    pub fn sealing_key_id(&self) -> u16 {
        self.keys[0].id
    }

    /// `sealed` sealed again under the first data key, or `None` when it already is.
    pub fn reseal(&self, purpose: &str, sealed: &str) -> Result<Option<String>, CryptoError> {
        if Crypto::key_id_of(sealed) == Some(self.sealing_key_id()) {
            return Ok(None);
        }
        let plain = self.open(purpose, sealed)?;
        Ok(Some(self.seal(purpose, &plain)))
    }

    pub fn seal_number(&self, number: &E164) -> String {
        self.seal("number", number.reveal().as_bytes())
    }

    pub fn open_number(&self, sealed: &str) -> Result<E164, CryptoError> {
        let plain = self.open("number", sealed)?;
        let text = std::str::from_utf8(&plain).map_err(|_| CryptoError::Corrupt)?;
        // Sealed by hush after a full check; the form is enough here.
        E164::parse_syntax(text).map_err(|_| CryptoError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_keyed_fixed_length_digits_and_their_index_is_upper_hex() {
        let key = |b: u8| Secret::new([b; 32]);
        let c = Crypto::new(&key(1), &[key(2)]).unwrap();
        let pin = c.pin("abc123", 0, 0, 6);
        assert_eq!(pin.len(), 6);
        assert!(pin.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(pin, c.pin("abc123", 0, 0, 6), "derived, not drawn");
        assert_eq!(c.pin("abc123", 0, 3, 8).len(), 8);
        // Other sides, candidates and sessions give other PINs (a collision among these
        // few would be a one in 10^6 chance each).
        let others = [
            c.pin("abc123", 1, 0, 6),
            c.pin("abc123", 0, 1, 6),
            c.pin("abc124", 0, 0, 6),
        ];
        assert!(others.iter().all(|o| *o != pin), "{pin} {others:?}");
        // Another index key, other PINs.
        assert_ne!(
            Crypto::new(&key(3), &[key(2)])
                .unwrap()
                .pin("abc123", 0, 0, 6),
            pin
        );
        // Leading zeros are kept.
        let short: Vec<String> = (0..200).map(|j| c.pin("s", 0, j, 4)).collect();
        assert!(short.iter().all(|p| p.len() == 4));
        assert!(short.iter().any(|p| p.starts_with('0')));
        let idx = c.pin_index(&pin);
        assert_eq!(idx.len(), 16);
        assert!(
            idx.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        );
        assert_eq!(idx, c.pin_index(&pin));
        assert_ne!(idx, c.pin_index(&c.pin("abc123", 1, 0, 6)));
    }

    fn key(b: u8) -> Secret<[u8; 32]> {
        Secret::new([b; 32])
    }

    #[test]
    fn seal_open_and_rotate() {
        let n = E164::parse("+14155550123").unwrap();
        let old = Crypto::new(&key(1), &[key(2)]).unwrap();
        let sealed = old.seal_number(&n);
        assert!(!sealed.contains("4155550123"));
        let rotated = Crypto::new(&key(1), &[key(3), key(2)]).unwrap();
        assert_eq!(rotated.open_number(&sealed).unwrap(), n);
        let fresh = rotated.seal_number(&n);
        assert!(matches!(
            old.open_number(&fresh),
            Err(CryptoError::UnknownKey(_))
        ));
        assert_eq!(old.blind_index(&n), rotated.blind_index(&n));
        assert_eq!(old.blind_index(&n).len(), 22);
    }

    #[test]
    fn reseal_moves_a_value_to_the_first_key_once() {
        let old = Crypto::new(&key(1), &[key(2)]).unwrap();
        let sealed = old.seal("p", b"hello");
        let rotated = Crypto::new(&key(1), &[key(3), key(2)]).unwrap();
        let fresh = rotated.reseal("p", &sealed).unwrap().unwrap();
        assert_eq!(Crypto::key_id_of(&fresh), Some(rotated.sealing_key_id()));
        assert_eq!(Crypto::key_id_of(&sealed), Some(old.sealing_key_id()));
        assert_eq!(rotated.open("p", &fresh).unwrap(), b"hello");
        assert_eq!(fresh.len(), sealed.len());
        assert!(rotated.reseal("p", &fresh).unwrap().is_none());
        assert!(rotated.reseal("q", &sealed).is_err());
        assert_eq!(Crypto::key_id_of("+14155550123"), None);
    }

    #[test]
    fn purpose_is_bound_and_tampering_detected() {
        let c = Crypto::new(&key(1), &[key(2)]).unwrap();
        let sealed = c.seal("a", b"hello");
        assert!(c.open("b", &sealed).is_err());
        let mut raw = B64.decode(&sealed).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(c.open("a", &B64.encode(raw)).is_err());
        assert!(c.open("a", "not base64!").is_err());
    }
}
