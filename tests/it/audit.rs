//! The audit log (`GET /v1/audit`), a pool's per-minute counts (`/stats`) and its capacity
//! (`/capacity`): every change through the API, the console and the CLI is recorded once,
//! pages and filters return what they should, old entries are trimmed, and no participant's
//! number reaches the log, Redis or hush's own logs.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::{Value, json};

use hush::broker::{AUDIT_KEEP_MS, Actor, Via};

use crate::harness::*;

/// Every entry the listing gives, following cursors, with `query` (no leading `?`).
async fn all_entries(app: &TestApp, query: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut path = format!("/v1/audit?limit={limit}");
        if !query.is_empty() {
            path.push('&');
            path.push_str(query);
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = app.get(&path).await.expect(200);
        let entries = page["entries"].as_array().expect("entries").clone();
        assert!(entries.len() <= limit, "{page}");
        out.extend(entries);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
    panic!("the cursor never ended");
}

/// The entries of `action`, in the listing's order.
fn of<'a>(entries: &'a [Value], action: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["action"] == action).collect()
}

/// Participant digits must not appear in `hay`.
fn assert_no_participant(what: &str, hay: &str, participants: &[String]) {
    for p in participants {
        for form in [p.clone(), national_digits(p)] {
            assert!(!hay.contains(&form), "{what} holds the participant {form}");
        }
    }
}

