//! The `hush` command line: parses arguments and calls into the library.

mod bench;
mod dev;
mod sandbox_cli;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use hush::broker::{Actor, Broker, PoolLimit};
use hush::config::Config;
use hush::domain::{
    E164, GeoMatch, NumberSelection, NumberState, PinMode, PoolName, PoolPolicy, RecordChannels,
    SessionId,
};

#[derive(Parser)]
#[command(name = "hush", version, about = "Phone-number masking broker")]
struct Cli {
    /// TOML config file; `HUSH_*` environment variables override it.
    #[arg(long, global = true, env = "HUSH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API against the Redis in HUSH_REDIS_URL.
    Serve,
    /// First try: a private Redis and secrets under ./.hush/, a demo pool, an admin key.
    Dev,
    /// API keys and server secrets.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Pools and their policy.
    #[command(subcommand)]
    Pools(PoolsCmd),
    /// Proxy numbers of a pool.
    #[command(subcommand)]
    Numbers(NumbersCmd),
    /// Sessions.
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// Move hush's data to another Redis (one server to a Cluster, for example).
    #[command(subcommand)]
    Store(StoreCmd),
    /// Play a call or text through the sandbox of a running `hush dev` and print each step.
    #[command(subcommand)]
    Sandbox(sandbox_cli::SandboxCmd),
    /// Measure routing, allocation, memory and event delivery as ratios against baselines
    /// taken in the same run, on a private redis-server started for the purpose.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Print a fresh HUSH_INDEX_KEY and HUSH_DATA_KEYS.
    GenSecrets,
    /// Create an API key; the key is printed alone on the last line.
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated: sessions, pools, relay, admin.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Comma-separated pool names: the key sees only these pools' sessions, events and
        /// numbers. Without it the key sees every pool.
        #[arg(long, value_delimiter = ',')]
        pools: Option<Vec<String>>,
    },
    /// List API keys (names, scopes and pools, `*` for every pool; keys are stored hashed).
    List,
    /// Revoke an API key by name.
    Revoke { name: String },
    /// Re-seal every stored record under the first key of HUSH_DATA_KEYS, while hush
    /// serves, so the other keys can be removed at once. Progress goes to stderr; running
    /// it again resumes where a run stopped, and re-seals nothing once all is done.
    RotateData {
        /// Stop after re-sealing this many records (run again to go on).
        #[arg(long)]
        stop_after: Option<u64>,
    },
}

