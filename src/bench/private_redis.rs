//! The bench's own `redis-server`: started on a free port in a temporary folder, flushed
//! between measurements, asked for its memory use, and killed at the end, so a bench never
//! touches the Redis of a deployment.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use redis::aio::MultiplexedConnection;
use tokio::process::{Child, Command};

pub(super) struct PrivateRedis {
    child: Child,
    dir: PathBuf,
    pub(super) url: String,
    pub(super) version: String,
}

impl PrivateRedis {
    pub(super) async fn start() -> anyhow::Result<PrivateRedis> {
        let dir = std::env::temp_dir().join(format!(
            "hush-bench-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        match Self::spawn(&dir, &[]).await {
            Ok((child, url, version)) => Ok(PrivateRedis {
                child,
                dir,
                url,
                version,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// A second private server replicating this one, returned once it is in sync.
    pub(super) async fn replica(&self) -> anyhow::Result<PrivateRedis> {
        let port = self.url.rsplit(':').next().unwrap_or_default().to_string();
        let dir = self.dir.join("replica");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let args = [
            "--replicaof",
            "127.0.0.1",
            &port,
            "--repl-diskless-sync-delay",
            "0",
        ];
        let (child, url, version) = Self::spawn(&dir, &args).await?;
        let replica = PrivateRedis {
            child,
            dir,
            url,
            version,
        };
        for _ in 0..200 {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut replica.conn().await?)
                .await?;
            if info_field(&info, "master_link_status").as_deref() == Some("up") {
                return Ok(replica);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        replica.stop().await;
        bail!("the bench's replica never synced")
    }

    async fn spawn(dir: &Path, extra: &[&str]) -> anyhow::Result<(Child, String, String)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = Command::new("redis-server")
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context(
                "cannot start redis-server; install it (e.g. `apt-get install redis-server`)",
            )?;
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str())?;
        for _ in 0..100 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && let Ok(info) = redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut c)
                    .await
            {
                let version = info_field(&info, "redis_version").unwrap_or_default();
                return Ok((child, url, version));
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "redis-server exited ({status}); see {}",
                    dir.join("redis.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill().await;
        bail!("redis-server did not answer on port {port}")
    }

    /// A connection for housekeeping; a FLUSHALL of a large dataset takes a while.
    async fn conn(&self) -> anyhow::Result<MultiplexedConnection> {
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
        Ok(redis::Client::open(self.url.as_str())?
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    pub(super) async fn flush(&self) -> anyhow::Result<()> {
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut self.conn().await?)
            .await
            .context("FLUSHALL on the private Redis")?;
        Ok(())
    }

    /// Sets each `(name, value)` with `CONFIG SET` and returns the values it replaced.
    pub(super) async fn encoding(
        &self,
        settings: &[(String, String)],
    ) -> anyhow::Result<Vec<(String, String)>> {
        let mut c = self.conn().await?;
        let mut before = Vec::with_capacity(settings.len());
        for (name, value) in settings {
            let old: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut c)
                .await?;
            before.push((name.clone(), old.get(1).cloned().unwrap_or_default()));
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(value)
                .query_async(&mut c)
                .await
                .with_context(|| format!("CONFIG SET {name} {value}"))?;
        }
        Ok(before)
    }

    /// `(used_memory, keys)`.
    pub(super) async fn usage(&self) -> anyhow::Result<(u64, u64)> {
        let mut c = self.conn().await?;
        let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await?;
        let used = info_field(&info, "used_memory")
            .and_then(|v| v.parse().ok())
            .context("INFO memory without used_memory")?;
        let keys: u64 = redis::cmd("DBSIZE").query_async(&mut c).await?;
        Ok((used, keys))
    }

    pub(super) async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}
