//! Sessions: creating one (choosing its proxy number and claiming both routes at once),
//! reading, extending and closing it, and listing a participant's open sessions.

use std::collections::HashMap;

use crate::domain::{
    Access, CloseReason, E164, GeoMatch, Millis, Mode, NumberSelection, PinMode, PoolName,
    PoolPolicy, SessionId, SessionOptions, ShardLoad, rfc3339, shard_order,
};
use crate::store::{
    CreateArgs, CreateOutcome, Created, EndEvents, EndOp, Ended, IdemMark, PinCandidates, PoolRow,
    Refusal, ShardKeys, StoreError,
};
use crate::telemetry::METRICS;

use super::{
    Blob, BlobParticipant, Broker, BrokerError, IDEMPOTENCY_TTL_MS, IdemTicket, NewSession, Once,
    OptionsView, ParticipantView, PinView, PoolLimit, Result, SessionChoices, SessionView,
    policy_of, shard_of,
};

pub use crate::store::STICKY_WINDOW_MS;

/// Longest session a client may ask for (30 days).
pub const MAX_TTL_SECS: u32 = 2_592_000;

/// Why the number a create asked for was refused, as the app reads it. The proxy number is
/// ours and may be named; a participant only by its place in the request.
fn refused(pool: &str, number: Option<&E164>, why: Refusal) -> BrokerError {
    let Some(n) = number.map(E164::reveal) else {
        return BrokerError::Store(StoreError::Corrupt("refusal without a number asked for"));
    };
    match why {
        // Removed between the owner read and the script.
        Refusal::Missing => BrokerError::NumberNotInPool(pool.to_string()),
        Refusal::Capability => BrokerError::NumberUnavailable(format!(
            "number {n} lacks the capability this session's mode needs"
        )),
        Refusal::Draining => BrokerError::NumberUnavailable(format!("number {n} is draining")),
        Refusal::Held(side) => BrokerError::NumberUnavailable(format!(
            "number {n} is held by participants[{side}] in another session (open or cooling off)"
        )),
    }
}

/// The participants as a session view shows them: a number only while it is not erased.
/// How many PINs a side of a new PIN session may get, tried in order until one is free on
/// the number: with a 4-digit PIN on a number carrying 4,000 PIN sessions (8,000 of its
/// 10,000 PINs taken), all 16 are taken about once in 35 creates.
const PIN_CANDIDATES: usize = 16;

/// A PIN session's token among a record's options, `P<length>.<index>.<index>`: the PIN
/// length and each side's PIN index (empty once that side is erased).
fn pin_token(options: &str) -> Option<(u8, [String; 2])> {
    let token = options.split(',').find_map(|t| t.strip_prefix('P'))?;
    let mut parts = token.split('.');
    let length = parts.next()?.parse().ok()?;
    Some((
        length,
        [parts.next()?.to_string(), parts.next()?.to_string()],
    ))
}

fn participant_views(p: [BlobParticipant; 2]) -> Vec<ParticipantView> {
    p.into_iter()
        .map(|p| ParticipantView {
            number: p.n,
            label: p.l,
        })
        .collect()
}

impl Broker {
    pub async fn create_session(&self, req: NewSession) -> Result<SessionView> {
        match self.create_in(req, None).await? {
            Once::Created(view) | Once::Found(view) => Ok(view),
        }
    }

    /// Creates the session of the idempotent request `ticket` holds, unless an earlier
    /// attempt with the same key made it already; then that one is answered.
    pub async fn create_session_once(&self, req: NewSession, ticket: &IdemTicket) -> Result<Once> {
        self.create_in(req, Some(ticket)).await
    }