#[tokio::test]
async fn each_change_through_the_api_is_recorded_once() {
    let app = TestApp::start_with(|c| c.audit_all_sessions = true).await;
    let (a, b) = (participant(200), participant(201));
    let numbers = vec![proxy(60), proxy(61)];
    let pool = "audited";

    app.put_pool(pool, json!({ "cooloff_secs": 0 }))
        .await
        .expect(201);
    app.put_pool(pool, json!({ "cooloff_secs": 0, "default_ttl_secs": 600 }))
        .await
        .expect(200);
    app.patch(&format!("/v1/pools/{pool}"), &json!({ "geo_match": "any" }))
        .await
        .expect(200);
    app.add_numbers(pool, &numbers).await.expect(200);
    let s = app.open_session(pool, &a, &b, Some(300)).await;
    let id = s["id"].as_str().unwrap().to_string();
    let used = s["proxy_number"].as_str().unwrap().to_string();
    let free = numbers.iter().find(|n| **n != used).unwrap().clone();
    app.patch(&format!("/v1/sessions/{id}"), &json!({ "ttl_secs": 900 }))
        .await
        .expect(200);
    app.close_session(&id).await.expect(200);
    let number_path = format!("/v1/pools/{pool}/numbers/{}", path_number(&free));
    app.patch(&number_path, &json!({ "state": "draining" }))
        .await
        .expect(200);
    assert_eq!(app.delete(&number_path).await.status, 204);
    app.callback_secret(pool).await;
    app.post(
        &format!("/v1/pools/{pool}/callback-secret/rotate"),
        &json!({}),
    )
    .await
    .expect(200);
    app.delete(&format!("/v1/participants/{}", path_number(&a)))
        .await
        .expect(200);
    // A lookup changes nothing and is not recorded.
    app.get(&format!("/v1/sessions?participant={}", path_number(&b)))
        .await
        .expect(200);
    // A change refused is not recorded either.
    app.put_pool("Bad Name", json!({}))
        .await
        .expect_problem(422, "validation_failed");
    assert_eq!(app.delete(&format!("/v1/pools/{pool}")).await.status, 204);

    let entries = all_entries(&app, "", 200).await;
    let expected: BTreeMap<&str, String> = [
        ("pool.create", format!("pool:{pool}")),
        ("number.add", format!("pool:{pool}")),
        ("session.create", format!("session:{id}")),
        ("session.extend", format!("session:{id}")),
        ("session.close", format!("session:{id}")),
        ("number.update", format!("number:{free}")),
        ("number.remove", format!("number:{free}")),
        ("callback_secret.read", format!("pool:{pool}")),
        ("callback_secret.rotate", format!("pool:{pool}")),
        ("participant.erase", "participant:-".to_string()),
        ("pool.delete", format!("pool:{pool}")),
    ]
    .into_iter()
    .collect();
    for (action, target) in &expected {
        let found = of(&entries, action);
        assert_eq!(found.len(), 1, "{action}: {entries:#?}");
        let e = found[0];
        assert_eq!(e["target"], *target, "{e}");
        assert_eq!(e["actor"], "test-admin", "{e}");
        assert_eq!(e["via"], "api", "{e}");
        assert!(e["id"].as_str().unwrap().starts_with("aud_"), "{e}");
        assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
        assert!(e["detail"].is_object(), "{e}");
    }
    assert_eq!(of(&entries, "pool.update").len(), 2, "{entries:#?}");
    let lookups = entries.len() - expected.len() - 2;
    assert_eq!(lookups, 0, "unexpected entries: {entries:#?}");

    // Newest first.
    let times: Vec<&str> = entries.iter().map(|e| e["at"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(times, sorted);
    assert_eq!(entries[0]["action"], "pool.delete");

    let create = of(&entries, "session.create")[0];
    assert_eq!(create["detail"]["proxy_number"], used.as_str());
    assert_eq!(create["detail"]["pool"], pool);
    let added = &of(&entries, "number.add")[0]["detail"]["added"];
    assert_eq!(added.as_array().map(Vec::len), Some(2), "{added}");
    let patched = &of(&entries, "pool.update")[0]["detail"]["fields"];
    assert_eq!(*patched, json!(["geo_match"]));
    assert_eq!(
        of(&entries, "number.update")[0]["detail"]["state"],
        "draining"
    );
    assert_eq!(
        of(&entries, "participant.erase")[0]["detail"]["closed_sessions"],
        0
    );

    let text = serde_json::to_string(&entries).unwrap();
    assert_no_participant("the audit log", &text, &[a.clone(), b.clone()]);
    for (key, values) in app.dump().await {
        assert_no_participant("a Redis key", &key, &[a.clone(), b.clone()]);
        for v in values {
            assert_no_participant(
                &format!("a value of {key}"),
                &String::from_utf8_lossy(&v),
                &[a.clone(), b.clone()],
            );
        }
    }
    assert_no_participant("the logs", &captured_logs(), &[a, b]);
}

#[tokio::test]
async fn the_console_header_marks_its_changes() {
    let app = TestApp::start().await;
    let req = app
        .client
        .put(app.url("/v1/pools/from-console"))
        .bearer_auth(&app.admin_key)
        .header("X-Hush-Client", "console")
        .json(&json!({}));
    app.send(req).await.expect(201);
    let req = app
        .client
        .patch(app.url("/v1/pools/from-console"))
        .bearer_auth(&app.admin_key)
        .header("X-Hush-Client", "something-else")
        .json(&json!({ "cooloff_secs": 60 }));
    app.send(req).await.expect(200);
    let entries = all_entries(&app, "target=pool:from-console", 50).await;
    assert_eq!(entries.len(), 2, "{entries:#?}");
    assert_eq!(entries[0]["action"], "pool.update");
    assert_eq!(entries[0]["via"], "api");
    assert_eq!(entries[1]["action"], "pool.create");
    assert_eq!(entries[1]["via"], "console");
    assert_eq!(entries[1]["actor"], "test-admin");
}

#[tokio::test]
async fn by_default_sessions_are_audited_when_people_change_them() {
    let app = TestApp::start().await;
    app.pool("people", json!({}), &proxies(2)).await;
    let (a, b) = (participant(210), participant(211));
    // The app's own create and close: routine, left out.
    let s = app.open_session("people", &a, &b, Some(600)).await;
    let id = s["id"].as_str().unwrap();
    app.patch(&format!("/v1/sessions/{id}"), &json!({ "ttl_secs": 900 }))
        .await
        .expect(200);
    // A person closing it from the console: recorded.
    let req = app
        .client
        .delete(app.url(&format!("/v1/sessions/{id}")))
        .bearer_auth(&app.admin_key)
        .header("X-Hush-Client", "console");
    app.send(req).await.expect(200);
    let entries = all_entries(&app, &format!("target=session:{id}"), 50).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(
        (entries[0]["action"].as_str(), entries[0]["via"].as_str()),
        (Some("session.close"), Some("console"))
    );
    // Changes to pools are recorded whoever makes them.
    assert_eq!(all_entries(&app, "target=pool:people", 50).await.len(), 2);
}

#[tokio::test]
async fn the_cli_records_its_changes_as_its_user() {
    let app = TestApp::start().await;
    app.cli(&["pools", "put", "by-cli", "--cooloff-secs", "0"]);
    app.cli(&["pools", "put", "by-cli", "--default-ttl-secs", "900"]);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("numbers.csv");
    std::fs::write(
        &csv,
        format!("number,capabilities\n{},voice;sms\n", proxy(62)),
    )
    .unwrap();
    app.cli(&["numbers", "import", "by-cli", csv.to_str().unwrap()]);
    app.cli(&["numbers", "drain", "by-cli", &proxy(62)]);
    app.cli(&[
        "keys",
        "create",
        "--name",
        "made-by-cli",
        "--scopes",
        "sessions",
    ]);
    app.cli(&["keys", "revoke", "made-by-cli"]);

    let entries = all_entries(&app, "", 50).await;
    let actions: Vec<&str> = entries
        .iter()
        .rev()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "pool.create",
            "pool.update",
            "number.add",
            "number.update",
            "key.create",
            "key.revoke"
        ],
        "{entries:#?}"
    );
    for e in &entries {
        assert_eq!(e["via"], "cli", "{e}");
        assert!(e["actor"].as_str().unwrap().starts_with("cli:"), "{e}");
    }
    let key = of(&entries, "key.create")[0];
    assert_eq!(key["target"], "key:made-by-cli");
    assert_eq!(key["detail"]["scopes"], json!(["sessions"]));
    assert_eq!(
        of(&entries, "number.update")[0]["target"],
        format!("number:{}", proxy(62))
    );
    assert_eq!(
        of(&entries, "pool.update")[0]["detail"]["fields"],
        json!(["default_ttl_secs"])
    );
}

