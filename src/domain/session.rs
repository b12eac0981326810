//! Session vocabulary: modes, status and why a session ended.

use serde::{Deserialize, Serialize};

/// What a session relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Voice,
    Sms,
    VoiceSms,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Voice => "voice",
            Mode::Sms => "sms",
            Mode::VoiceSms => "voice_sms",
        }
    }
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "voice" => Some(Mode::Voice),
            "sms" => Some(Mode::Sms),
            "voice_sms" => Some(Mode::VoiceSms),
            _ => None,
        }
    }
    /// Stored form, and the load-index class a number needs for this mode.
    pub fn code(&self) -> &'static str {
        match self {
            Mode::Voice => "v",
            Mode::Sms => "s",
            Mode::VoiceSms => "b",
        }
    }
    pub fn from_code(c: &str) -> Option<Mode> {
        match c {
            "v" => Some(Mode::Voice),
            "s" => Some(Mode::Sms),
            "b" => Some(Mode::VoiceSms),
            _ => None,
        }
    }
    pub fn allows(&self, kind: Kind) -> bool {
        matches!(
            (self, kind),
            (Mode::VoiceSms, _) | (Mode::Voice, Kind::Voice) | (Mode::Sms, Kind::Sms)
        )
    }
}

/// What an inbound interaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Voice,
    Sms,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    Closed,
    Expired,
    Erased,
}

impl CloseReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            CloseReason::Closed => "closed",
            CloseReason::Expired => "expired",
            CloseReason::Erased => "erased",
        }
    }
    pub fn parse(s: &str) -> Option<CloseReason> {
        match s {
            "closed" => Some(CloseReason::Closed),
            "expired" => Some(CloseReason::Expired),
            "erased" => Some(CloseReason::Erased),
            _ => None,
        }
    }
}
