//! Search latency as the corpus grows (1k, 10k, 100k chunks …), encrypted vs
//! plaintext, side by side.
//!
//! Embedding 100k real chunks takes hours on 2 cores, so the corpus is
//! synthetic: chunks of Zipf-distributed encoder ids (BERT's vocabulary is
//! roughly frequency-ordered from id 1996, so common ids behave like common
//! words), random generator ids and sealed-metadata-sized payloads, and random
//! unit vectors. It is drawn once in the plaintext space and written to each
//! side's store through the real [`Store`] as that side's client would have
//! sent it: ids through the key's permutations, vectors through its rotation.
//! The queries are real text, encrypted by each side's real client and sent
//! over HTTP to a real host, so every timed search is the full path: request,
//! query embedding, dense and/or BM25 retrieval, payload fetch, response.

use std::collections::HashMap;
use std::time::Instant;

use eerag_client::cipher::{ClientCipher, ModelShape};
use eerag_client::tokenize::{EncoderTokenizer, GeneratorTokenizer};
use eerag_client::Key;
use eerag_core::models::fetch::ModelsDir;
use eerag_core::wire::SearchMode;
use eerag_store::ranking::compare_rankings_with_floor;
use eerag_store::store::{NewChunk, NewDocument, Store, StoreError};
use eerag_store::StoreSpec;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal, Zipf};

use crate::side::{HostSide, SideError};

/// Errors of the scale benchmark.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("{0}")]
    Side(#[from] SideError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("model files: {0}")]
    Models(#[from] eerag_core::EeError),
    #[error("client: {0}")]
    Client(#[from] eerag_client::client::ClientError),
    #[error("host: {0}")]
    Host(#[from] eerag_remote::RemoteError),
    #[error(
        "{mode:?} rankings of the two pipelines differ at {chunks} chunks for {query:?}: {why}"
    )]
    Rankings {
        mode: SearchMode,
        chunks: usize,
        query: String,
        why: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    /// Corpus sizes in chunks, each rounded up to whole documents.
    pub sizes: Vec<usize>,
    /// Timed searches per mode, size and side.
    pub searches: usize,
    /// Encoder ids per synthetic chunk ([CLS] and [SEP] included).
    pub chunk_tokens: usize,
    /// Seed of the synthetic corpus.
    pub seed: u64,
    /// Compare stores instead of keys: both sides use one throwaway key,
    /// side 0 the embedded store, side 1 this one (a Qdrant server, say).
    pub compare_store: Option<StoreSpec>,
}

impl ScaleOptions {
    /// What the two sides are called in reports.
    pub fn labels(&self) -> [&'static str; 2] {
        if self.compare_store.is_some() {
            ["embedded", "server"]
        } else {
            ["plaintext", "encrypted"]
        }
    }
}

impl Default for ScaleOptions {
    fn default() -> Self {
        Self {
            sizes: vec![1_000, 10_000, 100_000],
            searches: 200,
            chunk_tokens: 192,
            seed: 7,
            compare_store: None,
        }
    }
}

/// Chunks per synthetic document (documents are written whole).
pub const CHUNKS_PER_DOCUMENT: usize = 8;
/// Documents per store write: one flush and one keyword commit each.
const DOCUMENTS_PER_WRITE: usize = 128;
/// Generator ids per chunk, about what 192 encoder tokens of English become.
const GENERATOR_TOKENS: usize = 180;
/// Sealed metadata bytes per chunk, about what `eerag upload` seals.
const METADATA_BYTES: usize = 400;
/// Hits per search.
pub const K: usize = 10;
/// The modes measured, in report order.
pub const MODES: [SearchMode; 3] = [SearchMode::Dense, SearchMode::Keyword, SearchMode::Hybrid];

/// Latency samples (seconds) of one mode at one size, per side (with
/// [`ScaleOptions::compare_store`], `plaintext` is the embedded store's side
/// and `encrypted` the other store's).
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    pub plaintext: Vec<f64>,
    pub encrypted: Vec<f64>,
}

/// Everything measured at one corpus size.
#[derive(Clone, Debug)]
pub struct SizeResult {
    pub chunks: usize,
    /// Seconds to write the corpus into the store (vectors precomputed), per
    /// side: plaintext, encrypted.
    pub write_secs: [f64; 2],
    /// Search latencies per mode, in [`MODES`] order.
    pub search: Vec<Latencies>,
    /// Searches whose rankings were compared (every one), all equal up to
    /// near-ties or the run fails (comparing stores: dense ones only).
    pub rankings_compared: usize,
    /// Per mode, the share of the two sides' top-k hits they have in common
    /// (overlap@k; 1.0 when rankings are equal).
    pub overlap: Vec<f64>,
}

/// The `p` quantile (nearest rank) of `xs`.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    let i = ((xs.len() as f64 - 1.0) * p).round() as usize;
    xs[i.min(xs.len().saturating_sub(1))]
}

