//! The sandbox: a simulated carrier, so a masked call or text can be watched without a
//! telephony account. It keeps a few simulated phones in memory, and plays the provider's
//! part over real HTTP: it signs and sends the webhook the provider would send to this very
//! server, reads the answer (TwiML, TeXML, Plivo XML, NCCO), rings or texts the phone the
//! answer names, and reports back with a signed status callback. For the providers whose
//! texts hush sends through a REST API (Telnyx, Vonage) it serves that API too.
//!
//! Served only when `HUSH_SANDBOX` is on (`hush dev` turns it on); otherwise none of its
//! paths exist. It never touches Redis itself: what it reports of sessions, interactions and
//! events it reads back through the broker, as the API would.

mod carrier;
mod document;
mod sign;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::Extension;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{Auth, JsonBody, ok};
use crate::broker::Scope;
use crate::config::{Config, Providers};
use crate::domain::E164;
use crate::http::extract::State;
use crate::http::{ApiError, AppState};

pub use sign::telnyx_key_pair;

/// The dialects the sandbox can speak, in the order it lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Twilio,
    Telnyx,
    Plivo,
    Vonage,
}

impl Dialect {
    const ALL: [Dialect; 4] = [
        Dialect::Twilio,
        Dialect::Telnyx,
        Dialect::Plivo,
        Dialect::Vonage,
    ];

