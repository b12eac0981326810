//! Pool policy and the rules allocation follows.

use serde::{Deserialize, Serialize};

use super::session::RecordChannels;

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

/// Whether a new session may reuse the number its pair last shared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberSelection {
    /// The pair's last shared number when it is free: a returning caller sees a number
    /// they know.
    #[default]
    PreferSticky,
    /// Never the pair's last shared number while another is free: a number once shared
    /// does not lead back to the same person.
    AvoidSticky,
}

impl NumberSelection {
    pub fn as_str(&self) -> &'static str {
        match self {
            NumberSelection::PreferSticky => "prefer_sticky",
            NumberSelection::AvoidSticky => "avoid_sticky",
        }
    }
    pub fn parse(s: &str) -> Option<NumberSelection> {
        match s {
            "prefer_sticky" => Some(NumberSelection::PreferSticky),
            "avoid_sticky" => Some(NumberSelection::AvoidSticky),
            _ => None,
        }
    }
}

/// Whether a pool gives sessions a PIN on a shared number instead of a number of their own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinMode {
    /// Never: a pair with no number free gets `pool_exhausted`.
    #[default]
    Off,
    /// Only when no number is free for the pair.
    Fallback,
    /// Every session.
    Always,
}

impl PinMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            PinMode::Off => "off",
            PinMode::Fallback => "fallback",
            PinMode::Always => "always",
        }
    }
    pub fn parse(s: &str) -> Option<PinMode> {
        match s {
            "off" => Some(PinMode::Off),
            "fallback" => Some(PinMode::Fallback),
            "always" => Some(PinMode::Always),
            _ => None,
        }
    }
}

/// The providers hush speaks, by the names their hooks and interactions carry.
pub const PROVIDERS: [&str; 4] = ["twilio", "telnyx", "plivo", "vonage"];

/// What a pool promises its sessions, and where it tells the app about them. Serialised as
/// the API shows it, inside the pool's view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    /// How many shards the pool's numbers and sessions are spread over. It only grows:
    /// numbers never move, so a shard once used keeps its numbers for good.
    pub shards: u16,
    /// Whether the provider records the pool's calls (sessions may say otherwise).
    pub record: bool,
    pub record_channels: RecordChannels,
    /// The dialled leg of a call is cut after this long.
    pub max_call_secs: Option<u32>,
    /// A session also ends when this long passes without an interaction.
    pub idle_ttl_secs: Option<u32>,
    /// Which provider's API sends what hush starts itself (texts and calls the app asks
    /// for); none means the only provider configured.
    pub provider: Option<String>,
    pub number_selection: NumberSelection,
    /// PIN sessions: when a session gets a PIN on a shared number instead of a route.
    pub pin: PinMode,
    /// Digits in a PIN.
    pub pin_length: u8,
    /// How long a caller who also holds a route of their own on the number is given to start
    /// typing a PIN before that route connects; for other callers, how long each prompt waits.
    pub pin_prompt_timeout_secs: u32,
    /// Prompts after a wrong PIN before the out-of-session answer.
    pub pin_retry: u8,
    /// Whether only the participant a PIN was given to can use it (their caller ID must be
    /// known and theirs); off, any caller with the PIN gets through, withheld ones too.
    pub pin_caller_check: bool,
    /// Wrong PINs one caller may type on one number within a minute before every further
    /// try is refused.
    pub pin_failure_limit: u8,
    /// What a caller hears when asked for a PIN.
    pub pin_prompt: String,
    /// The reply to a text that needs a PIN and does not open with a right one.
    pub pin_text_prompt: String,
}

impl PoolPolicy {
    pub const TTL_RANGE: std::ops::RangeInclusive<u32> = 60..=2_592_000;
    pub const COOLOFF_RANGE: std::ops::RangeInclusive<u32> = 0..=604_800;
    pub const MESSAGE_MAX: usize = 1000;
    pub const DEFAULT_MESSAGE: &'static str = "This number is no longer in service for you.";
    pub const INTERCEPT_TIMEOUT_MAX_MS: u32 = 5000;
    pub const SHARDS_MAX: u16 = 64;
    pub const MAX_CALL_RANGE: std::ops::RangeInclusive<u32> = 1..=14_400;
    pub const IDLE_TTL_RANGE: std::ops::RangeInclusive<u32> = 60..=2_592_000;
    pub const PIN_LENGTH_RANGE: std::ops::RangeInclusive<u8> = 4..=8;
    /// Vonage's `input` waits at most 10 s; one range for every provider keeps a pool's
    /// behaviour the same whichever carries its calls.
    pub const PIN_TIMEOUT_RANGE: std::ops::RangeInclusive<u32> = 1..=10;
    pub const PIN_RETRY_MAX: u8 = 5;
    pub const PIN_FAILURE_LIMIT_RANGE: std::ops::RangeInclusive<u8> = 1..=100;
    pub const DEFAULT_PIN_PROMPT: &'static str = "Please enter your PIN.";
    pub const DEFAULT_PIN_TEXT_PROMPT: &'static str =
        "Start your message with your PIN, then a space.";

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
        if !(1..=Self::SHARDS_MAX).contains(&self.shards) {
            return Err("shards must be between 1 and 64".into());
        }
        if self
            .max_call_secs
            .is_some_and(|s| !Self::MAX_CALL_RANGE.contains(&s))
        {
            return Err("max_call_secs must be between 1 and 14400".into());
        }
        if self
            .idle_ttl_secs
            .is_some_and(|s| !Self::IDLE_TTL_RANGE.contains(&s))
        {
            return Err("idle_ttl_secs must be between 60 and 2592000".into());
        }
        if let Some(p) = &self.provider
            && !PROVIDERS.contains(&p.as_str())
        {
            return Err("provider must be twilio, telnyx, plivo or vonage".into());
        }
        if !Self::PIN_LENGTH_RANGE.contains(&self.pin_length) {
            return Err("pin_length must be between 4 and 8".into());
        }
        if !Self::PIN_TIMEOUT_RANGE.contains(&self.pin_prompt_timeout_secs) {
            return Err("pin_prompt_timeout_secs must be between 1 and 10".into());
        }
        if self.pin_retry > Self::PIN_RETRY_MAX {
            return Err("pin_retry must be between 0 and 5".into());
        }
        if !Self::PIN_FAILURE_LIMIT_RANGE.contains(&self.pin_failure_limit) {
            return Err("pin_failure_limit must be between 1 and 100".into());
        }
        for (name, text) in [
            ("pin_prompt", &self.pin_prompt),
            ("pin_text_prompt", &self.pin_text_prompt),
        ] {
            if text.trim().is_empty() || text.len() > Self::MESSAGE_MAX {
                return Err(format!("{name} must hold 1 to 1000 bytes"));
            }
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
            shards: 1,
            record: false,
            record_channels: RecordChannels::Dual,
            max_call_secs: None,
            idle_ttl_secs: None,
            provider: None,
            number_selection: NumberSelection::PreferSticky,
            pin: PinMode::Off,
            pin_length: 6,
            pin_prompt_timeout_secs: 4,
            pin_retry: 2,
            pin_caller_check: true,
            pin_failure_limit: 5,
            pin_prompt: PoolPolicy::DEFAULT_PIN_PROMPT.into(),
            pin_text_prompt: PoolPolicy::DEFAULT_PIN_TEXT_PROMPT.into(),
        }
    }
}

