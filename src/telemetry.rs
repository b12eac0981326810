//! Logging set-up and the Prometheus metrics hush exports. Metric labels carry pool names,
//! routes and outcomes, never a participant's number. Every label value comes from a set
//! clients cannot grow: standard method names or `other`, route templates or `unmatched`,
//! status codes, names of pools an operator created, and fixed outcome words.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub sessions_created: IntCounterVec,
    /// Sessions created with PINs on a shared number instead of routes.
    pub pin_sessions_created: IntCounterVec,
    /// PIN prompts and texts that reached nobody, by why: `wrong`, `limited`, `ended`.
    pub pin_failures: IntCounterVec,
    pub sessions_closed: IntCounterVec,
    pub allocations: IntCounterVec,
    pub routes: IntCounterVec,
    pub pool_numbers: IntGaugeVec,
    pub pool_open_sessions: IntGaugeVec,
    pub pool_utilisation: prometheus::GaugeVec,
    /// Connections being served; the cap keeps it at or under `HUSH_MAX_CONNECTIONS`.
    pub http_connections: prometheus::IntGauge,
    /// Connections closed by the edge: `header_timeout`, `idle_timeout`.
    pub http_connections_closed: IntCounterVec,
    /// Event delivery attempts by outcome (one of [`DELIVERY_OUTCOMES`]).
    pub event_delivery_attempts: IntCounterVec,
    /// Events waiting for delivery (queued or being attempted), refreshed on scrape.
    pub events_pending: prometheus::IntGauge,
    /// Age of the oldest event waiting for delivery, refreshed on scrape.
    pub event_oldest_pending_seconds: prometheus::Gauge,
    /// Texts sent through a provider's API, by provider and outcome.
    pub outbound_texts: IntCounterVec,
    /// Provider webhooks refused because their signature did not verify, by provider.
    pub webhook_signature_failures: IntCounterVec,
    /// Audit entries and pool counts that could not be written (`record`: `audit`,
    /// `pool_stats`); the change they describe went through.
    pub record_write_failures: IntCounterVec,
}

