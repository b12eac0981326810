//! A stand-in for the app's callback and intercept endpoints: it records every request hush
//! makes, checks each signature with its own Standard Webhooks verifier (written here again, not
//! borrowed from hush, so a bug in hush's signer cannot also hide in the check), and answers as a
//! test tells it to: fail, throttle, stall, refuse, or go away entirely.

// Each test uses the few controls it needs; a control no test calls today is not dead code.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The path hush is pointed at for pre-connect decisions; everything else is an event delivery.
pub const INTERCEPT_PATH: &str = "/intercept";

/// How far `webhook-timestamp` may be from the receiver's clock: the spec's recommendation and
/// what the reference libraries enforce. A retry carrying its first attempt's timestamp would
/// fail this after five minutes, just as it would at a real app.
const TOLERANCE_SECS: u64 = 5 * 60;

/// One request hush made, whatever the receiver answered.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// `webhook-id` (empty if the header was missing).
    pub id: String,
    /// `webhook-timestamp` in Unix seconds (0 if missing or not a number).
    pub timestamp: i64,
    /// The body's `type` (empty if the body is not an object with a string `type`).
    pub event_type: String,
    /// The body as JSON (`Null` if it did not parse).
    pub body: Value,
    /// The body exactly as received, which is what the signature covers.
    pub raw: Vec<u8>,
    /// The raw `webhook-signature` header (empty if missing).
    pub signature: String,
    /// Indexes into the secrets given to [`Receiver::set_secrets`] that verify this request;
    /// during a rotation both the old and the new index should be here.
    pub verified_with: Vec<usize>,
    /// The request path, e.g. `/events` or [`INTERCEPT_PATH`].
    pub path: String,
    /// The status the receiver answered (or was about to, if hush gave up during a delay).
    pub status: u16,
    pub received_at: Instant,
}

impl Delivery {
    /// Whether at least one configured secret verifies this request.
    pub fn verified(&self) -> bool {
        !self.verified_with.is_empty()
    }

    /// The event's `data` object (`Null` if absent).
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
}

/// A fixed answer: status, at most one extra header, optional body.
#[derive(Clone, Debug)]
struct Canned {
    status: u16,
    header: Option<(String, String)>,
    body: Option<String>,
}

struct Controls {
    secrets: Vec<String>,
    reject_unverified: bool,
    fail_next: usize,
    fail_status: u16,
    respond_with: Option<Canned>,
    delay: Duration,
    intercept_status: u16,
    intercept_body: Option<Value>,
}

