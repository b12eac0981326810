//! The providers that place calls the app starts, as the API's [`Dialer`]s: one per
//! dialect whose call API credentials are configured, each holding the HTTP client its
//! requests go out on.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Client;

use super::dialect::CallApi;
use super::plivo::Plivo;
use super::telnyx::Telnyx;
use super::twilio::Twilio;
use super::vonage::Vonage;
use crate::broker::CallStart;
use crate::config::Providers;
use crate::http::calls::{CallError, Dialer, Dialers, Placed};

/// The longest a provider takes to accept a call before the app is told to retry.
pub const PLACE_TIMEOUT: Duration = Duration::from_secs(8);

struct Via<D> {
    http: Client,
    providers: Providers,
    dialect: PhantomData<fn() -> D>,
}

impl<D: CallApi> Dialer for Via<D> {
    fn provider(&self) -> &'static str {
        D::NAME
    }

    fn place<'a>(
        &'a self,
        public_url: &'a str,
        call: &'a CallStart,
    ) -> Pin<Box<dyn Future<Output = Placed> + Send + 'a>> {
        Box::pin(D::place_call(&self.http, &self.providers, public_url, call))
    }
}

fn via<D: CallApi>(http: &Client, p: &Providers) -> Option<Arc<dyn Dialer>> {
    (D::enabled(p) && D::places_calls(p)).then(|| {
        Arc::new(Via::<D> {
            http: http.clone(),
            providers: p.clone(),
            dialect: PhantomData,
        }) as Arc<dyn Dialer>
    })
}

/// Every provider whose webhooks are served and whose call API is configured.
pub fn dialers(p: &Providers) -> Dialers {
    // A key that cannot sign would fail every call: say so once, at start.
    if let (Some(app), Some(key)) = (&p.vonage_application_id, &p.vonage_private_key)
        && super::vonage::calls::jwt(app, key.expose(), 0).is_none()
    {
        tracing::error!(
            "HUSH_VONAGE_PRIVATE_KEY is no PKCS#8 RSA key: calls through Vonage will fail"
        );
    }
    let http = Client::builder()
        .timeout(PLACE_TIMEOUT)
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap_or_default();
    [
        via::<Twilio>(&http, p),
        via::<Telnyx>(&http, p),
        via::<Plivo>(&http, p),
        via::<Vonage>(&http, p),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .into()
}

/// A provider's answer to a call request ([`super::rest_answer`]): what is worth a retry
/// makes the provider unavailable, any other refusal refuses the call.
pub async fn answered(
    provider: &str,
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<serde_json::Value, CallError> {
    super::rest_answer(provider, sent).await.map_err(|r| {
        if r.retry {
            CallError::Unavailable(r.why)
        } else {
            CallError::Refused(r.why)
        }
    })
}
