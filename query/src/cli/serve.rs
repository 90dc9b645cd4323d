//! `serve` (`eerag-host serve`, `eerag serve`): the host process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Auth;
use crate::config::ServerFile;
use crate::engine::EngineLimits;
use crate::server::{self, ServeConfig};
use crate::service::ServiceLimits;
use anyhow::{Context, Result};

/// Options of `eerag-host serve` (and `eerag serve`). There is deliberately no key or tokenizer
/// option: the host never holds either.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Host artifacts written by `eerag transform`. Repeatable: during a
    /// key rotation or a re-embedding, give the old and the new artifacts;
    /// each collection is served by the models of its key and encoder, and
    /// new collections by the first.
    #[arg(long, required = true)]
    artifacts: Vec<PathBuf>,
    #[command(flatten)]
    store: super::store_args::StoreArgs,
    /// Address to listen on. Without API keys only loopback is allowed.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// TOML file with `[[api_keys]]` entries (sha256, tenant, role) and an
    /// optional `[store]` table. Without keys the server is one local tenant
    /// on loopback.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Largest request body, in MiB (fractions allowed: 0.25 is 256 KiB;
    /// at least 64 KiB).
    #[arg(long, default_value_t = 64.0)]
    max_body_mib: f64,
    /// API requests handled at once; more get 503 + Retry-After.
    #[arg(long, default_value_t = server::DEFAULT_MAX_IN_FLIGHT)]
    max_in_flight: usize,
    /// Sequences per encoder forward pass.
    #[arg(long, default_value_t = 32)]
    embed_batch: usize,
    /// Requests queued for the encoder before new ones get 503.
    #[arg(long, default_value_t = 64)]
    embed_queue: usize,
    /// Generations queued or running before new ones get 503.
    #[arg(long, default_value_t = 8)]
    generate_queue: usize,
    /// Generations decoded together (continuous batching: one token each
    /// per step, in one pass over the weights).
    #[arg(long, default_value_t = 8)]
    generate_batch: usize,
    #[command(flatten)]
    device: super::DeviceArgs,
    /// Compute dtype of a safetensors generator: f32, f16 or bf16
    /// [default: the weights' own; a GGUF keeps its quantization].
    #[arg(long)]
    generator_dtype: Option<String>,
    /// Skip hashing the artifacts against their manifest at start-up.
    #[arg(long)]
    no_verify: bool,
    /// Refused: the host never takes the key (hidden; here only to say so).
    #[arg(long, hide = true, num_args = 0..=1)]
    key: Option<Option<PathBuf>>,
    /// Refused: the host never takes a tokenizer (hidden; here only to say so).
    #[arg(long, hide = true, num_args = 0..=1)]
    tokenizer: Option<Option<PathBuf>>,
}

/// Why `serve` refuses a key or a tokenizer.
pub const REFUSE_SECRETS: &str =
    "the host (eerag-host serve, eerag serve) takes no key and no tokenizer: the host must never \
hold either. Keep the key on the client and give the host only the artifacts `eerag transform` \
writes (--artifacts).";

/// Runs the server until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> Result<()> {
    if args.key.is_some() || args.tokenizer.is_some() {
        anyhow::bail!(REFUSE_SECRETS);
    }
    let file = match &args.config {
        Some(path) => ServerFile::read(path)?,
        None => ServerFile::default(),
    };
    let auth = match &args.config {
        Some(path) => file.auth(path)?,
        None => Auth::Local,
    };
    let store = args.store.spec(&file.store)?;
    let mut artifacts = args.artifacts.into_iter();
    let config = ServeConfig {
        artifacts: artifacts.next().expect("clap requires one"),
        more_artifacts: artifacts.collect(),
        store,
        listen: args.listen,
        auth,
        verify_artifacts: !args.no_verify,
        max_body_bytes: max_body_bytes(args.max_body_mib)?,
        max_in_flight: args.max_in_flight.max(1),
        engine: EngineLimits {
            embed_batch: args.embed_batch.max(1),
            embed_queue: args.embed_queue.max(1),
            generate_queue: args.generate_queue.max(1),
            generate_batch: args.generate_batch.max(1),
        },
        device: args.device.device,
        generator_dtype: super::parse_dtype(args.generator_dtype.as_deref())?,
        generator_backend: args.device.generator_backend,
        limits: ServiceLimits::default(),
        optimize_every: Duration::from_secs(60),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = server::start(config).await?;
        // Tests and scripts read this line to find the port.
        println!(
            "eerag host listening on http://{} (key {})",
            server.addr, server.key_id
        );
        server.run_until(shutdown_signal()).await?;
        eprintln!("eerag host stopped");
        Ok(())
    })
}

/// `--max-body-mib` in bytes: finite, at least 64 KiB (a smaller limit
/// would refuse ordinary uploads and searches).
fn max_body_bytes(mib: f64) -> Result<usize> {
    const MIN: f64 = 64.0 / 1024.0;
    anyhow::ensure!(
        mib.is_finite() && mib >= MIN,
        "--max-body-mib {mib}: give at least {MIN} (64 KiB)"
    );
    Ok((mib * 1024.0 * 1024.0) as usize)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::max_body_bytes;

    #[test]
    fn body_limits_in_fractions_of_a_mib() {
        assert_eq!(max_body_bytes(64.0).unwrap(), 64 << 20);
        assert_eq!(max_body_bytes(0.25).unwrap(), 256 << 10);
        assert_eq!(max_body_bytes(0.0625).unwrap(), 64 << 10);
        for bad in [0.0, 0.01, -1.0, f64::NAN, f64::INFINITY] {
            assert!(max_body_bytes(bad).is_err(), "{bad}");
        }
    }
}