#[derive(Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per run; boxing the flags would only blur the clap derive"
)]
enum PoolsCmd {
    /// Create a pool, or change the settings given of an existing one: the others keep
    /// their current values (a merge, like `PATCH /v1/pools/{name}`). With `--replace`,
    /// settings not given go back to their defaults (like `PUT /v1/pools/{name}`).
    Put {
        name: String,
        /// Replace the whole policy: settings not given take their defaults, callbacks and
        /// intercept included.
        #[arg(long)]
        replace: bool,
        /// Default session length (60 to 2592000; default 3600).
        #[arg(long)]
        default_ttl_secs: Option<u32>,
        /// Cool-off after a session ends (0 to 604800; default 3600).
        #[arg(long)]
        cooloff_secs: Option<u32>,
        /// area_code, country or any (default country).
        #[arg(long)]
        geo_match: Option<String>,
        #[arg(long)]
        out_of_session_message: Option<String>,
        /// Shards to spread the pool over (1 to 64; default 1). It can only grow; numbers
        /// added later fill the new shards first, numbers already added stay where they are.
        #[arg(long)]
        shards: Option<u16>,
        /// Have the provider record the pool's calls (true or false; default false).
        #[arg(long)]
        record: Option<bool>,
        /// dual (one channel per party, the default) or mono.
        #[arg(long)]
        record_channels: Option<String>,
        /// Cut the dialled leg of a call after this many seconds (1 to 14400; 0 for none).
        #[arg(long)]
        max_call_secs: Option<u32>,
        /// End a session after this many seconds without a call or text (60 to 2592000; 0
        /// for none).
        #[arg(long)]
        idle_ttl_secs: Option<u32>,
        /// twilio, telnyx, plivo or vonage: which provider's API sends the texts and calls
        /// the app starts ("" for the only one configured).
        #[arg(long)]
        provider: Option<String>,
        /// prefer_sticky (default) or avoid_sticky.
        #[arg(long)]
        number_selection: Option<String>,
        /// PIN sessions: off (default), fallback (a PIN on a shared number only when no
        /// number is free for the pair) or always.
        #[arg(long)]
        pin: Option<String>,
        /// Digits in a PIN (4 to 8; default 6).
        #[arg(long)]
        pin_length: Option<u8>,
        /// Seconds each PIN prompt waits for digits (1 to 10; default 4).
        #[arg(long)]
        pin_prompt_timeout_secs: Option<u32>,
        /// Prompts again after a wrong PIN before the out-of-session message (0 to 5;
        /// default 2).
        #[arg(long)]
        pin_retry: Option<u8>,
        /// Only the participant a PIN was given to may use it (true or false; default true).
        #[arg(long)]
        pin_caller_check: Option<bool>,
        /// Wrong PINs one caller may type on one number in a minute (1 to 100; default 5).
        #[arg(long)]
        pin_failure_limit: Option<u8>,
        /// What a caller hears when asked for a PIN.
        #[arg(long)]
        pin_prompt: Option<String>,
        /// The reply to a text that does not start with a right PIN.
        #[arg(long)]
        pin_text_prompt: Option<String>,
    },
    List,
    Show {
        name: String,
    },
    /// Delete a pool with its numbers and settings; refused while a number carries a
    /// session (open or cooling off).
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum NumbersCmd {
    /// Import numbers from a CSV file with columns `number,capabilities`.
    Import {
        pool: String,
        file: PathBuf,
    },
    List {
        pool: String,
    },
    /// Stop giving a number to new sessions; open ones run on.
    Drain {
        pool: String,
        number: String,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Copy every key under HUSH_REDIS_PREFIX, and nothing else, to another Redis with its
    /// remaining TTL, then check the copy. Stop hush (or scale it to zero) first: a write made
    /// during the copy is not carried over. See "Moving to a cluster" in docs/operations.md.
    Migrate {
        /// The Redis to copy to, in any form HUSH_REDIS_URL takes (`redis+cluster://...`).
        /// From the environment, it stays out of the process list.
        #[arg(long, env = "HUSH_MIGRATE_TO")]
        to: String,
        /// The Redis to copy from; default HUSH_REDIS_URL.
        #[arg(long, env = "HUSH_MIGRATE_FROM")]
        from: Option<String>,
        /// Delete the keys the target already holds under the prefix, then copy.
        #[arg(long)]
        replace: bool,
    },
    /// Convert data written by an earlier hush (layout 1) to the layout this version reads,
    /// in place. Stop every hush instance and back Redis up first; running it again after an
    /// interruption finishes the job. See "Upgrading" in docs/operations.md.
    Upgrade,
}

#[derive(Subcommand)]
enum SessionsCmd {
    Show { id: String },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("hush: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Keys(KeysCmd::GenSecrets) = cli.command {
        let (index, data) = hush::config::generate_secrets();
        println!("HUSH_INDEX_KEY={index}");
        println!("HUSH_DATA_KEYS={data}");
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref())?;
    let ops = || ops_broker(&config, cli.config.as_deref());
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Dev => dev::run(config).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Sandbox(cmd) => sandbox_cli::run(cmd).await,
        Command::Store(StoreCmd::Migrate { to, from, replace }) => {
            let from = match from {
                Some(url) => url,
                None => {
                    require_redis(cli.config.as_deref())?;
                    config.redis_url.clone()
                }
            };
            migrate(&config, &from, &to, replace).await
        }
        Command::Store(StoreCmd::Upgrade) => {
            require_redis(cli.config.as_deref())?;
            upgrade(&config).await
        }
        Command::Keys(cmd) => keys(&ops()?, cmd).await,
        Command::Pools(cmd) => pools(&ops()?, cmd).await,
        Command::Numbers(cmd) => numbers(&ops()?, cmd).await,
        Command::Sessions(SessionsCmd::Show { id }) => {
            let broker = ops()?;
            let id = SessionId::parse(&id).context("not a session id")?;
            print_json(&broker.get_session(&id).await?)
        }
    }
}

/// The broker an ops command works on, after one line on stderr saying which Redis and key
/// prefix that is. With no Redis configured it refuses rather than try `127.0.0.1:6379`,
/// which on a shared machine may be somebody else's.
fn ops_broker(config: &Config, file: Option<&std::path::Path>) -> anyhow::Result<Broker> {
    require_redis(file)?;
    // Rendered without the password, which the URL may carry.
    let target = hush::store::RedisTarget::parse(&config.redis_url)?;
    eprintln!(
        "hush: working on Redis {target} with key prefix `{}`",
        config.redis_prefix
    );
    hush::build_broker(config)
}

/// Refuses when neither the environment nor the config file names a Redis.
fn require_redis(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let from_env = std::env::var("HUSH_REDIS_URL").is_ok_and(|v| !v.is_empty());
    let from_file = file
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|text| text.parse::<toml::Table>().ok())
        .is_some_and(|t| t.contains_key("redis_url"));
    if !from_env && !from_file {
        bail!(
            "no Redis configured. Beside `hush dev`, run `. ./.hush/env` in this shell (in the \
             directory where `hush dev` runs); otherwise set HUSH_REDIS_URL (and \
             HUSH_REDIS_PREFIX, HUSH_INDEX_KEY, HUSH_DATA_KEYS) to those of your hush"
        );
    }
    Ok(())
}

