//! JSON types of the host's REST API, shared by the host and its clients.
//!
//! Everything here is ciphertext or public: encrypted token ids (arrays of
//! integers in the transformed models' id spaces), AEAD-sealed metadata
//! (base64), key ids, counts and scores. Host code builds the typed ciphertext
//! wrappers of [`crate::ids`] from these after checking the key id.

use serde::{Deserialize, Serialize};

use crate::ids::KeyId;
use crate::sampling::Sampling;

/// `POST /v1/collections`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCollection {
    /// 1 to 64 characters of `[A-Za-z0-9_-]`.
    pub name: String,
    /// When given, must equal the key id of the host's artifacts: the client
    /// checks it is creating the collection for its own key.
    #[serde(default)]
    pub key_id: Option<KeyId>,
}

/// A collection as the host reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectionInfo {
    pub name: String,
    /// The key every id and vector in the collection is encrypted under.
    pub key_id: KeyId,
    /// Dimension of the stored vectors.
    pub dim: usize,
    /// Number of stored chunks.
    pub chunks: u64,
    /// Which version of the collection serves it: 1 as created, higher once
    /// a re-embedding or key rotation switched to a rebuilt version.
    #[serde(default = "first_version")]
    pub version: u32,
}

fn first_version() -> u32 {
    1
}

/// `POST /v1/collections/{name}/versions`: an empty new version of a
/// collection, to be filled (re-embedded or re-uploaded under a new key)
/// while the current one serves, then switched to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVersionRequest {
    /// The key of the new version [default: the current version's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
    /// SHA-256 of the base encoder to embed it with, one the host serves
    /// for that key [default: the first the host loaded for the key].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
}

/// A version of a collection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The collection's name.
    pub collection: String,
    pub version: u32,
    /// The name that addresses this version itself (`NAME.vN`) in every
    /// collection route: upload into it, list and export its documents.
    pub name: String,
    pub key_id: KeyId,
    /// SHA-256 of the base encoder its vectors come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
    pub dim: usize,
    pub chunks: u64,
    /// Whether it is the version serving the collection's name.
    pub current: bool,
}

/// `GET /v1/collections/{name}/versions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionList {
    pub versions: Vec<VersionInfo>,
}

/// `POST /v1/collections/{name}/versions/{version}/reembed`: one step of a
/// re-embedding. The host re-embeds the stored encrypted ids of a page of
/// the current version's documents with the version's encoder and writes
/// them (ids, metadata and write order unchanged) into the version,
/// skipping documents whose copy there is as new (by write order) or newer.
/// Idempotent, so
/// a job resumes from its last cursor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReembedRequest {
    /// Cursor from the previous step's `next`; absent: from the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Documents to examine in this step.
    pub limit: usize,
    /// Instead: remove from the version the documents the current version
    /// no longer has (deleted while the job ran), one page of the version's
    /// documents per step.
    #[serde(default)]
    pub prune: bool,
    /// The version to re-embed from [default: the current one]. After a
    /// switch, a job catches up from the version it switched away from
    /// into the (now current) new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u32>,
}

/// What one re-embedding step did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReembedResponse {
    /// Documents looked at.
    pub examined: usize,
    /// Documents (and their chunks) re-embedded and written.
    pub documents_written: usize,
    pub chunks_written: usize,
    /// Documents removed (prune steps).
    pub documents_removed: usize,
    /// Cursor of the next step; absent after the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `POST /v1/collections/{name}/switch`: make a version the one the
/// collection's name serves, in one atomic step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    pub version: u32,
}

/// The outcome of a switch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchResponse {
    pub previous: u32,
    pub current: u32,
}

/// `GET /v1/collections`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CollectionList {
    pub collections: Vec<CollectionInfo>,
}

/// `POST /v1/collections/{name}/chunks`: whole documents, each replacing any
/// earlier version of the same document id atomically.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsertRequest {
    /// The key the ids were encrypted under; must match the collection's.
    pub key_id: KeyId,
    pub documents: Vec<DocumentUpload>,
}

/// One document: all of its chunks, in order.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentUpload {
    /// Client-chosen opaque id (e.g. a keyed hash of the content): 1 to 128
    /// characters of `[A-Za-z0-9_.-]`.
    pub doc_id: String,
    /// Opaque hash of the document's content. Re-sending a document with the
    /// same content hash and chunks changes nothing and embeds nothing.
    pub content_hash: String,
    /// The chunks; a chunk's index is its position here.
    pub chunks: Vec<ChunkUpload>,
}

/// One encrypted chunk.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkUpload {
    /// Encrypted encoder ids (embedded and keyword-indexed by the host).
    pub encoder_ids: Vec<u32>,
    /// Encrypted generator ids (spliced into prompts by the host).
    pub generator_ids: Vec<u32>,
    /// AEAD-sealed metadata, opaque to the host.
    #[serde(with = "base64_bytes", default)]
    pub metadata: Vec<u8>,
}

/// What happened to one uploaded document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentStatus {
    /// The document id was new.
    Created,
    /// An earlier version was replaced.
    Replaced,
    /// The same content was already stored: nothing was written.
    Unchanged,
}

/// Per-document outcome of an upsert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocumentResult {
    pub doc_id: String,
    pub chunks: usize,
    pub status: DocumentStatus,
}

/// Reply to an upsert, sent only once every document is durable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpsertResponse {
    pub documents: Vec<DocumentResult>,
    /// Chunks embedded and written (unchanged documents count zero).
    pub chunks_written: usize,
}

/// Reply to a document delete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeleteResponse {
    pub doc_id: String,
    pub deleted_chunks: usize,
}

/// A stored chunk, as exported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredChunk {
    pub chunk_id: String,
    pub index: u32,
    pub encoder_ids: Vec<u32>,
    pub generator_ids: Vec<u32>,
    #[serde(with = "base64_bytes")]
    pub metadata: Vec<u8>,
}

