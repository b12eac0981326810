//! The doorbells of the leased queues: every script that records or requeues an event
//! publishes on its shard's bell channel (`<tag>ev:bell`), every queued text on its queue's
//! (`<tag>ox:bell`), and each worker listens with one pattern subscription, so an item is
//! claimed as soon as it is written rather than at the next sweep. Classic pub/sub reaches a
//! subscriber on any node of a Cluster (PUBLISH goes over the cluster bus) and on replicas,
//! so one connection (to the primary, under Sentinel) hears every shard. A ring names its
//! queue, so a worker claims from the shards that rang, not from every shard of every pool.
//! A ring lost while reconnecting only delays an item until the sweep.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::RedisResult;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Store;
use super::conn::{Access, Conn};
use super::target::{RedisTarget, StoreKind};

/// How long connecting the subscriber may take, and the pause before trying again.
const RECONNECT: Duration = Duration::from_secs(1);
/// How often a worker that hears rings looks at every queue anyway: for rings lost while
/// reconnecting, and for retries and leases of an instance that died.
pub const SWEEP: Duration = Duration::from_secs(5);
/// The same while rings are not heard (Redis refuses the channels, or the subscriber is
/// reconnecting): the sweep is then what finds new items.
pub const DEAF_SWEEP: Duration = Duration::from_millis(100);

/// Queues remembered between two looks; past this many the worker looks at every queue.
const MAX_RUNG: usize = 4096;

/// What rang since a worker last looked.
#[derive(Default)]
pub struct Rings {
    notify: Notify,
    rung: Mutex<Rung>,
    /// The listener is subscribed: rings are heard, so sweeps can be rare.
    heard: AtomicBool,
}

#[derive(Default)]
struct Rung {
    /// Any queue may have rung unheard (the subscriber just (re)connected).
    any: bool,
    /// The queue tags that rang (`<prefix>:{p7.0}:ev:`).
    tags: HashSet<String>,
}

impl Rings {
    /// Waits for a ring (returns at once if one came since the last wait).
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// How long a worker may go without looking at every queue: [`SWEEP`] while rings are
    /// heard, [`DEAF_SWEEP`] while they are not.
    pub fn sweep(&self) -> Duration {
        if self.heard.load(Ordering::Relaxed) {
            SWEEP
        } else {
            DEAF_SWEEP
        }
    }

    /// The queue tags that rang since the last call, and forgets them; `None` when any queue
    /// may have rung, so every queue is to be looked at.
    pub fn take(&self) -> Option<HashSet<String>> {
        let mut rung = self.rung.lock().expect("lock poisoned");
        let any = std::mem::take(&mut rung.any);
        let tags = std::mem::take(&mut rung.tags);
        (!any).then_some(tags)
    }

    /// Records a ring of the queue `tag`, or of any queue (`None`).
    fn ring(&self, tag: Option<&str>) {
        {
            let mut rung = self.rung.lock().expect("lock poisoned");
            match tag {
                Some(tag) if !rung.any && rung.tags.len() < MAX_RUNG => {
                    rung.tags.insert(tag.to_string());
                }
                _ => {
                    rung.any = true;
                    rung.tags.clear();
                }
            }
        }
        self.notify.notify_one();
    }
}

/// Where a subscriber connects: any of the configured servers, or the primary Sentinel
/// names at the time.
pub(crate) struct Bells {
    servers: Vec<redis::Client>,
}

impl Bells {
    pub(crate) fn new(target: &RedisTarget, access: &Access) -> RedisResult<Bells> {
        if target.kind == StoreKind::Sentinel {
            return Ok(Bells {
                servers: Vec::new(),
            });
        }
        let certs = access.tls.as_ref().filter(|_| target.tls);
        let servers = target
            .nodes
            .iter()
            .map(|n| match certs {
                Some(c) => redis::Client::build_with_tls(target.info(n), c.clone()),
                None => redis::Client::open(target.info(n)),
            })
            .collect::<RedisResult<_>>()?;
        Ok(Bells { servers })
    }

    async fn subscribe(
        &self,
        conn: &Conn,
        attempt: usize,
        patterns: &[String],
    ) -> RedisResult<redis::aio::PubSub> {
        let client = match conn.sentinel_primary().await {
            Some(primary) => primary?,
            // A Cluster node that is down is passed over on the next attempt.
            None => self.servers[attempt % self.servers.len().max(1)].clone(),
        };
        let mut pubsub = tokio::time::timeout(RECONNECT, client.get_async_pubsub())
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        pubsub.psubscribe(patterns).await?;
        Ok(pubsub)
    }
}

/// Redis glob patterns treat these as special; a prefix is matched literally.
fn glob_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// Which queue's bells a worker listens to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    /// Every shard's events.
    Events,
    /// Every outbound text queue: each shard's and the old shared one (`{ox}`).
    Texts,
}

impl Store {
    /// The channel patterns the bells of `queue` match.
    fn bell_patterns(&self, queue: Queue) -> Vec<String> {
        let prefix = glob_escape(self.keys.prefix());
        match queue {
            Queue::Events => vec![format!("{prefix}:{{p*}}:ev:bell")],
            Queue::Texts => vec![
                format!("{prefix}:{{p*}}:ox:bell"),
                format!("{prefix}:{{ox}}:bell"),
            ],
        }
    }

    /// Records in `rings` which queue of `queue` had an item written, until `shutdown`, and
    /// that any may have, after each (re)connection, as rings may have been missed meanwhile.
    pub async fn listen(&self, queue: Queue, rings: Arc<Rings>, shutdown: CancellationToken) {
        let patterns = self.bell_patterns(queue);
        let mut attempt = 0;
        let mut failing = false;
        while !shutdown.is_cancelled() {
            match self.bells.subscribe(&self.conn, attempt, &patterns).await {
                Ok(mut pubsub) => {
                    failing = false;
                    rings.heard.store(true, Ordering::Relaxed);
                    rings.ring(None);
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            m = messages.next() => match m {
                                Some(m) => rings.ring(m.get_channel_name().strip_suffix("bell")),
                                None => break,
                            },
                        }
                    }
                    rings.heard.store(false, Ordering::Relaxed);
                    tracing::debug!(?queue, "doorbell disconnected; reconnecting");
                }
                Err(e) => {
                    attempt += 1;
                    // Once per outage, not every second of it.
                    if !failing {
                        failing = true;
                        // The worker looks at every queue now and sweeps often until rings
                        // are heard again.
                        rings.heard.store(false, Ordering::Relaxed);
                        rings.ring(None);
                        tracing::warn!(error = %e, ?queue, "doorbell unavailable; the sweep delivers meanwhile");
                    } else {
                        tracing::debug!(error = %e, ?queue, "doorbell still unavailable");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RECONNECT) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::Keys;
    use super::glob_escape;

    #[test]
    fn bells_are_named_as_their_patterns_expect() {
        assert_eq!(glob_escape("hush"), "hush");
        assert_eq!(glob_escape("a*b?[c]"), r"a\*b\?\[c\]");
        let shard = Keys::new("hush").shard(7, 3);
        assert_eq!(format!("{}bell", shard.events_tag()), "hush:{p7.3}:ev:bell");
        assert_eq!(format!("{}bell", shard.outbox_tag()), "hush:{p7.3}:ox:bell");
        assert_eq!(
            format!("{}bell", super::super::outbox::legacy_tag("hush")),
            "hush:{ox}:bell"
        );
    }
}