/// `hush store migrate`: the copy itself lives in the store; this reads the options and
/// prints progress on stderr and the summary on stdout.
async fn migrate(config: &Config, from: &str, to: &str, replace: bool) -> anyhow::Result<()> {
    use hush::store::migrate::{Endpoint, Side};
    let access = config.redis_access()?;
    let source = Endpoint::open(Side::Source, from, &access).context("--from")?;
    let target = Endpoint::open(Side::Target, to, &access).context("--to")?;
    let prefix = &config.redis_prefix;
    let report = hush::store::migrate::migrate(&source, &target, prefix, replace, &|line| {
        eprintln!("hush: {line}")
    })
    .await?;
    let types: Vec<String> = report
        .copied
        .iter()
        .map(|(kind, n)| format!("{kind}={n}"))
        .collect();
    println!(
        "copied {} keys ({}) in {:.2} s; {} expired during the copy; {} compared value by value; {:.2} s in all",
        report.total(),
        types.join(" "),
        report.copy_time.as_secs_f64(),
        report.expired,
        report.sampled,
        report.total_time.as_secs_f64()
    );
    Ok(())
}

/// `hush store upgrade`: progress on stderr, the summary on stdout. Needs no secret: nothing
/// is decrypted.
async fn upgrade(config: &Config) -> anyhow::Result<()> {
    use hush::store::upgrade::Outcome;
    let target = hush::store::RedisTarget::parse(&config.redis_url)?;
    eprintln!(
        "hush: upgrading the data on Redis {target} with key prefix `{}`",
        config.redis_prefix
    );
    let store =
        hush::store::Store::connect_to(&target, &config.redis_access()?, &config.redis_prefix)?;
    match store.upgrade(&mut |line| eprintln!("hush: {line}")).await? {
        Outcome::Empty => println!(
            "nothing to upgrade: no pool under the prefix `{}`",
            config.redis_prefix
        ),
        Outcome::Upgraded(r) => println!(
            "upgraded to layout {} in {:.2} s: {} sessions, {} routes, {} sticky entries converted \
             over {} shards; left out {} erased records, {} routes of ended sessions, {} sticky \
             entries past their window; {} keys of deleted pools left alone",
            hush::store::LAYOUT,
            r.elapsed.as_secs_f64(),
            r.sessions,
            r.routes,
            r.sticky,
            r.shards,
            r.sessions_dropped,
            r.routes_dropped,
            r.sticky_dropped,
            r.orphans
        ),
    }
    Ok(())
}

/// Cancels the token on Ctrl-C or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler installs");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        token.cancel();
    });
}

async fn serve(config: Config) -> anyhow::Result<()> {
    hush::telemetry::init(&config);
    config.require_keys()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (HUSH_LISTEN)", config.listen))?;
    let token = CancellationToken::new();
    cancel_on_signal(token.clone());
    hush::run(config, listener, token).await
}

