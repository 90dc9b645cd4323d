//! Key rotation as a job through the host's API (the client, with both
//! keys): every document is exported, decrypted with the old key, encrypted
//! with the new one and uploaded into a version bound to the new key; the
//! host receives ciphertext and key ids only, never either key or a mapping
//! between them. The version switching, checkpoints and catch-up passes are
//! [`eerag_remote::jobs`]' (shared with re-embedding).

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use eerag_core::wire::{
    ChunkUpload, CreateVersionRequest, DocumentSummary, DocumentUpload, UpsertRequest,
};
use eerag_core::KeyId;
use eerag_remote::jobs::{
    adopt_or_create, all_documents, checkpoint_err, current_of, same_job, switch_and_retire,
    version_of, Progress, RebuildError, RebuildOptions, RebuildReport, Result, MAX_CATCH_UP_PASSES,
};
use serde::{Deserialize, Serialize};

use crate::chunking::ChunkingOptions;
use crate::client::{ChunkMetadata, ClientError, EncryptedClient, TextDocument};

/// Chunks per upload request of a rekey.
const MAX_REQUEST_CHUNKS: usize = 1024;

/// A client step's error (the host's answer, decrypting, encrypting) as a
/// job error.
impl From<ClientError> for RebuildError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Remote(r) => RebuildError::Remote(r),
            ClientError::Crypto(c) => RebuildError::Crypto(c),
            ClientError::Mismatch(m) => RebuildError::Mismatch(m),
        }
    }
}

/// One line of rekey's checkpoint log: a document re-encrypted and written.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RekeyedDocument {
    old_id: String,
    old_hash: String,
    new_id: String,
}

/// The first line of the log.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RekeyHeader {
    route: String,
    /// The version re-encrypted from, and the one being built.
    from_version: u32,
    version: u32,
}

/// Rekey's checkpoint: an append-only log (a header line, then one line per
/// document written), so it costs one appended line per document however
/// large the collection.
struct RekeyLog {
    path: PathBuf,
    header: RekeyHeader,
    /// Old document id -> what it became.
    done: BTreeMap<String, RekeyedDocument>,
}

impl RekeyLog {
    fn open(path: &Path, route: &str) -> Result<Option<Self>> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(checkpoint_err(path, e)),
        };
        let mut lines = std::io::BufReader::new(file).lines();
        let first = lines
            .next()
            .transpose()
            .map_err(|e| checkpoint_err(path, e))?
            .ok_or_else(|| checkpoint_err(path, "empty; remove it to start over"))?;
        let header: RekeyHeader = serde_json::from_str(&first).map_err(|e| {
            checkpoint_err(path, format!("unreadable ({e}); remove it to start over"))
        })?;
        same_job(path, &header.route, route)?;
        let mut done = BTreeMap::new();
        for line in lines {
            let line = line.map_err(|e| checkpoint_err(path, e))?;
            // A line cut short by a kill is the document written again.
            if let Ok(d) = serde_json::from_str::<RekeyedDocument>(&line) {
                done.insert(d.old_id.clone(), d);
            }
        }
        Ok(Some(Self {
            path: path.to_path_buf(),
            header,
            done,
        }))
    }

    fn create(path: &Path, header: RekeyHeader) -> Result<Self> {
        let mut line = serde_json::to_vec(&header).expect("serialises");
        line.push(b'\n');
        eerag_core::fs::write_atomic(path, &line).map_err(|e| checkpoint_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            header,
            done: BTreeMap::new(),
        })
    }

    /// Records documents once the host acknowledged them.
    fn append(&mut self, docs: Vec<RekeyedDocument>) -> Result<()> {
        let mut bytes = Vec::new();
        for d in &docs {
            bytes.extend(serde_json::to_vec(d).expect("serialises"));
            bytes.push(b'\n');
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| checkpoint_err(&self.path, e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_data())
            .map_err(|e| checkpoint_err(&self.path, e))?;
        for d in docs {
            self.done.insert(d.old_id.clone(), d);
        }
        Ok(())
    }
}

