//! Jobs that rebuild a collection as a new version through the host's API
//! while the current version serves, then switch to it in one step:
//!
//! - [`reembed`] (the host's operator, no key): the host re-embeds the
//!   stored encrypted ids with another encoder it serves (a new encoder
//!   model), keeping ids, metadata and write order.
//! - [`rekey`] (the client, with both keys): every document is exported,
//!   decrypted with the old key, encrypted with the new one and uploaded
//!   into a version bound to the new key. The host receives ciphertext and
//!   key ids only, never either key or a mapping between them.
//!
//! Both keep a checkpoint file, so a killed job resumes where it was; every
//! step replaces whole documents, so repeating one is harmless. Writes that
//! reach the current version while a job runs are caught up by a second
//! pass (changed and new documents) and a prune pass (deleted ones) before
//! the switch; the old version is then deleted unless asked to keep it.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eerag_shared::wire::{
    ChunkUpload, CreateVersionRequest, DocumentSummary, DocumentUpload, ReembedRequest,
    UpsertRequest, VersionInfo,
};
use eerag_shared::KeyId;
use serde::{Deserialize, Serialize};

use crate::chunking::ChunkingOptions;
use crate::client::{ChunkMetadata, ClientError, EncryptedClient, TextDocument};
use crate::remote::{HostClient, RemoteError};

/// How long a job waits after a switch before deleting the old version, so
/// requests that resolved the name just before it finish (hosts on a
/// shared Qdrant server see a switch within a second).
pub const SWITCH_GRACE: Duration = Duration::from_secs(2);

/// Chunks per upload request of a rekey.
const MAX_REQUEST_CHUNKS: usize = 1024;

/// Catch-up passes before a job gives up on a collection that keeps
/// changing (it can be run again later).
const MAX_CATCH_UP_PASSES: u32 = 5;

/// Errors of a rebuild job.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Crypto(#[from] eerag_shared::EeError),
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("{0}")]
    Mismatch(String),
}

/// Result alias of the jobs.
pub type Result<T> = std::result::Result<T, RebuildError>;

/// How a job runs.
#[derive(Clone, Debug)]
pub struct RebuildOptions {
    /// Documents per step.
    pub batch_documents: usize,
    /// Progress file (removed when the job completes).
    pub checkpoint: PathBuf,
    /// Keep the old version instead of deleting it after the switch.
    pub keep_old: bool,
    /// Wait between the switch and deleting the old version.
    pub grace: Duration,
}

/// What a job did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RebuildReport {
    pub collection: String,
    /// The version switched from, and to.
    pub previous_version: u32,
    pub version: u32,
    /// Whether this run resumed from a checkpoint.
    pub resumed: bool,
    /// Documents and chunks written into the new version by this run.
    pub documents_written: u64,
    pub chunks_written: u64,
    /// Documents the catch-up passes found changed, new or deleted while
    /// the job ran.
    pub documents_caught_up: u64,
    pub documents_removed: u64,
    /// Documents and chunks the new version holds at the switch (equal to
    /// the old version's, or the job fails before switching).
    pub documents: u64,
    pub chunks: u64,
    /// Rekey: documents whose id could not be derived again from their text
    /// (kept under a stand-in id; a later upload of the same file adds it
    /// anew instead of replacing it).
    pub ids_not_rederived: u64,
    /// Rekey: sampled documents whose new ciphertext decrypts to exactly
    /// the old one's plaintext.
    pub verified_documents: u64,
    /// Whether the old version was deleted.
    pub old_version_deleted: bool,
    /// Seconds the writing passes took.
    pub seconds: f64,
}

impl RebuildReport {
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
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// What the job is doing ("re-embedding", "catching up", …).
    pub phase: &'a str,
    /// Documents done in this phase, of the total.
    pub done: u64,
    pub total: u64,
}

/// Writes `bytes` to `path` atomically (a temporary file renamed over it).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Refuses a checkpoint written by another job.
fn same_job(path: &Path, found: &str, expected: &str) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    Err(checkpoint_err(
        path,
        format!("belongs to another job ({found}); remove it or pass another --checkpoint"),
    ))
}

