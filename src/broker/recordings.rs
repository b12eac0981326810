//! Recordings of relayed calls. A recorded call's dial names a callback URL carrying a
//! reference to its interaction, bound to it by a keyed digest, so a reference cannot be
//! forged even where the provider's signature does not cover the URL (Telnyx and Vonage sign
//! the body). The provider's report attaches the recording's URL, sealed, to the interaction
//! once, and tells the app in a `recording.completed` event. hush never fetches or keeps
//! audio: the recording stays at the provider, which the app deletes it from.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::crypto::CryptoError;
use crate::domain::{RecordChannels, SessionId};

use super::{Broker, BrokerError, Result};

/// What a provider reported about one finished recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingView {
    /// Where the provider serves the recording (its authentication applies).
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u32>,
    /// 2 when each party has a channel of its own, 1 when they are mixed.
    pub channels: u8,
    /// The provider's id of the recording, which its API deletes it by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_recording_id: Option<String>,
}

/// The reference a recording callback URL carries: the interaction, the channels hush asked
/// for, and the digest binding them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingRef {
    pub session_id: String,
    pub interaction: String,
    pub channels: u8,
    pub token: String,
}

impl RecordingRef {
    /// Reads `s`, `i`, `c` and `t` from a callback URL's query.
    pub fn from_query(query: &[(String, String)]) -> Option<RecordingRef> {
        let get = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        Some(RecordingRef {
            session_id: get("s")?.to_string(),
            interaction: get("i")?.to_string(),
            channels: match get("c")? {
                "1" => 1,
                "2" => 2,
                _ => return None,
            },
            token: get("t")?.to_string(),
        })
    }

    /// The query string: ids are base32 with `_`, the token base64url, so nothing needs
    /// escaping.
    pub fn to_query(&self) -> String {
        format!(
            "s={}&i={}&c={}&t={}",
            self.session_id, self.interaction, self.channels, self.token
        )
    }
}

/// How many channels a recording of this kind has.
pub fn channel_count(channels: RecordChannels) -> u8 {
    match channels {
        RecordChannels::Dual => 2,
        RecordChannels::Mono => 1,
    }
}

/// The longest recording URL accepted.
const MAX_URL: usize = 2048;

impl Broker {
    fn recording_token(&self, session_id: &str, interaction: &str, channels: u8) -> String {
        self.inner.crypto.digest(
            "recording-ref",
            format!("{session_id}|{interaction}|{channels}").as_bytes(),
        )
    }

    /// The reference a recorded call's dial gives its recording callback.
    pub fn recording_ref(
        &self,
        session_id: &str,
        interaction: &str,
        channels: RecordChannels,
    ) -> RecordingRef {
        let channels = channel_count(channels);
        RecordingRef {
            session_id: session_id.to_string(),
            interaction: interaction.to_string(),
            channels,
            token: self.recording_token(session_id, interaction, channels),
        }
    }

    /// Whether a reference is one hush made (compared in constant time).
    pub fn recording_ref_valid(&self, r: &RecordingRef) -> bool {
        let expected = self.recording_token(&r.session_id, &r.interaction, r.channels);
        expected.len() == r.token.len() && bool::from(expected.as_bytes().ct_eq(r.token.as_bytes()))
    }

    /// Attaches a finished recording to the interaction `r` names and records the
    /// `recording.completed` event; false when the interaction already has one (a retried
    /// callback), is gone with its session, or belongs to an erased participant.
    pub async fn recording_completed(
        &self,
        provider: &str,
        r: &RecordingRef,
        recording: RecordingView,
    ) -> Result<bool> {
        let url = &recording.url;
        if url.len() > MAX_URL
            || !(url.starts_with("https://") || url.starts_with("http://"))
            || url.bytes().any(|b| b.is_ascii_control() || b == b' ')
        {
            return Err(BrokerError::Validation(
                "the recording URL is not an http(s) URL".into(),
            ));
        }
        let id = SessionId::parse(&r.session_id).ok_or(BrokerError::SessionNotFound)?;
        let (shard, rec) = match self.record(&id).await {
            Ok(found) => found,
            Err(BrokerError::SessionNotFound) => return Ok(false),
            Err(e) => return Err(e),
        };
        let event = match self.events_policy(id.pool_id).await? {
            Some((pool, _)) => {
                let mut draft = self.draft(
                    "recording.completed",
                    serde_json::json!({
                        "session_id": r.session_id,
                        "interaction_id": r.interaction,
                        "pool": pool,
                        "proxy_number": rec.get("n"),
                        "provider": provider,
                        // The URL and the id are put in at delivery from the sealed part
                        // beside the event: they name the call at the provider.
                        "recording": {
                            "url": null,
                            "duration_secs": recording.duration_secs,
                            "channels": recording.channels,
                            "provider_recording_id": null,
                        },
                    }),
                    None,
                );
                draft.numbers = self.inner.crypto.seal(
                    "event-numbers",
                    serde_json::json!({
                        "/data/recording/url": url,
                        "/data/recording/provider_recording_id":
                            recording.provider_recording_id,
                    })
                    .to_string()
                    .as_bytes(),
                );
                Some(draft)
            }
            None => None,
        };
        let sealed = self.inner.crypto.seal(
            "recording",
            &serde_json::to_vec(&recording).expect("a recording serialises"),
        );
        Ok(self
            .inner
            .store
            .recording_put(
                &shard,
                &id.key(),
                &r.interaction,
                &sealed,
                self.now(),
                event.as_ref(),
            )
            .await?)
    }

    /// Opens a recording sealed beside an interaction.
    pub(super) fn open_recording(&self, sealed: &str) -> Result<RecordingView> {
        let plain = self.inner.crypto.open("recording", sealed)?;
        serde_json::from_slice(&plain).map_err(|_| BrokerError::Crypto(CryptoError::Corrupt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a=1&b=2` as pairs; the values here need no decoding.
    fn pairs(query: &str) -> Vec<(String, String)> {
        query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_reference_reads_back_from_its_query() {
        let r = RecordingRef {
            session_id: "ses_0000008000egxkcc25gj62qbx1".into(),
            interaction: "int_2yktsbvpmw4a8wav".into(),
            channels: 2,
            token: "AbC-_9".into(),
        };
        assert_eq!(RecordingRef::from_query(&pairs(&r.to_query())), Some(r));
        let with = |c: &str| pairs(&format!("s=a&i=b&c={c}&t=x"));
        assert_eq!(RecordingRef::from_query(&with("1")).unwrap().channels, 1);
        assert_eq!(RecordingRef::from_query(&with("3")), None);
        assert_eq!(RecordingRef::from_query(&pairs("s=a&i=b&c=2")), None);
        assert_eq!(channel_count(RecordChannels::Mono), 1);
    }
}