    /// The session an earlier attempt of `ticket`'s request made in `shard`.
    async fn made_before(
        &self,
        shard: &ShardKeys,
        session_key: &str,
        fingerprint: &str,
        ticket: &IdemTicket,
    ) -> Result<Once> {
        if fingerprint != ticket.fingerprint {
            return Err(BrokerError::IdempotencyConflict);
        }
        let id = SessionId::from_key(shard.pool_id, shard.shard, session_key)
            .ok_or(StoreError::Corrupt("idempotency marker"))?;
        // Read as it is now, ended or not: a retry must not make a second session because
        // the first one has since been closed.
        let rec = self.inner.store.session(shard, session_key).await?;
        if rec.is_empty() {
            return Err(BrokerError::SessionNotFound);
        }
        tracing::info!(session = %id, "idempotent create found the session an earlier attempt made");
        Ok(Once::Found(self.view(&id, &rec, None).await?))
    }

    async fn create_in(&self, req: NewSession, idem: Option<&IdemTicket>) -> Result<Once> {
        let [a, b] = &req.participants;
        if a.number == b.number {
            return Err(BrokerError::Validation(
                "the two participants must have different numbers".into(),
            ));
        }
        let row = self.pool_row(&req.pool).await?;
        let policy = policy_of(&row);
        let ttl = req.ttl_secs.unwrap_or(policy.default_ttl_secs);
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return Err(BrokerError::Validation(format!(
                "ttl_secs must be between 1 and {MAX_TTL_SECS}"
            )));
        }
        let now = self.now();
        let expires = now + ttl as i64 * 1000;
        let options = session_options(&policy, &req.choices, now);
        let encoded_options = options.encode();
        let (idx_a, idx_b) = (self.idx(&a.number), self.idx(&b.number));
        let blob = Blob {
            p: [
                BlobParticipant {
                    n: Some(a.number.reveal().into()),
                    l: a.label.clone(),
                },
                BlobParticipant {
                    n: Some(b.number.reveal().into()),
                    l: b.label.clone(),
                },
            ],
            m: req.metadata.clone(),
        };
        let (sealed_blob, sealed_metadata) = self.seal_blob(&blob);
        let geo = a.number.geo();
        let area_tag = geo.area_tag().unwrap_or_default();
        let country_tag = geo.country_tag();
        let mut levels = Vec::new();
        if policy.geo_match == GeoMatch::AreaCode && !area_tag.is_empty() {
            levels.push(area_tag.clone());
        }
        if policy.geo_match != GeoMatch::Any {
            levels.push(country_tag.clone());
        }
        levels.push("*".to_string());
        let levels = levels.join(",");

        // A request taken over may have made its session in any shard; each shard's script
        // only sees its own marker, so look in all of them before making one.
        if let Some(ticket) = idem.filter(|t| t.takeover && row.shards > 1) {
            let shards: Vec<ShardKeys> = (0..row.shards).map(|s| self.shard(row.id, s)).collect();
            let markers = self
                .inner
                .store
                .idem_markers(&shards, &ticket.digest)
                .await?;
            for (shard, marker) in shards.iter().zip(markers) {
                if let Some((key, fp)) = marker {
                    return self.made_before(shard, &key, &fp, ticket).await;
                }
            }
        }

