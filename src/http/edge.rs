//! The first checks every request meets, before any route reads it: limits on the request
//! head, a declared body larger than hush reads, and one deadline for the whole body. Each
//! refusal is problem+json with a stable code. [`head_problem`] is also what the server writes
//! in place of the bodiless answers hyper gives to heads it cannot parse.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as _, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::{ApiError, BODY_LIMIT, problem};
use crate::config::Config;

/// Longest request target (path and query) hush reads.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most bytes of header fields (names, values and separators) hush reads in one request.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Most header fields in one request; hyper refuses more before hush sees the request.
pub const MAX_HEADERS: usize = 100;

/// What [`guard`] needs from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time allowed for the whole body, from the moment the head is in.
    pub body_read_timeout: Duration,
}

impl Limits {
    pub fn from_config(config: &Config) -> Limits {
        Limits {
            body_read_timeout: Duration::from_millis(config.body_read_timeout_ms),
        }
    }
}

/// Refuses heads over the limits and bodies declared over [`BODY_LIMIT`] without reading
/// them, and answers `408` when the body does not arrive within its deadline.
pub async fn guard(State(limits): State<Limits>, req: Request, next: Next) -> Response {
    let uri = req.uri();
    let uri_len = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return closing(uri_too_long());
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return closing(header_too_large());
    }
    // hyper has checked Content-Length already: the size hint is exactly what it declares.
    if req.body().size_hint().lower() > BODY_LIMIT as u64 {
        return closing(ApiError::PayloadTooLarge.into_response());
    }
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let expired = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(Deadline {
            inner: body,
            at: Instant::now() + limits.body_read_timeout,
            sleep: None,
            expired: expired.clone(),
        })
    });
    let resp = next.run(req).await;
    // Whatever the route made of the failed read, the client's answer is the timeout.
    if expired.load(Ordering::Relaxed) {
        return closing(problem(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "Request timeout",
            format!(
                "the request body did not arrive within {} ms",
                limits.body_read_timeout.as_millis()
            ),
        ));
    }
    resp
}

/// The problem+json answer to a request head hyper refused with `status`, if it is one hyper
/// gives (400, 414, 431).
pub fn head_problem(status: StatusCode) -> Option<Response> {
    match status {
        StatusCode::BAD_REQUEST => Some(problem(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Invalid request",
            "the request is not valid HTTP/1.1".into(),
        )),
        StatusCode::URI_TOO_LONG => Some(uri_too_long()),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Some(header_too_large()),
        _ => None,
    }
}

fn uri_too_long() -> Response {
    problem(
        StatusCode::URI_TOO_LONG,
        "uri_too_long",
        "URI too long",
        format!(
            "request targets are limited to {} KiB",
            MAX_URI_BYTES / 1024
        ),
    )
}

fn header_too_large() -> Response {
    problem(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "header_too_large",
        "Request header fields too large",
        format!(
            "request headers are limited to {MAX_HEADERS} fields and {} KiB",
            MAX_HEADER_BYTES / 1024
        ),
    )
}

/// The rest of the request was not read, so the connection cannot carry another one.
fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A request body that fails once its deadline passes, however steadily bytes trickle in
/// (tower-http's body timeout restarts at every frame, so a byte a second never trips it).
struct Deadline {
    inner: Body,
    at: Instant,
    /// Made only when a read has to wait, so bodies that arrive with their head cost no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
}

/// The error a route's body read fails with when [`Deadline`] trips.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl Deadline {
    fn trip(&mut self) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.expired.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))))
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if Instant::now() >= self.at {
            return self.trip();
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {
                let at = self.at;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => self.trip(),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
