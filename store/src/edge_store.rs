//! The embedded default store: per collection, one qdrant-edge shard (the
//! source of truth: vectors and payloads) and one tantivy index (BM25 over the
//! encrypted encoder ids, derived from the shard).
//!
//! Layout under the data directory:
//! ```text
//! collections/<name>/collection.json   name, key id, dimension
//! collections/<name>/vectors/          qdrant-edge shard (WAL + segments)
//! collections/<name>/keyword/          tantivy index
//! aliases.json                         alias -> collection (written by rename)
//! .trash/                              collections being deleted
//! ```
//!
//! Durability: a document is one `SyncPoints` operation on its id range (one
//! WAL record, so it is applied whole or not at all after a crash), the shard
//! is flushed, then the keyword index commits. A crash between the two leaves
//! the keyword index behind the shard; [`EdgeStore::open`] reconciles it.
//! A per-collection lock keeps readers from seeing a document half written.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use eerag_core::{EncEncoderIds, EncGeneratorIds};
use qdrant_edge::{
    Condition, Distance, EdgeConfigBuilder, EdgeShard, EdgeVectorParamsBuilder, FieldCondition,
    Filter, JsonPath, Match, Payload, PayloadFieldSchema, PayloadSchemaType, PointId,
    PointOperations, PointStructPersisted, PointSyncOperation, QueryEnum, QueryRequestBuilder,
    Record, RetrieveRequestBuilder, ScoringQuery, ScrollRequestBuilder, SearchParams,
    UpdateOperation, VectorInternal, VectorPersisted, VectorStructInternal, VectorStructPersisted,
    WithPayloadInterface, WithVector,
};
use serde_json::{json, Map, Value};

use crate::keyword::{KeywordChunk, KeywordIndex};
use crate::store::{
    assign_seqs, sort_hits, validate_collection_name, ChunkId, ChunkRecord, Collection,
    CollectionMeta, CollectionSpec, DocumentInfo, NewDocument, Result, ScoredChunk, Store,
    StoreError,
};

const COLLECTIONS_DIR: &str = "collections";
const TRASH_DIR: &str = ".trash";
const ALIASES_FILE: &str = "aliases.json";
const META_FILE: &str = "collection.json";
const VECTORS_DIR: &str = "vectors";
const KEYWORD_DIR: &str = "keyword";
/// Name of the dense vector in the shard.
const DENSE: &str = "dense";
/// Points read per page when scanning a whole collection.
const SCAN_PAGE: usize = 1024;

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

fn vector_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Vector(e.to_string())
}

fn path(key: &str) -> JsonPath {
    key.parse().expect("field names are valid JSON paths")
}

/// The embedded store: a directory of collections.
pub struct EdgeStore {
    root: PathBuf,
    collections: RwLock<HashMap<String, Arc<EdgeCollection>>>,
    /// Alias -> collection, as in `aliases.json`.
    aliases: RwLock<BTreeMap<String, String>>,
}

/// What [`EdgeStore::open`] had to repair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Chunks the keyword index was missing (or had stale) and re-indexed.
    pub keyword_reindexed: usize,
    /// Chunks the keyword index had that the vector store does not.
    pub keyword_removed: usize,
    /// Half-created or half-deleted collections cleaned up.
    pub leftovers_removed: usize,
}

