//! The scale-out store: a Qdrant server or cluster over gRPC
//! (`qdrant-client`). Qdrant shards and replicates; eerag keeps no local
//! state but a cache of collection handles, so several hosts can share one
//! cluster.
//!
//! Per eerag collection, one Qdrant collection named `<prefix><name>`
//! holding, per chunk, one point: the rotated dense vector (`dense`, cosine),
//! a sparse BM25 vector over the encrypted encoder ids (`keyword`, Qdrant's
//! IDF modifier) and a payload of ciphertext (the packed encrypted id
//! sequences, the sealed metadata) and opaque ids. The collection's key id,
//! dimension and BM25 length norm live in Qdrant's collection metadata.
//!
//! Keyword scores follow tantivy's BM25 (k1 1.2, b 0.75, its one-byte length
//! quantisation and IDF) so the two backends rank alike; they differ in the
//! average chunk length (fixed here from the first batch written, live in
//! tantivy) and in how deleted chunks count (see docs/jobs.md).
//!
//! Durability and atomicity: a batch of documents is one `UpdateBatch`
//! request (upsert each document's chunks, then delete its chunks past the
//! new end), acknowledged once Qdrant applied it (`wait`, strong ordering).
//! Qdrant applies each operation atomically per shard but not a batch as a
//! whole, so readers check that every chunk of a document carries its
//! current content hash and count, and report a document caught half
//! replaced as [`INCOMPLETE`]: the upload client then sends it again.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use eerag_core::{EncEncoderIds, EncGeneratorIds, KeyId};
use qdrant_client::qdrant::{
    point_id::PointIdOptions, points_update_operation, value::Kind, vector_output,
    vectors_output::VectorsOptions, Condition, CountPointsBuilder, CreateAliasBuilder,
    CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeletePointsBuilder, Direction,
    Distance, FieldType, Filter, GetPointsBuilder, HnswConfigDiffBuilder, Modifier, NamedVectors,
    OrderByBuilder, PayloadIncludeSelector, PointId, PointStruct, PointsUpdateOperation,
    QueryPointsBuilder, Range, RetrievedPoint, ScoredPoint, ScrollPointsBuilder,
    SearchParamsBuilder, SparseVectorParamsBuilder, SparseVectorsConfigBuilder,
    UpdateBatchPointsBuilder, UpdateCollectionBuilder, Value, Vector, VectorParamsBuilder,
    VectorsConfigBuilder, VectorsSelector, WriteOrdering, WriteOrderingType,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use tantivy::fieldnorm::FieldNormReader;

use crate::store::{
    assign_seqs, sort_hits, validate_collection_name, ChunkId, ChunkRecord, Collection,
    CollectionMeta, CollectionSpec, DocumentInfo, NewDocument, Result, ScoredChunk, Store,
    StoreError,
};

/// Name of the dense vector.
const DENSE: &str = "dense";
/// Name of the sparse BM25 vector.
const KEYWORD: &str = "keyword";
/// Points read per page when scanning.
const SCAN_PAGE: u32 = 1024;
/// Chunks per write request (each request stays far below gRPC limits).
const WRITE_BATCH_CHUNKS: usize = 256;
/// BM25 term saturation and length normalisation, as tantivy's.
const BM25_K1: f32 = 1.2;
const BM25_B: f32 = 0.75;
/// The content hash reported for a document whose chunks do not all carry
/// the same version (a replacement interrupted by a server crash): never a
/// real hash, so the upload client sends the document again.
pub const INCOMPLETE: &str = "incomplete";

mod field {
    pub const DOC_ID: &str = "doc_id";
    pub const INDEX: &str = "chunk_index";
    pub const COUNT: &str = "chunk_count";
    pub const CONTENT_HASH: &str = "content_hash";
    pub const ENCODER_IDS: &str = "encoder_ids";
    pub const GENERATOR_IDS: &str = "generator_ids";
    pub const METADATA: &str = "metadata";
    pub const SEQ: &str = "seq";
}

/// Keys of eerag's entries in a Qdrant collection's metadata.
mod meta_key {
    pub const FORMAT: &str = "eerag_format";
    pub const KEY_ID: &str = "eerag_key_id";
    pub const DIM: &str = "eerag_dim";
    pub const CREATED: &str = "eerag_created_unix_secs";
    pub const AVGDL: &str = "eerag_bm25_avgdl";
    pub const ENCODER: &str = "eerag_encoder";
}

/// Suffix of the Qdrant aliases that hold eerag's aliases. eerag aliases
/// shadow collections of the same name, which Qdrant's own may not, so they
/// live under their own names and eerag resolves them.
const ALIAS_SUFFIX: &str = "~alias";
/// How long a host trusts the aliases it listed: other hosts see a switch
/// within this time (jobs wait longer than this before deleting what an
/// alias named before).
pub const ALIAS_TTL: Duration = Duration::from_secs(1);

/// Version of the layout above.
const FORMAT: i64 = 1;

/// How to reach and lay out collections on a Qdrant server or cluster.
#[derive(Clone)]
pub struct QdrantOptions {
    /// gRPC endpoint, `http://host:6334` or `https://host:6334` (TLS with the
    /// system's roots; `SSL_CERT_FILE` adds a private CA).
    pub url: String,
    /// Qdrant API key (never logged).
    pub api_key: Option<String>,
    /// Prefix of eerag's Qdrant collection names, so a cluster can be shared.
    pub collection_prefix: String,
    /// Shards of a new collection (Qdrant's default when unset).
    pub shard_number: Option<u32>,
    /// Copies of each shard of a new collection.
    pub replication_factor: Option<u32>,
    /// Replicas that must acknowledge a write.
    pub write_consistency_factor: Option<u32>,
    /// Deadline of one request.
    pub timeout: Duration,
    /// Deadline of connecting.
    pub connect_timeout: Duration,
    /// Attempts of a request that failed for want of a server (with
    /// exponential backoff between them) before the store reports it
    /// unavailable.
    pub attempts: u32,
}

impl std::fmt::Debug for QdrantOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantOptions")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("collection_prefix", &self.collection_prefix)
            .field("shard_number", &self.shard_number)
            .field("replication_factor", &self.replication_factor)
            .field("write_consistency_factor", &self.write_consistency_factor)
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl QdrantOptions {
    /// Options for `url`: `qdrant://host:port` (plain gRPC),
    /// `qdrants://host:port` (TLS), or an `http://` / `https://` gRPC URL.
    /// The port defaults to 6334.
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = || {
            StoreError::Config(format!(
                "{url:?} is not a Qdrant URL: use qdrant://host:6334, qdrants://host:6334 (TLS), http:// or https://"
            ))
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let scheme = match scheme {
            "qdrant" | "http" => "http",
            "qdrants" | "https" => "https",
            _ => return Err(bad()),
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || authority.contains('@') {
            return Err(bad());
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.ends_with(']') || port.parse::<u16>().is_ok())
            && !authority.ends_with(']');
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:6334")
        };
        Ok(Self {
            url: format!("{scheme}://{authority}"),
            api_key: None,
            collection_prefix: "eerag.".into(),
            shard_number: None,
            replication_factor: None,
            write_consistency_factor: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            attempts: 4,
        })
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a failed request may succeed if sent again: the server was
/// unreachable, timed out or shed load.
fn transient(e: &QdrantError) -> bool {
    match e {
        QdrantError::ResponseError { status } => {
            matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
                    | tonic::Code::Aborted
            )
            // The client's channel pool reports a refused connection so.
            || (status.code() == tonic::Code::Internal
                && status.message().starts_with("Failed to connect"))
        }
        QdrantError::ResourceExhaustedError { .. } => true,
        QdrantError::Io(_) => true,
        _ => false,
    }
}

/// Maps a Qdrant error to the store's, naming `collection` where it is
/// missing or exists already.
fn store_err(collection: &str, e: QdrantError) -> StoreError {
    if transient(&e) {
        return StoreError::Unavailable(format!("Qdrant server: {}", status_text(&e)));
    }
    if let QdrantError::ResponseError { status } = &e {
        match status.code() {
            tonic::Code::NotFound => {
                return StoreError::CollectionNotFound(collection.chars().take(80).collect())
            }
            tonic::Code::AlreadyExists => {
                return StoreError::CollectionExists(collection.chars().take(80).collect())
            }
            _ => {}
        }
        // Qdrant reports a missing collection as a bad request in places.
        if status.message().contains("Not found: Collection") {
            return StoreError::CollectionNotFound(collection.chars().take(80).collect());
        }
    }
    StoreError::Vector(format!("Qdrant server: {}", status_text(&e)))
}

/// A short description of `e`: the gRPC code and message, without the
/// request metadata the client's Display adds.
fn status_text(e: &QdrantError) -> String {
    match e {
        QdrantError::ResponseError { status }
        | QdrantError::ResourceExhaustedError { status, .. } => {
            let message: String = status.message().chars().take(300).collect();
            format!("{:?}: {message}", status.code())
        }
        other => other.to_string().chars().take(300).collect(),
    }
}

/// The gRPC client with its own runtime, so the store's blocking methods
/// work from any thread (the host calls them on its blocking pool).
struct Client {
    qdrant: Qdrant,
    runtime: Option<tokio::runtime::Runtime>,
    attempts: u32,
}

impl Client {
    /// Sends a request built by `call`, retrying transient failures with
    /// exponential backoff (100 ms, 200 ms, 400 ms, ...).
    fn run<'a, T, F>(&'a self, collection: &str, call: impl Fn(&'a Qdrant) -> F) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, QdrantError>> + 'a,
    {
        let runtime = self.runtime.as_ref().expect("present until drop");
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match runtime.block_on(call(&self.qdrant)) {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) && attempt < self.attempts => {
                    tracing::warn!(attempt, error = %status_text(&e), "Qdrant request failed; retrying");
                    std::thread::sleep(delay);
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(store_err(collection, e)),
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // The host may drop the store on an async thread, where a runtime
        // must not block on its own shutdown.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A Qdrant server or cluster as an eerag store.
pub struct QdrantStore {
    client: Arc<Client>,
    options: QdrantOptions,
    /// Handles of collections seen, keeping their write sequence and length
    /// norm; the server stays the source of truth for what exists.
    cache: RwLock<HashMap<String, Arc<QdrantCollection>>>,
    /// The aliases as last listed, and when.
    aliases: Mutex<Option<(std::time::Instant, BTreeMap<String, String>)>>,
}

impl QdrantStore {
    /// Connects and checks the server answers.
    pub fn connect(options: QdrantOptions) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("eerag-qdrant")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("starting the Qdrant client: {e}")))?;
        let mut config = Qdrant::from_url(&options.url)
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            // Versions are checked below, with a clear error.
            .skip_compatibility_check();
        if let Some(key) = &options.api_key {
            config.set_api_key(key);
        }
        let qdrant = {
            let _enter = runtime.enter();
            config
                .build()
                .map_err(|e| StoreError::Config(format!("Qdrant client: {}", status_text(&e))))?
        };
        let client = Arc::new(Client {
            qdrant,
            runtime: Some(runtime),
            attempts: options.attempts.max(1),
        });
        let health = client.run("", |q| q.health_check())?;
        tracing::info!(url = %options.url, version = %health.version, "connected to Qdrant");
        Ok(Self {
            client,
            options,
            cache: RwLock::new(HashMap::new()),
            aliases: Mutex::new(None),
        })
    }

    /// The Qdrant collection holding eerag collection `name`.
    fn physical(&self, name: &str) -> String {
        format!("{}{name}", self.options.collection_prefix)
    }

    fn cached(&self, name: &str) -> Option<Arc<QdrantCollection>> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Opens `name` from the server's collection metadata.
    fn load(&self, name: &str) -> Result<Arc<QdrantCollection>> {
        validate_collection_name(name)?;
        let physical = self.physical(name);
        let info = self
            .client
            .run(name, |q| q.collection_info(physical.clone()))?
            .result
            .ok_or_else(|| StoreError::Corrupt("collection info without a result".into()))?;
        let metadata = info.config.map(|c| c.metadata).unwrap_or_default();
        // A collection not written by eerag is none of ours.
        if meta_int(&metadata, meta_key::FORMAT) != Some(FORMAT) {
            return Err(StoreError::CollectionNotFound(
                name.chars().take(80).collect(),
            ));
        }
        let key_id: KeyId = meta_str(&metadata, meta_key::KEY_ID)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Corrupt(format!("collection {name:?} has no key id")))?;
        let dim = meta_int(&metadata, meta_key::DIM)
            .and_then(|d| usize::try_from(d).ok())
            .ok_or_else(|| StoreError::Corrupt(format!("collection {name:?} has no dimension")))?;
        let meta = CollectionMeta {
            name: name.to_string(),
            key_id,
            dim,
            created_unix_secs: meta_int(&metadata, meta_key::CREATED).unwrap_or(0) as u64,
            encoder: meta_str(&metadata, meta_key::ENCODER),
        };
        let avgdl = meta_double(&metadata, meta_key::AVGDL).map(|v| v as f32);
        let collection = Arc::new(QdrantCollection {
            client: self.client.clone(),
            physical,
            meta,
            avgdl: Mutex::new(avgdl),
            last_seq: AtomicU64::new(0),
        });
        // Payload indexes are created after the collection: a creation cut
        // short leaves them to be made here.
        collection.ensure_indexes()?;
        collection.raise_seq_to_stored()?;
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        Ok(cache.entry(name.to_string()).or_insert(collection).clone())
    }
}

impl QdrantStore {
    /// The eerag aliases, listed at most every [`ALIAS_TTL`] (`fresh`:
    /// listed now).
    fn alias_map(&self, fresh: bool) -> Result<BTreeMap<String, String>> {
        let cached = self
            .aliases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((at, map)) = &cached {
            if !fresh && at.elapsed() < ALIAS_TTL {
                return Ok(map.clone());
            }
        }
        // Listed without holding the lock, so a slow or dead server holds up
        // only the requests that need the listing, each with its own retries.
        let listed = self.client.run("", |q| q.list_aliases())?;
        let prefix = &self.options.collection_prefix;
        let map: BTreeMap<String, String> = listed
            .aliases
            .into_iter()
            .filter_map(|a| {
                let alias = a
                    .alias_name
                    .strip_prefix(prefix)?
                    .strip_suffix(ALIAS_SUFFIX)?;
                let target = a.collection_name.strip_prefix(prefix)?;
                Some((alias.to_string(), target.to_string()))
            })
            .collect();
        *self.aliases.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), map.clone()));
        Ok(map)
    }
}