    /// The provider's name as the API and interactions write it.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Twilio => "twilio",
            Dialect::Telnyx => "telnyx",
            Dialect::Plivo => "plivo",
            Dialect::Vonage => "vonage",
        }
    }

    fn parse(name: &str) -> Option<Dialect> {
        Dialect::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// A simulated phone: a fictional number and a name for people.
#[derive(Clone, Debug, Serialize)]
pub struct Phone {
    pub number: String,
    pub name: String,
}

/// The fictional range simulated phones take their numbers from: +1 415 555 0100..0199,
/// numbers set aside for fiction, so no real phone is ever named.
const PHONE_RANGE: std::ops::RangeInclusive<u32> = 100..=199;

fn phone_number(n: u32) -> String {
    format!("+1415555{n:04}")
}

/// The phones every sandbox starts with.
const PRESET: &[(u32, &str)] = &[(142, "Rider"), (143, "Driver"), (199, "Stranger")];

/// What the sandbox signs with, one entry per provider it can stand in for: the secrets
/// hush verifies with (or, for Telnyx, the private half of the key hush verifies with).
struct Signers {
    twilio: Option<String>,
    telnyx: Option<SigningKey>,
    plivo: Option<String>,
    /// The signature secret and method.
    vonage: Option<(String, String)>,
}

impl Signers {
    fn of(config: &Config) -> Signers {
        let p = &config.providers;
        let set = |s: &Option<crate::config::Secret<String>>| {
            s.as_ref()
                .map(|s| s.expose().clone())
                .filter(|s| !s.is_empty())
        };
        // The key signs only if its public half is the one hush checks with.
        let telnyx = config
            .sandbox_telnyx_signing_key
            .as_ref()
            .and_then(|k| sign::telnyx_key(k.expose()))
            .filter(|k| {
                p.telnyx_public_key
                    .as_ref()
                    .is_some_and(|pk| pk.expose().trim() == sign::telnyx_public(k))
            });
        Signers {
            twilio: set(&p.twilio_auth_token),
            telnyx,
            plivo: set(&p.plivo_auth_token),
            vonage: set(&p.vonage_signature_secret).map(|s| (s, p.vonage_signature_method.clone())),
        }
    }

    fn can(&self, d: Dialect) -> bool {
        match d {
            Dialect::Twilio => self.twilio.is_some(),
            Dialect::Telnyx => self.telnyx.is_some(),
            Dialect::Plivo => self.plivo.is_some(),
            Dialect::Vonage => self.vonage.is_some(),
        }
    }
}

/// A text that reached the sandbox's stand-in for a provider's messaging API.
#[derive(Clone, Debug)]
struct Delivered {
    provider: &'static str,
    id: String,
    from: String,
    to: String,
    text: String,
}

/// The running sandbox: its phones, the texts its stand-in APIs took, and how to reach hush.
pub struct Sandbox {
    /// Where hush listens: webhooks go here, signed for the public URL.
    target: String,
    public_url: String,
    http: reqwest::Client,
    signers: Signers,
    /// The credentials the stand-in APIs accept: those hush sends with.
    providers: Providers,
    phones: RwLock<Vec<Phone>>,
    inbox: Mutex<Vec<Delivered>>,
}

impl Sandbox {
    /// A sandbox for hush listening on `addr` with `config`.
    pub fn new(config: &Config, addr: SocketAddr) -> anyhow::Result<Arc<Sandbox>> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .no_proxy()
            .build()?;
        Ok(Arc::new(Sandbox {
            target: format!("http://{addr}"),
            public_url: config.public_url(),
            http,
            signers: Signers::of(config),
            providers: config.providers.clone(),
            phones: RwLock::new(
                PRESET
                    .iter()
                    .map(|(n, name)| Phone {
                        number: phone_number(*n),
                        name: (*name).into(),
                    })
                    .collect(),
            ),
            inbox: Mutex::new(Vec::new()),
        }))
    }

    /// The dialects whose provider the sandbox can sign for.
    pub fn dialects(&self) -> Vec<Dialect> {
        Dialect::ALL
            .into_iter()
            .filter(|d| self.signers.can(*d))
            .collect()
    }

    fn phones(&self) -> Vec<Phone> {
        self.phones.read().expect("lock poisoned").clone()
    }

    fn phone_named(&self, number: &str) -> Option<Phone> {
        self.phones().into_iter().find(|p| p.number == number)
    }

    /// The next text the stand-in API of `provider` took that `wanted` accepts, waiting up to
    /// `limit` for it: the outbound queue sends it shortly after the webhook is answered.
    async fn await_text(
        &self,
        provider: &str,
        limit: Duration,
        wanted: impl Fn(&Delivered) -> bool,
    ) -> Option<Delivered> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            {
                let mut inbox = self.inbox.lock().expect("lock poisoned");
                if let Some(i) = inbox
                    .iter()
                    .position(|d| d.provider == provider && wanted(d))
                {
                    return Some(inbox.remove(i));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn took(&self, text: Delivered) {
        let mut inbox = self.inbox.lock().expect("lock poisoned");
        // Texts nobody waits for (a sandbox request that gave up) must not pile up.
        if inbox.len() >= 100 {
            inbox.remove(0);
        }
        inbox.push(text);
    }
}

/// The sandbox's routes: its API for people and the console, and its stand-ins for the
/// providers' messaging APIs (where `hush dev` points `HUSH_TELNYX_API_BASE` and
/// `HUSH_VONAGE_API_BASE`).
pub fn routes(sandbox: Arc<Sandbox>) -> Router<AppState> {
    Router::new()
        .route("/v1/sandbox", get(overview))
        .route("/v1/sandbox/phones", post(add_phone))
        .route("/v1/sandbox/calls", post(call))
        .route("/v1/sandbox/texts", post(text))
        .route(TELNYX_API_PATH, post(telnyx_messages))
        .route(VONAGE_API_PATH, post(vonage_sms))
        .layer(Extension(sandbox))
}

/// Where the stand-in Telnyx API lives, below hush's own address.
pub const TELNYX_API_BASE: &str = "/sandbox/telnyx";
/// Where the stand-in Vonage SMS API lives, below hush's own address.
pub const VONAGE_API_BASE: &str = "/sandbox/vonage";
const TELNYX_API_PATH: &str = "/sandbox/telnyx/v2/messages";
const VONAGE_API_PATH: &str = "/sandbox/vonage/sms/json";

async fn overview(
    auth: Auth,
    State(s): State<AppState>,
    Extension(sb): Extension<Arc<Sandbox>>,
) -> Result<Response, ApiError> {
    let mut proxy_numbers = Vec::new();
    for pool in s.broker.list_pools(auth.pools()).await? {
        let Some(name) = crate::domain::PoolName::parse(&pool.name) else {
            continue;
        };
        for n in s.broker.list_numbers(&name).await? {
            proxy_numbers.push(n.number);
        }
    }
    Ok(ok(json!({
        "dialects": sb.dialects().iter().map(|d| d.name()).collect::<Vec<_>>(),
        "phones": sb.phones(),
        "proxy_numbers": proxy_numbers,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPhone {
    name: String,
}

async fn add_phone(
    auth: Auth,
    Extension(sb): Extension<Arc<Sandbox>>,
    body: JsonBody<NewPhone>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Relay)?;
    let name = body.value.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 40 || name.chars().any(char::is_control) {
        return Err(ApiError::Validation(
            "name must be 1 to 40 characters, without control characters".into(),
        ));
    }
    let mut phones = sb.phones.write().expect("lock poisoned");
    let free = PHONE_RANGE
        .map(phone_number)
        .find(|n| !phones.iter().any(|p| &p.number == n));
    let Some(number) = free else {
        return Err(ApiError::Refused(
            StatusCode::CONFLICT,
            "sandbox_full",
            "Sandbox full",
            "every number of the sandbox's fictional range is taken".into(),
        ));
    };
    let phone = Phone { number, name };
    phones.push(phone.clone());
    Ok((StatusCode::CREATED, Json(phone)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallBody {
    from: String,
    to: String,
    dialect: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextBody {
    from: String,
    to: String,
    body: String,
    dialect: Option<String>,
}

/// The most a simulated text may hold: ten SMS segments.
const TEXT_MAX_CHARS: usize = 1600;

/// The checked parts of a call or text request.
fn checked(
    sb: &Sandbox,
    from: &str,
    to: &str,
    dialect: Option<&str>,
) -> Result<(E164, E164, Dialect), ApiError> {
    let number = |field: &str, raw: &str| {
        E164::parse_syntax(raw).map_err(|reason| {
            ApiError::Broker(crate::broker::BrokerError::InvalidNumber {
                field: field.to_string(),
                reason,
            })
        })
    };
    let (from, to) = (number("from", from)?, number("to", to)?);
    if sb.phone_named(from.reveal()).is_none() {
        return Err(ApiError::Refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_a_sandbox_phone",
            "Not a sandbox phone",
            "`from` must be one of the sandbox's phones (GET /v1/sandbox lists them)".into(),
        ));
    }
    let dialect = match dialect {
        None => Dialect::Twilio,
        Some(name) => Dialect::parse(name).ok_or_else(|| {
            ApiError::Validation("dialect must be twilio, telnyx, plivo or vonage".into())
        })?,
    };
    if !sb.signers.can(dialect) {
        return Err(ApiError::Refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "dialect_unavailable",
            "Dialect unavailable",
            format!(
                "the sandbox cannot sign as {}: its secret is not configured (`hush dev` makes \
                 them all)",
                dialect.name()
            ),
        ));
    }
    Ok((from, to, dialect))
}

async fn call(
    auth: Auth,
    State(s): State<AppState>,
    Extension(sb): Extension<Arc<Sandbox>>,
    body: JsonBody<CallBody>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Relay)?;
    let b = body.value;
    let (from, to, dialect) = checked(&sb, &b.from, &b.to, b.dialect.as_deref())?;
    let steps = carrier::Exchange::new(&sb, &s, auth.pools(), dialect, from, to)
        .call()
        .await?;
    Ok(ok(json!({ "steps": steps })))
}

async fn text(
    auth: Auth,
    State(s): State<AppState>,
    Extension(sb): Extension<Arc<Sandbox>>,
    body: JsonBody<TextBody>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Relay)?;
    let b = body.value;
    let (from, to, dialect) = checked(&sb, &b.from, &b.to, b.dialect.as_deref())?;
    if b.body.is_empty() || b.body.chars().count() > TEXT_MAX_CHARS {
        return Err(ApiError::Validation(format!(
            "body must be 1 to {TEXT_MAX_CHARS} characters"
        )));
    }
    let steps = carrier::Exchange::new(&sb, &s, auth.pools(), dialect, from, to)
        .text(&b.body)
        .await?;
    Ok(ok(json!({ "steps": steps })))
}

// ---- stand-ins for the providers' messaging APIs

/// `POST /v2/messages` as Telnyx answers it
/// (<https://developers.telnyx.com/api/messaging/send-message>): bearer API key, JSON body.
async fn telnyx_messages(
    Extension(sb): Extension<Arc<Sandbox>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let key = sb
        .providers
        .telnyx_api_key
        .as_ref()
        .map(|k| k.expose().as_str());
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if key.is_none() || given != key {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "errors": [{ "code": "10009", "title": "Authentication failed" }] })),
        )
            .into_response();
    }
    let msg: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let field = |name: &str| msg[name].as_str().unwrap_or_default().to_string();
    let id = carrier::uuid();
    let (from, to, text) = (field("from"), field("to"), field("text"));
    let answer = json!({ "data": {
        "id": id,
        "record_type": "message",
        "direction": "outbound",
        "type": "SMS",
        "from": { "phone_number": from },
        "to": [{ "phone_number": to, "status": "queued" }],
        "text": text,
    }});
    sb.took(Delivered {
        provider: "telnyx",
        id,
        from,
        to,
        text,
    });
    Json(answer).into_response()
}

/// `POST /sms/json` as Vonage answers it (<https://developer.vonage.com/en/api/sms>): the
/// API key and secret in the form, numbers as digits, a status per part.
async fn vonage_sms(Extension(sb): Extension<Arc<Sandbox>>, body: axum::body::Bytes) -> Response {
    let form = crate::relay::form_urlencoded(&body);
    let get = |name: &str| crate::relay::param(&form, name).unwrap_or_default();
    let p = &sb.providers;
    let authentic = matches!(
        (&p.vonage_api_key, &p.vonage_api_secret),
        (Some(k), Some(s)) if k.expose() == get("api_key") && s.expose() == get("api_secret")
    );
    if !authentic {
        return Json(json!({ "message-count": "1", "messages": [
            { "status": "4", "error-text": "Bad Credentials" }
        ]}))
        .into_response();
    }
    let id = carrier::uuid();
    let plus = |digits: &str| format!("+{}", digits.trim_start_matches('+'));
    sb.took(Delivered {
        provider: "vonage",
        id: id.clone(),
        from: plus(get("from")),
        to: plus(get("to")),
        text: get("text").to_string(),
    });
    Json(json!({ "message-count": "1", "messages": [{
        "to": get("to"),
        "message-id": id,
        "status": "0",
        "remaining-balance": "100.00",
        "message-price": "0.00",
        "network": "sandbox",
    }]}))
    .into_response()
}

/// Points the messaging APIs of Telnyx and Vonage at the sandbox's stand-ins on `base` (the
/// address hush listens on), with credentials of their own, so texts relayed through those
/// providers are really sent by the outbound queue and land in the sandbox. A provider whose
/// API credentials are configured keeps its real API.
pub fn use_stand_in_apis(p: &mut Providers, base: &str) {
    use crate::config::Secret;
    if p.telnyx_api_key.is_none() {
        p.telnyx_api_base = format!("{base}{TELNYX_API_BASE}");
        p.telnyx_api_key = Some(Secret::new(format!("KEYsandbox{}", carrier::hex(16))));
    }
    if p.vonage_api_key.is_none() && p.vonage_api_secret.is_none() {
        p.vonage_api_base = format!("{base}{VONAGE_API_BASE}");
        p.vonage_api_key = Some(Secret::new("sandbox".into()));
        p.vonage_api_secret = Some(Secret::new(carrier::hex(16)));
    }
}

/// `bytes` random bytes in hex, for the dev secrets `hush dev` makes.
pub fn random_token(bytes: usize) -> String {
    carrier::hex(bytes)
}
