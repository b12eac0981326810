//! `hush dev`: everything a first try needs, kept under `./.hush/`: a private redis-server
//! (append-only file on, so data survives restarts), generated secrets, a demo pool and an
//! admin API key. Not for production: secrets sit in plain files, and callback URLs may be
//! plain http on private addresses (the app under development usually runs on localhost).
//! Redis keeps its port from run to run (`./.hush/redis.port`), so shells that sourced
//! `./.hush/env` stay pointed at it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use hush::broker::{Broker, Scope};
use hush::config::{Config, Secret};
use hush::domain::{PoolName, PoolPolicy};

const DIR: &str = ".hush";
const DEMO_NUMBERS: std::ops::Range<u32> = 100..110;

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Secrets from the environment when set, else from `./.hush/secrets.env`, made once.
fn secrets(config: &mut Config, dir: &Path) -> anyhow::Result<()> {
    if config.index_key.is_some() && !config.data_keys.is_empty() {
        return Ok(());
    }
    let path = dir.join("secrets.env");
    if !path.exists() {
        let (index, data) = hush::config::generate_secrets();
        write_private(
            &path,
            &format!("HUSH_INDEX_KEY={index}\nHUSH_DATA_KEYS={data}\n"),
        )?;
        eprintln!("created secrets in {}", path.display());
    }
    let text = std::fs::read_to_string(&path)?;
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let file = Config::load_from(None, |k| match k {
        "HUSH_INDEX_KEY" | "HUSH_DATA_KEYS" => get(k),
        _ => None,
    })
    .with_context(|| format!("{} is damaged; delete it to start afresh", path.display()))?;
    config.index_key = file.index_key;
    config.data_keys = file.data_keys;
    Ok(())
}

/// Provider secrets for the sandbox, from `./.hush/providers.env` (made once), for every
/// provider the environment does not configure: hush verifies webhooks with them and the
/// sandbox signs with them, so the real relay path runs, signature check included.
fn provider_secrets(config: &mut Config, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("providers.env");
    if !path.exists() {
        let token = |n| hush::sandbox::random_token(n);
        let (telnyx_private, telnyx_public) = hush::sandbox::telnyx_key_pair();
        write_private(
            &path,
            &format!(
                "HUSH_TWILIO_AUTH_TOKEN={}\nHUSH_TELNYX_PUBLIC_KEY={telnyx_public}\n\
                 HUSH_SANDBOX_TELNYX_SIGNING_KEY={telnyx_private}\nHUSH_PLIVO_AUTH_TOKEN={}\n\
                 HUSH_VONAGE_SIGNATURE_SECRET={}\n",
                token(16),
                token(20),
                token(16)
            ),
        )?;
        eprintln!("created sandbox provider secrets in {}", path.display());
    }
    let text = std::fs::read_to_string(&path)?;
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(|v| Secret::new(v.trim().to_string()))
    };
    let p = &mut config.providers;
    if p.twilio_auth_token.is_none() && p.twilio_shared_keys.is_empty() {
        p.twilio_auth_token = get("HUSH_TWILIO_AUTH_TOKEN");
    }
    if p.telnyx_public_key.is_none() {
        p.telnyx_public_key = get("HUSH_TELNYX_PUBLIC_KEY");
        config.sandbox_telnyx_signing_key = get("HUSH_SANDBOX_TELNYX_SIGNING_KEY");
    }
    if p.plivo_auth_token.is_none() {
        p.plivo_auth_token = get("HUSH_PLIVO_AUTH_TOKEN");
    }
    if p.vonage_signature_secret.is_none() {
        p.vonage_signature_secret = get("HUSH_VONAGE_SIGNATURE_SECRET");
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The port remembered in `./.hush/redis.port` while it is free, else a new one, remembered
/// in its place.
fn redis_port(dir: &Path) -> anyhow::Result<u16> {
    let path = dir.join("redis.port");
    let remembered = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<u16>().ok())
        .filter(|&p| p != 0);
    if let Some(port) = remembered
        && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    {
        return Ok(port);
    }
    let port = free_port()?;
    std::fs::write(&path, format!("{port}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(old) = remembered {
        eprintln!(
            "port {old} is taken, so Redis listens on port {port} this time; \
             run `. ./.hush/env` again in shells that use the CLI"
        );
    }
    Ok(port)
}

/// Starts redis-server in its own process group, so Ctrl-C reaches hush first and hush
/// stops Redis after the last request.
async fn start_redis(dir: &Path) -> anyhow::Result<(Child, String)> {
    let data = dir.join("redis");
    std::fs::create_dir_all(&data)?;
    // Redis changes into --dir before opening its log file: both must be absolute.
    let data = std::fs::canonicalize(&data)?;
    let port = redis_port(dir)?;
    let mut cmd = Command::new("redis-server");
    cmd.arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(&data)
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ])
        .args(["--maxmemory-policy", "noeviction"])
        .arg("--logfile")
        .arg(data.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    let child = cmd.spawn().map_err(|e| {
        anyhow::anyhow!(
            "cannot start redis-server ({e}); install it (e.g. `apt-get install redis-server`) \
             or point HUSH_REDIS_URL at a running Redis"
        )
    })?;
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str())?;
    for _ in 0..100 {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok()
        {
            return Ok((child, url));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "redis-server did not answer on port {port}; see {}",
        data.join("redis.log").display()
    )
}

