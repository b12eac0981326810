//! Keys for several apps on one deployment: a key limited to some pools finds every other
//! pool's sessions, events and numbers missing (404 with the very body a missing one gets,
//! never 403), lists only its own pools' data, routes only its own numbers and erases only
//! within its pools; unlimited keys, including keys stored before limits existed, see all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::harness::*;
use crate::receiver::Receiver;

static KEY_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A new API key with these scopes that sees only `pools`.
async fn limited_key(app: &TestApp, scopes: &[&str], pools: &[&str]) -> String {
    let n = KEY_COUNTER.fetch_add(1, Ordering::SeqCst);
    hush::create_api_key_limited(&app.config, &format!("tenant{n}"), scopes, Some(pools))
        .await
        .expect("creating a pool-limited key")
}

/// Two apps on one hush: pool `rides` (proxies 0 and 1) and pool `deliveries` (proxies 2
/// and 3), both sending events to `receiver`, each with an open session of participant 0.
struct TwoApps {
    app: TestApp,
    _receiver: Receiver,
    ride: Value,
    delivery: Value,
}

async fn two_apps() -> TwoApps {
    let receiver = Receiver::start().await;
    let app = TestApp::start_with(|c| c.callback_allow_private = true).await;
    let hooked = json!({ "callback_url": receiver.url("/events") });
    app.pool("rides", hooked.clone(), &[proxy(0), proxy(1)])
        .await;
    app.pool("deliveries", hooked, &[proxy(2), proxy(3)]).await;
    let ride = app
        .open_session("rides", &participant(0), &participant(1), None)
        .await;
    let delivery = app
        .open_session("deliveries", &participant(0), &participant(2), None)
        .await;
    TwoApps {
        app,
        _receiver: receiver,
        ride,
        delivery,
    }
}

/// A session id of the same pool and shard as `id` that was never issued.
fn unissued(id: &str) -> String {
    let last = id.chars().last().unwrap();
    format!(
        "{}{}",
        &id[..id.len() - 1],
        if last == '0' { '2' } else { '0' }
    )
}

/// Asserts `hidden` is the 404 `code` that `missing` (the same request by an unlimited key
/// against data that does not exist) gets, with the same body once `names.0` reads
/// `names.1`.
fn same_404(hidden: &Resp, missing: &Resp, code: &str, names: (&str, &str), what: &str) {
    hidden.expect_problem(404, code);
    assert_eq!(
        hidden.text,
        missing.text.replace(names.0, names.1),
        "{what}: another pool's data must answer exactly as missing data does"
    );
}

/// A request's path and JSON body.
type Req<'a> = (&'a str, Option<Value>);

/// Sends `method` with the limited `key` to `hidden` (another pool's data), and with an
/// unlimited key to `missing` (data that does not exist), then compares the answers with
/// [`same_404`]; returns the hidden answer.
async fn hidden_as_missing(
    app: &TestApp,
    key: &str,
    method: Method,
    (hidden, missing): (Req<'_>, Req<'_>),
    code: &str,
    names: (&str, &str),
) -> Resp {
    let what = format!("{method} {}", hidden.0);
    let h = call(app, key, method.clone(), hidden.0, hidden.1).await;
    let m = call(app, &app.admin_key, method, missing.0, missing.1).await;
    same_404(&h, &m, code, names, &what);
    h
}

async fn call(app: &TestApp, key: &str, method: Method, path: &str, body: Option<Value>) -> Resp {
    app.call(method, path, Some(key), body.as_ref()).await
}

