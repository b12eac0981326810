//! A pool's per-minute counts and how its numbers compare with its observed peak (scope
//! `pools`).

use serde::Deserialize;

use crate::http::extract::{Path, Query, State};
use axum::response::Response;

use super::{ApiError, AppState, Auth, ok};
use crate::broker::Scope;
use crate::store::STATS_MINUTES;

use super::pools::pool_name;

#[derive(Deserialize)]
pub struct StatsQuery {
    minutes: Option<i64>,
}

pub async fn stats(
    auth: Auth,
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<StatsQuery>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    let name = pool_name(&name)?;
    auth.pool_visible(&name)?;
    let minutes = q.minutes.unwrap_or(1440);
    if !(1..=STATS_MINUTES).contains(&minutes) {
        return Err(ApiError::Validation(format!(
            "minutes must be between 1 and {STATS_MINUTES}"
        )));
    }
    Ok(ok(s.broker.pool_stats(&name, minutes).await?))
}

pub async fn capacity(
    auth: Auth,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    let name = pool_name(&name)?;
    auth.pool_visible(&name)?;
    Ok(ok(s.broker.pool_capacity(&name).await?))
}
