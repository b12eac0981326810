//! The one connection every typed call and script runs on, whatever the [`RedisTarget`]: a
//! connection manager for one server, the crate's async cluster client for a Cluster, and a
//! connection manager re-pointed through Sentinel when the primary moves. All three connect
//! lazily so hush starts while Redis is down.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
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
pub struct Followed {
    sentinel: Mutex<SentinelClient>,
    current: Mutex<Option<ConnectionManager>>,
    db: i64,
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
                let info = target.info(&target.nodes[0]);
                let client = match certs {
                    Some(c) => redis::Client::build_with_tls(info, c.clone())?,
                    None => redis::Client::open(info)?,
                };
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
            StoreKind::Sentinel => {
                // With `rediss+sentinel://` the sentinels are reached over TLS too, trusting
                // the same roots: a deployment that encrypts its data nodes encrypts its
                // sentinels, and managed Sentinel offers nothing else.
                let sentinels = target.nodes.iter().map(|n| target.addr(n));
                let master = target.master.clone().unwrap_or_default();
                let mut b =
                    SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)?
                        .set_client_to_redis_db(target.db);
                if let Some(u) = &target.username {
                    b = b.set_client_to_redis_username(u);
                }
                if let Some(p) = target.password() {
                    b = b.set_client_to_redis_password(p);
                }
                if let Some(p) = &access.sentinel_password {
                    b = b.set_client_to_sentinel_password(p);
                }
                if target.tls {
                    b = b
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
                }
                if let Some(c) = certs {
                    b = b
                        .set_client_to_redis_certificates(c.clone())
                        .set_client_to_sentinel_certificates(c.clone());
                }
                Ok(Conn::Sentinel(Arc::new(Followed {
                    sentinel: Mutex::new(b.build()?),
                    current: Mutex::new(None),
                    db: target.db,
                })))
            }
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
            Conn::Sentinel(f) => Some(f.sentinel.lock().await.async_get_client().await),
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
    async fn get(&self) -> RedisResult<ConnectionManager> {
        let mut current = self.current.lock().await;
        if let Some(c) = &*current {
            return Ok(c.clone());
        }
        let client = self.sentinel.lock().await.async_get_client().await?;
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client, manager_config()),
        )
        .await
        .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
        *current = Some(conn.clone());
        Ok(conn)
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
            Conn::Sentinel(f) => f.db,
        }
    }
}
