//! The provider-neutral answer to an inbound call or text, which both edges give: the
//! provider webhooks, and the app's own `POST /v1/route`. The broker decides; when the pool
//! has an intercept, the app is asked before the answer stands.

use crate::broker::{BrokerError, Decision, Input, InterceptVerdict, RelayOutcome};
use crate::domain::session::Kind;
use crate::domain::{E164, InterceptFallback};
use crate::events::intercept;
use crate::http::AppState;

impl AppState {
    /// The provider-neutral answer to an inbound call or text: the broker's decision, then
    /// the app's say when the pool has an intercept. The answer is remembered with the
    /// provider's reference, so a retried webhook is not asked again: it gets what the
    /// first one got, block message included, for `ref_ttl_ms`.
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
    ) -> Result<RelayOutcome, BrokerError> {
        let mut outcome = self
            .broker
            .relay_remembered(provider, provider_ref, ref_ttl_ms, from, to, kind, input)
            .await?;
        if !outcome.pending {
            return Ok(outcome);
        }
        let session = match &outcome.decision {
            Decision::Connect { session_id, .. } | Decision::Relay { session_id, .. } => {
                session_id.clone()
            }
            Decision::Announce { .. } | Decision::Gather { .. } => return Ok(outcome),
        };
        let Some(interaction) = outcome.interaction.clone() else {
            return Ok(outcome);
        };
        let Some(plan) = self.broker.intercept_plan(&session, &interaction).await? else {
            // The intercept was removed since the claim: nobody to ask.
            self.broker
                .intercept_verdict(provider, provider_ref, to, &InterceptVerdict::Allowed)
                .await?;
            return Ok(outcome);
        };
        if outcome.replay {
            // The first request is still waiting for the app: this retry gets what
            // silence gets.
            if plan.fallback == InterceptFallback::Block {
                outcome.decision = Decision::Announce {
                    message: plan.message,
                };
            }
            return Ok(outcome);
        }
        let verdict = intercept::ask(
            &self.http,
            self.broker.now_ms() / 1000,
            intercept::Question {
                url: &plan.url,
                id: &plan.id,
                body: &plan.body,
                secrets: &plan.secrets,
                timeout: std::time::Duration::from_millis(plan.timeout_ms as u64),
                allow_private: self.config.callback_allow_private,
            },
        )
        .await;
        let verdict = match (verdict, plan.fallback) {
            (intercept::Verdict::Block(message), _) => InterceptVerdict::Blocked(message),
            (intercept::Verdict::NoAnswer, InterceptFallback::Block) => {
                InterceptVerdict::Blocked(None)
            }
            _ => InterceptVerdict::Allowed,
        };
        self.broker
            .intercept_verdict(provider, provider_ref, to, &verdict)
            .await?;
        if let InterceptVerdict::Blocked(message) = verdict {
            outcome.decision = Decision::Announce {
                message: message.unwrap_or(plan.message),
            };
        }
        Ok(outcome)
    }
}
