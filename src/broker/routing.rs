//! Routing and relay: which pool owns a proxy number, and what an inbound call or text
//! gets (the other party behind the proxy, or the pool's out-of-session message), answered
//! once per provider reference.

use crate::crypto::CryptoError;
use crate::domain::{
    Access, E164, Initiator, PoolPolicy, SessionId, interaction_code, session::Kind,
};
use crate::store::{Claimed, PinClaim, Reach, ShardKeys, StoreError, Unreached};
use crate::telemetry::METRICS;

use super::{Broker, BrokerError, Decision, PoolLimit, RelayOutcome, Result, kind_name, policy_of};

/// How long a provider's call or message id is remembered: longer than any provider retries
/// a webhook or sends status callbacks for a call.
pub const PROVIDER_REF_TTL_MS: i64 = 48 * 3600 * 1000;

/// How long the answer to a request that named no reference of its own (`POST /v1/route`
/// without `reference`) is remembered: nothing can retry it, so only long enough for the
/// app's intercept to give its verdict.
pub const UNNAMED_REF_TTL_MS: i64 = 60 * 1000;

/// The PIN a text opens with, and the rest of the text: 4 to 8 digits first (spaces before
/// them allowed), then a space or the end. Anything else is a text with no PIN.
pub fn pin_prefix(body: &str) -> Option<(&str, &str)> {
    let body = body.trim_start();
    let end = body
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(body.len());
    let (pin, rest) = body.split_at(end);
    if !(4..=8).contains(&pin.len()) || rest.chars().next().is_some_and(|c| !c.is_whitespace()) {
        return None;
    }
    Some((pin, rest.trim_start()))
}

