//! Pools and their numbers (scope `pools`).

use crate::http::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, Auth, JsonBody, ok};
use crate::broker::Scope;
use crate::domain::{
    E164, GeoMatch, InterceptFallback, NumberSelection, NumberState, PinMode, PoolName, PoolPolicy,
    RecordChannels,
};

/// Largest bulk import in one request.
const MAX_NUMBERS: usize = 1000;

pub(super) fn pool_name(raw: &str) -> Result<PoolName, ApiError> {
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

/// A pool's settings as a request gives them. Each field tells three cases apart, as a JSON
/// merge patch (RFC 7396) does: absent (`None`: keep), `null` (`Some(None)`: the default),
/// or a value. PUT starts from the defaults, so absent and `null` mean the same there.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolBody {
    #[serde(default, deserialize_with = "given")]
    default_ttl_secs: Option<Option<i64>>,
    #[serde(default, deserialize_with = "given")]
    cooloff_secs: Option<Option<i64>>,
    #[serde(default, deserialize_with = "given")]
    geo_match: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    out_of_session_message: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    callback_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    callback_include_numbers: Option<Option<bool>>,
    #[serde(default, deserialize_with = "given")]
    intercept_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    intercept_timeout_ms: Option<Option<i64>>,
    #[serde(default, deserialize_with = "given")]
    intercept_fallback: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    low_threshold_pct: Option<Option<i64>>,
    #[serde(default, deserialize_with = "given")]
    shards: Option<Option<i64>>,
    #[serde(default, deserialize_with = "given")]
    record: Option<Option<bool>>,
    #[serde(default, deserialize_with = "given")]
    record_channels: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    max_call_secs: Option<Option<i64>>,
    #[serde(default, deserialize_with = "given")]
    idle_ttl_secs: Option<Option<i64>>,
    #[serde(default, deserialize_with = "given")]
    provider: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    number_selection: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    pin: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    pin_length: Option<Option<i64>>,
    #[serde(default, deserialize_with = "given")]
    pin_prompt_timeout_secs: Option<Option<i64>>,
    #[serde(default, deserialize_with = "given")]
    pin_retry: Option<Option<i64>>,
    #[serde(default, deserialize_with = "given")]
    pin_caller_check: Option<Option<bool>>,
    #[serde(default, deserialize_with = "given")]
    pin_failure_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "given")]
    pin_prompt: Option<Option<String>>,
    #[serde(default, deserialize_with = "given")]
    pin_text_prompt: Option<Option<String>>,
}

/// A field that is present, as its value or `null`; serde calls this only for present fields.
pub(super) fn given<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A whole number for a setting narrower than JSON's: one its type cannot hold is out of the
/// setting's range as well, so it becomes the type's largest value, which
/// [`PoolPolicy::check`] refuses in a sentence naming the setting (serde's own error would
/// name only the type).
fn narrow<T: TryFrom<i64>>(max: T) -> impl FnOnce(i64) -> Result<T, ApiError> {
    move |v| Ok(T::try_from(v).unwrap_or(max))
}

/// A merge step: absent keeps `current`, `null` takes `default`, a value is parsed.
fn merge<T, V>(
    field: Option<Option<V>>,
    current: T,
    default: T,
    parse: impl FnOnce(V) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    match field {
        None => Ok(current),
        Some(None) => Ok(default),
        Some(Some(v)) => parse(v),
    }
}