/// Records a change the CLI made, as `cli:<OS user>`; a failed write is logged, never fatal.
async fn audit(
    broker: &Broker,
    action: &str,
    target: &str,
    pool: Option<&str>,
    detail: serde_json::Value,
) {
    broker
        .audit(&Actor::cli(), action, target, pool, detail)
        .await;
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn pool_name(s: &str) -> anyhow::Result<PoolName> {
    PoolName::parse(s)
        .with_context(|| format!("`{s}` is not a pool name (lower-case letters, digits, - and _)"))
}

async fn keys(broker: &Broker, cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::GenSecrets => unreachable!("handled before the config is loaded"),
        KeysCmd::Create {
            name,
            scopes,
            pools,
        } => {
            let (scopes, pools) = hush::key_grant(&scopes, pools.as_deref())?;
            let key = broker
                .create_api_key_limited(&name, &scopes, &pools)
                .await?;
            if let PoolLimit::Only(names) = &pools {
                // A typo would make a key that sees nothing; a pool made later is fine.
                for pool in names {
                    if broker.pool_policy(pool).await?.is_none() {
                        eprintln!("note: pool `{pool}` does not exist yet");
                    }
                }
            }
            let pools_seen = match &pools {
                PoolLimit::All => serde_json::json!("*"),
                PoolLimit::Only(names) => {
                    serde_json::json!(names.iter().map(|n| n.as_str()).collect::<Vec<_>>())
                }
            };
            let scope_names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
            let detail = serde_json::json!({ "scopes": scope_names, "pools": pools_seen });
            audit(broker, "key.create", &format!("key:{name}"), None, detail).await;
            eprintln!("created key `{name}`; it is shown once:");
            println!("{key}");
        }
        KeysCmd::List => {
            for (name, scopes, pools, created) in broker.list_api_keys().await? {
                println!("{name}\t{scopes}\tpools={pools}\t{created}");
            }
        }
        KeysCmd::Revoke { name } => {
            if !broker.revoke_api_key(&name).await? {
                bail!("no key named `{name}`");
            }
            let target = format!("key:{name}");
            audit(broker, "key.revoke", &target, None, serde_json::json!({})).await;
            println!("revoked `{name}`");
        }
        KeysCmd::RotateData { stop_after } => {
            let r = broker
                .rotate_data(stop_after, |r| {
                    eprintln!(
                        "node {} of {} ({}): {} keys, {} re-sealed, {} already current, {} skipped",
                        r.node, r.nodes, r.node_name, r.keys, r.resealed, r.current, r.skipped
                    )
                })
                .await?;
            println!(
                "re-sealed {}, already current {}, skipped {}",
                r.resealed, r.current, r.skipped
            );
            let detail = serde_json::json!({ "resealed": r.resealed, "stopped": r.stopped });
            audit(broker, "data.rotate", "data:-", None, detail).await;
            if r.stopped {
                println!("stopped after {} re-sealed; run again to go on", r.resealed);
                return Ok(());
            }
            println!("still sealed under another key: {}", r.left());
            if r.left() > 0 {
                bail!(
                    "{} records are still sealed under another key (the log says why); \
                     keep that key in HUSH_DATA_KEYS",
                    r.left()
                );
            }
        }
    }
    Ok(())
}

