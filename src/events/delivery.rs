//! Delivering events: a step that claims due events from every shard's queue and posts each
//! to its pool's callback URL, signed as Standard Webhooks, and a loop around it.
//!
//! A claim is a lease (see `store::outbox`): a hush instance that dies mid-delivery leaves
//! the event to be claimed again when the lease ends, so every event is delivered at least
//! once, or ends visibly failed. Order is not promised.
//!
//! The loop keeps three things going side by side, none waiting for another: claims (one
//! script per shard, as many events as there is room for), attempts (a task each, over the
//! client's pooled keep-alive connections), and settles (one task that writes whatever
//! finished while it wrote the previous batch, one script per shard). Room is counted per
//! destination (see `flight`), so a hanging receiver holds only its own share.
//!
//! Nothing is polled: a written event rings its shard's doorbell, each claim says when its
//! queue's next item falls due (a retry, or a lease that may run out) and each settle when
//! its retries do, and the worker comes back to the shard then. Every shard is swept only
//! every few seconds (`Rings::sweep`), for rings that were lost and for the retries and leases of an instance
//! that died, so an idle instance costs Redis next to nothing however many pools it serves.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::attempt::{Attempted, Target, attempt};
use super::flight::{Destination, InFlight, Limits, Slot};
use super::ssrf;
use crate::broker::{Broker, BrokerError};
use crate::store::outbox::{Settle, Settlement};
use crate::store::{Queue, Rings, ShardKeys, StoreError};

/// A delivery attempt gives up waiting for the app after this long.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a claimed event is ours: longer than any attempt, so no other instance sends
/// it while this one still might.
const LEASE_MS: i64 = 60_000;
/// How many events one [`Delivery::deliver_once`] step claims at most.
const BATCH: usize = 50;
/// What one instance keeps under way. 64 attempts to one destination keep a receiver on
/// the same network busy (64 keep-alive connections); eight hanging destinations are needed
/// to hold up the rest, and then only until their attempts time out.
const LIMITS: Limits = Limits {
    total: 512,
    per_destination: 64,
    at_least: 16,
};
/// Finished attempts settled in one script, at most.
const SETTLE_BATCH: usize = 512;
/// When a shard whose claim failed (its Redis node may be down) is tried again.
const FAILED_RETRY: Duration = Duration::from_secs(1);

/// The delivery worker's settings.
#[derive(Clone)]
pub struct Delivery {
    /// One client for every destination: it keeps an unbounded pool of keep-alive
    /// connections per origin, idle ones for 90 s, so one destination's share of attempts
    /// is served without reconnecting.
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

    /// One pass: claims what is due in every shard (up to a batch), delivers it and settles
    /// the results. Returns how many attempts it made.
    pub async fn deliver_once(&self, broker: &Broker) -> Result<usize, BrokerError> {
        let me = Arc::new(self.clone());
        let flight = InFlight::new(Limits {
            total: BATCH,
            per_destination: BATCH,
            at_least: 1,
        });
        let (done, mut finished) = mpsc::unbounded_channel();
        let mut unreachable = None;
        for shard in broker.store().every_shard().await? {
            if let Claimed::Failed(_, e) = claim(&me, broker, shard, &flight, &done).await {
                unreachable = Some(e);
            }
        }
        drop(done);
        let mut all = Vec::new();
        while let Some((attempted, _slot)) = finished.recv().await {
            all.push(attempted);
        }
        let attempts = all.len();
        settle_all(broker, all, None).await;
        match unreachable {
            Some(e) if attempts == 0 => Err(e.into()),
            Some(e) => {
                tracing::warn!(error = %e, "some shards' events could not be claimed");
                Ok(attempts)
            }
            None => Ok(attempts),
        }
    }
}

/// What a claim of one shard came to.
enum Claimed {
    /// It took every due event there was; the next falls due then (ms), if any is left.
    Drained(ShardKeys, Option<i64>),
    /// It filled the room it had: more may be due.
    Full(ShardKeys, Option<Destination>),
    /// Too little room for the shard's destination: it waits for places to free.
    NoRoom(ShardKeys, Option<Destination>),
    /// Its queue could not be read (its Redis Cluster node may be down).
    Failed(ShardKeys, StoreError),
}

/// An attempt made and the place it holds until it is settled.
type Finished = (Attempted, Slot);

