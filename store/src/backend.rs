//! Choosing the host's store: the embedded default (a data directory) or a
//! Qdrant server or cluster, from `--store` or the configuration file.

use std::path::PathBuf;
use std::sync::Arc;

use crate::edge_store::{EdgeStore, Recovery};
use crate::qdrant_store::{QdrantOptions, QdrantStore};
use crate::store::{Result, Store, StoreError};

/// Which store a host keeps its collections in.
#[derive(Clone, Debug)]
pub enum StoreSpec {
    /// qdrant-edge + tantivy in a local data directory.
    Embedded(PathBuf),
    /// A Qdrant server or cluster over gRPC.
    Qdrant(QdrantOptions),
}

impl StoreSpec {
    /// Reads a `--store` value: `embedded` (then `data` is the directory),
    /// or a Qdrant URL (`qdrant://host:6334`, `qdrants://` for TLS).
    pub fn parse(store: &str, data: Option<PathBuf>) -> Result<Self> {
        if store == "embedded" {
            return data.map(StoreSpec::Embedded).ok_or_else(|| {
                StoreError::Config("the embedded store needs a data directory (--data)".into())
            });
        }
        Ok(StoreSpec::Qdrant(QdrantOptions::from_url(store)?))
    }

    /// Opens the store; the embedded one also reports what it repaired.
    pub fn open(&self) -> Result<(Arc<dyn Store>, Recovery)> {
        match self {
            StoreSpec::Embedded(dir) => {
                let (store, recovery) = EdgeStore::open(dir)?;
                Ok((Arc::new(store), recovery))
            }
            StoreSpec::Qdrant(options) => Ok((
                Arc::new(QdrantStore::connect(options.clone())?),
                Recovery::default(),
            )),
        }
    }

    /// A line for logs and start-up messages (no API key).
    pub fn describe(&self) -> String {
        match self {
            StoreSpec::Embedded(dir) => format!("embedded store in {}", dir.display()),
            StoreSpec::Qdrant(o) => format!("Qdrant at {}", o.url),
        }
    }
}
