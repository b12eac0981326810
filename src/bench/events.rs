//! Event delivery: how fast hush's delivery worker (in this process, as hush serves it) gets
//! `session.created` events to a local receiver, against the same number of POSTs, alike in
//! size and headers, sent straight to that receiver at the same concurrency before hush's runs
//! and again after them (the two summed). The target is
//! on the worker alone, draining events queued before it starts (what an app's ledger waits
//! on after a rush hour): at least half the direct rate and 10,000 events/s. The figure whose
//! clock also runs while the sessions are made is bound by making them, and has no target.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use hdrhistogram::Histogram;

use hush::broker::EventId;
use hush::domain::{PoolPolicy, SessionId};
use hush::events::signing::{self, SigningSecret};

use super::fixtures::{Participants, SMALL_POOL, bench_config, bench_pool_with, create_sessions};
use super::load::{Latency, histogram};

/// The worker alone on queued events must reach this share of direct POSTs, and this rate.
const TARGET_VS_DIRECT: f64 = 0.5;
const TARGET_PER_SEC: f64 = 10_000.0;
/// Events each run of the delivery measurement sends: at 20,000/s, a second of steady
/// delivery rather than the start-up of the worker and its connections.
pub(super) const EVENTS: u64 = 20_000;
/// The longest the delivery measurement waits for its events to arrive.
const EVENTS_WAIT: Duration = Duration::from_secs(60);
/// How the local receiver tells a `session.created` event from other events (`pool.low`).
const CREATED_MARK: &[u8] = br#""type":"session.created""#;

/// What the local receiver has been sent.
#[derive(Default)]
struct Received {
    /// Every POST, `pool.low` events included.
    posts: AtomicU64,
    /// `session.created` events, and their bodies' bytes.
    created: AtomicU64,
    created_bytes: AtomicU64,
    /// While hush delivers: each `session.created` event's age on arrival (from the
    /// `timestamp` hush wrote into it, which has millisecond precision), in µs.
    ages: Mutex<Option<Histogram<u64>>>,
}

impl Received {
    fn created(&self) -> (u64, u64) {
        // `created` is counted last, so the bytes of every event counted are in.
        let n = self.created.load(Ordering::SeqCst);
        (n, self.created_bytes.load(Ordering::SeqCst))
    }
}

/// The local receiver: a 200 for every POST, and a count.
async fn receive(State(counts): State<Arc<Received>>, body: Bytes) -> StatusCode {
    counts.posts.fetch_add(1, Ordering::SeqCst);
    if body.windows(CREATED_MARK.len()).any(|w| w == CREATED_MARK) {
        if let Some(ages) = counts.ages.lock().expect("lock poisoned").as_mut()
            && let Some(age) = age_us(&body)
        {
            ages.saturating_record(age.max(1));
        }
        counts
            .created_bytes
            .fetch_add(body.len() as u64, Ordering::SeqCst);
        counts.created.fetch_add(1, Ordering::SeqCst);
    }
    StatusCode::OK
}

/// Microseconds since the `timestamp` of an event body.
fn age_us(body: &[u8]) -> Option<u64> {
    const MARK: &[u8] = br#""timestamp":""#;
    let at = body.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let end = at + body[at..].iter().position(|&b| b == b'"')?;
    let stamp = std::str::from_utf8(&body[at..end]).ok()?;
    let made =
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    let age = time::OffsetDateTime::now_utc() - made;
    u64::try_from(age.whole_microseconds()).ok()
}

/// One way of getting [`EVENTS`] events to the receiver.
#[derive(Clone, Copy)]
pub(super) struct Delivered {
    /// `session.created` events that arrived (within [`EVENTS_WAIT`]).
    pub(super) arrived: u64,
    /// POSTs that got no 200 (direct POSTs only; hush retries on its schedule).
    pub(super) failed: u64,
    pub(super) secs: f64,
    body_bytes: u64,
    pub(super) timed_out: bool,
    /// Direct POSTs: each POST's round trip. hush: each event's age on arrival.
    pub(super) latency: Latency,
}

impl Delivered {
    pub(super) fn per_sec(&self) -> f64 {
        self.arrived as f64 / self.secs
    }
    pub(super) fn mean_body(&self) -> f64 {
        self.body_bytes as f64 / self.arrived.max(1) as f64
    }
}

