//! The relay runs as a Redis function: loaded into a Redis that lacks it (new, flushed, or a
//! Cluster node added later), and run as a script where Redis refuses functions.

use serde_json::json;

use crate::harness::*;

/// One command on the Redis at `url`, as an operator would send it.
async fn query(url: &str, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd(args[0])
        .arg(&args[1..])
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// The names of the relay functions loaded there.
async fn relay_functions(url: &str) -> Vec<String> {
    fn names(v: &redis::Value, out: &mut Vec<String>) {
        match v {
            redis::Value::Array(items) => items.iter().for_each(|i| names(i, out)),
            redis::Value::Map(pairs) => pairs.iter().for_each(|(_, i)| names(i, out)),
            redis::Value::BulkString(b) if b.starts_with(b"hush_relay_") => {
                out.push(String::from_utf8_lossy(b).into_owned())
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    names(&query(url, &["FUNCTION", "LIST"]).await, &mut out);
    out
}

/// A pool `name` and a session in it: both participants, the session's id and its number.
async fn pair(app: &TestApp, name: &str) -> (String, String, String, String) {
    app.pool(name, json!({}), &proxies(2)).await;
    let (a, b) = (participant(0), participant(1));
    let s = app.open_session(name, &a, &b, None).await;
    let field = |f: &str| s[f].as_str().unwrap().to_string();
    (a, b, field("id"), field("proxy_number"))
}

#[tokio::test]
async fn a_redis_without_the_relay_function_gets_it_loaded_on_the_first_call() {
    let redis = RedisServer::start(false);
    let app = TestApp::start_on(fresh_config(&redis.url())).await;
    assert!(relay_functions(&redis.url()).await.is_empty());
    let (a, b, id, proxy) = &pair(&app, "fn").await;
    app.assert_connects(a, proxy, b, id).await;
    let loaded = relay_functions(&redis.url()).await;
    assert_eq!(loaded.len(), 1, "{loaded:?}");

    // An operator's FUNCTION FLUSH (or a new Cluster node) loses it: the next call loads it
    // again and is answered as if nothing happened.
    query(&redis.url(), &["FUNCTION", "FLUSH"]).await;
    assert!(relay_functions(&redis.url()).await.is_empty());
    app.assert_connects(b, proxy, a, id).await;
    assert_eq!(relay_functions(&redis.url()).await, loaded);
    assert_eq!(app.interactions(id).await.len(), 2);
}

#[tokio::test]
async fn a_redis_user_without_functions_relays_through_the_script() {
    let redis = RedisServer::start(false);
    query(
        &redis.url(),
        &[
            "ACL",
            "SETUSER",
            "nofn",
            "on",
            ">nofn-secret",
            "~*",
            "&*",
            "+@all",
            "-fcall",
            "-function",
        ],
    )
    .await;
    let url = format!("redis://nofn:nofn-secret@127.0.0.1:{}", redis.port);
    let app = TestApp::start_on(fresh_config(&url)).await;
    let (a, b, id, proxy) = &pair(&app, "nofn").await;
    app.assert_connects(a, proxy, b, id).await;
    app.assert_connects(b, proxy, a, id).await;
    assert_eq!(app.interactions(id).await.len(), 2);
    assert!(relay_functions(&redis.url()).await.is_empty());
    assert!(
        captured_logs().contains("Redis refuses functions"),
        "the fallback is logged"
    );
}
