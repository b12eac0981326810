//! The HTTP API: routes, authentication by scoped API keys, body parsing with problem+json
//! errors, and per-request metrics and logs that name the route template, never the path
//! (paths can hold a participant's number).

mod audit;
mod calls;
mod capacity;
mod events;
mod messages;
mod ops;
mod pools;
mod sessions;
mod whoami;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Router, body::Bytes};
use serde::de::DeserializeOwned;

// The shared plumbing keeps answering to its old paths here.
pub use crate::http::{ApiError, AppState, BODY_LIMIT, edge, problem, scrub};

use crate::broker::{Actor, Broker, BrokerError, EventId, PoolLimit, Principal, Scope, Via};
use crate::domain::{PoolName, SessionId};

/// Every route the server answers, as `(method, path template)`; a test holds
/// `proto/openapi.yaml` to this list and this list to the router.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.yaml"),
    ("GET", "/v1/whoami"),
    ("GET", "/v1/pools"),
    ("GET", "/v1/pools/{name}"),
    ("PUT", "/v1/pools/{name}"),
    ("PATCH", "/v1/pools/{name}"),
    ("DELETE", "/v1/pools/{name}"),
    ("GET", "/v1/pools/{name}/numbers"),
    ("POST", "/v1/pools/{name}/numbers"),
    ("PATCH", "/v1/pools/{name}/numbers/{number}"),
    ("DELETE", "/v1/pools/{name}/numbers/{number}"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/{id}"),
    ("PATCH", "/v1/sessions/{id}"),
    ("DELETE", "/v1/sessions/{id}"),
    ("GET", "/v1/sessions/{id}/interactions"),
    ("POST", "/v1/sessions/{id}/calls"),
    ("POST", "/v1/sessions/{id}/messages"),
    ("GET", "/v1/pools/{name}/callback-secret"),
    ("POST", "/v1/pools/{name}/callback-secret/rotate"),
    ("GET", "/v1/events"),
    ("POST", "/v1/events/{id}/redeliver"),
    ("POST", "/v1/route"),
    ("DELETE", "/v1/participants/{number}"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/pools/{name}/stats"),
    ("GET", "/v1/pools/{name}/capacity"),
];

/// The app's routes; the server mounts them beside the provider webhooks.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.yaml", get(ops::openapi))
        .route("/v1/whoami", get(whoami::show))
        .route("/v1/pools", get(pools::list))
        .route(
            "/v1/pools/{name}",
            put(pools::put)
                .get(pools::show)
                .patch(pools::patch)
                .delete(pools::delete),
        )
        .route(
            "/v1/pools/{name}/numbers",
            post(pools::add_numbers).get(pools::list_numbers),
        )
        .route(
            "/v1/pools/{name}/numbers/{number}",
            axum::routing::patch(pools::patch_number).delete(pools::delete_number),
        )
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route(
            "/v1/sessions/{id}",
            get(sessions::show)
                .patch(sessions::extend)
                .delete(sessions::close),
        )
        .route(
            "/v1/sessions/{id}/interactions",
            get(sessions::interactions),
        )
        .route("/v1/sessions/{id}/calls", post(calls::create))
        .route("/v1/sessions/{id}/messages", post(messages::send))
        .route(
            "/v1/pools/{name}/callback-secret",
            get(pools::callback_secret),
        )
        .route(
            "/v1/pools/{name}/callback-secret/rotate",
            post(pools::rotate_callback_secret),
        )
        .route("/v1/events", get(events::list))
        .route("/v1/events/{id}/redeliver", post(events::redeliver))
        .route("/v1/route", post(sessions::route))
        .route("/v1/participants/{number}", delete(sessions::erase))
        .route("/v1/audit", get(audit::list))
        .route("/v1/pools/{name}/stats", get(capacity::stats))
        .route("/v1/pools/{name}/capacity", get(capacity::capacity))
}

/// The header the ops console sends, so its changes are told apart from other API calls.
pub const CLIENT_HEADER: &str = "x-hush-client";

/// The caller, authenticated by its bearer key, and what it called through (the console
/// says so in [`CLIENT_HEADER`]).
pub struct Auth(pub std::sync::Arc<Principal>, pub Via);

impl Auth {
    /// Records a change this caller made, once it succeeded; never fails (see
    /// `broker::audit`). `pool` lets keys limited to that pool see the entry. A handler that
    /// changes anything calls this once, last.
    pub async fn audit(
        &self,
        s: &AppState,
        action: &str,
        target: &str,
        pool: Option<&str>,
        detail: serde_json::Value,
    ) {
        let actor = Actor {
            name: self.0.name.clone(),
            via: self.1,
        };
        s.broker.audit(&actor, action, target, pool, detail).await;
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.0.allows(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope))
        }
    }

    /// The pools this key sees, for listings and lookups the broker does.
    pub fn pools(&self) -> &PoolLimit {
        &self.0.pools
    }

    // A pool-limited key gets the very answer a missing pool, session or event gets, never a
    // 403: another app's data must not even be known to exist.

    /// Refuses a pool outside the key's pools as `404 pool_not_found`.
    pub fn pool_visible(&self, pool: &PoolName) -> Result<(), ApiError> {
        if self.0.pools.sees(pool.as_str()) {
            Ok(())
        } else {
            Err(BrokerError::PoolNotFound(pool.to_string()).into())
        }
    }

    /// Refuses a session of a pool outside the key's pools as `404 session_not_found`.
    pub async fn session_visible(&self, broker: &Broker, id: &SessionId) -> Result<(), ApiError> {
        if broker.sees_pool_id(&self.0.pools, id.pool_id).await? {
            Ok(())
        } else {
            Err(BrokerError::SessionNotFound.into())
        }
    }

    /// Refuses an event of a pool outside the key's pools as `404 event_not_found`; an id
    /// that does not parse is left to the broker, which finds nothing.
    pub async fn event_visible(&self, broker: &Broker, id: &str) -> Result<(), ApiError> {
        match EventId::parse(id) {
            Some(e) if !broker.sees_pool_id(&self.0.pools, e.pool_id).await? => {
                Err(BrokerError::EventNotFound.into())
            }
            _ => Ok(()),
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= 256)
            .ok_or(ApiError::Unauthorized)?;
        let via = match parts.headers.get(CLIENT_HEADER).map(|v| v.as_bytes()) {
            Some(b"console") => Via::Console,
            _ => Via::Api,
        };
        match state.broker.authenticate(key).await? {
            Some(p) => Ok(Auth(p, via)),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// A JSON body: `application/json` required, 64 KiB at most, malformed → 400,
/// well-formed but wrong shape → 422. Keeps the raw bytes (idempotency fingerprints).
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::InvalidRequest(
                "send the body as JSON with `Content-Type: application/json`".into(),
            ));
        }
        let raw = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::InvalidRequest("the body could not be read".into())
            }
        })?;
        // serde reads a struct from a JSON array too (`[null, null]` would fill the fields in
        // order); every body hush takes is an object, so any other well-formed JSON is refused.
        if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(&raw) {
                    Ok(_) => ApiError::Validation("the body must be a JSON object".into()),
                    Err(e) => ApiError::InvalidRequest(format!("malformed JSON: {e}")),
                },
            );
        }
        let value = serde_json::from_slice(&raw).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::Validation(e.to_string()),
            _ => ApiError::InvalidRequest(format!("malformed JSON: {e}")),
        })?;
        Ok(JsonBody { value, raw })
    }
}

/// `200 OK` with a JSON body.
pub fn ok<T: serde::Serialize>(value: T) -> Response {
    axum::Json(value).into_response()
}
