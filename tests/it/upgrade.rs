//! `hush store upgrade`: data written in layout 1 (a hash per session, per participant's
//! routes and sticky memory, and `x`) is refused at start, converted in place, and then
//! serves as before: sessions read the same, calls connect, holds and sticky memory count.

use hush::crypto::Crypto;
use hush::domain::{E164, SessionId};
use serde_json::{Value, json};

use crate::harness::*;

const MINUTE: i64 = 60_000;

struct Layout1 {
    con: hush::store::Conn,
    crypto: Crypto,
    tag: String,
}

impl Layout1 {
    fn idx(&self, number: &str) -> String {
        self.crypto.blind_index(&E164::parse(number).unwrap())
    }

    fn sealed(&self, number: &str) -> String {
        self.crypto.seal_number(&E164::parse(number).unwrap())
    }

    async fn cmd(&self, args: &[String]) {
        let mut con = self.con.clone();
        let mut cmd = redis::cmd(&args[0]);
        for a in &args[1..] {
            cmd.arg(a);
        }
        let _: redis::Value = cmd.query_async(&mut con).await.expect("a layout-1 write");
    }

    /// A session record as layout 1 wrote it, its two routes and its transition entry; the
    /// blob in 60-byte chunks when `chunked`, else whole in `z`.
    #[allow(clippy::too_many_arguments)]
    async fn session(
        &self,
        key: &str,
        (a, b): (&str, &str),
        labels: (&str, &str),
        metadata: Value,
        proxy: &str,
        (t, e, co, created): (&str, i64, i64, i64),
        chunked: bool,
    ) {
        let blob = json!({
            "p": [{ "n": a, "l": labels.0 }, { "n": b, "l": labels.1 }],
            "m": metadata,
        });
        let sealed = self
            .crypto
            .seal("session", &serde_json::to_vec(&blob).unwrap());
        let h = e + co;
        let s = format!("{}s:{key}", self.tag);
        let mut args: Vec<String> = ["HSET", &s, "t", t, "m", "b", "n", proxy, "g", "any"]
            .iter()
            .map(|v| v.to_string())
            .collect();
        for (f, v) in [("c", created), ("e", e), ("h", h), ("co", co)] {
            args.extend([f.to_string(), v.to_string()]);
        }
        args.extend(["a".into(), self.idx(a), "b".into(), self.idx(b)]);
        if t == "c" {
            args.extend(["r".into(), "closed".into(), "x".into(), e.to_string()]);
        }
        if chunked {
            for (i, chunk) in sealed.as_bytes().chunks(60).enumerate() {
                args.extend([
                    format!("z{}", i + 1),
                    String::from_utf8(chunk.to_vec()).unwrap(),
                ]);
            }
        } else {
            args.extend(["z".into(), sealed]);
        }
        self.cmd(&args).await;
        for (me, other) in [(a, b), (b, a)] {
            let route = format!("{key}|b|{e}|{h}|{}", self.sealed(other));
            self.cmd(&[
                "HSET".into(),
                format!("{}u:{}", self.tag, self.idx(me)),
                proxy.into(),
                route,
            ])
            .await;
        }
        let due = if t == "o" { e } else { h };
        self.cmd(&[
            "ZADD".into(),
            format!("{}x", self.tag),
            due.to_string(),
            key.into(),
        ])
        .await;
        // The load layout 1 counted for it: held by the session; open while it is open.
        let nums = format!("{}nums", self.tag);
        self.cmd(&[
            "HINCRBY".into(),
            nums.clone(),
            format!("{proxy}:h"),
            "1".into(),
        ])
        .await;
        if t == "o" {
            for field in [format!("{proxy}:o"), "#open".into(), "#busy".into()] {
                self.cmd(&["HINCRBY".into(), nums.clone(), field, "1".into()])
                    .await;
            }
        }
    }
}