pub(super) struct Events {
    pub(super) direct: Delivered,
    pub(super) hush: Delivered,
    /// Seconds the sessions took to create; part of `hush.secs`.
    pub(super) create_secs: f64,
    /// hush's worker alone: the events were queued before it started, so the clock runs
    /// from its start to the last arrival and creating sessions is not part of the figure.
    pub(super) backlog: Delivered,
}

/// Direct POSTs, then hush's delivery worker, to one local receiver.
pub(super) async fn events(url: &str, concurrency: usize) -> anyhow::Result<Events> {
    let counts = Arc::new(Received::default());
    let app = axum::Router::new()
        .route("/events", axum::routing::post(receive))
        .with_state(counts.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let target = format!("http://{}/events", listener.local_addr()?);
    let token = CancellationToken::new();
    let serve = axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned());
    let receiver = tokio::spawn(async move { serve.await });

    let measured = async {
        // Direct POSTs before and after hush's runs, summed: the machine's load drifts over
        // the seconds between, and the baseline should be the load hush met.
        let mut direct = DirectPosts::default();
        direct_posts(&target, &counts, concurrency, &mut direct).await?;
        // hush stops before the receiver does, so its last attempts find it answering.
        let (hush, create_secs) = hush_delivery(
            url,
            &target,
            &counts,
            concurrency,
            Start::WithCreation,
            token.child_token(),
        )
        .await?;
        let (backlog, _) = hush_delivery(
            url,
            &target,
            &counts,
            concurrency,
            Start::AfterCreation,
            token.child_token(),
        )
        .await?;
        direct_posts(&target, &counts, concurrency, &mut direct).await?;
        Ok(Events {
            direct: direct.delivered(),
            hush,
            create_secs,
            backlog,
        })
    }
    .await;

    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), receiver).await;
    measured
}

/// Runs of direct POSTs, summed.
struct DirectPosts {
    arrived: u64,
    failed: u64,
    secs: f64,
    body_bytes: u64,
    latency: Histogram<u64>,
}

impl Default for DirectPosts {
    fn default() -> Self {
        DirectPosts {
            arrived: 0,
            failed: 0,
            secs: 0.0,
            body_bytes: 0,
            latency: histogram(),
        }
    }
}

impl DirectPosts {
    fn delivered(&self) -> Delivered {
        Delivered {
            arrived: self.arrived,
            failed: self.failed,
            secs: self.secs,
            body_bytes: self.body_bytes,
            timed_out: false,
            latency: Latency::of(&self.latency),
        }
    }
}

/// [`EVENTS`] POSTs straight to the receiver from `concurrency` callers sharing one client
/// built as hush's delivery client is, each with a body like a `session.created` event and
/// freshly signed Standard Webhooks headers; added to `sum`.
async fn direct_posts(
    target: &str,
    counts: &Received,
    concurrency: usize,
    sum: &mut DirectPosts,
) -> anyhow::Result<()> {
    let client = hush::events::ssrf::client(true, hush::events::delivery::ATTEMPT_TIMEOUT);
    let secret = Arc::new(SigningSecret::generate());
    // One untimed POST first: the bench must time deliveries, not refusals.
    let status = signed_post(&client, target, &secret)
        .await
        .with_context(|| format!("cannot POST to the local receiver at {target}"))?;
    if status != 200 {
        bail!("the local receiver answered {status}");
    }
    let (base, base_bytes) = counts.created();
    let left = Arc::new(AtomicU64::new(EVENTS));
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (client, secret, left, target) = (
            client.clone(),
            secret.clone(),
            left.clone(),
            target.to_string(),
        );
        workers.spawn(async move {
            let mut failed = 0u64;
            let mut latency = histogram();
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let started = Instant::now();
                if matches!(signed_post(&client, &target, &secret).await, Ok(200)) {
                    latency.saturating_record((started.elapsed().as_micros() as u64).max(1));
                } else {
                    failed += 1;
                }
            }
            (failed, latency)
        });
    }
    while let Some(done) = workers.join_next().await {
        let (f, l) = done.context("bench worker panicked")?;
        sum.failed += f;
        sum.latency.add(&l).context("merging latency histograms")?;
    }
    // Every answer is in, and the receiver counts before it answers.
    sum.secs += start.elapsed().as_secs_f64();
    let (n, bytes) = counts.created();
    sum.arrived += n - base;
    sum.body_bytes += bytes - base_bytes;
    Ok(())
}

