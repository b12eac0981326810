//! Reading hush's answers as a carrier reads them: just enough XML for TwiML, TeXML and
//! Plivo XML (attributes and text of the first element of a name, entities decoded), and
//! NCCO's JSON, turned into what the carrier does next.

use serde_json::Value;

use super::Dialect;

/// What the carrier makes of hush's answer.
pub(super) enum Act {
    /// Dial `to`, showing `caller_id`; report on the dialled leg at `status_url` if given.
    Ring {
        to: String,
        caller_id: String,
        status_url: Option<String>,
    },
    /// Speak this to the caller, then hang up.
    Say(String),
    /// Send a text; report its delivery at `status_url` if given.
    Text {
        to: String,
        from: String,
        body: String,
        status_url: Option<String>,
    },
    /// Nothing reaches anyone; why, for people.
    Nothing(&'static str),
}

/// `text` with XML's five entities and character references read back.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let Some(end) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let entity = &tail[1..end];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match ch {
            Some(c) => out.push(c),
            None => out.push_str(&tail[..=end]),
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The opening tag `<tag ...>` (its attributes text) and where its content starts.
fn open_tag<'a>(doc: &'a str, tag: &str) -> Option<(&'a str, usize)> {
    let needle = format!("<{tag}");
    let mut from = 0;
    while let Some(at) = doc[from..].find(&needle) {
        let start = from + at + needle.len();
        if doc[start..].starts_with([' ', '>', '/', '\t', '\n']) {
            let end = start + doc[start..].find('>')?;
            return Some((&doc[start..end], end + 1));
        }
        from = start;
    }
    None
}

/// The value of attribute `name` of the first `<tag>`.
fn attr(doc: &str, tag: &str, name: &str) -> Option<String> {
    let (attrs, _) = open_tag(doc, tag)?;
    let needle = format!("{name}=\"");
    let mut from = 0;
    while let Some(at) = attrs[from..].find(&needle) {
        let start = from + at;
        // A whole attribute name, not the end of a longer one.
        if start == 0 || attrs[..start].ends_with([' ', '\t', '\n']) {
            let value = &attrs[start + needle.len()..];
            return Some(unescape(&value[..value.find('"')?]));
        }
        from = start + needle.len();
    }
    None
}

/// The text content of the first `<tag>`.
fn content(doc: &str, tag: &str) -> Option<String> {
    let (attrs, start) = open_tag(doc, tag)?;
    if attrs.ends_with('/') {
        return Some(String::new());
    }
    let end = start + doc[start..].find(&format!("</{tag}>"))?;
    Some(unescape(&doc[start..end]))
}

/// A number as Plivo and Vonage write it (digits) in E.164 form.
pub(super) fn plus(n: &str) -> String {
    format!("+{}", n.trim().trim_start_matches('+'))
}

/// A call hush asks for a PIN (a PIN session on the number): the simulated phone types none.
const PIN_ASKED: &str = "The caller is asked for a PIN; the sandbox does not type one";

/// What a carrier does with the answer to a call, in `dialect`.
pub(super) fn read_call(dialect: Dialect, doc: &str) -> Act {
    match dialect {
        Dialect::Twilio | Dialect::Telnyx | Dialect::Plivo
            if ["Gather", "GetDigits", "GetInput"]
                .iter()
                .any(|tag| open_tag(doc, tag).is_some()) =>
        {
            Act::Nothing(PIN_ASKED)
        }
        Dialect::Twilio | Dialect::Telnyx | Dialect::Plivo => {
            let digits = dialect == Dialect::Plivo;
            let number = |n: String| if digits { plus(&n) } else { n };
            if let (Some(caller_id), Some(to)) =
                (attr(doc, "Dial", "callerId"), content(doc, "Number"))
            {
                return Act::Ring {
                    to: number(to.trim().to_string()),
                    caller_id: number(caller_id),
                    status_url: attr(doc, "Number", "statusCallback"),
                };
            }
            let say = if digits { "Speak" } else { "Say" };
            match content(doc, say) {
                Some(message) => Act::Say(message),
                None => Act::Nothing("The call is refused: nobody is reached"),
            }
        }
        Dialect::Vonage => {
            let ncco: Value = serde_json::from_str(doc).unwrap_or_default();
            let asks = ncco
                .as_array()
                .is_some_and(|a| a.iter().any(|step| step["action"] == "input"));
            if asks {
                return Act::Nothing(PIN_ASKED);
            }
            let first = ncco.get(0).cloned().unwrap_or_default();
            match first["action"].as_str() {
                Some("connect") => Act::Ring {
                    to: plus(first["endpoint"][0]["number"].as_str().unwrap_or_default()),
                    caller_id: plus(first["from"].as_str().unwrap_or_default()),
                    status_url: None,
                },
                Some("talk") => Act::Say(first["text"].as_str().unwrap_or_default().into()),
                _ => Act::Nothing("The call ends at once: nobody is reached"),
            }
        }
    }
}

