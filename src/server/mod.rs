//! The accept loop and each connection's HTTP/1.1, owned here so that slow and hostile
//! clients cost bounded resources: a cap on connections served at once, a deadline for every
//! request head and for every idle wait between requests (see the `io` module), problem+json in place
//! of hyper's own bodiless error answers, and a graceful shutdown that lets in-flight requests
//! finish. [`app`] mounts the app's API and the provider webhooks side by side.
//!
//! At the cap, hush stops accepting: further connections wait in the kernel's listen backlog,
//! which costs hush no descriptor and no memory, and are served in order as slots free up.
//! A slot held by a client that sends nothing frees within the header timeout, so a
//! provider's request waits a little instead of being refused; accepting and closing at once
//! would instead fail it, and hand the freed slot to whoever reconnects fastest.

mod io;

use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::config::{Config, ConfigError};
use crate::telemetry::METRICS;

/// Every route hush answers: the app's API, the webhooks of each configured provider and
/// the console (unless turned off), under the layers they share.
pub fn app(state: crate::http::AppState) -> Router {
    app_with(state, None)
}

/// [`app`], with the sandbox's routes when it is on; without it they do not exist (404).
pub fn app_with(
    state: crate::http::AppState,
    sandbox: Option<Arc<crate::sandbox::Sandbox>>,
) -> Router {
    let mut routes = crate::api::routes().merge(crate::relay::router(&state));
    if state.config.console {
        routes = routes.merge(crate::console::routes());
    }
    if let Some(sandbox) = sandbox {
        routes = routes.merge(crate::sandbox::routes(sandbox));
    }
    crate::http::layered(routes, state)
}

/// hyper's read buffer per connection, which bounds what one request head can make hush
/// hold. It fits hyper's own 64 KiB limit on request targets, so an over-long target is
/// answered `414` rather than `431`.
const READ_BUFFER: usize = 96 * 1024;

/// Connections served when `HUSH_MAX_CONNECTIONS` is not set, if the open-file limit allows.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Deadlines and caps for serving, resolved from the configuration and the open-file limit.
#[derive(Clone, Debug)]
pub struct ServeLimits {
    pub header_read_timeout: Duration,
    /// `None`: no keep-alive, one request per connection.
    pub keepalive_idle: Option<Duration>,
    pub max_connections: usize,
}

impl ServeLimits {
    /// The limits for `config` in a process that may open `nofile` descriptors (`None` when
    /// unknown or unlimited). A quarter of the descriptors stays free for Redis, outbound
    /// HTTP and logs; a configured cap that does not leave that room is refused.
    pub fn resolve(config: &Config, nofile: Option<u64>) -> Result<ServeLimits, ConfigError> {
        let room = nofile.map(|n| usize::try_from(n - n / 4).unwrap_or(usize::MAX));
        let max_connections = match (config.max_connections, room) {
            (Some(cap), Some(room)) if cap > room => {
                return Err(ConfigError::Invalid {
                    key: "HUSH_MAX_CONNECTIONS",
                    reason: format!(
                        "{cap} connections do not fit under the open-file limit of {} \
                         (at most {room}); lower it or raise the limit (LimitNOFILE= in the \
                         systemd unit, ulimit -n)",
                        nofile.unwrap_or_default()
                    ),
                });
            }
            (Some(cap), _) => cap,
            (None, Some(room)) => room.clamp(1, DEFAULT_MAX_CONNECTIONS),
            (None, None) => DEFAULT_MAX_CONNECTIONS,
        };
        Ok(ServeLimits {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            keepalive_idle: (config.keepalive_idle_ms > 0)
                .then(|| Duration::from_millis(config.keepalive_idle_ms)),
            max_connections,
        })
    }
}

