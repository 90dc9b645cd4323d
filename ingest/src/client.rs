//! The client side of the API: tokenize, encrypt, call the host, decrypt.
//! Plaintext and the key live here and never leave: the host gets ids under
//! the secret permutations and sealed metadata.

use crate::cipher::{ClientCipher, ModelShape};
use crate::tokenize::{EncoderTokenizer, GeneratorTokenizer};
use crate::Key;
use eerag_core::models::fetch::ModelsDir;
use eerag_core::sampling::Sampling;
use eerag_core::wire::{
    AnswerRequest, AnswerSummary, ChunkUpload, CollectionInfo, DocumentUpload, EncryptedQuestion,
    PromptTemplate, SearchMode, SearchRequest, UpsertRequest, UpsertResponse,
};
use eerag_core::EeError;
use serde::{Deserialize, Serialize};

use std::path::Path;

use crate::chunking::{chunk_text, ChunkingOptions, TextChunk};
use crate::extract::{extract_file, ExtractError, Extracted};
use eerag_remote::{HostClient, RemoteError};

/// Errors of the encrypting client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Crypto(#[from] EeError),
    #[error("{0}")]
    Mismatch(String),
}

/// Result alias of the encrypting client.
pub type Result<T> = std::result::Result<T, ClientError>;

/// Characters of a title kept (a title is sealed into every chunk).
pub const MAX_TITLE_CHARS: usize = 200;

/// Characters of a chunk kept in its sealed metadata as a preview.
pub const PREVIEW_CHARS: usize = 200;

/// What the client seals into each chunk's metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkMetadata {
    /// The file the chunk came from, as the user named it.
    pub path: String,
    /// The document's title (first heading, HTML title, or file name).
    pub title: String,
    /// The chunk's index in the document, and the document's chunk count.
    pub chunk: u32,
    pub chunks: u32,
    /// Byte offsets of the chunk in the document's normalised text.
    pub start: u64,
    pub end: u64,
    /// The chunk's first [`PREVIEW_CHARS`] characters.
    pub preview: String,
}

/// A document to upload: its normalised text and the chunks cut from it.
#[derive(Clone, Debug)]
pub struct TextDocument {
    /// Where it came from, as the user named it.
    pub path: String,
    pub title: String,
    /// The whole normalised text: the document id is its keyed hash.
    pub text: String,
    pub chunks: Vec<TextChunk>,
    /// How it was cut ([`crate::chunking::ChunkingOptions::tag`]): part of
    /// the content hash, so re-cutting replaces the old chunks.
    pub chunking: String,
}

impl TextDocument {
    /// A document made of ready-cut chunks of text, joined by blank lines;
    /// its path is its title.
    pub fn from_chunks(title: impl Into<String>, chunks: Vec<String>) -> Self {
        let mut text = String::new();
        let mut cut = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            let start = text.len();
            text.push_str(&chunk);
            cut.push(TextChunk {
                start,
                end: text.len(),
                text: chunk,
            });
        }
        let title = title.into();
        Self {
            path: title.clone(),
            title,
            text,
            chunks: cut,
            chunking: "given".into(),
        }
    }

    /// Reads, normalises and cuts one file.
    pub fn from_file(
        path: &Path,
        shown_as: &str,
        tokenizer: &EncoderTokenizer,
        options: &ChunkingOptions,
    ) -> std::result::Result<Self, ExtractError> {
        let extracted = extract_file(path)?;
        Self::from_text(shown_as, extracted, tokenizer, options)
    }

    /// Cuts extracted text into a document.
    pub fn from_text(
        shown_as: &str,
        extracted: Extracted,
        tokenizer: &EncoderTokenizer,
        options: &ChunkingOptions,
    ) -> std::result::Result<Self, ExtractError> {
        let chunks = chunk_text(tokenizer, &extracted.text, options)
            .map_err(|e| ExtractError::Tokenize(e.to_string()))?;
        if chunks.is_empty() {
            return Err(ExtractError::Empty);
        }
        Ok(Self {
            path: shown_as.to_string(),
            title: extracted.title.chars().take(MAX_TITLE_CHARS).collect(),
            text: extracted.text,
            chunks,
            chunking: options.tag(),
        })
    }
}