/// One POST the way hush's delivery worker sends one: JSON body, `webhook-id`,
/// `webhook-timestamp` and `webhook-signature`.
async fn signed_post(
    client: &reqwest::Client,
    target: &str,
    secret: &SigningSecret,
) -> reqwest::Result<u16> {
    let session = SessionId::new(1, 0);
    let id = EventId {
        pool_id: 1,
        shard: 0,
        key: SessionId::new(1, 0).key(),
    }
    .to_string();
    let body = serde_json::json!({
        "type": "session.created",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "data": {
            "session_id": session.to_string(),
            "pool": "bench",
            "proxy_number": "+12122000000",
            "mode": "voice",
            "participants": [{ "label": null }, { "label": null }],
            "expires_at": "2026-01-01T01:00:00.000Z",
            "metadata": {},
        },
    })
    .to_string();
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let signature = signing::sign(&[secret], &id, timestamp, body.as_bytes());
    let response = client
        .post(target)
        .header("content-type", "application/json")
        .header(signing::ID_HEADER, id)
        .header(signing::TIMESTAMP_HEADER, timestamp.to_string())
        .header(signing::SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await?;
    Ok(response.status().as_u16())
}

/// When the clock of a hush measurement starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// At the first creation, hush serving already: events are delivered as they are made.
    WithCreation,
    /// When hush starts, every event already queued: the worker alone is timed.
    AfterCreation,
}

/// hush, in this process as it serves, with a pool whose `callback_url` is the receiver:
/// [`EVENTS`] sessions are created as fast as `concurrency` callers can, and the clock runs
/// from `start` until the receiver holds all their `session.created` events.
/// Returns the delivery and the seconds the creations took.
async fn hush_delivery(
    url: &str,
    target: &str,
    counts: &Received,
    concurrency: usize,
    start: Start,
    shutdown: CancellationToken,
) -> anyhow::Result<(Delivered, f64)> {
    let mut config = bench_config(url, "events");
    config.callback_allow_private = true;
    let broker = hush::build_broker(&config)?;
    let policy = PoolPolicy {
        callback_url: Some(target.to_string()),
        ..Default::default()
    };
    let pool = bench_pool_with(&broker, SMALL_POOL, &policy).await?;
    let people = Arc::new(Participants::default());
    let (base, base_bytes) = counts.created();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let create = || async {
        let began = Instant::now();
        create_sessions(&broker, &pool, &people, EVENTS, concurrency)
            .await
            .context("creating the sessions")?;
        anyhow::Ok(began.elapsed().as_secs_f64())
    };
    let created_before = match start {
        Start::AfterCreation => Some(create().await?),
        Start::WithCreation => None,
    };
    *counts.ages.lock().expect("lock poisoned") = Some(histogram());
    let mut server = tokio::spawn(hush::run(config, listener, shutdown.clone()));

    let measured = async {
        let start = Instant::now();
        let create_secs = match created_before {
            Some(secs) => secs,
            None => create().await?,
        };
        let arrived_all = tokio::select! {
            all = arrival(counts, base + EVENTS, start + EVENTS_WAIT) => all,
            ended = &mut server => bail!(
                "hush stopped before its events were delivered: {}",
                match ended {
                    Ok(Ok(())) => "without an error".to_string(),
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(e) => e.to_string(),
                }
            ),
        };
        let secs = start.elapsed().as_secs_f64();
        let (n, bytes) = counts.created();
        let ages = counts.ages.lock().expect("lock poisoned").take();
        Ok((
            Delivered {
                arrived: n - base,
                failed: 0,
                secs,
                body_bytes: bytes - base_bytes,
                timed_out: !arrived_all,
                latency: ages.as_ref().map(Latency::of).unwrap_or_default(),
            },
            create_secs,
        ))
    }
    .await;

    shutdown.cancel();
    if !server.is_finished() {
        match tokio::time::timeout(Duration::from_secs(15), server).await {
            Ok(Ok(Err(e))) => return Err(e.context("hush server failed")),
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context("hush server panicked")),
            _ => {}
        }
    }
    measured
}

