//! Migration, a batch job over whole collections run by the host's operator
//! against the stores themselves (no key: it moves ciphertext only).
//!
//! `migrate` copies collections between stores (the embedded store and a
//! Qdrant server, either way): every chunk as stored — ids, ciphertext,
//! sealed metadata, vector and write sequence number, so the copy ranks and
//! breaks ties exactly as the original. It reads the source in chunk id
//! order, where each document's chunks come together, and writes whole
//! documents (each atomically, as uploads are). After every batch it records
//! the last document written in a checkpoint file, so a killed job resumes
//! there; writes replace whole documents, so the batch in flight when it was
//! killed is simply written again (no duplicates, nothing lost). At the end it
//! verifies counts and a sample of payloads and vectors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::store::{ChunkId, ChunkRecord, Collection, NewChunk, NewDocument, Store, StoreError};

/// Errors of a job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("{0}")]
    Mismatch(String),
}

/// Result alias of the jobs.
pub type Result<T> = std::result::Result<T, JobError>;

/// What to migrate and how.
#[derive(Clone, Debug)]
pub struct MigrateOptions {
    /// Store-level collection names (`tenant.name`); empty: all of them.
    pub collections: Vec<String>,
    /// Chunks per write (whole documents, so a batch may be larger).
    pub batch_chunks: usize,
    /// Chunks whose payload and vector are checked in the target afterwards.
    pub verify_sample: usize,
    /// Where progress is recorded (removed when the job completes).
    pub checkpoint: PathBuf,
    /// Describes the source and target, to refuse a checkpoint of another
    /// job.
    pub route: String,
}

/// What happened to one collection.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CollectionReport {
    pub name: String,
    /// Chunks in the source.
    pub source_chunks: u64,
    /// Chunks written by this run (after a resume, only those not written
    /// before it).
    pub chunks_written: u64,
    /// Documents written by this run.
    pub documents_written: u64,
    /// Documents not copied because the source holds them partly (a chunk
    /// missing): re-upload them.
    pub documents_skipped: u64,
    /// Whether this run resumed from a checkpoint.
    pub resumed: bool,
    /// Seconds spent copying.
    pub seconds: f64,
    /// Chunks in the target afterwards.
    pub target_chunks: u64,
    /// Sampled chunks whose payload (ids, metadata, version, write number)
    /// reads back identical in the target.
    pub payloads_verified: usize,
    /// Sampled chunks the target's dense search finds as themselves (cosine
    /// at least 0.99999).
    pub vectors_verified: usize,
    /// Chunks sampled.
    pub sampled: usize,
    /// Aliases naming this collection (the name a rebuilt version serves
    /// under), set on the target too.
    pub aliases: Vec<String>,
}

impl CollectionReport {
    /// Chunks written per second.
    pub fn chunks_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.chunks_written as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Progress of a job, for a progress bar.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    pub collection: &'a str,
    /// Chunks done in this collection (resumed ones included).
    pub done: u64,
    pub total: u64,
}

/// The checkpoint file: per collection, the last chunk of the last document
/// written, or done.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    route: String,
    collections: HashMap<String, CollectionCheckpoint>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CollectionCheckpoint {
    after: Option<String>,
    done_chunks: u64,
    finished: bool,
}

