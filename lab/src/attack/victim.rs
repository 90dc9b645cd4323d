//! The victim's ciphertext, produced by the real pipeline: a throwaway key,
//! the models transformed for it, an in-process host on a fresh embedded
//! store, and the upload job sending a corpus through the encrypting client.
//! The host is then stopped and its store read back as its operator reads
//! it. Only the scoring ever looks at the key.

use std::time::Instant;

use crate::beir::CorpusDoc;
use crate::eval::corpus_documents;
use crate::side::HostSide;
use eerag_client::chunking::ChunkingOptions;
use eerag_client::client::TextDocument;
use eerag_client::tokenize::EncoderTokenizer;
use eerag_client::upload::{upload_documents, UploadOptions};
use eerag_client::Key;
use eerag_core::models::fetch::ModelsDir;
use eerag_store::store::Store;
use eerag_store::EdgeStore;

use super::{secs, AttackError, Result};

const COLLECTION: &str = "victim";

/// One chunk as the store holds it.
#[derive(Clone, Debug)]
pub struct StoredChunk {
    /// Encrypted encoder ids (what the keyword index holds too).
    pub encoder_ids: Vec<u32>,
    /// Encrypted generator ids.
    pub generator_ids: Vec<u32>,
    /// The stored (rotated) embedding.
    pub vector: Vec<f32>,
}

/// What the store holds after the upload, and the key that made it.
pub struct Victim {
    /// The victim's key: for scoring only, never given to an attack.
    pub key: Key,
    /// Every stored chunk, in write order.
    pub chunks: Vec<StoredChunk>,
    /// Documents uploaded (the first ones of the corpus given).
    pub documents: usize,
    /// Seconds the upload took (the host embeds every chunk).
    pub ingest_seconds: f64,
}

impl Victim {
    /// Encrypted encoder tokens stored.
    pub fn encoder_tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.encoder_ids.len()).sum()
    }

    /// Encrypted generator tokens stored.
    pub fn generator_tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.generator_ids.len()).sum()
    }
}

/// How much of a corpus to take.
#[derive(Clone, Copy, Debug)]
pub enum Amount {
    /// Documents until their chunks hold this many encoder tokens.
    Tokens(usize),
    /// Documents until they make this many chunks.
    Chunks(usize),
}

/// Documents of `corpus`, cut as the upload job cuts them, in order, until
/// they reach `amount` (or all of them), and how many corpus entries that
/// used up.
pub fn documents_up_to(
    corpus: &[CorpusDoc],
    tokenizer: &EncoderTokenizer,
    chunking: &ChunkingOptions,
    amount: Amount,
) -> Result<(Vec<TextDocument>, usize)> {
    let mut taken = Vec::new();
    let (mut tokens, mut chunks) = (0usize, 0usize);
    let reached = |tokens: usize, chunks: usize| match amount {
        Amount::Tokens(n) => tokens >= n,
        Amount::Chunks(n) => chunks >= n,
    };
    // Cut one document at a time so a small amount does not tokenize a
    // whole corpus.
    for (used, doc) in corpus.iter().enumerate() {
        if reached(tokens, chunks) {
            return Ok((taken, used));
        }
        for doc in corpus_documents(std::slice::from_ref(doc), tokenizer, chunking) {
            for chunk in &doc.chunks {
                tokens += tokenizer.encode(&chunk.text)?.len();
            }
            chunks += doc.chunks.len();
            taken.push(doc);
        }
    }
    Ok((taken, corpus.len()))
}

/// Uploads `docs` under a fresh key through the real pipeline and reads the
/// store back.
pub fn ingest(
    models: &ModelsDir,
    docs: Vec<TextDocument>,
    progress: &mut dyn FnMut(&str),
) -> Result<Victim> {
    if docs.is_empty() {
        return Err(AttackError::Invalid("no documents to upload".into()));
    }
    let key = Key::generate()?;
    let side = HostSide::start(&key, models)?;
    let count = docs.len();
    progress(&format!(
        "uploading {count} documents under a throwaway key ({} chunks)",
        docs.iter().map(|d| d.chunks.len()).sum::<usize>()
    ));
    side.client.create_collection(COLLECTION)?;
    let started = Instant::now();
    let summary = upload_documents(
        &side.client,
        COLLECTION,
        docs,
        &UploadOptions::default(),
        |_| {},
    )?;
    if !summary.complete() {
        return Err(AttackError::Invalid(format!(
            "the corpus did not upload: {}",
            summary.stopped.unwrap_or_default()
        )));
    }
    let ingest_seconds = secs(started);
    let (_dir, data) = side.stop()?;
    let (store, _) = EdgeStore::open(&data)?;
    // The operator sees every collection; the host names them
    // `<tenant>.<name>`.
    let collection = store
        .collections()?
        .into_iter()
        .find(|c| c.meta().name.ends_with(&format!(".{COLLECTION}")))
        .ok_or_else(|| {
            AttackError::Invalid("the victim's collection is not in the store".into())
        })?;
    let mut stored = Vec::new();
    collection.scan_chunks(None, &mut |chunk, vector| {
        stored.push((chunk.seq, chunk.chunk_id, chunk, vector));
        Ok(())
    })?;
    stored.sort_by_key(|s| (s.0, s.1));
    let chunks = stored
        .into_iter()
        .map(|(_, _, c, vector)| StoredChunk {
            encoder_ids: c.encoder_ids.ids().to_vec(),
            generator_ids: c.generator_ids.ids().to_vec(),
            vector,
        })
        .collect();
    progress(&format!(
        "  stored in {ingest_seconds:.1} s; read back from the store"
    ));
    Ok(Victim {
        key,
        chunks,
        documents: summary.uploaded,
        ingest_seconds,
    })
}
