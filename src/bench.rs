//! `hush bench`: measures hush's performance targets (docs/architecture.md) as ratios against baselines
//! taken in the same run, on the same machine, against a private `redis-server` that the
//! bench starts on a free port and kills at the end (never the Redis of a deployment).
//!
//! - Routing: `POST /v1/route` through a hush server in this process, against raw Redis GETs
//!   (one connection per caller, one GET in flight each) and against a minimal axum handler
//!   doing one GET, all at the same concurrency. Both HTTP servers get the same requests from
//!   the same small keep-alive HTTP/1.1 client, so client cost is equal. The three are measured
//!   in turns, a slice at a time, so a change in the machine's load touches all alike.
//! - Allocation: `Broker::create_session` throughput with a pool of 10,000 numbers against
//!   a pool of 100, also in turns. Every session gets two participants never seen before, so
//!   no pool runs out.
//! - Memory: Redis `used_memory` growth per open session.
//! - Event delivery: how fast hush's delivery worker (in this process, as hush serves it)
//!   gets `session.created` events to a local receiver, against the same number of POSTs,
//!   alike in size and headers, sent straight to that receiver at the same concurrency. A
//!   figure without a target.
//!
//! A missed target is reported, not fatal: this is a measurement.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use hush::broker::{Broker, EventId, NewSession, Participant};
use hush::config::{Config, Secret};
use hush::domain::{E164, Mode, PoolName, PoolPolicy, SessionId};
use hush::events::signing::{self, SigningSecret};

/// Routing throughput must reach this share of raw Redis GET throughput.
const ROUTE_TARGET: f64 = 0.5;
/// Allocation with 10,000 numbers must reach this share of allocation with 100.
const ALLOC_TARGET: f64 = 0.8;
/// Redis bytes per open session: the limit, and the aim.
const MEMORY_LIMIT: f64 = 1024.0;
const MEMORY_AIM: f64 = 512.0;
/// Memory of a naive layout (two route strings with TTL, an expiry entry, a session hash), for context.
const MEMORY_NAIVE: f64 = 1100.0;

const ROUTE_NUMBERS: usize = 20;
const ROUTE_SESSIONS: usize = 200;
const SMALL_POOL: usize = 100;
const LARGE_POOL: usize = 10_000;
const MEMORY_SESSIONS: u64 = 20_000;
/// Events the delivery measurement sends, each way.
const EVENTS: u64 = 3_000;
/// The longest the delivery measurement waits for its events to arrive.
const EVENTS_WAIT: Duration = Duration::from_secs(60);
/// How the local receiver tells a `session.created` event from other events (`pool.low`).
const CREATED_MARK: &[u8] = br#""type":"session.created""#;
/// Each measurement is split into this many slices, taken in turns with the measurement it
/// is compared with.
const ROUNDS: u32 = 3;
/// Untimed time before each slice: connections open, caches fill.
const WARMUP: Duration = Duration::from_millis(500);

/// Proxy numbers come from these area codes, participants from others.
const PROXY_AREAS: [&str; 2] = ["212", "646"];
const PARTICIPANT_AREAS: [&str; 2] = ["415", "312"];

/// A stand-in for a route record: the value the raw and minimal baselines GET.
const BASELINE_KEY: &str = "bench:baseline";
const BASELINE_VALUE: &str = "s0123456789abcdef|v|1767225600000|1767229200000|\
                              c2VhbGVkLW51bWJlci1zdGFuZC1pbi1mb3ItdGhlLWJlbmNo";

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
    let (raw, minimal, route) = routing(&redis.url, c, slice).await?;

    progress(args, "allocation: pools of 100 and 10000 numbers");
    redis.flush().await?;
    let (small, large) = allocation(&redis.url, c, slice).await?;

    progress(args, "memory: open sessions");
    redis.flush().await?;
    let memory = memory(redis, c).await?;
    redis.flush().await?;

    progress(
        args,
        &format!("event delivery: {EVENTS} events, direct POSTs and hush's delivery worker"),
    );
    let events = events(&redis.url, c).await?;
    redis.flush().await?;

    Ok(Report {
        raw,
        minimal,
        route,
        small,
        large,
        memory,
        events,
    })
}