impl Store for QdrantStore {
    fn create(&self, name: &str, spec: &CollectionSpec) -> Result<Arc<dyn Collection>> {
        validate_collection_name(name)?;
        let (key_id, dim) = (spec.key_id, spec.dim);
        let physical = self.physical(name);
        let mut metadata: HashMap<String, serde_json::Value> = HashMap::from([
            (meta_key::FORMAT.to_string(), FORMAT.into()),
            (meta_key::KEY_ID.to_string(), key_id.to_string().into()),
            (meta_key::DIM.to_string(), (dim as u64).into()),
            (meta_key::CREATED.to_string(), now_secs().into()),
        ]);
        if let Some(encoder) = &spec.encoder {
            metadata.insert(meta_key::ENCODER.to_string(), encoder.clone().into());
        }
        let mut vectors = VectorsConfigBuilder::default();
        vectors.add_named_vector_params(
            DENSE,
            VectorParamsBuilder::new(dim as u64, Distance::Cosine),
        );
        let mut sparse = SparseVectorsConfigBuilder::default();
        sparse.add_named_vector_params(
            KEYWORD,
            SparseVectorParamsBuilder::default().modifier(Modifier::Idf as i32),
        );
        let mut request = CreateCollectionBuilder::new(physical.clone())
            .vectors_config(vectors)
            .sparse_vectors_config(sparse)
            // Search is exact (the rankings contract), so an HNSW graph
            // would only cost the server indexing time.
            .hnsw_config(HnswConfigDiffBuilder::default().m(0))
            .metadata(metadata);
        if let Some(n) = self.options.shard_number {
            request = request.shard_number(n);
        }
        if let Some(n) = self.options.replication_factor {
            request = request.replication_factor(n);
        }
        if let Some(n) = self.options.write_consistency_factor {
            request = request.write_consistency_factor(n);
        }
        let request = request.build();
        self.client
            .run(name, |q| q.create_collection(request.clone()))
            .map_err(|e| match e {
                StoreError::Vector(m) if m.contains("already exists") => {
                    StoreError::CollectionExists(name.chars().take(80).collect())
                }
                other => other,
            })?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        Ok(self.load(name)?)
    }

