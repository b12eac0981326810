//! Provider webhooks. One provider-neutral flow ([`dialect`]) verifies the signature over the
//! URL the provider called, reads an [`Inbound`], asks the broker and answers the
//! [`Decision`](crate::broker::Decision); each provider is one [`dialect::Dialect`] saying only how its wire differs.
//! A provider whose credentials are not configured has no routes at all (404), so no
//! operator can run one unauthenticated by mistake.

pub mod calls;
pub mod dialect;
pub mod outbound;
pub mod plivo;
pub mod telnyx;
pub mod twilio;
pub mod vonage;

use std::sync::OnceLock;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;

use crate::config::Providers;
use crate::domain::E164;
use crate::domain::session::Kind;
use crate::http::{AppState, problem};
use dialect::Dialect;

/// A webhook request as the provider sent it, with the URL it called as the provider sees
/// it (`HUSH_PUBLIC_URL` + path + query), which is what signatures cover. Its parameters are
/// decoded at most once, on first use, and shared by the signature check and the reading:
/// `url` and `body` are not to change once it is built.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub method: Method,
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    form: OnceLock<Vec<(String, String)>>,
    query: OnceLock<Vec<(String, String)>>,
    params: OnceLock<Option<Vec<(String, String)>>>,
}

/// Parameters as a list of names and values, in order, repeats kept.
pub type Params = Vec<(String, String)>;

impl Webhook {
    pub fn new(
        public_url: &str,
        method: Method,
        uri: &Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Self {
        let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut url = String::with_capacity(public_url.len() + path_and_query.len());
        url.push_str(public_url);
        url.push_str(path_and_query);
        Webhook {
            method,
            url,
            headers,
            body,
            form: OnceLock::new(),
            query: OnceLock::new(),
            params: OnceLock::new(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `application/x-www-form-urlencoded` parameters of the body, in order, repeats kept.
    pub fn form(&self) -> &[(String, String)] {
        self.form.get_or_init(|| form_urlencoded(&self.body))
    }

    /// Query parameters of the URL, in order, repeats kept.
    pub fn query(&self) -> &[(String, String)] {
        self.query.get_or_init(|| match self.url.split_once('?') {
            Some((_, q)) => form_urlencoded(q.as_bytes()),
            None => Vec::new(),
        })
    }

    /// Parameters a dialect reads in a way of its own (Vonage's JSON bodies), read by `read`
    /// on first use only, so the signature check and the reading share one parse. `None`
    /// when they cannot be read. One dialect serves a request, so one `read` is ever used
    /// on it.
    pub fn params_with(
        &self,
        read: impl FnOnce(&Webhook) -> Option<Params>,
    ) -> Option<&[(String, String)]> {
        self.params.get_or_init(|| read(self)).as_deref()
    }
}

/// Every hook takes its request as a [`Webhook`]: the body read whole (up to the API's body
/// limit) and the URL as the provider called it, before anything is parsed.
impl axum::extract::FromRequest<AppState> for Webhook {
    type Rejection = crate::http::ApiError;

    async fn from_request(
        req: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, crate::http::BODY_LIMIT)
            .await
            .map_err(|e| {
                let mut cur: Option<&dyn std::error::Error> = Some(&e);
                while let Some(err) = cur {
                    if err.to_string().contains("length limit") {
                        return crate::http::ApiError::PayloadTooLarge;
                    }
                    cur = err.source();
                }
                crate::http::ApiError::InvalidRequest("the body could not be read".into())
            })?;
        Ok(Webhook::new(
            &state.public_url,
            parts.method,
            &parts.uri,
            parts.headers,
            body,
        ))
    }
}

/// Decodes `a=1&b=2` pairs (`+` is a space, `%XX` a byte), keeping order and repeats.
pub fn form_urlencoded(input: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &[u8]) -> String {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    let hex = std::str::from_utf8(&s[i + 1..i + 3]).ok();
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    input
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |&b| b == b'=');
            let k = decode(it.next().unwrap_or_default());
            let v = decode(it.next().unwrap_or_default());
            (k, v)
        })
        .collect()
}

/// The first value of a parameter.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// An inbound call or text in provider-neutral form.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub kind: Kind,
    /// `None` for a withheld or unusable caller ID.
    pub from: Option<E164>,
    pub to: E164,
    pub body: Option<String>,
    pub media: Vec<String>,
    /// The provider's call or message id.
    pub provider_ref: String,
}

impl Inbound {
    /// A call, which carries nothing but who calls whom.
    pub fn call(from: Option<E164>, to: E164, provider_ref: String) -> Self {
        Inbound {
            kind: Kind::Voice,
            from,
            to,
            body: None,
            media: Vec::new(),
            provider_ref,
        }
    }

    /// A text with its body and any media URLs.
    pub fn text(
        from: Option<E164>,
        to: E164,
        body: String,
        media: Vec<String>,
        provider_ref: String,
    ) -> Self {
        Inbound {
            kind: Kind::Sms,
            from,
            to,
            body: Some(body),
            media,
            provider_ref,
        }
    }
}

