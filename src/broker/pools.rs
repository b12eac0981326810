//! Pools and their numbers: creating, changing and deleting a pool's policy, adding
//! numbers to a pool, draining and removing them, and the per-pool gauges.

use std::collections::HashSet;

use crate::domain::{
    Capabilities, E164, InterceptFallback, Millis, NumberState, PoolName, PoolPolicy,
    emptiest_shard,
};
use crate::store::{PoolRow, PoolSet, ShardKeys};
use crate::telemetry::METRICS;

use super::reaper::BUCKETS_PER_PASS;
use super::{
    AddReport, Broker, BrokerError, NumberCounts, NumberView, PoolLimit, PoolView, Result, Skipped,
    policy_of,
};

/// A policy as the pool hash stores it.
fn policy_fields(policy: &PoolPolicy) -> Vec<(&'static str, String)> {
    let flag = |on: bool| if on { "1" } else { "0" }.to_string();
    vec![
        ("ttl", policy.default_ttl_secs.to_string()),
        ("cooloff", policy.cooloff_secs.to_string()),
        ("geo", policy.geo_match.as_str().to_string()),
        ("msg", policy.out_of_session_message.clone()),
        ("cb", policy.callback_url.clone().unwrap_or_default()),
        ("cbn", flag(policy.callback_include_numbers)),
        ("iu", policy.intercept_url.clone().unwrap_or_default()),
        ("it", policy.intercept_timeout_ms.to_string()),
        ("low", policy.low_threshold_pct.to_string()),
        ("shards", policy.shards.to_string()),
        ("rec", flag(policy.record)),
        ("rch", policy.record_channels.as_str().into()),
        (
            "mcs",
            policy
                .max_call_secs
                .map(|s| s.to_string())
                .unwrap_or_default(),
        ),
        (
            "idle",
            policy
                .idle_ttl_secs
                .map(|s| s.to_string())
                .unwrap_or_default(),
        ),
        ("prov", policy.provider.clone().unwrap_or_default()),
        ("nsel", policy.number_selection.as_str().into()),
        ("pin", policy.pin.as_str().into()),
        ("pinl", policy.pin_length.to_string()),
        ("pint", policy.pin_prompt_timeout_secs.to_string()),
        ("pinr", policy.pin_retry.to_string()),
        ("pinc", flag(policy.pin_caller_check)),
        ("pinf", policy.pin_failure_limit.to_string()),
        ("pinp", policy.pin_prompt.clone()),
        ("pins", policy.pin_text_prompt.clone()),
        (
            "if",
            match policy.intercept_fallback {
                InterceptFallback::Allow => "allow",
                InterceptFallback::Block => "block",
            }
            .into(),
        ),
    ]
}

impl Broker {
    /// A pool's policy, if the pool exists.
    pub async fn pool_policy(&self, name: &PoolName) -> Result<Option<PoolPolicy>> {
        Ok(self
            .inner
            .store
            .pool(name.as_str())
            .await?
            .map(|row| policy_of(&row)))
    }

    /// Creates a pool with this policy, or replaces the policy of an existing one whole;
    /// with `keep_shards`, an existing pool keeps its shard count (a new one gets one shard).
    pub async fn put_pool(
        &self,
        name: &PoolName,
        policy: &PoolPolicy,
        keep_shards: bool,
    ) -> Result<(PoolView, bool)> {
        let mut fields = policy_fields(policy);
        if keep_shards {
            fields.retain(|(k, _)| *k != "shards");
        }
        let (row, created) = self
            .inner
            .store
            .pool_put(name.as_str(), &fields)
            .await?
            .map_err(|current| BrokerError::ShardsShrink {
                pool: name.to_string(),
                current,
                asked: policy.shards,
            })?;
        // Every pool has a signing secret from the start, so callbacks can be turned on
        // later without a separate step.
        let secret = crate::crypto::webhook::SigningSecret::generate().to_text();
        self.inner
            .store
            .pool_field_init(
                row.id,
                "sec",
                &self.inner.crypto.seal("callback-secret", secret.as_bytes()),
            )
            .await?;
        self.forget_cached_pool(row.id);
        Ok((self.pool_view(&row).await?, created))
    }