/// The synthetic plaintext corpus, drawn batch by batch from a seed so both
/// sides get the same one without holding it all in memory twice.
struct Synthetic {
    seed: u64,
    shape: ModelShape,
    chunk_tokens: usize,
    zipf: Zipf<f64>,
}

/// BERT's [CLS], [SEP] and the first id of its ordinary word pieces.
const CLS: u32 = 101;
const SEP: u32 = 102;
const FIRST_WORD_ID: u32 = 1996;

impl Synthetic {
    fn new(seed: u64, shape: ModelShape, chunk_tokens: usize) -> Result<Self, ScaleError> {
        let words = shape
            .encoder_vocab
            .checked_sub(FIRST_WORD_ID as usize)
            .filter(|&n| n > 0)
            .ok_or_else(|| ScaleError::Invalid("encoder vocabulary too small".into()))?;
        if chunk_tokens < 3 {
            return Err(ScaleError::Invalid(
                "--chunk-tokens must be at least 3".into(),
            ));
        }
        let zipf = Zipf::new(words as f64, 1.07)
            .map_err(|e| ScaleError::Invalid(format!("Zipf distribution: {e}")))?;
        Ok(Self {
            seed,
            shape,
            chunk_tokens,
            zipf,
        })
    }

    /// Plaintext documents `first..first + count`, with the ids `cipher`'s
    /// client would give them (keyed, so each key has other chunk ids).
    fn documents(&self, cipher: &ClientCipher, first: usize, count: usize) -> Vec<NewDocument> {
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed ^ (first as u64).rotate_left(32));
        (first..first + count)
            .map(|d| NewDocument {
                doc_id: synthetic_doc_id(cipher, d),
                content_hash: format!("{:064x}", d),
                chunks: (0..CHUNKS_PER_DOCUMENT)
                    .map(|_| self.chunk(&mut rng))
                    .collect(),
            })
            .collect()
    }

    fn chunk(&self, rng: &mut ChaCha20Rng) -> NewChunk {
        let mut encoder = Vec::with_capacity(self.chunk_tokens);
        encoder.push(CLS);
        for _ in 2..self.chunk_tokens {
            let rank = self.zipf.sample(rng) as u32; // 1-based
            encoder.push(FIRST_WORD_ID + rank - 1);
        }
        encoder.push(SEP);
        let generator: Vec<u32> = (0..GENERATOR_TOKENS)
            .map(|_| rng.random_range(0..self.shape.generator_vocab as u32))
            .collect();
        let mut metadata = vec![0u8; METADATA_BYTES];
        rng.fill(&mut metadata[..]);
        let mut vector: Vec<f32> = (0..self.shape.embedding_dim)
            .map(|_| StandardNormal.sample(rng))
            .collect();
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        vector.iter_mut().for_each(|x| *x /= norm);
        NewChunk {
            // The identity key's ids: the plaintext, until `encrypt`.
            encoder_ids: eerag_core::EncEncoderIds::new(Key::identity().id(), encoder),
            generator_ids: eerag_core::EncGeneratorIds::new(Key::identity().id(), generator),
            metadata,
            vector,
            seq: None,
        }
    }
}

/// The keyed document id of synthetic document `d` under a key.
fn synthetic_doc_id(cipher: &ClientCipher, d: usize) -> String {
    cipher.document_id(format!("synthetic document {d}").as_bytes())
}