// ---- the private Redis

struct PrivateRedis {
    child: Child,
    dir: PathBuf,
    url: String,
    version: String,
}

impl PrivateRedis {
    async fn start() -> anyhow::Result<PrivateRedis> {
        let dir = std::env::temp_dir().join(format!(
            "hush-bench-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        match Self::spawn(&dir).await {
            Ok((child, url, version)) => Ok(PrivateRedis {
                child,
                dir,
                url,
                version,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn spawn(dir: &Path) -> anyhow::Result<(Child, String, String)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = Command::new("redis-server")
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context(
                "cannot start redis-server; install it (e.g. `apt-get install redis-server`)",
            )?;
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str())?;
        for _ in 0..100 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && let Ok(info) = redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut c)
                    .await
            {
                let version = info_field(&info, "redis_version").unwrap_or_default();
                return Ok((child, url, version));
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "redis-server exited ({status}); see {}",
                    dir.join("redis.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill().await;
        bail!("redis-server did not answer on port {port}")
    }

    /// A connection for housekeeping; a FLUSHALL of a large dataset takes a while.
    async fn conn(&self) -> anyhow::Result<MultiplexedConnection> {
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
        Ok(redis::Client::open(self.url.as_str())?
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    async fn flush(&self) -> anyhow::Result<()> {
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut self.conn().await?)
            .await
            .context("FLUSHALL on the private Redis")?;
        Ok(())
    }

    /// `(used_memory, keys)`.
    async fn usage(&self) -> anyhow::Result<(u64, u64)> {
        let mut c = self.conn().await?;
        let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await?;
        let used = info_field(&info, "used_memory")
            .and_then(|v| v.parse().ok())
            .context("INFO memory without used_memory")?;
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut c).await?;
        Ok((used, keys))
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

// ---- timing

/// The timed part of a run: operations that complete inside it count.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    to: Instant,
}

impl Window {
    fn after_warmup(length: Duration) -> Window {
        let from = Instant::now() + WARMUP;
        Window {
            from,
            to: from + length,
        }
    }
    fn running(&self) -> bool {
        Instant::now() < self.to
    }
}

#[derive(Clone, Copy, Default)]
struct Tally {
    ok: u64,
    failed: u64,
}

impl Tally {
    fn record(&mut self, window: &Window, ok: bool) {
        let t = Instant::now();
        if t >= window.from && t < window.to {
            if ok {
                self.ok += 1;
            } else {
                self.failed += 1;
            }
        }
    }
}

/// Operations per second and failures of one measurement.
#[derive(Clone, Copy)]
struct Rate {
    per_sec: f64,
    failed: u64,
}

/// The timed slices of one measurement, summed over the rounds.
#[derive(Clone, Copy, Default)]
struct Samples {
    tally: Tally,
    secs: f64,
}

impl Samples {
    /// Waits for the workers of one slice and adds what they counted.
    async fn add(
        &mut self,
        mut workers: JoinSet<anyhow::Result<Tally>>,
        window: Window,
    ) -> anyhow::Result<()> {
        while let Some(done) = workers.join_next().await {
            let t = done.context("bench worker panicked")??;
            self.tally.ok += t.ok;
            self.tally.failed += t.failed;
        }
        self.secs += (window.to - window.from).as_secs_f64();
        Ok(())
    }

    fn rate(&self, what: &str) -> anyhow::Result<Rate> {
        if self.tally.ok == 0 {
            bail!(
                "{what}: no operation succeeded ({} failed)",
                self.tally.failed
            );
        }
        Ok(Rate {
            per_sec: self.tally.ok as f64 / self.secs,
            failed: self.tally.failed,
        })
    }
}

// ---- routing

/// Raw GETs, the minimal server and hush, measured in turns so that a change in the
/// machine's load during the run touches all three alike.
async fn routing(
    url: &str,
    concurrency: usize,
    slice: Duration,
) -> anyhow::Result<(Rate, Rate, Rate)> {
    let client = redis::Client::open(url)?;
    let mut setup = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("SET")
        .arg(BASELINE_KEY)
        .arg(BASELINE_VALUE)
        .query_async(&mut setup)
        .await?;

    // The minimal server: it gets the very requests hush gets and answers each with one GET
    // over one shared multiplexed connection, as hush's store has.
    let app = axum::Router::new()
        .route("/v1/route", axum::routing::post(minimal_get))
        .with_state(client.get_multiplexed_async_connection().await?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let minimal_addr = listener.local_addr()?;
    let token = CancellationToken::new();
    let serve = axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned());
    let minimal_server = tokio::spawn(async move { serve.await });

    // hush, in this process, routing calls of open sessions.
    let config = bench_config(url, "route");
    let broker = hush::build_broker(&config)?;
    let pool = bench_pool(&broker, ROUTE_NUMBERS).await?;
    let key = hush::create_api_key(&config, "bench", &["admin"]).await?;
    let people = Participants::default();
    let mut requests = Vec::with_capacity(2 * ROUTE_SESSIONS);
    for _ in 0..ROUTE_SESSIONS {
        let (a, b) = people.pair();
        let view = broker.create_session(new_session(&pool, &a, &b)).await?;
        requests.push(route_request(&key, a.reveal(), &view.proxy_number));
        requests.push(route_request(&key, b.reveal(), &view.proxy_number));
    }
    let requests = Arc::new(requests);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let hush_addr = listener.local_addr()?;
    let hush_server = tokio::spawn(hush::run(config, listener, token.clone()));

    let measured = async {
        // One call first: the bench must time connected calls, not refusals.
        let mut http = Http::connect(hush_addr).await?;
        let (status, body) = http.send(&requests[0]).await?;
        if status != 200 || !String::from_utf8_lossy(body).contains("\"connect\"") {
            bail!(
                "hush answered a route with {status}: {}",
                String::from_utf8_lossy(body)
            );
        }
        drop(http);
        let (mut raw, mut minimal, mut route) = Default::default();
        for _ in 0..ROUNDS {
            let (w, window) = raw_get(&client, concurrency, slice).await?;
            Samples::add(&mut raw, w, window).await?;
            let (w, window) = drive_http(minimal_addr, &requests, concurrency, slice);
            Samples::add(&mut minimal, w, window).await?;
            let (w, window) = drive_http(hush_addr, &requests, concurrency, slice);
            Samples::add(&mut route, w, window).await?;
        }
        Ok((
            raw.rate("raw Redis GET")?,
            minimal.rate("minimal axum handler")?,
            route.rate("hush POST /v1/route")?,
        ))
    }
    .await;

    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), minimal_server).await;
    match tokio::time::timeout(Duration::from_secs(10), hush_server).await {
        Ok(Ok(Err(e))) => return Err(e.context("hush server failed")),
        Ok(Err(e)) => return Err(anyhow::Error::new(e).context("hush server panicked")),
        _ => {}
    }
    measured
}

/// GETs of one small key, one connection per caller, each caller waiting for its reply.
async fn raw_get(
    client: &redis::Client,
    concurrency: usize,
    slice: Duration,
) -> anyhow::Result<(JoinSet<anyhow::Result<Tally>>, Window)> {
    let mut conns = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        conns.push(client.get_multiplexed_async_connection().await?);
    }
    let window = Window::after_warmup(slice);
    let mut workers = JoinSet::new();
    for mut conn in conns {
        workers.spawn(async move {
            let mut tally = Tally::default();
            while window.running() {
                let got: redis::RedisResult<Option<String>> = redis::cmd("GET")
                    .arg(BASELINE_KEY)
                    .query_async(&mut conn)
                    .await;
                tally.record(&window, matches!(got, Ok(Some(_))));
            }
            Ok(tally)
        });
    }
    Ok((workers, window))
}

async fn minimal_get(State(conn): State<MultiplexedConnection>, _body: Bytes) -> Response {
    let mut conn = conn.clone();
    match redis::cmd("GET")
        .arg(BASELINE_KEY)
        .query_async::<Option<String>>(&mut conn)
        .await
    {
        Ok(Some(v)) => (StatusCode::OK, v).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

fn route_request(key: &str, from: &str, to: &str) -> Vec<u8> {
    let body = serde_json::json!({ "from": from, "to": to, "kind": "voice" }).to_string();
    format!(
        "POST /v1/route HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `concurrency` keep-alive connections, each sending the requests in turn from its own
/// starting point; a 200 counts.
fn drive_http(
    addr: SocketAddr,
    requests: &Arc<Vec<Vec<u8>>>,
    concurrency: usize,
    slice: Duration,
) -> (JoinSet<anyhow::Result<Tally>>, Window) {
    let window = Window::after_warmup(slice);
    let mut workers = JoinSet::new();
    for w in 0..concurrency {
        let requests = requests.clone();
        workers.spawn(async move {
            let mut tally = Tally::default();
            let mut http = Http::connect(addr).await?;
            let mut i = w * 7919;
            while window.running() {
                if http.closed {
                    http = Http::connect(addr).await?;
                }
                let req = &requests[i % requests.len()];
                i += 1;
                let ok = matches!(http.send(req).await, Ok((200, _)));
                tally.record(&window, ok);
            }
            Ok(tally)
        });
    }
    (workers, window)
}

/// A minimal HTTP/1.1 keep-alive client: the least client work per request, the same for
/// every server measured.
struct Http {
    stream: BufReader<TcpStream>,
    line: Vec<u8>,
    body: Vec<u8>,
    closed: bool,
}

impl Http {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Http> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Http {
            stream: BufReader::new(stream),
            line: Vec::with_capacity(128),
            body: Vec::with_capacity(512),
            closed: false,
        })
    }

    /// Sends one request; returns the status and the body.
    async fn send(&mut self, request: &[u8]) -> std::io::Result<(u16, &[u8])> {
        let r = self.exchange(request).await;
        if r.is_err() {
            self.closed = true;
        }
        let status = r?;
        Ok((status, &self.body))
    }

    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<u16> {
        use std::io::{Error, ErrorKind};
        let bad = |what: &str| Error::new(ErrorKind::InvalidData, what.to_string());
        self.stream.get_mut().write_all(request).await?;
        self.line.clear();
        if self.stream.read_until(b'\n', &mut self.line).await? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        let status = self
            .line
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| bad("malformed status line"))?;
        let mut length = None;
        loop {
            self.line.clear();
            if self.stream.read_until(b'\n', &mut self.line).await? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            let line = self.line.trim_ascii_end();
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(bad("malformed header"));
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok());
            } else if name.eq_ignore_ascii_case(b"connection")
                && value.eq_ignore_ascii_case(b"close")
            {
                self.closed = true;
            }
        }
        let length = length.ok_or_else(|| bad("response without Content-Length"))?;
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).await?;
        Ok(status)
    }
}

