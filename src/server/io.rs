//! A connection's socket as hyper sees it, with two duties hyper does not do the way hush
//! needs them done:
//!
//! - **Read deadlines.** A client has `header_read_timeout` to send a whole request head,
//!   counted from its connecting or from its first byte after an idle wait, and
//!   `keepalive_idle` to start its next request; past either, the read fails and hyper drops
//!   the connection. Reads while a request is being served are not limited here: the body has
//!   its own deadline (`api::edge`), which answers `408`.
//! - **problem+json for hyper's own errors.** hyper answers a head it cannot parse (bad
//!   `Content-Length`, too many or too large headers, a target over 64 KiB) with a bodiless
//!   400, 414 or 431 before any service runs. That head is the only thing hyper writes while
//!   no request is open and every byte of earlier answers has been flushed, so writes made in
//!   that state are held back until the head is whole, then replaced by the problem+json
//!   answer for its status. If such a head ever shares a write with the tail of an earlier
//!   answer (a pipelined client whose second head is bad), it goes out as hyper wrote it.
//!
//! When hyper closes a connection that still has unread input (a body hush refused, the rest
//! of an oversized head), that input is read and dropped for a moment first (a lingering
//! close): closing with unread input resets the connection, and a reset can destroy the
//! answer before the client has read it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::Progress;
use crate::http::edge::head_problem;
use crate::telemetry::METRICS;

/// More than any head hyper writes on its own; held bytes past this go out unchanged.
const MAX_HELD: usize = 4096;
/// How long, and for how many bytes, a closing connection with unread input keeps reading
/// and dropping it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// The replacement for each bodiless error head hyper writes, prepared once per server.
pub(crate) struct Rewrites(Vec<(StatusCode, Vec<u8>, Bytes)>);

impl Rewrites {
    /// Renders [`head_problem`]'s answers into header lines and body bytes.
    pub(crate) async fn build() -> Rewrites {
        let mut out = Vec::new();
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::URI_TOO_LONG,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ] {
            let Some(resp) = head_problem(status) else {
                continue;
            };
            let (parts, body) = resp.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            let mut lines = Vec::new();
            for (name, value) in &parts.headers {
                if name != header::CONTENT_LENGTH && name != header::CONNECTION {
                    lines.extend_from_slice(name.as_str().as_bytes());
                    lines.extend_from_slice(b": ");
                    lines.extend_from_slice(value.as_bytes());
                    lines.extend_from_slice(b"\r\n");
                }
            }
            out.push((status, lines, body));
        }
        Rewrites(out)
    }

    /// hyper's error `head` as a problem+json answer that closes the connection: its status
    /// line and other headers (`date`) kept, its framing replaced. `None` for a status that
    /// has no replacement.
    fn replace(&self, head: &[u8]) -> Option<Vec<u8>> {
        let status = status_of(head)?;
        let (_, ours, body) = self.0.iter().find(|(s, ..)| *s == status)?;
        let mut out = Vec::with_capacity(head.len() + ours.len() + body.len() + 48);
        let mut lines = head.split(|&b| b == b'\n').map(|l| l.trim_ascii_end());
        out.extend_from_slice(lines.next()?);
        out.extend_from_slice(b"\r\n");
        for line in lines.filter(|l| !l.is_empty()) {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            let replaced = [
                header::CONTENT_LENGTH,
                header::CONTENT_TYPE,
                header::CONNECTION,
            ]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()));
            if !replaced {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(ours);
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        out.extend_from_slice(b"connection: close\r\n\r\n");
        out.extend_from_slice(body);
        Some(out)
    }
}

/// The status code of a response head (`HTTP/1.1 431 ...`), if it starts with one.
fn status_of(head: &[u8]) -> Option<StatusCode> {
    let code = head.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    StatusCode::from_bytes(code).ok()
}

/// What the connection is waiting for when hyper reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// A request head, under the header deadline.
    Head,
    /// The first byte of the next request, under the idle deadline.
    Idle,
    /// Nothing: a request is being served.
    Busy,
}

pub(crate) struct EdgeIo {
    stream: TcpStream,
    progress: Arc<Progress>,
    header_timeout: Duration,
    idle_timeout: Option<Duration>,
    wait: Wait,
    deadline: Instant,
    /// Made only when a read has to wait, so reads that find data cost no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    expired: bool,
    /// `progress.started()` when reads last looked.
    seen: u64,
    /// `progress.started()` when every answer so far had been flushed.
    settled: u64,
    /// hyper's own head, held back until it is whole.
    held: Vec<u8>,
    /// Bytes owed to the socket before anything hyper writes next, and how many went out.
    owed: Vec<u8>,
    sent: usize,
    rewrites: Arc<Rewrites>,
    /// Bytes read and dropped since the write side was shut, once it is.
    lingered: Option<usize>,
}

impl EdgeIo {
    pub(crate) fn new(
        stream: TcpStream,
        progress: Arc<Progress>,
        header_timeout: Duration,
        idle_timeout: Option<Duration>,
        rewrites: Arc<Rewrites>,
    ) -> EdgeIo {
        EdgeIo {
            stream,
            progress,
            header_timeout,
            idle_timeout,
            wait: Wait::Head,
            deadline: Instant::now() + header_timeout,
            sleep: None,
            expired: false,
            seen: 0,
            settled: 0,
            held: Vec::new(),
            owed: Vec::new(),
            sent: 0,
            rewrites,
            lingered: None,
        }
    }

