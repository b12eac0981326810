//! Redis beyond one server for the test matrix: a 3-primary and 3-replica Cluster, and a
//! primary and replica watched by 3 sentinels, each started from real `redis-server` processes
//! on free ports and killed by PID. `HUSH_TEST_REDIS=plain|cluster|sentinel` picks which one the
//! shared test Redis is.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::harness::*;

/// One process of a topology; killed (and reaped) on drop.
pub struct Proc {
    child: Mutex<Option<Child>>,
    args: Vec<String>,
}

impl Proc {
    fn spawn(args: &[String]) -> Proc {
        let p = Proc {
            child: Mutex::new(None),
            args: args.to_vec(),
        };
        p.start();
        p
    }

    /// Starts the process again with its first arguments (its data dir and, for a cluster
    /// node, its nodes.conf are still there).
    pub fn start(&self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning redis-server");
        watchdog(child.id());
        *self.child.lock().unwrap() = Some(child);
    }

    /// SIGKILL and reap: an outage, not a clean shutdown.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port whose cluster bus port (+10000) is free too, and never 6379.
fn cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p <= 55535 && p != 6379 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok()
        {
            return p;
        }
    }
}

pub fn wait_ping(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ping(port) {
        assert!(Instant::now() < deadline, "redis on {port} did not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn base_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--loglevel",
        "warning",
        "--dir",
        &dir.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

pub struct Topology {
    pub url: String,
    /// For a sentinel setup the primary comes first, then the replica, then the sentinels.
    pub procs: Vec<Proc>,
    /// The port of each process, in the same order.
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Topology {
    /// Six nodes, then `redis-cli --cluster create` with one replica per primary; returns once
    /// every node reports `cluster_state:ok`.
    pub fn cluster() -> Topology {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..6).map(|_| cluster_port()).collect();
        let procs = ports
            .iter()
            .map(|&p| {
                let node_dir = dir.path().join(p.to_string());
                std::fs::create_dir_all(&node_dir).unwrap();
                let mut args = base_args(p, &node_dir);
                // No diskless-sync delay: a replica must hold its primary's data within
                // moments, or a failover promotes an empty node (or refuses to, its data
                // being too old).
                args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-node-timeout",
                        "2000",
                        "--repl-diskless-sync-delay",
                        "0",
                    ]
                    .map(String::from),
                );
                Proc::spawn(&args)
            })
            .collect();
        ports.iter().for_each(|&p| wait_ping(p));
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("running redis-cli --cluster create");
        assert!(out.status.success(), "cluster create: {out:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ports
            .iter()
            .all(|&p| cli(p, &["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "cluster never reached state ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        while !ports.iter().all(|&p| {
            let r = cli(p, &["info", "replication"]);
            r.contains("role:master") || r.contains("master_link_status:up")
        }) {
            assert!(Instant::now() < deadline, "a replica never synced");
            std::thread::sleep(Duration::from_millis(100));
        }
        Topology {
            url: format!("redis+cluster://{}", nodes.join(",")),
            procs,
            ports,
            _dir: dir,
        }
    }

    /// Starts the dead cluster node `i` again as a new, empty node (its nodes.conf removed, as
    /// for a node that lost its data) and makes it a replica of the node on `primary_port`.
    /// Started with its old nodes.conf it would claim its old slots, empty, until the others
    /// told it otherwise, and a client could read nothing from it meanwhile.
    pub fn rejoin_as_replica(&self, i: usize, primary_port: u16) {
        let proc = &self.procs[i];
        let dir = proc
            .args
            .iter()
            .position(|a| a == "--dir")
            .map(|d| std::path::PathBuf::from(&proc.args[d + 1]))
            .expect("a node has a --dir");
        let _ = std::fs::remove_file(dir.join("nodes.conf"));
        proc.start();
        wait_ping(self.ports[i]);
        let me = self.ports[i];
        cli(
            me,
            &["cluster", "meet", "127.0.0.1", &primary_port.to_string()],
        );
        let primary_id = cli(primary_port, &["cluster", "myid"]).trim().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cli(me, &["cluster", "replicate", &primary_id]).starts_with("OK") {
            assert!(
                Instant::now() < deadline,
                "node {me} never joined as a replica"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        while !cli(me, &["info", "replication"]).contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "node {me} never synced");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A primary, its replica and three sentinels agreeing on it under the name `hush`.
    pub fn sentinel() -> Topology {
        let dir = tempfile::tempdir().unwrap();
        let primary = cluster_port();
        let replica = cluster_port();
        // No diskless-sync delay: the replica must hold the data within moments of start-up.
        let mut args = base_args(primary, dir.path());
        args.extend(["--repl-diskless-sync-delay", "0"].map(String::from));
        let mut procs = vec![Proc::spawn(&args)];
        wait_ping(primary);
        let replica_dir = dir.path().join("replica");
        std::fs::create_dir_all(&replica_dir).unwrap();
        let mut args = base_args(replica, &replica_dir);
        args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.to_string(),
        ]);
        procs.push(Proc::spawn(&args));
        wait_ping(replica);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cli(replica, &["info", "replication"]).contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "the replica never synced");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = cluster_port();
            let conf = dir.path().join(format!("sentinel{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\nloglevel warning\n\
                     dir {}\nsentinel monitor hush 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds hush 2000\n\
                     sentinel failover-timeout hush 10000\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            procs.push(Proc::spawn(&[
                conf.display().to_string(),
                "--sentinel".into(),
            ]));
            sentinels.push(port);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for &s in &sentinels {
            wait_ping(s);
            while !cli(s, &["sentinel", "get-master-addr-by-name", "hush"])
                .contains(&primary.to_string())
            {
                assert!(
                    Instant::now() < deadline,
                    "sentinel {s} never saw the primary"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let hosts: Vec<String> = sentinels.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        Topology {
            url: format!("redis+sentinel://{}/hush", hosts.join(",")),
            procs,
            ports: [primary, replica].into_iter().chain(sentinels).collect(),
            _dir: dir,
        }
    }
}

/// The URL every test's hush uses: the plain shared server unless `HUSH_TEST_REDIS` asks for a
/// cluster or a sentinel setup, which are then shared by the whole test binary.
pub fn shared_url() -> String {
    static TOPOLOGY: OnceLock<Option<Topology>> = OnceLock::new();
    let topology = TOPOLOGY.get_or_init(|| match std::env::var("HUSH_TEST_REDIS").as_deref() {
        Ok("cluster") => Some(Topology::cluster()),
        Ok("sentinel") => Some(Topology::sentinel()),
        Ok("plain") | Ok("") | Err(_) => None,
        Ok(other) => panic!("HUSH_TEST_REDIS={other}: expected plain, cluster or sentinel"),
    });
    match topology {
        Some(t) => t.url.clone(),
        None => shared_redis().url(),
    }
}
