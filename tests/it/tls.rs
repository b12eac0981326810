//! Redis over TLS with a private CA made here (one server, a Cluster, Sentinel), client
//! certificates, and sentinels behind passwords. Every server is a real `redis-server`
//! listening on TLS only; no test needs the network beyond 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use hush::config::{Config, Secret};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::json;

use super::harness::*;
use super::topology::{Options, Topology};

/// A private CA, and a server and a client certificate it signed, as PEM files in a temp dir:
/// `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`.
#[derive(Clone)]
pub struct Pki {
    dir: Arc<tempfile::TempDir>,
}

impl Pki {
    /// A fresh CA; the server certificate names `server_names` (host names or IP addresses).
    pub fn new(server_names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: two test CAs that shared one would fail as a bad signature
        // rather than as an unknown issuer.
        let name = format!("hush test CA {:08x}", rand::random::<u32>());
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let names: Vec<String> = server_names.iter().map(|n| n.to_string()).collect();
        // Redis presents its server certificate as a client too (replication, the cluster bus).
        let server = [
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        for (file, sans, usages) in [
            ("server", names, &server[..]),
            ("client", vec!["hush".to_string()], &server[1..]),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, file);
            params.extended_key_usages = usages.to_vec();
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.path().join(format!("{file}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{file}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir: Arc::new(dir) }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }
}

/// A password no other test uses, so finding it in the shared log capture means this test
/// leaked it.
fn password(what: &str) -> String {
    format!("{what}-{:016x}", rand::random::<u64>())
}

fn tls(pki: &Pki) -> Options {
    Options {
        tls: Some(pki.clone()),
        ..Options::default()
    }
}

/// A fresh tenant on `t` that trusts `pki`'s CA.
fn trusting(t: &Topology, pki: &Pki) -> Config {
    let mut config = fresh_config(&t.url);
    config.redis_ca_file = Some(pki.path("ca.pem"));
    config
}

/// A pool, a session in it, calls both ways, the close, and a call that then reaches nobody.
async fn sessions_work(app: &TestApp) {
    app.pool("tls", json!({}), &proxies(2)).await;
    let (a, b) = (participant(0), participant(1));
    let s = app.open_session("tls", &a, &b, None).await;
    let id = s["id"].as_str().unwrap();
    let p = s["proxy_number"].as_str().unwrap();
    app.assert_connects(&a, p, &b, id).await;
    app.assert_connects(&b, p, &a, id).await;
    app.close_session(id).await.expect(200);
    app.assert_announces(&a, p).await;
}

/// hush on `config`, which cannot use its Redis. API keys are looked up in Redis, so the
/// tenant's key meets the same refusal as any other.
async fn unready(config: Config, admin_key: &str) -> TestApp {
    TestApp::start_as(config, admin_key.to_string()).await
}

/// Readiness fails and the API answers 503 `store_unavailable` with `Retry-After`; the log
/// then names `why`.
async fn refused(app: &TestApp, why: &str) {
    let r = app.get("/readyz").await;
    r.expect_problem(503, "store_unavailable");
    let r = app
        .create_session("tls", &participant(0), &participant(1), None)
        .await;
    r.expect_problem(503, "store_unavailable");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    eventually(Duration::from_secs(10), why, || async {
        captured_logs().contains(why).then_some(())
    })
    .await;
}

fn assert_never_logged(secrets: &[&str]) {
    let logs = captured_logs();
    for s in secrets {
        assert!(!logs.contains(s), "a Redis password reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_rediss_with_a_private_ca_sessions_are_made_routed_and_closed() {
    let pki = Pki::new(&["localhost", "127.0.0.1"]);
    let pw = password("single");
    let t = Topology::single(&Options {
        password: Some(pw.clone()),
        ..tls(&pki)
    });
    assert!(t.url.starts_with("rediss://"), "{}", t.url);
    let app = TestApp::start_on(trusting(&t, &pki)).await;
    sessions_work(&app).await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("store: single") && !r.text.contains(&pw));

    // Without the CA file the server's certificate is not trusted: nothing is served, and
    // the log says why without the password.
    let mut blind = app.config.clone();
    blind.redis_ca_file = None;
    let blind = unready(blind, &app.admin_key).await;
    refused(&blind, "UnknownIssuer").await;

    // A wrong password is as unusable as an outage, and says so.
    let mut wrong = app.config.clone();
    wrong.redis_url = t.url.replace(&pw, "not-the-password");
    let wrong = unready(wrong, &app.admin_key).await;
    refused(&wrong, "Password authentication failed").await;
    assert_never_logged(&[&pw]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_is_refused() {
    let pki = Pki::new(&["redis.elsewhere.test"]);
    let t = Topology::single(&tls(&pki));
    let app = unready(trusting(&t, &pki), "hush_no_such_key").await;
    refused(&app, "certificate not valid for name \"127.0.0.1\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_checks_clients_takes_the_configured_client_certificate() {
    let pki = Pki::new(&["127.0.0.1"]);
    let t = Topology::single(&Options {
        check_clients: true,
        ..tls(&pki)
    });
    let mut config = trusting(&t, &pki);
    config.redis_client_cert_file = Some(pki.path("client.pem"));
    config.redis_client_key_file = Some(pki.path("client.key"));
    let app = TestApp::start_on(config.clone()).await;
    sessions_work(&app).await;

    let mut anonymous = config.clone();
    anonymous.redis_client_cert_file = None;
    anonymous.redis_client_key_file = None;
    let anonymous = unready(anonymous, &app.admin_key).await;
    let r = anonymous.get("/readyz").await;
    r.expect_problem(503, "store_unavailable");
}

/// The CA file is trusted beside the system roots, not instead of them. The system roots are
/// pointed at a second CA through `SSL_CERT_FILE` (which the platform verifier honours) in a
/// `hush` child process, so no other test sees the change.
#[test]
fn the_ca_file_adds_to_the_system_roots() {
    let system = Pki::new(&["127.0.0.1"]);
    let private = Pki::new(&["127.0.0.1"]);
    let t = Topology::single(&tls(&system));
    let config = fresh_config(&t.url);
    let run = |ca_file: &str, system_roots: &str| {
        let mut cmd = hush_command();
        with_config(&mut cmd, &config);
        cmd.env("HUSH_REDIS_CA_FILE", ca_file)
            .env("SSL_CERT_FILE", system_roots)
            .env_remove("SSL_CERT_DIR")
            .env("HUSH_LOG", "warn")
            .args(["pools", "list"]);
        cmd.output().expect("running the hush binary")
    };
    let out = run(&private.path("ca.pem"), &system.path("ca.pem"));
    assert!(
        out.status.success(),
        "the server's CA is a system root; the CA file must not hide it: {out:?}"
    );
    let out = run(&system.path("ca.pem"), &private.path("ca.pem"));
    assert!(out.status.success(), "the CA file is trusted: {out:?}");
    let out = run(&private.path("ca.pem"), &private.path("ca.pem"));
    assert!(
        !out.status.success(),
        "neither trusts the server's CA, yet hush connected: {out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ca_file_stops_hush_at_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let missing = dir.path().join("missing.pem");
    for (path, why) in [
        (&not_pem, "no PEM certificate"),
        (&missing, "cannot be read"),
    ] {
        let mut config = fresh_config("rediss://127.0.0.1:1");
        config.redis_ca_file = Some(path.display().to_string());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let e = hush::run(config, listener, shutdown)
            .await
            .expect_err("hush started with a bad CA file");
        let e = format!("{e:#}");
        assert!(
            e.contains("HUSH_REDIS_CA_FILE") && e.contains(&path.display().to_string()),
            "{e}"
        );
        assert!(e.contains(why), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_sessions() {
    let pki = Pki::new(&["127.0.0.1"]);
    let pw = password("cluster");
    let t = Topology::cluster_with(&Options {
        password: Some(pw.clone()),
        ..tls(&pki)
    });
    assert!(t.url.starts_with("rediss+cluster://"), "{}", t.url);
    let app = TestApp::start_on(trusting(&t, &pki)).await;
    sessions_work(&app).await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("store: cluster"), "{}", r.text);
    assert_never_logged(&[&pw]);
}

/// Sentinels and the primary both behind TLS and each behind its own password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sentinels_with_their_own_password_lead_to_the_primary() {
    let pki = Pki::new(&["127.0.0.1"]);
    let (primary_pw, sentinel_pw) = (password("primary"), password("sentinel"));
    let t = Topology::sentinel_with(&Options {
        password: Some(primary_pw.clone()),
        sentinel_password: Some(sentinel_pw.clone()),
        ..tls(&pki)
    });
    assert!(t.url.starts_with("rediss+sentinel://"), "{}", t.url);
    let mut config = trusting(&t, &pki);
    config.redis_sentinel_password = Some(Secret::new(sentinel_pw.clone()));
    let app = TestApp::start_on(config.clone()).await;
    sessions_work(&app).await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("store: sentinel"), "{}", r.text);

    // The sentinels refuse a client without their password.
    let mut no_sentinel_pw = config.clone();
    no_sentinel_pw.redis_sentinel_password = None;
    let refused_app = unready(no_sentinel_pw, &app.admin_key).await;
    refused(&refused_app, "NOAUTH").await;
    let body = refused_app.get("/readyz").await.text;
    assert!(!body.contains(&primary_pw) && !body.contains(&sentinel_pw));
    assert_never_logged(&[&primary_pw, &sentinel_pw]);
}

/// The same without TLS: the common case of a password-protected Sentinel deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_behind_a_password_lead_to_a_primary_behind_another() {
    let (primary_pw, sentinel_pw) = (password("primary"), password("sentinel"));
    let t = Topology::sentinel_with(&Options {
        password: Some(primary_pw.clone()),
        sentinel_password: Some(sentinel_pw.clone()),
        ..Options::default()
    });
    let mut config = fresh_config(&t.url);
    config.redis_sentinel_password = Some(Secret::new(sentinel_pw.clone()));
    let app = TestApp::start_on(config).await;
    sessions_work(&app).await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_never_logged(&[&primary_pw, &sentinel_pw]);
}
