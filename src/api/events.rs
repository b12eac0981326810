//! Events as the app's operators see them (scope `pools`): what was sent, what failed, and
//! sending again.

use crate::http::extract::{Path, Query, State, pool_param};
use axum::response::Response;
use serde::Deserialize;

use super::{ApiError, AppState, Auth, ok};
use crate::broker::Scope;

const LIST_MAX: usize = 500;

#[derive(Deserialize)]
pub struct ListQuery {
    pool: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

pub async fn list(
    auth: Auth,
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    let pool = pool_param(q.pool)?;
    if let Some(st) = q.status.as_deref()
        && !matches!(st, "pending" | "delivered" | "failed")
    {
        return Err(ApiError::Validation(
            "status must be pending, delivered or failed".into(),
        ));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=LIST_MAX).contains(&limit) {
        return Err(ApiError::Validation(format!(
            "limit must be between 1 and {LIST_MAX}"
        )));
    }
    let events = s
        .broker
        .list_events(pool.as_ref(), q.status.as_deref(), limit, auth.pools())
        .await?;
    Ok(ok(serde_json::json!({ "events": events })))
}

pub async fn redeliver(
    auth: Auth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    auth.event_visible(&s.broker, &id).await?;
    let view = s.broker.redeliver_event(&id).await?;
    let detail = serde_json::json!({ "type": view.kind });
    auth.audit(
        &s,
        "event.redeliver",
        &format!("event:{id}"),
        Some(&view.pool),
        detail,
    )
    .await;
    Ok(ok(view))
}
