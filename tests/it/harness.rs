//! The shared test harness: one `redis-server` per test binary on a free port, a fresh key
//! prefix and fresh secrets per test, hush served in-process on `127.0.0.1:0`, and helpers
//! that speak the REST API and read Redis state directly.
//!
//! Every log line hush writes during the run lands in one in-memory buffer ([`captured_logs`]),
//! so the privacy tests can scan it.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hush::config::{Config, Secret};
use rand::RngCore;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a single HTTP call may take before the test fails instead of hanging.
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Numbers used across the suite: valid US numbers in the fictional 555 exchange.
// ---------------------------------------------------------------------------------------------

/// Participant `i` (0..300): +1 415 555 0100 .. +1 415 555 0399.
pub fn participant(i: usize) -> String {
    assert!(i < 300, "participant index out of range");
    format!("+1415555{:04}", 100 + i)
}

/// Proxy number `i` (0..100) in area code 201: +1 201 555 0100 ..
pub fn proxy(i: usize) -> String {
    assert!(i < 100, "proxy index out of range");
    format!("+1201555{:04}", 100 + i)
}

/// Proxy number `i` (0..100) in area code 202: +1 202 555 0100 ..
pub fn proxy202(i: usize) -> String {
    assert!(i < 100, "proxy index out of range");
    format!("+1202555{:04}", 100 + i)
}

/// The `n` first proxies of area code 201.
pub fn proxies(n: usize) -> Vec<String> {
    (0..n).map(proxy).collect()
}

/// The national digits of an E.164 number (`+14155550123` → `4155550123`).
pub fn national_digits(e164: &str) -> String {
    e164.trim_start_matches("+1").to_string()
}

/// A number as a URL path segment (`+` must be escaped or it reads as a space).
pub fn path_number(e164: &str) -> String {
    e164.replace('+', "%2B")
}

// ---------------------------------------------------------------------------------------------
// Log capture
// ---------------------------------------------------------------------------------------------

static LOGS: LazyLock<Arc<Mutex<Vec<u8>>>> = LazyLock::new(Default::default);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process-wide subscriber once: hush at `debug`, everything else at `info`,
/// all written into the shared buffer.
fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let buf = LOGS.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,hush=debug"))
            .with_ansi(false)
            .with_writer(move || LogWriter(buf.clone()))
            .try_init();
    });
}

