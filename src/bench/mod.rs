//! `hush bench`: the command's options, the order of its measurements and the report of
//! hush's performance targets (docs/architecture.md). Each measurement (one file each) is a
//! ratio against a baseline taken in the same run, on the same machine, against a private
//! `redis-server` that the bench starts and kills (never the Redis of a deployment). A
//! missed target is reported, not fatal: this is a measurement.

mod allocation;
mod events;
mod fixtures;
mod load;
mod memory;
mod private_redis;
mod replicated;
mod routing;

use std::time::Duration;

use anyhow::bail;

use self::events::{EVENTS, Events};
use self::fixtures::{LARGE_POOL, SMALL_POOL};
use self::load::{ROUNDS, Rate};
use self::memory::Memory;
use self::private_redis::PrivateRedis;

/// Routing throughput must reach this share of raw Redis GET throughput.
const ROUTE_TARGET: f64 = 0.5;
/// Allocation with 10,000 numbers must reach this share of allocation with 100.
const ALLOC_TARGET: f64 = 0.8;
/// Redis bytes per open session: the limit, and the aim.
const MEMORY_LIMIT: f64 = 1024.0;
const MEMORY_AIM: f64 = 512.0;
/// Memory of a naive layout (two route strings with TTL, an expiry entry, a session hash), for context.
const MEMORY_NAIVE: f64 = 1100.0;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Seconds per timed measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Concurrent callers in every measurement.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also measure memory with 1,000,000 open sessions on a pool of 50 numbers (minutes).
    #[arg(long)]
    million: bool,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        bail!("--seconds must be a positive number");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let redis = PrivateRedis::start().await?;
    let version = redis.version.clone();
    let result = measure(&args, &redis).await;
    redis.stop().await;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json(&args))?);
    } else {
        report.print(&args, &version);
    }
    Ok(())
}

fn progress(args: &BenchArgs, what: &str) {
    if !args.json {
        eprintln!("bench: {what}");
    }
}

async fn measure(args: &BenchArgs, redis: &PrivateRedis) -> anyhow::Result<Report> {
    let slice = Duration::from_secs_f64(args.seconds / ROUNDS as f64);
    let c = args.concurrency;

    progress(
        args,
        "routing: raw Redis GET, minimal axum handler, hush POST /v1/route",
    );
    redis.flush().await?;
    let (raw, minimal, route) = routing::routing(&redis.url, c, slice).await?;

    progress(
        args,
        "allocation: pools of 100 and 10000 numbers, and 10000 over shards",
    );
    redis.flush().await?;
    let (small, large, sharded) = allocation::allocation(&redis.url, c, slice).await?;

    progress(args, "memory: open sessions");
    redis.flush().await?;
    let memory = memory::memory(redis, c, args.million).await?;
    redis.flush().await?;

    progress(
        args,
        &format!("event delivery: {EVENTS} events, direct POSTs and hush's delivery worker"),
    );
    let events = events::events(&redis.url, c).await?;
    redis.flush().await?;

    progress(
        args,
        "confirmed writes: session creates with and without WAIT 1, primary with one replica",
    );
    let replica = redis.replica().await?;
    let confirmed = replicated::replicated(&redis.url, c, slice).await;
    replica.stop().await;
    let (unconfirmed, confirmed) = confirmed?;
    redis.flush().await?;

    Ok(Report {
        raw,
        minimal,
        route,
        small,
        large,
        sharded,
        memory,
        events,
        unconfirmed,
        confirmed,
    })
}

struct Report {
    raw: Rate,
    minimal: Rate,
    route: Rate,
    small: Rate,
    large: Rate,
    /// The large pool spread over [`allocation::SHARDS`] shards.
    sharded: Rate,
    memory: Memory,
    events: Events,
    /// Session creates on a primary with one replica, without and with `WAIT 1`.
    unconfirmed: Rate,
    confirmed: Rate,
}

impl Report {
    fn route_ratio(&self) -> f64 {
        self.route.per_sec / self.raw.per_sec
    }
    fn alloc_ratio(&self) -> f64 {
        self.large.per_sec / self.small.per_sec
    }
    fn shards_ratio(&self) -> f64 {
        self.sharded.per_sec / self.large.per_sec
    }
    fn routing_met(&self) -> bool {
        self.route_ratio() >= ROUTE_TARGET
    }
    fn allocation_met(&self) -> bool {
        self.alloc_ratio() >= ALLOC_TARGET
    }
    fn memory_met(&self) -> bool {
        self.memory.bytes_per_session < MEMORY_LIMIT
    }
    fn events_ratio(&self) -> f64 {
        self.events.hush.per_sec() / self.events.direct.per_sec()
    }
    fn backlog_ratio(&self) -> f64 {
        self.events.backlog.per_sec() / self.events.direct.per_sec()
    }