impl EdgeStore {
    /// Opens (or creates) the store in `root`, loads every collection, replays
    /// the shards' write-ahead logs and catches the keyword indexes up.
    pub fn open(root: &Path) -> Result<(Self, Recovery)> {
        let collections_dir = root.join(COLLECTIONS_DIR);
        std::fs::create_dir_all(&collections_dir)
            .map_err(|e| StoreError::io(&collections_dir, e))?;
        let mut recovery = Recovery::default();
        let trash = root.join(TRASH_DIR);
        if trash.exists() {
            std::fs::remove_dir_all(&trash).map_err(|e| StoreError::io(&trash, e))?;
            recovery.leftovers_removed += 1;
        }
        let mut collections = HashMap::new();
        let entries =
            std::fs::read_dir(&collections_dir).map_err(|e| StoreError::io(&collections_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&collections_dir, e))?;
            let dir = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // A creation that never reached its final rename.
                std::fs::remove_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
                recovery.leftovers_removed += 1;
                continue;
            }
            let collection = EdgeCollection::load(&dir)?;
            let (added, removed) = collection.reconcile_keyword()?;
            recovery.keyword_reindexed += added;
            recovery.keyword_removed += removed;
            collections.insert(collection.meta.name.clone(), Arc::new(collection));
        }
        let aliases_path = root.join(ALIASES_FILE);
        let aliases: BTreeMap<String, String> = match std::fs::read(&aliases_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", aliases_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(StoreError::io(&aliases_path, e)),
        };
        // A half-written replacement that never reached its rename.
        let _ = std::fs::remove_file(aliases_path.with_extension("json.tmp"));
        Ok((
            Self {
                root: root.to_path_buf(),
                collections: RwLock::new(collections),
                aliases: RwLock::new(aliases),
            },
            recovery,
        ))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<EdgeCollection>>> {
        self.collections.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<EdgeCollection>>> {
        self.collections.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for EdgeStore {
    fn create(&self, name: &str, spec: &CollectionSpec) -> Result<Arc<dyn Collection>> {
        validate_collection_name(name)?;
        let mut map = self.write();
        if map.contains_key(name) {
            return Err(StoreError::CollectionExists(name.into()));
        }
        let meta = CollectionMeta {
            name: name.into(),
            key_id: spec.key_id,
            dim: spec.dim,
            created_unix_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            encoder: spec.encoder.clone(),
        };
        // Built under a hidden name and renamed: a crash leaves either no
        // collection or a complete empty one.
        let collections_dir = self.root.join(COLLECTIONS_DIR);
        let staging = collections_dir.join(format!(".{name}.creating"));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| StoreError::io(&staging, e))?;
        }
        EdgeCollection::create(&staging, &meta)?;
        let dir = collections_dir.join(name);
        std::fs::rename(&staging, &dir).map_err(|e| StoreError::io(&dir, e))?;
        sync_dir(&collections_dir)?;
        let collection = Arc::new(EdgeCollection::load(&dir)?);
        map.insert(name.into(), collection.clone());
        Ok(collection)
    }

    fn collection(&self, name: &str) -> Result<Arc<dyn Collection>> {
        let target = self
            .aliases
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        let name = target.as_deref().unwrap_or(name);
        self.read()
            .get(name)
            .cloned()
            .map(|c| c as Arc<dyn Collection>)
            .ok_or_else(|| StoreError::CollectionNotFound(name.chars().take(80).collect()))
    }

    fn collections(&self) -> Result<Vec<Arc<dyn Collection>>> {
        let map = self.read();
        let mut names: Vec<&String> = map.keys().collect();
        names.sort();
        Ok(names
            .into_iter()
            .map(|n| map[n].clone() as Arc<dyn Collection>)
            .collect())
    }

    fn delete_collection(&self, name: &str) -> Result<()> {
        let mut map = self.write();
        let collection = map
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::CollectionNotFound(name.chars().take(80).collect()))?;
        if let Some((alias, _)) = self
            .aliases
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, target)| *target == name)
        {
            return Err(StoreError::InUse(format!(
                "collection {name:?} is what {alias:?} names: switch or remove the alias first"
            )));
        }
        // Wait for in-flight writes, then move the directory out of sight in
        // one rename before deleting it: a crash never leaves half of it.
        let writes = collection.write_lock()?;
        let trash = self.root.join(TRASH_DIR);
        std::fs::create_dir_all(&trash).map_err(|e| StoreError::io(&trash, e))?;
        let doomed = trash.join(format!("{name}-{}", uuid::Uuid::new_v4()));
        std::fs::rename(&collection.dir, &doomed).map_err(|e| StoreError::io(&doomed, e))?;
        sync_dir(&self.root.join(COLLECTIONS_DIR))?;
        // Requests still holding the collection now fail as not found
        // instead of writing into the trash or a same-named successor.
        collection.deleted.store(true, Ordering::SeqCst);
        map.remove(name);
        drop(map);
        drop(writes);
        drop(collection);
        // The collection is gone; a failure here only leaves trash that the
        // next start-up removes.
        let _ = std::fs::remove_dir_all(&doomed);
        Ok(())
    }

    fn aliases(&self) -> Result<BTreeMap<String, String>> {
        Ok(self
            .aliases
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    fn set_alias(&self, alias: &str, target: Option<&str>) -> Result<Option<String>> {
        validate_collection_name(alias)?;
        // Held across the check so the target cannot be deleted meanwhile.
        let map = self.read();
        if let Some(t) = target {
            if !map.contains_key(t) {
                return Err(StoreError::CollectionNotFound(t.chars().take(80).collect()));
            }
        }
        let mut aliases = self.aliases.write().unwrap_or_else(|p| p.into_inner());
        let mut next = aliases.clone();
        let previous = match target {
            Some(t) => next.insert(alias.to_string(), t.to_string()),
            None => next.remove(alias),
        };
        // Written aside and renamed over: a crash leaves the old or the new
        // file, whole.
        let path = self.root.join(ALIASES_FILE);
        let tmp = path.with_extension("json.tmp");
        write_synced(
            &tmp,
            &serde_json::to_vec_pretty(&next).expect("aliases serialise"),
        )?;
        std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
        sync_dir(&self.root)?;
        *aliases = next;
        drop(map);
        Ok(previous)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// One collection of the embedded store.
pub struct EdgeCollection {
    dir: PathBuf,
    meta: CollectionMeta,
    shard: EdgeShard,
    keyword: KeywordIndex,
    /// Writers hold it exclusively while a batch goes into both indexes;
    /// readers share it, so they never see a batch half applied.
    lock: RwLock<()>,
    /// Set (under the write lock) once the collection's directory has been
    /// moved to the trash: requests that still hold it fail as not found.
    deleted: AtomicBool,
    /// The last write sequence number handed out (see [`ScoredChunk::seq`]).
    last_seq: AtomicU64,
}

impl EdgeCollection {
    fn create(dir: &Path, meta: &CollectionMeta) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let config = EdgeConfigBuilder::new()
            .vector(
                DENSE,
                EdgeVectorParamsBuilder::new(meta.dim, Distance::Cosine).build(),
            )
            .build();
        let shard = EdgeShard::new(&dir.join(VECTORS_DIR), config).map_err(vector_err)?;
        for (name, kind) in [
            (field::DOC_ID, PayloadSchemaType::Keyword),
            (field::INDEX, PayloadSchemaType::Integer),
        ] {
            shard
                .update(UpdateOperation::FieldIndexOperation(
                    qdrant_edge::FieldIndexOperations::CreateIndex(qdrant_edge::CreateIndex {
                        field_name: path(name),
                        field_schema: Some(PayloadFieldSchema::FieldType(kind)),
                    }),
                ))
                .map_err(vector_err)?;
        }
        shard.flush().map_err(vector_err)?;
        drop(shard);
        KeywordIndex::open_or_create(&dir.join(KEYWORD_DIR))?;
        let meta_path = dir.join(META_FILE);
        let text = serde_json::to_vec_pretty(meta).expect("metadata serialises");
        write_synced(&meta_path, &text)
    }

    fn load(dir: &Path) -> Result<Self> {
        let meta_path = dir.join(META_FILE);
        let text = std::fs::read(&meta_path).map_err(|e| StoreError::io(&meta_path, e))?;
        let meta: CollectionMeta = serde_json::from_slice(&text)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", meta_path.display())))?;
        let shard = EdgeShard::load(&dir.join(VECTORS_DIR), None).map_err(vector_err)?;
        let keyword = KeywordIndex::open_or_create(&dir.join(KEYWORD_DIR))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            shard,
            keyword,
            lock: RwLock::new(()),
            deleted: AtomicBool::new(false),
            last_seq: AtomicU64::new(0),
        })
    }

    /// Reserves `n` consecutive write sequence numbers and returns the
    /// first: the wall clock in nanoseconds, or one past the last number
    /// handed out or found in the shard at start-up (see
    /// [`Self::reconcile_keyword_locked`]) if that is higher, so numbers
    /// only ever increase, even if the clock goes back.
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

    /// The shared lock, or not found if the collection was deleted.
    fn read_lock(&self) -> Result<std::sync::RwLockReadGuard<'_, ()>> {
        let guard = self.lock.read().unwrap_or_else(|p| p.into_inner());
        self.live()?;
        Ok(guard)
    }

    /// The exclusive lock, or not found if the collection was deleted.
    fn write_lock(&self) -> Result<std::sync::RwLockWriteGuard<'_, ()>> {
        let guard = self.lock.write().unwrap_or_else(|p| p.into_inner());
        self.live()?;
        Ok(guard)
    }

    fn live(&self) -> Result<()> {
        if self.deleted.load(Ordering::SeqCst) {
            Err(StoreError::CollectionNotFound(self.meta.name.clone()))
        } else {
            Ok(())
        }
    }

    /// After a write under the write lock: if it failed part way, the shard
    /// (the source of truth) may hold what the keyword index lacks; bring
    /// the index back in line now, so a retry that finds the document
    /// unchanged is right to skip it.
    fn heal_after(&self, written: Result<()>) -> Result<()> {
        if written.is_err() {
            // If this fails too, the next start-up reconciles.
            let _ = self.reconcile_keyword_locked();
        }
        written
    }

    /// Brings the keyword index to exactly the shard's `(chunk, version)`
    /// set. Returns (re-indexed, removed).
    fn reconcile_keyword(&self) -> Result<(usize, usize)> {
        let _guard = self.write_lock()?;
        self.reconcile_keyword_locked()
    }

    /// [`Self::reconcile_keyword`] for a caller holding the write lock.
    /// Also raises the write sequence to the highest one stored, so numbers
    /// keep increasing after a restart even if the clock went back.
    fn reconcile_keyword_locked(&self) -> Result<(usize, usize)> {
        let mut stored: HashMap<String, (String, u64)> = HashMap::new();
        self.scan(None, &[field::CONTENT_HASH, field::SEQ], |record| {
            let hash = str_field(record, field::CONTENT_HASH)?;
            let seq = record
                .payload
                .as_ref()
                .and_then(|p| p.0.get(field::SEQ))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            stored.insert(point_to_chunk(&record.id)?.to_string(), (hash, seq));
            Ok(())
        })?;
        if let Some(max) = stored.values().map(|(_, seq)| *seq).max() {
            self.last_seq.fetch_max(max, Ordering::SeqCst);
        }
        let indexed: HashMap<String, (String, u64)> = self
            .keyword
            .entries()?
            .into_iter()
            .map(|(id, version, seq)| (id, (version, seq)))
            .collect();
        // In write order, so an index rebuilt from scratch holds the chunks
        // in the order they were first written.
        let mut missing: Vec<(u64, &String)> = stored
            .iter()
            .filter(|(id, entry)| indexed.get(*id) != Some(*entry))
            .map(|(id, (_, seq))| (*seq, id))
            .collect();
        missing.sort();
        let extra: Vec<&str> = indexed
            .keys()
            .filter(|id| !stored.contains_key(*id))
            .map(String::as_str)
            .collect();
        if missing.is_empty() && extra.is_empty() {
            return Ok((0, 0));
        }
        if !extra.is_empty() {
            self.keyword.apply(&[], &extra, &[])?;
        }
        // A page at a time, each committed: a rebuild of a large collection
        // never holds it all in memory, and an interrupted one resumes.
        for page in missing.chunks(SCAN_PAGE) {
            let ids = page
                .iter()
                .map(|(_, id)| id.parse())
                .collect::<Result<Vec<ChunkId>>>()?;
            let records = self.retrieve(&ids)?;
            let names: Vec<String> = records.iter().map(|r| r.chunk_id.to_string()).collect();
            let chunks: Vec<KeywordChunk> = records
                .iter()
                .zip(&names)
                .map(|(r, id)| KeywordChunk {
                    chunk_id: id,
                    doc_id: &r.doc_id,
                    version: &r.content_hash,
                    ids: &r.encoder_ids,
                    seq: r.seq,
                })
                .collect();
            self.keyword.apply(&[], &[], &chunks)?;
        }
        Ok((missing.len(), extra.len()))
    }

    /// Calls `visit` for every point matching `filter`, reading `fields`.
    fn scan(
        &self,
        filter: Option<Filter>,
        fields: &[&str],
        visit: impl FnMut(&Record) -> Result<()>,
    ) -> Result<()> {
        let payload = WithPayloadInterface::Fields(fields.iter().map(|f| path(f)).collect());
        self.scan_points(filter, payload, false, visit)
    }

    /// Calls `visit` for every point matching `filter`, page by page, with
    /// the payload `payload` selects and, if `with_vector`, the vectors.
    fn scan_points(
        &self,
        filter: Option<Filter>,
        payload: WithPayloadInterface,
        with_vector: bool,
        visit: impl FnMut(&Record) -> Result<()>,
    ) -> Result<()> {
        self.scan_points_from(None, filter, payload, with_vector, visit)
    }

    /// [`Self::scan_points`] from point `start` on (in id order).
    fn scan_points_from(
        &self,
        start: Option<PointId>,
        filter: Option<Filter>,
        payload: WithPayloadInterface,
        with_vector: bool,
        mut visit: impl FnMut(&Record) -> Result<()>,
    ) -> Result<()> {
        let mut offset: Option<PointId> = start;
        loop {
            let mut request = ScrollRequestBuilder::new()
                .limit(SCAN_PAGE)
                .with_payload(payload.clone())
                .with_vector(WithVector::Bool(with_vector));
            if let Some(f) = &filter {
                request = request.filter(f.clone());
            }
            if let Some(o) = offset {
                request = request.offset(o);
            }
            let (records, next) = self.shard.scroll(request.build()).map_err(vector_err)?;
            for record in &records {
                visit(record)?;
            }
            match next {
                Some(n) => offset = Some(n),
                None => return Ok(()),
            }
        }
    }

    fn retrieve(&self, ids: &[ChunkId]) -> Result<Vec<ChunkRecord>> {
        let points: Vec<PointId> = ids.iter().map(|id| PointId::Uuid(id.uuid())).collect();
        let records = self
            .shard
            .retrieve(
                RetrieveRequestBuilder::new(points)
                    .with_payload(WithPayloadInterface::Bool(true))
                    .build(),
            )
            .map_err(vector_err)?;
        let mut by_id: HashMap<ChunkId, ChunkRecord> = HashMap::with_capacity(records.len());
        for record in &records {
            let chunk = self.to_chunk(record)?;
            by_id.insert(chunk.chunk_id, chunk);
        }
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    fn to_chunk(&self, record: &Record) -> Result<ChunkRecord> {
        let payload = record
            .payload
            .as_ref()
            .ok_or_else(|| StoreError::Corrupt("point without payload".into()))?;
        let metadata = base64_decode(&str_field(record, field::METADATA)?)?;
        Ok(ChunkRecord {
            chunk_id: point_to_chunk(&record.id)?,
            doc_id: str_field(record, field::DOC_ID)?,
            index: int_field(&payload.0, field::INDEX)? as u32,
            content_hash: str_field(record, field::CONTENT_HASH)?,
            encoder_ids: EncEncoderIds::new(
                self.meta.key_id,
                ids_field(&payload.0, field::ENCODER_IDS)?,
            ),
            generator_ids: EncGeneratorIds::new(
                self.meta.key_id,
                ids_field(&payload.0, field::GENERATOR_IDS)?,
            ),
            metadata,
            // Absent in chunks written before the store kept it.
            seq: payload
                .0
                .get(field::SEQ)
                .and_then(Value::as_u64)
                .unwrap_or(0),
        })
    }

    fn doc_filter(doc_id: &str) -> Filter {
        Filter::new_must(Condition::Field(FieldCondition::new_match(
            path(field::DOC_ID),
            Match::from(doc_id.to_string()),
        )))
    }

    fn first_chunks_filter() -> Filter {
        Filter::new_must(Condition::Field(FieldCondition::new_match(
            path(field::INDEX),
            Match::from(0i64),
        )))
    }

    fn info_from(record: &Record) -> Result<DocumentInfo> {
        let payload = record
            .payload
            .as_ref()
            .ok_or_else(|| StoreError::Corrupt("point without payload".into()))?;
        Ok(DocumentInfo {
            doc_id: str_field(record, field::DOC_ID)?,
            content_hash: str_field(record, field::CONTENT_HASH)?,
            chunks: int_field(&payload.0, field::COUNT)? as usize,
            first_seq: payload
                .0
                .get(field::SEQ)
                .and_then(Value::as_u64)
                .unwrap_or(0),
        })
    }
}

