//! The `hush` binary: `serve` refuses to start without its keys and runs the real server
//! (with its own logging) when it has them; the ops commands work over the same state the
//! API sees.

use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test]
async fn serve_refuses_to_start_without_keys() {
    let mut cmd = hush_command();
    cmd.arg("serve")
        .env("HUSH_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("HUSH_REDIS_URL", shared_redis().url());
    let mut p = Proc::spawn(cmd);
    let status = p.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success(), "serve started without keys");
    let out = p.output();
    assert!(
        out.contains("hush keys gen-secrets"),
        "the refusal should say how to make the keys: {out}"
    );
}

/// `hush serve` (the real binary, logging at `debug`) on `config` with extra environment
/// (an empty value removes the variable), once it answers: the process and its base URL.
async fn serve_binary(config: &hush::config::Config, env: &[(&str, &str)]) -> (Proc, String) {
    let port = free_port();
    let mut cmd = hush_command();
    with_config(&mut cmd, config);
    cmd.arg("serve")
        .env("HUSH_LISTEN", format!("127.0.0.1:{port}"))
        .env("HUSH_LOG", "debug");
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let mut server = Proc::spawn(cmd);
    let base = format!("http://127.0.0.1:{port}");
    wait_healthz(&base, &mut server).await;
    (server, base)
}

#[test]
fn gen_secrets_prints_two_fresh_keys() {
    let run = || {
        let out = hush_command()
            .args(["keys", "gen-secrets"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    let b64 = base64::engine::general_purpose::STANDARD;
    for name in ["HUSH_INDEX_KEY", "HUSH_DATA_KEYS"] {
        let value = first
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= line: {first}"));
        let bytes = b64.decode(value.trim()).expect("base64");
        assert_eq!(bytes.len(), 32, "{name} must be 32 bytes");
    }
    assert_ne!(first, run(), "gen-secrets printed the same keys twice");
}

#[tokio::test]
async fn ops_commands_share_state_with_the_api() {
    let app = TestApp::start().await;
    app.cli(&[
        "pools",
        "put",
        "cli-pool",
        "--cooloff-secs",
        "0",
        "--geo-match",
        "any",
    ]);
    let pool = app.get("/v1/pools/cli-pool").await.expect(200);
    assert_eq!(pool["cooloff_secs"], 0);
    assert_eq!(pool["geo_match"], "any");

    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("numbers.csv");
    std::fs::write(
        &csv,
        format!(
            "number,capabilities\n{},voice;sms\n{},voice\n{}\n+1415\n",
            proxy(0),
            proxy(1),
            proxy(2)
        ),
    )
    .unwrap();
    let out = app.cli(&["numbers", "import", "cli-pool", csv.to_str().unwrap()]);
    assert!(out.contains("added 3, skipped 1"), "{out}");
    let listed = app.get("/v1/pools/cli-pool/numbers").await.expect(200);
    let caps: Vec<(String, Value)> = listed["numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["number"].as_str().unwrap().to_string(),
                n["capabilities"].clone(),
            )
        })
        .collect();
    assert!(
        caps.contains(&(proxy(1), json!(["voice"]))),
        "capabilities from the CSV: {listed}"
    );

    let out = app.cli(&["numbers", "list", "cli-pool"]);
    for i in 0..3 {
        assert!(out.contains(&proxy(i)), "numbers list: {out}");
    }
    app.cli(&["numbers", "drain", "cli-pool", &proxy(2)]);
    let shown = app.get("/v1/pools/cli-pool").await.expect(200);
    assert_eq!(shown["numbers"]["draining"], 1, "{shown}");

    let out = app.cli(&["pools", "list"]);
    assert!(out.contains("cli-pool"), "pools list: {out}");
    let out = app.cli(&["pools", "show", "cli-pool"]);
    let shown: Value = serde_json::from_str(&out).expect("pools show prints JSON");
    assert_eq!(shown["name"], "cli-pool");

    let s = app
        .open_session("cli-pool", &participant(0), &participant(1), None)
        .await;
    let out = app.cli(&["sessions", "show", s["id"].as_str().unwrap()]);
    let shown: Value = serde_json::from_str(&out).expect("sessions show prints JSON");
    assert_eq!(shown["id"], s["id"]);
    assert_eq!(shown["proxy_number"], s["proxy_number"]);
}

/// The real binary with its own log set-up at `debug`, in JSON: every line is JSON, and a
/// scenario with sessions, routes, errors and erasure logs no participant's digits.
#[tokio::test]
async fn serve_logs_json_without_participant_numbers() {
    let config = fresh_config(&shared_redis().url());
    let key = run_cli(
        &config,
        &["keys", "create", "--name", "ops", "--scopes", "admin"],
    )
    .lines()
    .last()
    .unwrap()
    .trim()
    .to_string();
    run_cli(&config, &["pools", "put", "served", "--cooloff-secs", "0"]);

    let (mut server, base) = serve_binary(&config, &[("HUSH_LOG_FORMAT", "json")]).await;

    let people: Vec<String> = (0..3).map(|i| participant(250 + i)).collect();
    let go = |method: Method, path: String, body: Option<Value>| {
        let base = base.clone();
        let key = key.clone();
        async move { call_at(&base, method, &path, &key, body.as_ref()).await }
    };
    go(
        Method::POST,
        "/v1/pools/served/numbers".into(),
        Some(json!({ "numbers": [{ "number": proxy(0) }] })),
    )
    .await
    .expect(200);
    let s = go(
        Method::POST,
        "/v1/sessions".into(),
        Some(json!({ "pool": "served",
            "participants": [{ "number": people[0] }, { "number": people[1] }] })),
    )
    .await
    .expect(201);
    go(
        Method::POST,
        "/v1/route".into(),
        Some(json!({ "from": people[0], "to": proxy(0), "kind": "voice" })),
    )
    .await
    .expect(200);
    go(
        Method::POST,
        "/v1/route".into(),
        Some(json!({ "from": people[2], "to": proxy(0), "kind": "sms" })),
    )
    .await
    .expect(200);
    go(
        Method::POST,
        "/v1/sessions".into(),
        Some(json!({ "pool": "served",
            "participants": [{ "number": people[0] }, { "number": people[2] }] })),
    )
    .await
    .expect_problem(409, "pool_exhausted");
    go(
        Method::GET,
        format!("/v1/sessions?participant={}", path_number(&people[1])),
        None,
    )
    .await
    .expect(200);
    go(
        Method::DELETE,
        format!("/v1/participants/{}", path_number(&people[0])),
        None,
    )
    .await
    .expect(200);
    go(
        Method::GET,
        format!("/v1/sessions/{}", s["id"].as_str().unwrap()),
        None,
    )
    .await;

    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "serve exited with {status} on SIGTERM");

    let lines = server.lines();
    assert!(
        lines.len() >= 5,
        "serve at debug logged almost nothing: {lines:?}"
    );
    for line in &lines {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "HUSH_LOG_FORMAT=json printed a line that is not JSON: {line}"
        );
        for n in &people {
            assert!(
                !line.contains(n.as_str()) && !line.contains(&national_digits(n)),
                "serve logged participant number {n}: {line}"
            );
        }
    }
}

