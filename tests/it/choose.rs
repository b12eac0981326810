//! Choosing the number: a create that names its `proxy_number` gets that number or a clear
//! refusal (held, draining, wrong capability, not in the pool), atomically and in the shard
//! that owns it; `number_selection` decides whether the pair's last shared number is reused.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use hush::domain::SessionId;
use serde_json::{Value, json};

use crate::harness::*;

fn asking(pool: &str, a: &str, b: &str, number: &str) -> Value {
    json!({
        "pool": pool,
        "participants": [{ "number": a }, { "number": b }],
        "proxy_number": number,
    })
}

fn selecting(pool: &str, a: &str, b: &str, selection: &str) -> Value {
    json!({
        "pool": pool,
        "participants": [{ "number": a }, { "number": b }],
        "number_selection": selection,
    })
}

/// A refusal's detail, which must name no participant.
fn detail(problem: &Value, participants: &[&str]) -> String {
    let d = problem["detail"].as_str().expect("a detail").to_string();
    for p in participants {
        assert!(
            !d.contains(&national_digits(p)),
            "a participant's number is in the detail: {d}"
        );
    }
    d
}

async fn set_state(app: &TestApp, pool: &str, number: &str, state: &str) {
    let r = app
        .patch(
            &format!("/v1/pools/{pool}/numbers/{}", path_number(number)),
            &json!({ "state": state }),
        )
        .await;
    assert!(r.status / 100 == 2, "{}", r.text);
}

fn shard_of_session(session: &Value) -> u16 {
    SessionId::parse(session["id"].as_str().expect("session id"))
        .expect("a valid session id")
        .shard
}

async fn shard_of_number(app: &TestApp, number: &str) -> u16 {
    let owner: String = redis::cmd("GET")
        .arg(format!("{}:n:{number}", app.prefix))
        .query_async(&mut app.redis().await)
        .await
        .expect("reading an owner entry");
    let (_, shard) = owner.split_once('.').expect("owner is pool.shard");
    shard.parse().expect("shard number")
}

