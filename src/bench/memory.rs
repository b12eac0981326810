//! Memory: Redis `used_memory` growth per open session, read from the private Redis before
//! and after a batch of sessions: 20,000 between new pairs on a pool of 100, with Redis's
//! default encoding limits and again with deploy/redis.conf's, and as PIN sessions (a pool
//! with `pin: always`); and, behind `--million`,
//! 1,000,000 on a pool of 50 where each courier is in three sessions, with a sample of them
//! routed to check that every one still reaches the right person.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use tokio::task::JoinSet;

use hush::broker::{Broker, Decision};
use hush::domain::session::Kind;
use hush::domain::{E164, PinMode, PoolName, PoolPolicy};

use super::fixtures::{
    Participants, SMALL_POOL, bench_config, bench_pool, bench_pool_with, create_sessions,
    new_session, sessions_between_new_pairs,
};
use super::private_redis::PrivateRedis;

const MEMORY_SESSIONS: u64 = 20_000;
const SCALE_SESSIONS: u64 = 1_000_000;
const SCALE_POOL: usize = 50;
/// Sessions per courier at scale; every rider is in one.
const PER_COURIER: u64 = 3;
/// Sessions routed from each side after the measurement at scale.
const SCALE_SAMPLE: u64 = 1_000;
/// The encoding limits deploy/redis.conf sets, applied for the second measurement.
const DEPLOY_CONF: &str = include_str!("../../deploy/redis.conf");

pub(super) struct Memory {
    pub(super) sessions: u64,
    pub(super) bytes_per_session: f64,
    pub(super) keys_per_session: f64,
    /// The same with deploy/redis.conf's `hash-max-listpack-*` settings.
    pub(super) tuned_bytes_per_session: f64,
    /// What a session leaves once it has ended and its cool-off is over (its pair's sticky
    /// memory), with Redis's defaults.
    pub(super) ended_bytes_per_session: f64,
    /// The same for open PIN sessions (Redis's defaults).
    pub(super) pin_bytes_per_session: f64,
    pub(super) pin_keys_per_session: f64,
    pub(super) scale: Option<Scale>,
}

/// Which sessions a memory measurement opens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sessions {
    /// Open, each with a route of its own.
    Open,
    /// Closed at once, on a pool without cool-off.
    Ended,
    /// Open PIN sessions, on a pool with `pin: always`.
    Pin,
}

pub(super) struct Scale {
    pub(super) sessions: u64,
    pub(super) numbers: usize,
    pub(super) bytes_per_session: f64,
    pub(super) keys_per_session: f64,
    pub(super) routed: u64,
    pub(super) misrouted: u64,
}

pub(super) async fn memory(
    redis: &PrivateRedis,
    concurrency: usize,
    million: bool,
) -> anyhow::Result<Memory> {
    let (bytes_per_session, keys_per_session) =
        per_session(redis, concurrency, Sessions::Open).await?;
    redis.flush().await?;
    let defaults = redis.encoding(&tuned_settings()).await?;
    let tuned = per_session(redis, concurrency, Sessions::Open).await;
    redis.encoding(&defaults).await?;
    let (tuned_bytes_per_session, _) = tuned?;
    redis.flush().await?;
    let (ended_bytes_per_session, _) = per_session(redis, concurrency, Sessions::Ended).await?;
    redis.flush().await?;
    let (pin_bytes_per_session, pin_keys_per_session) =
        per_session(redis, concurrency, Sessions::Pin).await?;
    let scale = if million {
        redis.flush().await?;
        Some(at_scale(redis, concurrency).await?)
    } else {
        None
    };
    Ok(Memory {
        sessions: MEMORY_SESSIONS,
        bytes_per_session,
        keys_per_session,
        tuned_bytes_per_session,
        ended_bytes_per_session,
        pin_bytes_per_session,
        pin_keys_per_session,
        scale,
    })
}

