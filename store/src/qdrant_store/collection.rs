//! One eerag collection on the server: [`QdrantCollection`], its writes,
//! reads and searches.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use eerag_core::EncEncoderIds;
use qdrant_client::qdrant::{
    points_update_operation, Condition, CountPointsBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Direction, FieldType, Filter, GetPointsBuilder, OrderByBuilder,
    PayloadIncludeSelector, PointId, PointsUpdateOperation, QueryPointsBuilder, Range,
    RetrievedPoint, ScrollPointsBuilder, SearchParamsBuilder, UpdateBatchPointsBuilder,
    UpdateCollectionBuilder, VectorsSelector, WriteOrdering, WriteOrderingType,
};
use qdrant_client::{Qdrant, QdrantError};

use super::client::Client;
use super::codec::{
    dense_of, field, meta_key, payload_str, payload_u64, point_to_chunk, DENSE, KEYWORD,
};
use super::INCOMPLETE;
use crate::store::{
    assign_seqs, sort_hits, ChunkId, ChunkRecord, Collection, CollectionMeta, DocumentInfo,
    NewDocument, Result, ScoredChunk, StoreError,
};

/// Points read per page when scanning.
const SCAN_PAGE: u32 = 1024;
/// Chunks per write request (each request stays far below gRPC limits).
const WRITE_BATCH_CHUNKS: usize = 256;

/// One eerag collection on the server.
pub struct QdrantCollection {
    pub(super) client: Arc<Client>,
    pub(super) physical: String,
    pub(super) meta: CollectionMeta,
    /// The BM25 average chunk length: fixed from the first batch written
    /// (kept in the collection metadata) so stored weights never go stale.
    pub(super) avgdl: Mutex<Option<f32>>,
    /// The last write sequence number handed out (see [`ScoredChunk::seq`]).
    pub(super) last_seq: AtomicU64,
}

impl QdrantCollection {
    fn run<'a, T, F>(&'a self, call: impl Fn(&'a Qdrant) -> F) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, QdrantError>> + 'a,
    {
        self.client.run(&self.meta.name, call)
    }

    pub(super) fn ensure_indexes(&self) -> Result<()> {
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
    pub(super) fn raise_seq_to_stored(&self) -> Result<()> {
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