struct Shared {
    controls: Mutex<Controls>,
    deliveries: Mutex<Vec<Delivery>>,
    /// Bumped after every recorded request, so waiters wake without polling.
    recorded: watch::Sender<usize>,
    /// While true, every request is recorded and then held unanswered.
    hold: watch::Sender<bool>,
    /// Requests being answered now (held, delayed or not), and the most there ever were.
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

/// Counts a request as in flight until its answer is sent or the client gives up on it.
struct Answering(Arc<Shared>);

impl Answering {
    fn new(shared: &Arc<Shared>) -> Answering {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.most_in_flight.fetch_max(now, Ordering::SeqCst);
        Answering(shared.clone())
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// A callback receiver served on `127.0.0.1`, on one port for its whole life (also across
/// [`Receiver::stop`] and [`Receiver::restart`]), so the URL given to hush stays valid.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

impl Receiver {
    /// Binds a free port and starts answering: 200 with no body for events, 200
    /// `{"action":"allow"}` on [`INTERCEPT_PATH`], 401 for a request no configured secret
    /// verifies (once secrets are set).
    pub async fn start() -> Receiver {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind the callback receiver");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            controls: Mutex::new(Controls {
                secrets: Vec::new(),
                reject_unverified: true,
                fail_next: 0,
                fail_status: 500,
                respond_with: None,
                delay: Duration::ZERO,
                intercept_status: 200,
                intercept_body: Some(serde_json::json!({"action": "allow"})),
            }),
            deliveries: Mutex::new(Vec::new()),
            recorded: watch::channel(0).0,
            hold: watch::channel(false).0,
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        });
        let receiver = Receiver {
            addr,
            shared,
            running: Mutex::new(None),
        };
        receiver.serve(listener);
        receiver
    }

    /// `http://127.0.0.1:<port><path>`; the leading `/` is optional.
    pub fn url(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("http://{}{slash}{path}", self.addr)
    }

    /// The URL to configure as a pool's `intercept_url`.
    pub fn intercept_url(&self) -> String {
        self.url(INTERCEPT_PATH)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `whsec_` secrets a request may be signed with; it is verified if any one verifies.
    /// Indexes in [`Delivery::verified_with`] refer to this list.
    pub fn set_secrets(&self, secrets: Vec<String>) {
        self.controls().secrets = secrets;
    }

    /// Whether a request no secret verifies is answered 401, as a real app would (the default).
    /// Has no effect until secrets are set: with none, nothing can verify and all is accepted.
    pub fn set_reject_unverified(&self, reject: bool) {
        self.controls().reject_unverified = reject;
    }

    /// Answers `status` to the next `n` requests (any path), then goes back to normal.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut controls = self.controls();
        controls.fail_next = n;
        controls.fail_status = status;
    }

    /// Answers every request this way until [`Receiver::respond_normally`], e.g. `(410, None,
    /// None)`, `(429, Some(("retry-after", "2")), None)`, `(503, None, Some("down"))`.
    pub fn respond_with(&self, status: u16, header: Option<(&str, &str)>, body: Option<&str>) {
        self.controls().respond_with = Some(Canned {
            status,
            header: header.map(|(n, v)| (n.to_string(), v.to_string())),
            body: body.map(str::to_string),
        });
    }

    /// Ends [`Receiver::respond_with`] mode.
    pub fn respond_normally(&self) {
        self.controls().respond_with = None;
    }

    /// Waits this long before answering each request; `Duration::ZERO` turns it off. The
    /// request is recorded on arrival, so a sender that times out still shows as an attempt.
    pub fn delay(&self, delay: Duration) {
        self.controls().delay = delay;
    }

    /// Accepts every request and answers none, as a hung app does, until
    /// [`Receiver::answer_again`]. Requests are recorded on arrival.
    pub fn hang(&self) {
        self.shared.hold.send_replace(true);
    }

    /// Ends [`Receiver::hang`]: the held requests are answered now, as they would have been.
    pub fn answer_again(&self) {
        self.shared.hold.send_replace(false);
    }

    /// Requests being answered (or held) right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that were ever being answered (or held) at once.
    pub fn most_in_flight(&self) -> usize {
        self.shared.most_in_flight.load(Ordering::SeqCst)
    }

    /// What [`INTERCEPT_PATH`] answers: e.g. `(200, Some(json!({"action":"allow"})))`,
    /// `(200, Some(json!({"action":"block","message":"Trip over"})))`, `(403, None)`,
    /// `(204, None)`.
    pub fn intercept_answer(&self, status: u16, body: Option<Value>) {
        let mut controls = self.controls();
        controls.intercept_status = status;
        controls.intercept_body = body;
    }

    /// Closes the port, as if the app were down: new connections are refused and idle
    /// keep-alive connections are closed. A request already being answered is finished.
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some(Running { stop, mut task }) = running {
            stop.cancel();
            // The listener is dropped as soon as the signal lands; waiting is only so that a
            // slow in-flight answer does not outlive the test's idea of "stopped" for long.
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }

    /// Serves again on the same port after [`Receiver::stop`]; does nothing if running.
    pub async fn restart(&self) {
        if self.running.lock().unwrap().is_some() {
            return;
        }
        // Connections from the previous life may still hold the port briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind the callback receiver on {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Everything recorded so far, oldest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.deliveries.lock().unwrap().clone()
    }

    /// The recorded requests whose body `type` is `event_type`.
    pub fn of_type(&self, event_type: &str) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| d.event_type == event_type)
            .collect()
    }

    /// Forgets what was recorded (controls are kept).
    pub fn clear(&self) {
        self.shared.deliveries.lock().unwrap().clear();
    }

    /// Waits until at least `count` requests are recorded and returns them all; panics with
    /// what did arrive if `timeout` passes first.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Delivery> {
        self.wait_until(timeout, &format!("{count} requests"), |all| {
            all.len() >= count
        })
        .await
    }

    /// Waits until at least `count` requests of `event_type` are recorded and returns those.
    pub async fn wait_for_type(
        &self,
        event_type: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<Delivery> {
        self.wait_until(timeout, &format!("{count} {event_type}"), |all| {
            all.iter().filter(|d| d.event_type == event_type).count() >= count
        })
        .await;
        self.of_type(event_type)
    }

    async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let mut changes = self.shared.recorded.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Marking the current value seen before reading means a request recorded between
            // the read and the wait still wakes us.
            changes.borrow_and_update();
            let all = self.deliveries();
            if done(&all) {
                return all;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                let seen: Vec<_> = all
                    .iter()
                    .map(|d| format!("{} {} -> {}", d.path, d.event_type, d.status))
                    .collect();
                panic!("waited {timeout:?} for {what}; received {seen:#?}");
            }
        }
    }

    fn controls(&self) -> std::sync::MutexGuard<'_, Controls> {
        self.shared.controls.lock().unwrap()
    }

    fn serve(&self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let app = Router::new()
            .fallback(handle)
            .with_state(self.shared.clone());
        let signal = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await;
        });
        *self.running.lock().unwrap() = Some(Running { stop, task });
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(running) = self.running.lock().unwrap().take() {
            running.stop.cancel();
        }
    }
}

