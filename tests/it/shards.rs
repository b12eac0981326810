//! Multi-shard pools: the `shards` policy field, numbers balanced over the shards, the
//! load-aware allocation order, exhaustion across shards, and growing a pool live under
//! creates and routes from two hush instances.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use hush::domain::SessionId;
use hush::store::keys::hash_slot;
use serde_json::{Value, json};

use crate::harness::*;

/// The shard a session lives in, from its id.
fn shard_of_session(session: &Value) -> u16 {
    let id = session["id"].as_str().expect("session id");
    SessionId::parse(id).expect("a valid session id").shard
}

/// The shard a proxy number was put in, from its owner entry (`<pool id>.<shard>`).
async fn shard_of_number(app: &TestApp, number: &str) -> u16 {
    let owner: String = redis::cmd("GET")
        .arg(format!("{}:n:{number}", app.prefix))
        .query_async(&mut app.redis().await)
        .await
        .expect("reading an owner entry");
    let (_, shard) = owner.split_once('.').expect("owner is pool.shard");
    shard.parse().expect("shard number")
}

/// How many of `numbers` each shard holds.
async fn numbers_per_shard(app: &TestApp, numbers: &[String]) -> BTreeMap<u16, usize> {
    let mut out = BTreeMap::new();
    for n in numbers {
        *out.entry(shard_of_number(app, n).await).or_default() += 1;
    }
    out
}

async fn grow(app: &TestApp, pool: &str, shards: u16) {
    let view = app
        .patch(&format!("/v1/pools/{pool}"), &json!({ "shards": shards }))
        .await
        .expect(200);
    assert_eq!(view["shards"], shards, "{view}");
}

#[tokio::test]
async fn shards_default_to_one_are_bounded_and_only_grow() {
    let app = TestApp::start().await;
    let view = app.put_pool("grow", json!({})).await.expect(201);
    assert_eq!(view["shards"], 1);

    for bad in [json!(0), json!(65), json!(-1), json!("two")] {
        let r = app.put_pool("grow", json!({ "shards": bad })).await;
        r.expect_problem(422, "validation_failed");
    }
    let r = app.put_pool("fresh", json!({ "shards": 65 })).await;
    let p = r.expect_problem(422, "validation_failed");
    assert!(p["detail"].as_str().unwrap().contains("shards"), "{p}");
    app.get("/v1/pools/fresh")
        .await
        .expect_problem(404, "pool_not_found");

    let made = app
        .put_pool("wide", json!({ "shards": 64 }))
        .await
        .expect(201);
    assert_eq!(made["shards"], 64);

    grow(&app, "grow", 4).await;
    // PATCH lower, PUT lower and `null` (the default, 1) are all a shrink.
    for r in [
        app.patch("/v1/pools/grow", &json!({ "shards": 2 })).await,
        app.put_pool("grow", json!({ "shards": 3 })).await,
        app.patch("/v1/pools/grow", &json!({ "shards": null }))
            .await,
    ] {
        let p = r.expect_problem(422, "shards_cannot_shrink");
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains("grow") && detail.contains('4'), "{p}");
    }
    // A PUT that leaves `shards` out keeps the count; other settings take their defaults.
    let view = app
        .put_pool("grow", json!({ "cooloff_secs": 60 }))
        .await
        .expect(200);
    assert_eq!(
        (view["shards"].clone(), view["cooloff_secs"].clone()),
        (json!(4), json!(60))
    );
    // Asking for the same count again is no change, and is fine.
    grow(&app, "grow", 4).await;
    let view = app.get("/v1/pools/grow").await.expect(200);
    assert_eq!(view["shards"], 4);
}

