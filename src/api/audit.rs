//! The audit log (scope `admin`): every change made through the API, the console or the
//! CLI, newest first, paged by an opaque cursor and filtered by actor, action, target and
//! time.

use serde::Deserialize;

use crate::http::extract::{Query, State};
use axum::response::Response;

use super::{ApiError, AppState, Auth, ok};
use crate::broker::{AUDIT_PAGE_MAX, AuditCursor, AuditQuery, Scope};
use crate::domain::Millis;

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

fn time(field: &str, raw: Option<String>) -> Result<Option<Millis>, ApiError> {
    raw.map(|t| {
        // A `+` offset left unencoded in a query string arrives as a space.
        let t = t.replace(' ', "+");
        time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
            .map(|d| (d.unix_timestamp_nanos() / 1_000_000) as Millis)
            .map_err(|_| {
                ApiError::Validation(format!(
                    "{field} must be an RFC 3339 time, such as 2026-01-31T09:00:00Z"
                ))
            })
    })
    .transpose()
}

pub async fn list(
    auth: Auth,
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Admin)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=AUDIT_PAGE_MAX).contains(&limit) {
        return Err(ApiError::Validation(format!(
            "limit must be between 1 and {AUDIT_PAGE_MAX}"
        )));
    }
    let cursor = q
        .cursor
        .map(|c| {
            AuditCursor::parse(&c).ok_or_else(|| {
                ApiError::Validation("cursor must be a `next_cursor` an earlier page gave".into())
            })
        })
        .transpose()?;
    let since = time("since", q.since)?;
    let until = time("until", q.until)?;
    if let (Some(a), Some(b)) = (since, until)
        && a > b
    {
        return Err(ApiError::Validation("since must not be after until".into()));
    }
    let query = AuditQuery {
        limit,
        cursor,
        actor: q.actor,
        action: q.action,
        target: q.target,
        since,
        until,
    };
    Ok(ok(s.broker.audit_list(&query, auth.pools()).await?))
}
