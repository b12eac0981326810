//! PIN prompts on Vonage: the NCCO that asks a caller for a PIN, and the `input` action's
//! report of what they typed. The report comes to the action's own `eventUrl` (the digits
//! hook, signed with the same JWT as every voice webhook) and its answer is the NCCO that
//! replaces the prompt's (<https://developer.vonage.com/en/voice/voice-api/ncco-reference#input>).

use serde_json::{Map, Value, json};

use super::{is_json, is_provider_ref, number, params};
use crate::http::ApiError;
use crate::relay::dialect::Digits;
use crate::relay::{Inbound, Webhook, param};

/// Vonage's bounds on the `input` action's DTMF settings: `timeOut` is at most 10 seconds,
/// `maxDigits` at most 20 (<https://developer.vonage.com/en/voice/voice-api/ncco-reference#dtmf-input-settings>).
const MAX_TIMEOUT_SECS: u32 = 10;
const MAX_DIGITS: u8 = 20;

/// The NCCO asking for a PIN of `digits` digits: the prompt, then the `input` action whose
/// result Vonage posts to `event_url`.
///
/// `bargeIn` lets the caller type while the prompt still plays; Vonage requires an `input`
/// action right after a barge-in `talk`. `maxDigits` ends the input as soon as a whole PIN
/// came, `submitOnHash` when the caller ends a shorter one with `#`, and otherwise Vonage
/// reports after `timeOut` seconds without a key, with whatever came, so silence reaches the
/// broker too (`dtmf.timed_out`, digits empty). A pool may wait longer than Vonage allows;
/// such a prompt waits Vonage's longest.
pub(super) fn gather(digits: u8, timeout_secs: u32, prompt: &str, event_url: &str) -> Value {
    let input = json!({
        "action": "input",
        "type": ["dtmf"],
        "dtmf": {
            "maxDigits": digits.clamp(1, MAX_DIGITS),
            "timeOut": timeout_secs.clamp(1, MAX_TIMEOUT_SECS),
            "submitOnHash": true,
        },
        "eventUrl": [event_url],
        "eventMethod": "POST",
    });
    // Vonage's `talk` needs text to say: an empty prompt is a silent wait for the PIN.
    if prompt.is_empty() {
        return json!([input]);
    }
    json!([{ "action": "talk", "text": prompt, "bargeIn": true }, input])
}

/// Reads the `input` action's report: `uuid` (the call leg, which the answer webhook named
/// too), `from`, `to`, and `dtmf` as `{digits, timed_out}`; digits are `null` or empty when
/// nothing came (<https://developer.vonage.com/en/voice/voice-api/webhook-reference#input>).
/// Before multi-input, the same report carried `dtmf` as the digits themselves, beside a
/// `timed_out` of its own; that form, and any that arrives as parameters rather than JSON,
/// is read too.
pub(super) fn read(w: &Webhook) -> Result<Digits, ApiError> {
    let Some(p) = params(w) else {
        return Err(bad("the webhook parameters could not be read"));
    };
    let Some(to) = number(param(p, "to")) else {
        return Err(bad("the `to` parameter is not a number"));
    };
    let Some(uuid) = param(p, "uuid").filter(|u| is_provider_ref(u)) else {
        return Err(bad("the `uuid` parameter is missing or malformed"));
    };
    // Withheld callers come as `Unknown`, `Restricted` or nothing, as on the answer webhook.
    let from = number(param(p, "from"));
    let typed = if is_json(w) {
        json_digits(w)?
    } else {
        param(p, "dtmf")
            .ok_or_else(|| bad("the report carries no `dtmf` result"))?
            .to_string()
    };
    Ok(Digits {
        call: Inbound::call(from, to, uuid.to_string()),
        digits: keypad(typed)?,
    })
}

/// `dtmf.digits` of a JSON report, or `dtmf` itself in the older form. The parameters read
/// for the signature keep only scalars, so the body is read again for the nested object.
fn json_digits(w: &Webhook) -> Result<String, ApiError> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&w.body) else {
        return Err(bad("the webhook parameters could not be read"));
    };
    match body.get("dtmf") {
        Some(Value::Object(dtmf)) => digits_of(dtmf),
        Some(Value::String(digits)) => Ok(digits.clone()),
        _ => Err(bad("the report carries no `dtmf` result")),
    }
}