/// `hash-max-listpack-*` and `zset-max-listpack-*` lines of deploy/redis.conf.
fn tuned_settings() -> Vec<(String, String)> {
    DEPLOY_CONF
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .filter(|(k, _)| k.starts_with("hash-max-listpack") || k.starts_with("zset-max-listpack"))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Memory and keys per session after `MEMORY_SESSIONS` sessions between new pairs on a pool
/// of 100: open ones; ended ones, each closed at once on a pool without cool-off (so it is
/// released as it closes and only its sticky memory stays); or open PIN sessions.
async fn per_session(
    redis: &PrivateRedis,
    concurrency: usize,
    sessions: Sessions,
) -> anyhow::Result<(f64, f64)> {
    let (what, policy) = match sessions {
        Sessions::Open => ("mem", PoolPolicy::default()),
        Sessions::Ended => (
            "ended",
            PoolPolicy {
                cooloff_secs: 0,
                ..PoolPolicy::default()
            },
        ),
        Sessions::Pin => (
            "pin",
            PoolPolicy {
                pin: PinMode::Always,
                ..PoolPolicy::default()
            },
        ),
    };
    let ended = sessions == Sessions::Ended;
    let config = bench_config(&redis.url, what);
    let broker = hush::build_broker(&config)?;
    let pool = bench_pool_with(&broker, SMALL_POOL, &policy)
        .await
        .context("setting up the pool")?;
    let people = Arc::new(Participants::default());
    // A few sessions first, so scripts are loaded and the pool's indexes exist.
    create_sessions(&broker, &pool, &people, 100, concurrency)
        .await
        .context("creating the first sessions")?;
    let (mem_before, keys_before) = redis.usage().await?;
    sessions_between_new_pairs(&broker, &pool, &people, MEMORY_SESSIONS, concurrency, ended)
        .await
        .context("creating the measured sessions")?;
    let (mem_after, keys_after) = redis.usage().await?;
    let n = MEMORY_SESSIONS as f64;
    Ok((
        (mem_after as f64 - mem_before as f64) / n,
        (keys_after as f64 - keys_before as f64) / n,
    ))
}

/// `count` distinct valid numbers of area code `area`, the same on every call.
fn numbers(area: &str, count: u64) -> Vec<E164> {
    (0u64..)
        .map(|k| format!("+1{area}{:03}{:04}", 200 + (k / 10_000) % 800, k % 10_000))
        .filter_map(|n| E164::parse(&n).ok())
        .take(count as usize)
        .collect()
}

async fn at_scale(redis: &PrivateRedis, concurrency: usize) -> anyhow::Result<Scale> {
    let config = bench_config(&redis.url, "scale");
    let broker = hush::build_broker(&config)?;
    let pool = bench_pool(&broker, SCALE_POOL)
        .await
        .context("setting up the pool")?;
    let riders = Arc::new(numbers("415", SCALE_SESSIONS));
    let couriers = Arc::new(numbers("312", SCALE_SESSIONS.div_ceil(PER_COURIER)));
    let sample_every = SCALE_SESSIONS / SCALE_SAMPLE;
    let (mem_before, keys_before) = redis.usage().await?;
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (broker, pool, riders, couriers, next) = (
            broker.clone(),
            pool.clone(),
            riders.clone(),
            couriers.clone(),
            next.clone(),
        );
        workers.spawn(async move {
            let mut sampled = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= SCALE_SESSIONS {
                    return anyhow::Ok(sampled);
                }
                let (rider, courier) = (&riders[k as usize], &couriers[(k / PER_COURIER) as usize]);
                let view = broker
                    .create_session(new_session(&pool, rider, courier))
                    .await?;
                if k % sample_every == 0 {
                    sampled.push((k, view.proxy_number));
                }
            }
        });
    }
    let mut sample = Vec::new();
    while let Some(done) = workers.join_next().await {
        sample.extend(done.context("bench worker panicked")??);
    }
    let (mem_after, keys_after) = redis.usage().await?;
    let n = SCALE_SESSIONS as f64;
    let (mut routed, mut misrouted) = (0, 0);
    for (k, proxy) in &sample {
        let rider = &riders[*k as usize];
        let courier = &couriers[(*k / PER_COURIER) as usize];
        let proxy = E164::parse(proxy).context("a proxy number")?;
        for (from, to) in [(rider, courier), (courier, rider)] {
            routed += 1;
            if !reaches(&broker, &pool, from, &proxy, to, routed).await? {
                misrouted += 1;
            }
        }
    }
    Ok(Scale {
        sessions: SCALE_SESSIONS,
        numbers: SCALE_POOL,
        bytes_per_session: (mem_after as f64 - mem_before as f64) / n,
        keys_per_session: (keys_after as f64 - keys_before as f64) / n,
        routed,
        misrouted,
    })
}

/// Whether a call from `from` to `proxy` connects to `to`, showing the proxy.
async fn reaches(
    broker: &Broker,
    pool: &PoolName,
    from: &E164,
    proxy: &E164,
    to: &E164,
    n: u64,
) -> anyhow::Result<bool> {
    let outcome = broker
        .relay(
            "bench",
            &format!("scale-{n}"),
            Some(from),
            proxy,
            Kind::Voice,
        )
        .await
        .with_context(|| format!("routing a call in pool {pool}"))?;
    Ok(match outcome.decision {
        Decision::Connect {
            caller_id, to: got, ..
        } => caller_id == *proxy && got == *to,
        Decision::Announce { .. } | Decision::Gather { .. } => false,
        other => bail!("a call was answered {other:?}"),
    })
}