// ---- allocation and memory

fn bench_config(url: &str, what: &str) -> Config {
    Config {
        redis_url: url.to_string(),
        redis_prefix: format!("bench-{what}-{:08x}", rand::random::<u32>()),
        index_key: Some(Secret::new(rand::random())),
        data_keys: vec![Secret::new(rand::random())],
        ..Config::default()
    }
}

/// `count` valid proxy numbers, the same on every call.
fn proxy_numbers(count: usize) -> Vec<String> {
    PROXY_AREAS
        .iter()
        .flat_map(|area| (2_000_000..10_000_000u32).map(move |n| format!("+1{area}{n}")))
        .filter(|n| E164::parse(n).is_ok())
        .take(count)
        .collect()
}

/// Creates pool `bench` with `size` numbers, added in chunks of 1000 side by side.
async fn bench_pool(broker: &Broker, size: usize) -> anyhow::Result<PoolName> {
    bench_pool_with(broker, size, &PoolPolicy::default()).await
}

/// [`bench_pool`] with a policy of its own.
async fn bench_pool_with(
    broker: &Broker,
    size: usize,
    policy: &PoolPolicy,
) -> anyhow::Result<PoolName> {
    let pool = PoolName::parse("bench").context("pool name")?;
    broker.put_pool(&pool, policy).await?;
    let numbers = proxy_numbers(size);
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
        bail!("pool `bench` got {added} numbers of {size}");
    }
    Ok(pool)
}