/// Waits until the receiver holds `want` `session.created` events (true), or until
/// `deadline` (false).
async fn arrival(counts: &Received, want: u64, deadline: Instant) -> bool {
    loop {
        if counts.created.load(Ordering::SeqCst) >= want {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl Events {
    fn hush_ratio(&self) -> f64 {
        self.hush.per_sec() / self.direct.per_sec()
    }
    fn backlog_ratio(&self) -> f64 {
        self.backlog.per_sec() / self.direct.per_sec()
    }

    pub(super) fn print(&self) {
        let (direct, hush, backlog) = (&self.direct, &self.hush, &self.backlog);
        println!(
            "event delivery ({EVENTS} session.created events to a local receiver, signed, same concurrency)"
        );
        println!(
            "  {:<24} {:>8.0} /s  {:<22} {}   (round trip; before and after hush){}",
            "direct reqwest POSTs",
            direct.per_sec(),
            format!("{:.0} B bodies", direct.mean_body()),
            direct.latency.columns(),
            if direct.failed > 0 {
                format!("   ({} failed)", direct.failed)
            } else {
                String::new()
            }
        );
        for (label, d, note) in [
            (
                "hush delivery worker",
                hush,
                format!(
                    "(age on arrival); {:.2} s to create the sessions, {:.2} s in all",
                    self.create_secs, hush.secs
                ),
            ),
            (
                "hush worker, queued",
                backlog,
                "(age on arrival; events queued before the worker started)".to_string(),
            ),
        ] {
            if d.timed_out {
                println!(
                    "  {label:<24} timed out: {} of {EVENTS} events arrived in {:.0} s",
                    d.arrived, d.secs
                );
            } else {
                println!(
                    "  {label:<24} {:>8.0} /s  {:<22} {}   {note}",
                    d.per_sec(),
                    format!("{:.4}x direct", d.per_sec() / direct.per_sec()),
                    d.latency.columns(),
                );
            }
        }
    }

    /// Whether the worker alone met both parts of the target.
    fn met(&self) -> bool {
        !self.backlog.timed_out
            && self.backlog_ratio() >= TARGET_VS_DIRECT
            && self.backlog.per_sec() >= TARGET_PER_SEC
    }

    pub(super) fn verdict(&self) {
        if self.hush.timed_out || self.backlog.timed_out {
            println!(
                "events      {:<8} {} and {} of {EVENTS} events delivered",
                "TIMEOUT", self.hush.arrived, self.backlog.arrived
            );
        } else {
            println!(
                "events      {:<8} queued/direct {:.2}, {:.0} events/s (target >= {TARGET_VS_DIRECT:.2} and >= {TARGET_PER_SEC:.0}/s)",
                if self.met() { "MET" } else { "MISSED" },
                self.backlog_ratio(),
                self.backlog.per_sec()
            );
        }
    }

    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "events": EVENTS,
            "direct": {
                "per_sec": self.direct.per_sec(),
                "failed": self.direct.failed,
                "secs": self.direct.secs,
                "mean_body_bytes": self.direct.mean_body(),
                "latency": self.direct.latency.json(),
            },
            "hush": {
                "per_sec": self.hush.per_sec(),
                "delivered": self.hush.arrived,
                "secs": self.hush.secs,
                "create_secs": self.create_secs,
                "mean_body_bytes": self.hush.mean_body(),
                "timed_out": self.hush.timed_out,
                "latency": self.hush.latency.json(),
            },
            "hush_vs_direct": self.hush_ratio(),
            "queued": {
                "per_sec": self.backlog.per_sec(),
                "delivered": self.backlog.arrived,
                "secs": self.backlog.secs,
                "timed_out": self.backlog.timed_out,
                "latency": self.backlog.latency.json(),
            },
            "queued_vs_direct": self.backlog_ratio(),
            "target": { "queued_vs_direct": TARGET_VS_DIRECT, "queued_per_sec": TARGET_PER_SEC },
            "met": self.met(),
            "verdict": if self.hush.timed_out || self.backlog.timed_out {
                "timeout"
            } else {
                "measured"
            },
        })
    }
}