/// The `outcome` label values of `hush_event_delivery_attempts_total`.
pub const DELIVERY_OUTCOMES: [&str; 6] = [
    "delivered",
    "failed",
    "throttled",
    "gone",
    "refused",
    "not_tried",
];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let http_requests = IntCounterVec::new(
        Opts::new(
            "hush_http_requests_total",
            "HTTP requests by route and status",
        ),
        &["method", "route", "status"],
    )?;
    let http_latency = HistogramVec::new(
        HistogramOpts::new(
            "hush_http_request_duration_seconds",
            "HTTP request latency by route",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]),
        &["method", "route", "status"],
    )?;
    let sessions_created = IntCounterVec::new(
        Opts::new("hush_sessions_created_total", "Sessions created"),
        &["pool"],
    )?;
    let pin_sessions_created = IntCounterVec::new(
        Opts::new(
            "hush_pin_sessions_created_total",
            "Sessions created with PINs on a shared number",
        ),
        &["pool"],
    )?;
    let pin_failures = IntCounterVec::new(
        Opts::new(
            "hush_pin_failures_total",
            "PINs that reached nobody: wrong, refused for too many wrong ones (limited), or of an ended session",
        ),
        &["pool", "reason"],
    )?;
    let sessions_closed = IntCounterVec::new(
        Opts::new("hush_sessions_closed_total", "Sessions ended, by reason"),
        &["pool", "reason"],
    )?;
    let allocations = IntCounterVec::new(
        Opts::new("hush_allocations_total", "Number allocations by result"),
        &["pool", "result"],
    )?;
    let routes = IntCounterVec::new(
        Opts::new("hush_route_decisions_total", "Routing decisions by action"),
        &["action"],
    )?;
    let pool_numbers = IntGaugeVec::new(
        Opts::new("hush_pool_numbers", "Proxy numbers per pool and state"),
        &["pool", "state"],
    )?;
    let pool_open_sessions = IntGaugeVec::new(
        Opts::new("hush_pool_open_sessions", "Open sessions per pool"),
        &["pool"],
    )?;
    let pool_utilisation = prometheus::GaugeVec::new(
        Opts::new(
            "hush_pool_utilisation",
            "Share of active numbers carrying at least one open session",
        ),
        &["pool"],
    )?;
    let http_connections =
        prometheus::IntGauge::new("hush_http_connections", "HTTP connections being served")?;
    let http_connections_closed = IntCounterVec::new(
        Opts::new(
            "hush_http_connections_closed_total",
            "HTTP connections closed by hush for a slow or idle client, by reason",
        ),
        &["reason"],
    )?;
    registry.register(Box::new(http_connections.clone()))?;
    registry.register(Box::new(http_connections_closed.clone()))?;
    let event_delivery_attempts = IntCounterVec::new(
        Opts::new(
            "hush_event_delivery_attempts_total",
            "Event delivery attempts by outcome",
        ),
        &["outcome"],
    )?;
    let events_pending = prometheus::IntGauge::new(
        "hush_events_pending",
        "Events waiting for delivery (queued, retrying or being attempted)",
    )?;
    let event_oldest_pending_seconds = prometheus::Gauge::new(
        "hush_event_oldest_pending_seconds",
        "Age of the oldest event waiting for delivery",
    )?;
    let outbound_texts = IntCounterVec::new(
        Opts::new(
            "hush_outbound_texts_total",
            "Texts sent through a provider's API, by provider and outcome",
        ),
        &["provider", "outcome"],
    )?;
    let webhook_signature_failures = IntCounterVec::new(
        Opts::new(
            "hush_webhook_signature_failures_total",
            "Provider webhooks refused for a missing or wrong signature",
        ),
        &["provider"],
    )?;
    let record_write_failures = IntCounterVec::new(
        Opts::new(
            "hush_record_write_failures_total",
            "Audit entries and pool counts not written (the change itself went through)",
        ),
        &["record"],
    )?;
    registry.register(Box::new(record_write_failures.clone()))?;
    registry.register(Box::new(event_delivery_attempts.clone()))?;
    registry.register(Box::new(events_pending.clone()))?;
    registry.register(Box::new(event_oldest_pending_seconds.clone()))?;
    registry.register(Box::new(outbound_texts.clone()))?;
    registry.register(Box::new(webhook_signature_failures.clone()))?;
    registry.register(Box::new(http_requests.clone()))?;
    registry.register(Box::new(http_latency.clone()))?;
    registry.register(Box::new(sessions_created.clone()))?;
    registry.register(Box::new(pin_sessions_created.clone()))?;
    registry.register(Box::new(pin_failures.clone()))?;
    registry.register(Box::new(sessions_closed.clone()))?;
    registry.register(Box::new(allocations.clone()))?;
    registry.register(Box::new(routes.clone()))?;
    registry.register(Box::new(pool_numbers.clone()))?;
    registry.register(Box::new(pool_open_sessions.clone()))?;
    registry.register(Box::new(pool_utilisation.clone()))?;
    Ok(Metrics {
        registry,
        http_requests,
        http_latency,
        sessions_created,
        pin_sessions_created,
        pin_failures,
        sessions_closed,
        allocations,
        routes,
        pool_numbers,
        pool_open_sessions,
        pool_utilisation,
        http_connections,
        http_connections_closed,
        event_delivery_attempts,
        events_pending,
        event_oldest_pending_seconds,
        outbound_texts,
        webhook_signature_failures,
        record_write_failures,
    })
}

/// The `method` label of a request: a standard method's name, else `other`, so that clients
/// cannot create series by inventing methods.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The process-wide metrics. Several hush servers in one process (tests) share them.
pub static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| build().expect("metric definitions are static and valid"));

pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// Installs the global tracing subscriber for the binary (tests install their own).
pub fn init(config: &Config) {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes help a person at a terminal and garble a log file or a collector's pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
