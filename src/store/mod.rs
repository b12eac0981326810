//! Redis, and nothing else. The key scheme lives in [`keys`]; the Lua scripts in `lua/`; the
//! typed calls in one file per concern, each adding its own `impl Store` block.
//!
//! Why each step is atomic: everything that must change together — creating a session
//! (both routes, the number's load, the session record, its bucket's due time), ending or
//! extending one, adding, draining or removing a number — is one Lua script over the keys of
//! one pool shard, which Redis runs without interleaving. Invariant 1 only involves one
//! proxy number's routes, and a number lives in exactly one shard, so a shard-local script
//! is enough on any number of hush instances and on Redis Cluster. An expired session never
//! routes because every route record carries its own open-until and held-until times and
//! readers compare them with the clock; the reaper only frees memory and fixes counters.

mod acked;
mod api_keys;
pub mod audit;
pub mod conn;
mod doorbell;
mod events;
mod function;
mod idempotency;
pub mod keys;
pub mod migrate;
mod numbers;
pub mod outbox;
mod pools;
mod recordings;
pub mod rotation;
mod routes;
mod sessions;
pub mod stats;
pub mod target;
pub mod tls;
pub mod upgrade;

use redis::{FromRedisValue, RedisError, Script, ToRedisArgs, Value};

pub use doorbell::{Queue, Rings};
pub use events::EventDraft;
pub use idempotency::{IdemBegin, IdemMark, Lease};
pub use keys::{Keys, ShardKeys};
pub use numbers::NumberRow;
pub use outbox::AppTextQueued;
pub use pools::{LAYOUT, PoolRow, PoolSet, ShardCounts};
pub use routes::{CallStarted, Claimed, Entry, PinClaim, Reach, Stub, Unreached};
pub use sessions::{
    CreateArgs, Created, EndEvents, EndOp, Ended, PinCandidates, Refusal, STICKY_WINDOW_MS,
};
pub use stats::{CreateOutcome, MinuteCounts, STATS_MINUTES};
pub use target::{RedisTarget, StoreKind, TargetError};

