//! `eerag gateway`: the flags, and the library's gateway
//! (`eerag_client::gateway`) served until Ctrl-C.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use eerag_client::gateway::{self, Gateway, GatewayOptions};

use crate::client_cmds::{explain_client, ConnectArgs};

/// `eerag gateway`.
#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The collection chat completions retrieve from.
    #[arg(long)]
    pub collection: String,
    /// Where apps connect (loopback only: the gateway handles plaintext).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Chunks retrieved per question.
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    /// Require this bearer token from apps (set it as the app's OpenAI API
    /// key). Without it any local process may use the gateway — and so the
    /// key; set it on a machine shared with other users.
    #[arg(long, env = "EERAG_GATEWAY_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Answer length when the request does not say.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
}

/// Runs the gateway until Ctrl-C.
pub fn run(args: GatewayArgs) -> Result<()> {
    gateway::check_listen(args.listen)?;
    // The blocking HTTP client is made (and dropped) outside the runtime.
    let client = args.connect.connect()?;
    let gateway = Gateway::new(
        client,
        GatewayOptions {
            collection: args.collection.clone(),
            k: args.k,
            api_key: args.api_key.clone(),
            max_tokens: args.max_tokens,
        },
    )
    .map_err(|e| match e {
        gateway::GatewayError::Client(e) => explain_client(e, &args.connect.server),
        other => other.into(),
    })?;
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("listening on {}", args.listen))?;
    println!(
        "OpenAI-compatible gateway on http://{}/v1 (collection {:?}, host {}); set your app's base URL to it",
        listener.local_addr()?,
        args.collection,
        args.connect.server
    );
    gateway::serve(listener, gateway, async {
        let _ = tokio::signal::ctrl_c().await;
    })?;
    Ok(())
}