/// What allocation knows of one shard when it orders a pool's shards: its active numbers
/// (added, not draining) and its open sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardLoad {
    pub active: i64,
    pub open: i64,
}

/// The order a new session tries a pool's shards in. First `sticky`, the shard where the two
/// participants last shared a number; then the shards with active numbers, fewest open
/// sessions per active number first; then those without any (a number may have been added
/// since they were read). Ties go in the pair's own rotation from `start`, so equal shards
/// share the pairs between them instead of all pairs crowding the first one.
pub fn shard_order(loads: &[ShardLoad], sticky: Option<u16>, start: u16) -> Vec<u16> {
    let n = loads.len() as u16;
    let mut order: Vec<u16> = (0..n).filter(|&s| Some(s) != sticky).collect();
    let rotation = |s: u16| (s + n - start % n.max(1)) % n.max(1);
    order.sort_by(|&x, &y| {
        let (a, b) = (loads[x as usize], loads[y as usize]);
        let empty = |l: ShardLoad| l.active <= 0;
        empty(a)
            .cmp(&empty(b))
            // a.open / a.active against b.open / b.active, without division.
            .then((a.open as i128 * b.active as i128).cmp(&(b.open as i128 * a.active as i128)))
            .then(rotation(x).cmp(&rotation(y)))
    });
    if let Some(s) = sticky.filter(|&s| s < n) {
        order.insert(0, s);
    }
    order
}

/// The shard a new number goes to: the one with the fewest numbers, the lowest index among
/// equals, so the shards a grow adds fill first and adding is repeatable.
pub fn emptiest_shard(totals: &[i64]) -> u16 {
    (0..totals.len())
        .min_by_key(|&s| (totals[s], s))
        .unwrap_or(0) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn load(active: i64, open: i64) -> ShardLoad {
        ShardLoad { active, open }
    }

    #[test]
    fn sticky_first_then_least_loaded_then_empty() {
        let loads = [load(2, 10), load(0, 0), load(4, 4), load(2, 1)];
        assert_eq!(shard_order(&loads, None, 0), vec![3, 2, 0, 1]);
        assert_eq!(shard_order(&loads, Some(0), 0), vec![0, 3, 2, 1]);
    }

    #[test]
    fn ties_follow_the_pair_rotation() {
        let loads = [load(1, 0); 4];
        assert_eq!(shard_order(&loads, None, 2), vec![2, 3, 0, 1]);
        assert_eq!(shard_order(&loads, None, 0), vec![0, 1, 2, 3]);
    }

    #[test]
    fn new_numbers_go_to_the_emptiest_shard() {
        assert_eq!(emptiest_shard(&[5, 0, 0, 3]), 1);
        assert_eq!(emptiest_shard(&[2, 2]), 0);
        assert_eq!(emptiest_shard(&[]), 0);
    }

    proptest! {
        #[test]
        fn every_shard_is_tried_once(
            raw in proptest::collection::vec((0i64..50, 0i64..500), 1..64),
            sticky in proptest::option::of(0u16..80),
            start in 0u16..64,
        ) {
            let loads: Vec<ShardLoad> = raw.iter().map(|&(a, o)| load(a, o)).collect();
            let mut order = shard_order(&loads, sticky, start);
            if let Some(s) = sticky.filter(|&s| (s as usize) < loads.len()) {
                prop_assert_eq!(order[0], s);
            }
            // Past the sticky shard, no shard with room comes after a busier one.
            let rest: Vec<u16> = order.iter().copied().skip(usize::from(sticky.is_some_and(|s| (s as usize) < loads.len()))).collect();
            for w in rest.windows(2) {
                let (a, b) = (loads[w[0] as usize], loads[w[1] as usize]);
                if a.active > 0 && b.active > 0 {
                    prop_assert!(a.open * b.active <= b.open * a.active);
                }
                prop_assert!(!(a.active <= 0 && b.active > 0));
            }
            order.sort();
            prop_assert_eq!(order, (0..loads.len() as u16).collect::<Vec<_>>());
        }
    }
}
