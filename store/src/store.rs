//! The host's chunk store: one trait, so the embedded default (qdrant-edge +
//! tantivy, [`crate::edge_store`]) and a Qdrant server are interchangeable.
//!
//! A store holds only ciphertext: encrypted id sequences, rotated vectors,
//! sealed metadata and opaque client-chosen ids and hashes.

use std::sync::Arc;

use eerag_core::{EncEncoderIds, EncGeneratorIds, KeyId};
use sha2::{Digest, Sha256};

use crate::keyword::KeywordError;

/// Errors of a store. Messages name collections and documents (opaque
/// client-chosen ids) but never contain token ids or vectors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("collection {0:?} does not exist")]
    CollectionNotFound(String),
    #[error("collection {0:?} already exists")]
    CollectionExists(String),
    #[error("invalid collection name {0:?}: use 1 to 128 characters of A-Z a-z 0-9 _ - . (not starting with .)")]
    InvalidName(String),
    #[error("vector store: {0}")]
    Vector(String),
    #[error(transparent)]
    Keyword(#[from] KeywordError),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the page cursor is not one this server returned")]
    InvalidCursor,
    /// The store's server did not answer (after retries): worth retrying.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The collection is in use in a way that forbids the operation.
    #[error("{0}")]
    InUse(String),
    /// The store is configured wrongly (a bad URL, say).
    #[error("store configuration: {0}")]
    Config(String),
}

impl StoreError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result alias of the store.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A chunk's id: 96 bits of a hash of its document id, then its index. The
/// chunks of one document are therefore one contiguous id range, which lets a
/// store replace or delete a whole document in one atomic operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(uuid::Uuid);

impl ChunkId {
    /// The id of chunk `index` of document `doc_id`.
    pub fn new(doc_id: &str, index: u32) -> Self {
        let mut bytes = Self::prefix(doc_id);
        bytes[12..].copy_from_slice(&index.to_be_bytes());
        ChunkId(uuid::Uuid::from_bytes(bytes))
    }

    /// The half-open id range `[first, end)` holding every chunk of `doc_id`.
    pub fn document_range(doc_id: &str) -> (ChunkId, ChunkId) {
        let first = Self::new(doc_id, 0);
        let mut end = Self::prefix(doc_id);
        end[12..].copy_from_slice(&u32::MAX.to_be_bytes());
        (first, ChunkId(uuid::Uuid::from_bytes(end)))
    }

    fn prefix(doc_id: &str) -> [u8; 16] {
        let digest = Sha256::new()
            .chain_update(b"eerag/v1/chunk-id\0")
            .chain_update(doc_id.as_bytes())
            .finalize();
        let mut bytes = [0u8; 16];
        bytes[..12].copy_from_slice(&digest[..12]);
        bytes
    }

    /// The id as a UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        self.0
    }

    /// The next id in id order (for scanning on after this one).
    pub fn successor(&self) -> Option<ChunkId> {
        self.0
            .as_u128()
            .checked_add(1)
            .map(|n| ChunkId(uuid::Uuid::from_u128(n)))
    }

    /// Wraps a UUID read back from a store.
    pub fn from_uuid(id: uuid::Uuid) -> Self {
        ChunkId(id)
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for ChunkId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        uuid::Uuid::parse_str(s)
            .map(ChunkId)
            .map_err(|_| StoreError::Corrupt("a chunk id is not a UUID".into()))
    }
}

/// What a collection is bound to.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CollectionMeta {
    pub name: String,
    /// The key every id and vector in it is encrypted under.
    pub key_id: KeyId,
    /// Dimension of its vectors.
    pub dim: usize,
    pub created_unix_secs: u64,
    /// SHA-256 of the base encoder whose transformed copy made its vectors
    /// (the artifacts' `encoder.base_sha256`). `None` in collections made
    /// before stores kept it: any encoder loaded for the key serves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
}

/// A chunk to store, with its vector already computed.
#[derive(Clone, Debug)]
pub struct NewChunk {
    pub encoder_ids: EncEncoderIds,
    pub generator_ids: EncGeneratorIds,
    pub metadata: Vec<u8>,
    pub vector: Vec<f32>,
    /// The write sequence number to keep: jobs that copy or rewrite a
    /// collection (migration, re-embedding) keep the original write order,
    /// and with it the key-independent tie order. `None` (every API write):
    /// the store hands out the next number.
    pub seq: Option<u64>,
}

