//! Texts the app sends to a participant from the session's proxy number, and the sealed form
//! of every text waiting in the outbound queue (relayed ones too). The relay's outbound
//! worker sends them; here an app's text is checked, then recorded as an interaction and
//! queued in one script, so it is either both or neither.

use serde::{Deserialize, Serialize};

use crate::crypto::CryptoError;
use crate::domain::{Access, E164, SessionId};
use crate::store::AppTextQueued;

use super::{Broker, BrokerError, InteractionView, PROVIDER_REF_TTL_MS, Result};

/// Which provider's API sends a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Twilio,
    Telnyx,
    Plivo,
    Vonage,
}

impl Via {
    pub const ALL: [Via; 4] = [Via::Twilio, Via::Telnyx, Via::Plivo, Via::Vonage];

    /// The provider's name, as interactions, pools and metrics spell it.
    pub fn label(self) -> &'static str {
        match self {
            Via::Twilio => "twilio",
            Via::Telnyx => "telnyx",
            Via::Plivo => "plivo",
            Via::Vonage => "vonage",
        }
    }

    pub fn parse(name: &str) -> Option<Via> {
        Via::ALL.into_iter().find(|v| v.label() == name)
    }

    /// Its letter in a sealed queue record; Telnyx's and Vonage's predate the others.
    fn code(self) -> &'static str {
        match self {
            Via::Telnyx => "t",
            Via::Vonage => "v",
            Via::Twilio => "w",
            Via::Plivo => "p",
        }
    }

    /// The hook a provider posts delivery reports to when a text names its own report URL
    /// (Twilio's `StatusCallback`, Plivo's `url`); Telnyx and Vonage report to the URL set
    /// in their consoles, and hush finds the text by the provider's message id instead.
    pub fn status_path(self) -> Option<&'static str> {
        match self {
            Via::Twilio => Some("/hooks/twilio/status"),
            Via::Plivo => Some("/hooks/plivo/status"),
            Via::Telnyx | Via::Vonage => None,
        }
    }
}

/// One text to send: from a proxy number to a participant.
#[derive(Clone, Debug)]
pub struct OutboundSms {
    pub via: Via,
    pub from: E164,
    pub to: E164,
    pub text: String,
    pub media: Vec<String>,
    /// Unique per text: sending is idempotent on it. Written `<provider>:<reference>`, the
    /// reference naming the interaction, so the worker can mark it.
    pub key: String,
    /// Where the provider is asked to post its delivery reports, for providers that take
    /// one per message.
    pub report_url: Option<String>,
}

/// The sealed form of a queued text.
#[derive(Serialize, Deserialize)]
struct Record {
    /// [`Via::code`].
    v: String,
    f: String,
    t: String,
    x: String,
    #[serde(default)]
    m: Vec<String>,
    k: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
}

const PURPOSE: &str = "outbox";

/// The most characters a text the app sends may hold: ten concatenated SMS segments, the
/// most Twilio accepts in one message.
pub const TEXT_MAX_CHARS: usize = 1600;

/// Whom the app's text goes to: a participant's number or label.
#[derive(Clone, Debug)]
pub enum Recipient {
    Number(E164),
    Label(String),
}

/// A text the app asks hush to send in a session.
#[derive(Clone, Debug)]
pub struct AppText {
    pub to: Recipient,
    pub body: String,
}

impl Broker {
    /// Seals a text for the queue: numbers and body are never stored in clear.
    pub fn seal_text(&self, msg: &OutboundSms) -> String {
        let record = Record {
            v: msg.via.code().into(),
            f: msg.from.reveal().into(),
            t: msg.to.reveal().into(),
            x: msg.text.clone(),
            m: msg.media.clone(),
            k: msg.key.clone(),
            u: msg.report_url.clone(),
        };
        let plain = serde_json::to_vec(&record).expect("a text record serialises");
        self.inner.crypto.seal(PURPOSE, &plain)
    }

    pub fn open_text(&self, sealed: &str) -> Result<OutboundSms, CryptoError> {
        let plain = self.inner.crypto.open(PURPOSE, sealed)?;
        let r: Record = serde_json::from_slice(&plain).map_err(|_| CryptoError::Corrupt)?;
        let number = |s: &str| E164::parse_syntax(s).map_err(|_| CryptoError::Corrupt);
        Ok(OutboundSms {
            via: Via::ALL
                .into_iter()
                .find(|v| v.code() == r.v)
                .ok_or(CryptoError::Corrupt)?,
            from: number(&r.f)?,
            to: number(&r.t)?,
            text: r.x,
            media: r.m,
            key: r.k,
            report_url: r.u,
        })
    }

