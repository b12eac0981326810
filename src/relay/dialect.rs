//! The contract every provider dialect fills in, and the one flow that drives them all. A
//! dialect says only what its provider does differently: which paths it calls, how it signs,
//! how its inbound requests and status reports read, and how a decision is answered. The
//! flow owns the order (verify before anything is read, then read, route, answer) and the
//! broker calls, so a capability is written once here and once per dialect where the wire
//! format differs, and a new provider is one file implementing [`Dialect`].

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use reqwest::Client;

use super::outbound::{OutboundSms, SendError};
use super::{Inbound, Webhook, forbidden};
use crate::broker::{
    BrokerError, CallStart, Decision, Input, PROVIDER_REF_TTL_MS, RecordingRef, RecordingView,
    RelayOutcome,
};
use crate::config::Providers;
use crate::domain::RecordChannels;
use crate::domain::session::Kind;
use crate::http::calls::Placed;
use crate::http::{ApiError, AppState};

/// What a request to one of a provider's paths is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A call or text arriving on a proxy number, to be routed.
    Inbound(Kind),
    /// A report on an interaction already routed: a call's progress, a text's delivery.
    Status,
    /// A recorded call's recording is ready at the provider.
    Recording,
    /// A call the app started, answered by the participant rung first: the provider asks
    /// how to connect the other. Its URL names the session and the interaction.
    Bridge,
    /// What a caller typed at a PIN prompt ([`Decision::Gather`]), or that nothing came in
    /// time. Its URL names the attempt ([`digits_url`]).
    Digits,
}

impl Hook {
    pub const VOICE: Hook = Hook::Inbound(Kind::Voice);
    pub const SMS: Hook = Hook::Inbound(Kind::Sms);
}

/// A path the provider is pointed at, the methods it calls it with, and its hook.
#[derive(Clone, Copy, Debug)]
pub struct Path {
    pub path: &'static str,
    pub methods: MethodFilter,
    pub hook: Hook,
}

impl Path {
    pub const fn post(path: &'static str, hook: Hook) -> Self {
        Path {
            path,
            methods: MethodFilter::POST,
            hook,
        }
    }

    /// The usual three: calls, texts and status reports, all posted.
    pub const fn posted(voice: &'static str, sms: &'static str, status: &'static str) -> [Self; 3] {
        [
            Path::post(voice, Hook::VOICE),
            Path::post(sms, Hook::SMS),
            Path::post(status, Hook::Status),
        ]
    }

    /// For providers whose console lets the operator choose GET or POST.
    pub const fn get_or_post(path: &'static str, hook: Hook) -> Self {
        Path {
            path,
            methods: MethodFilter::GET.or(MethodFilter::POST),
            hook,
        }
    }
}

/// What a dialect made of an inbound request.
pub enum Read {
    /// A call or text for the broker to route.
    Route(Inbound),
    /// Nothing to route (a report on the wrong path, a called address that is no number);
    /// this is the whole answer.
    Answered(Response),
}

/// The end of a PIN prompt as a provider reports it: the call, read as [`Dialect::read`]
/// reads an inbound call (caller, proxy number, the provider's call id), and what was typed.
#[derive(Clone, Debug)]
pub struct Digits {
    pub call: Inbound,
    /// The digits typed, without a finishing `#`; empty when nothing came in time.
    pub digits: String,
}