/// Escapes text for XML content and attribute values so that what the provider's parser
/// reads back is the original. XML 1.0 cannot carry most C0 controls at all, even as
/// references, so they are dropped; a raw CR would be folded into LF by the parser, so it
/// travels as a reference.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// How a provider's REST API answered a request hush made (a text to send, a call to
/// place), read the same way for every provider: 2xx is accepted, with its JSON body (`Null`
/// when it has none); 429, 5xx and transport failures are worth another try
/// ([`Rejected::retry`]); any other status is a refusal. What the provider said is not kept:
/// its messages may quote the numbers back.
pub async fn rest_answer(
    api: &str,
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<serde_json::Value, Rejected> {
    let resp = sent.map_err(|e| Rejected {
        retry: true,
        why: format!(
            "{api} could not be reached{}",
            if e.is_timeout() { " in time" } else { "" }
        ),
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp.json().await.unwrap_or(serde_json::Value::Null));
    }
    Err(Rejected {
        retry: status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error(),
        why: format!("{api} answered HTTP {}", status.as_u16()),
    })
}

/// A request a provider's REST API did not accept.
#[derive(Debug)]
pub struct Rejected {
    /// Whether the same request is worth sending again later.
    pub retry: bool,
    pub why: String,
}

impl From<Rejected> for outbound::SendError {
    fn from(r: Rejected) -> Self {
        if r.retry {
            outbound::SendError::Retry(r.why)
        } else {
            outbound::SendError::Permanent(r.why)
        }
    }
}

/// Constant-time comparison of two signatures.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The answer to a webhook whose signature does not verify. Nothing else is read first.
pub fn forbidden() -> Response {
    problem(
        StatusCode::FORBIDDEN,
        "invalid_signature",
        "Invalid signature",
        "the webhook signature is missing or does not verify".into(),
    )
}

/// The routes of every provider whose credentials are configured.
pub fn router(state: &AppState) -> Router<AppState> {
    let p = &state.config.providers;
    Router::new()
        .merge(mounted::<twilio::Twilio>(p))
        .merge(mounted::<telnyx::Telnyx>(p))
        .merge(mounted::<plivo::Plivo>(p))
        .merge(mounted::<vonage::Vonage>(p))
}

/// Dialect `D`'s routes when its credentials are configured; none otherwise.
fn mounted<D: Dialect>(p: &Providers) -> Router<AppState> {
    if D::enabled(p) {
        counting_refusals(D::NAME, dialect::routes::<D>())
    } else {
        Router::new()
    }
}

/// A provider's routes, counting each answer of [`forbidden`] (the only 403 a webhook gets)
/// as a signature failure of that provider.
fn counting_refusals(provider: &'static str, routes: Router<AppState>) -> Router<AppState> {
    routes.layer(axum::middleware::map_response(
        move |r: Response| async move {
            if r.status() == StatusCode::FORBIDDEN {
                crate::telemetry::METRICS
                    .webhook_signature_failures
                    .with_label_values(&[provider])
                    .inc();
            }
            r
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_keeps_order_and_repeats() {
        let p = form_urlencoded(b"Body=a+b%26c&MediaUrl0=x&Digits=1&Digits=2&Bad=%zz&End=%4");
        assert_eq!(p[0], ("Body".into(), "a b&c".into()));
        assert_eq!(param(&p, "Digits"), Some("1"));
        assert_eq!(p.iter().filter(|(k, _)| k == "Digits").count(), 2);
        assert_eq!(param(&p, "Bad"), Some("%zz"));
        assert_eq!(param(&p, "End"), Some("%4"));
    }

    fn webhook(url_path: &str, body: &str) -> Webhook {
        Webhook::new(
            "https://hush.example",
            Method::POST,
            &url_path.parse::<Uri>().unwrap(),
            HeaderMap::new(),
            Bytes::from(body.to_string()),
        )
    }

    #[test]
    fn a_webhook_decodes_its_form_and_query_once() {
        let w = webhook("/hooks/x?ref=SM1&a=%20", "To=%2B1&Body=a+b");
        assert_eq!(w.url, "https://hush.example/hooks/x?ref=SM1&a=%20");
        let first = w.form();
        assert_eq!(param(first, "Body"), Some("a b"));
        // The second read is the very list the first made, not a second decoding.
        assert!(std::ptr::eq(first, w.form()));
        assert_eq!(param(w.query(), "a"), Some(" "));
        assert!(std::ptr::eq(w.query(), w.query()));
        // A clone keeps what was decoded and reads the same.
        assert_eq!(w.clone().form(), first);
    }

    #[test]
    fn a_dialects_own_parameters_are_read_once() {
        let w = webhook("/hooks/x", r#"{"to":"1"}"#);
        let reads = std::cell::Cell::new(0);
        let read = |_: &Webhook| {
            reads.set(reads.get() + 1);
            Some(vec![("to".to_string(), "1".to_string())])
        };
        assert_eq!(param(w.params_with(read).unwrap(), "to"), Some("1"));
        assert_eq!(param(w.params_with(read).unwrap(), "to"), Some("1"));
        assert_eq!(reads.get(), 1);
        // Unreadable parameters are remembered as such too.
        let w = webhook("/hooks/x", "not json");
        assert!(w.params_with(|_| None).is_none());
        assert!(w.params_with(|_| Some(Vec::new())).is_none());
    }

    #[test]
    fn xml_escaping_round_trips_metacharacters() {
        assert_eq!(
            xml_escape("<a href=\"x\">&'😀"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;😀"
        );
    }
}