/// Everything logged so far by every test of this binary.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------------------------------------
// redis-server processes
// ---------------------------------------------------------------------------------------------

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` child on 127.0.0.1. Killed on drop; a watchdog shell also kills it when
/// the test process exits, since the shared server lives in a `static` that is never dropped.
pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
    persistent: bool,
    child: Mutex<Option<Child>>,
    _tmp: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts a server in a fresh temp dir. `persistent` turns on an fsync-always AOF so data
    /// survives a kill and restart on the same dir.
    pub fn start(persistent: bool) -> RedisServer {
        let tmp = tempfile::tempdir().expect("temp dir for redis");
        let dir = tmp.path().to_path_buf();
        let mut last_err = String::new();
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                dir: dir.clone(),
                persistent,
                child: Mutex::new(None),
                _tmp: None,
            };
            match server.spawn() {
                Ok(()) => {
                    server._tmp = Some(tmp);
                    return server;
                }
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts) the server process on `self.port` and waits until PING answers.
    pub fn spawn(&self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir);
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning redis-server (is it installed?): {e}"))?;
        watchdog(child.id());
        let pid = child.id();
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(c) = self.child.lock().unwrap().as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("redis-server {pid} exited early: {status}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(format!(
            "redis-server on port {} did not answer PING",
            self.port
        ))
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a server frozen by [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.lock().unwrap().as_ref().map(|c| c.id());
        let pid = pid.expect("redis-server is running");
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Kills the server (SIGKILL) and reaps it: an outage, not a clean shutdown.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills `pid` once this test process is gone (or stops watching once `pid` is gone).
pub fn watchdog(pid: u32) {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null && kill -0 {pid} 2>/dev/null; do sleep 1; done; kill {pid} 2>/dev/null"
    );
    let _ = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// A raw RESP PING, so waiting for a server needs no client library state.
pub fn ping(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n >= 5 && &buf[..5] == b"+PONG")
}

/// The redis-server shared by every test of this binary.
pub fn shared_redis() -> &'static RedisServer {
    static REDIS: OnceLock<RedisServer> = OnceLock::new();
    REDIS.get_or_init(|| RedisServer::start(false))
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// An HTTP response, read whole.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    /// The body as JSON, or `Value::Null` when it is not JSON.
    pub json: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_string())
    }

    pub fn content_type(&self) -> String {
        self.header("content-type").unwrap_or_default()
    }

    /// The problem `code`, or "" when there is none.
    pub fn code(&self) -> &str {
        self.json["code"].as_str().unwrap_or("")
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "expected HTTP {status}, got {} with body: {}",
            self.status, self.text
        );
        self.json.clone()
    }

    /// Asserts a well-formed problem+json response with this status and code.
    #[track_caller]
    pub fn expect_problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "expected problem {status} {code}, got {} with body: {}",
            self.status,
            self.text
        );
        assert_problem_shape(self);
        self.json.clone()
    }
}

/// Every error is `application/problem+json` with `type, title, status, detail, code`.
#[track_caller]
pub fn assert_problem_shape(r: &Resp) {
    assert!(
        r.content_type().starts_with("application/problem+json"),
        "error content type is {:?}, body {}",
        r.content_type(),
        r.text
    );
    for field in ["type", "title", "detail", "code"] {
        assert!(
            r.json[field].is_string(),
            "problem field `{field}` missing or not a string: {}",
            r.text
        );
    }
    assert_eq!(
        r.json["status"].as_u64(),
        Some(r.status as u64),
        "problem `status` differs from the HTTP status: {}",
        r.text
    );
}

/// The PIN `participant` was given in a session answer.
#[track_caller]
pub fn pin_of(session: &Value, participant: &str) -> String {
    session["pins"]
        .as_array()
        .unwrap_or_else(|| panic!("no pins: {session}"))
        .iter()
        .find(|p| p["participant"] == participant)
        .unwrap_or_else(|| panic!("no pin for {participant}: {session}"))["pin"]
        .as_str()
        .unwrap()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// The app under test
// ---------------------------------------------------------------------------------------------

static PREFIX_COUNTER: AtomicUsize = AtomicUsize::new(0);

fn random_key() -> Secret<[u8; 32]> {
    let mut k = [0u8; 32];
    rand::rng().fill_bytes(&mut k);
    Secret::new(k)
}

/// A config for a fresh tenant on `redis_url`: its own prefix and its own secrets.
pub fn fresh_config(redis_url: &str) -> Config {
    let n = PREFIX_COUNTER.fetch_add(1, Ordering::SeqCst);
    Config {
        redis_url: redis_url.to_string(),
        redis_prefix: format!("t{n}_{}", std::process::id()),
        index_key: Some(random_key()),
        data_keys: vec![random_key()],
        log: "debug".into(),
        reaper_interval_ms: 200,
        ..Config::default()
    }
}

/// One hush server running in-process, with a client and an admin key.
pub struct TestApp {
    pub base_url: String,
    pub client: reqwest::Client,
    pub admin_key: String,
    pub config: Config,
    pub shutdown: CancellationToken,
    pub redis_url: String,
    pub prefix: String,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

async fn serve(config: Config) -> (String, CancellationToken, JoinHandle<anyhow::Result<()>>) {
    serve_bound(config, |_, _| {}).await
}

/// [`serve`], letting `bound` adjust the config once the address is known.
async fn serve_bound(
    config: Config,
    bound: impl FnOnce(&mut Config, &str),
) -> (String, CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = config;
    config.listen = addr;
    bound(&mut config, &format!("http://{addr}"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hush::run(config, listener, shutdown.clone()));
    (format!("http://{addr}"), shutdown, task)
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .no_proxy()
        .build()
        .unwrap()
}

impl TestApp {
    /// hush on the shared Redis (plain, cluster or sentinel: see `HUSH_TEST_REDIS`) with a fresh
    /// prefix and default settings.
    pub async fn start() -> TestApp {
        Self::start_with(|_| {}).await
    }

    /// As [`TestApp::start`], after `tweak` has adjusted the config.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = fresh_config(&super::topology::shared_url());
        tweak(&mut config);
        Self::start_on(config).await
    }

    /// hush with exactly this config (its Redis must be up).
    pub async fn start_on(config: Config) -> TestApp {
        init_logging();
        let admin_key = hush::create_api_key(&config, "test-admin", &["admin"])
            .await
            .expect("creating the admin key");
        Self::start_as(config, admin_key).await
    }

    /// hush with this config, adjusted by `bound` once its address (`http://127.0.0.1:port`)
    /// is known, for settings that name hush's own address.
    pub async fn start_bound(config: Config, bound: impl FnOnce(&mut Config, &str)) -> TestApp {
        init_logging();
        let admin_key = hush::create_api_key(&config, "test-admin", &["admin"])
            .await
            .expect("creating the admin key");
        let mut seen = None;
        let (base_url, shutdown, task) = serve_bound(config, |c, base| {
            bound(c, base);
            seen = Some(c.clone());
        })
        .await;
        let config = seen.expect("the config was adjusted");
        let app = TestApp {
            base_url,
            client: http_client(),
            admin_key,
            redis_url: config.redis_url.clone(),
            prefix: config.redis_prefix.clone(),
            config,
            shutdown,
            task: Some(task),
        };
        app.wait_healthy().await;
        app
    }

    /// hush with this config and an admin key made beforehand, for a hush that cannot reach
    /// its Redis (the key was made through a config that could).
    pub async fn start_as(config: Config, admin_key: String) -> TestApp {
        init_logging();
        let (base_url, shutdown, task) = serve(config.clone()).await;
        let app = TestApp {
            base_url,
            client: http_client(),
            admin_key,
            redis_url: config.redis_url.clone(),
            prefix: config.redis_prefix.clone(),
            config,
            shutdown,
            task: Some(task),
        };
        app.wait_healthy().await;
        app
    }

    /// A second hush instance on the same Redis, prefix and secrets (a second replica).
    pub async fn peer(&self) -> TestApp {
        let (base_url, shutdown, task) = serve(self.config.clone()).await;
        let app = TestApp {
            base_url,
            client: http_client(),
            admin_key: self.admin_key.clone(),
            config: self.config.clone(),
            shutdown,
            redis_url: self.redis_url.clone(),
            prefix: self.prefix.clone(),
            task: Some(task),
        };
        app.wait_healthy().await;
        app
    }

    /// Stops the server (as on SIGTERM), waits for it to finish, and starts a new one with the
    /// same config. The base URL changes.
    pub async fn restart(&mut self) {
        self.stop().await;
        let (base_url, shutdown, task) = serve(self.config.clone()).await;
        self.base_url = base_url;
        self.shutdown = shutdown;
        self.task = Some(task);
        self.wait_healthy().await;
    }

    /// Cancels the shutdown token and waits for `hush::run` to return `Ok`.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let res = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("hush did not stop within 10 s of the shutdown signal")
                .expect("the server task panicked");
            res.expect("hush::run returned an error on shutdown");
        }
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/healthz", self.base_url))
                .send()
                .await
                && r.status().is_success()
            {
                return;
            }
            if let Some(t) = &self.task
                && t.is_finished()
            {
                panic!("hush::run exited during start-up");
            }
            assert!(Instant::now() < deadline, "hush never answered /healthz");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A new API key with these scopes.
    pub async fn key(&self, scopes: &[&str]) -> String {
        let n = PREFIX_COUNTER.fetch_add(1, Ordering::SeqCst);
        hush::create_api_key(&self.config, &format!("key{n}"), scopes)
            .await
            .expect("creating an API key")
    }

    // --- raw HTTP -----------------------------------------------------------------------------

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let r = req.send().await.expect("HTTP request failed");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("reading the response body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            json,
        }
    }

    /// `method path` with `key` (none: no Authorization header) and an optional JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut req = self.client.request(method, self.url(path));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        self.send(req).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, Some(&self.admin_key), None)
            .await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::POST, path, Some(&self.admin_key), Some(body))
            .await
    }
    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::PUT, path, Some(&self.admin_key), Some(body))
            .await
    }
    pub async fn patch(&self, path: &str, body: &Value) -> Resp {
        self.call(Method::PATCH, path, Some(&self.admin_key), Some(body))
            .await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, Some(&self.admin_key), None)
            .await
    }

    // --- API helpers --------------------------------------------------------------------------

    /// `PUT /v1/pools/{name}` with this body.
    /// The pool's current signing secret for callbacks, `whsec_...`.
    pub async fn callback_secret(&self, pool: &str) -> String {
        let body = self
            .get(&format!("/v1/pools/{pool}/callback-secret"))
            .await
            .expect(200);
        let secret = body["secret"].as_str().expect("a `secret`").to_string();
        assert!(secret.starts_with("whsec_"), "{body}");
        secret
    }

    pub async fn put_pool(&self, name: &str, body: Value) -> Resp {
        self.put(&format!("/v1/pools/{name}"), &body).await
    }

    /// `POST /v1/pools/{name}/numbers` with these numbers (voice and sms).
    pub async fn add_numbers(&self, pool: &str, numbers: &[String]) -> Resp {
        let list: Vec<Value> = numbers.iter().map(|n| json!({ "number": n })).collect();
        self.post(
            &format!("/v1/pools/{pool}/numbers"),
            &json!({ "numbers": list }),
        )
        .await
    }

    /// A pool with this policy and these numbers, all of which must be added.
    pub async fn pool(&self, name: &str, policy: Value, numbers: &[String]) {
        let r = self.put_pool(name, policy).await;
        assert!(
            r.status == 201 || r.status == 200,
            "PUT pool {name}: {} {}",
            r.status,
            r.text
        );
        let r = self.add_numbers(name, numbers).await;
        let body = r.expect(200);
        assert_eq!(
            body["added"].as_array().map(Vec::len),
            Some(numbers.len()),
            "not every number was added: {}",
            r.text
        );
    }

    /// `POST /v1/sessions` with this body.
    pub async fn create_session_with(&self, body: &Value) -> Resp {
        self.post("/v1/sessions", body).await
    }

    /// `POST /v1/sessions` between `a` and `b` on `pool`, optional TTL.
    pub async fn create_session(&self, pool: &str, a: &str, b: &str, ttl: Option<u64>) -> Resp {
        let mut body = json!({
            "pool": pool,
            "participants": [{ "number": a }, { "number": b }],
        });
        if let Some(ttl) = ttl {
            body["ttl_secs"] = json!(ttl);
        }
        self.create_session_with(&body).await
    }

    /// A session that must be created (201); returns its JSON.
    pub async fn open_session(&self, pool: &str, a: &str, b: &str, ttl: Option<u64>) -> Value {
        self.create_session(pool, a, b, ttl).await.expect(201)
    }

    pub async fn get_session(&self, id: &str) -> Resp {
        self.get(&format!("/v1/sessions/{id}")).await
    }

    /// `GET /v1/sessions/{id}/interactions`: the session's `interactions` array.
    pub async fn interactions(&self, session_id: &str) -> Vec<Value> {
        self.get(&format!("/v1/sessions/{session_id}/interactions"))
            .await
            .expect(200)["interactions"]
            .as_array()
            .expect("an `interactions` array")
            .clone()
    }

    /// A pool `name` of the one `number` with `policy` (which brings its own
    /// `out_of_session_message`), and a direct session between participants 0 and 1 on it,
    /// which leaves participant 0 no number free: (the proxy number, the direct session).
    pub async fn exhausted_pool(&self, name: &str, policy: Value, number: &str) -> (String, Value) {
        self.pool(name, policy, &[number.to_string()]).await;
        let direct = self
            .open_session(name, &participant(0), &participant(1), None)
            .await;
        assert_eq!(direct["access"], "direct", "{direct}");
        assert!(direct.get("pins").is_none(), "{direct}");
        (direct["proxy_number"].as_str().unwrap().to_string(), direct)
    }

    pub async fn close_session(&self, id: &str) -> Resp {
        self.delete(&format!("/v1/sessions/{id}")).await
    }

    /// `POST /v1/route {from, to, kind}`.
    pub async fn route(&self, from: &str, to: &str, kind: &str) -> Resp {
        self.post(
            "/v1/route",
            &json!({ "from": from, "to": to, "kind": kind }),
        )
        .await
    }

    /// Asserts a voice call from `from` to `proxy` is connected to `other` in session `id`.
    pub async fn assert_connects(&self, from: &str, proxy: &str, other: &str, id: &str) {
        {
            let r = self.route(from, proxy, "voice").await;
            let d = r.expect(200);
            assert_eq!(
                (
                    d["action"].as_str(),
                    d["session_id"].as_str(),
                    d["caller_id"].as_str(),
                    d["to"].as_str()
                ),
                (Some("connect"), Some(id), Some(proxy), Some(other)),
                "call {from} -> {proxy} should reach {other} in {id}; got {}",
                r.text
            );
        }
    }

    /// Asserts a voice call from `from` to `proxy` gets the announcement, reaching nobody.
    pub async fn assert_announces(&self, from: &str, proxy: &str) {
        {
            for kind in ["voice", "sms"] {
                let r = self.route(from, proxy, kind).await;
                let d = r.expect(200);
                assert_eq!(
                    d["action"].as_str(),
                    Some("announce"),
                    "{kind} {from} -> {proxy} should announce; got {}",
                    r.text
                );
                assert!(
                    d["message"].is_string(),
                    "announce without message: {}",
                    r.text
                );
                assert!(
                    d.get("to").is_none(),
                    "an announce names a party: {}",
                    r.text
                );
            }
        }
    }

    // --- Redis --------------------------------------------------------------------------------

    /// A raw connection to this app's Redis.
    pub async fn redis(&self) -> hush::store::Conn {
        let target = hush::store::RedisTarget::parse(&self.redis_url).expect("a redis URL");
        let access = self.config.redis_access().expect("the config's TLS files");
        hush::store::Store::connect_to(&target, &access, &self.prefix)
            .expect("connecting to redis")
            .connection()
    }

    /// Every key under this app's prefix.
    pub async fn scan_keys(&self, pattern_after_prefix: &str) -> Vec<String> {
        let mut con = self.redis().await;
        let pattern = format!("{}:{}", self.prefix, pattern_after_prefix);
        if self.redis_url.starts_with("redis+cluster") {
            // SCAN walks one node; KEYS is sent to every primary and the answers joined.
            let mut keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut con)
                .await
                .expect("KEYS");
            keys.sort();
            return keys;
        }
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .expect("SCAN");
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// Every key under the prefix with every byte string its value holds, whatever its type.
    pub async fn dump(&self) -> Vec<(String, Vec<Vec<u8>>)> {
        let mut con = self.redis().await;
        let mut out = Vec::new();
        for key in self.scan_keys("*").await {
            let ty: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut con)
                .await
                .unwrap();
            let mut cmd = match ty.as_str() {
                "string" => redis::cmd("GET"),
                "hash" => redis::cmd("HGETALL"),
                "set" => redis::cmd("SMEMBERS"),
                "zset" => {
                    let mut c = redis::cmd("ZRANGE");
                    c.arg(&key).arg(0).arg(-1).arg("WITHSCORES");
                    out.push((key.clone(), flatten(c.query_async(&mut con).await.unwrap())));
                    continue;
                }
                "list" => {
                    let mut c = redis::cmd("LRANGE");
                    c.arg(&key).arg(0).arg(-1);
                    out.push((key.clone(), flatten(c.query_async(&mut con).await.unwrap())));
                    continue;
                }
                "stream" => {
                    let mut c = redis::cmd("XRANGE");
                    c.arg(&key).arg("-").arg("+");
                    out.push((key.clone(), flatten(c.query_async(&mut con).await.unwrap())));
                    continue;
                }
                "none" => continue, // expired between SCAN and TYPE
                other => panic!("key {key} has unexpected type {other}"),
            };
            cmd.arg(&key);
            let v: redis::Value = cmd.query_async(&mut con).await.unwrap();
            out.push((key, flatten(v)));
        }
        out
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Every string inside a Redis reply, as bytes (numbers as their decimal text).
pub fn flatten(v: redis::Value) -> Vec<Vec<u8>> {
    use redis::Value as V;
    let mut out = Vec::new();
    fn walk(v: V, out: &mut Vec<Vec<u8>>) {
        match v {
            V::Nil | V::Okay => {}
            V::Int(i) => out.push(i.to_string().into_bytes()),
            V::Double(d) => out.push(d.to_string().into_bytes()),
            V::Boolean(b) => out.push(b.to_string().into_bytes()),
            V::BulkString(b) => out.push(b),
            V::SimpleString(s) => out.push(s.into_bytes()),
            V::VerbatimString { text, .. } => out.push(text.into_bytes()),
            V::Array(items) | V::Set(items) => items.into_iter().for_each(|i| walk(i, out)),
            V::Map(pairs) => pairs.into_iter().for_each(|(k, v)| {
                walk(k, out);
                walk(v, out);
            }),
            V::Attribute { data, .. } => walk(*data, out),
            other => out.push(format!("{other:?}").into_bytes()),
        }
    }
    walk(v, &mut out);
    out
}

