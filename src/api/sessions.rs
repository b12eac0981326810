//! Sessions (scope `sessions`), routing decisions (scope `relay`) and erasure (`admin`).

use std::collections::BTreeMap;

use crate::http::extract::{Path, Query, State, pool_param};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, Auth, JsonBody, ok};
use crate::broker::{
    BrokerError, Decision, IdemAnswer, Input, NewSession, PROVIDER_REF_TTL_MS, Participant, Scope,
    SessionChoices, UNNAMED_REF_TTL_MS,
};
use crate::domain::session::Kind;
use crate::domain::{E164, Mode, NumberSelection, PoolName, PoolPolicy, RecordChannels, SessionId};

const LABEL_MAX: usize = 128;
const METADATA_KEYS_MAX: usize = 16;
const METADATA_BYTES_MAX: usize = 2048;
const IDEMPOTENCY_KEY_MAX: usize = 255;
/// Marks an answer that repeats an earlier request's (same `Idempotency-Key` and body), so a
/// client can tell a retry that went through before from its own.
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

pub(super) fn number(field: &str, raw: &str) -> Result<E164, ApiError> {
    E164::parse(raw).map_err(|reason| {
        ApiError::Broker(BrokerError::InvalidNumber {
            field: field.to_string(),
            reason,
        })
    })
}

pub(super) fn session_id(raw: &str) -> Result<SessionId, ApiError> {
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
    record: Option<bool>,
    record_channels: Option<String>,
    /// Absent takes the pool's limit; `null`, none.
    #[serde(default, deserialize_with = "super::pools::given")]
    max_call_secs: Option<Option<u32>>,
    #[serde(default, deserialize_with = "super::pools::given")]
    idle_ttl_secs: Option<Option<u32>>,
    proxy_number: Option<String>,
    number_selection: Option<String>,
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
    let record_channels = b
        .record_channels
        .map(|c| {
            RecordChannels::parse(&c)
                .ok_or_else(|| ApiError::Validation("record_channels must be dual or mono".into()))
        })
        .transpose()?;
    if let Some(Some(s)) = b.max_call_secs
        && !PoolPolicy::MAX_CALL_RANGE.contains(&s)
    {
        return Err(ApiError::Validation(
            "max_call_secs must be between 1 and 14400".into(),
        ));
    }
    // As with ttl_secs, a session may be shorter than any pool default.
    if let Some(Some(s)) = b.idle_ttl_secs
        && !(1..=*PoolPolicy::IDLE_TTL_RANGE.end()).contains(&s)
    {
        return Err(ApiError::Validation(
            "idle_ttl_secs must be between 1 and 2592000".into(),
        ));
    }
    let proxy_number = match b.proxy_number.as_deref() {
        None => None,
        Some(raw) => Some(number("proxy_number", raw)?),
    };
    let number_selection = match b.number_selection.as_deref() {
        None => None,
        Some(s) => Some(NumberSelection::parse(s).ok_or_else(|| {
            ApiError::Validation("number_selection must be prefer_sticky or avoid_sticky".into())
        })?),
    };
    let b_ = parsed.pop().expect("two participants");
    let a_ = parsed.pop().expect("two participants");
    Ok(NewSession {
        pool,
        participants: [a_, b_],
        ttl_secs: b.ttl_secs,
        mode,
        metadata,
        choices: SessionChoices {
            record: b.record,
            record_channels,
            max_call_secs: b.max_call_secs,
            idle_ttl_secs: b.idle_ttl_secs,
            number_selection,
            proxy_number,
        },
    })
}