pub use conn::{Access, Conn};
pub use tls::{TlsError, TlsFiles};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached or cannot take writes now; worth retrying. The cause is part
    /// of the message because background loops log only the message, and an operator needs
    /// the why (refused, timed out, an untrusted certificate) on every line.
    #[error("redis is unavailable: {0}")]
    Unavailable(#[source] RedisError),
    #[error("redis command failed")]
    Redis(#[source] RedisError),
    /// The primary applied the write but fewer replicas than required confirmed it in time:
    /// it may survive a failover or not.
    #[error("only {confirmed} of {wanted} replicas confirmed the write in time")]
    NotReplicated { wanted: u32, confirmed: i64 },
    #[error("stored data is malformed: {0}")]
    Corrupt(&'static str),
    #[error(transparent)]
    Target(#[from] TargetError),
}

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        let transient_code = matches!(
            e.code(),
            Some(
                "OOM" | "BUSY" | "LOADING" | "MASTERDOWN" | "READONLY" | "TRYAGAIN" | "CLUSTERDOWN"
            )
        );
        // Sentinel names no primary while a failover is under way: that passes too.
        let no_primary_yet = e.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel;
        // A refused password (the primary's or the sentinels') leaves Redis as unusable as an
        // outage: the log names the cause, and clients get a 503, not an internal error.
        let refused_auth = e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"));
        if e.is_io_error()
            || e.is_timeout()
            || no_primary_yet
            || refused_auth
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_cluster_error()
            || transient_code
        {
            StoreError::Unavailable(e)
        } else {
            StoreError::Redis(e)
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

const COMMON: &str = include_str!("lua/common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", prelude(COMMON, body)))
}

/// The definitions of `common` that `body` uses, directly or through each other, in their
/// order. A script runs its prelude on every call, and each definition costs there (Redis
/// counts about 23,000 instructions for all of common.lua, a `GET` about 5,000).
fn prelude(common: &str, body: &str) -> String {
    // A definition starts at a top-level `local` or `name = function` line, with the comment
    // lines just above it; what comes before the first one always goes in.
    let lines: Vec<&str> = common.lines().collect();
    let mut starts = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if defined_name(line).is_some() {
            let mut start = i;
            while start > 0 && lines[start - 1].starts_with("--") {
                start -= 1;
            }
            starts.push((start, i));
        }
    }
    let first = starts.first().map_or(lines.len(), |(start, _)| *start);
    let blocks: Vec<(&str, String)> = starts
        .iter()
        .enumerate()
        .map(|(n, (start, at))| {
            let end = starts.get(n + 1).map_or(lines.len(), |(next, _)| *next);
            (
                defined_name(lines[*at]).unwrap_or_default(),
                lines[*start..end].join("\n"),
            )
        })
        .collect();
    let mut used: std::collections::HashSet<&str> = identifiers(body).collect();
    let mut taken = vec![false; blocks.len()];
    loop {
        let mut grew = false;
        for (n, (name, text)) in blocks.iter().enumerate() {
            if !taken[n] && used.contains(name) {
                taken[n] = true;
                grew = true;
                used.extend(identifiers(text));
            }
        }
        if !grew {
            break;
        }
    }
    let mut out = lines[..first].join("\n");
    for (n, (_, text)) in blocks.iter().enumerate() {
        if taken[n] {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(text);
        }
    }
    out
}

/// The name a top-level line of common.lua defines, if it defines one.
fn defined_name(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("local function ")
        .or_else(|| line.strip_prefix("local "))
        .or_else(|| line.contains(" = function").then_some(line))?;
    let name = rest
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()?;
    (!name.is_empty() && !line.starts_with(' ')).then_some(name)
}

/// The names `text` uses, comment lines left out.
fn identifiers(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
}

struct Scripts {
    number_add: Script,
    number_state: Script,
    number_remove: Script,
    session_create: Script,
    session_end: Script,
    participant_forget: Script,
    idempotency_begin: Script,
    idempotency_lease: Script,
    relay_claim: function::Function,
    call_start: Script,
    interaction_update: Script,
    event_put: Script,
    event_redeliver: Script,
    pool_set: Script,
    pool_shard_delete: Script,
    events_pending: Script,
    bucket_settle: Script,
    entries_tidy: Script,
    upgrade: Script,
}

impl Scripts {
    fn load() -> Scripts {
        Scripts {
            number_add: script(include_str!("lua/number_add.lua")),
            number_state: script(include_str!("lua/number_state.lua")),
            number_remove: script(include_str!("lua/number_remove.lua")),
            session_create: script(include_str!("lua/session_create.lua")),
            session_end: script(include_str!("lua/session_end.lua")),
            participant_forget: script(include_str!("lua/participant_forget.lua")),
            idempotency_begin: script(include_str!("lua/idempotency_begin.lua")),
            idempotency_lease: script(include_str!("lua/idempotency_lease.lua")),
            relay_claim: function::Function::new("relay", include_str!("lua/relay_claim.lua")),
            call_start: script(include_str!("lua/call_start.lua")),
            interaction_update: script(include_str!("lua/interaction_update.lua")),
            event_put: script(include_str!("lua/event_put.lua")),
            event_redeliver: script(include_str!("lua/event_redeliver.lua")),
            pool_set: script(include_str!("lua/pool_set.lua")),
            pool_shard_delete: script(include_str!("lua/pool_shard_delete.lua")),
            events_pending: script(include_str!("lua/events_pending.lua")),
            bucket_settle: script(include_str!("lua/bucket_settle.lua")),
            entries_tidy: script(include_str!("lua/entries_tidy.lua")),
            upgrade: script(include_str!("lua/upgrade.lua")),
        }
    }
}

/// The typed facade over Redis.
#[derive(Clone)]
pub struct Store {
    conn: Conn,
    kind: StoreKind,
    keys: Keys,
    scripts: std::sync::Arc<Scripts>,
    acked: Option<std::sync::Arc<acked::Acked>>,
    bells: std::sync::Arc<doorbell::Bells>,
}

/// `EVALSHA` of `script` built straight into one command: the crate's script invocation
/// copies every argument into a vector of its own first, and on the relay's path that copy
/// and its freeing were a few per cent of hush's CPU.
fn eval_cmd(script: &Script, keys: impl ToRedisArgs, args: impl ToRedisArgs) -> redis::Cmd {
    call_cmd("EVALSHA", script.get_hash(), keys, args)
}

/// `<command> <name> <number of keys> <keys> <args>`: how `EVALSHA` and `FCALL` take theirs.
fn call_cmd(
    command: &str,
    name: &str,
    keys: impl ToRedisArgs,
    args: impl ToRedisArgs,
) -> redis::Cmd {
    // Keys are few: counted by spreading them, unlike the arguments.
    let keys = keys.to_redis_args();
    let mut call = redis::cmd(command);
    call.arg(name).arg(keys.len()).arg(&keys).arg(args);
    call
}

fn strings(v: Value) -> Result<Vec<String>> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::BulkString(b) => {
                    String::from_utf8(b).map_err(|_| StoreError::Corrupt("utf8"))
                }
                Value::SimpleString(s) => Ok(s),
                Value::Int(n) => Ok(n.to_string()),
                Value::Nil => Ok(String::new()),
                _ => Err(StoreError::Corrupt("unexpected script reply")),
            })
            .collect(),
        _ => Err(StoreError::Corrupt("unexpected script reply")),
    }
}

