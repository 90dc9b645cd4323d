//! The host's command line, shared by the `eerag-host` binary and the
//! `eerag` convenience binary (which runs the same `serve` and jobs): the
//! flags are defined once here. Errors become `anyhow` at this edge only.

pub mod jobs;
pub mod serve;
pub mod store_args;

use anyhow::Result;

/// Where the models run, shared by the commands that run them.
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// auto (a GPU when this binary has CUDA and one answers, else the CPU),
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: eerag_core::device::DeviceChoice,
    /// The generator's implementation: auto (llama.cpp for a GGUF on the
    /// CPU when this binary has it, else candle), candle or llama-cpp.
    #[arg(long, default_value = "auto")]
    pub generator_backend: eerag_core::models::GeneratorBackend,
}

impl DeviceArgs {
    /// Resolves `--device`, printing the choice on stderr.
    pub fn select(&self) -> Result<candle_core::Device> {
        let chosen = eerag_core::device::select(self.device)?;
        eprintln!("models run on {}", chosen.describe());
        Ok(chosen.device)
    }
}

/// Parses an optional `f32`/`f16`/`bf16` flag.
pub fn parse_dtype(s: Option<&str>) -> Result<Option<candle_core::DType>> {
    Ok(s.map(eerag_core::convert::parse_dtype).transpose()?)
}

/// The log filter when `RUST_LOG` is unset: the server reports each request
/// (route templates, never bodies); qdrant-edge warns about its feature
/// flags once per segment, and llama.cpp that a host file's vocabulary is
/// placeholders, as it should be.
pub const SERVE_LOG_FILTER: &str = "warn,eerag=info,eerag_host=info,qdrant_edge::common::flags=error,qdrant_edge::common::mmap=error,llama-cpp-2=error";

/// The log filter of the other commands.
pub const QUIET_LOG_FILTER: &str =
    "warn,qdrant_edge::common::flags=error,qdrant_edge::common::mmap=error,llama-cpp-2=error";

/// Logs to stderr through `RUST_LOG`, or `default_filter` when it is unset.
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
