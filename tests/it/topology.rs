//! Redis beyond one server for the test matrix: a 3-primary and 3-replica Cluster, and a
//! primary and replica watched by 3 sentinels, each started from real `redis-server` processes
//! on free ports and killed by PID, plain or as [`Options`] say (TLS, passwords).
//! `HUSH_TEST_REDIS=plain|cluster|sentinel` picks which one the shared test Redis is.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::harness::*;
use super::tls::Pki;

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

/// How a topology's processes are reached: over TLS with a test PKI's certificates, and with
/// passwords on the data nodes and on the sentinels. The default is plain and open.
#[derive(Clone, Default)]
pub struct Options {
    pub tls: Option<Pki>,
    /// With TLS: refuse clients that present no certificate signed by the PKI's CA.
    pub check_clients: bool,
    /// `requirepass` (and `masterauth`) of every data node.
    pub password: Option<String>,
    /// `requirepass` of every sentinel.
    pub sentinel_password: Option<String>,
}

impl Options {
    /// redis-cli flags that reach a data node, or with `sentinel` a sentinel.
    fn cli_flags(&self, sentinel: bool) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(pki) = &self.tls {
            flags.extend(["--tls".into(), "--cacert".into(), pki.path("ca.pem")]);
            if self.check_clients {
                flags.extend([
                    "--cert".into(),
                    pki.path("client.pem"),
                    "--key".into(),
                    pki.path("client.key"),
                ]);
            }
        }
        let password = if sentinel {
            &self.sentinel_password
        } else {
            &self.password
        };
        if let Some(p) = password {
            flags.extend(["-a".into(), p.clone(), "--no-auth-warning".into()]);
        }
        flags
    }

    /// The listening port, TLS and password settings of a data node.
    fn server_args(&self, port: u16) -> Vec<String> {
        let mut args: Vec<String> = match &self.tls {
            None => vec!["--port".into(), port.to_string()],
            Some(pki) => vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                pki.path("server.pem"),
                "--tls-key-file".into(),
                pki.path("server.key"),
                "--tls-ca-cert-file".into(),
                pki.path("ca.pem"),
                "--tls-auth-clients".into(),
                (if self.check_clients { "yes" } else { "no" }).into(),
                "--tls-replication".into(),
                "yes".into(),
            ],
        };
        if let Some(p) = &self.password {
            args.extend([
                "--requirepass".into(),
                p.clone(),
                "--masterauth".into(),
                p.clone(),
            ]);
        }
        args
    }

    /// The same for a sentinel, as lines of its configuration file.
    fn sentinel_conf(&self, port: u16) -> String {
        let mut conf = match &self.tls {
            None => format!("port {port}\n"),
            Some(pki) => format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                pki.path("server.pem"),
                pki.path("server.key"),
                pki.path("ca.pem"),
            ),
        };
        if let Some(p) = &self.sentinel_password {
            conf.push_str(&format!("requirepass {p}\n"));
        }
        conf
    }

    /// `redis+KIND://[:password@]` (or `rediss+...`), the start of the URL hush is given.
    fn url_start(&self, kind: &str) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let auth = match &self.password {
            Some(p) => format!(":{p}@"),
            None => String::new(),
        };
        format!("{scheme}{kind}://{auth}")
    }
}

/// Waits until the plain, open node on `port` answers.
pub fn wait_ping(port: u16) {
    wait_ping_as(port, &[])
}