/// Runs the `hush` CLI with `config`: (success, stdout, stderr).
fn cli_full(config: &hush::config::Config, args: &[&str]) -> (bool, String, String) {
    let out = cli_output(config, args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn pools_put_says_whether_it_merges_or_replaces() {
    let app = TestApp::start().await;
    app.put_pool(
        "said",
        json!({ "default_ttl_secs": 600, "callback_url": "https://app.example.com/hooks" }),
    )
    .await
    .expect(201);

    let (ok, _, err) = cli_full(
        &app.config,
        &["pools", "put", "said", "--cooloff-secs", "0"],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("kept the others"),
        "a merge should say so: {err}"
    );
    let pool = app.get("/v1/pools/said").await.expect(200);
    assert_eq!(pool["cooloff_secs"], 0);
    assert_eq!(pool["default_ttl_secs"], 600, "{pool}");
    assert_eq!(pool["callback_url"], "https://app.example.com/hooks");

    let (ok, _, err) = cli_full(
        &app.config,
        &["pools", "put", "said", "--replace", "--geo-match", "any"],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("back to their defaults"),
        "a replacement should say so: {err}"
    );
    let pool = app.get("/v1/pools/said").await.expect(200);
    assert_eq!(pool["geo_match"], "any");
    assert_eq!(pool["default_ttl_secs"], 3600, "{pool}");
    assert_eq!(pool["cooloff_secs"], 3600, "{pool}");
    assert_eq!(pool["callback_url"], Value::Null, "{pool}");

    // The CLI refuses a bad value in the words of its own option.
    let (ok, _, err) = cli_full(
        &app.config,
        &["pools", "put", "said", "--cooloff-secs", "999999999"],
    );
    assert!(!ok);
    assert!(err.contains("--cooloff-secs must be"), "{err}");
}

#[tokio::test]
async fn pools_delete_removes_an_idle_pool_and_refuses_a_busy_one() {
    let app = TestApp::start().await;
    app.pool("busy", json!({ "cooloff_secs": 0 }), &[proxy(0)])
        .await;
    let s = app
        .open_session("busy", &participant(0), &participant(1), None)
        .await;
    let (ok, _, err) = cli_full(&app.config, &["pools", "delete", "busy"]);
    assert!(!ok, "a pool with an open session was deleted");
    assert!(err.contains("carrying sessions"), "{err}");
    app.close_session(s["id"].as_str().unwrap())
        .await
        .expect(200);
    let out = app.cli(&["pools", "delete", "busy"]);
    assert!(out.contains("deleted pool `busy`"), "{out}");
    app.get("/v1/pools/busy")
        .await
        .expect_problem(404, "pool_not_found");
}

/// Every ops command says on stderr which Redis (never its password) and prefix it works on.
#[tokio::test]
async fn ops_commands_name_their_redis_and_prefix() {
    // On the plain server whatever HUSH_TEST_REDIS says: the check reads host:port off a
    // redis:// URL.
    let app = TestApp::start_on(fresh_config(&shared_redis().url())).await;
    let (ok, out, err) = cli_full(&app.config, &["pools", "list"]);
    assert!(ok, "{err}");
    let addr = app
        .redis_url
        .strip_prefix("redis://")
        .unwrap()
        .trim_end_matches('/');
    assert!(
        err.contains(addr) && err.contains(&format!("`{}`", app.prefix)),
        "stderr should name {addr} and prefix {}: {err}",
        app.prefix
    );
    assert!(
        !out.contains(addr),
        "the Redis line belongs on stderr: {out}"
    );

    // A password in the URL is never printed, even when the command then fails.
    let mut config = app.config.clone();
    config.redis_url = format!("redis://user:s3cr3t-pw@{addr}");
    let (_, out, err) = cli_full(&config, &["keys", "list"]);
    assert!(err.contains(addr), "{err}");
    assert!(
        !err.contains("s3cr3t-pw") && !out.contains("s3cr3t-pw"),
        "{err}"
    );
}

/// With no Redis configured, the CLI says how to point it at one instead of trying the
/// default address (which may be someone else's Redis).
#[test]
fn ops_commands_without_a_redis_say_how_to_configure_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = hush_command()
        .args(["pools", "list"])
        .current_dir(dir.path())
        .output()
        .expect("running the hush binary");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HUSH_REDIS_URL") && err.contains(". ./.hush/env"),
        "the refusal should say how to configure Redis: {err}"
    );
}

