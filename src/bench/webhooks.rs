//! Signed provider webhooks for the routing measurement: one inbound call or text per
//! request, each with a call or message id never used before (a repeated id would be a
//! retry, which the broker answers from memory), signed exactly as the provider signs so
//! that hush's own verification passes. Requests are made before each timed slice, so the
//! client's cost per request is the same as for every other server measured.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use ed25519_dalek::{Signer as _, SigningKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use hush::config::{Config, Secret};

/// The URL providers are told to call; signatures cover it.
const PUBLIC_URL: &str = "https://hush.bench.invalid";

/// A provider's inbound webhook as the bench sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hook {
    TwilioVoice,
    TwilioSms,
    TelnyxVoice,
    PlivoVoice,
    VonageVoice,
}

impl Hook {
    pub(super) const ALL: [Hook; 5] = [
        Hook::TwilioVoice,
        Hook::TwilioSms,
        Hook::TelnyxVoice,
        Hook::PlivoVoice,
        Hook::VonageVoice,
    ];

    /// The name in the table and the JSON report.
    pub(super) fn name(self) -> &'static str {
        match self {
            Hook::TwilioVoice => "twilio_voice",
            Hook::TwilioSms => "twilio_sms",
            Hook::TelnyxVoice => "telnyx_voice",
            Hook::PlivoVoice => "plivo_voice",
            Hook::VonageVoice => "vonage_voice",
        }
    }

    /// What the answer to a connected call or relayed text contains, to check the first one.
    pub(super) fn connected_mark(self) -> &'static str {
        match self {
            Hook::TwilioVoice | Hook::TelnyxVoice | Hook::PlivoVoice => "<Dial",
            Hook::TwilioSms => "<Message to=",
            Hook::VonageVoice => "\"connect\"",
        }
    }
}

/// The providers' secrets, as hush is configured with them and as the providers sign.
pub(super) struct Signers {
    twilio_token: String,
    telnyx: SigningKey,
    plivo_token: String,
    vonage_secret: String,
}

impl Signers {
    pub(super) fn new() -> Signers {
        let secret = || format!("{:032x}", rand::random::<u128>());
        Signers {
            twilio_token: secret(),
            telnyx: SigningKey::from_bytes(&rand::random()),
            plivo_token: secret(),
            vonage_secret: secret(),
        }
    }

    /// `config` with every provider enabled under these secrets.
    pub(super) fn configure(&self, config: &mut Config) {
        let p = &mut config.providers;
        config.public_url = Some(PUBLIC_URL.into());
        p.twilio_auth_token = Some(Secret::new(self.twilio_token.clone()));
        p.telnyx_public_key = Some(Secret::new(
            B64.encode(self.telnyx.verifying_key().to_bytes()),
        ));
        p.plivo_auth_token = Some(Secret::new(self.plivo_token.clone()));
        p.vonage_signature_secret = Some(Secret::new(self.vonage_secret.clone()));
    }