/// Hands out participant pairs that never repeat a number, so every pair is new and no
/// participant holds more than one number: the pool never runs out.
#[derive(Default)]
struct Participants {
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
    fn pair(&self) -> (E164, E164) {
        (
            self.one(PARTICIPANT_AREAS[0]),
            self.one(PARTICIPANT_AREAS[1]),
        )
    }
}

fn new_session(pool: &PoolName, a: &E164, b: &E164) -> NewSession {
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
    }
}

/// Session creation with a pool of 100 numbers and one of 10,000, measured in turns.
async fn allocation(
    url: &str,
    concurrency: usize,
    slice: Duration,
) -> anyhow::Result<(Rate, Rate)> {
    let mut pools = Vec::new();
    for size in [SMALL_POOL, LARGE_POOL] {
        let broker = hush::build_broker(&bench_config(url, "alloc"))?;
        let pool = bench_pool(&broker, size).await?;
        pools.push((broker, pool, Arc::new(Participants::default())));
    }
    let mut samples = [Samples::default(); 2];
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
                        let made = broker.create_session(new_session(&pool, &a, &b)).await;
                        tally.record(&window, made.is_ok());
                    }
                    Ok(tally)
                });
            }
            samples.add(workers, window).await?;
        }
    }
    Ok((
        samples[0].rate("allocation, pool of 100")?,
        samples[1].rate("allocation, pool of 10000")?,
    ))
}

