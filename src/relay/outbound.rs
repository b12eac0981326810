//! Texts hush sends through a provider's API: relayed texts (Telnyx, Vonage), where the
//! provider's webhook is answered at once and the text goes out afterwards, and texts the
//! app sends (any provider, see `broker::texts`). Each text is recorded in Redis before the
//! webhook or the app is answered, so a hush restart neither loses nor doubles it.
//!
//! [`enqueue`] seals the text (numbers and body) and queues it once per [`OutboundSms::key`];
//! [`deliver_once`] claims due texts with a lease, sends them side by side and settles the
//! pass's texts with one script per queue: each done, retried after a bounded backoff
//! ([`BACKOFF_MS`]), or failed. [`run_worker`] is the loop. A text is sent at most once: one
//! whose worker died (or whose settle could not be written) between claim and settle is
//! given up as of unknown outcome when its lease ends; a live worker settles well before its
//! lease ends, and only the lease holder may settle, so two instances never both send a text.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use axum::response::{IntoResponse, Response};

use super::Inbound;
use super::dialect::{Dialect, RestApi};
use super::plivo::Plivo;
use super::telnyx::Telnyx;
use super::twilio::Twilio;
use super::vonage::Vonage;
use crate::broker::{Broker, BrokerError, Decision, PROVIDER_REF_TTL_MS, RelayOutcome};
pub use crate::broker::{OutboundSms, TextVia as Via};
use crate::config::Providers;
use crate::domain::{E164, Millis};
use crate::http::ApiError;
use crate::store::outbox::{Leased, Settle, Settlement};
use crate::store::{Queue, Rings};

/// Counts one attempt's outcome (`sent`, `retry` or `failed`) for a provider.
fn count_text(provider: &'static str, outcome: &'static str) {
    crate::telemetry::METRICS
        .outbound_texts
        .with_label_values(&[provider, outcome])
        .inc();
}

