//! The host's core, below HTTP: validate ciphertext requests, embed, store,
//! retrieve (dense, BM25, reciprocal-rank fusion) and prepare generations.
//! It takes only ciphertext and host artifacts; it has no key and no
//! tokenizer.

use std::collections::HashMap;
use std::sync::Arc;

use eerag_core::models::{GenerationOptions, StopReason};
use eerag_core::wire::{
    AnswerRequest, CollectionInfo, DocumentExport, DocumentList, DocumentResult, DocumentStatus,
    DocumentSummary, EmbedRequest, FinishReason, SearchHit, SearchMode, SearchRequest, StoredChunk,
    UpsertRequest, UpsertResponse, UsedChunk,
};
use eerag_core::{EncEncoderIds, EncGeneratorIds, KeyId};
use eerag_store::store::{
    sort_hits, ChunkId, ChunkRecord, Collection, CollectionMeta, CollectionSpec, NewChunk,
    NewDocument, ScoredChunk, Store, StoreError,
};
use tokio::sync::{mpsc, Semaphore};

use crate::engine::{Engine, EngineError, GenerationEvent};
use crate::metrics::Metrics;

/// Store calls that may run at once; more wait for a slot (and the
/// server's in-flight request limit bounds how many wait).
pub const STORE_SLOTS: usize = 16;

/// Scores this close (relative) are one rank in fusion: float
/// reassociation under a key (BM25 sums terms in the ids' order, the
/// rotation reorders a dot product) moves scores by about 1e-7, and must not
/// move ranks.
pub const TIE_TOLERANCE: f32 = 1e-5;

/// Extra hits each retriever fetches so ties at its cut are kept whole.
const TIE_SLACK: usize = 32;

/// Whether two retriever scores are equal up to [`TIE_TOLERANCE`],
/// relative for large scores and absolute below 1 (a cosine near zero has
/// the same absolute rounding error as any other).
pub fn near_tie(a: f32, b: f32) -> bool {
    (a - b).abs() <= TIE_TOLERANCE * a.abs().max(b.abs()).max(1.0)
}

/// The first `depth` hits, and any after them tied with the last of those.
fn cut_after_ties(mut hits: Vec<ScoredChunk>, depth: usize) -> Vec<ScoredChunk> {
    if hits.len() > depth && depth > 0 {
        let last = hits[depth - 1].score;
        let keep = depth
            + hits[depth..]
                .iter()
                .take_while(|h| near_tie(h.score, last))
                .count();
        hits.truncate(keep);
    }
    hits
}

/// Reciprocal-rank fusion constant (Cormack et al., 2009).
pub const RRF_K: f32 = 60.0;

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

fn invalid(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid {
        code,
        message: message.into(),
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

/// A generation under way, with what went into its prompt.
pub struct PreparedAnswer {
    /// Token and end events.
    pub events: mpsc::Receiver<GenerationEvent>,
    pub prompt_tokens: usize,
    pub chunks: Vec<UsedChunk>,
}

/// One set of transformed models the host serves: for one key and one base
/// encoder.
pub struct ServedModels {
    pub engine: Engine,
    pub key_id: KeyId,
    /// SHA-256 of the base encoder (the artifacts' `encoder.base_sha256`).
    pub encoder: String,
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

/// Checks an opaque client id: 1 to 128 characters of `[A-Za-z0-9_.-]`.
fn validate_opaque(what: &'static str, value: &str) -> Result<(), ServiceError> {
    let ok = (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "invalid_id",
            format!("{what} must be 1 to 128 characters of A-Z a-z 0-9 _ - ."),
        ))
    }
}

/// Checks a public collection or tenant name: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), ServiceError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "invalid_name",
            format!("{what} must be 1 to 64 characters of A-Z a-z 0-9 _ -"),
        ))
    }
}

