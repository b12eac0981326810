//! `hush bench`: the command's options, the order of its measurements and the report of
//! hush's performance targets (docs/architecture.md). Each measurement (one file each) is a
//! ratio against a baseline taken in the same run, on the same machine, against a private
//! `redis-server` that the bench starts and kills (never the Redis of a deployment). Every
//! throughput comes with the latency percentiles of the operations it counted. A missed
//! target is reported, not fatal: this is a measurement.

mod allocation;
mod events;
mod fixtures;
mod load;
mod memory;
mod private_redis;
mod replicated;
mod routing;
mod webhooks;

use std::time::Duration;

use anyhow::bail;

use self::events::{EVENTS, Events};
use self::fixtures::{LARGE_POOL, SMALL_POOL};
use self::load::{ROUNDS, Rate};
use self::memory::Memory;
use self::private_redis::PrivateRedis;
use self::routing::Routing;
use self::webhooks::Hook;

/// `POST /v1/route` must reach this share of the floor router's throughput.
const ROUTE_TARGET: f64 = 0.85;
/// Each signed provider webhook must reach this share of the floor router's throughput.
const WEBHOOK_TARGET: f64 = 0.75;
/// Allocation with 10,000 numbers must reach this share of allocation with 100.
const ALLOC_TARGET: f64 = 0.8;
/// Redis bytes per open session: the target, and the limit never to cross.
const MEMORY_TARGET: f64 = 512.0;
const MEMORY_LIMIT: f64 = 1024.0;
/// Memory of a naive layout (two route strings with TTL, an expiry entry, a session hash), for context.
const MEMORY_NAIVE: f64 = 1100.0;

/// The measurements a run can be limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Raw GET, the floor router, `POST /v1/route`, the provider webhooks and a PIN call's
    /// digits webhook.
    Routing,
    /// Session creates on pools of 100 and 10,000 numbers, and over shards.
    Allocation,
    /// Redis memory per open session, and per open PIN session.
    Memory,
    /// Event delivery against direct POSTs.
    Events,
    /// Session creates with and without `WAIT 1`.
    Confirmed,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Seconds per timed measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Concurrent callers in every measurement.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Print one JSON object instead of the table (fields in README.md, "Performance").
    #[arg(long)]
    json: bool,
    /// Also measure memory with 1,000,000 open sessions on a pool of 50 numbers (minutes).
    #[arg(long)]
    million: bool,
    /// Run only these measurements (comma-separated); all of them when left out.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
}

impl BenchArgs {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
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
    let mut report = Report::default();

    if args.runs(Part::Routing) {
        progress(
            args,
            "routing: raw Redis GET, floor router, relay floor, hush POST /v1/route, signed provider \
             webhooks, PIN calls",
        );
        redis.flush().await?;
        report.routing = Some(routing::routing(&redis.url, c, slice).await?);
    }

    if args.runs(Part::Allocation) {
        progress(
            args,
            "allocation: pools of 100 and 10000 numbers, and 10000 over shards",
        );
        redis.flush().await?;
        report.allocation = Some(allocation::allocation(&redis.url, c, slice).await?);
    }

    if args.runs(Part::Memory) {
        progress(args, "memory: open sessions, ended ones, PIN sessions");
        redis.flush().await?;
        report.memory = Some(memory::memory(redis, c, args.million).await?);
        redis.flush().await?;
    }

    if args.runs(Part::Events) {
        progress(
            args,
            &format!("event delivery: {EVENTS} events, direct POSTs and hush's delivery worker"),
        );
        report.events = Some(events::events(&redis.url, c).await?);
        redis.flush().await?;
    }

    if args.runs(Part::Confirmed) {
        progress(
            args,
            "confirmed writes: session creates with and without WAIT 1, primary with one replica",
        );
        let replica = redis.replica().await?;
        let confirmed = replicated::replicated(&redis.url, c, slice).await;
        replica.stop().await;
        report.confirmed = Some(confirmed?);
        redis.flush().await?;
    }

