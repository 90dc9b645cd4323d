//! The host's core, below HTTP: validate ciphertext requests, embed, store,
//! retrieve (dense, BM25, reciprocal-rank fusion) and prepare generations.
//! It takes only ciphertext and host artifacts; it has no key and no
//! tokenizer.

mod answer;
mod collections;
mod models;
mod retrieval;
mod validate;

use std::sync::Arc;

use eerag_store::store::{Store, StoreError};
use tokio::sync::Semaphore;

use crate::engine::EngineError;
use crate::metrics::Metrics;

pub use answer::{finish_reason, PreparedAnswer};
pub use models::ServedModels;
pub use retrieval::{near_tie, reciprocal_rank_fusion, RRF_K, TIE_TOLERANCE};
pub use validate::validate_name;

/// Store calls that may run at once; more wait for a slot (and the
/// server's in-flight request limit bounds how many wait).
pub const STORE_SLOTS: usize = 16;

/// Errors of the service, each with an HTTP meaning (see `api`).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::CollectionNotFound(_) => ServiceError::NotFound(e.to_string()),
            StoreError::CollectionExists(_) | StoreError::InUse(_) => {
                ServiceError::Conflict(e.to_string())
            }
            StoreError::InvalidName(_) => ServiceError::Invalid {
                code: "invalid_name",
                message: e.to_string(),
            },
            other => ServiceError::Store(other),
        }
    }
}

/// Bounds on what one request may ask for.
#[derive(Clone, Debug)]
pub struct ServiceLimits {
    /// Chunks in one upsert request.
    pub max_chunks_per_request: usize,
    /// Sealed metadata bytes per chunk.
    pub max_metadata_bytes: usize,
    /// `k` of a search.
    pub max_search_k: usize,
    /// `k` of an answer (chunks in the prompt).
    pub max_answer_k: usize,
    /// `max_tokens` of an answer.
    pub max_new_tokens: usize,
    /// Sequences in one embed request.
    pub max_embed_inputs: usize,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        Self {
            max_chunks_per_request: 4096,
            max_metadata_bytes: 64 * 1024,
            max_search_k: 1000,
            max_answer_k: 20,
            max_new_tokens: 2048,
            max_embed_inputs: 256,
        }
    }
}

/// The host service.
pub struct Service {
    pub(crate) store: Arc<dyn Store>,
    /// The first is the default for new collections; more are loaded while
    /// collections move to a new key or encoder.
    pub(crate) models: Vec<ServedModels>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: ServiceLimits,
    /// Bounds the store calls running at once, so a burst of requests
    /// waits here instead of filling the blocking thread pool.
    store_slots: Arc<Semaphore>,
    /// Held by operations that create, switch or delete collection
    /// versions, so two of them never interleave on this host.
    pub(crate) version_ops: tokio::sync::Mutex<()>,
}

impl Service {
    /// A service over `store` with `models` (at least one set; the first is
    /// the default for new collections).
    pub fn new(
        store: Arc<dyn Store>,
        models: Vec<ServedModels>,
        metrics: Arc<Metrics>,
        limits: ServiceLimits,
    ) -> Self {
        assert!(
            !models.is_empty(),
            "a host serves at least one set of models"
        );
        Self {
            store,
            models,
            metrics,
            limits,
            store_slots: Arc::new(Semaphore::new(STORE_SLOTS)),
            version_ops: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs blocking store work off the async runtime, at most
    /// [`STORE_SLOTS`] at once.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let _slot =
            self.store_slots.acquire().await.map_err(|_| {
                ServiceError::Store(StoreError::Vector("the store is closed".into()))
            })?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| {
                ServiceError::Store(StoreError::Vector(format!("store task failed: {e}")))
            })?
            .map_err(ServiceError::from)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn store_name(tenant: &str, name: &str) -> String {
        format!("{tenant}.{name}")
    }
}
