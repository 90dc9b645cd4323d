//! `eerag reindex`: batch jobs over whole collections, run by the host's
//! operator against the stores (see `eerag_ingest::reindex`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use eerag_ingest::reindex::{self, CollectionReport, MigrateOptions};
use eerag_ingest::{QdrantOptions, StoreSpec};

/// `eerag reindex` subcommands.
#[derive(clap::Args, Debug)]
pub struct ReindexArgs {
    #[command(subcommand)]
    job: Job,
}

#[derive(clap::Subcommand, Debug)]
enum Job {
    /// Copy collections between stores (embedded ↔ Qdrant server), chunk
    /// for chunk, resumable, verified. A source embedded store must not be
    /// served while it is read (stop its host, or copy its folder first).
    Migrate(MigrateArgs),
}

#[derive(clap::Args, Debug)]
struct MigrateArgs {
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

/// Runs a job.
pub fn run(args: &ReindexArgs) -> Result<()> {
    match &args.job {
        Job::Migrate(m) => migrate(m),
    }
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

fn migrate(args: &MigrateArgs) -> Result<()> {
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
    let reports = reindex::migrate(source.as_ref(), target.as_ref(), &options, &mut |p| {
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

fn progress_bar(json: bool) -> Option<indicatif::ProgressBar> {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} chunks ({per_sec}, eta {eta})",
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
    }
    Ok(())
}