fn checkpoint_err(path: &Path, message: impl std::fmt::Display) -> RebuildError {
    RebuildError::Checkpoint {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Every document of a collection (one version of it, `NAME.vN`), paged.
fn all_documents(host: &HostClient, name: &str) -> Result<Vec<DocumentSummary>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = host.list_documents(name, after.as_deref(), 1000)?;
        out.extend(page.documents);
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

fn version_of(host: &HostClient, collection: &str, version: u32) -> Result<VersionInfo> {
    host.list_versions(collection)?
        .into_iter()
        .find(|v| v.version == version)
        .ok_or_else(|| RebuildError::Mismatch(format!("{collection:?} has no version {version}")))
}

fn current_of(host: &HostClient, collection: &str) -> Result<VersionInfo> {
    host.list_versions(collection)?
        .into_iter()
        .find(|v| v.current)
        .ok_or_else(|| RebuildError::Mismatch(format!("{collection:?} has no current version")))
}

/// Switches from version `from` to `version`; unless the old version is
/// kept, waits until every host resolves the name to the new version, has
/// `carry_over` bring over what reached the old version meanwhile, and
/// deletes it (also when a killed run had switched already).
fn switch_and_retire(
    host: &HostClient,
    collection: &str,
    from: u32,
    version: u32,
    options: &RebuildOptions,
    report: &mut RebuildReport,
    carry_over: &mut dyn FnMut(&mut RebuildReport) -> Result<u64>,
) -> Result<()> {
    let switched = host.switch_version(collection, version)?;
    report.previous_version = from;
    report.version = switched.current;
    if options.keep_old {
        return Ok(());
    }
    std::thread::sleep(options.grace);
    report.documents_caught_up += carry_over(report)?;
    match host.delete_collection(&format!("{collection}.v{from}")) {
        Ok(()) => report.old_version_deleted = true,
        // Deleted by the killed run.
        Err(e) if e.status() == Some(404) => report.old_version_deleted = true,
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The empty version a killed run created before it could record it, if
/// there is one for this key; else a new one.
fn adopt_or_create(
    host: &HostClient,
    collection: &str,
    request: &CreateVersionRequest,
) -> Result<VersionInfo> {
    let versions = host.list_versions(collection)?;
    let key = match request.key_id {
        Some(k) => k,
        None => versions
            .iter()
            .find(|v| v.current)
            .map(|v| v.key_id)
            .ok_or_else(|| {
                RebuildError::Mismatch(format!("{collection:?} has no current version"))
            })?,
    };
    let orphan = versions.into_iter().find(|v| {
        !v.current
            && v.chunks == 0
            && v.key_id == key
            && request
                .encoder
                .as_ref()
                .is_none_or(|e| v.encoder.as_ref() == Some(e))
    });
    match orphan {
        Some(v) => Ok(v),
        None => Ok(host.create_version(collection, request)?),
    }
}

// ---------------------------------------------------------------- re-embed

/// Re-embedding's checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ReembedCheckpoint {
    route: String,
    /// The version re-embedded from, and the one being built.
    from_version: u32,
    version: u32,
    /// 0: first pass, 1: catch-up pass, 2: prune, 3: verified, switch next.
    phase: u8,
    after: Option<String>,
}

/// Rebuilds `collection` as a new version re-embedded by the host with the
/// encoder `encoder` (SHA-256 of a base encoder the host serves for the
/// collection's key; `None`: the first it loaded), then switches to it.
pub fn reembed(
    host: &HostClient,
    collection: &str,
    encoder: Option<&str>,
    options: &RebuildOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<RebuildReport> {
    let route = format!(
        "re-embed {} {collection} {}",
        host.base_url(),
        encoder.unwrap_or("default")
    );
    let path = &options.checkpoint;
    let mut state: ReembedCheckpoint = match std::fs::read(path) {
        Ok(bytes) => {
            let state: ReembedCheckpoint = serde_json::from_slice(&bytes).map_err(|e| {
                checkpoint_err(path, format!("unreadable ({e}); remove it to start over"))
            })?;
            same_job(path, &state.route, &route)?;
            state
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ReembedCheckpoint {
            route: route.clone(),
            ..Default::default()
        },
        Err(e) => return Err(checkpoint_err(path, e)),
    };
    let save = |state: &ReembedCheckpoint| {
        write_atomic(path, &serde_json::to_vec_pretty(state).expect("serialises"))
            .map_err(|e| checkpoint_err(path, e))
    };
    let mut report = RebuildReport {
        collection: collection.to_string(),
        resumed: state.version != 0,
        ..Default::default()
    };
    let current = current_of(host, collection)?;
    if state.version == 0 {
        let created = adopt_or_create(
            host,
            collection,
            &CreateVersionRequest {
                key_id: None,
                encoder: encoder.map(str::to_string),
            },
        )?;
        state.version = created.version;
        state.from_version = current.version;
        save(&state)?;
    } else if current.version == state.version {
        // Killed after the switch: only the old version is left to delete.
        state.phase = 3;
    }
    let started = Instant::now();
    let total_docs = all_documents(host, collection)?.len() as u64;
    let limit = options.batch_documents.clamp(1, 1000);
    let mut catch_ups = 0;
    while state.phase < 3 {
        let prune = state.phase == 2;
        let phase = ["re-embedding", "catching up", "pruning"][state.phase as usize];
        let mut done = 0u64;
        loop {
            let step = host.reembed(
                collection,
                state.version,
                &ReembedRequest {
                    after: state.after.clone(),
                    limit,
                    prune,
                    from: None,
                },
            )?;
            done += step.examined as u64;
            report.documents_written += step.documents_written as u64;
            report.chunks_written += step.chunks_written as u64;
            if state.phase == 1 {
                report.documents_caught_up += step.documents_written as u64;
            }
            report.documents_removed += step.documents_removed as u64;
            state.after = step.next;
            progress(Progress {
                phase,
                done,
                total: total_docs.max(done),
            });
            if state.after.is_none() {
                break;
            }
            save(&state)?;
        }
        state.phase += 1;
        if state.phase == 3 {
            // Both versions must hold the same documents before the switch.
            let (old, new) = (
                all_documents(host, collection)?,
                all_documents(host, &format!("{collection}.v{}", state.version))?,
            );
            if !same_documents(&old, &new) {
                // Changed again meanwhile: one more catch-up.
                state.phase = 1;
                catch_ups += 1;
                if catch_ups >= MAX_CATCH_UP_PASSES {
                    save(&state)?;
                    return Err(RebuildError::Mismatch(format!(
                        "{collection:?} kept changing through {catch_ups} catch-up passes: run the job again when writes are quieter"
                    )));
                }
            }
        }
        save(&state)?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    let built = version_of(host, collection, state.version)?;
    report.chunks = built.chunks;
    report.documents = all_documents(host, &built.name)?.len() as u64;
    let (from, version) = (state.from_version, state.version);
    switch_and_retire(
        host,
        collection,
        from,
        version,
        options,
        &mut report,
        &mut |report| {
            // Pages of the old version into the one that now serves; copies
            // already as new are skipped.
            let mut after = None;
            let mut caught_up = 0;
            loop {
                let step = match host.reembed(
                    collection,
                    version,
                    &ReembedRequest {
                        after,
                        limit,
                        prune: false,
                        from: Some(from),
                    },
                ) {
                    Ok(step) => step,
                    // Deleted by the killed run.
                    Err(e) if e.status() == Some(404) => return Ok(caught_up),
                    Err(e) => return Err(e.into()),
                };
                caught_up += step.documents_written as u64;
                report.chunks_written += step.chunks_written as u64;
                match step.next {
                    Some(n) => after = Some(n),
                    None => return Ok(caught_up),
                }
            }
        },
    )?;
    let _ = std::fs::remove_file(path);
    Ok(report)
}

/// Whether two listings hold the same documents with the same content.
fn same_documents(a: &[DocumentSummary], b: &[DocumentSummary]) -> bool {
    let key = |d: &DocumentSummary| (d.doc_id.clone(), d.content_hash.clone(), d.chunks);
    let a: HashSet<_> = a.iter().map(key).collect();
    let b: HashSet<_> = b.iter().map(key).collect();
    a == b
}

// ------------------------------------------------------------------- rekey

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
        write_atomic(path, &line).map_err(|e| checkpoint_err(path, e))?;
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
    export: &eerag_shared::wire::DocumentExport,
) -> Result<Reencrypted> {
    let mut plain = Vec::with_capacity(export.chunks.len());
    for c in &export.chunks {
        let enc = old
            .cipher()
            .decrypt_encoder(&eerag_shared::EncEncoderIds::new(
                export.key_id,
                c.encoder_ids.clone(),
            ))?;
        let gen = old
            .cipher()
            .decrypt_generator(&eerag_shared::EncGeneratorIds::new(
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
/// the new key (the host must serve models for it as well, e.g. `eerag
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
