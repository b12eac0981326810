//! The API's one error type: each variant maps to a status and a stable `code` in an
//! `application/problem+json` body (RFC 9457). Internal causes are logged, never shown.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::broker::{BrokerError, Scope};
use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    InvalidRequest(String),
    Validation(String),
    InvalidNumber(String),
    PayloadTooLarge,
    Unauthorized,
    Forbidden(Scope),
    NotFound(&'static str, String),
    MethodNotAllowed,
    Broker(BrokerError),
    /// A query string that does not decode into the parameters' types.
    InvalidQuery(String),
    /// A path segment that does not decode (not UTF-8 once percent-decoded).
    InvalidPath(String),
    /// Our own bug, logged with this context; the client sees a generic 500.
    Internal(String),
    /// The provider refused to place a call (it answered 4xx): the detail names the
    /// provider and its status, never what it echoed.
    ProviderRefused(String),
    /// The provider could not be reached or failed (5xx, timeout): worth retrying.
    ProviderDown(String),
    /// A refusal of an edge's own: status, stable code, title and detail (scrubbed).
    Refused(StatusCode, &'static str, &'static str, String),
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        ApiError::Broker(e)
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
}

/// Digits runs long enough to be a phone number are masked in any text that may echo
/// client input back (serde messages quote the offending value).
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 5 {
            out.push_str(&"•".repeat(run.len()));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str, String) {
        use BrokerError as B;
        match self {
            ApiError::InvalidRequest(d) => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Invalid request",
                scrub(d),
            ),
            ApiError::Validation(d) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "Validation failed",
                scrub(d),
            ),
            ApiError::InvalidNumber(d) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_number",
                "Invalid phone number",
                scrub(d),
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
                "request bodies are limited to 64 KiB".into(),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "send a valid API key as `Authorization: Bearer <key>`".into(),
            ),
            ApiError::Forbidden(scope) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                format!("this API key lacks the `{}` scope", scope.as_str()),
            ),
            ApiError::NotFound(code, d) => (StatusCode::NOT_FOUND, code, "Not found", d.clone()),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
                "this path does not take that method".into(),
            ),
            ApiError::InvalidQuery(d) => (
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "Invalid query string",
                scrub(d),
            ),
            ApiError::InvalidPath(d) => (
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "Invalid path",
                scrub(d),
            ),
            ApiError::Internal(_) => internal(),
            ApiError::ProviderRefused(d) => (
                StatusCode::BAD_GATEWAY,
                "provider_refused",
                "Provider refused",
                scrub(d),
            ),
            ApiError::ProviderDown(d) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_down",
                "Provider down",
                scrub(d),
            ),
            ApiError::Refused(status, code, title, d) => (*status, code, title, scrub(d)),
            ApiError::Broker(e) => match e {
                B::InvalidNumber { field, reason } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_number",
                    "Invalid phone number",
                    format!("{field}: {reason}"),
                ),
                B::Validation(d) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    "Validation failed",
                    scrub(d),
                ),
                B::ShardsShrink { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "shards_cannot_shrink",
                    "Shards cannot shrink",
                    e.to_string(),
                ),
                B::PoolNotFound(_) => (
                    StatusCode::NOT_FOUND,
                    "pool_not_found",
                    "Pool not found",
                    e.to_string(),
                ),
                B::SessionNotFound => (
                    StatusCode::NOT_FOUND,
                    "session_not_found",
                    "Session not found",
                    e.to_string(),
                ),
                B::NumberNotFound(d) => (
                    StatusCode::NOT_FOUND,
                    "number_not_found",
                    "Number not found",
                    d.clone(),
                ),
                B::PoolExhausted(_) => (
                    StatusCode::CONFLICT,
                    "pool_exhausted",
                    "Pool exhausted",
                    e.to_string(),
                ),
                B::NumberInUse(_) => (
                    StatusCode::CONFLICT,
                    "number_in_use",
                    "Number in use",
                    e.to_string(),
                ),
                B::NumberUnavailable(d) => (
                    StatusCode::CONFLICT,
                    "number_in_use",
                    "Number in use",
                    d.clone(),
                ),
                B::NumberNotInPool(_) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "number_not_in_pool",
                    "Number not in pool",
                    e.to_string(),
                ),
                B::PoolInUse(_) => (
                    StatusCode::CONFLICT,
                    "pool_in_use",
                    "Pool in use",
                    e.to_string(),
                ),
                B::EventNotFound => (
                    StatusCode::NOT_FOUND,
                    "event_not_found",
                    "Event not found",
                    e.to_string(),
                ),
                B::SessionClosed => (
                    StatusCode::CONFLICT,
                    "session_closed",
                    "Session closed",
                    e.to_string(),
                ),
                B::NotAParticipant => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "not_a_participant",
                    "Not a participant",
                    e.to_string(),
                ),
                B::ProviderUnavailable(_) => (
                    StatusCode::CONFLICT,
                    "provider_unavailable",
                    "Provider unavailable",
                    e.to_string(),
                ),
                B::ProviderAmbiguous(_) => (
                    StatusCode::CONFLICT,
                    "provider_ambiguous",
                    "Provider not chosen",
                    e.to_string(),
                ),
                B::IdempotencyConflict => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_conflict",
                    "Idempotency conflict",
                    e.to_string(),
                ),
                B::IdempotencyRunning => (
                    StatusCode::CONFLICT,
                    "idempotency_conflict",
                    "Idempotency conflict",
                    e.to_string(),
                ),
                B::Store(StoreError::Unavailable(_)) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "Store unavailable",
                    "the session store cannot be reached; retry shortly".into(),
                ),
                B::Store(e @ StoreError::NotReplicated { .. }) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "Store unavailable",
                    format!(
                        "the write may have happened, but {e}, so it might not survive a \
                         failover; retrying with the same Idempotency-Key is safe"
                    ),
                ),
                B::Store(_) | B::Crypto(_) => internal(),
            },
        }
    }
}

fn internal() -> (StatusCode, &'static str, &'static str, String) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "Internal error",
        "an internal error occurred; it has been logged".into(),
    )
}

pub fn problem(status: StatusCode, code: &str, title: &str, detail: String) -> Response {
    let body = Problem {
        kind: format!("urn:hush:problem:{code}"),
        title,
        status: status.as_u16(),
        detail,
        code,
    };
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title, detail) = self.parts();
        if let ApiError::Internal(context) = &self {
            tracing::error!(error = %scrub(context), "internal error");
        }
        if let ApiError::Broker(e) = &self {
            match e {
                BrokerError::Store(
                    StoreError::Unavailable(_) | StoreError::NotReplicated { .. },
                ) => {
                    tracing::warn!(error = %error_chain(e), "store unavailable")
                }
                BrokerError::Store(_) | BrokerError::Crypto(_) => {
                    tracing::error!(error = %error_chain(e), "internal error")
                }
                _ => {}
            }
        }
        let mut resp = problem(status, code, title, detail);
        // The request holding the key is alive (it renews its lease), or its lease runs out
        // within seconds: a retry a second later gets its answer or goes ahead.
        if matches!(self, ApiError::Broker(BrokerError::IdempotencyRunning)) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        // A message that already ends with its cause's text would only repeat it.
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cur = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_masks_number_like_runs() {
        assert_eq!(
            scrub("value \"+14155550123\" at 12"),
            "value \"+•••••••••••\" at 12"
        );
        assert_eq!(scrub("1234 ok"), "1234 ok");
    }
}
