//! Typed configuration: built-in defaults, then an optional TOML file, then `HUSH_*`
//! environment variables (env wins). Secrets are wrapped so they never print, and impossible
//! combinations are refused at start-up with a sentence naming the keys involved.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

/// A value that must never reach a log line: `Debug` prints `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }
    /// The secret itself; named so every use is easy to find.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Output format of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("{key} is not valid: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error(
        "HUSH_INDEX_KEY and HUSH_DATA_KEYS must both be set; make them with `hush keys gen-secrets` \
         and put its two lines in the environment or in the config file"
    )]
    MissingKeys,
}

/// Everything hush needs to run. Build it with [`Config::load`], or start from
/// `Config::default()` and set fields (tests do).
#[derive(Clone)]
pub struct Config {
    /// `HUSH_LISTEN`: address the HTTP server binds (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// `HUSH_REDIS_URL`: the Redis holding all state (default `redis://127.0.0.1:6379`).
    pub redis_url: String,
    /// `HUSH_REDIS_CA_FILE`: a PEM bundle trusted beside the system roots for the `rediss`
    /// schemes (a managed Redis with a private CA). Read at start-up.
    pub redis_ca_file: Option<String>,
    /// `HUSH_REDIS_CLIENT_CERT_FILE`: a PEM certificate (chain) hush presents to Redis over TLS,
    /// for a Redis that checks clients (`tls-auth-clients yes`). Needs the key file too.
    pub redis_client_cert_file: Option<String>,
    /// `HUSH_REDIS_CLIENT_KEY_FILE`: the PEM private key of the client certificate.
    pub redis_client_key_file: Option<String>,
    /// `HUSH_REDIS_SENTINEL_PASSWORD`: the sentinels' own password (their `requirepass`). The
    /// URL's credentials are the primary's; sentinels are reached without a password unless
    /// this is set.
    pub redis_sentinel_password: Option<Secret<String>>,
    /// `HUSH_REDIS_PREFIX`: every key starts with this, so deployments can share a Redis.
    pub redis_prefix: String,
    /// `HUSH_REDIS_WAIT_REPLICAS`: how many replicas must confirm a write before hush
    /// acknowledges it (Redis `WAIT`); a write they do not confirm in time is answered 503.
    /// Default 0: acknowledge as soon as the primary has it, which a failover can lose.
    pub redis_wait_replicas: u32,
    /// `HUSH_REDIS_WAIT_TIMEOUT_MS`: how long a write waits for those replicas (default 500).
    pub redis_wait_timeout_ms: u64,
    /// `HUSH_PUBLIC_URL`: the URL providers call; default `http://<listen>`.
    pub public_url: Option<String>,
    /// `HUSH_INDEX_KEY`: base64 of 32 bytes, the blind-index key. It never rotates: changing
    /// it orphans every participant key in Redis.
    pub index_key: Option<Secret<[u8; 32]>>,
    /// `HUSH_DATA_KEYS`: comma-separated base64 32-byte keys; the first encrypts, all decrypt.
    pub data_keys: Vec<Secret<[u8; 32]>>,
    /// `HUSH_LOG`: tracing filter (default `info`).
    pub log: String,
    /// `HUSH_LOG_FORMAT`: `text` or `json`.
    pub log_format: LogFormat,
    /// `HUSH_REAPER_INTERVAL_MS`: how often each instance reaps ended sessions (default 1000).
    pub reaper_interval_ms: u64,
    /// Telephony providers' credentials; a provider without them answers 404 on its hooks.
    pub providers: Providers,
    /// `HUSH_CALLBACK_ALLOW_PRIVATE`: let callback and intercept URLs be plain http and reach
    /// private, loopback and link-local addresses. For development and tests only.
    pub callback_allow_private: bool,
    /// `HUSH_AUDIT_SESSIONS`: `people` (default) records the session changes people make
    /// (through the console or the CLI) in the audit log; `all` also those apps make through
    /// the API, one entry per create, extend, close, text or call (about 300 bytes each, kept 90
    /// days: sized in docs/operations.md).
    pub audit_all_sessions: bool,
    /// `HUSH_CONSOLE`: serve the ops console at `/console` (default true). It is a client of
    /// the public API and grants nothing a key does not; turn it off where no one needs it.
    pub console: bool,
    /// `HUSH_EVENT_RETRY_SCHEDULE`: comma-separated seconds between delivery attempts of an
    /// event (default 5,30,120,600,1800,3600,10800,21600,43200,86400); after the last one the
    /// event is marked failed. Fractions are allowed (`0.2`).
    pub event_retry_schedule_ms: Vec<u64>,
    /// `HUSH_HEADER_READ_TIMEOUT_MS`: how long a client has, from its first byte (or from
    /// connecting), to send a whole request head; then the connection is closed (default
    /// 10000).
    pub header_read_timeout_ms: u64,
    /// `HUSH_BODY_READ_TIMEOUT_MS`: how long a client has, once its request head is in, to send
    /// the whole body; then it is answered `408 request_timeout` (default 15000).
    pub body_read_timeout_ms: u64,
    /// `HUSH_KEEPALIVE_IDLE_MS`: how long a connection may sit idle between requests before
    /// hush closes it (default 75000, longer than the 60 s idle timeout of common load
    /// balancers so that they, not hush, close idle connections). `0` turns keep-alive off.
    pub keepalive_idle_ms: u64,
    /// `HUSH_MAX_CONNECTIONS`: connections served at once; further ones wait in the listen
    /// backlog until one closes. Default: three quarters of the open-file limit, at most
    /// 10000.
    pub max_connections: Option<usize>,
    /// `HUSH_READINESS_TIMEOUT_MS`: how long `/readyz` waits for Redis before answering 503
    /// (default 1000). Keep it under the probe's own timeout.
    pub readiness_timeout_ms: u64,
    /// `HUSH_SANDBOX`: serve the simulated carrier (`/v1/sandbox`, see docs/sandbox.md), which
    /// sends signed webhooks to this very server. `hush dev` turns it on; never in production.
    pub sandbox: bool,
    /// `HUSH_SANDBOX_TELNYX_SIGNING_KEY`: base64 of the 32-byte Ed25519 secret key whose public
    /// half is `HUSH_TELNYX_PUBLIC_KEY`, so the sandbox can sign as Telnyx does. `hush dev`
    /// makes one.
    pub sandbox_telnyx_signing_key: Option<Secret<String>>,
}