struct Memory {
    sessions: u64,
    bytes_per_session: f64,
    keys_per_session: f64,
}

async fn memory(redis: &PrivateRedis, concurrency: usize) -> anyhow::Result<Memory> {
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

async fn create_sessions(
    broker: &Broker,
    pool: &PoolName,
    people: &Arc<Participants>,
    count: u64,
    concurrency: usize,
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
                broker.create_session(new_session(&pool, &a, &b)).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done.context("bench worker panicked")??;
    }
    Ok(())
}

// ---- event delivery

/// What the local receiver has been sent.
#[derive(Default)]
struct Received {
    /// Every POST, `pool.low` events included.
    posts: AtomicU64,
    /// `session.created` events, and their bodies' bytes.
    created: AtomicU64,
    created_bytes: AtomicU64,
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
        counts
            .created_bytes
            .fetch_add(body.len() as u64, Ordering::SeqCst);
        counts.created.fetch_add(1, Ordering::SeqCst);
    }
    StatusCode::OK
}

/// One way of getting [`EVENTS`] events to the receiver.
#[derive(Clone, Copy)]
struct Delivered {
    /// `session.created` events that arrived (within [`EVENTS_WAIT`]).
    arrived: u64,
    /// POSTs that got no 200 (direct POSTs only; hush retries on its schedule).
    failed: u64,
    secs: f64,
    body_bytes: u64,
    timed_out: bool,
}