#[tokio::test]
async fn another_pools_sessions_are_not_found() {
    let t = two_apps().await;
    let app = &t.app;
    let rides = limited_key(app, &["sessions"], &["rides"]).await;
    let theirs = t.delivery["id"].as_str().unwrap();
    let never = unissued(theirs);
    let ops = [
        (Method::GET, "", None),
        (Method::PATCH, "", Some(json!({ "ttl_secs": 600 }))),
        (Method::GET, "/interactions", None),
        (Method::DELETE, "", None),
    ];
    for (method, suffix, body) in ops {
        let reqs = (
            (&*format!("/v1/sessions/{theirs}{suffix}"), body.clone()),
            (&*format!("/v1/sessions/{never}{suffix}"), body),
        );
        hidden_as_missing(app, &rides, method, reqs, "session_not_found", ("", "")).await;
    }
    // Nothing happened to it: still open, still as long as it was.
    let still = app.get_session(theirs).await.expect(200);
    assert_eq!(still["status"], "open", "{still}");
    assert_eq!(still["expires_at"], t.delivery["expires_at"], "{still}");

    // Its own pool's session works as with any key.
    let ours = t.ride["id"].as_str().unwrap();
    call(
        app,
        &rides,
        Method::GET,
        &format!("/v1/sessions/{ours}"),
        None,
    )
    .await
    .expect(200);
    call(
        app,
        &rides,
        Method::GET,
        &format!("/v1/sessions/{ours}/interactions"),
        None,
    )
    .await
    .expect(200);
    call(
        app,
        &rides,
        Method::DELETE,
        &format!("/v1/sessions/{ours}"),
        None,
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn sessions_are_created_and_listed_only_in_the_keys_pools() {
    let t = two_apps().await;
    let app = &t.app;
    let rides = limited_key(app, &["sessions"], &["rides", "rides-eu"]).await;
    let body = |pool: &str| {
        json!({ "pool": pool,
            "participants": [{ "number": participant(5) }, { "number": participant(6) }] })
    };
    let reqs = (
        ("/v1/sessions", Some(body("deliveries"))),
        ("/v1/sessions", Some(body("nosuch"))),
    );
    let names = ("nosuch", "deliveries");
    hidden_as_missing(app, &rides, Method::POST, reqs, "pool_not_found", names).await;
    let created = call(
        app,
        &rides,
        Method::POST,
        "/v1/sessions",
        Some(body("rides")),
    )
    .await
    .expect(201);
    assert_eq!(created["pool"], "rides");

    let who = path_number(&participant(0));
    let listed = call(
        app,
        &rides,
        Method::GET,
        &format!("/v1/sessions?participant={who}"),
        None,
    )
    .await
    .expect(200);
    let ids: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [t.ride["id"].as_str().unwrap()], "{listed}");

    let reqs = (
        (
            &*format!("/v1/sessions?participant={who}&pool=deliveries"),
            None,
        ),
        (
            &*format!("/v1/sessions?participant={who}&pool=nosuch"),
            None,
        ),
    );
    let names = ("nosuch", "deliveries");
    hidden_as_missing(app, &rides, Method::GET, reqs, "pool_not_found", names).await;

    // An unlimited key still sees both apps' sessions.
    let all = app.key(&["sessions"]).await;
    let listed = call(
        app,
        &all,
        Method::GET,
        &format!("/v1/sessions?participant={who}"),
        None,
    )
    .await
    .expect(200);
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 2, "{listed}");
}

