//! The sandbox: a simulated carrier that sends each provider's signed webhooks to hush over
//! HTTP, acts on the answer (rings a phone, delivers a text, plays an announcement), reports
//! back, and shows what hush recorded. For each dialect: a call reaches the other phone with
//! the proxy as caller ID and is recorded completed, a text is delivered from the proxy, a
//! stranger hears the pool's message, and the webhook it sent really passed the relay's
//! signature check (a tampered copy is refused). Off, it does not exist. `hush sandbox call`
//! prints the same steps from the command line.

use std::time::Duration;

use hush::config::Secret;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::*;

const RIDER: &str = "+14155550142";
const DRIVER: &str = "+14155550143";
const STRANGER: &str = "+14155550199";
const MESSAGE: &str = "This ride has ended.";

/// hush with the sandbox on and every provider's secrets, the messaging APIs of Telnyx and
/// Vonage pointed at the sandbox's stand-ins, as `hush dev` sets it up.
async fn sandbox_app() -> TestApp {
    let (private, public) = hush::sandbox::telnyx_key_pair();
    let mut config = fresh_config(&crate::topology::shared_url());
    config.sandbox = true;
    let p = &mut config.providers;
    p.twilio_auth_token = Some(Secret::new("sandbox-twilio-token".into()));
    p.telnyx_public_key = Some(Secret::new(public));
    p.plivo_auth_token = Some(Secret::new("sandbox-plivo-token".into()));
    p.vonage_signature_secret = Some(Secret::new("sandbox-vonage-secret".into()));
    config.sandbox_telnyx_signing_key = Some(Secret::new(private));
    TestApp::start_bound(config, |c, base| {
        hush::sandbox::use_stand_in_apis(&mut c.providers, base)
    })
    .await
}

/// The sandbox app with pool `sbx` and a session Rider–Driver on it: (app, proxy, session).
async fn world() -> (TestApp, String, String) {
    let app = sandbox_app().await;
    app.pool(
        "sbx",
        json!({ "cooloff_secs": 0, "out_of_session_message": MESSAGE }),
        &proxies(2),
    )
    .await;
    let s = app.open_session("sbx", RIDER, DRIVER, None).await;
    let proxy = s["proxy_number"].as_str().unwrap().to_string();
    let id = s["id"].as_str().unwrap().to_string();
    (app, proxy, id)
}

fn steps(v: &Value) -> Vec<Value> {
    v["steps"].as_array().cloned().unwrap_or_default()
}

fn step<'a>(steps: &'a [Value], kind: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["step"] == kind)
        .unwrap_or_else(|| panic!("no `{kind}` step in {steps:#?}"))
}

/// A webhook step's request, read back from its detail: URL path, headers, body.
fn request_of(step: &Value, public_url: &str) -> (String, Vec<(String, String)>, String) {
    let detail = step["detail"].as_str().unwrap();
    let (head, body) = detail.split_once("\n\n").unwrap();
    let mut lines = head.lines();
    let url = lines.next().unwrap().strip_prefix("POST ").unwrap();
    let path = url.strip_prefix(public_url).unwrap().to_string();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    (path, headers, body.to_string())
}

/// Sends the webhook of `step` again with its body changed: the relay must refuse it.
/// `signature_header` names the header the signature travels in, when it is one.
async fn assert_tampered_copy_refused(app: &TestApp, step: &Value, signature_header: Option<&str>) {
    let (path, headers, body) = request_of(step, &app.base_url);
    if let Some(name) = signature_header {
        assert!(
            headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_empty()),
            "the webhook carries no {name}: {headers:?}"
        );
    }
    let tampered = if body.starts_with('{') {
        body.replacen('{', "{ ", 1)
    } else {
        format!("{body}&Tampered=1")
    };
    let mut req = app.client.post(app.url(&path)).body(tampered);
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let r = app.send(req).await;
    r.expect_problem(403, "invalid_signature");
}

async fn sandbox_post(app: &TestApp, path: &str, body: Value) -> Value {
    app.call(Method::POST, path, Some(&app.admin_key), Some(&body))
        .await
        .expect(200)
}

