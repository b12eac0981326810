//! What the use cases take and give back: session requests, and the views of sessions,
//! pools, numbers, relay decisions and interactions that the API and the relay render.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{
    Access, CallOptions, E164, Initiator, InterceptFallback, Mode, NumberSelection, NumberState,
    PoolName, PoolPolicy, RecordChannels, SessionOptions,
};

/// One side of a session being created: a real number and the app's optional label.
#[derive(Clone, Debug)]
pub struct Participant {
    pub number: E164,
    pub label: Option<String>,
}

/// A request for a session between two participants in one pool.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub pool: PoolName,
    pub participants: [Participant; 2],
    pub ttl_secs: Option<u32>,
    pub mode: Mode,
    pub metadata: BTreeMap<String, String>,
    /// What the app chose instead of the pool's policy; `None` takes the pool's.
    pub choices: SessionChoices,
}

/// Options a create request may set for its session instead of the pool's: `None` takes
/// the pool's, `Some(None)` (sent as `null`) none at all.
#[derive(Clone, Debug, Default)]
pub struct SessionChoices {
    pub record: Option<bool>,
    pub record_channels: Option<RecordChannels>,
    pub max_call_secs: Option<Option<u32>>,
    pub idle_ttl_secs: Option<Option<u32>>,
    pub number_selection: Option<NumberSelection>,
    /// The pool's number to use instead of allocating one.
    pub proxy_number: Option<E164>,
}

/// One side of a session as the app sees it; the number is gone once erased.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ParticipantView {
    pub number: Option<String>,
    pub label: Option<String>,
}

/// A session as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionView {
    pub id: String,
    pub pool: String,
    pub status: String,
    pub mode: String,
    pub proxy_number: String,
    pub geo_match: String,
    pub participants: Vec<ParticipantView>,
    pub created_at: String,
    pub expires_at: String,
    pub closed_at: Option<String>,
    pub close_reason: Option<String>,
    pub metadata: BTreeMap<String, String>,
    #[serde(flatten)]
    pub options: OptionsView,
    /// `pin` for a session whose participants reach each other by PIN on a shared number.
    #[serde(default)]
    pub access: Access,
    /// Each participant's PIN to reach the other, while a PIN session is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pins: Option<Vec<PinView>>,
}

/// The PIN one participant types to reach the other.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PinView {
    /// The participant's number; gone once they are erased (and their PIN with it).
    pub participant: Option<String>,
    pub label: Option<String>,
    pub pin: String,
}

/// A session's options as the API shows them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OptionsView {
    #[serde(default)]
    pub record: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_channels: Option<RecordChannels>,
    #[serde(default)]
    pub max_call_secs: Option<u32>,
    #[serde(default)]
    pub idle_ttl_secs: Option<u32>,
    /// When the session ends unless a call or text comes first; while it is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_expires_at: Option<String>,
}

impl OptionsView {
    pub fn of(o: &SessionOptions, open: bool) -> Self {
        OptionsView {
            record: o.record.is_some(),
            record_channels: o.record,
            max_call_secs: o.max_call_secs,
            idle_ttl_secs: o.idle_ttl_secs,
            idle_expires_at: o.idle_until.filter(|_| open).map(crate::domain::rfc3339),
        }
    }
}

/// How many numbers a pool holds, by state.
#[derive(Clone, Debug, Serialize)]
pub struct NumberCounts {
    pub total: i64,
    pub active: i64,
    pub draining: i64,
}

/// A pool as the API shows it: its policy, its numbers and its open sessions.
#[derive(Clone, Debug, Serialize)]
pub struct PoolView {
    pub name: String,
    #[serde(flatten)]
    pub policy: PoolPolicy,
    pub numbers: NumberCounts,
    pub open_sessions: i64,
}

/// A proxy number as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct NumberView {
    pub number: String,
    pub capabilities: Vec<&'static str>,
    pub state: NumberState,
    pub open_sessions: i64,
    /// Sessions holding the number: the open ones and those cooling off.
    pub holding_sessions: i64,
}

/// A number a bulk add left out, with the code saying why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub number: String,
    pub code: &'static str,
}

/// What a bulk add of numbers did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AddReport {
    pub added: Vec<String>,
    pub skipped: Vec<Skipped>,
}

/// What hush answers an inbound call or text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Connect {
        session_id: String,
        caller_id: E164,
        to: E164,
        /// Recording and time limit for the dial.
        call: CallOptions,
    },
    Relay {
        session_id: String,
        from: E164,
        to: E164,
    },
    Announce {
        message: String,
    },
    /// Ask the caller for a PIN: the number carries PIN sessions and the caller has no route
    /// of their own there, or has one and PIN sessions too (then silence connects the route).
    /// What the caller types comes back on the dialect's [`Hook::Digits`] path, at
    /// [`digits_url`] for this `attempt`.
    ///
    /// [`Hook::Digits`]: crate::relay::dialect::Hook::Digits
    /// [`digits_url`]: crate::relay::dialect::digits_url
    Gather {
        /// How many digits a PIN has: the provider stops listening once that many came.
        digits: u8,
        /// Which prompt this is for the call, from 1.
        attempt: u8,
        /// Seconds of silence after which the provider reports that nothing was typed.
        timeout_secs: u32,
        /// What the caller hears first.
        prompt: String,
    },
}

/// What the relay answers an inbound call or text, and the interaction it recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayOutcome {
    pub decision: Decision,
    /// The interaction this call or text is, when it reached a session.
    pub interaction: Option<String>,
    /// True when the provider sent this call or message id before.
    pub replay: bool,
    /// True while the pool's intercept has not decided this interaction: the first request
    /// asks the app, a retry meanwhile gets the pool's fallback.
    pub pending: bool,
    /// How the caller reached the session.
    pub access: Access,
    /// The text to relay when it is not the one that came: a text that opened with a PIN
    /// goes on without it.
    pub body: Option<String>,
}

/// What the app's intercept decided for an interaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InterceptVerdict {
    Allowed,
    /// Blocked, answered with this message or, for `None`, the pool's message.
    Blocked(Option<String>),
}

/// One call or text through a session. Holds no numbers and no message body.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct InteractionView {
    pub id: String,
    pub kind: &'static str,
    /// The participant who called or texted; for one the app started, the other side of
    /// the participant it reached (whom the proxy number stands for).
    pub from_participant: u8,
    pub initiated_by: Initiator,
    /// `pin` for an interaction of a PIN session.
    pub access: Access,
    pub status: String,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u32>,
    pub provider: String,
    pub provider_ref: String,
    /// The provider's recording of the call, once it reported one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<super::RecordingView>,
}

/// What the relay asks the app's intercept, and what it does without an answer.
#[derive(Clone, Debug)]
pub struct InterceptPlan {
    pub url: String,
    pub timeout_ms: u32,
    pub fallback: InterceptFallback,
    pub secrets: Vec<String>,
    /// The `webhook-id` of the question.
    pub id: String,
    pub body: String,
    /// The pool's out-of-session message, for a block without a message of its own.
    pub message: String,
}