/// Claims due events of `shard`, as many as its destination has room for, and starts an
/// attempt for each without waiting for any; each finished attempt is sent to `done`.
async fn claim(
    delivery: &Arc<Delivery>,
    broker: &Broker,
    shard: ShardKeys,
    flight: &InFlight,
    done: &mpsc::UnboundedSender<Finished>,
) -> Claimed {
    let target = Arc::new(Target::of(broker, &shard, delivery.allow_private).await);
    let dest = target.destination().cloned();
    let slots = flight.take(dest.as_ref(), usize::MAX);
    if slots.is_empty() {
        return Claimed::NoRoom(shard, dest);
    }
    let room = slots.len();
    let token = format!(
        "{}.{}.{}",
        rand::random::<u64>(),
        shard.pool_id,
        shard.shard
    );
    let claimed = broker
        .store()
        .queue_claim(
            &shard.events_tag(),
            broker.now_ms(),
            LEASE_MS,
            room,
            &token,
            None,
        )
        .await;
    let (claimed, next_due) = match claimed {
        Ok(claimed) => (claimed.items, claimed.next_due),
        Err(e) => return Claimed::Failed(shard, e),
    };
    let full = claimed.len() == room;
    let keys = Arc::new(shard.clone());
    for (item, mut slot) in claimed.into_iter().zip(slots) {
        let (delivery, broker, keys, target, done) = (
            delivery.clone(),
            broker.clone(),
            keys.clone(),
            target.clone(),
            done.clone(),
        );
        tokio::spawn(async move {
            let attempted = attempt(
                &delivery.http,
                &delivery.schedule_ms,
                &broker,
                keys,
                &target,
                item,
            )
            .await;
            slot.answered();
            // Fails only if the settling task is gone: the lease runs out and the event
            // goes again.
            let _ = done.send((attempted, slot));
        });
    }
    if full {
        Claimed::Full(shard, dest)
    } else {
        Claimed::Drained(shard, next_due)
    }
}

/// Work the loop waits for: claims, and the surveys of every shard that sweeps start.
enum Step {
    Claimed(Claimed),
    /// Every shard, for a sweep.
    Surveyed(Result<Vec<ShardKeys>, StoreError>),
}

/// Which shards are being claimed, and which wait for a claim.
#[derive(Default)]
struct Shards {
    /// A claim of the shard is under way.
    claiming: HashSet<String>,
    /// Asked for while a claim was under way (it rang after the claim read its queue).
    again: HashSet<String>,
    /// Shards with due events but no room at their last claim, oldest first, so shards of
    /// one destination take turns.
    waiting: VecDeque<(ShardKeys, Option<Destination>)>,
    waiting_tags: HashSet<String>,
    surveying: bool,
}

/// When to claim each shard again because something in it falls due, the earliest time per
/// shard only.
#[derive(Default)]
struct Timers {
    order: BTreeSet<(i64, String)>,
    by_tag: HashMap<String, (i64, ShardKeys)>,
}

impl Timers {
    /// Claim `shard` at `at` (ms), unless it is to be claimed sooner already.
    fn set(&mut self, shard: ShardKeys, at: i64) {
        let tag = shard.events_tag();
        if let Some((current, _)) = self.by_tag.get(&tag) {
            if *current <= at {
                return;
            }
            self.order.remove(&(*current, tag.clone()));
        }
        self.order.insert((at, tag.clone()));
        self.by_tag.insert(tag, (at, shard));
    }

    fn earliest(&self) -> Option<i64> {
        self.order.first().map(|(at, _)| *at)
    }

    /// The shards due at `now` (ms), taken off.
    fn take_due(&mut self, now: i64) -> Vec<ShardKeys> {
        let mut due = Vec::new();
        while let Some((at, tag)) = self.order.first().cloned()
            && at <= now
        {
            self.order.pop_first();
            if let Some((_, shard)) = self.by_tag.remove(&tag) {
                due.push(shard);
            }
        }
        due
    }
}

/// What the loop needs to start claims.
struct Worker {
    broker: Broker,
    delivery: Arc<Delivery>,
    flight: InFlight,
    done: mpsc::UnboundedSender<Finished>,
    work: JoinSet<Step>,
    shards: Shards,
    timers: Timers,
    /// When a failed claim was last logged as a warning.
    warned: Option<Instant>,
}