/// Does `needle` occur anywhere in `hay`?
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Route records, read straight from Redis
// ---------------------------------------------------------------------------------------------

/// One route: a `<proxy>=<session key>` item of a participant's entry in its `u:<bucket>`
/// hash, with what the session record says of it.
#[derive(Debug, Clone)]
pub struct RouteRecord {
    /// The participant's blind index: whose route it is.
    pub participant: String,
    pub proxy: String,
    pub session_id: String,
    pub mode: String,
    pub open_until_ms: i64,
    pub held_until_ms: i64,
    /// The other side's blind index as the session record names it (empty once erased).
    pub other: String,
}

/// Every route under the app's prefix: each participant entry's routes (`<prefix>:{...}:u:`
/// buckets, field = blind index, value = items `<proxy>=<session key>` or sticky memory),
/// joined to their session records (`s:` buckets, field = session key, value =
/// `t|m|n|c|e|co|a|b|...`; held until is `e` + `co`).
pub async fn route_records(app: &TestApp) -> Vec<RouteRecord> {
    const ALPHABET: &str = "0123456789abcdefghjkmnpqrstvwxyz";
    let mut con = app.redis().await;
    let mut out = Vec::new();
    for key in app.scan_keys("*:u:*").await {
        let tag = &key[..key.rfind(":u:").expect("a bucket key") + 1];
        let entries: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap_or_else(|e| panic!("HGETALL {key}: {e}"));
        for (idx, entry) in entries {
            for item in entry.split(',') {
                let Some((proxy, skey)) = item.split_once('=') else {
                    assert!(
                        item.split('~').count() == 3,
                        "entry {key} / {idx} has an item that is neither a route nor sticky: {item:?}"
                    );
                    continue;
                };
                let third = ALPHABET.find(&skey[2..3]).expect("a base32 session key");
                let bucket = format!("{tag}s:{}{}", &skey[..2], third / 8);
                let rec: Option<String> = redis::cmd("HGET")
                    .arg(&bucket)
                    .arg(skey)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                let Some(rec) = rec else {
                    // The reaper may have released the session since the entry was read: then
                    // the route is gone from the entry too. A route that stays without its
                    // record is what must never be.
                    let now: Option<String> = redis::cmd("HGET")
                        .arg(&key)
                        .arg(&idx)
                        .query_async(&mut con)
                        .await
                        .unwrap();
                    assert!(
                        !now.unwrap_or_default().split(',').any(|i| i == item),
                        "route {item} of {key} has no session record"
                    );
                    continue;
                };
                let f: Vec<&str> = rec.splitn(13, '|').collect();
                assert_eq!(f.len(), 13, "session record {bucket} / {skey}: {rec:?}");
                let other = if f[6] == idx { f[7] } else { f[6] };
                let open_until: i64 = f[4].parse().expect("open-until is unix ms");
                let cooloff: i64 = f[5].parse().expect("cool-off is ms");
                out.push(RouteRecord {
                    participant: idx.clone(),
                    proxy: proxy.to_string(),
                    session_id: skey.to_string(),
                    mode: f[1].to_string(),
                    open_until_ms: open_until,
                    held_until_ms: open_until + cooloff,
                    other: other.to_string(),
                });
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An RFC 3339 timestamp as unix milliseconds.
#[track_caller]
pub fn ts_ms(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not an RFC 3339 string: {v}"));
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"));
    assert_eq!(t.offset(), time::UtcOffset::UTC, "{s:?} is not UTC");
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Sleeps until the wall clock reaches `unix_ms` (no-op if it has).
pub async fn sleep_until_ms(unix_ms: i64) {
    let wait = unix_ms - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing with `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The repository root, for files such as `proto/openapi.yaml`.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------------------------
// The `hush` binary
// ---------------------------------------------------------------------------------------------

/// A `hush` command with no `HUSH_*` variables inherited from the environment running the
/// tests.
pub fn hush_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hush"));
    for (k, _) in std::env::vars() {
        if k.starts_with("HUSH_") {
            cmd.env_remove(k);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Points a `hush` command at the Redis, prefix and secrets of `config`.
pub fn with_config(cmd: &mut Command, config: &Config) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let index = b64.encode(config.index_key.as_ref().unwrap().expose());
    let data: Vec<String> = config
        .data_keys
        .iter()
        .map(|k| b64.encode(k.expose()))
        .collect();
    cmd.env("HUSH_REDIS_URL", &config.redis_url)
        .env("HUSH_REDIS_PREFIX", &config.redis_prefix)
        .env("HUSH_INDEX_KEY", index)
        .env("HUSH_DATA_KEYS", data.join(","));
}

/// Runs the `hush` CLI with `config`, whatever comes of it.
pub fn cli_output(config: &Config, args: &[&str]) -> std::process::Output {
    let mut cmd = hush_command();
    with_config(&mut cmd, config);
    cmd.args(args)
        .env("HUSH_LOG", "warn")
        .output()
        .expect("running the hush binary")
}

/// Runs the `hush` CLI with `config`; returns stdout, and fails the test when it fails.
pub fn run_cli(config: &Config, args: &[&str]) -> String {
    let out = cli_output(config, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "hush {args:?} failed ({}): stdout {stdout} stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

impl TestApp {
    /// Runs the `hush` CLI against this app's Redis, prefix and secrets.
    pub fn cli(&self, args: &[&str]) -> String {
        run_cli(&self.config, args)
    }
}

/// A child process whose stdout and stderr lines are collected as they come; interrupted
/// (then killed, if it must be) when dropped.
pub struct Proc {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the hush binary");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let streams: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for stream in streams {
            let lines = lines.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Proc { child, lines }
    }

    /// Everything printed so far, stdout and stderr interleaved by line.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Sends a signal by name (`INT`, `TERM`).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit, failing the test after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                // Let the reader threads drain what is left in the pipes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process still running after {limit:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until some output line satisfies `find`, failing if the process exits first.
    pub async fn wait_line<T>(
        &mut self,
        limit: Duration,
        what: &str,
        find: impl Fn(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().find_map(|l| find(l)) {
                return v;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "exited with {status} before printing {what}:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "never printed {what}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal("INT");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `GET base/healthz` answers 200.
pub async fn wait_healthz(base: &str, proc: &mut Proc) {
    let client = http_client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            return;
        }
        if let Some(status) = proc.exited() {
            panic!("exited with {status} before serving:\n{}", proc.output());
        }
        assert!(
            Instant::now() < deadline,
            "never answered /healthz:\n{}",
            proc.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One request to a server that is not a [`TestApp`].
pub async fn call_at(
    base: &str,
    method: Method,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> Resp {
    let client = http_client();
    let mut req = client
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(body) = body {
        req = req.json(body);
    }
    let r = req.send().await.expect("HTTP request failed");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("reading the response body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        text,
        json,
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1, for what a well-behaved client library never sends
// ---------------------------------------------------------------------------------------------

impl TestApp {
    /// The `host:port` the server listens on.
    pub fn addr(&self) -> String {
        self.base_url.trim_start_matches("http://").to_string()
    }

    /// A fresh TCP connection to the server.
    pub async fn connect(&self) -> tokio::net::TcpStream {
        tokio::net::TcpStream::connect(self.addr()).await.unwrap()
    }

    /// Sends `request` as is on a fresh connection and reads one response. The request is
    /// written from its own task, so a server that answers before reading it all is seen
    /// answering.
    pub async fn raw(&self, request: Vec<u8>) -> Resp {
        use tokio::io::AsyncWriteExt as _;
        let (mut rd, mut wr) = self.connect().await.into_split();
        let writer = tokio::spawn(async move {
            // The server may close before reading everything; that is its right.
            let _ = wr.write_all(&request).await;
            wr
        });
        let resp = read_response(&mut rd)
            .await
            .expect("the server closed without an answer");
        writer.abort();
        resp
    }
}

/// Reads one HTTP/1.1 response (its body framed by `content-length`, else up to EOF), or
/// `None` when the connection closes or fails before a status line arrives. Fails the test
/// after [`HTTP_TIMEOUT`].
pub async fn read_response(rd: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<Resp> {
    tokio::time::timeout(HTTP_TIMEOUT, read_response_inner(rd))
        .await
        .expect("no response within the HTTP timeout")
}

async fn read_response_inner(rd: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<Resp> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        headers.append(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
            value.trim().parse().ok()?,
        );
    }
    let mut body = buf[head_end..].to_vec();
    let length = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    loop {
        if length.is_some_and(|n| body.len() >= n) {
            break;
        }
        let mut chunk = [0u8; 4096];
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    Some(Resp {
        status,
        headers,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    })
}
