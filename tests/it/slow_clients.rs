//! Slow and idle clients: heads that never finish and idle connections are closed, bodies
//! that trickle are cut with 408, and past the connection cap new connections cost hush
//! nothing until a slot frees. Deadlines are short here through the config.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::*;

/// Longest any test here waits for hush to act on a deadline of a few hundred ms.
const PATIENCE: Duration = Duration::from_secs(10);

/// Writes `chunk` every `every` until the server closes the connection; returns how long that
/// took, or `None` if it was still open after [`PATIENCE`].
async fn trickle_until_closed(
    stream: &mut TcpStream,
    chunk: &[u8],
    every: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    while started.elapsed() < PATIENCE {
        if stream.write_all(chunk).await.is_err() {
            return Some(started.elapsed());
        }
        match tokio::time::timeout(every, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(n)) => panic!(
                "the server answered an unfinished head: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(_) => {}
        }
    }
    None
}

#[tokio::test]
async fn heads_that_never_finish_are_closed_after_the_header_timeout() {
    let app = TestApp::start_with(|c| {
        c.header_read_timeout_ms = 300;
        c.keepalive_idle_ms = 60_000;
    })
    .await;
    // A head that keeps growing, one header line at a time.
    let mut stream = app.connect().await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: hush.test\r\n")
        .await
        .unwrap();
    let closed =
        trickle_until_closed(&mut stream, b"X-Slow: 1\r\n", Duration::from_millis(50)).await;
    assert!(closed.is_some(), "a head trickling forever was never cut");
    // A connection that sends nothing at all.
    let mut stream = app.connect().await;
    let closed = trickle_until_closed(&mut stream, b"", Duration::from_millis(50)).await;
    assert!(closed.is_some(), "a silent connection was never closed");
}

#[tokio::test]
async fn a_trickling_body_is_cut_with_408() {
    let app = TestApp::start_with(|c| {
        c.body_read_timeout_ms = 400;
        c.header_read_timeout_ms = 60_000;
    })
    .await;
    for (target, auth) in [
        (
            "/v1/route",
            format!("Authorization: Bearer {}\r\n", app.admin_key),
        ),
        ("/v1/nowhere", String::new()),
    ] {
        let (mut rd, mut wr) = app.connect().await.into_split();
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: hush.test\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 1000\r\n\r\n{{"
        );
        wr.write_all(head.as_bytes()).await.unwrap();
        let writer = tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < PATIENCE && wr.write_all(b" ").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let r = read_response(&mut rd)
            .await
            .expect("an answer to the slow body");
        writer.abort();
        if target == "/v1/nowhere" {
            // A route that never reads the body has nothing to wait for.
            r.expect_problem(404, "not_found");
        } else {
            r.expect_problem(408, "request_timeout");
            assert_eq!(r.header("connection").as_deref(), Some("close"));
        }
    }
}

#[tokio::test]
async fn idle_connections_close_after_the_keepalive_timeout_not_the_header_timeout() {
    let short_idle = TestApp::start_with(|c| {
        c.keepalive_idle_ms = 300;
        c.header_read_timeout_ms = 60_000;
    })
    .await;
    let (mut rd, mut wr) = short_idle.connect().await.into_split();
    wr.write_all(b"GET /healthz HTTP/1.1\r\nHost: hush.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut rd).await.expect("an answer").status, 200);
    let mut buf = [0u8; 64];
    let eof = tokio::time::timeout(PATIENCE, rd.read(&mut buf)).await;
    assert!(
        matches!(eof, Ok(Ok(0)) | Ok(Err(_))),
        "an idle keep-alive connection stayed open: {eof:?}"
    );

    // An idle wait longer than the header timeout is fine while under the idle timeout.
    let long_idle = TestApp::start_with(|c| {
        c.keepalive_idle_ms = 60_000;
        c.header_read_timeout_ms = 200;
    })
    .await;
    let (mut rd, mut wr) = long_idle.connect().await.into_split();
    for _ in 0..2 {
        wr.write_all(b"GET /healthz HTTP/1.1\r\nHost: hush.test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut rd).await.expect("an answer").status, 200);
        // Part of the scenario, not a wait for hush: idle past the header timeout.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

/// Sockets this process has accepted on `port`: descriptors whose socket is an established
/// TCP connection with `port` as its local port. Connections still waiting in the listen
/// backlog have no descriptor, and the test's own client sockets have `port` as remote port.
fn accepted(port: u16) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f[1].rsplit(':').next().unwrap();
            if u16::from_str_radix(local_port, 16) == Ok(port)
                && f[3] == "01"
                && inodes.contains(f[9])
            {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_wait_and_are_served_once_slots_free() {
    const CAP: usize = 4;
    let app = TestApp::start_with(|c| {
        c.max_connections = Some(CAP);
        c.header_read_timeout_ms = 60_000;
    })
    .await;
    let port: u16 = app.addr().rsplit(':').next().unwrap().parse().unwrap();
    // Slow clients take every slot: each has sent part of a head.
    let mut slow = Vec::new();
    for _ in 0..CAP {
        let mut s = app.connect().await;
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        slow.push(s);
    }
    // The harness's own pooled connection may hold one of the slots.
    eventually(PATIENCE, "hush fills its slots", || async {
        (accepted(port) >= CAP).then_some(())
    })
    .await;
    // Many more connect; the kernel completes their handshakes, hush does not take them.
    let mut extra = Vec::new();
    for _ in 0..50 {
        extra.push(app.connect().await);
    }
    let (mut rd, mut wr) = app.connect().await.into_split();
    wr.write_all(b"GET /healthz HTTP/1.1\r\nHost: hush.test\r\n\r\n")
        .await
        .unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(500), read_response(&mut rd)).await;
    assert!(
        waiting.is_err(),
        "a connection past the cap was served: {waiting:?}"
    );
    assert_eq!(accepted(port), CAP, "hush took connections past its cap");

    drop(slow);
    drop(extra);
    let r = read_response(&mut rd)
        .await
        .expect("served once slots freed");
    assert_eq!(r.status, 200, "{}", r.text);
    app.get("/healthz").await.expect(200);
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let mut app = TestApp::start().await;
    let (mut rd, mut wr) = app.connect().await.into_split();
    let body = br#"{"from": "+14155550100", "to": "+12015550199", "kind": "voice"}"#;
    let head = format!(
        "POST /v1/route HTTP/1.1\r\nHost: hush.test\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        app.admin_key,
        body.len()
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    // hush asks for the body once the route reads it: the request is in flight.
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(PATIENCE, rd.read(&mut byte))
            .await
            .expect("no 100 Continue")
            .unwrap();
        assert_eq!(n, 1, "closed before 100 Continue");
        interim.push(byte[0]);
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );

    let stopping = tokio::spawn(async move {
        app.stop().await;
        app
    });
    wr.write_all(body).await.unwrap();
    let r = read_response(&mut rd)
        .await
        .expect("the in-flight request is answered");
    r.expect_problem(404, "number_not_found");
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("hush stops once its last request is answered")
        .unwrap();
}
