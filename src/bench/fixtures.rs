//! What the measurements that go through hush set up alike: a configuration with its own
//! key prefix, a pool of valid proxy numbers, participant pairs that never repeat, and
//! sessions created by a number of callers side by side.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use tokio::task::JoinSet;

use hush::broker::{Broker, NewSession, Participant};
use hush::config::{Config, Secret};
use hush::domain::{E164, Mode, PoolName, PoolPolicy, SessionId};

pub(super) const SMALL_POOL: usize = 100;
pub(super) const LARGE_POOL: usize = 10_000;
/// Proxy numbers come from these area codes, participants from others.
const PROXY_AREAS: [&str; 2] = ["212", "646"];
const PARTICIPANT_AREAS: [&str; 2] = ["415", "312"];

pub(super) fn bench_config(url: &str, what: &str) -> Config {
    Config {
        redis_url: url.to_string(),
        redis_prefix: format!("bench-{what}-{:08x}", rand::random::<u32>()),
        index_key: Some(Secret::new(rand::random())),
        data_keys: vec![Secret::new(rand::random())],
        ..Config::default()
    }
}

/// `count` valid proxy numbers after the first `skip`, the same on every call.
fn proxy_numbers(skip: usize, count: usize) -> Vec<String> {
    PROXY_AREAS
        .iter()
        .flat_map(|area| (2_000_000..10_000_000u32).map(move |n| format!("+1{area}{n}")))
        .filter(|n| E164::parse(n).is_ok())
        .skip(skip)
        .take(count)
        .collect()
}

/// Creates pool `bench` with `size` numbers, added in chunks of 1000 side by side.
pub(super) async fn bench_pool(broker: &Broker, size: usize) -> anyhow::Result<PoolName> {
    bench_pool_with(broker, size, &PoolPolicy::default()).await
}

/// [`bench_pool`] with a policy of its own.
pub(super) async fn bench_pool_with(
    broker: &Broker,
    size: usize,
    policy: &PoolPolicy,
) -> anyhow::Result<PoolName> {
    named_pool(broker, "bench", 0, size, policy).await
}

/// Creates pool `name` with `size` numbers, skipping the first `skip` so that it can sit
/// beside another pool of the same broker (a number belongs to one pool).
pub(super) async fn named_pool(
    broker: &Broker,
    name: &str,
    skip: usize,
    size: usize,
    policy: &PoolPolicy,
) -> anyhow::Result<PoolName> {
    let pool = PoolName::parse(name).context("pool name")?;
    broker.put_pool(&pool, policy, false).await?;
    let numbers = proxy_numbers(skip, size);
    if numbers.len() < size {
        bail!(
            "only {} valid proxy numbers for a pool of {size}",
            numbers.len()
        );
    }
    let mut adds = JoinSet::new();
    for chunk in numbers.chunks(1000) {
        let rows: Vec<(String, Option<Vec<String>>)> =
            chunk.iter().map(|n| (n.clone(), None)).collect();
        let (broker, pool) = (broker.clone(), pool.clone());
        adds.spawn(async move { broker.add_numbers(&pool, &rows).await });
    }
    let mut added = 0;
    while let Some(report) = adds.join_next().await {
        added += report??.added.len();
    }
    if added != size {
        bail!("pool `{name}` got {added} numbers of {size}");
    }
    Ok(pool)
}

/// Hands out participant pairs that never repeat a number, so every pair is new and no
/// participant holds more than one number: the pool never runs out.
#[derive(Default)]
pub(super) struct Participants {
    next: AtomicU64,
}

impl Participants {
    fn one(&self, area: &str) -> E164 {
        loop {
            let k = self.next.fetch_add(1, Ordering::Relaxed);
            let exchange = 200 + (k / 10_000) % 800;
            let line = k % 10_000;
            if let Ok(n) = E164::parse(&format!("+1{area}{exchange:03}{line:04}")) {
                return n;
            }
        }
    }
    pub(super) fn pair(&self) -> (E164, E164) {
        (
            self.one(PARTICIPANT_AREAS[0]),
            self.one(PARTICIPANT_AREAS[1]),
        )
    }
}

pub(super) fn new_session(pool: &PoolName, a: &E164, b: &E164) -> NewSession {
    let person = |n: &E164| Participant {
        number: n.clone(),
        label: None,
    };
    NewSession {
        pool: pool.clone(),
        participants: [person(a), person(b)],
        ttl_secs: None,
        mode: Mode::Voice,
        metadata: Default::default(),
        choices: Default::default(),
    }
}

pub(super) async fn create_sessions(
    broker: &Broker,
    pool: &PoolName,
    people: &Arc<Participants>,
    count: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
    sessions_between_new_pairs(broker, pool, people, count, concurrency, false).await
}

/// Creates `count` sessions between new pairs, `concurrency` at a time, and closes each at
/// once when `close`.
pub(super) async fn sessions_between_new_pairs(
    broker: &Broker,
    pool: &PoolName,
    people: &Arc<Participants>,
    count: u64,
    concurrency: usize,
    close: bool,
) -> anyhow::Result<()> {
    let left = Arc::new(AtomicU64::new(count));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (broker, pool, people, left) =
            (broker.clone(), pool.clone(), people.clone(), left.clone());
        workers.spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let (a, b) = people.pair();
                let view = broker.create_session(new_session(&pool, &a, &b)).await?;
                if close {
                    let id = SessionId::parse(&view.id).context("a session id")?;
                    broker.close_session(&id).await?;
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done.context("bench worker panicked")??;
    }
    Ok(())
}
