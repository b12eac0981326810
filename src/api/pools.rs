//! Pools and their numbers (scope `pools`).

use super::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, Auth, JsonBody, ok};
use crate::broker::Scope;
use crate::domain::{E164, GeoMatch, InterceptFallback, NumberState, PoolName, PoolPolicy};

/// Largest bulk import in one request.
const MAX_NUMBERS: usize = 1000;

fn pool_name(raw: &str) -> Result<PoolName, ApiError> {
    PoolName::parse(raw).ok_or_else(|| {
        ApiError::NotFound(
            "pool_not_found",
            format!("pool `{}` does not exist", super::scrub(raw)),
        )
    })
}

fn proxy_number(raw: &str) -> Result<E164, ApiError> {
    E164::parse(raw).map_err(|e| ApiError::InvalidNumber(format!("number: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolBody {
    default_ttl_secs: Option<u32>,
    cooloff_secs: Option<u32>,
    geo_match: Option<String>,
    out_of_session_message: Option<String>,
    callback_url: Option<String>,
    callback_include_numbers: Option<bool>,
    intercept_url: Option<String>,
    intercept_timeout_ms: Option<u32>,
    intercept_fallback: Option<String>,
    low_threshold_pct: Option<u8>,
}

/// A callback or intercept URL: https, and a public host unless private targets are allowed.
fn target_url(
    field: &str,
    raw: Option<String>,
    allow_private: bool,
) -> Result<Option<String>, ApiError> {
    match raw.filter(|u| !u.is_empty()) {
        None => Ok(None),
        Some(u) => crate::events::ssrf::check_url(&u, allow_private)
            .map(|url| Some(url.to_string()))
            .map_err(|e| ApiError::Validation(format!("{field}: {e}"))),
    }
}

pub async fn put(
    auth: Auth,
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: JsonBody<PoolBody>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    let name = PoolName::parse(&name).ok_or_else(|| {
        ApiError::Validation(
            "pool names are 1 to 63 lower-case letters, digits, `-` or `_`, starting with a letter or digit"
                .into(),
        )
    })?;
    let b = body.value;
    let d = PoolPolicy::default();
    let policy = PoolPolicy {
        default_ttl_secs: b.default_ttl_secs.unwrap_or(d.default_ttl_secs),
        cooloff_secs: b.cooloff_secs.unwrap_or(d.cooloff_secs),
        geo_match: match b.geo_match.as_deref() {
            None => d.geo_match,
            Some(g) => GeoMatch::parse(g).ok_or_else(|| {
                ApiError::Validation("geo_match must be area_code, country or any".into())
            })?,
        },
        out_of_session_message: b.out_of_session_message.unwrap_or(d.out_of_session_message),
        callback_url: target_url(
            "callback_url",
            b.callback_url,
            s.config.callback_allow_private,
        )?,
        callback_include_numbers: b.callback_include_numbers.unwrap_or(false),
        intercept_url: target_url(
            "intercept_url",
            b.intercept_url,
            s.config.callback_allow_private,
        )?,
        intercept_timeout_ms: b.intercept_timeout_ms.unwrap_or(d.intercept_timeout_ms),
        intercept_fallback: match b.intercept_fallback.as_deref() {
            None | Some("allow") => InterceptFallback::Allow,
            Some("block") => InterceptFallback::Block,
            Some(_) => {
                return Err(ApiError::Validation(
                    "intercept_fallback must be allow or block".into(),
                ));
            }
        },
        low_threshold_pct: b.low_threshold_pct.unwrap_or(d.low_threshold_pct),
    };
    if !(1..=100).contains(&policy.low_threshold_pct) {
        return Err(ApiError::Validation(
            "low_threshold_pct must be between 1 and 100".into(),
        ));
    }
    if !(1..=PoolPolicy::INTERCEPT_TIMEOUT_MAX_MS).contains(&policy.intercept_timeout_ms) {
        return Err(ApiError::Validation(
            "intercept_timeout_ms must be between 1 and 5000".into(),
        ));
    }
    if !PoolPolicy::TTL_RANGE.contains(&policy.default_ttl_secs) {
        return Err(ApiError::Validation(
            "default_ttl_secs must be between 60 and 2592000".into(),
        ));
    }
    if !PoolPolicy::COOLOFF_RANGE.contains(&policy.cooloff_secs) {
        return Err(ApiError::Validation(
            "cooloff_secs must be between 0 and 604800".into(),
        ));
    }
    if policy.out_of_session_message.trim().is_empty()
        || policy.out_of_session_message.len() > PoolPolicy::MESSAGE_MAX
    {
        return Err(ApiError::Validation(
            "out_of_session_message must hold 1 to 1000 bytes".into(),
        ));
    }
    let (view, created) = s.broker.put_pool(&name, &policy).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(view)).into_response())
}

pub async fn list(auth: Auth, State(s): State<AppState>) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    Ok(ok(
        serde_json::json!({ "pools": s.broker.list_pools().await? }),
    ))
}

pub async fn show(
    auth: Auth,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    Ok(ok(s.broker.get_pool(&pool_name(&name)?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberIn {
    number: String,
    capabilities: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumbersBody {
    numbers: Vec<NumberIn>,
}

pub async fn add_numbers(
    auth: Auth,
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: JsonBody<NumbersBody>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    let name = pool_name(&name)?;
    let list = body.value.numbers;
    if list.is_empty() || list.len() > MAX_NUMBERS {
        return Err(ApiError::Validation(format!(
            "numbers must hold 1 to {MAX_NUMBERS} entries"
        )));
    }
    let input: Vec<(String, Option<Vec<String>>)> = list
        .into_iter()
        .map(|n| (n.number, n.capabilities))
        .collect();
    Ok(ok(s.broker.add_numbers(&name, &input).await?))
}

pub async fn list_numbers(
    auth: Auth,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    let numbers = s.broker.list_numbers(&pool_name(&name)?).await?;
    Ok(ok(serde_json::json!({ "numbers": numbers })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateBody {
    state: String,
}

pub async fn patch_number(
    auth: Auth,
    State(s): State<AppState>,
    Path((name, number)): Path<(String, String)>,
    body: JsonBody<StateBody>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    let name = pool_name(&name)?;
    let number = proxy_number(&number)?;
    let state = NumberState::parse(&body.value.state)
        .ok_or_else(|| ApiError::Validation("state must be active or draining".into()))?;
    Ok(ok(s.broker.set_number_state(&name, &number, state).await?))
}

pub async fn delete_number(
    auth: Auth,
    State(s): State<AppState>,
    Path((name, number)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    let name = pool_name(&name)?;
    let number = proxy_number(&number)?;
    s.broker.remove_number(&name, &number).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn callback_secret(
    auth: Auth,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Admin)?;
    let secret = s.broker.callback_secret(&pool_name(&name)?).await?;
    Ok(ok(serde_json::json!({ "secret": secret })))
}

pub async fn rotate_callback_secret(
    auth: Auth,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Admin)?;
    let secret = s.broker.rotate_callback_secret(&pool_name(&name)?).await?;
    Ok(ok(serde_json::json!({ "secret": secret })))
}
