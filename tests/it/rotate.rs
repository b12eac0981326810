//! `hush keys rotate-data`: every stored ciphertext re-sealed under the first data key while
//! hush serves, so hush then runs on the new key alone; resumable, idempotent, and safe
//! beside a hush instance that keeps writing.

use std::time::Duration;

use hush::config::{Config, Secret};
use hush::crypto::Crypto;
use hush::relay::outbound::{self, OutboundSms, Via};
use serde_json::json;

use crate::harness::*;
use crate::idempotency::send as idempotent_create;
use crate::intercept::BLOCKED;
use crate::receiver::Receiver;
use crate::relay_telnyx::{API_KEY, FakeTelnyx};

pub(crate) fn new_key() -> Secret<[u8; 32]> {
    Secret::new(rand::random())
}

pub(crate) fn key_id(config: &Config, key: &Secret<[u8; 32]>) -> u16 {
    Crypto::new(
        config.index_key.as_ref().unwrap(),
        std::slice::from_ref(key),
    )
    .unwrap()
    .sealing_key_id()
}

/// Rotates with `keys` (the first seals), stopping after `stop_after` re-seals if given.
pub(crate) async fn rotate(
    config: &Config,
    keys: &[&Secret<[u8; 32]>],
    stop_after: Option<u64>,
) -> hush::broker::Rotation {
    let mut config = config.clone();
    config.data_keys = keys.iter().map(|k| (*k).clone()).collect();
    let broker = hush::build_broker(&config).unwrap();
    let mut steps = 0;
    let r = broker
        .rotate_data(stop_after, |_| steps += 1)
        .await
        .unwrap();
    assert!(steps > 0, "no progress was reported");
    r
}

/// Every `|`-separated part of every value under the prefix that is a ciphertext of key `id`.
pub(crate) async fn sealed_with(app: &TestApp, id: u16) -> Vec<String> {
    let mut found = Vec::new();
    for (key, values) in app.dump().await {
        for v in values {
            let text = String::from_utf8_lossy(&v);
            if text
                .split('|')
                .any(|part| Crypto::key_id_of(part) == Some(id))
            {
                found.push(key.clone());
            }
        }
    }
    found
}

