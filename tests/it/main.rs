//! Integration tests: hush served in-process against real `redis-server` processes.
//!
//! One binary, one module per capability, one shared harness. Each test gets its own key
//! prefix and secrets on a Redis the harness starts, so tests run in parallel safely.

mod allocation;
mod app_texts;
mod audit;
mod auth;
mod choose;
mod cli;
mod click_to_call;
mod console;
mod deploy;
mod dev;
mod doorbell;
mod edge;
mod errors;
mod events;
mod faults;
mod functions;
mod harness;
mod idempotency;
mod intercept;
mod layers;
mod migrate;
mod openapi;
mod ops;
mod outage;
mod pin;
mod pin_plivo;
mod pin_telnyx;
mod pin_vonage;
mod pool_low;
mod pools;
mod privacy;
mod receiver;
mod recording;
mod relay_plivo;
mod relay_telnyx;
mod relay_twilio;
mod relay_vonage;
mod replicas;
mod restart;
mod rotate;
mod sandbox;
mod session_options;
mod sessions;
mod shards;
mod slow_clients;
mod ssrf;
mod tenancy;
mod times;
mod tls;
mod topology;
mod ttl;
mod upgrade;