    /// The webhook `hook` for a call or text from `from` to proxy number `to` (both E.164),
    /// with the id `n` makes unique, as a whole HTTP/1.1 request.
    pub(super) fn request(&self, hook: Hook, from: &str, to: &str, n: u64) -> Vec<u8> {
        let digits = |e164: &str| e164.trim_start_matches('+').to_string();
        let id = format!("{:016x}{n:016x}", rand::random::<u64>());
        match hook {
            Hook::TwilioVoice => {
                let sid = format!("CA{id}");
                let params = [
                    ("AccountSid", "AC00000000000000000000000000000001"),
                    ("ApiVersion", "2010-04-01"),
                    ("CallSid", sid.as_str()),
                    ("CallStatus", "ringing"),
                    ("Called", to),
                    ("Caller", from),
                    ("Direction", "inbound"),
                    ("From", from),
                    ("To", to),
                ];
                self.twilio("/hooks/twilio/voice", &params)
            }
            Hook::TwilioSms => {
                let sid = format!("SM{id}");
                let params = [
                    ("AccountSid", "AC00000000000000000000000000000001"),
                    ("ApiVersion", "2010-04-01"),
                    ("Body", "On my way, 5 minutes & counting"),
                    ("From", from),
                    ("MessageSid", sid.as_str()),
                    ("NumMedia", "0"),
                    ("NumSegments", "1"),
                    ("SmsMessageSid", sid.as_str()),
                    ("SmsSid", sid.as_str()),
                    ("SmsStatus", "received"),
                    ("To", to),
                ];
                self.twilio("/hooks/twilio/sms", &params)
            }
            Hook::TelnyxVoice => {
                // TeXML call requests carry Twilio's form fields.
                let sid = format!("v3:{id}");
                let body = form(&[
                    ("AccountSid", "00000000-0000-0000-0000-000000000001"),
                    ("CallSid", sid.as_str()),
                    ("CallStatus", "ringing"),
                    ("Direction", "inbound"),
                    ("From", from),
                    ("To", to),
                ]);
                let timestamp = now_secs().to_string();
                let mut signed = Vec::with_capacity(timestamp.len() + 1 + body.len());
                signed.extend_from_slice(timestamp.as_bytes());
                signed.push(b'|');
                signed.extend_from_slice(body.as_bytes());
                let signature = B64.encode(self.telnyx.sign(&signed).to_bytes());
                http_post(
                    "/hooks/telnyx/voice",
                    "application/x-www-form-urlencoded",
                    &[
                        ("telnyx-timestamp", &timestamp),
                        ("telnyx-signature-ed25519", &signature),
                    ],
                    &body,
                )
            }
            Hook::PlivoVoice => {
                let uuid = uuid_of(&id);
                let (from, to) = (digits(from), digits(to));
                let params = [
                    ("CallStatus", "ringing"),
                    ("CallUUID", uuid.as_str()),
                    ("Direction", "inbound"),
                    ("Event", "StartApp"),
                    ("From", from.as_str()),
                    ("To", to.as_str()),
                ];
                let path = "/hooks/plivo/voice";
                let nonce = format!("{:020}", rand::random::<u64>());
                // V3: the URL, `?`, every parameter as `kv` sorted by name, `.`, the nonce.
                let mut sorted = params.to_vec();
                sorted.sort();
                let mut text = format!("{PUBLIC_URL}{path}?");
                for (k, v) in sorted {
                    text.push_str(k);
                    text.push_str(v);
                }
                text.push('.');
                text.push_str(&nonce);
                let signature = B64.encode(hmac_sha256(self.plivo_token.as_bytes(), &text));
                http_post(
                    path,
                    "application/x-www-form-urlencoded",
                    &[
                        ("x-plivo-signature-v3-nonce", &nonce),
                        ("x-plivo-signature-v3", &signature),
                    ],
                    &form(&params),
                )
            }
            Hook::VonageVoice => {
                let uuid = uuid_of(&id);
                let body = serde_json::json!({
                    "from": digits(from),
                    "to": digits(to),
                    "uuid": uuid,
                    "conversation_uuid": format!("CON-{uuid}"),
                    "region_url": "https://api-us-3.vonage.com",
                })
                .to_string();
                let head = B64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
                let claims = serde_json::json!({
                    "iat": now_secs(),
                    "jti": uuid_of(&format!("{:032x}", rand::random::<u128>())),
                    "iss": "Vonage",
                    "application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
                    "payload_hash": hex(&Sha256::digest(body.as_bytes())),
                });
                let claims = B64URL.encode(claims.to_string());
                let signature = B64URL.encode(hmac_sha256(
                    self.vonage_secret.as_bytes(),
                    &format!("{head}.{claims}"),
                ));
                let authorization = format!("Bearer {head}.{claims}.{signature}");
                http_post(
                    "/hooks/vonage/answer",
                    "application/json",
                    &[("authorization", &authorization)],
                    &body,
                )
            }
        }
    }

    /// A Twilio form post signed with the auth token: HMAC-SHA1 of the URL followed by every
    /// parameter's name and value, sorted.
    fn twilio(&self, path: &str, params: &[(&str, &str)]) -> Vec<u8> {
        let mut sorted = params.to_vec();
        sorted.sort();
        let mut text = format!("{PUBLIC_URL}{path}");
        for (k, v) in sorted {
            text.push_str(k);
            text.push_str(v);
        }
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(self.twilio_token.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(text.as_bytes());
        let signature = B64.encode(mac.finalize().into_bytes());
        http_post(
            path,
            "application/x-www-form-urlencoded",
            &[("x-twilio-signature", &signature)],
            &form(params),
        )
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn hmac_sha256(key: &[u8], text: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(text.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 hex digits as a UUID's 8-4-4-4-12 groups.
fn uuid_of(hex32: &str) -> String {
    let h = &hex32[..32];
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// `application/x-www-form-urlencoded`, every byte outside the unreserved set escaped.
fn form(params: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        for (j, s) in [k, v].into_iter().enumerate() {
            if j == 1 {
                out.push('=');
            }
            for b in s.bytes() {
                match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        out.push(b as char)
                    }
                    _ => out.push_str(&format!("%{b:02X}")),
                }
            }
        }
    }
    out
}

fn http_post(path: &str, content_type: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: hush.bench.invalid\r\nContent-Type: {content_type}\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    head.into_bytes()
}