/// The default delay before each retry of an event delivery.
pub const EVENT_RETRY_SCHEDULE_SECS: [u64; 10] =
    [5, 30, 120, 600, 1800, 3600, 10800, 21600, 43200, 86400];

/// Credentials of each telephony provider. Every field is optional; a provider is enabled
/// when its signature secret is set, so no provider ever runs unauthenticated.
#[derive(Clone, Debug, Default)]
pub struct Providers {
    /// `HUSH_TWILIO_AUTH_TOKEN`: signs `X-Twilio-Signature` (HMAC-SHA1).
    pub twilio_auth_token: Option<Secret<String>>,
    /// `HUSH_TWILIO_SHARED_KEYS`: `id=secret,...` for HMAC-SHA256 webhook signatures.
    pub twilio_shared_keys: Vec<(String, Secret<String>)>,
    /// `HUSH_TWILIO_ACCOUNT_SID`: with `HUSH_TWILIO_AUTH_TOKEN`, lets hush send texts
    /// through Twilio's Messaging API and place calls the app starts through its Calls
    /// resource (HTTP Basic auth `AccountSid:AuthToken`).
    pub twilio_account_sid: Option<Secret<String>>,
    /// `HUSH_TWILIO_API_BASE`: Twilio's API (default `https://api.twilio.com`).
    pub twilio_api_base: String,
    /// `HUSH_TELNYX_PUBLIC_KEY`: base64 Ed25519 key that signs Telnyx webhooks.
    pub telnyx_public_key: Option<Secret<String>>,
    /// `HUSH_TELNYX_API_KEY`: bearer key for sending messages through Telnyx.
    pub telnyx_api_key: Option<Secret<String>>,
    /// `HUSH_TELNYX_API_BASE`: Telnyx's API (default `https://api.telnyx.com`).
    pub telnyx_api_base: String,
    /// `HUSH_TELNYX_ACCOUNT_SID`: the account id in TeXML call creation paths, for calls the
    /// app starts.
    pub telnyx_account_sid: Option<String>,
    /// `HUSH_TELNYX_TEXML_APP_ID`: the TeXML application (`ApplicationSid`) that places calls
    /// the app starts.
    pub telnyx_texml_app_id: Option<String>,
    /// `HUSH_PLIVO_AUTH_TOKEN`: signs `X-Plivo-Signature-V3`, and with `HUSH_PLIVO_AUTH_ID`
    /// authenticates hush to Plivo's Message and Call APIs.
    pub plivo_auth_token: Option<Secret<String>>,
    /// `HUSH_PLIVO_AUTH_ID`: with `HUSH_PLIVO_AUTH_TOKEN`, lets hush send texts through
    /// Plivo's Message API and place calls the app starts through its Call API (HTTP Basic
    /// auth `auth_id:auth_token`).
    pub plivo_auth_id: Option<Secret<String>>,
    /// `HUSH_PLIVO_API_BASE`: Plivo's API (default `https://api.plivo.com`).
    pub plivo_api_base: String,
    /// `HUSH_VONAGE_SIGNATURE_SECRET`: signs voice JWTs and signed SMS.
    pub vonage_signature_secret: Option<Secret<String>>,
    /// `HUSH_VONAGE_SIGNATURE_METHOD`: `md5hash`, `md5`, `sha1`, `sha256` or `sha512`.
    pub vonage_signature_method: String,
    /// `HUSH_VONAGE_API_KEY`: for sending SMS through Vonage.
    pub vonage_api_key: Option<Secret<String>>,
    /// `HUSH_VONAGE_API_SECRET`: for sending SMS through Vonage.
    pub vonage_api_secret: Option<Secret<String>>,
    /// `HUSH_VONAGE_API_BASE`: Vonage's SMS API (default `https://rest.nexmo.com`).
    pub vonage_api_base: String,
    /// `HUSH_VONAGE_APPLICATION_ID`: the Voice API application that places calls the app
    /// starts; its private key signs the API's JWTs.
    pub vonage_application_id: Option<String>,
    /// `HUSH_VONAGE_PRIVATE_KEY`: that application's private key, PKCS#8 PEM, given inline
    /// or as the path of a file holding it.
    pub vonage_private_key: Option<Secret<String>>,
    /// `HUSH_VONAGE_VOICE_API_BASE`: Vonage's Voice API (default `https://api.nexmo.com`).
    pub vonage_voice_api_base: String,
    /// `HUSH_VONAGE_TOKEN_MAX_AGE_SECS`: how long after its `iat` a voice webhook's token is
    /// accepted (default 300, at most 3600). Each token is accepted for one request only,
    /// and its id is remembered in Redis for this long.
    pub vonage_token_max_age_secs: u32,
}

