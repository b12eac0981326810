//! Allocation: route uniqueness under concurrency (one and two hush instances on one Redis),
//! exhaustion, and the preference order (capability, sticky, geo-match).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::harness::*;

const POOL_SIZE: usize = 20;
const PARTICIPANTS: usize = 200;
const TASKS: usize = 64;
const PER_TASK: usize = 4;
const BUSY: usize = 6;

/// One creation attempt and its outcome.
struct Attempt {
    a: String,
    b: String,
    status: u16,
    body: Value,
}

/// Pairs drawn with a fixed seed so a failure can be replayed. Half the first participants come
/// from six busy people, so many tasks race on the same participant and the busiest of them
/// exhaust the pool (each asks for about 22 sessions over 20 numbers).
fn pairs() -> Vec<(String, String)> {
    let mut rng = StdRng::seed_from_u64(0x6875_7368);
    (0..TASKS * PER_TASK)
        .map(|_| {
            let a = if rng.random_bool(0.5) {
                rng.random_range(0..BUSY)
            } else {
                rng.random_range(0..PARTICIPANTS)
            };
            let mut b = rng.random_range(0..PARTICIPANTS);
            while b == a {
                b = rng.random_range(0..PARTICIPANTS);
            }
            (participant(a), participant(b))
        })
        .collect()
}