#[tokio::test]
async fn numbers_added_after_a_grow_fill_the_new_shards_and_stay_put() {
    let app = TestApp::start().await;
    let first = proxies(4);
    app.pool("fill", json!({ "cooloff_secs": 0 }), &first).await;
    assert_eq!(
        numbers_per_shard(&app, &first).await,
        BTreeMap::from([(0, 4)])
    );

    grow(&app, "fill", 4).await;
    let later: Vec<String> = (4..10).map(proxy).collect();
    let r = app.add_numbers("fill", &later).await.expect(200);
    assert_eq!(r["added"].as_array().unwrap().len(), 6, "{r}");
    // The three empty shards take two each; the old numbers did not move.
    assert_eq!(
        numbers_per_shard(&app, &later).await,
        BTreeMap::from([(1, 2), (2, 2), (3, 2)])
    );
    assert_eq!(
        numbers_per_shard(&app, &first).await,
        BTreeMap::from([(0, 4)])
    );
    // Adding them again is a duplicate wherever they went.
    let again = app.add_numbers("fill", &later).await.expect(200);
    assert_eq!(again["skipped"].as_array().unwrap().len(), 6, "{again}");
    assert!(
        again["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["code"] == "duplicate"),
        "{again}"
    );
    let view = app.get("/v1/pools/fill").await.expect(200);
    assert_eq!(view["numbers"]["total"], 10);

    // Draining and removing find each number in its own shard.
    for n in [&first[1], &later[0], &later[5]] {
        let path = format!("/v1/pools/fill/numbers/{}", path_number(n));
        let v = app
            .patch(&path, &json!({ "state": "draining" }))
            .await
            .expect(200);
        assert_eq!(v["state"], "draining", "{v}");
        let r = app.delete(&path).await;
        assert_eq!(r.status, 204, "{}", r.text);
    }
    let list = app.get("/v1/pools/fill/numbers").await.expect(200);
    assert_eq!(list["numbers"].as_array().unwrap().len(), 7, "{list}");

    // One participant's sessions take every number left, in every shard; the pool empties
    // and deletes whole.
    let mut used = HashSet::new();
    let mut ids = Vec::new();
    for i in 0..7 {
        let s = app
            .open_session("fill", &participant(0), &participant(10 + i), None)
            .await;
        used.insert(shard_of_session(&s));
        app.assert_connects(
            &participant(0),
            s["proxy_number"].as_str().unwrap(),
            &participant(10 + i),
            s["id"].as_str().unwrap(),
        )
        .await;
        ids.push(s["id"].as_str().unwrap().to_string());
    }
    assert_eq!(used.len(), 4, "sessions used shards {used:?}");
    app.create_session("fill", &participant(0), &participant(30), None)
        .await
        .expect_problem(409, "pool_exhausted");
    for id in &ids {
        app.close_session(id).await.expect(200);
    }
    let r = app.delete("/v1/pools/fill").await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(
        app.scan_keys("n:*").await.is_empty(),
        "owner entries left behind"
    );
}

#[tokio::test]
async fn sessions_spread_over_shards_and_go_where_the_load_is_lowest() {
    let app = TestApp::start().await;
    app.pool("spread", json!({ "shards": 4 }), &proxies(8))
        .await;
    assert_eq!(
        numbers_per_shard(&app, &proxies(8)).await,
        BTreeMap::from([(0, 2), (1, 2), (2, 2), (3, 2)])
    );
    let mut per_shard: BTreeMap<u16, usize> = BTreeMap::new();
    for i in 0..8 {
        let s = app
            .open_session("spread", &participant(i), &participant(100 + i), None)
            .await;
        *per_shard.entry(shard_of_session(&s)).or_default() += 1;
    }
    assert_eq!(per_shard, BTreeMap::from([(0, 2), (1, 2), (2, 2), (3, 2)]));

    // A pool busy on one shard: ten sessions on its two numbers, then a grow and two numbers
    // in the new shard. New sessions go to the new shard until it is as busy.
    app.pool("busy", json!({}), &[proxy(20), proxy(21)]).await;
    for i in 0..10 {
        let s = app
            .open_session("busy", &participant(i), &participant(100 + i), None)
            .await;
        assert_eq!(shard_of_session(&s), 0);
    }
    grow(&app, "busy", 2).await;
    app.add_numbers("busy", &[proxy(50), proxy(51)])
        .await
        .expect(200);
    for i in 0..8 {
        let s = app
            .open_session("busy", &participant(20 + i), &participant(120 + i), None)
            .await;
        assert_eq!(
            shard_of_session(&s),
            1,
            "session {i} went to the busy shard: {s}"
        );
    }
}

#[tokio::test]
async fn a_pair_goes_back_to_the_shard_and_number_it_shared_before() {
    let app = TestApp::start().await;
    app.pool(
        "sticky",
        json!({ "shards": 2, "cooloff_secs": 0 }),
        &proxies(4),
    )
    .await;
    let (a, b) = (participant(0), participant(1));
    let first = app.open_session("sticky", &a, &b, None).await;
    let home = shard_of_session(&first);
    app.close_session(first["id"].as_str().unwrap())
        .await
        .expect(200);
    // Make the pair's shard the busier one: keep open one session that landed there.
    let mut i = 0;
    loop {
        let s = app
            .open_session("sticky", &participant(10 + i), &participant(50 + i), None)
            .await;
        if shard_of_session(&s) != home {
            app.close_session(s["id"].as_str().unwrap())
                .await
                .expect(200);
        } else {
            break;
        }
        i += 1;
        assert!(i < 20, "no session landed on shard {home}");
    }
    let again = app.open_session("sticky", &a, &b, None).await;
    assert_eq!(shard_of_session(&again), home, "{again}");
    assert_eq!(again["proxy_number"], first["proxy_number"], "{again}");
}

#[tokio::test]
async fn a_pool_is_exhausted_only_when_every_shard_is_full_for_the_pair() {
    let app = TestApp::start().await;
    let numbers = proxies(6);
    app.pool("full", json!({ "shards": 3 }), &numbers).await;
    let a = participant(0);
    let mut held = HashSet::new();
    let mut shards = HashSet::new();
    for i in 0..6 {
        let s = app
            .open_session("full", &a, &participant(10 + i), None)
            .await;
        assert!(
            held.insert(s["proxy_number"].as_str().unwrap().to_string()),
            "{s}"
        );
        shards.insert(shard_of_session(&s));
    }
    assert_eq!(held.len(), 6);
    assert_eq!(shards.len(), 3, "A's sessions used shards {shards:?}");
    let r = app.create_session("full", &a, &participant(20), None).await;
    let p = r.expect_problem(409, "pool_exhausted");
    assert!(p["detail"].as_str().unwrap().contains("full"), "{p}");
    // Anyone else still gets a number, from any shard.
    app.open_session("full", &participant(30), &participant(31), None)
        .await;
    // A grow with a number in the new shard gives A room again.
    grow(&app, "full", 4).await;
    app.add_numbers("full", &[proxy(40)]).await.expect(200);
    let s = app.open_session("full", &a, &participant(20), None).await;
    assert_eq!(
        (shard_of_session(&s), s["proxy_number"].as_str()),
        (3, Some(proxy(40).as_str()))
    );
}

/// Creates from two instances race a grow (and the numbers it brings); afterwards no
/// (participant, proxy) pair is held twice and every session routes to its other party, from
/// either instance.
#[tokio::test]
async fn growing_live_under_creates_from_two_instances_misroutes_nothing() {
    const TASKS: usize = 16;
    const PER_TASK: usize = 6;
    let one = TestApp::start().await;
    let two = one.peer().await;
    one.pool("live", json!({}), &proxies(4)).await;
    // Both instances have read the one-shard pool and routed on it before the grow.
    let warm = two
        .open_session("live", &participant(0), &participant(1), None)
        .await;
    assert_eq!(shard_of_session(&warm), 0);
    one.assert_connects(
        &participant(0),
        warm["proxy_number"].as_str().unwrap(),
        &participant(1),
        warm["id"].as_str().unwrap(),
    )
    .await;

    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let app = if t % 2 == 0 { &one } else { &two };
        let (client, url, key) = (
            app.client.clone(),
            app.url("/v1/sessions"),
            app.admin_key.clone(),
        );
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let mut out = Vec::new();
            for k in 0..PER_TASK {
                // Twelve people meet many others: they contend for the same numbers.
                let (a, b) = (participant((t + k) % 12), participant(12 + t * PER_TASK + k));
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({ "pool": "live", "participants": [{ "number": a }, { "number": b }] }))
                    .send()
                    .await
                    .expect("create request");
                let status = r.status().as_u16();
                let body: Value = r.json().await.expect("JSON answer");
                out.push((a, b, status, body));
            }
            out
        });
    }
    barrier.wait().await;
    grow(&one, "live", 4).await;
    let added: Vec<String> = (10..22).map(proxy).collect();
    one.add_numbers("live", &added).await.expect(200);
    let mut created = Vec::new();
    while let Some(done) = tasks.join_next().await {
        for (a, b, status, body) in done.expect("a creating task panicked") {
            match status {
                201 => created.push((a, b, body)),
                409 => assert_eq!(body["code"], "pool_exhausted", "{body}"),
                s => panic!("create answered {s}: {body}"),
            }
        }
    }
    // The other instance uses the new shards without a restart.
    let mut fresh = HashSet::new();
    for i in 0..8 {
        let s = two
            .open_session("live", &participant(200 + i), &participant(250 + i), None)
            .await;
        fresh.insert(shard_of_session(&s));
        created.push((participant(200 + i), participant(250 + i), s));
    }
    assert!(
        fresh.iter().any(|&s| s > 0),
        "instance two kept to shard 0: {fresh:?}"
    );
    assert!(
        created.len() > TASKS * PER_TASK / 2,
        "only {} sessions",
        created.len()
    );

    let mut held: HashMap<(String, String), String> = HashMap::new();
    for (i, (a, b, s)) in created.iter().enumerate() {
        let id = s["id"].as_str().unwrap();
        let proxy = s["proxy_number"].as_str().unwrap();
        let now = one.get_session(id).await.expect(200);
        assert_eq!(now["status"], "open", "{now}");
        for who in [a, b] {
            if let Some(other) = held.insert((who.clone(), proxy.to_string()), id.to_string()) {
                panic!("{who} holds {proxy} in {other} and {id}");
            }
        }
        let (x, y) = if i % 2 == 0 {
            (&one, &two)
        } else {
            (&two, &one)
        };
        x.assert_connects(a, proxy, b, id).await;
        y.assert_connects(b, proxy, a, id).await;
    }
}

