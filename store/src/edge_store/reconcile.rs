//! Keeping the keyword index in line with the shard, its source of truth:
//! at start-up and after a write that failed part way.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde_json::Value;

use super::codec::{field, point_to_chunk, str_field};
use super::scan::SCAN_PAGE;
use super::EdgeCollection;
use crate::keyword::KeywordChunk;
use crate::store::{ChunkId, Result};

impl EdgeCollection {
    /// Brings the keyword index to exactly the shard's `(chunk, version)`
    /// set. Returns (re-indexed, removed).
    pub(super) fn reconcile_keyword(&self) -> Result<(usize, usize)> {
        let _guard = self.write_lock()?;
        self.reconcile_keyword_locked()
    }

    /// [`Self::reconcile_keyword`] for a caller holding the write lock.
    /// Also raises the write sequence to the highest one stored, so numbers
    /// keep increasing after a restart even if the clock went back.
    pub(super) fn reconcile_keyword_locked(&self) -> Result<(usize, usize)> {
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
}

#[cfg(test)]
mod tests {
    use eerag_core::EncEncoderIds;

    use super::*;
    use crate::edge_store::tests::{doc, key, DIM};
    use crate::edge_store::EdgeStore;
    use crate::keyword::KeywordIndex;
    use crate::store::Store;

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
}
