//! How Vonage signs its webhooks: a JWT (HS256 under the signature secret) on voice
//! webhooks, once per request, and a `sig` parameter on inbound texts made with the
//! account's signature method. Each check comes with the published vectors that hold it.

use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use md5::Md5;
use serde_json::Value;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use super::params;
use crate::http::{ApiError, AppState};
use crate::relay::{Webhook, forbidden, param, same};

/// How far a signed timestamp may be from our clock. Vonage signs the `timestamp` of an
/// inbound SMS so a captured request cannot be replayed later; five minutes leaves room for
/// clock skew and delivery delays.
const MAX_SKEW_SECS: i64 = 300;

/// How far in the future a voice token's `iat` may be: our clock may run a little behind
/// Vonage's. How far in the past is `HUSH_VONAGE_TOKEN_MAX_AGE_SECS`.
const TOKEN_SKEW_SECS: i64 = 30;

/// JWT segments are base64url; tolerate padding, which some signers leave in.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a voice webhook's token was refused. Logged at debug level; the caller sees 403.
#[derive(Debug, PartialEq, Eq)]
enum TokenError {
    Missing,
    Malformed,
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    PayloadHash,
    /// No `iat` or no `jti`: without them a token could be replayed forever.
    Unbounded,
    /// The token was already used for another request.
    Replayed,
}

/// What a verified token says about itself.
#[derive(Debug, PartialEq, Eq)]
struct Token {
    /// The token's id: the token is accepted for one request only.
    jti: String,
    /// Unix seconds after which the token is refused anyway.
    accept_until: i64,
}

/// Checks the `Authorization: Bearer` token of a voice webhook against the request, then
/// that the token was used for no other request: its `jti` is remembered, with the
/// request it came with, for as long as its `iat` keeps it acceptable. The answer is the
/// response to send when the webhook is refused (403, or 503 when Redis cannot tell).
pub(super) async fn check_voice(s: &AppState, w: &Webhook) -> Result<(), Response> {
    let token = verify_voice(s, w).map_err(|reason| {
        tracing::debug!(?reason, "vonage voice webhook refused");
        forbidden()
    })?;
    // The same request again (Vonage resending a webhook with the token it already
    // signed) passes, and the provider-reference memory answers it as the first time; the
    // token on any other request, other method included, does not.
    let mut request = Vec::with_capacity(w.url.len() + w.body.len() + 8);
    request.extend_from_slice(w.method.as_str().as_bytes());
    request.push(b' ');
    request.extend_from_slice(w.url.as_bytes());
    request.push(b'\n');
    request.extend_from_slice(&w.body);
    let now = s.broker.now_ms().div_euclid(1000);
    let ttl_ms = (token.accept_until - now + 1).max(1) * 1000;
    match s
        .broker
        .token_once("vonage", &token.jti, &request, ttl_ms)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::debug!(reason = ?TokenError::Replayed, "vonage voice webhook refused");
            Err(forbidden())
        }
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

/// Verifies the token of a voice webhook against its request, without Redis.
fn verify_voice(s: &AppState, w: &Webhook) -> Result<Token, TokenError> {
    let providers = &s.config.providers;
    let secret = providers
        .vonage_signature_secret
        .as_ref()
        .map(|s| s.expose().as_bytes())
        .unwrap_or_default();
    let token = w
        .header(header::AUTHORIZATION.as_str())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .ok_or(TokenError::Missing)?;
    let now = s.broker.now_ms().div_euclid(1000);
    let max_age = i64::from(providers.vonage_token_max_age_secs);
    if w.method == Method::GET {
        // A GET has no body. Vonage's support notes say its `payload_hash`, when present,
        // covers the query parameters as a compact JSON object, in the order sent:
        // https://api.support.vonage.com/hc/en-us/articles/19033783342876
        let query = query_json(w.query());
        verify_token(token, secret, now, max_age, query.as_bytes(), false)
    } else {
        verify_token(token, secret, now, max_age, &w.body, !w.body.is_empty())
    }
}