/// Creates sessions from `TASKS` tasks at once, spread over `apps`, and returns every attempt.
async fn race(apps: &[&TestApp], pool: &str) -> Vec<Attempt> {
    let pairs = pairs();
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let app = apps[t % apps.len()];
        let client = app.client.clone();
        let url = app.url("/v1/sessions");
        let key = app.admin_key.clone();
        let mine: Vec<(String, String)> = pairs[t * PER_TASK..(t + 1) * PER_TASK].to_vec();
        let barrier = barrier.clone();
        let pool = pool.to_string();
        tasks.spawn(async move {
            barrier.wait().await;
            let mut out = Vec::new();
            for (a, b) in mine {
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({
                        "pool": pool,
                        "participants": [{ "number": a }, { "number": b }],
                    }))
                    .send()
                    .await
                    .expect("create session request");
                let status = r.status().as_u16();
                let text = r.text().await.unwrap();
                let body = serde_json::from_str(&text)
                    .unwrap_or_else(|_| panic!("non-JSON response {status}: {text}"));
                out.push(Attempt { a, b, status, body });
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(res) = tasks.join_next().await {
        all.extend(res.expect("a racing task panicked"));
    }
    all
}

/// Everything that must hold after a race on `pool`.
async fn check_race(apps: &[&TestApp], pool: &str, attempts: &[Attempt]) {
    let numbers: HashSet<String> = proxies(POOL_SIZE).into_iter().collect();

    // 1. Every attempt either created a session or found the pool exhausted.
    let mut created: Vec<&Attempt> = Vec::new();
    for at in attempts {
        match at.status {
            201 => created.push(at),
            409 => {
                assert_eq!(at.body["code"], "pool_exhausted", "{}", at.body);
                assert!(
                    at.body["detail"].as_str().unwrap_or("").contains(pool),
                    "pool_exhausted must name the pool: {}",
                    at.body
                );
            }
            s => panic!("create {} / {} answered {s}: {}", at.a, at.b, at.body),
        }
    }
    eprintln!(
        "race on {pool}: {} created, {} exhausted",
        created.len(),
        attempts.len() - created.len()
    );
    assert!(
        attempts.len() - created.len() >= 1,
        "no attempt found the pool exhausted: the race does not reach the limit"
    );
    assert!(
        created.len() >= attempts.len() / 2,
        "only {} of {} sessions were created",
        created.len(),
        attempts.len()
    );

    // 2. From the API: sessions are what was asked, and no (participant, proxy) pair is held
    //    twice.
    let mut held: HashMap<(String, String), String> = HashMap::new();
    let mut by_participant: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut sessions: HashMap<String, (String, String, String)> = HashMap::new();
    for at in &created {
        let s = &at.body;
        let id = s["id"].as_str().unwrap().to_string();
        let p = s["proxy_number"].as_str().unwrap().to_string();
        assert!(numbers.contains(&p), "proxy {p} is not in the pool");
        assert_eq!(s["participants"][0]["number"], at.a.as_str());
        assert_eq!(s["participants"][1]["number"], at.b.as_str());
        for who in [&at.a, &at.b] {
            if let Some(prev) = held.insert((who.clone(), p.clone()), id.clone()) {
                panic!("{who} holds {p} in two open sessions: {prev} and {id}");
            }
            by_participant
                .entry(who.clone())
                .or_default()
                .insert(p.clone());
        }
        assert!(
            sessions
                .insert(id.clone(), (at.a.clone(), at.b.clone(), p))
                .is_none(),
            "session id {id} returned twice"
        );
    }

    // 3. No false exhaustion: sessions only accumulated during the race, so a pair refused
    //    for exhaustion must, at the end, hold every number of the pool between them.
    for at in attempts.iter().filter(|a| a.status == 409) {
        let empty = BTreeSet::new();
        let union: BTreeSet<&String> = by_participant
            .get(&at.a)
            .unwrap_or(&empty)
            .union(by_participant.get(&at.b).unwrap_or(&empty))
            .collect();
        assert_eq!(
            union.len(),
            POOL_SIZE,
            "{} / {} was refused as exhausted while only {} numbers were held between them",
            at.a,
            at.b,
            union.len()
        );
    }

    // 4. From Redis: every open session has exactly its two route records, and nothing else
    //    is open.
    let now = now_ms();
    let records = route_records(apps[0]).await;
    let open: Vec<&RouteRecord> = records.iter().filter(|r| r.open_until_ms > now).collect();
    assert_eq!(
        open.len(),
        2 * sessions.len(),
        "Redis holds {} open route records for {} open sessions",
        open.len(),
        sessions.len()
    );
    let mut per_session: HashMap<&str, Vec<&RouteRecord>> = HashMap::new();
    for r in &open {
        per_session
            .entry(r.session_id.as_str())
            .or_default()
            .push(r);
    }
    assert_eq!(
        per_session.len(),
        sessions.len(),
        "open route records name {} sessions, the API created {}",
        per_session.len(),
        sessions.len()
    );
    let mut record_proxies: Vec<&str> = Vec::new();
    for (id, recs) in &per_session {
        assert_eq!(
            recs.len(),
            2,
            "session {id} has {} open route records",
            recs.len()
        );
        assert_ne!(
            recs[0].participant, recs[1].participant,
            "both routes of {id} are on one participant"
        );
        assert_eq!(
            recs[0].proxy, recs[1].proxy,
            "the routes of {id} are on two numbers"
        );
        for r in recs {
            assert_eq!(r.mode, "b", "voice_sms sessions store mode b: {r:?}");
            assert!(
                r.held_until_ms >= r.open_until_ms,
                "held before open ends: {r:?}"
            );
        }
        record_proxies.push(&recs[0].proxy);
        // Records may name the session by its full id or by the part inside the shard.
        if id.starts_with("ses_") {
            let (_, _, p) = sessions.get(*id).unwrap_or_else(|| {
                panic!("Redis has routes for {id}, which the API never returned")
            });
            assert_eq!(p, &recs[0].proxy, "routes of {id} are on another number");
        }
    }
    let mut api_proxies: Vec<&str> = sessions.values().map(|(_, _, p)| p.as_str()).collect();
    record_proxies.sort();
    api_proxies.sort();
    assert_eq!(
        record_proxies, api_proxies,
        "Redis and the API disagree on which numbers are used"
    );

    // 5. Through /v1/route on every instance: each participant reaches the other one.
    for (i, (id, (a, b, p))) in sessions.iter().enumerate() {
        let app = apps[i % apps.len()];
        app.assert_connects(a, p, b, id).await;
        app.assert_connects(b, p, a, id).await;
    }

    // 6. The pool's own counters agree.
    let shown = apps[0].get(&format!("/v1/pools/{pool}")).await.expect(200);
    assert_eq!(shown["open_sessions"], sessions.len(), "{shown}");
    let listed = apps[0]
        .get(&format!("/v1/pools/{pool}/numbers"))
        .await
        .expect(200);
    let total: u64 = listed["numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["open_sessions"].as_u64().unwrap())
        .sum();
    assert_eq!(total as usize, sessions.len(), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_never_share_a_route() {
    let app = TestApp::start().await;
    app.pool("race", json!({}), &proxies(POOL_SIZE)).await;
    let attempts = race(&[&app], "race").await;
    check_race(&[&app], "race", &attempts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_never_share_a_route() {
    let one = TestApp::start().await;
    let two = one.peer().await;
    one.pool("race2", json!({}), &proxies(POOL_SIZE)).await;
    let attempts = race(&[&one, &two], "race2").await;
    check_race(&[&two, &one], "race2", &attempts).await;
}

#[tokio::test]
async fn a_participant_holding_every_number_exhausts_the_pool() {
    let app = TestApp::start().await;
    app.pool("tiny-pool", json!({ "cooloff_secs": 0 }), &proxies(3))
        .await;
    let a = participant(0);
    let mut held = BTreeSet::new();
    let mut first = None;
    for i in 1..=3 {
        let s = app
            .open_session("tiny-pool", &a, &participant(i), None)
            .await;
        held.insert(s["proxy_number"].as_str().unwrap().to_string());
        first.get_or_insert(s);
    }
    assert_eq!(held.len(), 3, "a participant got one number twice");

    let r = app
        .create_session("tiny-pool", &a, &participant(4), None)
        .await;
    let p = r.expect_problem(409, "pool_exhausted");
    assert!(
        p["detail"].as_str().unwrap().contains("tiny-pool"),
        "pool_exhausted must name the pool: {p}"
    );
    // Either side counts: participant(4) is refused with a as the second participant too.
    app.create_session("tiny-pool", &participant(4), &a, None)
        .await
        .expect_problem(409, "pool_exhausted");
    // Others are not affected.
    app.open_session("tiny-pool", &participant(4), &participant(5), None)
        .await;

    // Closing one of a's sessions frees exactly that number for a.
    let first = first.unwrap();
    app.close_session(first["id"].as_str().unwrap())
        .await
        .expect(200);
    let s = app
        .open_session("tiny-pool", &a, &participant(6), None)
        .await;
    assert_eq!(s["proxy_number"], first["proxy_number"]);
}

#[tokio::test]
async fn numbers_held_by_either_participant_are_excluded() {
    let app = TestApp::start().await;
    app.pool("split", json!({}), &proxies(3)).await;
    let (a, b) = (participant(0), participant(1));
    // a holds two numbers, b holds the third: nothing is free for both.
    let s1 = app.open_session("split", &a, &participant(2), None).await;
    let s2 = app.open_session("split", &a, &participant(3), None).await;
    let s3 = app.open_session("split", &participant(4), &b, None).await;
    let used: BTreeSet<&str> = [&s1, &s2, &s3]
        .iter()
        .map(|s| s["proxy_number"].as_str().unwrap())
        .collect();
    if used.len() == 3 {
        app.create_session("split", &a, &b, None)
            .await
            .expect_problem(409, "pool_exhausted");
    } else {
        // b's session shares a number with one of a's: one number is still free for both.
        let s = app.open_session("split", &a, &b, None).await;
        assert!(!used.contains(s["proxy_number"].as_str().unwrap()));
    }
}

#[tokio::test]
async fn mode_needs_the_capability() {
    let app = TestApp::start().await;
    app.put_pool("caps", json!({})).await.expect(201);
    app.post(
        "/v1/pools/caps/numbers",
        &json!({ "numbers": [
            { "number": proxy(0), "capabilities": ["voice"] },
            { "number": proxy(1), "capabilities": ["voice", "sms"] },
        ]}),
    )
    .await
    .expect(200);
    let a = participant(0);
    let session = |mode: &str, b: usize| {
        json!({
            "pool": "caps", "mode": mode,
            "participants": [{ "number": a }, { "number": participant(b) }],
        })
    };
    let sms = app
        .create_session_with(&session("sms", 1))
        .await
        .expect(201);
    assert_eq!(
        sms["proxy_number"],
        proxy(1),
        "an sms session got a voice-only number"
    );
    // The only other number cannot text.
    app.create_session_with(&session("voice_sms", 2))
        .await
        .expect_problem(409, "pool_exhausted");
    let voice = app
        .create_session_with(&session("voice", 3))
        .await
        .expect(201);
    assert_eq!(voice["proxy_number"], proxy(0));
}

#[tokio::test]
async fn sticky_number_wins_over_geo_match() {
    let app = TestApp::start().await;
    let x = proxy(0); // area code 201
    let local = ["+14155550990".to_string(), "+14155550991".to_string()];
    app.pool(
        "sticky",
        json!({ "cooloff_secs": 0, "geo_match": "area_code" }),
        std::slice::from_ref(&x),
    )
    .await;
    let (a, b) = (participant(0), participant(1)); // area code 415
    let s = app.open_session("sticky", &a, &b, None).await;
    assert_eq!(s["proxy_number"], x);
    assert_eq!(s["geo_match"], "country");
    app.close_session(s["id"].as_str().unwrap())
        .await
        .expect(200);

    // Now two numbers in a's own area code are free; without stickiness a would get one.
    app.add_numbers("sticky", &local).await.expect(200);
    let again = app.open_session("sticky", &a, &b, None).await;
    assert_eq!(
        again["proxy_number"], x,
        "the same two people should get the number they shared before"
    );

    // A draining number is not sticky.
    app.close_session(again["id"].as_str().unwrap())
        .await
        .expect(200);
    let r = app
        .patch(
            &format!("/v1/pools/sticky/numbers/{}", path_number(&x)),
            &json!({ "state": "draining" }),
        )
        .await;
    assert!(r.status / 100 == 2, "{}", r.text);
    let drained = app.open_session("sticky", &a, &b, None).await;
    assert_ne!(drained["proxy_number"], x, "a draining number was reused");

    // A new pair prefers the area code.
    let fresh = app.open_session("sticky", &a, &participant(2), None).await;
    assert!(
        local.contains(&fresh["proxy_number"].as_str().unwrap().to_string()),
        "geo-match should pick a 415 number: {fresh}"
    );
    assert_eq!(fresh["geo_match"], "area_code");
}

#[tokio::test]
async fn geo_match_prefers_the_area_code_then_the_country() {
    let app = TestApp::start().await;
    let local = "+14155550990".to_string();
    app.pool(
        "geo",
        json!({ "geo_match": "area_code" }),
        &[proxy(0), proxy(1), local.clone()],
    )
    .await;
    let a = participant(0);
    let s = app.open_session("geo", &a, &participant(1), None).await;
    assert_eq!(s["proxy_number"], local);
    assert_eq!(s["geo_match"], "area_code");
    let s = app.open_session("geo", &a, &participant(2), None).await;
    assert_ne!(s["proxy_number"], local);
    assert_eq!(s["geo_match"], "country");
}

/// Sticky memory lives in the participants' entries once a session's hold ends: each keeps
/// its 16 newest partners, the newest still gets its number back, and erasing a participant
/// leaves no sticky memory about them on either side.
#[tokio::test]
async fn sticky_memory_keeps_the_newest_partners_and_goes_with_erasure() {
    let app = TestApp::start().await;
    app.pool("kept", json!({ "cooloff_secs": 0 }), &proxies(3))
        .await;
    let a = participant(0);
    let partners: Vec<String> = (1..=18).map(participant).collect();
    let mut last = Value::Null;
    for b in &partners {
        last = app.open_session("kept", &a, b, None).await;
        app.close_session(last["id"].as_str().unwrap())
            .await
            .expect(200);
    }
    let entries = app.dump().await;
    let sticky_items = |value: &[u8]| String::from_utf8_lossy(value).matches('~').count() / 2;
    let most: usize = entries
        .iter()
        .filter(|(k, _)| k.contains(":u:"))
        .flat_map(|(_, values)| values.iter().map(|v| sticky_items(v)))
        .max()
        .unwrap_or(0);
    assert_eq!(most, 16, "a participant keeps its 16 newest partners");

    // The newest pair gets its number back, whichever number is least loaded.
    let newest = partners.last().unwrap();
    let again = app.open_session("kept", &a, newest, None).await;
    assert_eq!(again["proxy_number"], last["proxy_number"]);
    app.close_session(again["id"].as_str().unwrap())
        .await
        .expect(200);

    app.delete(&format!("/v1/participants/{}", path_number(&a)))
        .await
        .expect(200);
    for (key, values) in app.dump().await {
        if key.contains(":u:") {
            for v in values {
                assert_eq!(
                    sticky_items(&v),
                    0,
                    "sticky memory about the erased participant is left in {key}"
                );
            }
        }
    }
}