/// What the side's client would have sent for a plaintext chunk.
fn encrypt(cipher: &ClientCipher, mut doc: NewDocument) -> Result<NewDocument, ScaleError> {
    for chunk in &mut doc.chunks {
        chunk.encoder_ids = cipher.encrypt_encoder(chunk.encoder_ids.ids())?;
        chunk.generator_ids = cipher.encrypt_generator(chunk.generator_ids.ids())?;
        chunk.vector = cipher.rotation().rotate(&chunk.vector);
    }
    Ok(doc)
}

/// Writes `documents` synthetic documents into a new collection of `store`
/// as `key`'s client would have; returns the seconds the store took.
fn seed_store(
    store: &dyn Store,
    collection: &str,
    key: &Key,
    corpus: &Synthetic,
    documents: usize,
) -> Result<f64, ScaleError> {
    let cipher = ClientCipher::new(key, corpus.shape);
    let c = store.create_collection(collection, key.id(), corpus.shape.embedding_dim)?;
    let mut secs = 0.0;
    let mut first = 0;
    while first < documents {
        let count = DOCUMENTS_PER_WRITE.min(documents - first);
        let docs = corpus
            .documents(&cipher, first, count)
            .into_iter()
            .map(|d| encrypt(&cipher, d))
            .collect::<Result<Vec<_>, _>>()?;
        let t = Instant::now();
        c.put_documents(&docs)?;
        secs += t.elapsed().as_secs_f64();
        first += count;
    }
    // What a long-running host's optimiser would have done by now.
    c.optimize()?;
    Ok(secs)
}

/// The encoder's embedding dimension, from its `config.json`.
fn encoder_dim(models: &ModelsDir) -> Result<usize, ScaleError> {
    let path = models
        .encoder_dir()
        .join(eerag_core::models::encoder::CONFIG_FILE);
    let config: serde_json::Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| ScaleError::Invalid(format!("cannot read {}", path.display())))?;
    config["hidden_size"]
        .as_u64()
        .map(|d| d as usize)
        .ok_or_else(|| ScaleError::Invalid(format!("no hidden_size in {}", path.display())))
}