fn digits_of(dtmf: &Map<String, Value>) -> Result<String, ApiError> {
    match dtmf.get("digits") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(d)) => Ok(d.clone()),
        Some(_) => Err(bad("`dtmf.digits` is not text")),
    }
}

/// The digits as the broker takes them: a finishing `#` dropped, keypad keys only, no more
/// than Vonage collects. What was typed is never echoed back.
fn keypad(mut typed: String) -> Result<String, ApiError> {
    if typed.ends_with('#') {
        typed.pop();
    }
    let keys = |c: char| c.is_ascii_digit() || c == '*' || c == '#';
    if typed.len() > usize::from(MAX_DIGITS) || !typed.chars().all(keys) {
        return Err(bad("`dtmf.digits` holds no keypad digits"));
    }
    Ok(typed)
}

fn bad(why: &str) -> ApiError {
    ApiError::InvalidRequest(why.into())
}

#[cfg(test)]
mod tests {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
    use axum::response::IntoResponse;

    use super::*;

    const URL: &str = "https://h.test/hooks/vonage/digits?attempt=2";

    fn post(content_type: &str, body: &str) -> Webhook {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        Webhook::new(
            "https://h.test",
            Method::POST,
            &Uri::from_static("/hooks/vonage/digits?attempt=2"),
            headers,
            Bytes::from(body.to_string()),
        )
    }

    fn report(fields: Value) -> Webhook {
        post("application/json", &fields.to_string())
    }

    /// The report of the NCCO reference's example, with these DTMF results.
    fn example(dtmf: Value) -> Value {
        json!({
            "speech": { "results": [] },
            "dtmf": dtmf,
            "from": "15551234567",
            "to": "15557654321",
            "uuid": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab",
            "conversation_uuid": "CON-bbbbbbbb-cccc-dddd-eeee-0123456789ab",
            "timestamp": "2020-01-01T14:00:00.000Z",
        })
    }

    /// The status and problem `code` of a refusal.
    async fn refusal(e: ApiError) -> (u16, String, String) {
        let resp = e.into_response();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        (
            status,
            v["code"].as_str().unwrap().to_string(),
            v["detail"].as_str().unwrap().to_string(),
        )
    }

    #[test]
    fn the_prompt_is_said_while_the_pin_is_listened_for() {
        assert_eq!(
            gather(6, 4, "Enter your PIN", URL),
            json!([
                { "action": "talk", "text": "Enter your PIN", "bargeIn": true },
                {
                    "action": "input",
                    "type": ["dtmf"],
                    "dtmf": { "maxDigits": 6, "timeOut": 4, "submitOnHash": true },
                    "eventUrl": ["https://h.test/hooks/vonage/digits?attempt=2"],
                    "eventMethod": "POST",
                },
            ])
        );
    }

