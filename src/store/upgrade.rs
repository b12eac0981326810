//! `hush store upgrade`: converts data of layout 1 (a hash per session, per participant's
//! routes and per participant's sticky memory, and a `x` ZSET of sessions per shard) into the
//! bucket records of layout 2 (`lua/common.lua`), in place. Keys are found by `SCAN` on every
//! server that holds keys; each is converted and deleted by one script in its shard's slot,
//! so a run that stopped is finished by running again. hush must be stopped meanwhile.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::conn::Node;
use super::{Keys, LAYOUT, Result, STICKY_WINDOW_MS, ShardKeys, Store, StoreError};

/// How many keys one `SCAN` step asks for.
const SCAN_COUNT: usize = 1000;
/// Conversions in flight: each is one round trip, so the round trips, not Redis, set the
/// pace of a single caller.
const PARALLEL: usize = 16;
/// Entries of a shard's `x` handled per script call, so no call holds Redis for long.
const X_BATCH: usize = 500;

/// The kinds of layout-1 keys, in the order they are converted: a route becomes an entry
/// only once its session is a layout-2 record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `s:<session key>`
    Session,
    /// `u:<idx>`
    Routes,
    /// `k:<idx>`
    Sticky,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Session, Kind::Routes, Kind::Sticky];

    fn letter(self) -> &'static str {
        match self {
            Kind::Session => "s",
            Kind::Routes => "u",
            Kind::Sticky => "k",
        }
    }

    /// Layout 1 names these keys by a whole session key (16 characters) or blind index (22);
    /// layout 2's buckets of the same letter are named by two or three.
    fn name_len(self) -> usize {
        match self {
            Kind::Session => 16,
            Kind::Routes | Kind::Sticky => 22,
        }
    }

    fn op(self) -> &'static str {
        match self {
            Kind::Session => "session",
            Kind::Routes => "routes",
            Kind::Sticky => "sticky",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Session => "session records",
            Kind::Routes => "route hashes",
            Kind::Sticky => "sticky memory hashes",
        }
    }
}

/// What an upgrade converted. Counts are of records, not keys: a participant's route hash
/// holds a route per number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upgrade {
    pub sessions: u64,
    /// Erased records of the oldest form, which held nothing any more: deleted.
    pub sessions_dropped: u64,
    pub routes: u64,
    /// Routes whose session was gone (or no longer named the participant): deleted.
    pub routes_dropped: u64,
    pub sticky: u64,
    /// Sticky memory past its 30-day window: deleted.
    pub sticky_dropped: u64,
    /// Entries of the shards' `x` checked against `xb`.
    pub transitions: u64,
    /// Layout-1 keys of pools that no longer exist, left as they are.
    pub orphans: u64,
    pub shards: usize,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "the data under the prefix `{0}` is of layout {LAYOUT} already: there is nothing to upgrade"
    )]
    AlreadyCurrent(String),
    #[error(
        "the data under the prefix `{prefix}` is of layout {found}, which this version does not \
         know (it reads layout {LAYOUT}); it was written by a later hush"
    )]
    Unknown { prefix: String, found: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `hush store upgrade` found to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No pool under the prefix: nothing to convert, and nothing marked.
    Empty,
    Upgraded(Upgrade),
}

/// Glob characters in the prefix stand for themselves in a `SCAN` pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The shard and the name of a layout-1 key of `kind`, if `key` is one.
fn old_key(keys: &Keys, kind: Kind, key: &str) -> Option<(ShardKeys, String)> {
    let shard = keys.shard_of(key)?;
    let name = key
        .strip_prefix(shard.tag())?
        .strip_prefix(kind.letter())?
        .strip_prefix(':')?;
    (name.len() == kind.name_len()).then(|| (shard.clone(), name.to_string()))
}

impl Store {
    /// Converts every layout-1 key under the prefix, then marks the data layout 2.
    /// `progress` gets a line per kind of key and server.
    pub async fn upgrade(
        &self,
        progress: &mut dyn FnMut(&str),
    ) -> std::result::Result<Outcome, UpgradeError> {
        let started = Instant::now();
        let prefix = self.keys.prefix().to_string();
        let (layout, pools) = self.layout_mark().await?;
        match layout {
            Some(l) if l == LAYOUT => return Err(UpgradeError::AlreadyCurrent(prefix)),
            Some(found) => return Err(UpgradeError::Unknown { prefix, found }),
            None if pools == 0 => return Ok(Outcome::Empty),
            None => {}
        }
        let shards: HashMap<u32, u16> = self
            .pool_list()
            .await?
            .iter()
            .map(|row| (row.id, row.shards))
            .collect();
        let mut report = Upgrade {
            shards: shards.values().map(|s| *s as usize).sum(),
            ..Upgrade::default()
        };
        let nodes = self.key_nodes().await?;
        for kind in Kind::ALL {
            for node in &nodes {
                let (done, dropped, orphans) = self.upgrade_kind(kind, node, &shards).await?;
                match kind {
                    Kind::Session => {
                        report.sessions += done;
                        report.sessions_dropped += dropped;
                    }
                    Kind::Routes => {
                        report.routes += done;
                        report.routes_dropped += dropped;
                    }
                    Kind::Sticky => {
                        report.sticky += done;
                        report.sticky_dropped += dropped;
                    }
                }
                report.orphans += orphans;
                progress(&format!(
                    "{} on {node}: {done} converted, {dropped} left out (ended or past their \
                     window), {orphans} keys of deleted pools left alone",
                    kind.plural()
                ));
            }
        }
        for (&pool_id, &count) in &shards {
            for s in 0..count {
                report.transitions += self
                    .upgrade_transitions(&self.keys.shard(pool_id, s))
                    .await?;
            }
        }
        progress(&format!(
            "transitions: {} entries checked against the buckets' order",
            report.transitions
        ));
        let _: () = self.query("SET", (self.keys.layout(), LAYOUT)).await?;
        report.elapsed = started.elapsed();
        Ok(Outcome::Upgraded(report))
    }

