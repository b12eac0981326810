//! Sessions (scope `sessions`), routing decisions (scope `relay`) and erasure (`admin`).

use std::collections::BTreeMap;

use super::extract::{Path, Query, State, pool_param};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, Auth, JsonBody, ok};
use crate::broker::{BrokerError, Decision, NewSession, Participant, Scope};
use crate::domain::session::Kind;
use crate::domain::{E164, Mode, PoolName, SessionId};

const LABEL_MAX: usize = 128;
const METADATA_KEYS_MAX: usize = 16;
const METADATA_BYTES_MAX: usize = 2048;
const IDEMPOTENCY_KEY_MAX: usize = 255;

fn number(field: &str, raw: &str) -> Result<E164, ApiError> {
    E164::parse(raw).map_err(|reason| {
        ApiError::Broker(BrokerError::InvalidNumber {
            field: field.to_string(),
            reason,
        })
    })
}

fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(raw).ok_or(ApiError::Broker(BrokerError::SessionNotFound))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantIn {
    number: String,
    label: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pool: String,
    participants: Vec<ParticipantIn>,
    ttl_secs: Option<u32>,
    mode: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
}

fn parse_create(b: CreateBody) -> Result<NewSession, ApiError> {
    let pool = PoolName::parse(&b.pool)
        .ok_or_else(|| ApiError::Broker(BrokerError::PoolNotFound(super::scrub(&b.pool))))?;
    if b.participants.len() != 2 {
        return Err(ApiError::Validation(
            "participants must hold exactly two entries".into(),
        ));
    }
    let mut parsed = Vec::with_capacity(2);
    for (i, p) in b.participants.into_iter().enumerate() {
        let n = number(&format!("participants[{i}].number"), &p.number)?;
        if p.label.as_ref().is_some_and(|l| l.len() > LABEL_MAX) {
            return Err(ApiError::Validation(format!(
                "participants[{i}].label is longer than {LABEL_MAX} bytes"
            )));
        }
        parsed.push(Participant {
            number: n,
            label: p.label,
        });
    }
    let mode = match b.mode.as_deref() {
        None => Mode::VoiceSms,
        Some(m) => Mode::parse(m)
            .ok_or_else(|| ApiError::Validation("mode must be voice, sms or voice_sms".into()))?,
    };
    let metadata = b.metadata.unwrap_or_default();
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if metadata.len() > METADATA_KEYS_MAX || bytes > METADATA_BYTES_MAX {
        return Err(ApiError::Validation(format!(
            "metadata holds at most {METADATA_KEYS_MAX} keys and {METADATA_BYTES_MAX} bytes"
        )));
    }
    if let Some(t) = b.ttl_secs
        && !(1..=crate::broker::MAX_TTL_SECS).contains(&t)
    {
        return Err(ApiError::Validation(format!(
            "ttl_secs must be between 1 and {}",
            crate::broker::MAX_TTL_SECS
        )));
    }
    let b_ = parsed.pop().expect("two participants");
    let a_ = parsed.pop().expect("two participants");
    Ok(NewSession {
        pool,
        participants: [a_, b_],
        ttl_secs: b.ttl_secs,
        mode,
        metadata,
    })
}

pub async fn create(
    auth: Auth,
    State(s): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Sessions)?;
    let idem = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_MAX)
                .ok_or_else(|| {
                    ApiError::Validation(
                        "Idempotency-Key must be 1 to 255 visible characters".into(),
                    )
                })?;
            Some(k.to_string())
        }
    };
    let req = parse_create(body.value)?;
    let created = |text: String| {
        (
            StatusCode::CREATED,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            text,
        )
            .into_response()
    };
    let Some(key) = idem else {
        let view = s.broker.create_session(req).await?;
        return Ok((StatusCode::CREATED, axum::Json(view)).into_response());
    };
    let who = auth.0.name.clone();
    if let Some(replay) = s.broker.idem_begin(&who, &key, &body.raw).await? {
        return Ok(created(replay));
    }
    let numbers = [
        req.participants[0].number.clone(),
        req.participants[1].number.clone(),
    ];
    match s.broker.create_session(req).await {
        Ok(view) => {
            let text = serde_json::to_string(&view).expect("session view serialises");
            s.broker
                .idem_finish(&who, &key, &body.raw, &text, &[&numbers[0], &numbers[1]])
                .await?;
            Ok(created(text))
        }
        Err(e) => {
            // A failed attempt does not pin the key: the client may retry it.
            if let Err(abort) = s.broker.idem_abort(&who, &key).await {
                tracing::warn!(error = %abort, "idempotency key not released");
            }
            Err(e.into())
        }
    }
}

