//! The keyword index: BM25 over encrypted encoder ids, with tantivy.
//!
//! tantivy applies BM25 itself; the formula and its constants are stated in
//! [`crate::bm25`], which the Qdrant backend computes with and whose tests
//! hold it to tantivy's own scorer.
//!
//! BM25 sees only term frequencies, document frequencies and lengths, all of
//! which a bijection of the vocabulary preserves, so ranking ciphertext ids
//! ranks as ranking the plaintext ids would, up to float rounding in the
//! order of near-tied scores (the tests compare with a tolerance). Each chunk is indexed as
//! its ids written as whitespace-separated decimal terms, with no lowercasing
//! or stemming (they are not words). The index is derived data: the vector
//! store is the source of truth and can rebuild it.

use std::path::Path;
use std::sync::Mutex;

use eerag_core::EncEncoderIds;
use tantivy::collector::sort_key::{SortBySimilarityScore, SortByStaticFastValue};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, FAST, STORED, STRING,
};
use tantivy::tokenizer::{TextAnalyzer, WhitespaceTokenizer};
use tantivy::Order;
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

/// Name under which the id tokenizer is registered on every index handle.
const ID_TOKENIZER: &str = "eerag_ids";
/// The fast field of write sequence numbers.
const SEQ_FIELD: &str = "seq";
/// Heap for the single index writer: chunks are small, batches modest.
const WRITER_HEAP_BYTES: usize = 50_000_000;

/// Errors of the keyword index.
#[derive(Debug, thiserror::Error)]
pub enum KeywordError {
    #[error("keyword index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("keyword index: could not create {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// One search hit: the chunk's id, its BM25 score and its write sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct KeywordHit {
    pub chunk_id: String,
    pub score: f32,
    pub seq: u64,
}

/// A chunk to index.
pub struct KeywordChunk<'a> {
    /// Unique id of the chunk (the vector store's point id).
    pub chunk_id: &'a str,
    /// The document the chunk belongs to, for deleting a whole document.
    pub doc_id: &'a str,
    /// Which version of the chunk this is (the document's content hash), so a
    /// reconciliation with the vector store can tell stale entries apart.
    pub version: &'a str,
    /// The chunk's encrypted encoder ids.
    pub ids: &'a EncEncoderIds,
    /// When the chunk was written, as the store numbers writes: breaks ties
    /// between equal scores the same way under every key (see
    /// [`crate::store::ScoredChunk::seq`]).
    pub seq: u64,
}

#[derive(Clone, Copy)]
struct Fields {
    chunk_id: Field,
    doc_id: Field,
    version: Field,
    ids: Field,
    seq: Field,
}

/// A BM25 index of encrypted chunks, on disk.
pub struct KeywordIndex {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let chunk_id = b.add_text_field("chunk_id", STRING | STORED);
    let doc_id = b.add_text_field("doc_id", STRING | STORED);
    let version = b.add_text_field("version", STRING | STORED);
    let ids = b.add_text_field(
        "ids",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(ID_TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqs),
        ),
    );
    let seq = b.add_u64_field(SEQ_FIELD, FAST | STORED);
    (
        b.build(),
        Fields {
            chunk_id,
            doc_id,
            version,
            ids,
            seq,
        },
    )
}

/// Ids as the text tantivy indexes: `"17 4 17 9"`.
fn as_terms(ids: &[u32]) -> String {
    let mut s = String::with_capacity(ids.len() * 6);
    for (n, id) in ids.iter().enumerate() {
        if n > 0 {
            s.push(' ');
        }
        s.push_str(&id.to_string());
    }
    s
}