impl Worker {
    /// A shard may have due events: claim it now, after the claim under way, or when its
    /// destination has room.
    fn want(&mut self, shard: ShardKeys) {
        let tag = shard.events_tag();
        if self.shards.claiming.contains(&tag) {
            self.shards.again.insert(tag);
        } else if !self.shards.waiting_tags.contains(&tag) {
            self.start(shard, tag);
        }
    }

    fn start(&mut self, shard: ShardKeys, tag: String) {
        self.shards.claiming.insert(tag);
        let (delivery, broker, flight, done) = (
            self.delivery.clone(),
            self.broker.clone(),
            self.flight.clone(),
            self.done.clone(),
        );
        self.work.spawn(async move {
            Step::Claimed(claim(&delivery, &broker, shard, &flight, &done).await)
        });
    }

    fn survey(&mut self) {
        if !self.shards.surveying {
            self.shards.surveying = true;
            let broker = self.broker.clone();
            self.work
                .spawn(async move { Step::Surveyed(broker.store().every_shard().await) });
        }
    }

    fn finished(&mut self, step: Step) {
        match step {
            Step::Surveyed(Ok(all)) => {
                self.shards.surveying = false;
                for shard in all {
                    self.want(shard);
                }
            }
            Step::Surveyed(Err(e)) => {
                self.shards.surveying = false;
                tracing::warn!(error = %e, "event delivery pass failed; retrying next tick");
            }
            Step::Claimed(claimed) => {
                let (shard, waits) = match claimed {
                    Claimed::Drained(shard, next_due) => {
                        if let Some(at) = next_due {
                            self.timers.set(shard.clone(), at);
                        }
                        (shard, None)
                    }
                    Claimed::Full(shard, dest) | Claimed::NoRoom(shard, dest) => {
                        (shard, Some(dest))
                    }
                    Claimed::Failed(shard, e) => {
                        // Every shard on a Redis node that is down fails at each sweep: once
                        // a second is enough to say so.
                        let now = Instant::now();
                        if self
                            .warned
                            .is_none_or(|at| now - at >= Duration::from_secs(1))
                        {
                            self.warned = Some(now);
                            tracing::warn!(error = %e, "a shard's events could not be claimed; retrying next tick");
                        } else {
                            tracing::debug!(error = %e, "a shard's events could not be claimed");
                        }
                        let again = self.broker.now_ms() + FAILED_RETRY.as_millis() as i64;
                        self.timers.set(shard.clone(), again);
                        (shard, None)
                    }
                };
                let tag = shard.events_tag();
                self.shards.claiming.remove(&tag);
                let again = self.shards.again.remove(&tag);
                match waits {
                    Some(dest) => {
                        self.shards.waiting_tags.insert(tag);
                        self.shards.waiting.push_back((shard, dest));
                    }
                    None if again => self.start(shard, tag),
                    None => {}
                }
            }
        }
    }

    /// Starts the waiting shards whose destination now has room for a batch, promising each
    /// destination's room to one claim at a time.
    fn start_waiting(&mut self) {
        let at_least = self.flight.limits().at_least;
        let mut promised: HashMap<Option<Destination>, usize> = HashMap::new();
        for _ in 0..self.shards.waiting.len() {
            let Some((shard, dest)) = self.shards.waiting.pop_front() else {
                break;
            };
            let given = promised.entry(dest.clone()).or_default();
            let room = self.flight.room(dest.as_ref()).saturating_sub(*given);
            if room >= at_least {
                *given += room;
                let tag = shard.events_tag();
                self.shards.waiting_tags.remove(&tag);
                self.start(shard, tag);
            } else {
                self.shards.waiting.push_back((shard, dest));
            }
        }
    }
}

