//! One simulated exchange, as the carrier plays it: the provider's webhook, signed and sent
//! over HTTP to hush; hush's answer, read as the provider would read it; the phone it names
//! ringing or receiving the text; the signed status callback; then what hush recorded
//! (interaction, intercept verdict, events), read back through the broker.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use super::document::{self, Act};
use super::{Delivered, Dialect, Sandbox, sign};
use crate::broker::{InteractionView, PoolLimit, SessionView};
use crate::domain::{E164, PoolName, SessionId};
use crate::http::{ApiError, AppState};

/// How long a simulated call lasts once answered.
const CALL_SECS: u32 = 42;

/// How long the sandbox waits for the outbound queue to send a text through a stand-in API.
const TEXT_WAIT: Duration = Duration::from_secs(10);

/// One step of an exchange, for people: `detail` is pre-formatted (an HTTP request, a
/// document). `phone` and `caller_id` name a phone that rings or receives a text, and the
/// number it shows.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub title: String,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_id: Option<String>,
}

/// `n` random bytes in lower-case hex.
pub fn hex(n: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; n];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A random UUID in its usual text form.
pub fn uuid() -> String {
    let h = hex(16);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A request the carrier sends to hush.
struct Request {
    /// Path and query, below the public URL.
    path: String,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

/// hush's answer to it.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn detail(&self) -> String {
        let mut out = format!("HTTP {}", self.status);
        if !self.content_type.is_empty() {
            out.push_str(&format!("\nContent-Type: {}", self.content_type));
        }
        if !self.body.is_empty() {
            out.push_str("\n\n");
            out.push_str(&self.body);
        }
        out
    }
}

/// One call or text played through, step by step.
pub struct Exchange<'a> {
    sb: &'a Sandbox,
    state: &'a AppState,
    within: &'a PoolLimit,
    dialect: Dialect,
    from: E164,
    to: E164,
    steps: Vec<Step>,
    started_ms: i64,
}

impl<'a> Exchange<'a> {
    pub fn new(
        sb: &'a Sandbox,
        state: &'a AppState,
        within: &'a PoolLimit,
        dialect: Dialect,
        from: E164,
        to: E164,
    ) -> Self {
        Exchange {
            sb,
            state,
            within,
            dialect,
            from,
            to,
            steps: Vec::new(),
            started_ms: state.broker.now_ms(),
        }
    }

    fn now_secs(&self) -> i64 {
        self.state.broker.now_ms().div_euclid(1000)
    }

    fn push(&mut self, step: &'static str, title: String, detail: String) {
        self.steps.push(Step {
            step,
            title,
            detail,
            phone: None,
            caller_id: None,
        });
    }

    /// `number` with the sandbox phone's name, for titles.
    fn who(&self, number: &str) -> String {
        match self.sb.phone_named(number) {
            Some(p) => format!("{} ({number})", p.name),
            None => number.to_string(),
        }
    }