impl Providers {
    /// The providers whose API credentials are set, so that can send the texts the app
    /// asks for, by name (`twilio`, `telnyx`, `plivo`, `vonage`).
    pub fn texting(&self) -> Vec<&'static str> {
        let set = |s: &Option<Secret<String>>| s.as_ref().is_some_and(|s| !s.expose().is_empty());
        let mut out = Vec::new();
        if set(&self.twilio_account_sid) && set(&self.twilio_auth_token) {
            out.push("twilio");
        }
        if set(&self.telnyx_api_key) {
            out.push("telnyx");
        }
        if set(&self.plivo_auth_id) && set(&self.plivo_auth_token) {
            out.push("plivo");
        }
        if set(&self.vonage_api_key) && set(&self.vonage_api_secret) {
            out.push("vonage");
        }
        out
    }
}

/// The default of `HUSH_VONAGE_TOKEN_MAX_AGE_SECS`: Vonage signs each webhook as it sends
/// it, so a token older than a few minutes is a replay, not a delivery.
pub const VONAGE_TOKEN_MAX_AGE_SECS: u32 = 300;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_ca_file: None,
            redis_client_cert_file: None,
            redis_client_key_file: None,
            redis_sentinel_password: None,
            redis_prefix: "hush".into(),
            redis_wait_replicas: 0,
            redis_wait_timeout_ms: 500,
            public_url: None,
            index_key: None,
            data_keys: Vec::new(),
            log: "info".into(),
            log_format: LogFormat::Text,
            reaper_interval_ms: 1000,
            callback_allow_private: false,
            audit_all_sessions: false,
            console: true,
            event_retry_schedule_ms: EVENT_RETRY_SCHEDULE_SECS.iter().map(|s| s * 1000).collect(),
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 15_000,
            keepalive_idle_ms: 75_000,
            max_connections: None,
            readiness_timeout_ms: 1000,
            sandbox: false,
            sandbox_telnyx_signing_key: None,
            providers: Providers {
                twilio_api_base: "https://api.twilio.com".into(),
                telnyx_api_base: "https://api.telnyx.com".into(),
                plivo_api_base: "https://api.plivo.com".into(),
                vonage_voice_api_base: "https://api.nexmo.com".into(),
                vonage_signature_method: "md5hash".into(),
                vonage_api_base: "https://rest.nexmo.com".into(),
                vonage_token_max_age_secs: VONAGE_TOKEN_MAX_AGE_SECS,
                ..Providers::default()
            },
        }
    }
}

/// By hand rather than derived: `redis_url` may carry a password, printed masked here. The
/// destructuring makes a new field fail to compile until it is listed.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Config {
            listen,
            redis_url,
            redis_ca_file,
            redis_client_cert_file,
            redis_client_key_file,
            redis_sentinel_password,
            redis_prefix,
            redis_wait_replicas,
            redis_wait_timeout_ms,
            public_url,
            index_key,
            data_keys,
            log,
            log_format,
            reaper_interval_ms,
            providers,
            callback_allow_private,
            audit_all_sessions,
            console,
            event_retry_schedule_ms,
            header_read_timeout_ms,
            body_read_timeout_ms,
            keepalive_idle_ms,
            max_connections,
            readiness_timeout_ms,
            sandbox,
            sandbox_telnyx_signing_key,
        } = self;
        let masked_url = match crate::store::RedisTarget::parse(redis_url) {
            Ok(target) => target.to_string(),
            Err(_) => "(not a Redis URL)".to_string(),
        };
        f.debug_struct("Config")
            .field("listen", listen)
            .field("redis_url", &masked_url)
            .field("redis_ca_file", redis_ca_file)
            .field("redis_client_cert_file", redis_client_cert_file)
            .field("redis_client_key_file", redis_client_key_file)
            .field("redis_sentinel_password", redis_sentinel_password)
            .field("redis_prefix", redis_prefix)
            .field("redis_wait_replicas", redis_wait_replicas)
            .field("redis_wait_timeout_ms", redis_wait_timeout_ms)
            .field("public_url", public_url)
            .field("index_key", index_key)
            .field("data_keys", data_keys)
            .field("log", log)
            .field("log_format", log_format)
            .field("reaper_interval_ms", reaper_interval_ms)
            .field("providers", providers)
            .field("callback_allow_private", callback_allow_private)
            .field("audit_all_sessions", audit_all_sessions)
            .field("console", console)
            .field("event_retry_schedule_ms", event_retry_schedule_ms)
            .field("header_read_timeout_ms", header_read_timeout_ms)
            .field("body_read_timeout_ms", body_read_timeout_ms)
            .field("keepalive_idle_ms", keepalive_idle_ms)
            .field("max_connections", max_connections)
            .field("readiness_timeout_ms", readiness_timeout_ms)
            .field("sandbox", sandbox)
            .field("sandbox_telnyx_signing_key", sandbox_telnyx_signing_key)
            .finish()
    }
}

