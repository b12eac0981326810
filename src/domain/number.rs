//! Phone numbers. A participant's number is personal data: it prints redacted and its
//! digits come out only through [`E164::reveal`], so every place that needs them is named.

use std::fmt;

/// A phone number in E.164 form (`+` and 8 to 15 digits). [`E164::parse`] also checks it
/// against `phonenumber`'s metadata; [`E164::parse_syntax`] checks the form only, for hot
/// paths where the value is only looked up (an unknown number simply matches nothing).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164 {
    text: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NumberError {
    #[error("not an E.164 number: it must start with + and hold 8 to 15 digits")]
    Format,
    #[error("not a valid phone number for its country")]
    Invalid,
}

impl E164 {
    /// Parses strict E.164 text and checks the number is valid for its country.
    pub fn parse(input: &str) -> Result<E164, NumberError> {
        let n = E164::parse_syntax(input)?;
        let parsed = phonenumber::parse(None, &n.text).map_err(|_| NumberError::Invalid)?;
        if !parsed.is_valid()
            || format!("+{}{}", parsed.code().value(), parsed.national()) != n.text
        {
            // A leading-zero national number or an extension would change the digits.
            return Err(NumberError::Invalid);
        }
        Ok(n)
    }

    /// Checks the E.164 form only: `+` then 8 to 15 digits, the first not zero.
    pub fn parse_syntax(input: &str) -> Result<E164, NumberError> {
        let s = input.trim();
        let digits = s.strip_prefix('+').ok_or(NumberError::Format)?;
        if !(8..=15).contains(&digits.len())
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.starts_with('0')
        {
            return Err(NumberError::Format);
        }
        Ok(E164 {
            text: s.to_string(),
        })
    }

    /// Parses the digits-only form some providers send (`14155550123`).
    pub fn parse_digits(input: &str) -> Result<E164, NumberError> {
        let s = input.trim();
        if s.starts_with('+') {
            return E164::parse(s);
        }
        E164::parse(&format!("+{s}"))
    }

    /// The real number. Call only where the digits must leave hush (an answer to the
    /// provider or the app) or be sealed.
    pub fn reveal(&self) -> &str {
        &self.text
    }

    /// The digits without `+`, for providers that want them so.
    pub fn reveal_digits(&self) -> &str {
        &self.text[1..]
    }

    /// Where the number is, as far as allocation cares. The country code is the prefix of
    /// one to three digits that `phonenumber`'s metadata knows (country codes are a prefix
    /// code, so at most one prefix is one), and the national number is what follows it,
    /// which [`E164::parse`] has checked for every number that reaches allocation. A full
    /// parse here would match the country's metadata patterns again: about 90,000
    /// instructions per session made.
    pub fn geo(&self) -> Geo {
        let digits = self.reveal_digits();
        let code = (1..=3.min(digits.len())).find_map(|len| {
            let code: u16 = digits[..len].parse().ok()?;
            phonenumber::metadata::DATABASE
                .by_code(&code)
                .map(|_| (code, len))
        });
        let Some((country, len)) = code else {
            return Geo {
                country: 0,
                area: None,
            };
        };
        let national = &digits[len..];
        // Only the North American plan has a fixed-length area code that the number itself
        // shows (the first three national digits). Elsewhere area codes vary in length, so
        // area-code matching falls back to country matching.
        let area = (country == 1 && national.len() == 10).then(|| national[..3].to_string());
        Geo { country, area }
    }

    /// `+1415•••••23`: enough to tell numbers apart in a log, not enough to call anyone.
    pub fn redacted(&self) -> String {
        let head = 5.min(self.text.len());
        let tail = 2.min(self.text.len() - head);
        let hidden = self.text.len() - head - tail;
        format!(
            "{}{}{}",
            &self.text[..head],
            "•".repeat(hidden),
            &self.text[self.text.len() - tail..]
        )
    }
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The geographic facts allocation matches on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geo {
    pub country: u16,
    pub area: Option<String>,
}

impl Geo {
    /// Index suffix for the country level (`c1`).
    pub fn country_tag(&self) -> String {
        format!("c{}", self.country)
    }
    /// Index suffix for the area level (`a1415`), when the country has one.
    pub fn area_tag(&self) -> Option<String> {
        self.area
            .as_ref()
            .map(|a| format!("a{}{}", self.country, a))
    }
}

/// What a proxy number can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub voice: bool,
    pub sms: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities {
        voice: true,
        sms: true,
    };

