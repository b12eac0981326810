//! Which Redis the store talks to, read from `HUSH_REDIS_URL`: one server, a Cluster or a
//! primary found through Sentinel, with or without TLS. Parsing happens once at start-up so a
//! malformed URL stops hush before it serves; the password is kept out of every rendering so
//! the target can be logged as it is.

use std::fmt;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

/// Named in every refusal so an operator sees at once what would have been accepted.
pub const ACCEPTED_FORMS: &str = "redis://[user:password@]host:port[/db], \
     rediss://... (TLS), \
     redis+cluster://[user:password@]host:port,host:port,... (or rediss+cluster://), \
     redis+sentinel://[user:password@]host:port,host:port,.../MASTER_NAME (or rediss+sentinel://)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Single,
    Cluster,
    Sentinel,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Single => "single",
            StoreKind::Cluster => "cluster",
            StoreKind::Sentinel => "sentinel",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{shown}` is not a Redis URL hush accepts ({reason}); accepted forms: {ACCEPTED_FORMS}")]
pub struct TargetError {
    /// The URL with any password masked: refusals end up in logs.
    shown: String,
    reason: &'static str,
}

/// A parsed `HUSH_REDIS_URL`. Nodes are the server for `Single`, seed nodes for `Cluster` and
/// the sentinels for `Sentinel`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub kind: StoreKind,
    pub tls: bool,
    pub nodes: Vec<(String, u16)>,
    pub username: Option<String>,
    password: Option<String>,
    pub db: i64,
    pub master: Option<String>,
}

impl RedisTarget {
    pub fn parse(url: &str) -> Result<RedisTarget, TargetError> {
        let refuse = |reason| TargetError {
            shown: mask(url),
            reason,
        };
        let (scheme, rest) = url.split_once("://").ok_or(refuse("no scheme"))?;
        let (tls, kind) = match scheme {
            "redis" => (false, StoreKind::Single),
            "rediss" => (true, StoreKind::Single),
            "redis+cluster" => (false, StoreKind::Cluster),
            "rediss+cluster" => (true, StoreKind::Cluster),
            "redis+sentinel" => (false, StoreKind::Sentinel),
            "rediss+sentinel" => (true, StoreKind::Sentinel),
            _ => return Err(refuse("unknown scheme")),
        };
        // The password may hold '/' or '@' only percent-encoded, so the last '@' ends it.
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (hosts, path) = match rest.split_once('/') {
            Some((hosts, path)) => (hosts, Some(path)),
            None => (rest, None),
        };
        let (username, password) = match auth {
            None => (None, None),
            Some(auth) => {
                let (user, pass) = match auth.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (auth, None),
                };
                let user = decode(user).ok_or(refuse("bad percent-encoding"))?;
                let pass = pass
                    .map(|p| decode(p).ok_or(refuse("bad percent-encoding")))
                    .transpose()?;
                ((!user.is_empty()).then_some(user), pass)
            }
        };
        let default_port = if kind == StoreKind::Sentinel {
            26379
        } else {
            6379
        };
        let nodes = hosts
            .split(',')
            .map(|h| node(h, default_port).ok_or(refuse("bad host:port")))
            .collect::<Result<Vec<_>, _>>()?;
        if kind == StoreKind::Single && nodes.len() != 1 {
            return Err(refuse(
                "several hosts need redis+cluster:// or redis+sentinel://",
            ));
        }
        let path = path.unwrap_or("").trim_end_matches('/');
        let (db, master) = match kind {
            StoreKind::Single if path.is_empty() => (0, None),
            StoreKind::Single => (
                path.parse().map_err(|_| refuse("db is not a number"))?,
                None,
            ),
            StoreKind::Cluster if path.is_empty() => (0, None),
            StoreKind::Cluster => return Err(refuse("a cluster has no db or path")),
            StoreKind::Sentinel if path.is_empty() || path.contains('/') => {
                return Err(refuse("sentinel needs exactly one /MASTER_NAME"));
            }
            StoreKind::Sentinel => (0, Some(path.to_string())),
        };
        Ok(RedisTarget {
            kind,
            tls,
            nodes,
            username,
            password,
            db,
            master,
        })
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// One node's address, over TLS for the `rediss` schemes, sentinels included.
    pub(crate) fn addr(&self, (host, port): &(String, u16)) -> ConnectionAddr {
        if self.tls {
            ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.clone(), *port)
        }
    }

    /// Connection details for one data node (the server, a cluster node), with the URL's
    /// credentials.
    pub(crate) fn info(&self, node: &(String, u16)) -> ConnectionInfo {
        let mut redis = RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &self.username {
            redis = redis.set_username(u);
        }
        if let Some(p) = &self.password {
            redis = redis.set_password(p);
        }
        self.addr(node)
            .into_connection_info()
            .expect("an address is always a connection info")
            .set_redis_settings(redis)
    }
}

/// `host:port` or `[v6]:port`, the port defaulting like redis-cli's.
fn node(text: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty() || host.contains(['@', ' ', '/']) {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok().filter(|p| *p != 0)?,
        None => default_port,
    };
    Some((host.to_string(), port))
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The URL with whatever sits between `user:` and the last `@` replaced, for refusals of URLs
/// that did not parse far enough to be rendered field by field.
fn mask(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.split('@').next_back().unwrap_or("").to_string();
    };
    match rest.rsplit_once('@') {
        Some((auth, hosts)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{hosts}"),
            None => format!("{scheme}://{auth}@{hosts}"),
        },
        None => url.to_string(),
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match (self.tls, self.kind) {
            (false, StoreKind::Single) => "redis",
            (true, StoreKind::Single) => "rediss",
            (false, StoreKind::Cluster) => "redis+cluster",
            (true, StoreKind::Cluster) => "rediss+cluster",
            (false, StoreKind::Sentinel) => "redis+sentinel",
            (true, StoreKind::Sentinel) => "rediss+sentinel",
        };
        write!(f, "{scheme}://")?;
        match (&self.username, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:***@")?,
            (None, Some(_)) => write!(f, ":***@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, None) => {}
        }
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|(h, p)| {
                if h.contains(':') {
                    format!("[{h}]:{p}")
                } else {
                    format!("{h}:{p}")
                }
            })
            .collect();
        write!(f, "{}", hosts.join(","))?;
        match &self.master {
            Some(m) => write!(f, "/{m}"),
            None if self.db != 0 => write!(f, "/{}", self.db),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisTarget({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> RedisTarget {
        RedisTarget::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn single_server_forms() {
        let t = ok("redis://127.0.0.1:6380");
        assert_eq!(
            (t.kind, t.tls, t.db),
            (StoreKind::Single, false, 0),
            "{t:?}"
        );
        assert_eq!(t.nodes, vec![("127.0.0.1".to_string(), 6380)]);
        let t = ok("rediss://default:s%40cret@cache.example.com:6390/3");
        assert!(t.tls);
        assert_eq!(t.db, 3);
        assert_eq!(t.username.as_deref(), Some("default"));
        assert_eq!(t.password(), Some("s@cret"));
        let t = ok("redis://:pw@localhost");
        assert_eq!(t.username, None);
        assert_eq!(t.password(), Some("pw"));
        assert_eq!(t.nodes[0].1, 6379);
        assert_eq!(
            ok("redis://[::1]:7000/").nodes[0],
            ("::1".to_string(), 7000)
        );
    }

    #[test]
    fn cluster_and_sentinel_forms() {
        let t = ok("redis+cluster://a:7000,b:7001,c:7002");
        assert_eq!(t.kind, StoreKind::Cluster);
        assert_eq!(t.nodes.len(), 3);
        let t = ok("rediss+cluster://u:p@a:7000");
        assert!(t.tls && t.password() == Some("p"));
        let t = ok("redis+sentinel://s1:26379,s2,s3:26381/mymaster");
        assert_eq!(t.kind, StoreKind::Sentinel);
        assert_eq!(t.master.as_deref(), Some("mymaster"));
        assert_eq!(t.nodes[1], ("s2".to_string(), 26379));
        assert!(ok("rediss+sentinel://:pw@s1:26379/m").tls);
    }

    #[test]
    fn malformed_urls_are_refused_naming_the_accepted_forms() {
        for url in [
            "",
            "localhost:6379",
            "http://localhost:6379",
            "redis://",
            "redis://a:1,b:2",
            "redis://host:notaport",
            "redis://host:0",
            "redis://host:6379/x",
            "redis+cluster://a:1/2",
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:26379/a/b",
            "redis://u:%zz@host",
            "redis+cluster://a:1,,b:2",
        ] {
            let e = RedisTarget::parse(url).expect_err(url).to_string();
            assert!(
                e.contains("redis+cluster://") && e.contains("MASTER_NAME"),
                "{e}"
            );
        }
    }

    #[test]
    fn credentials_never_show() {
        for url in [
            "redis://user:hunter2@h:1/2",
            "rediss+cluster://:hunter2@a:1,b:2",
            "redis+sentinel://u:hunter2@s:1/m",
        ] {
            let t = ok(url);
            assert!(!format!("{t}").contains("hunter2"), "{t}");
            assert!(!format!("{t:?}").contains("hunter2"), "{t:?}");
            assert!(format!("{t}").contains("***"), "{t}");
        }
        let e = RedisTarget::parse("redis://user:hunter2@h:1,b:2").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
    }

    #[test]
    fn display_round_trips() {
        for url in [
            "redis://127.0.0.1:6379",
            "rediss://u:***@h:1/2",
            "redis+cluster://a:1,b:2",
            "redis+sentinel://s:26379/m",
        ] {
            assert_eq!(ok(url).to_string(), url);
        }
    }
}