impl KeywordIndex {
    /// Opens the index in `dir`, creating it if needed.
    pub fn open_or_create(dir: &Path) -> Result<Self, KeywordError> {
        std::fs::create_dir_all(dir).map_err(|source| KeywordError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let (schema, fields) = schema();
        let directory =
            tantivy::directory::MmapDirectory::open(dir).map_err(tantivy::TantivyError::from)?;
        let index = match Index::open_or_create(directory, schema.clone()) {
            Err(tantivy::TantivyError::SchemaError(_)) => {
                // An index of an older layout: it is derived data, so start
                // afresh and let the store's reconciliation fill it again.
                std::fs::remove_dir_all(dir)
                    .and_then(|_| std::fs::create_dir_all(dir))
                    .map_err(|source| KeywordError::Io {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                let directory = tantivy::directory::MmapDirectory::open(dir)
                    .map_err(tantivy::TantivyError::from)?;
                Index::create(directory, schema, tantivy::IndexSettings::default())?
            }
            other => other?,
        };
        Self::wrap(index, fields)
    }

    /// An index in memory (tests and throwaway evaluation runs).
    pub fn in_memory() -> Result<Self, KeywordError> {
        let (schema, fields) = schema();
        Self::wrap(Index::create_in_ram(schema), fields)
    }

    fn wrap(index: Index, fields: Fields) -> Result<Self, KeywordError> {
        // Tokenizers are not persisted: register on every handle, new or reopened.
        index.tokenizers().register(
            ID_TOKENIZER,
            TextAnalyzer::from(WhitespaceTokenizer::default()),
        );
        // One indexing thread: a predictable segment layout (equal scores
        // are ordered by write sequence, not by layout, in `search`).
        let writer = index.writer_with_num_threads(1, WRITER_HEAP_BYTES)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
        })
    }

    /// Adds or replaces chunks (by chunk id) and commits: when this returns,
    /// the batch is durable and searchable.
    pub fn upsert(&self, chunks: &[KeywordChunk<'_>]) -> Result<(), KeywordError> {
        self.apply(&[], &[], chunks)
    }

    /// In one commit: removes every chunk of the documents `delete_docs` and
    /// the chunks `delete_chunks`, then adds or replaces `chunks`. When this
    /// returns the change is durable and searchable; if it fails, none of it
    /// is.
    pub fn apply(
        &self,
        delete_docs: &[&str],
        delete_chunks: &[&str],
        chunks: &[KeywordChunk<'_>],
    ) -> Result<(), KeywordError> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let f = self.fields;
        // A delete applies to documents added before it, so deletes go first.
        for doc in delete_docs {
            writer.delete_term(Term::from_field_text(f.doc_id, doc));
        }
        for chunk in delete_chunks {
            writer.delete_term(Term::from_field_text(f.chunk_id, chunk));
        }
        for c in chunks {
            writer.delete_term(Term::from_field_text(f.chunk_id, c.chunk_id));
        }
        for c in chunks {
            let added = writer.add_document(doc!(
                f.chunk_id => c.chunk_id,
                f.doc_id => c.doc_id,
                f.version => c.version,
                f.ids => as_terms(c.ids.ids()),
                f.seq => c.seq,
            ));
            if let Err(e) = added {
                let _ = writer.rollback();
                return Err(e.into());
            }
        }
        self.commit(&mut writer)
    }

    /// Every indexed chunk as `(chunk id, version, write sequence)`, to reconcile the index
    /// with the vector store it is derived from.
    pub fn entries(&self) -> Result<Vec<(String, String, u64)>, KeywordError> {
        let searcher = self.reader.searcher();
        let mut out = Vec::with_capacity(searcher.num_docs() as usize);
        for segment in searcher.segment_readers() {
            let store = segment
                .get_store_reader(64)
                .map_err(tantivy::TantivyError::from)?;
            let alive = segment.alive_bitset();
            for doc in 0..segment.max_doc() {
                if alive.is_some_and(|a| !a.is_alive(doc)) {
                    continue;
                }
                let stored: TantivyDocument = store.get(doc)?;
                let text = |field| {
                    stored
                        .get_first(field)
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                        .unwrap_or_default()
                };
                let seq = stored
                    .get_first(self.fields.seq)
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                out.push((text(self.fields.chunk_id), text(self.fields.version), seq));
            }
        }
        Ok(out)
    }

    /// Removes every chunk of a document and commits.
    pub fn delete_document(&self, doc_id: &str) -> Result<(), KeywordError> {
        self.apply(&[doc_id], &[], &[])
    }

    fn commit(&self, writer: &mut IndexWriter) -> Result<(), KeywordError> {
        if let Err(e) = writer.commit() {
            // Drop the uncommitted operations so the next batch starts clean.
            let _ = writer.rollback();
            return Err(e.into());
        }
        self.reader.reload()?;
        Ok(())
    }

    /// Number of chunks indexed.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` best chunks for the query ids by BM25, summed over the query's
    /// distinct ids. Every term statistic is the same in both id spaces, but
    /// tantivy adds the per-term scores in its own order (which follows the
    /// term dictionary, i.e. the ids' order), so scores agree to float
    /// rounding (about 1e-7 relative) rather than bitwise, and two chunks
    /// whose scores are that close can trade places between the spaces.
    pub fn search(&self, query: &EncEncoderIds, k: usize) -> Result<Vec<KeywordHit>, KeywordError> {
        let mut seen = std::collections::HashSet::new();
        let clauses: Vec<(Occur, Box<dyn Query>)> = query
            .ids()
            .iter()
            .filter(|id| seen.insert(**id))
            .map(|id| {
                let term = Term::from_field_text(self.fields.ids, &id.to_string());
                let q: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                (Occur::Should, q)
            })
            .collect();
        if clauses.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let query = BooleanQuery::new(clauses);
        // The fast path (score order, with tantivy's block-max pruning)
        // looks one past the cut. If the hit after the cut ties with the
        // last one kept, which of the tied chunks tantivy kept depends on
        // where its segments hold them; then search again ordered by
        // (score, write order), so the earliest-written tied chunks make the
        // cut — the same chunks under every key.
        let top = searcher.search(&query, &TopDocs::with_limit(k + 1).order_by_score())?;
        let addresses: Vec<(f32, tantivy::DocAddress)> =
            if top.len() > k && top[k].0 == top[k - 1].0 {
                searcher
                    .search(
                        &query,
                        &TopDocs::with_limit(k).order_by((
                            (SortBySimilarityScore, Order::Desc),
                            (
                                SortByStaticFastValue::<u64>::for_field(SEQ_FIELD),
                                Order::Asc,
                            ),
                        )),
                    )?
                    .into_iter()
                    .map(|((score, _), addr)| (score, addr))
                    .collect()
            } else {
                top.into_iter().take(k).collect()
            };
        let mut hits = addresses
            .into_iter()
            .map(|(score, addr)| {
                let doc: TantivyDocument = searcher.doc(addr)?;
                let chunk_id = doc
                    .get_first(self.fields.chunk_id)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        tantivy::TantivyError::InternalError("chunk without chunk_id".into())
                    })?;
                let seq = doc
                    .get_first(self.fields.seq)
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                Ok(KeywordHit {
                    chunk_id,
                    score,
                    seq,
                })
            })
            .collect::<Result<Vec<_>, KeywordError>>()?;
        // Equal scores go by write order, then chunk id, never by where
        // tantivy stored the chunk.
        hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.seq.cmp(&b.seq))
                .then_with(|| a.chunk_id.cmp(&b.chunk_id))
        });
        Ok(hits)
    }

    /// The tantivy index, for maintenance (e.g. merging segments).
    pub fn index(&self) -> &Index {
        &self.index
    }
}