    /// Moves the read state on from what the service has seen since the last read.
    fn track(&mut self) {
        let started = self.progress.started();
        if self.progress.open() > 0 {
            self.seen = started;
            self.wait = Wait::Busy;
        } else if started != self.seen || self.wait == Wait::Busy {
            // Requests began and were answered since the last read: the connection is idle.
            self.seen = started;
            // With keep-alive off hyper closes after the answer; the head deadline is a
            // backstop.
            let (wait, timeout) = match self.idle_timeout {
                Some(idle) => (Wait::Idle, idle),
                None => (Wait::Head, self.header_timeout),
            };
            self.wait = wait;
            self.deadline = Instant::now() + timeout;
        }
    }

    /// Ready once `self.deadline` has passed; otherwise wakes the task then.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let at = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if sleep.deadline() != at {
            sleep.as_mut().reset(at);
        }
        sleep.as_mut().poll(cx)
    }

    fn expire(&mut self) -> io::Error {
        let reason = match self.wait {
            Wait::Idle => "idle_timeout",
            _ => "header_timeout",
        };
        if !self.expired {
            self.expired = true;
            METRICS
                .http_connections_closed
                .with_label_values(&[reason])
                .inc();
            tracing::debug!(reason, "closing a connection past its read deadline");
        }
        io::Error::new(io::ErrorKind::TimedOut, reason)
    }

    /// Whether hyper is writing on its own account: no request open, and all answers so far
    /// flushed, so these bytes can only be an error head of hyper's.
    fn unprompted(&self) -> bool {
        self.progress.open() == 0 && self.progress.started() == self.settled
    }

    fn hold(&mut self, data: &[u8]) {
        self.held.extend_from_slice(data);
        if let Some(end) = self.held.windows(4).position(|w| w == b"\r\n\r\n") {
            let end = end + 4;
            let mut out = self
                .rewrites
                .replace(&self.held[..end])
                .unwrap_or_else(|| self.held[..end].to_vec());
            out.extend_from_slice(&self.held[end..]);
            self.held.clear();
            self.owed.extend_from_slice(&out);
        } else if self.held.len() > MAX_HELD {
            self.release();
        }
    }

    /// Sends what is held as it is.
    fn release(&mut self) {
        let held = std::mem::take(&mut self.held);
        self.owed.extend_from_slice(&held);
    }

    fn poll_owed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.owed.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.owed[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.owed.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for EdgeIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.track();
        // Checked before reading too: a client trickling bytes never leaves the read pending.
        if this.wait != Wait::Busy && Instant::now() >= this.deadline {
            return Poll::Ready(Err(this.expire()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.wait == Wait::Idle && buf.filled().len() > before {
                    this.wait = Wait::Head;
                    this.deadline = Instant::now() + this.header_timeout;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.wait != Wait::Busy => match this.poll_deadline(cx) {
                Poll::Ready(()) => Poll::Ready(Err(this.expire())),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_owed(cx))?;
        if this.unprompted() {
            this.hold(data);
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut this.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_owed(cx))?;
        if this.unprompted() {
            let mut n = 0;
            for buf in bufs {
                this.hold(buf);
                n += buf.len();
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // hyper flushes only after writing a whole head; a part is not one of its error heads.
        this.release();
        ready!(this.poll_owed(cx))?;
        ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        // hyper flushes the socket only once its own buffer is empty: every answer whose
        // body it has dropped is now fully written.
        if this.progress.open() == 0 {
            this.settled = this.progress.started();
        }
        // An answer has gone out; hyper will not read again until the client writes, so the
        // idle deadline must wake the connection itself, and its next read then fails.
        this.track();
        if this.wait != Wait::Busy {
            let _ = this.poll_deadline(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.release();
        ready!(this.poll_owed(cx))?;
        if this.lingered.is_none() {
            ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            this.lingered = Some(0);
            this.deadline = Instant::now() + LINGER;
        }
        let mut scratch = [0u8; 4096];
        loop {
            let lingered = this.lingered.unwrap_or_default();
            if lingered > LINGER_BYTES || Instant::now() >= this.deadline {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    this.lingered = Some(lingered + buf.filled().len());
                }
                // The client has closed, or reset: nothing left to protect.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                // Nothing unread: closing sends no reset, so there is nothing to wait for.
                Poll::Pending if lingered == 0 => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match this.poll_deadline(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hyper_error_heads_become_problem_json() {
        let rewrites = Rewrites::build().await;
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
                      date: Mon, 04 May 2026 09:30:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrites.replace(hyper).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("date: Mon, 04 May 2026 09:30:00 GMT\r\n"));
        assert!(head.contains("content-type: application/problem+json\r\n"));
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
        assert!(head.contains("connection: close"));
        assert!(!head.contains("content-length: 0"));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["code"], "header_too_large");
        assert_eq!(json["status"], 431);
        // A status hyper never writes on its own has no replacement.
        assert!(rewrites.replace(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        assert!(rewrites.replace(b"garbage\r\n\r\n").is_none());
    }
}
