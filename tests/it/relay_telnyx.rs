//! Relay through telnyx: signed webhooks in, the provider's answer document out.
