//! Allocation: `Broker::create_session` throughput with a pool of 10,000 numbers against a
//! pool of 100, and with the 10,000 spread over [`SHARDS`] shards, measured in turns. Every
//! session gets two participants never seen before, so no pool runs out.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use hush::domain::PoolPolicy;

use super::fixtures::{
    LARGE_POOL, Participants, SMALL_POOL, bench_config, bench_pool_with, new_session,
};
use super::load::{ROUNDS, Rate, Samples, Tally, Window};

/// The shards of the multi-shard pool measured: what a create pays for reading every
/// shard's load before it allocates.
pub(super) const SHARDS: u16 = 8;

/// Session creation with a pool of 100 numbers, one of 10,000, and one of 10,000 over
/// [`SHARDS`] shards, measured in turns.
pub(super) async fn allocation(
    url: &str,
    concurrency: usize,
    slice: Duration,
) -> anyhow::Result<(Rate, Rate, Rate)> {
    let mut pools = Vec::new();
    for (size, shards) in [(SMALL_POOL, 1), (LARGE_POOL, 1), (LARGE_POOL, SHARDS)] {
        let broker = hush::build_broker(&bench_config(url, "alloc"))?;
        let policy = PoolPolicy {
            shards,
            ..PoolPolicy::default()
        };
        let pool = bench_pool_with(&broker, size, &policy).await?;
        pools.push((broker, pool, Arc::new(Participants::default())));
    }
    let pools: [_; 3] = pools
        .try_into()
        .map_err(|_| anyhow::anyhow!("three pools"))?;
    let samples = create_in_turns(&pools, concurrency, slice).await?;
    Ok((
        samples[0].rate("allocation, pool of 100")?,
        samples[1].rate("allocation, pool of 10000")?,
        samples[2].rate("allocation, pool of 10000 over shards")?,
    ))
}

/// Session creates through each broker on its pool in turn, [`ROUNDS`] times, so a drift in
/// the machine's speed touches every measurement alike.
pub(super) async fn create_in_turns<const N: usize>(
    pools: &[(
        hush::broker::Broker,
        hush::domain::PoolName,
        Arc<Participants>,
    ); N],
    concurrency: usize,
    slice: Duration,
) -> anyhow::Result<[Samples; N]> {
    let mut samples: [Samples; N] = std::array::from_fn(|_| Samples::default());
    for _ in 0..ROUNDS {
        for ((broker, pool, people), samples) in pools.iter().zip(samples.iter_mut()) {
            let window = Window::after_warmup(slice);
            let mut workers = JoinSet::new();
            for _ in 0..concurrency {
                let (broker, pool, people) = (broker.clone(), pool.clone(), people.clone());
                workers.spawn(async move {
                    let mut tally = Tally::default();
                    while window.running() {
                        let (a, b) = people.pair();
                        let started = std::time::Instant::now();
                        let made = broker.create_session(new_session(&pool, &a, &b)).await;
                        tally.record(&window, started, made.is_ok());
                    }
                    Ok(tally)
                });
            }
            samples.add(workers, window).await?;
        }
    }
    Ok(samples)
}
