//! Event deliveries under way, in all and per destination, so that one slow or hanging
//! receiver holds at most its own share of the worker's attempts and every other app's
//! events keep flowing.
//!
//! A destination is the origin of a callback URL (scheme, host and port): the unit reqwest
//! pools keep-alive connections by, and the unit that is slow when an app is slow. Pools
//! that call back the same app share its limit, so ten pools pointing at one hanging host
//! cannot hold ten times its share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Where an attempt goes: `<scheme>://<host>:<port>`.
pub(super) type Destination = Arc<str>;

/// How many attempts may be under way.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// In all, from the claim until the attempt is settled in Redis.
    pub total: usize,
    /// Per destination, from the claim until the receiver has answered (or timed out).
    pub per_destination: usize,
    /// A claim waits until at least this many places are free, so a busy destination's
    /// backlog is claimed in batches, not one event per finished attempt.
    pub at_least: usize,
}

/// Shared counts of attempts under way; cloning shares them.
#[derive(Clone)]
pub(super) struct InFlight(Arc<Shared>);

struct Shared {
    limits: Limits,
    counts: Mutex<Counts>,
    /// Woken when a destination, or the total, has enough room again for a waiting claim.
    freed: Notify,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_destination: HashMap<Destination, usize>,
}

impl InFlight {
    pub fn new(limits: Limits) -> InFlight {
        InFlight(Arc::new(Shared {
            limits,
            counts: Mutex::new(Counts::default()),
            freed: Notify::new(),
        }))
    }

    pub fn limits(&self) -> Limits {
        self.0.limits
    }

    /// Places free for attempts to `dest` (`None`: attempts that make no connection).
    pub fn room(&self, dest: Option<&Destination>) -> usize {
        let counts = self.0.counts.lock().expect("lock poisoned");
        self.room_in(&counts, dest)
    }

    fn room_in(&self, counts: &Counts, dest: Option<&Destination>) -> usize {
        let limits = &self.0.limits;
        let total = limits.total.saturating_sub(counts.total);
        match dest {
            None => total,
            Some(d) => {
                let used = counts.by_destination.get(d).copied().unwrap_or(0);
                total.min(limits.per_destination.saturating_sub(used))
            }
        }
    }

    /// Takes every free place for attempts to `dest`, up to `want`, or none when fewer than
    /// [`Limits::at_least`] are free (and fewer than `want`).
    pub fn take(&self, dest: Option<&Destination>, want: usize) -> Vec<Slot> {
        let mut counts = self.0.counts.lock().expect("lock poisoned");
        let room = self.room_in(&counts, dest).min(want);
        if room == 0 || (room < self.0.limits.at_least && room < want) {
            return Vec::new();
        }
        counts.total += room;
        if let Some(d) = dest {
            *counts.by_destination.entry(d.clone()).or_default() += room;
        }
        drop(counts);
        (0..room)
            .map(|_| Slot {
                flight: self.clone(),
                dest: dest.cloned(),
                total: true,
            })
            .collect()
    }

    /// Waits until places were freed where a waiting claim may now find enough.
    pub async fn freed(&self) {
        self.0.freed.notified().await
    }

    fn release(&self, dest: Option<&Destination>, total: bool) {
        let limits = &self.0.limits;
        let mut counts = self.0.counts.lock().expect("lock poisoned");
        // Places come back one at a time, so a count that crosses the claim threshold passes
        // through it exactly: waking the worker then, and not on every release, is enough.
        let mut crossed = false;
        if total {
            counts.total = counts.total.saturating_sub(1);
            crossed |= limits.total.saturating_sub(counts.total) == limits.at_least;
        }
        if let Some(d) = dest
            && let Some(used) = counts.by_destination.get_mut(d)
        {
            *used = used.saturating_sub(1);
            crossed |= limits.per_destination.saturating_sub(*used) == limits.at_least;
            if *used == 0 {
                counts.by_destination.remove(d);
            }
        }
        drop(counts);
        if crossed {
            self.0.freed.notify_one();
        }
    }
}

/// One attempt's place. Its destination's share is given back by [`Slot::answered`] (or on
/// drop), its share of the total on drop, once the attempt is settled: settles that fall
/// behind hold claims back instead of piling up leases.
pub(super) struct Slot {
    flight: InFlight,
    dest: Option<Destination>,
    total: bool,
}

impl Slot {
    /// The receiver is done with this attempt: its destination may take another.
    pub fn answered(&mut self) {
        if let Some(dest) = self.dest.take() {
            self.flight.release(Some(&dest), false);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let dest = self.dest.take();
        self.flight
            .release(dest.as_ref(), std::mem::take(&mut self.total));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        total: 10,
        per_destination: 4,
        at_least: 2,
    };

    fn dest(s: &str) -> Destination {
        Arc::from(s)
    }

    #[test]
    fn a_destination_takes_at_most_its_share() {
        let flight = InFlight::new(LIMITS);
        let (a, b) = (dest("http://a:80"), dest("http://b:80"));
        let held_a = flight.take(Some(&a), usize::MAX);
        assert_eq!(held_a.len(), 4);
        assert!(flight.take(Some(&a), usize::MAX).is_empty());
        // Another destination is not held back by the first.
        let held_b = flight.take(Some(&b), 3);
        assert_eq!(held_b.len(), 3);
        assert_eq!(flight.room(Some(&b)), 1);
        assert_eq!(flight.room(None), 3);
    }

    #[test]
    fn a_claim_waits_for_several_places_unless_it_wants_fewer() {
        let flight = InFlight::new(LIMITS);
        let a = dest("http://a:80");
        let mut held = flight.take(Some(&a), usize::MAX);
        held.pop();
        // One place free: not worth a claim of a backlog...
        assert!(flight.take(Some(&a), usize::MAX).is_empty());
        // ...but enough for a claim that wants one.
        assert_eq!(flight.take(Some(&a), 1).len(), 1);
        held.truncate(1);
        assert_eq!(flight.take(Some(&a), usize::MAX).len(), 3);
    }

    #[test]
    fn an_answered_attempt_frees_its_destination_and_a_settled_one_the_total() {
        let flight = InFlight::new(Limits { total: 6, ..LIMITS });
        let a = dest("http://a:80");
        let mut held = flight.take(Some(&a), usize::MAX);
        for slot in &mut held {
            slot.answered();
        }
        assert_eq!(
            flight.room(Some(&a)),
            2,
            "the total still counts unsettled attempts"
        );
        drop(held);
        assert_eq!(flight.room(Some(&a)), 4);
        assert_eq!(flight.room(None), 6);
        assert!(flight.0.counts.lock().unwrap().by_destination.is_empty());
    }

    #[tokio::test]
    async fn crossing_the_threshold_wakes_the_worker() {
        let flight = InFlight::new(LIMITS);
        let a = dest("http://a:80");
        let mut held = flight.take(Some(&a), usize::MAX);
        held.pop();
        let woken = tokio::time::timeout(std::time::Duration::from_millis(20), flight.freed());
        assert!(
            woken.await.is_err(),
            "one free place is below the threshold"
        );
        held.pop();
        let woken = tokio::time::timeout(std::time::Duration::from_secs(5), flight.freed());
        assert!(woken.await.is_ok());
    }
}
