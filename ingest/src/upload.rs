//! The upload job (client side): find files, read and cut them, encrypt,
//! and send them to the host in batches with retries. Idempotent and
//! resumable: a document's id is the keyed hash of its text, and documents
//! the collection already holds unchanged are not sent again.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eerag_core::wire::DocumentUpload;
use serde::Serialize;

use crate::chunking::ChunkingOptions;
use crate::client::{ClientError, EncryptedClient, TextDocument};
use crate::extract::{ExtractError, FileKind};
use eerag_remote::{RemoteError, RetryPolicy};

/// How to upload.
#[derive(Clone, Debug)]
pub struct UploadOptions {
    pub chunking: ChunkingOptions,
    /// Chunks per request (a larger document goes alone in its request:
    /// documents are replaced atomically, so never split across two).
    pub batch_chunks: usize,
    /// Tries per request when the host is busy (503) or unreachable.
    pub attempts: u32,
    /// The first wait between tries, doubled each time (a 503's
    /// Retry-After wins when longer).
    pub backoff: Duration,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            chunking: ChunkingOptions::default(),
            batch_chunks: 64,
            attempts: 6,
            backoff: Duration::from_millis(500),
        }
    }
}

/// What happened to one file.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FileStatus {
    /// Sent and acknowledged (the host wrote it, or found it unchanged).
    Uploaded {
        chunks: usize,
        encoder_tokens: usize,
        generator_tokens: usize,
    },
    /// The collection already holds this exact document.
    Unchanged,
    /// Same text as another file of this run (named), which holds it.
    Duplicate { of: String },
    /// Not read: unsupported, unreadable, binary, empty.
    Skipped { reason: String },
    /// Read but not acknowledged by the host.
    NotUploaded { reason: String },
}

/// One file's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileOutcome {
    pub path: String,
    #[serde(flatten)]
    pub status: FileStatus,
}

/// What an upload did, for the summary line and `--json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UploadSummary {
    pub files: usize,
    pub uploaded: usize,
    pub unchanged: usize,
    pub duplicates: usize,
    pub skipped: usize,
    pub not_uploaded: usize,
    pub chunks: usize,
    pub encoder_tokens: usize,
    pub generator_tokens: usize,
    pub seconds: f64,
    pub chunks_per_sec: f64,
    /// Why the upload stopped early (host unreachable, refused), if it did:
    /// files after that point were not sent; running again resumes.
    pub stopped: Option<String>,
    pub outcomes: Vec<FileOutcome>,
}

impl UploadSummary {
    /// True when every readable file is in the collection.
    pub fn complete(&self) -> bool {
        self.stopped.is_none() && self.not_uploaded == 0
    }

    fn record(&mut self, outcome: FileOutcome) {
        match &outcome.status {
            FileStatus::Uploaded {
                chunks,
                encoder_tokens,
                generator_tokens,
            } => {
                self.uploaded += 1;
                self.chunks += chunks;
                self.encoder_tokens += encoder_tokens;
                self.generator_tokens += generator_tokens;
            }
            FileStatus::Unchanged => self.unchanged += 1,
            FileStatus::Duplicate { .. } => self.duplicates += 1,
            FileStatus::Skipped { .. } => self.skipped += 1,
            FileStatus::NotUploaded { .. } => self.not_uploaded += 1,
        }
        self.outcomes.push(outcome);
    }
}

