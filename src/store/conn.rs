//! The one connection every typed call and script runs on, whatever the [`RedisTarget`]: a
//! connection manager for one server, the crate's async cluster client for a Cluster, and a
//! multiplexed connection re-pointed through Sentinel when the primary moves. All three connect
//! lazily so hush starts while Redis is down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::{Mutex, OnceCell};

use super::target::{RedisTarget, StoreKind};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1))
}

fn connection_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
}

/// A client trusting `ca` (PEM) instead of the system roots when given.
fn client_for(info: redis::ConnectionInfo, ca: Option<&[u8]>) -> RedisResult<redis::Client> {
    match ca {
        Some(ca) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        ),
        None => redis::Client::open(info),
    }
}

/// No sentinel names a primary that answers as one: a failover is under way.
fn not_a_primary() -> RedisError {
    RedisError::from((
        redis::ErrorKind::MasterNameNotFoundBySentinel,
        "no sentinel names a reachable primary",
    ))
}

/// Cloning is cheap and shares the underlying connection, like `ConnectionManager`'s.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
    Sentinel(Arc<Followed>),
}

pub struct LazyCluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

/// The primary's connection as Sentinel last named it; dropped when the primary stops
/// answering or turns read-only, so the next call asks Sentinel again.
///
/// A plain multiplexed connection, not a `ConnectionManager`: a manager reconnects by itself
/// to the address it was given, so once a killed primary is started again (empty, or still
/// believing it is the primary until Sentinel demotes it) it would quietly serve and take
/// writes there. A dead connection here stays dead and the next call asks Sentinel.
///
/// Sentinels that have not yet heard of a failover still name the old primary, and a killed
/// primary started again answers `ROLE` as a primary until Sentinel demotes it: so hush asks
/// every sentinel and follows the one with the newest configuration epoch, then checks the
/// role of the node it names.
pub struct Followed {
    target: RedisTarget,
    ca: Option<Vec<u8>>,
    current: Mutex<Option<MultiplexedConnection>>,
}

impl Conn {
    pub(crate) fn open(target: &RedisTarget, ca: Option<&[u8]>) -> RedisResult<Conn> {
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: ca.map(<[u8]>::to_vec),
        };
        match target.kind {
            StoreKind::Single => {
                let info = target.info(&target.nodes[0], true);
                let client = client_for(info, ca)?;
                let conn = ConnectionManager::new_lazy_with_config(client, manager_config())?;
                Ok(Conn::Single(conn))
            }
            StoreKind::Cluster => {
                let nodes: Vec<_> = target.nodes.iter().map(|n| target.info(n, true)).collect();
                let mut b = ClusterClient::builder(nodes)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(3);
                if target.tls {
                    b = b.tls(redis::cluster::TlsMode::Secure);
                }
                if ca.is_some() {
                    b = b.certs(certs());
                }
                Ok(Conn::Cluster(Arc::new(LazyCluster {
                    client: b.build()?,
                    conn: OnceCell::new(),
                })))
            }
            StoreKind::Sentinel => Ok(Conn::Sentinel(Arc::new(Followed {
                target: target.clone(),
                ca: ca.map(<[u8]>::to_vec),
                current: Mutex::new(None),
            }))),
        }
    }
}

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

impl Followed {
    async fn get(&self) -> RedisResult<MultiplexedConnection> {
        let mut current = self.current.lock().await;
        if let Some(c) = &*current {
            return Ok(c.clone());
        }
        let (host, port) = self.primary().await?;
        let client = client_for(self.target.info(&(host, port), true), self.ca.as_deref())?;
        let mut conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&connection_config()),
        )
        .await
        .map_err(|_| timed_out())??;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
        if !matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") {
            return Err(not_a_primary());
        }
        *current = Some(conn.clone());
        Ok(conn)
    }

    /// Where the sentinels that know most recently say the primary is.
    async fn primary(&self) -> RedisResult<(String, u16)> {
        let master = self.target.master.clone().unwrap_or_default();
        let mut asks = tokio::task::JoinSet::new();
        for node in &self.target.nodes {
            let client = client_for(self.target.info(node, false), self.ca.as_deref());
            let master = master.clone();
            asks.spawn(async move {
                let ask = async {
                    let mut c = client?
                        .get_multiplexed_async_connection_with_config(&connection_config())
                        .await?;
                    let m: HashMap<String, String> = redis::cmd("SENTINEL")
                        .arg("MASTER")
                        .arg(&master)
                        .query_async(&mut c)
                        .await?;
                    Ok::<_, RedisError>(m)
                };
                tokio::time::timeout(CONNECT_TIMEOUT, ask).await.ok()?.ok()
            });
        }
        let mut best: Option<(u64, String, u16)> = None;
        while let Some(answer) = asks.join_next().await {
            let Some(m) = answer.ok().flatten() else {
                continue;
            };
            let flags = m.get("flags").map(String::as_str).unwrap_or("");
            if flags.contains("s_down") || flags.contains("o_down") {
                continue;
            }
            let (Some(ip), Some(port), Some(epoch)) = (
                m.get("ip"),
                m.get("port").and_then(|p| p.parse().ok()),
                m.get("config-epoch").and_then(|e| e.parse().ok()),
            ) else {
                continue;
            };
            if best.as_ref().is_none_or(|(e, _, _)| epoch > *e) {
                best = Some((epoch, ip.clone(), port));
            }
        }
        best.map(|(_, ip, port)| (ip, port))
            .ok_or_else(not_a_primary)
    }

    /// Forgets the primary after an error that means it may have moved.
    async fn check<T>(&self, r: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &r
            && (e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || matches!(e.code(), Some("READONLY" | "MASTERDOWN")))
        {
            *self.current.lock().await = None;
        }
        r
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => {
                Box::pin(async move { c.get().await?.req_packed_command(cmd).await })
            }
            Conn::Sentinel(f) => Box::pin(async move {
                let r = match f.get().await {
                    Ok(mut c) => c.req_packed_command(cmd).await,
                    Err(e) => Err(e),
                };
                f.check(r).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => Box::pin(async move {
                let mut conn = c.get().await?;
                match conn.req_packed_commands(pipeline, offset, count).await {
                    // The cluster client sends a pipeline to one slot only and refuses before
                    // sending anything otherwise. The store's cross-slot pipelines (idempotency
                    // markers and indexes) are not transactions, so their commands may go one
                    // by one, in order.
                    Err(e) if e.code() == Some("CROSSSLOT") && !pipeline.is_transaction() => {
                        let mut out = Vec::with_capacity(count);
                        for cmd in pipeline.cmd_iter() {
                            out.push(conn.req_packed_command(cmd).await?);
                        }
                        Ok(out)
                    }
                    r => r,
                }
            }),
            Conn::Sentinel(f) => Box::pin(async move {
                let r = match f.get().await {
                    Ok(mut c) => c.req_packed_commands(pipeline, offset, count).await,
                    Err(e) => Err(e),
                };
                f.check(r).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(_) => 0,
            Conn::Sentinel(f) => f.target.db,
        }
    }
}