impl Collection for EdgeCollection {
    fn meta(&self) -> &CollectionMeta {
        &self.meta
    }

    fn count(&self) -> Result<u64> {
        let _guard = self.read_lock()?;
        let n = self
            .shard
            .count(qdrant_edge::CountRequestBuilder::new().exact(true).build())
            .map_err(vector_err)?;
        Ok(n as u64)
    }

    fn document(&self, doc_id: &str) -> Result<Option<DocumentInfo>> {
        let _guard = self.read_lock()?;
        let first = ChunkId::new(doc_id, 0);
        let records = self
            .shard
            .retrieve(
                RetrieveRequestBuilder::new(vec![PointId::Uuid(first.uuid())])
                    .with_payload(WithPayloadInterface::Fields(vec![
                        path(field::DOC_ID),
                        path(field::CONTENT_HASH),
                        path(field::COUNT),
                        path(field::SEQ),
                    ]))
                    .build(),
            )
            .map_err(vector_err)?;
        records.first().map(Self::info_from).transpose()
    }

    fn put_documents(&self, docs: &[NewDocument]) -> Result<()> {
        // Numbers are handed out under the lock, so write order and
        // sequence order agree even with concurrent writers.
        let _guard = self.write_lock()?;
        let mut operations = Vec::with_capacity(docs.len());
        let seqs = assign_seqs(docs, &self.last_seq, |n| self.reserve_seqs(n));
        for (doc, doc_seqs) in docs.iter().zip(&seqs) {
            let count = doc.chunks.len();
            let (first, end) = ChunkId::document_range(&doc.doc_id);
            let mut points = Vec::with_capacity(count);
            for (index, chunk) in doc.chunks.iter().enumerate() {
                if chunk.vector.len() != self.meta.dim {
                    return Err(StoreError::Vector(format!(
                        "vector of {} dimensions for a {}-dimensional collection",
                        chunk.vector.len(),
                        self.meta.dim
                    )));
                }
                let payload = json!({
                    field::DOC_ID: doc.doc_id,
                    field::INDEX: index,
                    field::COUNT: count,
                    field::CONTENT_HASH: doc.content_hash,
                    field::ENCODER_IDS: chunk.encoder_ids.ids(),
                    field::GENERATOR_IDS: chunk.generator_ids.ids(),
                    field::METADATA: base64_encode(&chunk.metadata),
                    field::SEQ: doc_seqs[index],
                });
                let Value::Object(map) = payload else {
                    unreachable!("json! object literal")
                };
                points.push(PointStructPersisted {
                    id: PointId::Uuid(ChunkId::new(&doc.doc_id, index as u32).uuid()),
                    vector: VectorStructPersisted::Named(HashMap::from([(
                        DENSE.to_string(),
                        VectorPersisted::Dense(chunk.vector.clone()),
                    )])),
                    payload: Some(Payload(map)),
                });
            }
            // One record per document: replaces the whole id range, so stale
            // chunks of an older, longer version go in the same step.
            operations.push(UpdateOperation::PointOperation(
                PointOperations::SyncPoints(PointSyncOperation {
                    from_id: Some(PointId::Uuid(first.uuid())),
                    to_id: Some(PointId::Uuid(end.uuid())),
                    points,
                }),
            ));
        }
        let chunk_ids: Vec<Vec<String>> = docs
            .iter()
            .map(|d| {
                (0..d.chunks.len())
                    .map(|i| ChunkId::new(&d.doc_id, i as u32).to_string())
                    .collect()
            })
            .collect();
        let mut keyword_chunks = Vec::new();
        for ((doc, ids), doc_seqs) in docs.iter().zip(&chunk_ids).zip(&seqs) {
            for ((chunk, id), &seq) in doc.chunks.iter().zip(ids).zip(doc_seqs) {
                keyword_chunks.push(KeywordChunk {
                    chunk_id: id,
                    doc_id: &doc.doc_id,
                    version: &doc.content_hash,
                    ids: &chunk.encoder_ids,
                    seq,
                });
            }
        }
        let doc_ids: Vec<&str> = docs.iter().map(|d| d.doc_id.as_str()).collect();
        let written = (|| -> Result<()> {
            for op in operations {
                self.shard.update(op).map_err(vector_err)?;
            }
            self.shard.flush().map_err(vector_err)?;
            Ok(self.keyword.apply(&doc_ids, &[], &keyword_chunks)?)
        })();
        self.heal_after(written)
    }

