//! Delivering events: a step that claims due events from every shard's queue and posts each
//! to its pool's callback URL, signed as Standard Webhooks, and a loop around it.
//!
//! A claim is a lease (see `store::outbox`): a hush instance that dies mid-delivery leaves
//! the event to be claimed again when the lease ends, so every event is delivered at least
//! once, or ends visibly failed. Order is not promised.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::signing::{self, SigningSecret};
use super::ssrf;
use crate::broker::{Broker, BrokerError, EventId};
use crate::store::outbox::{Leased, Settle, Settlement};
use crate::store::{Queue, Rings, ShardKeys};

/// A delivery attempt gives up waiting for the app after this long.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed event is ours: longer than any attempt, so no other instance sends
/// it while this one still might.
const LEASE_MS: i64 = 60_000;
/// Delivered events (and their attempts) stay listed this long.
const KEEP_DELIVERED_MS: i64 = 7 * 24 * 3600 * 1000;
/// Failed events stay listed, and redeliverable, this long.
const KEEP_FAILED_MS: i64 = 30 * 24 * 3600 * 1000;
/// The longest `Retry-After` hush honours.
const MAX_RETRY_AFTER_MS: i64 = 24 * 3600 * 1000;
/// How many events one [`Delivery::deliver_once`] step claims at most.
const BATCH: usize = 50;
/// Attempts one instance keeps under way at once.
const MAX_IN_FLIGHT: usize = 256;

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

/// The delivery worker's settings.
#[derive(Clone)]
pub struct Delivery {
    pub http: reqwest::Client,
    pub allow_private: bool,
    pub schedule_ms: Vec<u64>,
}

impl Delivery {
    pub fn new(allow_private: bool, schedule_ms: Vec<u64>) -> Delivery {
        Delivery {
            http: ssrf::client(allow_private, ATTEMPT_TIMEOUT),
            allow_private,
            schedule_ms,
        }
    }