        let mut pair = [idx_a.as_str(), idx_b.as_str()];
        pair.sort();
        let start = shard_of(&pair.concat(), row.shards);
        let avoid_sticky = req
            .choices
            .number_selection
            .unwrap_or(policy.number_selection)
            == NumberSelection::AvoidSticky;
        // A number asked for is tried only in the shard its owner entry names, by the same
        // script: whatever the shard holds decides, in the same step as the claim.
        let order = match &req.choices.proxy_number {
            Some(n) => match self.owner(n, true).await? {
                Some((pool_id, s)) if pool_id == row.id && s < row.shards => vec![s],
                _ => return Err(BrokerError::NumberNotInPool(row.name.clone())),
            },
            None => {
                self.allocation_order(&row, &idx_a, &idx_b, start, now, avoid_sticky)
                    .await?
            }
        };
        // The most numbers these two held in any shard that refused them: what a create
        // that ran out needed, for the pool's capacity counts.
        let mut refused_held = 0;
        // Routes first unless the pool gives every session a PIN; PINs when the pool falls
        // back to them and no shard had a number free for the pair.
        let phases: &[bool] = match policy.pin {
            PinMode::Off => &[false],
            PinMode::Fallback => &[false, true],
            PinMode::Always => &[true],
        };
        let mut tries: Vec<(u16, bool)> = Vec::new();
        for &use_pin in phases {
            tries.extend(order.iter().map(|&s| (s, use_pin)));
        }
        for (s, use_pin) in tries {
            let shard = self.shard(row.id, s);
            let id = SessionId::new(row.id, shard.shard);
            let key = id.key();
            let pin_candidates = use_pin.then(|| self.pin_candidates(&key, policy.pin_length));
            let event = policy.callback_url.is_some().then(|| {
                self.draft(
                    "session.created",
                    serde_json::json!({
                        "session_id": id.to_string(),
                        "pool": row.name,
                        "proxy_number": "__PROXY__",
                        "mode": req.mode.as_str(),
                        "participants": [{ "label": a.label }, { "label": b.label }],
                        "expires_at": rfc3339(expires),
                        "metadata": req.metadata,
                        "access": "__ACCESS__",
                    }),
                    policy.callback_include_numbers.then(|| {
                        [
                            Some(a.number.reveal().to_string()),
                            Some(b.number.reveal().to_string()),
                        ]
                    }),
                )
            });
            let low = policy.callback_url.is_some().then(|| {
                self.draft(
                    "pool.low",
                    serde_json::json!({
                        "pool": row.name,
                        "busy_numbers": "__BUSY__",
                        "total_numbers": "__TOTAL__",
                        "threshold_pct": policy.low_threshold_pct,
                    }),
                    None,
                )
            });
            let outcome = self
                .inner
                .store
                .session_create(&CreateArgs {
                    shard: &shard,
                    session_key: &key,
                    now,
                    expires,
                    cooloff_ms: policy.cooloff_secs as i64 * 1000,
                    class: req.mode.code(),
                    idx_a: &idx_a,
                    idx_b: &idx_b,
                    levels: &levels,
                    blob: &sealed_blob,
                    metadata: sealed_metadata.as_deref().unwrap_or(""),
                    options: &encoded_options,
                    sticky_window_ms: STICKY_WINDOW_MS,
                    area_tag: &area_tag,
                    country_tag: &country_tag,
                    event: event.as_ref(),
                    low: low.as_ref().map(|e| (e, policy.low_threshold_pct)),
                    idempotency: idem.map(|t| IdemMark {
                        digest: &t.digest,
                        fingerprint: &t.fingerprint,
                        ttl_ms: IDEMPOTENCY_TTL_MS,
                    }),
                    proxy_number: req.choices.proxy_number.as_ref().map(|n| n.reveal()),
                    avoid_sticky,
                    pins: pin_candidates.as_ref().map(|c| PinCandidates {
                        length: policy.pin_length,
                        side: [&c[0].1, &c[1].1],
                    }),
                })
                .await?;
            let due = match &outcome {
                Created::Ok { reap_due, .. }
                | Created::Exhausted { reap_due, .. }
                | Created::Existing { reap_due, .. }
                | Created::Refused { reap_due, .. } => *reap_due,
            };
            if let Created::Exhausted { held, .. } = &outcome {
                refused_held = refused_held.max(*held);
            }
            if due {
                let broker = self.clone();
                let shard = shard.clone();
                tokio::spawn(async move {
                    if let Err(e) = broker.reap_shard(&shard, broker.now(), 100).await {
                        tracing::warn!(error = %e, "lazy reap failed");
                    }
                });
            }
            if let (
                Created::Existing {
                    session_key,
                    fingerprint,
                    ..
                },
                Some(ticket),
            ) = (&outcome, idem)
            {
                return self
                    .made_before(&shard, session_key, fingerprint, ticket)
                    .await;
            }
            if let Created::Refused { why, .. } = outcome {
                // A number the pair holds can still carry their PIN session.
                if matches!(why, Refusal::Held(_)) && policy.pin == PinMode::Fallback && !use_pin {
                    continue;
                }
                return Err(refused(&row.name, req.choices.proxy_number.as_ref(), why));
            }
            if let Created::Ok {
                number,
                level,
                held,
                pins,
                ..
            } = outcome
            {
                let pins = match (pins, &pin_candidates) {
                    (Some(at), Some(c)) => {
                        METRICS
                            .pin_sessions_created
                            .with_label_values(&[row.name.as_str()])
                            .inc();
                        Some(
                            [0, 1]
                                .map(|side| PinView {
                                    participant: Some(
                                        req.participants[side].number.reveal().into(),
                                    ),
                                    label: req.participants[side].label.clone(),
                                    pin: c[side].0[at[side]].clone(),
                                })
                                .into(),
                        )
                    }
                    _ => None,
                };
                self.note_create(row.id, now, CreateOutcome::Created, held + 1)
                    .await;
                METRICS
                    .allocations
                    .with_label_values(&[row.name.as_str(), "ok"])
                    .inc();
                METRICS
                    .sessions_created
                    .with_label_values(&[row.name.as_str()])
                    .inc();
                tracing::info!(session = %id, pool = %row.name, proxy = %number, geo = %level, pin = use_pin, "session created");
                return Ok(Once::Created(SessionView {
                    id: id.to_string(),
                    pool: row.name.clone(),
                    status: "open".into(),
                    mode: req.mode.as_str().into(),
                    proxy_number: number,
                    geo_match: level,
                    participants: participant_views(blob.p),
                    created_at: rfc3339(now),
                    expires_at: rfc3339(expires),
                    closed_at: None,
                    close_reason: None,
                    metadata: req.metadata,
                    options: OptionsView::of(&options, true),
                    access: if pins.is_some() {
                        Access::Pin
                    } else {
                        Access::Direct
                    },
                    pins,
                }));
            }
        }
        METRICS
            .allocations
            .with_label_values(&[row.name.as_str(), "exhausted"])
            .inc();
        tracing::warn!(pool = %row.name, "pool exhausted");
        self.note_create(row.id, now, CreateOutcome::Exhausted, refused_held + 1)
            .await;
        if policy.callback_url.is_some() {
            let event = self.draft(
                "pool.exhausted",
                serde_json::json!({ "pool": row.name, "mode": req.mode.as_str() }),
                None,
            );
            self.inner
                .store
                .event_put(&self.shard(row.id, start), "pool.exhausted", &event, now)
                .await?;
        }
        Err(BrokerError::PoolExhausted(row.name))
    }

    /// The order a create tries `row`'s shards in (see [`shard_order`]): the shard where the
    /// pair last shared a number, then by load. One pipelined read of every shard's counters
    /// and sticky entry; a pool of one shard needs none. With `avoid_sticky` that shard comes
    /// last instead: the number lives there, so any other shard with a free number spares it.
    async fn allocation_order(
        &self,
        row: &PoolRow,
        idx_a: &str,
        idx_b: &str,
        start: u16,
        now: Millis,
        avoid_sticky: bool,
    ) -> Result<Vec<u16>> {
        if row.shards <= 1 {
            return Ok(vec![0]);
        }
        let shards: Vec<ShardKeys> = (0..row.shards).map(|s| self.shard(row.id, s)).collect();
        let survey = self
            .inner
            .store
            .shard_survey(&shards, Some((idx_a, idx_b)))
            .await?;
        let mut sticky: Option<(u16, Millis)> = None;
        for (s, (_, entry)) in survey.iter().enumerate() {
            let at = entry
                .as_deref()
                .and_then(|e| e.rsplit_once('|'))
                .and_then(|(_, ms)| ms.parse::<Millis>().ok());
            if let Some(at) = at
                && at + STICKY_WINDOW_MS > now
                && sticky.is_none_or(|(_, newest)| at > newest)
            {
                sticky = Some((s as u16, at));
            }
        }
        let loads: Vec<ShardLoad> = survey
            .iter()
            .map(|(c, _)| ShardLoad {
                active: c.total - c.draining,
                open: c.open,
            })
            .collect();
        let sticky = sticky.map(|(s, _)| s);
        if !avoid_sticky {
            return Ok(shard_order(&loads, sticky, start));
        }
        let mut order = shard_order(&loads, None, start);
        if let Some(s) = sticky {
            order.retain(|&x| x != s);
            order.push(s);
        }
        Ok(order)
    }

    /// The raw record of a live (readable) session, with its shard.
    pub(super) async fn record(
        &self,
        id: &SessionId,
    ) -> Result<(ShardKeys, HashMap<String, String>)> {
        let shard = self.shard(id.pool_id, id.shard);
        let rec = self.inner.store.session(&shard, &id.key()).await?;
        let held: Millis = rec.get("h").and_then(|v| v.parse().ok()).unwrap_or(0);
        if rec.is_empty() || held <= self.now() {
            return Err(BrokerError::SessionNotFound);
        }
        Ok((shard, rec))
    }

    async fn view(
        &self,
        id: &SessionId,
        rec: &HashMap<String, String>,
        closing: Option<(Millis, CloseReason)>,
    ) -> Result<SessionView> {
        let get = |k: &str| rec.get(k).map(String::as_str).unwrap_or("");
        let num = |k: &str| get(k).parse::<Millis>().unwrap_or(0);
        let now = self.now();
        let blob = self.open_blob(rec)?;
        let expires = num("e");
        let open = get("t") == "o" && expires > now && closing.is_none();
        // An open record's `e` is its idle deadline when that comes first (`hard` is then its
        // expiry), so a session that fell idle reads as ended, to the millisecond.
        let idle = rec.contains_key("hard");
        let (closed_at, reason) = if open {
            (None, None)
        } else if let Some((at, reason)) = closing {
            (Some(at), Some(reason))
        } else if get("t") == "o" {
            let reason = if idle {
                CloseReason::Idle
            } else {
                CloseReason::Expired
            };
            (Some(expires), Some(reason))
        } else {
            let at = rec.get("x").and_then(|v| v.parse().ok()).unwrap_or(expires);
            (
                Some(at),
                Some(CloseReason::parse(get("r")).unwrap_or(CloseReason::Closed)),
            )
        };
        let participants = participant_views(blob.p);
        Ok(SessionView {
            id: id.to_string(),
            pool: self.pool_name(id.pool_id).await?,
            status: if open { "open" } else { "closed" }.into(),
            mode: Mode::from_code(get("m"))
                .unwrap_or(Mode::VoiceSms)
                .as_str()
                .into(),
            proxy_number: get("n").into(),
            geo_match: get("g").into(),
            created_at: rfc3339(num("c")),
            expires_at: rfc3339(if open {
                rec.get("hard")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(expires)
            } else {
                expires.min(closed_at.unwrap_or(expires))
            }),
            closed_at: closed_at.map(rfc3339),
            close_reason: reason.map(|r| r.as_str().to_string()),
            metadata: blob.m,
            options: OptionsView::of(&SessionOptions::parse(get("o")), open),
            access: if pin_token(get("o")).is_some() {
                Access::Pin
            } else {
                Access::Direct
            },
            pins: if open {
                self.pins_shown(&id.key(), get("o"), &participants)
            } else {
                None
            },
            participants,
        })
    }

    /// Each side's PIN candidates for a new PIN session: the PIN and its blind index.
    fn pin_candidates(&self, key: &str, length: u8) -> [(Vec<String>, Vec<String>); 2] {
        [0, 1].map(|side| {
            let pins: Vec<String> = (0..PIN_CANDIDATES)
                .map(|j| self.inner.crypto.pin(key, side, j, length))
                .collect();
            let indexes = pins
                .iter()
                .map(|p| self.inner.crypto.pin_index(p))
                .collect();
            (pins, indexes)
        })
    }

    /// The PINs of a PIN session, found again from its key and the blind indexes its record
    /// keeps: each is one of its side's candidates, derived in order until it matches (a
    /// listing of sessions reads many). A side erased has none.
    fn pins_shown(
        &self,
        key: &str,
        options: &str,
        participants: &[ParticipantView],
    ) -> Option<Vec<PinView>> {
        let (length, indexes) = pin_token(options)?;
        let crypto = &self.inner.crypto;
        let mut out = Vec::new();
        for (side, index) in indexes.iter().enumerate() {
            let Some(p) = participants.get(side).filter(|p| p.number.is_some()) else {
                continue;
            };
            let found = (0..PIN_CANDIDATES)
                .map(|j| crypto.pin(key, side, j, length))
                .find(|pin| crypto.pin_index(pin) == *index);
            if let Some(pin) = found {
                out.push(PinView {
                    participant: p.number.clone(),
                    label: p.label.clone(),
                    pin,
                });
            }
        }
        Some(out)
    }

    /// Applies `op` to a live session.
    async fn end(
        &self,
        shard: &ShardKeys,
        id: &SessionId,
        now: Millis,
        op: EndOp<'_>,
        events: &EndEvents,
    ) -> Result<Ended> {
        Ok(self
            .inner
            .store
            .session_end(shard, &id.key(), now, op, events)
            .await?)
    }

    pub async fn get_session(&self, id: &SessionId) -> Result<SessionView> {
        let (_, rec) = self.record(id).await?;
        self.view(id, &rec, None).await
    }

    pub async fn extend_session(&self, id: &SessionId, ttl_secs: u32) -> Result<SessionView> {
        if !(1..=MAX_TTL_SECS).contains(&ttl_secs) {
            return Err(BrokerError::Validation(format!(
                "ttl_secs must be between 1 and {MAX_TTL_SECS}"
            )));
        }
        let (shard, _) = self.record(id).await?;
        let now = self.now();
        let op = EndOp::Extend {
            expires: now + ttl_secs as i64 * 1000,
        };
        match self.end(&shard, id, now, op, &EndEvents::default()).await? {
            Ended::Ok => self.get_session(id).await,
            Ended::Missing => Err(BrokerError::SessionNotFound),
            _ => Err(BrokerError::SessionClosed),
        }
    }

    /// Closes a session; closing a closed session returns it unchanged.
    pub async fn close_session(&self, id: &SessionId) -> Result<SessionView> {
        let (shard, rec) = self.record(id).await?;
        let now = self.now();
        let events = self.end_events(id, &rec, Some(CloseReason::Closed)).await?;
        let ended = self.end(&shard, id, now, EndOp::Close, &events).await?;
        match ended {
            Ended::Ok => {
                let pool = self.pool_name(id.pool_id).await?;
                METRICS
                    .sessions_closed
                    .with_label_values(&[pool.as_str(), "closed"])
                    .inc();
                tracing::info!(session = %id, "session closed");
                // With no cool-off the record is gone already; show what was closed.
                let fresh = self.inner.store.session(&shard, &id.key()).await?;
                if fresh.is_empty() {
                    self.view(id, &rec, Some((now, CloseReason::Closed))).await
                } else {
                    self.view(id, &fresh, None).await
                }
            }
            Ended::Missing => Err(BrokerError::SessionNotFound),
            _ => self.get_session(id).await,
        }
    }

    /// Open sessions of a participant, in one pool or all `within` a key's pools.
    pub async fn sessions_of(
        &self,
        participant: &E164,
        pool: Option<&PoolName>,
        within: &PoolLimit,
    ) -> Result<Vec<SessionView>> {
        let rows = self.pool_rows(pool, within).await?;
        let idx = self.idx(participant);
        let mut out = Vec::new();
        for row in rows {
            for s in 0..row.shards {
                let shard = self.shard(row.id, s);
                let entry = self.inner.store.entry_of(&shard, &idx).await?;
                for key in entry.session_keys() {
                    let Some(id) = SessionId::from_key(row.id, s, &key) else {
                        continue;
                    };
                    match self.get_session(&id).await {
                        Ok(v) if v.status == "open" => out.push(v),
                        Ok(_) | Err(BrokerError::SessionNotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }
}

/// Where a page of a pool's open sessions resumes: after this session of this shard's
/// bucket. Written as `<shard>.<bucket>.<key>`, opaque to clients.
struct PageAfter {
    shard: u16,
    bucket: String,
    key: String,
}

impl PageAfter {
    fn parse(raw: &str) -> Option<PageAfter> {
        let mut parts = raw.splitn(3, '.');
        let shard = parts.next()?.parse().ok()?;
        let bucket = parts.next()?.to_string();
        let key = parts.next()?.to_string();
        let plain = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
        (plain(&bucket) && plain(&key)).then_some(PageAfter { shard, bucket, key })
    }
}

impl Broker {
    /// One page of a pool's open sessions, in a stable order (shard, bucket, key), and the
    /// cursor of the next page, if there may be one. Reads only the buckets the page needs:
    /// a pool of a million sessions costs a page no more than one of a hundred.
    pub async fn open_sessions_page(
        &self,
        pool: &PoolName,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<SessionView>, Option<String>)> {
        let row = self.pool_row(pool).await?;
        let after = match cursor {
            None => None,
            Some(raw) => Some(PageAfter::parse(raw).ok_or_else(|| {
                BrokerError::Validation("cursor is not one this listing gave".into())
            })?),
        };
        let mut out = Vec::new();
        let first = after.as_ref().map_or(0, |a| a.shard);
        for s in first..row.shards {
            let shard = self.shard(row.id, s);
            let mut buckets = self.inner.store.session_buckets(&shard).await?;
            buckets.sort();
            for bucket in buckets {
                let same_shard = after.as_ref().filter(|a| a.shard == s);
                if same_shard.is_some_and(|a| bucket < a.bucket) {
                    continue;
                }
                let mut keys = self.inner.store.bucket_keys(&shard, &bucket).await?;
                keys.sort();
                for key in keys {
                    if same_shard.is_some_and(|a| bucket == a.bucket && key <= a.key) {
                        continue;
                    }
                    let Some(id) = SessionId::from_key(row.id, s, &key) else {
                        continue;
                    };
                    match self.get_session(&id).await {
                        Ok(v) if v.status == "open" => out.push(v),
                        Ok(_) | Err(BrokerError::SessionNotFound) => continue,
                        Err(e) => return Err(e),
                    }
                    if out.len() == limit {
                        return Ok((out, Some(format!("{s}.{bucket}.{key}"))));
                    }
                }
            }
        }
        Ok((out, None))
    }
}

/// The options a new session keeps: the app's choices where it made them, the pool's policy
/// elsewhere. The first idle deadline counts from creation.
fn session_options(policy: &PoolPolicy, choices: &SessionChoices, now: Millis) -> SessionOptions {
    let record = choices.record.unwrap_or(policy.record);
    let idle_ttl_secs = choices.idle_ttl_secs.unwrap_or(policy.idle_ttl_secs);
    SessionOptions {
        record: record.then(|| choices.record_channels.unwrap_or(policy.record_channels)),
        max_call_secs: choices.max_call_secs.unwrap_or(policy.max_call_secs),
        idle_ttl_secs,
        idle_until: idle_ttl_secs.map(|s| now + s as Millis * 1000),
    }
}
