//! Idempotent requests: holding an `Idempotency-Key` under a lease, storing the response
//! to replay, and the idempotent session create that ties them to the session use case.

use base64::Engine as _;

use crate::crypto::CryptoError;
use crate::domain::E164;
use crate::store::{IdemBegin, Lease};

use super::{Broker, BrokerError, NewSession, Result, SessionView};

/// How long an idempotent response is replayed.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// How long a running request holds its idempotency key without renewing it: a request
/// that died (crash, lost connection) blocks its retries for no longer than this.
pub const IDEMPOTENCY_LEASE_MS: i64 = 3000;

/// An idempotent request whose key this instance holds (see [`Broker::idem_begin`]).
#[derive(Clone, Debug)]
pub struct IdemTicket {
    pub(super) digest: String,
    pub(super) fingerprint: String,
    /// Who holds the lease: only its holder renews, frees or lapses it.
    token: String,
    /// Taken over from a request that stopped: that one may have made the session already.
    pub takeover: bool,
}

/// What starting an idempotent request gave.
#[derive(Debug)]
pub enum IdemStart {
    /// Go ahead, holding the key.
    Run(IdemTicket),
    /// The stored response.
    Replay(String),
}

/// The answer of an idempotent create: the response body, and whether it repeats an earlier
/// request's answer rather than being this request's own.
#[derive(Debug)]
pub struct IdemAnswer {
    pub body: String,
    pub replayed: bool,
}

/// What an idempotent create did.
#[derive(Debug)]
pub enum Once {
    /// It made the session.
    Created(SessionView),
    /// An earlier attempt with the same key had made it.
    Found(SessionView),
}

impl Broker {
    /// Starts an idempotent request: either a stored response to replay, or a ticket that
    /// holds the key for this request (fresh, or taken over from one that stopped).
    pub async fn idem_begin(&self, principal: &str, key: &str, body: &[u8]) -> Result<IdemStart> {
        let crypto = &self.inner.crypto;
        let ticket = IdemTicket {
            digest: crypto.digest("idempotency", format!("{principal}\n{key}").as_bytes()),
            // Keyed, like every other digest hush stores: the body holds participants'
            // numbers, which a plain hash would let anyone holding the data guess.
            fingerprint: crypto.digest("idempotency-body", body),
            token: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(rand::random::<[u8; 12]>()),
            takeover: false,
        };
        let begun = self
            .inner
            .store
            .idem_begin(
                &ticket.digest,
                &ticket.fingerprint,
                &ticket.token,
                IDEMPOTENCY_LEASE_MS,
                IDEMPOTENCY_TTL_MS,
            )
            .await?;
        match begun {
            IdemBegin::Fresh => Ok(IdemStart::Run(ticket)),
            IdemBegin::Takeover => {
                tracing::info!("idempotent request taken over from one that stopped");
                Ok(IdemStart::Run(IdemTicket {
                    takeover: true,
                    ..ticket
                }))
            }
            IdemBegin::Running(_) => Err(BrokerError::IdempotencyRunning),
            IdemBegin::Conflict => Err(BrokerError::IdempotencyConflict),
            IdemBegin::Done(sealed) => {
                let plain = crypto.open("idempotency", &sealed)?;
                Ok(IdemStart::Replay(
                    String::from_utf8(plain).map_err(|_| CryptoError::Corrupt)?,
                ))
            }
        }
    }

    /// Stores the response of the request `ticket` holds, indexed under each participant it
    /// names so erasure finds it.
    pub async fn idem_finish(
        &self,
        ticket: &IdemTicket,
        response: &str,
        participants: &[&E164],
    ) -> Result<()> {
        let sealed = self.inner.crypto.seal("idempotency", response.as_bytes());
        let idxs: Vec<String> = participants.iter().map(|n| self.idx(n)).collect();
        Ok(self
            .inner
            .store
            .idem_finish(
                &ticket.digest,
                &ticket.fingerprint,
                &sealed,
                IDEMPOTENCY_TTL_MS,
                &idxs,
            )
            .await?)
    }

    /// Gives up the key as [`lease_after`] a failure says.
    pub async fn idem_release(&self, ticket: &IdemTicket, lease: Lease) -> Result<()> {
        self.inner
            .store
            .idem_lease(&ticket.digest, &ticket.token, lease)
            .await?;
        Ok(())
    }

    /// Runs `work` while keeping the lease of `ticket` alive, so a slow request is not taken
    /// over while a dead one frees its key within [`IDEMPOTENCY_LEASE_MS`]. The renewals run
    /// on a task of their own: a renewal stuck on a frozen Redis must not hold back the
    /// answer `work` already has.
    pub async fn idem_leased<T>(
        &self,
        ticket: &IdemTicket,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let every = std::time::Duration::from_millis(IDEMPOTENCY_LEASE_MS as u64 / 3);
        let store = self.inner.store.clone();
        let (digest, token) = (ticket.digest.clone(), ticket.token.clone());
        let renewer = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let renew = Lease::Renew(IDEMPOTENCY_LEASE_MS);
                if let Err(e) = store.idem_lease(&digest, &token, renew).await {
                    tracing::warn!(error = %e, "idempotency lease not renewed");
                }
            }
        });
        let out = work.await;
        renewer.abort();
        out
    }

    /// Creates a session under an `Idempotency-Key`: at most one session per key and body,
    /// whatever fails where. A retry gets the stored response, or the session that a request
    /// which died before answering made, rebuilt from its record.
    pub async fn create_session_idempotent(
        &self,
        principal: &str,
        key: &str,
        body: &[u8],
        req: NewSession,
    ) -> Result<IdemAnswer> {
        let ticket = match self.idem_begin(principal, key, body).await? {
            IdemStart::Replay(body) => {
                return Ok(IdemAnswer {
                    body,
                    replayed: true,
                });
            }
            IdemStart::Run(ticket) => ticket,
        };
        let numbers = [
            req.participants[0].number.clone(),
            req.participants[1].number.clone(),
        ];
        let outcome = self
            .idem_leased(&ticket, self.create_session_once(req, &ticket))
            .await;
        match outcome {
            Ok(once) => {
                let (view, replayed) = match once {
                    Once::Created(v) => (v, false),
                    Once::Found(v) => (v, true),
                };
                let text = serde_json::to_string(&view).expect("session view serialises");
                self.idem_finish(&ticket, &text, &[&numbers[0], &numbers[1]])
                    .await?;
                Ok(IdemAnswer {
                    body: text,
                    replayed,
                })
            }
            Err(e) => {
                let lease = lease_after(&e);
                let broker = self.clone();
                let release = async move {
                    if let Err(release) = broker.idem_release(&ticket, lease).await {
                        tracing::warn!(error = %release, "idempotency key not released");
                    }
                };
                if lease == Lease::Lapse {
                    // Redis failed: the answer does not wait for the key to be handed on,
                    // which on a Redis that is not answering would add a whole timeout; a
                    // key not handed on lapses by itself within its lease.
                    tokio::spawn(release);
                } else {
                    // Freed before the answer, so a retry right after it finds the key free.
                    release.await;
                }
                Err(e)
            }
        }
    }
}

/// How a failed request gives up its key: freed when the failure created nothing, handed to
/// the next retry at once when that cannot be known (Redis may have run the step and lost the
/// answer), so the retry looks for what was made before making anything.
pub(super) fn lease_after(failure: &BrokerError) -> Lease {
    match failure {
        BrokerError::Store(_) => Lease::Lapse,
        _ => Lease::Drop,
    }
}