/// Progress as the upload goes (for a progress bar).
#[derive(Debug)]
pub enum Progress<'a> {
    /// Files found; the work is this many files.
    Found { files: usize },
    /// One file is settled.
    File(&'a FileOutcome),
    /// A request is being retried after `error`.
    Retrying { attempt: u32, error: &'a str },
}

/// A file to read, and the name it is shown (and sealed) under: the upload
/// root's own name and the path below it (`contracts/2024/a.pdf`).
#[derive(Clone, Debug)]
pub struct FoundFile {
    pub path: PathBuf,
    pub shown_as: String,
}

/// Every file under `paths` (folders recursively, in name order; hidden
/// entries inside folders are left out). Paths that do not exist come back
/// as skipped outcomes.
pub fn find_files(paths: &[PathBuf]) -> (Vec<FoundFile>, Vec<FileOutcome>) {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let mut seen = HashSet::new();
    for root in paths {
        if !root.exists() {
            missing.push(FileOutcome {
                path: root.display().to_string(),
                status: FileStatus::Skipped {
                    reason: "no such file or folder".into(),
                },
            });
            continue;
        }
        // Files are named from the root's own name down, so the same file
        // has the same name (and content hash) however the root was typed.
        let label = root
            .canonicalize()
            .ok()
            .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| root.display().to_string());
        let walker = walkdir::WalkDir::new(root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
        for entry in walker {
            match entry {
                Ok(e) if e.file_type().is_file() => {
                    let path = e.path().to_path_buf();
                    let relative = path.strip_prefix(root).unwrap_or(&path);
                    let shown_as = if relative.as_os_str().is_empty() {
                        label.clone()
                    } else {
                        Path::new(&label).join(relative).display().to_string()
                    };
                    if seen.insert(path.clone()) {
                        found.push(FoundFile { shown_as, path });
                    }
                }
                Ok(_) => {}
                Err(e) => missing.push(FileOutcome {
                    path: e
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| root.display().to_string()),
                    status: FileStatus::Skipped {
                        reason: format!("cannot read: {e}"),
                    },
                }),
            }
        }
    }
    (found, missing)
}

/// Errors that stop an upload before it starts.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The most chunks one document may have: the host's default limit on
/// chunks per request, and a document is never split across requests.
pub const MAX_CHUNKS_PER_DOCUMENT: usize = 4096;