    /// A queued text's id: a keyed digest of its key, so the same key queues once.
    pub fn text_id(&self, key: &str) -> String {
        self.inner.crypto.digest(PURPOSE, key.as_bytes())
    }

    /// The reference of an app's text sent under an idempotency key (its digest and the
    /// request's fingerprint): the same key and body (of the same API key) always name the
    /// same text, so a retry finds it instead of sending a second one.
    pub fn text_reference(&self, idempotency: Option<&str>) -> String {
        match idempotency {
            Some(digest) => format!(
                "app_{}",
                self.inner.crypto.digest("app-text", digest.as_bytes())
            ),
            None => format!("app_{}", SessionId::new(0, 0).key()),
        }
    }

    /// Sends a text from the session's proxy number to one of its participants: checks the
    /// request, picks the provider (the pool's, or the only one with API credentials among
    /// `available`), then records the interaction and queues the text in one step. A second
    /// call with the same `reference` queues nothing and answers the first call's
    /// interaction.
    pub async fn send_text(
        &self,
        id: &SessionId,
        text: &AppText,
        available: &[Via],
        public_url: &str,
        reference: &str,
    ) -> Result<InteractionView> {
        let chars = text.body.chars().count();
        if text.body.trim().is_empty() || chars > TEXT_MAX_CHARS {
            return Err(BrokerError::Validation(format!(
                "body must hold 1 to {TEXT_MAX_CHARS} characters"
            )));
        }
        // Whether the session is still open is the script's to say, after it has looked
        // for this reference: a retry of a text queued before the session ended gets its
        // interaction, not a refusal.
        let (shard, rec) = self.record(id).await?;
        let get = |k: &str| rec.get(k).map(String::as_str).unwrap_or("");
        if get("m") == "v" {
            return Err(BrokerError::Validation(
                "the session relays calls only; texts need mode sms or voice_sms".into(),
            ));
        }
        let blob = self.open_blob(&rec)?;
        let side = match &text.to {
            // Compared by blind index: the number itself is never matched in clear.
            Recipient::Number(n) => {
                let idx = self.idx(n);
                [get("a"), get("b")]
                    .iter()
                    .position(|s| !s.is_empty() && **s == idx)
            }
            Recipient::Label(l) => {
                let found: Vec<usize> = (0..2)
                    .filter(|&i| {
                        blob.p[i].l.as_deref() == Some(l.as_str()) && blob.p[i].n.is_some()
                    })
                    .collect();
                (found.len() == 1).then(|| found[0])
            }
        };
        let Some(side) = side else {
            return Err(BrokerError::NotAParticipant);
        };
        let to = blob.p[side]
            .n
            .as_deref()
            .and_then(|n| E164::parse_syntax(n).ok())
            .ok_or(BrokerError::NotAParticipant)?;
        let proxy = E164::parse_syntax(get("n")).map_err(|_| CryptoError::Corrupt)?;
        let (pool, policy) = self
            .pool_policy_cached(id.pool_id)
            .await?
            .ok_or(BrokerError::SessionNotFound)?;
        let via = choose(pool_provider(&policy), available, &pool.name)?;
        let key = format!("{}:{reference}", via.label());
        let msg = OutboundSms {
            via,
            from: proxy.clone(),
            to,
            text: text.body.clone(),
            media: Vec::new(),
            key: key.clone(),
            report_url: via
                .status_path()
                .map(|p| format!("{public_url}{p}?ref={reference}")),
        };
        let from_side = 1 - side;
        let interaction = format!("int_{}", SessionId::new(0, 0).key());
        let event = policy.callback_url.is_some().then(|| {
            self.draft(
                "interaction.started",
                serde_json::json!({
                    "session_id": id.to_string(),
                    "interaction_id": interaction,
                    "kind": "sms",
                    "initiated_by": "app",
                    // As for a call the app starts: by the session's id, recorded as direct.
                    "access": Access::Direct.as_str(),
                    "from_participant": from_side,
                    "pool": pool.name,
                    "proxy_number": proxy.reveal(),
                    "provider": via.label(),
                }),
                None,
            )
        });
        let queued = self
            .inner
            .store
            .app_text(
                &shard,
                &id.key(),
                &self.idx(&msg.to),
                side as u8,
                &interaction,
                via.label(),
                reference,
                PROVIDER_REF_TTL_MS,
                &self.text_id(&key),
                &self.seal_text(&msg),
                event.as_ref(),
            )
            .await?;
        let iid = match queued {
            AppTextQueued::Queued(iid) | AppTextQueued::Again(iid) => iid,
            AppTextQueued::Closed => return Err(BrokerError::SessionClosed),
            AppTextQueued::Stranger => return Err(BrokerError::NotAParticipant),
            AppTextQueued::Missing => return Err(BrokerError::SessionNotFound),
        };
        self.interactions(id)
            .await?
            .into_iter()
            .find(|i| i.id == iid)
            .ok_or(BrokerError::SessionNotFound)
    }
}