    fn wait_ratio(&self) -> f64 {
        self.confirmed.per_sec / self.unconfirmed.per_sec
    }

    fn print(&self, args: &BenchArgs, version: &str) {
        let verdict = |met: bool| if met { "MET" } else { "MISSED" };
        let failed = |r: &Rate| {
            if r.failed > 0 {
                format!("   ({} failed)", r.failed)
            } else {
                String::new()
            }
        };
        println!(
            "hush bench: {} s per measurement, concurrency {}, private redis-server {version}",
            args.seconds, args.concurrency
        );
        println!();
        println!("routing (same concurrency; HTTP over keep-alive HTTP/1.1)");
        println!(
            "  raw Redis GET            {:>10.0} /s{}",
            self.raw.per_sec,
            failed(&self.raw)
        );
        println!(
            "  minimal axum + 1 GET     {:>10.0} /s   {:.2}x raw{}",
            self.minimal.per_sec,
            self.minimal.per_sec / self.raw.per_sec,
            failed(&self.minimal)
        );
        println!(
            "  hush POST /v1/route      {:>10.0} /s   {:.2}x raw   {:.2}x minimal{}",
            self.route.per_sec,
            self.route_ratio(),
            self.route.per_sec / self.minimal.per_sec,
            failed(&self.route)
        );
        println!("allocation (Broker::create_session, new participant pairs)");
        println!(
            "  pool of {SMALL_POOL:<6} numbers    {:>10.0} /s{}",
            self.small.per_sec,
            failed(&self.small)
        );
        println!(
            "  pool of {LARGE_POOL:<6} numbers    {:>10.0} /s   {:.2}x{}",
            self.large.per_sec,
            self.alloc_ratio(),
            failed(&self.large)
        );
        println!(
            "  {LARGE_POOL} over {:<2} shards      {:>10.0} /s   {:.2}x one shard{}",
            allocation::SHARDS,
            self.sharded.per_sec,
            self.shards_ratio(),
            failed(&self.sharded)
        );
        println!(
            "memory ({} open sessions, pool of {SMALL_POOL}, Redis used_memory)",
            self.memory.sessions
        );
        println!(
            "  per open session         {:>10.0} B    {:.1} keys; naive layout about {MEMORY_NAIVE:.0} B",
            self.memory.bytes_per_session, self.memory.keys_per_session
        );
        println!(
            "  with deploy/redis.conf   {:>10.0} B    (its hash-max-listpack-* settings)",
            self.memory.tuned_bytes_per_session
        );
        println!(
            "  left by an ended session {:>10.0} B    (sticky memory, kept 30 days)",
            self.memory.ended_bytes_per_session
        );
        if let Some(scale) = &self.memory.scale {
            println!(
                "  {} sessions, pool of {} {:>6.0} B    {:.2} keys; {} of {} sampled calls routed right",
                scale.sessions,
                scale.numbers,
                scale.bytes_per_session,
                scale.keys_per_session,
                scale.routed - scale.misrouted,
                scale.routed
            );
        }
        let (direct, hush) = (&self.events.direct, &self.events.hush);
        println!(
            "event delivery ({EVENTS} session.created events to a local receiver, signed, same concurrency)"
        );
        println!(
            "  direct reqwest POSTs     {:>10.0} /s   {:.0} B bodies{}",
            direct.per_sec(),
            direct.mean_body(),
            if direct.failed > 0 {
                format!("   ({} failed)", direct.failed)
            } else {
                String::new()
            }
        );
        if hush.timed_out {
            println!(
                "  hush delivery worker     timed out: {} of {EVENTS} events arrived in {:.0} s",
                hush.arrived, hush.secs
            );
        } else {
            println!(
                "  hush delivery worker     {:>10.0} /s   {:.4}x direct   {:.0} B bodies; {:.2} s to create the sessions, {:.2} s in all",
                hush.per_sec(),
                self.events_ratio(),
                hush.mean_body(),
                self.events.create_secs,
                hush.secs
            );
        }
        let backlog = &self.events.backlog;
        if backlog.timed_out {
            println!(
                "  hush worker, queued      timed out: {} of {EVENTS} events arrived in {:.0} s",
                backlog.arrived, backlog.secs
            );
        } else {
            println!(
                "  hush worker, queued      {:>10.0} /s   {:.4}x direct   (events queued before the worker started)",
                backlog.per_sec(),
                self.backlog_ratio(),
            );
        }
        println!("confirmed writes (session creates, pool of {SMALL_POOL}, primary + 1 replica)");
        println!(
            "  without WAIT             {:>10.0} /s{}",
            self.unconfirmed.per_sec,
            failed(&self.unconfirmed)
        );
        println!(
            "  with WAIT 1              {:>10.0} /s   {:.2}x{}",
            self.confirmed.per_sec,
            self.wait_ratio(),
            failed(&self.confirmed)
        );
        println!();
        println!(
            "routing     {:<8} route/raw GET {:.2} (target >= {ROUTE_TARGET:.2})",
            verdict(self.routing_met()),
            self.route_ratio()
        );
        println!(
            "allocation  {:<8} {LARGE_POOL}/{SMALL_POOL} numbers {:.2} (target >= {ALLOC_TARGET:.2})",
            verdict(self.allocation_met()),
            self.alloc_ratio()
        );
        println!(
            "memory      {:<8} {:.0} B per open session (target < {MEMORY_LIMIT:.0} B; aim {MEMORY_AIM:.0} B {})",
            verdict(self.memory_met()),
            self.memory.bytes_per_session,
            if self.memory.bytes_per_session <= MEMORY_AIM {
                "reached"
            } else {
                "not reached"
            }
        );
        if hush.timed_out {
            println!(
                "events      {:<8} {} of {EVENTS} events delivered in {:.0} s",
                "TIMEOUT", hush.arrived, hush.secs
            );
        } else {
            println!(
                "events      {:<8} hush/direct {:.4} ({:.0} events/s; no target)",
                "measured",
                self.events_ratio(),
                hush.per_sec()
            );
        }
    }