/// What one provider does in its own way. Calls and texts are the inbound kinds today;
/// recordings, gathered digits and calls the app starts land as new [`Hook`]s and
/// decisions, each read and rendered here once per dialect.
///
/// A provider whose REST API hush calls implements [`RestApi`] as well.
pub trait Dialect: Send + Sync + 'static {
    /// The provider's name as interactions, provider references and metrics carry it.
    const NAME: &'static str;

    /// Every path the provider is pointed at.
    const PATHS: &'static [Path];

    /// Whether the provider's credentials are configured; without them it has no routes.
    fn enabled(providers: &Providers) -> bool;

    /// Checks that the provider signed this request, before anything in it is read. The
    /// error is the whole answer: a 403 from [`super::forbidden`], or a 5xx when the check
    /// needs the store and the store fails.
    fn verify(
        state: &AppState,
        hook: Hook,
        webhook: &Webhook,
    ) -> impl Future<Output = Result<(), Response>> + Send;

    /// Reads an inbound call or text in the provider's fields.
    fn read(
        state: &AppState,
        kind: Kind,
        webhook: &Webhook,
    ) -> impl Future<Output = Result<Read, ApiError>> + Send;

    /// The answer when the called number is no pool's.
    fn unrouted(kind: Kind) -> Response;

    /// Reads a verified report of what a caller typed at a PIN prompt.
    fn read_digits(
        state: &AppState,
        webhook: &Webhook,
    ) -> impl Future<Output = Result<Digits, ApiError>> + Send;

    /// Answers the broker's decision: a document the provider executes (dial with the proxy
    /// as caller ID, say, reject, send a text inline), or an acknowledgement once a text to
    /// send through the provider's API is queued. A retry gets the same decision, so it
    /// must get the same answer.
    fn answer(
        state: &AppState,
        inbound: Inbound,
        outcome: RelayOutcome,
    ) -> impl Future<Output = Response> + Send;

    /// Reads a verified status report and applies it to the interaction it names.
    fn status(state: &AppState, webhook: &Webhook) -> impl Future<Output = Response> + Send;

    /// Reads a verified recording report: the finished recording, or `None` when the report
    /// is about anything else (a recording starting, or none made). `channels` is what the
    /// dial asked for, for providers whose report does not say.
    fn read_recording(webhook: &Webhook, channels: u8) -> Result<Option<RecordingView>, ApiError>;

    /// The answer to a recording report once it is applied (or had nothing to apply).
    fn recorded() -> Response;
}

/// What a connected call's dial records: how, and where the provider reports the recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub channels: RecordChannels,
    /// The recording callback's URL, naming the interaction (see [`RecordingRef`]).
    pub callback: String,
}

/// The recording a connected call's dial asks for, when its session records calls.
pub fn recorded<D: Dialect>(s: &AppState, outcome: &RelayOutcome) -> Option<Recorded> {
    let Decision::Connect {
        session_id, call, ..
    } = &outcome.decision
    else {
        return None;
    };
    let channels = call.record?;
    let interaction = outcome.interaction.as_deref()?;
    let path = D::PATHS.iter().find(|p| p.hook == Hook::Recording)?.path;
    let reference = s.broker.recording_ref(session_id, interaction, channels);
    Some(Recorded {
        channels,
        callback: format!("{}{path}?{}", s.public_url, reference.to_query()),
    })
}

/// What a provider's REST API does for hush: today, send a text that a webhook could not
/// answer inline (the outbound queue calls it, retrying as the error says); calls the app
/// starts would be placed here too.
pub trait RestApi: Dialect {
    /// Sends one text; the provider's id for it when its answer names one, which its
    /// delivery reports then carry.
    fn send_text(
        http: &Client,
        p: &Providers,
        msg: &OutboundSms,
    ) -> impl Future<Output = Sent> + Send;
}

/// What one attempt to send a text came to: the provider's id for it, when it gives one.
pub type Sent = Result<Option<String>, SendError>;

/// A provider whose REST API places the calls the app starts: it rings one participant
/// from the proxy number and, once answered, fetches [`bridge_url`] (a [`Hook::Bridge`]
/// path), reporting the call's progress to [`status_url`].
pub trait CallApi: Dialect {
    /// Whether the credentials for the provider's call API are configured.
    fn places_calls(p: &Providers) -> bool;

    /// Asks the provider to place `call`; its id for the call when its answer names one.
    fn place_call(
        http: &Client,
        p: &Providers,
        public_url: &str,
        call: &CallStart,
    ) -> impl Future<Output = Placed> + Send;
}

/// The URL of dialect `D`'s bridge hook for `call`: it names the session and the
/// interaction, which the provider's signature then covers.
pub fn bridge_url<D: Dialect>(public_url: &str, call: &CallStart) -> String {
    let path = D::PATHS
        .iter()
        .find(|p| p.hook == Hook::Bridge)
        .map_or("", |p| p.path);
    format!(
        "{public_url}{path}?session={}&interaction={}",
        call.session_id, call.interaction
    )
}

/// The URL of dialect `D`'s digits hook for the `attempt`th PIN prompt of a call. The
/// attempt travels in the URL, which the provider signs, so a retried report of one prompt
/// is told from the report of the next.
pub fn digits_url<D: Dialect>(public_url: &str, attempt: u8) -> String {
    let path = D::PATHS
        .iter()
        .find(|p| p.hook == Hook::Digits)
        .map_or("", |p| p.path);
    format!("{public_url}{path}?attempt={attempt}")
}

