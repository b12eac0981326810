//! `hush store migrate`: a hush with pools, keys, sessions, events and idempotency records on
//! one Redis moves to a Redis Cluster (or a Sentinel setup) with the real binary, and a hush
//! started on the new URL serves the same data: sessions read and route the same, keys work,
//! retries replay, TTLs are kept, and nothing outside the prefix comes along.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::topology::Topology;

/// Every key matching `pattern` on the Redis at `url` (KEYS reaches every Cluster primary).
async fn keys_at(url: &str, pattern: &str) -> Vec<String> {
    let mut con = hush::store::Store::connect(url, "unused")
        .unwrap()
        .connection();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut con)
        .await
        .unwrap();
    keys.sort();
    keys
}

/// The remaining TTL of each key, in ms (-1 for none).
async fn ttls_at(url: &str, keys: &[String]) -> BTreeMap<String, i64> {
    let mut con = hush::store::Store::connect(url, "unused")
        .unwrap()
        .connection();
    let mut out = BTreeMap::new();
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut con)
            .await
            .unwrap();
        out.insert(key.clone(), ttl);
    }
    out
}

/// `(id, type)` of every event of `pool`: delivery attempts may go on after the move.
async fn event_ids(app: &TestApp, pool: &str) -> Vec<(String, String)> {
    let listed = app
        .get(&format!("/v1/events?pool={pool}"))
        .await
        .expect(200);
    let mut ids: Vec<(String, String)> = listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap().into(), e["type"].to_string()))
        .collect();
    ids.sort();
    ids
}

