//! One delivery attempt: where a pool's events go (read once per claim, not per event), the
//! signed POST, and what the answer makes of the event (delivered, retried on the schedule,
//! or failed).

use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};

use super::flight::Destination;
use super::signing::{self, SigningSecret};
use super::ssrf;
use crate::broker::{Broker, EventId};
use crate::store::ShardKeys;
use crate::store::outbox::{Leased, Settle};

/// Delivered events (and their attempts) stay listed this long.
const KEEP_DELIVERED_MS: i64 = 7 * 24 * 3600 * 1000;
/// Failed events stay listed, and redeliverable, this long.
const KEEP_FAILED_MS: i64 = 30 * 24 * 3600 * 1000;
/// The longest `Retry-After` hush honours.
const MAX_RETRY_AFTER_MS: i64 = 24 * 3600 * 1000;

const ID_HEADER: HeaderName = HeaderName::from_static(signing::ID_HEADER);
const TIMESTAMP_HEADER: HeaderName = HeaderName::from_static(signing::TIMESTAMP_HEADER);
const SIGNATURE_HEADER: HeaderName = HeaderName::from_static(signing::SIGNATURE_HEADER);
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Where one shard's claimed events go, read once for the whole claim.
pub(super) struct Target {
    /// `evt_` and the shard's part of every event id: an id is this and the event's key.
    id_prefix: String,
    pub(super) to: To,
}

pub(super) enum To {
    /// The pool's callback URL, and the secrets to sign with.
    Post {
        url: Url,
        destination: Destination,
        secrets: Vec<SigningSecret>,
    },
    /// Never deliverable as things stand (no callback URL, or one that may not be called).
    Refused(String),
    /// hush could not read the pool (Redis, or its secrets): try again on the schedule.
    NotTried(String),
}

impl Target {
    /// The pool's delivery target as the pool cache has it now.
    pub(super) async fn of(broker: &Broker, shard: &ShardKeys, allow_private: bool) -> Target {
        let id_prefix = EventId {
            pool_id: shard.pool_id,
            shard: shard.shard,
            key: String::new(),
        }
        .to_string();
        let to = match broker.delivery_target(shard.pool_id).await {
            Ok(Some((_, url, secrets))) => match ssrf::check_url(&url, allow_private) {
                Ok(url) => To::Post {
                    destination: destination(&url),
                    url,
                    secrets: secrets
                        .iter()
                        .filter_map(|s| SigningSecret::parse(s).ok())
                        .collect(),
                },
                Err(e) => To::Refused(e.to_string()),
            },
            Ok(None) => To::Refused("the pool has no callback_url".into()),
            Err(e) => To::NotTried(format!("pool unreadable: {e}")),
        };
        Target { id_prefix, to }
    }

    /// The destination attempts of this target count against, if they make a connection.
    pub(super) fn destination(&self) -> Option<&Destination> {
        match &self.to {
            To::Post { destination, .. } => Some(destination),
            _ => None,
        }
    }
}

/// The origin reqwest pools connections by.
fn destination(url: &Url) -> Destination {
    let port = url.port_or_known_default().unwrap_or(0);
    Arc::from(format!(
        "{}://{}:{port}",
        url.scheme(),
        url.host_str().unwrap_or("")
    ))
}

/// What one attempt came to.
enum Outcome {
    Delivered(u16),
    /// The app answered 410: it wants no more of these.
    Gone,
    /// 429 or 503 with a `Retry-After` (ms from now).
    Later(u16, Option<i64>),
    Failed(u16),
    /// The URL may not be called (SSRF guard) or no longer exists.
    Refused(String),
    /// hush could not prepare the attempt (Redis or the pool briefly unreadable): try again.
    NotTried(String),
}

impl Outcome {
    /// The metric label; one of [`crate::telemetry::DELIVERY_OUTCOMES`].
    fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered(_) => "delivered",
            Outcome::Failed(_) => "failed",
            Outcome::Later(..) => "throttled",
            Outcome::Gone => "gone",
            Outcome::Refused(_) => "refused",
            Outcome::NotTried(_) => "not_tried",
        }
    }
}

/// An attempt made, waiting to be settled.
pub(super) struct Attempted {
    pub shard: Arc<ShardKeys>,
    pub item: Leased,
    pub settle: Settle<'static>,
    /// The attempt's entry in the event's history: when, status, latency.
    pub log: String,
}

/// Makes one attempt and says how to settle it; settling is left to the caller, which
/// settles many attempts of a shard at once.
pub(super) async fn attempt(
    http: &reqwest::Client,
    schedule_ms: &[u64],
    broker: &Broker,
    shard: Arc<ShardKeys>,
    target: &Target,
    mut item: Leased,
) -> Attempted {
    let id = format!("{}{}", target.id_prefix, item.id);
    let started = Instant::now();
    let at = broker.now_ms();
    let outcome = send(http, broker, target, &id, &mut item).await;
    let latency = started.elapsed().as_millis() as u64;
    let (status, settle) = settle(schedule_ms, &outcome, item.claims, at);
    crate::telemetry::METRICS
        .event_delivery_attempts
        .with_label_values(&[outcome.label()])
        .inc();
    match &outcome {
        Outcome::Delivered(_) => tracing::debug!(event = %id, "event delivered"),
        Outcome::Refused(why) => {
            tracing::warn!(event = %id, reason = %why, "event not sent: its URL is refused")
        }
        Outcome::NotTried(why) => {
            tracing::warn!(event = %id, reason = %why, "event not sent this time; retrying")
        }
        _ => tracing::info!(event = %id, status, attempt = item.claims, "event not delivered"),
    }
    Attempted {
        shard,
        item,
        settle,
        log: format!("{at},{status},{latency}"),
    }
}