/// `{"k":"v",...}` with no whitespace, keys in the order given.
fn query_json(params: &[(String, String)]) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let fields: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}:{}", quote(k), quote(v)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// Verifies a Vonage webhook JWT: HS256 only (a token naming any other algorithm, `none`
/// included, is refused before its signature is looked at), signature compared in constant
/// time, a `jti` and an `iat` at most `max_age` seconds old (and not ahead of `now`, unix
/// seconds, by more than a little skew), `exp`/`nbf` sane, and `payload_hash` equal to the
/// SHA-256 hex of `payload`, required when `hash_required` and checked whenever present.
/// <https://developer.vonage.com/en/getting-started/concepts/webhooks#decoding-signed-webhooks>
fn verify_token(
    token: &str,
    secret: &[u8],
    now: i64,
    max_age: i64,
    payload: &[u8],
    hash_required: bool,
) -> Result<Token, TokenError> {
    let mut parts = token.split('.');
    let (Some(head), Some(body), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let object = |segment: &str| -> Result<serde_json::Map<String, Value>, TokenError> {
        let bytes = B64URL.decode(segment).map_err(|_| TokenError::Malformed)?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(TokenError::Malformed),
        }
    };
    let header = object(head)?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(TokenError::Algorithm);
    }
    let sig = B64URL.decode(sig).map_err(|_| TokenError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(head.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    if !same(&mac.finalize().into_bytes(), &sig) {
        return Err(TokenError::Signature);
    }
    let claims = object(body)?;
    let time = |name: &str| -> Result<Option<i64>, TokenError> {
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_f64().map(|f| f as i64))
                .map(Some)
                .ok_or(TokenError::Malformed),
        }
    };
    if let Some(exp) = time("exp")?
        && exp + MAX_SKEW_SECS < now
    {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = time("nbf")?
        && nbf - MAX_SKEW_SECS > now
    {
        return Err(TokenError::NotYetValid);
    }
    let iat = time("iat")?.ok_or(TokenError::Unbounded)?;
    if iat - TOKEN_SKEW_SECS > now {
        return Err(TokenError::NotYetValid);
    }
    if iat + max_age < now {
        return Err(TokenError::Expired);
    }
    let jti = match claims.get("jti") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 256 => id.clone(),
        None | Some(Value::Null) => return Err(TokenError::Unbounded),
        _ => return Err(TokenError::Malformed),
    };
    match claims.get("payload_hash") {
        None | Some(Value::Null) if !hash_required => {}
        Some(Value::String(claimed)) => {
            let actual = hex(&Sha256::digest(payload));
            if !same(claimed.to_ascii_lowercase().as_bytes(), actual.as_bytes()) {
                return Err(TokenError::PayloadHash);
            }
        }
        _ => return Err(TokenError::PayloadHash),
    }
    Ok(Token {
        jti,
        accept_until: iat + max_age,
    })
}

// ---- SMS signatures

/// Why a signed SMS was refused. Logged at debug level; the caller sees 403.
#[derive(Debug, PartialEq, Eq)]
enum SmsSigError {
    Missing,
    Malformed,
    Signature,
    Stale,
}

/// Checks the `sig` of an inbound SMS, then its `timestamp` (unix seconds) against `now`.
/// A parameter sent twice is refused: the signature covers one value per name, and which
/// one a reader takes would be up to the reader.
/// <https://developer.vonage.com/en/getting-started/concepts/signing-messages>
fn verify_sms(
    params: &[(String, String)],
    method: &str,
    secret: &[u8],
    now: i64,
) -> Result<(), SmsSigError> {
    let mut names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(SmsSigError::Malformed);
    }
    let sig = param(params, "sig").ok_or(SmsSigError::Missing)?;
    let expected = sms_signature(method, secret, params).ok_or(SmsSigError::Malformed)?;
    // Vonage's SDKs lower-case the received signature before comparing.
    if !same(
        sig.trim().to_ascii_lowercase().as_bytes(),
        expected.as_bytes(),
    ) {
        return Err(SmsSigError::Signature);
    }
    let ts = param(params, "timestamp")
        .and_then(|t| t.trim().parse::<i64>().ok())
        .ok_or(SmsSigError::Stale)?;
    if (now - ts).abs() > MAX_SKEW_SECS {
        return Err(SmsSigError::Stale);
    }
    Ok(())
}