/// Binds with `SO_REUSEADDR`, so a restart can take the port back while connections from
/// before the stop linger in `TIME_WAIT`.
async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    // Dropped with the handler when hush gives up and closes the connection.
    let _answering = Answering::new(&shared);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let id = header("webhook-id");
    let timestamp_text = header("webhook-timestamp");
    let signature = header("webhook-signature");
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let event_type = body["type"].as_str().unwrap_or_default().to_string();
    let path = uri.path().to_string();

    let (answer, delay) = {
        let mut controls = shared.controls.lock().unwrap();
        let verified_with: Vec<usize> = controls
            .secrets
            .iter()
            .enumerate()
            .filter(|(_, secret)| {
                standard_webhooks_verify(secret, &id, &timestamp_text, &raw, &signature, unix_now())
            })
            .map(|(i, _)| i)
            .collect();
        let answer = decide(&mut controls, &path, !verified_with.is_empty());
        let delivery = Delivery {
            id,
            timestamp: timestamp_text.parse().unwrap_or(0),
            event_type,
            body,
            raw: raw.to_vec(),
            signature,
            verified_with,
            path,
            status: answer.status,
            received_at: Instant::now(),
        };
        shared.deliveries.lock().unwrap().push(delivery);
        (answer, controls.delay)
    };
    shared.recorded.send_modify(|n| *n += 1);

    let mut hold = shared.hold.subscribe();
    let _ = hold.wait_for(|held| !*held).await;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    render(answer)
}

/// Picks the answer: injected failures come first (they stand for the network or a proxy in
/// front of the app), then the app's own signature check, then the normal answer.
fn decide(controls: &mut Controls, path: &str, verified: bool) -> Canned {
    if controls.fail_next > 0 {
        controls.fail_next -= 1;
        return Canned {
            status: controls.fail_status,
            header: None,
            body: None,
        };
    }
    if let Some(canned) = &controls.respond_with {
        return canned.clone();
    }
    if controls.reject_unverified && !controls.secrets.is_empty() && !verified {
        return Canned {
            status: 401,
            header: None,
            body: Some("signature did not verify".into()),
        };
    }
    if path == INTERCEPT_PATH {
        return Canned {
            status: controls.intercept_status,
            header: controls
                .intercept_body
                .as_ref()
                .map(|_| ("content-type".into(), "application/json".into())),
            body: controls.intercept_body.as_ref().map(Value::to_string),
        };
    }
    Canned {
        status: 200,
        header: None,
        body: None,
    }
}

fn render(answer: Canned) -> Response {
    let status = StatusCode::from_u16(answer.status).expect("a valid status code");
    let mut response = (status, answer.body.unwrap_or_default()).into_response();
    if let Some((name, value)) = answer.header {
        response.headers_mut().insert(
            HeaderName::try_from(name).expect("a valid header name"),
            HeaderValue::try_from(value).expect("a valid header value"),
        );
    }
    response
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The check an app's Standard Webhooks library makes, from the spec
/// (<https://www.standardwebhooks.com/>): the key is the base64 after `whsec_`; the signed text
/// is `{id}.{timestamp}.{body}`; the header holds space-separated `version,signature` entries and
/// one `v1` entry must equal the base64 HMAC-SHA256. Strict on purpose: padded standard base64
/// only, the timestamp as sent (not re-formatted), and within five minutes of now.
fn standard_webhooks_verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signature_header: &str,
    now: i64,
) -> bool {
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|b64| STANDARD.decode(b64).ok())
    else {
        return false;
    };
    let Ok(sent_at) = timestamp.parse::<i64>() else {
        return false;
    };
    if id.is_empty() || sent_at.abs_diff(now) > TOLERANCE_SECS {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    signature_header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .any(|(version, sig)| version == "v1" && sig == expected)
}

/// A `webhook-signature` value made with the receiver's own implementation, for tests that play
/// the sender (only the receiver's self-test does).
fn test_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn random_secret() -> String {
    format!("whsec_{}", STANDARD.encode(rand::random::<[u8; 24]>()))
}