impl Delivered {
    fn per_sec(&self) -> f64 {
        self.arrived as f64 / self.secs
    }
    fn mean_body(&self) -> f64 {
        self.body_bytes as f64 / self.arrived.max(1) as f64
    }
}

struct Events {
    direct: Delivered,
    hush: Delivered,
    /// Seconds the sessions took to create; part of `hush.secs`.
    create_secs: f64,
}

/// Direct POSTs, then hush's delivery worker, to one local receiver.
async fn events(url: &str, concurrency: usize) -> anyhow::Result<Events> {
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
        let direct = direct_posts(&target, &counts, concurrency).await?;
        // hush stops before the receiver does, so its last attempts find it answering.
        let (hush, create_secs) =
            hush_delivery(url, &target, &counts, concurrency, token.child_token()).await?;
        Ok(Events {
            direct,
            hush,
            create_secs,
        })
    }
    .await;

    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), receiver).await;
    measured
}

/// [`EVENTS`] POSTs straight to the receiver from `concurrency` callers sharing one client
/// built as hush's delivery client is, each with a body like a `session.created` event and
/// freshly signed Standard Webhooks headers.
async fn direct_posts(
    target: &str,
    counts: &Received,
    concurrency: usize,
) -> anyhow::Result<Delivered> {
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
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                if !matches!(signed_post(&client, &target, &secret).await, Ok(200)) {
                    failed += 1;
                }
            }
            failed
        });
    }
    let mut failed = 0;
    while let Some(done) = workers.join_next().await {
        failed += done.context("bench worker panicked")?;
    }
    // Every answer is in, and the receiver counts before it answers.
    let secs = start.elapsed().as_secs_f64();
    let (n, bytes) = counts.created();
    Ok(Delivered {
        arrived: n - base,
        failed,
        secs,
        body_bytes: bytes - base_bytes,
        timed_out: false,
    })
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

/// hush, in this process as it serves, with a pool whose `callback_url` is the receiver:
/// [`EVENTS`] sessions are created as fast as `concurrency` callers can, and the clock runs
/// from the first creation until the receiver holds all their `session.created` events.
/// Returns the delivery and the seconds the creations took.
async fn hush_delivery(
    url: &str,
    target: &str,
    counts: &Received,
    concurrency: usize,
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
    let mut server = tokio::spawn(hush::run(config, listener, shutdown.clone()));

    let measured = async {
        let start = Instant::now();
        create_sessions(&broker, &pool, &people, EVENTS, concurrency)
            .await
            .context("creating the sessions")?;
        let create_secs = start.elapsed().as_secs_f64();
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
        Ok((
            Delivered {
                arrived: n - base,
                failed: 0,
                secs,
                body_bytes: bytes - base_bytes,
                timed_out: !arrived_all,
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

// ---- the report

struct Report {
    raw: Rate,
    minimal: Rate,
    route: Rate,
    small: Rate,
    large: Rate,
    memory: Memory,
    events: Events,
}

impl Report {
    fn route_ratio(&self) -> f64 {
        self.route.per_sec / self.raw.per_sec
    }
    fn alloc_ratio(&self) -> f64 {
        self.large.per_sec / self.small.per_sec
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
            "memory ({} open sessions, pool of {SMALL_POOL}, Redis used_memory)",
            self.memory.sessions
        );
        println!(
            "  per open session         {:>10.0} B    {:.1} keys; naive layout about {MEMORY_NAIVE:.0} B",
            self.memory.bytes_per_session, self.memory.keys_per_session
        );
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
                "large_vs_small": self.alloc_ratio(),
                "target": ALLOC_TARGET,
                "met": self.allocation_met(),
            },
            "memory": {
                "sessions": self.memory.sessions,
                "bytes_per_session": self.memory.bytes_per_session,
                "keys_per_session": self.memory.keys_per_session,
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
                "target": null,
                "verdict": if self.events.hush.timed_out { "timeout" } else { "measured" },
            },
        })
    }
}
