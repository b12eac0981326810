//! The files in deploy/ agree with hush and with Redis: every variable a hush service sets is
//! one hush reads, its Redis URL names services of the same file on the ports they listen on,
//! services depend on services that exist, every Redis runs deploy/redis.conf (AOF,
//! noeviction), the Cluster and Sentinel settings name the right nodes, the real
//! `redis-server` accepts each Redis service's command line, and the cluster's one-shot
//! script makes a cluster of them (and leaves it be on a second run). Docker is not needed.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use yaml_rust2::{Yaml, YamlLoader};

use crate::harness::*;

#[derive(Debug, Clone)]
enum Y {
    Str(String),
    Seq(Vec<Y>),
    Map(BTreeMap<String, Y>),
}

impl Y {
    fn get(&self, key: &str) -> Option<&Y> {
        match self {
            Y::Map(m) => m.get(key),
            _ => None,
        }
    }
    fn str(&self) -> &str {
        match self {
            Y::Str(s) => s,
            other => panic!("expected a scalar, got {other:?}"),
        }
    }
    fn map(&self) -> &BTreeMap<String, Y> {
        match self {
            Y::Map(m) => m,
            other => panic!("expected a mapping, got {other:?}"),
        }
    }
    fn strings(&self) -> Vec<String> {
        match self {
            Y::Seq(items) => items.iter().map(|i| i.str().to_string()).collect(),
            other => panic!("expected a sequence, got {other:?}"),
        }
    }
}

/// The document in `text`, scalars of every kind kept as their text.
fn parse(text: &str) -> Y {
    fn convert(y: &Yaml) -> Y {
        match y {
            Yaml::Hash(h) => Y::Map(
                h.iter()
                    .map(|(k, v)| (convert(k).str().to_string(), convert(v)))
                    .collect(),
            ),
            Yaml::Array(items) => Y::Seq(items.iter().map(convert).collect()),
            Yaml::String(s) | Yaml::Real(s) => Y::Str(s.clone()),
            Yaml::Integer(i) => Y::Str(i.to_string()),
            Yaml::Boolean(b) => Y::Str(b.to_string()),
            Yaml::Null => Y::Str(String::new()),
            other => panic!("unexpected YAML node {other:?}"),
        }
    }
    let docs = YamlLoader::load_from_str(text).expect("the file is YAML");
    assert_eq!(docs.len(), 1, "one document");
    convert(&docs[0])
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn compose(name: &str) -> BTreeMap<String, Y> {
    parse(&read(&format!("deploy/{name}")))
        .get("services")
        .unwrap_or_else(|| panic!("{name} has no services"))
        .map()
        .clone()
}

fn command(service: &Y) -> Vec<String> {
    service.get("command").map(Y::strings).unwrap_or_default()
}

/// The value after `flag` in a command line.
fn arg<'a>(cmd: &'a [String], flag: &str) -> Option<&'a str> {
    let at = cmd.iter().position(|a| a == flag)?;
    cmd.get(at + 1).map(String::as_str)
}

fn is_redis_server(service: &Y) -> bool {
    command(service).first().map(String::as_str) == Some("redis-server")
}

/// The port a service listens on inside its network: Redis's from its command line or the
/// file it runs, a sentinel's from deploy/sentinel.conf.
fn listen_port(service: &Y) -> Option<u16> {
    let cmd = command(service);
    if let Some(p) = arg(&cmd, "--port") {
        return p.parse().ok();
    }
    let conf = if is_redis_server(service) {
        read("deploy/redis.conf")
    } else if cmd.join(" ").contains("--sentinel") {
        read("deploy/sentinel.conf")
    } else {
        return None;
    };
    conf.lines()
        .find_map(|l| l.strip_prefix("port "))
        .and_then(|p| p.trim().parse().ok())
}

