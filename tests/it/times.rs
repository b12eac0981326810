//! Every time hush shows (API answers, event payloads, CLI listings) has one fixed form:
//! RFC 3339 in UTC with exactly three fractional digits and `Z`.

use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use serde_json::{Value, json};

use crate::harness::*;
use crate::receiver::Receiver;

static TIME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$").expect("a valid pattern")
});

/// Every string under a key ending in `_at`, or named `at` or `timestamp`, in `v`.
fn times(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                let named = k.ends_with("_at") || k == "at" || k == "timestamp";
                match x {
                    Value::String(s) if named => out.push(format!("{k}={s}")),
                    _ => times(x, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| times(x, out)),
        _ => {}
    }
}

fn assert_fixed_form(what: &str, v: &Value) -> usize {
    let mut found = Vec::new();
    times(v, &mut found);
    for t in &found {
        let value = t.split_once('=').unwrap().1;
        assert!(
            TIME.is_match(value),
            "{what}: `{t}` is not in the fixed form"
        );
    }
    found.len()
}

#[tokio::test]
async fn times_have_one_fixed_form_everywhere() {
    let app = TestApp::start_with(|c| c.callback_allow_private = true).await;
    let receiver = Receiver::start().await;
    app.pool(
        "clock",
        json!({ "cooloff_secs": 0, "callback_url": receiver.url("/events") }),
        &proxies(2),
    )
    .await;
    // Many sessions, so that times with trailing zeros in their milliseconds (the ones a
    // variable-width format shortens) are among them.
    let mut seen = 0;
    let mut ids = Vec::new();
    for i in 0..20 {
        let s = app
            .open_session(
                "clock",
                &participant(2 * i),
                &participant(2 * i + 1),
                Some(600),
            )
            .await;
        seen += assert_fixed_form("session created", &s);
        ids.push(s["id"].as_str().unwrap().to_string());
        if ids.len() == 2 {
            for id in ids.drain(..) {
                let closed = app.close_session(&id).await.expect(200);
                seen += assert_fixed_form("session closed", &closed);
            }
        }
    }
    assert!(seen >= 40, "too few times checked: {seen}");

    let delivered = eventually(Duration::from_secs(20), "events delivered", || async {
        let got = receiver.of_type("session.closed");
        (got.len() >= 20).then_some(got)
    })
    .await;
    for d in &delivered {
        assert!(
            assert_fixed_form("event payload", &d.body) >= 2,
            "{}",
            d.body
        );
    }
    let listed = app.get("/v1/events?pool=clock").await.expect(200);
    assert!(
        assert_fixed_form("event listing", &listed) >= 20,
        "{listed}"
    );

    let out = app.cli(&["keys", "list"]);
    let created = out
        .lines()
        .filter_map(|l| l.rsplit('\t').next())
        .collect::<Vec<_>>();
    assert!(!created.is_empty(), "{out}");
    for t in created {
        assert!(
            TIME.is_match(t.trim()),
            "keys list: `{t}` is not in the fixed form"
        );
    }
}
