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

/// What a pool promises its sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolPolicy {
    pub default_ttl_secs: u32,
    pub cooloff_secs: u32,
    pub geo_match: GeoMatch,
    pub out_of_session_message: String,
}

impl PoolPolicy {
    pub const TTL_RANGE: std::ops::RangeInclusive<u32> = 60..=2_592_000;
    pub const COOLOFF_RANGE: std::ops::RangeInclusive<u32> = 0..=604_800;
    pub const MESSAGE_MAX: usize = 1000;
    pub const DEFAULT_MESSAGE: &'static str = "This number is no longer in service for you.";
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            default_ttl_secs: 3600,
            cooloff_secs: 3600,
            geo_match: GeoMatch::Country,
            out_of_session_message: PoolPolicy::DEFAULT_MESSAGE.into(),
        }
    }
}
