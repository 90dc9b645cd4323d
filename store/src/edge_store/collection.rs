//! One collection of the embedded store: [`EdgeCollection`], its locking,
//! write sequence and the [`Collection`] operations (writes, reads and
//! searches).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

use eerag_core::EncEncoderIds;
use qdrant_edge::{
    EdgeShard, Payload, PointId, PointOperations, PointStructPersisted, PointSyncOperation,
    QueryEnum, QueryRequestBuilder, RetrieveRequestBuilder, ScoringQuery, ScrollRequestBuilder,
    SearchParams, UpdateOperation, VectorInternal, VectorPersisted, VectorStructInternal,
    VectorStructPersisted, WithPayloadInterface,
};
use serde_json::{json, Value};

use super::codec::{base64_encode, field, path, point_to_chunk, DENSE};
use super::vector_err;
use crate::keyword::{KeywordChunk, KeywordIndex};
use crate::store::{
    assign_seqs, sort_hits, ChunkId, ChunkRecord, Collection, CollectionMeta, DocumentInfo,
    NewDocument, Result, ScoredChunk, StoreError,
};

/// One collection of the embedded store.
pub struct EdgeCollection {
    pub(super) dir: PathBuf,
    pub(super) meta: CollectionMeta,
    pub(super) shard: EdgeShard,
    pub(super) keyword: KeywordIndex,
    /// Writers hold it exclusively while a batch goes into both indexes;
    /// readers share it, so they never see a batch half applied.
    pub(super) lock: RwLock<()>,
    /// Set (under the write lock) once the collection's directory has been
    /// moved to the trash: requests that still hold it fail as not found.
    pub(super) deleted: AtomicBool,
    /// The last write sequence number handed out (see [`ScoredChunk::seq`]).
    pub(super) last_seq: AtomicU64,
}

impl EdgeCollection {
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
    pub(super) fn write_lock(&self) -> Result<std::sync::RwLockWriteGuard<'_, ()>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge_store::tests::{doc, key, DIM};
    use crate::edge_store::{EdgeStore, Recovery};
    use crate::store::Store;

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
}