/// A decrypted search hit.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub chunk_id: String,
    pub doc_id: String,
    pub score: f32,
    pub metadata: ChunkMetadata,
    /// The chunk's text, decrypted from its generator ids.
    pub text: String,
}

/// A chunk an answer's prompt held.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub chunk_id: String,
    pub doc_id: String,
    /// Its retrieval score (mode-dependent, see [`Hit::score`]).
    pub score: f32,
    pub metadata: ChunkMetadata,
}

/// A decrypted answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub text: String,
    /// Plaintext generator ids of the answer.
    pub ids: Vec<u32>,
    /// The same ids as the host sent them (what the host saw).
    pub encrypted_ids: Vec<u32>,
    pub summary: AnswerSummary,
    /// The chunks the prompt held, in prompt order.
    pub sources: Vec<Source>,
}

/// How to ask.
#[derive(Clone, Debug)]
pub struct AskOptions {
    pub k: usize,
    pub mode: SearchMode,
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub system: String,
}

impl Default for AskOptions {
    fn default() -> Self {
        Self {
            k: 3,
            mode: SearchMode::Hybrid,
            max_tokens: 128,
            sampling: Sampling::Greedy,
            system: "You are a helpful assistant. Answer the question using only the context."
                .into(),
        }
    }
}

/// A host client with the key in front of it.
pub struct EncryptedClient {
    host: HostClient,
    cipher: ClientCipher,
    encoder_tokenizer: EncoderTokenizer,
    generator_tokenizer: GeneratorTokenizer,
}

impl EncryptedClient {
    /// Connects to `host` with `key` and the public tokenizers in `models`,
    /// checking the host serves models transformed for this key.
    pub fn connect(host: HostClient, key: &Key, models: &ModelsDir) -> Result<Self> {
        let health = host.health()?;
        if health.key_id != key.id() && !health.key_ids.contains(&key.id()) {
            return Err(ClientError::Mismatch(format!(
                "the host serves models transformed for key {}, this key is {}",
                health.key_id,
                key.id()
            )));
        }
        let encoder_tokenizer = EncoderTokenizer::from_model_dir(&models.encoder_dir())?;
        let generator_tokenizer = GeneratorTokenizer::from_gguf(&models.generator_gguf())?;
        if encoder_tokenizer.vocab_size() != health.encoder_vocab
            || generator_tokenizer.vocab_size() != health.generator_vocab
        {
            return Err(ClientError::Mismatch(
                "the host's models do not match the local tokenizers".into(),
            ));
        }
        let cipher = ClientCipher::new(
            key,
            ModelShape {
                encoder_vocab: health.encoder_vocab,
                embedding_dim: health.dim,
                generator_vocab: health.generator_vocab,
            },
        );
        Ok(Self {
            host,
            cipher,
            encoder_tokenizer,
            generator_tokenizer,
        })
    }

    /// The ciphertext-only client underneath.
    pub fn host(&self) -> &HostClient {
        &self.host
    }

    /// The expanded key.
    pub fn cipher(&self) -> &ClientCipher {
        &self.cipher
    }

    /// The encoder's tokenizer (for cutting documents into chunks).
    pub fn encoder_tokenizer(&self) -> &EncoderTokenizer {
        &self.encoder_tokenizer
    }

    /// The generator's tokenizer.
    pub fn generator_tokenizer(&self) -> &GeneratorTokenizer {
        &self.generator_tokenizer
    }

    /// Checks that `name` exists and is bound to this key; creates it when
    /// missing. A collection of another key is an error before anything is
    /// sent. Returns whether it was created.
    pub fn ensure_collection(&self, name: &str) -> Result<bool> {
        match self.collection(name)? {
            Some(_) => Ok(false),
            None => {
                self.create_collection(name)?;
                Ok(true)
            }
        }
    }