#[tokio::test]
async fn the_shards_of_a_pool_are_in_different_slots() {
    let app = TestApp::start().await;
    app.pool("slots", json!({ "shards": 8 }), &proxies(8)).await;
    let mut slots = HashSet::new();
    let mut con = app.redis().await;
    for n in proxies(8) {
        let owner: String = redis::cmd("GET")
            .arg(format!("{}:n:{n}", app.prefix))
            .query_async(&mut con)
            .await
            .unwrap();
        let (pool, shard) = owner.split_once('.').unwrap();
        let nums = format!("{}:{{p{pool}.{shard}}}:nums", app.prefix);
        // The number is in that shard's hash, so the key read works where it lives.
        let meta: Option<String> = redis::cmd("HGET")
            .arg(&nums)
            .arg(&n)
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(meta.is_some(), "{n} is not in {nums}");
        slots.insert(hash_slot(&nums));
    }
    assert_eq!(slots.len(), 8, "eight shards share slots: {slots:?}");
    // Sessions in every shard route, whichever node holds it.
    for i in 0..8 {
        let s = app
            .open_session("slots", &participant(i), &participant(100 + i), None)
            .await;
        app.assert_connects(
            &participant(100 + i),
            s["proxy_number"].as_str().unwrap(),
            &participant(i),
            s["id"].as_str().unwrap(),
        )
        .await;
    }
}