async fn plays_every_exchange(dialect: &str, signature_header: &str) {
    let (app, proxy, session) = world().await;

    // A call from Rider rings Driver, showing the proxy number.
    let call = sandbox_post(
        &app,
        "/v1/sandbox/calls",
        json!({ "from": RIDER, "to": proxy, "dialect": dialect }),
    )
    .await;
    let s = steps(&call);
    let answer = step(&s, "answer");
    assert!(
        answer["detail"].as_str().unwrap().starts_with("HTTP 200"),
        "{answer:#?}"
    );
    let ring = step(&s, "ring");
    assert_eq!(ring["phone"], DRIVER, "{s:#?}");
    assert_eq!(ring["caller_id"], proxy.as_str(), "{s:#?}");
    step(&s, "status");
    step(&s, "events");
    let interaction = step(&s, "interaction");
    assert!(
        interaction["title"].as_str().unwrap().contains("completed"),
        "{interaction:#?}"
    );
    let recorded = app
        .get(&format!("/v1/sessions/{session}/interactions"))
        .await
        .expect(200);
    let calls: Vec<&Value> = recorded["interactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "voice")
        .collect();
    assert_eq!(calls.len(), 1, "{recorded:#?}");
    assert_eq!(calls[0]["status"], "completed", "{recorded:#?}");
    assert_eq!(calls[0]["duration_secs"], 42, "{recorded:#?}");
    assert_eq!(calls[0]["provider"], dialect, "{recorded:#?}");

    // The webhook really went through the signature check: a changed copy is refused.
    assert_tampered_copy_refused(&app, step(&s, "webhook"), Some(signature_header)).await;

    // A text from Driver reaches Rider, from the proxy number.
    let text = sandbox_post(
        &app,
        "/v1/sandbox/texts",
        json!({ "from": DRIVER, "to": proxy, "body": "On my way & 2 min", "dialect": dialect }),
    )
    .await;
    let s = steps(&text);
    let delivered = s
        .iter()
        .find(|st| st["step"] == "deliver" && st["phone"].is_string())
        .unwrap_or_else(|| panic!("no delivery to a phone in {s:#?}"));
    assert_eq!(delivered["phone"], RIDER, "{s:#?}");
    assert_eq!(delivered["caller_id"], proxy.as_str(), "{s:#?}");
    assert!(
        delivered["detail"]
            .as_str()
            .unwrap()
            .ends_with("On my way & 2 min"),
        "{delivered:#?}"
    );
    let recorded = app
        .get(&format!("/v1/sessions/{session}/interactions"))
        .await
        .expect(200);
    // Vonage signs an inbound text with a `sig` parameter rather than a header.
    let text_header = (dialect != "vonage").then_some(signature_header);
    assert_tampered_copy_refused(&app, step(&s, "webhook"), text_header).await;
    // Vonage's delivery receipts are not read: the queue's `sent` is the last word there.
    let settled = if dialect == "vonage" {
        "sent"
    } else {
        "delivered"
    };
    assert!(
        recorded["interactions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["kind"] == "sms" && i["provider"] == dialect && i["status"] == settled),
        "{recorded:#?}"
    );

    // A stranger hears the pool's message and reaches nobody.
    let stranger = sandbox_post(
        &app,
        "/v1/sandbox/calls",
        json!({ "from": STRANGER, "to": proxy, "dialect": dialect }),
    )
    .await;
    let s = steps(&stranger);
    let announce = step(&s, "announce");
    assert_eq!(announce["detail"], MESSAGE, "{s:#?}");
    assert_eq!(announce["phone"], STRANGER, "{s:#?}");
    assert!(!s.iter().any(|st| st["step"] == "ring"), "{s:#?}");

    // No participant's digits in Redis or in the logs.
    let needles: Vec<String> = [RIDER, DRIVER, STRANGER]
        .iter()
        .flat_map(|n| [n.to_string(), national_digits(n)])
        .collect();
    for (key, values) in app.dump().await {
        for n in &needles {
            assert!(!key.contains(n.as_str()), "{n} in Redis key {key}");
            for v in &values {
                assert!(
                    !contains_bytes(v, n.as_bytes()),
                    "{n} in a value of Redis key {key}"
                );
            }
        }
    }
    let logs = captured_logs();
    for n in &needles {
        assert!(!logs.contains(n.as_str()), "{n} in the logs");
    }
}

#[tokio::test]
async fn twilio_exchanges_play_through_the_relay() {
    plays_every_exchange("twilio", "X-Twilio-Signature").await;
}

#[tokio::test]
async fn telnyx_exchanges_play_through_the_relay() {
    plays_every_exchange("telnyx", "telnyx-signature-ed25519").await;
}

#[tokio::test]
async fn plivo_exchanges_play_through_the_relay() {
    plays_every_exchange("plivo", "X-Plivo-Signature-V3").await;
}

#[tokio::test]
async fn vonage_exchanges_play_through_the_relay() {
    plays_every_exchange("vonage", "Authorization").await;
}

/// On a pool with an intercept and a callback URL, the sandbox shows the app's verdict and
/// the events hush recorded, as they were recorded.
#[tokio::test]
async fn the_intercept_verdict_and_the_events_are_shown() {
    let receiver = crate::receiver::Receiver::start().await;
    let mut config = fresh_config(&crate::topology::shared_url());
    config.sandbox = true;
    config.callback_allow_private = true;
    config.providers.twilio_auth_token = Some(Secret::new("sandbox-twilio-token".into()));
    let app = TestApp::start_bound(config, |_, _| {}).await;
    app.pool(
        "asks",
        json!({
            "cooloff_secs": 0,
            "out_of_session_message": MESSAGE,
            "intercept_url": receiver.intercept_url(),
            "callback_url": receiver.url("/events"),
        }),
        &proxies(1),
    )
    .await;
    receiver.set_secrets(vec![app.callback_secret("asks").await]);
    let s = app.open_session("asks", RIDER, DRIVER, None).await;
    let proxy = s["proxy_number"].as_str().unwrap();

    receiver.intercept_answer(200, Some(json!({ "action": "allow" })));
    let allowed = sandbox_post(
        &app,
        "/v1/sandbox/calls",
        json!({ "from": RIDER, "to": proxy }),
    )
    .await;
    let st = steps(&allowed);
    assert!(
        step(&st, "intercept")["title"]
            .as_str()
            .unwrap()
            .contains("allows"),
        "{st:#?}"
    );
    step(&st, "ring");
    let events = step(&st, "events")["detail"].as_str().unwrap().to_string();
    assert!(events.contains("interaction.completed"), "{events}");

    receiver.intercept_answer(200, Some(json!({ "action": "block" })));
    let blocked = sandbox_post(
        &app,
        "/v1/sandbox/calls",
        json!({ "from": DRIVER, "to": proxy }),
    )
    .await;
    let st = steps(&blocked);
    assert!(
        step(&st, "intercept")["title"]
            .as_str()
            .unwrap()
            .contains("blocks"),
        "{st:#?}"
    );
    assert!(!st.iter().any(|x| x["step"] == "ring"), "{st:#?}");
    step(&st, "announce");
    // Without the Telnyx signing key, the sandbox does not offer Telnyx.
    let overview = app.get("/v1/sandbox").await.expect(200);
    assert_eq!(overview["dialects"], json!(["twilio"]));
    let r = app
        .call(
            Method::POST,
            "/v1/sandbox/calls",
            Some(&app.admin_key),
            Some(&json!({ "from": RIDER, "to": proxy, "dialect": "telnyx" })),
        )
        .await;
    r.expect_problem(422, "dialect_unavailable");
}

#[tokio::test]
async fn phones_are_listed_added_and_required() {
    let (app, proxy, _) = world().await;
    let key = &app.admin_key;
    let overview = app
        .call(Method::GET, "/v1/sandbox", Some(key), None)
        .await
        .expect(200);
    assert_eq!(
        overview["dialects"],
        json!(["twilio", "telnyx", "plivo", "vonage"])
    );
    assert!(
        overview["phones"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["number"] == RIDER && p["name"] == "Rider"),
        "{overview:#?}"
    );
    assert!(
        overview["proxy_numbers"]
            .as_array()
            .unwrap()
            .contains(&json!(proxy)),
        "{overview:#?}"
    );

    let added = app
        .call(
            Method::POST,
            "/v1/sandbox/phones",
            Some(key),
            Some(&json!({ "name": "Courier" })),
        )
        .await
        .expect(201);
    let number = added["number"].as_str().unwrap();
    assert!(number.starts_with("+14155550"), "{added}");
    assert_eq!(added["name"], "Courier");

    // Only a sandbox phone may call.
    let r = app
        .call(
            Method::POST,
            "/v1/sandbox/calls",
            Some(key),
            Some(&json!({ "from": "+14155550177", "to": proxy })),
        )
        .await;
    r.expect_problem(422, "not_a_sandbox_phone");
    let r = app
        .call(
            Method::POST,
            "/v1/sandbox/calls",
            Some(key),
            Some(&json!({ "from": RIDER, "to": proxy, "dialect": "morse" })),
        )
        .await;
    r.expect_problem(422, "validation_failed");
    let r = app
        .call(
            Method::POST,
            "/v1/sandbox/phones",
            Some(key),
            Some(&json!({ "name": "" })),
        )
        .await;
    r.expect_problem(422, "validation_failed");
    let sessions_only = app.key(&["sessions"]).await;
    let r = app
        .call(
            Method::POST,
            "/v1/sandbox/calls",
            Some(&sessions_only),
            Some(&json!({ "from": RIDER, "to": proxy })),
        )
        .await;
    r.expect_problem(403, "forbidden");
}

#[tokio::test]
async fn the_sandbox_is_absent_when_off() {
    let app = TestApp::start().await;
    let key = &app.admin_key;
    let body = json!({ "from": RIDER, "to": proxy(0) });
    for (method, path, body) in [
        (Method::GET, "/v1/sandbox", None),
        (
            Method::POST,
            "/v1/sandbox/phones",
            Some(json!({ "name": "X" })),
        ),
        (Method::POST, "/v1/sandbox/calls", Some(body.clone())),
        (Method::POST, "/v1/sandbox/texts", Some(body)),
        (Method::POST, "/sandbox/telnyx/v2/messages", Some(json!({}))),
    ] {
        let r = app.call(method, path, Some(key), body.as_ref()).await;
        r.expect_problem(404, "not_found");
    }
}

/// `hush dev`, then `hush sandbox call` in the same directory: the steps are printed.
#[tokio::test]
async fn hush_sandbox_call_prints_the_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dev, base, key) = crate::dev::start_dev(dir.path()).await;
    let client = http_client();
    let session: Value = client
        .post(format!("{base}/v1/sessions"))
        .bearer_auth(&key)
        .json(&json!({ "pool": "demo", "participants": [
            { "number": RIDER, "label": "rider" }, { "number": DRIVER, "label": "driver" }
        ]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let proxy = session["proxy_number"]
        .as_str()
        .expect("a session")
        .to_string();

    for dialect in ["twilio", "vonage"] {
        let dir = dir.path().to_path_buf();
        let to = proxy.clone();
        let out = tokio::task::spawn_blocking(move || {
            hush_command()
                .current_dir(dir)
                .args([
                    "sandbox",
                    "call",
                    "--from",
                    RIDER,
                    "--to",
                    &to,
                    "--dialect",
                    dialect,
                ])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "hush sandbox call failed: {stdout}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            dev.output()
        );
        for want in [
            "[webhook]",
            "[answer]",
            "[ring]",
            "[status]",
            "[interaction]",
        ] {
            assert!(stdout.contains(want), "no {want} in:\n{stdout}");
        }
        assert!(
            stdout.contains(&format!("showing {proxy} as caller ID")),
            "{stdout}"
        );
        assert!(stdout.contains("completed"), "{stdout}");
    }
    dev.signal("INT");
    dev.wait_exit(Duration::from_secs(20)).await;
}
