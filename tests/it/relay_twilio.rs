//! Relay through twilio: signed webhooks in, the provider's answer document out.
