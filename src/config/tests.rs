use super::*;
use std::collections::HashMap;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn env_wins_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hush.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:9000\"\nredis_prefix = \"file\"\n",
    )
    .unwrap();
    let c = Config::load_from(Some(&path), env(&[("HUSH_REDIS_PREFIX", "envp")])).unwrap();
    assert_eq!(c.listen.port(), 9000);
    assert_eq!(c.redis_prefix, "envp");
}

#[test]
fn replica_wait_reads_from_file_and_env_and_refuses_a_long_timeout() {
    let c = Config::load_from(None, env(&[])).unwrap();
    assert_eq!((c.redis_wait_replicas, c.redis_wait_timeout_ms), (0, 500));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hush.toml");
    std::fs::write(
        &path,
        "redis_wait_replicas = 1\nredis_wait_timeout_ms = 250\n",
    )
    .unwrap();
    let c = Config::load_from(Some(&path), env(&[])).unwrap();
    assert_eq!((c.redis_wait_replicas, c.redis_wait_timeout_ms), (1, 250));
    let c = Config::load_from(Some(&path), env(&[("HUSH_REDIS_WAIT_REPLICAS", "2")])).unwrap();
    assert_eq!(c.redis_wait_replicas, 2);
    let e =
        Config::load_from(Some(&path), env(&[("HUSH_REDIS_WAIT_TIMEOUT_MS", "5000")])).unwrap_err();
    assert!(e.to_string().contains("HUSH_REDIS_WAIT_TIMEOUT_MS"), "{e}");
    let e = Config::load_from(None, env(&[("HUSH_REDIS_WAIT_REPLICAS", "one")])).unwrap_err();
    assert!(e.to_string().contains("HUSH_REDIS_WAIT_REPLICAS"), "{e}");
}

#[test]
fn keys_are_checked_and_redacted() {
    let (i, d) = generate_secrets();
    let c = Config::load_from(
        None,
        env(&[
            ("HUSH_INDEX_KEY", &i),
            ("HUSH_DATA_KEYS", &format!("{d},{i}")),
        ]),
    )
    .unwrap();
    assert_eq!(c.data_keys.len(), 2);
    c.require_keys().unwrap();
    assert!(!format!("{c:?}").contains(&i));
    let bad = Config::load_from(None, env(&[("HUSH_INDEX_KEY", "c2hvcnQ=")])).unwrap_err();
    assert!(bad.to_string().contains("32 bytes"));
    let missing = Config::load_from(None, env(&[])).unwrap().require_keys();
    assert!(missing.unwrap_err().to_string().contains("gen-secrets"));
}

#[test]
fn messaging_credentials_name_the_providers_that_send_and_never_print() {
    let c = Config::load_from(
        None,
        env(&[
            ("HUSH_TWILIO_ACCOUNT_SID", "AC0123456789abcdef"),
            ("HUSH_TWILIO_AUTH_TOKEN", "twilio-secret-token"),
            ("HUSH_TWILIO_API_BASE", "http://127.0.0.1:9/"),
            ("HUSH_PLIVO_AUTH_ID", "MAPLIVOAUTHID"),
            ("HUSH_PLIVO_API_BASE", "http://127.0.0.1:8"),
        ]),
    )
    .unwrap();
    let p = &c.providers;
    assert_eq!(p.twilio_api_base, "http://127.0.0.1:9");
    assert_eq!(p.plivo_api_base, "http://127.0.0.1:8");
    // Plivo's auth ID without its token sends nothing, and says so at start.
    assert_eq!(p.texting(), ["twilio"]);
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.contains("HUSH_PLIVO_AUTH_ID"))
    );
    let printed = format!("{c:?}");
    for secret in ["twilio-secret-token", "AC0123456789abcdef", "MAPLIVOAUTHID"] {
        assert!(!printed.contains(secret), "{printed}");
    }
    let d = Config::default();
    assert_eq!(d.providers.twilio_api_base, "https://api.twilio.com");
    assert_eq!(d.providers.plivo_api_base, "https://api.plivo.com");
    assert!(d.providers.texting().is_empty());
}

