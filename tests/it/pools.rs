//! Pools and their numbers: create/update, bulk import with per-number skip reasons,
//! draining, and removal guarded by open and cooling sessions.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn put_pool_creates_then_updates() {
    let app = TestApp::start().await;

    let body = json!({
        "default_ttl_secs": 600,
        "cooloff_secs": 120,
        "geo_match": "area_code",
        "out_of_session_message": "This ride has ended.",
    });
    let r = app.put_pool("rides", body).await;
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