/// The signature Vonage computes over a request's parameters, as its SDKs do: every
/// parameter but `sig`, sorted by name, written `&name=value` with `&` and `=` in values
/// replaced by `_`; then `md5hash` is the MD5 of that text followed by the secret, and the
/// other methods are an HMAC of the text keyed with the secret. Lower-case hex; `None` for
/// an unknown method (the configuration refuses those at start-up).
fn sms_signature(method: &str, secret: &[u8], params: &[(String, String)]) -> Option<String> {
    let mut sorted: Vec<&(String, String)> = params.iter().filter(|(k, _)| k != "sig").collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut text = String::new();
    for (k, v) in sorted {
        text.push('&');
        text.push_str(k);
        text.push('=');
        text.push_str(&v.replace(['&', '='], "_"));
    }
    let text = text.as_bytes();
    let digest = match method {
        "md5hash" => {
            let mut h = Md5::new();
            h.update(text);
            h.update(secret);
            h.finalize().to_vec()
        }
        "md5" => keyed::<Hmac<Md5>>(secret, text),
        "sha1" => keyed::<Hmac<Sha1>>(secret, text),
        "sha256" => keyed::<Hmac<Sha256>>(secret, text),
        "sha512" => keyed::<Hmac<Sha512>>(secret, text),
        _ => return None,
    };
    Some(hex(&digest))
}

fn keyed<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac =
        <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether an inbound text's `sig`, made with the account's signature method, verifies.