#[tokio::test]
async fn cursors_page_through_every_entry_once_and_filters_narrow() {
    let app = TestApp::start().await;
    let broker = hush::build_broker(&app.config).unwrap();
    let now = now_ms();
    let actor = |name: &str| Actor {
        name: name.into(),
        via: Via::Api,
    };
    let mut written = BTreeSet::new();
    // 30 entries over three days, several in one millisecond (the cursor must split them).
    for i in 0..30i64 {
        let at = match i {
            0..=9 => now - 1000,
            _ => now - i * 7_200_000,
        };
        let who = if i % 3 == 0 { "alice" } else { "bob" };
        let action = if i % 2 == 0 {
            "pool.update"
        } else {
            "session.close"
        };
        let id = broker
            .audit_at(
                at,
                &actor(who),
                action,
                &format!("pool:p{}", i % 5),
                Some("p"),
                json!({ "i": i }),
            )
            .await
            .unwrap();
        written.insert(id);
    }
    for limit in [1, 7, 30, 200] {
        let entries = all_entries(&app, "", limit).await;
        let ids: Vec<String> = entries
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        let unique: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "limit {limit}: an entry came twice"
        );
        assert_eq!(unique, written, "limit {limit}");
    }
    let by = |q: &str| {
        let q = q.to_string();
        let app = &app;
        async move { all_entries(app, &q, 4).await }
    };
    let alice = by("actor=alice").await;
    assert_eq!(alice.len(), 10);
    assert!(alice.iter().all(|e| e["actor"] == "alice"));
    let closes = by("action=session.close").await;
    assert_eq!(closes.len(), 15);
    let p2 = by("target=pool:p2").await;
    assert_eq!(p2.len(), 6);
    let both = by("actor=alice&action=pool.update").await;
    assert_eq!(both.len(), 5);
    // The ten entries of one millisecond, by time bounds.
    let at = hush::domain::rfc3339(now - 1000);
    let recent = by(&format!("since={at}&until={at}")).await;
    assert_eq!(recent.len(), 10, "{recent:#?}");
    let older = by(&format!("until={}", hush::domain::rfc3339(now - 1001))).await;
    assert_eq!(older.len(), 20);

    for bad in [
        "limit=0",
        "limit=201",
        "cursor=nope",
        "since=yesterday",
        "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
    ] {
        app.get(&format!("/v1/audit?{bad}"))
            .await
            .expect_problem(422, "validation_failed");
    }
    app.get("/v1/audit?limit=-1")
        .await
        .expect_problem(400, "invalid_query");
}

