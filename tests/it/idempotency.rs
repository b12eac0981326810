//! Idempotent creates keep their promise around failures: one `Idempotency-Key` and body make
//! at most one session, whether hush dies between the create and recording its answer, the
//! answer from Redis is lost on the way back, or many retries race; a retry of a request that
//! is no longer running gets its answer within seconds, marked `Idempotent-Replayed: true`;
//! and a create that made nothing leaves the key free for a correct retry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hush::broker::{Broker, IdemStart, NewSession, Once, Participant};
use hush::domain::{E164, Mode, PoolName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// The name `TestApp` gives its admin key: idempotency keys belong to the key that sent them.
const ADMIN: &str = "test-admin";

fn create_body(pool: &str, a: &str, b: &str) -> Value {
    json!({ "pool": pool, "participants": [{ "number": a }, { "number": b }] })
}

/// `POST /v1/sessions` with this key and body, as the admin.
pub(crate) async fn send(app: &TestApp, key: &str, body: &Value) -> Resp {
    app.send(
        app.client
            .post(app.url("/v1/sessions"))
            .bearer_auth(&app.admin_key)
            .header("Idempotency-Key", key)
            .json(body),
    )
    .await
}

/// Retries until the answer is something other than "still running", which must come as
/// documented (409 `idempotency_conflict` with `Retry-After`).
async fn retry_until_answered(app: &TestApp, key: &str, body: &Value) -> Resp {
    eventually(
        Duration::from_secs(15),
        "a retry answered rather than told to wait",
        || async {
            let r = send(app, key, body).await;
            if r.status != 409 || r.code() == "pool_exhausted" {
                return Some(r);
            }
            assert_running(&r);
            None
        },
    )
    .await
}

#[track_caller]
fn assert_running(r: &Resp) {
    r.expect_problem(409, "idempotency_conflict");
    assert!(
        r.header("retry-after")
            .is_some_and(|s| s.trim().parse::<u64>().is_ok()),
        "a request still running is answered with Retry-After: {:?}",
        r.headers
    );
}

/// The open sessions of `number`, through the API.
async fn open_sessions_of(app: &TestApp, number: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/v1/sessions?participant={}", path_number(number)))
        .await;
    r.expect(200)["sessions"].as_array().unwrap().clone()
}

fn new_session(pool: &str, a: &str, b: &str) -> NewSession {
    let p = |n: &str| Participant {
        number: E164::parse(n).unwrap(),
        label: None,
    };
    NewSession {
        pool: PoolName::parse(pool).unwrap(),
        participants: [p(a), p(b)],
        ttl_secs: None,
        mode: Mode::VoiceSms,
        metadata: Default::default(),
        choices: Default::default(),
    }
}

/// What a hush killed right after the create script does: it began the request and ran the
/// create, and never recorded the response nor renewed its lease. Returns the session it made.
async fn create_then_die(app: &TestApp, key: &str, body: &Value, req: NewSession) -> String {
    let broker: Broker = hush::build_broker(&app.config).unwrap();
    let raw = serde_json::to_vec(body).unwrap();
    let ticket = match broker.idem_begin(ADMIN, key, &raw).await.unwrap() {
        IdemStart::Run(t) => t,
        other => panic!("a first request must run, got {other:?}"),
    };
    match broker.create_session_once(req, &ticket).await.unwrap() {
        Once::Created(view) => view.id,
        other => panic!("the first create must make the session, got {other:?}"),
    }
}

#[track_caller]
fn assert_replayed(r: &Resp, replayed: bool) {
    assert_eq!(
        r.header("idempotent-replayed").as_deref(),
        replayed.then_some("true"),
        "Idempotent-Replayed on a {} answer: {:?}",
        if replayed { "replayed" } else { "first" },
        r.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_died_before_answering_is_found_by_its_retry() {
    let app = TestApp::start().await;
    app.pool("crash", json!({}), &proxies(3)).await;
    let (a, b) = (participant(0), participant(1));
    let body = create_body("crash", &a, &b);
    let made = create_then_die(&app, "ride-1", &body, new_session("crash", &a, &b)).await;

    let r = retry_until_answered(&app, "ride-1", &body).await;
    let s = r.expect(201);
    assert_eq!(
        s["id"],
        json!(made),
        "the retry must answer the session already made"
    );
    assert_eq!(s["status"], "open", "{s}");
    assert_replayed(&r, true);
    let open = open_sessions_of(&app, &a).await;
    assert_eq!(open.len(), 1, "one logical create made {open:?}");

    // The rebuilt answer is stored: later retries replay it at once, unchanged.
    let again = send(&app, "ride-1", &body).await;
    assert_eq!(again.expect(201), s);
    assert_replayed(&again, true);
}

/// A TCP hop between hush and Redis that, once armed, cuts the connection at the reply to a
/// successful session create: Redis ran the script, hush never hears back.
struct LossyLink {
    url: String,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

/// The start of the create script's success reply: `{1, proxy number, level, due, held}`.
const CREATED_REPLY: &[u8] = b"*5\r\n:1\r\n$12\r\n+1201";

impl LossyLink {
    async fn start(upstream: String) -> LossyLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (arm, cut) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.unwrap();
                tokio::spawn(Self::pipe(client, server, arm.clone(), cut.clone()));
            }
        });
        LossyLink { url, armed, cuts }
    }

    async fn pipe(
        mut client: TcpStream,
        mut server: TcpStream,
        armed: Arc<AtomicBool>,
        cuts: Arc<AtomicUsize>,
    ) {
        let (mut up, mut down) = ([0u8; 16384], [0u8; 16384]);
        loop {
            tokio::select! {
                n = client.read(&mut up) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if server.write_all(&up[..n]).await.is_err() { return },
                },
                n = server.read(&mut down) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let chunk = &down[..n];
                        if contains_bytes(chunk, CREATED_REPLY)
                            && armed.swap(false, Ordering::SeqCst)
                        {
                            // Both sockets close here: the reply is lost with the connection.
                            cuts.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        if client.write_all(chunk).await.is_err() { return }
                    }
                },
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_reply_was_lost_is_found_by_its_retry() {
    let link = LossyLink::start(format!("127.0.0.1:{}", shared_redis().port)).await;
    let app = TestApp::start_on(fresh_config(&link.url)).await;
    app.pool("lossy", json!({}), &proxies(3)).await;
    let (a, b) = (participant(0), participant(1));
    let body = create_body("lossy", &a, &b);

    link.armed.store(true, Ordering::SeqCst);
    let lost = send(&app, "ride-2", &body).await;
    assert_eq!(link.cuts.load(Ordering::SeqCst), 1, "the reply was not cut");
    assert!(
        lost.status >= 500,
        "a create whose reply was lost cannot know its outcome: {} {}",
        lost.status,
        lost.text
    );
    assert_problem_shape(&lost);
    // Redis did run it.
    let open = open_sessions_of(&app, &a).await;
    assert_eq!(open.len(), 1, "{open:?}");

    let r = retry_until_answered(&app, "ride-2", &body).await;
    let s = r.expect(201);
    assert_eq!(
        s["id"], open[0]["id"],
        "the retry must answer the session Redis made"
    );
    assert_replayed(&r, true);
    let open = open_sessions_of(&app, &a).await;
    assert_eq!(open.len(), 1, "one logical create made {open:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_retries_make_one_session() {
    let app = TestApp::start().await;
    let peer = app.peer().await;
    app.pool("race", json!({}), &proxies(5)).await;

    // Fresh keys, and a key whose first request died: its retries race to take it over.
    let (a, b) = (participant(0), participant(1));
    let (c, d) = (participant(2), participant(3));
    let fresh = create_body("race", &a, &b);
    let orphan = create_body("race", &c, &d);
    let made = create_then_die(&app, "orphan", &orphan, new_session("race", &c, &d)).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let via = if i % 2 == 0 { &app } else { &peer };
        let (key, body) = if i % 3 == 0 {
            ("orphan", &orphan)
        } else {
            ("click", &fresh)
        };
        let req = via
            .client
            .post(via.url("/v1/sessions"))
            .bearer_auth(&app.admin_key)
            .header("Idempotency-Key", key)
            .json(body);
        let key = key.to_string();
        tasks.spawn(async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let retry_after = r.headers().get("retry-after").is_some();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (
                key,
                status,
                retry_after,
                replayed,
                r.json::<Value>().await.unwrap(),
            )
        });
    }
    let mut ids: std::collections::HashMap<String, Vec<(Value, bool)>> = Default::default();
    while let Some(res) = tasks.join_next().await {
        let (key, status, retry_after, replayed, body) = res.unwrap();
        match status {
            201 => ids
                .entry(key)
                .or_default()
                .push((body["id"].clone(), replayed)),
            409 => {
                assert_eq!(body["code"], "idempotency_conflict", "{body}");
                assert!(retry_after, "a running conflict without Retry-After");
            }
            _ => panic!("a retry got {status}: {body}"),
        }
    }
    let clicks = &ids["click"];
    assert!(
        clicks.iter().all(|(id, _)| id == &clicks[0].0),
        "{clicks:?}"
    );
    assert_eq!(
        clicks.iter().filter(|(_, replayed)| !replayed).count(),
        1,
        "exactly one answer is the first, the rest are replays: {clicks:?}"
    );
    // The orphan's lease may not have run out yet: its retries are then all told to wait.
    for (id, replayed) in ids.get("orphan").into_iter().flatten() {
        assert_eq!(id, &json!(made));
        assert!(
            replayed,
            "the orphan's session was made by the request that died"
        );
    }
    let r = retry_until_answered(&app, "orphan", &orphan).await;
    assert_eq!(r.expect(201)["id"], json!(made));

    for n in [&a, &c] {
        let open = open_sessions_of(&app, n).await;
        assert_eq!(open.len(), 1, "racing retries made {open:?}");
    }
}

#[tokio::test]
async fn replays_are_marked_and_another_body_is_refused() {
    let app = TestApp::start().await;
    app.pool("mark", json!({}), &proxies(3)).await;
    let (a, b) = (participant(0), participant(1));
    let body = create_body("mark", &a, &b);
    let first = send(&app, "order-9", &body).await;
    let s = first.expect(201);
    assert_replayed(&first, false);
    let again = send(&app, "order-9", &body).await;
    assert_eq!(
        again.expect(201),
        s,
        "a replay answers what the first request did"
    );
    assert_replayed(&again, true);

    let other = create_body("mark", &a, &participant(2));
    let r = send(&app, "order-9", &other).await;
    r.expect_problem(422, "idempotency_conflict");
    assert!(r.header("idempotent-replayed").is_none());
    assert_eq!(open_sessions_of(&app, &a).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_made_nothing_leaves_the_key_free() {
    let app = TestApp::start().await;
    app.pool("full", json!({}), &proxies(1)).await;
    let (a, b, c) = (participant(0), participant(1), participant(2));
    app.open_session("full", &a, &b, None).await;
    let body = create_body("full", &a, &c);
    // A first request died after taking the key, before creating anything.
    let broker: Broker = hush::build_broker(&app.config).unwrap();
    let raw = serde_json::to_vec(&body).unwrap();
    assert!(matches!(
        broker.idem_begin(ADMIN, "ride-3", &raw).await.unwrap(),
        IdemStart::Run(_)
    ));

    // Its retry takes over and finds the pool full; that outcome is not stored, and the key
    // is not held: the next retry runs at once and is told the same.
    retry_until_answered(&app, "ride-3", &body)
        .await
        .expect_problem(409, "pool_exhausted");
    send(&app, "ride-3", &body)
        .await
        .expect_problem(409, "pool_exhausted");

    // Once there is room, the same key and body make the session.
    app.add_numbers("full", &[proxy(1)]).await.expect(200);
    let r = send(&app, "ride-3", &body).await;
    assert_eq!(r.expect(201)["proxy_number"], json!(proxy(1)));
    assert_replayed(&r, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_forgets_what_leads_a_retry_to_the_session() {
    let app = TestApp::start().await;
    app.pool("forget", json!({}), &proxies(3)).await;
    let (a, b) = (participant(0), participant(1));
    let body = create_body("forget", &a, &b);
    let made = create_then_die(&app, "ride-4", &body, new_session("forget", &a, &b)).await;
    assert_eq!(app.scan_keys("*:ik:*").await.len(), 1);

    app.delete(&format!("/v1/participants/{}", path_number(&a)))
        .await
        .expect(200);
    assert_eq!(
        app.scan_keys("*:ik:*").await,
        Vec::<String>::new(),
        "erasure left a marker naming the erased participant's session"
    );

    // The client asks again: a new request, not the erased session.
    let r = retry_until_answered(&app, "ride-4", &body).await;
    let s = r.expect(201);
    assert_ne!(s["id"], json!(made));
    assert_replayed(&r, false);
}
