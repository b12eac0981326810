//! Interactions, the calls and texts relayed through a session: status callbacks, the
//! app's intercept (what to ask it, and its verdict), and listing a session's interactions.

use std::collections::HashMap;

use crate::domain::{E164, Millis, SessionId, interaction_access, parse_interaction_code, rfc3339};

use super::{
    Broker, BrokerError, EventId, InteractionView, InterceptPlan, InterceptVerdict, Result,
    policy_of,
};

impl Broker {
    /// Applies a provider's status callback to the interaction it reported on. `proxy` is
    /// the proxy number the call or message went through (it names the shard).
    pub async fn interaction_status(
        &self,
        provider: &str,
        provider_ref: &str,
        proxy: &E164,
        status: &str,
        duration_secs: Option<u32>,
        last: bool,
    ) -> Result<bool> {
        self.update_interaction(
            provider,
            provider_ref,
            proxy,
            status,
            duration_secs,
            last,
            None,
        )
        .await
    }

    /// Records the intercept's verdict on an interaction: its status (`allowed`, or
    /// `blocked`, which is final), and the answer every retry of the request gets from now
    /// on. Only the first verdict is kept.
    pub async fn intercept_verdict(
        &self,
        provider: &str,
        provider_ref: &str,
        proxy: &E164,
        verdict: &InterceptVerdict,
    ) -> Result<bool> {
        let (status, last, code, sealed) = match verdict {
            InterceptVerdict::Allowed => ("allowed", false, "c", String::new()),
            InterceptVerdict::Blocked(message) => (
                "blocked",
                true,
                "b",
                message
                    .as_deref()
                    .map(|m| self.inner.crypto.seal("block", m.as_bytes()))
                    .unwrap_or_default(),
            ),
        };
        self.update_interaction(
            provider,
            provider_ref,
            proxy,
            status,
            None,
            last,
            Some((code, &sealed)),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn update_interaction(
        &self,
        provider: &str,
        provider_ref: &str,
        proxy: &E164,
        status: &str,
        duration_secs: Option<u32>,
        last: bool,
        verdict: Option<(&str, &str)>,
    ) -> Result<bool> {
        // The status is stored in a `|`-separated record: only a plain word may go in.
        if status.is_empty()
            || status.len() > 32
            || !status
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-' || b == b'_')
        {
            return Err(BrokerError::Validation(
                "a status is 1 to 32 lower-case letters, `-` or `_`".into(),
            ));
        }
        let Some((pool_id, shard)) = self.owner(proxy, false).await? else {
            return Ok(false);
        };
        let event = match self.events_policy(pool_id).await? {
            Some((pool, _)) if last => Some(self.draft(
                "interaction.completed",
                serde_json::json!({
                    "session_id": format!("{}__SKEY__", SessionId::shard_prefix(pool_id, shard)),
                    "interaction_id": "__IID__",
                    "kind": "__KIND__",
                    "initiated_by": "__BY__",
                    "access": "__ACCESS__",
                    "from_participant": "__SIDE__",
                    "status": status,
                    "duration_secs": "__DURATION__",
                    "pool": pool,
                    "proxy_number": proxy.reveal(),
                    "provider": provider,
                }),
                None,
            )),
            _ => None,
        };
        Ok(self
            .inner
            .store
            .interaction_update(
                &self.shard(pool_id, shard),
                provider,
                provider_ref,
                status,
                self.now(),
                duration_secs,
                last,
                event.as_ref(),
                verdict,
            )
            .await?)
    }

    /// What to ask the app before an interaction connects, when its pool has an intercept.
    pub async fn intercept_plan(
        &self,
        session_id: &str,
        interaction: &str,
    ) -> Result<Option<InterceptPlan>> {
        let id = SessionId::parse(session_id).ok_or(BrokerError::SessionNotFound)?;
        let Some(row) = self.pool_cached(id.pool_id).await? else {
            return Ok(None);
        };
        let policy = policy_of(&row);
        let Some(url) = policy.intercept_url.clone() else {
            return Ok(None);
        };
        let (_, rec) = self.record(&id).await?;
        let blob = self.open_blob(&rec)?;
        let found = self
            .interactions(&id)
            .await?
            .into_iter()
            .find(|i| i.id == interaction);
        let draft = self.draft(
            "interaction.pending",
            serde_json::json!({
                "session_id": session_id,
                "interaction_id": interaction,
                "kind": found.as_ref().map(|i| i.kind),
                "from_participant": found.as_ref().map(|i| i.from_participant),
                "participants": [{ "label": blob.p[0].l }, { "label": blob.p[1].l }],
                "pool": row.name,
                "proxy_number": rec.get("n"),
            }),
            None,
        );
        Ok(Some(InterceptPlan {
            url,
            timeout_ms: policy.intercept_timeout_ms,
            fallback: policy.intercept_fallback,
            secrets: self.signing_secrets(&row)?,
            id: EventId {
                pool_id: id.pool_id,
                shard: id.shard,
                key: draft.id,
            }
            .to_string(),
            body: draft.body,
            message: policy.out_of_session_message,
        }))
    }

    /// The current status of one interaction.
    pub async fn interaction_status_of(
        &self,
        session_id: &str,
        interaction: &str,
    ) -> Result<Option<String>> {
        let id = SessionId::parse(session_id).ok_or(BrokerError::SessionNotFound)?;
        Ok(self
            .interactions(&id)
            .await?
            .into_iter()
            .find(|i| i.id == interaction)
            .map(|i| i.status))
    }

    /// The interactions of a readable session, oldest first.
    pub async fn interactions(&self, id: &SessionId) -> Result<Vec<InteractionView>> {
        let (shard, _) = self.record(id).await?;
        let mut all = self.inner.store.interactions(&shard, &id.key()).await?;
        // Recordings sit beside the interactions they belong to, as `r:<interaction id>`.
        let recordings: HashMap<String, String> = all
            .keys()
            .filter(|k| k.starts_with("r:"))
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|k| all.remove_entry(&k))
            .map(|(k, v)| (k[2..].to_string(), v))
            .collect();
        let mut out = Vec::new();
        for (iid, rec) in all {
            let f: Vec<&str> = rec.splitn(8, '|').collect();
            if f.len() != 8 {
                continue;
            }
            let ms = |s: &str| s.parse::<Millis>().ok();
            let (kind, initiated_by) = parse_interaction_code(f[0]);
            let recording = recordings
                .get(&iid)
                .map(|sealed| self.open_recording(sealed))
                .transpose()?;
            out.push(InteractionView {
                id: iid,
                kind: super::kind_name(kind),
                from_participant: if f[1] == "0" { 0 } else { 1 },
                initiated_by,
                access: interaction_access(f[0]),
                status: f[2].to_string(),
                started_at: rfc3339(ms(f[3]).unwrap_or(0)),
                ended_at: ms(f[4]).map(rfc3339),
                duration_secs: f[5].parse().ok(),
                provider: f[6].to_string(),
                provider_ref: f[7].to_string(),
                recording,
            });
        }
        out.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }
}
