//! Calls the app starts (scope `sessions`): `POST /v1/sessions/{id}/calls` rings one
//! participant from the session's proxy number through the configured provider; once they
//! answer, the provider's bridge webhook connects the other.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::sessions::{idempotency_key, idempotent_answer, session_id};
use super::{ApiError, AppState, Auth, JsonBody};
use crate::broker::{IdemAnswer, Scope};
use crate::domain::SessionId;
use crate::http::calls::{CallError, Dialer};
use crate::http::extract::{Path, State};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    /// The participant rung first: their number or their label.
    from: String,
}

/// The call as the API answers it. No numbers: the app knows them, and a stored replay
/// must not hold them.
#[derive(Serialize)]
struct CallView<'a> {
    id: &'a str,
    session_id: &'a str,
    kind: &'static str,
    initiated_by: &'static str,
    status: &'static str,
    /// Whom the proxy number stands for, as in the interaction.
    from_participant: usize,
    /// The participant rung first.
    to_participant: usize,
    provider: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_call_id: Option<&'a str>,
}

pub async fn create(
    auth: Auth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody<CallBody>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Sessions)?;
    let idem = idempotency_key(&headers)?;
    let id = session_id(&id)?;
    auth.session_visible(&s.broker, &id).await?;
    if body.value.from.is_empty() || body.value.from.len() > 128 {
        return Err(ApiError::Validation(
            "from is a participant's number or label".into(),
        ));
    }
    let available: Vec<&str> = s.dialers.iter().map(|d| d.provider()).collect();
    let provider = s.broker.call_provider(&id, &available).await?;
    let dialer = s
        .dialers
        .iter()
        .find(|d| d.provider() == provider)
        .cloned()
        .ok_or_else(|| ApiError::Internal("a chosen provider has no dialer".into()))?;
    let work = place(&s, &id, &body.value.from, dialer.as_ref());
    let answer = match idem {
        None => IdemAnswer {
            body: work.await?,
            replayed: false,
        },
        Some(key) => s.broker.once(&auth.0.name, &key, &body.raw, work).await?,
    };
    // A replay placed nothing new: the first request was recorded.
    if !answer.replayed
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&answer.body)
    {
        let field = |k: &str| v.get(k).and_then(|f| f.as_str()).unwrap_or("");
        audit_call(&auth, &s, &id, field("id"), field("provider")).await;
    }
    Ok(idempotent_answer(StatusCode::CREATED, answer))
}

/// A call is named by its session and interaction, never by a participant's number.
async fn audit_call(auth: &Auth, s: &AppState, id: &SessionId, interaction: &str, via: &str) {
    let pool = s.broker.pool_name(id.pool_id).await.ok();
    let detail = serde_json::json!({ "interaction_id": interaction, "provider": via });
    auth.audit(
        s,
        "session.call",
        &format!("session:{id}"),
        pool.as_deref(),
        detail,
    )
    .await;
}

/// Records the call, asks the provider to place it, and gives the answer's JSON. A call
/// the provider did not take is recorded as failed.
async fn place(
    s: &AppState,
    id: &SessionId,
    from: &str,
    dialer: &dyn Dialer,
) -> Result<String, ApiError> {
    let provider = dialer.provider();
    let call = s.broker.start_call(id, from, provider).await?;
    match dialer.place(&s.public_url, &call).await {
        Ok(call_id) => {
            tracing::info!(session = %id, interaction = %call.interaction, provider,
                "call placed for the app");
            Ok(serde_json::to_string(&CallView {
                id: &call.interaction,
                session_id: &call.session_id,
                kind: "voice",
                initiated_by: "app",
                status: "initiated",
                from_participant: call.from_participant,
                to_participant: call.side,
                provider,
                provider_call_id: call_id.as_deref(),
            })
            .expect("a call view serialises"))
        }
        Err(e) => {
            tracing::warn!(session = %id, interaction = %call.interaction, provider,
                error = %e, "call not placed");
            if let Err(failed) = s.broker.call_not_placed(provider, &call).await {
                tracing::warn!(error = %failed, "the call's interaction was not marked failed");
            }
            Err(match e {
                CallError::Refused(d) => ApiError::ProviderRefused(d),
                CallError::Unavailable(d) => ApiError::ProviderDown(d),
            })
        }
    }
}
