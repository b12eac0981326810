//! Pools and their numbers: create/update, bulk import with per-number skip reasons,
//! draining, and removal guarded by open and cooling sessions.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::*;

/// A policy with every basic setting away from its default.
fn ride_policy() -> Value {
    json!({
        "default_ttl_secs": 600,
        "cooloff_secs": 120,
        "geo_match": "area_code",
        "out_of_session_message": "This ride has ended.",
    })
}

#[tokio::test]
async fn put_pool_creates_then_updates() {
    let app = TestApp::start().await;

    let r = app.put_pool("rides", ride_policy()).await;
    let created = r.expect(201);
    assert_eq!(created["name"], "rides");
    assert_eq!(created["default_ttl_secs"], 600);
    assert_eq!(created["cooloff_secs"], 120);
    assert_eq!(created["geo_match"], "area_code");
    assert_eq!(created["out_of_session_message"], "This ride has ended.");

    let r = app
        .put_pool(
            "rides",
            json!({ "default_ttl_secs": 900, "cooloff_secs": 0, "geo_match": "any" }),
        )
        .await;
    let updated = r.expect(200);
    assert_eq!(updated["default_ttl_secs"], 900);
    assert_eq!(updated["cooloff_secs"], 0);
    assert_eq!(updated["geo_match"], "any");

    let shown = app.get("/v1/pools/rides").await.expect(200);
    assert_eq!(shown["name"], "rides");
    assert_eq!(shown["default_ttl_secs"], 900);
    assert_eq!(shown["cooloff_secs"], 0);
    assert_eq!(shown["geo_match"], "any");
    assert_eq!(shown["numbers"]["total"], 0);
    assert_eq!(shown["numbers"]["active"], 0);
    assert_eq!(shown["numbers"]["draining"], 0);
    assert_eq!(shown["open_sessions"], 0);

    app.put_pool("deliveries", json!({})).await.expect(201);
    let list = app.get("/v1/pools").await.expect(200);
    let mut names: Vec<&str> = list["pools"]
        .as_array()
        .expect("pools is a list")
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["deliveries", "rides"]);
}

#[tokio::test]
async fn pool_defaults_follow_the_contract() {
    let app = TestApp::start().await;
    let pool = app.put_pool("plain", json!({})).await.expect(201);
    assert_eq!(pool["default_ttl_secs"], 3600);
    assert_eq!(pool["cooloff_secs"], 3600);
    assert_eq!(pool["geo_match"], "country");
    assert_eq!(
        pool["out_of_session_message"],
        "This number is no longer in service for you."
    );
}