    fn delete_document(&self, doc_id: &str) -> Result<usize> {
        let (first, end) = ChunkId::document_range(doc_id);
        let _guard = self.write_lock()?;
        let count = self
            .shard
            .count(
                qdrant_edge::CountRequestBuilder::new()
                    .filter(Self::doc_filter(doc_id))
                    .exact(true)
                    .build(),
            )
            .map_err(vector_err)?;
        if count == 0 {
            return Ok(0);
        }
        self.shard
            .update(UpdateOperation::PointOperation(
                PointOperations::SyncPoints(PointSyncOperation {
                    from_id: Some(PointId::Uuid(first.uuid())),
                    to_id: Some(PointId::Uuid(end.uuid())),
                    points: Vec::new(),
                }),
            ))
            .map_err(vector_err)?;
        let deleted = self
            .shard
            .flush()
            .map_err(vector_err)
            .and_then(|()| self.keyword.delete_document(doc_id).map_err(Into::into));
        self.heal_after(deleted).map(|()| count)
    }

    fn document_chunks(&self, doc_id: &str) -> Result<Vec<ChunkRecord>> {
        let _guard = self.read_lock()?;
        let mut chunks = Vec::new();
        self.scan_points(
            Some(Self::doc_filter(doc_id)),
            WithPayloadInterface::Bool(true),
            false,
            |record| {
                chunks.push(self.to_chunk(record)?);
                Ok(())
            },
        )?;
        chunks.sort_by_key(|c| c.index);
        Ok(chunks)
    }