/// Queues what a decision sends back for an inbound text, when the provider's API sends it:
/// the text relayed to the other party, or the pool's message back to the sender from the
/// number they wrote to. Nothing is queued for a withheld sender, or a decision that sends
/// no text. One key per inbound message whatever the answer, so a retried webhook queues
/// nothing new, and the queue keeps one text per key, so nothing goes out twice.
///
/// The webhook is answered `queued` once the text is recorded, and fails when it is not so
/// that the provider sends it again.
pub async fn queue_answer(
    broker: &Broker,
    via: Via,
    inbound: Inbound,
    outcome: RelayOutcome,
    queued: fn() -> Response,
) -> Response {
    let key = format!("{}:{}", via.label(), inbound.provider_ref);
    let text = match outcome.decision {
        Decision::Relay { from, to, .. } => OutboundSms {
            via,
            from,
            to,
            text: inbound.body.unwrap_or_default(),
            media: inbound.media,
            key,
            report_url: None,
        },
        Decision::Announce { message } => match inbound.from {
            Some(sender) => OutboundSms {
                via,
                from: inbound.to,
                to: sender,
                text: message,
                media: Vec::new(),
                key,
                report_url: None,
            },
            None => return queued(),
        },
        Decision::Connect { .. } | Decision::Gather { .. } => return queued(),
    };
    match put(broker, text, outcome.replay).await {
        Ok(()) => queued(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Why one attempt to send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth trying again later (timeouts, 5xx, 429).
    #[error("temporary failure: {0}")]
    Retry(String),
    /// The provider refused the text for good (4xx other than 429).
    #[error("refused: {0}")]
    Permanent(String),
}

/// The wait before each retry: after the first failed attempt, then the second, ... A text
/// whose attempt fails once more after the last wait is given up (six attempts in all).
pub const BACKOFF_MS: [Millis; 5] = [1_000, 5_000, 30_000, 120_000, 600_000];

/// How long a claim keeps other workers away from a text. Far longer than one attempt can
/// take, so a live worker settles long before anyone else may claim the text.
pub const LEASE_MS: Millis = 120_000;

/// The longest one call to a provider's API takes unless its dialect says otherwise
/// (Vonage's SMS API gets 30 s).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(8);

/// An attempt starts only while this much of its lease is left (a worker that stalled after
/// claiming hands the text back instead of racing whoever claims it next).
/// It exceeds the longest provider call, so an attempt always ends within its lease.
const LEASE_MARGIN_MS: Millis = 45_000;

// A live worker settles long before its lease ends, whatever a provider's call takes.
const _: () = assert!(SEND_TIMEOUT.as_secs() * 1000 * 2 < LEASE_MARGIN_MS as u64);
const _: () = assert!(30_000 < LEASE_MARGIN_MS && LEASE_MARGIN_MS < LEASE_MS);

/// How long a given-up text's record (state and reason, no text) stays in Redis.
const FAILED_KEEP_MS: Millis = 7 * 24 * 3600 * 1000;

/// Texts claimed per pass.
const BATCH: usize = 32;

/// Queues a text for sending, durably, before the provider's webhook is answered. The same
/// `key` queues nothing new, whether its text is still waiting, was sent or was given up.
pub async fn enqueue(broker: &Broker, msg: OutboundSms) -> Result<(), BrokerError> {
    put(broker, msg, false).await
}

/// [`enqueue`]; `replay` when the provider sent this message before, whose text may then
/// be in the queue every text shared in earlier versions, queued there before an upgrade.
async fn put(broker: &Broker, msg: OutboundSms, replay: bool) -> Result<(), BrokerError> {
    let id = broker.text_id(&msg.key);
    let store = broker.store();
    if replay && store.outbox_seen(&store.outbox_tag(None), &id).await? {
        tracing::debug!(key = %msg.key, "outbound text queued before the upgrade");
        return Ok(());
    }
    // A retried webhook comes from the same proxy number, so it finds its first copy in the
    // same queue.
    let shard = broker.shard_of_number(&msg.from).await?;
    let fresh = store
        .outbox_put(
            &store.outbox_tag(shard.as_ref()),
            &id,
            &broker.seal_text(&msg),
            broker.now_ms(),
        )
        .await?;
    if !fresh {
        tracing::debug!(key = %msg.key, "outbound text already queued");
    }
    Ok(())
}

/// Applies a provider's delivery report about a text hush sent (`message_id` is the
/// provider's id of the outbound text) to the interaction the text relayed. False when hush
/// does not know the message (not sent by hush, or reported before the send was settled).
pub async fn delivery_report(
    broker: &Broker,
    provider: &str,
    message_id: &str,
    proxy: &E164,
    status: &str,
    last: bool,
) -> Result<bool, BrokerError> {
    // The report names the proxy number the text went from, so its shard; a text sent by an
    // earlier version has its alias under the old shared tag.
    let store = broker.store();
    let shard = broker.shard_of_number(proxy).await?;
    let mut key = None;
    for tag in [store.outbox_tag(shard.as_ref()), store.outbox_tag(None)] {
        key = store.outbox_alias_of(&tag, provider, message_id).await?;
        if key.is_some() {
            break;
        }
    }
    let Some(key) = key else {
        return Ok(false);
    };
    let Some((provider, reference)) = key.split_once(':') else {
        return Ok(false);
    };
    broker
        .interaction_status(provider, reference, proxy, status, None, last)
        .await
}

/// One pass: claims the texts due now, sends them side by side and settles them, one script
/// per queue for the whole pass. Returns how many texts it handled (sent, rescheduled or
/// given up).
pub async fn deliver_once(
    broker: &Broker,
    http: &reqwest::Client,
    providers: &Providers,
) -> Result<usize, BrokerError> {
    Ok(deliver_pass(broker, http, providers).await?.handled)
}

/// What a pass did, and when the next text of any queue falls due.
struct Pass {
    handled: usize,
    /// ms; `None` when every queue is empty.
    next_due: Option<Millis>,
}

/// [`deliver_once`], saying when to come back.
async fn deliver_pass(
    broker: &Broker,
    http: &reqwest::Client,
    providers: &Providers,
) -> Result<Pass, BrokerError> {
    use base64::Engine as _;
    let now = broker.now_ms();
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 12]>());
    let providers = Arc::new(providers.clone());
    let mut attempts = JoinSet::new();
    let mut count = 0;
    let mut next_due: Option<Millis> = None;
    let mut unreachable = None;
    for (i, tag) in broker.store().outbox_tags().await?.into_iter().enumerate() {
        let room = BATCH - count;
        if room == 0 {
            break;
        }
        // A queue on a Redis Cluster node that is down holds up its own texts, not the rest.
        let claimed = match broker
            .store()
            .outbox_claim(
                &tag,
                now,
                LEASE_MS,
                room,
                &format!("{token}.{i}"),
                FAILED_KEEP_MS,
            )
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                unreachable = Some(e);
                continue;
            }
        };
        count += claimed.items.len();
        next_due = next_due.into_iter().chain(claimed.next_due).min();
        let tag = Arc::new(tag);
        for item in claimed.items {
            let (broker, http, providers, tag) =
                (broker.clone(), http.clone(), providers.clone(), tag.clone());
            attempts
                .spawn(async move { deliver(&broker, &http, &providers, tag, item, now).await });
        }
    }
    let mut by_queue: HashMap<Arc<String>, Vec<Sent>> = HashMap::new();
    while let Some(done) = attempts.join_next().await {
        match done {
            Ok(Some(sent)) => by_queue.entry(sent.tag.clone()).or_default().push(sent),
            Ok(None) => {}
            // The lease runs out and the text is given up as of unknown outcome.
            Err(e) => tracing::error!(error = %e, "an outbound text attempt panicked"),
        }
    }
    for (tag, sent) in by_queue {
        for s in &sent {
            if let Settle::Retry { due } | Settle::Release { due } = s.settle {
                next_due = Some(next_due.map_or(due, |n| n.min(due)));
            }
        }
        settle_queue(broker, &tag, sent).await;
    }
    let pass = Pass {
        handled: count,
        next_due,
    };
    match unreachable {
        Some(e) if count == 0 => Err(e.into()),
        Some(e) => {
            tracing::warn!(error = %e, "some outbound text queues could not be read");
            Ok(pass)
        }
        None => Ok(pass),
    }
}