impl PoolBody {
    /// The policy this body makes of `base` (the defaults for PUT, the stored policy for
    /// PATCH), checked whole.
    fn apply(self, base: PoolPolicy, allow_private: bool) -> Result<PoolPolicy, ApiError> {
        let d = PoolPolicy::default();
        let url = |field: &'static str| move |u: String| target_url(field, Some(u), allow_private);
        let policy = PoolPolicy {
            default_ttl_secs: merge(
                self.default_ttl_secs,
                base.default_ttl_secs,
                d.default_ttl_secs,
                narrow(u32::MAX),
            )?,
            cooloff_secs: merge(
                self.cooloff_secs,
                base.cooloff_secs,
                d.cooloff_secs,
                narrow(u32::MAX),
            )?,
            geo_match: merge(self.geo_match, base.geo_match, d.geo_match, |g| {
                GeoMatch::parse(&g).ok_or_else(|| {
                    ApiError::Validation("geo_match must be area_code, country or any".into())
                })
            })?,
            out_of_session_message: merge(
                self.out_of_session_message,
                base.out_of_session_message,
                d.out_of_session_message,
                Ok,
            )?,
            callback_url: merge(
                self.callback_url,
                base.callback_url,
                d.callback_url,
                url("callback_url"),
            )?,
            callback_include_numbers: merge(
                self.callback_include_numbers,
                base.callback_include_numbers,
                d.callback_include_numbers,
                Ok,
            )?,
            intercept_url: merge(
                self.intercept_url,
                base.intercept_url,
                d.intercept_url,
                url("intercept_url"),
            )?,
            intercept_timeout_ms: merge(
                self.intercept_timeout_ms,
                base.intercept_timeout_ms,
                d.intercept_timeout_ms,
                narrow(u32::MAX),
            )?,
            intercept_fallback: merge(
                self.intercept_fallback,
                base.intercept_fallback,
                d.intercept_fallback,
                |f| match f.as_str() {
                    "allow" => Ok(InterceptFallback::Allow),
                    "block" => Ok(InterceptFallback::Block),
                    _ => Err(ApiError::Validation(
                        "intercept_fallback must be allow or block".into(),
                    )),
                },
            )?,
            low_threshold_pct: merge(
                self.low_threshold_pct,
                base.low_threshold_pct,
                d.low_threshold_pct,
                narrow(u8::MAX),
            )?,
            shards: merge(self.shards, base.shards, d.shards, narrow(u16::MAX))?,
            record: merge(self.record, base.record, d.record, Ok)?,
            record_channels: merge(
                self.record_channels,
                base.record_channels,
                d.record_channels,
                |v| {
                    RecordChannels::parse(&v).ok_or_else(|| {
                        ApiError::Validation("record_channels must be dual or mono".into())
                    })
                },
            )?,
            max_call_secs: merge(
                self.max_call_secs,
                base.max_call_secs,
                d.max_call_secs,
                |v| narrow(u32::MAX)(v).map(Some),
            )?,
            idle_ttl_secs: merge(
                self.idle_ttl_secs,
                base.idle_ttl_secs,
                d.idle_ttl_secs,
                |v| narrow(u32::MAX)(v).map(Some),
            )?,
            provider: merge(self.provider, base.provider, d.provider, |v| Ok(Some(v)))?,
            number_selection: merge(
                self.number_selection,
                base.number_selection,
                d.number_selection,
                |v| {
                    NumberSelection::parse(&v).ok_or_else(|| {
                        ApiError::Validation(
                            "number_selection must be prefer_sticky or avoid_sticky".into(),
                        )
                    })
                },
            )?,
            pin: merge(self.pin, base.pin, d.pin, |v| {
                PinMode::parse(&v).ok_or_else(|| {
                    ApiError::Validation("pin must be off, fallback or always".into())
                })
            })?,
            pin_length: merge(
                self.pin_length,
                base.pin_length,
                d.pin_length,
                narrow(u8::MAX),
            )?,
            pin_prompt_timeout_secs: merge(
                self.pin_prompt_timeout_secs,
                base.pin_prompt_timeout_secs,
                d.pin_prompt_timeout_secs,
                narrow(u32::MAX),
            )?,
            pin_retry: merge(self.pin_retry, base.pin_retry, d.pin_retry, narrow(u8::MAX))?,
            pin_caller_check: merge(
                self.pin_caller_check,
                base.pin_caller_check,
                d.pin_caller_check,
                Ok,
            )?,
            pin_failure_limit: merge(
                self.pin_failure_limit,
                base.pin_failure_limit,
                d.pin_failure_limit,
                narrow(u8::MAX),
            )?,
            pin_prompt: merge(self.pin_prompt, base.pin_prompt, d.pin_prompt, Ok)?,
            pin_text_prompt: merge(
                self.pin_text_prompt,
                base.pin_text_prompt,
                d.pin_text_prompt,
                Ok,
            )?,
        };
        policy.check().map_err(ApiError::Validation)?;
        Ok(policy)
    }
}