/// The HTTP side of one attempt. The body is moved out of `item`, which is only settled
/// afterwards.
async fn send(
    http: &reqwest::Client,
    broker: &Broker,
    target: &Target,
    id: &str,
    item: &mut Leased,
) -> Outcome {
    let (url, secrets) = match &target.to {
        To::Post { url, secrets, .. } => (url, secrets),
        To::Refused(why) => return Outcome::Refused(why.clone()),
        To::NotTried(why) => return Outcome::NotTried(why.clone()),
    };
    let body = match body(broker, item) {
        Ok(b) => b,
        Err(e) => return Outcome::NotTried(e),
    };
    let refs: Vec<&SigningSecret> = secrets.iter().collect();
    let timestamp = broker.now_ms() / 1000;
    let signature = signing::sign(&refs, id, timestamp, body.as_bytes());
    let response = http
        .post(url.clone())
        .header(CONTENT_TYPE, JSON)
        .header(ID_HEADER, id)
        .header(TIMESTAMP_HEADER, timestamp)
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            if let Some(refusal) = ssrf::refusal(&e) {
                return Outcome::Refused(refusal.to_string());
            }
            return Outcome::Failed(0);
        }
    };
    let status = response.status().as_u16();
    match status {
        200..=299 => Outcome::Delivered(status),
        410 => Outcome::Gone,
        429 | 503 => {
            let after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
                .map(|secs| (secs.max(0) * 1000).min(MAX_RETRY_AFTER_MS));
            Outcome::Later(status, after)
        }
        _ => Outcome::Failed(status),
    }
}

/// The body as stored, with what was sealed beside it put in: the participants' numbers for
/// pools that send them, or values at named places (a recording's URL).
fn body(broker: &Broker, item: &mut Leased) -> Result<String, String> {
    if item.numbers.is_empty() {
        return Ok(std::mem::take(&mut item.sealed));
    }
    let sealed = broker
        .event_sealed_part(&item.numbers)
        .map_err(|e| e.to_string())?;
    let mut body: serde_json::Value =
        serde_json::from_str(&item.sealed).map_err(|_| "stored event is not JSON".to_string())?;
    let numbers = match sealed {
        serde_json::Value::Object(places) => {
            for (pointer, value) in places {
                if let Some(slot) = body.pointer_mut(&pointer) {
                    *slot = value;
                }
            }
            return Ok(body.to_string());
        }
        serde_json::Value::Array(numbers) => numbers,
        _ => return Err("stored event numbers are corrupt".into()),
    };
    if let Some(list) = body
        .pointer_mut("/data/participants")
        .and_then(|p| p.as_array_mut())
    {
        for (p, n) in list.iter_mut().zip(numbers) {
            if let Some(obj) = p.as_object_mut() {
                obj.insert("number".into(), n);
            }
        }
    }
    Ok(body.to_string())
}

/// The status to log and what becomes of the event.
fn settle(schedule_ms: &[u64], outcome: &Outcome, claims: u32, now: i64) -> (u16, Settle<'static>) {
    let next = |status: u16| -> (u16, Settle<'static>) {
        match schedule_ms.get(claims.saturating_sub(1) as usize) {
            Some(&delay) => {
                // Jitter spreads the retries of many events that failed together.
                let jitter = rand::rng().random_range(0..=delay / 10 + 1);
                (
                    status,
                    Settle::Retry {
                        due: now + delay as i64 + jitter as i64,
                    },
                )
            }
            None => (
                status,
                Settle::Failed {
                    keep_ms: KEEP_FAILED_MS,
                    reason: "no delivery succeeded before the retry schedule ran out",
                },
            ),
        }
    };
    match outcome {
        Outcome::Delivered(status) => (
            *status,
            Settle::Done {
                keep_ms: KEEP_DELIVERED_MS,
            },
        ),
        Outcome::Gone => (
            410,
            Settle::Failed {
                keep_ms: KEEP_FAILED_MS,
                reason: "the app answered 410 Gone",
            },
        ),
        Outcome::Later(status, Some(after)) if claims as usize <= schedule_ms.len() => {
            (*status, Settle::Retry { due: now + after })
        }
        Outcome::Later(status, _) | Outcome::Failed(status) => next(*status),
        Outcome::NotTried(_) => next(0),
        Outcome::Refused(_) => (
            0,
            Settle::Failed {
                keep_ms: KEEP_FAILED_MS,
                reason: "the callback URL may not be called (private, loopback or unparsable)",
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_origins_with_their_port() {
        let d = |s: &str| destination(&Url::parse(s).unwrap()).to_string();
        assert_eq!(d("https://app.example/hooks"), "https://app.example:443");
        assert_eq!(
            d("https://app.example:443/other"),
            "https://app.example:443"
        );
        assert_eq!(d("http://127.0.0.1:8080/e"), "http://127.0.0.1:8080");
        assert_ne!(d("https://app.example/"), d("https://api.app.example/"));
    }
}
