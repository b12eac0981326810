//! Events to the app, end to end: every event type reaches a receiver that checks Standard
//! Webhooks signatures with its own verifier; deliveries survive failures, throttling, a
//! receiver outage across a hush restart, a 410 and a secret rotation, and end visibly failed
//! when the schedule runs out. Neither the deliveries nor Redis hold participant digits unless
//! the pool asks for them in its events.

use std::time::Duration;

use hush::config::{Config, Secret};
use serde_json::{Value, json};

use crate::harness::*;
use crate::receiver::{Delivery, Receiver};
use crate::relay_twilio::{PUBLIC, TOKEN as TWILIO_TOKEN};

/// The public URL hush believes it is served at; Twilio signs webhooks for it.
/// The longest any single delivery may take to show up in these tests.
const WAIT: Duration = Duration::from_secs(10);
/// A short retry schedule, so retried deliveries come within a second or two.
const FAST: [u64; 3] = [200, 400, 800];
/// The event types these tests cause and check.
const TYPES: [&str; 5] = [
    "session.created",
    "session.closed",
    "interaction.started",
    "interaction.completed",
    "pool.exhausted",
];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// hush delivering to loopback receivers, retrying on `schedule_ms`, with Twilio enabled.
async fn events_app(schedule_ms: &[u64]) -> TestApp {
    let schedule = schedule_ms.to_vec();
    TestApp::start_with(move |c| {
        c.callback_allow_private = true;
        c.event_retry_schedule_ms = schedule;
        c.public_url = Some(PUBLIC.into());
        c.providers.twilio_auth_token = Some(Secret::new(TWILIO_TOKEN.into()));
    })
    .await
}

/// Creates pool `name` (with `policy`, plus a callback URL at `receiver`) holding `numbers`,
/// and has the receiver check every delivery against the pool's secret, which it returns.
/// Tests that count every request give the pool two numbers: one open session then leaves it
/// well below the level at which it reports running low, so no other event joins in.
async fn hooked_pool(
    app: &TestApp,
    receiver: &Receiver,
    name: &str,
    mut policy: Value,
    numbers: &[String],
) -> String {
    policy["callback_url"] = json!(receiver.url("/events"));
    app.pool(name, policy, numbers).await;
    let secret = app.callback_secret(name).await;
    receiver.set_secrets(vec![secret.clone()]);
    secret
}

/// `GET /v1/events?pool=…[&status=…]`.
async fn list_events(app: &TestApp, pool: &str, status: Option<&str>) -> Vec<Value> {
    let mut path = format!("/v1/events?pool={pool}");
    if let Some(status) = status {
        path.push_str(&format!("&status={status}"));
    }
    app.get(&path).await.expect(200)["events"]
        .as_array()
        .expect("an `events` array")
        .clone()
}

/// Waits until event `id` of `pool` is listed with `status`, and returns it.
async fn wait_status(app: &TestApp, pool: &str, id: &str, status: &str) -> Value {
    eventually(WAIT, &format!("event {id} to be {status}"), || async {
        list_events(app, pool, None)
            .await
            .into_iter()
            .find(|e| e["id"] == id && e["status"] == status)
    })
    .await
}

/// The HTTP statuses of an event's attempts, oldest first.
fn attempt_statuses(event: &Value) -> Vec<u64> {
    event["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempts array: {event}"))
        .iter()
        .map(|a| a["status"].as_u64().expect("an attempt status"))
        .collect()
}

/// A pending `session.created` of `pool` (other than `not`) attempted at least once.
async fn tried(app: &TestApp, pool: &str, not: Option<&str>) -> Option<Value> {
    list_events(app, pool, Some("pending"))
        .await
        .into_iter()
        .find(|e| {
            e["type"] == "session.created"
                && e["id"].as_str() != not
                && !attempt_statuses(e).is_empty()
        })
}

/// The forms of a number worth looking for: E.164 and the national digits.
fn needles(numbers: &[&str]) -> Vec<String> {
    numbers
        .iter()
        .flat_map(|n| [n.to_string(), national_digits(n)])
        .collect()
}

#[track_caller]
fn assert_no_digits(what: &str, hay: &[u8], numbers: &[&str]) {
    for n in needles(numbers) {
        assert!(
            !contains_bytes(hay, n.as_bytes()),
            "{what} contains {n}: {}",
            String::from_utf8_lossy(hay)
        );
    }
}

/// Every key and value under the app's prefix is free of these numbers' digits.
async fn assert_redis_clean(app: &TestApp, numbers: &[&str]) {
    let dump = app.dump().await;
    assert!(!dump.is_empty(), "nothing stored under the test prefix");
    for (key, values) in dump {
        assert_no_digits(&format!("Redis key {key}"), key.as_bytes(), numbers);
        for v in values {
            assert_no_digits(&format!("a value of Redis key {key}"), &v, numbers);
        }
    }
}

/// Asserts a delivery is a well-formed, verified Standard Webhooks request of `event_type`.
#[track_caller]
fn assert_signed(d: &Delivery, event_type: &str) {
    assert_eq!(d.event_type, event_type, "{}", d.body);
    assert!(d.id.starts_with("evt_"), "webhook-id {:?}", d.id);
    assert!(d.verified(), "{event_type} did not verify: {}", d.signature);
    assert!(
        (d.timestamp - now_ms() / 1000).abs() < 60,
        "webhook-timestamp {} is not now",
        d.timestamp
    );
    assert!(d.body["timestamp"].is_string(), "{}", d.body);
    assert!(d.data().is_object(), "{}", d.body);
}