fn wait_ping_as(port: u16, flags: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cli_as(port, flags, &["ping"]).contains("PONG") {
        assert!(Instant::now() < deadline, "redis on {port} did not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// redis-cli against the plain, open node on `port`.
pub fn cli(port: u16, args: &[&str]) -> String {
    cli_as(port, &[], args)
}

fn cli_as(port: u16, flags: &[String], args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(flags)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn base_args(port: u16, dir: &Path, opts: &Options) -> Vec<String> {
    let mut args = opts.server_args(port);
    args.extend(
        [
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
        .map(String::from),
    );
    args
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
    /// One server, for what only `opts` makes special (TLS, a password).
    pub fn single(opts: &Options) -> Topology {
        let dir = tempfile::tempdir().unwrap();
        let port = cluster_port();
        let procs = vec![Proc::spawn(&base_args(port, dir.path(), opts))];
        wait_ping_as(port, &opts.cli_flags(false));
        Topology {
            url: format!("{}127.0.0.1:{port}", opts.url_start("")),
            procs,
            ports: vec![port],
            _dir: dir,
        }
    }

    /// Six nodes, then `redis-cli --cluster create` with one replica per primary; returns once
    /// every node reports `cluster_state:ok`.
    pub fn cluster() -> Topology {
        Self::cluster_with(&Options::default())
    }

    /// As [`Topology::cluster`], reached as `opts` says (with TLS, the cluster bus and
    /// replication use it too).
    pub fn cluster_with(opts: &Options) -> Topology {
        let dir = tempfile::tempdir().unwrap();
        let flags = opts.cli_flags(false);
        let ports: Vec<u16> = (0..6).map(|_| cluster_port()).collect();
        let procs = ports
            .iter()
            .map(|&p| {
                let node_dir = dir.path().join(p.to_string());
                std::fs::create_dir_all(&node_dir).unwrap();
                let mut args = base_args(p, &node_dir, opts);
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
                if opts.tls.is_some() {
                    args.extend(["--tls-cluster", "yes"].map(String::from));
                }
                Proc::spawn(&args)
            })
            .collect();
        ports.iter().for_each(|&p| wait_ping_as(p, &flags));
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(&flags)
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
            .all(|&p| cli_as(p, &flags, &["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "cluster never reached state ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        while !ports.iter().all(|&p| {
            let r = cli_as(p, &flags, &["info", "replication"]);
            r.contains("role:master") || r.contains("master_link_status:up")
        }) {
            assert!(Instant::now() < deadline, "a replica never synced");
            std::thread::sleep(Duration::from_millis(100));
        }
        Topology {
            url: format!("{}{}", opts.url_start("+cluster"), nodes.join(",")),
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
        Self::sentinel_with(&Options::default())
    }

    /// As [`Topology::sentinel`], reached as `opts` says; with TLS the sentinels listen on TLS
    /// only and reach the primary and replica over TLS.
    pub fn sentinel_with(opts: &Options) -> Topology {
        let dir = tempfile::tempdir().unwrap();
        let flags = opts.cli_flags(false);
        let primary = cluster_port();
        let replica = cluster_port();
        // No diskless-sync delay: the replica must hold the data within moments of start-up.
        let mut args = base_args(primary, dir.path(), opts);
        args.extend(["--repl-diskless-sync-delay", "0"].map(String::from));
        let mut procs = vec![Proc::spawn(&args)];
        wait_ping_as(primary, &flags);
        let replica_dir = dir.path().join("replica");
        std::fs::create_dir_all(&replica_dir).unwrap();
        let mut args = base_args(replica, &replica_dir, opts);
        args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.to_string(),
        ]);
        procs.push(Proc::spawn(&args));
        wait_ping_as(replica, &flags);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cli_as(replica, &flags, &["info", "replication"]).contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "the replica never synced");
            std::thread::sleep(Duration::from_millis(50));
        }
        let sentinel_flags = opts.cli_flags(true);
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = cluster_port();
            let conf = dir.path().join(format!("sentinel{i}.conf"));
            let auth_pass = match &opts.password {
                Some(p) => format!("sentinel auth-pass hush {p}\n"),
                None => String::new(),
            };
            std::fs::write(
                &conf,
                format!(
                    "{}bind 127.0.0.1\nprotected-mode no\nloglevel warning\n\
                     dir {}\nsentinel monitor hush 127.0.0.1 {primary} 2\n{auth_pass}\
                     sentinel down-after-milliseconds hush 2000\n\
                     sentinel failover-timeout hush 10000\n",
                    opts.sentinel_conf(port),
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
            wait_ping_as(s, &sentinel_flags);
            while !cli_as(
                s,
                &sentinel_flags,
                &["sentinel", "get-master-addr-by-name", "hush"],
            )
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
            url: format!("{}{}/hush", opts.url_start("+sentinel"), hosts.join(",")),
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