    /// The collection `name`, checked to be bound to this key; `None` when
    /// the host has no such collection.
    pub fn collection(&self, name: &str) -> Result<Option<CollectionInfo>> {
        let found = self
            .host
            .list_collections()?
            .into_iter()
            .find(|c| c.name == name);
        match found {
            Some(c) if c.key_id != self.cipher.key_id() => Err(ClientError::Mismatch(format!(
                "collection {name:?} is encrypted under key {}, but this key is {}: use the key it was created with",
                c.key_id,
                self.cipher.key_id()
            ))),
            other => Ok(other),
        }
    }

    /// Like [`Self::collection`], but a missing collection is an error.
    pub fn require_collection(&self, name: &str) -> Result<CollectionInfo> {
        self.collection(name)?.ok_or_else(|| {
            ClientError::Mismatch(format!(
                "the host has no collection {name:?}: upload documents into it first"
            ))
        })
    }

    /// Creates a collection bound to this key.
    pub fn create_collection(&self, name: &str) -> Result<()> {
        self.host
            .create_collection(name, Some(self.cipher.key_id()))?;
        Ok(())
    }

    fn seal_context(doc_id: &str, index: u32) -> Vec<u8> {
        format!("{doc_id}/{index}").into_bytes()
    }

    /// The keyed id of a document with this normalised text: the same text
    /// always maps to the same id under one key, and to unrelated ids under
    /// others.
    pub fn document_id(&self, text: &str) -> String {
        self.cipher.document_id(text.as_bytes())
    }

    /// The keyed hash of everything that goes into a document's chunks and
    /// metadata: when it is unchanged the host (and `upload`) skip it.
    pub fn content_hash(&self, doc: &TextDocument) -> String {
        let mut content = Vec::with_capacity(doc.text.len() + 64);
        for part in [&doc.chunking, &doc.path, &doc.title, &doc.text] {
            content.extend_from_slice(&(part.len() as u64).to_le_bytes());
            content.extend_from_slice(part.as_bytes());
        }
        self.cipher.document_id(&content)
    }

    /// Tokenizes and encrypts one document for upload.
    pub fn encrypt_document(&self, doc: &TextDocument) -> Result<DocumentUpload> {
        let doc_id = self.document_id(&doc.text);
        let count = doc.chunks.len() as u32;
        let mut chunks = Vec::with_capacity(doc.chunks.len());
        for (i, chunk) in doc.chunks.iter().enumerate() {
            let index = i as u32;
            let meta = ChunkMetadata {
                path: doc.path.clone(),
                title: doc.title.clone(),
                chunk: index,
                chunks: count,
                start: chunk.start as u64,
                end: chunk.end as u64,
                preview: chunk.text.chars().take(PREVIEW_CHARS).collect(),
            };
            let sealed = self.cipher.metadata().seal(
                &serde_json::to_vec(&meta).expect("metadata serialises"),
                &Self::seal_context(&doc_id, index),
            )?;
            let enc = self.encoder_tokenizer.encode(&chunk.text)?;
            let gen = self.generator_tokenizer.encode(&chunk.text)?;
            chunks.push(ChunkUpload {
                encoder_ids: self.cipher.encrypt_encoder(&enc)?.ids().to_vec(),
                generator_ids: self.cipher.encrypt_generator(&gen)?.ids().to_vec(),
                metadata: sealed,
            });
        }
        Ok(DocumentUpload {
            content_hash: self.content_hash(doc),
            doc_id,
            chunks,
        })
    }

    /// Encrypts documents into one upsert request.
    pub fn encrypt_documents(&self, docs: &[TextDocument]) -> Result<UpsertRequest> {
        Ok(UpsertRequest {
            key_id: self.cipher.key_id(),
            documents: docs
                .iter()
                .map(|d| self.encrypt_document(d))
                .collect::<Result<_>>()?,
        })
    }

