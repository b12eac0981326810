//! The carrier's side of each provider's signature, written from the providers' documents
//! rather than borrowed from the relay: a sandbox that shared the relay's code would agree
//! with it even where both were wrong.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use ed25519_dalek::{Signer as _, SigningKey};
use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::relay::form_urlencoded;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac =
        <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// `X-Twilio-Signature`: base64 HMAC-SHA1 of the URL followed by each POST parameter's name
/// and value, sorted by name
/// (<https://www.twilio.com/docs/usage/webhooks/webhooks-security>).
pub fn twilio(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut text = url.to_string();
    for (k, v) in sorted {
        text.push_str(k);
        text.push_str(v);
    }
    B64.encode(hmac::<Hmac<Sha1>>(auth_token.as_bytes(), text.as_bytes()))
}

/// `telnyx-signature-ed25519`: base64 Ed25519 over `"{timestamp}|{body}"`
/// (<https://developers.telnyx.com/docs/messaging/messages/receiving-webhooks>).
pub fn telnyx(key: &SigningKey, timestamp: &str, body: &str) -> String {
    B64.encode(
        key.sign(format!("{timestamp}|{body}").as_bytes())
            .to_bytes(),
    )
}

/// `X-Plivo-Signature-V3` of a POST: base64 HMAC-SHA256 of the URL without its query, `?`,
/// the query's `k=v` pairs sorted and joined by `&`, `.` when both exist, every form
/// parameter as `kv` sorted by name, then `.` and the nonce
/// (<https://www.plivo.com/docs/voice/xml/request/validation>).
pub fn plivo(auth_token: &str, url: &str, params: &[(String, String)], nonce: &str) -> String {
    let sorted = |pairs: &[(String, String)]| {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in pairs {
            map.entry(k.clone()).or_default().push(v.clone());
        }
        map.into_iter()
            .flat_map(|(k, mut vs)| {
                vs.sort();
                vs.into_iter().map(move |v| (k.clone(), v))
            })
            .collect::<Vec<_>>()
    };
    let (base, query) = match url.split_once('?') {
        Some((base, q)) => (base, form_urlencoded(q.as_bytes())),
        None => (url, Vec::new()),
    };
    let query = sorted(&query)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut text = base.to_string();
    if !query.is_empty() || !params.is_empty() {
        text.push('?');
        text.push_str(&query);
        if !query.is_empty() && !params.is_empty() {
            text.push('.');
        }
        for (k, v) in sorted(params) {
            text.push_str(&k);
            text.push_str(&v);
        }
    }
    text.push('.');
    text.push_str(nonce);
    B64.encode(hmac::<Hmac<Sha256>>(auth_token.as_bytes(), text.as_bytes()))
}

/// The bearer JWT of a Vonage voice webhook: HS256 under the signature secret, with its
/// own `jti`, `iat` and the SHA-256 of the body as `payload_hash`
/// (<https://developer.vonage.com/en/getting-started/concepts/webhooks#decoding-signed-webhooks>).
pub fn vonage_jwt(secret: &str, jti: &str, now_secs: i64, body: &[u8]) -> String {
    let head = B64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iat": now_secs,
        "jti": jti,
        "iss": "Vonage",
        "application_id": "sandbox",
        "payload_hash": hex(&Sha256::digest(body)),
    });
    let claims = B64URL.encode(claims.to_string());
    let signed = format!("{head}.{claims}");
    let sig = B64URL.encode(hmac::<Hmac<Sha256>>(secret.as_bytes(), signed.as_bytes()));
    format!("{signed}.{sig}")
}

/// The `sig` of a Vonage inbound SMS: every other parameter sorted by name as
/// `&name=value` (`&` and `=` in values made `_`), then MD5 of that text and the secret
/// (`md5hash`), or an HMAC of it keyed with the secret
/// (<https://developer.vonage.com/en/getting-started/concepts/signing-messages>).
pub fn vonage_sms(method: &str, secret: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().filter(|(k, _)| k != "sig").collect();
    sorted.sort();
    let text: String = sorted
        .iter()
        .map(|(k, v)| format!("&{k}={}", v.replace(['&', '='], "_")))
        .collect();
    let (text, key) = (text.as_bytes(), secret.as_bytes());
    hex(&match method {
        "md5" => hmac::<Hmac<Md5>>(key, text),
        "sha1" => hmac::<Hmac<Sha1>>(key, text),
        "sha256" => hmac::<Hmac<Sha256>>(key, text),
        "sha512" => hmac::<Hmac<Sha512>>(key, text),
        _ => {
            let mut h = Md5::new();
            h.update(text);
            h.update(key);
            h.finalize().to_vec()
        }
    })
}

/// `application/x-www-form-urlencoded`, every byte but letters, digits and `-_.~` escaped.
pub fn form(pairs: &[(String, String)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A fresh Ed25519 key pair for `hush dev`: base64 of the secret key and of the public key.
pub fn telnyx_key_pair() -> (String, String) {
    use rand::RngCore;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    (B64.encode(seed), B64.encode(key.verifying_key().to_bytes()))
}

/// The signing key in `HUSH_SANDBOX_TELNYX_SIGNING_KEY`, when it is one.
pub fn telnyx_key(b64: &str) -> Option<SigningKey> {
    let seed: [u8; 32] = B64.decode(b64.trim()).ok()?.try_into().ok()?;
    Some(SigningKey::from_bytes(&seed))
}

/// The public half of `key` as `HUSH_TELNYX_PUBLIC_KEY` holds it.
pub fn telnyx_public(key: &SigningKey) -> String {
    B64.encode(key.verifying_key().to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// twilio-python's request-validator vector.
    #[test]
    fn twilio_matches_the_published_example() {
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(
            twilio(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    /// plivo-go's TestValidateSignatureV3Pass1 (POST with a query).
    #[test]
    fn plivo_matches_the_sdk_vector() {
        let params = pairs(&[
            ("Direction", "outbound"),
            ("From", "19792014278"),
            ("ALegUUID", "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36"),
            ("CallStatus", "in-progress"),
            ("BillRate", "0.002"),
            ("ParentAuthID", "MANWVLYTK4ZWU1YTY4QA"),
            (
                "To",
                "sip:PlivoSignature382029104058171078704104@phone-qa.voice.plivodev.com",
            ),
            ("ALegRequestUUID", "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36"),
            ("CallUUID", "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36"),
            ("RequestUUID", "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36"),
            (
                "SIP-H-To",
                "<sip:PlivoSignature382029104058171078704104@52.9.11.55;transport=udp>;tag=1",
            ),
            ("SessionStart", "2020-04-08 11:34:33.238707"),
            ("Event", "StartApp"),
        ]);
        assert_eq!(
            plivo(
                "Y2Q2ZDgxZmY5YWRiOTI5YmQ1Njg0MTAxZWIyOTc4",
                "https://plivobin.non-prod.plivops.com/api/v1/validate_signature03.xml/?a=b&c=d",
                &params,
                "31627761595286130198"
            ),
            "k7Pusd4OxCIjR5IfA9iedDNu/h/gbdYqdzG/MiYtd1c="
        );
    }
}