pub async fn create(
    auth: Auth,
    State(s): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Sessions)?;
    let idem = idempotency_key(&headers)?;
    let req = parse_create(body.value)?;
    auth.pool_visible(&req.pool)?;
    let Some(key) = idem else {
        let view = s.broker.create_session(req).await?;
        audit_create(&auth, &s, &view.id, &view.pool, &view.proxy_number).await;
        return Ok((StatusCode::CREATED, axum::Json(view)).into_response());
    };
    let answer = s
        .broker
        .create_session_idempotent(&auth.0.name, &key, &body.raw, req)
        .await?;
    // A replay made nothing new: the first answer's request was recorded.
    if !answer.replayed
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&answer.body)
    {
        let field = |k: &str| v.get(k).and_then(|f| f.as_str()).unwrap_or("").to_string();
        audit_create(
            &auth,
            &s,
            &field("id"),
            &field("pool"),
            &field("proxy_number"),
        )
        .await;
    }
    Ok(idempotent_answer(StatusCode::CREATED, answer))
}

/// The `Idempotency-Key` header, when the request has one.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let k = v
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_MAX)
        .ok_or_else(|| {
            ApiError::Validation("Idempotency-Key must be 1 to 255 visible characters".into())
        })?;
    Ok(Some(k.to_string()))
}

/// The answer of an idempotent request, marked when it repeats an earlier one's.
pub(super) fn idempotent_answer(status: StatusCode, answer: IdemAnswer) -> Response {
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        answer.body,
    )
        .into_response();
    if answer.replayed {
        resp.headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    resp
}

/// A session is named by its id and its proxy number, never its participants.
async fn audit_create(auth: &Auth, s: &AppState, id: &str, pool: &str, proxy: &str) {
    let detail = serde_json::json!({ "pool": pool, "proxy_number": proxy });
    auth.audit(
        s,
        "session.create",
        &format!("session:{id}"),
        Some(pool),
        detail,
    )
    .await;
}

pub async fn show(
    auth: Auth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Sessions)?;
    let id = session_id(&id)?;
    auth.session_visible(&s.broker, &id).await?;
    Ok(ok(s.broker.get_session(&id).await?))
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
    auth.session_visible(&s.broker, &id).await?;
    let ttl_secs = body.value.ttl_secs;
    let view = s.broker.extend_session(&id, ttl_secs).await?;
    let detail = serde_json::json!({ "ttl_secs": ttl_secs, "expires_at": view.expires_at });
    auth.audit(
        &s,
        "session.extend",
        &format!("session:{id}"),
        Some(&view.pool),
        detail,
    )
    .await;
    Ok(ok(view))
}

pub async fn interactions(
    auth: Auth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Sessions)?;
    let id = session_id(&id)?;
    auth.session_visible(&s.broker, &id).await?;
    let list = s.broker.interactions(&id).await?;
    Ok(ok(serde_json::json!({ "interactions": list })))
}

pub async fn close(
    auth: Auth,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Sessions)?;
    let id = session_id(&id)?;
    auth.session_visible(&s.broker, &id).await?;
    let view = s.broker.close_session(&id).await?;
    let detail = serde_json::json!({ "pool": view.pool });
    auth.audit(
        &s,
        "session.close",
        &format!("session:{id}"),
        Some(&view.pool),
        detail,
    )
    .await;
    Ok(ok(view))
}

#[derive(Deserialize)]
pub struct ListQuery {
    participant: Option<String>,
    pool: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Largest page of a pool's open sessions.
const PAGE_MAX: usize = 200;

/// A participant's open sessions (all of them: a person holds few), or, with only `pool`,
/// one page of that pool's open sessions.
pub async fn list(
    auth: Auth,
    State(s): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Sessions)?;
    let pool = pool_param(q.pool)?;
    let Some(raw) = q.participant else {
        let pool = pool.ok_or_else(|| {
            ApiError::Validation(
                "give the `participant` query parameter, or `pool` for a page of its open sessions"
                    .into(),
            )
        })?;
        auth.pool_visible(&pool)?;
        let limit = q.limit.unwrap_or(50);
        if !(1..=PAGE_MAX).contains(&limit) {
            return Err(ApiError::Validation(format!(
                "limit must be between 1 and {PAGE_MAX}"
            )));
        }
        let (sessions, next) = s
            .broker
            .open_sessions_page(&pool, q.cursor.as_deref(), limit)
            .await?;
        return Ok(ok(
            serde_json::json!({ "sessions": sessions, "next_cursor": next }),
        ));
    };
    // A `+` left unencoded in a query string arrives as a space.
    let raw = match raw.strip_prefix(' ') {
        Some(rest) => format!("+{rest}"),
        None => raw,
    };
    let participant = number("participant", &raw)?;
    let sessions = s
        .broker
        .sessions_of(&participant, pool.as_ref(), auth.pools())
        .await?;
    Ok(ok(serde_json::json!({ "sessions": sessions })))
}