/// Runs the benchmark: for each size, two hosts (the identity key's and a
/// throwaway key's) on stores holding the same synthetic corpus; every query
/// in every mode on both, alternating which goes first; every pair of
/// rankings compared. `progress` gets a line per step.
pub fn run(
    models: &ModelsDir,
    options: &ScaleOptions,
    queries: &[String],
    mut progress: impl FnMut(&str),
) -> Result<Vec<SizeResult>, ScaleError> {
    if options.sizes.is_empty() || options.searches == 0 || queries.is_empty() {
        return Err(ScaleError::Invalid(
            "need at least one size, one search and one query".into(),
        ));
    }
    let encoder_tokenizer = EncoderTokenizer::from_model_dir(&models.encoder_dir())?;
    let generator_tokenizer = GeneratorTokenizer::from_gguf(&models.generator_gguf())?;
    let shape = ModelShape {
        encoder_vocab: encoder_tokenizer.vocab_size(),
        embedding_dim: encoder_dim(models)?,
        generator_vocab: generator_tokenizer.vocab_size(),
    };
    let corpus = Synthetic::new(options.seed, shape, options.chunk_tokens)?;
    let comparing = options.compare_store.is_some();
    let labels = options.labels();
    let keys = if comparing {
        let secret: [u8; 32] = rand::random();
        [Key::from_secret(secret), Key::from_secret(secret)]
    } else {
        [Key::identity(), Key::generate()?]
    };
    let collection = "scale";
    let mut results = Vec::new();
    for &size in &options.sizes {
        let documents = size.div_ceil(CHUNKS_PER_DOCUMENT).max(1);
        let chunks = documents * CHUNKS_PER_DOCUMENT;
        let mut write_secs = [0.0; 2];
        let mut sides: [Option<HostSide>; 2] = [None, None];
        // Alternate which store is written first, as the searches do.
        let first = results.len() % 2;
        for s in [first, 1 - first] {
            let key = &keys[s];
            let store = if s == 1 {
                options.compare_store.clone()
            } else {
                None
            };
            let side = HostSide::start_seeded_on(key, models, store, |store| {
                // A collection left by an interrupted run of this bench.
                let _ = store
                    .delete_collection(&format!("{}.{collection}", eerag_host::auth::LOCAL_TENANT));
                write_secs[s] = seed_store(
                    store,
                    &format!("{}.{collection}", eerag_host::auth::LOCAL_TENANT),
                    key,
                    &corpus,
                    documents,
                )?;
                Ok::<(), ScaleError>(())
            })?;
            progress(&format!(
                "{chunks} chunks written to the {} store in {:.1} s",
                labels[s], write_secs[s]
            ));
            sides[s] = Some(side);
        }
        let sides = sides.map(|s| s.expect("both sides started"));

        // Hits are compared as (document number, chunk index): chunk ids
        // are keyed, so they differ between the sides.
        let numbers: [HashMap<String, usize>; 2] = [0, 1].map(|s| {
            let cipher = ClientCipher::new(&keys[s], shape);
            (0..documents)
                .map(|d| (synthetic_doc_id(&cipher, d), d))
                .collect()
        });
        // One untimed pass: the first searches of a fresh host are slower.
        for (s, side) in sides.iter().enumerate() {
            for query in queries {
                for &mode in &MODES {
                    let request = side.client.encrypt_query(query, K, mode)?;
                    side.client.host().search(collection, &request)?;
                }
            }
            progress(&format!("warmed up the {} host", labels[s]));
        }
        let mut search = vec![Latencies::default(); MODES.len()];
        let mut compared = 0;
        let mut shared = vec![0usize; MODES.len()];
        let mut returned = vec![0usize; MODES.len()];
        for (m, &mode) in MODES.iter().enumerate() {
            for i in 0..options.searches {
                let query = &queries[i % queries.len()];
                let order = [i % 2, 1 - i % 2];
                let mut ranked: [Vec<(String, f32)>; 2] = Default::default();
                for &s in &order {
                    let client = &sides[s].client;
                    let request = client.encrypt_query(query, K, mode)?;
                    let t = Instant::now();
                    let hits = client.host().search(collection, &request)?;
                    let secs = t.elapsed().as_secs_f64();
                    if s == 0 {
                        search[m].plaintext.push(secs);
                    } else {
                        search[m].encrypted.push(secs);
                    }
                    ranked[s] = hits
                        .into_iter()
                        .map(|h| {
                            let d = numbers[s].get(&h.doc_id).copied().unwrap_or(usize::MAX);
                            (format!("{d}#{}", h.index), h.score)
                        })
                        .collect();
                }
                shared[m] += ranked[0]
                    .iter()
                    .filter(|a| ranked[1].iter().any(|b| b.0 == a.0))
                    .count();
                returned[m] += ranked[0].len().max(ranked[1].len());
                // Stores score BM25 alike but not identically (see the
                // Qdrant backend), so across stores only dense must agree.
                if !comparing || mode == SearchMode::Dense {
                    let floor = if mode == SearchMode::Dense { 1.0 } else { 0.0 };
                    compare_rankings_with_floor(&ranked[0], &ranked[1], 1e-5, floor).map_err(
                        |why| ScaleError::Rankings {
                            mode,
                            chunks,
                            query: query.clone(),
                            why,
                        },
                    )?;
                    compared += 1;
                }
            }
            progress(&format!(
                "{chunks} chunks, {mode:?}: p50 {:.1} ms {}, {:.1} ms {}",
                percentile(&search[m].plaintext, 0.5) * 1e3,
                labels[0],
                percentile(&search[m].encrypted, 0.5) * 1e3,
                labels[1],
            ));
        }
        for side in sides {
            side.server
                .stop()
                .map_err(|e| ScaleError::Invalid(format!("stopping a host: {e}")))?;
        }
        if let Some(spec) = &options.compare_store {
            // A server outlives the run: leave nothing on it.
            let (store, _) = spec.open()?;
            store.delete_collection(&format!("{}.{collection}", eerag_host::auth::LOCAL_TENANT))?;
        }
        results.push(SizeResult {
            chunks,
            write_secs,
            search,
            rankings_compared: compared,
            overlap: shared
                .iter()
                .zip(&returned)
                .map(|(&s, &r)| if r == 0 { 1.0 } else { s as f64 / r as f64 })
                .collect(),
        });
    }
    Ok(results)
}
