//! The calling key itself (any scope): its name, scopes and pools, so a client such as the
//! console offers only what the key may do.

use axum::response::Response;

use super::{ApiError, Auth, ok};
use crate::broker::PoolLimit;

pub async fn show(auth: Auth) -> Result<Response, ApiError> {
    let p = &auth.0;
    let scopes: Vec<&str> = p.scopes.iter().map(|s| s.as_str()).collect();
    let pools: Option<Vec<&str>> = match &p.pools {
        PoolLimit::All => None,
        PoolLimit::Only(set) => Some(set.iter().map(|n| n.as_str()).collect()),
    };
    Ok(ok(serde_json::json!({
        "name": p.name,
        "scopes": scopes,
        "pools": pools,
    })))
}
