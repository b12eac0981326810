//! Writes that replicas must confirm before hush acknowledges them (`HUSH_REDIS_WAIT_*`).
//!
//! Redis replicates asynchronously: a primary that dies right after answering takes the
//! writes its replicas had not received with it, and the replica promoted in its place
//! never saw them. `WAIT n timeout` answers how many replicas hold every write *of the
//! connection that sends it*, so it goes in one pipeline right behind the script, on the same
//! connection (on a Cluster the pipeline is routed by the script's keys, so both reach the
//! primary of the script's slot). `WAIT` blocks its connection inside Redis until the
//! replicas answer, delaying whatever is queued behind it on a multiplexed connection, so
//! these writes get connections of their own and never hold up reads or the hot routing path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, RedisResult, Script, ToRedisArgs, Value};

use super::{Conn, RedisTarget, Result, Store, StoreError};

/// Connections reserved for confirmed writes. A write waits behind at most the confirmed
/// writes queued on its own connection; a handful spreads them without opening one per
/// request.
const CONNECTIONS: usize = 4;

pub(super) struct Acked {
    conns: Vec<Conn>,
    next: AtomicUsize,
    replicas: u32,
    timeout_ms: u64,
}

impl Acked {
    fn conn(&self) -> Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }
}

impl Store {
    /// Makes every acknowledged write wait until `replicas` replicas confirm it, for at most
    /// `timeout_ms`; `replicas == 0` leaves writes unconfirmed, as Redis does by default.
    pub fn wait_for_replicas(
        mut self,
        target: &RedisTarget,
        access: &super::Access,
        replicas: u32,
        timeout_ms: u64,
    ) -> Result<Store> {
        if replicas == 0 {
            self.acked = None;
            return Ok(self);
        }
        let conns = (0..CONNECTIONS)
            .map(|_| Conn::open(target, access))
            .collect::<RedisResult<Vec<_>>>()?;
        self.acked = Some(Arc::new(Acked {
            conns,
            next: AtomicUsize::new(0),
            replicas,
            timeout_ms,
        }));
        Ok(self)
    }

    /// As [`Store::run`] for a write hush acknowledges to a client: when replicas must confirm
    /// it, an answer comes only once they have, or [`StoreError::NotReplicated`].
    pub(super) async fn run_acked<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: impl ToRedisArgs,
        args: impl ToRedisArgs,
    ) -> Result<T> {
        let Some(acked) = &self.acked else {
            return self.run(script, keys, args).await;
        };
        let eval = super::eval_cmd(script, keys, args);
        let mut conn = acked.conn();
        match acked.confirm(&mut conn, eval.clone()).await {
            // A fresh primary (a restart, a promoted replica) has no scripts loaded yet.
            Err(StoreError::Unavailable(e) | StoreError::Redis(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                script.prepare_invoke().load_async(&mut conn).await?;
                acked.confirm(&mut conn, eval).await
            }
            r => r,
        }
    }

    /// As [`Store::query`] for a plain command whose write hush acknowledges.
    pub(super) async fn query_acked<T: FromRedisValue>(
        &self,
        command: &str,
        args: impl ToRedisArgs,
    ) -> Result<T> {
        let mut write = redis::cmd(command);
        write.arg(args);
        self.cmd_acked(write).await
    }

    /// As [`Store::query_acked`] for a command already built.
    pub(super) async fn cmd_acked<T: FromRedisValue>(&self, write: Cmd) -> Result<T> {
        match &self.acked {
            Some(acked) => acked.confirm(&mut acked.conn(), write).await,
            None => Ok(write.query_async(&mut self.c()).await?),
        }
    }
}

impl Acked {
    async fn confirm<T: FromRedisValue>(&self, conn: &mut Conn, write: Cmd) -> Result<T> {
        let mut pipe = redis::pipe();
        // Each reply is looked at on its own: the write's error is the one that matters.
        pipe.ignore_errors()
            .add_command(write)
            .cmd("WAIT")
            .arg(self.replicas)
            .arg(self.timeout_ms);
        let mut replies = conn.req_packed_commands(&pipe, 0, 2).await?.into_iter();
        let reply = replies
            .next()
            .ok_or(StoreError::Corrupt("confirmed write reply"))?
            .extract_error()?;
        let confirmed = match replies.next() {
            Some(Value::Int(n)) => n,
            Some(Value::ServerError(e)) => return Err(redis::RedisError::from(e).into()),
            _ => return Err(StoreError::Corrupt("WAIT reply")),
        };
        if confirmed < i64::from(self.replicas) {
            return Err(StoreError::NotReplicated {
                wanted: self.replicas,
                confirmed,
            });
        }
        Ok(T::from_redis_value(reply).map_err(redis::RedisError::from)?)
    }
}