#[tokio::test]
async fn another_pool_and_its_numbers_are_not_found() {
    let t = two_apps().await;
    let app = &t.app;
    // `admin` opens every endpoint, so only the pool limit stands in the way.
    let rides = limited_key(app, &["admin"], &["rides"]).await;
    let ops: [(Method, &str, Option<Value>); 9] = [
        (Method::GET, "", None),
        (Method::PATCH, "", Some(json!({ "cooloff_secs": 0 }))),
        (Method::DELETE, "", None),
        (Method::GET, "/numbers", None),
        (
            Method::POST,
            "/numbers",
            Some(json!({ "numbers": [{ "number": proxy(9) }] })),
        ),
        (
            Method::PATCH,
            &format!("/numbers/{}", path_number(&proxy(2))),
            Some(json!({ "state": "draining" })),
        ),
        (
            Method::DELETE,
            &format!("/numbers/{}", path_number(&proxy(3))),
            None,
        ),
        (Method::GET, "/callback-secret", None),
        (Method::POST, "/callback-secret/rotate", None),
    ];
    for (method, suffix, body) in ops {
        let reqs = (
            (&*format!("/v1/pools/deliveries{suffix}"), body.clone()),
            (&*format!("/v1/pools/nosuch{suffix}"), body),
        );
        let names = ("nosuch", "deliveries");
        hidden_as_missing(app, &rides, method, reqs, "pool_not_found", names).await;
    }
    // Where an unlimited key would create a missing pool, a limited key finds another app's
    // pool missing, and may not create one outside its pools either.
    let missing = app.get("/v1/pools/nosuch").await;
    for name in ["deliveries", "elsewhere"] {
        let hidden = call(
            app,
            &rides,
            Method::PUT,
            &format!("/v1/pools/{name}"),
            Some(json!({ "cooloff_secs": 0 })),
        )
        .await;
        same_404(
            &hidden,
            &missing,
            "pool_not_found",
            ("nosuch", name),
            "PUT /v1/pools/{name}",
        );
    }
    app.get("/v1/pools/elsewhere")
        .await
        .expect_problem(404, "pool_not_found");
    // Nothing changed in the other pool.
    let theirs = app.get("/v1/pools/deliveries").await.expect(200);
    assert_eq!(theirs["numbers"]["total"], 2, "{theirs}");
    assert_eq!(theirs["numbers"]["draining"], 0, "{theirs}");
    assert_ne!(theirs["cooloff_secs"], 0, "{theirs}");

    let listed = call(app, &rides, Method::GET, "/v1/pools", None)
        .await
        .expect(200);
    let names: Vec<&str> = listed["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rides"], "{listed}");
    call(app, &rides, Method::GET, "/v1/pools/rides/numbers", None)
        .await
        .expect(200);
    call(
        app,
        &rides,
        Method::GET,
        "/v1/pools/rides/callback-secret",
        None,
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn events_are_listed_and_redelivered_only_in_the_keys_pools() {
    let t = two_apps().await;
    let app = &t.app;
    let rides = limited_key(app, &["pools"], &["rides"]).await;
    // Wait until the other app's `session.created` has been delivered (redeliverable).
    let theirs = eventually(Duration::from_secs(10), "a delivered event", || async {
        let all = app
            .get("/v1/events?pool=deliveries&status=delivered")
            .await
            .expect(200);
        all["events"].as_array().unwrap().first().cloned()
    })
    .await;
    let theirs = theirs["id"].as_str().unwrap();

    let listed = call(app, &rides, Method::GET, "/v1/events", None)
        .await
        .expect(200);
    let events = listed["events"].as_array().unwrap();
    assert!(!events.is_empty(), "its own pool's events are listed");
    assert!(
        events.iter().all(|e| e["pool"] == "rides"),
        "only its own pool's events: {listed}"
    );

    let reqs = (
        ("/v1/events?pool=deliveries", None),
        ("/v1/events?pool=nosuch", None),
    );
    let names = ("nosuch", "deliveries");
    hidden_as_missing(app, &rides, Method::GET, reqs, "pool_not_found", names).await;

    let path = |id: &str| format!("/v1/events/{id}/redeliver");
    let never = unissued(theirs);
    let reqs = ((&*path(theirs), None), (&*path(&never), None));
    hidden_as_missing(app, &rides, Method::POST, reqs, "event_not_found", ("", "")).await;
    // The event exists and is redeliverable: an unlimited key redelivers it.
    call(app, &app.admin_key, Method::POST, &path(theirs), None)
        .await
        .expect(200);
}

#[tokio::test]
async fn a_limited_relay_key_routes_only_its_pools_numbers() {
    let t = two_apps().await;
    let app = &t.app;
    let rides = limited_key(app, &["relay"], &["rides"]).await;
    let call_to = |to: &str| Some(json!({ "from": participant(2), "to": to, "kind": "voice" }));
    let theirs = t.delivery["proxy_number"].as_str().unwrap().to_string();
    // A number of no pool whose redacted form is the same as the other pool's number.
    let mut nobody = theirs.clone().into_bytes();
    nobody[7] = if nobody[7] == b'9' { b'8' } else { b'9' };
    let nobody = String::from_utf8(nobody).unwrap();
    let reqs = (
        ("/v1/route", call_to(&theirs)),
        ("/v1/route", call_to(&nobody)),
    );
    let code = "number_not_found";
    let hidden = hidden_as_missing(app, &rides, Method::POST, reqs, code, ("", "")).await;
    assert!(!hidden.text.contains(&participant(0)), "{}", hidden.text);

    // The other app's caller still reaches its party with an unlimited key.
    app.assert_connects(
        &participant(2),
        &theirs,
        &participant(0),
        t.delivery["id"].as_str().unwrap(),
    )
    .await;
    // And this key routes its own pool's numbers.
    let ours = t.ride["proxy_number"].as_str().unwrap().to_string();
    let body = json!({ "from": participant(1), "to": ours, "kind": "voice" });
    let d = app
        .call(Method::POST, "/v1/route", Some(&rides), Some(&body))
        .await
        .expect(200);
    assert_eq!(d["action"], "connect", "{d}");
    assert_eq!(d["to"], participant(0).as_str(), "{d}");
}

#[tokio::test]
async fn a_limited_key_erases_only_within_its_pools() {
    let t = two_apps().await;
    let app = &t.app;
    let rides = limited_key(app, &["admin"], &["rides"]).await;
    let path = format!("/v1/participants/{}", path_number(&participant(0)));
    let erased = call(app, &rides, Method::DELETE, &path, None)
        .await
        .expect(200);
    assert_eq!(erased["closed_sessions"], 1, "{erased}");

    let ride = app
        .get_session(t.ride["id"].as_str().unwrap())
        .await
        .expect(200);
    assert_eq!(ride["close_reason"], "erased", "{ride}");
    let delivery = app
        .get_session(t.delivery["id"].as_str().unwrap())
        .await
        .expect(200);
    assert_eq!(delivery["status"], "open", "{delivery}");
    assert_eq!(
        delivery["participants"][0]["number"],
        participant(0).as_str(),
        "{delivery}"
    );
    app.assert_connects(
        &participant(2),
        t.delivery["proxy_number"].as_str().unwrap(),
        &participant(0),
        t.delivery["id"].as_str().unwrap(),
    )
    .await;
}

#[tokio::test]
async fn cli_creates_and_lists_pool_limited_keys() {
    let t = two_apps().await;
    let app = &t.app;
    let out = app.cli(&[
        "keys",
        "create",
        "--name",
        "rides-app",
        "--scopes",
        "sessions",
        "--pools",
        "rides,rides-eu",
    ]);
    let key = out.lines().last().expect("the key").trim().to_string();
    app.cli(&["keys", "create", "--name", "ops", "--scopes", "admin"]);

    let listed = app.cli(&["keys", "list"]);
    let line = |name: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(&format!("{name}\t")))
            .unwrap_or_else(|| panic!("no `{name}` in keys list: {listed}"))
            .to_string()
    };
    assert!(
        line("rides-app").contains("\tpools=rides,rides-eu\t"),
        "{listed}"
    );
    assert!(line("ops").contains("\tpools=*\t"), "{listed}");

    let ours = t.ride["id"].as_str().unwrap();
    let theirs = t.delivery["id"].as_str().unwrap();
    call(
        app,
        &key,
        Method::GET,
        &format!("/v1/sessions/{ours}"),
        None,
    )
    .await
    .expect(200);
    call(
        app,
        &key,
        Method::GET,
        &format!("/v1/sessions/{theirs}"),
        None,
    )
    .await
    .expect_problem(404, "session_not_found");

    // Impossible limits are refused with a sentence, and no key is made.
    for (pools, says) in [
        ("Rides", "not a pool name"),
        ("*", "leave the pools out"),
        (",", "at least one pool"),
    ] {
        let mut cmd = hush_command();
        with_config(&mut cmd, &app.config);
        let run = cmd
            .args(["keys", "create", "--name", "bad", "--scopes", "sessions"])
            .args(["--pools", pools])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "--pools {pools:?} was accepted");
        assert!(err.contains(says), "--pools {pools:?}: {err}");
    }
    assert!(!app.cli(&["keys", "list"]).contains("bad\t"));
}

