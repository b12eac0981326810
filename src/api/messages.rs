//! Texts the app sends to a participant from the session's proxy number (scope `sessions`).

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::sessions::{idempotency_key, idempotent_answer, number, session_id};
use super::{ApiError, AppState, Auth, JsonBody};
use crate::broker::{AppText, Recipient, Scope, TextVia};
use crate::domain::SessionId;
use crate::http::extract::{Path, State};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    /// A participant's number (E.164, so starting with `+`) or label.
    to: String,
    body: String,
}

/// `POST /v1/sessions/{id}/messages`: answered 202 once the text is recorded and queued; the
/// interaction's status then follows the send and the provider's delivery reports.
pub async fn send(
    auth: Auth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody<MessageBody>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Sessions)?;
    let idem = idempotency_key(&headers)?;
    let id = session_id(&id)?;
    auth.session_visible(&s.broker, &id).await?;
    let to = if body.value.to.starts_with('+') {
        Recipient::Number(number("to", &body.value.to)?)
    } else {
        Recipient::Label(body.value.to.clone())
    };
    let text = AppText {
        to,
        body: body.value.body.clone(),
    };
    let available: Vec<TextVia> = s
        .config
        .providers
        .texting()
        .into_iter()
        .filter_map(TextVia::parse)
        .collect();
    let Some(key) = idem else {
        let reference = s.broker.text_reference(None);
        let view = s
            .broker
            .send_text(&id, &text, &available, &s.public_url, &reference)
            .await?;
        audit_text(&auth, &s, &id, &view.id, &view.provider).await;
        return Ok((StatusCode::ACCEPTED, axum::Json(view)).into_response());
    };
    let answer = s
        .broker
        .send_text_idempotent(
            &auth.0.name,
            &key,
            &body.raw,
            &id,
            &text,
            &available,
            &s.public_url,
        )
        .await?;
    // A replay sent nothing new: the first request was recorded.
    if !answer.replayed
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&answer.body)
    {
        let field = |k: &str| v.get(k).and_then(|f| f.as_str()).unwrap_or("");
        audit_text(&auth, &s, &id, field("id"), field("provider")).await;
    }
    Ok(idempotent_answer(StatusCode::ACCEPTED, answer))
}

/// A text is named by its session and interaction, never by its words or its recipient's
/// number.
async fn audit_text(auth: &Auth, s: &AppState, id: &SessionId, interaction: &str, via: &str) {
    let pool = s.broker.pool_name(id.pool_id).await.ok();
    let detail = serde_json::json!({ "interaction_id": interaction, "provider": via });
    auth.audit(
        s,
        "session.message",
        &format!("session:{id}"),
        pool.as_deref(),
        detail,
    )
    .await;
}
