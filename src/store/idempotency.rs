//! Idempotency records on the Redis side: the lease a request holds on its key, the
//! sealed response replayed to retries, and the markers an idempotent create leaves.

use redis::Value;

use super::{Result, ShardKeys, Store, StoreError, strings};

/// The marker an idempotent create leaves in its shard.
#[derive(Clone, Copy, Debug)]
pub struct IdemMark<'a> {
    pub digest: &'a str,
    pub fingerprint: &'a str,
    /// As long as the idempotency record.
    pub ttl_ms: i64,
}

/// What starting an idempotent request found.
pub enum IdemBegin {
    /// No record: the caller holds the key now.
    Fresh,
    /// A request held the key and stopped renewing its lease: the caller holds it now.
    Takeover,
    /// Another request holds the lease for this many more ms.
    Running(i64),
    /// The key was used with another body.
    Conflict,
    /// The sealed response to replay.
    Done(String),
}

/// What the holder of an idempotency lease does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Still working: extend the lease by this many ms.
    Renew(i64),
    /// Created nothing: free the key.
    Drop,
    /// Cannot tell what happened: let the next retry take over at once.
    Lapse,
}

impl Store {
    /// Starts an idempotent request under `token`, or says who holds it or what it answered.
    pub async fn idem_begin(
        &self,
        digest: &str,
        fingerprint: &str,
        token: &str,
        lease_ms: i64,
        ttl_ms: i64,
    ) -> Result<IdemBegin> {
        let reply: Value = self
            .run(
                &self.scripts.idempotency_begin,
                self.keys.idempotency(digest),
                ("", fingerprint, lease_ms, ttl_ms, token),
            )
            .await?;
        let v = strings(reply)?;
        Ok(match v.first().map(String::as_str) {
            Some("fresh") => IdemBegin::Fresh,
            Some("takeover") => IdemBegin::Takeover,
            Some("running") => {
                IdemBegin::Running(v.get(1).and_then(|ms| ms.parse().ok()).unwrap_or(0))
            }
            Some("conflict") => IdemBegin::Conflict,
            Some("done") => IdemBegin::Done(v.get(1).cloned().unwrap_or_default()),
            _ => return Err(StoreError::Corrupt("idempotency reply")),
        })
    }

    /// Renews, drops or lapses the lease `token` holds; false when it no longer holds it.
    pub async fn idem_lease(&self, digest: &str, token: &str, lease: Lease) -> Result<bool> {
        let (op, ms) = match lease {
            Lease::Renew(ms) => ("renew", ms),
            Lease::Drop => ("drop", 0),
            Lease::Lapse => ("lapse", 0),
        };
        let held: i64 = self
            .run(
                &self.scripts.idempotency_lease,
                self.keys.idempotency(digest),
                ("", token, op, ms),
            )
            .await?;
        Ok(held == 1)
    }

    /// The markers idempotent creates left for `digest` in these shards: `(session key,
    /// fingerprint)` where one is found.
    pub async fn idem_markers(
        &self,
        shards: &[ShardKeys],
        digest: &str,
    ) -> Result<Vec<Option<(String, String)>>> {
        let mut pipe = redis::pipe();
        for shard in shards {
            pipe.cmd("GET").arg(shard.idem_marker(digest));
        }
        let found: Vec<Option<String>> = pipe.query_async(&mut self.c()).await?;
        Ok(found
            .into_iter()
            .map(|m| {
                m.and_then(|m| {
                    m.split_once('|')
                        .map(|(k, fp)| (k.to_string(), fp.to_string()))
                })
            })
            .collect())
    }

    /// Stores the response and indexes it under each participant it names.
    pub async fn idem_finish(
        &self,
        digest: &str,
        fingerprint: &str,
        sealed: &str,
        ttl_ms: i64,
        participants: &[String],
    ) -> Result<()> {
        // Not MULTI: the record and its index live in different hash slots. A crash between
        // them can only leave a record erasure misses, and it expires in 24 hours.
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.idempotency(digest))
            .arg(format!("d|{fingerprint}|{sealed}"))
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        for idx in participants {
            let set = self.keys.idempotency_of(idx);
            pipe.cmd("SADD").arg(&set).arg(digest).ignore();
            pipe.cmd("PEXPIRE").arg(&set).arg(ttl_ms).ignore();
        }
        let _: () = pipe.query_async(&mut self.c()).await?;
        Ok(())
    }

    /// Deletes every stored idempotent response that names the participant.
    pub async fn idem_forget(&self, idx: &str) -> Result<()> {
        let set = self.keys.idempotency_of(idx);
        let digests: Vec<String> = self.query("SMEMBERS", &set).await?;
        let mut pipe = redis::pipe();
        for d in &digests {
            pipe.cmd("DEL").arg(self.keys.idempotency(d)).ignore();
        }
        pipe.cmd("DEL").arg(&set).ignore();
        let _: () = pipe.query_async(&mut self.c()).await?;
        Ok(())
    }
}
