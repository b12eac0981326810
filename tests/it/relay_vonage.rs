//! Relay through vonage: signed webhooks in, the provider's answer document out.