/// What came with a call or text beyond who calls whom.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// A call or text arriving on the proxy number; a text's body may open with a PIN.
    Arrived { body: Option<&'a str> },
    /// What the caller typed at the `attempt`th PIN prompt of the call (`""`: nothing in
    /// time).
    Digits { digits: &'a str, attempt: u8 },
}

impl Broker {
    /// The pool and shard a proxy number belongs to, from the cache unless `fresh`: numbers
    /// rarely move, so only a miss on the cached shard is worth asking Redis again.
    pub(super) async fn owner(&self, number: &E164, fresh: bool) -> Result<Option<(u32, u16)>> {
        if !fresh
            && let Some(o) = self
                .inner
                .owners
                .read()
                .expect("lock poisoned")
                .get(number.reveal())
        {
            return Ok(Some(*o));
        }
        let o = self.inner.store.number_owner(number.reveal()).await?;
        let mut cache = self.inner.owners.write().expect("lock poisoned");
        match o {
            Some(o) => {
                if cache.len() > 1_000_000 {
                    cache.clear();
                }
                cache.insert(number.reveal().to_string(), o);
            }
            None => {
                cache.remove(number.reveal());
            }
        }
        Ok(o)
    }

    /// The shard that owns proxy number `number`, if a pool does (from the in-process cache
    /// when it can).
    pub async fn shard_of_number(&self, number: &E164) -> Result<Option<ShardKeys>> {
        Ok(self
            .owner(number, false)
            .await?
            .map(|(pool_id, shard)| self.shard(pool_id, shard)))
    }

    /// Whether `number` belongs to a pool `within` a key's pools. A cached owner outside them
    /// is checked once more against Redis, so a number that moved into a visible pool is not
    /// refused.
    pub async fn number_visible(&self, within: &PoolLimit, number: &E164) -> Result<bool> {
        if *within == PoolLimit::All {
            return Ok(true);
        }
        for fresh in [false, true] {
            if let Some((pool_id, _)) = self.owner(number, fresh).await?
                && self.sees_pool_id(within, pool_id).await?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The answer to a caller who holds an open route: the other party, behind the proxy.
    fn decide(
        &self,
        pool_id: u32,
        shard: u16,
        r: &Reach,
        proxy: &E164,
        kind: Kind,
    ) -> Result<Decision> {
        // The script answers only while the other side is still in the session.
        let mut blob = self.open_sealed_blob(&r.blob)?;
        let other = blob.p[1 - r.side]
            .n
            .take()
            .ok_or(StoreError::Corrupt("session blob without the other party"))?;
        // Checked in full when the session was made and sealed since: the form is enough
        // here, and the full check (phonenumber's metadata) was a fifth of a routed call's CPU.
        let other = E164::parse_syntax(&other)
            .map_err(|_| StoreError::Corrupt("number in session blob"))?;
        let session_id = SessionId::from_key(pool_id, shard, &r.session_key)
            .map(|s| s.to_string())
            .ok_or(StoreError::Corrupt("session key in route record"))?;
        let (action, decision) = match kind {
            Kind::Voice => (
                "connect",
                Decision::Connect {
                    session_id,
                    caller_id: proxy.clone(),
                    to: other,
                    call: r.call,
                },
            ),
            Kind::Sms => (
                "relay",
                Decision::Relay {
                    session_id,
                    from: proxy.clone(),
                    to: other,
                },
            ),
        };
        METRICS.routes.with_label_values(&[action]).inc();
        Ok(decision)
    }

    /// The answer to anyone else: the pool's out-of-session message.
    async fn announce(&self, pool_id: u32) -> Result<Decision> {
        let message = match self.inner.store.pool_by_id(pool_id).await? {
            Some(row) => policy_of(&row).out_of_session_message,
            None => PoolPolicy::DEFAULT_MESSAGE.to_string(),
        };
        METRICS.routes.with_label_values(&["announce"]).inc();
        Ok(Decision::Announce { message })
    }

    /// Answers an inbound call or text and records it as an interaction of its session,
    /// once per provider reference. `from` is `None` for a withheld caller ID. One Redis
    /// round trip when the number's owner is cached.
    pub async fn relay(
        &self,
        provider: &str,
        provider_ref: &str,
        from: Option<&E164>,
        to: &E164,
        kind: Kind,
    ) -> Result<RelayOutcome> {
        self.relay_remembered(
            provider,
            provider_ref,
            PROVIDER_REF_TTL_MS,
            from,
            to,
            kind,
            Input::Arrived { body: None },
        )
        .await
    }

    /// [`Broker::relay`], remembering the answer for `ref_ttl_ms`, with what came with it.
    #[allow(clippy::too_many_arguments)]
    pub async fn relay_remembered(
        &self,
        provider: &str,
        provider_ref: &str,
        ref_ttl_ms: i64,
        from: Option<&E164>,
        to: &E164,
        kind: Kind,
        input: Input<'_>,
    ) -> Result<RelayOutcome> {
        if provider_ref.is_empty()
            || provider_ref.len() > 128
            || !provider_ref
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(BrokerError::Validation(
                "the provider's call or message id is missing or malformed".into(),
            ));
        }
        let idx = from.map(|f| self.idx(f));
        // A PIN is looked up by its blind index only; a text's goes on without it.
        let (pin_index, attempt, rest) = match input {
            // Dialects give the digits without a finishing `#` (`dialect::Digits`).
            Input::Digits { digits, attempt } => {
                let index = if digits.is_empty() {
                    String::new()
                } else {
                    self.inner.crypto.pin_index(digits)
                };
                (index, Some(attempt.max(1)), None)
            }
            Input::Arrived { body: Some(body) } if kind == Kind::Sms => match pin_prefix(body) {
                Some((pin, rest)) => (self.inner.crypto.pin_index(pin), None, Some(rest)),
                None => (String::new(), None, None),
            },
            Input::Arrived { .. } => (String::new(), None, None),
        };
        let mut fresh = false;
        loop {
            let Some((pool_id, shard)) = self.owner(to, fresh).await? else {
                return Err(BrokerError::NumberNotFound(format!(
                    "{to} is not a number of any pool"
                )));
            };
            let keys = self.shard(pool_id, shard);
            let interaction = format!("int_{}", SessionId::new(0, 0).key());
            // One look at the cached pool serves every question the claim needs answered.
            let pool = self.pool_policy_cached(pool_id).await?;
            let intercept = pool
                .as_ref()
                .is_some_and(|(_, policy)| policy.intercept_url.is_some());
            let events_to = pool
                .as_ref()
                .filter(|(_, policy)| policy.callback_url.is_some())
                .map(|(row, _)| row.name.as_str());
            let event = events_to.map(|pool| {
                self.draft(
                "interaction.started",
                serde_json::json!({
                    "session_id": format!("{}__SKEY__", SessionId::shard_prefix(pool_id, shard)),
                    "interaction_id": interaction,
                    "kind": kind_name(kind),
                    "initiated_by": Initiator::Participant.as_str(),
                    "from_participant": "__SIDE__",
                    "access": "__ACCESS__",
                    "pool": pool,
                    "proxy_number": to.reveal(),
                    "provider": provider,
                }),
                None,
            )
            });
            let default_policy;
            let policy = match &pool {
                Some((_, policy)) => policy.as_ref(),
                None => {
                    default_policy = PoolPolicy::default();
                    &default_policy
                }
            };
            let claimed = self
                .inner
                .store
                .relay_claim(
                    &keys,
                    idx.as_deref(),
                    to.reveal(),
                    self.now(),
                    interaction_code(kind, Initiator::Participant),
                    provider,
                    provider_ref,
                    &interaction,
                    ref_ttl_ms,
                    event.as_ref(),
                    intercept,
                    PinClaim::under(policy, &pin_index, attempt),
                )
                .await?;
            let pool_label = || {
                pool.as_ref()
                    .map_or_else(String::new, |(row, _)| row.name.clone())
            };
            return match claimed {
                Claimed::Connect {
                    reach,
                    interaction,
                    replay,
                    pending,
                    access,
                    strip_pin,
                } => Ok(RelayOutcome {
                    decision: self.decide(pool_id, shard, &reach, to, kind)?,
                    interaction: Some(interaction),
                    replay,
                    pending,
                    access,
                    body: rest.filter(|_| strip_pin).map(str::to_string),
                }),
                Claimed::Gather { attempt, own_route } => {
                    METRICS.routes.with_label_values(&["gather"]).inc();
                    tracing::debug!(attempt, own_route, "pin prompt");
                    Ok(RelayOutcome {
                        decision: Decision::Gather {
                            digits: policy.pin_length,
                            attempt,
                            timeout_secs: policy.pin_prompt_timeout_secs,
                            prompt: policy.pin_prompt.clone(),
                        },
                        interaction: None,
                        replay: false,
                        pending: false,
                        access: Access::Pin,
                        body: None,
                    })
                }
                Claimed::Block {
                    sealed_message,
                    interaction,
                } => {
                    let decision = if sealed_message.is_empty() {
                        self.announce(pool_id).await?
                    } else {
                        let message = self.inner.crypto.open("block", &sealed_message)?;
                        METRICS.routes.with_label_values(&["announce"]).inc();
                        Decision::Announce {
                            message: String::from_utf8(message)
                                .map_err(|_| BrokerError::Crypto(CryptoError::Corrupt))?,
                        }
                    };
                    Ok(RelayOutcome {
                        decision,
                        interaction: Some(interaction),
                        replay: true,
                        pending: false,
                        access: Access::Direct,
                        body: None,
                    })
                }
                Claimed::Announce(why) => {
                    // The number may have moved since its owner was cached: then the call is
                    // for its shard now, asked once.
                    if why == Unreached::Nobody && !fresh {
                        fresh = true;
                        if self.owner(to, true).await? != Some((pool_id, shard)) {
                            continue;
                        }
                    }
                    let reason = match why {
                        Unreached::WrongPin => Some("wrong"),
                        Unreached::Limited => Some("limited"),
                        Unreached::Ended => Some("ended"),
                        Unreached::Nobody | Unreached::NeedsPin => None,
                    };
                    if let Some(reason) = reason {
                        METRICS
                            .pin_failures
                            .with_label_values(&[pool_label().as_str(), reason])
                            .inc();
                    }
                    // A text that needs a PIN is told how to give one; a wrong one too.
                    let decision = if kind == Kind::Sms
                        && matches!(why, Unreached::NeedsPin | Unreached::WrongPin)
                    {
                        METRICS.routes.with_label_values(&["announce"]).inc();
                        Decision::Announce {
                            message: policy.pin_text_prompt.clone(),
                        }
                    } else {
                        self.announce(pool_id).await?
                    };
                    Ok(RelayOutcome {
                        decision,
                        interaction: None,
                        replay: false,
                        pending: false,
                        access: Access::Direct,
                        body: None,
                    })
                }
            };
        }
    }

    /// Accepts a provider's single-use webhook token (`token_id`, its JWT `jti`) for one
    /// request (`request`, the bytes that identify it) and that same request again, for
    /// `ttl_ms`. False when the token already came with another request. Both are kept only
    /// as keyed digests.
    pub async fn token_once(
        &self,
        provider: &str,
        token_id: &str,
        request: &[u8],
        ttl_ms: i64,
    ) -> Result<bool> {
        let crypto = &self.inner.crypto;
        let key = self
            .inner
            .store
            .keys()
            .token(provider, &crypto.digest("token", token_id.as_bytes()));
        Ok(self
            .inner
            .store
            .token_once(&key, &crypto.digest("request", request), ttl_ms)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::pin_prefix;

    #[test]
    fn a_text_opens_with_a_pin_only_when_4_to_8_digits_stand_alone() {
        assert_eq!(pin_prefix("123456 hello"), Some(("123456", "hello")));
        assert_eq!(
            pin_prefix("  1234\n  on my way "),
            Some(("1234", "on my way "))
        );
        assert_eq!(pin_prefix("12345678"), Some(("12345678", "")));
        assert_eq!(pin_prefix("123 hello"), None);
        assert_eq!(pin_prefix("123456789 hello"), None);
        assert_eq!(pin_prefix("123456, hello"), None);
        assert_eq!(pin_prefix("1234abc"), None);
        assert_eq!(pin_prefix("hello 123456"), None);
        assert_eq!(pin_prefix(""), None);
        // Digits of other scripts are not PIN digits.
        assert_eq!(pin_prefix("١٢٣٤٥٦ hello"), None);
    }
}