pub async fn show(
    auth: Auth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Sessions)?;
    Ok(ok(s.broker.get_session(&session_id(&id)?).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    ttl_secs: u32,
}

pub async fn extend(
    auth: Auth,
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody<ExtendBody>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Sessions)?;
    let id = session_id(&id)?;
    Ok(ok(s
        .broker
        .extend_session(&id, body.value.ttl_secs)
        .await?))
}

pub async fn interactions(
    auth: Auth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Sessions)?;
    let list = s.broker.interactions(&session_id(&id)?).await?;
    Ok(ok(serde_json::json!({ "interactions": list })))
}

pub async fn close(
    auth: Auth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Sessions)?;
    Ok(ok(s.broker.close_session(&session_id(&id)?).await?))
}

#[derive(Deserialize)]
pub struct ListQuery {
    participant: Option<String>,
    pool: Option<String>,
}

pub async fn list(
    auth: Auth,
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Sessions)?;
    let raw = q.participant.ok_or_else(|| {
        ApiError::Validation("the `participant` query parameter is required".into())
    })?;
    // A `+` left unencoded in a query string arrives as a space.
    let raw = match raw.strip_prefix(' ') {
        Some(rest) => format!("+{rest}"),
        None => raw,
    };
    let participant = number("participant", &raw)?;
    let pool = pool_param(q.pool)?;
    let sessions = s.broker.sessions_of(&participant, pool.as_ref()).await?;
    Ok(ok(serde_json::json!({ "sessions": sessions })))
}

/// The routing answer; a struct rather than a JSON map, as it is on the hot path.
#[derive(serde::Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum RouteAnswer<'a> {
    Connect {
        session_id: &'a str,
        caller_id: &'a str,
        to: &'a str,
    },
    Relay {
        session_id: &'a str,
        from: &'a str,
        to: &'a str,
    },
    Announce {
        message: &'a str,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    from: String,
    to: String,
    kind: String,
}

pub async fn route(
    auth: Auth,
    State(s): State<AppState>,
    body: JsonBody<RouteBody>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Relay)?;
    let b = body.value;
    let kind = match b.kind.as_str() {
        "voice" => Kind::Voice,
        "sms" => Kind::Sms,
        _ => return Err(ApiError::Validation("kind must be voice or sms".into())),
    };
    // Routing only looks numbers up, so the E.164 form is checked, not the numbering plan
    // (which costs more than the rest of the request): an unknown number matches nothing.
    let syntax = |field: &str, raw: &str| {
        E164::parse_syntax(raw).map_err(|reason| {
            ApiError::Broker(BrokerError::InvalidNumber {
                field: field.to_string(),
                reason,
            })
        })
    };
    let to = syntax("to", &b.to)?;
    // Providers send withheld caller IDs as `anonymous`, `restricted` and the like: such a
    // caller holds no route and hears the out-of-session answer, like any stranger.
    let from = E164::parse_syntax(&b.from).ok();
    let decision = s.broker.route(from.as_ref(), &to, kind).await?;
    let answer = match &decision {
        Decision::Connect {
            session_id,
            caller_id,
            to,
        } => RouteAnswer::Connect {
            session_id,
            caller_id: caller_id.reveal(),
            to: to.reveal(),
        },
        Decision::Relay {
            session_id,
            from,
            to,
        } => RouteAnswer::Relay {
            session_id,
            from: from.reveal(),
            to: to.reveal(),
        },
        Decision::Announce { message } => RouteAnswer::Announce { message },
    };
    Ok(ok(answer))
}

pub async fn erase(
    auth: Auth,
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Admin)?;
    let n = number("number", &raw)?;
    let closed = s.broker.erase_participant(&n).await?;
    Ok(ok(serde_json::json!({ "closed_sessions": closed })))
}