    /// Changes an existing pool's policy to what `merge` makes of the current one. A change
    /// that lands between the read and the write sends `merge` round again with the newer
    /// policy, so concurrent changes never undo each other.
    pub async fn patch_pool<E: From<BrokerError>>(
        &self,
        name: &PoolName,
        merge: impl Fn(&PoolPolicy) -> std::result::Result<PoolPolicy, E>,
    ) -> std::result::Result<PoolView, E> {
        const ATTEMPTS: usize = 100;
        for _ in 0..ATTEMPTS {
            let row = self.pool_row(name).await?;
            let version = row.fields.get("v").cloned().unwrap_or_default();
            let policy = merge(&policy_of(&row))?;
            let store = &self.inner.store;
            match store
                .pool_set(row.id, &version, &policy_fields(&policy))
                .await
                .map_err(BrokerError::from)?
            {
                PoolSet::Written => {
                    self.forget_cached_pool(row.id);
                    return Ok(self.get_pool(name).await?);
                }
                PoolSet::Moved => tokio::task::yield_now().await,
                PoolSet::Gone => return Err(BrokerError::PoolNotFound(name.to_string()).into()),
                PoolSet::Shrink(current) => {
                    return Err(BrokerError::ShardsShrink {
                        pool: name.to_string(),
                        current,
                        asked: policy.shards,
                    }
                    .into());
                }
            }
        }
        Err(BrokerError::Validation(format!(
            "pool `{name}` kept changing while this change was applied; try again"
        ))
        .into())
    }

    /// Deletes a pool: its numbers, settings, signing secrets and event queue. Refused while
    /// any of its numbers carries a session, open or cooling off.
    pub async fn delete_pool(&self, name: &PoolName) -> Result<()> {
        let mut row = self.pool_row(name).await?;
        let mut emptied = 0;
        // A grow that lands while the shards are emptied adds shards this pass has not seen:
        // read the count again until it stays put.
        while emptied < row.shards {
            let shard = self.shard(row.id, emptied);
            emptied += 1;
            // Sessions whose cool-off has ended no longer hold their number, even if no
            // reaper has visited them yet.
            self.reap_shard(&shard, self.now(), BUCKETS_PER_PASS)
                .await?;
            let Some(numbers) = self.inner.store.pool_shard_delete(&shard).await? else {
                return Err(BrokerError::PoolInUse(name.to_string()));
            };
            {
                let mut owners = self.inner.owners.write().expect("lock poisoned");
                for n in &numbers {
                    owners.remove(n);
                }
            }
            if emptied == row.shards {
                row = self.pool_row(name).await?;
            }
        }
        self.inner.store.pool_forget(row.id, name.as_str()).await?;
        self.forget_cached_pool(row.id);
        self.inner
            .names
            .write()
            .expect("lock poisoned")
            .remove(&row.id);
        // Its gauges would otherwise report the last values seen until the process restarts.
        let m = &*METRICS;
        let _ = m
            .pool_numbers
            .remove_label_values(&[name.as_str(), "active"]);
        let _ = m
            .pool_numbers
            .remove_label_values(&[name.as_str(), "draining"]);
        let _ = m.pool_open_sessions.remove_label_values(&[name.as_str()]);
        let _ = m.pool_utilisation.remove_label_values(&[name.as_str()]);
        tracing::info!(pool = %name, "pool deleted");
        Ok(())
    }

    async fn pool_view(&self, row: &PoolRow) -> Result<PoolView> {
        let policy = policy_of(row);
        let mut counts = NumberCounts {
            total: 0,
            active: 0,
            draining: 0,
        };
        let mut open = 0;
        let shards: Vec<ShardKeys> = (0..row.shards).map(|s| self.shard(row.id, s)).collect();
        for (c, _) in self.inner.store.shard_survey(&shards, None).await? {
            counts.total += c.total;
            counts.draining += c.draining;
            open += c.open;
        }
        counts.active = counts.total - counts.draining;
        Ok(PoolView {
            name: row.name.clone(),
            policy,
            numbers: counts,
            open_sessions: open,
        })
    }

