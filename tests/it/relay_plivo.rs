//! Relay through plivo: signed webhooks in, the provider's answer document out.