/// The one delivery of `event_type` whose `data.reason` is `reason`.
#[track_caller]
fn closed_with(receiver: &Receiver, reason: &str) -> Delivery {
    let found: Vec<Delivery> = receiver
        .of_type("session.closed")
        .into_iter()
        .filter(|d| d.data()["reason"] == reason)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "session.closed ({reason}) deliveries: {found:#?}"
    );
    found[0].clone()
}

/// Posts a Twilio webhook form to `path`, signed as Twilio signs it (the signing client of
/// `relay_twilio`, checked there against Twilio's published vectors).
async fn twilio(app: &TestApp, path: &str, params: &[(&str, &str)]) -> Resp {
    crate::relay_twilio::Twilio { app }.post(path, params).await
}

// ---------------------------------------------------------------------------------------------
// Every event type
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_event_type_arrives_signed_with_labels_and_no_digits() {
    let receiver = Receiver::start().await;
    let app = events_app(&FAST).await;
    let proxy = proxy(0);
    hooked_pool(
        &app,
        &receiver,
        "rides",
        json!({ "cooloff_secs": 0 }),
        std::slice::from_ref(&proxy),
    )
    .await;
    let people: Vec<String> = (0..5).map(|i| participant(20 + i)).collect();
    let (a, b, c, d, e) = (&people[0], &people[1], &people[2], &people[3], &people[4]);

    // session.created, from the API.
    let s = app
        .create_session_with(&json!({
            "pool": "rides",
            "participants": [
                { "number": a, "label": "rider:42" },
                { "number": b, "label": "driver:7" },
            ],
            "metadata": { "trip": "t-981" },
        }))
        .await
        .expect(201);
    let id = s["id"].as_str().unwrap().to_string();
    let created = receiver
        .wait_for_type("session.created", 1, WAIT)
        .await
        .remove(0);
    assert_signed(&created, "session.created");
    assert_eq!(
        created.data(),
        &json!({
            "session_id": id,
            "pool": "rides",
            "proxy_number": proxy,
            "mode": "voice_sms",
            "participants": [{ "label": "rider:42" }, { "label": "driver:7" }],
            "expires_at": s["expires_at"],
            "metadata": { "trip": "t-981" },
            "access": "direct",
        })
    );

    // pool.exhausted: A already holds the pool's only number.
    app.create_session("rides", a, c, None)
        .await
        .expect_problem(409, "pool_exhausted");
    let exhausted = receiver
        .wait_for_type("pool.exhausted", 1, WAIT)
        .await
        .remove(0);
    assert_signed(&exhausted, "pool.exhausted");
    assert_eq!(
        exhausted.data(),
        &json!({ "pool": "rides", "mode": "voice_sms" })
    );

    // interaction.started, from a signed voice webhook; B is the other participant.
    let call_sid = format!("CA{:032x}", rand::random::<u128>());
    let call = [
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("CallSid", call_sid.as_str()),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
        ("From", a.as_str()),
        ("To", proxy.as_str()),
    ];
    let r = twilio(&app, "/hooks/twilio/voice", &call).await;
    assert!(
        r.text.contains("<Dial"),
        "the call is not connected: {}",
        r.text
    );
    let started = receiver
        .wait_for_type("interaction.started", 1, WAIT)
        .await
        .remove(0);
    assert_signed(&started, "interaction.started");
    let interactions = app
        .get(&format!("/v1/sessions/{id}/interactions"))
        .await
        .expect(200);
    let interaction_id = interactions["interactions"][0]["id"].clone();
    assert!(interaction_id.is_string(), "{interactions}");
    assert_eq!(
        started.data(),
        &json!({
            "session_id": id,
            "interaction_id": interaction_id,
            "kind": "voice",
            "initiated_by": "participant",
            "from_participant": 0,
            "access": "direct",
            "pool": "rides",
            "proxy_number": proxy,
            "provider": "twilio",
        })
    );

    // interaction.completed, from the call's final status callback.
    let completed = [
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("CallDuration", "42"),
        ("CallSid", call_sid.as_str()),
        ("CallStatus", "completed"),
        ("Direction", "inbound"),
        ("From", a.as_str()),
        ("To", proxy.as_str()),
    ];
    twilio(&app, "/hooks/twilio/status", &completed)
        .await
        .expect(200);
    let done = receiver
        .wait_for_type("interaction.completed", 1, WAIT)
        .await
        .remove(0);
    assert_signed(&done, "interaction.completed");
    assert_eq!(
        done.data(),
        &json!({
            "session_id": id,
            "interaction_id": interaction_id,
            "kind": "voice",
            "initiated_by": "participant",
            "from_participant": 0,
            "access": "direct",
            "status": "completed",
            "duration_secs": 42,
            "pool": "rides",
            "proxy_number": proxy,
            "provider": "twilio",
        })
    );

    // session.closed (closed), from the API.
    let before = now_ms();
    app.close_session(&id).await.expect(200);
    receiver.wait_for_type("session.closed", 1, WAIT).await;
    let closed = closed_with(&receiver, "closed");
    assert_signed(&closed, "session.closed");
    let closed_at = ts_ms(&closed.data()["closed_at"]);
    assert!(
        closed_at >= before - 1000 && closed_at <= now_ms() + 1000,
        "{}",
        closed.body
    );
    assert_eq!(
        closed.data(),
        &json!({
            "session_id": id,
            "pool": "rides",
            "proxy_number": proxy,
            "reason": "closed",
            "closed_at": closed.data()["closed_at"],
            "participants": [{ "label": "rider:42" }, { "label": "driver:7" }],
        })
    );

    // session.closed (erased), from erasing a participant: no trace of the erased side.
    let s2 = app
        .create_session_with(&json!({
            "pool": "rides",
            "participants": [
                { "number": d, "label": "rider:9" },
                { "number": e, "label": "driver:3" },
            ],
        }))
        .await
        .expect(201);
    let id2 = s2["id"].as_str().unwrap().to_string();
    receiver.wait_for_type("session.created", 2, WAIT).await;
    app.delete(&format!("/v1/participants/{}", path_number(d)))
        .await
        .expect(200);
    receiver.wait_for_type("session.closed", 2, WAIT).await;
    let erased = closed_with(&receiver, "erased");
    assert_signed(&erased, "session.closed");
    assert_eq!(erased.data()["session_id"], id2.as_str());
    assert_eq!(erased.data()["proxy_number"], proxy.as_str());
    assert_eq!(
        erased.data()["participants"][1],
        json!({ "label": "driver:3" })
    );
    assert!(
        !contains_bytes(&erased.raw, b"rider:9"),
        "the erased participant's label was sent: {}",
        erased.body
    );

    // Each event was delivered once, and is listed as delivered under the id it was sent with.
    // (Other event types, such as the pool running low, may come too; they are left out of
    // the count but must be signed and free of digits like the rest.)
    let counted = |t: &str| TYPES.contains(&t);
    let listed = eventually(WAIT, "every event delivered", || async {
        let list = list_events(&app, "rides", None).await;
        let done = list.iter().all(|e| e["status"] == "delivered")
            && list
                .iter()
                .filter(|e| counted(e["type"].as_str().unwrap()))
                .count()
                == 7;
        done.then_some(list)
    })
    .await;
    let mut listed: Vec<(String, String)> = listed
        .iter()
        .filter(|e| counted(e["type"].as_str().unwrap()))
        .map(|e| {
            (
                e["id"].as_str().unwrap().into(),
                e["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    listed.sort();
    let all = receiver.deliveries();
    let mut sent: Vec<(String, String)> = all
        .iter()
        .filter(|d| counted(&d.event_type))
        .map(|d| (d.id.clone(), d.event_type.clone()))
        .collect();
    sent.sort();
    assert_eq!(sent, listed);
    for got in &all {
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(got.verified_with, vec![0], "{got:?}");
        let what = format!("the {} delivery", got.event_type);
        assert_no_digits(&what, &got.raw, &[a, b, c, d, e]);
    }

    // Nothing hush keeps for its events (bodies, attempts, queues) holds the digits either.
    assert_redis_clean(&app, &[a, b, c, d, e]).await;
}

#[tokio::test]
async fn a_pool_that_asks_gets_numbers_in_session_events_but_redis_holds_none() {
    let receiver = Receiver::start().await;
    let app = events_app(&FAST).await;
    hooked_pool(
        &app,
        &receiver,
        "vip",
        json!({ "cooloff_secs": 0, "callback_include_numbers": true }),
        &proxies(1),
    )
    .await;
    let people: Vec<String> = (0..4).map(|i| participant(40 + i)).collect();
    let (a, b, c, d) = (&people[0], &people[1], &people[2], &people[3]);

    let s = app
        .create_session_with(&json!({
            "pool": "vip",
            "participants": [
                { "number": a, "label": "rider:1" },
                { "number": b, "label": "driver:1" },
            ],
        }))
        .await
        .expect(201);
    let id = s["id"].as_str().unwrap();
    let both = json!([
        { "label": "rider:1", "number": a },
        { "label": "driver:1", "number": b },
    ]);
    let created = receiver
        .wait_for_type("session.created", 1, WAIT)
        .await
        .remove(0);
    assert_signed(&created, "session.created");
    assert_eq!(created.data()["participants"], both, "{}", created.body);

    app.close_session(id).await.expect(200);
    receiver.wait_for_type("session.closed", 1, WAIT).await;
    let closed = closed_with(&receiver, "closed");
    assert_signed(&closed, "session.closed");
    assert_eq!(closed.data()["participants"], both, "{}", closed.body);

    // Erasure sends no trace of the erased participant's number, whatever the pool asked for.
    app.open_session("vip", c, d, None).await;
    receiver.wait_for_type("session.created", 2, WAIT).await;
    app.delete(&format!("/v1/participants/{}", path_number(c)))
        .await
        .expect(200);
    receiver.wait_for_type("session.closed", 2, WAIT).await;
    let erased = closed_with(&receiver, "erased");
    assert_signed(&erased, "session.closed");
    assert_no_digits("the erased session.closed", &erased.raw, &[c]);

    // The numbers travel sealed: Redis holds none of them in the clear.
    assert_redis_clean(&app, &[a, b, c, d]).await;
}

// ---------------------------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn expiry_is_announced_within_5_s_and_once_while_two_reapers_race() {
    let receiver = Receiver::start().await;
    let app = events_app(&FAST).await;
    // A second instance on the same Redis: its reaper and delivery worker race the first's.
    let _peer = app.peer().await;
    hooked_pool(&app, &receiver, "short", json!({}), &proxies(1)).await;
    let mut sessions = Vec::new();
    for i in 0..4 {
        let (a, b) = (participant(60 + 2 * i), participant(61 + 2 * i));
        sessions.push(app.open_session("short", &a, &b, Some(2)).await);
    }
    let first_expiry = sessions
        .iter()
        .map(|s| ts_ms(&s["expires_at"]))
        .min()
        .unwrap();

    let budget = (first_expiry + 5000 - now_ms()).max(0) as u64;
    let closed = receiver
        .wait_for_type(
            "session.closed",
            sessions.len(),
            Duration::from_millis(budget),
        )
        .await;
    let mut last_arrival = 0;
    for s in &sessions {
        let got: Vec<&Delivery> = closed
            .iter()
            .filter(|d| d.data()["session_id"] == s["id"])
            .collect();
        assert_eq!(got.len(), 1, "session.closed for {}: {got:#?}", s["id"]);
        let d = got[0];
        assert_signed(d, "session.closed");
        assert_eq!(d.data()["reason"], "expired", "{}", d.body);
        assert_eq!(d.data()["closed_at"], s["expires_at"], "{}", d.body);
        let arrived = now_ms() - d.received_at.elapsed().as_millis() as i64;
        let expires = ts_ms(&s["expires_at"]);
        assert!(
            arrived <= expires + 5000,
            "session.closed arrived {} ms after the expiry",
            arrived - expires
        );
        last_arrival = last_arrival.max(arrived);
    }

    // Both reapers pass every 200 ms and deliveries go out every 200 ms: a second event for
    // any of these sessions would be here well within two seconds.
    sleep_until_ms(last_arrival + 2000).await;
    assert_eq!(
        receiver.of_type("session.closed").len(),
        sessions.len(),
        "{:#?}",
        receiver.of_type("session.closed")
    );
    let recorded = list_events(&app, "short", None)
        .await
        .into_iter()
        .filter(|e| e["type"] == "session.closed")
        .count();
    assert_eq!(recorded, sessions.len(), "session.closed events recorded");
}

// ---------------------------------------------------------------------------------------------
// Retries and failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_receiver_failing_twice_gets_the_event_on_the_third_attempt() {
    let receiver = Receiver::start().await;
    let app = events_app(&FAST).await;
    hooked_pool(&app, &receiver, "retry", json!({}), &proxies(2)).await;
    receiver.fail_next(2, 500);
    app.open_session("retry", &participant(80), &participant(81), None)
        .await;

    let tries = receiver.wait_for(3, WAIT).await;
    let id = tries[0].id.clone();
    let statuses: Vec<u16> = tries.iter().map(|d| d.status).collect();
    assert_eq!(statuses, [500, 500, 200]);
    for d in &tries {
        assert_signed(d, "session.created");
        assert_eq!(d.id, id, "a retry must keep the webhook-id");
        assert_eq!(d.raw, tries[0].raw, "a retry must send the same body");
    }
    // Retries follow the schedule: 200 ms, then 400 ms (plus jitter), after each attempt.
    for (i, delay) in [(1, 200), (2, 400)] {
        let gap = tries[i].received_at - tries[i - 1].received_at;
        assert!(
            gap >= Duration::from_millis(delay - 50),
            "attempt {} came {gap:?} after the previous one",
            i + 1
        );
    }

    let event = wait_status(&app, "retry", &id, "delivered").await;
    assert_eq!(attempt_statuses(&event), [500, 500, 200], "{event}");
    assert!(event.get("failure").is_none(), "{event}");
    let at: Vec<i64> = event["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| ts_ms(&a["at"]))
        .collect();
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "{event}");
    // Delivered is final: nothing more was sent once the app said 200.
    assert_eq!(receiver.deliveries().len(), 3);
    assert_eq!(list_events(&app, "retry", Some("delivered")).await.len(), 1);
    assert!(list_events(&app, "retry", Some("pending")).await.is_empty());
}

#[tokio::test]
async fn events_survive_a_receiver_outage_across_a_hush_restart() {
    let receiver = Receiver::start().await;
    // Retries every 250 ms for 10 s: the event is still being retried when the receiver returns.
    let mut app = events_app(&[250; 40]).await;
    hooked_pool(&app, &receiver, "outage", json!({}), &proxies(2)).await;
    receiver.stop().await;

    let s1 = app
        .open_session("outage", &participant(90), &participant(91), None)
        .await;
    let before = eventually(WAIT, "a failed attempt before the restart", || {
        tried(&app, "outage", None)
    })
    .await;
    let id1 = before["id"].as_str().unwrap().to_string();
    assert!(
        attempt_statuses(&before).iter().all(|&s| s == 0),
        "{before}"
    );

    app.restart().await;
    let s2 = app
        .open_session("outage", &participant(92), &participant(93), None)
        .await;
    let after = eventually(WAIT, "a failed attempt after the restart", || {
        tried(&app, "outage", Some(&id1))
    })
    .await;
    let id2 = after["id"].as_str().unwrap().to_string();

    receiver.restart().await;
    let got = receiver.wait_for_type("session.created", 2, WAIT).await;
    let mut ids: Vec<&str> = got.iter().map(|d| d.id.as_str()).collect();
    ids.sort();
    let mut want = vec![id1.as_str(), id2.as_str()];
    want.sort();
    assert_eq!(ids, want);
    for (s, id) in [(&s1, &id1), (&s2, &id2)] {
        let d = got.iter().find(|d| &d.id == id).unwrap();
        assert_signed(d, "session.created");
        assert_eq!(d.data()["session_id"], s["id"]);
        assert_eq!(d.status, 200);
        let event = wait_status(&app, "outage", id, "delivered").await;
        let statuses = attempt_statuses(&event);
        assert_eq!(statuses.last(), Some(&200), "{event}");
        assert!(
            statuses[..statuses.len() - 1].iter().all(|&s| s == 0),
            "{event}"
        );
    }
}

/// Attempts one hush instance keeps under way to one receiver, and the free places a claim
/// of a busy receiver's events waits for (`events::delivery`).
const PER_DESTINATION: usize = 64;
const CLAIM_AT_LEAST: usize = 16;

#[tokio::test]
async fn a_hanging_receiver_holds_only_its_share_while_other_pools_are_delivered() {
    let stuck = Receiver::start().await;
    let fine = Receiver::start().await;
    // Retries for longer than the test can take, so no event of the stuck pool runs out of
    // schedule whatever the machine's speed.
    let app = events_app(&[250; 400]).await;
    hooked_pool(&app, &stuck, "stuck", json!({}), &proxies(30)).await;
    let other: Vec<String> = (30..32).map(proxy).collect();
    hooked_pool(&app, &fine, "fine", json!({}), &other).await;
    stuck.hang();

    // More events than one instance kept under way in all before limits per destination
    // (256): one hanging app used to hold every attempt.
    let mut stuck_sessions = Vec::new();
    for a in 0..20 {
        for b in 20..35 {
            let s = app
                .open_session("stuck", &participant(a), &participant(b), None)
                .await;
            stuck_sessions.push(s["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(stuck_sessions.len(), 300);
    // A destination's claims wait for a batch of free places, so its share may stop short
    // by less than a batch.
    eventually(WAIT, "the hanging receiver to hold its share", || async {
        (stuck.in_flight() > PER_DESTINATION - CLAIM_AT_LEAST).then_some(())
    })
    .await;

    let mut fine_sessions = Vec::new();
    for i in 0..40 {
        let s = app
            .open_session("fine", &participant(100 + i), &participant(200 + i), None)
            .await;
        fine_sessions.push(s["id"].as_str().unwrap().to_string());
    }
    let got = fine
        .wait_for_type(
            "session.created",
            fine_sessions.len(),
            Duration::from_secs(60),
        )
        .await;
    let mut arrived: Vec<String> = got
        .iter()
        .map(|d| d.data()["session_id"].as_str().unwrap().to_string())
        .collect();
    arrived.sort();
    arrived.dedup();
    fine_sessions.sort();
    assert_eq!(arrived, fine_sessions);
    for d in &got {
        assert_signed(d, "session.created");
    }
    // Never more than its share at once (an attempt hush gave up on after 10 s closed its
    // connection, and its request stopped counting).
    assert!(
        stuck.most_in_flight() <= PER_DESTINATION,
        "{} attempts were held at the hanging receiver at once",
        stuck.most_in_flight()
    );
    for e in list_events(&app, "fine", None).await {
        if e["type"] == "session.created" {
            assert_eq!(e["status"], "delivered", "{e}");
            assert_eq!(attempt_statuses(&e), [200], "{e}");
        }
    }

    // Once the app answers again, every one of its events arrives.
    stuck.answer_again();
    let delivered = |all: Vec<Delivery>| -> Vec<String> {
        let mut ids: Vec<String> = all
            .iter()
            .filter(|d| d.status == 200)
            .map(|d| d.data()["session_id"].as_str().unwrap_or("").to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    eventually(
        Duration::from_secs(120),
        "every stuck event delivered",
        || async {
            (delivered(stuck.of_type("session.created")).len() == stuck_sessions.len())
                .then_some(())
        },
    )
    .await;
    stuck_sessions.sort();
    assert_eq!(delivered(stuck.of_type("session.created")), stuck_sessions);
    // Each is recorded delivered, with an attempt history ending in the 200.
    let listed = eventually(WAIT, "the stuck events listed as delivered", || async {
        let events: Vec<Value> = list_events(&app, "stuck", None)
            .await
            .into_iter()
            .filter(|e| e["type"] == "session.created")
            .collect();
        events
            .iter()
            .all(|e| e["status"] == "delivered")
            .then_some(events)
    })
    .await;
    assert!(!listed.is_empty());
    for e in &listed {
        let statuses = attempt_statuses(e);
        assert_eq!(statuses.last(), Some(&200), "{e}");
        assert!(
            statuses[..statuses.len() - 1].iter().all(|&s| s == 0),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_410_fails_the_event_at_once_and_redelivery_sends_it_again() {
    let receiver = Receiver::start().await;
    let app = events_app(&FAST).await;
    hooked_pool(&app, &receiver, "gone", json!({}), &proxies(2)).await;
    receiver.respond_with(410, None, None);
    app.open_session("gone", &participant(100), &participant(101), None)
        .await;

    let first = receiver.wait_for(1, WAIT).await.remove(0);
    assert_signed(&first, "session.created");
    let id = first.id.clone();
    let failed = wait_status(&app, "gone", &id, "failed").await;
    assert_eq!(attempt_statuses(&failed), [410], "{failed}");
    assert!(
        failed["failure"].as_str().is_some_and(|f| !f.is_empty()),
        "a failed event says why: {failed}"
    );
    // The schedule would have retried after 200 ms; a 410 stops delivery instead.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        receiver.deliveries().len(),
        1,
        "{:#?}",
        receiver.deliveries()
    );
    let still = list_events(&app, "gone", Some("failed")).await;
    assert_eq!(still.len(), 1);
    assert_eq!(attempt_statuses(&still[0]), [410]);

    // The app is back: redelivery queues the event again, and it is delivered.
    receiver.respond_normally();
    let path = format!("/v1/events/{id}/redeliver");
    let again = app
        .call(reqwest::Method::POST, &path, Some(&app.admin_key), None)
        .await
        .expect(200);
    assert_eq!(again["id"], id.as_str(), "{again}");
    assert_eq!(again["status"], "pending", "{again}");
    assert!(again.get("failure").is_none(), "{again}");
    let audit = app
        .get("/v1/audit?action=event.redeliver")
        .await
        .expect(200);
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["target"], format!("event:{id}"), "{audit}");
    let sent = receiver.wait_for(2, WAIT).await;
    assert_eq!(sent[1].id, id);
    assert_eq!(sent[1].raw, first.raw, "redelivery sends the same event");
    assert_signed(&sent[1], "session.created");
    assert_eq!(sent[1].status, 200);
    let delivered = wait_status(&app, "gone", &id, "delivered").await;
    assert_eq!(attempt_statuses(&delivered), [410, 200], "{delivered}");

    // An id hush never issued is not found, with or without the `evt_` form.
    let unknown = id.replacen(&id[id.len() - 4..], "zzzz", 1);
    for bad in [unknown.as_str(), "evt_nope", "ses_nope"] {
        app.call(
            reqwest::Method::POST,
            &format!("/v1/events/{bad}/redeliver"),
            Some(&app.admin_key),
            None,
        )
        .await
        .expect_problem(404, "event_not_found");
    }
}

#[tokio::test]
async fn redelivering_a_pending_event_is_not_found() {
    let receiver = Receiver::start().await;
    let app = events_app(&[250; 40]).await;
    hooked_pool(&app, &receiver, "busy", json!({}), &proxies(2)).await;
    receiver.stop().await;
    app.open_session("busy", &participant(110), &participant(111), None)
        .await;
    let pending = eventually(WAIT, "a pending event", || async {
        list_events(&app, "busy", Some("pending")).await.pop()
    })
    .await;
    let id = pending["id"].as_str().unwrap();
    app.call(
        reqwest::Method::POST,
        &format!("/v1/events/{id}/redeliver"),
        Some(&app.admin_key),
        None,
    )
    .await
    .expect_problem(404, "event_not_found");
}

#[tokio::test]
async fn throttling_with_retry_after_delays_the_next_attempt() {
    let receiver = Receiver::start().await;
    let app = events_app(&FAST).await;
    hooked_pool(&app, &receiver, "throttled", json!({}), &proxies(2)).await;
    let s = app
        .open_session("throttled", &participant(120), &participant(121), None)
        .await;
    let id = s["id"].as_str().unwrap().to_string();

    // The first event meets a 429, the second a 503; both ask for one second.
    for (status, event_type) in [(429, "session.created"), (503, "session.closed")] {
        receiver.clear();
        receiver.respond_with(status, Some(("retry-after", "1")), None);
        if event_type == "session.closed" {
            app.close_session(&id).await.expect(200);
        }
        let first = receiver.wait_for(1, WAIT).await.remove(0);
        assert_eq!(first.event_type, event_type);
        // The schedule alone would retry 200 ms later; Retry-After asks for a second.
        receiver.respond_normally();
        let both = receiver.wait_for(2, WAIT).await;
        assert_eq!(both[1].id, first.id);
        assert_eq!(both[1].status, 200);
        let gap = both[1].received_at - both[0].received_at;
        assert!(
            gap >= Duration::from_millis(900),
            "after a {status} with Retry-After: 1 the next attempt came {gap:?} later"
        );
        let event = wait_status(&app, "throttled", &first.id, "delivered").await;
        assert_eq!(attempt_statuses(&event), [status as u64, 200], "{event}");
    }
}

#[tokio::test]
async fn after_a_rotation_both_secrets_sign() {
    let receiver = Receiver::start().await;
    let app = events_app(&FAST).await;
    let old = hooked_pool(&app, &receiver, "rotating", json!({}), &proxies(2)).await;
    let s = app
        .open_session("rotating", &participant(130), &participant(131), None)
        .await;
    let before = receiver
        .wait_for_type("session.created", 1, WAIT)
        .await
        .remove(0);
    assert_eq!(before.verified_with, vec![0]);
    assert_eq!(
        before.signature.split(' ').count(),
        1,
        "{}",
        before.signature
    );

    let rotated = app
        .post("/v1/pools/rotating/callback-secret/rotate", &json!({}))
        .await
        .expect(200);
    let new = rotated["secret"].as_str().expect("a `secret`").to_string();
    assert!(new.starts_with("whsec_") && new != old, "{rotated}");
    assert_eq!(app.callback_secret("rotating").await, new);

    // An app that has not switched yet, and one that has, both accept what comes next.
    receiver.set_secrets(vec![old.clone(), new.clone()]);
    app.close_session(s["id"].as_str().unwrap())
        .await
        .expect(200);
    let after = receiver
        .wait_for_type("session.closed", 1, WAIT)
        .await
        .remove(0);
    assert_signed(&after, "session.closed");
    assert_eq!(after.verified_with, vec![0, 1], "{}", after.signature);
    assert_eq!(after.signature.split(' ').count(), 2, "{}", after.signature);
}

#[tokio::test]
async fn an_event_fails_once_the_schedule_runs_out() {
    let receiver = Receiver::start().await;
    let app = events_app(&[100, 100]).await;
    hooked_pool(&app, &receiver, "doomed", json!({}), &proxies(2)).await;
    receiver.respond_with(500, None, Some("down"));
    app.open_session("doomed", &participant(140), &participant(141), None)
        .await;

    let first = receiver.wait_for(1, WAIT).await.remove(0);
    let failed = wait_status(&app, "doomed", &first.id, "failed").await;
    assert_eq!(attempt_statuses(&failed), [500, 500, 500], "{failed}");
    assert!(
        failed["failure"].as_str().is_some_and(|f| !f.is_empty()),
        "a failed event says why: {failed}"
    );
    let sent = receiver.deliveries();
    assert_eq!(sent.len(), 3, "{sent:#?}");
    assert!(sent.iter().all(|d| d.id == first.id));
    assert!(
        list_events(&app, "doomed", Some("pending"))
            .await
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// The SSRF guard
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn private_callback_urls_are_refused_at_configuration() {
    // Private targets are not allowed by default.
    let app = TestApp::start().await;
    for url in [
        "http://127.0.0.1:1/x",
        "https://127.0.0.1/x",
        "https://10.1.2.3/x",
        "https://172.16.0.1/x",
        "https://192.168.1.1/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://100.64.0.1/x",
        "https://224.0.0.1/x",
        "https://0.0.0.0/x",
        "https://[::1]/x",
        "https://[fe80::1]/x",
        "https://[fd00::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://[64:ff9b::a9fe:a9fe]/x",
        "https://[2002:7f00:1::]/x",
        "http://example.com/x",
    ] {
        let r = app
            .put_pool("guarded", json!({ "callback_url": url }))
            .await;
        assert_eq!(
            (r.status, r.code()),
            (422, "validation_failed"),
            "{url}: {}",
            r.text
        );
    }
    app.get("/v1/pools/guarded")
        .await
        .expect_problem(404, "pool_not_found");
}

#[tokio::test]
async fn a_callback_name_resolving_to_loopback_is_refused_at_delivery() {
    let receiver = Receiver::start().await;
    // A name passes configuration (it is resolved on each attempt), with private targets refused.
    let app = TestApp::start_with(|c| c.event_retry_schedule_ms = FAST.to_vec()).await;
    let url = format!("https://localhost:{}/events", receiver.addr().port());
    app.pool("named", json!({ "callback_url": url }), &proxies(2))
        .await;
    app.open_session("named", &participant(150), &participant(151), None)
        .await;

    let failed = eventually(WAIT, "the event to fail", || async {
        list_events(&app, "named", Some("failed")).await.pop()
    })
    .await;
    // Refused outright, not retried as if the receiver were down.
    assert_eq!(attempt_statuses(&failed), [0], "{failed}");
    assert!(
        failed["failure"]
            .as_str()
            .is_some_and(|f| f.contains("may not be called")),
        "{failed}"
    );
    assert!(receiver.deliveries().is_empty());
}

/// An event still waiting for delivery when one of its participants is erased goes out
/// without numbers: erasure reaches the event queue too.
#[tokio::test]
async fn erasure_strips_numbers_from_events_still_waiting() {
    let receiver = Receiver::start().await;
    let app = events_app(&[300, 300, 300, 300, 300, 300, 300, 300]).await;
    hooked_pool(
        &app,
        &receiver,
        "vipq",
        json!({ "callback_include_numbers": true }),
        &proxies(2),
    )
    .await;
    let (a, b) = (participant(70), participant(71));
    receiver.stop().await;
    app.create_session_with(&json!({
        "pool": "vipq",
        "participants": [{ "number": a, "label": "rider:7" }, { "number": b }],
    }))
    .await
    .expect(201);
    app.delete(&format!("/v1/participants/{}", path_number(&a)))
        .await
        .expect(200);
    receiver.restart().await;
    let created = receiver
        .wait_for_type("session.created", 1, WAIT)
        .await
        .remove(0);
    assert_signed(&created, "session.created");
    assert_no_digits("the queued session.created", &created.raw, &[&a]);
    assert_redis_clean(&app, &[&a]).await;
}

/// Scripts and commands per shard and second that `instances` idle hush instances send a
/// fresh Redis over 4 s, with 40 pools of 2 shards, each with a callback URL, the reaper at
/// its default pace, and the text worker on when `texts`; fails if they ran `at_most`
/// scripts a shard and second or more.
async fn idle_load(instances: usize, texts: bool, at_most: f64) {
    const POOLS: usize = 40;
    const WINDOW: Duration = Duration::from_secs(4);
    let redis = RedisServer::start(false);
    let receiver = Receiver::start().await;
    let mut config = fresh_config(&redis.url());
    config.callback_allow_private = true;
    config.reaper_interval_ms = Config::default().reaper_interval_ms;
    if texts {
        // Texts through a provider's API: the outbound worker runs too.
        config.providers.telnyx_api_key = Some(Secret::new("idle".into()));
    }
    let app = TestApp::start_on(config).await;
    let mut peers = Vec::new();
    for _ in 1..instances {
        peers.push(app.peer().await);
    }
    for i in 0..POOLS {
        app.put_pool(
            &format!("idle{i}"),
            json!({ "callback_url": receiver.url("/events"), "shards": 2 }),
        )
        .await
        .expect(201);
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Scripts and functions run, and commands in all (theirs included).
    async fn counts(conn: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(conn)
            .await
            .unwrap();
        let (mut scripts, mut all) = (0, 0);
        for line in info.lines() {
            let Some((name, stats)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let calls: u64 = stats
                .strip_prefix("calls=")
                .and_then(|s| s.split(',').next())
                .and_then(|n| n.parse().ok())
                .expect("INFO commandstats gives calls");
            all += calls;
            if matches!(name, "evalsha" | "eval" | "fcall") {
                scripts += calls;
            }
        }
        (scripts, all)
    }
    // Past the first sweep, which looks at every shard once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (scripts, all) = counts(&mut conn).await;
    tokio::time::sleep(WINDOW).await;
    let (scripts_after, all_after) = counts(&mut conn).await;
    let per_shard = |n: u64| n as f64 / WINDOW.as_secs_f64() / (2 * POOLS) as f64;
    let (scripts, all) = (
        per_shard(scripts_after - scripts),
        per_shard(all_after - all),
    );
    eprintln!(
        "{instances} idle instance(s), per shard and second: {scripts:.2} scripts, {all:.2} commands"
    );
    assert!(
        scripts < at_most,
        "{instances} idle instance(s) ran {scripts:.2} scripts a shard and second \
         ({all:.2} commands)"
    );
}

/// An idle instance leaves Redis alone, however many pools it serves: a written event rings
/// the doorbell, a retry's due time is known to the worker that set it, and every shard is
/// swept only now and then (for rings that were lost, and for leases and retries of an
/// instance that died). Claiming every shard ten times a second would load a Redis shared by
/// many instances in proportion to pools times instances, with nothing to send.
#[tokio::test]
async fn an_idle_instance_sends_redis_few_commands_whatever_its_pools() {
    // The reaper runs one script a shard each second (tidying sticky memory); claiming
    // every shard ten times a second, as a poll would, is ten more.
    idle_load(1, true, 3.0).await;
}

/// Instances take turns at each shard's reaper pass instead of each making its own: three
/// instances cost Redis about what one does, plus their sweeps.
#[tokio::test]
async fn idle_instances_take_turns_at_the_reaper() {
    // Turns of nine tenths of a second, and one event sweep of each instance in the window,
    // are at most 1.9; with every instance reaping every shard it was 2.6.
    idle_load(3, false, 2.0).await;
}

/// Where Redis refuses hush the doorbell's channels (an ACL user without `&P:*`), events are
/// found by a sweep every tenth of a second, as before there were doorbells, not by the slow
/// sweep an instance that hears rings keeps for what rings miss.
#[tokio::test]
async fn without_the_doorbell_events_still_go_out_at_once() {
    let redis = RedisServer::start(false);
    let admin = redis::Client::open(redis.url()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "deaf",
            "on",
            ">deaf-secret",
            "~*",
            "resetchannels",
            "+@all",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let url = format!("redis://deaf:deaf-secret@127.0.0.1:{}", redis.port);
    let receiver = Receiver::start().await;
    let mut config = fresh_config(&url);
    config.callback_allow_private = true;
    let app = TestApp::start_on(config).await;
    hooked_pool(&app, &receiver, "deaf", json!({}), &proxies(4)).await;
    // One at a time, each within a fraction of the slow sweep: a sweep every 5 s would hold
    // at least one of them back for seconds.
    for i in 0..3 {
        app.open_session("deaf", &participant(2 * i), &participant(2 * i + 1), None)
            .await;
        let got = receiver
            .wait_for_type("session.created", i + 1, Duration::from_millis(2_500))
            .await;
        assert_eq!(got.len(), i + 1, "event {i} waited for a sweep");
    }
    assert!(
        captured_logs().contains("doorbell unavailable"),
        "the missing doorbell is logged"
    );
}