#[tokio::test]
async fn the_cli_grows_a_pool_and_refuses_to_shrink_it() {
    let app = TestApp::start().await;
    app.cli(&["pools", "put", "clip", "--shards", "3"]);
    assert_eq!(app.get("/v1/pools/clip").await.expect(200)["shards"], 3);
    // A replacement that does not name the shards keeps them.
    app.cli(&["pools", "put", "clip", "--replace", "--cooloff-secs", "0"]);
    let view = app.get("/v1/pools/clip").await.expect(200);
    assert_eq!(
        (view["shards"].clone(), view["cooloff_secs"].clone()),
        (json!(3), json!(0))
    );
    for (asked, says) in [
        ("2", "can only grow"),
        ("65", "--shards must be between 1 and 64"),
    ] {
        let out = cli_output(&app.config, &["pools", "put", "clip", "--shards", asked]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "--shards {asked}: {err}"
        );
    }
    assert!(app.cli(&["pools", "list"]).contains("shards=3"));
}

/// What walks every shard of a pool (event listing, erasure) finds what lives in the shards a
/// grow added.
#[tokio::test]
async fn listing_events_and_erasure_reach_the_shards_a_grow_added() {
    let app = TestApp::start().await;
    let policy = json!({ "callback_url": "https://app.example.com/hooks" });
    app.pool("walk", policy, &[proxy(0)]).await;
    let a = participant(0);
    let mut sessions = vec![app.open_session("walk", &a, &participant(1), None).await];
    grow(&app, "walk", 3).await;
    app.add_numbers("walk", &[proxy(1), proxy(2)])
        .await
        .expect(200);
    for b in [2, 3] {
        sessions.push(app.open_session("walk", &a, &participant(b), None).await);
    }
    let shards: HashSet<u16> = sessions.iter().map(shard_of_session).collect();
    assert_eq!(shards.len(), 3, "sessions in shards {shards:?}");

    let events = app.get("/v1/events?pool=walk").await.expect(200);
    let created = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "session.created")
        .count();
    assert_eq!(created, 3, "{events}");

    let erased = app
        .delete(&format!("/v1/participants/{}", path_number(&a)))
        .await
        .expect(200);
    assert_eq!(erased["closed_sessions"], 3, "{erased}");
    for s in &sessions {
        let now = app.get_session(s["id"].as_str().unwrap()).await.expect(200);
        assert_eq!(
            (now["status"].as_str(), now["close_reason"].as_str()),
            (Some("closed"), Some("erased")),
            "{now}"
        );
    }
}