/// A callback or intercept URL: https, and a public host unless private targets are allowed.
/// An empty text means none.
fn target_url(
    field: &str,
    raw: Option<String>,
    allow_private: bool,
) -> Result<Option<String>, ApiError> {
    use crate::events::ssrf::SsrfError;
    match raw.filter(|u| !u.is_empty()) {
        None => Ok(None),
        Some(u) => crate::events::ssrf::check_url(&u, allow_private)
            .map(|url| Some(url.to_string()))
            .map_err(|e| {
                // Local development is the usual reason for an http or private URL: say
                // which setting allows it.
                let hint = if !allow_private
                    && matches!(e, SsrfError::Scheme(_) | SsrfError::Forbidden(_))
                {
                    " (plain http and private addresses are allowed only with \
                     HUSH_CALLBACK_ALLOW_PRIVATE=true, which `hush dev` sets; never in production)"
                } else {
                    ""
                };
                ApiError::Validation(format!("{field}: {e}{hint}"))
            }),
    }
}

/// The settings a request body names, for the audit log: names only, as a URL or message
/// may carry what an operator would not want copied into a log kept 90 days.
fn given_fields(raw: &[u8]) -> Vec<String> {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(raw)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// PUT: the body is the whole policy; settings it leaves out take their defaults.
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
    auth.pool_visible(&name)?;
    // A PUT that leaves `shards` out keeps the pool's count: it can only grow, so the
    // default would refuse every PUT to a grown pool that does not repeat it.
    let keep_shards = body.value.shards.is_none();
    let policy = body
        .value
        .apply(PoolPolicy::default(), s.config.callback_allow_private)?;
    let (view, created) = s.broker.put_pool(&name, &policy, keep_shards).await?;
    let (status, action) = if created {
        (StatusCode::CREATED, "pool.create")
    } else {
        (StatusCode::OK, "pool.update")
    };
    let detail = serde_json::json!({ "fields": given_fields(&body.raw), "replace": true });
    auth.audit(
        &s,
        action,
        &format!("pool:{name}"),
        Some(name.as_str()),
        detail,
    )
    .await;
    Ok((status, axum::Json(view)).into_response())
}

/// PATCH: a JSON merge patch over the stored policy of an existing pool.
pub async fn patch(
    auth: Auth,
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: JsonBody<PoolBody>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    let name = pool_name(&name)?;
    auth.pool_visible(&name)?;
    let allow_private = s.config.callback_allow_private;
    let fields = given_fields(&body.raw);
    let body = body.value;
    // The broker may call this more than once (a concurrent change won the race); the body
    // is applied afresh to whatever it read last.
    let view = s
        .broker
        .patch_pool(&name, |current| {
            body.clone().apply(current.clone(), allow_private)
        })
        .await?;
    let detail = serde_json::json!({ "fields": fields });
    auth.audit(
        &s,
        "pool.update",
        &format!("pool:{name}"),
        Some(name.as_str()),
        detail,
    )
    .await;
    Ok(ok(view))
}