/// The file form: the same names as the environment, lower-case, without `HUSH_`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    redis_url: Option<String>,
    redis_ca_file: Option<String>,
    redis_client_cert_file: Option<String>,
    redis_client_key_file: Option<String>,
    redis_sentinel_password: Option<String>,
    redis_prefix: Option<String>,
    redis_wait_replicas: Option<u64>,
    redis_wait_timeout_ms: Option<u64>,
    public_url: Option<String>,
    index_key: Option<String>,
    data_keys: Option<String>,
    log: Option<String>,
    log_format: Option<String>,
    reaper_interval_ms: Option<u64>,
    twilio_auth_token: Option<String>,
    twilio_shared_keys: Option<String>,
    twilio_account_sid: Option<String>,
    twilio_api_base: Option<String>,
    telnyx_public_key: Option<String>,
    telnyx_api_key: Option<String>,
    telnyx_api_base: Option<String>,
    telnyx_account_sid: Option<String>,
    telnyx_texml_app_id: Option<String>,
    plivo_auth_token: Option<String>,
    plivo_auth_id: Option<String>,
    plivo_api_base: Option<String>,
    vonage_signature_secret: Option<String>,
    vonage_signature_method: Option<String>,
    vonage_api_key: Option<String>,
    vonage_api_secret: Option<String>,
    vonage_api_base: Option<String>,
    vonage_application_id: Option<String>,
    vonage_private_key: Option<String>,
    vonage_voice_api_base: Option<String>,
    vonage_token_max_age_secs: Option<u64>,
    callback_allow_private: Option<String>,
    audit_sessions: Option<String>,
    console: Option<String>,
    event_retry_schedule: Option<String>,
    header_read_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    keepalive_idle_ms: Option<u64>,
    max_connections: Option<u64>,
    readiness_timeout_ms: Option<u64>,
    sandbox: Option<String>,
    sandbox_telnyx_signing_key: Option<String>,
}