#[tokio::test]
async fn a_chosen_free_number_is_used() {
    let app = TestApp::start().await;
    app.pool("pick", json!({}), &proxies(5)).await;
    let (a, b) = (participant(0), participant(1));
    for i in [3, 1, 4] {
        let s = app
            .create_session_with(&asking("pick", &a, &participant(10 + i), &proxy(i)))
            .await
            .expect(201);
        assert_eq!(s["proxy_number"], proxy(i), "{s}");
        let shown = app.get_session(s["id"].as_str().unwrap()).await.expect(200);
        assert_eq!(shown["proxy_number"], proxy(i));
        app.assert_connects(
            &participant(10 + i),
            &proxy(i),
            &a,
            s["id"].as_str().unwrap(),
        )
        .await;
    }
    // Its load counts like an allocated session's: the least loaded numbers are the others.
    let s = app.open_session("pick", &b, &participant(20), None).await;
    assert!(
        [proxy(0), proxy(2)].contains(&s["proxy_number"].as_str().unwrap().to_string()),
        "allocation took a loaded number: {s}"
    );
    let numbers = app.get("/v1/pools/pick/numbers").await.expect(200);
    let open: i64 = numbers["numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["open_sessions"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(open, 4, "{numbers}");
}

#[tokio::test]
async fn a_number_held_by_either_participant_is_refused_open_or_cooling_off() {
    let app = TestApp::start().await;
    app.pool("held", json!({ "cooloff_secs": 600 }), &proxies(3))
        .await;
    let (a, b, c) = (participant(0), participant(1), participant(2));
    let x = proxy(1);
    let first = app
        .create_session_with(&asking("held", &a, &c, &x))
        .await
        .expect(201);
    for (body, side) in [
        (asking("held", &a, &b, &x), 0),
        (asking("held", &b, &a, &x), 1),
    ] {
        let p = app
            .create_session_with(&body)
            .await
            .expect_problem(409, "number_in_use");
        let d = detail(&p, &[&a, &b, &c]);
        assert!(d.contains(&format!("participants[{side}]")), "{d}");
        assert!(d.contains(&x) && d.contains("held"), "{d}");
    }
    // Others share it: one number serves many pairs.
    let other = app
        .create_session_with(&asking("held", &b, &participant(3), &x))
        .await
        .expect(201);
    assert_eq!(other["proxy_number"], x);

    app.close_session(first["id"].as_str().unwrap())
        .await
        .expect(200);
    let p = app
        .create_session_with(&asking("held", &participant(4), &a, &x))
        .await
        .expect_problem(409, "number_in_use");
    assert!(detail(&p, &[&a]).contains("participants[1]"), "{p}");
    // Nothing of a refused create stays behind: the only sessions are the two made.
    let mine = app
        .get(&format!("/v1/sessions?participant={}", path_number(&b)))
        .await
        .expect(200);
    assert_eq!(mine["sessions"].as_array().unwrap().len(), 1, "{mine}");
}

#[tokio::test]
async fn a_draining_number_is_refused() {
    let app = TestApp::start().await;
    app.pool("drain", json!({}), &proxies(2)).await;
    set_state(&app, "drain", &proxy(0), "draining").await;
    let p = app
        .create_session_with(&asking(
            "drain",
            &participant(0),
            &participant(1),
            &proxy(0),
        ))
        .await
        .expect_problem(409, "number_in_use");
    assert!(detail(&p, &[]).contains("draining"), "{p}");
    set_state(&app, "drain", &proxy(0), "active").await;
    let s = app
        .create_session_with(&asking(
            "drain",
            &participant(0),
            &participant(1),
            &proxy(0),
        ))
        .await
        .expect(201);
    assert_eq!(s["proxy_number"], proxy(0));
}

#[tokio::test]
async fn a_number_outside_the_pool_is_unprocessable() {
    let app = TestApp::start().await;
    app.pool("mine", json!({}), &proxies(2)).await;
    app.pool("theirs", json!({}), &[proxy(5)]).await;
    let (a, b) = (participant(0), participant(1));
    // Nobody's number, another pool's, and a participant's own: none is repeated back.
    for asked in [proxy(9), proxy(5), participant(7)] {
        let p = app
            .create_session_with(&asking("mine", &a, &b, &asked))
            .await
            .expect_problem(422, "number_not_in_pool");
        let d = detail(&p, &[&a, &b, &asked]);
        assert!(d.contains("mine"), "{d}");
    }
    app.create_session_with(&asking("mine", &a, &b, "+1 nope"))
        .await
        .expect_problem(422, "invalid_number");
    let mut body = asking("mine", &a, &b, &proxy(0));
    body["number_selection"] = json!("sometimes");
    app.create_session_with(&body)
        .await
        .expect_problem(422, "validation_failed");
    assert!(
        !captured_logs().contains(&national_digits(&participant(7))),
        "a participant's number asked for as a proxy reached the logs"
    );
}

#[tokio::test]
async fn a_number_without_the_capability_is_refused() {
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
    let (a, b) = (participant(0), participant(1));
    for mode in ["sms", "voice_sms"] {
        let mut body = asking("caps", &a, &b, &proxy(0));
        body["mode"] = json!(mode);
        let p = app
            .create_session_with(&body)
            .await
            .expect_problem(409, "number_in_use");
        assert!(detail(&p, &[&a, &b]).contains("capability"), "{p}");
    }
    let mut body = asking("caps", &a, &b, &proxy(0));
    body["mode"] = json!("voice");
    assert_eq!(
        app.create_session_with(&body).await.expect(201)["proxy_number"],
        proxy(0)
    );
}

/// Many creates at once for one chosen number, between pairs drawn from a few participants:
/// the winners never share a participant, and every loser shares one with a winner.
#[tokio::test]
async fn racing_creates_for_one_number_let_exactly_the_allowed_pairs_win() {
    let app = TestApp::start().await;
    let x = proxy(0);
    app.pool("race", json!({}), &proxies(2)).await;
    const PEOPLE: usize = 12;
    let mut pairs = Vec::new();
    for i in 0..PEOPLE {
        for j in [1, 3, 5] {
            pairs.push((participant(i), participant((i + j) % PEOPLE)));
        }
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(pairs.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for (a, b) in pairs {
        let client = app.client.clone();
        let url = app.url("/v1/sessions");
        let key = app.admin_key.clone();
        let body = asking("race", &a, &b, &x);
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let r = client
                .post(&url)
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .expect("create request");
            let status = r.status().as_u16();
            let body: Value = r.json().await.expect("a JSON answer");
            (a, b, status, body)
        });
    }
    let mut holders: HashMap<String, usize> = HashMap::new();
    let mut losers = Vec::new();
    let mut won = 0;
    for (a, b, status, body) in tasks.join_all().await {
        match status {
            201 => {
                assert_eq!(body["proxy_number"], x);
                won += 1;
                for p in [&a, &b] {
                    *holders.entry(p.clone()).or_default() += 1;
                }
            }
            409 => {
                assert_eq!(body["code"], "number_in_use", "{body}");
                losers.push((a, b));
            }
            _ => panic!("unexpected answer {status}: {body}"),
        }
    }
    assert!(won > 0, "nobody got the number");
    for (p, n) in &holders {
        assert_eq!(*n, 1, "participant {p} holds the number {n} times");
    }
    for (a, b) in losers {
        assert!(
            holders.contains_key(&a) || holders.contains_key(&b),
            "{a} and {b} were refused although neither holds the number"
        );
    }
    // The store agrees: one open route per holder on that number, and its load matches.
    let routes: Vec<RouteRecord> = route_records(&app)
        .await
        .into_iter()
        .filter(|r| r.proxy == x)
        .collect();
    assert_eq!(routes.len(), 2 * won, "routes on the chosen number");
    let numbers = app.get("/v1/pools/race/numbers").await.expect(200);
    let chosen = numbers["numbers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["number"] == x)
        .unwrap()
        .clone();
    assert_eq!(chosen["open_sessions"], won, "{chosen}");
}

#[tokio::test]
async fn a_chosen_number_is_claimed_in_the_shard_that_owns_it() {
    let app = TestApp::start().await;
    let numbers = proxies(8);
    app.pool("wide", json!({ "shards": 4 }), &numbers).await;
    let mut seen = BTreeSet::new();
    for (i, n) in numbers.iter().enumerate() {
        let s = app
            .create_session_with(&asking("wide", &participant(0), &participant(1 + i), n))
            .await
            .expect(201);
        assert_eq!(&s["proxy_number"], n);
        let shard = shard_of_number(&app, n).await;
        assert_eq!(shard_of_session(&s), shard, "{s}");
        seen.insert(shard);
        app.assert_connects(
            &participant(0),
            n,
            &participant(1 + i),
            s["id"].as_str().unwrap(),
        )
        .await;
    }
    assert_eq!(seen.len(), 4, "the numbers should span every shard");
    // Participant 0 now holds every number, whichever shard: asking again is refused.
    app.create_session_with(&asking(
        "wide",
        &participant(0),
        &participant(50),
        &numbers[5],
    ))
    .await
    .expect_problem(409, "number_in_use");
}

#[tokio::test]
async fn avoid_sticky_takes_another_number_while_one_is_free() {
    let app = TestApp::start().await;
    app.pool("fresh", json!({ "cooloff_secs": 0 }), &proxies(2))
        .await;
    let (a, b, c) = (participant(0), participant(1), participant(2));
    let mut last = String::new();
    for round in 0..4 {
        let s = if round == 0 {
            app.open_session("fresh", &a, &b, None).await
        } else {
            app.create_session_with(&selecting("fresh", &a, &b, "avoid_sticky"))
                .await
                .expect(201)
        };
        let n = s["proxy_number"].as_str().unwrap().to_string();
        assert_ne!(n, last, "round {round} reused the last shared number");
        last = n;
        app.close_session(s["id"].as_str().unwrap())
            .await
            .expect(200);
    }
    // The other number is held by a: the last shared one is the only one free, so it is used.
    let other = if last == proxy(0) { proxy(1) } else { proxy(0) };
    app.create_session_with(&asking("fresh", &a, &c, &other))
        .await
        .expect(201);
    let s = app
        .create_session_with(&selecting("fresh", &a, &b, "avoid_sticky"))
        .await
        .expect(201);
    assert_eq!(s["proxy_number"], last);
}

#[tokio::test]
async fn avoid_sticky_leaves_the_sticky_shard_for_last() {
    let app = TestApp::start().await;
    let numbers = proxies(2);
    app.pool("two", json!({ "cooloff_secs": 0, "shards": 2 }), &numbers)
        .await;
    assert_ne!(
        shard_of_number(&app, &numbers[0]).await,
        shard_of_number(&app, &numbers[1]).await,
        "one number per shard"
    );
    let (a, b) = (participant(0), participant(1));
    let first = app.open_session("two", &a, &b, None).await;
    app.close_session(first["id"].as_str().unwrap())
        .await
        .expect(200);
    // The shard of the last shared number is less loaded, but it is not tried first.
    let busy = if first["proxy_number"] == numbers[0] {
        &numbers[1]
    } else {
        &numbers[0]
    };
    for i in 0..3 {
        app.create_session_with(&asking(
            "two",
            &participant(10 + i),
            &participant(20 + i),
            busy,
        ))
        .await
        .expect(201);
    }
    for _ in 0..3 {
        let s = app
            .create_session_with(&selecting("two", &a, &b, "avoid_sticky"))
            .await
            .expect(201);
        assert_eq!(&s["proxy_number"], busy, "{s}");
        assert_eq!(shard_of_session(&s), shard_of_number(&app, busy).await);
        app.close_session(s["id"].as_str().unwrap())
            .await
            .expect(200);
        // Closing made `busy` the sticky one: put the original back on top.
        let again = app
            .create_session_with(&asking(
                "two",
                &a,
                &b,
                first["proxy_number"].as_str().unwrap(),
            ))
            .await
            .expect(201);
        app.close_session(again["id"].as_str().unwrap())
            .await
            .expect(200);
    }
}

#[tokio::test]
async fn prefer_sticky_is_the_default_and_reuses_the_last_shared_number() {
    let app = TestApp::start().await;
    app.pool("same", json!({ "cooloff_secs": 0 }), &proxies(4))
        .await;
    let (a, b) = (participant(0), participant(1));
    let first = app.open_session("same", &a, &b, None).await;
    let x = first["proxy_number"].clone();
    app.close_session(first["id"].as_str().unwrap())
        .await
        .expect(200);
    for round in 0..6 {
        let s = if round % 2 == 0 {
            app.create_session_with(&selecting("same", &a, &b, "prefer_sticky"))
                .await
                .expect(201)
        } else {
            app.open_session("same", &a, &b, None).await
        };
        assert_eq!(s["proxy_number"], x, "round {round}");
        app.close_session(s["id"].as_str().unwrap())
            .await
            .expect(200);
    }
}

#[tokio::test]
async fn an_idempotent_retry_with_a_chosen_number_answers_the_same_session() {
    let app = TestApp::start().await;
    app.pool("again", json!({}), &proxies(3)).await;
    let body = asking("again", &participant(0), &participant(1), &proxy(2));
    let send = || {
        app.send(
            app.client
                .post(app.url("/v1/sessions"))
                .bearer_auth(&app.admin_key)
                .header("Idempotency-Key", "choose-1")
                .json(&body),
        )
    };
    let first = send().await;
    let made = first.expect(201);
    assert_eq!(made["proxy_number"], proxy(2));
    let retry = send().await;
    assert_eq!(retry.expect(201)["id"], made["id"]);
    assert_eq!(retry.header("idempotent-replayed").as_deref(), Some("true"));
    // Without the key the same request is a second session the number cannot serve.
    app.create_session_with(&body)
        .await
        .expect_problem(409, "number_in_use");
}

#[tokio::test]
async fn a_chosen_number_is_announced_like_an_allocated_one() {
    let receiver = crate::receiver::Receiver::start().await;
    let app = TestApp::start_with(|c| c.callback_allow_private = true).await;
    app.pool(
        "told",
        json!({ "callback_url": receiver.url("/events") }),
        &proxies(3),
    )
    .await;
    receiver.set_secrets(vec![app.callback_secret("told").await]);
    let s = app
        .create_session_with(&asking("told", &participant(0), &participant(1), &proxy(2)))
        .await
        .expect(201);
    let created = receiver
        .wait_for_type("session.created", 1, std::time::Duration::from_secs(10))
        .await
        .remove(0);
    assert_eq!(created.data()["session_id"], s["id"]);
    assert_eq!(created.data()["proxy_number"], proxy(2));
}

#[tokio::test]
async fn the_pool_sets_the_default_selection_and_the_create_overrides_it() {
    let app = TestApp::start().await;
    app.pool(
        "policy",
        json!({ "cooloff_secs": 0, "number_selection": "avoid_sticky" }),
        &proxies(2),
    )
    .await;
    let (a, b) = (participant(0), participant(1));
    let first = app.open_session("policy", &a, &b, None).await;
    let x = first["proxy_number"].clone();
    app.close_session(first["id"].as_str().unwrap())
        .await
        .expect(200);
    // The pool avoids the last shared number...
    let s = app.open_session("policy", &a, &b, None).await;
    assert_ne!(s["proxy_number"], x, "{s}");
    let y = s["proxy_number"].clone();
    app.close_session(s["id"].as_str().unwrap())
        .await
        .expect(200);
    // ...unless the create asks for it.
    for _ in 0..3 {
        let s = app
            .create_session_with(&selecting("policy", &a, &b, "prefer_sticky"))
            .await
            .expect(201);
        assert_eq!(s["proxy_number"], y, "{s}");
        app.close_session(s["id"].as_str().unwrap())
            .await
            .expect(200);
    }
}
