//! axum's `Path` and `Query` under the same names, refusing with our problem+json instead of
//! axum's plain-text rejections, so that every answer of the API has a stable `code`.
//! `State` is re-exported so handlers take all their extractors from here.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

pub use axum::extract::State;

use super::ApiError;
use crate::domain::PoolName;

/// Path parameters. A segment that is not valid UTF-8 once percent-decoded (`%FF`) is
/// `400 invalid_path`.
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            // A route whose template and handler disagree is our bug, not the client's.
            Err(e) if e.status().is_server_error() => Err(ApiError::Internal(e.body_text())),
            Err(e) => Err(ApiError::InvalidPath(e.body_text())),
        }
    }
}

/// The query string. One that does not decode into the parameters' types (`limit=-1`, a
/// number too large, a single-valued parameter given twice) is `400 invalid_query`.
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => {
                // serde's own words ("duplicate field `status`", "invalid digit found in
                // string") say more than axum's wrapper sentence.
                let text = e.body_text();
                let why = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                Err(ApiError::InvalidQuery(format!("query string: {why}")))
            }
        }
    }
}

/// An optional `pool` query parameter, held to the pattern the contract states for pool
/// names; a name that fits but names no pool is the handler's `404 pool_not_found`.
pub fn pool_param(raw: Option<String>) -> Result<Option<PoolName>, ApiError> {
    raw.map(|p| {
        PoolName::parse(&p).ok_or_else(|| {
            ApiError::Validation(
                "pool must be 1 to 63 lower-case letters, digits, `-` or `_`, starting with a letter or digit"
                    .into(),
            )
        })
    })
    .transpose()
}