    fn json(&self, args: &BenchArgs) -> serde_json::Value {
        let rate = |r: &Rate| serde_json::json!({ "per_sec": r.per_sec, "failed": r.failed });
        serde_json::json!({
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "routing": {
                "raw_get": rate(&self.raw),
                "minimal": rate(&self.minimal),
                "route": rate(&self.route),
                "route_vs_raw": self.route_ratio(),
                "route_vs_minimal": self.route.per_sec / self.minimal.per_sec,
                "minimal_vs_raw": self.minimal.per_sec / self.raw.per_sec,
                "target": ROUTE_TARGET,
                "met": self.routing_met(),
            },
            "allocation": {
                "pool_small": { "numbers": SMALL_POOL, "sessions": rate(&self.small) },
                "pool_large": { "numbers": LARGE_POOL, "sessions": rate(&self.large) },
                "pool_sharded": {
                    "numbers": LARGE_POOL,
                    "shards": allocation::SHARDS,
                    "sessions": rate(&self.sharded),
                },
                "large_vs_small": self.alloc_ratio(),
                "sharded_vs_large": self.shards_ratio(),
                "target": ALLOC_TARGET,
                "met": self.allocation_met(),
            },
            "memory": {
                "sessions": self.memory.sessions,
                "bytes_per_session": self.memory.bytes_per_session,
                "keys_per_session": self.memory.keys_per_session,
                "tuned_bytes_per_session": self.memory.tuned_bytes_per_session,
                "ended_bytes_per_session": self.memory.ended_bytes_per_session,
                "scale": self.memory.scale.as_ref().map(|s| serde_json::json!({
                    "sessions": s.sessions,
                    "numbers": s.numbers,
                    "bytes_per_session": s.bytes_per_session,
                    "keys_per_session": s.keys_per_session,
                    "routed": s.routed,
                    "misrouted": s.misrouted,
                })),
                "naive_bytes_per_session": MEMORY_NAIVE,
                "target_bytes": MEMORY_LIMIT,
                "aim_bytes": MEMORY_AIM,
                "met": self.memory_met(),
                "aim_met": self.memory.bytes_per_session <= MEMORY_AIM,
            },
            "events": {
                "events": EVENTS,
                "direct": {
                    "per_sec": self.events.direct.per_sec(),
                    "failed": self.events.direct.failed,
                    "secs": self.events.direct.secs,
                    "mean_body_bytes": self.events.direct.mean_body(),
                },
                "hush": {
                    "per_sec": self.events.hush.per_sec(),
                    "delivered": self.events.hush.arrived,
                    "secs": self.events.hush.secs,
                    "create_secs": self.events.create_secs,
                    "mean_body_bytes": self.events.hush.mean_body(),
                    "timed_out": self.events.hush.timed_out,
                },
                "hush_vs_direct": self.events_ratio(),
                "queued": {
                    "per_sec": self.events.backlog.per_sec(),
                    "delivered": self.events.backlog.arrived,
                    "secs": self.events.backlog.secs,
                    "timed_out": self.events.backlog.timed_out,
                },
                "queued_vs_direct": self.backlog_ratio(),
                "target": null,
                "verdict": if self.events.hush.timed_out { "timeout" } else { "measured" },
            },
            "confirmed_writes": {
                "without_wait": rate(&self.unconfirmed),
                "wait_1": rate(&self.confirmed),
                "wait_vs_without": self.wait_ratio(),
                "target": null,
            },
        })
    }
}