    Ok(report)
}

/// What the measurements that ran found.
#[derive(Default)]
struct Report {
    routing: Option<Routing>,
    /// Session creates on pools of 100 and 10,000 numbers, and 10,000 over
    /// [`allocation::SHARDS`] shards.
    allocation: Option<(Rate, Rate, Rate)>,
    memory: Option<Memory>,
    events: Option<Events>,
    /// Session creates on a primary with one replica, without and with `WAIT 1`.
    confirmed: Option<(Rate, Rate)>,
}

fn ratio(a: &Rate, b: &Rate) -> f64 {
    a.per_sec / b.per_sec
}

fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "MISSED" }
}

/// `  label  12345 /s  <extra>  p50 ... ms` with failures and Redis's CPU when known.
fn rate_line(label: &str, r: &Rate, extra: &str) {
    let mut line = format!(
        "  {label:<24} {:>8.0} /s  {extra:<30} {}",
        r.per_sec,
        r.latency.columns()
    );
    if let (Some(cores), Some(us)) = (r.redis_cores, r.redis_us_per_op()) {
        line.push_str(&format!("  redis {cores:.2} cores {us:>5.1} us/op"));
    }
    if r.failed > 0 {
        line.push_str(&format!("  ({} failed)", r.failed));
    }
    println!("{line}");
}

impl Routing {
    fn route_ratio(&self) -> f64 {
        ratio(&self.route, &self.floor)
    }
    /// hush's own work around its Redis step: the route against the floor router doing the
    /// same step.
    fn route_vs_relay_floor(&self) -> f64 {
        ratio(&self.route, &self.relay_floor)
    }
    fn route_met(&self) -> bool {
        self.route_ratio() >= ROUTE_TARGET
    }
    fn hook_met(&self, r: &Rate) -> bool {
        ratio(r, &self.floor) >= WEBHOOK_TARGET
    }
    /// The call that connects by its route, which a PIN call is compared with.
    fn direct(&self) -> Option<&Rate> {
        self.hooks
            .iter()
            .find(|(h, _)| *h == Hook::TwilioVoice)
            .map(|(_, r)| r)
    }
    fn pin_vs_direct(&self) -> Option<f64> {
        self.direct().map(|d| ratio(&self.pin, d))
    }

    fn print(&self) {
        println!("routing (same concurrency; HTTP over keep-alive HTTP/1.1; latency per request)");
        rate_line("raw Redis GET", &self.raw, "");
        rate_line(
            "floor router",
            &self.floor,
            &format!("{:.2}x raw", ratio(&self.floor, &self.raw)),
        );
        rate_line(
            "relay floor",
            &self.relay_floor,
            &format!("{:.2}x floor", ratio(&self.relay_floor, &self.floor)),
        );
        rate_line(
            "hush POST /v1/route",
            &self.route,
            &format!(
                "{:.2}x floor, {:.2}x relay floor",
                self.route_ratio(),
                self.route_vs_relay_floor()
            ),
        );
        for (hook, r) in &self.hooks {
            rate_line(
                &format!("webhook {}", hook.name()),
                r,
                &format!(
                    "{:.2}x floor, {:.2}x relay floor",
                    ratio(r, &self.floor),
                    ratio(r, &self.relay_floor)
                ),
            );
            if *hook == Hook::TwilioVoice {
                rate_line(
                    "webhook twilio_pin",
                    &self.pin,
                    &format!("{:.2}x twilio_voice", ratio(&self.pin, r)),
                );
            }
        }
    }