    /// One pass: claims what is due in every shard, delivers it and settles the results.
    /// Returns how many attempts it made.
    pub async fn deliver_once(&self, broker: &Broker) -> Result<usize, BrokerError> {
        let mut tasks = JoinSet::new();
        let claimed = match broker.store().every_shard().await {
            Ok(shards) => self.claim(broker, shards, &mut tasks, BATCH).await,
            Err(e) => Err(e.into()),
        };
        let mut finished = Vec::new();
        while let Some(done) = tasks.join_next().await {
            collect(done, &mut finished);
        }
        let attempts = finished.len();
        settle_all(broker, finished).await;
        match claimed {
            Err(e) if attempts == 0 => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "some shards' events could not be claimed");
                Ok(attempts)
            }
            Ok(_) => Ok(attempts),
        }
    }

    /// Claims due events of `shards`, one script per shard, until `tasks` holds `room`
    /// attempts, and starts an attempt for each claimed event without waiting for any.
    /// Returns whether it stopped for want of room (more may be due). A shard whose queue
    /// cannot be read (its Redis Cluster node is down) is passed over, so the shards after
    /// it are still served; the error is returned once every shard was tried.
    async fn claim(
        &self,
        broker: &Broker,
        shards: Vec<ShardKeys>,
        tasks: &mut JoinSet<Attempted>,
        room: usize,
    ) -> Result<bool, BrokerError> {
        let now = broker.now_ms();
        let token = format!("{}", rand::random::<u64>());
        let mut unreachable = None;
        for shard in shards {
            let room = room.saturating_sub(tasks.len());
            if room == 0 {
                return unreachable.map_or(Ok(true), |e| Err(BrokerError::from(e)));
            }
            let tag = shard.events_tag();
            let token = format!("{token}.{}.{}", shard.pool_id, shard.shard);
            let claimed = match broker
                .store()
                .queue_claim(&tag, now, LEASE_MS, room, &token, None)
                .await
            {
                Ok(claimed) => claimed,
                Err(e) => {
                    unreachable = Some(e);
                    continue;
                }
            };
            let shard = Arc::new(shard);
            for item in claimed {
                let (me, broker, shard) = (self.clone(), broker.clone(), shard.clone());
                tasks.spawn(async move { me.attempt(&broker, shard, item).await });
            }
        }
        let full = tasks.len() >= room;
        unreachable.map_or(Ok(full), |e| Err(e.into()))
    }

    /// The shards a pass looks at: those whose doorbell rang, or every shard when `everything`
    /// is asked for or any may have rung unheard.
    async fn shards_to_look_at(
        broker: &Broker,
        rings: &Rings,
        everything: bool,
    ) -> Result<Vec<ShardKeys>, BrokerError> {
        let rung = rings.take();
        match rung {
            Some(tags) if !everything => {
                let keys = broker.store().keys();
                Ok(tags.iter().filter_map(|t| keys.shard_of(t)).collect())
            }
            _ => Ok(broker.store().every_shard().await?),
        }
    }

    /// Makes one attempt and says how to settle it; settling is left to the caller, which
    /// settles many attempts of a shard at once.
    async fn attempt(&self, broker: &Broker, shard: Arc<ShardKeys>, item: Leased) -> Attempted {
        let id = EventId {
            pool_id: shard.pool_id,
            shard: shard.shard,
            key: item.id.clone(),
        }
        .to_string();
        let started = Instant::now();
        let at = broker.now_ms();
        let outcome = self.send(broker, &shard, &id, &item).await;
        let latency = started.elapsed().as_millis() as u64;
        let (status, settle) = self.settle(&outcome, item.claims, at);
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

    /// The HTTP side of one attempt.
    async fn send(&self, broker: &Broker, shard: &ShardKeys, id: &str, item: &Leased) -> Outcome {
        let (_, url, secrets) = match broker.delivery_target(shard.pool_id).await {
            Ok(Some(t)) => t,
            Ok(None) => return Outcome::Refused("the pool has no callback_url".into()),
            Err(e) => return Outcome::NotTried(format!("pool unreadable: {e}")),
        };
        let url = match ssrf::check_url(&url, self.allow_private) {
            Ok(u) => u,
            Err(e) => return Outcome::Refused(e.to_string()),
        };
        let body = match self.body(broker, item) {
            Ok(b) => b,
            Err(e) => return Outcome::NotTried(e),
        };
        let secrets: Vec<SigningSecret> = secrets
            .iter()
            .filter_map(|s| SigningSecret::parse(s).ok())
            .collect();
        let refs: Vec<&SigningSecret> = secrets.iter().collect();
        let timestamp = broker.now_ms() / 1000;
        let signature = signing::sign(&refs, id, timestamp, body.as_bytes());
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
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

    /// The body as stored, with the participants' numbers put in for pools that send them.
    fn body(&self, broker: &Broker, item: &Leased) -> Result<String, String> {
        if item.numbers.is_empty() {
            return Ok(item.sealed.clone());
        }
        let numbers = broker
            .event_numbers(&item.numbers)
            .map_err(|e| e.to_string())?;
        let mut body: serde_json::Value = serde_json::from_str(&item.sealed)
            .map_err(|_| "stored event is not JSON".to_string())?;
        if let Some(list) = body
            .pointer_mut("/data/participants")
            .and_then(|p| p.as_array_mut())
        {
            for (p, n) in list.iter_mut().zip(numbers) {
                if let Some(obj) = p.as_object_mut() {
                    obj.insert("number".into(), n.into());
                }
            }
        }
        Ok(body.to_string())
    }

    /// The status to log and what becomes of the event.
    fn settle(&self, outcome: &Outcome, claims: u32, now: i64) -> (u16, Settle<'static>) {
        let next = |status: u16| -> (u16, Settle<'static>) {
            match self.schedule_ms.get(claims.saturating_sub(1) as usize) {
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
            Outcome::Later(status, Some(after)) if claims as usize <= self.schedule_ms.len() => {
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
}

/// An attempt made, waiting to be settled.
struct Attempted {
    shard: Arc<ShardKeys>,
    item: Leased,
    settle: Settle<'static>,
    /// The attempt's entry in the event's history: when, status, latency.
    log: String,
}

/// Delivers until `shutdown`: claims when the doorbell rings (an event was written, see
/// `store::doorbell`), again as soon as attempts end while events were left waiting for
/// room, and every `interval` as a sweep for retries that fall due and rings that were
/// lost; settles what finished in one script per shard.
pub async fn run(
    broker: Broker,
    delivery: Delivery,
    interval: Duration,
    shutdown: CancellationToken,
) {
    // Attempts run side by side across passes, so one slow app (up to the attempt timeout)
    // holds up nobody else's events.
    let mut tasks = JoinSet::new();
    let mut finished = Vec::new();
    let rings = Arc::new(Rings::default());
    let listener = tokio::spawn({
        let (store, rings, shutdown) = (broker.store().clone(), rings.clone(), shutdown.clone());
        async move { store.listen(Queue::Events, rings, shutdown).await }
    });
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last claim stopped for want of room: events may be due that nobody holds.
    let mut more_due = false;
    loop {
        // What to look at: nothing, the shards that rang, or every shard.
        let look = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                collect(done, &mut finished);
                more_due.then_some(true)
            }
            _ = rings.wait() => Some(false),
            _ = tick.tick() => Some(true),
        };
        while let Some(done) = tasks.try_join_next() {
            collect(done, &mut finished);
        }
        settle_all(&broker, std::mem::take(&mut finished)).await;
        if let Some(everything) = look {
            let claimed = match Delivery::shards_to_look_at(&broker, &rings, everything).await {
                Ok(shards) => {
                    delivery
                        .claim(&broker, shards, &mut tasks, MAX_IN_FLIGHT)
                        .await
                }
                Err(e) => Err(e),
            };
            match claimed {
                Ok(full) => more_due = full,
                Err(e) => {
                    more_due = false;
                    tracing::warn!(error = %e, "event delivery pass failed; retrying next tick");
                }
            }
        }
    }
    // Attempts in hand finish (each within its timeout); their leases would otherwise hold
    // the events back for a minute.
    while let Some(done) = tasks.join_next().await {
        collect(done, &mut finished);
    }
    settle_all(&broker, finished).await;
    let _ = listener.await;
}

fn collect(done: Result<Attempted, tokio::task::JoinError>, into: &mut Vec<Attempted>) {
    match done {
        Ok(attempted) => into.push(attempted),
        // Its lease runs out and the event is claimed again.
        Err(e) => tracing::error!(error = %e, "an event delivery panicked"),
    }
}

/// Settles finished attempts, one script per shard. A shard that cannot be written now
/// keeps its events leased; they are claimed and sent again when the lease ends.
async fn settle_all(broker: &Broker, finished: Vec<Attempted>) {
    let mut by_shard: HashMap<String, Vec<&Attempted>> = HashMap::new();
    for a in &finished {
        by_shard.entry(a.shard.events_tag()).or_default().push(a);
    }
    for (tag, attempts) in by_shard {
        let items: Vec<Settlement<'_>> = attempts
            .iter()
            .map(|a| Settlement {
                id: &a.item.id,
                token: &a.item.token,
                how: a.settle,
                attempt: &a.log,
            })
            .collect();
        if let Err(e) = broker.store().queue_settle_many(&tag, &items, true).await {
            tracing::warn!(error = %e, events = items.len(), "settling event deliveries failed");
        }
    }
}