impl Broker {
    /// [`Broker::send_text`] under an `Idempotency-Key`: the key names the text, so however
    /// often the request comes (in turn, at once, or after a request died half way) the
    /// text is queued once, and every retry gets the first answer.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_text_idempotent(
        &self,
        principal: &str,
        key: &str,
        body: &[u8],
        id: &SessionId,
        text: &AppText,
        available: &[Via],
        public_url: &str,
    ) -> Result<super::IdemAnswer> {
        // The session is in the path, not the body: the fingerprint holds both, so the same
        // key and body for another session is a conflict, not a replay.
        let mut fingerprint = format!("{id}\n").into_bytes();
        fingerprint.extend_from_slice(body);
        let ticket = match self.idem_begin(principal, key, &fingerprint).await? {
            super::IdemStart::Replay(body) => {
                return Ok(super::IdemAnswer {
                    body,
                    replayed: true,
                });
            }
            super::IdemStart::Run(ticket) => ticket,
        };
        // The body is in it too: the same key with other words, once its record is gone
        // (after 24 hours), is another text.
        let reference =
            self.text_reference(Some(&format!("{}\n{}", ticket.digest, ticket.fingerprint)));
        let outcome = self
            .idem_leased(
                &ticket,
                self.send_text(id, text, available, public_url, &reference),
            )
            .await;
        match outcome {
            Ok(view) => {
                let body = serde_json::to_string(&view).expect("interaction view serialises");
                self.idem_finish(&ticket, &body, &[]).await?;
                Ok(super::IdemAnswer {
                    body,
                    replayed: false,
                })
            }
            Err(e) => {
                let lease = super::idempotency::lease_after(&e);
                if let Err(release) = self.idem_release(&ticket, lease).await {
                    tracing::warn!(error = %release, "idempotency key not released");
                }
                Err(e)
            }
        }
    }
}

/// The provider a pool names for the texts hush sends, if any.
fn pool_provider(policy: &crate::domain::PoolPolicy) -> Option<&str> {
    policy.provider.as_deref()
}

/// The provider that sends: the pool's, which must have API credentials, or else the only
/// provider that has them.
fn choose(named: Option<&str>, available: &[Via], pool: &str) -> Result<Via> {
    match named {
        Some(name) => Via::parse(name)
            .filter(|v| available.contains(v))
            .ok_or_else(|| {
                BrokerError::ProviderUnavailable(format!(
                    "pool `{pool}` sends through {name}, whose API credentials are not configured"
                ))
            }),
        None => match available {
            [one] => Ok(*one),
            [] => Err(BrokerError::ProviderUnavailable(
                "no provider has API credentials configured to send texts".into(),
            )),
            _ => Err(BrokerError::ProviderAmbiguous(pool.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pools_provider_wins_else_the_only_one_configured() {
        let all = [Via::Twilio, Via::Plivo];
        assert_eq!(choose(Some("plivo"), &all, "p").unwrap(), Via::Plivo);
        assert!(matches!(
            choose(Some("vonage"), &all, "p"),
            Err(BrokerError::ProviderUnavailable(_))
        ));
        assert!(matches!(
            choose(None, &all, "p"),
            Err(BrokerError::ProviderAmbiguous(_))
        ));
        assert_eq!(choose(None, &[Via::Telnyx], "p").unwrap(), Via::Telnyx);
        assert!(matches!(
            choose(None, &[], "p"),
            Err(BrokerError::ProviderUnavailable(_))
        ));
        for v in Via::ALL {
            assert_eq!(Via::parse(v.label()), Some(v));
        }
    }
}
