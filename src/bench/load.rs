//! The load generator every measurement shares: a timed window after a warm-up, the tally
//! of what completed inside it with each operation's latency, slices summed over rounds into
//! a rate with its percentiles, and a minimal keep-alive HTTP/1.1 client that drives a
//! server with the same client cost for each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};

/// Each measurement is split into this many slices, taken in turns with the measurement it
/// is compared with.
pub(super) const ROUNDS: u32 = 3;
/// Untimed time before each slice: connections open, caches fill.
const WARMUP: Duration = Duration::from_millis(500);
/// The longest latency a histogram holds (µs); anything slower is counted as this.
const LATENCY_MAX_US: u64 = 60_000_000;

/// The requests prepared for [`drive_http_once`] ran out before the window ended.
#[derive(Debug)]
pub(super) struct RanOut(pub(super) usize);

impl std::fmt::Display for RanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} prepared requests ran out before the window ended",
            self.0
        )
    }
}

impl std::error::Error for RanOut {}

/// The timed part of a run: operations that complete inside it count.
#[derive(Clone, Copy)]
pub(super) struct Window {
    from: Instant,
    to: Instant,
}

impl Window {
    pub(super) fn after_warmup(length: Duration) -> Window {
        let from = Instant::now() + WARMUP;
        Window {
            from,
            to: from + length,
        }
    }
    pub(super) fn running(&self) -> bool {
        Instant::now() < self.to
    }
}

/// Latencies in microseconds, 3 significant digits.
pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// What one caller saw inside the window: successes with their latencies, and failures.
#[derive(Clone)]
pub(super) struct Tally {
    ok: u64,
    failed: u64,
    latency: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            ok: 0,
            failed: 0,
            latency: histogram(),
        }
    }
}

impl Tally {
    /// Counts an operation that began at `started` and has just ended, when it ended inside
    /// the window; a success's latency goes into the histogram.
    pub(super) fn record(&mut self, window: &Window, started: Instant, ok: bool) {
        let t = Instant::now();
        if t >= window.from && t < window.to {
            if ok {
                self.ok += 1;
                let us = (t - started).as_micros().min(u128::from(LATENCY_MAX_US)) as u64;
                self.latency.saturating_record(us.max(1));
            } else {
                self.failed += 1;
            }
        }
    }
}

/// Latency percentiles of the successful operations of a measurement, in microseconds.
#[derive(Clone, Copy, Default)]
pub(super) struct Latency {
    pub(super) p50_us: u64,
    pub(super) p99_us: u64,
    pub(super) p999_us: u64,
}

impl Latency {
    pub(super) fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
        }
    }

    /// `p50 0.61 ms  p99 2.10 ms  p999 4.80 ms`, aligned for the table.
    pub(super) fn columns(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "p50 {:>6.2}  p99 {:>6.2}  p999 {:>6.2} ms",
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.p999_us)
        )
    }

    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
        })
    }
}

/// Operations per second, failures and latency of one measurement, and the share of a core
/// the private Redis spent meanwhile when it was sampled.
#[derive(Clone, Copy)]
pub(super) struct Rate {
    pub(super) per_sec: f64,
    pub(super) failed: u64,
    pub(super) latency: Latency,
    /// Redis CPU seconds per second of window (1.0 = one core busy), when sampled.
    pub(super) redis_cores: Option<f64>,
}

impl Rate {
    /// Redis CPU microseconds per successful operation, when sampled.
    pub(super) fn redis_us_per_op(&self) -> Option<f64> {
        self.redis_cores.map(|c| c * 1e6 / self.per_sec)
    }

    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "per_sec": self.per_sec,
            "failed": self.failed,
            "latency": self.latency.json(),
            "redis_cores": self.redis_cores,
            "redis_us_per_op": self.redis_us_per_op(),
        })
    }
}

/// The timed slices of one measurement, summed over the rounds.
#[derive(Clone)]
pub(super) struct Samples {
    tally: Tally,
    secs: f64,
    redis_cpu: Option<f64>,
}

impl Default for Samples {
    fn default() -> Self {
        Samples {
            tally: Tally::default(),
            secs: 0.0,
            redis_cpu: None,
        }
    }
}

impl Samples {
    /// Waits for the workers of one slice and adds what they counted.
    pub(super) async fn add(
        &mut self,
        mut workers: JoinSet<anyhow::Result<Tally>>,
        window: Window,
    ) -> anyhow::Result<()> {
        while let Some(done) = workers.join_next().await {
            let t = done.context("bench worker panicked")??;
            self.tally.ok += t.ok;
            self.tally.failed += t.failed;
            self.tally
                .latency
                .add(&t.latency)
                .context("merging latency histograms")?;
        }
        self.secs += (window.to - window.from).as_secs_f64();
        Ok(())
    }

    /// [`Samples::add`], with the Redis CPU `sampler` measured over the same window.
    pub(super) async fn add_sampled(
        &mut self,
        workers: JoinSet<anyhow::Result<Tally>>,
        window: Window,
        sampler: JoinHandle<anyhow::Result<f64>>,
    ) -> anyhow::Result<()> {
        self.add(workers, window).await?;
        let cpu = sampler.await.context("Redis CPU sampler panicked")??;
        *self.redis_cpu.get_or_insert(0.0) += cpu;
        Ok(())
    }