pub(super) fn sms_signed(s: &AppState, w: &Webhook) -> bool {
    // Parameters must be read to check their signature, but nothing in them is used first.
    let Some(p) = params(w) else {
        return false;
    };
    let providers = &s.config.providers;
    let secret = providers
        .vonage_signature_secret
        .as_ref()
        .map(|s| s.expose().as_bytes())
        .unwrap_or_default();
    let now = s.broker.now_ms().div_euclid(1000);
    if let Err(reason) = verify_sms(p, &providers.vonage_signature_method, secret, now) {
        tracing::debug!(?reason, "vonage sms webhook refused");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // The published vector (vonage-python-sdk's signature tests): secret `secret`,
    // parameters a=1, b=2, timestamp=1461605396, one expected `sig` per method.
    const VECTOR_SECRET: &[u8] = b"secret";
    const VECTOR_TS: i64 = 1_461_605_396;
    const VECTORS: &[(&str, &str)] = &[
        ("md5hash", "6af838ef94998832dbfc29020b564830"),
        ("md5", "c15c21ced558c93a226c305f58f902f2"),
        ("sha1", "3e19a4e6880fdc2c1426bfd0587c98b9532f0210"),
        (
            "sha256",
            "a321e824b9b816be7c3f28859a31749a098713d39f613c80d455bbaffae1cd24",
        ),
        (
            "sha512",
            "812a18f76680fa0fe1b8bd9ee1625466ceb1bd96242e4d050d2cfd9a7b40166c63ed26ec9702168781b6edcf1633db8ff95af9341701004eec3fcf9550572ee8",
        ),
    ];

    fn vector_params() -> Vec<(String, String)> {
        // Out of order on purpose: signing sorts.
        pairs(&[("timestamp", "1461605396"), ("b", "2"), ("a", "1")])
    }

    #[test]
    fn sms_signatures_match_the_published_vectors() {
        for (method, expected) in VECTORS {
            assert_eq!(
                sms_signature(method, VECTOR_SECRET, &vector_params()).as_deref(),
                Some(*expected),
                "method {method}"
            );
        }
        assert_eq!(
            sms_signature("crc32", VECTOR_SECRET, &vector_params()),
            None
        );
    }

    #[test]
    fn sms_verification_accepts_every_vector_in_any_case() {
        for (method, sig) in VECTORS {
            let mut p = vector_params();
            p.push(("sig".into(), sig.to_string()));
            assert_eq!(
                verify_sms(&p, method, VECTOR_SECRET, VECTOR_TS + 10),
                Ok(())
            );
            let mut upper = vector_params();
            upper.push(("sig".into(), sig.to_ascii_uppercase()));
            assert_eq!(verify_sms(&upper, method, VECTOR_SECRET, VECTOR_TS), Ok(()));
        }
    }

    #[test]
    fn sms_verification_refuses_what_it_must() {
        let (method, sig) = VECTORS[3];
        let signed = |extra: &[(&str, &str)]| {
            let mut p = vector_params();
            p.extend(pairs(extra));
            p
        };
        let now = VECTOR_TS;
        assert_eq!(
            verify_sms(&vector_params(), method, VECTOR_SECRET, now),
            Err(SmsSigError::Missing)
        );
        assert_eq!(
            verify_sms(&signed(&[("sig", sig)]), method, b"other", now),
            Err(SmsSigError::Signature)
        );
        assert_eq!(
            verify_sms(&signed(&[("sig", sig)]), "sha1", VECTOR_SECRET, now),
            Err(SmsSigError::Signature)
        );
        assert_eq!(
            verify_sms(
                &signed(&[("sig", sig), ("c", "3")]),
                method,
                VECTOR_SECRET,
                now
            ),
            Err(SmsSigError::Signature)
        );
        assert_eq!(
            verify_sms(
                &signed(&[("sig", sig), ("a", "1")]),
                method,
                VECTOR_SECRET,
                now
            ),
            Err(SmsSigError::Malformed)
        );
        for late in [VECTOR_TS + MAX_SKEW_SECS + 1, VECTOR_TS - MAX_SKEW_SECS - 1] {
            assert_eq!(
                verify_sms(&signed(&[("sig", sig)]), method, VECTOR_SECRET, late),
                Err(SmsSigError::Stale)
            );
        }
    }

    #[test]
    fn sms_values_have_their_separators_replaced() {
        // `&` and `=` in a value are signed as `_`, so these two sign alike.
        let a = pairs(&[("text", "a&b=c"), ("timestamp", "1")]);
        let b = pairs(&[("text", "a_b_c"), ("timestamp", "1")]);
        assert_eq!(
            sms_signature("sha256", b"k", &a),
            sms_signature("sha256", b"k", &b)
        );
    }

    fn token(secret: &[u8], header: &Value, claims: &Value) -> String {
        let head = B64URL.encode(header.to_string());
        let body = B64URL.encode(claims.to_string());
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{head}.{body}").as_bytes());
        let sig = B64URL.encode(mac.finalize().into_bytes());
        format!("{head}.{body}.{sig}")
    }

    const NOW: i64 = 1_750_000_000;
    const MAX_AGE: i64 = 300;

    /// `verify_token` with the default age limit, reduced to accepted or why not.
    fn verify(
        token: &str,
        secret: &[u8],
        now: i64,
        payload: &[u8],
        hash_required: bool,
    ) -> Result<(), TokenError> {
        verify_token(token, secret, now, MAX_AGE, payload, hash_required).map(|_| ())
    }
    const BODY: &[u8] = br#"{"from":"14155550100","to":"12015550100","uuid":"u-1"}"#;

    fn hs256() -> Value {
        json!({ "alg": "HS256", "typ": "JWT" })
    }

    fn claims(payload: &[u8]) -> Value {
        json!({
            "iat": NOW - 2,
            "jti": "2c6d3b8e-0f1a-4d5e-9b7c-1a2b3c4d5e6f",
            "iss": "Vonage",
            "payload_hash": hex(&Sha256::digest(payload)),
            "api_key": "abcd1234",
            "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
        })
    }

    #[test]
    fn a_valid_token_verifies() {
        let t = token(b"s3cret", &hs256(), &claims(BODY));
        assert_eq!(verify(&t, b"s3cret", NOW, BODY, true), Ok(()));
        // Upper-case hex in the claim is the same hash.
        let mut c = claims(BODY);
        c["payload_hash"] = json!(c["payload_hash"].as_str().unwrap().to_ascii_uppercase());
        let t = token(b"s3cret", &hs256(), &c);
        assert_eq!(verify(&t, b"s3cret", NOW, BODY, true), Ok(()));
    }

    #[test]
    fn a_token_under_another_secret_is_refused() {
        let t = token(b"not-ours", &hs256(), &claims(BODY));
        assert_eq!(
            verify(&t, b"s3cret", NOW, BODY, true),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn a_tampered_body_or_claim_is_refused() {
        let t = token(b"s3cret", &hs256(), &claims(BODY));
        let tampered = br#"{"from":"14155550199","to":"12015550100","uuid":"u-1"}"#;
        assert_eq!(
            verify(&t, b"s3cret", NOW, tampered, true),
            Err(TokenError::PayloadHash)
        );
        // Swapping in claims with the tampered body's hash breaks the signature instead.
        let (head, _, sig) = {
            let mut it = t.split('.');
            (it.next().unwrap(), it.next(), it.next().unwrap())
        };
        let forged = format!(
            "{head}.{}.{sig}",
            B64URL.encode(claims(tampered).to_string())
        );
        assert_eq!(
            verify(&forged, b"s3cret", NOW, tampered, true),
            Err(TokenError::Signature)
        );
        // A body with no hash to hold it to is refused.
        let mut c = claims(BODY);
        c.as_object_mut().unwrap().remove("payload_hash");
        let t = token(b"s3cret", &hs256(), &c);
        assert_eq!(
            verify(&t, b"s3cret", NOW, BODY, true),
            Err(TokenError::PayloadHash)
        );
        assert_eq!(verify(&t, b"s3cret", NOW, b"", false), Ok(()));
    }

    #[test]
    fn only_hs256_is_accepted() {
        let c = claims(BODY);
        let unsigned = format!(
            "{}.{}.",
            B64URL.encode(json!({ "alg": "none" }).to_string()),
            B64URL.encode(c.to_string())
        );
        assert_eq!(
            verify(&unsigned, b"s3cret", NOW, BODY, true),
            Err(TokenError::Algorithm)
        );
        for alg in ["HS512", "RS256", "hs256"] {
            let t = token(b"s3cret", &json!({ "alg": alg }), &c);
            assert_eq!(
                verify(&t, b"s3cret", NOW, BODY, true),
                Err(TokenError::Algorithm),
                "{alg}"
            );
        }
    }

    #[test]
    fn token_times_are_checked() {
        let with = |name: &str, value: i64| {
            let mut c = claims(BODY);
            c[name] = json!(value);
            token(b"s3cret", &hs256(), &c)
        };
        let check = |t: String| verify(&t, b"s3cret", NOW, BODY, true);
        assert_eq!(
            check(with("exp", NOW - MAX_SKEW_SECS - 1)),
            Err(TokenError::Expired)
        );
        assert_eq!(check(with("exp", NOW + 60)), Ok(()));
        assert_eq!(
            check(with("nbf", NOW + MAX_SKEW_SECS + 1)),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            check(with("iat", NOW + TOKEN_SKEW_SECS + 1)),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(check(with("iat", NOW + TOKEN_SKEW_SECS)), Ok(()));
        assert_eq!(
            check(with("iat", NOW - MAX_AGE - 1)),
            Err(TokenError::Expired)
        );
        assert_eq!(check(with("iat", NOW - MAX_AGE)), Ok(()));
        let mut c = claims(BODY);
        c["iat"] = json!("yesterday");
        assert_eq!(
            check(token(b"s3cret", &hs256(), &c)),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn tokens_without_iat_or_jti_are_refused() {
        for claim in ["iat", "jti"] {
            let mut c = claims(BODY);
            c.as_object_mut().unwrap().remove(claim);
            let t = token(b"s3cret", &hs256(), &c);
            assert_eq!(
                verify(&t, b"s3cret", NOW, BODY, true),
                Err(TokenError::Unbounded),
                "{claim}"
            );
        }
        let mut c = claims(BODY);
        c["jti"] = json!(42);
        let t = token(b"s3cret", &hs256(), &c);
        assert_eq!(
            verify(&t, b"s3cret", NOW, BODY, true),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn a_token_is_accepted_until_its_age_runs_out() {
        let t = token(b"s3cret", &hs256(), &claims(BODY));
        assert_eq!(
            verify_token(&t, b"s3cret", NOW, MAX_AGE, BODY, true),
            Ok(Token {
                jti: "2c6d3b8e-0f1a-4d5e-9b7c-1a2b3c4d5e6f".into(),
                accept_until: NOW - 2 + MAX_AGE,
            })
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for t in ["", "a.b", "a.b.c.d", "!!.??.**", "e30.e30.e30"] {
            assert!(verify(t, b"s3cret", NOW, BODY, true).is_err(), "{t:?}");
        }
    }

    #[test]
    fn query_json_is_compact_and_ordered() {
        let p = pairs(&[("to", "12015550100"), ("from", "1415\"55")]);
        assert_eq!(query_json(&p), r#"{"to":"12015550100","from":"1415\"55"}"#);
        assert_eq!(query_json(&[]), "{}");
    }
}