    fn documents(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<DocumentInfo>, Option<String>)> {
        let _guard = self.read_lock()?;
        let mut request = ScrollRequestBuilder::new()
            .limit(limit.max(1))
            .filter(Self::first_chunks_filter())
            .with_payload(WithPayloadInterface::Fields(vec![
                path(field::DOC_ID),
                path(field::CONTENT_HASH),
                path(field::COUNT),
                path(field::SEQ),
            ]));
        if let Some(cursor) = after {
            let id: ChunkId = cursor.parse().map_err(|_| StoreError::InvalidCursor)?;
            request = request.offset(PointId::Uuid(id.uuid()));
        }
        let (records, next) = self.shard.scroll(request.build()).map_err(vector_err)?;
        let docs = records
            .iter()
            .map(Self::info_from)
            .collect::<Result<Vec<_>>>()?;
        let next = next.map(|id| point_to_chunk(&id)).transpose()?;
        Ok((docs, next.map(|c| c.to_string())))
    }

    fn scan_chunks(
        &self,
        after: Option<ChunkId>,
        visit: &mut dyn FnMut(ChunkRecord, Vec<f32>) -> Result<()>,
    ) -> Result<()> {
        let _guard = self.read_lock()?;
        let start = match after {
            Some(id) => match id.successor() {
                Some(next) => Some(PointId::Uuid(next.uuid())),
                None => return Ok(()),
            },
            None => None,
        };
        self.scan_points_from(
            start,
            None,
            WithPayloadInterface::Bool(true),
            true,
            |record| {
                let vector = match &record.vector {
                    Some(VectorStructInternal::Named(named)) => match named.get(DENSE) {
                        Some(VectorInternal::Dense(v)) => Some(v.clone()),
                        _ => None,
                    },
                    Some(VectorStructInternal::Single(v)) => Some(v.clone()),
                    _ => None,
                }
                .ok_or_else(|| StoreError::Corrupt("point without its dense vector".into()))?;
                visit(self.to_chunk(record)?, vector)
            },
        )
    }