    #[test]
    fn the_prompt_travels_as_json_text() {
        let prompt = "Say \"PIN\" <now> & then \\ 'wait'\n😀";
        let ncco = gather(4, 4, prompt, URL);
        assert_eq!(ncco[0]["text"], prompt);
        let text = ncco.to_string();
        assert!(
            text.contains(r#""text":"Say \"PIN\" <now> & then \\ 'wait'\n😀""#),
            "{text}"
        );
    }

    #[test]
    fn settings_stay_within_what_vonage_takes() {
        let long = gather(30, 30, "p", URL);
        assert_eq!(long[1]["dtmf"]["timeOut"], 10);
        assert_eq!(long[1]["dtmf"]["maxDigits"], 20);
        let silent = gather(6, 4, "", URL);
        assert_eq!(silent.as_array().unwrap().len(), 1);
        assert_eq!(silent[0]["action"], "input");
    }

    #[test]
    fn a_report_with_digits_reads_as_the_call_the_answer_webhook_named() {
        let typed = read(&report(example(
            json!({ "digits": "123456", "timed_out": false }),
        )))
        .unwrap();
        assert_eq!(typed.digits, "123456");
        assert_eq!(
            typed.call.provider_ref,
            "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
        );
        assert_eq!(typed.call.to.reveal(), "+15557654321");
        assert_eq!(typed.call.from.unwrap().reveal(), "+15551234567");
        assert_eq!(typed.call.kind, crate::domain::session::Kind::Voice);
    }

    #[test]
    fn a_finishing_hash_is_dropped() {
        let typed = read(&report(example(
            json!({ "digits": "1234#", "timed_out": false }),
        )))
        .unwrap();
        assert_eq!(typed.digits, "1234");
    }

    #[test]
    fn silence_reads_as_no_digits() {
        for dtmf in [
            json!({ "digits": "", "timed_out": true }),
            json!({ "digits": null, "timed_out": true }),
            json!({ "timed_out": true }),
        ] {
            let typed = read(&report(example(dtmf.clone()))).unwrap();
            assert_eq!(typed.digits, "", "{dtmf}");
        }
    }

    #[test]
    fn a_withheld_caller_reads_as_none() {
        for from in [
            json!("Unknown"),
            json!("Restricted"),
            json!(""),
            Value::Null,
        ] {
            let mut fields = example(json!({ "digits": "123456", "timed_out": false }));
            fields["from"] = from.clone();
            let typed = read(&report(fields)).unwrap();
            assert!(typed.call.from.is_none(), "{from}");
            assert_eq!(typed.digits, "123456");
        }
        let mut fields = example(json!({ "digits": "1", "timed_out": false }));
        fields.as_object_mut().unwrap().remove("from");
        assert!(read(&report(fields)).unwrap().call.from.is_none());
    }

    #[test]
    fn the_older_flat_report_and_form_parameters_read_too() {
        let mut flat = example(json!("4321"));
        flat["timed_out"] = json!(false);
        assert_eq!(read(&report(flat)).unwrap().digits, "4321");
        let form = post(
            "application/x-www-form-urlencoded",
            "uuid=aaaaaaaa-bbbb&to=15557654321&from=15551234567&dtmf=9876&timed_out=false",
        );
        let typed = read(&form).unwrap();
        assert_eq!(typed.digits, "9876");
        assert_eq!(typed.call.provider_ref, "aaaaaaaa-bbbb");
    }

    #[tokio::test]
    async fn malformed_reports_are_refused_with_a_problem() {
        let ok = example(json!({ "digits": "123456", "timed_out": false }));
        let without = |name: &str| {
            let mut f = ok.clone();
            f.as_object_mut().unwrap().remove(name);
            report(f)
        };
        let with = |name: &str, v: Value| {
            let mut f = ok.clone();
            f[name] = v;
            report(f)
        };
        let cases = [
            ("not JSON", post("application/json", "{\"uuid\": ")),
            ("a JSON array", post("application/json", "[1, 2]")),
            ("no uuid", without("uuid")),
            ("a uuid no key can hold", with("uuid", json!("a b{c}"))),
            ("no to", without("to")),
            (
                "a to that is no number",
                with("to", json!("sip:x@example.com")),
            ),
            ("no dtmf", without("dtmf")),
            ("dtmf of the wrong type", with("dtmf", json!(42))),
            (
                "digits of the wrong type",
                with("dtmf", json!({ "digits": 12 })),
            ),
            (
                "no keypad digits",
                with("dtmf", json!({ "digits": "12ab" })),
            ),
            (
                "too many digits",
                with("dtmf", json!({ "digits": "1".repeat(21) })),
            ),
            (
                "form without dtmf",
                post("application/x-www-form-urlencoded", "uuid=a&to=15557654321"),
            ),
        ];
        for (why, w) in cases {
            let Err(e) = read(&w) else {
                panic!("{why}: read");
            };
            let (status, code, detail) = refusal(e).await;
            assert_eq!((status, code.as_str()), (400, "invalid_request"), "{why}");
            assert!(!detail.contains("123456"), "{why}: {detail}");
        }
    }
}