async fn pools(broker: &Broker, cmd: PoolsCmd) -> anyhow::Result<()> {
    match cmd {
        PoolsCmd::Put {
            name,
            replace,
            default_ttl_secs,
            cooloff_secs,
            geo_match,
            out_of_session_message,
            shards,
            record,
            record_channels,
            max_call_secs,
            idle_ttl_secs,
            provider,
            number_selection,
            pin,
            pin_length,
            pin_prompt_timeout_secs,
            pin_retry,
            pin_caller_check,
            pin_failure_limit,
            pin_prompt,
            pin_text_prompt,
        } => {
            let pool = pool_name(&name)?;
            let record_channels = record_channels
                .map(|v| {
                    RecordChannels::parse(&v).context("--record-channels must be dual or mono")
                })
                .transpose()?;
            let number_selection = number_selection
                .map(|v| {
                    NumberSelection::parse(&v)
                        .context("--number-selection must be prefer_sticky or avoid_sticky")
                })
                .transpose()?;
            // 0 and "" say "none", as a flag cannot be given as null.
            let max_call_secs = max_call_secs.map(|v| Some(v).filter(|&v| v > 0));
            let idle_ttl_secs = idle_ttl_secs.map(|v| Some(v).filter(|&v| v > 0));
            let provider = provider.map(|v| Some(v).filter(|v| !v.is_empty()));
            let geo_match = geo_match
                .map(|v| {
                    GeoMatch::parse(&v).context("--geo-match must be area_code, country or any")
                })
                .transpose()?;
            let pin = pin
                .map(|v| PinMode::parse(&v).context("--pin must be off, fallback or always"))
                .transpose()?;
            let change = |current: &PoolPolicy| -> anyhow::Result<PoolPolicy> {
                let mut policy = current.clone();
                if let Some(v) = default_ttl_secs {
                    policy.default_ttl_secs = v;
                }
                if let Some(v) = cooloff_secs {
                    policy.cooloff_secs = v;
                }
                if let Some(v) = geo_match {
                    policy.geo_match = v;
                }
                if let Some(v) = &out_of_session_message {
                    policy.out_of_session_message = v.clone();
                }
                if let Some(v) = shards {
                    policy.shards = v;
                }
                if let Some(v) = record {
                    policy.record = v;
                }
                if let Some(v) = record_channels {
                    policy.record_channels = v;
                }
                if let Some(v) = max_call_secs {
                    policy.max_call_secs = v;
                }
                if let Some(v) = idle_ttl_secs {
                    policy.idle_ttl_secs = v;
                }
                if let Some(v) = &provider {
                    policy.provider = v.clone();
                }
                if let Some(v) = number_selection {
                    policy.number_selection = v;
                }
                if let Some(v) = pin {
                    policy.pin = v;
                }
                if let Some(v) = pin_length {
                    policy.pin_length = v;
                }
                if let Some(v) = pin_prompt_timeout_secs {
                    policy.pin_prompt_timeout_secs = v;
                }
                if let Some(v) = pin_retry {
                    policy.pin_retry = v;
                }
                if let Some(v) = pin_caller_check {
                    policy.pin_caller_check = v;
                }
                if let Some(v) = pin_failure_limit {
                    policy.pin_failure_limit = v;
                }
                if let Some(v) = &pin_prompt {
                    policy.pin_prompt = v.clone();
                }
                if let Some(v) = &pin_text_prompt {
                    policy.pin_text_prompt = v.clone();
                }
                // The rule names the API's field; say it as the option the user typed.
                policy.check().map_err(|e| {
                    let (field, rule) = e.split_once(' ').unwrap_or((&e, ""));
                    anyhow::anyhow!("--{} {rule}", field.replace('_', "-"))
                })?;
                Ok(policy)
            };
            let given: Vec<&str> = [
                ("default_ttl_secs", default_ttl_secs.is_some()),
                ("cooloff_secs", cooloff_secs.is_some()),
                ("geo_match", geo_match.is_some()),
                ("out_of_session_message", out_of_session_message.is_some()),
                ("shards", shards.is_some()),
                ("record", record.is_some()),
                ("record_channels", record_channels.is_some()),
                ("max_call_secs", max_call_secs.is_some()),
                ("idle_ttl_secs", idle_ttl_secs.is_some()),
                ("provider", provider.is_some()),
                ("number_selection", number_selection.is_some()),
                ("pin", pin.is_some()),
                ("pin_length", pin_length.is_some()),
                ("pin_prompt_timeout_secs", pin_prompt_timeout_secs.is_some()),
                ("pin_retry", pin_retry.is_some()),
                ("pin_caller_check", pin_caller_check.is_some()),
                ("pin_failure_limit", pin_failure_limit.is_some()),
                ("pin_prompt", pin_prompt.is_some()),
                ("pin_text_prompt", pin_text_prompt.is_some()),
            ]
            .iter()
            .filter(|(_, g)| *g)
            .map(|(f, _)| *f)
            .collect();
            let exists = broker.pool_policy(&pool).await?.is_some();
            let view = if replace || !exists {
                let (view, created) = broker
                    .put_pool(&pool, &change(&PoolPolicy::default())?, shards.is_none())
                    .await?;
                let action = if created {
                    "pool.create"
                } else {
                    "pool.update"
                };
                let detail = serde_json::json!({ "fields": given, "replace": true });
                audit(broker, action, &format!("pool:{name}"), Some(&name), detail).await;
                eprintln!(
                    "{} pool `{name}`{}",
                    if created { "created" } else { "replaced" },
                    if created {
                        ""
                    } else {
                        ": settings not given are back to their defaults"
                    }
                );
                view
            } else {
                let view = broker.patch_pool(&pool, change).await?;
                let detail = serde_json::json!({ "fields": given });
                audit(
                    broker,
                    "pool.update",
                    &format!("pool:{name}"),
                    Some(&name),
                    detail,
                )
                .await;
                eprintln!("updated pool `{name}`: changed the settings given, kept the others");
                view
            };
            print_json(&view)
        }
        PoolsCmd::List => {
            for p in broker.list_pools(&PoolLimit::All).await? {
                println!(
                    "{}\tnumbers={} active={} draining={}\topen_sessions={}\tshards={}",
                    p.name,
                    p.numbers.total,
                    p.numbers.active,
                    p.numbers.draining,
                    p.open_sessions,
                    p.policy.shards
                );
            }
            Ok(())
        }
        PoolsCmd::Show { name } => print_json(&broker.get_pool(&pool_name(&name)?).await?),
        PoolsCmd::Delete { name } => {
            broker.delete_pool(&pool_name(&name)?).await?;
            let target = format!("pool:{name}");
            audit(
                broker,
                "pool.delete",
                &target,
                Some(&name),
                serde_json::json!({}),
            )
            .await;
            println!("deleted pool `{name}`");
            Ok(())
        }
    }
}