/// Logs written to a pipe or a file carry no colour codes.
#[tokio::test]
async fn serve_logs_without_colour_codes_when_not_on_a_terminal() {
    let config = fresh_config(&shared_redis().url());
    let (mut server, _) = serve_binary(&config, &[("NO_COLOR", "")]).await;
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "serve exited with {status}");
    let out = server.output();
    assert!(out.contains("hush listening"), "{out}");
    assert!(
        !out.contains('\u{1b}'),
        "log lines on a pipe carry escape codes: {out:?}"
    );
}

/// The PIN settings have a flag each; a merge changes only those given, and a value out of
/// range is refused in the words of the flag.
#[tokio::test]
async fn pools_put_sets_the_pin_policy() {
    let app = TestApp::start().await;
    let (ok, _, err) = cli_full(
        &app.config,
        &[
            "pools",
            "put",
            "pinned",
            "--pin",
            "fallback",
            "--pin-length",
            "8",
            "--pin-prompt-timeout-secs",
            "7",
            "--pin-retry",
            "0",
            "--pin-caller-check",
            "false",
            "--pin-failure-limit",
            "20",
            "--pin-prompt",
            "Your code, please.",
            "--pin-text-prompt",
            "Begin with your code.",
        ],
    );
    assert!(ok, "{err}");
    let pool = app.get("/v1/pools/pinned").await.expect(200);
    assert_eq!(pool["pin"], "fallback", "{pool}");
    assert_eq!(pool["pin_length"], 8);
    assert_eq!(pool["pin_prompt_timeout_secs"], 7);
    assert_eq!(pool["pin_retry"], 0);
    assert_eq!(pool["pin_caller_check"], false);
    assert_eq!(pool["pin_failure_limit"], 20);
    assert_eq!(pool["pin_prompt"], "Your code, please.");
    assert_eq!(pool["pin_text_prompt"], "Begin with your code.");

    let (ok, _, err) = cli_full(&app.config, &["pools", "put", "pinned", "--pin", "always"]);
    assert!(ok, "{err}");
    let pool = app.get("/v1/pools/pinned").await.expect(200);
    assert_eq!(pool["pin"], "always");
    assert_eq!(pool["pin_length"], 8, "a merge keeps the others: {pool}");

    for (flag, value, said) in [
        (
            "--pin",
            "sometimes",
            "--pin must be off, fallback or always",
        ),
        ("--pin-length", "3", "--pin-length must be"),
        (
            "--pin-prompt-timeout-secs",
            "11",
            "--pin-prompt-timeout-secs must be",
        ),
        ("--pin-retry", "6", "--pin-retry must be"),
        ("--pin-failure-limit", "0", "--pin-failure-limit must be"),
        ("--pin-prompt", " ", "--pin-prompt must hold"),
    ] {
        let (ok, _, err) = cli_full(&app.config, &["pools", "put", "pinned", flag, value]);
        assert!(!ok, "{flag} {value:?} was taken");
        assert!(err.contains(said), "{flag} {value:?}: {err}");
    }
    let pool = app.get("/v1/pools/pinned").await.expect(200);
    assert_eq!(
        pool["pin_length"], 8,
        "a refused change changed nothing: {pool}"
    );
}