/// Delivers until `shutdown`: claims a shard when its doorbell rings (an event was written,
/// see `store::doorbell`), again as soon as its destination has room while events were left
/// waiting, when the next of its events falls due (as its last claim or a settle said), and
/// from every shard as a sweep (`Rings::sweep`) for rings that were lost and for what other
/// instances left. Finished attempts are settled in batches, one script per shard.
pub async fn run(broker: Broker, delivery: Delivery, shutdown: CancellationToken) {
    let (done, finished) = mpsc::unbounded_channel();
    let (retries, mut retried) = mpsc::unbounded_channel();
    let settler = tokio::spawn(settle_loop(broker.clone(), finished, retries));
    let rings = Arc::new(Rings::default());
    let listener = tokio::spawn({
        let (store, rings, shutdown) = (broker.store().clone(), rings.clone(), shutdown.clone());
        async move { store.listen(Queue::Events, rings, shutdown).await }
    });
    let mut worker = Worker {
        broker,
        delivery: Arc::new(delivery),
        flight: InFlight::new(LIMITS),
        done,
        work: JoinSet::new(),
        shards: Shards::default(),
        timers: Timers::default(),
        warned: None,
    };
    // When every shard was last looked at (none yet: at once).
    let mut swept: Option<tokio::time::Instant> = None;
    let flight = worker.flight.clone();
    let keys = worker.broker.store().keys().clone();
    loop {
        // The broker's clock (which tests may set ahead) says when; tokio's sleeps that long.
        let next_due = worker.timers.earliest().map(|at| {
            let wait = u64::try_from(at - worker.broker.now_ms()).unwrap_or(0);
            tokio::time::Instant::now() + Duration::from_millis(wait)
        });
        let sweep = swept.map_or_else(tokio::time::Instant::now, |at| at + rings.sweep());
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some((shard, at)) = retried.recv() => worker.timers.set(shard, at),
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(tokio::time::Instant::now)),
                if next_due.is_some() =>
            {
                for shard in worker.timers.take_due(worker.broker.now_ms()) {
                    worker.want(shard);
                }
            }
            Some(step) = worker.work.join_next(), if !worker.work.is_empty() => match step {
                Ok(step) => worker.finished(step),
                Err(e) => tracing::error!(error = %e, "an event claim panicked"),
            },
            _ = rings.wait() => match rings.take() {
                Some(tags) => {
                    for shard in tags.iter().filter_map(|t| keys.shard_of(t)) {
                        worker.want(shard);
                    }
                }
                None => {
                    swept = Some(tokio::time::Instant::now());
                    worker.survey();
                }
            },
            _ = flight.freed() => {}
            _ = tokio::time::sleep_until(sweep) => {
                swept = Some(tokio::time::Instant::now());
                worker.survey();
            }
        }
        worker.start_waiting();
    }
    // Claims under way start their attempts; attempts in hand finish (each within its
    // timeout) and are settled, or their leases would hold the events back for a minute.
    while worker.work.join_next().await.is_some() {}
    drop(worker);
    let _ = settler.await;
    let _ = listener.await;
}

/// Settles finished attempts until every sender is gone: each batch is whatever finished
/// while the previous one was written. An attempt's place in the total is given back once
/// it is settled; when a retry falls due is sent to `retries`.
async fn settle_loop(
    broker: Broker,
    mut finished: mpsc::UnboundedReceiver<Finished>,
    retries: mpsc::UnboundedSender<(ShardKeys, i64)>,
) {
    let mut batch = Vec::new();
    while finished.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        let (attempts, slots): (Vec<Attempted>, Vec<Slot>) = batch.drain(..).unzip();
        settle_all(&broker, attempts, Some(&retries)).await;
        drop(slots);
    }
}

/// Settles finished attempts, one script per shard, and tells `retries` when each shard's
/// first retry falls due. A shard that cannot be written now keeps its events leased; they
/// are claimed and sent again when the lease ends, which the claim reported.
async fn settle_all(
    broker: &Broker,
    finished: Vec<Attempted>,
    retries: Option<&mpsc::UnboundedSender<(ShardKeys, i64)>>,
) {
    let mut by_shard: HashMap<&str, (String, Vec<Settlement<'_>>)> = HashMap::new();
    for a in &finished {
        by_shard
            .entry(a.shard.tag())
            .or_insert_with(|| (a.shard.events_tag(), Vec::new()))
            .1
            .push(Settlement {
                id: &a.item.id,
                token: &a.item.token,
                how: a.settle,
                attempt: &a.log,
            });
    }
    for (tag, items) in by_shard.values() {
        if let Err(e) = broker.store().queue_settle_many(tag, items, true).await {
            tracing::warn!(error = %e, events = items.len(), "settling event deliveries failed");
        }
    }
    let Some(retries) = retries else {
        return;
    };
    let mut first: HashMap<&str, (i64, &ShardKeys)> = HashMap::new();
    for a in &finished {
        if let Settle::Retry { due } | Settle::Release { due } = a.settle {
            let at = first.entry(a.shard.tag()).or_insert((due, &a.shard));
            at.0 = at.0.min(due);
        }
    }
    for (due, shard) in first.into_values() {
        // Fails only when the loop has stopped, and with it every claim.
        let _ = retries.send((shard.clone(), due));
    }
}