    /// Converts the layout-1 keys of `kind` on `node`: records converted, left out, and keys
    /// of pools that no longer exist.
    async fn upgrade_kind(
        &self,
        kind: Kind,
        node: &Node,
        shards: &HashMap<u32, u16>,
    ) -> Result<(u64, u64, u64)> {
        let pattern = format!(
            "{}:{{p*}}:{}:*",
            glob_escape(self.keys.prefix()),
            kind.letter()
        );
        let (mut done, mut dropped, mut orphans) = (0, 0, 0);
        let mut cursor = 0;
        loop {
            let (next, keys) = self
                .conn
                .scan_step(node, cursor, &pattern, SCAN_COUNT)
                .await?;
            let mut work = Vec::new();
            for key in keys {
                let Some((shard, name)) = old_key(&self.keys, kind, &key) else {
                    continue;
                };
                if shards.get(&shard.pool_id).is_some_and(|n| shard.shard < *n) {
                    work.push((shard, name));
                } else {
                    orphans += 1;
                }
            }
            let (d, l) = self.upgrade_keys(kind, work).await?;
            done += d;
            dropped += l;
            if next == 0 {
                return Ok((done, dropped, orphans));
            }
            cursor = next;
        }
    }

    /// Converts `work` with up to [`PARALLEL`] scripts in flight.
    async fn upgrade_keys(&self, kind: Kind, work: Vec<(ShardKeys, String)>) -> Result<(u64, u64)> {
        if work.is_empty() {
            return Ok((0, 0));
        }
        let mut tasks = JoinSet::new();
        let per_task = work.len().div_ceil(PARALLEL);
        let mut work = work.into_iter().peekable();
        while work.peek().is_some() {
            let chunk: Vec<_> = work.by_ref().take(per_task).collect();
            let store = self.clone();
            tasks.spawn(async move {
                let (mut done, mut dropped) = (0, 0);
                for (shard, name) in chunk {
                    let (d, l) = store.upgrade_key(kind, &shard, &name).await?;
                    done += d;
                    dropped += l;
                }
                Ok::<_, StoreError>((done, dropped))
            });
        }
        let (mut done, mut dropped) = (0, 0);
        while let Some(joined) = tasks.join_next().await {
            // A task that panicked converted part of its keys at most: the run stops with an
            // error rather than take the whole process down, and running it again resumes.
            let (d, l) = joined
                .map_err(|_| StoreError::Corrupt("a key the upgrade could not convert"))??;
            done += d;
            dropped += l;
        }
        Ok((done, dropped))
    }

    async fn upgrade_key(&self, kind: Kind, shard: &ShardKeys, name: &str) -> Result<(u64, u64)> {
        let key = format!("{}{}:{name}", shard.tag(), kind.letter());
        let reply: (u64, u64) = self
            .run(
                &self.scripts.upgrade,
                &[key],
                (shard.tag(), kind.op(), name, STICKY_WINDOW_MS, X_BATCH),
            )
            .await?;
        Ok(reply)
    }

    /// Empties a shard's layout-1 `x`, making sure each of its sessions' buckets is in `xb`.
    async fn upgrade_transitions(&self, shard: &ShardKeys) -> Result<u64> {
        let mut moved = 0;
        loop {
            let (n, left): (u64, u64) = self
                .run(
                    &self.scripts.upgrade,
                    &[format!("{}x", shard.tag())],
                    (shard.tag(), "x", "", STICKY_WINDOW_MS, X_BATCH),
                )
                .await?;
            moved += n;
            if left == 0 || n == 0 {
                return Ok(moved);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_1_keys_are_told_from_buckets_by_length() {
        let keys = Keys::new("hush");
        let s =
            |kind, key: &str| old_key(&keys, kind, key).map(|(sh, n)| (sh.pool_id, sh.shard, n));
        assert_eq!(
            s(Kind::Session, "hush:{p7.2}:s:k9z0000000000000"),
            Some((7, 2, "k9z0000000000000".into()))
        );
        assert_eq!(s(Kind::Session, "hush:{p7.2}:s:k93"), None);
        let idx = "AbCdEfGhIjKlMnOpQrStUv";
        assert_eq!(
            s(Kind::Routes, &format!("hush:{{p7.0}}:u:{idx}")),
            Some((7, 0, idx.into()))
        );
        assert_eq!(s(Kind::Routes, "hush:{p7.0}:u:Ab"), None);
        assert_eq!(
            s(Kind::Sticky, &format!("hush:{{p7.0}}:k:{idx}")),
            Some((7, 0, idx.into()))
        );
        assert_eq!(s(Kind::Sticky, &format!("hush:{{p7.0}}:u:{idx}")), None);
        assert_eq!(s(Kind::Session, "other:{p7.2}:s:k9z0000000000000"), None);
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
