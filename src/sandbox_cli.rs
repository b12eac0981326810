//! `hush sandbox call|text`: asks the running `hush dev` (or any hush with the sandbox on)
//! to play a call or text through its simulated carrier, and prints the steps. The address
//! and the key come from `./.hush/` unless given.

use std::path::Path;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum SandboxCmd {
    /// Call a proxy number from a sandbox phone.
    Call {
        #[command(flatten)]
        common: Common,
    },
    /// Text a proxy number from a sandbox phone.
    Text {
        #[command(flatten)]
        common: Common,
        /// What the text says.
        #[arg(long)]
        body: String,
    },
}

#[derive(Args)]
pub struct Common {
    /// The sandbox phone calling or texting (`GET /v1/sandbox` lists them).
    #[arg(long)]
    from: String,
    /// The proxy number called or texted.
    #[arg(long)]
    to: String,
    /// twilio, telnyx, plivo or vonage.
    #[arg(long, default_value = "twilio")]
    dialect: String,
    /// hush's address; default the one `hush dev` wrote to ./.hush/url.
    #[arg(long, env = "HUSH_SANDBOX_URL")]
    url: Option<String>,
    /// An API key with scope `relay`; default the dev admin key in ./.hush/admin.key.
    #[arg(long, env = "HUSH_API_KEY", hide_env_values = true)]
    key: Option<String>,
}

fn from_dev_dir(given: Option<String>, file: &str, what: &str) -> anyhow::Result<String> {
    if let Some(v) = given.filter(|v| !v.is_empty()) {
        return Ok(v);
    }
    let path = Path::new(".hush").join(file);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no {what} given and {} cannot be read; run this where `hush dev` runs, or pass it",
            path.display()
        )
    })?;
    Ok(text.trim().to_string())
}

pub async fn run(cmd: SandboxCmd) -> anyhow::Result<()> {
    let (common, path, mut body) = match cmd {
        SandboxCmd::Call { common } => (common, "/v1/sandbox/calls", json!({})),
        SandboxCmd::Text { common, body } => (common, "/v1/sandbox/texts", json!({ "body": body })),
    };
    body["from"] = json!(common.from);
    body["to"] = json!(common.to);
    body["dialect"] = json!(common.dialect);
    let url = from_dev_dir(common.url, "url", "--url")?;
    let key = from_dev_dir(common.key, "admin.key", "--key")?;
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", url.trim_end_matches('/')))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("hush does not answer at {url}; is `hush dev` running?"))?;
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        if status.as_u16() == 404 && answer["code"] == "not_found" {
            bail!("the sandbox is off at {url} (it is on under `hush dev`, or HUSH_SANDBOX=true)");
        }
        bail!(
            "HTTP {status}: {}",
            answer["detail"].as_str().unwrap_or("no detail")
        );
    }
    for step in answer["steps"].as_array().into_iter().flatten() {
        println!(
            "[{}] {}",
            step["step"].as_str().unwrap_or_default(),
            step["title"].as_str().unwrap_or_default()
        );
        for line in step["detail"].as_str().unwrap_or_default().lines() {
            println!("    {line}");
        }
        println!();
    }
    Ok(())
}