/// The text a TwiML or Plivo XML answer to a text from `sender` to `proxy` sends.
pub(super) fn read_text(dialect: Dialect, doc: &str, sender: &str, proxy: &str) -> Act {
    let (sender, proxy) = (sender.to_string(), proxy.to_string());
    match dialect {
        Dialect::Twilio => {
            let Some(message) = content(doc, "Message") else {
                return Act::Nothing("No text is sent on");
            };
            match attr(doc, "Message", "to") {
                Some(to) => Act::Text {
                    to,
                    from: attr(doc, "Message", "from").unwrap_or(proxy),
                    body: content(doc, "Body").unwrap_or(message),
                    status_url: attr(doc, "Message", "action"),
                },
                // Without `to`, a reply to the sender from the number it wrote to.
                None => Act::Text {
                    to: sender,
                    from: proxy,
                    body: message,
                    status_url: None,
                },
            }
        }
        _ => match (
            attr(doc, "Message", "src"),
            attr(doc, "Message", "dst"),
            content(doc, "Message"),
        ) {
            (Some(src), Some(dst), Some(body)) => Act::Text {
                to: plus(&dst),
                from: plus(&src),
                body,
                status_url: attr(doc, "Message", "callbackUrl"),
            },
            _ => Act::Nothing("No text is sent on"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_read_as_a_carrier_reads_them() {
        let doc = r#"<Response><Dial callerId="+12015550100" answerOnBridge="true"><Number statusCallback="https://h.example/hooks/twilio/status?a=1&amp;b=2">+14155550143</Number></Dial></Response>"#;
        assert_eq!(attr(doc, "Dial", "callerId").unwrap(), "+12015550100");
        assert_eq!(content(doc, "Number").unwrap(), "+14155550143");
        assert_eq!(
            attr(doc, "Number", "statusCallback").unwrap(),
            "https://h.example/hooks/twilio/status?a=1&b=2"
        );
        let say = "<Response><Say>Ended &lt;here&gt; &amp; &#13;now</Say><Hangup/></Response>";
        assert_eq!(content(say, "Say").unwrap(), "Ended <here> & \rnow");
        assert_eq!(content(say, "Hangup").unwrap(), "");
        assert!(attr(say, "Dial", "callerId").is_none());
        // `<Numbers>` is not `<Number>`, and `xto=` is not `to=`.
        let tricky = r#"<Numbers/><Number>+1</Number><Message xto="a" to="b">hi</Message>"#;
        assert_eq!(content(tricky, "Number").unwrap(), "+1");
        assert_eq!(attr(tricky, "Message", "to").unwrap(), "b");
    }

    #[test]
    fn a_pin_prompt_reaches_nobody_in_the_sandbox() {
        let gather =
            r#"<Response><Gather input="dtmf" numDigits="6"><Say>PIN?</Say></Gather></Response>"#;
        assert!(matches!(
            read_call(Dialect::Twilio, gather),
            Act::Nothing(PIN_ASKED)
        ));
        let ncco = r#"[{"action":"talk","text":"PIN?","bargeIn":true},{"action":"input"}]"#;
        assert!(matches!(
            read_call(Dialect::Vonage, ncco),
            Act::Nothing(PIN_ASKED)
        ));
    }
}