    fn verdicts(&self) {
        println!(
            "routing     {:<8} route/floor {:.2} (target >= {ROUTE_TARGET:.2})",
            verdict(self.route_met()),
            self.route_ratio()
        );
        for (hook, r) in &self.hooks {
            println!(
                "webhooks    {:<8} {}/floor {:.2} (target >= {WEBHOOK_TARGET:.2})",
                verdict(self.hook_met(r)),
                hook.name(),
                ratio(r, &self.floor)
            );
        }
        println!(
            "relay step  {:<8} relay floor/floor {:.2}, route/relay floor {:.2} (no target)",
            "info",
            ratio(&self.relay_floor, &self.floor),
            self.route_vs_relay_floor()
        );
        if let Some(r) = self.pin_vs_direct() {
            println!(
                "PIN calls   {:<8} twilio_pin/twilio_voice {r:.2} (no target)",
                "info"
            );
        }
    }

    fn json(&self) -> serde_json::Value {
        let hooks: serde_json::Map<String, serde_json::Value> = self
            .hooks
            .iter()
            .map(|(hook, r)| {
                let mut v = r.json();
                v["vs_floor"] = ratio(r, &self.floor).into();
                v["vs_relay_floor"] = ratio(r, &self.relay_floor).into();
                v["met"] = self.hook_met(r).into();
                (hook.name().to_string(), v)
            })
            .collect();
        let mut pin = self.pin.json();
        pin["vs_direct"] = self.pin_vs_direct().into();
        pin["vs_floor"] = ratio(&self.pin, &self.floor).into();
        pin["target"] = serde_json::Value::Null;
        serde_json::json!({
            "raw_get": self.raw.json(),
            "floor": self.floor.json(),
            "relay_floor": self.relay_floor.json(),
            "route": self.route.json(),
            "floor_vs_raw": ratio(&self.floor, &self.raw),
            "relay_floor_vs_floor": ratio(&self.relay_floor, &self.floor),
            "route_vs_floor": self.route_ratio(),
            "route_vs_relay_floor": self.route_vs_relay_floor(),
            "route_target": ROUTE_TARGET,
            "route_met": self.route_met(),
            "webhooks": hooks,
            "webhook_target": WEBHOOK_TARGET,
            "webhooks_met": self.hooks.iter().all(|(_, r)| self.hook_met(r)),
            "twilio_pin": pin,
        })
    }
}

impl Report {
    fn print(&self, args: &BenchArgs, version: &str) {
        println!(
            "hush bench: {} s per measurement, concurrency {}, private redis-server {version}",
            args.seconds, args.concurrency
        );
        println!();
        if let Some(routing) = &self.routing {
            routing.print();
        }
        if let Some((small, large, sharded)) = &self.allocation {
            println!("allocation (Broker::create_session, new participant pairs)");
            rate_line(&format!("pool of {SMALL_POOL} numbers"), small, "");
            rate_line(
                &format!("pool of {LARGE_POOL} numbers"),
                large,
                &format!("{:.2}x", ratio(large, small)),
            );
            rate_line(
                &format!("{LARGE_POOL} over {} shards", allocation::SHARDS),
                sharded,
                &format!("{:.2}x one shard", ratio(sharded, large)),
            );
        }
        if let Some(memory) = &self.memory {
            println!(
                "memory ({} open sessions, pool of {SMALL_POOL}, Redis used_memory)",
                memory.sessions
            );
            println!(
                "  per open session         {:>8.0} B   {:.1} keys; naive layout about {MEMORY_NAIVE:.0} B",
                memory.bytes_per_session, memory.keys_per_session
            );
            println!(
                "  with deploy/redis.conf   {:>8.0} B   (its hash-max-listpack-* settings)",
                memory.tuned_bytes_per_session
            );
            println!(
                "  left by an ended session {:>8.0} B   (sticky memory, kept 30 days)",
                memory.ended_bytes_per_session
            );
            println!(
                "  per open PIN session     {:>8.0} B   {:.1} keys; {:.2}x a session with routes",
                memory.pin_bytes_per_session,
                memory.pin_keys_per_session,
                memory.pin_bytes_per_session / memory.bytes_per_session
            );
            if let Some(scale) = &memory.scale {
                println!(
                    "  {} sessions, pool of {} {:>4.0} B   {:.2} keys; {} of {} sampled calls routed right",
                    scale.sessions,
                    scale.numbers,
                    scale.bytes_per_session,
                    scale.keys_per_session,
                    scale.routed - scale.misrouted,
                    scale.routed
                );
            }
        }
        if let Some(events) = &self.events {
            events.print();
        }
        if let Some((without, with)) = &self.confirmed {
            println!(
                "confirmed writes (session creates, pool of {SMALL_POOL}, primary + 1 replica)"
            );
            rate_line("without WAIT", without, "");
            rate_line(
                "with WAIT 1",
                with,
                &format!("{:.2}x", ratio(with, without)),
            );
        }
        println!();
        if let Some(routing) = &self.routing {
            routing.verdicts();
        }
        if let Some((small, large, _)) = &self.allocation {
            let r = ratio(large, small);
            println!(
                "allocation  {:<8} {LARGE_POOL}/{SMALL_POOL} numbers {r:.2} (target >= {ALLOC_TARGET:.2})",
                verdict(r >= ALLOC_TARGET),
            );
        }
        if let Some(memory) = &self.memory {
            let b = memory.bytes_per_session;
            println!(
                "memory      {:<8} {b:.0} B per open session (target <= {MEMORY_TARGET:.0} B; limit {MEMORY_LIMIT:.0} B)",
                verdict(b <= MEMORY_TARGET),
            );
        }
        if let Some(events) = &self.events {
            events.verdict();
        }
    }