/// What the three compose files have in common.
fn check_common(file: &str) -> BTreeMap<String, Y> {
    let services = compose(file);
    let config_rs = read("src/config/mod.rs");
    for (name, service) in &services {
        if let Some(deps) = service.get("depends_on") {
            for dep in deps.map().keys() {
                assert!(
                    services.contains_key(dep),
                    "{file}: {name} depends on {dep}"
                );
            }
        }
        if is_redis_server(service) {
            let cmd = command(service);
            assert_eq!(
                cmd.get(1).map(String::as_str),
                Some("/usr/local/etc/redis/redis.conf")
            );
            let volumes = service.get("volumes").unwrap().strings();
            assert!(
                volumes.contains(&"./redis.conf:/usr/local/etc/redis/redis.conf:ro".into()),
                "{file}: {name} does not mount deploy/redis.conf: {volumes:?}"
            );
            assert_eq!(arg(&cmd, "--dir"), Some("/data"), "{file}: {name}");
            assert!(
                volumes.iter().any(|v| v.ends_with(":/data")),
                "{file}: {name} keeps its AOF in the container: {volumes:?}"
            );
        }
        let Some(env) = service.get("environment") else {
            continue;
        };
        for var in env.map().keys() {
            assert!(
                config_rs.contains(&format!("\"{var}\"")),
                "{file}: {name} sets {var}, which hush does not read"
            );
        }
        let url = env.get("HUSH_REDIS_URL").unwrap().str();
        let target = hush::store::RedisTarget::parse(url)
            .unwrap_or_else(|e| panic!("{file}: {name}: {url}: {e}"));
        for (host, port) in &target.nodes {
            let node = services
                .get(host)
                .unwrap_or_else(|| panic!("{file}: {name} names {host}, not a service"));
            assert_eq!(listen_port(node), Some(*port), "{file}: {host} in {url}");
            if target.kind == hush::store::StoreKind::Cluster {
                assert_eq!(arg(&command(node), "--cluster-enabled"), Some("yes"));
            }
        }
        if let Some(master) = &target.master {
            let monitor = read("deploy/sentinel.conf")
                .lines()
                .find_map(|l| l.strip_prefix("sentinel monitor ").map(String::from))
                .expect("sentinel.conf monitors a primary");
            let parts: Vec<&str> = monitor.split_whitespace().collect();
            assert_eq!(
                parts[0], master,
                "the URL's master name is the monitored one"
            );
            let primary = services
                .get(parts[1])
                .expect("the monitored host is a service");
            assert_eq!(
                listen_port(primary).map(|p| p.to_string()),
                Some(parts[2].into())
            );
        }
        let listen = env.get("HUSH_LISTEN").unwrap().str();
        let inner = listen.rsplit(':').next().unwrap();
        for mapping in service.get("ports").map(Y::strings).unwrap_or_default() {
            assert!(
                mapping.ends_with(&format!(":{inner}")),
                "{file}: {name} publishes {mapping} but listens on {listen}"
            );
        }
    }
    services
}

#[test]
fn redis_conf_has_the_required_settings() {
    let conf = read("deploy/redis.conf");
    let settings: Vec<&str> = conf.lines().map(str::trim).collect();
    for required in ["appendonly yes", "maxmemory-policy noeviction"] {
        assert!(
            settings.contains(&required),
            "redis.conf lacks `{required}`"
        );
    }
}

#[test]
fn the_single_server_compose_file_agrees() {
    let services = check_common("compose.yaml");
    assert!(services.values().any(is_redis_server));
}

#[test]
fn the_cluster_compose_file_agrees() {
    let services = check_common("compose.cluster.yaml");
    let nodes: Vec<(&String, &Y)> = services
        .iter()
        .filter(|(_, s)| is_redis_server(s))
        .collect();
    assert_eq!(nodes.len(), 6, "3 primaries and 3 replicas");
    let mut addresses = Vec::new();
    for (name, node) in &nodes {
        let cmd = command(node);
        assert_eq!(arg(&cmd, "--cluster-enabled"), Some("yes"), "{name}");
        assert_eq!(
            arg(&cmd, "--cluster-announce-hostname"),
            Some(name.as_str())
        );
        assert_eq!(
            arg(&cmd, "--cluster-preferred-endpoint-type"),
            Some("hostname")
        );
        let ip = node
            .get("networks")
            .and_then(|n| n.get("cluster"))
            .and_then(|c| c.get("ipv4_address"))
            .unwrap_or_else(|| panic!("{name} has no fixed address"))
            .str();
        assert!(
            ip.starts_with("172.28.0."),
            "{name}: {ip} outside the subnet"
        );
        addresses.push(format!("{ip}:{}", listen_port(node).unwrap()));
    }
    let init = &services["cluster-init"];
    let script = command(init).join(" ");
    let created: Vec<&str> = script
        .split("--cluster create")
        .nth(1)
        .expect("cluster-init runs --cluster create")
        .split_whitespace()
        .take_while(|w| !w.starts_with("--"))
        .collect();
    assert_eq!(created, addresses, "cluster-init joins every node");
    assert!(script.contains("--cluster-replicas 1") && script.contains("--cluster-yes"));
    let waits_for = init.get("depends_on").unwrap().map();
    for (name, _) in &nodes {
        assert_eq!(
            waits_for[*name].get("condition").unwrap().str(),
            "service_healthy"
        );
    }
    for hush in ["hush-1", "hush-2"] {
        let deps = services[hush].get("depends_on").unwrap();
        assert_eq!(
            deps.get("cluster-init")
                .unwrap()
                .get("condition")
                .unwrap()
                .str(),
            "service_completed_successfully"
        );
    }
    // cluster-init's own script, with each node's address and name mapped to where it runs
    // here: it makes a working cluster, and run again (a restart) it leaves it be.
    let local = starts_locally(&nodes);
    let init_cmd = command(init);
    assert_eq!(init_cmd[..2], ["sh", "-c"]);
    let mut script = init_cmd[2].clone();
    for ((name, _), address) in nodes.iter().zip(&addresses) {
        let port = local.ports[name.as_str()];
        script = script
            .replace(address, &format!("127.0.0.1:{port}"))
            .replace(&format!("-h {name} "), &format!("-h 127.0.0.1 -p {port} "));
    }
    assert!(!script.contains("redis-1"), "{script}");
    for run in ["creates", "finds"] {
        let out = Command::new("timeout")
            .args(["60", "sh", "-c", &script])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "cluster-init {run} the cluster: {said}"
        );
        assert_eq!(
            said.contains("Performing hash slots allocation"),
            run == "creates",
            "{said}"
        );
    }
    // The other nodes learn the configuration by gossip, moments later.
    let info = Command::new("redis-cli")
        .args(["-p", &local.ports["redis-1"].to_string(), "cluster", "info"])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
}