#[test]
fn edge_settings_layer_and_impossible_ones_are_refused() {
    let c = Config::load_from(
        None,
        env(&[
            ("HUSH_HEADER_READ_TIMEOUT_MS", "2500"),
            ("HUSH_BODY_READ_TIMEOUT_MS", "4000"),
            ("HUSH_KEEPALIVE_IDLE_MS", "0"),
            ("HUSH_MAX_CONNECTIONS", "300"),
            ("HUSH_READINESS_TIMEOUT_MS", "700"),
        ]),
    )
    .unwrap();
    assert_eq!(c.header_read_timeout_ms, 2500);
    assert_eq!(c.body_read_timeout_ms, 4000);
    assert_eq!(c.keepalive_idle_ms, 0);
    assert_eq!(c.max_connections, Some(300));
    assert_eq!(c.readiness_timeout_ms, 700);
    for (key, value) in [
        ("HUSH_HEADER_READ_TIMEOUT_MS", "0"),
        ("HUSH_BODY_READ_TIMEOUT_MS", "soon"),
        ("HUSH_MAX_CONNECTIONS", "0"),
        ("HUSH_READINESS_TIMEOUT_MS", "0"),
        ("HUSH_KEEPALIVE_IDLE_MS", "99999999"),
    ] {
        let e = Config::load_from(None, env(&[(key, value)])).unwrap_err();
        assert!(e.to_string().contains(key), "{key}={value}: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hush.toml");
    std::fs::write(
        &path,
        "max_connections = 50\nheader_read_timeout_ms = 800\n",
    )
    .unwrap();
    let c = Config::load_from(Some(&path), env(&[])).unwrap();
    assert_eq!(
        (c.max_connections, c.header_read_timeout_ms),
        (Some(50), 800)
    );
}

#[test]
fn redis_passwords_never_print() {
    let c = Config::load_from(
        None,
        env(&[
            (
                "HUSH_REDIS_URL",
                "redis+sentinel://app:url-secret@s:26379/m",
            ),
            ("HUSH_REDIS_SENTINEL_PASSWORD", "sentinel-secret"),
        ]),
    )
    .unwrap();
    let printed = format!("{c:?}");
    assert!(!printed.contains("url-secret"), "{printed}");
    assert!(!printed.contains("sentinel-secret"), "{printed}");
    assert!(printed.contains("redis+sentinel://app:"), "{printed}");
}

#[test]
fn redis_tls_and_sentinel_settings_must_fit_the_url() {
    let c = Config::load_from(
        None,
        env(&[
            ("HUSH_REDIS_URL", "rediss+sentinel://s:26379/m"),
            ("HUSH_REDIS_CA_FILE", "/etc/ca.pem"),
            ("HUSH_REDIS_CLIENT_CERT_FILE", "/etc/c.pem"),
            ("HUSH_REDIS_CLIENT_KEY_FILE", "/etc/k.pem"),
            ("HUSH_REDIS_SENTINEL_PASSWORD", "sentinel-secret"),
        ]),
    )
    .unwrap();
    assert_eq!(c.redis_client_key_file.as_deref(), Some("/etc/k.pem"));
    assert!(!format!("{c:?}").contains("sentinel-secret"));
    for (pairs, key) in [
        (
            &[
                ("HUSH_REDIS_URL", "redis://h:1"),
                ("HUSH_REDIS_CA_FILE", "/etc/ca.pem"),
            ][..],
            "HUSH_REDIS_CA_FILE",
        ),
        (
            &[
                ("HUSH_REDIS_URL", "rediss://h:1"),
                ("HUSH_REDIS_CLIENT_KEY_FILE", "/etc/k.pem"),
            ][..],
            "HUSH_REDIS_CLIENT_CERT_FILE",
        ),
        (
            &[
                ("HUSH_REDIS_URL", "redis+cluster://h:1"),
                ("HUSH_REDIS_SENTINEL_PASSWORD", "x"),
            ][..],
            "HUSH_REDIS_SENTINEL_PASSWORD",
        ),
    ] {
        let e = Config::load_from(None, env(pairs)).unwrap_err().to_string();
        assert!(e.starts_with(key), "{pairs:?}: {e}");
    }
}

#[test]
fn unknown_file_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hush.toml");
    std::fs::write(&path, "lisen = \"x\"\n").unwrap();
    assert!(Config::load_from(Some(&path), env(&[])).is_err());
}