#[test]
fn verifier_accepts_the_spec_vector_and_nothing_near_it() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    let ts = "1614265330";
    let body = br#"{"test": 2432232314}"#;
    let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    let now = 1614265330;
    assert!(standard_webhooks_verify(secret, id, ts, body, sig, now));
    assert_eq!(test_signature(secret, id, now, body), sig);
    let both = format!("v1,bm90IGl0 {sig}");
    assert!(standard_webhooks_verify(secret, id, ts, body, &both, now));
    assert!(!standard_webhooks_verify(secret, id, ts, b"{}", sig, now));
    assert!(!standard_webhooks_verify(
        secret, "msg_x", ts, body, sig, now
    ));
    assert!(!standard_webhooks_verify(secret, id, ts, body, "v2,x", now));
    assert!(!standard_webhooks_verify(
        secret,
        id,
        ts,
        body,
        sig.trim_end_matches('='),
        now
    ));
    assert!(!standard_webhooks_verify(
        secret,
        id,
        ts,
        body,
        sig,
        now + 301
    ));
    assert!(!standard_webhooks_verify(
        &random_secret(),
        id,
        ts,
        body,
        sig,
        now
    ));
}

#[tokio::test]
async fn records_signed_and_unsigned_requests_and_follows_its_controls() {
    let receiver = Receiver::start().await;
    let old = random_secret();
    let new = random_secret();
    receiver.set_secrets(vec![old.clone(), new.clone()]);
    let client = reqwest::Client::new();
    let post = |path: &str, id: &str, signature: String, body: &Value| {
        client
            .post(receiver.url(path))
            .header("webhook-id", id)
            .header("webhook-timestamp", unix_now().to_string())
            .header("webhook-signature", signature)
            .body(body.to_string())
            .send()
    };
    let event = serde_json::json!({"type": "session.created", "timestamp": "now", "data": {}});
    let raw = event.to_string();
    let sign = |secret: &str, id: &str| test_signature(secret, id, unix_now(), raw.as_bytes());

    // Signed with both secrets, as during a rotation.
    let both = format!("{} {}", sign(&new, "msg_1"), sign(&old, "msg_1"));
    let r = post("events", "msg_1", both, &event).await.unwrap();
    assert_eq!(r.status(), 200);
    // Signed with a secret the receiver does not hold.
    let r = post("events", "msg_2", sign(&random_secret(), "msg_2"), &event)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    receiver.fail_next(1, 503);
    let r = post("events", "msg_3", sign(&old, "msg_3"), &event)
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    receiver.respond_with(429, Some(("retry-after", "7")), None);
    let r = post("events", "msg_3", sign(&old, "msg_3"), &event)
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    receiver.respond_normally();

    receiver.intercept_answer(
        200,
        Some(serde_json::json!({"action": "block", "message": "Trip over"})),
    );
    let r = post(INTERCEPT_PATH, "msg_4", sign(&new, "msg_4"), &event)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["action"], "block");

    let all = receiver.wait_for(5, Duration::from_secs(5)).await;
    let summary: Vec<_> = all
        .iter()
        .map(|d| {
            (
                d.id.as_str(),
                d.path.as_str(),
                d.status,
                d.verified_with.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("msg_1", "/events", 200, vec![0, 1]),
            ("msg_2", "/events", 401, vec![]),
            ("msg_3", "/events", 503, vec![0]),
            ("msg_3", "/events", 429, vec![0]),
            ("msg_4", INTERCEPT_PATH, 200, vec![1]),
        ]
    );
    assert_eq!(all[0].body, event);
    assert_eq!(all[0].raw, raw.as_bytes());
    assert_eq!(receiver.of_type("session.created").len(), 5);

    // A stalled answer still counts as an attempt, even when the sender gives up first.
    receiver.delay(Duration::from_millis(500));
    let stalled = client
        .post(receiver.url("events"))
        .timeout(Duration::from_millis(100))
        .body(raw.clone())
        .send()
        .await;
    assert!(stalled.unwrap_err().is_timeout());
    receiver.delay(Duration::ZERO);
    assert_eq!(receiver.wait_for(6, Duration::from_secs(5)).await.len(), 6);

    // Down means connection refused on the same URL; back up means answered again.
    receiver.stop().await;
    assert!(
        post("events", "msg_5", sign(&old, "msg_5"), &event)
            .await
            .is_err()
    );
    receiver.restart().await;
    let r = post("events", "msg_6", sign(&old, "msg_6"), &event)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let last = receiver
        .wait_for_type("session.created", 7, Duration::from_secs(5))
        .await;
    assert_eq!(last[6].id, "msg_6");
}