    fn json(&self, args: &BenchArgs) -> serde_json::Value {
        let allocation = self.allocation.as_ref().map(|(small, large, sharded)| {
            serde_json::json!({
                "pool_small": { "numbers": SMALL_POOL, "sessions": small.json() },
                "pool_large": { "numbers": LARGE_POOL, "sessions": large.json() },
                "pool_sharded": {
                    "numbers": LARGE_POOL,
                    "shards": allocation::SHARDS,
                    "sessions": sharded.json(),
                },
                "large_vs_small": ratio(large, small),
                "sharded_vs_large": ratio(sharded, large),
                "target": ALLOC_TARGET,
                "met": ratio(large, small) >= ALLOC_TARGET,
            })
        });
        let memory = self.memory.as_ref().map(|m| {
            serde_json::json!({
                "sessions": m.sessions,
                "bytes_per_session": m.bytes_per_session,
                "keys_per_session": m.keys_per_session,
                "tuned_bytes_per_session": m.tuned_bytes_per_session,
                "ended_bytes_per_session": m.ended_bytes_per_session,
                "pin_bytes_per_session": m.pin_bytes_per_session,
                "pin_keys_per_session": m.pin_keys_per_session,
                "scale": m.scale.as_ref().map(|s| serde_json::json!({
                    "sessions": s.sessions,
                    "numbers": s.numbers,
                    "bytes_per_session": s.bytes_per_session,
                    "keys_per_session": s.keys_per_session,
                    "routed": s.routed,
                    "misrouted": s.misrouted,
                })),
                "naive_bytes_per_session": MEMORY_NAIVE,
                "target_bytes": MEMORY_TARGET,
                "limit_bytes": MEMORY_LIMIT,
                "met": m.bytes_per_session <= MEMORY_TARGET,
            })
        });
        let confirmed = self.confirmed.as_ref().map(|(without, with)| {
            serde_json::json!({
                "without_wait": without.json(),
                "wait_1": with.json(),
                "wait_vs_without": ratio(with, without),
                "target": null,
            })
        });
        serde_json::json!({
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "routing": self.routing.as_ref().map(Routing::json),
            "allocation": allocation,
            "memory": memory,
            "events": self.events.as_ref().map(Events::json),
            "confirmed_writes": confirmed,
        })
    }
}
