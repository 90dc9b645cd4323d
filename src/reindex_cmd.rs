//! `eerag reindex`: batch jobs over whole collections. `migrate` and
//! `re-embed` are the host operator's (no key; the same as `eerag-host
//! migrate` and `eerag-host re-embed`, see `eerag_host::cli::jobs`); `rekey`
//! is the client's (both keys, `eerag_client::rekey`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use eerag_client::Key;
use eerag_host::cli::jobs::{
    self, print_rebuild, progress_bar, rebuild_error, show, MigrateArgs, RebuildArgs, ReembedArgs,
};
use eerag_remote::HostClient;

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

/// Runs a job.
pub fn run(args: &ReindexArgs) -> Result<()> {
    match &args.job {
        Job::Migrate(m) => jobs::migrate(m),
        Job::ReEmbed(r) => jobs::reembed(r),
        Job::Rekey(r) => rekey(r),
    }
}

fn rekey(args: &RekeyArgs) -> Result<()> {
    let new_key = Key::load(&args.new_key)
        .with_context(|| format!("loading the new key {}", args.new_key.display()))?;
    let old = args.connect.connect()?;
    let models = args.connect.models.require()?;
    let host =
        HostClient::new(&args.connect.server, args.connect.token.clone()).map_err(explain)?;
    let new = eerag_client::client::EncryptedClient::connect(host, &new_key, &models).map_err(|e| {
        anyhow::anyhow!(
            "{}; the host must serve models for the new key as well (eerag-host serve --artifacts OLD --artifacts NEW)",
            explain_client(e, &args.connect.server)
        )
    })?;
    let options = args.job.options("rekey");
    let bar = progress_bar(args.job.json);
    let report = eerag_client::rekey::rekey(&old, &new, &args.job.collection, &options, &mut |p| {
        show(&bar, p)
    })
    .map_err(|e| rebuild_error(e, &options))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print_rebuild("re-keyed", &report, args.job.json)
}
