//! The command-line options that choose a store, shared by `serve` and the
//! batch jobs.

use std::path::PathBuf;

use crate::config::StoreSection;
use anyhow::Result;
use eerag_store::StoreSpec;

/// Where collections live.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// `embedded` (the default: a local data directory, --data) or a Qdrant
    /// server or cluster: `qdrant://host:6334`, `qdrants://host:6334` (TLS).
    #[arg(long)]
    pub store: Option<String>,
    /// Data directory of the embedded store (created if missing).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Qdrant API key.
    #[arg(long, env = "EERAG_QDRANT_API_KEY", hide_env_values = true)]
    pub qdrant_api_key: Option<String>,
    /// Shards of new Qdrant collections.
    #[arg(long)]
    pub shards: Option<u32>,
    /// Copies of each shard of new Qdrant collections.
    #[arg(long)]
    pub replicas: Option<u32>,
}

impl StoreArgs {
    /// The store these options (over the configuration file's `[store]`)
    /// choose.
    pub fn spec(&self, file: &StoreSection) -> Result<StoreSpec> {
        let cli = StoreSection {
            url: self.store.clone(),
            data: self.data.clone(),
            shard_number: self.shards,
            replication_factor: self.replicas,
            ..Default::default()
        };
        file.overridden_by(&cli)
            .spec(self.qdrant_api_key.clone())
            .map_err(anyhow::Error::msg)
    }
}
