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

/// How a recorded call is recorded: one channel per party (the default), or both mixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RecordChannels {
    #[default]
    Dual,
    Mono,
}

impl RecordChannels {
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordChannels::Dual => "dual",
            RecordChannels::Mono => "mono",
        }
    }
    pub fn parse(s: &str) -> Option<RecordChannels> {
        match s {
            "dual" => Some(RecordChannels::Dual),
            "mono" => Some(RecordChannels::Mono),
            _ => None,
        }
    }
}

/// What a connected call carries into the provider's dial: whether the provider records it
/// (and how), and how long the dialled leg may last. Both come from the session, which took
/// them from its pool's policy unless the app chose otherwise at creation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallOptions {
    pub record: Option<RecordChannels>,
    pub max_call_secs: Option<u32>,
}

/// What a session was created with beyond its numbers and times, as its record keeps them
/// (the record's last field, `r`/`rm`, `l<secs>`, `d<secs>`, `w<ms>` joined by `,`; empty
/// when none is set, so a plain session costs one separator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionOptions {
    pub record: Option<RecordChannels>,
    pub max_call_secs: Option<u32>,
    /// The session ends when this long passes without an interaction.
    pub idle_ttl_secs: Option<u32>,
    /// When it ends for idleness unless an interaction comes first (ms since the epoch).
    pub idle_until: Option<i64>,
}

impl SessionOptions {
    pub fn parse(raw: &str) -> SessionOptions {
        let mut o = SessionOptions::default();
        for token in raw.split(',').filter(|t| !t.is_empty()) {
            let (tag, value) = token.split_at(1);
            match tag {
                "r" => {
                    o.record = Some(if value == "m" {
                        RecordChannels::Mono
                    } else {
                        RecordChannels::Dual
                    })
                }
                "l" => o.max_call_secs = value.parse().ok(),
                "d" => o.idle_ttl_secs = value.parse().ok(),
                "w" => o.idle_until = value.parse().ok(),
                // Written by a later version: ignored, not refused, so reading never fails.
                _ => {}
            }
        }
        o
    }

    /// The stored form (what the create script writes; `w` is the script's to set).
    pub fn encode(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        match self.record {
            Some(RecordChannels::Dual) => out.push("r".into()),
            Some(RecordChannels::Mono) => out.push("rm".into()),
            None => {}
        }
        if let Some(l) = self.max_call_secs {
            out.push(format!("l{l}"));
        }
        if let Some(d) = self.idle_ttl_secs {
            out.push(format!("d{d}"));
        }
        if let Some(w) = self.idle_until {
            out.push(format!("w{w}"));
        }
        out.join(",")
    }

    pub fn call(&self) -> CallOptions {
        CallOptions {
            record: self.record,
            max_call_secs: self.max_call_secs,
        }
    }
}

/// What an interaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Voice,
    Sms,
}

/// Who started an interaction: a participant calling or texting the proxy number, or the
/// app asking hush to reach a participant from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Initiator {
    Participant,
    App,
}

impl Initiator {
    pub fn as_str(self) -> &'static str {
        match self {
            Initiator::Participant => "participant",
            Initiator::App => "app",
        }
    }
}

/// How the interaction a stored code names reached its session.
pub fn interaction_access(code: &str) -> Access {
    if code.len() == 2 {
        Access::Pin
    } else {
        Access::Direct
    }
}

/// How a caller reached a session: by a route of their own on the proxy number, or by typing
/// the session's PIN on a number shared by many (see `pin` in the pool policy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    #[default]
    Direct,
    Pin,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Direct => "direct",
            Access::Pin => "pin",
        }
    }
}

/// The first field of a stored interaction record: `v`/`s` for a call or text a participant
/// started, upper case when the app started it. Records written before the app could start
/// any read as a participant's.
pub fn interaction_code(kind: Kind, by: Initiator) -> &'static str {
    match (kind, by) {
        (Kind::Voice, Initiator::Participant) => "v",
        (Kind::Sms, Initiator::Participant) => "s",
        (Kind::Voice, Initiator::App) => "V",
        (Kind::Sms, Initiator::App) => "S",
    }
}

/// Reads [`interaction_code`] back; anything else is a participant's text, as before. A
/// second letter (`p`, or `P` for a text that opened with its PIN) marks an interaction of
/// a PIN session (see [`interaction_access`]).
pub fn parse_interaction_code(code: &str) -> (Kind, Initiator) {
    match code.get(..1).unwrap_or("") {
        "v" => (Kind::Voice, Initiator::Participant),
        "V" => (Kind::Voice, Initiator::App),
        "S" => (Kind::Sms, Initiator::App),
        _ => (Kind::Sms, Initiator::Participant),
    }
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
    /// No call or text for the session's `idle_ttl_secs`.
    Idle,
}

impl CloseReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            CloseReason::Closed => "closed",
            CloseReason::Expired => "expired",
            CloseReason::Erased => "erased",
            CloseReason::Idle => "idle",
        }
    }
    pub fn parse(s: &str) -> Option<CloseReason> {
        match s {
            "closed" => Some(CloseReason::Closed),
            "expired" => Some(CloseReason::Expired),
            "erased" => Some(CloseReason::Erased),
            "idle" => Some(CloseReason::Idle),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_and_tolerate_the_unknown() {
        let o = SessionOptions {
            record: Some(RecordChannels::Mono),
            max_call_secs: Some(600),
            idle_ttl_secs: Some(900),
            idle_until: Some(1_700_000_000_000),
        };
        assert_eq!(o.encode(), "rm,l600,d900,w1700000000000");
        assert_eq!(SessionOptions::parse(&o.encode()), o);
        assert_eq!(SessionOptions::default().encode(), "");
        assert_eq!(SessionOptions::parse(""), SessionOptions::default());
        let later = SessionOptions::parse("r,q7,l30");
        assert_eq!(later.record, Some(RecordChannels::Dual));
        assert_eq!(later.max_call_secs, Some(30));
        assert_eq!(
            later.call(),
            CallOptions {
                record: Some(RecordChannels::Dual),
                max_call_secs: Some(30)
            }
        );
    }

    #[test]
    fn interaction_codes_round_trip_and_old_records_are_participants() {
        for kind in [Kind::Voice, Kind::Sms] {
            for by in [Initiator::Participant, Initiator::App] {
                assert_eq!(
                    parse_interaction_code(interaction_code(kind, by)),
                    (kind, by)
                );
            }
        }
        assert_eq!(
            parse_interaction_code("s"),
            (Kind::Sms, Initiator::Participant)
        );
    }

    #[test]
    fn a_pin_sessions_interactions_carry_their_access_in_a_second_letter() {
        for (code, kind) in [("vp", Kind::Voice), ("sp", Kind::Sms), ("sP", Kind::Sms)] {
            assert_eq!(parse_interaction_code(code), (kind, Initiator::Participant));
            assert_eq!(interaction_access(code), Access::Pin);
        }
        for code in ["v", "s", "V", "S"] {
            assert_eq!(interaction_access(code), Access::Direct);
        }
    }
}
