//! How a chunk is laid out in the shard (the dense vector's and the
//! payload fields' names) and read back from a point.

use eerag_core::{EncEncoderIds, EncGeneratorIds};
use qdrant_edge::{JsonPath, PointId, Record};
use serde_json::{Map, Value};

use super::EdgeCollection;
use crate::store::{ChunkId, ChunkRecord, DocumentInfo, Result, StoreError};

/// Name of the dense vector in the shard.
pub(super) const DENSE: &str = "dense";

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

pub(super) fn path(key: &str) -> JsonPath {
    key.parse().expect("field names are valid JSON paths")
}

impl EdgeCollection {
    pub(super) fn to_chunk(&self, record: &Record) -> Result<ChunkRecord> {
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

    pub(super) fn info_from(record: &Record) -> Result<DocumentInfo> {
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

pub(super) fn point_to_chunk(id: &PointId) -> Result<ChunkId> {
    match id {
        PointId::Uuid(u) => Ok(ChunkId::from_uuid(*u)),
        PointId::NumId(_) => Err(StoreError::Corrupt("numeric point id".into())),
    }
}

pub(super) fn str_field(record: &Record, name: &str) -> Result<String> {
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

pub(super) fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| StoreError::Corrupt("metadata is not base64".into()))
}