/// The provider's answer to one attempt: its id for the message, when it gives one.
async fn attempt(
    http: &reqwest::Client,
    providers: &Providers,
    msg: &OutboundSms,
) -> Result<Option<String>, SendError> {
    match msg.via {
        Via::Twilio => Twilio::send_text(http, providers, msg).await,
        Via::Telnyx => Telnyx::send_text(http, providers, msg).await,
        Via::Plivo => Plivo::send_text(http, providers, msg).await,
        Via::Vonage => Vonage::send_text(http, providers, msg).await,
    }
}

/// A claimed text whose fate is known, waiting to be settled with the rest of its pass.
struct Sent {
    tag: Arc<String>,
    item: Leased,
    settle: Settle<'static>,
    /// What was tried, for the bookkeeping that follows the settle; `None` when nothing was
    /// (the text could not be opened, or its lease was too short to start).
    tried: Option<Tried>,
}

struct Tried {
    msg: OutboundSms,
    result: Result<Option<String>, SendError>,
    /// When the attempt ended.
    at: Millis,
}

/// Sends one claimed text of the queue `tag` and says how to settle it. `None` for a text
/// the claim gave up (it holds no lease, so there is nothing to settle).
async fn deliver(
    broker: &Broker,
    http: &reqwest::Client,
    providers: &Providers,
    tag: Arc<String>,
    item: Leased,
    claimed_at: Millis,
) -> Option<Sent> {
    let msg = match broker.open_text(&item.sealed) {
        Ok(msg) => msg,
        Err(e) => {
            tracing::error!(error = %e, "a queued text cannot be opened; giving it up");
            count_text("unknown", "failed");
            let settle = Settle::Failed {
                keep_ms: FAILED_KEEP_MS,
                reason: "unreadable",
            };
            return Some(Sent {
                tag,
                item,
                settle,
                tried: None,
            });
        }
    };
    if item.token.is_empty() {
        // Given up by the claim: an earlier attempt's worker died or hung before settling,
        // maybe after the provider took the text. Sending it again could reach the person
        // twice; the interaction says it failed instead.
        count_text(msg.via.label(), "failed");
        tracing::warn!(key = %msg.key, attempt = item.claims,
            "outbound text given up: an earlier attempt ended without a known outcome");
        if let Some((provider, reference)) = msg.key.split_once(':')
            && let Err(e) = broker
                .interaction_status(provider, reference, &msg.from, "failed", None, true)
                .await
        {
            tracing::warn!(error = %e, "interaction status not recorded");
        }
        return None;
    }
    if broker.now_ms() > claimed_at + LEASE_MS - LEASE_MARGIN_MS {
        let settle = Settle::Release {
            due: broker.now_ms(),
        };
        return Some(Sent {
            tag,
            item,
            settle,
            tried: None,
        });
    }
    let result = attempt(http, providers, &msg).await;
    // The provider may report on the text as soon as it answers: its id is matched to the
    // interaction now, not when the pass settles, or an early report would find nothing.
    if let Ok(Some(message_id)) = &result
        && let Some((provider, _)) = msg.key.split_once(':')
        && let Err(e) = broker
            .store()
            .outbox_alias(&tag, provider, message_id, &msg.key, PROVIDER_REF_TTL_MS)
            .await
    {
        tracing::warn!(error = %e, "delivery reports for a sent text will not be matched");
    }
    let now = broker.now_ms();
    let settle = match &result {
        Ok(_) => Settle::Done {
            keep_ms: PROVIDER_REF_TTL_MS,
        },
        Err(SendError::Retry(_)) if (item.claims as usize) <= BACKOFF_MS.len() => {
            let wait = BACKOFF_MS[item.claims.max(1) as usize - 1];
            let jitter = rand::random_range(0..=wait / 10);
            Settle::Retry {
                due: now + wait + jitter,
            }
        }
        Err(e) => Settle::Failed {
            keep_ms: FAILED_KEEP_MS,
            reason: match e {
                SendError::Retry(_) => "retries exhausted",
                SendError::Permanent(_) => "refused",
            },
        },
    };
    Some(Sent {
        tag,
        item,
        settle,
        tried: Some(Tried {
            msg,
            result,
            at: now,
        }),
    })
}

