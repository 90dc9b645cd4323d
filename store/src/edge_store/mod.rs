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

mod codec;
mod collection;
mod layout;
mod reconcile;
mod scan;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use crate::store::{
    validate_collection_name, Collection, CollectionMeta, CollectionSpec, Result, Store, StoreError,
};
use layout::{sync_dir, write_synced, ALIASES_FILE, COLLECTIONS_DIR, TRASH_DIR};

pub use collection::EdgeCollection;

fn vector_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Vector(e.to_string())
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

#[cfg(test)]
mod tests {
    use eerag_core::{EncEncoderIds, EncGeneratorIds};

    use super::*;
    use crate::store::{NewChunk, NewDocument};

    pub(super) const DIM: usize = 4;

    pub(super) fn key() -> eerag_core::KeyId {
        eerag_client::Key::from_secret([3; 32]).id()
    }

    pub(super) fn doc(doc_id: &str, hash: &str, chunks: &[(&[u32], [f32; DIM])]) -> NewDocument {
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
