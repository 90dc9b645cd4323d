//! Jobs that rebuild a collection as a new version through the host's API
//! while the current version serves, then switch to it in one step:
//!
//! - [`reembed`] (the host's operator, no key): the host re-embeds the
//!   stored encrypted ids with another encoder it serves (a new encoder
//!   model), keeping ids, metadata and write order.
//! - `eerag_client::rekey` (the client, with both keys): every document is exported,
//!   decrypted with the old key, encrypted with the new one and uploaded
//!   into a version bound to the new key. The host receives ciphertext and
//!   key ids only, never either key or a mapping between them.
//!
//! Both keep a checkpoint file, so a killed job resumes where it was; every
//! step replaces whole documents, so repeating one is harmless. Writes that
//! reach the current version while a job runs are caught up by a second
//! pass (changed and new documents) and a prune pass (deleted ones) before
//! the switch; the old version is then deleted unless asked to keep it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use eerag_core::wire::{CreateVersionRequest, DocumentSummary, ReembedRequest, VersionInfo};
use serde::{Deserialize, Serialize};

use crate::{HostClient, RemoteError};

/// How long a job waits after a switch before deleting the old version, so
/// requests that resolved the name just before it finish (hosts on a
/// shared Qdrant server see a switch within a second).
pub const SWITCH_GRACE: Duration = Duration::from_secs(2);

/// Catch-up passes before a job gives up on a collection that keeps
/// changing (it can be run again later).
pub const MAX_CATCH_UP_PASSES: u32 = 5;

/// Errors of a rebuild job.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The host refused or could not be reached.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Decrypting or encrypting a document (rekey).
    #[error(transparent)]
    Crypto(#[from] eerag_core::EeError),
    /// The checkpoint file is unreadable or belongs to another job.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// The collection is not as the job expects (a version missing, counts
    /// that differ after the copy).
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
    /// The collection, as clients name it.
    pub collection: String,
    /// The version switched from.
    pub previous_version: u32,
    /// The version switched to.
    pub version: u32,
    /// Whether this run resumed from a checkpoint.
    pub resumed: bool,
    /// Documents written into the new version by this run.
    pub documents_written: u64,
    /// Chunks written into the new version by this run.
    pub chunks_written: u64,
    /// Documents the catch-up passes found changed or new while the job
    /// ran.
    pub documents_caught_up: u64,
    /// Documents the prune pass removed (deleted while the job ran).
    pub documents_removed: u64,
    /// Documents the new version holds at the switch (equal to the old
    /// version's, or the job fails before switching).
    pub documents: u64,
    /// Chunks the new version holds at the switch.
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
    /// Documents done in this phase.
    pub done: u64,
    /// Documents this phase has to do.
    pub total: u64,
}

// The building blocks below are public for the other jobs run through the
// API (the client's rekey, `eerag_client::rekey`).

/// Refuses a checkpoint written by another job.
pub fn same_job(path: &Path, found: &str, expected: &str) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    Err(checkpoint_err(
        path,
        format!("belongs to another job ({found}); remove it or pass another --checkpoint"),
    ))
}

/// A checkpoint error for `path`.
pub fn checkpoint_err(path: &Path, message: impl std::fmt::Display) -> RebuildError {
    RebuildError::Checkpoint {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Every document of a collection (one version of it, `NAME.vN`), paged.
pub fn all_documents(host: &HostClient, name: &str) -> Result<Vec<DocumentSummary>> {
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

/// Version `version` of `collection`.
pub fn version_of(host: &HostClient, collection: &str, version: u32) -> Result<VersionInfo> {
    host.list_versions(collection)?
        .into_iter()
        .find(|v| v.version == version)
        .ok_or_else(|| RebuildError::Mismatch(format!("{collection:?} has no version {version}")))
}

/// The version `collection` currently resolves to.
pub fn current_of(host: &HostClient, collection: &str) -> Result<VersionInfo> {
    host.list_versions(collection)?
        .into_iter()
        .find(|v| v.current)
        .ok_or_else(|| RebuildError::Mismatch(format!("{collection:?} has no current version")))
}

/// Switches from version `from` to `version`; unless the old version is
/// kept, waits until every host resolves the name to the new version, has
/// `carry_over` bring over what reached the old version meanwhile, and
/// deletes it (also when a killed run had switched already).
pub fn switch_and_retire(
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
pub fn adopt_or_create(
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
        eerag_core::fs::write_atomic(path, &serde_json::to_vec_pretty(state).expect("serialises"))
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
