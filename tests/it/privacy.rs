//! No leak: after a scenario that touches every path a participant's number travels (sessions,
//! routes, listing, errors, erasure), no participant's digits appear in any Redis key or
//! value, in any log line, in any error body, or in the metrics.

use serde_json::json;

use crate::harness::*;

/// The forms of a number worth looking for: the full E.164 and the national digits.
fn needles(numbers: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for n in numbers {
        out.push(n.clone());
        out.push(national_digits(n));
    }
    out
}

/// Where participant digits were found: one line per place, with an excerpt.
#[derive(Default)]
struct Leaks(Vec<String>);

impl Leaks {
    fn scan(&mut self, what: &str, hay: &[u8], needles: &[String]) {
        for n in needles {
            if let Some(at) = hay.windows(n.len()).position(|w| w == n.as_bytes()) {
                let from = at.saturating_sub(120);
                let to = (at + n.len() + 120).min(hay.len());
                self.0.push(format!(
                    "{what} contains {n}: …{}…",
                    String::from_utf8_lossy(&hay[from..to])
                ));
                return;
            }
        }
    }

    #[track_caller]
    fn assert_none(&self) {
        assert!(
            self.0.is_empty(),
            "participant digits found in {} places:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

#[track_caller]
fn assert_clean(what: &str, hay: &[u8], needles: &[String]) {
    let mut leaks = Leaks::default();
    leaks.scan(what, hay, needles);
    leaks.assert_none();
}

#[tokio::test]
async fn participant_numbers_never_appear_in_redis_logs_errors_or_metrics() {
    let app = TestApp::start().await;
    app.pool(
        "private",
        json!({ "cooloff_secs": 60, "geo_match": "area_code" }),
        &proxies(2),
    )
    .await;
    app.pool("other", json!({ "cooloff_secs": 0 }), &[proxy202(0)])
        .await;

    let people: Vec<String> = (0..6).map(|i| participant(200 + i)).collect();
    let (a, b, c, d, e, f) = (
        &people[0], &people[1], &people[2], &people[3], &people[4], &people[5],
    );
    // Invalid numbers sent as participants: their digits must not be echoed or stored either.
    let invalid = ["+1415555017".to_string(), "+15550001111".to_string()];
    let mut error_bodies: Vec<String> = Vec::new();
    let mut keep = |r: &Resp| {
        if r.status >= 400 {
            error_bodies.push(r.text.clone());
        }
    };

    // Sessions, with labels and metadata, in two pools, one closed, one extended.
    let s1 = app
        .create_session_with(&json!({
            "pool": "private",
            "participants": [{ "number": a, "label": "rider:1" }, { "number": b, "label": "driver:1" }],
            "metadata": { "trip": "t-1" },
        }))
        .await;
    keep(&s1);
    let s1 = s1.expect(201);
    let s2 = app.open_session("private", a, c, None).await;
    let s3 = app.open_session("other", d, e, Some(120)).await;
    let s4 = app.open_session("private", e, f, None).await;
    let r = app
        .patch(
            &format!("/v1/sessions/{}", s4["id"].as_str().unwrap()),
            &json!({ "ttl_secs": 600 }),
        )
        .await;
    keep(&r);
    app.close_session(s2["id"].as_str().unwrap())
        .await
        .expect(200);

    // Routing, every outcome.
    let p1 = s1["proxy_number"].as_str().unwrap();
    keep(&app.route(a, p1, "voice").await);
    keep(&app.route(b, p1, "sms").await);
    keep(
        &app.route(c, s2["proxy_number"].as_str().unwrap(), "voice")
            .await,
    );
    keep(&app.route(f, p1, "voice").await);
    keep(&app.route(a, "+12025550199", "voice").await);
    // A participant's own number dialled as if it were a proxy number: no pool has it.
    let r = app.route(a, b, "voice").await;
    assert_eq!(r.code(), "number_not_found", "{}", r.text);
    keep(&r);

    // Listing by participant (the number travels in the query string).
    keep(
        &app.get(&format!("/v1/sessions?participant={}", path_number(a)))
            .await,
    );

    // Errors that involve participant numbers.
    for bad in &invalid {
        let r = app.create_session("private", bad, a, None).await;
        assert_eq!(r.code(), "invalid_number", "{}", r.text);
        keep(&r);
    }
    let r = app.create_session("private", b, b, None).await;
    assert_eq!(r.status, 422, "{}", r.text);
    keep(&r);
    let r = app.create_session("private", a, d, None).await;
    assert_eq!(r.code(), "pool_exhausted", "{}", r.text);
    keep(&r);
    keep(&app.create_session("nope", a, b, None).await);
    keep(
        &app.get(&format!(
            "/v1/sessions?participant={}",
            path_number(&invalid[0])
        ))
        .await,
    );
    keep(
        &app.delete(&format!("/v1/participants/{}", path_number(&invalid[1])))
            .await,
    );

    // Erasure of d: afterwards, nothing hush returns about that session names d.
    let r = app
        .delete(&format!("/v1/participants/{}", path_number(d)))
        .await;
    keep(&r);
    assert_eq!(r.expect(200)["closed_sessions"], 1);
    let erased = app.get_session(s3["id"].as_str().unwrap()).await;
    assert_clean(
        "a session read after its participant was erased",
        erased.text.as_bytes(),
        &needles(std::slice::from_ref(d)),
    );
    app.assert_announces(e, &proxy202(0)).await;

    let mut all: Vec<String> = people.clone();
    all.extend(invalid.iter().cloned());
    let needles = needles(&all);

    // Every place is scanned before failing, so one run shows every leak.
    let mut leaks = Leaks::default();

    // 1. Redis: every key and every value under the prefix.
    let dump = app.dump().await;
    assert!(
        dump.len() >= 5,
        "the scenario left almost nothing in Redis: {dump:?}"
    );
    let mut saw_proxy = false;
    for (key, values) in &dump {
        leaks.scan(&format!("Redis key {key}"), key.as_bytes(), &needles);
        for v in values {
            leaks.scan(&format!("a value of Redis key {key}"), v, &needles);
            saw_proxy |= contains_bytes(v, national_digits(p1).as_bytes())
                || key.contains(&national_digits(p1));
        }
    }
    assert!(
        saw_proxy,
        "the dump never shows the proxy number: the scan reads nothing"
    );

    // 2. Error bodies.
    assert!(
        error_bodies.len() >= 5,
        "the scenario produced too few errors"
    );
    for body in &error_bodies {
        leaks.scan("an error body", body.as_bytes(), &needles);
    }

    // 3. Metrics.
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(!metrics.text.is_empty());
    leaks.scan("/metrics", metrics.text.as_bytes(), &needles);

    // 4. Every log line captured from every test of this binary so far.
    let logs = captured_logs();
    assert!(
        !logs.is_empty(),
        "no log output was captured, so the log check would prove nothing"
    );
    for line in logs.lines() {
        leaks.scan("a log line", line.as_bytes(), &needles);
    }

    leaks.assert_none();
}

/// Erasure leaves nothing behind: not the number in any value hush can decrypt (sessions,
/// routes, idempotency records), not its blind index in any key or value; and the numbers
/// it held in cool-off are free for it at once.
#[tokio::test]
async fn erasure_leaves_nothing_about_the_number() {
    use hush::crypto::Crypto;
    use hush::domain::E164;

    let app = TestApp::start().await;
    app.pool("forget", json!({ "cooloff_secs": 3600 }), &proxies(3))
        .await;
    let (a, b, c) = (participant(210), participant(211), participant(212));
    let with_key = app
        .send(
            app.client
                .post(app.url("/v1/sessions"))
                .bearer_auth(&app.admin_key)
                .header("Idempotency-Key", "erase-me")
                .json(&json!({ "pool": "forget", "participants": [
                    { "number": a, "label": "rider:9" }, { "number": b }
                ]})),
        )
        .await
        .expect(201);
    let cooling = app.open_session("forget", &c, &a, None).await;
    app.close_session(cooling["id"].as_str().unwrap())
        .await
        .expect(200);
    let unrelated = app.open_session("forget", &b, &c, None).await;
    app.route(&a, with_key["proxy_number"].as_str().unwrap(), "voice")
        .await
        .expect(200);

    app.delete(&format!("/v1/participants/{}", path_number(&a)))
        .await
        .expect(200);

    let crypto = Crypto::new(
        app.config.index_key.as_ref().unwrap(),
        &app.config.data_keys,
    )
    .unwrap();
    let blind = |n: &str| crypto.blind_index(&E164::parse(n).unwrap());
    let (blind_a, blind_b) = (blind(&a), blind(&b));
    let opened = |v: &[u8]| -> Vec<Vec<u8>> {
        let Ok(text) = std::str::from_utf8(v) else {
            return Vec::new();
        };
        // Route records carry the sealed other party as their last `|` field.
        let candidates = std::iter::once(text).chain(text.rsplit('|').next());
        let mut out = Vec::new();
        for t in candidates {
            for purpose in ["number", "session", "idempotency"] {
                if let Ok(plain) = crypto.open(purpose, t) {
                    out.push(plain);
                }
            }
        }
        out
    };

    let mut saw_b_index = false;
    let mut saw_b_sealed = false;
    let a_forms = [a.clone(), national_digits(&a)];
    for (key, values) in app.dump().await {
        assert!(
            !key.contains(&blind_a),
            "the erased number's blind index is still in key {key}"
        );
        saw_b_index |= key.contains(&blind_b);
        for v in &values {
            assert!(
                !contains_bytes(v, blind_a.as_bytes()),
                "the erased number's blind index is still in a value of {key}"
            );
            saw_b_index |= contains_bytes(v, blind_b.as_bytes());
            for plain in opened(v) {
                for form in &a_forms {
                    assert!(
                        !contains_bytes(&plain, form.as_bytes()),
                        "key {key} still holds the erased number, encrypted: {}",
                        String::from_utf8_lossy(&plain)
                    );
                }
                saw_b_sealed |= contains_bytes(&plain, b.as_bytes());
            }
        }
    }
    assert!(
        saw_b_index,
        "the check never saw a blind index, so it proves nothing"
    );
    assert!(
        saw_b_sealed,
        "the check never opened a sealed number, so it proves nothing"
    );

    // The number's cool-off holds were released with it: both numbers are free for it now.
    app.open_session("forget", &a, &participant(213), None)
        .await;
    app.open_session("forget", &a, &participant(214), None)
        .await;
    app.assert_connects(
        &b,
        unrelated["proxy_number"].as_str().unwrap(),
        &c,
        unrelated["id"].as_str().unwrap(),
    )
    .await;

    // The stored response went too: replaying its key does not hand back the erased session.
    let replay = app
        .send(
            app.client
                .post(app.url("/v1/sessions"))
                .bearer_auth(&app.admin_key)
                .header("Idempotency-Key", "erase-me")
                .json(&json!({ "pool": "forget", "participants": [
                    { "number": a, "label": "rider:9" }, { "number": b }
                ]})),
        )
        .await;
    assert_ne!(
        replay.json, with_key,
        "a replay after erasure returned the erased session as open"
    );
}
