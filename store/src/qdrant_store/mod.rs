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
//! quantisation and IDF; stated once in [`crate::bm25`]) so the two backends
//! rank alike; they differ in the average chunk length (fixed here from the
//! first batch written, live in tantivy) and in how deleted chunks count (see
//! docs/jobs.md).
//!
//! Durability and atomicity: a batch of documents is one `UpdateBatch`
//! request (upsert each document's chunks, then delete its chunks past the
//! new end), acknowledged once Qdrant applied it (`wait`, strong ordering).
//! Qdrant applies each operation atomically per shard but not a batch as a
//! whole, so readers check that every chunk of a document carries its
//! current content hash and count, and report a document caught half
//! replaced as [`INCOMPLETE`]: the upload client then sends it again.

mod aliases;
mod client;
mod codec;
mod collection;
mod options;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use eerag_core::KeyId;
use qdrant_client::qdrant::{
    CreateAliasBuilder, CreateCollectionBuilder, Distance, HnswConfigDiffBuilder, Modifier,
    SparseVectorParamsBuilder, SparseVectorsConfigBuilder, VectorParamsBuilder,
    VectorsConfigBuilder,
};
use qdrant_client::Qdrant;

use crate::store::{
    validate_collection_name, Collection, CollectionMeta, CollectionSpec, Result, Store, StoreError,
};
use aliases::ALIAS_SUFFIX;
use client::{status_text, Client};
use codec::{meta_double, meta_int, meta_key, meta_str, DENSE, FORMAT, KEYWORD};

pub use aliases::ALIAS_TTL;
pub use collection::QdrantCollection;
pub use options::QdrantOptions;

/// The content hash reported for a document whose chunks do not all carry
/// the same version (a replacement interrupted by a server crash): never a
/// real hash, so the upload client sends the document again.
pub const INCOMPLETE: &str = "incomplete";

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