impl Checkpoint {
    fn load(path: &Path, route: &str) -> Result<Self> {
        let bad = |message: String| JobError::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let checkpoint: Checkpoint = serde_json::from_slice(&bytes)
                    .map_err(|e| bad(format!("unreadable ({e}); remove it to start over")))?;
                if checkpoint.route != route {
                    return Err(bad(format!(
                        "belongs to another job ({}); remove it or pass another --checkpoint",
                        checkpoint.route
                    )));
                }
                Ok(checkpoint)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint {
                route: route.to_string(),
                ..Default::default()
            }),
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// Writes the checkpoint atomically (a temporary file renamed over it).
    fn save(&self, path: &Path) -> Result<()> {
        let bad = |e: std::io::Error| JobError::Checkpoint {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let bytes = serde_json::to_vec_pretty(self).expect("a checkpoint serialises");
        eerag_core::fs::write_atomic(path, &bytes).map_err(bad)
    }
}

/// Copies collections from `from` to `to`; see the module docs.
pub fn migrate(
    from: &dyn Store,
    to: &dyn Store,
    options: &MigrateOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<CollectionReport>> {
    let names: Vec<String> = if options.collections.is_empty() {
        from.collections()?
            .iter()
            .map(|c| c.meta().name.clone())
            .collect()
    } else {
        options.collections.clone()
    };
    let mut checkpoint = Checkpoint::load(&options.checkpoint, &options.route)?;
    let mut reports = Vec::with_capacity(names.len());
    for name in &names {
        let source = from.collection(name)?;
        let meta = source.meta().clone();
        let target = match to.collection(name) {
            Ok(t) => {
                if t.meta().key_id != meta.key_id || t.meta().dim != meta.dim {
                    return Err(JobError::Mismatch(format!(
                        "the target's collection {name:?} is bound to key {} and {} dimensions, the source's to key {} and {}",
                        t.meta().key_id,
                        t.meta().dim,
                        meta.key_id,
                        meta.dim
                    )));
                }
                t
            }
            Err(StoreError::CollectionNotFound(_)) => {
                to.create_collection(name, meta.key_id, meta.dim)?
            }
            Err(e) => return Err(e.into()),
        };
        let state = checkpoint
            .collections
            .entry(name.clone())
            .or_default()
            .clone();
        let report = copy_collection(
            source.as_ref(),
            target.as_ref(),
            &state,
            options,
            &mut |after, done, finished| {
                checkpoint.collections.insert(
                    name.clone(),
                    CollectionCheckpoint {
                        after: after.map(|id| id.to_string()),
                        done_chunks: done,
                        finished,
                    },
                );
                checkpoint.save(&options.checkpoint)
            },
            progress,
        )?;
        reports.push(report);
    }
    // The names that serve a rebuilt version go along with it, set after
    // the data is there (aliases are cheap to set again on a rerun).
    for (alias, target) in from.aliases()? {
        if let Some(r) = reports.iter_mut().find(|r| r.name == target) {
            to.set_alias(&alias, Some(&target))?;
            r.aliases.push(alias);
        }
    }
    // Everything copied and verified: the checkpoint has served.
    let _ = std::fs::remove_file(&options.checkpoint);
    Ok(reports)
}

/// A document being gathered from the scan.
struct Pending {
    doc_id: String,
    chunks: Vec<(ChunkRecord, Vec<f32>)>,
}

impl Pending {
    /// The document to write, or `None` if the source lacks some of its
    /// chunks (indices not exactly 0..n).
    fn into_document(self) -> Option<NewDocument> {
        let whole = self
            .chunks
            .iter()
            .enumerate()
            .all(|(i, (c, _))| c.index as usize == i);
        if !whole {
            return None;
        }
        let hash = self.chunks[0].0.content_hash.clone();
        let same = self.chunks.iter().all(|(c, _)| c.content_hash == hash);
        Some(NewDocument {
            doc_id: self.doc_id,
            // A document caught half replaced keeps reading as such.
            content_hash: if same {
                hash
            } else {
                crate::qdrant_store::INCOMPLETE.to_string()
            },
            chunks: self
                .chunks
                .into_iter()
                .map(|(c, vector)| NewChunk {
                    encoder_ids: c.encoder_ids,
                    generator_ids: c.generator_ids,
                    metadata: c.metadata,
                    vector,
                    seq: Some(c.seq),
                })
                .collect(),
        })
    }
}

fn copy_collection(
    source: &dyn Collection,
    target: &dyn Collection,
    state: &CollectionCheckpoint,
    options: &MigrateOptions,
    save: &mut dyn FnMut(Option<ChunkId>, u64, bool) -> Result<()>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<CollectionReport> {
    let name = source.meta().name.clone();
    let total = source.count()?;
    let mut report = CollectionReport {
        name: name.clone(),
        source_chunks: total,
        resumed: state.after.is_some() || state.finished,
        ..Default::default()
    };
    let started = Instant::now();
    let mut done = state.done_chunks;
    if !state.finished {
        let after: Option<ChunkId> = state
            .after
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|_| JobError::Mismatch("the checkpoint holds a bad chunk id".into()))?;
        let mut batch: Vec<NewDocument> = Vec::new();
        let mut batch_chunks = 0usize;
        let mut last_written: Option<ChunkId> = after;
        let mut pending: Option<Pending> = None;
        let mut write = |batch: &mut Vec<NewDocument>,
                         batch_chunks: &mut usize,
                         last: Option<ChunkId>,
                         report: &mut CollectionReport,
                         done: &mut u64|
         -> Result<()> {
            if batch.is_empty() {
                return Ok(());
            }
            target.put_documents(batch)?;
            report.documents_written += batch.len() as u64;
            report.chunks_written += *batch_chunks as u64;
            *done += *batch_chunks as u64;
            save(last, *done, false)?;
            progress(Progress {
                collection: &name,
                done: *done,
                total,
            });
            batch.clear();
            *batch_chunks = 0;
            Ok(())
        };
        let flush_pending = |pending: Option<Pending>,
                             batch: &mut Vec<NewDocument>,
                             batch_chunks: &mut usize,
                             last_written: &mut Option<ChunkId>,
                             report: &mut CollectionReport| {
            if let Some(p) = pending {
                let last = p.chunks.last().map(|(c, _)| c.chunk_id);
                match p.into_document() {
                    Some(doc) => {
                        *batch_chunks += doc.chunks.len();
                        batch.push(doc);
                    }
                    None => report.documents_skipped += 1,
                }
                *last_written = last;
            }
        };
        source.scan_chunks(after, &mut |record, vector| {
            let same_doc = pending.as_ref().is_some_and(|p| p.doc_id == record.doc_id);
            if !same_doc {
                flush_pending(
                    pending.take(),
                    &mut batch,
                    &mut batch_chunks,
                    &mut last_written,
                    &mut report,
                );
                if batch_chunks >= options.batch_chunks.max(1) {
                    write(
                        &mut batch,
                        &mut batch_chunks,
                        last_written,
                        &mut report,
                        &mut done,
                    )
                    .map_err(|e| match e {
                        JobError::Store(s) => s,
                        other => StoreError::Vector(other.to_string()),
                    })?;
                }
                pending = Some(Pending {
                    doc_id: record.doc_id.clone(),
                    chunks: Vec::new(),
                });
            }
            pending
                .as_mut()
                .expect("set above")
                .chunks
                .push((record, vector));
            Ok(())
        })?;
        flush_pending(
            pending.take(),
            &mut batch,
            &mut batch_chunks,
            &mut last_written,
            &mut report,
        );
        write(
            &mut batch,
            &mut batch_chunks,
            last_written,
            &mut report,
            &mut done,
        )?;
        save(last_written, done, true)?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    verify(source, target, options.verify_sample, &mut report)?;
    progress(Progress {
        collection: &name,
        done: total,
        total,
    });
    Ok(report)
}

/// Checks counts, then a sample of chunks spread over the source: payloads
/// read back identical, and the target's dense search finds each sampled
/// vector's own chunk.
fn verify(
    source: &dyn Collection,
    target: &dyn Collection,
    sample: usize,
    report: &mut CollectionReport,
) -> Result<()> {
    report.target_chunks = target.count()?;
    let expected = report.source_chunks;
    if report.target_chunks != expected {
        return Err(JobError::Mismatch(format!(
            "collection {:?}: {} chunks in the source, {} in the target",
            report.name, expected, report.target_chunks
        )));
    }
    if sample == 0 || expected == 0 {
        return Ok(());
    }
    let every = (expected as usize).div_ceil(sample).max(1);
    let mut sampled: Vec<(ChunkRecord, Vec<f32>)> = Vec::with_capacity(sample);
    let mut i = 0usize;
    source.scan_chunks(None, &mut |record, vector| {
        if i.is_multiple_of(every) && sampled.len() < sample {
            sampled.push((record, vector));
        }
        i += 1;
        Ok(())
    })?;
    let ids: Vec<ChunkId> = sampled.iter().map(|(r, _)| r.chunk_id).collect();
    let copies: HashMap<ChunkId, ChunkRecord> = target
        .chunks(&ids)?
        .into_iter()
        .map(|r| (r.chunk_id, r))
        .collect();
    report.sampled = sampled.len();
    for (record, vector) in &sampled {
        if copies.get(&record.chunk_id) == Some(record) {
            report.payloads_verified += 1;
        }
        let hits = target.dense_search(vector, 8)?;
        if hits
            .iter()
            .any(|h| h.chunk_id == record.chunk_id && h.score >= 0.99999)
        {
            report.vectors_verified += 1;
        }
    }
    if report.payloads_verified != report.sampled || report.vectors_verified != report.sampled {
        return Err(JobError::Mismatch(format!(
            "collection {:?}: of {} sampled chunks, {} payloads and {} vectors match in the target",
            report.name, report.sampled, report.payloads_verified, report.vectors_verified
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge_store::EdgeStore;
    use eerag_client::Key;
    use eerag_core::{EncEncoderIds, EncGeneratorIds};

    const DIM: usize = 4;

    fn corpus(key: &Key, docs: usize) -> Vec<NewDocument> {
        (0..docs)
            .map(|d| NewDocument {
                doc_id: format!("doc-{d}"),
                content_hash: format!("h{d}"),
                chunks: (0..1 + d % 3)
                    .map(|i| {
                        let ids: Vec<u32> = vec![d as u32, i as u32 + 100, 7];
                        let mut v = [0.1f32; DIM];
                        v[d % DIM] = 1.0 + i as f32;
                        v[(d / DIM) % DIM] += 0.5 + d as f32 * 0.01;
                        NewChunk {
                            encoder_ids: EncEncoderIds::new(key.id(), ids.clone()),
                            generator_ids: EncGeneratorIds::new(key.id(), ids),
                            metadata: vec![d as u8, i as u8],
                            vector: v.to_vec(),
                            seq: None,
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    fn all_chunks(c: &dyn Collection) -> Vec<(ChunkRecord, Vec<f32>)> {
        let mut out = Vec::new();
        c.scan_chunks(None, &mut |r, v| {
            out.push((r, v));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn migration_copies_exactly_and_resumes_after_a_kill() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::from_secret([9; 32]);
        let (from, _) = EdgeStore::open(&dir.path().join("from")).unwrap();
        let source = from.create_collection("t.docs", key.id(), DIM).unwrap();
        for batch in corpus(&key, 40).chunks(7) {
            source.put_documents(batch).unwrap();
        }
        let options = MigrateOptions {
            collections: Vec::new(),
            batch_chunks: 10,
            verify_sample: 16,
            checkpoint: dir.path().join("job.json"),
            route: "from -> to".into(),
        };

        // A run killed after its second write: the checkpoint holds what
        // was written; nothing after it exists in the target.
        let (to, _) = EdgeStore::open(&dir.path().join("to")).unwrap();
        let mut writes = 0;
        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            migrate(&from, &to, &options, &mut |_| {
                writes += 1;
                if writes == 2 {
                    panic!("killed");
                }
            })
        }));
        assert!(killed.is_err());
        let saved: Checkpoint =
            serde_json::from_slice(&std::fs::read(&options.checkpoint).unwrap()).unwrap();
        let state = &saved.collections["t.docs"];
        assert!(!state.finished);
        let partial = to.collection("t.docs").unwrap().count().unwrap();
        assert_eq!(partial, state.done_chunks);
        assert!(partial > 0 && partial < source.count().unwrap());

        // A name serving the collection (as after a re-embedding) goes along.
        from.set_alias("t.served", Some("t.docs")).unwrap();
        // Resumed: the rest is copied, nothing twice, and the copy is exact,
        // write numbers included.
        let mut last = None;
        let reports = migrate(&from, &to, &options, &mut |p| last = Some(p.done)).unwrap();
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        assert!(r.resumed);
        assert_eq!(r.chunks_written + partial, r.source_chunks);
        assert_eq!(r.target_chunks, r.source_chunks);
        assert_eq!(
            (r.payloads_verified, r.vectors_verified),
            (r.sampled, r.sampled)
        );
        assert_eq!(last, Some(r.source_chunks));
        assert!(!options.checkpoint.exists());
        assert_eq!(r.aliases, vec!["t.served".to_string()]);
        assert_eq!(
            to.collection("t.served").unwrap().meta().name,
            "t.docs",
            "the alias resolves in the target"
        );
        let target = to.collection("t.docs").unwrap();
        let (a, b) = (all_chunks(source.as_ref()), all_chunks(target.as_ref()));
        assert_eq!(a.len(), b.len());
        for ((ra, va), (rb, vb)) in a.iter().zip(&b) {
            assert_eq!(ra, rb);
            let diff = va
                .iter()
                .zip(vb)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-6, "{diff}");
        }
        // Rankings and their ties are the source's.
        for q in [[1.0, 0.1, 0.1, 0.1], [0.1, 0.1, 1.0, 0.5]] {
            assert_eq!(
                source.dense_search(&q, 10).unwrap(),
                target.dense_search(&q, 10).unwrap()
            );
        }
        let kw = EncEncoderIds::new(key.id(), vec![7, 101]);
        assert_eq!(
            source.keyword_search(&kw, 10).unwrap(),
            target.keyword_search(&kw, 10).unwrap()
        );
        // Run again: idempotent.
        let again = migrate(&from, &to, &options, &mut |_| {}).unwrap();
        assert_eq!(again[0].target_chunks, r.source_chunks);
        // New writes to the copy come after the copied ones.
        target
            .put_documents(
                &corpus(&key, 1)
                    .into_iter()
                    .map(|mut d| {
                        d.doc_id = "fresh".into();
                        d
                    })
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let max_copied = b.iter().map(|(r, _)| r.seq).max().unwrap();
        assert!(target.document_chunks("fresh").unwrap()[0].seq > max_copied);
    }

    #[test]
    fn a_checkpoint_of_another_job_or_a_mismatched_target_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::from_secret([9; 32]);
        let (from, _) = EdgeStore::open(&dir.path().join("from")).unwrap();
        from.create_collection("t.a", key.id(), DIM).unwrap();
        let (to, _) = EdgeStore::open(&dir.path().join("to")).unwrap();
        let checkpoint = dir.path().join("job.json");
        std::fs::write(&checkpoint, r#"{"route":"x -> y","collections":{}}"#).unwrap();
        let options = MigrateOptions {
            collections: vec!["t.a".into()],
            batch_chunks: 10,
            verify_sample: 4,
            checkpoint: checkpoint.clone(),
            route: "from -> to".into(),
        };
        let err = migrate(&from, &to, &options, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("another job"), "{err}");
        std::fs::remove_file(&checkpoint).unwrap();
        to.create_collection("t.a", Key::from_secret([1; 32]).id(), DIM)
            .unwrap();
        let err = migrate(&from, &to, &options, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("bound to key"), "{err}");
    }
}
