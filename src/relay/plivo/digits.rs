//! PIN prompts in Plivo XML: the `<GetDigits>` document that asks for a PIN, and the request
//! that reports what was typed. Silence reaches hush too (through a `<Redirect>` to the same
//! URL), because the broker, not Plivo, decides what an empty prompt means.

use super::{parse, xml_escape};
use crate::domain::session::Kind;
use crate::http::ApiError;
use crate::relay::dialect;
use crate::relay::param;

/// Longer than any PIN, and than the 99 digits `<GetDigits>` takes by default: anything
/// longer did not come from a keypad.
const MAX_DIGITS: usize = 99;

/// Plivo's own wait between two digits, which the prompt never shortens.
const DIGIT_TIMEOUT_SECS: u32 = 2;

/// The prompt for `digits` digits, reported to `action`.
///
/// <https://www.plivo.com/docs/voice/xml/getdigits/>: `timeout` is how long Plivo waits for
/// the first digit, `digitTimeout` for each next one (the same silence, as a pool sets it,
/// but never under Plivo's default of 2 s), and `numDigits` ends the prompt once a whole PIN
/// came. When nothing is typed in time Plivo goes on to the next element, so a `<Redirect>`
/// to the same URL (<https://www.plivo.com/docs/voice/xml/redirect/>) reports the silence,
/// without `Digits`. `retries="1"` leaves asking again to the broker, which counts the
/// attempts in the URL. `log="false"` keeps the typed PIN out of Plivo's call logs
/// (<https://plivo.com/docs/voice/xml/input>). `<GetDigits>` rather than `<GetInput>`:
/// `<GetInput executionTimeout>` takes 5 to 60 s, and a pool's prompt may wait less.
pub(super) fn gather(digits: u8, timeout_secs: u32, prompt: &str, action: &str) -> String {
    let action = xml_escape(action);
    format!(
        r#"<Response><GetDigits action="{action}" method="POST" numDigits="{}" timeout="{}" digitTimeout="{}" retries="1" redirect="true" log="false"><Speak>{}</Speak></GetDigits><Redirect method="POST">{action}</Redirect></Response>"#,
        digits.max(1),
        timeout_secs.max(1),
        timeout_secs.max(DIGIT_TIMEOUT_SECS),
        xml_escape(prompt),
    )
}

/// Reads the end of a prompt: the `<GetDigits action>` request, which carries `Digits`
/// without the `finishOnKey` digit, or the `<Redirect>` after a silent prompt, which carries
/// none. Both carry the call's `CallUUID`, `From` and `To` as its answer URL did
/// (<https://www.plivo.com/docs/voice/xml/request>), so the call reads as it did there.
pub(super) fn read(params: &[(String, String)]) -> Result<dialect::Digits, ApiError> {
    let Some(call) = parse(Kind::Voice, params)? else {
        return Err(ApiError::InvalidRequest(
            "`To` is not a phone number".into(),
        ));
    };
    let raw = param(params, "Digits").unwrap_or_default().trim();
    let typed = raw.strip_suffix('#').unwrap_or(raw);
    // The value is never echoed: it may be most of a PIN.
    if typed.len() > MAX_DIGITS || !typed.bytes().all(|b| b.is_ascii_digit() || b == b'*') {
        return Err(ApiError::InvalidRequest(
            "`Digits` holds something other than keypad digits".into(),
        ));
    }
    Ok(dialect::Digits {
        call,
        digits: typed.to_string(),
    })
}