#[tokio::test]
async fn layout_1_data_is_converted_in_place_and_serves_as_before() {
    let mut app = TestApp::start().await;
    let numbers = proxies(4);
    app.pool(
        "old",
        json!({ "default_ttl_secs": 3600, "cooloff_secs": 3600, "geo_match": "any" }),
        &numbers,
    )
    .await;
    app.stop().await;
    let config = app.config.clone();
    let mut con = app.redis().await;
    let pool_id: u32 = redis::cmd("HGET")
        .arg(format!("{}:pools", app.prefix))
        .arg("old")
        .query_async(&mut con)
        .await
        .unwrap();
    let l1 = Layout1 {
        con: con.clone(),
        crypto: Crypto::new(config.index_key.as_ref().unwrap(), &config.data_keys).unwrap(),
        tag: format!("{}:{{p{pool_id}.0}}:", app.prefix),
    };

    let (a, b, c, d, e, f) = (
        participant(0),
        participant(1),
        participant(2),
        participant(3),
        participant(4),
        participant(5),
    );
    let (p0, p1) = (numbers[0].clone(), numbers[1].clone());
    let now = now_ms();
    // Open, with labels and metadata, its blob in chunks.
    let open = SessionId::new(pool_id, 0);
    let open_times = (now + 30 * MINUTE, now - MINUTE);
    l1.session(
        &open.key(),
        (&a, &b),
        ("rider:1", "driver:2"),
        json!({ "trip": "t-1" }),
        &p0,
        ("o", open_times.0, 10 * MINUTE, open_times.1),
        true,
    )
    .await;
    // Closed ten seconds ago, cooling off for an hour.
    let closed = SessionId::new(pool_id, 0);
    l1.session(
        &closed.key(),
        (&c, &d),
        ("", ""),
        json!({}),
        &p1,
        ("c", now - 10_000, 60 * MINUTE, now - 20 * MINUTE),
        false,
    )
    .await;
    // A route whose session the reaper of layout 1 had already deleted.
    let gone = SessionId::new(pool_id, 0);
    l1.cmd(&[
        "HSET".into(),
        format!("{}u:{}", l1.tag, l1.idx(&a)),
        numbers[3].clone(),
        format!("{}|b|{now}|{now}|{}", gone.key(), l1.sealed(&b)),
    ])
    .await;
    // E and F shared p0 a day ago: sticky memory on both sides.
    let stamp = format!("{p0}|{}", now - 24 * 60 * MINUTE);
    for (me, other) in [(&e, &f), (&f, &e)] {
        l1.cmd(&[
            "HSET".into(),
            format!("{}k:{}", l1.tag, l1.idx(me)),
            l1.idx(other),
            stamp.clone(),
        ])
        .await;
    }
    // Each number's holding count in every load index it is a member of.
    for key in app.scan_keys(&format!("{{p{pool_id}.0}}:l:*")).await {
        for number in [&p0, &p1] {
            let _: f64 = redis::cmd("ZINCRBY")
                .arg(&key)
                .arg(1)
                .arg(number)
                .query_async(&mut con)
                .await
                .unwrap();
        }
    }
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{}:layout", app.prefix))
        .query_async(&mut con)
        .await
        .unwrap();

    // This version refuses the data, naming the way out.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = hush::run(
        config.clone(),
        listener,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("hush started on layout-1 data");
    assert!(format!("{refused:#}").contains("Upgrading"), "{refused:#}");
    // A pool made meanwhile does not mark the old data as converted.
    app.cli(&["pools", "put", "another"]);
    let mark: Option<String> = redis::cmd("GET")
        .arg(format!("{}:layout", app.prefix))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        mark, None,
        "creating a pool marked layout-1 data as converted"
    );

    let out = app.cli(&["store", "upgrade"]);
    assert!(
        out.contains("2 sessions, 4 routes, 2 sticky entries converted")
            && out.contains("1 routes of ended sessions"),
        "{out}"
    );
    // Twice: refused politely, nothing changed.
    let again = cli_output(&config, &["store", "upgrade"]);
    assert!(!again.status.success());
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("layout 2 already"), "{said}");
    // A run that stopped before marking the data finds nothing left to convert.
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{}:layout", app.prefix))
        .query_async(&mut con)
        .await
        .unwrap();
    let out = app.cli(&["store", "upgrade"]);
    assert!(out.contains("0 sessions, 0 routes, 0 sticky"), "{out}");

    for kind in ["s", "u"] {
        for key in app.scan_keys(&format!("{{p{pool_id}.0}}:{kind}:*")).await {
            let name = key.rsplit(':').next().unwrap();
            assert!(name.len() <= 3, "a layout-1 key is left: {key}");
        }
    }
    assert!(
        app.scan_keys(&format!("{{p{pool_id}.0}}:k:*"))
            .await
            .is_empty()
    );
    assert!(
        app.scan_keys(&format!("{{p{pool_id}.0}}:x"))
            .await
            .is_empty()
    );
    for (key, values) in app.dump().await {
        for n in [&a, &b, &c, &d, &e, &f] {
            let digits = national_digits(n);
            assert!(!key.contains(&digits), "{key} names a participant");
            for v in &values {
                assert!(
                    !contains_bytes(v, digits.as_bytes()),
                    "{key} holds a number"
                );
            }
        }
    }

    app.restart().await;
    let s = app.get_session(&open.to_string()).await.expect(200);
    assert_eq!(s["status"], "open", "{s}");
    assert_eq!(s["proxy_number"], p0.as_str());
    assert_eq!(s["participants"][0]["number"], a.as_str());
    assert_eq!(s["participants"][0]["label"], "rider:1");
    assert_eq!(s["participants"][1]["label"], "driver:2");
    assert_eq!(s["metadata"], json!({ "trip": "t-1" }));
    assert_eq!(ts_ms(&s["expires_at"]) / 1000, open_times.0 / 1000);
    assert_eq!(ts_ms(&s["created_at"]) / 1000, open_times.1 / 1000);
    app.assert_connects(&a, &p0, &b, &open.to_string()).await;
    app.assert_connects(&b, &p0, &a, &open.to_string()).await;

    let s = app.get_session(&closed.to_string()).await.expect(200);
    assert_eq!(
        (s["status"].as_str(), s["close_reason"].as_str()),
        (Some("closed"), Some("closed"))
    );
    app.assert_announces(&c, &p1).await;

    // The pair that shared p0 gets it again, although two numbers carry no load at all.
    let sticky = app.open_session("old", &e, &f, None).await;
    assert_eq!(sticky["proxy_number"], p0.as_str(), "{sticky}");

    // C still holds p1 while it cools off: its new sessions take every other number, then
    // the pool has none left for C.
    for partner in 6..9 {
        let s = app
            .open_session("old", &c, &participant(partner), None)
            .await;
        assert_ne!(s["proxy_number"], p1.as_str(), "{s}");
    }
    app.create_session("old", &c, &participant(9), None)
        .await
        .expect_problem(409, "pool_exhausted");

    // Erasing a side of a converted session keeps its metadata, which the old blob held.
    app.delete(&format!("/v1/participants/{}", path_number(&b)))
        .await
        .expect(200);
    let s = app.get_session(&open.to_string()).await.expect(200);
    assert_eq!(s["metadata"], json!({ "trip": "t-1" }), "{s}");
    assert!(s["participants"][1]["number"].is_null(), "{s}");
}
