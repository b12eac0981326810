//! hush: a phone-number masking broker. This file wires the layers together; the logic
//! lives in `domain` (rules), `store` (Redis), `broker` (use-cases), and the two HTTP edges
//! `api` (the app's REST API) and `relay` (provider webhooks) over the plumbing in `http`,
//! mounted together by `server`, with the simulated carrier of `sandbox` when it is on.

pub mod api;
pub mod broker;
pub mod config;
pub mod console;
pub mod crypto;
pub mod domain;
pub mod events;
pub mod http;
pub mod relay;
pub mod sandbox;
pub mod server;
pub mod store;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, PoolLimit, Scope};
use crate::config::Config;

/// The broker over the configured Redis and keys.
pub fn build_broker(config: &Config) -> anyhow::Result<Broker> {
    config.require_keys()?;
    let index = config.index_key.as_ref().context("index key")?;
    let crypto = crypto::Crypto::new(index, &config.data_keys)?;
    let target = store::RedisTarget::parse(&config.redis_url)?;
    let access = config.redis_access()?;
    let store = store::Store::connect_to(&target, &access, &config.redis_prefix)
        .and_then(|s| {
            s.wait_for_replicas(
                &target,
                &access,
                config.redis_wait_replicas,
                config.redis_wait_timeout_ms,
            )
        })
        .context("HUSH_REDIS_URL is not a usable Redis URL")?;
    Ok(Broker::new(store, crypto, Arc::new(domain::SystemClock))
        .audit_all_sessions(config.audit_all_sessions))
}

/// Serves the API on `listener` and runs the reaper (and the outbound text worker, when a
/// provider sends texts through its API) until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let limits = server::ServeLimits::resolve(&config, server::raise_nofile_limit())?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let broker = build_broker(&config)?;
    // Data an earlier version wrote would be invisible to this one: refuse rather than
    // answer as if its sessions did not exist. Redis being down is not a reason to refuse
    // (hush answers 503 until it is back); the check is made again at the next start.
    match broker.store().layout().await {
        Ok(Ok(())) => {}
        Ok(Err(found)) => anyhow::bail!(
            "the data under the prefix `{}` is of layout {found}, written by an earlier hush; \
             this version reads layout {}: see \"Upgrading\" in docs/operations.md",
            config.redis_prefix,
            store::LAYOUT
        ),
        Err(e) => tracing::warn!(error = %e, "the data layout could not be checked at start"),
    }
    let delivery = tokio::spawn(events::delivery::run(
        broker.clone(),
        events::delivery::Delivery::new(
            config.callback_allow_private,
            config.event_retry_schedule_ms.clone(),
        ),
        shutdown.clone(),
    ));
    let reaper = tokio::spawn(broker::run_reaper(
        broker.clone(),
        Duration::from_millis(config.reaper_interval_ms),
        shutdown.clone(),
    ));
    // Texts relayed through a provider's API go out from a queue any instance may work.
    let outbound = relay::outbound::needed(&config.providers).then(|| {
        tokio::spawn(relay::outbound::run_worker(
            broker.clone(),
            config.providers.clone(),
            shutdown.clone(),
        ))
    });
    let sandbox = match config.sandbox {
        true => Some(sandbox::Sandbox::new(&config, listener.local_addr()?)?),
        false => None,
    };
    let app = server::app_with(
        http::AppState::new(http::Shared {
            broker,
            public_url: config.public_url().into(),
            config: Arc::new(config.clone()),
            http: events::ssrf::client(
                config.callback_allow_private,
                Duration::from_millis(domain::PoolPolicy::INTERCEPT_TIMEOUT_MAX_MS as u64),
            ),
            dialers: relay::calls::dialers(&config.providers),
        }),
        sandbox,
    );
    tracing::info!(addr = %listener.local_addr()?, "hush listening");
    let served = server::serve(listener, app, limits, shutdown.clone()).await;
    shutdown.cancel();
    let _ = reaper.await;
    let _ = delivery.await;
    if let Some(worker) = outbound {
        let _ = worker.await;
    }
    served.context("HTTP server failed")
}

/// Creates an API key with the given scopes and returns it (it is stored only hashed).
pub async fn create_api_key(
    config: &Config,
    name: &str,
    scopes: &[&str],
) -> anyhow::Result<String> {
    create_api_key_limited(config, name, scopes, None).await
}

/// As [`create_api_key`]; with `pools`, the key sees only those pools' data.
pub async fn create_api_key_limited(
    config: &Config,
    name: &str,
    scopes: &[&str],
    pools: Option<&[&str]>,
) -> anyhow::Result<String> {
    let (scopes, pools) = key_grant(scopes, pools)?;
    Ok(build_broker(config)?
        .create_api_key_limited(name, &scopes, &pools)
        .await?)
}

/// What a new key is granted, read from the names an operator gave: its scopes, and the pools
/// it is limited to (`None`: every pool).
pub fn key_grant<S: AsRef<str>>(
    scopes: &[S],
    pools: Option<&[S]>,
) -> anyhow::Result<(Vec<Scope>, PoolLimit)> {
    let scopes = scopes
        .iter()
        .map(|s| {
            let s = s.as_ref();
            Scope::parse(s).with_context(|| format!("unknown scope `{s}`"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pools = match pools {
        None => PoolLimit::All,
        Some(names) => PoolLimit::parse(names).context("pools")?,
    };
    Ok((scopes, pools))
}
