//! `hush dev`, the first-try command: starts its own Redis under `./.hush/`, prints an admin
//! key and a curl, serves pool `demo`, stops cleanly on Ctrl-C, and keeps its data across a
//! restart.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::harness::*;

/// `hush dev` in `dir` on a free port: the process, its base URL and its admin key.
async fn start_dev(dir: &Path) -> (Proc, String, String) {
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