/// Settles a pass's texts of the queue `tag` in one script, then records what each attempt
/// came to. Texts whose settle cannot be written stay leased and are given up as of unknown
/// outcome when the lease ends: sent at most once.
async fn settle_queue(broker: &Broker, tag: &str, sent: Vec<Sent>) {
    let items: Vec<Settlement<'_>> = sent
        .iter()
        .map(|s| Settlement {
            id: &s.item.id,
            token: &s.item.token,
            how: s.settle,
            attempt: "",
        })
        .collect();
    let settled = match settle_surely(broker, tag, &items).await {
        Ok(settled) => settled,
        Err(e) => {
            tracing::warn!(error = %e, texts = items.len(), "settling outbound texts failed");
            return;
        }
    };
    if settled.iter().any(|ok| !ok) {
        tracing::warn!("an outbound text's lease was lost before it was settled");
    }
    for s in &sent {
        if let Some(tried) = &s.tried {
            after_settle(broker, s, tried).await;
        }
    }
}

/// The metrics, log line and interaction status of one settled attempt.
async fn after_settle(broker: &Broker, sent: &Sent, tried: &Tried) {
    let (msg, item) = (&tried.msg, &sent.item);
    count_text(
        msg.via.label(),
        match sent.settle {
            Settle::Done { .. } => "sent",
            Settle::Retry { .. } => "retry",
            _ => "failed",
        },
    );
    match &tried.result {
        Ok(_) => tracing::info!(key = %msg.key, attempt = item.claims, "outbound text sent"),
        Err(e) => match sent.settle {
            Settle::Retry { due } => tracing::warn!(key = %msg.key, attempt = item.claims,
                error = %e, retry_in_ms = due - tried.at, "outbound text not sent; will retry"),
            _ => tracing::warn!(key = %msg.key, attempt = item.claims, error = %e,
                "outbound text given up"),
        },
    }
    let Some((provider, reference)) = msg.key.split_once(':') else {
        return;
    };
    // A report that came first already moved the interaction on; a final status stays final.
    let status = match sent.settle {
        Settle::Done { .. } => Some(("sent", false)),
        Settle::Failed { .. } => Some(("failed", true)),
        _ => None,
    };
    if let Some((status, last)) = status
        && let Err(e) = broker
            .interaction_status(provider, reference, &msg.from, status, None, last)
            .await
    {
        tracing::warn!(error = %e, "interaction status not recorded");
    }
}