    fn provider(&self) -> &'static str {
        match self.dialect {
            Dialect::Twilio => "Twilio",
            Dialect::Telnyx => "Telnyx",
            Dialect::Plivo => "Plivo",
            Dialect::Vonage => "Vonage",
        }
    }

    /// Sends `req` to hush as the provider does: to hush's own address, signed for the
    /// public URL. Returns the request as text beside the answer.
    async fn send(&self, req: &Request) -> Result<(String, Answer), ApiError> {
        let mut detail = format!("POST {}{}", self.sb.public_url, req.path);
        detail.push_str(&format!("\nContent-Type: {}", req.content_type));
        for (k, v) in &req.headers {
            detail.push_str(&format!("\n{k}: {v}"));
        }
        detail.push_str("\n\n");
        detail.push_str(&req.body);
        let mut r = self
            .sb
            .http
            .post(format!("{}{}", self.sb.target, req.path))
            .header("content-type", req.content_type)
            .body(req.body.clone());
        for (k, v) in &req.headers {
            r = r.header(*k, v);
        }
        let resp = r.send().await.map_err(|_| {
            ApiError::Internal("the sandbox could not reach hush's own address".into())
        })?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.text().await.unwrap_or_default();
        Ok((
            detail,
            Answer {
                status,
                content_type,
                body,
            },
        ))
    }

    /// A form post to `path`, signed as this dialect signs it.
    fn form_request(&self, path: &str, params: Vec<(String, String)>) -> Request {
        let url = format!("{}{path}", self.sb.public_url);
        let body = sign::form(&params);
        let s = &self.sb.signers;
        let headers = match self.dialect {
            Dialect::Twilio => vec![(
                "X-Twilio-Signature",
                sign::twilio(s.twilio.as_deref().unwrap_or_default(), &url, &params),
            )],
            Dialect::Telnyx => self.telnyx_headers(&body),
            Dialect::Plivo => {
                let nonce: String = hex(10).bytes().map(|b| char::from(b'0' + b % 10)).collect();
                let token = s.plivo.as_deref().unwrap_or_default();
                vec![
                    (
                        "X-Plivo-Signature-V3",
                        sign::plivo(token, &url, &params, &nonce),
                    ),
                    ("X-Plivo-Signature-V3-Nonce", nonce),
                ]
            }
            // Vonage's SMS webhooks carry their signature among the parameters.
            Dialect::Vonage => Vec::new(),
        };
        Request {
            path: path.to_string(),
            content_type: "application/x-www-form-urlencoded",
            headers,
            body,
        }
    }

    fn telnyx_headers(&self, body: &str) -> Vec<(&'static str, String)> {
        let ts = self.now_secs().to_string();
        let sig = match &self.sb.signers.telnyx {
            Some(key) => sign::telnyx(key, &ts, body),
            None => String::new(),
        };
        vec![("telnyx-timestamp", ts), ("telnyx-signature-ed25519", sig)]
    }

    fn telnyx_json(&self, path: &str, event: &Value) -> Request {
        let body = event.to_string();
        Request {
            path: path.into(),
            content_type: "application/json",
            headers: self.telnyx_headers(&body),
            body,
        }
    }

    fn vonage_json(&self, path: &str, value: &Value) -> Request {
        let body = value.to_string();
        let (secret, _) = self.sb.signers.vonage.clone().unwrap_or_default();
        let jwt = sign::vonage_jwt(&secret, &uuid(), self.now_secs(), body.as_bytes());
        Request {
            path: path.into(),
            content_type: "application/json",
            headers: vec![("Authorization", format!("Bearer {jwt}"))],
            body,
        }
    }

    /// The open session between the caller and the dialled proxy number, if any.
    async fn session(&self) -> Result<Option<SessionView>, ApiError> {
        Ok(self
            .state
            .broker
            .sessions_of(&self.from, None, self.within)
            .await?
            .into_iter()
            .find(|s| s.proxy_number == self.to.reveal()))
    }

    async fn interaction(
        &self,
        session: &SessionView,
        reference: &str,
    ) -> Result<Option<InteractionView>, ApiError> {
        let Some(id) = SessionId::parse(&session.id) else {
            return Ok(None);
        };
        Ok(self
            .state
            .broker
            .interactions(&id)
            .await?
            .into_iter()
            .find(|i| i.provider_ref == reference))
    }

    /// Posts the inbound webhook and records it and hush's answer as steps.
    async fn inbound(&mut self, what: &str, req: Request) -> Result<Answer, ApiError> {
        let (detail, answer) = self.send(&req).await?;
        self.push(
            "webhook",
            format!(
                "{} posts the {what} from {} to {} to hush, signed",
                self.provider(),
                self.who(self.from.reveal()),
                self.to.reveal()
            ),
            detail,
        );
        let title = match answer.status {
            200..=299 if answer.body.is_empty() => {
                format!(
                    "hush accepts it (HTTP {}) and will send on through {}'s API",
                    answer.status,
                    self.provider()
                )
            }
            200..=299 => format!("hush answers with {}", self.document()),
            403 => "hush refuses it: the signature does not verify".into(),
            s => format!("hush answers HTTP {s}"),
        };
        let detail = answer.detail();
        self.push("answer", title, detail);
        Ok(answer)
    }

    fn document(&self) -> &'static str {
        match self.dialect {
            Dialect::Twilio => "TwiML",
            Dialect::Telnyx => "TeXML",
            Dialect::Plivo => "Plivo XML",
            Dialect::Vonage => "an NCCO",
        }
    }

    /// Posts a status callback and records it as one step.
    async fn status(&mut self, title: String, req: Request) -> Result<(), ApiError> {
        let (mut detail, answer) = self.send(&req).await?;
        detail.push_str("\n\n");
        detail.push_str(&answer.detail());
        let title = if (200..300).contains(&answer.status) {
            title
        } else {
            format!("{title}; hush answers HTTP {}", answer.status)
        };
        self.push("status", title, detail);
        Ok(())
    }

    /// The intercept verdict, when the session's pool has an intercept: the interaction's
    /// status once the answer stands (`allowed` or `blocked`).
    async fn intercept(
        &mut self,
        session: Option<&SessionView>,
        reference: &str,
    ) -> Result<(), ApiError> {
        let Some(session) = session else {
            return Ok(());
        };
        let Some(pool) = PoolName::parse(&session.pool) else {
            return Ok(());
        };
        let policy = self.state.broker.get_pool(&pool).await?.policy;
        if policy.intercept_url.is_none() {
            return Ok(());
        }
        let found = self.interaction(session, reference).await?;
        let verdict = found.as_ref().map(|i| i.status.as_str()).unwrap_or("none");
        let title = match verdict {
            "allowed" => "The app's intercept allows it".to_string(),
            "blocked" => "The app's intercept blocks it".to_string(),
            other => format!("The intercept's verdict is not recorded (status `{other}`)"),
        };
        let detail = found
            .map(|i| serde_json::to_string_pretty(&i).unwrap_or_default())
            .unwrap_or_default();
        self.push("intercept", title, detail);
        Ok(())
    }

    /// Waits (a little) until hush's outbound queue has settled the text it sent: a
    /// delivery report that comes before hush has recorded the provider's id of the text
    /// names a message hush does not know yet, and is dropped. A carrier's report comes
    /// after its API has answered, so this is the order a real one keeps too.
    async fn send_settled(
        &self,
        session: Option<&SessionView>,
        reference: &str,
    ) -> Result<(), ApiError> {
        let Some(session) = session else {
            return Ok(());
        };
        for _ in 0..60 {
            let found = self.interaction(session, reference).await?;
            if found.is_none_or(|i| !matches!(i.status.as_str(), "started" | "allowed")) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The interaction as hush recorded it, and the events this exchange made. `settled`
    /// says whether the interaction is as final as it will get.
    async fn outcome(
        &mut self,
        session: Option<&SessionView>,
        reference: &str,
        settled: impl Fn(&InteractionView) -> bool,
    ) -> Result<(), ApiError> {
        let Some(session) = session else {
            self.push(
                "interaction",
                "Nothing is recorded: no open session holds this caller and this proxy number"
                    .into(),
                String::new(),
            );
            return Ok(());
        };
        // Texts sent through a provider's API are marked once the queue settles them,
        // a moment after the stand-in API took them.
        let mut found = None;
        for _ in 0..40 {
            found = self.interaction(session, reference).await?;
            if found.as_ref().is_some_and(&settled) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match &found {
            Some(i) => {
                let title = format!(
                    "hush records the {} in session {} as `{}`{}",
                    if i.kind == "voice" { "call" } else { "text" },
                    session.id,
                    i.status,
                    i.duration_secs
                        .map(|d| format!(", {d} s"))
                        .unwrap_or_default()
                );
                let detail = format!(
                    "GET /v1/sessions/{}/interactions\n\n{}",
                    session.id,
                    serde_json::to_string_pretty(i).unwrap_or_default()
                );
                self.push("interaction", title, detail);
            }
            None => self.push(
                "interaction",
                format!("No interaction of session {} names it", session.id),
                String::new(),
            ),
        }
        let Some(pool) = PoolName::parse(&session.pool) else {
            return Ok(());
        };
        let events: Vec<_> = self
            .state
            .broker
            .list_events(Some(&pool), None, 50, self.within)
            .await?
            .into_iter()
            .filter(|e| e.created_ms >= self.started_ms)
            .collect();
        let policy = self.state.broker.get_pool(&pool).await?.policy;
        let title = match (events.len(), policy.callback_url.is_some()) {
            (0, false) => format!(
                "No events: pool `{}` has no callback URL to send them to",
                session.pool
            ),
            (0, true) => "No events were recorded for it".to_string(),
            (1, _) => "1 event is on its way to the app".to_string(),
            (n, _) => format!("{n} events are on their way to the app"),
        };
        let detail = events
            .iter()
            .rev()
            .map(|e| format!("{}  {}  {}", e.id, e.kind, e.status))
            .collect::<Vec<_>>()
            .join("\n");
        self.push("events", title, detail);
        Ok(())
    }

    // ---- calls

    /// A call from the sandbox phone to the proxy number.
    pub async fn call(mut self) -> Result<Vec<Step>, ApiError> {
        let session = self.session().await?;
        let (from, to) = (self.from.reveal().to_string(), self.to.reveal().to_string());
        let (reference, req) = match self.dialect {
            Dialect::Twilio | Dialect::Telnyx => {
                let sid = if self.dialect == Dialect::Twilio {
                    format!("CA{}", hex(16))
                } else {
                    format!("v3:{}", hex(16))
                };
                let path = if self.dialect == Dialect::Twilio {
                    "/hooks/twilio/voice"
                } else {
                    "/hooks/telnyx/voice"
                };
                let params = pairs(&[
                    ("AccountSid", &format!("AC{}", "0".repeat(32))),
                    ("ApiVersion", "2010-04-01"),
                    ("CallSid", &sid),
                    ("CallStatus", "ringing"),
                    ("Called", &to),
                    ("Caller", &from),
                    ("Direction", "inbound"),
                    ("From", &from),
                    ("To", &to),
                ]);
                (sid, self.form_request(path, params))
            }
            Dialect::Plivo => {
                let id = uuid();
                let params = pairs(&[
                    ("CallStatus", "ringing"),
                    ("CallUUID", &id),
                    ("Direction", "inbound"),
                    ("Event", "StartApp"),
                    ("From", self.from.reveal_digits()),
                    ("To", self.to.reveal_digits()),
                ]);
                (id, self.form_request("/hooks/plivo/voice", params))
            }
            Dialect::Vonage => {
                let id = uuid();
                let body = json!({
                    "from": self.from.reveal_digits(),
                    "to": self.to.reveal_digits(),
                    "uuid": id,
                    "conversation_uuid": format!("CON-{}", uuid()),
                });
                (id, self.vonage_json("/hooks/vonage/answer", &body))
            }
        };
        let answer = self.inbound("call", req).await?;
        if !(200..300).contains(&answer.status) {
            return Ok(self.steps);
        }
        let act = document::read_call(self.dialect, &answer.body);
        self.intercept(session.as_ref(), &reference).await?;
        match act {
            Act::Ring {
                to: callee,
                caller_id,
                status_url,
            } => {
                self.steps.push(Step {
                    step: "ring",
                    title: format!(
                        "{}'s phone rings, showing {caller_id} as caller ID; they talk for {CALL_SECS} s",
                        self.who(&callee),
                    ),
                    detail: format!(
                        "Calling {callee}\nCaller ID: {caller_id}\nAnswered, then hung up after {CALL_SECS} s"
                    ),
                    phone: Some(callee.clone()),
                    caller_id: Some(caller_id.clone()),
                });
                let req = self.call_status(&reference, &callee, &caller_id, status_url);
                self.status(
                    format!(
                        "{} reports the call completed after {CALL_SECS} s",
                        self.provider()
                    ),
                    req,
                )
                .await?;
            }
            Act::Say(message) => {
                self.steps.push(Step {
                    step: "announce",
                    title: format!("{} hears: {message}", self.who(&from)),
                    detail: message,
                    phone: Some(from.clone()),
                    caller_id: None,
                });
            }
            Act::Text { .. } | Act::Nothing(_) => {
                let why = match act {
                    Act::Nothing(why) => why,
                    _ => "the answer holds no dial",
                };
                self.push("announce", why.into(), String::new());
            }
        }
        self.outcome(session.as_ref(), &reference, |i| i.ended_at.is_some())
            .await?;
        Ok(self.steps)
    }

    /// The status callback a provider sends when the connected call ends.
    fn call_status(
        &self,
        reference: &str,
        callee: &str,
        caller_id: &str,
        status_url: Option<String>,
    ) -> Request {
        let secs = CALL_SECS.to_string();
        match self.dialect {
            // The `<Number>` callback reports the dialled leg, which names the inbound call
            // as its parent and comes from the proxy number.
            Dialect::Twilio => {
                let path = status_url
                    .as_deref()
                    .and_then(|u| u.strip_prefix(&self.sb.public_url))
                    .unwrap_or("/hooks/twilio/status")
                    .to_string();
                let params = pairs(&[
                    ("AccountSid", &format!("AC{}", "0".repeat(32))),
                    ("CallDuration", &secs),
                    ("CallSid", &format!("CA{}", hex(16))),
                    ("CallStatus", "completed"),
                    ("Direction", "outbound-dial"),
                    ("From", caller_id),
                    ("ParentCallSid", reference),
                    ("To", callee),
                ]);
                self.form_request(&path, params)
            }
            Dialect::Telnyx => {
                let params = pairs(&[
                    ("CallDuration", &secs),
                    ("CallSid", reference),
                    ("CallStatus", "completed"),
                    ("From", self.from.reveal()),
                    ("To", self.to.reveal()),
                ]);
                self.form_request("/hooks/telnyx/status", params)
            }
            Dialect::Plivo => {
                let params = pairs(&[
                    ("BillDuration", &secs),
                    ("CallStatus", "completed"),
                    ("CallUUID", reference),
                    ("Direction", "inbound"),
                    ("Duration", &secs),
                    ("Event", "Hangup"),
                    ("From", self.from.reveal_digits()),
                    ("HangupCause", "NORMAL_CLEARING"),
                    ("To", self.to.reveal_digits()),
                ]);
                self.form_request("/hooks/plivo/status", params)
            }
            Dialect::Vonage => {
                let body = json!({
                    "uuid": reference,
                    "status": "completed",
                    "direction": "inbound",
                    "from": self.from.reveal_digits(),
                    "to": self.to.reveal_digits(),
                    "duration": secs,
                    "timestamp": crate::domain::rfc3339(self.state.broker.now_ms()),
                });
                self.vonage_json("/hooks/vonage/event", &body)
            }
        }
    }

    // ---- texts

    /// A text from the sandbox phone to the proxy number.
    pub async fn text(mut self, body: &str) -> Result<Vec<Step>, ApiError> {
        let session = self.session().await?;
        let (from, to) = (self.from.reveal().to_string(), self.to.reveal().to_string());
        let (reference, req) = match self.dialect {
            Dialect::Twilio => {
                let sid = format!("SM{}", hex(16));
                let params = pairs(&[
                    ("AccountSid", &format!("AC{}", "0".repeat(32))),
                    ("ApiVersion", "2010-04-01"),
                    ("Body", body),
                    ("From", &from),
                    ("MessageSid", &sid),
                    ("NumMedia", "0"),
                    ("NumSegments", "1"),
                    ("SmsMessageSid", &sid),
                    ("SmsSid", &sid),
                    ("SmsStatus", "received"),
                    ("To", &to),
                ]);
                (sid.clone(), self.form_request("/hooks/twilio/sms", params))
            }
            Dialect::Plivo => {
                let id = uuid();
                let params = pairs(&[
                    ("From", self.from.reveal_digits()),
                    ("MessageUUID", &id),
                    ("Text", body),
                    ("To", self.to.reveal_digits()),
                    ("TotalAmount", "0.00000"),
                    ("TotalRate", "0.00000"),
                    ("Type", "sms"),
                    ("Units", "1"),
                ]);
                (id, self.form_request("/hooks/plivo/sms", params))
            }
            Dialect::Telnyx => {
                let id = uuid();
                let event = json!({ "data": {
                    "event_type": "message.received",
                    "id": uuid(),
                    "occurred_at": crate::domain::rfc3339(self.state.broker.now_ms()),
                    "payload": {
                        "direction": "inbound",
                        "id": id,
                        "type": "SMS",
                        "from": { "phone_number": from },
                        "to": [{ "phone_number": to, "status": "webhook_delivered" }],
                        "text": body,
                        "media": [],
                        "parts": 1,
                    },
                    "record_type": "event",
                }, "meta": { "attempt": 1 } });
                (id, self.telnyx_json("/hooks/telnyx/sms", &event))
            }
            Dialect::Vonage => {
                let id = hex(8).to_uppercase();
                let ts = self.now_secs().to_string();
                let mut params = pairs(&[
                    ("api-key", "sandbox"),
                    (
                        "keyword",
                        body.split_whitespace().next().unwrap_or_default(),
                    ),
                    ("message-timestamp", "2026-01-01 00:00:00"),
                    ("messageId", &id),
                    ("msisdn", self.from.reveal_digits()),
                    ("nonce", &uuid()),
                    ("text", body),
                    ("timestamp", &ts),
                    ("to", self.to.reveal_digits()),
                    ("type", "text"),
                ]);
                let (secret, method) = self.sb.signers.vonage.clone().unwrap_or_default();
                let sig = sign::vonage_sms(&method, &secret, &params);
                params.push(("sig".into(), sig));
                (id, self.form_request("/hooks/vonage/sms", params))
            }
        };
        let answer = self.inbound("text", req).await?;
        if !(200..300).contains(&answer.status) {
            return Ok(self.steps);
        }
        self.intercept(session.as_ref(), &reference).await?;
        let act = match self.dialect {
            Dialect::Twilio | Dialect::Plivo => {
                document::read_text(self.dialect, &answer.body, &from, &to)
            }
            Dialect::Telnyx | Dialect::Vonage => self.api_text(body).await,
        };
        match act {
            Act::Text {
                to: recipient,
                from: sender,
                body: text,
                status_url,
            } => {
                let step = if recipient == from {
                    "announce"
                } else {
                    "deliver"
                };
                let title = if step == "announce" {
                    format!(
                        "{} gets a reply from {sender}: {text}",
                        self.who(&recipient)
                    )
                } else {
                    format!(
                        "{}'s phone receives the text, from {sender}",
                        self.who(&recipient)
                    )
                };
                self.steps.push(Step {
                    step,
                    title,
                    detail: format!("To: {recipient}\nFrom: {sender}\n\n{text}"),
                    phone: Some(recipient.clone()),
                    caller_id: Some(sender.clone()),
                });
                if self.dialect == Dialect::Telnyx {
                    self.send_settled(session.as_ref(), &reference).await?;
                }
                if let Some(req) = self.text_status(&reference, &recipient, &sender, status_url) {
                    self.status(
                        format!("{} reports the text delivered", self.provider()),
                        req,
                    )
                    .await?;
                }
            }
            Act::Nothing(why) => self.push("deliver", why.into(), String::new()),
            Act::Ring { .. } | Act::Say(_) => {
                self.push("deliver", "The answer holds no text".into(), String::new())
            }
        }
        let dialect = self.dialect;
        self.outcome(session.as_ref(), &reference, move |i| match dialect {
            // Vonage's delivery receipts are not read: the queue's `sent` is the last word.
            Dialect::Vonage => !matches!(i.status.as_str(), "started" | "allowed"),
            _ => i.ended_at.is_some(),
        })
        .await?;
        Ok(self.steps)
    }

    /// The text hush's outbound queue sent through the stand-in API: the relayed text, or
    /// the pool's reply to the sender.
    async fn api_text(&mut self, body: &str) -> Act {
        let provider = self.dialect.name();
        let (sender, proxy) = (self.from.reveal().to_string(), self.to.reveal().to_string());
        let found = self
            .sb
            .await_text(provider, TEXT_WAIT, |d: &Delivered| {
                d.from == proxy && (d.text == body || d.to == sender)
            })
            .await;
        let Some(d) = found else {
            return Act::Nothing(
                "Nothing reached the sandbox's messaging API in 10 s (is the provider's API \
                 base pointed at the sandbox?)",
            );
        };
        let api = match self.dialect {
            Dialect::Telnyx => format!("POST {}/v2/messages", super::TELNYX_API_BASE),
            _ => format!("POST {}/sms/json", super::VONAGE_API_BASE),
        };
        self.push(
            "deliver",
            format!(
                "hush's outbound queue sends the text through {}'s API",
                self.provider()
            ),
            format!(
                "{api}\n\nfrom: {}\nto: {}\ntext: {}\n\nid: {}",
                d.from, d.to, d.text, d.id
            ),
        );
        Act::Text {
            to: d.to,
            from: d.from,
            body: d.text,
            status_url: Some(d.id),
        }
    }

    /// The delivery report of a sent text, where the provider sends one hush reads. For
    /// Telnyx and Vonage `status_url` carries the provider's message id instead.
    fn text_status(
        &self,
        _reference: &str,
        recipient: &str,
        sender: &str,
        status_url: Option<String>,
    ) -> Option<Request> {
        let status_url = status_url?;
        let local = |url: &str| url.strip_prefix(&self.sb.public_url).map(str::to_string);
        match self.dialect {
            Dialect::Twilio => {
                let sid = format!("SM{}", hex(16));
                let params = pairs(&[
                    ("AccountSid", &format!("AC{}", "0".repeat(32))),
                    ("From", sender),
                    ("MessageSid", &sid),
                    ("MessageStatus", "delivered"),
                    ("SmsSid", &sid),
                    ("SmsStatus", "delivered"),
                    ("To", recipient),
                ]);
                Some(self.form_request(&local(&status_url)?, params))
            }
            Dialect::Plivo => {
                let digits = |n: &str| n.trim_start_matches('+').to_string();
                let params = pairs(&[
                    ("From", &digits(sender)),
                    ("MessageUUID", &uuid()),
                    ("Status", "delivered"),
                    ("To", &digits(recipient)),
                    ("TotalAmount", "0.00000"),
                    ("TotalRate", "0.00000"),
                    ("Units", "1"),
                ]);
                Some(self.form_request(&local(&status_url)?, params))
            }
            Dialect::Telnyx => {
                let event = json!({ "data": {
                    "event_type": "message.finalized",
                    "id": uuid(),
                    "occurred_at": crate::domain::rfc3339(self.state.broker.now_ms()),
                    "payload": {
                        "direction": "outbound",
                        "id": status_url,
                        "type": "SMS",
                        "from": { "phone_number": sender },
                        "to": [{ "phone_number": recipient, "status": "delivered" }],
                    },
                    "record_type": "event",
                }, "meta": { "attempt": 1 } });
                Some(self.telnyx_json("/hooks/telnyx/status", &event))
            }
            // hush does not read Vonage's delivery receipts.
            Dialect::Vonage => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_look_like_uuids() {
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(u.matches('-').count(), 4);
    }
}