#[tokio::test]
async fn every_record_is_resealed_and_hush_then_runs_on_the_new_key_alone() {
    let receiver = Receiver::start().await;
    let mut app = TestApp::start_with(|c| c.callback_allow_private = true).await;
    let old = app.config.data_keys[0].clone();
    let new = new_key();
    app.pool(
        "rot",
        json!({
            "cooloff_secs": 3600,
            "callback_url": receiver.url("/events"),
            "callback_include_numbers": true,
            "intercept_url": receiver.intercept_url(),
        }),
        &proxies(3),
    )
    .await;
    let secret = app.callback_secret("rot").await;
    receiver.set_secrets(vec![secret]);
    let (a1, b1) = (participant(30), participant(31));
    let (a2, b2) = (participant(32), participant(33));
    let (a3, b3) = (participant(34), participant(35));
    let open = app.open_session("rot", &a1, &b1, None).await;
    let cooling = app.open_session("rot", &a2, &b2, None).await;
    app.close_session(cooling["id"].as_str().unwrap())
        .await
        .expect(200);
    let idem_body = json!({
        "pool": "rot",
        "participants": [{ "number": a3 }, { "number": b3 }],
        "metadata": { "order": "r-1" },
    });
    let first = idempotent_create(&app, "rot-key-1", &idem_body).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let idem_id = first.expect(201)["id"].as_str().unwrap().to_string();
    // A text the app blocks, with its message remembered for the provider's retries.
    receiver.intercept_answer(200, Some(json!({ "action": "block", "message": BLOCKED })));
    let (proxy1, id1) = (
        open["proxy_number"].as_str().unwrap().to_string(),
        open["id"].as_str().unwrap().to_string(),
    );
    let blocked = json!({ "from": b1, "to": proxy1, "kind": "sms", "reference": "msg-rot" });
    let r = app.post("/v1/route", &blocked).await.expect(200);
    assert_eq!(r["message"], BLOCKED);
    receiver.intercept_answer(200, Some(json!({ "action": "allow" })));
    // A text waiting to go out through Telnyx (this instance does not send texts).
    let broker = hush::build_broker(&app.config).unwrap();
    outbound::enqueue(
        &broker,
        OutboundSms {
            via: Via::Telnyx,
            from: hush::domain::E164::parse(&proxy1).unwrap(),
            to: hush::domain::E164::parse(&b1).unwrap(),
            text: "waiting through the rotation".into(),
            media: vec![],
            key: "telnyx:rot-text".into(),
            report_url: None,
        },
    )
    .await
    .unwrap();
    receiver
        .wait_for_type("session.created", 3, Duration::from_secs(10))
        .await;

    let old_id = key_id(&app.config, &old);
    let before = sealed_with(&app, old_id).await;
    for kind in [":s:", ":ev:m:", ":ox:m:", ":ref:", ":idem:", ":pool:"] {
        assert!(
            before.iter().any(|k| k.contains(kind)),
            "nothing of kind {kind} sealed before: {before:?}"
        );
    }
    let r = rotate(&app.config, &[&new, &old], None).await;
    assert!(!r.stopped);
    // On a Cluster the scan walks each of its three primaries.
    let nodes = if app.redis_url.starts_with("redis+cluster") {
        3
    } else {
        1
    };
    assert_eq!((r.node, r.nodes), (nodes, nodes), "{r:?}");
    assert_eq!(r.left(), 0, "{r:?}");
    assert!(r.resealed >= before.len() as u64, "{r:?} for {before:?}");
    let after = sealed_with(&app, old_id).await;
    assert!(after.is_empty(), "still under the old key: {after:?}");
    assert!(
        !sealed_with(&app, key_id(&app.config, &new))
            .await
            .is_empty()
    );
    // Running it again finds nothing to do.
    let again = rotate(&app.config, &[&new, &old], None).await;
    assert_eq!(again.resealed, 0, "{again:?}");
    assert_eq!(again.left(), 0);
    assert!(again.current >= r.resealed);

    // hush with the new key alone reads, routes, replays and sends all of it.
    let api = FakeTelnyx::start().await;
    app.config.data_keys = vec![new.clone()];
    app.config.providers.telnyx_api_key = Some(Secret::new(API_KEY.into()));
    app.config.providers.telnyx_api_base = api.base.clone();
    app.restart().await;
    let s = app.get_session(&id1).await.expect(200);
    assert_eq!(s["participants"][0]["number"], json!(a1), "{s}");
    app.assert_connects(&a1, &proxy1, &b1, &id1).await;
    let c = app
        .get_session(cooling["id"].as_str().unwrap())
        .await
        .expect(200);
    assert_eq!(c["participants"][1]["number"], json!(b2), "{c}");
    let replay = idempotent_create(&app, "rot-key-1", &idem_body).await;
    assert_eq!(replay.status, 201, "{}", replay.text);
    assert_eq!(
        replay.header("idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(replay.expect(201)["id"], json!(idem_id));
    let r = app.post("/v1/route", &blocked).await.expect(200);
    assert_eq!(
        r["message"], BLOCKED,
        "the retry hears the block message: {r}"
    );
    let sent = api.wait_delivered(1, Duration::from_secs(10)).await;
    assert_eq!(sent[0]["text"], "waiting through the rotation");
    let events = app.get("/v1/events?pool=rot").await.expect(200);
    let events = events["events"].as_array().unwrap().clone();
    let created = events
        .iter()
        .find(|e| e["type"] == "session.created")
        .unwrap_or_else(|| panic!("{events:?}"));
    // Redelivered, an event carries the numbers sealed in it, signed with the pool's secret.
    let delivered = receiver.of_type("session.created").len();
    app.post(
        &format!("/v1/events/{}/redeliver", created["id"].as_str().unwrap()),
        &json!({}),
    )
    .await;
    let all = receiver
        .wait_for_type("session.created", delivered + 1, Duration::from_secs(10))
        .await;
    let last = &all[all.len() - 1];
    let raw = String::from_utf8_lossy(&last.raw);
    assert!(
        [&a1, &a2, &a3].iter().any(|n| raw.contains(n.as_str())),
        "{raw}"
    );
}

#[tokio::test]
async fn an_interrupted_rotation_resumes_where_it_stopped() {
    let mut app = TestApp::start().await;
    let old = app.config.data_keys[0].clone();
    let new = new_key();
    app.pool("rot", json!({ "cooloff_secs": 0 }), &proxies(2))
        .await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let s = app
            .open_session(
                "rot",
                &participant(40 + 2 * i),
                &participant(41 + 2 * i),
                None,
            )
            .await;
        ids.push(s["id"].as_str().unwrap().to_string());
    }
    let old_id = key_id(&app.config, &old);
    let total = sealed_with(&app, old_id).await.len() as u64;
    let first = rotate(&app.config, &[&new, &old], Some(5)).await;
    assert!(first.stopped);
    assert_eq!(first.resealed, 5);
    assert!(!sealed_with(&app, old_id).await.is_empty());
    let rest = rotate(&app.config, &[&new, &old], None).await;
    assert!(!rest.stopped);
    assert_eq!(rest.left(), 0);
    assert!(rest.resealed > 0);
    assert!(first.resealed + rest.resealed >= total);
    assert!(sealed_with(&app, old_id).await.is_empty());
    assert_eq!(rotate(&app.config, &[&new, &old], None).await.resealed, 0);
    app.stop().await;
    app.config.data_keys = vec![new];
    let fresh = app.peer().await;
    for id in &ids {
        fresh.get_session(id).await.expect(200);
    }
}

#[tokio::test]
async fn a_rotation_beside_an_instance_that_keeps_writing_loses_nothing() {
    let mut app = TestApp::start().await;
    let old = app.config.data_keys[0].clone();
    let new = new_key();
    app.pool("rot", json!({ "cooloff_secs": 600 }), &proxies(20))
        .await;
    let mut first = Vec::new();
    for i in 0..20 {
        let (a, b) = (participant(100 + i), participant(200 + i));
        let s = app.open_session("rot", &a, &b, None).await;
        let (id, proxy) = (
            s["id"].as_str().unwrap(),
            s["proxy_number"].as_str().unwrap(),
        );
        first.push((id.to_string(), proxy.to_string(), a, b));
    }
    // The instance that keeps serving seals with the new key, as the runbook has it.
    let config = app.config.clone();
    app.stop().await;
    app.config.data_keys = vec![new.clone(), old.clone()];
    let writer = app.peer().await;
    let writing = async {
        let mut ids = Vec::new();
        for i in 0..20 {
            let (a, b) = (participant(100 + i), participant(230 + i));
            let s = writer.open_session("rot", &a, &b, None).await;
            let id = s["id"].as_str().unwrap().to_string();
            // Closing rewrites the route records the rotation may be re-sealing.
            if i % 2 == 0 {
                writer.close_session(&id).await.expect(200);
            }
            ids.push((id, a, b));
        }
        ids
    };
    let keys = [&new, &old];
    let done = std::sync::atomic::AtomicBool::new(false);
    let writing = async {
        let made = writing.await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        made
    };
    // Rotations run one after another for as long as the writer writes.
    let rotating = async {
        let mut runs = Vec::new();
        while runs.is_empty() || !done.load(std::sync::atomic::Ordering::SeqCst) {
            runs.push(rotate(&config, &keys, None).await);
        }
        runs
    };
    let (made, runs) = tokio::join!(writing, rotating);
    for r in &runs {
        assert_eq!(r.left(), 0, "{r:?}");
    }
    // Whatever was missed by a scan that started first was sealed with the new key anyway.
    assert!(sealed_with(&app, key_id(&config, &old)).await.is_empty());
    app.config.data_keys = vec![new.clone()];
    let fresh = app.peer().await;
    for (i, (id, a, b)) in made.iter().enumerate() {
        let s = fresh.get_session(id).await.expect(200);
        assert_eq!(s["participants"][0]["number"], json!(a), "{s}");
        assert_eq!(s["participants"][1]["number"], json!(b), "{s}");
        let status = if i % 2 == 0 { "closed" } else { "open" };
        assert_eq!(s["status"], status, "{s}");
    }
    for (id, proxy, a, b) in &first {
        fresh.assert_connects(a, proxy, b, id).await;
    }
}

#[tokio::test]
async fn the_command_reports_progress_and_what_is_left() {
    let app = TestApp::start().await;
    let old = app.config.data_keys[0].clone();
    app.pool("rot", json!({}), &proxies(2)).await;
    for i in 0..3 {
        app.open_session(
            "rot",
            &participant(50 + 2 * i),
            &participant(51 + 2 * i),
            None,
        )
        .await;
    }
    // Without the old key nothing can be opened: the command says so and fails.
    let mut lacking = app.config.clone();
    lacking.data_keys = vec![new_key()];
    let out = cli_output(&lacking, &["keys", "rotate-data"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("re-sealed 0,"), "{stdout}");
    assert!(!stdout.contains("another key: 0"), "{stdout}");

    let mut config = app.config.clone();
    config.data_keys = vec![new_key(), old];
    let run = |args: &[&str]| {
        let out = cli_output(&config, &[&["keys", "rotate-data"], args].concat());
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["--stop-after", "2"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("stopped after 2 re-sealed"), "{out}");
    assert!(err.contains("node 1 of "), "{err}");
    let (ok, out, err) = run(&[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("still sealed under another key: 0"), "{out}");
    assert!(!out.contains("re-sealed 0,"), "{out}");
    let (ok, out, _) = run(&[]);
    assert!(ok);
    assert!(out.contains("re-sealed 0,"), "{out}");
    assert!(out.contains("still sealed under another key: 0"), "{out}");
}