#[tokio::test]
async fn bulk_import_reports_each_skipped_number() {
    let app = TestApp::start().await;
    app.put_pool("a", json!({})).await.expect(201);
    app.put_pool("b", json!({})).await.expect(201);

    app.add_numbers("b", &[proxy202(0)]).await.expect(200);
    app.add_numbers("a", &[proxy(0)]).await.expect(200);

    let r = app
        .post(
            "/v1/pools/a/numbers",
            &json!({ "numbers": [
                { "number": proxy(1), "capabilities": ["voice"] },
                { "number": proxy(2) },
                { "number": proxy(0) },       // already in this pool
                { "number": proxy202(0) },    // in pool b
                { "number": "+1415" },        // not a number
                { "number": "+15550001111" }, // well-formed but not a valid number
            ]}),
        )
        .await;
    let body = r.expect(200);
    assert_eq!(body["added"], json!([proxy(1), proxy(2)]), "{}", r.text);
    let mut skipped: Vec<(String, String)> = body["skipped"]
        .as_array()
        .expect("skipped is a list")
        .iter()
        .map(|s| {
            (
                s["number"].as_str().unwrap().to_string(),
                s["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    skipped.sort();
    let mut expected = vec![
        (proxy(0), "duplicate".to_string()),
        (proxy202(0), "in_another_pool".to_string()),
        ("+1415".to_string(), "invalid_number".to_string()),
        ("+15550001111".to_string(), "invalid_number".to_string()),
    ];
    expected.sort();
    assert_eq!(skipped, expected, "{}", r.text);

    let listed = app.get("/v1/pools/a/numbers").await.expect(200);
    let numbers = listed["numbers"].as_array().expect("numbers is a list");
    let mut seen: Vec<&str> = numbers
        .iter()
        .map(|n| n["number"].as_str().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, [proxy(0), proxy(1), proxy(2)]);
    for n in numbers {
        assert_eq!(n["state"], "active", "{n}");
        assert_eq!(n["open_sessions"], 0, "{n}");
        let caps = n["capabilities"].as_array().expect("capabilities");
        if n["number"] == proxy(1) {
            assert_eq!(caps, &vec![json!("voice")], "{n}");
        } else {
            assert!(
                caps.contains(&json!("voice")) && caps.contains(&json!("sms")),
                "numbers default to voice and sms: {n}"
            );
        }
    }
    let shown = app.get("/v1/pools/a").await.expect(200);
    assert_eq!(shown["numbers"]["total"], 3);
    assert_eq!(shown["numbers"]["active"], 3);
}

#[tokio::test]
async fn draining_number_gets_no_new_sessions_but_keeps_routing() {
    let app = TestApp::start().await;
    app.pool("drain", json!({ "cooloff_secs": 0 }), &[proxy(0)])
        .await;
    let (a, b, c, d) = (
        participant(0),
        participant(1),
        participant(2),
        participant(3),
    );

    let s1 = app.open_session("drain", &a, &b, None).await;
    assert_eq!(s1["proxy_number"], proxy(0));
    app.add_numbers("drain", &[proxy(1)]).await.expect(200);

    let r = app
        .patch(
            &format!("/v1/pools/drain/numbers/{}", path_number(&proxy(0))),
            &json!({ "state": "draining" }),
        )
        .await;
    assert!(
        r.status / 100 == 2,
        "PATCH number state: {} {}",
        r.status,
        r.text
    );

    let shown = app.get("/v1/pools/drain").await.expect(200);
    assert_eq!(shown["numbers"]["total"], 2);
    assert_eq!(shown["numbers"]["active"], 1);
    assert_eq!(shown["numbers"]["draining"], 1);
    let listed = app.get("/v1/pools/drain/numbers").await.expect(200);
    let drained = listed["numbers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["number"] == proxy(0))
        .expect("drained number still listed");
    assert_eq!(drained["state"], "draining");
    assert_eq!(drained["open_sessions"], 1);

    // The existing session keeps working on the draining number.
    app.assert_connects(&a, &proxy(0), &b, s1["id"].as_str().unwrap())
        .await;

    // New sessions avoid it, even for strangers who could have shared it.
    for i in 0..4 {
        let s = app
            .open_session(
                "drain",
                &participant(10 + 2 * i),
                &participant(11 + 2 * i),
                None,
            )
            .await;
        assert_eq!(
            s["proxy_number"],
            proxy(1),
            "a draining number was allocated"
        );
    }
    // a holds proxy(1) now too; with proxy(0) draining, nothing is left for a.
    app.open_session("drain", &a, &c, None).await;
    let r = app.create_session("drain", &a, &d, None).await;
    r.expect_problem(409, "pool_exhausted");

    // Back to active: it is allocatable again.
    let r = app
        .patch(
            &format!("/v1/pools/drain/numbers/{}", path_number(&proxy(0))),
            &json!({ "state": "active" }),
        )
        .await;
    assert!(
        r.status / 100 == 2,
        "PATCH number state: {} {}",
        r.status,
        r.text
    );
    app.close_session(s1["id"].as_str().unwrap())
        .await
        .expect(200);
    let s = app.open_session("drain", &a, &d, None).await;
    assert_eq!(s["proxy_number"], proxy(0));
}

#[tokio::test]
async fn removing_a_number_waits_for_its_sessions_and_cooloff() {
    let app = TestApp::start().await;
    app.pool("rm", json!({ "cooloff_secs": 1 }), &[proxy(0), proxy(1)])
        .await;
    let path0 = format!("/v1/pools/rm/numbers/{}", path_number(&proxy(0)));
    let path1 = format!("/v1/pools/rm/numbers/{}", path_number(&proxy(1)));

    // Unused: removed at once, and gone from the listing.
    let r = app.delete(&path1).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let listed = app.get("/v1/pools/rm/numbers").await.expect(200);
    assert_eq!(listed["numbers"].as_array().unwrap().len(), 1);
    app.delete(&path1)
        .await
        .expect_problem(404, "number_not_found");

    let s = app
        .open_session("rm", &participant(0), &participant(1), None)
        .await;
    assert_eq!(s["proxy_number"], proxy(0));
    app.delete(&path0)
        .await
        .expect_problem(409, "number_in_use");

    let before_close = now_ms();
    app.close_session(s["id"].as_str().unwrap())
        .await
        .expect(200);
    // Cooling off still holds it.
    let r = app.delete(&path0).await;
    if now_ms() < before_close + 800 {
        r.expect_problem(409, "number_in_use");
    }
    let removed_at = eventually(
        Duration::from_secs(5),
        "number removable after cool-off",
        || async {
            let r = app.delete(&path0).await;
            match r.status {
                204 => Some(now_ms()),
                409 => None,
                _ => panic!("unexpected {} {}", r.status, r.text),
            }
        },
    )
    .await;
    assert!(
        removed_at >= before_close + 1000 - 50,
        "number removed {} ms after close, before the 1 s cool-off ended",
        removed_at - before_close
    );
    let shown = app.get("/v1/pools/rm").await.expect(200);
    assert_eq!(shown["numbers"]["total"], 0);
}

#[tokio::test]
async fn pool_counts_open_sessions() {
    let app = TestApp::start().await;
    app.pool("count", json!({}), &proxies(3)).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let s = app
            .open_session("count", &participant(0), &participant(1 + i), None)
            .await;
        ids.push(s);
    }
    let shown = app.get("/v1/pools/count").await.expect(200);
    assert_eq!(shown["open_sessions"], 3);
    let listed = app.get("/v1/pools/count/numbers").await.expect(200);
    let per_number: Vec<u64> = listed["numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["open_sessions"].as_u64().unwrap())
        .collect();
    assert_eq!(per_number, [1, 1, 1], "{}", listed);

    app.close_session(ids[0]["id"].as_str().unwrap())
        .await
        .expect(200);
    let shown = app.get("/v1/pools/count").await.expect(200);
    assert_eq!(shown["open_sessions"], 2);
}

#[tokio::test]
async fn patch_changes_only_the_settings_given() {
    let app = TestApp::start().await;
    app.put_pool("merge", ride_policy()).await.expect(201);

    let patched = app
        .patch(
            "/v1/pools/merge",
            &json!({ "callback_url": "https://app.example.com/hooks" }),
        )
        .await
        .expect(200);
    assert_eq!(patched["callback_url"], "https://app.example.com/hooks");
    assert_eq!(patched["default_ttl_secs"], 600, "{patched}");
    assert_eq!(patched["cooloff_secs"], 120, "{patched}");
    assert_eq!(patched["geo_match"], "area_code", "{patched}");
    assert_eq!(patched["out_of_session_message"], "This ride has ended.");

    // `null` puts a setting back to its default; the others stay.
    let reset = app
        .patch("/v1/pools/merge", &json!({ "cooloff_secs": null }))
        .await
        .expect(200);
    assert_eq!(reset["cooloff_secs"], 3600, "{reset}");
    assert_eq!(reset["default_ttl_secs"], 600, "{reset}");
    assert_eq!(reset["callback_url"], "https://app.example.com/hooks");

    // The merged policy is checked whole, and a refused patch changes nothing.
    app.patch(
        "/v1/pools/merge",
        &json!({ "default_ttl_secs": 5, "geo_match": "any" }),
    )
    .await
    .expect_problem(422, "validation_failed");
    app.patch("/v1/pools/merge", &json!({ "bogus": 1 }))
        .await
        .expect_problem(422, "validation_failed");
    let shown = app.get("/v1/pools/merge").await.expect(200);
    assert_eq!(shown["geo_match"], "area_code", "{shown}");
    assert_eq!(shown["default_ttl_secs"], 600, "{shown}");

    app.patch("/v1/pools/nope", &json!({ "cooloff_secs": 0 }))
        .await
        .expect_problem(404, "pool_not_found");

    // PUT stays a full replacement: what it leaves out takes its default.
    let replaced = app
        .put_pool("merge", json!({ "cooloff_secs": 60 }))
        .await
        .expect(200);
    assert_eq!(replaced["cooloff_secs"], 60);
    assert_eq!(replaced["default_ttl_secs"], 3600, "{replaced}");
    assert_eq!(replaced["geo_match"], "country", "{replaced}");
    assert_eq!(
        replaced["callback_url"],
        serde_json::Value::Null,
        "{replaced}"
    );
}

/// Many PATCHes of different settings at once: each one lands, none undoes another.
#[tokio::test]
async fn concurrent_patches_lose_no_update() {
    let app = TestApp::start().await;
    app.put_pool("race", json!({})).await.expect(201);
    for round in 0..4u32 {
        let patches = [
            json!({ "default_ttl_secs": 600 + round }),
            json!({ "cooloff_secs": 10 + round }),
            json!({ "out_of_session_message": format!("round {round}") }),
            json!({ "intercept_timeout_ms": 100 + round }),
            json!({ "low_threshold_pct": 10 + round }),
            json!({ "callback_include_numbers": round % 2 == 0 }),
            json!({ "geo_match": if round % 2 == 0 { "any" } else { "area_code" } }),
            json!({ "intercept_fallback": if round % 2 == 0 { "block" } else { "allow" } }),
        ];
        let sent = patches
            .iter()
            .map(|p| (Method::PATCH, "/v1/pools/race".to_string(), Some(p.clone())))
            .collect();
        for r in all_at_once(&app, sent).await {
            r.expect(200);
        }
        let shown = app.get("/v1/pools/race").await.expect(200);
        for p in &patches {
            let (field, value) = p.as_object().unwrap().iter().next().unwrap();
            assert_eq!(&shown[field], value, "round {round}: {field} lost: {shown}");
        }
    }
}

/// Sends every request at once (each `(method, path, body)`), answers in the same order.
async fn all_at_once(app: &TestApp, requests: Vec<(Method, String, Option<Value>)>) -> Vec<Resp> {
    staggered(app, requests, Duration::ZERO).await
}

/// Sends the first request, and the others `lag` later, all at once; answers in order.
async fn staggered(
    app: &TestApp,
    requests: Vec<(Method, String, Option<Value>)>,
    lag: Duration,
) -> Vec<Resp> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (method, path, body)) in requests.into_iter().enumerate() {
        let (base, key) = (app.base_url.clone(), app.admin_key.clone());
        tasks.spawn(async move {
            if i > 0 {
                tokio::time::sleep(lag).await;
            }
            (i, call_at(&base, method, &path, &key, body.as_ref()).await)
        });
    }
    let mut out: Vec<(usize, Resp)> = tasks.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

#[tokio::test]
async fn an_http_callback_url_is_refused_naming_the_setting_that_allows_it() {
    let app = TestApp::start().await;
    app.put_pool("plainhttp", json!({})).await.expect(201);
    for url in ["http://app.example.com/hooks", "https://127.0.0.1/hooks"] {
        let r = app
            .patch("/v1/pools/plainhttp", &json!({ "callback_url": url }))
            .await;
        let problem = r.expect_problem(422, "validation_failed");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("HUSH_CALLBACK_ALLOW_PRIVATE"),
            "{url}: {problem}"
        );
    }
}

#[tokio::test]
async fn deleting_a_pool_waits_for_its_sessions_then_removes_everything() {
    let app = TestApp::start().await;
    app.delete("/v1/pools/ghost")
        .await
        .expect_problem(404, "pool_not_found");

    app.pool("gone", json!({ "cooloff_secs": 1 }), &[proxy(0), proxy(1)])
        .await;
    let id: u32 = {
        let mut con = app.redis().await;
        redis::cmd("HGET")
            .arg(format!("{}:pools", app.prefix))
            .arg("gone")
            .query_async(&mut con)
            .await
            .unwrap()
    };
    let s = app
        .open_session("gone", &participant(0), &participant(1), None)
        .await;
    app.delete("/v1/pools/gone")
        .await
        .expect_problem(409, "pool_in_use");
    app.close_session(s["id"].as_str().unwrap())
        .await
        .expect(200);
    // A text still queued from one of its numbers (due tomorrow: no worker takes it first)
    // goes with the pool, as its events do.
    {
        let ox = format!("{}:{{p{id}.0}}:ox:", app.prefix);
        let mut con = app.redis().await;
        let due = now_ms() + 86_400_000;
        let _: () = redis::pipe()
            .cmd("ZADD")
            .arg(format!("{ox}q"))
            .arg(due)
            .arg("t1")
            .cmd("HSET")
            .arg(format!("{ox}m:t1"))
            .arg("s")
            .arg("q")
            .query_async(&mut con)
            .await
            .unwrap();
    }
    // Cooling off still holds the number.
    app.delete("/v1/pools/gone")
        .await
        .expect_problem(409, "pool_in_use");
    let mut freed = false;
    for _ in 0..100 {
        let r = app.delete("/v1/pools/gone").await;
        if r.status == 204 {
            freed = true;
            break;
        }
        r.expect_problem(409, "pool_in_use");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the pool could not be deleted after its cool-off");

    app.get("/v1/pools/gone")
        .await
        .expect_problem(404, "pool_not_found");
    let names: Vec<String> = app.get("/v1/pools").await.expect(200)["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.contains(&"gone".to_string()), "{names:?}");
    // Settings and secrets are gone. Of the shard only keys that expire by themselves are
    // left: the tombstone that keeps late additions out, who-shared-with-whom records, and
    // for under a second the mark of a reaper pass that was under way.
    assert!(app.scan_keys(&format!("pool:{id}")).await.is_empty());
    let left = app.scan_keys(&format!("{{p{id}.*")).await;
    let mut con = app.redis().await;
    for key in &left {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut con)
            .await
            .unwrap();
        if ttl == -2 {
            // Expired since the scan.
            continue;
        }
        assert!(ttl > 0, "{key} of the deleted pool never expires");
        let tail = key.rsplit(':').next().unwrap();
        assert!(
            key.ends_with(":nums") || key.contains(":k:") || key.ends_with(":rp"),
            "{key} ({tail}) was left of the deleted pool"
        );
    }
    // Its numbers are free to join another pool, and the name starts afresh.
    app.put_pool("next", json!({})).await.expect(201);
    let added = app
        .add_numbers("next", &[proxy(0), proxy(1)])
        .await
        .expect(200);
    assert_eq!(added["added"], json!([proxy(0), proxy(1)]), "{added}");
    let again = app.put_pool("gone", json!({})).await.expect(201);
    assert_eq!(again["numbers"]["total"], 0, "{again}");
    assert_eq!(again["cooloff_secs"], 3600, "{again}");
}

/// A session created while its pool is deleted either lands first (and the deletion is
/// refused) or finds nothing: never a session in a deleted pool.
#[tokio::test]
async fn sessions_created_during_a_deletion_never_land_in_a_deleted_pool() {
    let app = TestApp::start().await;
    for round in 0..10usize {
        let name = format!("doomed{round}");
        let numbers: Vec<String> = (0..3).map(|i| proxy(3 * round + i)).collect();
        app.pool(&name, json!({ "cooloff_secs": 0 }), &numbers)
            .await;
        let path = format!("/v1/pools/{name}");
        let mut requests = vec![(Method::DELETE, path.clone(), None)];
        for i in 0..4 {
            let (a, b) = (
                participant(10 * round + 2 * i),
                participant(10 * round + 2 * i + 1),
            );
            let body = json!({ "pool": name, "participants": [{ "number": a }, { "number": b }] });
            requests.push((Method::POST, "/v1/sessions".to_string(), Some(body)));
        }
        // Varying how far the creates trail the deletion lets either win some rounds.
        let lag = Duration::from_micros(1500 * round as u64);
        let mut answers = staggered(&app, requests, lag).await;
        let created = answers.split_off(1);
        let deleted = answers.pop().unwrap();
        let landed: Vec<&Resp> = created.iter().filter(|r| r.status == 201).collect();
        for r in &created {
            assert!(
                [201, 404, 409].contains(&r.status),
                "round {round}: create answered {} {}",
                r.status,
                r.text
            );
        }
        if deleted.status == 204 {
            assert!(
                landed.is_empty(),
                "round {round}: sessions created in a deleted pool: {:?}",
                landed.iter().map(|r| &r.text).collect::<Vec<_>>()
            );
            app.get(&path).await.expect_problem(404, "pool_not_found");
        } else {
            deleted.expect_problem(409, "pool_in_use");
            assert!(!landed.is_empty(), "round {round}: refused with no session");
            let shown = app.get(&path).await.expect(200);
            assert_eq!(shown["numbers"]["total"], 3, "round {round}: {shown}");
        }
    }
}

/// Data an earlier layout wrote (pools, no layout marker) makes hush refuse to start, naming
/// the way to upgrade; a prefix whose first pool this version made starts as before.
#[tokio::test]
async fn hush_refuses_data_of_an_earlier_layout() {
    let app = TestApp::start().await;
    app.pool("current", json!({}), &proxies(1)).await;
    let mut con = app.redis().await;
    let marker = format!("{}:layout", app.prefix);
    let layout: Option<String> = redis::cmd("GET")
        .arg(&marker)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(layout.as_deref(), Some(hush::store::LAYOUT));

    let _: () = redis::cmd("DEL")
        .arg(&marker)
        .query_async(&mut con)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        hush::run(
            app.config.clone(),
            listener,
            tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .expect("hush started on data of an earlier layout");
    let message = format!("{:#}", refused.expect_err("hush started"));
    assert!(
        message.contains("layout 1") && message.contains("Upgrading"),
        "{message}"
    );
}

/// The PIN settings, each away from its default.
fn pin_policy() -> Value {
    json!({
        "pin": "fallback",
        "pin_length": 8,
        "pin_prompt_timeout_secs": 10,
        "pin_retry": 0,
        "pin_caller_check": false,
        "pin_failure_limit": 50,
        "pin_prompt": "Type the code from the app.",
        "pin_text_prompt": "Start with the code from the app.",
    })
}

/// The PIN settings' defaults, as the contract gives them.
fn pin_defaults() -> Value {
    json!({
        "pin": "off",
        "pin_length": 6,
        "pin_prompt_timeout_secs": 4,
        "pin_retry": 2,
        "pin_caller_check": true,
        "pin_failure_limit": 5,
        "pin_prompt": "Please enter your PIN.",
        "pin_text_prompt": "Start your message with your PIN, then a space.",
    })
}

#[track_caller]
fn assert_fields(pool: &Value, expected: &Value) {
    for (field, value) in expected.as_object().unwrap() {
        assert_eq!(&pool[field], value, "{field}: {pool}");
    }
}

#[tokio::test]
async fn pin_settings_round_trip_and_reset_to_their_defaults() {
    let app = TestApp::start().await;
    let created = app.put_pool("pins", json!({})).await.expect(201);
    assert_fields(&created, &pin_defaults());

    let put = app.put_pool("pins", pin_policy()).await.expect(200);
    assert_fields(&put, &pin_policy());
    assert_fields(&app.get("/v1/pools/pins").await.expect(200), &pin_policy());

    // A PATCH of one keeps the others; `null` takes the default back, field by field.
    let patched = app
        .patch(
            "/v1/pools/pins",
            &json!({ "pin": "always", "pin_retry": 5 }),
        )
        .await
        .expect(200);
    let mut expected = pin_policy();
    expected["pin"] = json!("always");
    expected["pin_retry"] = json!(5);
    assert_fields(&patched, &expected);
    for (field, default) in pin_defaults().as_object().unwrap() {
        let reset = app
            .patch("/v1/pools/pins", &json!({ field.clone(): null }))
            .await
            .expect(200);
        expected[field] = default.clone();
        assert_fields(&reset, &expected);
    }
    assert_fields(
        &app.get("/v1/pools/pins").await.expect(200),
        &pin_defaults(),
    );

    // A PUT that leaves them out (or gives null) puts them all back.
    app.put_pool("pins", pin_policy()).await.expect(200);
    let replaced = app
        .put_pool("pins", json!({ "pin_length": null }))
        .await
        .expect(200);
    assert_fields(&replaced, &pin_defaults());
}

#[tokio::test]
async fn pin_settings_out_of_range_are_refused_naming_the_field() {
    let app = TestApp::start().await;
    app.put_pool("strict", pin_policy()).await.expect(201);
    let long = "x".repeat(1001);
    let cases = [
        ("pin", json!("sometimes")),
        ("pin", json!("")),
        ("pin_length", json!(3)),
        ("pin_length", json!(9)),
        ("pin_length", json!(300)),
        ("pin_length", json!(-1)),
        ("pin_prompt_timeout_secs", json!(0)),
        ("pin_prompt_timeout_secs", json!(11)),
        ("pin_prompt_timeout_secs", json!(5_000_000_000u64)),
        ("pin_retry", json!(6)),
        ("pin_retry", json!(256)),
        ("pin_retry", json!(-1)),
        ("pin_failure_limit", json!(0)),
        ("pin_failure_limit", json!(101)),
        ("pin_failure_limit", json!(1000)),
        ("pin_prompt", json!("")),
        ("pin_prompt", json!("   ")),
        ("pin_prompt", json!(long)),
        ("pin_text_prompt", json!("")),
        ("pin_text_prompt", json!(long)),
    ];
    for (field, value) in cases {
        let body = json!({ field: value });
        for r in [
            app.patch("/v1/pools/strict", &body).await,
            app.put_pool("strict", body.clone()).await,
            app.put_pool("strict-new", body.clone()).await,
        ] {
            let problem = r.expect_problem(422, "validation_failed");
            let detail = problem["detail"].as_str().unwrap();
            assert!(
                detail.starts_with(&format!("{field} ")),
                "{field} = {value}: the detail should name the field: {detail}"
            );
        }
    }
    // Nothing refused changed anything, nor made a pool.
    assert_fields(
        &app.get("/v1/pools/strict").await.expect(200),
        &pin_policy(),
    );
    app.get("/v1/pools/strict-new")
        .await
        .expect_problem(404, "pool_not_found");
}

#[tokio::test]
async fn a_number_too_big_or_negative_for_a_setting_is_refused_naming_it() {
    let app = TestApp::start().await;
    app.put_pool("strict", json!({})).await.expect(201);
    let cases = [
        ("default_ttl_secs", json!(5_000_000_000u64)),
        ("default_ttl_secs", json!(-1)),
        ("cooloff_secs", json!(-5)),
        ("intercept_timeout_ms", json!(5_000_000_000u64)),
        ("low_threshold_pct", json!(300)),
        ("low_threshold_pct", json!(-1)),
        ("shards", json!(70_000)),
        ("max_call_secs", json!(-1)),
        ("idle_ttl_secs", json!(5_000_000_000u64)),
    ];
    for (field, value) in cases {
        let body = json!({ field: value });
        for r in [
            app.patch("/v1/pools/strict", &body).await,
            app.put_pool("strict-new", body.clone()).await,
        ] {
            let problem = r.expect_problem(422, "validation_failed");
            let detail = problem["detail"].as_str().unwrap();
            assert!(
                detail.starts_with(&format!("{field} ")),
                "{field} = {value}: the detail should name the field: {detail}"
            );
        }
    }
}