/// `GET /v1/collections/{name}/documents/{doc}/chunks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocumentExport {
    pub doc_id: String,
    pub content_hash: String,
    pub key_id: KeyId,
    pub chunks: Vec<StoredChunk>,
}

/// `GET /v1/collections/{name}/documents`: one page of document ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocumentList {
    pub documents: Vec<DocumentSummary>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A document id and its size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocumentSummary {
    pub doc_id: String,
    pub content_hash: String,
    pub chunks: usize,
    /// Write sequence number of its first chunk (write order; jobs that
    /// rewrite a collection keep it).
    #[serde(default)]
    pub first_seq: u64,
}

/// Which retriever ranks the chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// Cosine similarity of the (rotated) embeddings.
    Dense,
    /// BM25 over the encrypted encoder ids.
    Keyword,
    /// Reciprocal-rank fusion of dense and keyword.
    #[default]
    Hybrid,
}

fn default_k() -> usize {
    10
}

/// `POST /v1/embed`: vectors for encrypted encoder ids, without storing
/// anything. They are in the key's rotated space (the rotation ships in
/// the encoder artifact, so the compute host can undo it: docs/design.md §6).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    pub key_id: KeyId,
    /// Encrypted encoder ids, one sequence per input (at most 256).
    pub inputs: Vec<Vec<u32>>,
}

/// Reply to `POST /v1/embed`, one vector per input, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbedResponse {
    pub vectors: Vec<Vec<f32>>,
}

/// `POST /v1/collections/{name}/search`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub key_id: KeyId,
    /// Encrypted encoder ids of the query.
    pub query_ids: Vec<u32>,
    /// How many chunks to return (1 to 1000, default 10).
    #[serde(default = "default_k")]
    pub k: usize,
    #[serde(default)]
    pub mode: SearchMode,
}

/// One retrieved chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub chunk_id: String,
    pub doc_id: String,
    pub index: u32,
    /// Cosine similarity (dense), BM25 (keyword) or fused RRF score (hybrid).
    pub score: f32,
    pub generator_ids: Vec<u32>,
    #[serde(with = "base64_bytes")]
    pub metadata: Vec<u8>,
}

/// Reply to a search, best hit first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchResponse {
    pub hits: Vec<SearchHit>,
}

/// The encrypted question, tokenized for both models.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptedQuestion {
    /// For retrieval.
    pub encoder_ids: Vec<u32>,
    /// For the prompt.
    pub generator_ids: Vec<u32>,
}

/// The client's chat template, cut around the places the host fills in, each
/// piece tokenized and encrypted by the client. The prompt is
/// `before_context, chunk₁, between_chunks, chunk₂, …, before_question,
/// question, after_question`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTemplate {
    #[serde(default)]
    pub before_context: Vec<u32>,
    #[serde(default)]
    pub between_chunks: Vec<u32>,
    #[serde(default)]
    pub before_question: Vec<u32>,
    #[serde(default)]
    pub after_question: Vec<u32>,
}

fn default_answer_k() -> usize {
    3
}

fn default_max_tokens() -> usize {
    256
}

fn default_stream() -> bool {
    true
}

fn default_sampling() -> Sampling {
    Sampling::Greedy
}

/// `POST /v1/collections/{name}/answer`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerRequest {
    pub key_id: KeyId,
    pub question: EncryptedQuestion,
    pub template: PromptTemplate,
    /// Encrypted generator ids that end the answer (e.g. `<|im_end|>`).
    #[serde(default)]
    pub stop_ids: Vec<u32>,
    /// Upper bound on generated tokens (default 256).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default = "default_sampling")]
    pub sampling: Sampling,
    /// Chunks to retrieve into the prompt (default 3; 0 answers without context).
    #[serde(default = "default_answer_k")]
    pub k: usize,
    #[serde(default)]
    pub mode: SearchMode,
    /// Server-sent events (default) or one JSON reply.
    #[serde(default = "default_stream")]
    pub stream: bool,
}

/// A chunk the answer's prompt contained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsedChunk {
    pub chunk_id: String,
    pub doc_id: String,
    pub index: u32,
    pub score: f32,
    #[serde(with = "base64_bytes")]
    pub metadata: Vec<u8>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop id was generated (and is included).
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The model's context window filled up.
    ContextFull,
}

/// The end of an answer: the `done` event of a stream, and the tail of a
/// non-streamed reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnswerSummary {
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// The chunks spliced into the prompt, in prompt order.
    pub chunks: Vec<UsedChunk>,
}

/// A non-streamed answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnswerResponse {
    /// Encrypted generator ids of the answer.
    pub generator_ids: Vec<u32>,
    #[serde(flatten)]
    pub summary: AnswerSummary,
}

/// Data of a streamed `token` event: the next encrypted generator id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEvent {
    pub id: u32,
}

/// Every error reply: a stable machine-readable code and a message that
/// never contains plaintext (the host has none) or token ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// See [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// `GET /health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"`.
    pub status: String,
    /// The key id of the host's (first) artifacts.
    pub key_id: KeyId,
    /// Every key the host serves models for (more than one during a key
    /// rotation).
    #[serde(default)]
    pub key_ids: Vec<KeyId>,
    pub encoder_vocab: usize,
    pub generator_vocab: usize,
    pub dim: usize,
    /// Longest encoder input (tokens).
    pub encoder_max_tokens: usize,
    /// Generator context window (tokens).
    pub generator_context: usize,
    pub version: String,
}

/// Bytes as standard base64 in JSON.
pub mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises bytes as a base64 string.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    /// Parses a base64 string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("metadata must be standard base64"))
    }
}