/// A document re-encrypted for the new key.
struct Reencrypted {
    upload: DocumentUpload,
    rederived: bool,
    plain: Vec<(Vec<u32>, Vec<u32>, ChunkMetadata)>,
}

/// Decrypts an exported document with `old` and encrypts it for `new`:
/// the same token ids and metadata, the id and content hash the new key
/// gives the same text (when the chunks put the text back together).
fn reencrypt(
    old: &EncryptedClient,
    new: &EncryptedClient,
    export: &eerag_core::wire::DocumentExport,
) -> Result<Reencrypted> {
    let mut plain = Vec::with_capacity(export.chunks.len());
    for c in &export.chunks {
        let enc = old
            .cipher()
            .decrypt_encoder(&eerag_core::EncEncoderIds::new(
                export.key_id,
                c.encoder_ids.clone(),
            ))?;
        let gen = old
            .cipher()
            .decrypt_generator(&eerag_core::EncGeneratorIds::new(
                export.key_id,
                c.generator_ids.clone(),
            ))?;
        let meta = old.open_metadata(&export.doc_id, c.index, &c.metadata)?;
        plain.push((enc, gen, meta));
    }
    let text = reassemble(old, &plain);
    let (doc_id, content_hash, rederived) = match &text {
        Some(text) => {
            let (path, title) = plain
                .first()
                .map(|(_, _, m)| (m.path.clone(), m.title.clone()))
                .unwrap_or_default();
            // The content hash folds in how the file was cut; the old hash
            // tells which of the usual cuts it was.
            let doc = |chunking: String| TextDocument {
                path: path.clone(),
                title: title.clone(),
                text: text.clone(),
                chunks: Vec::new(),
                chunking,
            };
            let chunking = [ChunkingOptions::default().tag(), "given".to_string()]
                .into_iter()
                .find(|tag| old.content_hash(&doc(tag.clone())) == export.content_hash)
                .unwrap_or_else(|| "rekeyed".to_string());
            (
                new.document_id(text),
                new.content_hash(&doc(chunking)),
                true,
            )
        }
        None => {
            let stand_in = format!("eerag-rekey\0{}", export.doc_id);
            (
                new.document_id(&stand_in),
                new.document_id(&format!("{stand_in}\0{}", export.content_hash)),
                false,
            )
        }
    };
    let mut chunks = Vec::with_capacity(plain.len());
    for (i, (enc, gen, meta)) in plain.iter().enumerate() {
        chunks.push(ChunkUpload {
            encoder_ids: new.cipher().encrypt_encoder(enc)?.ids().to_vec(),
            generator_ids: new.cipher().encrypt_generator(gen)?.ids().to_vec(),
            metadata: new.seal_metadata(&doc_id, i as u32, meta)?,
        });
    }
    Ok(Reencrypted {
        upload: DocumentUpload {
            doc_id,
            content_hash,
            chunks,
        },
        rederived,
        plain,
    })
}

/// The document's normalised text, put back together from its chunks'
/// generator tokens (which decode to their exact text) and their offsets,
/// if they cover it from its start without a gap and agree where they
/// overlap.
fn reassemble(
    client: &EncryptedClient,
    chunks: &[(Vec<u32>, Vec<u32>, ChunkMetadata)],
) -> Option<String> {
    let mut text = String::new();
    for (_, gen, meta) in chunks {
        let piece = client.generator_tokenizer().decode(gen).ok()?;
        let (start, end) = (meta.start as usize, meta.end as usize);
        if end < start || end - start != piece.len() || start > text.len() {
            return None;
        }
        let overlap = text.len() - start;
        if overlap > piece.len() || text.get(start..)? != piece.get(..overlap)? {
            return None;
        }
        text.push_str(&piece[overlap..]);
    }
    (!text.is_empty()).then_some(text)
}

