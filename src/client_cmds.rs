//! The client commands: `upload`, `search`, `ask`. They hold the key and
//! the plaintext; the host only ever gets what [`EncryptedClient`] sends.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use eerag_client::chunking::ChunkingOptions;
use eerag_client::client::{AskOptions, ClientError, EncryptedClient};
use eerag_client::upload::{self, FileStatus, Progress, UploadOptions, UploadSummary};
use eerag_client::Key;
use eerag_core::sampling::Sampling;
use eerag_core::wire::SearchMode;
use eerag_remote::{HostClient, RemoteError, RetryPolicy};
use serde_json::json;

use eerag_client::cli::{parse_mode, ModelsArg};

/// Where the host is and who we are to it.
#[derive(clap::Args, Clone, Debug)]
pub struct ConnectArgs {
    /// The host's base URL.
    #[arg(long, env = "EERAG_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The key file (from `eerag keygen`).
    #[arg(long, env = "EERAG_KEY")]
    pub key: PathBuf,
    /// Bearer API key for the host, if it requires one.
    #[arg(long, env = "EERAG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub models: ModelsArg,
}

impl ConnectArgs {
    /// Loads the key and the tokenizers and checks the host serves models
    /// for this key, before anything is sent.
    pub fn connect(&self) -> Result<EncryptedClient> {
        let key = Key::load(&self.key)
            .with_context(|| format!("loading the key {}", self.key.display()))?;
        let models = self.models.require()?;
        let host = HostClient::new(&self.server, self.token.clone()).map_err(explain)?;
        EncryptedClient::connect(host, &key, &models).map_err(|e| explain_client(e, &self.server))
    }
}

/// A host error for the person at the terminal ([`RemoteError::explanation`]).
pub(crate) fn explain(e: RemoteError) -> anyhow::Error {
    anyhow::anyhow!(e.explanation())
}

pub(crate) fn explain_client(e: ClientError, server: &str) -> anyhow::Error {
    match e {
        ClientError::Remote(RemoteError::Transport(m)) => {
            anyhow::anyhow!("cannot reach the host at {server}: {m}")
        }
        ClientError::Remote(r) => explain(r),
        other => anyhow::anyhow!("{other}"),
    }
}