async fn moves_to(target: &Topology) {
    let source = RedisServer::start(false);
    let mut config = fresh_config(&source.url());
    config.callback_allow_private = true;
    let prefix = config.redis_prefix.clone();
    let mut app = TestApp::start_on(config.clone()).await;

    // A pool spread over several shards: the `shards` field is read when numbers are added,
    // so set before any is.
    let dead_receiver = format!("http://127.0.0.1:{}/events", free_port());
    let r = app
        .put_pool(
            "multi",
            json!({ "cooloff_secs": 600, "callback_url": dead_receiver }),
        )
        .await;
    assert!(matches!(r.status, 200 | 201), "{}", r.text);
    let mut con = app.redis().await;
    let pool_id: String = redis::cmd("HGET")
        .arg(format!("{prefix}:pools"))
        .arg("multi")
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:pool:{pool_id}"))
        .arg("shards")
        .arg(3)
        .query_async(&mut con)
        .await
        .unwrap();
    let multi: Vec<String> = (0..6).map(proxy).collect();
    app.add_numbers("multi", &multi).await.expect(200);
    let single: Vec<String> = (10..12).map(proxy).collect();
    app.pool("single", json!({ "cooloff_secs": 600 }), &single)
        .await;

    let mut open = Vec::new();
    for i in 0..8 {
        let (a, b) = (participant(2 * i), participant(2 * i + 1));
        let pool = if i % 4 == 3 { "single" } else { "multi" };
        let s = app.open_session(pool, &a, &b, Some(3600)).await;
        open.push((s, a, b));
    }
    let shards_used: std::collections::BTreeSet<String> = app
        .scan_keys(&format!("{{p{pool_id}.*}}:nums"))
        .await
        .iter()
        .filter_map(|k| k.split(['{', '}']).nth(1).map(String::from))
        .collect();
    assert!(
        shards_used.len() > 1,
        "sessions in one shard: {shards_used:?}"
    );

    let (ca, cb) = (participant(40), participant(41));
    let cooling = app.open_session("multi", &ca, &cb, None).await;
    app.close_session(cooling["id"].as_str().unwrap())
        .await
        .expect(200);

    let body = json!({ "pool": "single",
        "participants": [{ "number": participant(50) }, { "number": participant(51) }] });
    let first = super::idempotency::send(&app, "order-77", &body).await;
    let first = first.expect(201);

    let app_key = app.key(&["sessions"]).await;
    let before_events = event_ids(&app, "multi").await;
    assert!(!before_events.is_empty(), "no events to move");
    let mut before_sessions = Vec::new();
    for (s, _, _) in &open {
        let id = s["id"].as_str().unwrap();
        before_sessions.push(app.get_session(id).await.expect(200));
    }

    // The write pause: no hush serves while the copy runs.
    app.stop().await;
    // The reapers' turn markers (`rp`) live under an interval; the copy would count one that
    // expires while it runs as expired, not copied, and this test compares exact key sets.
    tokio::time::sleep(Duration::from_millis(2 * app.config.reaper_interval_ms)).await;
    let foreign = ["other:kept-out", &format!("{prefix}x:kept-out")];
    for key in foreign {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("1")
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let source_keys = keys_at(&source.url(), &format!("{prefix}:*")).await;

    let out = cli_output(&config, &["store", "migrate", "--to", &target.url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "migrate failed: {stdout} {stderr}");
    assert!(
        stderr.contains(&format!("copied {0}/{0} keys", source_keys.len())),
        "progress on stderr: {stderr}"
    );
    assert!(stdout.contains("compared value by value"), "{stdout}");

    let target_keys = keys_at(&target.url, &format!("{prefix}:*")).await;
    assert_eq!(
        target_keys, source_keys,
        "the target holds exactly the prefix"
    );
    for key in foreign {
        assert!(
            keys_at(&target.url, key).await.is_empty(),
            "{key} was copied"
        );
    }
    let (src_ttl, dst_ttl) = (
        ttls_at(&source.url(), &source_keys).await,
        ttls_at(&target.url, &source_keys).await,
    );
    let with_ttl = src_ttl.values().filter(|t| **t > 0).count();
    assert!(with_ttl > 0, "nothing under the prefix has a TTL");
    for (key, src) in &src_ttl {
        let dst = dst_ttl[key];
        let kept = if *src < 0 {
            dst == *src
        } else {
            // Read one after the other, seconds apart at most: the target's TTL is the
            // source's less the copy time, never more.
            dst > 0 && dst <= src + 1000 && dst >= src - 10_000
        };
        assert!(kept, "{key}: {src} ms on the source, {dst} on the target");
    }

    // hush on the new URL with the same prefix and secrets.
    let mut moved_config = config.clone();
    moved_config.redis_url = target.url.clone();
    // The test app makes its own admin key; the copied one makes way (the app's key below
    // shows that keys came along).
    run_cli(&moved_config, &["keys", "revoke", "test-admin"]);
    let moved = TestApp::start_on(moved_config.clone()).await;
    for ((s, a, b), before) in open.iter().zip(&before_sessions) {
        let id = s["id"].as_str().unwrap();
        let proxy = s["proxy_number"].as_str().unwrap();
        assert_eq!(&moved.get_session(id).await.expect(200), before);
        moved.assert_connects(a, proxy, b, id).await;
        moved.assert_connects(b, proxy, a, id).await;
    }
    moved
        .assert_announces(&ca, cooling["proxy_number"].as_str().unwrap())
        .await;
    let r = moved
        .send(
            moved
                .client
                .get(moved.url(&format!(
                    "/v1/sessions/{}",
                    open[0].0["id"].as_str().unwrap()
                )))
                .bearer_auth(&app_key),
        )
        .await;
    assert_eq!(r.status, 200, "the app's key after the move: {}", r.text);
    let again = super::idempotency::send(&moved, "order-77", &body).await;
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(again.expect(201)["id"], first["id"]);
    // The calls above add interaction events; every event from before is still listed.
    let after_events = event_ids(&moved, "multi").await;
    for e in &before_events {
        assert!(after_events.contains(e), "{e:?} is gone: {after_events:?}");
    }
    // The moved hush still allocates in the spread pool.
    moved
        .open_session("multi", &participant(60), &participant(61), None)
        .await;

    // A second run finds the prefix taken and touches nothing.
    let out = cli_output(&config, &["store", "migrate", "--to", &target.url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second run went ahead: {stderr}");
    assert!(stderr.contains("--replace"), "{stderr}");
    let r = moved.get_session(open[1].0["id"].as_str().unwrap()).await;
    r.expect(200);
    drop(source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_moves_to_a_cluster() {
    moves_to(&Topology::cluster()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_moves_to_a_sentinel_setup() {
    moves_to(&Topology::sentinel()).await;
}

/// An unreachable side is named, with its password masked, and nothing is copied.
#[test]
fn an_unreachable_redis_is_named_without_its_password() {
    let source = RedisServer::start(false);
    let config = fresh_config(&source.url());
    let dead = free_port();
    for (from, to) in [
        (format!("redis://u:hunter2@127.0.0.1:{dead}"), source.url()),
        (
            source.url(),
            format!("redis+cluster://:hunter2@127.0.0.1:{dead}"),
        ),
    ] {
        let out = cli_output(&config, &["store", "migrate", "--from", &from, "--to", &to]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        let side = if to.contains("hunter2") {
            "target"
        } else {
            "source"
        };
        assert!(
            stderr.contains(&format!("cannot reach the {side} Redis")),
            "{stderr}"
        );
        assert!(
            stderr.contains("***") && !stderr.contains("hunter2"),
            "{stderr}"
        );
    }
}

/// `--replace` clears the prefix on the target first, so what the target held under it and
/// the source lacks is gone; keys outside the prefix stay untouched on both sides.
#[tokio::test]
async fn replace_leaves_an_exact_copy_of_the_prefix() {
    let (source, target) = (RedisServer::start(false), RedisServer::start(false));
    let config = fresh_config(&source.url());
    let p = &config.redis_prefix;
    let set = |url: String, key: String, value: &'static str, ttl_ms: Option<u64>| async move {
        let mut con = hush::store::Store::connect(&url, "unused")
            .unwrap()
            .connection();
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(value);
        if let Some(ms) = ttl_ms {
            cmd.arg("PX").arg(ms);
        }
        let _: () = cmd.query_async(&mut con).await.unwrap();
    };
    set(source.url(), format!("{p}:a"), "new", Some(600_000)).await;
    set(source.url(), format!("{p}:b"), "kept", None).await;
    set(target.url(), format!("{p}:a"), "old", None).await;
    set(target.url(), format!("{p}:stale"), "gone", None).await;
    set(target.url(), "other:x".into(), "untouched", None).await;

    let refused = cli_output(&config, &["store", "migrate", "--to", &target.url()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("holds 2 keys"));
    assert_eq!(keys_at(&target.url(), &format!("{p}:*")).await.len(), 2);

    run_cli(
        &config,
        &["store", "migrate", "--to", &target.url(), "--replace"],
    );
    assert_eq!(
        keys_at(&target.url(), &format!("{p}:*")).await,
        [format!("{p}:a"), format!("{p}:b")]
    );
    assert_eq!(keys_at(&target.url(), "other:*").await, ["other:x"]);
    let mut con = hush::store::Store::connect(&target.url(), "unused")
        .unwrap()
        .connection();
    let a: String = redis::cmd("GET")
        .arg(format!("{p}:a"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(a, "new");
    let ttls = ttls_at(&target.url(), &[format!("{p}:a"), format!("{p}:b")]).await;
    assert!(
        (590_000..=600_000).contains(&ttls[&format!("{p}:a")]),
        "{ttls:?}"
    );
    assert_eq!(ttls[&format!("{p}:b")], -1, "no TTL stays no TTL");
}