/// Raises the soft limit on open files to the hard limit (a server's descriptors are its
/// connections) and returns the soft limit now in force, `None` when it is unlimited or
/// unknown. Logs what it did.
pub fn raise_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        // Linux refuses soft limits above fs.nr_open, whose default is this; an unlimited hard
        // limit is raised to it rather than left at the soft value.
        const CEILING: u64 = 1 << 20;
        let before = getrlimit(Resource::Nofile);
        let target = before.maximum.unwrap_or(CEILING);
        match before.current {
            Some(soft) if soft < target => {
                let want = Rlimit {
                    current: Some(target),
                    maximum: before.maximum,
                };
                match setrlimit(Resource::Nofile, want) {
                    Ok(()) => {
                        tracing::info!(from = soft, to = target, "raised the open-file limit")
                    }
                    Err(e) => tracing::warn!(
                        limit = soft,
                        wanted = target,
                        error = %e,
                        "could not raise the open-file limit"
                    ),
                }
            }
            Some(soft) => tracing::info!(limit = soft, "open-file limit already at its maximum"),
            None => tracing::info!("open-file limit is unlimited"),
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then lets in-flight requests
/// finish and returns once every connection has closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let rewrites = Arc::new(io::Rewrites::build().await);
    let mut http = http1::Builder::new();
    http.keep_alive(limits.keepalive_idle.is_some())
        .max_buf_size(READ_BUFFER)
        .max_headers(crate::http::edge::MAX_HEADERS)
        // Our I/O wrapper owns the head deadline: hyper's would also cut keep-alive
        // connections that sit idle for longer than it.
        .header_read_timeout(None);
    let conn = Arc::new(ConnSettings {
        http,
        header_read_timeout: limits.header_read_timeout,
        keepalive_idle: limits.keepalive_idle,
        rewrites,
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tracing::info!(
        max_connections = limits.max_connections,
        header_read_timeout_ms = limits.header_read_timeout.as_millis() as u64,
        "accepting connections"
    );
    // Logged once per stretch at the cap, not once per connection.
    let mut at_cap = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                at_cap = false;
                slot
            }
            Err(_) => {
                if !std::mem::replace(&mut at_cap, true) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection cap reached; new connections wait in the listen backlog"
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => {
                        slot.expect("the connection semaphore is never closed")
                    }
                }
            }
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors or memory: accepting again at once would spin.
                    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (app, conn, shutdown) = (app.clone(), conn.clone(), shutdown.clone());
        tokio::spawn(async move {
            METRICS.http_connections.inc();
            serve_connection(stream, app, &conn, shutdown).await;
            METRICS.http_connections.dec();
            drop(slot);
        });
    }
    drop(listener);
    // Every connection holds a slot until it ends: holding them all means all have ended.
    let _all = slots
        .acquire_many(limits.max_connections as u32)
        .await
        .expect("the connection semaphore is never closed");
    Ok(())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// What every connection is served with.
struct ConnSettings {
    http: http1::Builder,
    header_read_timeout: Duration,
    keepalive_idle: Option<Duration>,
    rewrites: Arc<io::Rewrites>,
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    settings: &ConnSettings,
    shutdown: CancellationToken,
) {
    let progress = Arc::new(Progress::default());
    let io = io::EdgeIo::new(
        stream,
        progress.clone(),
        settings.header_read_timeout,
        settings.keepalive_idle,
        settings.rewrites.clone(),
    );
    let conn = settings
        .http
        .serve_connection(TokioIo::new(io), Tracked { app, progress });
    let mut conn = pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        // Clients hang up, time out and send garbage all the time; none of it is hush's fault.
        tracing::debug!(error = %e, "connection closed with an error");
    }
}

/// How far a connection's requests have got, shared by its service (which sees requests
/// start and answers end) and its I/O (which must tell hush's answers from hyper's own).
#[derive(Default)]
pub(crate) struct Progress {
    /// Requests handed to the service so far.
    started: AtomicU64,
    /// Requests whose answer hyper has not yet taken in whole.
    open: AtomicUsize,
}

impl Progress {
    fn begin(self: &Arc<Self>) -> Turn {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        Turn(self.clone())
    }

    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One request, from the service call until hyper drops its answer's body, which it does
/// right after it has buffered the last of it.
struct Turn(Arc<Progress>);

impl Drop for Turn {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The router as hyper's service, marking each request's turn in [`Progress`].
#[derive(Clone)]
struct Tracked {
    app: Router,
    progress: Arc<Progress>,
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<Answer>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Answer>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let turn = self.progress.begin();
        let app = self.app.clone();
        Box::pin(async move {
            let Ok(resp) = app.oneshot(req.map(Body::new)).await;
            Ok(resp.map(|body| Answer { body, _turn: turn }))
        })
    }
}

/// A response body that ends its request's turn when hyper drops it.
struct Answer {
    body: Body,
    _turn: Turn,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_sits_under_the_open_file_limit() {
        let config = Config::default();
        let cap = |nofile| {
            ServeLimits::resolve(&config, nofile)
                .unwrap()
                .max_connections
        };
        assert_eq!(cap(Some(1024)), 768);
        assert_eq!(cap(Some(1_048_576)), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(cap(None), DEFAULT_MAX_CONNECTIONS);
        let config = Config {
            max_connections: Some(900),
            ..Config::default()
        };
        let refused = ServeLimits::resolve(&config, Some(1024)).unwrap_err();
        assert!(
            refused.to_string().contains("HUSH_MAX_CONNECTIONS"),
            "{refused}"
        );
        assert_eq!(
            ServeLimits::resolve(&config, Some(4096))
                .unwrap()
                .max_connections,
            900
        );
        let config = Config {
            keepalive_idle_ms: 0,
            ..Config::default()
        };
        assert_eq!(
            ServeLimits::resolve(&config, None).unwrap().keepalive_idle,
            None
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let start = getrlimit(Resource::Nofile);
        let Some(hard) = start.maximum.filter(|h| *h > 512) else {
            return;
        };
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(512),
                maximum: start.maximum,
            },
        )
        .unwrap();
        let now = raise_nofile_limit();
        assert_eq!(now, Some(hard));
        assert_eq!(getrlimit(Resource::Nofile).current, Some(hard));
    }
}