    /// Adds the slices of `other`.
    pub(super) fn merge(&mut self, other: &Samples) -> anyhow::Result<()> {
        self.tally.ok += other.tally.ok;
        self.tally.failed += other.tally.failed;
        self.tally
            .latency
            .add(&other.tally.latency)
            .context("merging latency histograms")?;
        self.secs += other.secs;
        if let Some(cpu) = other.redis_cpu {
            *self.redis_cpu.get_or_insert(0.0) += cpu;
        }
        Ok(())
    }

    /// Successful operations so far.
    pub(super) fn ok(&self) -> u64 {
        self.tally.ok
    }

    pub(super) fn rate(&self, what: &str) -> anyhow::Result<Rate> {
        if self.tally.ok == 0 {
            bail!(
                "{what}: no operation succeeded ({} failed)",
                self.tally.failed
            );
        }
        Ok(Rate {
            per_sec: self.tally.ok as f64 / self.secs,
            failed: self.tally.failed,
            latency: Latency::of(&self.tally.latency),
            redis_cores: self.redis_cpu.map(|cpu| cpu / self.secs),
        })
    }
}

/// The CPU seconds the Redis at `client` spends inside `window` (`INFO cpu`, user and
/// system), read at its two ends by a task of its own.
pub(super) fn redis_cpu(client: &redis::Client, window: Window) -> JoinHandle<anyhow::Result<f64>> {
    let client = client.clone();
    tokio::spawn(async move {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut read = async || -> anyhow::Result<f64> {
            let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .with_context(|| format!("INFO cpu without {name}"))
            };
            Ok(field("used_cpu_user")? + field("used_cpu_sys")?)
        };
        tokio::time::sleep_until(window.from.into()).await;
        let before = read().await?;
        tokio::time::sleep_until(window.to.into()).await;
        let after = read().await?;
        Ok(after - before)
    })
}

/// `concurrency` keep-alive connections, each sending the requests in turn from its own
/// starting point; a 200 counts.
pub(super) fn drive_http(
    addr: SocketAddr,
    requests: &Arc<Vec<Vec<u8>>>,
    concurrency: usize,
    slice: Duration,
) -> (JoinSet<anyhow::Result<Tally>>, Window) {
    drive(addr, requests, None, concurrency, slice)
}

/// [`drive_http`], each request sent once only, by whichever connection takes it next: for
/// requests whose ids must never repeat. Running out before the window ends is an error.
pub(super) fn drive_http_once(
    addr: SocketAddr,
    requests: &Arc<Vec<Vec<u8>>>,
    concurrency: usize,
    slice: Duration,
) -> (JoinSet<anyhow::Result<Tally>>, Window) {
    let next = Arc::new(AtomicUsize::new(0));
    drive(addr, requests, Some(next), concurrency, slice)
}

/// Sends each request once, untimed, over `concurrency` keep-alive connections; every
/// answer must be a 200 whose body contains `mark`, else the first that is not is the error.
pub(super) async fn send_all(
    addr: SocketAddr,
    requests: &Arc<Vec<Vec<u8>>>,
    concurrency: usize,
    mark: &'static str,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.min(requests.len()) {
        let (requests, next) = (requests.clone(), next.clone());
        workers.spawn(async move {
            let mut http = Http::connect(addr).await?;
            while let Some(req) = requests.get(next.fetch_add(1, Ordering::Relaxed)) {
                if http.closed {
                    http = Http::connect(addr).await?;
                }
                let (status, body) = http.send(req).await?;
                let body = String::from_utf8_lossy(body);
                if status != 200 || !body.contains(mark) {
                    bail!("answered {status}: {body}");
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

fn drive(
    addr: SocketAddr,
    requests: &Arc<Vec<Vec<u8>>>,
    once: Option<Arc<AtomicUsize>>,
    concurrency: usize,
    slice: Duration,
) -> (JoinSet<anyhow::Result<Tally>>, Window) {
    let window = Window::after_warmup(slice);
    let mut workers = JoinSet::new();
    for w in 0..concurrency {
        let (requests, once) = (requests.clone(), once.clone());
        workers.spawn(async move {
            let mut tally = Tally::default();
            let mut http = Http::connect(addr).await?;
            let mut i = w * 7919;
            while window.running() {
                if http.closed {
                    http = Http::connect(addr).await?;
                }
                let req = match &once {
                    Some(next) => match requests.get(next.fetch_add(1, Ordering::Relaxed)) {
                        Some(req) => req,
                        None => return Err(RanOut(requests.len()).into()),
                    },
                    None => {
                        i += 1;
                        &requests[(i - 1) % requests.len()]
                    }
                };
                let started = Instant::now();
                let ok = matches!(http.send(req).await, Ok((200, _)));
                tally.record(&window, started, ok);
            }
            Ok(tally)
        });
    }
    (workers, window)
}

/// A minimal HTTP/1.1 keep-alive client: the least client work per request, the same for
/// every server measured.
pub(super) struct Http {
    stream: BufReader<TcpStream>,
    line: Vec<u8>,
    body: Vec<u8>,
    pub(super) closed: bool,
}

impl Http {
    pub(super) async fn connect(addr: SocketAddr) -> anyhow::Result<Http> {
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
    pub(super) async fn send(&mut self, request: &[u8]) -> std::io::Result<(u16, &[u8])> {
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