/// A whole document: stored atomically, replacing any earlier version.
#[derive(Clone, Debug)]
pub struct NewDocument {
    pub doc_id: String,
    pub content_hash: String,
    pub chunks: Vec<NewChunk>,
}

/// A stored chunk.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkRecord {
    pub chunk_id: ChunkId,
    pub doc_id: String,
    pub index: u32,
    pub content_hash: String,
    pub encoder_ids: EncEncoderIds,
    pub generator_ids: EncGeneratorIds,
    pub metadata: Vec<u8>,
    /// Write sequence number (see [`ScoredChunk::seq`]).
    pub seq: u64,
}

/// A stored document's identity and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentInfo {
    pub doc_id: String,
    pub content_hash: String,
    pub chunks: usize,
    /// Write sequence number of its first chunk: jobs that rewrite a
    /// collection through the API write documents in this order, so ties
    /// keep breaking as before.
    pub first_seq: u64,
}

/// A retrieval hit before its payload is read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoredChunk {
    pub chunk_id: ChunkId,
    pub score: f32,
    /// When the chunk was written: increasing with every write of a
    /// collection (0 for chunks written before stores kept it, which have no
    /// key-independent tie order until uploaded again). Chunk ids are keyed
    /// hashes, so ordering exact ties by them would order them differently
    /// under every key; write order is the same under every key for the same
    /// uploads, so ties go by it first. The keyword index also cuts at k by
    /// it; dense search leaves exact ties at its cut (only duplicate vectors
    /// tie exactly) to the vector store and orders what it returns by it.
    pub seq: u64,
}

/// Sorts hits best first, equal scores in write order, then by chunk id, so
/// rankings never depend on where a store happened to keep a chunk.
pub fn sort_hits(hits: &mut [ScoredChunk]) {
    hits.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.seq.cmp(&b.seq))
            .then_with(|| a.chunk_id.cmp(&b.chunk_id))
    });
}

/// Each chunk's write sequence number for a store whose last number handed
/// out is `last`: the one a chunk brings (copies keep their original), the
/// others from `reserve(n)` (n consecutive numbers, first returned). Numbers
/// brought raise `last`, so later writes still come after them.
pub(crate) fn assign_seqs(
    docs: &[NewDocument],
    last: &std::sync::atomic::AtomicU64,
    reserve: impl FnOnce(usize) -> u64,
) -> Vec<Vec<u64>> {
    let fresh = docs
        .iter()
        .flat_map(|d| &d.chunks)
        .filter(|c| c.seq.is_none())
        .count();
    let mut next = if fresh > 0 { reserve(fresh) } else { 0 };
    let seqs: Vec<Vec<u64>> = docs
        .iter()
        .map(|d| {
            d.chunks
                .iter()
                .map(|c| {
                    c.seq.unwrap_or_else(|| {
                        next += 1;
                        next - 1
                    })
                })
                .collect()
        })
        .collect();
    if let Some(max) = docs
        .iter()
        .flat_map(|d| &d.chunks)
        .filter_map(|c| c.seq)
        .max()
    {
        last.fetch_max(max, std::sync::atomic::Ordering::SeqCst);
    }
    seqs
}

/// What a new collection is bound to.
#[derive(Clone, Debug, PartialEq)]
pub struct CollectionSpec {
    /// The key every id and vector in it will be encrypted under.
    pub key_id: KeyId,
    /// Dimension of its vectors.
    pub dim: usize,
    /// The base encoder its vectors come from (see [`CollectionMeta::encoder`]).
    pub encoder: Option<String>,
}