    fn dense_search(&self, vector: &[f32], k: usize) -> Result<Vec<ScoredChunk>> {
        if vector.len() != self.meta.dim {
            return Err(StoreError::Vector(format!(
                "query vector of {} dimensions for a {}-dimensional collection",
                vector.len(),
                self.meta.dim
            )));
        }
        let _guard = self.read_lock()?;
        let request = QueryRequestBuilder::new(k)
            .query(ScoringQuery::Vector(QueryEnum::Nearest(
                qdrant_edge::NamedQuery::new(VectorInternal::from(vector.to_vec()), DENSE),
            )))
            // Exact search: the same ranking in every id space and key.
            .params(SearchParams {
                exact: true,
                ..Default::default()
            })
            .with_payload(WithPayloadInterface::Fields(vec![path(field::SEQ)]))
            .build();
        let points = self.shard.query(request).map_err(vector_err)?;
        let mut hits = points
            .iter()
            .map(|p| {
                Ok(ScoredChunk {
                    chunk_id: point_to_chunk(&p.id)?,
                    score: p.score,
                    seq: p
                        .payload
                        .as_ref()
                        .and_then(|m| m.0.get(field::SEQ))
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        sort_hits(&mut hits);
        Ok(hits)
    }

    fn keyword_search(&self, query: &EncEncoderIds, k: usize) -> Result<Vec<ScoredChunk>> {
        let _guard = self.read_lock()?;
        self.keyword
            .search(query, k)?
            .into_iter()
            .map(|h| {
                Ok(ScoredChunk {
                    chunk_id: h.chunk_id.parse()?,
                    score: h.score,
                    seq: h.seq,
                })
            })
            .collect()
    }

    fn chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkRecord>> {
        let _guard = self.read_lock()?;
        self.retrieve(ids)
    }

    fn optimize(&self) -> Result<()> {
        let _guard = self.read_lock()?;
        self.shard.optimize().map_err(vector_err)?;
        Ok(())
    }
}

fn point_to_chunk(id: &PointId) -> Result<ChunkId> {
    match id {
        PointId::Uuid(u) => Ok(ChunkId::from_uuid(*u)),
        PointId::NumId(_) => Err(StoreError::Corrupt("numeric point id".into())),
    }
}

fn str_field(record: &Record, name: &str) -> Result<String> {
    record
        .payload
        .as_ref()
        .and_then(|p| p.0.get(name))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Corrupt(format!("point without {name}")))
}

fn int_field(map: &Map<String, Value>, name: &str) -> Result<u64> {
    map.get(name)
        .and_then(Value::as_u64)
        .ok_or_else(|| StoreError::Corrupt(format!("point without {name}")))
}

fn ids_field(map: &Map<String, Value>, name: &str) -> Result<Vec<u32>> {
    let bad = || StoreError::Corrupt(format!("point with a malformed {name}"));
    map.get(name)
        .and_then(Value::as_array)
        .ok_or_else(bad)?
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(bad)
        })
        .collect()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| StoreError::Corrupt("metadata is not base64".into()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| StoreError::io(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewChunk;

    const DIM: usize = 4;

    fn key() -> eerag_core::KeyId {
        eerag_client::Key::from_secret([3; 32]).id()
    }

    fn doc(doc_id: &str, hash: &str, chunks: &[(&[u32], [f32; DIM])]) -> NewDocument {
        NewDocument {
            doc_id: doc_id.into(),
            content_hash: hash.into(),
            chunks: chunks
                .iter()
                .map(|(ids, v)| NewChunk {
                    encoder_ids: EncEncoderIds::new(key(), ids.to_vec()),
                    generator_ids: EncGeneratorIds::new(
                        key(),
                        ids.iter().map(|i| i + 100).collect(),
                    ),
                    metadata: vec![ids[0] as u8, 0xff],
                    vector: v.to_vec(),
                    seq: None,
                })
                .collect(),
        }
    }

    #[test]
    fn documents_replace_delete_search_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, recovery) = EdgeStore::open(dir.path()).unwrap();
            assert_eq!(recovery, Recovery::default());
            let c = store.create_collection("docs", key(), DIM).unwrap();
            assert!(matches!(
                store.create_collection("docs", key(), DIM),
                Err(StoreError::CollectionExists(_))
            ));
            c.put_documents(&[
                doc(
                    "a",
                    "h1",
                    &[(&[1, 2, 3], [1., 0., 0., 0.]), (&[4, 5], [0., 1., 0., 0.])],
                ),
                doc("b", "h1", &[(&[5, 6, 7], [0., 0., 1., 0.])]),
            ])
            .unwrap();
            assert_eq!(c.count().unwrap(), 3);
            let info = c.document("a").unwrap().unwrap();
            assert_eq!((info.content_hash.as_str(), info.chunks), ("h1", 2));
            // A new, shorter version replaces every chunk of the old one.
            c.put_documents(&[doc("a", "h2", &[(&[9, 9, 8], [0.9, 0.1, 0., 0.])])])
                .unwrap();
            assert_eq!(c.count().unwrap(), 2);
            let chunks = c.document_chunks("a").unwrap();
            assert_eq!(chunks.len(), 1);
            assert_eq!(chunks[0].encoder_ids.ids(), &[9, 9, 8]);
            assert_eq!(chunks[0].generator_ids.ids(), &[109, 109, 108]);
            assert_eq!(chunks[0].metadata, vec![9, 0xff]);
            assert_eq!(chunks[0].content_hash, "h2");
            let dense = c.dense_search(&[1., 0., 0., 0.], 5).unwrap();
            assert_eq!(dense.len(), 2);
            assert_eq!(dense[0].chunk_id, ChunkId::new("a", 0));
            let kw = c
                .keyword_search(&EncEncoderIds::new(key(), vec![5]), 5)
                .unwrap();
            assert_eq!(
                kw.iter().map(|h| h.chunk_id).collect::<Vec<_>>(),
                vec![ChunkId::new("b", 0)]
            );
            // The old version's ids are gone from the keyword index too.
            assert!(c
                .keyword_search(&EncEncoderIds::new(key(), vec![1]), 5)
                .unwrap()
                .is_empty());
            let (page, next) = c.documents(None, 10).unwrap();
            assert_eq!(page.len(), 2);
            assert!(next.is_none());
            store.create_collection("other", key(), DIM).unwrap();
            store.delete_collection("other").unwrap();
            assert!(matches!(
                store.collection("other"),
                Err(StoreError::CollectionNotFound(_))
            ));
        }
        let (store, _) = EdgeStore::open(dir.path()).unwrap();
        let names: Vec<String> = store
            .collections()
            .unwrap()
            .iter()
            .map(|c| c.meta().name.clone())
            .collect();
        assert_eq!(names, vec!["docs"]);
        let c = store.collection("docs").unwrap();
        assert_eq!(c.count().unwrap(), 2);
        assert_eq!(c.delete_document("b").unwrap(), 1);
        assert_eq!(c.delete_document("b").unwrap(), 0);
        assert!(c
            .keyword_search(&EncEncoderIds::new(key(), vec![5]), 5)
            .unwrap()
            .is_empty());
        assert_eq!(c.dense_search(&[0., 0., 1., 0.], 5).unwrap().len(), 1);
    }

