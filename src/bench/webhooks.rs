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

const TWILIO_VOICE_PATH: &str = "/hooks/twilio/voice";
/// Where `<Gather action>` reports the digits typed at a call's first PIN prompt; the query
/// is part of the URL Twilio signs.
const TWILIO_DIGITS_PATH: &str = "/hooks/twilio/digits?attempt=1";

/// One call to a PIN session, as whole HTTP/1.1 requests with one CallSid: the voice webhook
/// (hush answers it with the PIN prompt and remembers the call) and the report of the PIN
/// typed at that prompt.
pub(super) struct PinCall {
    pub(super) voice: Vec<u8>,
    pub(super) digits: Vec<u8>,
}

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
                self.twilio(TWILIO_VOICE_PATH, &twilio_call(&sid, "ringing", from, to))
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

    /// A call to a PIN session through Twilio from participant `from` to proxy number `to`,
    /// typing `pin` at the first prompt; the CallSid is unique by `n`, as in [`Self::request`].
    pub(super) fn twilio_pin_call(&self, from: &str, to: &str, pin: &str, n: u64) -> PinCall {
        let sid = format!("CA{:016x}{n:016x}", rand::random::<u64>());
        let voice = self.twilio(TWILIO_VOICE_PATH, &twilio_call(&sid, "ringing", from, to));
        // `<Gather action>` posts the call's usual parameters plus `Digits`, the keys pressed
        // (https://www.twilio.com/docs/voice/twiml/gather#action).
        let mut params = twilio_call(&sid, "in-progress", from, to).to_vec();
        params.push(("Digits", pin));
        let digits = self.twilio(TWILIO_DIGITS_PATH, &params);
        PinCall { voice, digits }
    }

    /// A Twilio form post signed with the auth token over the public URL and `path`, which
    /// may carry a query.
    fn twilio(&self, path: &str, params: &[(&str, &str)]) -> Vec<u8> {
        let signature =
            twilio_signature(&self.twilio_token, &format!("{PUBLIC_URL}{path}"), params);
        http_post(
            path,
            "application/x-www-form-urlencoded",
            &[("x-twilio-signature", &signature)],
            &form(params),
        )
    }
}

/// The parameters of Twilio's voice webhook for call `sid` in `status`, sorted by name.
fn twilio_call<'a>(
    sid: &'a str,
    status: &'a str,
    from: &'a str,
    to: &'a str,
) -> [(&'a str, &'a str); 9] {
    [
        ("AccountSid", "AC00000000000000000000000000000001"),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", sid),
        ("CallStatus", status),
        ("Called", to),
        ("Caller", from),
        ("Direction", "inbound"),
        ("From", from),
        ("To", to),
    ]
}

/// `X-Twilio-Signature` under auth token `token`: HMAC-SHA1 of the whole URL Twilio was
/// given (query included) followed by every POST parameter's name and value, sorted by name
/// (https://www.twilio.com/docs/usage/webhooks/webhooks-security).
fn twilio_signature(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut text = url.to_string();
    for (k, v) in sorted {
        text.push_str(k);
        text.push_str(v);
    }
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).expect("HMAC takes any key length");
    mac.update(text.as_bytes());
    B64.encode(mac.finalize().into_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;

    // Twilio's published request-validation vector (twilio-python
    // tests/unit/test_request_validator.py): a URL with a query and a `Digits` parameter,
    // the shape of a `<Gather action>` report.
    #[test]
    fn twilio_signature_matches_the_published_vector() {
        let params = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ];
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            twilio_signature("12345", url, &params),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        // Order of the parameters as given does not matter; the query does.
        let mut reversed = params;
        reversed.reverse();
        assert_eq!(
            twilio_signature("12345", url, &reversed),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert_ne!(
            twilio_signature("12345", "https://mycompany.com/myapp.php", &params),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    /// The request line's target, one header's value and the form body of a request.
    fn parts<'a>(request: &'a [u8], header: &str) -> (&'a str, String, Vec<(String, String)>) {
        let text = std::str::from_utf8(request).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let target = lines.next().unwrap().split(' ').nth(1).unwrap();
        let value = lines
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| k.eq_ignore_ascii_case(header))
            .map(|(_, v)| v.to_string())
            .unwrap();
        let decode = |s: &str| {
            let b = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(if b[i] == b'+' { b' ' } else { b[i] });
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        };
        let form = body
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (decode(k), decode(v))
            })
            .collect();
        (target, value, form)
    }

    fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
        form.iter().find(|(k, _)| k == name).unwrap().1.as_str()
    }

    #[test]
    fn a_pin_call_signs_the_digits_report_over_the_url_with_its_query() {
        let signers = Signers::new();
        let call = signers.twilio_pin_call("+14155550100", "+12125550123", "042917", 7);

        let (target, signature, form) = parts(&call.digits, "x-twilio-signature");
        assert_eq!(target, "/hooks/twilio/digits?attempt=1");
        assert_eq!(field(&form, "Digits"), "042917");
        assert_eq!(field(&form, "From"), "+14155550100");
        assert_eq!(field(&form, "To"), "+12125550123");
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let token = &signers.twilio_token;
        assert_eq!(
            signature,
            twilio_signature(
                token,
                "https://hush.bench.invalid/hooks/twilio/digits?attempt=1",
                &pairs
            )
        );
        assert_ne!(
            signature,
            twilio_signature(
                token,
                "https://hush.bench.invalid/hooks/twilio/digits",
                &pairs
            )
        );

        // The voice webhook of the same call: same CallSid, no digits, its own URL.
        let (target, signature, voice) = parts(&call.voice, "x-twilio-signature");
        assert_eq!(target, "/hooks/twilio/voice");
        assert_eq!(field(&voice, "CallSid"), field(&form, "CallSid"));
        assert!(field(&voice, "CallSid").ends_with(&format!("{:016x}", 7)));
        assert!(voice.iter().all(|(k, _)| k != "Digits"));
        let pairs: Vec<(&str, &str)> = voice
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            signature,
            twilio_signature(
                token,
                "https://hush.bench.invalid/hooks/twilio/voice",
                &pairs
            )
        );

        // Another call never repeats the CallSid, even with the same `n`.
        let again = signers.twilio_pin_call("+14155550100", "+12125550123", "042917", 7);
        let (_, _, other) = parts(&again.digits, "x-twilio-signature");
        assert_ne!(field(&other, "CallSid"), field(&form, "CallSid"));
    }
}