#[test]
fn the_vonage_token_age_is_bounded() {
    let age = |file: &str, vars: &[(&str, &str)]| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hush.toml");
        std::fs::write(&path, file).unwrap();
        Config::load_from(Some(&path), env(vars)).map(|c| c.providers.vonage_token_max_age_secs)
    };
    assert_eq!(age("", &[]).unwrap(), VONAGE_TOKEN_MAX_AGE_SECS);
    assert_eq!(age("vonage_token_max_age_secs = 60\n", &[]).unwrap(), 60);
    let over = [("HUSH_VONAGE_TOKEN_MAX_AGE_SECS", "120")];
    assert_eq!(age("vonage_token_max_age_secs = 60\n", &over).unwrap(), 120);
    for bad in ["0", "3601", "soon"] {
        assert!(
            age("", &[("HUSH_VONAGE_TOKEN_MAX_AGE_SECS", bad)]).is_err(),
            "{bad}"
        );
    }
    assert!(age("vonage_token_max_age_secs = 0\n", &[]).is_err());
}

#[test]
fn call_api_settings_load_and_the_vonage_key_is_read_from_a_file_and_redacted() {
    let pem = "-----BEGIN PRIVATE KEY-----\nTUlJRXZRSUJBREFO\n-----END PRIVATE KEY-----\n";
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("vonage.pem");
    std::fs::write(&key, pem).unwrap();
    let c = Config::load_from(
        None,
        env(&[
            ("HUSH_TWILIO_ACCOUNT_SID", "AC123"),
            ("HUSH_TWILIO_API_BASE", "http://127.0.0.1:9/"),
            ("HUSH_TELNYX_ACCOUNT_SID", "acct"),
            ("HUSH_TELNYX_TEXML_APP_ID", "app"),
            ("HUSH_PLIVO_AUTH_ID", "MA123"),
            ("HUSH_VONAGE_APPLICATION_ID", "vapp"),
            ("HUSH_VONAGE_PRIVATE_KEY", key.to_str().unwrap()),
        ]),
    )
    .unwrap();
    let p = &c.providers;
    assert_eq!(p.twilio_account_sid.as_ref().unwrap().expose(), "AC123");
    assert_eq!(p.twilio_api_base, "http://127.0.0.1:9");
    assert_eq!(p.plivo_api_base, "https://api.plivo.com");
    assert_eq!(p.vonage_voice_api_base, "https://api.nexmo.com");
    assert_eq!(
        (
            p.telnyx_account_sid.as_deref(),
            p.telnyx_texml_app_id.as_deref()
        ),
        (Some("acct"), Some("app"))
    );
    assert_eq!(p.plivo_auth_id.as_ref().unwrap().expose(), "MA123");
    assert_eq!(p.vonage_private_key.as_ref().unwrap().expose(), pem);
    assert!(!format!("{c:?}").contains("TUlJRXZRSUJBREFO"));
    // Inline, as is.
    let c = Config::load_from(None, env(&[("HUSH_VONAGE_PRIVATE_KEY", pem)])).unwrap();
    assert_eq!(c.providers.vonage_private_key.unwrap().expose(), pem);
    // Half-set call credentials are warned about.
    let c = Config::load_from(
        None,
        env(&[
            ("HUSH_TELNYX_ACCOUNT_SID", "acct"),
            ("HUSH_VONAGE_APPLICATION_ID", "vapp"),
        ]),
    )
    .unwrap();
    let warned = c.warnings().join("\n");
    assert!(warned.contains("HUSH_TELNYX_TEXML_APP_ID"), "{warned}");
    assert!(warned.contains("HUSH_VONAGE_PRIVATE_KEY"), "{warned}");
    // Neither a PEM nor a file.
    let e =
        Config::load_from(None, env(&[("HUSH_VONAGE_PRIVATE_KEY", "/no/such.pem")])).unwrap_err();
    assert!(e.to_string().contains("HUSH_VONAGE_PRIVATE_KEY"), "{e}");
}
