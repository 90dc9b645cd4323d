//! The layout of eerag's data in Qdrant and its codecs: vector, payload
//! field and collection metadata names, and the conversions between
//! chunks and points.

use std::collections::HashMap;

use eerag_core::{EncEncoderIds, EncGeneratorIds};
use qdrant_client::qdrant::{
    point_id::PointIdOptions, value::Kind, vector_output, vectors_output::VectorsOptions,
    NamedVectors, PointId, PointStruct, RetrievedPoint, ScoredPoint, Value, Vector,
};
use qdrant_client::Payload;

use super::QdrantCollection;
use crate::bm25;
use crate::store::{
    ChunkId, ChunkRecord, DocumentInfo, NewDocument, Result, ScoredChunk, StoreError,
};

/// Name of the dense vector.
pub(super) const DENSE: &str = "dense";
/// Name of the sparse BM25 vector.
pub(super) const KEYWORD: &str = "keyword";

pub(super) mod field {
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
pub(super) mod meta_key {
    pub const FORMAT: &str = "eerag_format";
    pub const KEY_ID: &str = "eerag_key_id";
    pub const DIM: &str = "eerag_dim";
    pub const CREATED: &str = "eerag_created_unix_secs";
    pub const AVGDL: &str = "eerag_bm25_avgdl";
    pub const ENCODER: &str = "eerag_encoder";
}

/// Version of the layout above.
pub(super) const FORMAT: i64 = 1;

impl QdrantCollection {
    pub(super) fn to_chunk(
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

    pub(super) fn info_from(payload: &HashMap<String, Value>) -> Result<DocumentInfo> {
        Ok(DocumentInfo {
            doc_id: payload_str(payload, field::DOC_ID)?,
            content_hash: payload_str(payload, field::CONTENT_HASH)?,
            chunks: payload_u64(payload, field::COUNT)
                .ok_or_else(|| StoreError::Corrupt(format!("point without {}", field::COUNT)))?
                as usize,
            first_seq: payload_u64(payload, field::SEQ).unwrap_or(0),
        })
    }

    pub(super) fn scored(points: Vec<ScoredPoint>) -> Result<Vec<ScoredChunk>> {
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
    pub(super) fn point(
        &self,
        doc: &NewDocument,
        index: usize,
        seq: u64,
        avgdl: f32,
    ) -> Result<PointStruct> {
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
        let (indices, values) = bm25::document_weights(chunk.encoder_ids.ids(), avgdl);
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

pub(super) fn dense_of(point: &RetrievedPoint) -> Option<Vec<f32>> {
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

pub(super) fn point_to_chunk(id: Option<&PointId>) -> Result<ChunkId> {
    match id.and_then(|p| p.point_id_options.as_ref()) {
        Some(PointIdOptions::Uuid(text)) => uuid::Uuid::parse_str(text)
            .map(ChunkId::from_uuid)
            .map_err(|_| StoreError::Corrupt("a point id is not a UUID".into())),
        _ => Err(StoreError::Corrupt("a point without a UUID id".into())),
    }
}

pub(super) fn payload_str(payload: &HashMap<String, Value>, name: &str) -> Result<String> {
    match payload.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => Ok(s.clone()),
        _ => Err(StoreError::Corrupt(format!("point without {name}"))),
    }
}

pub(super) fn payload_u64(payload: &HashMap<String, Value>, name: &str) -> Option<u64> {
    match payload.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::IntegerValue(i)) => u64::try_from(*i).ok(),
        _ => None,
    }
}

pub(super) fn meta_int(metadata: &HashMap<String, Value>, name: &str) -> Option<i64> {
    match metadata.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::IntegerValue(i)) => Some(*i),
        Some(Kind::DoubleValue(d)) if d.fract() == 0.0 => Some(*d as i64),
        _ => None,
    }
}

pub(super) fn meta_double(metadata: &HashMap<String, Value>, name: &str) -> Option<f64> {
    match metadata.get(name).and_then(|v| v.kind.as_ref()) {
        Some(Kind::DoubleValue(d)) => Some(*d),
        Some(Kind::IntegerValue(i)) => Some(*i as f64),
        _ => None,
    }
}

pub(super) fn meta_str(metadata: &HashMap<String, Value>, name: &str) -> Option<String> {
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
    fn packed_ids_round_trip() {
        let ids = vec![0, 1, 49_151, u32::MAX];
        assert_eq!(unpack_ids(&pack_ids(&ids)).unwrap(), ids);
        assert!(unpack_ids(&base64_encode(&[1, 2, 3])).is_err());
    }
}