    #[test]
    fn a_lagging_keyword_index_is_caught_up_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = EdgeStore::open(dir.path()).unwrap();
            let c = store.create_collection("docs", key(), DIM).unwrap();
            c.put_documents(&[
                doc("a", "h1", &[(&[1, 2], [1., 0., 0., 0.])]),
                doc("b", "h1", &[(&[3, 4], [0., 1., 0., 0.])]),
            ])
            .unwrap();
        }
        // As if the process died after the shard write but before the keyword
        // commit of "b", and after a keyword write the shard never got.
        {
            let kw =
                KeywordIndex::open_or_create(&dir.path().join("collections/docs/keyword")).unwrap();
            kw.delete_document("b").unwrap();
            let ghost = EncEncoderIds::new(key(), vec![7]);
            kw.upsert(&[KeywordChunk {
                chunk_id: &ChunkId::new("ghost", 0).to_string(),
                doc_id: "ghost",
                version: "h1",
                ids: &ghost,
                seq: 0,
            }])
            .unwrap();
        }
        let (store, recovery) = EdgeStore::open(dir.path()).unwrap();
        assert_eq!(recovery.keyword_reindexed, 1);
        assert_eq!(recovery.keyword_removed, 1);
        let c = store.collection("docs").unwrap();
        let hits = c
            .keyword_search(&EncEncoderIds::new(key(), vec![3, 7]), 5)
            .unwrap();
        assert_eq!(
            hits.iter().map(|h| h.chunk_id).collect::<Vec<_>>(),
            vec![ChunkId::new("b", 0)]
        );
    }

    #[test]
    fn aliases_shadow_switch_atomically_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = EdgeStore::open(dir.path()).unwrap();
            let v1 = store.create_collection("t.docs", key(), DIM).unwrap();
            v1.put_documents(&[doc("a", "h1", &[(&[1], [1., 0., 0., 0.])])])
                .unwrap();
            let v2 = store
                .create(
                    "t.docs.v2",
                    &CollectionSpec {
                        key_id: key(),
                        dim: DIM,
                        encoder: Some("e2".into()),
                    },
                )
                .unwrap();
            assert_eq!(v2.meta().encoder.as_deref(), Some("e2"));
            // The alias shadows the collection of its own name.
            assert_eq!(store.set_alias("t.docs", Some("t.docs.v2")).unwrap(), None);
            assert_eq!(store.collection("t.docs").unwrap().meta().name, "t.docs.v2");
            // What an alias names cannot be deleted; what it shadows can.
            let err = store.delete_collection("t.docs.v2").unwrap_err();
            assert!(matches!(err, StoreError::InUse(_)), "{err}");
            let err = store.set_alias("t.docs", Some("t.none")).unwrap_err();
            assert!(matches!(err, StoreError::CollectionNotFound(_)), "{err}");
            assert_eq!(store.collections().unwrap().len(), 2);
        }
        let (store, _) = EdgeStore::open(dir.path()).unwrap();
        assert_eq!(store.collection("t.docs").unwrap().meta().name, "t.docs.v2");
        assert_eq!(
            store.aliases().unwrap().get("t.docs").map(String::as_str),
            Some("t.docs.v2")
        );
        // Removing the alias uncovers the first version again.
        assert_eq!(
            store.set_alias("t.docs", None).unwrap().as_deref(),
            Some("t.docs.v2")
        );
        let c = store.collection("t.docs").unwrap();
        assert_eq!((c.meta().name.as_str(), c.count().unwrap()), ("t.docs", 1));
        assert_eq!(c.meta().encoder, None);
        store.delete_collection("t.docs.v2").unwrap();
    }
}
