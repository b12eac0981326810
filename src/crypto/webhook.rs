//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>) for event deliveries and
//! intercept requests. An app checks them with any Standard Webhooks library, so this follows the
//! spec exactly: HMAC-SHA256 of `{id}.{timestamp}.{body}` under the base64-decoded `whsec_`
//! secret, sent as space-separated `v1,<base64>` entries so two secrets can sign during a rotation.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The header carrying the delivery's unique id; receivers use it to drop duplicates.
pub const ID_HEADER: &str = "webhook-id";
/// The header carrying the signing time, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The header carrying the space-separated `v1,<base64>` signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// How far a timestamp may be from the receiver's clock: the window the spec recommends and the
/// reference libraries enforce, which bounds how long a captured request can be replayed.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

const SECRET_PREFIX: &str = "whsec_";
/// The spec recommends keys of 24 to 64 bytes; fewer would be guessable, more buys nothing.
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;
/// What [`SigningSecret::generate`] draws: within the spec's range, and a full SHA-256 block's
/// worth of entropy for the HMAC.
const GENERATED_SECRET_BYTES: usize = 32;

/// Standard base64 with padding on output (what every reference library decodes), but padding
/// optional on input, since some libraries and hand-written senders strip it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a secret was refused or a signature did not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigningError {
    #[error("a signing secret must start with whsec_")]
    MissingPrefix,
    #[error("a signing secret must be whsec_ followed by standard base64")]
    Base64(#[source] base64::DecodeError),
    #[error("a signing secret must decode to 24 to 64 bytes, not {0}")]
    SecretLength(usize),
    #[error("the webhook-signature header holds no v1 signature")]
    NoSignature,
    #[error("no v1 signature in the webhook-signature header matches")]
    Mismatch,
    #[error("webhook-timestamp {timestamp} is too far from now ({now})")]
    Timestamp { timestamp: i64, now: i64 },
}