    fn collection(&self, name: &str) -> Result<Arc<dyn Collection>> {
        let target = self.alias_map(false)?.get(name).cloned();
        let name = target.as_deref().unwrap_or(name);
        match self.cached(name) {
            Some(c) => Ok(c),
            None => Ok(self.load(name)?),
        }
    }

    fn collections(&self) -> Result<Vec<Arc<dyn Collection>>> {
        let listed = self.client.run("", |q| q.list_collections())?;
        let mut names: Vec<String> = listed
            .collections
            .into_iter()
            .filter_map(|c| {
                c.name
                    .strip_prefix(&self.options.collection_prefix)
                    .map(str::to_string)
            })
            .filter(|n| validate_collection_name(n).is_ok())
            .collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let cached = self.cached(&name);
            match cached.map(Ok).unwrap_or_else(|| self.load(&name)) {
                Ok(c) => out.push(c as Arc<dyn Collection>),
                // Another Qdrant user's collection under the prefix, or one
                // deleted since the listing.
                Err(StoreError::CollectionNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn delete_collection(&self, name: &str) -> Result<()> {
        // Only ever delete a collection eerag owns, and none an alias names.
        self.load(name)?;
        if let Some((alias, _)) = self.alias_map(true)?.iter().find(|(_, t)| *t == name) {
            return Err(StoreError::InUse(format!(
                "collection {name:?} is what {alias:?} names: switch or remove the alias first"
            )));
        }
        let physical = self.physical(name);
        let deleted = self
            .client
            .run(name, |q| q.delete_collection(physical.clone()))?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if deleted.result {
            Ok(())
        } else {
            Err(StoreError::CollectionNotFound(
                name.chars().take(80).collect(),
            ))
        }
    }

    fn aliases(&self) -> Result<BTreeMap<String, String>> {
        self.alias_map(true)
    }

    fn set_alias(&self, alias: &str, target: Option<&str>) -> Result<Option<String>> {
        validate_collection_name(alias)?;
        let previous = self.alias_map(true)?.get(alias).cloned();
        let native = format!("{}{ALIAS_SUFFIX}", self.physical(alias));
        match target {
            Some(t) => {
                // Only ever point at a collection eerag owns.
                self.load(t)?;
                // Qdrant's create replaces an alias of the same name in one
                // step, so readers see the old target or the new one.
                let request = CreateAliasBuilder::new(self.physical(t), native.clone()).build();
                self.client
                    .run(alias, |q| q.create_alias(request.clone()))?;
            }
            None if previous.is_some() => {
                self.client.run(alias, |q| q.delete_alias(native.clone()))?;
            }
            None => {}
        }
        *self.aliases.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(previous)
    }
}

/// One eerag collection on the server.
pub struct QdrantCollection {
    client: Arc<Client>,
    physical: String,
    meta: CollectionMeta,
    /// The BM25 average chunk length: fixed from the first batch written
    /// (kept in the collection metadata) so stored weights never go stale.
    avgdl: Mutex<Option<f32>>,
    /// The last write sequence number handed out (see [`ScoredChunk::seq`]).
    last_seq: AtomicU64,
}

impl QdrantCollection {
    fn run<'a, T, F>(&'a self, call: impl Fn(&'a Qdrant) -> F) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, QdrantError>> + 'a,
    {
        self.client.run(&self.meta.name, call)
    }

    fn ensure_indexes(&self) -> Result<()> {
        for (name, kind) in [
            (field::DOC_ID, FieldType::Keyword),
            (field::INDEX, FieldType::Integer),
            (field::SEQ, FieldType::Integer),
        ] {
            let request = CreateFieldIndexCollectionBuilder::new(self.physical.clone(), name, kind)
                .wait(true);
            self.run(|q| q.create_field_index(request.clone()))?;
        }
        Ok(())
    }

    /// Raises the write sequence to the highest one stored, so numbers keep
    /// increasing across restarts and hosts even if a clock went back.
    fn raise_seq_to_stored(&self) -> Result<()> {
        let request = ScrollPointsBuilder::new(self.physical.clone())
            .limit(1)
            .order_by(OrderByBuilder::new(field::SEQ).direction(Direction::Desc as i32))
            .with_payload(fields(&[field::SEQ]));
        let page = self.run(|q| q.scroll(request.clone()))?;
        if let Some(max) = page
            .result
            .first()
            .and_then(|p| payload_u64(&p.payload, field::SEQ))
        {
            self.last_seq.fetch_max(max, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Reserves `n` consecutive write sequence numbers (the wall clock in
    /// nanoseconds, or one past the last if that is higher) and returns the
    /// first.
    fn reserve_seqs(&self, n: usize) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut first = 0;
        let _ = self
            .last_seq
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                first = now.max(last + 1);
                Some(first + (n as u64).max(1) - 1)
            });
        first
    }

    /// The BM25 length norm, fixing it from `docs` if this is the first
    /// write.
    fn avgdl_for(&self, docs: &[NewDocument]) -> Result<f32> {
        let mut avgdl = self.avgdl.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = *avgdl {
            return Ok(v);
        }
        let (tokens, chunks) = docs
            .iter()
            .flat_map(|d| &d.chunks)
            .fold((0u64, 0u64), |(t, c), chunk| {
                (t + chunk.encoder_ids.ids().len() as u64, c + 1)
            });
        let value = if chunks == 0 {
            1.0
        } else {
            (tokens as f32 / chunks as f32).max(1.0)
        };
        let metadata: HashMap<String, serde_json::Value> =
            HashMap::from([(meta_key::AVGDL.to_string(), f64::from(value).into())]);
        let request = UpdateCollectionBuilder::new(self.physical.clone()).metadata(metadata);
        self.run(|q| q.update_collection(request.clone()))?;
        *avgdl = Some(value);
        Ok(value)
    }

    fn doc_filter(doc_id: &str) -> Filter {
        Filter::must([Condition::matches(field::DOC_ID, doc_id.to_string())])
    }

    fn count_where(&self, filter: Filter) -> Result<u64> {
        let request = CountPointsBuilder::new(self.physical.clone())
            .filter(filter)
            .exact(true);
        Ok(self
            .run(|q| q.count(request.clone()))?
            .result
            .map(|r| r.count)
            .unwrap_or(0))
    }

    /// Calls `visit` for every point matching `filter`, page by page.
    fn scroll_all(
        &self,
        filter: Option<Filter>,
        payload: Option<Vec<String>>,
        with_vector: bool,
        visit: impl FnMut(RetrievedPoint) -> Result<()>,
    ) -> Result<()> {
        self.scroll_from(None, filter, payload, with_vector, visit)
    }

    /// [`Self::scroll_all`] from point `start` on (in id order).
    fn scroll_from(
        &self,
        start: Option<PointId>,
        filter: Option<Filter>,
        payload: Option<Vec<String>>,
        with_vector: bool,
        mut visit: impl FnMut(RetrievedPoint) -> Result<()>,
    ) -> Result<()> {
        let mut offset: Option<PointId> = start;
        loop {
            let mut request = ScrollPointsBuilder::new(self.physical.clone()).limit(SCAN_PAGE);
            request = match &payload {
                Some(names) => request.with_payload(PayloadIncludeSelector {
                    fields: names.clone(),
                }),
                None => request.with_payload(true),
            };
            if with_vector {
                request = request.with_vectors(VectorsSelector {
                    names: vec![DENSE.to_string()],
                });
            }
            if let Some(f) = &filter {
                request = request.filter(f.clone());
            }
            if let Some(o) = &offset {
                request = request.offset(o.clone());
            }
            let page = self.run(|q| q.scroll(request.clone()))?;
            for point in page.result {
                visit(point)?;
            }
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Which of `infos` are not stored whole (a chunk missing, left over or
    /// of another version): they are reported as [`INCOMPLETE`].
    fn mark_incomplete(&self, infos: &mut [DocumentInfo]) -> Result<()> {
        if infos.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = infos.iter().map(|i| i.doc_id.clone()).collect();
        let filter = Filter::must([Condition::matches(field::DOC_ID, ids)]);
        // doc id -> (chunks of the listed version, chunks in all)
        let mut seen: HashMap<String, (usize, usize)> = HashMap::new();
        let version: HashMap<&str, &str> = infos
            .iter()
            .map(|i| (i.doc_id.as_str(), i.content_hash.as_str()))
            .collect();
        self.scroll_all(
            Some(filter),
            Some(vec![field::DOC_ID.into(), field::CONTENT_HASH.into()]),
            false,
            |point| {
                let doc = payload_str(&point.payload, field::DOC_ID)?;
                let hash = payload_str(&point.payload, field::CONTENT_HASH)?;
                let same = version.get(doc.as_str()) == Some(&hash.as_str());
                let entry = seen.entry(doc).or_default();
                entry.0 += usize::from(same);
                entry.1 += 1;
                Ok(())
            },
        )?;
        for info in infos.iter_mut() {
            let (current, all) = seen.get(&info.doc_id).copied().unwrap_or((0, 0));
            if current != info.chunks || all != info.chunks {
                info.content_hash = INCOMPLETE.to_string();
            }
        }
        Ok(())
    }

    fn to_chunk(
        &self,
        id: Option<&PointId>,
        payload: &HashMap<String, Value>,
    ) -> Result<ChunkRecord> {
        Ok(ChunkRecord {
            chunk_id: point_to_chunk(id)?,
            doc_id: payload_str(payload, field::DOC_ID)?,
            index: payload_u64(payload, field::INDEX)
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| StoreError::Corrupt(format!("point without {}", field::INDEX)))?,
            content_hash: payload_str(payload, field::CONTENT_HASH)?,
            encoder_ids: EncEncoderIds::new(
                self.meta.key_id,
                unpack_ids(&payload_str(payload, field::ENCODER_IDS)?)?,
            ),
            generator_ids: EncGeneratorIds::new(
                self.meta.key_id,
                unpack_ids(&payload_str(payload, field::GENERATOR_IDS)?)?,
            ),
            metadata: base64_decode(&payload_str(payload, field::METADATA)?)?,
            seq: payload_u64(payload, field::SEQ).unwrap_or(0),
        })
    }

    fn info_from(payload: &HashMap<String, Value>) -> Result<DocumentInfo> {
        Ok(DocumentInfo {
            doc_id: payload_str(payload, field::DOC_ID)?,
            content_hash: payload_str(payload, field::CONTENT_HASH)?,
            chunks: payload_u64(payload, field::COUNT)
                .ok_or_else(|| StoreError::Corrupt(format!("point without {}", field::COUNT)))?
                as usize,
            first_seq: payload_u64(payload, field::SEQ).unwrap_or(0),
        })
    }

    fn scored(points: Vec<ScoredPoint>) -> Result<Vec<ScoredChunk>> {
        points
            .into_iter()
            .map(|p| {
                Ok(ScoredChunk {
                    chunk_id: point_to_chunk(p.id.as_ref())?,
                    score: p.score,
                    seq: payload_u64(&p.payload, field::SEQ).unwrap_or(0),
                })
            })
            .collect()
    }

    /// One point of a chunk.
    fn point(&self, doc: &NewDocument, index: usize, seq: u64, avgdl: f32) -> Result<PointStruct> {
        let chunk = &doc.chunks[index];
        if chunk.vector.len() != self.meta.dim {
            return Err(StoreError::Vector(format!(
                "vector of {} dimensions for a {}-dimensional collection",
                chunk.vector.len(),
                self.meta.dim
            )));
        }
        let payload = Payload::try_from(serde_json::json!({
            field::DOC_ID: doc.doc_id,
            field::INDEX: index,
            field::COUNT: doc.chunks.len(),
            field::CONTENT_HASH: doc.content_hash,
            field::ENCODER_IDS: pack_ids(chunk.encoder_ids.ids()),
            field::GENERATOR_IDS: pack_ids(chunk.generator_ids.ids()),
            field::METADATA: base64_encode(&chunk.metadata),
            field::SEQ: seq,
        }))
        .expect("a JSON object");
        let mut vectors =
            NamedVectors::default().add_vector(DENSE, Vector::new_dense(chunk.vector.clone()));
        let (indices, values) = bm25_document_weights(chunk.encoder_ids.ids(), avgdl);
        if !indices.is_empty() {
            vectors = vectors.add_vector(KEYWORD, Vector::new_sparse(indices, values));
        }
        Ok(PointStruct::new(
            ChunkId::new(&doc.doc_id, index as u32).uuid().to_string(),
            vectors,
            payload,
        ))
    }
}

/// The BM25 weight of each distinct id of a chunk, as tantivy scores it
/// bar the IDF (which Qdrant's modifier supplies at query time):
/// `(k1 + 1) tf / (tf + k1 (1 - b + b dl / avgdl))`, with the chunk length
/// `dl` quantised to tantivy's one-byte field norm. Sorted by id.
pub fn bm25_document_weights(ids: &[u32], avgdl: f32) -> (Vec<u32>, Vec<f32>) {
    let mut tf: BTreeMap<u32, u32> = BTreeMap::new();
    for &id in ids {
        *tf.entry(id).or_default() += 1;
    }
    let dl = FieldNormReader::id_to_fieldnorm(FieldNormReader::fieldnorm_to_id(ids.len() as u32));
    let norm = BM25_K1 * (1.0 - BM25_B + BM25_B * dl as f32 / avgdl);
    tf.into_iter()
        .map(|(id, f)| {
            let f = f as f32;
            (id, (1.0 + BM25_K1) * f / (f + norm))
        })
        .unzip()
}

impl Collection for QdrantCollection {
    fn meta(&self) -> &CollectionMeta {
        &self.meta
    }

    fn count(&self) -> Result<u64> {
        self.count_where(Filter::default())
    }

    fn document(&self, doc_id: &str) -> Result<Option<DocumentInfo>> {
        let first = ChunkId::new(doc_id, 0).uuid().to_string();
        let request =
            GetPointsBuilder::new(self.physical.clone(), vec![first.into()]).with_payload(fields(
                &[field::DOC_ID, field::CONTENT_HASH, field::COUNT, field::SEQ],
            ));
        let found = self.run(|q| q.get_points(request.clone()))?;
        let Some(point) = found.result.first() else {
            return Ok(None);
        };
        let mut infos = [Self::info_from(&point.payload)?];
        self.mark_incomplete(&mut infos)?;
        let [info] = infos;
        Ok(Some(info))
    }

    fn put_documents(&self, docs: &[NewDocument]) -> Result<()> {
        let avgdl = self.avgdl_for(docs)?;
        let mut start = 0;
        while start < docs.len() {
            // Whole documents per request, about WRITE_BATCH_CHUNKS chunks.
            let mut end = start;
            let mut chunks = 0;
            while end < docs.len()
                && (end == start || chunks + docs[end].chunks.len() <= WRITE_BATCH_CHUNKS)
            {
                chunks += docs[end].chunks.len();
                end += 1;
            }
            let batch = &docs[start..end];
            let seqs = assign_seqs(batch, &self.last_seq, |n| self.reserve_seqs(n));
            let mut operations = Vec::with_capacity(batch.len() * 2);
            for (doc, doc_seqs) in batch.iter().zip(&seqs) {
                let mut points = Vec::with_capacity(doc.chunks.len());
                for (index, &seq) in doc_seqs.iter().enumerate() {
                    points.push(self.point(doc, index, seq, avgdl)?);
                }
                if !points.is_empty() {
                    operations.push(PointsUpdateOperation {
                        operation: Some(points_update_operation::Operation::Upsert(
                            points_update_operation::PointStructList {
                                points,
                                ..Default::default()
                            },
                        )),
                    });
                }
                // Chunks of an older, longer version go after the new ones
                // are in: a reader never finds the document missing.
                let stale = Filter::must([
                    Condition::matches(field::DOC_ID, doc.doc_id.clone()),
                    Condition::range(
                        field::INDEX,
                        Range {
                            gte: Some(doc.chunks.len() as f64),
                            ..Default::default()
                        },
                    ),
                ]);
                operations.push(PointsUpdateOperation {
                    operation: Some(points_update_operation::Operation::DeletePoints(
                        points_update_operation::DeletePoints {
                            points: Some(stale.into()),
                            shard_key_selector: None,
                        },
                    )),
                });
            }
            let request = UpdateBatchPointsBuilder::new(self.physical.clone(), operations)
                .wait(true)
                .ordering(strong());
            self.run(|q| q.update_points_batch(request.clone()))?;
            start = end;
        }
        Ok(())
    }

    fn delete_document(&self, doc_id: &str) -> Result<usize> {
        let count = self.count_where(Self::doc_filter(doc_id))?;
        if count == 0 {
            return Ok(0);
        }
        let request = DeletePointsBuilder::new(self.physical.clone())
            .points(Self::doc_filter(doc_id))
            .wait(true)
            .ordering(strong());
        self.run(|q| q.delete_points(request.clone()))?;
        Ok(count as usize)
    }

    fn document_chunks(&self, doc_id: &str) -> Result<Vec<ChunkRecord>> {
        let mut chunks = Vec::new();
        self.scroll_all(Some(Self::doc_filter(doc_id)), None, false, |point| {
            chunks.push(self.to_chunk(point.id.as_ref(), &point.payload)?);
            Ok(())
        })?;
        chunks.sort_by_key(|c| c.index);
        Ok(chunks)
    }

    fn documents(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<DocumentInfo>, Option<String>)> {
        let mut request = ScrollPointsBuilder::new(self.physical.clone())
            .limit(limit.clamp(1, u32::MAX as usize) as u32)
            .filter(Filter::must([Condition::matches(field::INDEX, 0i64)]))
            .with_payload(fields(&[
                field::DOC_ID,
                field::CONTENT_HASH,
                field::COUNT,
                field::SEQ,
            ]));
        if let Some(cursor) = after {
            let id: ChunkId = cursor.parse().map_err(|_| StoreError::InvalidCursor)?;
            request = request.offset(PointId::from(id.uuid().to_string()));
        }
        let page = self.run(|q| q.scroll(request.clone()))?;
        let mut infos = page
            .result
            .iter()
            .map(|p| Self::info_from(&p.payload))
            .collect::<Result<Vec<_>>>()?;
        self.mark_incomplete(&mut infos)?;
        let next = page
            .next_page_offset
            .as_ref()
            .map(|id| point_to_chunk(Some(id)).map(|c| c.to_string()))
            .transpose()?;
        Ok((infos, next))
    }

    fn dense_search(&self, vector: &[f32], k: usize) -> Result<Vec<ScoredChunk>> {
        if vector.len() != self.meta.dim {
            return Err(StoreError::Vector(format!(
                "query vector of {} dimensions for a {}-dimensional collection",
                vector.len(),
                self.meta.dim
            )));
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        let request = QueryPointsBuilder::new(self.physical.clone())
            .query(vector.to_vec())
            .using(DENSE)
            .limit(k as u64)
            // Exact search: the same ranking in every id space and key.
            .params(SearchParamsBuilder::default().exact(true))
            .with_payload(fields(&[field::SEQ]));
        let points = self.run(|q| q.query(request.clone()))?.result;
        let mut hits = Self::scored(points)?;
        sort_hits(&mut hits);
        Ok(hits)
    }

    fn scan_chunks(
        &self,
        after: Option<ChunkId>,
        visit: &mut dyn FnMut(ChunkRecord, Vec<f32>) -> Result<()>,
    ) -> Result<()> {
        let start = match after {
            Some(id) => match id.successor() {
                Some(next) => Some(PointId::from(next.uuid().to_string())),
                None => return Ok(()),
            },
            None => None,
        };
        self.scroll_from(start, None, None, true, |point| {
            let vector = dense_of(&point)
                .ok_or_else(|| StoreError::Corrupt("point without its dense vector".into()))?;
            visit(self.to_chunk(point.id.as_ref(), &point.payload)?, vector)
        })
    }

    fn keyword_search(&self, query: &EncEncoderIds, k: usize) -> Result<Vec<ScoredChunk>> {
        let mut terms: Vec<u32> = query.ids().to_vec();
        terms.sort_unstable();
        terms.dedup();
        if terms.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let pairs: Vec<(u32, f32)> = terms.iter().map(|&t| (t, 1.0)).collect();
        // Which of several chunks tied at the cut Qdrant returns depends on
        // where it keeps them; fetch past the ties and cut by write order,
        // as the embedded store does.
        let mut limit = k + 1;
        loop {
            let request = QueryPointsBuilder::new(self.physical.clone())
                .query(pairs.clone())
                .using(KEYWORD)
                .limit(limit as u64)
                .with_payload(fields(&[field::SEQ]));
            let mut hits = Self::scored(self.run(|q| q.query(request.clone()))?.result)?;
            let exhausted = hits.len() < limit;
            let tied_at_cut =
                hits.len() > k && hits[limit.min(hits.len()) - 1].score == hits[k - 1].score;
            if exhausted || !tied_at_cut || limit >= 16 * k + 1024 {
                sort_hits(&mut hits);
                hits.truncate(k);
                return Ok(hits);
            }
            limit *= 4;
        }
    }

    fn chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let points: Vec<PointId> = ids.iter().map(|id| id.uuid().to_string().into()).collect();
        let request = GetPointsBuilder::new(self.physical.clone(), points).with_payload(true);
        let found = self.run(|q| q.get_points(request.clone()))?.result;
        let mut by_id = HashMap::with_capacity(found.len());
        for point in &found {
            let chunk = self.to_chunk(point.id.as_ref(), &point.payload)?;
            by_id.insert(chunk.chunk_id, chunk);
        }
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    fn optimize(&self) -> Result<()> {
        // The server runs its own optimisers.
        Ok(())
    }
}

/// Writes acknowledged only once ordered through each shard's leader.
fn strong() -> WriteOrdering {
    WriteOrdering {
        r#type: WriteOrderingType::Strong as i32,
    }
}

/// A payload selector of `names`.
fn fields(names: &[&str]) -> PayloadIncludeSelector {
    PayloadIncludeSelector {
        fields: names.iter().map(|n| n.to_string()).collect(),
    }
}

fn dense_of(point: &RetrievedPoint) -> Option<Vec<f32>> {
    let options = point.vectors.as_ref()?.vectors_options.as_ref()?;
    let output = match options {
        VectorsOptions::Vector(v) => v,
        VectorsOptions::Vectors(named) => named.vectors.get(DENSE)?,
    };
    match &output.vector {
        Some(vector_output::Vector::Dense(d)) => Some(d.data.clone()),
        #[allow(deprecated)]
        _ if !output.data.is_empty() => Some(output.data.clone()),
        _ => None,
    }
}

fn point_to_chunk(id: Option<&PointId>) -> Result<ChunkId> {
    match id.and_then(|p| p.point_id_options.as_ref()) {
        Some(PointIdOptions::Uuid(text)) => uuid::Uuid::parse_str(text)
            .map(ChunkId::from_uuid)
            .map_err(|_| StoreError::Corrupt("a point id is not a UUID".into())),
        _ => Err(StoreError::Corrupt("a point without a UUID id".into())),
    }
}

fn payload_str(payload: &HashMap<String, Value>, name: &str) -> Result<String> {
    match payload.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => Ok(s.clone()),
        _ => Err(StoreError::Corrupt(format!("point without {name}"))),
    }
}

fn payload_u64(payload: &HashMap<String, Value>, name: &str) -> Option<u64> {
    match payload.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::IntegerValue(i)) => u64::try_from(*i).ok(),
        _ => None,
    }
}

fn meta_int(metadata: &HashMap<String, Value>, name: &str) -> Option<i64> {
    match metadata.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::IntegerValue(i)) => Some(*i),
        Some(Kind::DoubleValue(d)) if d.fract() == 0.0 => Some(*d as i64),
        _ => None,
    }
}

fn meta_double(metadata: &HashMap<String, Value>, name: &str) -> Option<f64> {
    match metadata.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::DoubleValue(d)) => Some(*d),
        Some(Kind::IntegerValue(i)) => Some(*i as f64),
        _ => None,
    }
}

fn meta_str(metadata: &HashMap<String, Value>, name: &str) -> Option<String> {
    match metadata.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Encrypted ids as base64 of little-endian u32s: a quarter the size of a
/// list of numbers in Qdrant's payload encoding.
fn pack_ids(ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    base64_encode(&bytes)
}

fn unpack_ids(text: &str) -> Result<Vec<u32>> {
    let bytes = base64_decode(text)?;
    if bytes.len() % 4 != 0 {
        return Err(StoreError::Corrupt("a packed id list of odd length".into()));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| StoreError::Corrupt("a payload field is not base64".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let o = QdrantOptions::from_url("qdrant://db.internal").unwrap();
        assert_eq!(o.url, "http://db.internal:6334");
        let o = QdrantOptions::from_url("qdrants://db.internal:7000/").unwrap();
        assert_eq!(o.url, "https://db.internal:7000");
        let o = QdrantOptions::from_url("http://127.0.0.1:6334").unwrap();
        assert_eq!(o.url, "http://127.0.0.1:6334");
        let o = QdrantOptions::from_url("qdrant://[::1]").unwrap();
        assert_eq!(o.url, "http://[::1]:6334");
        let o = QdrantOptions::from_url("qdrant://[::1]:7001").unwrap();
        assert_eq!(o.url, "http://[::1]:7001");
        for bad in [
            "db:6334",
            "ftp://db",
            "qdrant://",
            "qdrant://u:p@db",
            "qdrant://db/x",
        ] {
            assert!(QdrantOptions::from_url(bad).is_err(), "{bad}");
        }
        let mut o = QdrantOptions::from_url("qdrant://db").unwrap();
        o.api_key = Some("secret-key".into());
        assert!(!format!("{o:?}").contains("secret-key"));
    }

    #[test]
    fn packed_ids_round_trip() {
        let ids = vec![0, 1, 49_151, u32::MAX];
        assert_eq!(unpack_ids(&pack_ids(&ids)).unwrap(), ids);
        assert!(unpack_ids(&base64_encode(&[1, 2, 3])).is_err());
    }

    #[test]
    fn bm25_weights_follow_tantivy() {
        // tf 2 in a chunk of average length: (k1 + 1) 2 / (2 + k1).
        let (ids, w) = bm25_document_weights(&[7, 3, 7, 9], 4.0);
        assert_eq!(ids, vec![3, 7, 9]);
        assert!((w[1] - 2.2 * 2.0 / (2.0 + 1.2)).abs() < 1e-6);
        assert!((w[0] - 2.2 / (1.0 + 1.2)).abs() < 1e-6);
        // Longer chunks weigh each occurrence less; lengths are quantised
        // as tantivy stores them (exact when short).
        let long: Vec<u32> = (0..200).collect();
        let (_, wl) = bm25_document_weights(&long, 100.0);
        assert!(wl[0] < w[0]);
        let dl = FieldNormReader::id_to_fieldnorm(FieldNormReader::fieldnorm_to_id(200));
        let expected = 2.2 / (1.0 + 1.2 * (0.25 + 0.75 * dl as f32 / 100.0));
        assert!((wl[0] - expected).abs() < 1e-6);
    }
}