#[test]
fn the_sentinel_compose_file_agrees() {
    let services = check_common("compose.sentinel.yaml");
    let primary = command(&services["redis-primary"]);
    let replica = command(&services["redis-replica"]);
    assert_eq!(arg(&replica, "--replicaof"), Some("redis-primary"));
    assert_eq!(
        arg(&primary, "--replica-announce-ip"),
        Some("redis-primary")
    );
    assert_eq!(
        arg(&replica, "--replica-announce-ip"),
        Some("redis-replica")
    );
    let conf = read("deploy/sentinel.conf");
    let at = |line: &str| {
        conf.lines()
            .position(|l| l.trim() == line || l.starts_with(line))
            .unwrap_or_else(|| panic!("sentinel.conf lacks `{line}`"))
    };
    // Names resolve only if these come first.
    assert!(at("sentinel resolve-hostnames yes") < at("sentinel monitor "));
    assert!(at("sentinel announce-hostnames yes") < at("sentinel monitor "));
    let sentinels: Vec<&String> = services
        .keys()
        .filter(|n| n.starts_with("sentinel-"))
        .collect();
    assert_eq!(sentinels.len(), 3);
    for name in sentinels {
        let script = command(&services[name]).join(" ");
        assert!(
            script.contains(&format!("sentinel announce-ip {name}")),
            "{script}"
        );
        assert!(script.contains("--sentinel"), "{script}");
    }
    let nodes: Vec<(&String, &Y)> = services
        .iter()
        .filter(|(_, s)| is_redis_server(s))
        .collect();
    starts_locally(&nodes);
}

/// Redis services started from their compose command lines; killed on drop.
struct Local {
    children: Vec<std::process::Child>,
    /// Service name → local port.
    ports: BTreeMap<String, u16>,
    _dir: tempfile::TempDir,
}

impl Drop for Local {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs each Redis service's command line with the real `redis-server` (the mounted paths
/// mapped to the repository and a temp dir, on a free local port) and waits for PING, so an
/// option this Redis does not know fails here rather than in a container. The file's own
/// `dir` names a production path, which the command line's `--dir` overrides anyway.
fn starts_locally(nodes: &[(&String, &Y)]) -> Local {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("redis.conf");
    let text: String = read("deploy/redis.conf")
        .lines()
        .filter(|l| !l.starts_with("dir "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&conf, text).unwrap();
    let mut local = Local {
        children: Vec::new(),
        ports: BTreeMap::new(),
        _dir: dir,
    };
    for (name, node) in nodes {
        let data = local._dir.path().join(name.as_str());
        std::fs::create_dir_all(&data).unwrap();
        let port = loop {
            let p = free_port();
            if p <= 55535 && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
                break p;
            }
        };
        let args: Vec<String> = command(node)[1..]
            .iter()
            .map(|a| match a.as_str() {
                "/usr/local/etc/redis/redis.conf" => conf.display().to_string(),
                "/data" => data.display().to_string(),
                "0.0.0.0" => "127.0.0.1".into(),
                other => other.to_string(),
            })
            .collect();
        let mut child = Command::new("redis-server")
            .args(&args)
            .args(["--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning redis-server");
        watchdog(child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(port) {
            if let Ok(Some(status)) = child.try_wait() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "{name}: redis-server {args:?} exited ({status}): {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            assert!(Instant::now() < deadline, "{name} never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        local.children.push(child);
        local.ports.insert(name.to_string(), port);
    }
    local
}
