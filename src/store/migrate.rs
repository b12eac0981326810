//! Copying every key under the prefix from one Redis to another (typically one server to a
//! Cluster) as `DUMP`/`PTTL` → `RESTORE`, then checking the copy. The bytes move as Redis
//! serialised them, so nothing is decrypted and no secret is needed. hush must not write to
//! the source meanwhile: a key changed after it was read is not copied again (the sample
//! comparison at the end usually notices, but cannot promise to).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use redis::{Cmd, Pipeline, RedisError, Value};

use super::keys::hash_slot;
use super::{Access, Conn, RedisTarget, StoreError, StoreKind};

/// Keys read (and written) per round trip.
const BATCH: usize = 1000;
/// Keys compared value by value after the copy.
const SAMPLE: usize = 500;
/// Slack allowed between a key's TTL on each side: the two reads are not simultaneous.
const TTL_SLACK_MS: i64 = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot reach the {side} Redis {target}")]
    Unreachable {
        side: Side,
        target: String,
        #[source]
        cause: RedisError,
    },
    #[error("the {side} Redis {target} failed while {doing}")]
    Redis {
        side: Side,
        target: String,
        doing: &'static str,
        #[source]
        cause: RedisError,
    },
    #[error("source and target are the same Redis ({0})")]
    SameStore(String),
    #[error(
        "the target already holds {count} keys under the prefix `{prefix}` (for example `{example}`); \
         pass --replace to delete them and copy again"
    )]
    TargetNotEmpty {
        count: usize,
        prefix: String,
        example: String,
    },
    #[error("verification failed: {0}")]
    Verify(String),
}

/// One side of the copy.
pub struct Endpoint {
    pub target: RedisTarget,
    pub conn: Conn,
    side: Side,
}

impl Endpoint {
    /// Parses `url` and prepares a lazy connection; nothing is reached yet.
    pub fn open(side: Side, url: &str, access: &Access) -> Result<Endpoint, StoreError> {
        let target = RedisTarget::parse(url)?;
        let conn = Conn::open(&target, access)?;
        Ok(Endpoint { target, conn, side })
    }

