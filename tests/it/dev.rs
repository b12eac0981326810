//! `hush dev`, the first-try command: starts its own Redis under `./.hush/`, prints an admin
//! key and a curl, serves pool `demo`, stops cleanly on Ctrl-C, and keeps its data across a
//! restart.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::harness::*;

/// `hush dev` in `dir` on a free port: the process, its base URL and its admin key.
pub(crate) async fn start_dev(dir: &Path) -> (Proc, String, String) {
    let port = free_port();
    let mut cmd = hush_command();
    cmd.arg("dev")
        .current_dir(dir)
        .env("HUSH_LISTEN", format!("127.0.0.1:{port}"));
    let mut dev = Proc::spawn(cmd);
    let key = dev
        .wait_line(Duration::from_secs(60), "an `admin key:` line", |l| {
            l.split_once("admin key:")
                .map(|(_, k)| k.trim().to_string())
                .filter(|k| !k.is_empty())
        })
        .await;
    let base = format!("http://127.0.0.1:{port}");
    wait_healthz(&base, &mut dev).await;
    (dev, base, key)
}

/// Ctrl-C, then a clean exit.
async fn interrupt(dev: &mut Proc) {
    dev.signal("INT");
    let status = dev.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "hush dev exited with {status} on Ctrl-C:\n{}",
        dev.output()
    );
}

/// Processes whose working directory is inside `dir` (Linux only; empty elsewhere).
fn processes_in(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd"))
            && cwd.starts_with(&dir)
        {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{name}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

#[tokio::test]
async fn hush_dev_keeps_its_data_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();

    let (mut dev, base, key) = start_dev(dir.path()).await;
    let printed = dev.output();
    assert!(
        printed.contains(&format!("Bearer {key}")),
        "hush dev should print a ready-to-paste curl with the admin key:\n{printed}"
    );
    assert!(
        dir.path().join(".hush").is_dir(),
        "hush dev keeps its data under ./.hush/"
    );

    let pool = call_at(&base, Method::GET, "/v1/pools/demo", &key, None)
        .await
        .expect(200);
    assert_eq!(pool["numbers"]["total"], 10, "{pool}");
    let listed = call_at(&base, Method::GET, "/v1/pools/demo/numbers", &key, None)
        .await
        .expect(200);
    let mut numbers: Vec<&str> = listed["numbers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["number"].as_str().unwrap())
        .collect();
    numbers.sort();
    let expected: Vec<String> = (0..10).map(proxy).collect();
    assert_eq!(numbers, expected, "demo numbers are +12015550100..09");

    let (a, b) = (participant(0), participant(1));
    let s = call_at(
        &base,
        Method::POST,
        "/v1/sessions",
        &key,
        Some(&json!({ "pool": "demo", "participants": [{ "number": a }, { "number": b }] })),
    )
    .await
    .expect(201);
    let id = s["id"].as_str().unwrap().to_string();

    interrupt(&mut dev).await;
    // Its Redis stopped with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_in(dir.path());
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes still running in the dev directory after Ctrl-C: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (mut dev, base, key) = start_dev(dir.path()).await;
    let got = call_at(
        &base,
        Method::GET,
        &format!("/v1/sessions/{id}"),
        &key,
        None,
    )
    .await
    .expect(200);
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["status"], "open");
    assert_eq!(got["proxy_number"], s["proxy_number"]);
    let pool = call_at(&base, Method::GET, "/v1/pools/demo", &key, None)
        .await
        .expect(200);
    assert_eq!(
        pool["numbers"]["total"], 10,
        "the demo pool was not duplicated: {pool}"
    );
    assert_eq!(pool["open_sessions"], 1, "{pool}");
    let r = call_at(
        &base,
        Method::POST,
        "/v1/route",
        &key,
        Some(&json!({ "from": b, "to": s["proxy_number"], "kind": "voice" })),
    )
    .await
    .expect(200);
    assert_eq!(r["to"], a.as_str(), "{r}");
    interrupt(&mut dev).await;
}

/// The `HUSH_REDIS_URL` that `./.hush/env` holds.
fn env_redis_url(dir: &Path) -> String {
    let env = std::fs::read_to_string(dir.join(".hush/env")).expect("./.hush/env");
    env.lines()
        .find_map(|l| {
            l.trim_start_matches("export ")
                .strip_prefix("HUSH_REDIS_URL=")
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no HUSH_REDIS_URL in ./.hush/env: {env}"))
}

/// The CLI as a user runs it beside `hush dev`: `. ./.hush/env`, then `hush ...`.
fn cli_after_sourcing_env(dir: &Path, args: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new("sh");
    for (k, _) in std::env::vars() {
        if k.starts_with("HUSH_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("-c")
        .arg(format!(". ./.hush/env && exec \"$HUSH_BIN\" {args}"))
        .env("HUSH_BIN", env!("CARGO_BIN_EXE_hush"))
        .current_dir(dir)
        .output()
        .expect("running sh")
}

#[tokio::test]
async fn hush_dev_keeps_its_redis_port_and_the_cli_reaches_it_after_sourcing_env() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dev, base, key) = start_dev(dir.path()).await;
    let url = env_redis_url(dir.path());

    let out = cli_after_sourcing_env(dir.path(), "pools list");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("demo"), "{stdout}");
    let addr = url.strip_prefix("redis://").unwrap();
    assert!(
        stderr.contains(addr),
        "the CLI should name {addr}: {stderr}"
    );

    // Local development: the app's callback URL is plain http on this machine.
    let pool = call_at(
        &base,
        Method::PATCH,
        "/v1/pools/demo",
        &key,
        Some(&json!({ "callback_url": "http://127.0.0.1:9/hooks" })),
    )
    .await
    .expect(200);
    assert_eq!(pool["callback_url"], "http://127.0.0.1:9/hooks");
    interrupt(&mut dev).await;

    let (mut dev, _, _) = start_dev(dir.path()).await;
    assert_eq!(
        env_redis_url(dir.path()),
        url,
        "hush dev moved its Redis to another port"
    );
    interrupt(&mut dev).await;

    // Someone else took the port meanwhile: a new one, and hush dev says so.
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("binding the old port");
    let (mut dev, _, _) = start_dev(dir.path()).await;
    let moved = env_redis_url(dir.path());
    assert_ne!(moved, url);
    let said = dev.output();
    assert!(
        said.contains(&format!("port {port} is taken")) && said.contains(". ./.hush/env"),
        "hush dev should say its Redis moved: {said}"
    );
    interrupt(&mut dev).await;
    drop(squatter);
}