/// Runs `f`, waiting and trying again while the host is busy
/// ([`RetryPolicy::INTERACTIVE`]).
fn retry_busy<T>(
    server: &str,
    mut f: impl FnMut() -> Result<T, ClientError>,
) -> Result<T, anyhow::Error> {
    let mut attempt = 1;
    loop {
        match f() {
            Err(ClientError::Remote(e)) => match RetryPolicy::INTERACTIVE.wait(attempt, &e) {
                Some(wait) => {
                    eprintln!(
                        "the host is busy; trying again in {} s",
                        wait.as_secs_f64().ceil()
                    );
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                None => return Err(explain_client(ClientError::Remote(e), server)),
            },
            other => return other.map_err(|e| explain_client(e, server)),
        }
    }
}

/// `eerag upload`.
#[derive(clap::Args, Debug)]
pub struct UploadArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The collection to upload into (created, bound to the key, if missing).
    #[arg(long)]
    pub collection: String,
    /// Files and folders (folders are read recursively).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Encoder tokens per chunk.
    #[arg(long, default_value_t = ChunkingOptions::default().max_tokens)]
    pub chunk_tokens: usize,
    /// Tokens shared by consecutive chunks.
    #[arg(long, default_value_t = ChunkingOptions::default().overlap)]
    pub overlap: usize,
    /// Chunks per request.
    #[arg(long, default_value_t = UploadOptions::default().batch_chunks)]
    pub batch_chunks: usize,
    /// Print the summary as JSON (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// Runs `eerag upload`; fails (after the summary) when a readable file was
/// not uploaded.
pub fn upload(args: &UploadArgs) -> Result<()> {
    let client = args.connect.connect()?;
    let options = UploadOptions {
        chunking: ChunkingOptions {
            max_tokens: args.chunk_tokens,
            overlap: args.overlap,
        },
        batch_chunks: args.batch_chunks.max(1),
        ..UploadOptions::default()
    };
    let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} files {msg}",
            )
            .expect("valid template"),
        );
        bar
    });
    let summary =
        upload::upload(
            &client,
            &args.collection,
            &args.paths,
            &options,
            |event| match event {
                Progress::Found { files } => {
                    if let Some(b) = &bar {
                        b.set_length(files as u64);
                    }
                }
                Progress::File(outcome) => {
                    if let Some(b) = &bar {
                        b.inc(1);
                        b.set_message(outcome.path.clone());
                    }
                    let note = match &outcome.status {
                        FileStatus::Skipped { reason } => Some(format!("skipped: {reason}")),
                        FileStatus::NotUploaded { reason } => {
                            Some(format!("not uploaded: {reason}"))
                        }
                        _ => None,
                    };
                    if let (Some(note), false) = (note, args.json) {
                        let line = format!("{}: {note}", outcome.path);
                        match &bar {
                            Some(b) => b.println(line),
                            None => eprintln!("{line}"),
                        }
                    }
                }
                Progress::Retrying { attempt, error } => {
                    if !args.json {
                        let line = format!("retrying a batch (attempt {attempt}): {error}");
                        match &bar {
                            Some(b) => b.println(line),
                            None => eprintln!("{line}"),
                        }
                    }
                }
            },
        )
        .map_err(|e| match e {
            upload::UploadError::Client(c) => explain_client(c, &args.connect.server),
            other => anyhow::anyhow!("{other}"),
        })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary, &args.collection);
    }
    if !summary.complete() {
        bail!(
            "{} file(s) were not uploaded{}; run the same command again to resume",
            summary.not_uploaded,
            summary
                .stopped
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn print_summary(s: &UploadSummary, collection: &str) {
    println!(
        "{} file(s) into {collection:?}: {} uploaded ({} chunks, {} encoder tokens), {} unchanged, {} duplicate(s), {} skipped, {} not uploaded — {:.1} s, {:.1} chunks/s",
        s.files,
        s.uploaded,
        s.chunks,
        s.encoder_tokens,
        s.unchanged,
        s.duplicates,
        s.skipped,
        s.not_uploaded,
        s.seconds,
        s.chunks_per_sec
    );
}

/// Retrieval options shared by `search` and `ask`.
#[derive(clap::Args, Debug, Clone)]
pub struct RetrieveArgs {
    /// The collection to search.
    #[arg(long)]
    pub collection: String,
    /// How many chunks to retrieve.
    #[arg(long, short)]
    pub k: Option<usize>,
    /// `dense`, `keyword` or `hybrid`.
    #[arg(long, default_value = "hybrid", value_parser = parse_mode)]
    pub mode: SearchMode,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `eerag search`.
#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub retrieve: RetrieveArgs,
    /// What to look for.
    pub query: String,
}

/// Runs `eerag search`.
pub fn search(args: &SearchArgs) -> Result<()> {
    let client = args.connect.connect()?;
    let server = &args.connect.server;
    let r = &args.retrieve;
    retry_busy(server, || client.require_collection(&r.collection))?;
    let hits = retry_busy(server, || {
        client.search(&r.collection, &args.query, r.k.unwrap_or(5), r.mode)
    })?;
    if r.json {
        let hits: Vec<_> = hits
            .iter()
            .enumerate()
            .map(|(i, h)| {
                json!({
                    "rank": i + 1,
                    "score": h.score,
                    "doc_id": h.doc_id,
                    "chunk_id": h.chunk_id,
                    "path": h.metadata.path,
                    "title": h.metadata.title,
                    "chunk": h.metadata.chunk,
                    "start": h.metadata.start,
                    "end": h.metadata.end,
                    "text": h.text,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "hits": hits }))?
        );
        return Ok(());
    }
    if hits.is_empty() {
        println!("no matches");
    }
    for (i, h) in hits.iter().enumerate() {
        println!(
            "{}. {:.4}  {} — {} (chunk {}/{})",
            i + 1,
            h.score,
            h.metadata.path,
            h.metadata.title,
            h.metadata.chunk + 1,
            h.metadata.chunks
        );
        println!("   {}", one_line(&h.text, 300));
    }
    Ok(())
}

fn one_line(text: &str, max_chars: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max_chars {
        format!("{}…", flat.chars().take(max_chars).collect::<String>())
    } else {
        flat
    }
}

/// `eerag ask`.
#[derive(clap::Args, Debug)]
pub struct AskArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub retrieve: RetrieveArgs,
    /// Most tokens in the answer.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sample with this temperature (default: greedy, the most likely token).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass (with --temperature).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Seed of the sampler (with --temperature): same seed, same answer.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The system prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// The question.
    pub question: String,
}

impl AskArgs {
    fn options(&self) -> AskOptions {
        let defaults = AskOptions::default();
        AskOptions {
            k: self.retrieve.k.unwrap_or(defaults.k),
            mode: self.retrieve.mode,
            max_tokens: self.max_tokens,
            sampling: match self.temperature {
                Some(temperature) => Sampling::Random {
                    temperature,
                    top_p: self.top_p,
                    top_k: None,
                    seed: self.seed,
                },
                None => Sampling::Greedy,
            },
            system: self.system.clone().unwrap_or(defaults.system),
        }
    }
}

/// Runs `eerag ask`: streams the answer, then lists its sources.
pub fn ask(args: &AskArgs) -> Result<()> {
    let client = args.connect.connect()?;
    let server = &args.connect.server;
    let r = &args.retrieve;
    retry_busy(server, || client.require_collection(&r.collection))?;
    let options = args.options();
    let mut stdout = std::io::stdout();
    let answer = retry_busy(server, || {
        client.ask(&r.collection, &args.question, &options, |text| {
            if !r.json {
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
        })
    })?;
    let sources: Vec<_> = answer
        .sources
        .iter()
        .map(|s| {
            json!({
                "path": s.metadata.path,
                "title": s.metadata.title,
                "chunk": s.metadata.chunk,
                "score": s.score,
                "doc_id": s.doc_id,
                "chunk_id": s.chunk_id,
                "preview": s.metadata.preview,
            })
        })
        .collect();
    if r.json {
        let out = json!({
            "answer": answer.text.trim(),
            "finish_reason": answer.summary.finish_reason,
            "prompt_tokens": answer.summary.prompt_tokens,
            "generated_tokens": answer.summary.generated_tokens,
            "sources": sources,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("\n\nsources:");
    for (i, s) in answer.sources.iter().enumerate() {
        println!(
            "  [{}] {} — {} (chunk {}/{}, score {:.4})",
            i + 1,
            s.metadata.path,
            s.metadata.title,
            s.metadata.chunk + 1,
            s.metadata.chunks,
            s.score
        );
        println!("      {}", one_line(&s.metadata.preview, 160));
    }
    Ok(())
}
