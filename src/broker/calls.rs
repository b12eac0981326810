//! Calls the app starts (click-to-call): which participant is rung first, and the
//! interaction the call is, recorded before the provider is asked to place it. The
//! provider's bridge webhook is answered by the relay's own claim (see
//! `lua/relay_claim.lua`), so it meets the intercept, the session's call options and the
//! out-of-session answer exactly as a call from that participant would.

use crate::domain::session::Kind;
use crate::domain::{Access, E164, Initiator, SessionId, interaction_code};
use crate::store::{CallStarted, StoreError};

use super::{Broker, BrokerError, PROVIDER_REF_TTL_MS, Result};

/// A call the app started, recorded and ready for the provider to place.
#[derive(Clone, Debug)]
pub struct CallStart {
    pub session_id: String,
    /// The interaction the call is; also the reference its bridge webhook and status
    /// callbacks carry.
    pub interaction: String,
    /// The session's proxy number: the caller ID both participants see.
    pub proxy: E164,
    /// The participant rung first.
    pub to: E164,
    /// Which side that participant is (0 or 1).
    pub side: usize,
    /// The interaction's `from_participant`: the other side, whom the proxy number stands
    /// for when it rings.
    pub from_participant: usize,
}

impl Broker {
    /// Records a call the app starts in session `id`, ringing the participant `from` names
    /// (its number or its label) first, through `provider`. Not found, closed, a session of
    /// texts only, or `from` naming nobody in it are refused before anything is recorded.
    pub async fn start_call(
        &self,
        id: &SessionId,
        from: &str,
        provider: &str,
    ) -> Result<CallStart> {
        let (shard, rec) = self.record(id).await?;
        let get = |k: &str| rec.get(k).map(String::as_str).unwrap_or("");
        let expires: i64 = get("e").parse().unwrap_or(0);
        if get("t") != "o" || expires <= self.now() {
            return Err(BrokerError::SessionClosed);
        }
        let blob = self.open_blob(&rec)?;
        let number = E164::parse(from).ok();
        let side = (0..2)
            .find(|&i| {
                let p = &blob.p[i];
                match &number {
                    Some(n) => p.n.as_deref() == Some(n.reveal()),
                    None => p.l.as_deref() == Some(from),
                }
            })
            .ok_or(BrokerError::NotAParticipant)?;
        let to = blob.p[side]
            .n
            .as_deref()
            .and_then(|n| E164::parse_syntax(n).ok())
            .ok_or(BrokerError::SessionClosed)?;
        if blob.p[1 - side].n.is_none() {
            return Err(BrokerError::SessionClosed);
        }
        let proxy = E164::parse_syntax(get("n"))
            .map_err(|_| StoreError::Corrupt("proxy number in session record"))?;
        let session_id = id.to_string();
        let interaction = format!("int_{}", SessionId::new(0, 0).key());
        let event = self.events_policy(id.pool_id).await?.map(|(pool, _)| {
            self.draft(
                "interaction.started",
                serde_json::json!({
                    "session_id": session_id,
                    "interaction_id": interaction,
                    "kind": "voice",
                    "initiated_by": Initiator::App.as_str(),
                    // The app's call reaches its session by the session's id, which its
                    // interaction records as direct, as `interaction.completed` says.
                    "access": Access::Direct.as_str(),
                    "from_participant": 1 - side,
                    "pool": pool,
                    "proxy_number": proxy.reveal(),
                    "provider": provider,
                }),
                None,
            )
        });
        let started = self
            .inner
            .store
            .call_start(
                &shard,
                &id.key(),
                interaction_code(Kind::Voice, Initiator::App),
                1 - side,
                &interaction,
                provider,
                &interaction,
                PROVIDER_REF_TTL_MS,
                event.as_ref(),
            )
            .await?;
        match started {
            CallStarted::Recorded => Ok(CallStart {
                session_id,
                interaction,
                proxy,
                to,
                side,
                from_participant: 1 - side,
            }),
            CallStarted::Gone => Err(BrokerError::SessionNotFound),
            CallStarted::Closed => Err(BrokerError::SessionClosed),
            CallStarted::TextsOnly => Err(BrokerError::Validation(
                "the session carries texts only (mode `sms`)".into(),
            )),
        }
    }

    /// The provider that places a call in session `id`: the pool's `provider`, which must be
    /// `available` (configured to place calls), or else the only one that is.
    pub async fn call_provider<'a>(
        &self,
        id: &SessionId,
        available: &[&'a str],
    ) -> Result<&'a str> {
        let Some((row, policy)) = self.pool_policy_cached(id.pool_id).await? else {
            return Err(BrokerError::SessionNotFound);
        };
        match policy.provider.as_deref() {
            Some(name) => available
                .iter()
                .find(|a| **a == name)
                .copied()
                .ok_or_else(|| {
                    BrokerError::ProviderUnavailable(format!(
                        "pool `{}` places calls through {name}, whose call API credentials \
                         are not configured",
                        row.name
                    ))
                }),
            None => match available {
                [one] => Ok(one),
                [] => Err(BrokerError::ProviderUnavailable(
                    "no provider has call API credentials configured".into(),
                )),
                _ => Err(BrokerError::ProviderAmbiguous(row.name.clone())),
            },
        }
    }

    /// Whether `interaction` is a call the app started in session `session_id`: what a
    /// bridge webhook must name. A session already gone past its cool-off counts as one, so
    /// the bridge hears the pool's message rather than nothing.
    pub async fn is_app_call(&self, session_id: &str, interaction: &str) -> Result<bool> {
        let Some(id) = SessionId::parse(session_id) else {
            return Ok(false);
        };
        match self.interactions(&id).await {
            Ok(list) => Ok(list
                .iter()
                .any(|i| i.id == interaction && i.initiated_by == Initiator::App)),
            Err(BrokerError::SessionNotFound) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Marks a call the app started as failed when the provider did not take it: the
    /// interaction ends there, never having connected.
    pub async fn call_not_placed(&self, provider: &str, call: &CallStart) -> Result<()> {
        self.interaction_status(
            provider,
            &call.interaction,
            &call.proxy,
            "failed",
            None,
            true,
        )
        .await?;
        Ok(())
    }
}
