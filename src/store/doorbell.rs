//! The event doorbell: every script that records or requeues an event publishes on its
//! shard's bell channel (`<tag>ev:bell`), and the delivery worker listens with one pattern
//! subscription, so an event is claimed as soon as it is written rather than at the next
//! sweep. Classic pub/sub reaches a subscriber on any node of a Cluster (PUBLISH goes over
//! the cluster bus) and on replicas, so one connection (to the primary, under Sentinel)
//! hears every shard. A ring lost while reconnecting only delays an event until the sweep.

use std::sync::Arc;
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
        pattern: &str,
    ) -> RedisResult<redis::aio::PubSub> {
        let client = match conn.sentinel_primary().await {
            Some(primary) => primary?,
            // A Cluster node that is down is passed over on the next attempt.
            None => self.servers[attempt % self.servers.len().max(1)].clone(),
        };
        let mut pubsub = tokio::time::timeout(RECONNECT, client.get_async_pubsub())
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        pubsub.psubscribe(pattern).await?;
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

impl Store {
    /// The channel pattern every shard's bell matches.
    fn bell_pattern(&self) -> String {
        format!("{}:{{p*}}:ev:bell", glob_escape(self.keys.prefix()))
    }

    /// Wakes `ring` whenever an event is written in any shard, until `shutdown`. It also
    /// wakes `ring` after each (re)connection, as rings may have been missed meanwhile.
    pub async fn listen_for_events(&self, ring: Arc<Notify>, shutdown: CancellationToken) {
        let pattern = self.bell_pattern();
        let mut attempt = 0;
        while !shutdown.is_cancelled() {
            match self.bells.subscribe(&self.conn, attempt, &pattern).await {
                Ok(mut pubsub) => {
                    ring.notify_one();
                    let mut rings = pubsub.on_message();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            m = rings.next() => match m {
                                Some(_) => ring.notify_one(),
                                None => break,
                            },
                        }
                    }
                    tracing::debug!("event doorbell disconnected; reconnecting");
                }
                Err(e) => {
                    attempt += 1;
                    tracing::debug!(error = %e, "event doorbell unavailable; the sweep delivers meanwhile");
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
    fn the_bell_pattern_matches_every_shard_of_its_prefix_only() {
        assert_eq!(glob_escape("hush"), "hush");
        assert_eq!(glob_escape("a*b?[c]"), r"a\*b\?\[c\]");
        let channel = format!("{}bell", Keys::new("hush").shard(7, 3).events_tag());
        assert_eq!(channel, "hush:{p7.3}:ev:bell");
    }
}