/// The URL of dialect `D`'s status hook for `call`, naming the interaction as `ref`: the
/// provider's own reports on the call carry its call id, not hush's.
pub fn status_url<D: Dialect>(public_url: &str, call: &CallStart) -> String {
    let path = D::PATHS
        .iter()
        .find(|p| p.hook == Hook::Status)
        .map_or("", |p| p.path);
    format!("{public_url}{path}?ref={}", call.interaction)
}

/// The routes of dialect `D`, each served by the flow.
pub fn routes<D: Dialect>() -> Router<AppState> {
    D::PATHS.iter().fold(Router::new(), |r, p| match p.hook {
        Hook::Inbound(Kind::Voice) => r.route(p.path, on(p.methods, voice::<D>)),
        Hook::Inbound(Kind::Sms) => r.route(p.path, on(p.methods, sms::<D>)),
        Hook::Status => r.route(p.path, on(p.methods, status::<D>)),
        Hook::Bridge => r.route(p.path, on(p.methods, bridge::<D>)),
        Hook::Recording => r.route(p.path, on(p.methods, recording::<D>)),
        Hook::Digits => r.route(p.path, on(p.methods, digits::<D>)),
    })
}

async fn voice<D: Dialect>(State(s): State<AppState>, webhook: Webhook) -> Response {
    inbound::<D>(&s, Kind::Voice, webhook).await
}

async fn sms<D: Dialect>(State(s): State<AppState>, webhook: Webhook) -> Response {
    inbound::<D>(&s, Kind::Sms, webhook).await
}

/// Verify, read, ask the broker, answer: the whole answer to a call or a text.
async fn inbound<D: Dialect>(s: &AppState, kind: Kind, webhook: Webhook) -> Response {
    if let Err(refusal) = D::verify(s, Hook::Inbound(kind), &webhook).await {
        return refusal;
    }
    let inbound = match D::read(s, kind, &webhook).await {
        Ok(Read::Route(inbound)) => inbound,
        Ok(Read::Answered(answer)) => return answer,
        Err(e) => return e.into_response(),
    };
    let outcome = s
        .relay_remembered(
            D::NAME,
            &inbound.provider_ref,
            PROVIDER_REF_TTL_MS,
            inbound.from.as_ref(),
            &inbound.to,
            kind,
            Input::Arrived {
                body: inbound.body.as_deref(),
            },
        )
        .await;
    respond::<D>(s, inbound, outcome, kind).await
}

