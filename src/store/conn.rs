//! The one connection every typed call and script runs on, whatever the [`RedisTarget`]: a
//! connection manager for one server, the crate's async cluster client for a Cluster, and a
//! multiplexed connection re-pointed through Sentinel when the primary moves. All three connect
//! lazily so hush starts while Redis is down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::IntoConnectionInfo;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
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
fn client_for(
    info: redis::ConnectionInfo,
    certs: Option<&redis::TlsCertificates>,
) -> RedisResult<redis::Client> {
    match certs {
        Some(c) => redis::Client::build_with_tls(info, c.clone()),
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
    access: Access,
    current: Mutex<Option<MultiplexedConnection>>,
}

/// What reaching Redis takes beside the URL. No `Debug`: it holds a password.
#[derive(Clone, Default)]
pub struct Access {
    /// Trust and identity for TLS (`rediss` schemes only); `None` keeps the client's default,
    /// the system roots and no client certificate.
    pub tls: Option<redis::TlsCertificates>,
    /// The sentinels' own password (`requirepass` in their configuration), which may differ
    /// from the primary's in the URL.
    pub sentinel_password: Option<String>,
}

impl Conn {
    pub(crate) fn open(target: &RedisTarget, access: &Access) -> RedisResult<Conn> {
        let certs = access.tls.as_ref().filter(|_| target.tls);
        match target.kind {
            StoreKind::Single => {
                let client = client_for(target.info(&target.nodes[0]), certs)?;
                let conn = ConnectionManager::new_lazy_with_config(client, manager_config())?;
                Ok(Conn::Single(conn))
            }
            StoreKind::Cluster => {
                let nodes: Vec<_> = target.nodes.iter().map(|n| target.info(n)).collect();
                let mut b = ClusterClient::builder(nodes)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(3);
                if target.tls {
                    b = b.tls(redis::cluster::TlsMode::Secure);
                }
                if let Some(c) = certs {
                    b = b.certs(c.clone());
                }
                Ok(Conn::Cluster(Arc::new(LazyCluster {
                    client: b.build()?,
                    conn: OnceCell::new(),
                })))
            }
            StoreKind::Sentinel => Ok(Conn::Sentinel(Arc::new(Followed {
                target: target.clone(),
                access: access.clone(),
                current: Mutex::new(None),
            }))),
        }
    }
}

/// One Redis server a key scan walks: the only one, or a Cluster primary by address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Only,
    Primary { host: String, port: u16 },
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Only => f.write_str("the primary"),
            Node::Primary { host, port } => write!(f, "primary {host}:{port}"),
        }
    }
}

impl Conn {
    /// The servers that together hold every key: each Cluster primary (from the slot map
    /// `CLUSTER SLOTS` gives, as the cluster client itself routes by), else the one server.
    pub async fn nodes(&self) -> RedisResult<Vec<Node>> {
        let Conn::Cluster(c) = self else {
            return Ok(vec![Node::Only]);
        };
        let slots = c
            .get()
            .await?
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let mut nodes = Vec::new();
        let Value::Array(ranges) = slots else {
            return Err(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "CLUSTER SLOTS",
            )));
        };
        for range in ranges {
            // [start, end, [host, port, id, ...] of the primary, replicas...]
            let Value::Array(parts) = range else { continue };
            let Some(Value::Array(primary)) = parts.get(2) else {
                continue;
            };
            let (Some(host), Some(port)) = (primary.first(), primary.get(1)) else {
                continue;
            };
            let node = Node::Primary {
                host: redis::from_redis_value_ref(host)?,
                port: redis::from_redis_value_ref(port)?,
            };
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
        Ok(nodes)
    }

    /// One `SCAN` step on `node`: the next cursor (0 when the walk is over) and keys.
    pub async fn scan_step(
        &self,
        node: &Node,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> RedisResult<(u64, Vec<String>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        match (self, node) {
            (Conn::Cluster(c), Node::Primary { host, port }) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let reply = c.get().await?.route_command(cmd, routing).await?;
                Ok(redis::from_redis_value(reply)?)
            }
            _ => cmd.query_async(&mut self.clone()).await,
        }
    }
}

impl Conn {
    /// The primary as Sentinel names it now, for a connection of its own (a subscriber);
    /// `None` for other kinds of Redis.
    pub(crate) async fn sentinel_primary(&self) -> Option<RedisResult<redis::Client>> {
        match self {
            Conn::Sentinel(f) => Some(f.primary_client().await),
            _ => None,
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
    /// The TLS trust and identity for the sentinels and the primary alike: with
    /// `rediss+sentinel://` both are reached over TLS (managed Sentinel offers nothing else).
    fn certs(&self) -> Option<&redis::TlsCertificates> {
        self.access.tls.as_ref().filter(|_| self.target.tls)
    }

    /// A sentinel's address, with the sentinels' own password rather than the primary's.
    fn sentinel_info(&self, node: &(String, u16)) -> redis::ConnectionInfo {
        let mut auth = redis::RedisConnectionInfo::default();
        if let Some(p) = &self.access.sentinel_password {
            auth = auth.set_password(p);
        }
        self.target
            .addr(node)
            .into_connection_info()
            .expect("an address is always a connection info")
            .set_redis_settings(auth)
    }

    /// A client for the primary the sentinels name now (not yet checked with `ROLE`).
    async fn primary_client(&self) -> RedisResult<redis::Client> {
        let (host, port) = self.primary().await?;
        client_for(self.target.info(&(host, port)), self.certs())
    }

    async fn get(&self) -> RedisResult<MultiplexedConnection> {
        let mut current = self.current.lock().await;
        if let Some(c) = &*current {
            return Ok(c.clone());
        }
        let client = self.primary_client().await?;
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
            let client = client_for(self.sentinel_info(node), self.certs());
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
                tokio::time::timeout(CONNECT_TIMEOUT, ask)
                    .await
                    .unwrap_or_else(|_| Err(timed_out()))
            });
        }
        let mut best: Option<(u64, String, u16)> = None;
        // When no sentinel answers at all, why the last one did not (a refused password, an
        // untrusted certificate) says more in the log than that no primary was found.
        let mut answered = false;
        let mut last_error = None;
        while let Some(answer) = asks.join_next().await {
            let m = match answer {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    last_error = Some(e);
                    continue;
                }
                Err(_) => continue,
            };
            answered = true;
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
        match (best, last_error) {
            (Some((_, ip, port)), _) => Ok((ip, port)),
            (None, Some(e)) if !answered => Err(e),
            _ => Err(not_a_primary()),
        }
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