/// Settles, trying again a few times over a short Redis outage: an unsettled text that was
/// sent would be given up as of unknown outcome once its lease runs out.
async fn settle_surely(
    broker: &Broker,
    tag: &str,
    items: &[Settlement<'_>],
) -> Result<Vec<bool>, BrokerError> {
    let mut tries = 0;
    loop {
        match broker.store().queue_settle_many(tag, items, false).await {
            Ok(settled) => return Ok(settled),
            Err(e) if tries >= 4 => return Err(e.into()),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(250 * tries)).await;
            }
        }
    }
}

/// Whether this instance has any provider that sends texts through an API, so needs a worker.
pub fn needed(p: &Providers) -> bool {
    Telnyx::enabled(p) || Vonage::enabled(p) || !p.texting().is_empty()
}

/// Runs [`deliver_once`] until `shutdown`: at once again after a full batch, when a text is
/// queued (the queues' doorbell, see `store::doorbell`), when the next text falls due (a
/// retry, or a lease that may run out), and otherwise as a sweep (`Rings::sweep`) for rings
/// that were lost and what other instances left. A pass in hand is finished (its texts sent and
/// settled) before it returns.
pub async fn run_worker(broker: Broker, providers: Providers, shutdown: CancellationToken) {
    let http = match reqwest::Client::builder()
        .timeout(SEND_TIMEOUT)
        .connect_timeout(Duration::from_secs(3))
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client: outbound texts stay queued");
            return;
        }
    };
    // Texts are few beside events: a ring starts a pass over every queue.
    let rings = Arc::new(Rings::default());
    let listener = tokio::spawn({
        let (store, rings, shutdown) = (broker.store().clone(), rings.clone(), shutdown.clone());
        async move { store.listen(Queue::Texts, rings, shutdown).await }
    });
    while !shutdown.is_cancelled() {
        let sweep = rings.sweep();
        let pause = match deliver_pass(&broker, &http, &providers).await {
            Ok(pass) if pass.handled >= BATCH => Duration::ZERO,
            Ok(Pass {
                next_due: Some(at), ..
            }) => {
                let wait = u64::try_from(at - broker.now_ms()).unwrap_or(0);
                sweep.min(Duration::from_millis(wait))
            }
            Ok(_) => sweep,
            Err(e) => {
                tracing::warn!(error = %e, "outbound text pass failed; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = rings.wait() => {
                rings.take();
            }
            _ = tokio::time::sleep(pause) => {}
        }
    }
    let _ = listener.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_increasing() {
        assert!(BACKOFF_MS.windows(2).all(|w| w[0] < w[1]));
        assert!(BACKOFF_MS.iter().sum::<Millis>() < 15 * 60 * 1000);
    }
}