    /// Encrypts and uploads documents.
    pub fn upload(&self, collection: &str, docs: &[TextDocument]) -> Result<UpsertResponse> {
        let request = self.encrypt_documents(docs)?;
        Ok(self.host.upsert(collection, &request)?)
    }

    /// Seals a chunk's metadata to its document id and index.
    pub fn seal_metadata(&self, doc_id: &str, index: u32, meta: &ChunkMetadata) -> Result<Vec<u8>> {
        Ok(self.cipher.metadata().seal(
            &serde_json::to_vec(meta).expect("metadata serialises"),
            &Self::seal_context(doc_id, index),
        )?)
    }

    /// Opens a chunk's sealed metadata.
    pub fn open_metadata(&self, doc_id: &str, index: u32, sealed: &[u8]) -> Result<ChunkMetadata> {
        let bytes = self
            .cipher
            .metadata()
            .open(sealed, &Self::seal_context(doc_id, index))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Mismatch(format!("undecodable chunk metadata: {e}")))
    }

    /// The encrypted search request for `query`.
    pub fn encrypt_query(&self, query: &str, k: usize, mode: SearchMode) -> Result<SearchRequest> {
        let ids = self.encoder_tokenizer.encode(query)?;
        Ok(SearchRequest {
            key_id: self.cipher.key_id(),
            query_ids: self.cipher.encrypt_encoder(&ids)?.ids().to_vec(),
            k,
            mode,
        })
    }

    /// Searches and decrypts the hits.
    pub fn search(
        &self,
        collection: &str,
        query: &str,
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<Hit>> {
        let request = self.encrypt_query(query, k, mode)?;
        let hits = self.host.search(collection, &request)?;
        hits.into_iter()
            .map(|h| {
                let ids = self
                    .cipher
                    .decrypt_generator(&eerag_core::EncGeneratorIds::new(
                        self.cipher.key_id(),
                        h.generator_ids,
                    ))?;
                Ok(Hit {
                    metadata: self.open_metadata(&h.doc_id, h.index, &h.metadata)?,
                    text: self.generator_tokenizer.decode(&ids)?,
                    chunk_id: h.chunk_id,
                    doc_id: h.doc_id,
                    score: h.score,
                })
            })
            .collect()
    }

    /// The plaintext stop ids: `<|im_end|>` and the end-of-sequence id.
    fn stop_ids(&self) -> Vec<u32> {
        let tok = &self.generator_tokenizer;
        let mut stop = Vec::new();
        if let Some(id) = tok.special_id("<|im_end|>") {
            stop.push(id);
        }
        if let Some(id) = tok.eos_id() {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
        stop
    }

    /// The encrypted answer request for `question`.
    pub fn encrypt_question(&self, question: &str, options: &AskOptions) -> Result<AnswerRequest> {
        self.encrypt_question_parts(question, question, options)
    }

    /// The encrypted answer request that retrieves with `retrieval_query`
    /// and puts `prompt_question` (e.g. the conversation so far and the
    /// question) into the prompt. The chat template is ChatML, which the
    /// generator's own metadata must name (SmolLM2's does); a model with
    /// another template is refused rather than prompted wrongly.
    pub fn encrypt_question_parts(
        &self,
        retrieval_query: &str,
        prompt_question: &str,
        options: &AskOptions,
    ) -> Result<AnswerRequest> {
        let tok = &self.generator_tokenizer;
        if let Some(template) = tok.chat_template() {
            if !template.contains("<|im_start|>") {
                return Err(ClientError::Mismatch(
                    "the generator's chat template is not ChatML, the only one eerag speaks".into(),
                ));
            }
        }
        let template = chatml_template(tok, &options.system)?;
        let stop = self.stop_ids();
        let enc = |ids: &[u32]| -> Result<Vec<u32>> {
            Ok(self.cipher.encrypt_generator(ids)?.ids().to_vec())
        };
        Ok(AnswerRequest {
            key_id: self.cipher.key_id(),
            question: EncryptedQuestion {
                encoder_ids: self
                    .cipher
                    .encrypt_encoder(&self.encoder_tokenizer.encode(retrieval_query)?)?
                    .ids()
                    .to_vec(),
                generator_ids: enc(&tok.encode(prompt_question)?)?,
            },
            template: PromptTemplate {
                before_context: enc(&template.before_context)?,
                between_chunks: enc(&template.between_chunks)?,
                before_question: enc(&template.before_question)?,
                after_question: enc(&template.after_question)?,
            },
            stop_ids: enc(&stop)?,
            max_tokens: options.max_tokens,
            sampling: options.sampling.clone(),
            k: options.k,
            mode: options.mode,
            stream: true,
        })
    }

    /// Asks a question; `on_text` gets the answer's text as it streams in.
    pub fn ask(
        &self,
        collection: &str,
        question: &str,
        options: &AskOptions,
        on_text: impl FnMut(&str),
    ) -> Result<Answer> {
        let request = self.encrypt_question(question, options)?;
        self.ask_request(collection, &request, on_text)
    }

    /// Sends an encrypted answer request (from [`Self::encrypt_question`] or
    /// [`Self::encrypt_question_parts`]) and decrypts the answer as it
    /// streams; the stop token is not part of the text.
    pub fn ask_request(
        &self,
        collection: &str,
        request: &AnswerRequest,
        mut on_text: impl FnMut(&str),
    ) -> Result<Answer> {
        let stops = self.stop_ids();
        let mut text_ids: Vec<u32> = Vec::new();
        let mut ids: Vec<u32> = Vec::new();
        let mut encrypted_ids: Vec<u32> = Vec::new();
        let mut shown = 0usize;
        let mut failure: Option<EeError> = None;
        let summary = self.host.answer_stream(collection, request, |c| {
            encrypted_ids.push(c);
            match self.cipher.decrypt_generator_id(c) {
                Ok(t) => {
                    ids.push(t);
                    if stops.contains(&t) {
                        return;
                    }
                    text_ids.push(t);
                    // Detokenize the whole answer and show what is new, so
                    // multi-byte characters split across tokens come out whole.
                    if let Ok(text) = self.generator_tokenizer.decode(&text_ids) {
                        if text.len() > shown
                            && text.is_char_boundary(shown)
                            && !text.ends_with('\u{fffd}')
                        {
                            on_text(&text[shown..]);
                            shown = text.len();
                        }
                    }
                }
                Err(e) => failure = Some(e),
            }
        })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        let text = self.generator_tokenizer.decode(&text_ids)?;
        if text.len() > shown && text.is_char_boundary(shown) {
            on_text(&text[shown..]);
        }
        let sources = summary
            .chunks
            .iter()
            .map(|c| {
                Ok(Source {
                    metadata: self.open_metadata(&c.doc_id, c.index, &c.metadata)?,
                    chunk_id: c.chunk_id.clone(),
                    doc_id: c.doc_id.clone(),
                    score: c.score,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Answer {
            text,
            ids,
            encrypted_ids,
            summary,
            sources,
        })
    }
}

/// The plaintext prompt template every `ask` sends (encrypted) around the
/// retrieved chunks and the question: ChatML with `system` as the system
/// prompt. Public knowledge — the attack harness uses it as what a host
/// knows of every request.
pub fn chatml_template(tok: &GeneratorTokenizer, system: &str) -> Result<PromptTemplate> {
    let mut before_context = tok.encode_template("<|im_start|>system\n")?;
    before_context.extend(tok.encode(system)?);
    before_context.extend(tok.encode_template("<|im_end|>\n<|im_start|>user\n")?);
    before_context.extend(tok.encode("Context:\n")?);
    Ok(PromptTemplate {
        before_context,
        between_chunks: tok.encode("\n\n")?,
        before_question: tok.encode("\n\nQuestion: ")?,
        after_question: tok.encode_template("<|im_end|>\n<|im_start|>assistant\n")?,
    })
}
