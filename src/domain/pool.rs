//! Pool policy and the rules allocation follows.

use serde::{Deserialize, Serialize};

/// How closely a proxy number should match the first participant's location. Allocation
/// starts at this level and falls back to broader ones, down to any number in the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeoMatch {
    AreaCode,
    Country,
    Any,
}

impl GeoMatch {
    pub fn as_str(&self) -> &'static str {
        match self {
            GeoMatch::AreaCode => "area_code",
            GeoMatch::Country => "country",
            GeoMatch::Any => "any",
        }
    }
    pub fn parse(s: &str) -> Option<GeoMatch> {
        match s {
            "area_code" => Some(GeoMatch::AreaCode),
            "country" => Some(GeoMatch::Country),
            "any" => Some(GeoMatch::Any),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberState {
    Active,
    Draining,
}

impl NumberState {
    pub fn as_str(&self) -> &'static str {
        match self {
            NumberState::Active => "active",
            NumberState::Draining => "draining",
        }
    }
    pub fn parse(s: &str) -> Option<NumberState> {
        match s {
            "active" => Some(NumberState::Active),
            "draining" => Some(NumberState::Draining),
            _ => None,
        }
    }
}

/// What an interaction does when the app's intercept does not answer in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterceptFallback {
    Allow,
    Block,
}

/// What a pool promises its sessions, and where it tells the app about them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolPolicy {
    pub default_ttl_secs: u32,
    pub cooloff_secs: u32,
    pub geo_match: GeoMatch,
    pub out_of_session_message: String,
    /// Where events are delivered; none means the pool records no events.
    pub callback_url: Option<String>,
    /// Whether events carry the participants' real numbers (off by default).
    pub callback_include_numbers: bool,
    /// Asked before a call or text connects, when set.
    pub intercept_url: Option<String>,
    pub intercept_timeout_ms: u32,
    pub intercept_fallback: InterceptFallback,
    /// pool.low fires when this percentage of the numbers carries an open session.
    pub low_threshold_pct: u8,
}

impl PoolPolicy {
    pub const TTL_RANGE: std::ops::RangeInclusive<u32> = 60..=2_592_000;
    pub const COOLOFF_RANGE: std::ops::RangeInclusive<u32> = 0..=604_800;
    pub const MESSAGE_MAX: usize = 1000;
    pub const DEFAULT_MESSAGE: &'static str = "This number is no longer in service for you.";
    pub const INTERCEPT_TIMEOUT_MAX_MS: u32 = 5000;

    /// The first rule the policy breaks, as a sentence naming the field; the API and the
    /// command line refuse a policy with the same words.
    pub fn check(&self) -> Result<(), String> {
        if !Self::TTL_RANGE.contains(&self.default_ttl_secs) {
            return Err("default_ttl_secs must be between 60 and 2592000".into());
        }
        if !Self::COOLOFF_RANGE.contains(&self.cooloff_secs) {
            return Err("cooloff_secs must be between 0 and 604800".into());
        }
        if self.out_of_session_message.trim().is_empty()
            || self.out_of_session_message.len() > Self::MESSAGE_MAX
        {
            return Err("out_of_session_message must hold 1 to 1000 bytes".into());
        }
        if !(1..=Self::INTERCEPT_TIMEOUT_MAX_MS).contains(&self.intercept_timeout_ms) {
            return Err("intercept_timeout_ms must be between 1 and 5000".into());
        }
        if !(1..=100).contains(&self.low_threshold_pct) {
            return Err("low_threshold_pct must be between 1 and 100".into());
        }
        Ok(())
    }
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            default_ttl_secs: 3600,
            cooloff_secs: 3600,
            geo_match: GeoMatch::Country,
            out_of_session_message: PoolPolicy::DEFAULT_MESSAGE.into(),
            callback_url: None,
            callback_include_numbers: false,
            intercept_url: None,
            intercept_timeout_ms: 1500,
            intercept_fallback: InterceptFallback::Allow,
            low_threshold_pct: 80,
        }
    }
}
