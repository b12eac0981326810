//! Confirmed writes: session creates that wait for one replica (`HUSH_REDIS_WAIT_REPLICAS=1`)
//! against the same creates that do not, on one primary with one replica, in turns.

use std::sync::Arc;
use std::time::Duration;

use super::allocation::create_in_turns;
use super::fixtures::{Participants, SMALL_POOL, bench_config, bench_pool};
use super::load::Rate;

/// `(creates without WAIT, creates with WAIT 1)`.
pub(super) async fn replicated(
    url: &str,
    concurrency: usize,
    slice: Duration,
) -> anyhow::Result<(Rate, Rate)> {
    let pool_of = |wait| async move {
        let mut config = bench_config(url, "wait");
        config.redis_wait_replicas = wait;
        let broker = hush::build_broker(&config)?;
        let pool = bench_pool(&broker, SMALL_POOL).await?;
        anyhow::Ok((broker, pool, Arc::new(Participants::default())))
    };
    let pools = [pool_of(0).await?, pool_of(1).await?];
    let samples = create_in_turns(&pools, concurrency, slice).await?;
    Ok((
        samples[0].rate("creates, no WAIT")?,
        samples[1].rate("creates, WAIT 1")?,
    ))
}