#[tokio::test]
async fn a_key_stored_before_pool_limits_sees_every_pool() {
    let t = two_apps().await;
    let app = &t.app;
    // The record exactly as keys were stored before they could be limited to pools.
    let key = "hush_a-key-from-an-older-release";
    let digest = hex_sha256(key);
    let mut con = app.redis().await;
    let _: () = redis::cmd("HSET")
        .arg(format!("{}:key:{digest}", app.prefix))
        .arg("name")
        .arg("legacy")
        .arg("scopes")
        .arg("pools,sessions")
        .arg("created")
        .arg(1_700_000_000_000_i64)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{}:keys", app.prefix))
        .arg("legacy")
        .arg(&digest)
        .query_async(&mut con)
        .await
        .unwrap();

    let listed = call(app, key, Method::GET, "/v1/pools", None)
        .await
        .expect(200);
    assert_eq!(listed["pools"].as_array().unwrap().len(), 2, "{listed}");
    let theirs = t.delivery["id"].as_str().unwrap();
    call(
        app,
        key,
        Method::GET,
        &format!("/v1/sessions/{theirs}"),
        None,
    )
    .await
    .expect(200);
    let keys = app.cli(&["keys", "list"]);
    assert!(
        keys.lines()
            .any(|l| l.starts_with("legacy\t") && l.contains("\tpools=*\t")),
        "{keys}"
    );
}

fn hex_sha256(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
