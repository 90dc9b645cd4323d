//! The batch jobs an operator runs on the host side, with no key:
//! `migrate` copies collections between stores ([`eerag_store::migrate`]);
//! `re-embed` rebuilds a collection through the host's API with another
//! encoder ([`eerag_remote::jobs`]). The client's `rekey` shares the
//! rebuild flags and reports defined here.

use std::path::PathBuf;

use anyhow::{Context, Result};
use eerag_core::artifacts::HostArtifacts;
use eerag_remote::jobs::{self, Progress, RebuildError, RebuildOptions, RebuildReport};
use eerag_remote::HostClient;
use eerag_store::migrate::{CollectionReport, MigrateOptions};
use eerag_store::{QdrantOptions, StoreSpec};

/// What re-embed and rekey share.
#[derive(clap::Args, Debug)]
pub struct RebuildArgs {
    /// The collection, as clients name it.
    #[arg(long)]
    pub collection: String,
    /// Documents per step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Progress file: a rerun after a kill resumes from it [default:
    /// eerag-JOB-COLLECTION.checkpoint in the current directory].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Keep the old version after the switch (delete it later with
    /// `DELETE /v1/collections/NAME.vN`).
    #[arg(long)]
    pub keep_old: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl RebuildArgs {
    /// The job options these flags choose; `job` names the default
    /// checkpoint file.
    pub fn options(&self, job: &str) -> RebuildOptions {
        RebuildOptions {
            batch_documents: self.batch.max(1),
            checkpoint: self.checkpoint.clone().unwrap_or_else(|| {
                PathBuf::from(format!("eerag-{job}-{}.checkpoint", self.collection))
            }),
            keep_old: self.keep_old,
            grace: jobs::SWITCH_GRACE,
        }
    }
}

/// `re-embed`: the host, the new encoder, and the job flags.
#[derive(clap::Args, Debug)]
pub struct ReembedArgs {
    /// The host's base URL.
    #[arg(long, env = "EERAG_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Bearer API key for the host, if it requires one.
    #[arg(long, env = "EERAG_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The new encoder, as the artifacts the host loaded for it (only their
    /// manifest is read).
    #[arg(long, conflicts_with = "encoder")]
    artifacts: Option<PathBuf>,
    /// The new encoder, as the SHA-256 of its base weights (the artifacts
    /// manifest's encoder.base_sha256) [default: the host's first encoder
    /// for the collection's key].
    #[arg(long)]
    encoder: Option<String>,
    #[command(flatten)]
    job: RebuildArgs,
}

/// `migrate`: the two stores, the collections, and the job flags.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// Source: an embedded store's data directory, or a Qdrant URL
    /// (`qdrant://host:6334`, `qdrants://` for TLS).
    #[arg(long)]
    from: String,
    /// Target, as --from.
    #[arg(long)]
    to: String,
    /// A collection to copy, as the store names it: `TENANT.NAME` (a host
    /// without API keys uses tenant `local`). Repeatable; default: all.
    #[arg(long = "collection")]
    collections: Vec<String>,
    /// Chunks per write.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Chunks whose payload and vector are checked in the target afterwards.
    #[arg(long, default_value_t = 200)]
    verify_sample: usize,
    /// Progress file: a rerun after a kill resumes from it [default:
    /// eerag-migrate.checkpoint.json in the current directory].
    #[arg(long, default_value = "eerag-migrate.checkpoint.json")]
    checkpoint: PathBuf,
    /// Qdrant API key (for whichever side is a Qdrant server).
    #[arg(long, env = "EERAG_QDRANT_API_KEY", hide_env_values = true)]
    qdrant_api_key: Option<String>,
    /// Shards of collections the job creates on a Qdrant server.
    #[arg(long)]
    shards: Option<u32>,
    /// Copies of each shard of collections the job creates on a Qdrant
    /// server.
    #[arg(long)]
    replicas: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `re-embed`.
pub fn reembed(args: &ReembedArgs) -> Result<()> {
    let encoder = match (&args.artifacts, &args.encoder) {
        (Some(dir), _) => Some(
            HostArtifacts::open(dir, false)
                .with_context(|| format!("reading {}", dir.display()))?
                .manifest()
                .encoder
                .base_sha256
                .clone(),
        ),
        (None, e) => e.clone(),
    };
    let host = HostClient::new(&args.server, args.token.clone())
        .map_err(|e| anyhow::anyhow!(e.explanation()))?;
    let options = args.job.options("re-embed");
    let bar = progress_bar(args.job.json);
    let report = jobs::reembed(
        &host,
        &args.job.collection,
        encoder.as_deref(),
        &options,
        &mut |p| show(&bar, p),
    )
    .map_err(|e| rebuild_error(e, &options))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print_rebuild("re-embedded", &report, args.job.json)
}

/// Shows a job's progress on its bar.
pub fn show(bar: &Option<indicatif::ProgressBar>, p: Progress<'_>) {
    if let Some(bar) = bar {
        bar.set_message(p.phase.to_string());
        bar.set_length(p.total);
        bar.set_position(p.done);
    }
}

/// A job error in words, with how to resume it.
pub fn rebuild_error(e: RebuildError, options: &RebuildOptions) -> anyhow::Error {
    let resume = format!(
        "(progress is kept in {}: run the same command again to resume)",
        options.checkpoint.display()
    );
    match e {
        RebuildError::Remote(r) => anyhow::anyhow!("{} {resume}", r.explanation()),
        // It names its file already.
        e @ RebuildError::Checkpoint { .. } => anyhow::anyhow!("{e}"),
        other => anyhow::anyhow!("{other} {resume}"),
    }
}

/// Prints a rebuild job's report (as JSON with `json`).
pub fn print_rebuild(what: &str, r: &RebuildReport, json: bool) -> Result<()> {
    if json {
        let mut v = serde_json::to_value(r).expect("a report serialises");
        v["chunks_per_second"] = r.chunks_per_second().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{what} {}: version {} -> {}; {} documents ({} chunks) written in {:.1} s ({:.0} chunks/s){}; {} documents caught up, {} removed; the new version holds {} documents, {} chunks; {}{}",
        r.collection,
        r.previous_version,
        r.version,
        r.documents_written,
        r.chunks_written,
        r.seconds,
        r.chunks_per_second(),
        if r.resumed { ", resumed from the checkpoint" } else { "" },
        r.documents_caught_up,
        r.documents_removed,
        r.documents,
        r.chunks,
        if r.old_version_deleted {
            format!("version {} deleted", r.previous_version)
        } else {
            format!("version {} kept", r.previous_version)
        },
        if r.ids_not_rederived > 0 {
            format!(
                "; {} documents keep a stand-in id (their text could not be put back together): uploading their files again adds them anew",
                r.ids_not_rederived
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// A `--from`/`--to` value as a store.
fn location(value: &str, args: &MigrateArgs) -> Result<StoreSpec> {
    if !value.contains("://") {
        return Ok(StoreSpec::Embedded(PathBuf::from(value)));
    }
    let mut options = QdrantOptions::from_url(value)?;
    options.api_key = args.qdrant_api_key.clone();
    options.shard_number = args.shards;
    options.replication_factor = args.replicas;
    Ok(StoreSpec::Qdrant(options))
}

/// Runs `migrate`.
pub fn migrate(args: &MigrateArgs) -> Result<()> {
    let (from, to) = (location(&args.from, args)?, location(&args.to, args)?);
    if let (StoreSpec::Embedded(a), StoreSpec::Embedded(b)) = (&from, &to) {
        if a == b {
            anyhow::bail!("--from and --to are the same directory");
        }
    }
    if let StoreSpec::Embedded(dir) = &from {
        if !dir.is_dir() {
            anyhow::bail!("--from {}: no such data directory", dir.display());
        }
    }
    let (source, _) = from
        .open()
        .with_context(|| format!("opening the source ({})", from.describe()))?;
    let (target, _) = to
        .open()
        .with_context(|| format!("opening the target ({})", to.describe()))?;
    let options = MigrateOptions {
        collections: args.collections.clone(),
        batch_chunks: args.batch.max(1),
        verify_sample: args.verify_sample,
        checkpoint: args.checkpoint.clone(),
        route: format!("migrate {} -> {}", from.describe(), to.describe()),
    };
    let bar = progress_bar(args.json);
    let mut current = String::new();
    let reports =
        eerag_store::migrate::migrate(source.as_ref(), target.as_ref(), &options, &mut |p| {
            if let Some(bar) = &bar {
                if current != p.collection {
                    current = p.collection.to_string();
                    bar.set_message(current.clone());
                    bar.set_length(p.total);
                }
                bar.set_position(p.done);
            }
        })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print_reports("migrated", &reports, args.json)
}

/// A progress bar on an interactive stderr, unless the report is JSON.
pub fn progress_bar(json: bool) -> Option<indicatif::ProgressBar> {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    Some(bar)
}

fn print_reports(what: &str, reports: &[CollectionReport], json: bool) -> Result<()> {
    if json {
        let out: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).expect("a report serialises");
                v["chunks_per_second"] = r.chunks_per_second().into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if reports.is_empty() {
        println!("no collections to copy");
    }
    for r in reports {
        println!(
            "{what} {}: {} chunks written in {:.1} s ({:.0} chunks/s){}; target holds {} of {} chunks; {}/{} sampled payloads and {}/{} vectors verified{}",
            r.name,
            r.chunks_written,
            r.seconds,
            r.chunks_per_second(),
            if r.resumed { ", resumed from the checkpoint" } else { "" },
            r.target_chunks,
            r.source_chunks,
            r.payloads_verified,
            r.sampled,
            r.vectors_verified,
            r.sampled,
            if r.documents_skipped > 0 {
                format!(
                    "; {} documents left out (the source holds them partly: upload them again)",
                    r.documents_skipped
                )
            } else {
                String::new()
            }
        );
        if !r.aliases.is_empty() {
            println!("  {} serves as {}", r.name, r.aliases.join(", "));
        }
    }
    Ok(())
}
