//! API keys and scopes: no key or a bad key is 401, a valid key without the scope is 403,
//! and keys made by the CLI work until they are revoked.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::*;

/// One representative request per scope family, in an app that has pool `auth` and a number.
fn requests() -> Vec<(&'static str, Method, String, Option<Value>)> {
    vec![
        ("pools", Method::GET, "/v1/pools".into(), None),
        (
            "pools",
            Method::PUT,
            "/v1/pools/auth-new".into(),
            Some(json!({})),
        ),
        ("pools", Method::GET, "/v1/pools/auth/numbers".into(), None),
        (
            "sessions",
            Method::POST,
            "/v1/sessions".into(),
            Some(json!({ "pool": "auth",
                "participants": [{ "number": participant(0) }, { "number": participant(1) }] })),
        ),
        (
            "sessions",
            Method::GET,
            format!("/v1/sessions?participant={}", path_number(&participant(0))),
            None,
        ),
        (
            "relay",
            Method::POST,
            "/v1/route".into(),
            Some(json!({ "from": participant(0), "to": proxy(0), "kind": "voice" })),
        ),
        (
            "admin",
            Method::DELETE,
            format!("/v1/participants/{}", path_number(&participant(9))),
            None,
        ),
    ]
}

#[tokio::test]
async fn missing_or_bad_credentials_are_unauthorized() {
    let app = TestApp::start().await;
    app.pool("auth", json!({}), &proxies(2)).await;
    for (_, method, path, body) in requests() {
        let r = app.call(method.clone(), &path, None, body.as_ref()).await;
        assert_eq!(
            (r.status, r.code()),
            (401, "unauthorized"),
            "{method} {path} without a key: {}",
            r.text
        );
        assert_problem_shape(&r);
        let r = app
            .call(
                method.clone(),
                &path,
                Some("hush_not_a_real_key"),
                body.as_ref(),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (401, "unauthorized"),
            "{method} {path} with a bad key: {}",
            r.text
        );
    }
    // The right key in the wrong scheme.
    let r = app
        .send(
            app.client
                .get(app.url("/v1/pools"))
                .header("authorization", format!("Basic {}", app.admin_key)),
        )
        .await;
    r.expect_problem(401, "unauthorized");
    // A near miss of a real key.
    let mut near = app.admin_key.clone();
    let last = near.pop().unwrap();
    near.push(if last == 'a' { 'b' } else { 'a' });
    app.call(Method::GET, "/v1/pools", Some(&near), None)
        .await
        .expect_problem(401, "unauthorized");
}

#[tokio::test]
async fn each_scope_opens_only_its_own_endpoints() {
    let app = TestApp::start().await;
    app.pool("auth", json!({}), &proxies(2)).await;
    for scope in ["pools", "sessions", "relay"] {
        let key = app.key(&[scope]).await;
        for (needs, method, path, body) in requests() {
            let r = app
                .call(method.clone(), &path, Some(&key), body.as_ref())
                .await;
            if needs == scope {
                assert!(
                    r.status < 400,
                    "{method} {path} with scope {scope}: {} {}",
                    r.status,
                    r.text
                );
            } else {
                assert_eq!(
                    (r.status, r.code()),
                    (403, "forbidden"),
                    "{method} {path} needs {needs}, the key has only {scope}: {}",
                    r.text
                );
                assert_problem_shape(&r);
            }
        }
    }

    // Erasure is for admins only, even with every other scope.
    let all_but_admin = app.key(&["pools", "sessions", "relay"]).await;
    app.call(
        Method::DELETE,
        &format!("/v1/participants/{}", path_number(&participant(9))),
        Some(&all_but_admin),
        None,
    )
    .await
    .expect_problem(403, "forbidden");

    // Admin opens everything.
    let admin = app.key(&["admin"]).await;
    for (_, method, path, body) in requests() {
        let r = app
            .call(method.clone(), &path, Some(&admin), body.as_ref())
            .await;
        assert!(
            r.status < 400,
            "{method} {path} as admin: {} {}",
            r.status,
            r.text
        );
    }
}

#[tokio::test]
async fn operations_endpoints_need_no_key() {
    let app = TestApp::start().await;
    for path in ["/healthz", "/readyz", "/openapi.yaml"] {
        let r = app.call(Method::GET, path, None, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
    }
}

#[tokio::test]
async fn cli_keys_work_until_revoked() {
    let app = TestApp::start().await;
    app.pool("auth", json!({}), &proxies(2)).await;

    let out = app.cli(&[
        "keys",
        "create",
        "--name",
        "ops-bot",
        "--scopes",
        "pools,relay",
    ]);
    let key = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("keys create printed nothing")
        .trim()
        .to_string();
    assert!(
        !key.contains(' '),
        "the key must be alone on its line: {key:?}"
    );

    app.call(Method::GET, "/v1/pools", Some(&key), None)
        .await
        .expect(200);
    app.call(
        Method::POST,
        "/v1/route",
        Some(&key),
        Some(&json!({ "from": participant(0), "to": proxy(0), "kind": "sms" })),
    )
    .await
    .expect(200);
    app.call(
        Method::POST,
        "/v1/sessions",
        Some(&key),
        Some(&json!({ "pool": "auth",
            "participants": [{ "number": participant(0) }, { "number": participant(1) }] })),
    )
    .await
    .expect_problem(403, "forbidden");

    let listed = app.cli(&["keys", "list"]);
    assert!(listed.contains("ops-bot"), "keys list: {listed}");
    assert!(
        !listed.contains(&key),
        "keys list must not print the key itself"
    );

    app.cli(&["keys", "revoke", "ops-bot"]);
    // A running server may trust a key it has just checked for a few seconds.
    let r = eventually(
        std::time::Duration::from_secs(7),
        "a revoked key to be refused",
        || async {
            let r = app.call(Method::GET, "/v1/pools", Some(&key), None).await;
            (r.status != 200).then_some(r)
        },
    )
    .await;
    r.expect_problem(401, "unauthorized");
    let listed = app.cli(&["keys", "list"]);
    assert!(
        !listed.contains("ops-bot"),
        "a revoked key is still listed: {listed}"
    );
}