/// DELETE: the pool, its numbers and settings; refused while any number holds a session.
pub async fn delete(
    auth: Auth,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    let name = pool_name(&name)?;
    auth.pool_visible(&name)?;
    s.broker.delete_pool(&name).await?;
    let target = format!("pool:{name}");
    auth.audit(
        &s,
        "pool.delete",
        &target,
        Some(name.as_str()),
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn list(auth: Auth, State(s): State<AppState>) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    Ok(ok(
        serde_json::json!({ "pools": s.broker.list_pools(auth.pools()).await? }),
    ))
}

pub async fn show(
    auth: Auth,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    let name = pool_name(&name)?;
    auth.pool_visible(&name)?;
    Ok(ok(s.broker.get_pool(&name).await?))
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
    auth.pool_visible(&name)?;
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
    let report = s.broker.add_numbers(&name, &input).await?;
    let detail = serde_json::json!({ "added": report.added, "skipped": report.skipped.len() });
    auth.audit(
        &s,
        "number.add",
        &format!("pool:{name}"),
        Some(name.as_str()),
        detail,
    )
    .await;
    Ok(ok(report))
}

#[derive(Deserialize)]
pub struct NumbersQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// A pool's numbers by number; with `limit`, one page of them and the cursor of the next.
pub async fn list_numbers(
    auth: Auth,
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<NumbersQuery>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    let name = pool_name(&name)?;
    auth.pool_visible(&name)?;
    if q.limit.is_some_and(|l| !(1..=MAX_NUMBERS).contains(&l)) {
        return Err(ApiError::Validation(format!(
            "limit must be between 1 and {MAX_NUMBERS}"
        )));
    }
    let mut numbers = s.broker.list_numbers(&name).await?;
    // The cursor is the last number of the page before: proxy numbers are ours to show.
    if let Some(after) = q.cursor {
        // A `+` left unencoded in a query string arrives as a space.
        let after = after.replace(' ', "+");
        numbers.retain(|n| n.number > after);
    }
    let next = match q.limit {
        Some(limit) if numbers.len() > limit => {
            numbers.truncate(limit);
            numbers.last().map(|n| n.number.clone())
        }
        _ => None,
    };
    Ok(ok(
        serde_json::json!({ "numbers": numbers, "next_cursor": next }),
    ))
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
    auth.pool_visible(&name)?;
    let number = proxy_number(&number)?;
    let state = NumberState::parse(&body.value.state)
        .ok_or_else(|| ApiError::Validation("state must be active or draining".into()))?;
    let view = s.broker.set_number_state(&name, &number, state).await?;
    let detail = serde_json::json!({ "pool": name.as_str(), "state": state.as_str() });
    let target = format!("number:{}", number.reveal());
    auth.audit(&s, "number.update", &target, Some(name.as_str()), detail)
        .await;
    Ok(ok(view))
}

pub async fn delete_number(
    auth: Auth,
    State(s): State<AppState>,
    Path((name, number)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Pools)?;
    let name = pool_name(&name)?;
    auth.pool_visible(&name)?;
    let number = proxy_number(&number)?;
    s.broker.remove_number(&name, &number).await?;
    let detail = serde_json::json!({ "pool": name.as_str() });
    let target = format!("number:{}", number.reveal());
    auth.audit(&s, "number.remove", &target, Some(name.as_str()), detail)
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn callback_secret(
    auth: Auth,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Admin)?;
    let name = pool_name(&name)?;
    auth.pool_visible(&name)?;
    let secret = s.broker.callback_secret(&name).await?;
    // Reading a secret is no change, but who has seen it matters when it leaks.
    let target = format!("pool:{name}");
    auth.audit(
        &s,
        "callback_secret.read",
        &target,
        Some(name.as_str()),
        serde_json::json!({}),
    )
    .await;
    Ok(ok(serde_json::json!({ "secret": secret })))
}

pub async fn rotate_callback_secret(
    auth: Auth,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Admin)?;
    let name = pool_name(&name)?;
    auth.pool_visible(&name)?;
    let secret = s.broker.rotate_callback_secret(&name).await?;
    let target = format!("pool:{name}");
    auth.audit(
        &s,
        "callback_secret.rotate",
        &target,
        Some(name.as_str()),
        serde_json::json!({}),
    )
    .await;
    Ok(ok(serde_json::json!({ "secret": secret })))
}
