//! The SSRF guard against a real socket: with private targets refused, a receiver on loopback
//! sees no connection at all, whether it is named by an IP literal or by `localhost`; with them
//! allowed the same receiver is reached; and a redirect is never followed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::any;
use axum::serve::ListenerExt as _;
use hush::events::ssrf::{self, SsrfError};

const TIMEOUT: Duration = Duration::from_secs(5);

/// What reached the receiver: TCP connections accepted and requests handled per path.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    hook: AtomicUsize,
    elsewhere: AtomicUsize,
}

impl Seen {
    fn nothing(&self) -> bool {
        self.connections.load(Ordering::SeqCst) == 0
            && self.hook.load(Ordering::SeqCst) == 0
            && self.elsewhere.load(Ordering::SeqCst) == 0
    }
}

/// A receiver on `127.0.0.1:0` with `/hook` (200), `/redirect` (302 to `/elsewhere`),
/// `/elsewhere` (200) and `/agent` (echoes the User-Agent), counting what reaches it.
async fn receiver() -> (u16, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route(
            "/hook",
            any({
                let seen = seen.clone();
                move || async move {
                    seen.hook.fetch_add(1, Ordering::SeqCst);
                    StatusCode::OK
                }
            }),
        )
        .route(
            "/elsewhere",
            any({
                let seen = seen.clone();
                move || async move {
                    seen.elsewhere.fetch_add(1, Ordering::SeqCst);
                    StatusCode::OK
                }
            }),
        )
        .route(
            "/agent",
            any(|headers: axum::http::HeaderMap| async move {
                headers[header::USER_AGENT].to_str().unwrap().to_owned()
            }),
        )
        .route(
            "/redirect",
            any(|| async {
                (StatusCode::FOUND, [(header::LOCATION, "/elsewhere")]).into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counted = {
        let seen = seen.clone();
        listener.tap_io(move |_| {
            seen.connections.fetch_add(1, Ordering::SeqCst);
        })
    };
    tokio::spawn(async move { axum::serve(counted, app).await.unwrap() });
    (port, seen)
}

/// How a callback attempt is made: the URL is checked, then sent through the guarded client.
async fn attempt(raw: &str, allow_private: bool) -> Result<reqwest::Response, Refused> {
    let url = ssrf::check_url(raw, allow_private).map_err(Refused::Url)?;
    ssrf::client(allow_private, TIMEOUT)
        .post(url)
        .body("{}")
        .send()
        .await
        .map_err(Refused::Request)
}

#[derive(Debug)]
enum Refused {
    Url(SsrfError),
    Request(reqwest::Error),
}

#[tokio::test]
async fn a_loopback_ip_literal_is_refused_before_any_connection() {
    let (port, seen) = receiver().await;
    for raw in [
        format!("https://127.0.0.1:{port}/hook"),
        format!("https://[::ffff:127.0.0.1]:{port}/hook"),
        format!("https://2130706433:{port}/hook"),
    ] {
        match attempt(&raw, false).await {
            Err(Refused::Url(SsrfError::Forbidden(ip))) => assert!(
                ip.is_loopback() || ip.to_canonical().is_loopback(),
                "{raw}: refused for {ip}"
            ),
            other => panic!("{raw}: expected a forbidden-address refusal, got {other:?}"),
        }
    }
    // Plain http is refused on its own when private targets are off.
    assert!(matches!(
        attempt(&format!("http://127.0.0.1:{port}/hook"), false).await,
        Err(Refused::Url(SsrfError::Scheme(_)))
    ));
    assert!(seen.nothing(), "the receiver was reached");
}

#[tokio::test]
async fn localhost_is_refused_by_the_resolver_before_any_connection() {
    let (port, seen) = receiver().await;
    // Through check_url (which lets names pass) and the guarded client.
    let Err(Refused::Request(err)) =
        attempt(&format!("https://localhost:{port}/hook"), false).await
    else {
        panic!("https://localhost was not refused by the resolver");
    };
    assert!(
        matches!(ssrf::refusal(&err), Some(SsrfError::Forbidden(ip)) if ip.is_loopback()),
        "not the guard's refusal: {err:?}"
    );
    // Straight to the client over plain http: were the resolver to let it through, the
    // receiver would answer, so this is the request that proves the resolver itself refuses.
    let err = ssrf::client(false, TIMEOUT)
        .get(format!("http://localhost:{port}/hook"))
        .send()
        .await
        .expect_err("http://localhost was not refused by the resolver");
    assert!(
        matches!(ssrf::refusal(&err), Some(SsrfError::Forbidden(ip)) if ip.is_loopback()),
        "not the guard's refusal: {err:?}"
    );
    assert!(seen.nothing(), "the receiver was reached");
}

#[tokio::test]
async fn allowing_private_targets_reaches_the_receiver() {
    let (port, seen) = receiver().await;
    let r = attempt(&format!("http://127.0.0.1:{port}/hook"), true)
        .await
        .expect("delivered by IP literal");
    assert_eq!(r.status(), 200);
    let r = attempt(&format!("http://localhost:{port}/hook"), true)
        .await
        .expect("delivered by name");
    assert_eq!(r.status(), 200);
    assert_eq!(seen.hook.load(Ordering::SeqCst), 2);
    let agent = attempt(&format!("http://127.0.0.1:{port}/agent"), true)
        .await
        .expect("delivered")
        .text()
        .await
        .unwrap();
    assert!(agent.starts_with("hush/"), "user agent {agent:?}");
    assert!(ssrf::refusal(&reqwest_error_without_guard().await).is_none());
}

/// A request error that has nothing to do with the guard (nothing listens on the port), to
/// show `refusal` does not mistake an unreachable receiver for a refusal.
async fn reqwest_error_without_guard() -> reqwest::Error {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    ssrf::client(true, TIMEOUT)
        .get(format!("http://127.0.0.1:{closed}/"))
        .send()
        .await
        .expect_err("nothing listens there")
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (port, seen) = receiver().await;
    let r = attempt(&format!("http://127.0.0.1:{port}/redirect"), true)
        .await
        .expect("the redirect itself is a response");
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()[header::LOCATION], "/elsewhere");
    assert_eq!(
        seen.elsewhere.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}