fn check_ids(
    what: &str,
    ids: &[u32],
    vocab: usize,
    max_len: usize,
    allow_empty: bool,
) -> Result<(), ServiceError> {
    if ids.is_empty() && !allow_empty {
        return Err(invalid("empty_ids", format!("{what} is empty")));
    }
    if ids.len() > max_len {
        return Err(invalid(
            "too_many_ids",
            format!(
                "{what} has {} ids; the model window allows at most {max_len}",
                ids.len()
            ),
        ));
    }
    if ids.iter().any(|&id| id as usize >= vocab) {
        return Err(invalid(
            "id_out_of_vocabulary",
            format!("{what} has an id outside the vocabulary of {vocab} ids"),
        ));
    }
    Ok(())
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

    /// The key id of the default artifacts.
    pub fn key_id(&self) -> KeyId {
        self.models[0].key_id
    }

    /// Every key the host serves models for, the default first.
    pub fn key_ids(&self) -> Vec<KeyId> {
        let mut keys: Vec<KeyId> = Vec::new();
        for m in &self.models {
            if !keys.contains(&m.key_id) {
                keys.push(m.key_id);
            }
        }
        keys
    }

    /// The default model engine.
    pub fn engine(&self) -> &Engine {
        &self.models[0].engine
    }

    /// The models a collection's vectors and ids need: its key's, and its
    /// encoder's where it records one.
    pub(crate) fn models_for(&self, meta: &CollectionMeta) -> Result<&ServedModels, ServiceError> {
        if meta.encoder.is_none()
            && self
                .models
                .iter()
                .filter(|m| m.key_id == meta.key_id)
                .count()
                > 1
        {
            // Made before collections recorded their encoder: which of the
            // loaded ones made its vectors is unknown.
            return Err(ServiceError::Conflict(format!(
                "this collection does not record which encoder made its vectors, and this host serves several for key {}: serve one encoder for the key while it is re-embedded",
                meta.key_id
            )));
        }
        self.models
            .iter()
            .find(|m| {
                m.key_id == meta.key_id && meta.encoder.as_ref().is_none_or(|e| *e == m.encoder)
            })
            .ok_or_else(|| {
                ServiceError::Conflict(format!(
                    "this collection needs models for key {}{}, which this host does not serve: start it with --artifacts for them",
                    meta.key_id,
                    meta.encoder
                        .as_ref()
                        .map(|e| format!(" and encoder {}", e.chars().take(12).collect::<String>()))
                        .unwrap_or_default()
                ))
            })
    }

    /// The models for a key: the first loaded for it.
    pub(crate) fn models_for_key(&self, key_id: KeyId) -> Result<&ServedModels, ServiceError> {
        self.models
            .iter()
            .find(|m| m.key_id == key_id)
            .ok_or_else(|| {
                invalid(
                    "key_mismatch",
                    format!("this host serves no models for key {key_id}"),
                )
            })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn store_name(tenant: &str, name: &str) -> String {
        format!("{tenant}.{name}")
    }

    fn check_key(&self, collection: &dyn Collection, key_id: KeyId) -> Result<(), ServiceError> {
        if collection.meta().key_id != key_id {
            return Err(invalid(
                "key_mismatch",
                format!(
                    "the request is encrypted under key {key_id}, the collection under key {}",
                    collection.meta().key_id
                ),
            ));
        }
        Ok(())
    }

    /// Opens the version a public name serves, or the version `NAME.vN`
    /// names.
    pub(crate) async fn open(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Arc<dyn Collection>, ServiceError> {
        if let (base, Some(1)) = crate::versions::parse_public(name)? {
            return self.open_first_version(tenant, base).await;
        }
        let full = crate::versions::address(tenant, name)?;
        let store = self.store.clone();
        self.blocking(move || store.collection(&full))
            .await
            .map_err(|e| match e {
                ServiceError::NotFound(_) => {
                    ServiceError::NotFound(format!("collection {name:?} does not exist"))
                }
                other => other,
            })
    }

    pub(crate) async fn info(
        &self,
        tenant: &str,
        c: Arc<dyn Collection>,
    ) -> Result<CollectionInfo, ServiceError> {
        let meta = c.meta().clone();
        let chunks = self.blocking(move || c.count()).await?;
        let own = meta
            .name
            .strip_prefix(&format!("{tenant}."))
            .unwrap_or(&meta.name);
        let (name, version) = crate::versions::split_version(own);
        Ok(CollectionInfo {
            name: name.to_string(),
            key_id: meta.key_id,
            dim: meta.dim,
            chunks,
            version,
        })
    }

    /// Creates a collection bound to the artifacts' key.
    pub async fn create_collection(
        &self,
        tenant: &str,
        name: &str,
        key_id: Option<KeyId>,
    ) -> Result<CollectionInfo, ServiceError> {
        validate_name("a collection name", name)?;
        let models = match key_id {
            Some(k) => self.models_for_key(k).map_err(|_| {
                invalid(
                    "key_mismatch",
                    format!(
                        "this host serves models transformed for key {}, not {k}",
                        self.key_id()
                    ),
                )
            })?,
            None => &self.models[0],
        };
        let store = self.store.clone();
        let full = Self::store_name(tenant, name);
        let spec = CollectionSpec {
            key_id: models.key_id,
            dim: models.engine.facts().dim,
            encoder: Some(models.encoder.clone()),
        };
        let _ops = self.version_ops.lock().await;
        let c = self
            .blocking(move || {
                // A name an alias holds is taken even if its first version
                // was deleted, and so is one with versions left over.
                let versions = format!("{full}.v");
                if store.aliases()?.contains_key(&full)
                    || store
                        .collections()?
                        .iter()
                        .any(|c| c.meta().name.starts_with(&versions))
                {
                    return Err(StoreError::CollectionExists(full));
                }
                store.create(&full, &spec)
            })
            .await
            .map_err(|e| match e {
                ServiceError::Conflict(_) => {
                    ServiceError::Conflict(format!("collection {name:?} already exists"))
                }
                other => other,
            })?;
        self.info(tenant, c).await
    }

    /// The tenant's collections, each as the version serving it.
    pub async fn list_collections(
        &self,
        tenant: &str,
    ) -> Result<Vec<CollectionInfo>, ServiceError> {
        let store = self.store.clone();
        let prefix = format!("{tenant}.");
        let serving = self
            .blocking(move || crate::versions::serving(store.as_ref(), &prefix))
            .await?;
        let mut out = Vec::new();
        for c in serving {
            let mut info = self.info(tenant, c).await?;
            info.name = crate::versions::split_version(&info.name).0.to_string();
            out.push(info);
        }
        Ok(out)
    }

    /// Validates, embeds and stores whole documents; returns once durable.
    pub async fn upsert(
        &self,
        tenant: &str,
        name: &str,
        request: UpsertRequest,
    ) -> Result<UpsertResponse, ServiceError> {
        let collection = self.open(tenant, name).await?;
        self.check_key(collection.as_ref(), request.key_id)?;
        let engine = &self.models_for(collection.meta())?.engine;
        let facts = engine.facts();
        let total: usize = request.documents.iter().map(|d| d.chunks.len()).sum();
        if total > self.limits.max_chunks_per_request {
            return Err(invalid(
                "too_many_chunks",
                format!(
                    "{total} chunks in one request; send at most {}",
                    self.limits.max_chunks_per_request
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (d, doc) in request.documents.iter().enumerate() {
            validate_opaque("doc_id", &doc.doc_id)?;
            validate_opaque("content_hash", &doc.content_hash)?;
            if !seen.insert(doc.doc_id.as_str()) {
                return Err(invalid(
                    "duplicate_document",
                    format!("document {} appears twice in the request", doc.doc_id),
                ));
            }
            if doc.chunks.is_empty() {
                return Err(invalid(
                    "empty_document",
                    format!(
                        "document {} has no chunks (delete it with DELETE instead)",
                        doc.doc_id
                    ),
                ));
            }
            for (i, chunk) in doc.chunks.iter().enumerate() {
                let at = format!("documents[{d}].chunks[{i}]");
                check_ids(
                    &format!("{at}.encoder_ids"),
                    &chunk.encoder_ids,
                    facts.encoder_vocab,
                    facts.encoder_max_tokens,
                    false,
                )?;
                check_ids(
                    &format!("{at}.generator_ids"),
                    &chunk.generator_ids,
                    facts.generator_vocab,
                    facts.generator_context,
                    false,
                )?;
                if chunk.metadata.len() > self.limits.max_metadata_bytes {
                    return Err(invalid(
                        "metadata_too_large",
                        format!(
                            "{at}.metadata has {} bytes; at most {} are allowed",
                            chunk.metadata.len(),
                            self.limits.max_metadata_bytes
                        ),
                    ));
                }
            }
        }

        // Documents already stored with the same content are left alone.
        let mut statuses = Vec::with_capacity(request.documents.len());
        for doc in &request.documents {
            let c = collection.clone();
            let id = doc.doc_id.clone();
            let existing = self.blocking(move || c.document(&id)).await?;
            statuses.push(match existing {
                Some(e) if e.content_hash == doc.content_hash && e.chunks == doc.chunks.len() => {
                    DocumentStatus::Unchanged
                }
                Some(_) => DocumentStatus::Replaced,
                None => DocumentStatus::Created,
            });
        }
        let seqs: Vec<Vec<u32>> = request
            .documents
            .iter()
            .zip(&statuses)
            .filter(|(_, s)| **s != DocumentStatus::Unchanged)
            .flat_map(|(d, _)| d.chunks.iter().map(|c| c.encoder_ids.clone()))
            .collect();
        let mut vectors = engine.embed(seqs).await?.into_iter();
        let key = collection.meta().key_id;
        let mut docs = Vec::new();
        let mut results = Vec::with_capacity(request.documents.len());
        for (doc, status) in request.documents.into_iter().zip(statuses) {
            results.push(DocumentResult {
                doc_id: doc.doc_id.clone(),
                chunks: doc.chunks.len(),
                status,
            });
            if status == DocumentStatus::Unchanged {
                continue;
            }
            let chunks = doc
                .chunks
                .into_iter()
                .map(|c| NewChunk {
                    encoder_ids: EncEncoderIds::new(key, c.encoder_ids),
                    generator_ids: EncGeneratorIds::new(key, c.generator_ids),
                    metadata: c.metadata,
                    vector: vectors.next().expect("one vector per embedded chunk"),
                    seq: None,
                })
                .collect();
            docs.push(NewDocument {
                doc_id: doc.doc_id,
                content_hash: doc.content_hash,
                chunks,
            });
        }
        let written: usize = docs.iter().map(|d| d.chunks.len()).sum();
        if !docs.is_empty() {
            let c = collection.clone();
            self.blocking(move || c.put_documents(&docs)).await?;
        }
        self.metrics.add_chunks_written(written);
        Ok(UpsertResponse {
            documents: results,
            chunks_written: written,
        })
    }

    /// Deletes a document; 404 if it has no chunks.
    pub async fn delete_document(
        &self,
        tenant: &str,
        name: &str,
        doc_id: &str,
    ) -> Result<usize, ServiceError> {
        validate_opaque("doc_id", doc_id)?;
        let collection = self.open(tenant, name).await?;
        let id = doc_id.to_string();
        let n = self
            .blocking(move || collection.delete_document(&id))
            .await?;
        if n == 0 {
            return Err(ServiceError::NotFound(format!(
                "document {doc_id} does not exist"
            )));
        }
        Ok(n)
    }

    /// Exports a document's chunks.
    pub async fn export_document(
        &self,
        tenant: &str,
        name: &str,
        doc_id: &str,
    ) -> Result<DocumentExport, ServiceError> {
        validate_opaque("doc_id", doc_id)?;
        let collection = self.open(tenant, name).await?;
        let key_id = collection.meta().key_id;
        let id = doc_id.to_string();
        let chunks = self
            .blocking(move || collection.document_chunks(&id))
            .await?;
        let content_hash = chunks
            .first()
            .map(|c| c.content_hash.clone())
            .ok_or_else(|| ServiceError::NotFound(format!("document {doc_id} does not exist")))?;
        Ok(DocumentExport {
            doc_id: doc_id.to_string(),
            content_hash,
            key_id,
            chunks: chunks
                .into_iter()
                .map(|c| StoredChunk {
                    chunk_id: c.chunk_id.to_string(),
                    index: c.index,
                    encoder_ids: c.encoder_ids.ids().to_vec(),
                    generator_ids: c.generator_ids.ids().to_vec(),
                    metadata: c.metadata,
                })
                .collect(),
        })
    }

    /// A page of the collection's documents.
    pub async fn list_documents(
        &self,
        tenant: &str,
        name: &str,
        after: Option<String>,
        limit: usize,
    ) -> Result<DocumentList, ServiceError> {
        let collection = self.open(tenant, name).await?;
        let limit = limit.clamp(1, 1000);
        let (docs, next) = self
            .blocking(move || collection.documents(after.as_deref(), limit))
            .await
            .map_err(|e| match e {
                ServiceError::Store(StoreError::InvalidCursor) => {
                    invalid("invalid_cursor", StoreError::InvalidCursor.to_string())
                }
                other => other,
            })?;
        Ok(DocumentList {
            documents: docs
                .into_iter()
                .map(|d| DocumentSummary {
                    doc_id: d.doc_id,
                    content_hash: d.content_hash,
                    chunks: d.chunks,
                    first_seq: d.first_seq,
                })
                .collect(),
            next,
        })
    }

    /// Ranks chunks for encrypted query ids.
    async fn retrieve(
        &self,
        collection: &Arc<dyn Collection>,
        query_ids: Vec<u32>,
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<(ChunkRecord, f32)>, ServiceError> {
        let engine = &self.models_for(collection.meta())?.engine;
        let facts = engine.facts();
        check_ids(
            "query_ids",
            &query_ids,
            facts.encoder_vocab,
            facts.encoder_max_tokens,
            false,
        )?;
        // Fusion looks deeper than k so a chunk ranked just below k by one
        // retriever can still be lifted by the other.
        let depth = match mode {
            SearchMode::Hybrid => (k * 2).max(50).min(self.limits.max_search_k),
            _ => k,
        };
        // Each retriever looks a little past its depth so that hits tied
        // with the last one are all kept (which of them a cut keeps would
        // otherwise depend on their keyed ids, and so on the key).
        let fetch = depth + TIE_SLACK;
        let dense = match mode {
            SearchMode::Dense | SearchMode::Hybrid => {
                let vector = engine
                    .embed(vec![query_ids.clone()])
                    .await?
                    .pop()
                    .expect("one vector per sequence");
                let c = collection.clone();
                Some(
                    self.blocking(move || c.dense_search(&vector, fetch))
                        .await
                        .map(|hits| cut_after_ties(hits, depth))?,
                )
            }
            SearchMode::Keyword => None,
        };
        let keyword = match mode {
            SearchMode::Keyword | SearchMode::Hybrid => {
                let c = collection.clone();
                let q = EncEncoderIds::new(collection.meta().key_id, query_ids);
                Some(
                    self.blocking(move || c.keyword_search(&q, fetch))
                        .await
                        .map(|hits| cut_after_ties(hits, depth))?,
                )
            }
            SearchMode::Dense => None,
        };
        let mut ranked = match (dense, keyword) {
            (Some(d), Some(kw)) => reciprocal_rank_fusion(&[d, kw]),
            (Some(d), None) => d,
            (None, Some(kw)) => kw,
            (None, None) => unreachable!("every mode uses a retriever"),
        };
        ranked.truncate(k);
        let ids: Vec<ChunkId> = ranked.iter().map(|h| h.chunk_id).collect();
        let c = collection.clone();
        let records = self.blocking(move || c.chunks(&ids)).await?;
        let scores: HashMap<ChunkId, f32> = ranked.iter().map(|h| (h.chunk_id, h.score)).collect();
        Ok(records
            .into_iter()
            .map(|r| {
                let s = scores[&r.chunk_id];
                (r, s)
            })
            .collect())
    }

    /// Embeds encrypted encoder ids without storing them (the vectors stay
    /// in the key's rotated space).
    pub async fn embed(&self, request: EmbedRequest) -> Result<Vec<Vec<f32>>, ServiceError> {
        let engine = &self
            .models_for_key(request.key_id)
            .map_err(|_| {
                invalid(
                    "key_mismatch",
                    format!(
                        "the request is encrypted under key {}, this host's models under key {}",
                        request.key_id,
                        self.key_id()
                    ),
                )
            })?
            .engine;
        if request.inputs.is_empty() || request.inputs.len() > self.limits.max_embed_inputs {
            return Err(invalid(
                "invalid_inputs",
                format!(
                    "send 1 to {} inputs per request",
                    self.limits.max_embed_inputs
                ),
            ));
        }
        let facts = engine.facts();
        for (i, ids) in request.inputs.iter().enumerate() {
            check_ids(
                &format!("inputs[{i}]"),
                ids,
                facts.encoder_vocab,
                facts.encoder_max_tokens,
                false,
            )?;
        }
        Ok(engine.embed(request.inputs).await?)
    }

    /// Searches a collection.
    pub async fn search(
        &self,
        tenant: &str,
        name: &str,
        request: SearchRequest,
    ) -> Result<Vec<SearchHit>, ServiceError> {
        let collection = self.open(tenant, name).await?;
        self.check_key(collection.as_ref(), request.key_id)?;
        if request.k == 0 || request.k > self.limits.max_search_k {
            return Err(invalid(
                "invalid_k",
                format!("k must be 1 to {}", self.limits.max_search_k),
            ));
        }
        let hits = self
            .retrieve(&collection, request.query_ids, request.k, request.mode)
            .await?;
        Ok(hits
            .into_iter()
            .map(|(r, score)| SearchHit {
                chunk_id: r.chunk_id.to_string(),
                doc_id: r.doc_id,
                index: r.index,
                score,
                generator_ids: r.generator_ids.ids().to_vec(),
                metadata: r.metadata,
            })
            .collect())
    }

    /// Retrieves, splices the chunks into the client's template and starts
    /// the generation.
    pub async fn answer(
        &self,
        tenant: &str,
        name: &str,
        request: AnswerRequest,
    ) -> Result<PreparedAnswer, ServiceError> {
        let collection = self.open(tenant, name).await?;
        self.check_key(collection.as_ref(), request.key_id)?;
        let engine = &self.models_for(collection.meta())?.engine;
        let facts = engine.facts();
        let vocab = facts.generator_vocab;
        let window = facts.generator_context;
        let t = &request.template;
        for (what, ids) in [
            ("template.before_context", &t.before_context),
            ("template.between_chunks", &t.between_chunks),
            ("template.before_question", &t.before_question),
            ("template.after_question", &t.after_question),
            ("stop_ids", &request.stop_ids),
        ] {
            check_ids(what, ids, vocab, window, true)?;
        }
        check_ids(
            "question.generator_ids",
            &request.question.generator_ids,
            vocab,
            window,
            false,
        )?;
        if request.max_tokens == 0 || request.max_tokens > self.limits.max_new_tokens {
            return Err(invalid(
                "invalid_max_tokens",
                format!("max_tokens must be 1 to {}", self.limits.max_new_tokens),
            ));
        }
        if request.k > self.limits.max_answer_k {
            return Err(invalid(
                "invalid_k",
                format!("k must be 0 to {}", self.limits.max_answer_k),
            ));
        }
        request
            .sampling
            .validate()
            .map_err(|e| invalid("invalid_sampling", e.to_string()))?;

        let mut retrieved = if request.k > 0 {
            self.retrieve(
                &collection,
                request.question.encoder_ids.clone(),
                request.k,
                request.mode,
            )
            .await?
        } else {
            Vec::new()
        };
        // Fit the window: drop the lowest-ranked chunks until prompt and
        // answer fit.
        let fixed = t.before_context.len()
            + t.before_question.len()
            + request.question.generator_ids.len()
            + t.after_question.len();
        let prompt_len = |chunks: &[(ChunkRecord, f32)]| {
            fixed
                + chunks
                    .iter()
                    .map(|(c, _)| c.generator_ids.len())
                    .sum::<usize>()
                + t.between_chunks.len() * chunks.len().saturating_sub(1)
        };
        while !retrieved.is_empty() && prompt_len(&retrieved) + request.max_tokens > window {
            retrieved.pop();
        }
        let prompt_tokens = prompt_len(&retrieved);
        if prompt_tokens + request.max_tokens > window {
            return Err(invalid(
                "context_too_long",
                format!(
                    "a prompt of {prompt_tokens} tokens plus max_tokens {} exceeds the generator's context of {window}",
                    request.max_tokens
                ),
            ));
        }
        let mut prompt = Vec::with_capacity(prompt_tokens);
        prompt.extend_from_slice(&t.before_context);
        for (i, (chunk, _)) in retrieved.iter().enumerate() {
            if i > 0 {
                prompt.extend_from_slice(&t.between_chunks);
            }
            prompt.extend_from_slice(chunk.generator_ids.ids());
        }
        prompt.extend_from_slice(&t.before_question);
        prompt.extend_from_slice(&request.question.generator_ids);
        prompt.extend_from_slice(&t.after_question);

        let events = engine.generate(
            prompt,
            GenerationOptions {
                max_tokens: request.max_tokens,
                stop_ids: request.stop_ids,
                sampling: request.sampling,
            },
        )?;
        Ok(PreparedAnswer {
            events,
            prompt_tokens,
            chunks: retrieved
                .into_iter()
                .map(|(r, score)| UsedChunk {
                    chunk_id: r.chunk_id.to_string(),
                    doc_id: r.doc_id,
                    index: r.index,
                    score,
                    metadata: r.metadata,
                })
                .collect(),
        })
    }

    /// Runs store maintenance on every collection (segment merging,
    /// vacuuming); called from a background task.
    pub async fn optimize_all(&self) -> Result<(), ServiceError> {
        let store = self.store.clone();
        self.blocking(move || {
            for c in store.collections()? {
                c.optimize()?;
            }
            Ok(())
        })
        .await
    }
}

/// Maps the generator's stop reason to the API's.
pub fn finish_reason(stop: StopReason) -> FinishReason {
    match stop {
        StopReason::StopToken => FinishReason::Stop,
        StopReason::MaxTokens | StopReason::Cancelled => FinishReason::Length,
        StopReason::ContextFull => FinishReason::ContextFull,
    }
}

/// Reciprocal-rank fusion: each list (sorted best first) adds
/// `1 / (RRF_K + rank)` to a chunk's score. Equal scores share a rank (the
/// best of their positions): near-ties (scores a float rounding apart) can
/// swap between id spaces, and giving tied chunks one rank keeps the fused
/// scores the same in every id space. Equal fused scores go by write order,
/// then chunk id. The lists are
/// summed in a fixed order so equal inputs give bitwise equal scores.
pub fn reciprocal_rank_fusion(lists: &[Vec<ScoredChunk>]) -> Vec<ScoredChunk> {
    let mut fused: HashMap<ChunkId, f32> = HashMap::new();
    let mut order: Vec<(ChunkId, u64)> = Vec::new();
    for list in lists {
        let mut rank = 0;
        let mut group_score = f32::NAN;
        for (position, hit) in list.iter().enumerate() {
            if position == 0 || !near_tie(hit.score, group_score) {
                rank = position + 1;
                group_score = hit.score;
            }
            let add = 1.0 / (RRF_K + rank as f32);
            match fused.get_mut(&hit.chunk_id) {
                Some(s) => *s += add,
                None => {
                    fused.insert(hit.chunk_id, add);
                    order.push((hit.chunk_id, hit.seq));
                }
            }
        }
    }
    let mut hits: Vec<ScoredChunk> = order
        .into_iter()
        .map(|(chunk_id, seq)| ScoredChunk {
            chunk_id,
            score: fused[&chunk_id],
            seq,
        })
        .collect();
    sort_hits(&mut hits);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(doc: &str, score: f32) -> ScoredChunk {
        ScoredChunk {
            chunk_id: ChunkId::new(doc, 0),
            score,
            seq: 0,
        }
    }

    #[test]
    fn rrf_rewards_agreement_and_depends_on_ranks_only() {
        let dense = vec![hit("a", 0.9), hit("b", 0.8), hit("c", 0.1)];
        let keyword = vec![hit("b", 12.0), hit("d", 3.0), hit("a", 1.0)];
        let fused = reciprocal_rank_fusion(&[dense.clone(), keyword.clone()]);
        let order: Vec<ChunkId> = fused.iter().map(|h| h.chunk_id).collect();
        // b: 1/62 + 1/61, a: 1/61 + 1/63, then d (1/62) before c (1/63).
        assert_eq!(
            order,
            ["b", "a", "d", "c"].map(|d| ChunkId::new(d, 0)).to_vec()
        );
        let rescaled: Vec<ScoredChunk> = keyword
            .iter()
            .map(|h| ScoredChunk {
                score: h.score * 7.0,
                ..*h
            })
            .collect();
        assert_eq!(fused, reciprocal_rank_fusion(&[dense, rescaled]));
    }

    #[test]
    fn rrf_gives_tied_scores_one_rank_whatever_their_order() {
        let tied = vec![hit("a", 2.0), hit("b", 1.0), hit("c", 1.0), hit("d", 0.5)];
        let swapped = vec![hit("a", 2.0), hit("c", 1.0), hit("b", 1.0), hit("d", 0.5)];
        let other = vec![hit("c", 0.9), hit("d", 0.8)];
        let score = |fused: &[ScoredChunk], d: &str| {
            fused
                .iter()
                .find(|h| h.chunk_id == ChunkId::new(d, 0))
                .unwrap()
                .score
        };
        let f1 = reciprocal_rank_fusion(&[tied, other.clone()]);
        let f2 = reciprocal_rank_fusion(&[swapped, other]);
        for d in ["a", "b", "c", "d"] {
            assert_eq!(score(&f1, d).to_bits(), score(&f2, d).to_bits(), "{d}");
        }
        // b and c share rank 2; d is 4th.
        assert_eq!(score(&f1, "b"), 1.0 / (RRF_K + 2.0));
        assert_eq!(score(&f1, "d"), 1.0 / (RRF_K + 4.0) + 1.0 / (RRF_K + 2.0));
        // Scores a float reassociation apart are tied too.
        let near = vec![
            hit("a", 2.0),
            hit("c", 1.000_000_1),
            hit("b", 1.0),
            hit("d", 0.5),
        ];
        let f3 = reciprocal_rank_fusion(&[near, vec![hit("c", 0.9), hit("d", 0.8)]]);
        for d in ["a", "b", "c", "d"] {
            assert_eq!(score(&f1, d).to_bits(), score(&f3, d).to_bits(), "{d}");
        }
    }

    #[test]
    fn a_cut_keeps_every_hit_tied_with_the_last() {
        let hits = vec![hit("a", 3.0), hit("b", 2.0), hit("c", 2.0), hit("d", 1.0)];
        let ids = |v: &[ScoredChunk]| v.len();
        assert_eq!(ids(&cut_after_ties(hits.clone(), 2)), 3);
        assert_eq!(ids(&cut_after_ties(hits.clone(), 3)), 3);
        assert_eq!(ids(&cut_after_ties(hits.clone(), 1)), 1);
        assert_eq!(ids(&cut_after_ties(hits, 10)), 4);
    }
}