/// Uploads every file under `paths` into `collection` (created, bound to
/// the client's key, when missing). Files that cannot be read, or that the
/// host refuses, are reported and skipped; a host that stays unreachable or
/// busy stops the upload, and the summary says which files were not sent.
pub fn upload(
    client: &EncryptedClient,
    collection: &str,
    paths: &[PathBuf],
    options: &UploadOptions,
    progress: impl FnMut(Progress<'_>),
) -> Result<UploadSummary, UploadError> {
    let (files, missing) = find_files(paths);
    let total = files.len() + missing.len();
    let missing = missing.into_iter().map(|o| (o.path, Err(o.status)));
    let read = files.into_iter().map(|file| {
        let doc = if FileKind::of(&file.path).is_none() {
            Err(FileStatus::Skipped {
                reason: ExtractError::Unsupported.to_string(),
            })
        } else {
            TextDocument::from_file(
                &file.path,
                &file.shown_as,
                client.encoder_tokenizer(),
                &options.chunking,
            )
            .map_err(|e| FileStatus::Skipped {
                reason: e.to_string(),
            })
        };
        (file.shown_as, doc)
    });
    upload_items(
        client,
        collection,
        total,
        missing.chain(read),
        options,
        progress,
    )
}

/// Uploads documents already read and cut (e.g. an evaluation corpus), with
/// the batching, retries, skipping of unchanged documents and refusal
/// handling of [`upload`]; each is named by its `path`.
pub fn upload_documents(
    client: &EncryptedClient,
    collection: &str,
    docs: Vec<TextDocument>,
    options: &UploadOptions,
    progress: impl FnMut(Progress<'_>),
) -> Result<UploadSummary, UploadError> {
    let total = docs.len();
    let items = docs.into_iter().map(|d| (d.path.clone(), Ok(d)));
    upload_items(client, collection, total, items, options, progress)
}

/// The upload loop over named documents (or why a name has none).
fn upload_items(
    client: &EncryptedClient,
    collection: &str,
    total: usize,
    items: impl Iterator<Item = (String, Result<TextDocument, FileStatus>)>,
    options: &UploadOptions,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<UploadSummary, UploadError> {
    options
        .chunking
        .validate(client.encoder_tokenizer().max_tokens())
        .map_err(UploadError::Options)?;
    let started = Instant::now();
    with_retries(options, &mut progress, || {
        client.ensure_collection(collection).map_err(into_remote)
    })
    .map_err(|e| UploadError::Client(e.into()))?
    .map_err(UploadError::Client)?;
    let existing = with_retries(options, &mut progress, || {
        existing_documents(client, collection).map_err(into_remote)
    })
    .map_err(|e| UploadError::Client(e.into()))?
    .map_err(UploadError::Client)?;

    let mut summary = UploadSummary {
        files: total,
        ..UploadSummary::default()
    };
    progress(Progress::Found { files: total });
    let stopped = || FileStatus::NotUploaded {
        reason: "the upload stopped before this file".into(),
    };
    let mut batch = Batch::default();
    let mut seen_ids: HashMap<String, String> = HashMap::new();
    for (name, doc) in items {
        if summary.stopped.is_some() {
            settle(&mut summary, &mut progress, name, stopped());
            continue;
        }
        let encrypted = match doc.and_then(|d| prepare(client, &name, &d, &existing, &mut seen_ids))
        {
            Ok(e) => e,
            Err(status) => {
                settle(&mut summary, &mut progress, name, status);
                continue;
            }
        };
        if !batch.is_empty() && batch.chunks + encrypted.chunks.len() > options.batch_chunks {
            send(
                client,
                collection,
                &mut batch,
                options,
                &mut summary,
                &mut progress,
            );
            if summary.stopped.is_some() {
                settle(&mut summary, &mut progress, name, stopped());
                continue;
            }
        }
        batch.push(name, encrypted);
        if batch.chunks >= options.batch_chunks {
            send(
                client,
                collection,
                &mut batch,
                options,
                &mut summary,
                &mut progress,
            );
        }
    }
    if !batch.is_empty() {
        send(
            client,
            collection,
            &mut batch,
            options,
            &mut summary,
            &mut progress,
        );
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.chunks_per_sec = if summary.seconds > 0.0 {
        summary.chunks as f64 / summary.seconds
    } else {
        0.0
    };
    Ok(summary)
}

fn settle(
    summary: &mut UploadSummary,
    progress: &mut impl FnMut(Progress<'_>),
    path: String,
    status: FileStatus,
) {
    let outcome = FileOutcome { path, status };
    progress(Progress::File(&outcome));
    summary.record(outcome);
}

/// Checks and encrypts one document, or says why it is not to be sent.
fn prepare(
    client: &EncryptedClient,
    name: &str,
    doc: &TextDocument,
    existing: &HashMap<String, String>,
    seen_ids: &mut HashMap<String, String>,
) -> Result<DocumentUpload, FileStatus> {
    if doc.chunks.len() > MAX_CHUNKS_PER_DOCUMENT {
        return Err(FileStatus::Skipped {
            reason: format!(
                "too long: {} chunks, at most {MAX_CHUNKS_PER_DOCUMENT} per document (split the file)",
                doc.chunks.len()
            ),
        });
    }
    let doc_id = client.document_id(&doc.text);
    if let Some(first) = seen_ids.get(&doc_id) {
        return Err(FileStatus::Duplicate { of: first.clone() });
    }
    seen_ids.insert(doc_id.clone(), name.to_string());
    if existing.get(&doc_id) == Some(&client.content_hash(doc)) {
        return Err(FileStatus::Unchanged);
    }
    client
        .encrypt_document(doc)
        .map_err(|e| FileStatus::Skipped {
            reason: e.to_string(),
        })
}

/// The collection's documents: id → content hash.
fn existing_documents(
    client: &EncryptedClient,
    collection: &str,
) -> Result<HashMap<String, String>, ClientError> {
    let mut out = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = client
            .host()
            .list_documents(collection, after.as_deref(), 1000)?;
        for d in page.documents {
            out.insert(d.doc_id, d.content_hash);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}

/// Splits a client error into what retrying may fix (the host's) and what
/// it cannot (the key's, the client's own).
fn into_remote(e: ClientError) -> Retry<ClientError> {
    match e {
        ClientError::Remote(r) => Retry::Remote(r),
        other => Retry::Final(other),
    }
}

/// An error for [`with_retries`]: the host's (maybe retried) or final.
enum Retry<E> {
    Remote(RemoteError),
    Final(E),
}

/// Runs `f`, trying again with backoff while the host is busy or
/// unreachable. The outer error is the host's last one; the inner result
/// is `f`'s own (a final error is not retried).
fn with_retries<T, E>(
    options: &UploadOptions,
    progress: &mut impl FnMut(Progress<'_>),
    mut f: impl FnMut() -> Result<T, Retry<E>>,
) -> Result<Result<T, E>, RemoteError> {
    let policy = RetryPolicy {
        attempts: options.attempts,
        backoff: options.backoff,
        // Safe: a document replaces itself.
        retry_unreachable: true,
    };
    let mut attempt = 1;
    loop {
        match f() {
            Ok(v) => return Ok(Ok(v)),
            Err(Retry::Final(e)) => return Ok(Err(e)),
            Err(Retry::Remote(e)) => {
                let Some(wait) = policy.wait(attempt, &e) else {
                    return Err(e);
                };
                progress(Progress::Retrying {
                    attempt,
                    error: &e.to_string(),
                });
                std::thread::sleep(wait);
                attempt += 1;
            }
        }
    }
}

/// Documents waiting to be sent together.
#[derive(Default)]
struct Batch {
    files: Vec<(String, DocumentUpload)>,
    chunks: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn push(&mut self, shown_as: String, doc: DocumentUpload) {
        self.chunks += doc.chunks.len();
        self.files.push((shown_as, doc));
    }
}

/// Whether the host refused these documents themselves (so sending them
/// one by one tells which), rather than the client or the collection.
fn refused_content(e: &RemoteError) -> bool {
    matches!(
        e,
        RemoteError::Status {
            status: 400 | 413,
            ..
        }
    )
}

/// Sends a batch, retrying while the host is busy or unreachable, and
/// records its files' outcomes. If the host refuses the batch's content,
/// its documents go one by one so only the refused ones are left out; a
/// failure that retrying cannot fix stops the upload.
fn send(
    client: &EncryptedClient,
    collection: &str,
    batch: &mut Batch,
    options: &UploadOptions,
    summary: &mut UploadSummary,
    progress: &mut impl FnMut(Progress<'_>),
) {
    let files = std::mem::take(&mut batch.files);
    batch.chunks = 0;
    let put = |docs: Vec<DocumentUpload>, progress: &mut dyn FnMut(Progress<'_>)| {
        let request = eerag_core::wire::UpsertRequest {
            key_id: client.cipher().key_id(),
            documents: docs,
        };
        with_retries::<_, RemoteError>(options, &mut |p| progress(p), || {
            client
                .host()
                .upsert(collection, &request)
                .map_err(Retry::Remote)
        })
        .map(|inner| inner.map(|_| ()))
    };
    let uploaded = |doc: &DocumentUpload| FileStatus::Uploaded {
        chunks: doc.chunks.len(),
        encoder_tokens: doc.chunks.iter().map(|c| c.encoder_ids.len()).sum(),
        generator_tokens: doc.chunks.iter().map(|c| c.generator_ids.len()).sum(),
    };
    let several = files.len() > 1;
    let docs: Vec<DocumentUpload> = files.iter().map(|(_, d)| d.clone()).collect();
    let whole = put(docs, &mut |p| progress(p));
    match whole {
        Ok(Ok(())) => {
            for (path, doc) in files {
                let status = uploaded(&doc);
                settle(summary, progress, path, status);
            }
        }
        Err(e) if several && refused_content(&e) => {
            for (path, doc) in files {
                if summary.stopped.is_some() {
                    settle(
                        summary,
                        progress,
                        path,
                        FileStatus::NotUploaded {
                            reason: "the upload stopped before this file".into(),
                        },
                    );
                    continue;
                }
                let status = uploaded(&doc);
                match put(vec![doc], &mut |p| progress(p)) {
                    Ok(Ok(())) => settle(summary, progress, path, status),
                    Err(e) if refused_content(&e) => settle(
                        summary,
                        progress,
                        path,
                        FileStatus::NotUploaded {
                            reason: e.explanation(),
                        },
                    ),
                    Err(e) | Ok(Err(e)) => {
                        let reason = e.explanation();
                        settle(
                            summary,
                            progress,
                            path,
                            FileStatus::NotUploaded {
                                reason: reason.clone(),
                            },
                        );
                        summary.stopped = Some(reason);
                    }
                }
            }
        }
        Err(e) | Ok(Err(e)) => {
            let reason = e.explanation();
            for (path, _) in files {
                settle(
                    summary,
                    progress,
                    path,
                    FileStatus::NotUploaded {
                        reason: reason.clone(),
                    },
                );
            }
            if !refused_content(&e) {
                summary.stopped = Some(reason);
            }
        }
    }
}