/// Checks two keyword rankings of the same query in two id spaces agree (see
/// [`crate::ranking::compare_rankings`]). Panics with the first difference;
/// for tests (feature `test-support`).
#[cfg(any(test, feature = "test-support"))]
pub fn assert_same_ranking(p: &[KeywordHit], e: &[KeywordHit]) {
    let as_pairs = |hits: &[KeywordHit]| -> Vec<(String, f32)> {
        hits.iter().map(|h| (h.chunk_id.clone(), h.score)).collect()
    };
    if let Err(e) = crate::ranking::compare_rankings(&as_pairs(p), &as_pairs(e), 1e-6) {
        panic!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eerag_client::cipher::{ClientCipher, ModelShape};
    use eerag_client::Key;

    const VOCAB: usize = 2000;

    /// Zipf-ish synthetic chunks: realistic term statistics without a model.
    fn corpus() -> Vec<Vec<u32>> {
        let mut x = 0x2545F4914F6CDD1Du64;
        (0..300)
            .map(|_| {
                let len = 20 + (x % 60) as usize;
                (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let u = (x % 10_000) as f64 / 10_000.0;
                        ((VOCAB as f64).powf(u) as u32).min(VOCAB as u32 - 1)
                    })
                    .collect()
            })
            .collect()
    }

    fn build(index: &KeywordIndex, chunks: &[EncEncoderIds]) {
        let docs: Vec<String> = (0..chunks.len()).map(|i| format!("doc{}", i / 3)).collect();
        let chunk_ids: Vec<String> = (0..chunks.len()).map(|i| format!("c{i:04}")).collect();
        let batch: Vec<KeywordChunk> = chunks
            .iter()
            .enumerate()
            .map(|(i, ids)| KeywordChunk {
                chunk_id: &chunk_ids[i],
                doc_id: &docs[i],
                version: "v1",
                ids,
                seq: i as u64,
            })
            .collect();
        index.upsert(&batch).unwrap();
    }

    #[test]
    fn bm25_over_ciphertext_ranks_exactly_as_over_plaintext() {
        let shape = ModelShape {
            encoder_vocab: VOCAB,
            embedding_dim: 4,
            generator_vocab: 10,
        };
        let cipher = ClientCipher::new(&Key::from_secret([7; 32]), shape);
        let identity = Key::from_secret([7; 32]).id();
        let plain: Vec<EncEncoderIds> = corpus()
            .into_iter()
            .map(|ids| EncEncoderIds::new(identity, ids))
            .collect();
        let enc: Vec<EncEncoderIds> = plain
            .iter()
            .map(|p| cipher.encrypt_encoder(p.ids()).unwrap())
            .collect();
        let (pi, ei) = (
            KeywordIndex::in_memory().unwrap(),
            KeywordIndex::in_memory().unwrap(),
        );
        build(&pi, &plain);
        build(&ei, &enc);
        for q in plain.iter().step_by(7) {
            let query = &q.ids()[..q.len().min(8)];
            let p = pi
                .search(&EncEncoderIds::new(identity, query.to_vec()), 10)
                .unwrap();
            let e = ei
                .search(&cipher.encrypt_encoder(query).unwrap(), 10)
                .unwrap();
            assert!(!p.is_empty());
            assert_same_ranking(&p, &e);
        }
    }

    #[test]
    fn equal_scores_past_the_cut_keep_the_earliest_written() {
        // Twelve identical chunks, written in three commits (three segments)
        // in an order unrelated to their ids or their write numbers: the
        // two kept are always the two written first, whatever tantivy's
        // segment order.
        let key = Key::from_secret([2; 32]).id();
        let same = EncEncoderIds::new(key, vec![11, 12, 13]);
        let index = KeywordIndex::in_memory().unwrap();
        let order = [7u64, 3, 11, 0, 5, 9, 1, 10, 4, 8, 2, 6];
        let names: Vec<String> = order.iter().map(|s| format!("c{:02}", 11 - s)).collect();
        for batch in order.chunks(4).zip(names.chunks(4)) {
            let chunks: Vec<KeywordChunk> = batch
                .0
                .iter()
                .zip(batch.1)
                .map(|(&seq, name)| KeywordChunk {
                    chunk_id: name,
                    doc_id: name,
                    version: "v1",
                    ids: &same,
                    seq,
                })
                .collect();
            index.upsert(&chunks).unwrap();
        }
        let hits = index.search(&EncEncoderIds::new(key, vec![12]), 2).unwrap();
        let seqs: Vec<u64> = hits.iter().map(|h| h.seq).collect();
        assert_eq!(seqs, [0, 1]);
        assert_eq!(hits[0].chunk_id, "c11");
        assert_eq!(hits[0].score, hits[1].score);
    }

    #[test]
    fn an_index_of_an_older_layout_is_started_afresh() {
        // The layout before write sequence numbers: derived data, so it is
        // dropped (the store refills it from the shard) rather than refused.
        let dir = tempfile::tempdir().unwrap();
        {
            let mut b = Schema::builder();
            let chunk_id = b.add_text_field("chunk_id", STRING | STORED);
            b.add_text_field("doc_id", STRING | STORED);
            b.add_text_field("version", STRING | STORED);
            let directory = tantivy::directory::MmapDirectory::open(dir.path()).unwrap();
            let index = Index::open_or_create(directory, b.build()).unwrap();
            let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
            writer.add_document(doc!(chunk_id => "old")).unwrap();
            writer.commit().unwrap();
        }
        let index = KeywordIndex::open_or_create(dir.path()).unwrap();
        assert!(index.is_empty());
        let key = Key::from_secret([3; 32]).id();
        let ids = EncEncoderIds::new(key, vec![4, 5]);
        index
            .upsert(&[KeywordChunk {
                chunk_id: "new",
                doc_id: "d",
                version: "v1",
                ids: &ids,
                seq: 9,
            }])
            .unwrap();
        assert_eq!(index.entries().unwrap(), [("new".into(), "v1".into(), 9)]);
    }

    #[test]
    fn upsert_replaces_delete_removes_and_reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::from_secret([1; 32]).id();
        let a = EncEncoderIds::new(key, vec![5, 6, 7]);
        let b = EncEncoderIds::new(key, vec![8, 9]);
        {
            let index = KeywordIndex::open_or_create(dir.path()).unwrap();
            index
                .upsert(&[
                    KeywordChunk {
                        chunk_id: "c1",
                        doc_id: "d1",
                        version: "v1",
                        ids: &a,
                        seq: 1,
                    },
                    KeywordChunk {
                        chunk_id: "c2",
                        doc_id: "d2",
                        version: "v1",
                        ids: &b,
                        seq: 2,
                    },
                ])
                .unwrap();
            // Same chunk id again: replaced, not duplicated.
            index
                .upsert(&[KeywordChunk {
                    chunk_id: "c1",
                    doc_id: "d1",
                    version: "v2",
                    ids: &a,
                    seq: 3,
                }])
                .unwrap();
            assert_eq!(index.len(), 2);
            let mut entries = index.entries().unwrap();
            entries.sort();
            assert_eq!(
                entries,
                vec![("c1".into(), "v2".into(), 3), ("c2".into(), "v1".into(), 2)]
            );
        }
        // Reopened (the tokenizer must be registered again for search to work).
        let index = KeywordIndex::open_or_create(dir.path()).unwrap();
        assert_eq!(index.len(), 2);
        let hits = index.search(&EncEncoderIds::new(key, vec![9]), 5).unwrap();
        assert_eq!(
            hits.iter().map(|h| h.chunk_id.as_str()).collect::<Vec<_>>(),
            vec!["c2"]
        );
        index.delete_document("d2").unwrap();
        assert_eq!(index.len(), 1);
        assert!(index
            .search(&EncEncoderIds::new(key, vec![9]), 5)
            .unwrap()
            .is_empty());
        assert!(index
            .search(&EncEncoderIds::new(key, vec![]), 5)
            .unwrap()
            .is_empty());
    }
}
