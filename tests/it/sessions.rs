//! Sessions through the REST API: the shape of a session, reading and listing, routing in
//! both directions for each mode, multiplexing one number across pairs, idempotent creation,
//! and erasure of a participant.

use serde_json::{Value, json};

use crate::harness::*;

fn assert_session_shape(s: &Value) {
    let id = s["id"].as_str().expect("id");
    assert!(id.starts_with("ses_"), "session id {id:?}");
    for field in [
        "pool",
        "status",
        "mode",
        "proxy_number",
        "geo_match",
        "created_at",
        "expires_at",
    ] {
        assert!(s[field].is_string(), "session field {field} missing: {s}");
    }
    assert!(s["participants"].is_array(), "participants missing: {s}");
    assert!(s.get("metadata").is_some(), "metadata missing: {s}");
    assert!(s.get("closed_at").is_some(), "closed_at missing: {s}");
    assert!(s.get("close_reason").is_some(), "close_reason missing: {s}");
}

#[tokio::test]
async fn create_returns_the_session() {
    let app = TestApp::start().await;
    app.pool("rides", json!({ "default_ttl_secs": 900 }), &proxies(2))
        .await;
    let (a, b) = (participant(0), participant(1));
    let before = now_ms();
    let r = app
        .create_session_with(&json!({
            "pool": "rides",
            "participants": [
                { "number": a, "label": "rider:42" },
                { "number": b, "label": "driver:7" },
            ],
            "metadata": { "trip": "t-981" },
        }))
        .await;
    let s = r.expect(201);
    assert_session_shape(&s);
    assert_eq!(s["pool"], "rides");
    assert_eq!(s["status"], "open");
    assert_eq!(s["mode"], "voice_sms");
    assert!(proxies(2).contains(&s["proxy_number"].as_str().unwrap().to_string()));
    assert_eq!(
        s["participants"],
        json!([{ "number": a, "label": "rider:42" }, { "number": b, "label": "driver:7" }])
    );
    assert_eq!(s["metadata"], json!({ "trip": "t-981" }));
    assert!(
        s["closed_at"].is_null() && s["close_reason"].is_null(),
        "{s}"
    );
    let created = ts_ms(&s["created_at"]);
    let expires = ts_ms(&s["expires_at"]);
    assert!(
        (before - 1000..=now_ms() + 1000).contains(&created),
        "created_at is not now: {s}"
    );
    assert!(
        (expires - created - 900_000).abs() <= 1000,
        "expires_at should be created_at + the pool's default TTL (900 s): {s}"
    );

    // Reading it back gives the same session.
    let got = app.get_session(s["id"].as_str().unwrap()).await.expect(200);
    assert_eq!(got, s);

    // An explicit TTL wins over the pool default.
    let s2 = app
        .open_session("rides", &a, &participant(2), Some(120))
        .await;
    let d = ts_ms(&s2["expires_at"]) - ts_ms(&s2["created_at"]);
    assert!(
        (d - 120_000).abs() <= 1000,
        "ttl_secs 120 gave {d} ms: {s2}"
    );
    assert_ne!(
        s2["proxy_number"], s["proxy_number"],
        "one participant got the same proxy number twice"
    );
}