/// The key a pool's events are signed with. Holds the decoded bytes; `Debug` prints
/// `[redacted]` and the `whsec_` form comes out only through [`SigningSecret::to_text`].
#[derive(Clone)]
pub struct SigningSecret(Vec<u8>);

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl SigningSecret {
    /// A fresh random secret, for a new pool or a rotation.
    pub fn generate() -> SigningSecret {
        SigningSecret(rand::random::<[u8; GENERATED_SECRET_BYTES]>().to_vec())
    }

    /// Reads the `whsec_<base64>` form [`SigningSecret::to_text`] writes.
    pub fn parse(text: &str) -> Result<SigningSecret, SigningError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SigningError::MissingPrefix)?;
        let key = B64.decode(encoded).map_err(SigningError::Base64)?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SigningError::SecretLength(key.len()));
        }
        Ok(SigningSecret(key))
    }

    /// The `whsec_<base64>` form shown to the app and stored at rest.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", B64.encode(&self.0))
    }

    fn tag(&self, id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

/// The `webhook-signature` header value: one `v1,<base64>` entry per secret, space-separated.
/// During a rotation hush passes both the new and the old secret, so an app still holding the old
/// one keeps verifying until it has switched. No secrets gives an empty string.
pub fn sign(secrets: &[&SigningSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| format!("v1,{}", B64.encode(secret.tag(id, timestamp, body))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a delivery the way an app's Standard Webhooks library would: the timestamp is within
/// `tolerance_secs` of `now` (either side, since clocks drift both ways), and at least one `v1`
/// entry of `header` is the HMAC under `secret`. Entries of other versions are skipped, as the
/// spec asks, so a future scheme can be sent alongside `v1`.
pub fn verify(
    secret: &SigningSecret,
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SigningError> {
    let tolerance = u64::try_from(tolerance_secs).unwrap_or(0);
    if now.abs_diff(timestamp) > tolerance {
        return Err(SigningError::Timestamp { timestamp, now });
    }
    let expected = secret.tag(id, timestamp, body);
    let mut seen_v1 = false;
    let mut matched = subtle::Choice::from(0);
    for entry in header.split_whitespace() {
        let Some(encoded) = entry.strip_prefix("v1,") else {
            continue;
        };
        seen_v1 = true;
        // A malformed entry is just one that does not match; another entry may still verify.
        if let Ok(candidate) = B64.decode(encoded) {
            // ct_eq is false for a length mismatch without comparing, and the length of a
            // signature is public anyway; the bytes are compared in constant time so the
            // response time leaks nothing about how close a forgery came.
            matched |= candidate.as_slice().ct_eq(&expected);
        }
    }
    if !seen_v1 {
        return Err(SigningError::NoSignature);
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(SigningError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The vector the spec and every reference library test against.
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TIMESTAMP: i64 = 1614265330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn vector_secret() -> SigningSecret {
        SigningSecret::parse(VECTOR_SECRET).unwrap()
    }

    fn check(secret: &SigningSecret, header: &str) -> Result<(), SigningError> {
        verify(
            secret,
            VECTOR_ID,
            VECTOR_TIMESTAMP,
            VECTOR_BODY,
            header,
            VECTOR_TIMESTAMP,
            DEFAULT_TOLERANCE_SECS,
        )
    }

    #[test]
    fn signs_the_official_vector() {
        let secret = vector_secret();
        assert_eq!(
            sign(&[&secret], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY),
            VECTOR_SIGNATURE
        );
        assert_eq!(check(&secret, VECTOR_SIGNATURE), Ok(()));
    }

    #[test]
    fn signs_once_per_secret_and_any_entry_verifies() {
        let old = vector_secret();
        let new = SigningSecret::generate();
        let header = sign(&[&new, &old], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY);
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1], VECTOR_SIGNATURE);
        assert!(entries[0].starts_with("v1,"));
        assert_eq!(check(&old, &header), Ok(()));
        assert_eq!(check(&new, &header), Ok(()));
        assert_eq!(
            check(&SigningSecret::generate(), &header),
            Err(SigningError::Mismatch)
        );
        assert_eq!(
            sign(&[], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY),
            String::new()
        );
    }

    #[test]
    fn skips_other_versions_and_malformed_entries() {
        let secret = vector_secret();
        let header = format!("v2,abc v1,not-base64!! v1,AAAA {VECTOR_SIGNATURE}");
        assert_eq!(check(&secret, &header), Ok(()));
        assert_eq!(check(&secret, "v2,abc"), Err(SigningError::NoSignature));
        assert_eq!(check(&secret, ""), Err(SigningError::NoSignature));
        // The padding may be stripped by the sender.
        let unpadded = VECTOR_SIGNATURE.trim_end_matches('=');
        assert_eq!(check(&secret, unpadded), Ok(()));
    }

    #[test]
    fn timestamp_must_be_within_tolerance_either_side() {
        let secret = vector_secret();
        let at = |now: i64| {
            verify(
                &secret,
                VECTOR_ID,
                VECTOR_TIMESTAMP,
                VECTOR_BODY,
                VECTOR_SIGNATURE,
                now,
                DEFAULT_TOLERANCE_SECS,
            )
        };
        assert_eq!(at(VECTOR_TIMESTAMP + 300), Ok(()));
        assert_eq!(at(VECTOR_TIMESTAMP - 300), Ok(()));
        let too_late = VECTOR_TIMESTAMP + 301;
        assert_eq!(
            at(too_late),
            Err(SigningError::Timestamp {
                timestamp: VECTOR_TIMESTAMP,
                now: too_late
            })
        );
        assert!(matches!(
            at(VECTOR_TIMESTAMP - 301),
            Err(SigningError::Timestamp { .. })
        ));
        // Extreme values must not overflow.
        assert!(at(i64::MIN).is_err());
        assert!(at(i64::MAX).is_err());
    }

    #[test]
    fn tampering_with_any_signed_part_fails() {
        let secret = vector_secret();
        let now = VECTOR_TIMESTAMP;
        let tol = DEFAULT_TOLERANCE_SECS;
        let sig = VECTOR_SIGNATURE;
        let mismatch = Err(SigningError::Mismatch);
        let other_body = br#"{"test": 2432232315}"#;
        assert_eq!(
            verify(&secret, VECTOR_ID, now, other_body, sig, now, tol),
            mismatch
        );
        assert_eq!(
            verify(&secret, "msg_other", now, VECTOR_BODY, sig, now, tol),
            mismatch
        );
        assert_eq!(
            verify(&secret, VECTOR_ID, now + 1, VECTOR_BODY, sig, now, tol),
            mismatch
        );
        let mut flipped = sig.to_string().into_bytes();
        flipped[3] ^= 1;
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(check(&secret, &flipped), mismatch);
        // The secret is the decoded bytes, not the text: keying with the text must not verify.
        let text_key = SigningSecret(VECTOR_SECRET.as_bytes().to_vec());
        assert_eq!(check(&text_key, sig), mismatch);
    }

    #[test]
    fn secret_text_round_trips_and_never_prints() {
        let secret = SigningSecret::generate();
        let text = secret.to_text();
        assert!(text.starts_with("whsec_"));
        let again = SigningSecret::parse(&text).unwrap();
        assert_eq!(again.0, secret.0);
        assert_eq!(again.0.len(), GENERATED_SECRET_BYTES);
        assert_ne!(SigningSecret::generate().0, secret.0);
        assert_eq!(vector_secret().to_text(), VECTOR_SECRET);
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert!(!format!("{:?}", Some(&secret)).contains(&text[6..]));
    }

    #[test]
    fn parse_refuses_malformed_secrets() {
        assert!(matches!(
            SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            Err(SigningError::MissingPrefix)
        ));
        assert!(matches!(
            SigningSecret::parse("whsec_not base64!"),
            Err(SigningError::Base64(_))
        ));
        assert!(matches!(
            SigningSecret::parse("whsec_c2hvcnQ="),
            Err(SigningError::SecretLength(5))
        ));
        let long = format!("whsec_{}", B64.encode([7u8; 65]));
        assert!(matches!(
            SigningSecret::parse(&long),
            Err(SigningError::SecretLength(65))
        ));
        // Padding is optional on input.
        let unpadded = SigningSecret::generate()
            .to_text()
            .trim_end_matches('=')
            .to_string();
        assert!(SigningSecret::parse(&unpadded).is_ok());
    }
}