/// A set of collections, and aliases naming them.
///
/// An alias lets a collection be rebuilt under a new name (a new version:
/// re-embedded, re-keyed) while the old one serves, then switched to in one
/// step. Aliases shadow collections of the same name: that is how the
/// original collection, named as the public name, is replaced by a version.
pub trait Store: Send + Sync {
    /// Creates an empty collection.
    fn create(&self, name: &str, spec: &CollectionSpec) -> Result<Arc<dyn Collection>>;
    /// Creates an empty collection bound to `key_id`, of any encoder.
    fn create_collection(
        &self,
        name: &str,
        key_id: KeyId,
        dim: usize,
    ) -> Result<Arc<dyn Collection>> {
        self.create(
            name,
            &CollectionSpec {
                key_id,
                dim,
                encoder: None,
            },
        )
    }
    /// Opens a collection by alias, else by name; its `meta().name` is the
    /// collection's own name.
    fn collection(&self, name: &str) -> Result<Arc<dyn Collection>>;
    /// Every collection, by its own name (aliases not followed).
    fn collections(&self) -> Result<Vec<Arc<dyn Collection>>>;
    /// Deletes the collection of that very name (aliases not followed) and
    /// all its data.
    fn delete_collection(&self, name: &str) -> Result<()>;
    /// Every alias and the collection it names.
    fn aliases(&self) -> Result<std::collections::BTreeMap<String, String>>;
    /// Points `alias` at collection `target` in one atomic, durable step
    /// (`None`: removes the alias); returns what it pointed at before.
    /// Readers see either the old or the new target, never neither.
    fn set_alias(&self, alias: &str, target: Option<&str>) -> Result<Option<String>>;
}

/// One collection of encrypted chunks.
pub trait Collection: Send + Sync {
    /// What the collection is bound to.
    fn meta(&self) -> &CollectionMeta;
    /// Number of stored chunks.
    fn count(&self) -> Result<u64>;
    /// The stored version of a document, if any.
    fn document(&self, doc_id: &str) -> Result<Option<DocumentInfo>>;
    /// Stores documents, each atomically replacing its earlier version
    /// (chunks it no longer has are removed). Returns once all of them are
    /// durable in the vector store and the keyword index.
    fn put_documents(&self, docs: &[NewDocument]) -> Result<()>;
    /// Deletes a document; returns how many chunks it had.
    fn delete_document(&self, doc_id: &str) -> Result<usize>;
    /// A document's chunks in order (empty if it does not exist).
    fn document_chunks(&self, doc_id: &str) -> Result<Vec<ChunkRecord>>;
    /// A page of documents in a stable order, and the cursor of the next page.
    fn documents(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<DocumentInfo>, Option<String>)>;
    /// The `k` nearest chunks by cosine similarity, best first (exact search).
    fn dense_search(&self, vector: &[f32], k: usize) -> Result<Vec<ScoredChunk>>;
    /// Calls `visit` for every chunk with its stored vector, in storage
    /// order: everything the store holds for the collection, as its operator
    /// can read it (for the attack harness and whole-collection jobs).
    /// Starts after chunk `after` when given (jobs resuming from a
    /// checkpoint). Storage order is chunk id order, so a document's chunks
    /// come together and in index order.
    fn scan_chunks(
        &self,
        after: Option<ChunkId>,
        visit: &mut dyn FnMut(ChunkRecord, Vec<f32>) -> Result<()>,
    ) -> Result<()>;
    /// The `k` best chunks by BM25 over encrypted encoder ids, best first.
    fn keyword_search(&self, query: &EncEncoderIds, k: usize) -> Result<Vec<ScoredChunk>>;
    /// Reads chunks by id, in the order asked; ids not found are left out.
    fn chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkRecord>>;
    /// Background maintenance (segment merging, vacuuming deleted points).
    fn optimize(&self) -> Result<()>;
}

/// Checks a store-level collection name: 1 to 128 characters of
/// `[A-Za-z0-9_.-]`, not starting with a dot (hidden names are the store's).
/// The API builds these as `tenant.name`.
pub fn validate_collection_name(name: &str) -> Result<()> {
    let ok = (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.chars().take(80).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_of_a_document_are_one_range() {
        let (first, end) = ChunkId::document_range("doc-a");
        for i in [0, 1, 7, 1 << 20, u32::MAX - 1] {
            let id = ChunkId::new("doc-a", i);
            assert!(first <= id && id < end);
        }
        assert!(ChunkId::new("doc-a", 1) < ChunkId::new("doc-a", 2));
        let other = ChunkId::new("doc-b", 0);
        assert!(!(first <= other && other < end));
        let text = ChunkId::new("doc-a", 3).to_string();
        assert_eq!(text.parse::<ChunkId>().unwrap(), ChunkId::new("doc-a", 3));
    }

    #[test]
    fn collection_names() {
        assert!(validate_collection_name("acme.docs_2026-q1").is_ok());
        for bad in ["", "a/b", "..", ".hidden", "naïve", &"x".repeat(129)] {
            assert!(validate_collection_name(bad).is_err(), "{bad}");
        }
    }
}