impl Config {
    /// Defaults, then the file (when given), then the `HUSH_*` environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, |k| std::env::var(k).ok())
    }

    /// As [`Config::load`] with an explicit environment, so layering is testable.
    pub fn load_from(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut raw = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::Parse {
                    path: path.display().to_string(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        let over = |slot: &mut Option<String>, key: &str| {
            if let Some(v) = env(key).filter(|v| !v.is_empty()) {
                *slot = Some(v);
            }
        };
        over(&mut raw.listen, "HUSH_LISTEN");
        over(&mut raw.redis_url, "HUSH_REDIS_URL");
        over(&mut raw.redis_ca_file, "HUSH_REDIS_CA_FILE");
        over(
            &mut raw.redis_client_cert_file,
            "HUSH_REDIS_CLIENT_CERT_FILE",
        );
        over(&mut raw.redis_client_key_file, "HUSH_REDIS_CLIENT_KEY_FILE");
        over(
            &mut raw.redis_sentinel_password,
            "HUSH_REDIS_SENTINEL_PASSWORD",
        );
        over(&mut raw.redis_prefix, "HUSH_REDIS_PREFIX");
        over(&mut raw.public_url, "HUSH_PUBLIC_URL");
        over(&mut raw.index_key, "HUSH_INDEX_KEY");
        over(&mut raw.data_keys, "HUSH_DATA_KEYS");
        over(&mut raw.log, "HUSH_LOG");
        over(&mut raw.log_format, "HUSH_LOG_FORMAT");
        over(&mut raw.twilio_auth_token, "HUSH_TWILIO_AUTH_TOKEN");
        over(&mut raw.twilio_shared_keys, "HUSH_TWILIO_SHARED_KEYS");
        over(&mut raw.twilio_account_sid, "HUSH_TWILIO_ACCOUNT_SID");
        over(&mut raw.twilio_api_base, "HUSH_TWILIO_API_BASE");
        over(&mut raw.telnyx_public_key, "HUSH_TELNYX_PUBLIC_KEY");
        over(&mut raw.telnyx_api_key, "HUSH_TELNYX_API_KEY");
        over(&mut raw.telnyx_api_base, "HUSH_TELNYX_API_BASE");
        over(&mut raw.telnyx_account_sid, "HUSH_TELNYX_ACCOUNT_SID");
        over(&mut raw.telnyx_texml_app_id, "HUSH_TELNYX_TEXML_APP_ID");
        over(&mut raw.plivo_auth_token, "HUSH_PLIVO_AUTH_TOKEN");
        over(&mut raw.plivo_auth_id, "HUSH_PLIVO_AUTH_ID");
        over(&mut raw.plivo_api_base, "HUSH_PLIVO_API_BASE");
        over(
            &mut raw.vonage_signature_secret,
            "HUSH_VONAGE_SIGNATURE_SECRET",
        );
        over(
            &mut raw.vonage_signature_method,
            "HUSH_VONAGE_SIGNATURE_METHOD",
        );
        over(&mut raw.vonage_api_key, "HUSH_VONAGE_API_KEY");
        over(&mut raw.vonage_api_secret, "HUSH_VONAGE_API_SECRET");
        over(&mut raw.vonage_api_base, "HUSH_VONAGE_API_BASE");
        over(&mut raw.vonage_application_id, "HUSH_VONAGE_APPLICATION_ID");
        over(&mut raw.vonage_private_key, "HUSH_VONAGE_PRIVATE_KEY");
        over(&mut raw.vonage_voice_api_base, "HUSH_VONAGE_VOICE_API_BASE");
        over(
            &mut raw.callback_allow_private,
            "HUSH_CALLBACK_ALLOW_PRIVATE",
        );
        over(&mut raw.audit_sessions, "HUSH_AUDIT_SESSIONS");
        over(&mut raw.console, "HUSH_CONSOLE");
        over(&mut raw.event_retry_schedule, "HUSH_EVENT_RETRY_SCHEDULE");
        over(&mut raw.sandbox, "HUSH_SANDBOX");
        over(
            &mut raw.sandbox_telnyx_signing_key,
            "HUSH_SANDBOX_TELNYX_SIGNING_KEY",
        );
        if let Some(v) = env("HUSH_REAPER_INTERVAL_MS").filter(|v| !v.is_empty()) {
            raw.reaper_interval_ms = Some(v.parse().map_err(|_| ConfigError::Invalid {
                key: "HUSH_REAPER_INTERVAL_MS",
                reason: "expected a whole number of milliseconds".into(),
            })?);
        }

        for (slot, key) in [
            (
                &mut raw.header_read_timeout_ms,
                "HUSH_HEADER_READ_TIMEOUT_MS",
            ),
            (&mut raw.body_read_timeout_ms, "HUSH_BODY_READ_TIMEOUT_MS"),
            (&mut raw.keepalive_idle_ms, "HUSH_KEEPALIVE_IDLE_MS"),
            (&mut raw.max_connections, "HUSH_MAX_CONNECTIONS"),
            (&mut raw.readiness_timeout_ms, "HUSH_READINESS_TIMEOUT_MS"),
            (&mut raw.redis_wait_replicas, "HUSH_REDIS_WAIT_REPLICAS"),
            (&mut raw.redis_wait_timeout_ms, "HUSH_REDIS_WAIT_TIMEOUT_MS"),
        ] {
            if let Some(v) = env(key).filter(|v| !v.is_empty()) {
                *slot = Some(v.trim().parse().map_err(|_| ConfigError::Invalid {
                    key,
                    reason: "expected a whole number".into(),
                })?);
            }
        }

        let mut config = Config::default();
        if let Some(v) = raw.listen {
            config.listen = v.parse().map_err(|_| ConfigError::Invalid {
                key: "HUSH_LISTEN",
                reason: format!("`{v}` is not an address like 127.0.0.1:8080"),
            })?;
        }
        if let Some(v) = raw.redis_url {
            config.redis_url = v;
        }
        if let Some(v) = raw.redis_prefix {
            config.redis_prefix = v;
        }
        config.public_url = raw.public_url;
        config.redis_ca_file = raw.redis_ca_file;
        config.redis_client_cert_file = raw.redis_client_cert_file;
        config.redis_client_key_file = raw.redis_client_key_file;
        config.redis_sentinel_password = raw.redis_sentinel_password.map(Secret::new);
        if let Some(v) = raw.index_key {
            config.index_key = Some(parse_key("HUSH_INDEX_KEY", &v)?);
        }
        if let Some(v) = raw.data_keys {
            config.data_keys = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| parse_key("HUSH_DATA_KEYS", s))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = raw.log {
            config.log = v;
        }
        if let Some(v) = raw.log_format {
            config.log_format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "HUSH_LOG_FORMAT",
                        reason: format!("`{v}` is neither `text` nor `json`"),
                    });
                }
            }
        }
        if let Some(v) = raw.reaper_interval_ms {
            config.reaper_interval_ms = v;
        }
        let p = &mut config.providers;
        p.twilio_auth_token = raw.twilio_auth_token.map(Secret::new);
        if let Some(v) = raw.twilio_shared_keys {
            p.twilio_shared_keys = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|pair| match pair.split_once('=') {
                    Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {
                        Ok((id.to_string(), Secret::new(secret.to_string())))
                    }
                    _ => Err(ConfigError::Invalid {
                        key: "HUSH_TWILIO_SHARED_KEYS",
                        reason: "expected id=secret pairs separated by commas".into(),
                    }),
                })
                .collect::<Result<_, _>>()?;
        }
        p.twilio_account_sid = raw
            .twilio_account_sid
            .filter(|v| !v.is_empty())
            .map(Secret::new);
        if let Some(v) = raw.twilio_api_base {
            p.twilio_api_base = v.trim_end_matches('/').to_string();
        }
        p.telnyx_public_key = raw.telnyx_public_key.map(Secret::new);
        p.telnyx_account_sid = raw.telnyx_account_sid.filter(|v| !v.trim().is_empty());
        p.telnyx_texml_app_id = raw.telnyx_texml_app_id.filter(|v| !v.trim().is_empty());
        p.telnyx_api_key = raw.telnyx_api_key.map(Secret::new);
        if let Some(v) = raw.telnyx_api_base {
            p.telnyx_api_base = v.trim_end_matches('/').to_string();
        }
        p.plivo_auth_token = raw.plivo_auth_token.map(Secret::new);
        p.plivo_auth_id = raw.plivo_auth_id.filter(|v| !v.is_empty()).map(Secret::new);
        if let Some(v) = raw.plivo_api_base {
            p.plivo_api_base = v.trim_end_matches('/').to_string();
        }
        p.vonage_signature_secret = raw.vonage_signature_secret.map(Secret::new);
        if let Some(v) = raw.vonage_signature_method {
            p.vonage_signature_method = v;
        }
        p.vonage_api_key = raw.vonage_api_key.map(Secret::new);

        p.vonage_api_secret = raw.vonage_api_secret.map(Secret::new);
        if let Some(v) = raw.vonage_api_base {
            p.vonage_api_base = v.trim_end_matches('/').to_string();
        }
        p.vonage_application_id = raw.vonage_application_id.filter(|v| !v.trim().is_empty());
        if let Some(v) = raw.vonage_voice_api_base {
            p.vonage_voice_api_base = v.trim_end_matches('/').to_string();
        }
        // A PEM is given inline; anything else names the file that holds one.
        if let Some(v) = raw.vonage_private_key.filter(|v| !v.trim().is_empty()) {
            let pem = if v.contains("-----BEGIN") {
                v
            } else {
                std::fs::read_to_string(v.trim()).map_err(|e| ConfigError::Invalid {
                    key: "HUSH_VONAGE_PRIVATE_KEY",
                    reason: format!("neither a PEM nor a readable file: {e}"),
                })?
            };
            p.vonage_private_key = Some(Secret::new(pem));
        }
        // `Some(None)`: set, but not a number.
        let max_age = match env("HUSH_VONAGE_TOKEN_MAX_AGE_SECS").filter(|v| !v.is_empty()) {
            Some(v) => Some(v.trim().parse::<u64>().ok()),
            None => raw.vonage_token_max_age_secs.map(Some),
        };
        if let Some(v) = max_age {
            p.vonage_token_max_age_secs = v
                .and_then(|v| u32::try_from(v).ok())
                .filter(|s| (1..=3600).contains(s))
                .ok_or(ConfigError::Invalid {
                    key: "HUSH_VONAGE_TOKEN_MAX_AGE_SECS",
                    reason: "expected a whole number of seconds from 1 to 3600".into(),
                })?;
        }
        if let Some(v) = raw.callback_allow_private {
            config.callback_allow_private = match v.as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "HUSH_CALLBACK_ALLOW_PRIVATE",
                        reason: "use true or false".into(),
                    });
                }
            };
        }
        if let Some(v) = raw.audit_sessions {
            config.audit_all_sessions = match v.as_str() {
                "all" => true,
                "people" => false,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "HUSH_AUDIT_SESSIONS",
                        reason: "use people or all".into(),
                    });
                }
            };
        }
        if let Some(v) = raw.console {
            config.console = match v.as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "HUSH_CONSOLE",
                        reason: "use true or false".into(),
                    });
                }
            };
        }
        if let Some(v) = raw.sandbox {
            config.sandbox = match v.as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "HUSH_SANDBOX",
                        reason: "use true or false".into(),
                    });
                }
            };
        }
        config.sandbox_telnyx_signing_key = raw.sandbox_telnyx_signing_key.map(Secret::new);
        if let Some(v) = raw.event_retry_schedule {
            let steps: Option<Vec<u64>> = v
                .split(',')
                .map(|s| s.trim().parse::<f64>().ok())
                .map(|s| {
                    s.filter(|s| *s >= 0.0 && *s <= 7.0 * 86400.0)
                        .map(|s| (s * 1000.0) as u64)
                })
                .collect();
            config.event_retry_schedule_ms =
                steps
                    .filter(|s| !s.is_empty())
                    .ok_or(ConfigError::Invalid {
                        key: "HUSH_EVENT_RETRY_SCHEDULE",
                        reason: "expected comma-separated seconds, each at most 7 days".into(),
                    })?;
        }
        if let Some(v) = raw.header_read_timeout_ms {
            config.header_read_timeout_ms = v;
        }
        if let Some(v) = raw.body_read_timeout_ms {
            config.body_read_timeout_ms = v;
        }
        if let Some(v) = raw.keepalive_idle_ms {
            config.keepalive_idle_ms = v;
        }
        if let Some(v) = raw.max_connections {
            config.max_connections = Some(usize::try_from(v).unwrap_or(usize::MAX));
        }
        if let Some(v) = raw.readiness_timeout_ms {
            config.readiness_timeout_ms = v;
        }
        if let Some(v) = raw.redis_wait_replicas {
            config.redis_wait_replicas = u32::try_from(v).unwrap_or(u32::MAX);
        }
        if let Some(v) = raw.redis_wait_timeout_ms {
            config.redis_wait_timeout_ms = v;
        }
        config.validate()?;
        Ok(config)
    }

    /// TLS files and a sentinel password that the URL's scheme would ignore are refused: an
    /// operator who set them expects them to apply, and a forgotten `s` in `rediss` would
    /// otherwise send everything in clear.
    fn validate_redis_access(&self, target: &crate::store::RedisTarget) -> Result<(), ConfigError> {
        use crate::store::StoreKind;
        for (value, key) in [
            (&self.redis_ca_file, "HUSH_REDIS_CA_FILE"),
            (&self.redis_client_cert_file, "HUSH_REDIS_CLIENT_CERT_FILE"),
            (&self.redis_client_key_file, "HUSH_REDIS_CLIENT_KEY_FILE"),
        ] {
            if value.is_some() && !target.tls {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "it applies to TLS only, and HUSH_REDIS_URL does not use TLS \
                             (rediss://, rediss+cluster:// or rediss+sentinel://)"
                        .into(),
                });
            }
        }
        if self.redis_client_cert_file.is_some() != self.redis_client_key_file.is_some() {
            return Err(ConfigError::Invalid {
                key: "HUSH_REDIS_CLIENT_CERT_FILE",
                reason: "set it and HUSH_REDIS_CLIENT_KEY_FILE together, or neither".into(),
            });
        }
        if self.redis_sentinel_password.is_some() && target.kind != StoreKind::Sentinel {
            return Err(ConfigError::Invalid {
                key: "HUSH_REDIS_SENTINEL_PASSWORD",
                reason: "HUSH_REDIS_URL names no sentinels (redis+sentinel:// or \
                         rediss+sentinel://)"
                    .into(),
            });
        }
        Ok(())
    }

    /// What reaching Redis takes beside the URL, with every TLS file read and checked.
    pub fn redis_access(&self) -> Result<crate::store::Access, crate::store::TlsError> {
        let files = crate::store::TlsFiles {
            ca_file: self.redis_ca_file.as_deref(),
            client_cert_file: self.redis_client_cert_file.as_deref(),
            client_key_file: self.redis_client_key_file.as_deref(),
        };
        Ok(crate::store::Access {
            tls: files.load()?,
            sentinel_password: self
                .redis_sentinel_password
                .as_ref()
                .map(|p| p.expose().clone()),
        })
    }

    /// Checks that hold whatever way the config was built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let target = crate::store::RedisTarget::parse(&self.redis_url).map_err(|e| {
            ConfigError::Invalid {
                key: "HUSH_REDIS_URL",
                reason: e.to_string(),
            }
        })?;
        self.validate_redis_access(&target)?;
        if self.redis_prefix.is_empty()
            || !self
                .redis_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ConfigError::Invalid {
                key: "HUSH_REDIS_PREFIX",
                reason: "use letters, digits, `-`, `_` or `.` (it starts every Redis key)".into(),
            });
        }
        if self.reaper_interval_ms == 0 {
            return Err(ConfigError::Invalid {
                key: "HUSH_REAPER_INTERVAL_MS",
                reason: "must be at least 1".into(),
            });
        }
        const HOUR_MS: u64 = 3_600_000;
        for (value, key) in [
            (self.header_read_timeout_ms, "HUSH_HEADER_READ_TIMEOUT_MS"),
            (self.body_read_timeout_ms, "HUSH_BODY_READ_TIMEOUT_MS"),
            (self.readiness_timeout_ms, "HUSH_READINESS_TIMEOUT_MS"),
        ] {
            if value == 0 || value > HOUR_MS {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be between 1 and 3600000 milliseconds".into(),
                });
            }
        }
        // The WAIT rides on the write's own round trip, which hush abandons after 3 s; a
        // longer wait would turn every unconfirmed write into a timeout instead of an answer.
        if self.redis_wait_replicas > 0 && !(1..=2000).contains(&self.redis_wait_timeout_ms) {
            return Err(ConfigError::Invalid {
                key: "HUSH_REDIS_WAIT_TIMEOUT_MS",
                reason: "must be between 1 and 2000 milliseconds when HUSH_REDIS_WAIT_REPLICAS \
                         is set"
                    .into(),
            });
        }
        if self.keepalive_idle_ms > HOUR_MS {
            return Err(ConfigError::Invalid {
                key: "HUSH_KEEPALIVE_IDLE_MS",
                reason: "must be at most 3600000 milliseconds (0 turns keep-alive off)".into(),
            });
        }
        if let Some(n) = self.max_connections
            && !(1..=1_000_000).contains(&n)
        {
            return Err(ConfigError::Invalid {
                key: "HUSH_MAX_CONNECTIONS",
                reason: "must be between 1 and 1000000".into(),
            });
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                key: "HUSH_PUBLIC_URL",
                reason: "must start with http:// or https://".into(),
            });
        }
        if !matches!(
            self.providers.vonage_signature_method.as_str(),
            "md5hash" | "md5" | "sha1" | "sha256" | "sha512"
        ) {
            return Err(ConfigError::Invalid {
                key: "HUSH_VONAGE_SIGNATURE_METHOD",
                reason: "use md5hash, md5, sha1, sha256 or sha512".into(),
            });
        }
        Ok(())
    }

    /// The two keys `serve` cannot run without, or the sentence that says how to make them.
    pub fn require_keys(&self) -> Result<(), ConfigError> {
        if self.index_key.is_none() || self.data_keys.is_empty() {
            return Err(ConfigError::MissingKeys);
        }
        Ok(())
    }

    /// Settings that work but leave part of a provider idle, each as a sentence for the log.
    pub fn warnings(&self) -> Vec<String> {
        let p = &self.providers;
        let mut out = Vec::new();
        if p.telnyx_public_key.is_some() && p.telnyx_api_key.is_none() {
            out.push(
                "HUSH_TELNYX_PUBLIC_KEY is set without HUSH_TELNYX_API_KEY: Telnyx calls relay, \
                 but texts cannot be sent on"
                    .into(),
            );
        }
        if p.vonage_signature_secret.is_some()
            && (p.vonage_api_key.is_none() || p.vonage_api_secret.is_none())
        {
            out.push(
                "HUSH_VONAGE_SIGNATURE_SECRET is set without HUSH_VONAGE_API_KEY and \
                 HUSH_VONAGE_API_SECRET: Vonage calls relay, but texts cannot be sent on"
                    .into(),
            );
        }
        if p.twilio_account_sid.is_some() && p.twilio_auth_token.is_none() {
            out.push(
                "HUSH_TWILIO_ACCOUNT_SID is set without HUSH_TWILIO_AUTH_TOKEN: texts cannot be \
                 sent through Twilio"
                    .into(),
            );
        }
        if p.plivo_auth_id.is_some() && p.plivo_auth_token.is_none() {
            out.push(
                "HUSH_PLIVO_AUTH_ID is set without HUSH_PLIVO_AUTH_TOKEN: texts cannot be sent \
                 through Plivo"
                    .into(),
            );
        }
        if (p.telnyx_account_sid.is_some() || p.telnyx_texml_app_id.is_some())
            && (p.telnyx_account_sid.is_none()
                || p.telnyx_texml_app_id.is_none()
                || p.telnyx_api_key.is_none())
        {
            out.push(
                "HUSH_TELNYX_ACCOUNT_SID, HUSH_TELNYX_TEXML_APP_ID and HUSH_TELNYX_API_KEY are \
                 not all set: calls the app starts cannot be placed through Telnyx"
                    .into(),
            );
        }
        if p.vonage_application_id.is_some() != p.vonage_private_key.is_some() {
            out.push(
                "HUSH_VONAGE_APPLICATION_ID and HUSH_VONAGE_PRIVATE_KEY are not both set: calls \
                 the app starts cannot be placed through Vonage"
                    .into(),
            );
        }
        if self.public_url.is_none()
            && (p.twilio_auth_token.is_some()
                || !p.twilio_shared_keys.is_empty()
                || p.plivo_auth_token.is_some()
                || p.vonage_signature_secret.is_some())
        {
            out.push(
                "HUSH_PUBLIC_URL is not set: provider signatures are checked against \
                 http://<listen>, which is rarely the URL a provider calls"
                    .into(),
            );
        }
        out
    }

    /// The URL providers are configured to call.
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }
}

fn parse_key(key: &'static str, value: &str) -> Result<Secret<[u8; 32]>, ConfigError> {
    let bytes = B64.decode(value.trim()).map_err(|_| ConfigError::Invalid {
        key,
        reason: "not base64".into(),
    })?;
    let arr: [u8; 32] = bytes.try_into().map_err(|_| ConfigError::Invalid {
        key,
        reason: "must decode to exactly 32 bytes".into(),
    })?;
    Ok(Secret::new(arr))
}

/// Two fresh random keys, in the form the environment takes.
pub fn generate_secrets() -> (String, String) {
    use rand::RngCore;
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut a);
    rand::rng().fill_bytes(&mut b);
    (B64.encode(a), B64.encode(b))
}

#[cfg(test)]
mod tests;
