//! `eerag reindex`: batch jobs over whole collections: `migrate`, run by
//! the host's operator against the stores (see `eerag_ingest::reindex`);
//! `re-embed` (the operator) and `rekey` (the client) through the host's
//! API (see `eerag_ingest::rebuild`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use eerag_ingest::rebuild::{self, RebuildOptions, RebuildReport};
use eerag_ingest::reindex::{self, CollectionReport, MigrateOptions};
use eerag_ingest::remote::HostClient;
use eerag_ingest::{QdrantOptions, StoreSpec};
use eerag_shared::Key;

use crate::client_cmds::{explain, explain_client, ConnectArgs};

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
    /// Re-embed a collection with another encoder the host serves (a new
    /// encoder model): the host re-embeds the stored encrypted ids into a
    /// new version while the current one serves, then the job switches to
    /// it and deletes the old one. Needs no key. Start the host with the
    /// old and the new artifacts (`--artifacts OLD --artifacts NEW`).
    ReEmbed(ReembedArgs),
    /// Rotate a collection's key (client side): export every document,
    /// decrypt with the old key, encrypt with the new one, upload into a
    /// new version, switch, delete the old. The host gets neither key.
    /// It must serve models for both keys (`--artifacts OLD --artifacts NEW`).
    Rekey(RekeyArgs),
}

/// What re-embed and rekey share.
#[derive(clap::Args, Debug)]
struct RebuildArgs {
    /// The collection, as clients name it.
    #[arg(long)]
    collection: String,
    /// Documents per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Progress file: a rerun after a kill resumes from it [default:
    /// eerag-JOB-COLLECTION.checkpoint in the current directory].
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Keep the old version after the switch (delete it later with
    /// `DELETE /v1/collections/NAME.vN`).
    #[arg(long)]
    keep_old: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl RebuildArgs {
    fn options(&self, job: &str) -> RebuildOptions {
        RebuildOptions {
            batch_documents: self.batch.max(1),
            checkpoint: self.checkpoint.clone().unwrap_or_else(|| {
                PathBuf::from(format!("eerag-{job}-{}.checkpoint", self.collection))
            }),
            keep_old: self.keep_old,
            grace: rebuild::SWITCH_GRACE,
        }
    }
}

#[derive(clap::Args, Debug)]
struct ReembedArgs {
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

#[derive(clap::Args, Debug)]
struct RekeyArgs {
    /// The host, the current (old) key, the tokenizers.
    #[command(flatten)]
    connect: ConnectArgs,
    /// The new key file (from `eerag keygen`).
    #[arg(long)]
    new_key: PathBuf,
    #[command(flatten)]
    job: RebuildArgs,
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
        Job::ReEmbed(r) => reembed(r),
        Job::Rekey(r) => rekey(r),
    }
}

fn reembed(args: &ReembedArgs) -> Result<()> {
    let encoder = match (&args.artifacts, &args.encoder) {
        (Some(dir), _) => Some(
            eerag_shared::transform::HostArtifacts::open(dir, false)
                .with_context(|| format!("reading {}", dir.display()))?
                .manifest()
                .encoder
                .base_sha256
                .clone(),
        ),
        (None, e) => e.clone(),
    };
    let host = HostClient::new(&args.server, args.token.clone()).map_err(explain)?;
    let options = args.job.options("re-embed");
    let bar = progress_bar(args.job.json);
    let report = rebuild::reembed(
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

fn rekey(args: &RekeyArgs) -> Result<()> {
    let new_key = Key::load(&args.new_key)
        .with_context(|| format!("loading the new key {}", args.new_key.display()))?;
    let old = args.connect.connect()?;
    let models = args.connect.models.require()?;
    let host =
        HostClient::new(&args.connect.server, args.connect.token.clone()).map_err(explain)?;
    let new = eerag_ingest::client::EncryptedClient::connect(host, &new_key, &models).map_err(|e| {
        anyhow::anyhow!(
            "{}; the host must serve models for the new key as well (eerag serve --artifacts OLD --artifacts NEW)",
            explain_client(e, &args.connect.server)
        )
    })?;
    let options = args.job.options("rekey");
    let bar = progress_bar(args.job.json);
    let report = rebuild::rekey(&old, &new, &args.job.collection, &options, &mut |p| {
        show(&bar, p)
    })
    .map_err(|e| rebuild_error(e, &options))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print_rebuild("re-keyed", &report, args.job.json)
}

fn show(bar: &Option<indicatif::ProgressBar>, p: rebuild::Progress<'_>) {
    if let Some(bar) = bar {
        bar.set_message(p.phase.to_string());
        bar.set_length(p.total);
        bar.set_position(p.done);
    }
}

fn rebuild_error(e: rebuild::RebuildError, options: &RebuildOptions) -> anyhow::Error {
    let resume = format!(
        "(progress is kept in {}: run the same command again to resume)",
        options.checkpoint.display()
    );
    match e {
        rebuild::RebuildError::Remote(r) => anyhow::anyhow!("{} {resume}", explain(r)),
        rebuild::RebuildError::Client(c) => anyhow::anyhow!("{} {resume}", explain_client(c, "")),
        other => anyhow::anyhow!("{other}"),
    }
}

fn print_rebuild(what: &str, r: &RebuildReport, json: bool) -> Result<()> {
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
