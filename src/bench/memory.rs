//! Memory: Redis `used_memory` growth per open session, read from the private Redis before
//! and after a batch of sessions on a small pool.

use std::sync::Arc;

use anyhow::Context as _;

use super::fixtures::{Participants, SMALL_POOL, bench_config, bench_pool, create_sessions};
use super::private_redis::PrivateRedis;

const MEMORY_SESSIONS: u64 = 20_000;

pub(super) struct Memory {
    pub(super) sessions: u64,
    pub(super) bytes_per_session: f64,
    pub(super) keys_per_session: f64,
}

pub(super) async fn memory(redis: &PrivateRedis, concurrency: usize) -> anyhow::Result<Memory> {
    let config = bench_config(&redis.url, "mem");
    let broker = hush::build_broker(&config)?;
    let pool = bench_pool(&broker, SMALL_POOL)
        .await
        .context("setting up the pool")?;
    let people = Arc::new(Participants::default());
    // A few sessions first, so scripts are loaded and the pool's indexes exist.
    create_sessions(&broker, &pool, &people, 100, concurrency)
        .await
        .context("creating the first sessions")?;
    let (mem_before, keys_before) = redis.usage().await?;
    create_sessions(&broker, &pool, &people, MEMORY_SESSIONS, concurrency)
        .await
        .context("creating the measured sessions")?;
    let (mem_after, keys_after) = redis.usage().await?;
    let n = MEMORY_SESSIONS as f64;
    Ok(Memory {
        sessions: MEMORY_SESSIONS,
        bytes_per_session: (mem_after as f64 - mem_before as f64) / n,
        keys_per_session: (keys_after as f64 - keys_before as f64) / n,
    })
}