/// The answer to a routed call or text, in `D`'s dialect.
async fn respond<D: Dialect>(
    s: &AppState,
    mut inbound: Inbound,
    outcome: Result<RelayOutcome, BrokerError>,
    kind: Kind,
) -> Response {
    match outcome {
        Ok(mut outcome) => {
            if let Some(body) = outcome.body.take() {
                inbound.body = Some(body);
            }
            D::answer(s, inbound, outcome).await
        }
        Err(BrokerError::NumberNotFound(_)) => D::unrouted(kind),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The end of a PIN prompt: verify, read, let the broker check the PIN (or connect the
/// caller's own route when nothing was typed and they hold one), answer. The attempt comes
/// from the signed URL; a report without one is the first prompt's.
async fn digits<D: Dialect>(State(s): State<AppState>, webhook: Webhook) -> Response {
    if let Err(refusal) = D::verify(&s, Hook::Digits, &webhook).await {
        return refusal;
    }
    let typed = match D::read_digits(&s, &webhook).await {
        Ok(typed) => typed,
        Err(e) => return e.into_response(),
    };
    let attempt = super::param(webhook.query(), "attempt")
        .and_then(|a| a.parse::<u8>().ok())
        .filter(|a| *a >= 1)
        .unwrap_or(1);
    let outcome = s
        .relay_remembered(
            D::NAME,
            &typed.call.provider_ref,
            PROVIDER_REF_TTL_MS,
            typed.call.from.as_ref(),
            &typed.call.to,
            Kind::Voice,
            Input::Digits {
                digits: &typed.digits,
                attempt,
            },
        )
        .await;
    respond::<D>(&s, typed.call, outcome, Kind::Voice).await
}

async fn status<D: Dialect>(State(s): State<AppState>, webhook: Webhook) -> Response {
    if let Err(refusal) = D::verify(&s, Hook::Status, &webhook).await {
        return refusal;
    }
    D::status(&s, &webhook).await
}

/// The bridge of a call the app started: verify, then answer as if the participant who
/// picked up had called the proxy number, under the interaction the URL names. The claim
/// connects them to the other participant while the session is open (intercept and call
/// options included) and gives the pool's out-of-session answer otherwise; a retry gets
/// the same answer.
async fn bridge<D: Dialect>(State(s): State<AppState>, webhook: Webhook) -> Response {
    if let Err(refusal) = D::verify(&s, Hook::Bridge, &webhook).await {
        return refusal;
    }
    let query = webhook.query();
    let (Some(session), Some(interaction)) = (
        super::param(query, "session").map(str::to_string),
        super::param(query, "interaction").map(str::to_string),
    ) else {
        return ApiError::InvalidRequest("the bridge URL names no session and interaction".into())
            .into_response();
    };
    // Only a call hush started is bridged; anything else the URL names reaches nobody.
    match s.broker.is_app_call(&session, &interaction).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(provider = D::NAME, "bridge for no call the app started");
            return D::unrouted(Kind::Voice);
        }
        Err(e) => return ApiError::from(e).into_response(),
    }
    let called = match D::read(&s, Kind::Voice, &webhook).await {
        Ok(Read::Route(inbound)) => inbound,
        Ok(Read::Answered(answer)) => return answer,
        Err(e) => return e.into_response(),
    };
    // The provider rang the participant from the proxy number.
    let Some(proxy) = called.from else {
        return D::unrouted(Kind::Voice);
    };
    let inbound = Inbound::call(Some(called.to), proxy, interaction);
    let outcome = s
        .relay_remembered(
            D::NAME,
            &inbound.provider_ref,
            PROVIDER_REF_TTL_MS,
            inbound.from.as_ref(),
            &inbound.to,
            Kind::Voice,
            Input::Arrived { body: None },
        )
        .await;
    match outcome {
        Ok(outcome) => {
            let named = match &outcome.decision {
                Decision::Connect { session_id, .. } => *session_id == session,
                _ => true,
            };
            if !named {
                tracing::warn!(provider = D::NAME, "bridge for another session refused");
                return D::unrouted(Kind::Voice);
            }
            D::answer(&s, inbound, outcome).await
        }
        Err(BrokerError::NumberNotFound(_)) => D::unrouted(Kind::Voice),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Verify, check the reference the URL carries, read, attach: the whole answer to a
/// recording report. A reference hush did not make is refused like a bad signature.
async fn recording<D: Dialect>(State(s): State<AppState>, webhook: Webhook) -> Response {
    if let Err(refusal) = D::verify(&s, Hook::Recording, &webhook).await {
        return refusal;
    }
    let Some(reference) =
        RecordingRef::from_query(webhook.query()).filter(|r| s.broker.recording_ref_valid(r))
    else {
        tracing::debug!(
            provider = D::NAME,
            "recording callback without a valid reference"
        );
        return forbidden();
    };
    let recording = match D::read_recording(&webhook, reference.channels) {
        Ok(Some(recording)) => recording,
        Ok(None) => return D::recorded(),
        Err(e) => return e.into_response(),
    };
    match s
        .broker
        .recording_completed(D::NAME, &reference, recording)
        .await
    {
        Ok(attached) => {
            tracing::debug!(
                provider = D::NAME,
                interaction = %reference.interaction,
                attached,
                "recording callback"
            );
            D::recorded()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A recording's length from a provider's text: whole seconds, or a decimal rounded.
pub fn seconds(raw: Option<&str>) -> Option<u32> {
    let raw = raw?.trim();
    raw.parse::<u32>().ok().or_else(|| {
        raw.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| s.round() as u32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_lengths_read_whole_or_decimal_seconds() {
        assert_eq!(seconds(Some("42")), Some(42));
        assert_eq!(seconds(Some(" 7.6 ")), Some(8));
        assert_eq!(seconds(Some("-1")), None);
        assert_eq!(seconds(Some("NaN")), None);
        assert_eq!(seconds(Some("")), None);
        assert_eq!(seconds(None), None);
    }
}