    pub fn parse_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Option<Capabilities> {
        let mut caps = Capabilities {
            voice: false,
            sms: false,
        };
        for item in items {
            match item.trim() {
                "voice" => caps.voice = true,
                "sms" => caps.sms = true,
                "" => {}
                _ => return None,
            }
        }
        (caps.voice || caps.sms).then_some(caps)
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.voice {
            v.push("voice");
        }
        if self.sms {
            v.push("sms");
        }
        v
    }

    /// The load-index classes this number belongs to: `v` (voice), `s` (sms), `b` (both).
    pub fn classes(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.voice {
            v.push("v");
        }
        if self.sms {
            v.push("s");
        }
        if self.voice && self.sms {
            v.push("b");
        }
        v
    }

    /// Compact stored form: `v`, `s` or `vs`.
    pub fn code(&self) -> &'static str {
        match (self.voice, self.sms) {
            (true, true) => "vs",
            (true, false) => "v",
            _ => "s",
        }
    }

    pub fn from_code(code: &str) -> Capabilities {
        Capabilities {
            voice: code.contains('v'),
            sms: code.contains('s'),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_valid_and_rejects_invalid() {
        let n = E164::parse("+12015550100").unwrap();
        assert_eq!(n.reveal(), "+12015550100");
        assert_eq!(n.geo().area_tag().as_deref(), Some("a1201"));
        assert_eq!(n.geo().country_tag(), "c1");
        assert_eq!(E164::parse("12015550100"), Err(NumberError::Format));
        assert_eq!(E164::parse("+1415"), Err(NumberError::Format));
        assert!(E164::parse("+999123456789").is_err());
        assert!(E164::parse("+1201555010a").is_err());
        assert_eq!(
            E164::parse_digits("447911123456").unwrap().reveal(),
            "+447911123456"
        );
        assert_eq!(E164::parse("+447911123456").unwrap().geo().area, None);
        assert_eq!(E164::parse("+447911123456").unwrap().geo().country, 44);
        assert!(E164::parse_syntax("+99912345678").is_ok());
        assert!(E164::parse("+99912345678").is_err());
        assert!(E164::parse_syntax("+0123456789").is_err());
    }

    #[test]
    fn prints_redacted() {
        let n = E164::parse("+14155550123").unwrap();
        let shown = format!("{n} {n:?}");
        assert!(!shown.contains("5550123"), "{shown}");
        assert!(shown.starts_with("+1415"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = E164::parse(&s);
            let _ = E164::parse_digits(&s);
        }

        /// The country code read by its prefix is the one a full parse finds, for valid
        /// numbers of every calling code (the metadata's example numbers, with other digits).
        #[test]
        fn geo_agrees_with_a_full_parse(pick in 0usize..10_000, tail in 0u32..10_000) {
            let db = &*phonenumber::metadata::DATABASE;
            let examples: Vec<String> = (1u16..1000)
                .filter_map(|code| db.by_code(&code))
                .flatten()
                .flat_map(|m| {
                    let code = m.country_code();
                    let d = m.descriptors();
                    [d.fixed_line(), d.mobile(), d.toll_free()]
                        .into_iter()
                        .flatten()
                        .filter_map(move |x| x.example().map(|e| format!("+{code}{e}")))
                })
                .collect();
            let example = &examples[pick % examples.len()];
            // Other last digits where they still make a valid number.
            let varied = format!("{}{:04}", &example[..example.len() - 4], tail);
            for text in [example.as_str(), varied.as_str()] {
                if let Ok(n) = E164::parse(text) {
                    let full = phonenumber::parse(None, text).unwrap();
                    let national = full.national().to_string();
                    let area = (full.code().value() == 1 && national.len() == 10)
                        .then(|| national[..3].to_string());
                    prop_assert_eq!(
                        n.geo(),
                        Geo { country: full.code().value(), area },
                        "{}", n
                    );
                }
            }
        }

        #[test]
        fn redaction_hides_the_subscriber_digits(tail in 1000u32..9999) {
            let text = format!("+1415555{tail}");
            if let Ok(n) = E164::parse(&text) {
                let shown = n.to_string();
                let hidden = format!("555{tail}");
                prop_assert!(!shown.contains(&hidden));
            }
        }
    }
}