/// The provider name of interactions relayed through `POST /v1/route`.
const ROUTE_PROVIDER: &str = "api";

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
        /// The text to pass on when it is not the one that came (its PIN taken off).
        #[serde(skip_serializing_if = "Option::is_none")]
        body: Option<&'a str>,
    },
    Announce {
        message: &'a str,
    },
    /// Ask the caller for a PIN, then call again with `digits` and this `attempt`.
    Gather {
        digits: u8,
        attempt: u8,
        timeout_secs: u32,
        prompt: &'a str,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    from: String,
    to: String,
    kind: String,
    /// The caller's own id of the call or message, so a retried request is recognised and
    /// answered as the first one was.
    reference: Option<String>,
    /// A text's body: one that opens with a PIN reaches that PIN's session.
    body: Option<String>,
    /// What the caller typed at a PIN prompt (`""` for nothing), with the prompt's
    /// `attempt`; the call's `reference` is required with them.
    digits: Option<String>,
    attempt: Option<u8>,
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
    // A key limited to some pools reaches only their numbers; any other answers as unknown.
    if !s.broker.number_visible(auth.pools(), &to).await? {
        return Err(
            BrokerError::NumberNotFound(format!("{to} is not a number of any pool")).into(),
        );
    }
    // The same path as a provider's webhook: intercept, interaction, events. A request
    // without a reference of its own is a new interaction each time.
    let named = b.reference.is_some();
    let (reference, remembered_ms) = match b.reference {
        Some(reference) => (reference, PROVIDER_REF_TTL_MS),
        None => (
            format!("unnamed_{}", SessionId::new(0, 0).key()),
            UNNAMED_REF_TTL_MS,
        ),
    };
    let input = match (&b.digits, b.attempt) {
        (Some(digits), attempt) => {
            if kind != Kind::Voice || b.body.is_some() || !named {
                return Err(ApiError::Validation(
                    "digits come with a call (kind voice) and its reference, without a body".into(),
                ));
            }
            if digits.len() > 16 || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return Err(ApiError::Validation(
                    "digits is at most 16 digits 0-9".into(),
                ));
            }
            Input::Digits {
                digits,
                attempt: attempt.filter(|a| *a >= 1).ok_or_else(|| {
                    ApiError::Validation("attempt (1 or more) comes with digits".into())
                })?,
            }
        }
        (None, Some(_)) => {
            return Err(ApiError::Validation("attempt comes with digits".into()));
        }
        (None, None) => Input::Arrived {
            body: b.body.as_deref(),
        },
    };
    let outcome = s
        .relay_remembered(
            ROUTE_PROVIDER,
            &reference,
            remembered_ms,
            from.as_ref(),
            &to,
            kind,
            input,
        )
        .await?;
    let answer = match &outcome.decision {
        Decision::Connect {
            session_id,
            caller_id,
            to,
            ..
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
            body: outcome.body.as_deref(),
        },
        Decision::Announce { message } => RouteAnswer::Announce { message },
        Decision::Gather {
            digits,
            attempt,
            timeout_secs,
            prompt,
        } => RouteAnswer::Gather {
            digits: *digits,
            attempt: *attempt,
            timeout_secs: *timeout_secs,
            prompt,
        },
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
    let closed = s.broker.erase_participant(&n, auth.pools()).await?;
    // The erased number is exactly what must not be kept: the entry says only that an
    // erasure happened and what it closed.
    let detail = serde_json::json!({ "closed_sessions": closed });
    auth.audit(&s, "participant.erase", "participant:-", None, detail)
        .await;
    Ok(ok(serde_json::json!({ "closed_sessions": closed })))
}