async fn stop_redis(mut child: Child, url: &str) {
    if let Ok(client) = redis::Client::open(url)
        && let Ok(mut c) = client.get_multiplexed_async_connection().await
    {
        // SHUTDOWN flushes the append-only file before Redis exits.
        let _: Result<(), _> = redis::cmd("SHUTDOWN").query_async(&mut c).await;
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// The admin key kept in `./.hush/admin.key`, made anew if Redis no longer knows it.
async fn admin_key(broker: &Broker, dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("admin.key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        let key = key.trim().to_string();
        if broker.authenticate(&key).await?.is_some() {
            return Ok(key);
        }
    }
    let _ = broker.revoke_api_key("dev-admin").await?;
    let key = broker.create_api_key("dev-admin", &[Scope::Admin]).await?;
    write_private(&path, &format!("{key}\n"))?;
    Ok(key)
}

async fn demo_pool(broker: &Broker) -> anyhow::Result<()> {
    let name = PoolName::parse("demo").expect("static pool name");
    if broker.get_pool(&name).await.is_err() {
        broker
            .put_pool(&name, &PoolPolicy::default(), false)
            .await?;
    }
    let numbers: Vec<(String, Option<Vec<String>>)> = DEMO_NUMBERS
        .map(|n| (format!("+1201555{n:04}"), None))
        .collect();
    broker.add_numbers(&name, &numbers).await?;
    Ok(())
}

pub async fn run(mut config: Config) -> anyhow::Result<()> {
    hush::telemetry::init(&config);
    // The app under development usually listens on localhost over plain http.
    if std::env::var_os("HUSH_CALLBACK_ALLOW_PRIVATE").is_none() {
        config.callback_allow_private = true;
    }
    let dir = PathBuf::from(DIR);
    std::fs::create_dir_all(&dir)?;
    secrets(&mut config, &dir)?;
    if std::env::var_os("HUSH_SANDBOX").is_none() {
        config.sandbox = true;
    }
    if config.sandbox {
        provider_secrets(&mut config, &dir)?;
    }
    let external = std::env::var("HUSH_REDIS_URL").is_ok_and(|v| !v.is_empty());
    let redis = if external {
        None
    } else {
        let (child, url) = start_redis(&dir).await?;
        config.redis_url = url.clone();
        Some((child, url))
    };
    let result = serve(&config, &dir).await;
    if let Some((child, url)) = redis {
        stop_redis(child, &url).await;
    }
    result
}

async fn serve(config: &Config, dir: &Path) -> anyhow::Result<()> {
    let mut config = config.clone();
    let broker = hush::build_broker(&config)?;
    broker
        .ping()
        .await
        .with_context(|| format!("Redis at {} does not answer", config.redis_url))?;
    demo_pool(&broker).await?;
    let key = admin_key(&broker, dir).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (set HUSH_LISTEN)", config.listen))?;
    let addr = listener.local_addr()?;
    let base = format!("http://{addr}");
    config.listen = addr;
    if config.sandbox {
        // Providers sign for the URL they call; here that is hush's own address.
        if config.public_url.is_none() {
            config.public_url = Some(base.clone());
        }
        hush::sandbox::use_stand_in_apis(&mut config.providers, &base);
    }
    // `hush sandbox` finds this instance here.
    write_private(&dir.join("url"), &format!("{base}\n"))?;
    // `export` lines, so that `. ./.hush/env` alone reaches the CLI's environment.
    let env = format!(
        "export HUSH_REDIS_URL={}\nexport HUSH_REDIS_PREFIX={}\nexport HUSH_INDEX_KEY={}\n\
         export HUSH_DATA_KEYS={}\n",
        config.redis_url,
        config.redis_prefix,
        base64_of(config.index_key.as_ref()),
        config
            .data_keys
            .iter()
            .map(|k| base64_of(Some(k)))
            .collect::<Vec<_>>()
            .join(",")
    );
    write_private(&dir.join("env"), &env)?;
    println!("hush dev is serving on http://{addr}  (Ctrl-C stops hush and its Redis)");
    println!("admin key: {key}");
    println!("pool `demo` has +12015550100 to +12015550109. Create a session:");
    println!();
    println!(
        "curl -s -X POST http://{addr}/v1/sessions -H 'Authorization: Bearer {key}' \
         -H 'Content-Type: application/json' -d '{{\"pool\":\"demo\",\"participants\":\
         [{{\"number\":\"+14155550142\",\"label\":\"rider\"}},{{\"number\":\"+14155550143\",\"label\":\"driver\"}}]}}'"
    );
    println!();
    if config.sandbox {
        println!(
            "The sandbox plays the carrier: Rider is +14155550142, Driver +14155550143. Call \
             the session's proxy number from Rider (docs/sandbox.md):"
        );
        println!();
        println!("hush sandbox call --from +14155550142 --to <proxy_number> [--dialect twilio]");
        println!();
    }
    println!(
        "In another shell in this directory, `. ./.hush/env` points the CLI at this instance \
         (e.g. `hush pools list`)."
    );
    let config = &config;
    if config.callback_allow_private {
        println!("Callback and intercept URLs may be plain http on private addresses here.");
    }
    let token = CancellationToken::new();
    crate::cancel_on_signal(token.clone());
    hush::run(config.clone(), listener, token).await
}

fn base64_of(k: Option<&Secret<[u8; 32]>>) -> String {
    use base64::Engine as _;
    k.map(|k| base64::engine::general_purpose::STANDARD.encode(k.expose()))
        .unwrap_or_default()
}
