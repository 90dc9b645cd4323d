//! Reading a collection's shard: paged scans, reads by id, and the
//! filters they use.

use std::collections::HashMap;

use qdrant_edge::{
    Condition, FieldCondition, Filter, Match, PointId, Record, RetrieveRequestBuilder,
    ScrollRequestBuilder, WithPayloadInterface, WithVector,
};

use super::codec::{field, path};
use super::{vector_err, EdgeCollection};
use crate::store::{ChunkId, ChunkRecord, Result};

/// Points read per page when scanning a whole collection.
pub(super) const SCAN_PAGE: usize = 1024;

impl EdgeCollection {
    /// Calls `visit` for every point matching `filter`, reading `fields`.
    pub(super) fn scan(
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
    pub(super) fn scan_points(
        &self,
        filter: Option<Filter>,
        payload: WithPayloadInterface,
        with_vector: bool,
        visit: impl FnMut(&Record) -> Result<()>,
    ) -> Result<()> {
        self.scan_points_from(None, filter, payload, with_vector, visit)
    }

    /// [`Self::scan_points`] from point `start` on (in id order).
    pub(super) fn scan_points_from(
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

    pub(super) fn retrieve(&self, ids: &[ChunkId]) -> Result<Vec<ChunkRecord>> {
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

    pub(super) fn doc_filter(doc_id: &str) -> Filter {
        Filter::new_must(Condition::Field(FieldCondition::new_match(
            path(field::DOC_ID),
            Match::from(doc_id.to_string()),
        )))
    }

    pub(super) fn first_chunks_filter() -> Filter {
        Filter::new_must(Condition::Field(FieldCondition::new_match(
            path(field::INDEX),
            Match::from(0i64),
        )))
    }
}