impl Store {
    /// Every shard of every pool: what the workers that serve per-shard queues (events,
    /// outbound texts) walk on each pass.
    pub async fn every_shard(&self) -> Result<Vec<ShardKeys>> {
        Ok(self
            .pool_list()
            .await?
            .iter()
            .flat_map(|row| (0..row.shards).map(|s| self.keys.shard(row.id, s)))
            .collect())
    }

    /// Connects lazily: hush starts while Redis is down and reconnects by itself.
    pub fn connect(url: &str, prefix: &str) -> Result<Store> {
        Store::connect_to(&RedisTarget::parse(url)?, &Access::default(), prefix)
    }

    /// As [`Store::connect`], with what the URL cannot carry: TLS files and the sentinels'
    /// password.
    pub fn connect_to(target: &RedisTarget, access: &Access, prefix: &str) -> Result<Store> {
        Ok(Store {
            conn: Conn::open(target, access)?,
            kind: target.kind,
            keys: Keys::new(prefix),
            scripts: std::sync::Arc::new(Scripts::load()),
            acked: None,
            bells: std::sync::Arc::new(doorbell::Bells::new(target, access)?),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Which kind of Redis this is, for readiness and logs.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// The connection the typed calls use, for tools and tests that read Redis directly.
    pub fn connection(&self) -> Conn {
        self.c()
    }

    fn c(&self) -> Conn {
        self.conn.clone()
    }

    /// Runs one script: its keys, then its arguments (tuples spread into one argument each).
    async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: impl ToRedisArgs,
        args: impl ToRedisArgs,
    ) -> Result<T> {
        let eval = eval_cmd(script, keys, args);
        let mut conn = self.c();
        match eval.query_async(&mut conn).await {
            // A fresh primary (a restart, a promoted replica) has no scripts loaded yet.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                script.prepare_invoke().load_async(&mut conn).await?;
                Ok(eval.query_async(&mut conn).await?)
            }
            r => Ok(r?),
        }
    }

    /// Runs one plain command with its arguments (tuples spread into one argument each).
    async fn query<T: FromRedisValue>(&self, command: &str, args: impl ToRedisArgs) -> Result<T> {
        Ok(redis::cmd(command)
            .arg(args)
            .query_async(&mut self.c())
            .await?)
    }

    pub async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.c()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::numbers::parse_owner;
    use super::{COMMON, prelude};

    #[test]
    fn a_script_gets_the_helpers_it_uses_and_what_they_use() {
        let common = "-- head\nlocal TAG = ARGV[1]\n\n-- why a\nlocal function a()\n  return TAG\nend\n\
                      local function b()\n  return a()\nend\nlocal function c()\n  return 1\nend\n\
                      local d\nd = function()\n  return c()\nend\n";
        let p = prelude(common, "return b()");
        assert!(p.starts_with("-- head"), "{p}");
        assert!(
            p.contains("local TAG") && p.contains("-- why a\nlocal function a()"),
            "{p}"
        );
        assert!(
            p.contains("local function b()") && !p.contains("function c()"),
            "{p}"
        );
        let p = prelude(common, "return d()");
        assert!(
            p.contains("local d\nd = function()") && p.contains("function c()"),
            "{p}"
        );
        assert!(!p.contains("function b()"), "{p}");
    }

    #[test]
    fn every_script_compiles_its_prelude_from_common() {
        // Each script's prelude keeps TAG and whatever the script names.
        let p = prelude(COMMON, include_str!("lua/relay_claim.lua"));
        for needed in [
            "local TAG",
            "function get_session",
            "function pins_of",
            "function put_event",
        ] {
            assert!(p.contains(needed), "{needed} missing");
        }
        assert!(
            !p.contains("function add_load"),
            "relay_claim got helpers it does not use"
        );
    }

    #[test]
    fn owners_parse() {
        assert_eq!(parse_owner("7.0"), Some((7, 0)));
        assert_eq!(parse_owner("7"), None);
    }

    #[test]
    fn scripts_declare_only_shard_keys_and_derive_from_the_tag() {
        // Every key a script derives is built from TAG (ARGV[1]), which is the shard's tag:
        // no script builds a key from anything else.
        for body in [
            include_str!("lua/common.lua"),
            include_str!("lua/number_add.lua"),
            include_str!("lua/number_state.lua"),
            include_str!("lua/number_remove.lua"),
            include_str!("lua/session_create.lua"),
            include_str!("lua/session_end.lua"),
            include_str!("lua/participant_forget.lua"),
            include_str!("lua/idempotency_begin.lua"),
            include_str!("lua/idempotency_lease.lua"),
            include_str!("lua/relay_claim.lua"),
            include_str!("lua/call_start.lua"),
            include_str!("lua/interaction_update.lua"),
            include_str!("lua/recording_put.lua"),
            include_str!("lua/event_put.lua"),
            include_str!("lua/event_redeliver.lua"),
            include_str!("lua/outbox_put.lua"),
            include_str!("lua/outbox_claim.lua"),
            include_str!("lua/outbox_settle.lua"),
            include_str!("lua/pool_set.lua"),
            include_str!("lua/pool_shard_delete.lua"),
            include_str!("lua/events_pending.lua"),
            include_str!("lua/reseal.lua"),
            include_str!("lua/bucket_settle.lua"),
            include_str!("lua/entries_tidy.lua"),
            include_str!("lua/upgrade.lua"),
        ] {
            for (i, _) in body.match_indices("redis.call(") {
                let call = &body[i..body[i..].find(')').map(|e| i + e).unwrap_or(body.len())];
                let key_arg = call.split(',').nth(1).unwrap_or("").trim();
                let ok = key_arg.is_empty()
                    || key_arg.starts_with("TAG ..")
                    // EV is TAG .. 'ev:' (common.lua): the shard's event queue.
                    || key_arg.starts_with("EV ..")
                    || key_arg.starts_with("KEYS[")
                    // Bucket names (common.lua) are built from TAG as well.
                    || key_arg.starts_with("sbucket(")
                    || key_arg.starts_with("ubucket(")
                    || key_arg.starts_with("pin_key(")
                    || key_arg
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_');
                assert!(ok, "script builds a key outside its shard: {call}");
            }
        }
    }
}