    fn fail(&self, doing: &'static str) -> impl FnOnce(RedisError) -> MigrateError + '_ {
        move |cause| MigrateError::Redis {
            side: self.side,
            target: self.target.to_string(),
            doing,
            cause,
        }
    }

    async fn ping(&self) -> Result<(), MigrateError> {
        let mut conn = self.conn.clone();
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
        pong.map(drop).map_err(|cause| MigrateError::Unreachable {
            side: self.side,
            target: self.target.to_string(),
            cause,
        })
    }

    /// Every key under `prefix:`, scanned on every server that holds keys (each Cluster
    /// primary, or the one server), so no node is blocked as a `KEYS` would.
    async fn keys(&self, prefix: &str) -> Result<Vec<String>, MigrateError> {
        let pattern = format!("{prefix}:*");
        let mut keys = Vec::new();
        for node in self.conn.nodes().await.map_err(self.fail("listing keys"))? {
            let mut cursor: u64 = 0;
            loop {
                let (next, batch) = self
                    .conn
                    .scan_step(&node, cursor, &pattern, BATCH)
                    .await
                    .map_err(self.fail("listing keys"))?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Runs one command per key, in key order. One pipeline on a single server; on a Cluster
    /// one pipeline per hash slot, all in flight at once, because the cluster client sends a
    /// pipeline to one slot only.
    async fn per_key(
        &self,
        keys: &[String],
        doing: &'static str,
        cmds: impl Fn(&str) -> Vec<Cmd>,
    ) -> Result<Vec<Vec<Value>>, MigrateError> {
        let Some(first) = keys.first() else {
            return Ok(Vec::new());
        };
        let per = cmds(first).len();
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let slot = match self.target.kind {
                StoreKind::Cluster => hash_slot(key),
                _ => 0,
            };
            groups.entry(slot).or_default().push(i);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (_, members) in groups {
            let mut pipe = Pipeline::with_capacity(members.len() * per);
            for &i in &members {
                for cmd in cmds(&keys[i]) {
                    pipe.add_command(cmd);
                }
            }
            let mut conn = self.conn.clone();
            tasks.spawn(async move {
                let replies: Result<Vec<Value>, _> =
                    pipe.ignore_errors().query_async(&mut conn).await;
                (members, replies)
            });
        }
        let mut out = vec![Vec::new(); keys.len()];
        while let Some(joined) = tasks.join_next().await {
            let (members, replies) = joined.expect("a pipeline task does not panic");
            let replies = replies.map_err(self.fail(doing))?;
            let mut replies = replies.into_iter();
            for i in members {
                out[i] = replies.by_ref().take(per).collect();
            }
        }
        // An error reply to one command fails the whole step, naming the command's error.
        for replies in &out {
            for r in replies {
                if let Value::ServerError(e) = r {
                    return Err(self.fail(doing)(e.clone().into()));
                }
            }
        }
        Ok(out)
    }
}

/// What was copied and checked.
#[derive(Debug, Default)]
pub struct Report {
    /// Keys copied, by Redis type.
    pub copied: BTreeMap<String, usize>,
    /// Keys that expired between being listed and being copied.
    pub expired: usize,
    /// Keys deleted from the target first (with `replace`).
    pub replaced: usize,
    /// Keys compared value by value after the copy.
    pub sampled: usize,
    pub copy_time: Duration,
    pub total_time: Duration,
}

impl Report {
    pub fn total(&self) -> usize {
        self.copied.values().sum()
    }
}

struct Copied {
    kind: &'static str,
    /// When its TTL runs out on the target, if it has one.
    deadline: Option<Instant>,
}

/// Copies every key under `prefix` from `from` to `to`, keeping each key's remaining TTL, then
/// checks that the target holds exactly those keys (per type) and compares a sample value by
/// value. Refuses a target that already holds keys under the prefix unless `replace`, which
/// deletes them first so the target ends up an exact copy.
pub async fn migrate(
    from: &Endpoint,
    to: &Endpoint,
    prefix: &str,
    replace: bool,
    progress: &dyn Fn(String),
) -> Result<Report, MigrateError> {
    let started = Instant::now();
    if from.target.to_string() == to.target.to_string() {
        return Err(MigrateError::SameStore(to.target.to_string()));
    }
    from.ping().await?;
    to.ping().await?;
    let mut report = Report::default();

    let existing = to.keys(prefix).await?;
    if !existing.is_empty() {
        if !replace {
            return Err(MigrateError::TargetNotEmpty {
                count: existing.len(),
                prefix: prefix.to_string(),
                example: existing[0].clone(),
            });
        }
        for chunk in existing.chunks(BATCH) {
            to.per_key(chunk, "deleting keys", |k| {
                vec![redis::cmd("UNLINK").arg(k).clone()]
            })
            .await?;
        }
        report.replaced = existing.len();
        progress(format!(
            "deleted {} keys under `{prefix}` from the target",
            existing.len()
        ));
    }

    let keys = from.keys(prefix).await?;
    progress(format!(
        "copying {} keys under `{prefix}` from {} to {}",
        keys.len(),
        from.target,
        to.target
    ));
    let copy_started = Instant::now();
    let mut copied: HashMap<String, Copied> = HashMap::with_capacity(keys.len());
    let mut last_report = Instant::now();
    for (n, chunk) in keys.chunks(BATCH).enumerate() {
        let read = from
            .per_key(chunk, "reading keys", |k| {
                vec![
                    redis::cmd("TYPE").arg(k).clone(),
                    redis::cmd("PTTL").arg(k).clone(),
                    redis::cmd("DUMP").arg(k).clone(),
                ]
            })
            .await?;
        let read_at = Instant::now();
        let mut batch: Vec<(String, i64, Vec<u8>, &'static str)> = Vec::with_capacity(chunk.len());
        for (key, replies) in chunk.iter().zip(read) {
            let (kind, pttl, payload) = match replies.as_slice() {
                [
                    Value::SimpleString(kind),
                    Value::Int(pttl),
                    Value::BulkString(payload),
                ] => (type_name(kind), *pttl, payload.clone()),
                _ => {
                    report.expired += 1;
                    continue;
                }
            };
            let ttl = match pttl {
                -1 => 0,
                ms if ms > 0 => ms,
                _ => {
                    report.expired += 1;
                    continue;
                }
            };
            batch.push((key.clone(), ttl, payload, kind));
        }
        // The TTL left is the TTL read less the time since the reply: a copy never outlives
        // its source by more than one round trip.
        let spent = read_at.elapsed().as_millis() as i64;
        for b in &mut batch {
            if b.1 > 0 {
                b.1 = (b.1 - spent).max(1);
            }
        }
        let names: Vec<String> = batch.iter().map(|b| b.0.clone()).collect();
        let by_key: HashMap<&str, (i64, &[u8])> = batch
            .iter()
            .map(|(k, ttl, p, _)| (k.as_str(), (*ttl, p.as_slice())))
            .collect();
        let written_at = Instant::now();
        // No REPLACE: the prefix was empty on the target a moment ago (or emptied), so a key
        // there now was written by someone else, and BUSYKEY stops the copy rather than lose it.
        to.per_key(&names, "restoring keys", |k| {
            let (ttl, payload) = by_key[k];
            vec![redis::cmd("RESTORE").arg(k).arg(ttl).arg(payload).clone()]
        })
        .await?;
        for (key, ttl, _, kind) in batch {
            let deadline = (ttl > 0).then(|| written_at + Duration::from_millis(ttl as u64));
            *report.copied.entry(kind.to_string()).or_default() += 1;
            copied.insert(key, Copied { kind, deadline });
        }
        let done = (n * BATCH + chunk.len()).min(keys.len());
        if last_report.elapsed() >= Duration::from_secs(1) || done == keys.len() {
            last_report = Instant::now();
            progress(format!(
                "copied {done}/{} keys ({:.1} s)",
                keys.len(),
                copy_started.elapsed().as_secs_f64()
            ));
        }
    }
    report.copy_time = copy_started.elapsed();

    verify_keys(to, prefix, &copied, &report).await?;
    report.sampled = verify_sample(from, to, &copied).await?;
    progress(format!(
        "verified: the target holds the same keys per type; {} compared value by value",
        report.sampled
    ));
    report.total_time = started.elapsed();
    Ok(report)
}

/// The target holds every copied key (but those whose TTL has run out since) and no other.
async fn verify_keys(
    to: &Endpoint,
    prefix: &str,
    copied: &HashMap<String, Copied>,
    report: &Report,
) -> Result<(), MigrateError> {
    let listed = to.keys(prefix).await?;
    let now = Instant::now() + Duration::from_millis(TTL_SLACK_MS as u64);
    let present: HashSet<&str> = listed.iter().map(String::as_str).collect();
    let extra: Vec<&&str> = present
        .iter()
        .filter(|k| !copied.contains_key(**k))
        .collect();
    if let Some(k) = extra.first() {
        return Err(MigrateError::Verify(format!(
            "the target holds {} keys that were not copied, such as `{k}`: something writes to it",
            extra.len()
        )));
    }
    let missing: Vec<&String> = copied
        .iter()
        .filter(|(k, c)| !present.contains(k.as_str()) && c.deadline.is_none_or(|d| d > now))
        .map(|(k, _)| k)
        .collect();
    if let Some(k) = missing.first() {
        return Err(MigrateError::Verify(format!(
            "{} copied keys are missing on the target, such as `{k}`",
            missing.len()
        )));
    }
    let mut on_target: BTreeMap<String, usize> = BTreeMap::new();
    for chunk in listed.chunks(BATCH) {
        let types = to
            .per_key(chunk, "reading key types", |k| {
                vec![redis::cmd("TYPE").arg(k).clone()]
            })
            .await?;
        for (key, t) in chunk.iter().zip(types) {
            let Some(Value::SimpleString(t)) = t.first() else {
                continue;
            };
            if t == "none" {
                continue;
            }
            if copied.get(key).is_some_and(|c| c.kind != type_name(t)) {
                return Err(MigrateError::Verify(format!(
                    "`{key}` is a {t} on the target but was copied as a {}",
                    copied[key].kind
                )));
            }
            *on_target.entry(t.clone()).or_default() += 1;
        }
    }
    for (kind, n) in &report.copied {
        let found = on_target.get(kind).copied().unwrap_or(0);
        // Fewer only by keys that expired since the copy, which were checked above.
        if found > *n {
            return Err(MigrateError::Verify(format!(
                "{found} {kind} keys on the target, {n} copied"
            )));
        }
    }
    Ok(())
}

/// A Redis type's name, without a string per key: a large copy tracks millions of keys.
fn type_name(t: &str) -> &'static str {
    ["string", "hash", "set", "zset", "list", "stream"]
        .into_iter()
        .find(|known| *known == t)
        .unwrap_or("other")
}

/// The commands that read a key's whole value, comparable across servers.
fn read_value(kind: &str, key: &str) -> Cmd {
    let mut cmd = match kind {
        "string" => redis::cmd("GET"),
        "hash" => redis::cmd("HGETALL"),
        "set" => redis::cmd("SMEMBERS"),
        "zset" => {
            let mut c = redis::cmd("ZRANGE");
            c.arg(key).arg(0).arg(-1).arg("WITHSCORES");
            return c;
        }
        "list" => {
            let mut c = redis::cmd("LRANGE");
            c.arg(key).arg(0).arg(-1);
            return c;
        }
        "stream" => {
            let mut c = redis::cmd("XRANGE");
            c.arg(key).arg("-").arg("+");
            return c;
        }
        // A type hush does not use: its serialised form stands in for its value.
        _ => redis::cmd("DUMP"),
    };
    cmd.arg(key);
    cmd
}

/// A value in a form that does not depend on the order a server lists an unordered type in.
fn canonical(kind: &str, v: &Value) -> Vec<Vec<u8>> {
    fn flat(v: &Value, out: &mut Vec<Vec<u8>>) {
        match v {
            Value::BulkString(b) => out.push(b.clone()),
            Value::SimpleString(s) => out.push(s.clone().into_bytes()),
            Value::Int(i) => out.push(i.to_string().into_bytes()),
            Value::Double(d) => out.push(d.to_string().into_bytes()),
            Value::Array(items) | Value::Set(items) => items.iter().for_each(|i| flat(i, out)),
            Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
                flat(k, out);
                flat(v, out)
            }),
            Value::Nil => out.push(b"(nil)".to_vec()),
            other => out.push(format!("{other:?}").into_bytes()),
        }
    }
    let mut out = Vec::new();
    flat(v, &mut out);
    match kind {
        "set" => out.sort(),
        "hash" => {
            // The field's length first, so no field and value run together into another pair.
            let mut pairs: Vec<Vec<u8>> = out
                .chunks(2)
                .map(|p| [p[0].len().to_be_bytes().as_slice(), &p.concat()].concat())
                .collect();
            pairs.sort();
            out = pairs;
        }
        _ => {}
    }
    out
}

/// Compares up to [`SAMPLE`] copied keys, spread evenly over the key space, on both sides:
/// same value, and the same TTL within the time between the two reads.
async fn verify_sample(
    from: &Endpoint,
    to: &Endpoint,
    copied: &HashMap<String, Copied>,
) -> Result<usize, MigrateError> {
    let mut all: Vec<(&String, &Copied)> = copied.iter().collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    let step = all.len().div_ceil(SAMPLE).max(1);
    let sample: Vec<(&String, &Copied)> = all.into_iter().step_by(step).collect();
    let keys: Vec<String> = sample.iter().map(|(k, _)| (*k).clone()).collect();
    let kinds: HashMap<&str, &str> = sample.iter().map(|(k, c)| (k.as_str(), c.kind)).collect();
    let cmds = |k: &str| {
        let kind = kinds[k];
        vec![read_value(kind, k), redis::cmd("PTTL").arg(k).clone()]
    };
    let theirs = from.per_key(&keys, "reading the sample", cmds).await?;
    let ours = to.per_key(&keys, "reading the sample", cmds).await?;
    let mut compared = 0;
    for ((key, c), (src, dst)) in sample.iter().zip(theirs.iter().zip(&ours)) {
        let (Some(Value::Int(src_ttl)), Some(Value::Int(dst_ttl))) = (src.get(1), dst.get(1))
        else {
            continue;
        };
        if *src_ttl == -2 || *dst_ttl == -2 {
            continue; // expired on one side meanwhile
        }
        if canonical(c.kind, &src[0]) != canonical(c.kind, &dst[0]) {
            return Err(MigrateError::Verify(format!(
                "`{key}` differs between source and target: was hush still writing to the source?"
            )));
        }
        let ttl_kept = match (*src_ttl, *dst_ttl) {
            (-1, -1) => true,
            (s, d) if s >= 0 && d >= 0 => (s - d).abs() <= TTL_SLACK_MS,
            _ => false,
        };
        if !ttl_kept {
            return Err(MigrateError::Verify(format!(
                "`{key}` has {dst_ttl} ms to live on the target and {src_ttl} ms on the source"
            )));
        }
        compared += 1;
    }
    Ok(compared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(items: &[&str]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|s| Value::BulkString(s.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn unordered_types_compare_whatever_order_a_server_lists_them_in() {
        assert_eq!(
            canonical("hash", &bulk(&["f", "1", "g", "2"])),
            canonical("hash", &bulk(&["g", "2", "f", "1"]))
        );
        assert_ne!(
            canonical("hash", &bulk(&["f", "1", "g", "2"])),
            canonical("hash", &bulk(&["f", "2", "g", "1"])),
            "a value moved to another field is a difference"
        );
        assert_ne!(
            canonical("hash", &bulk(&["f1", ""])),
            canonical("hash", &bulk(&["f", "1"]))
        );
        assert_eq!(
            canonical("set", &bulk(&["a", "b"])),
            canonical("set", &bulk(&["b", "a"]))
        );
        assert_ne!(
            canonical("list", &bulk(&["a", "b"])),
            canonical("list", &bulk(&["b", "a"])),
            "a list's order is part of its value"
        );
    }

    #[test]
    fn type_names() {
        assert_eq!(type_name("zset"), "zset");
        assert_eq!(type_name("ReJSON-RL"), "other");
    }
}
