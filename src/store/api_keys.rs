//! API keys on the Redis side: each key's record (name, scopes, pools, creation time) under
//! its digest, and a name → digest index so keys can be listed and revoked by name.

use std::collections::HashMap;

use super::{Result, Store};

impl Store {
    pub async fn api_key_put(
        &self,
        name: &str,
        digest: &str,
        scopes: &str,
        pools: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let fresh: bool = self
            .query("HSETNX", (self.keys.api_keys(), name, digest))
            .await?;
        if !fresh {
            return Ok(false);
        }
        let mut put = redis::cmd("HSET");
        put.arg(self.keys.api_key(digest))
            .arg("name")
            .arg(name)
            .arg("scopes")
            .arg(scopes)
            .arg("created")
            .arg(now);
        // No field at all means every pool, which is how keys made before limits read.
        if let Some(pools) = pools {
            put.arg("pools").arg(pools);
        }
        let _: i64 = self.cmd_acked(put).await?;
        Ok(true)
    }

    /// `(name, scopes, pools)` of the key with this digest; `pools` is absent for a key
    /// that sees every pool.
    pub async fn api_key(&self, digest: &str) -> Result<Option<(String, String, Option<String>)>> {
        let v: (Option<String>, Option<String>, Option<String>) = self
            .query(
                "HMGET",
                (self.keys.api_key(digest), "name", "scopes", "pools"),
            )
            .await?;
        Ok(match v {
            (Some(n), Some(s), p) => Some((n, s, p)),
            _ => None,
        })
    }

    /// `(name, scopes, pools, created ms)` of every key.
    pub async fn api_keys(&self) -> Result<Vec<(String, String, Option<String>, i64)>> {
        let all: HashMap<String, String> = self.query("HGETALL", self.keys.api_keys()).await?;
        let mut out = Vec::new();
        for (name, digest) in all {
            let v: (Option<String>, Option<String>, Option<i64>) = self
                .query(
                    "HMGET",
                    (self.keys.api_key(&digest), "scopes", "pools", "created"),
                )
                .await?;
            out.push((name, v.0.unwrap_or_default(), v.1, v.2.unwrap_or(0)));
        }
        out.sort();
        Ok(out)
    }

    pub async fn api_key_revoke(&self, name: &str) -> Result<bool> {
        let digest: Option<String> = self.query("HGET", (self.keys.api_keys(), name)).await?;
        let Some(digest) = digest else {
            return Ok(false);
        };
        let _: i64 = self.query("DEL", self.keys.api_key(&digest)).await?;
        let _: i64 = self.query("HDEL", (self.keys.api_keys(), name)).await?;
        Ok(true)
    }
}
