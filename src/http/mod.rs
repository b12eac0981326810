//! What the two HTTP edges share: the state every handler gets, the one error type and its
//! problem+json body, the limits a request meets before any route reads it, the extractors
//! that refuse in problem+json, and the layers around every route (fallbacks, metrics and
//! logs by route template, panics caught). The app's API and the provider webhooks build on
//! this and never on each other.

mod answer;
pub mod calls;
pub mod edge;
mod error;
pub mod extract;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

pub use error::{ApiError, problem, scrub};

use crate::broker::Broker;
use crate::telemetry::METRICS;

/// Largest request body hush reads.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What every handler reads, behind one `Arc`: axum clones the state for each request, and
/// cloning the parts one by one cost five atomic counts, up and down again, per request.
#[derive(Clone)]
pub struct AppState(std::sync::Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(std::sync::Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub broker: Broker,
    pub config: std::sync::Arc<crate::config::Config>,
    /// `config.public_url()`, made once: every webhook's signed URL starts with it.
    pub public_url: std::sync::Arc<str>,
    /// Behind the SSRF guard: for asking the app's intercept.
    pub http: reqwest::Client,
    /// The providers that place calls the app starts.
    pub dialers: calls::Dialers,
}

/// `routes` with what every answer passes through: problem+json for unknown paths and
/// methods, the body limit and the request-head checks, metrics and a log line per request,
/// and a 500 in place of a panic.
pub fn layered(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            edge::Limits::from_config(&state.config),
            edge::guard,
        ))
        .layer(axum::middleware::from_fn(observe))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("request handler panicked");
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "Internal error",
                    "an internal error occurred; it has been logged".into(),
                )
            },
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("not_found", "no such endpoint".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Metrics and one log line per request, labelled by route template.
async fn observe(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = crate::telemetry::method_label(req.method());
    let route = req.extensions().get::<MatchedPath>().cloned();
    let resp = next.run(req).await;
    let secs = start.elapsed().as_secs_f64();
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    let status = resp.status();
    let labels = [method, route, status.as_str()];
    METRICS.http_requests.with_label_values(&labels).inc();
    METRICS
        .http_latency
        .with_label_values(&labels)
        .observe(secs);
    tracing::debug!(%method, %route, %status, ms = secs * 1000.0, "request");
    resp
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every `.rs` file under `src/<dir>`, with its text.
    fn sources(dir: &str) -> Vec<(String, String)> {
        fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    out.push((path.display().to_string(), text));
                }
            }
        }
        let mut out = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir),
            &mut out,
        );
        assert!(!out.is_empty(), "no sources under src/{dir}");
        out
    }

    /// The edges are siblings over this module: the API and the webhooks never reach into
    /// each other, and the plumbing they share reaches into neither, nor into what mounts them.
    #[test]
    fn the_edges_depend_on_the_plumbing_never_on_each_other() {
        let rules: &[(&str, &[&str])] = &[
            ("relay", &["crate::api", "crate::server"]),
            ("api", &["crate::relay", "crate::server"]),
            ("http", &["crate::api", "crate::relay", "crate::server"]),
        ];
        for (dir, forbidden) in rules {
            for (path, text) in sources(dir) {
                for needle in *forbidden {
                    // A path ends where an identifier does; the quoted names in the table
                    // above end in a quote and so are not uses.
                    let hits = text
                        .match_indices(needle)
                        .filter(|(at, _)| {
                            text[at + needle.len()..]
                                .starts_with(|c: char| !c.is_alphanumeric() && c != '_' && c != '"')
                        })
                        .count();
                    assert_eq!(hits, 0, "{path} uses `{needle}`");
                }
            }
        }
    }
}
