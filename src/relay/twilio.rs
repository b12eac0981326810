//! The twilio dialect: verify, parse, render.

use axum::Router;

use crate::api::AppState;
use crate::config::Providers;

pub fn enabled(_: &Providers) -> bool {
    false
}

pub fn routes() -> Router<AppState> {
    Router::new()
}