/// Re-encrypts and uploads into `target` every document of `source` not
/// yet written as it is now, oldest first, so the new version's write order
/// (how ties break) is the old one's. Returns how many it wrote.
#[allow(clippy::too_many_arguments)]
fn rekey_pass(
    old: &EncryptedClient,
    new: &EncryptedClient,
    source: &str,
    target: &str,
    log: &mut RekeyLog,
    batch: usize,
    phase: &str,
    report: &mut RebuildReport,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<u64> {
    let host = old.host();
    let new_key = new.cipher().key_id();
    let mut todo: Vec<DocumentSummary> = all_documents(host, source)?
        .into_iter()
        .filter(|d| {
            log.done
                .get(&d.doc_id)
                .is_none_or(|r| r.old_hash != d.content_hash)
        })
        .collect();
    todo.sort_by_key(|d| d.first_seq);
    let total = todo.len() as u64;
    let mut written = 0u64;
    for (n, docs) in todo.chunks(batch).enumerate() {
        let mut uploads = Vec::with_capacity(docs.len());
        let mut records = Vec::with_capacity(docs.len());
        for d in docs {
            let export = match host.export_document(source, &d.doc_id) {
                Ok(e) => e,
                // Deleted since the listing.
                Err(e) if e.status() == Some(404) => continue,
                Err(e) => return Err(e.into()),
            };
            let r = reencrypt(old, new, &export)?;
            if !r.rederived {
                report.ids_not_rederived += 1;
            }
            records.push(RekeyedDocument {
                old_id: export.doc_id.clone(),
                old_hash: export.content_hash.clone(),
                new_id: r.upload.doc_id.clone(),
            });
            report.chunks_written += r.upload.chunks.len() as u64;
            uploads.push(r.upload);
        }
        // Two old documents of the same text become one.
        let mut seen = HashSet::new();
        uploads.retain(|u| seen.insert(u.doc_id.clone()));
        // Requests of at most MAX_REQUEST_CHUNKS chunks (or one document),
        // in order.
        let mut request: Vec<DocumentUpload> = Vec::new();
        let mut chunks = 0;
        for upload in uploads {
            if !request.is_empty() && chunks + upload.chunks.len() > MAX_REQUEST_CHUNKS {
                host.upsert(
                    target,
                    &UpsertRequest {
                        key_id: new_key,
                        documents: std::mem::take(&mut request),
                    },
                )?;
                chunks = 0;
            }
            chunks += upload.chunks.len();
            request.push(upload);
        }
        if !request.is_empty() {
            host.upsert(
                target,
                &UpsertRequest {
                    key_id: new_key,
                    documents: request,
                },
            )?;
        }
        written += records.len() as u64;
        // Recorded only once the host acknowledged the writes.
        log.append(records)?;
        progress(Progress {
            phase,
            done: ((n + 1) * batch).min(todo.len()) as u64,
            total,
        });
    }
    report.documents_written += written;
    Ok(written)
}

/// Moves `collection` from `old`'s key to `new`'s: a new version bound to
/// the new key (the host must serve models for it as well, e.g. `eerag-host
/// serve --artifacts OLD --artifacts NEW`), filled with every document
/// re-encrypted in its original write order, checked, and switched to.
pub fn rekey(
    old: &EncryptedClient,
    new: &EncryptedClient,
    collection: &str,
    options: &RebuildOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<RebuildReport> {
    let host = old.host();
    let (old_key, new_key): (KeyId, KeyId) = (old.cipher().key_id(), new.cipher().key_id());
    if old_key == new_key {
        return Err(RebuildError::Mismatch(
            "the old and the new key are the same key".into(),
        ));
    }
    let route = format!(
        "rekey {} {collection} {old_key} -> {new_key}",
        host.base_url()
    );
    let mut report = RebuildReport {
        collection: collection.to_string(),
        ..Default::default()
    };
    let current = current_of(host, collection)?;
    let mut log = match RekeyLog::open(&options.checkpoint, &route)? {
        Some(log) => {
            report.resumed = true;
            log
        }
        None => {
            if current.key_id != old_key {
                return Err(RebuildError::Mismatch(format!(
                    "collection {collection:?} is under key {}, not the old key {old_key}",
                    current.key_id
                )));
            }
            let created = adopt_or_create(
                host,
                collection,
                &CreateVersionRequest {
                    key_id: Some(new_key),
                    encoder: None,
                },
            )?;
            RekeyLog::create(
                &options.checkpoint,
                RekeyHeader {
                    route: route.clone(),
                    from_version: current.version,
                    version: created.version,
                },
            )?
        }
    };
    let (from, version) = (log.header.from_version, log.header.version);
    let target = format!("{collection}.v{version}");
    let batch = options.batch_documents.clamp(1, 256);
    let started = Instant::now();
    if current.version != version {
        let mut pass = 0;
        loop {
            let phase = if pass == 0 {
                "re-encrypting"
            } else {
                "catching up"
            };
            let written = rekey_pass(
                old,
                new,
                collection,
                &target,
                &mut log,
                batch,
                phase,
                &mut report,
                progress,
            )?;
            if pass > 0 {
                report.documents_caught_up += written;
            }
            // Prune: documents of the new version whose original is gone
            // (or changed into another text).
            let old_docs = all_documents(host, collection)?;
            let wanted: HashSet<&str> = old_docs
                .iter()
                .filter_map(|d| log.done.get(&d.doc_id).map(|r| r.new_id.as_str()))
                .collect();
            for d in all_documents(host, &target)? {
                if !wanted.contains(d.doc_id.as_str()) {
                    host.delete_document(&target, &d.doc_id)?;
                    report.documents_removed += 1;
                }
            }
            let complete = old_docs.iter().all(|d| {
                log.done
                    .get(&d.doc_id)
                    .is_some_and(|r| r.old_hash == d.content_hash)
            });
            if complete {
                verify_rekey(old, new, collection, &target, &old_docs, &log, &mut report)?;
                break;
            }
            pass += 1;
            if pass >= MAX_CATCH_UP_PASSES {
                return Err(RebuildError::Mismatch(format!(
                    "{collection:?} kept changing through {pass} passes: run the job again when writes are quieter"
                )));
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    let built = version_of(host, collection, version)?;
    report.chunks = built.chunks;
    report.documents = all_documents(host, &target)?.len() as u64;
    // Writes that reached the old version before every host saw the switch
    // are carried over (into the version that now serves) before it goes.
    let old_name = format!("{collection}.v{from}");
    switch_and_retire(
        host,
        collection,
        from,
        version,
        options,
        &mut report,
        &mut |report| match rekey_pass(
            old,
            new,
            &old_name,
            collection,
            &mut log,
            batch,
            "carrying over",
            report,
            progress,
        ) {
            Err(RebuildError::Remote(e)) if e.status() == Some(404) => Ok(0),
            other => other,
        },
    )?;
    let _ = std::fs::remove_file(&options.checkpoint);
    Ok(report)
}

/// Checks the new version before the switch: a sample of documents decrypts
/// to the same plaintext under both keys, and the counts agree.
fn verify_rekey(
    old: &EncryptedClient,
    new: &EncryptedClient,
    collection: &str,
    target: &str,
    old_docs: &[DocumentSummary],
    log: &RekeyLog,
    report: &mut RebuildReport,
) -> Result<()> {
    let host = old.host();
    let every = old_docs.len().div_ceil(20).max(1);
    for d in old_docs.iter().step_by(every) {
        let Some(record) = log.done.get(&d.doc_id) else {
            continue;
        };
        let before = match host.export_document(collection, &d.doc_id) {
            Ok(e) => reencrypt(old, new, &e)?,
            // Deleted meanwhile: the carry-over after the switch sees to it.
            Err(e) if e.status() == Some(404) => continue,
            Err(e) => return Err(e.into()),
        };
        let after = reencrypt(new, new, &host.export_document(target, &record.new_id)?)?;
        if before.plain != after.plain {
            return Err(RebuildError::Mismatch(format!(
                "document {} does not decrypt to the same text under the new key",
                d.doc_id
            )));
        }
        report.verified_documents += 1;
    }
    let wanted: HashSet<&str> = old_docs
        .iter()
        .filter_map(|d| log.done.get(&d.doc_id).map(|r| r.new_id.as_str()))
        .collect();
    let new_docs = all_documents(host, target)?.len();
    if new_docs != wanted.len() {
        return Err(RebuildError::Mismatch(format!(
            "{target} holds {new_docs} documents, {} were expected: run the job again",
            wanted.len()
        )));
    }
    Ok(())
}
