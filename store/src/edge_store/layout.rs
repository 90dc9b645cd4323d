//! The on-disk layout: the names of the data directory's and a
//! collection's files, creating and loading a collection's directory, and
//! durable writes.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::RwLock;

use qdrant_edge::{
    Distance, EdgeConfigBuilder, EdgeShard, EdgeVectorParamsBuilder, PayloadFieldSchema,
    PayloadSchemaType, UpdateOperation,
};

use super::codec::{field, path, DENSE};
use super::{vector_err, EdgeCollection};
use crate::keyword::KeywordIndex;
use crate::store::{CollectionMeta, Result, StoreError};

pub(super) const COLLECTIONS_DIR: &str = "collections";
pub(super) const TRASH_DIR: &str = ".trash";
pub(super) const ALIASES_FILE: &str = "aliases.json";
const META_FILE: &str = "collection.json";
const VECTORS_DIR: &str = "vectors";
const KEYWORD_DIR: &str = "keyword";

impl EdgeCollection {
    pub(super) fn create(dir: &Path, meta: &CollectionMeta) -> Result<()> {
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

    pub(super) fn load(dir: &Path) -> Result<Self> {
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
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| StoreError::io(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io(path, e))
}