#[tokio::test]
async fn the_audit_log_needs_the_admin_scope() {
    let app = TestApp::start().await;
    let key = app.key(&["pools", "sessions", "relay"]).await;
    let r = app.call(Method::GET, "/v1/audit", Some(&key), None).await;
    r.expect_problem(403, "forbidden");
    let r = app.call(Method::GET, "/v1/audit", None, None).await;
    r.expect_problem(401, "unauthorized");
}

#[tokio::test]
async fn entries_older_than_ninety_days_are_trimmed() {
    let app = TestApp::start().await;
    let broker = hush::build_broker(&app.config).unwrap();
    let now = now_ms();
    let actor = Actor {
        name: "old-key".into(),
        via: Via::Api,
    };
    // Each day's key outlives its last entry's 90 days by a day, so these are still there
    // for the trim to find. The oldest entry is put at noon of the day before the cutoff's
    // day, whatever the time of day now: the cutoff's own day only loses its earlier part
    // and keeps its key.
    let day_ms = 86_400_000;
    let old_at = ((now - AUDIT_KEEP_MS).div_euclid(day_ms) - 1) * day_ms + day_ms / 2;
    for (at, what) in [
        (old_at, "pool:gone"),
        (now - AUDIT_KEEP_MS - 60_000, "pool:just-gone"),
        (now - AUDIT_KEEP_MS + 3_600_000, "pool:kept"),
        (now - 1000, "pool:recent"),
    ] {
        broker
            .audit_at(at, &actor, "pool.update", what, None, json!({}))
            .await
            .unwrap();
    }
    let old_day = format!(":d:{}", old_at.div_euclid(day_ms));
    let before = app.scan_keys("{audit}:d:*").await;
    assert!(before.iter().any(|k| k.ends_with(&old_day)), "{before:?}");
    assert_eq!(broker.audit_trim(now).await.unwrap(), 2);
    let after = app.scan_keys("{audit}:d:*").await;
    assert!(!after.iter().any(|k| k.ends_with(&old_day)), "{after:?}");
    let targets: Vec<Value> = all_entries(&app, "actor=old-key", 50)
        .await
        .into_iter()
        .map(|e| e["target"].clone())
        .collect();
    assert_eq!(targets, [json!("pool:recent"), json!("pool:kept")]);
    // A second pass finds nothing more.
    assert_eq!(broker.audit_trim(now).await.unwrap(), 0);
}