    pub async fn get_pool(&self, name: &PoolName) -> Result<PoolView> {
        let row = self.pool_row(name).await?;
        self.pool_view(&row).await
    }

    /// Every pool `within` a key's pools, by name.
    pub async fn list_pools(&self, within: &PoolLimit) -> Result<Vec<PoolView>> {
        let mut out = Vec::new();
        for row in self.pool_rows(None, within).await? {
            out.push(self.pool_view(&row).await?);
        }
        Ok(out)
    }

    /// Refreshes the per-pool gauges and the event queue's; called when metrics are scraped.
    pub async fn refresh_pool_gauges(&self) -> Result<()> {
        // Queued events looked at per shard for the oldest one's age: bounded work per scrape.
        const PENDING_LOOK_AT: usize = 1000;
        let (mut pending, mut oldest) = (0i64, None::<Millis>);
        for row in self.inner.store.pool_list().await? {
            for s in 0..row.shards {
                let (n, o) = self
                    .inner
                    .store
                    .events_pending(&self.shard(row.id, s), PENDING_LOOK_AT)
                    .await?;
                pending += n;
                oldest = match (oldest, o) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let view = self.pool_view(&row).await?;
            let mut busy = 0i64;
            for s in 0..row.shards {
                busy += self
                    .inner
                    .store
                    .numbers(&self.shard(row.id, s))
                    .await?
                    .iter()
                    .filter(|n| n.state == "active" && n.open > 0)
                    .count() as i64;
            }
            let m = &*METRICS;
            m.pool_numbers
                .with_label_values(&[&view.name, "active"])
                .set(view.numbers.active);
            m.pool_numbers
                .with_label_values(&[&view.name, "draining"])
                .set(view.numbers.draining);
            m.pool_open_sessions
                .with_label_values(&[&view.name])
                .set(view.open_sessions);
            let util = if view.numbers.active > 0 {
                busy as f64 / view.numbers.active as f64
            } else {
                0.0
            };
            m.pool_utilisation
                .with_label_values(&[&view.name])
                .set(util);
        }
        METRICS.events_pending.set(pending);
        METRICS
            .event_oldest_pending_seconds
            .set(oldest.map_or(0.0, |c| (self.now() - c).max(0) as f64 / 1000.0));
        Ok(())
    }

    /// Adds numbers in bulk; each one is added, or skipped with a reason.
    pub async fn add_numbers(
        &self,
        pool: &PoolName,
        numbers: &[(String, Option<Vec<String>>)],
    ) -> Result<AddReport> {
        let row = self.pool_row(pool).await?;
        let shards: Vec<ShardKeys> = (0..row.shards).map(|s| self.shard(row.id, s)).collect();
        // Counted once for the whole batch and kept up to date as it goes: a concurrent
        // batch may tilt the balance a little, never the correctness.
        let mut totals: Vec<i64> = self
            .inner
            .store
            .shard_survey(&shards, None)
            .await?
            .iter()
            .map(|(c, _)| c.total)
            .collect();
        let mut report = AddReport::default();
        let mut seen = HashSet::new();
        for (raw, caps) in numbers {
            let skip = |code| Skipped {
                number: raw.clone(),
                code,
            };
            let Ok(number) = E164::parse(raw) else {
                report.skipped.push(skip("invalid_number"));
                continue;
            };
            let caps = match caps {
                None => Capabilities::ALL,
                Some(list) => match Capabilities::parse_list(list.iter().map(String::as_str)) {
                    Some(c) => c,
                    None => {
                        report.skipped.push(skip("invalid_capabilities"));
                        continue;
                    }
                },
            };
            if !seen.insert(number.reveal().to_string()) {
                report.skipped.push(skip("duplicate"));
                continue;
            }
            let emptiest = emptiest_shard(&totals);
            let (owner_pool, owner_shard) = self
                .inner
                .store
                .number_claim(number.reveal(), &shards[emptiest as usize])
                .await?;
            // A number this pool already owns stays in its shard; adding it there again is
            // harmless and finishes an add that stopped between the claim and the shard.
            if owner_pool != row.id {
                report.skipped.push(skip("in_another_pool"));
                continue;
            }
            // In a shard a grow added after this batch read the pool: another batch put it
            // there.
            if owner_shard >= row.shards {
                report.skipped.push(skip("duplicate"));
                continue;
            }
            let shard = &shards[owner_shard as usize];
            let geo = number.geo();
            let mut geos = vec![geo.country_tag()];
            geos.extend(geo.area_tag());
            let Some(added) = self
                .inner
                .store
                .number_add(shard, number.reveal(), caps.code(), &geos.join(","))
                .await?
            else {
                // The pool was deleted while these numbers were added.
                self.inner.store.number_disown(number.reveal()).await?;
                return Err(BrokerError::PoolNotFound(pool.to_string()));
            };
            if added {
                totals[owner_shard as usize] += 1;
                report.added.push(number.reveal().to_string());
            } else {
                report.skipped.push(skip("duplicate"));
            }
        }
        Ok(report)
    }

    pub async fn list_numbers(&self, pool: &PoolName) -> Result<Vec<NumberView>> {
        let row = self.pool_row(pool).await?;
        let mut out = Vec::new();
        for s in 0..row.shards {
            for n in self.inner.store.numbers(&self.shard(row.id, s)).await? {
                out.push(NumberView {
                    capabilities: Capabilities::from_code(&n.caps).names(),
                    state: NumberState::parse(&n.state).unwrap_or(NumberState::Active),
                    open_sessions: n.open.max(0),
                    holding_sessions: n.holding.max(n.open).max(0),
                    number: n.number,
                });
            }
        }
        out.sort_by(|a, b| a.number.cmp(&b.number));
        Ok(out)
    }

    /// The shard of `pool` that holds `number`, as its owner entry says: where a number was
    /// added depends on the shards' fill at the time, not on the number.
    async fn number_shard(&self, pool: &PoolName, number: &E164) -> Result<ShardKeys> {
        let row = self.pool_row(pool).await?;
        match self.owner(number, true).await? {
            Some((id, shard)) if id == row.id => Ok(self.shard(row.id, shard)),
            _ => Err(BrokerError::NumberNotFound(format!(
                "number {} is not in pool `{pool}`",
                number.reveal()
            ))),
        }
    }

    pub async fn set_number_state(
        &self,
        pool: &PoolName,
        number: &E164,
        state: NumberState,
    ) -> Result<NumberView> {
        let shard = self.number_shard(pool, number).await?;
        if !self
            .inner
            .store
            .number_set_state(&shard, number.reveal(), state.as_str())
            .await?
        {
            return Err(BrokerError::NumberNotFound(format!(
                "number {} is not in pool `{pool}`",
                number.reveal()
            )));
        }
        self.list_numbers(pool)
            .await?
            .into_iter()
            .find(|n| n.number == number.reveal())
            .ok_or_else(|| {
                BrokerError::NumberNotFound(format!("number {} vanished", number.reveal()))
            })
    }

    pub async fn remove_number(&self, pool: &PoolName, number: &E164) -> Result<()> {
        let shard = self.number_shard(pool, number).await?;
        // Sessions whose cool-off has ended no longer hold the number, even if no reaper
        // has visited them yet.
        self.reap_shard(&shard, self.now(), BUCKETS_PER_PASS)
            .await?;
        match self
            .inner
            .store
            .number_remove(&shard, number.reveal())
            .await?
        {
            Some(true) => {
                self.inner
                    .owners
                    .write()
                    .expect("lock poisoned")
                    .remove(number.reveal());
                Ok(())
            }
            Some(false) => Err(BrokerError::NumberInUse(number.reveal().to_string())),
            None => Err(BrokerError::NumberNotFound(format!(
                "number {} is not in pool `{pool}`",
                number.reveal()
            ))),
        }
    }
}