#[tokio::test]
async fn list_by_participant_shows_open_sessions() {
    let app = TestApp::start().await;
    app.pool("one", json!({ "cooloff_secs": 0 }), &proxies(3))
        .await;
    app.pool("two", json!({}), &[proxy202(0)]).await;
    let (a, b, c) = (participant(0), participant(1), participant(2));
    let s1 = app.open_session("one", &a, &b, None).await;
    let s2 = app.open_session("one", &c, &a, None).await;
    let s3 = app.open_session("two", &a, &c, None).await;

    let ids = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v["sessions"]
            .as_array()
            .expect("sessions is a list")
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<&Value>| -> Vec<String> {
        v.sort_by_key(|s| s["id"].as_str().unwrap().to_string());
        v.iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let q = path_number(&a);
    let all = app
        .get(&format!("/v1/sessions?participant={q}"))
        .await
        .expect(200);
    assert_eq!(ids(&all), sorted(vec![&s1, &s2, &s3]));
    let in_one = app
        .get(&format!("/v1/sessions?participant={q}&pool=one"))
        .await
        .expect(200);
    assert_eq!(ids(&in_one), sorted(vec![&s1, &s2]));
    let of_b = app
        .get(&format!("/v1/sessions?participant={}", path_number(&b)))
        .await
        .expect(200);
    assert_eq!(ids(&of_b), sorted(vec![&s1]));
    let nobody = app
        .get(&format!(
            "/v1/sessions?participant={}",
            path_number(&participant(99))
        ))
        .await
        .expect(200);
    assert!(ids(&nobody).is_empty());

    app.close_session(s1["id"].as_str().unwrap())
        .await
        .expect(200);
    let all = app
        .get(&format!("/v1/sessions?participant={q}"))
        .await
        .expect(200);
    assert_eq!(
        ids(&all),
        sorted(vec![&s2, &s3]),
        "closed sessions are not listed"
    );
}

#[tokio::test]
async fn routes_reach_the_other_party_both_ways() {
    let app = TestApp::start().await;
    app.pool(
        "rides",
        json!({ "out_of_session_message": "Ride over." }),
        &proxies(1),
    )
    .await;
    let (a, b) = (participant(0), participant(1));
    let s = app.open_session("rides", &a, &b, None).await;
    let id = s["id"].as_str().unwrap();
    let p = s["proxy_number"].as_str().unwrap();

    app.assert_connects(&a, p, &b, id).await;
    app.assert_connects(&b, p, &a, id).await;

    for (from, to) in [(&a, &b), (&b, &a)] {
        let r = app.route(from, p, "sms").await;
        let d = r.expect(200);
        assert_eq!(
            d,
            json!({ "action": "relay", "session_id": id, "from": p, "to": to }),
            "sms {from} -> {p}"
        );
    }

    // A stranger reaches nobody, and hears the pool's message.
    let r = app.route(&participant(2), p, "voice").await;
    assert_eq!(
        r.expect(200),
        json!({ "action": "announce", "message": "Ride over." })
    );
}

#[tokio::test]
async fn mode_limits_what_a_session_relays() {
    let app = TestApp::start().await;
    app.pool("modes", json!({}), &proxies(2)).await;
    let (a, b, c, d) = (
        participant(0),
        participant(1),
        participant(2),
        participant(3),
    );

    let voice = app
        .create_session_with(&json!({
            "pool": "modes", "mode": "voice",
            "participants": [{ "number": a }, { "number": b }],
        }))
        .await
        .expect(201);
    assert_eq!(voice["mode"], "voice");
    let p = voice["proxy_number"].as_str().unwrap();
    app.assert_connects(&a, p, &b, voice["id"].as_str().unwrap())
        .await;
    let r = app.route(&a, p, "sms").await.expect(200);
    assert_eq!(
        r["action"], "announce",
        "a voice session relayed an SMS: {r}"
    );

    let sms = app
        .create_session_with(&json!({
            "pool": "modes", "mode": "sms",
            "participants": [{ "number": c }, { "number": d }],
        }))
        .await
        .expect(201);
    assert_eq!(sms["mode"], "sms");
    let p = sms["proxy_number"].as_str().unwrap();
    let r = app.route(&d, p, "sms").await.expect(200);
    assert_eq!(r["action"], "relay");
    assert_eq!(r["to"], c);
    let r = app.route(&d, p, "voice").await.expect(200);
    assert_eq!(
        r["action"], "announce",
        "an sms session connected a call: {r}"
    );
}

#[tokio::test]
async fn one_number_serves_many_pairs() {
    let app = TestApp::start().await;
    app.pool("mux", json!({}), &proxies(1)).await;
    let mut sessions = Vec::new();
    for i in 0..5 {
        let (a, b) = (participant(2 * i), participant(2 * i + 1));
        let s = app.open_session("mux", &a, &b, None).await;
        assert_eq!(s["proxy_number"], proxy(0));
        sessions.push((a, b, s["id"].as_str().unwrap().to_string()));
    }
    // The same proxy number reaches a different person depending on who calls.
    for (a, b, id) in &sessions {
        app.assert_connects(a, &proxy(0), b, id).await;
        app.assert_connects(b, &proxy(0), a, id).await;
    }
    // But a participant can't have two sessions on it.
    app.create_session("mux", &participant(0), &participant(3), None)
        .await
        .expect_problem(409, "pool_exhausted");
}

#[tokio::test]
async fn idempotency_key_replays_the_first_response() {
    let app = TestApp::start().await;
    app.pool("idem", json!({}), &proxies(3)).await;
    let (a, b) = (participant(0), participant(1));
    let body = json!({
        "pool": "idem",
        "participants": [{ "number": a }, { "number": b }],
    });
    let send = |key: &'static str, body: Value| {
        let app = &app;
        async move {
            app.send(
                app.client
                    .post(app.url("/v1/sessions"))
                    .bearer_auth(&app.admin_key)
                    .header("Idempotency-Key", key)
                    .json(&body),
            )
            .await
        }
    };
    let first = send("order-1", body.clone()).await;
    let s = first.expect(201);
    let again = send("order-1", body.clone()).await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(again.json, s, "a replay must return the first response");

    let of_a = app
        .get(&format!("/v1/sessions?participant={}", path_number(&a)))
        .await
        .expect(200);
    assert_eq!(
        of_a["sessions"].as_array().unwrap().len(),
        1,
        "a replay created a second session"
    );

    let other = json!({
        "pool": "idem",
        "participants": [{ "number": a }, { "number": participant(2) }],
    });
    send("order-1", other.clone())
        .await
        .expect_problem(422, "idempotency_conflict");

    // Another key is another request.
    let s2 = send("order-2", body).await.expect(201);
    assert_ne!(s2["id"], s["id"]);
}