#[tokio::test]
async fn stats_count_creations_and_exhaustion_and_capacity_warns() {
    let app = TestApp::start().await;
    let pool = "tight";
    app.pool(pool, json!({}), &[proxy(70), proxy(71)]).await;
    let hub = participant(210);
    app.open_session(pool, &hub, &participant(211), None).await;
    app.open_session(pool, &hub, &participant(212), None).await;
    // The hub holds both numbers: a third session of the hub finds none.
    app.create_session(pool, &hub, &participant(213), None)
        .await
        .expect_problem(409, "pool_exhausted");

    let stats = app
        .get(&format!("/v1/pools/{pool}/stats?minutes=5"))
        .await
        .expect(200);
    assert_eq!(stats["pool"], pool);
    let minutes = stats["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 5, "{stats}");
    let sum = |f: &str| minutes.iter().map(|m| m[f].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("created"), 2, "{stats}");
    assert_eq!(sum("exhausted"), 1, "{stats}");
    let peak = minutes
        .iter()
        .map(|m| m["peak_holdings"].as_u64().unwrap())
        .max();
    assert_eq!(
        peak,
        Some(3),
        "the refused create needed a third number: {stats}"
    );
    let ats: Vec<&str> = minutes.iter().map(|m| m["at"].as_str().unwrap()).collect();
    let mut sorted = ats.clone();
    sorted.sort();
    assert_eq!(ats, sorted, "oldest first");
    assert!(ats.iter().all(|a| a.ends_with(":00.000Z")), "{ats:?}");

    let day = app
        .get(&format!("/v1/pools/{pool}/stats"))
        .await
        .expect(200);
    assert_eq!(day["minutes"].as_array().unwrap().len(), 1440);
    for bad in ["minutes=0", "minutes=2881"] {
        app.get(&format!("/v1/pools/{pool}/stats?{bad}"))
            .await
            .expect_problem(422, "validation_failed");
    }
    app.get("/v1/pools/nope/stats")
        .await
        .expect_problem(404, "pool_not_found");

    let cap = app
        .get(&format!("/v1/pools/{pool}/capacity"))
        .await
        .expect(200);
    assert_eq!(cap["pool"], pool);
    assert_eq!(cap["numbers_active"], 2, "{cap}");
    assert_eq!(cap["numbers_total"], 2, "{cap}");
    assert_eq!(cap["peak_holdings"], 3, "{cap}");
    assert!(cap["peak_at"].as_str().is_some(), "{cap}");
    assert_eq!(cap["cooloff_secs"], 3600, "{cap}");
    assert_eq!(cap["numbers_needed"], 4, "{cap}");
    assert_eq!(cap["headroom"], -2, "{cap}");
    let warning = cap["warning"].as_str().expect("a warning");
    assert!(warning.contains("exhausted"), "{warning}");
    assert!(warning.contains("add at least 2"), "{warning}");

    // A pool with room and no traffic has nothing to say.
    app.pool("roomy", json!({}), &proxies(3)).await;
    let cap = app.get("/v1/pools/roomy/capacity").await.expect(200);
    assert_eq!(cap["warning"], Value::Null, "{cap}");
    assert_eq!(cap["peak_at"], Value::Null, "{cap}");
    assert_eq!(cap["numbers_needed"], 0, "{cap}");

    let sessions_key = app.key(&["sessions"]).await;
    let r = app
        .call(
            Method::GET,
            &format!("/v1/pools/{pool}/capacity"),
            Some(&sessions_key),
            None,
        )
        .await;
    r.expect_problem(403, "forbidden");

    let participants: Vec<String> = (210..214).map(participant).collect();
    for (key, values) in app.dump().await {
        assert_no_participant("a Redis key", &key, &participants);
        for v in values {
            assert_no_participant(
                &format!("a value of {key}"),
                &String::from_utf8_lossy(&v),
                &participants,
            );
        }
    }
    assert_no_participant("the logs", &captured_logs(), &participants);
}

#[tokio::test]
async fn a_retried_create_is_recorded_once_and_limited_keys_see_their_pools() {
    let app = TestApp::start_with(|c| c.audit_all_sessions = true).await;
    app.pool("mine", json!({}), &[proxy(80)]).await;
    app.pool("theirs", json!({}), &[proxy(81)]).await;
    let body = json!({
        "pool": "mine",
        "participants": [{ "number": participant(220) }, { "number": participant(221) }],
    });
    for _ in 0..2 {
        let req = app
            .client
            .post(app.url("/v1/sessions"))
            .bearer_auth(&app.admin_key)
            .header("Idempotency-Key", "retry-1")
            .json(&body);
        app.send(req).await.expect(201);
    }
    let creates = all_entries(&app, "action=session.create", 50).await;
    assert_eq!(creates.len(), 1, "{creates:#?}");
    assert_eq!(creates[0]["detail"]["pool"], "mine");

    let limited =
        hush::create_api_key_limited(&app.config, "mine-admin", &["admin"], Some(&["mine"]))
            .await
            .unwrap();
    let r = app
        .call(Method::GET, "/v1/audit?limit=200", Some(&limited), None)
        .await
        .expect(200);
    let targets: BTreeSet<&str> = r["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert!(targets.contains("pool:mine"), "{r}");
    assert!(!targets.contains("pool:theirs"), "{r}");
}

#[tokio::test]
async fn a_failed_audit_write_does_not_fail_the_change() {
    let app = TestApp::start().await;
    let failures = || async {
        let text = app.call(Method::GET, "/metrics", None, None).await.text;
        text.lines()
            .find(|l| l.starts_with("hush_record_write_failures_total{record=\"audit\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = failures().await;
    // The day index holds a value of the wrong type: every audit write is refused.
    let mut con = app.redis().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{}:{{audit}}:days", app.prefix))
        .arg("not a sorted set")
        .query_async(&mut con)
        .await
        .unwrap();
    app.put_pool("still-made", json!({})).await.expect(201);
    app.get("/v1/pools/still-made").await.expect(200);
    assert!(
        failures().await > before,
        "the failed write was not counted"
    );
    assert!(
        captured_logs().contains("audit entry not recorded"),
        "the failed write was not logged"
    );
}
