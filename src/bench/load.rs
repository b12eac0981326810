//! The load generator every measurement shares: a timed window after a warm-up, the tally
//! of what completed inside it, slices summed over rounds into a rate, and a minimal
//! keep-alive HTTP/1.1 client that drives a server with the same client cost for each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Each measurement is split into this many slices, taken in turns with the measurement it
/// is compared with.
pub(super) const ROUNDS: u32 = 3;
/// Untimed time before each slice: connections open, caches fill.
const WARMUP: Duration = Duration::from_millis(500);

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

#[derive(Clone, Copy, Default)]
pub(super) struct Tally {
    ok: u64,
    failed: u64,
}

impl Tally {
    pub(super) fn record(&mut self, window: &Window, ok: bool) {
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
pub(super) struct Rate {
    pub(super) per_sec: f64,
    pub(super) failed: u64,
}

/// The timed slices of one measurement, summed over the rounds.
#[derive(Clone, Copy, Default)]
pub(super) struct Samples {
    tally: Tally,
    secs: f64,
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
        }
        self.secs += (window.to - window.from).as_secs_f64();
        Ok(())
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
        })
    }
}

/// `concurrency` keep-alive connections, each sending the requests in turn from its own
/// starting point; a 200 counts.
pub(super) fn drive_http(
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