#[tokio::test]
async fn erasure_closes_everything_and_skips_cooloff() {
    let app = TestApp::start().await;
    // A long cool-off and a single number: a new session for the erased number can only
    // succeed at once if erasure really released its routes.
    app.pool("erase", json!({ "cooloff_secs": 3600 }), &proxies(1))
        .await;
    app.pool("other", json!({ "cooloff_secs": 3600 }), &[proxy202(0)])
        .await;
    let (a, b, c, d) = (
        participant(0),
        participant(1),
        participant(2),
        participant(3),
    );
    let s1 = app.open_session("erase", &a, &b, None).await;
    let s2 = app.open_session("other", &c, &a, None).await;
    let untouched = app.open_session("erase", &c, &d, None).await;

    let r = app
        .delete(&format!("/v1/participants/{}", path_number(&a)))
        .await;
    assert_eq!(r.expect(200), json!({ "closed_sessions": 2 }));

    for s in [&s1, &s2] {
        let got = app.get_session(s["id"].as_str().unwrap()).await;
        let got = got.expect(200);
        assert_eq!(got["status"], "closed", "{got}");
        assert_eq!(got["close_reason"], "erased", "{got}");
        assert!(got["closed_at"].is_string(), "{got}");
        let numbers: Vec<&Value> = got["participants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["number"])
            .collect();
        assert!(
            !numbers.contains(&&json!(a)),
            "an erased number is still shown in its session: {got}"
        );
    }
    // Nobody reaches the erased number, and it reaches nobody.
    app.assert_announces(&a, &proxy(0)).await;
    app.assert_announces(&b, &proxy(0)).await;
    app.assert_announces(&a, &proxy202(0)).await;
    app.assert_announces(&c, &proxy202(0)).await;
    // Other sessions are untouched.
    app.assert_connects(&c, &proxy(0), &d, untouched["id"].as_str().unwrap())
        .await;

    let listed = app
        .get(&format!("/v1/sessions?participant={}", path_number(&a)))
        .await
        .expect(200);
    assert_eq!(listed["sessions"], json!([]));

    // No cool-off for the erased number: the single number is free for it again.
    let fresh = app.open_session("erase", &a, &participant(4), None).await;
    assert_eq!(fresh["proxy_number"], proxy(0));

    // A number hush never saw: nothing to close, and no error.
    let r = app
        .delete(&format!(
            "/v1/participants/{}",
            path_number(&participant(50))
        ))
        .await;
    assert_eq!(r.expect(200), json!({ "closed_sessions": 0 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_with_one_key_create_one_session() {
    let app = TestApp::start().await;
    app.pool("retry", json!({}), &proxies(5)).await;
    let (a, b) = (participant(0), participant(1));
    let body = json!({ "pool": "retry", "participants": [{ "number": a }, { "number": b }] });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let req = app
            .client
            .post(app.url("/v1/sessions"))
            .bearer_auth(&app.admin_key)
            .header("Idempotency-Key", "same-click")
            .json(&body);
        tasks.spawn(async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        });
    }
    let mut created: Vec<Value> = Vec::new();
    while let Some(res) = tasks.join_next().await {
        let (status, body) = res.unwrap();
        match status {
            201 => created.push(body),
            409 => assert_eq!(body["code"], "idempotency_conflict", "{body}"),
            _ => panic!("a retry got {status}: {body}"),
        }
    }
    assert!(!created.is_empty(), "no retry got the session");
    for s in &created {
        assert_eq!(s, &created[0], "retries got different sessions");
    }
    let of_a = app
        .get(&format!("/v1/sessions?participant={}", path_number(&a)))
        .await
        .expect(200);
    assert_eq!(
        of_a["sessions"].as_array().unwrap().len(),
        1,
        "concurrent retries created several sessions: {of_a}"
    );
}

/// Providers report withheld or unknown caller IDs as `anonymous`, `+266696687` and the like.
/// Such a caller has no route on any number, so it gets the pool's out-of-session answer like
/// any stranger, rather than an error the provider integration would have to handle.
#[tokio::test]
async fn a_caller_without_a_usable_number_hears_the_announcement() {
    let app = TestApp::start().await;
    app.pool(
        "anon",
        json!({ "out_of_session_message": "Nobody here." }),
        &proxies(1),
    )
    .await;
    app.open_session("anon", &participant(0), &participant(1), None)
        .await;
    for from in ["anonymous", "+266696687", "restricted"] {
        for kind in ["voice", "sms"] {
            let r = app.route(from, &proxy(0), kind).await;
            assert_eq!(
                r.expect(200),
                json!({ "action": "announce", "message": "Nobody here." }),
                "{kind} from {from:?}"
            );
        }
    }
}

/// Erasing one side frees that side's route at once, but the other side keeps its cool-off
/// (so a late call from it reaches nobody new) without keeping the erased number; erasing
/// the other side afterwards still finds the session.
#[tokio::test]
async fn erasure_keeps_the_other_sides_cooloff_and_forgets_the_erased_side() {
    let app = TestApp::start().await;
    app.pool("halves", json!({ "cooloff_secs": 3600 }), &proxies(1))
        .await;
    let (a, b, c, d) = (
        participant(150),
        participant(151),
        participant(152),
        participant(153),
    );
    let s = app.open_session("halves", &a, &b, None).await;
    let id = s["id"].as_str().unwrap().to_string();
    app.delete(&format!("/v1/participants/{}", path_number(&a)))
        .await
        .expect(200);

    // B still holds the only number while cooling off: B with someone new cannot have it.
    app.create_session("halves", &b, &c, None)
        .await
        .expect_problem(409, "pool_exhausted");
    // A's route went at once: A can start afresh on the same number.
    app.open_session("halves", &a, &d, None).await;
    app.assert_announces(&b, &proxy(0)).await;

    // Nothing about A is left in the session B's route leads to.
    let a_gone = route_records(&app)
        .await
        .into_iter()
        .filter(|r| r.session_id.ends_with(&id[id.len() - 16..]))
        .all(|r| r.other.is_empty());
    assert!(a_gone, "B's route still leads to A");

    // Erasing B later still finds the session and leaves no number in it.
    app.delete(&format!("/v1/participants/{}", path_number(&b)))
        .await
        .expect(200);
    let got = app.get_session(&id).await.expect(200);
    for p in got["participants"].as_array().unwrap() {
        assert!(p["number"].is_null(), "{got}");
        assert!(p["label"].is_null(), "{got}");
    }
}