/// Reads `number,capabilities` rows; capabilities separated by `;`, `|` or spaces (a quoted
/// cell may also use commas). A header row and blank lines are skipped.
fn parse_csv(text: &str) -> Vec<(String, Option<Vec<String>>)> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (number, rest) = match line.split_once(',') {
            Some((n, r)) => (n, r),
            None => (line, ""),
        };
        let number = number.trim().trim_matches('"').to_string();
        if number.eq_ignore_ascii_case("number") {
            continue;
        }
        let caps: Vec<String> = rest
            .trim()
            .trim_matches('"')
            .split([';', '|', ' ', ','])
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty())
            .collect();
        rows.push((number, (!caps.is_empty()).then_some(caps)));
    }
    rows
}

async fn numbers(broker: &Broker, cmd: NumbersCmd) -> anyhow::Result<()> {
    match cmd {
        NumbersCmd::Import { pool, file } => {
            let pool = pool_name(&pool)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let rows = parse_csv(&text);
            let (mut added, mut skipped) = (0, 0);
            for chunk in rows.chunks(1000) {
                let report = broker.add_numbers(&pool, chunk).await?;
                let detail =
                    serde_json::json!({ "added": report.added, "skipped": report.skipped.len() });
                let target = format!("pool:{pool}");
                audit(broker, "number.add", &target, Some(pool.as_str()), detail).await;
                added += report.added.len();
                skipped += report.skipped.len();
                for s in report.skipped {
                    eprintln!("skipped {}: {}", s.number, s.code);
                }
            }
            println!("added {added}, skipped {skipped}");
            Ok(())
        }
        NumbersCmd::List { pool } => {
            for n in broker.list_numbers(&pool_name(&pool)?).await? {
                println!(
                    "{}\t{}\t{}\topen_sessions={}",
                    n.number,
                    n.capabilities.join(","),
                    n.state.as_str(),
                    n.open_sessions
                );
            }
            Ok(())
        }
        NumbersCmd::Drain { pool, number } => {
            let number = E164::parse(&number).context("not an E.164 number")?;
            let view = broker
                .set_number_state(&pool_name(&pool)?, &number, NumberState::Draining)
                .await?;
            let detail = serde_json::json!({ "pool": pool, "state": "draining" });
            let target = format!("number:{}", number.reveal());
            audit(broker, "number.update", &target, Some(&pool), detail).await;
            print_json(&view)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows() {
        let rows = parse_csv(
            "number,capabilities\n+12015550100,voice;sms\n+12015550101,\"voice,sms\"\n\n+12015550102\n+12015550103,sms\n",
        );
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].1.as_deref().unwrap(), ["voice", "sms"]);
        assert_eq!(rows[1].1.as_deref().unwrap(), ["voice", "sms"]);
        assert!(rows[2].1.is_none());
        assert_eq!(rows[3].1.as_deref().unwrap(), ["sms"]);
    }
}
