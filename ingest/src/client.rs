//! The client side of the API: tokenize, encrypt, call the host, decrypt.
//! Plaintext and the key live here and never leave: the host gets ids under
//! the secret permutations and sealed metadata.

use eerag_shared::client::{ClientCipher, ModelShape};
use eerag_shared::models::fetch::ModelsDir;
use eerag_shared::sampling::Sampling;
use eerag_shared::tokenize::{EncoderTokenizer, GeneratorTokenizer};
use eerag_shared::wire::{
    AnswerRequest, AnswerSummary, ChunkUpload, DocumentUpload, EncryptedQuestion, PromptTemplate,
    SearchMode, SearchRequest, UpsertRequest, UpsertResponse,
};
use eerag_shared::{EeError, Key};
use serde::{Deserialize, Serialize};

use crate::remote::{HostClient, RemoteError};

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

/// What the client seals into each chunk's metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkMetadata {
    /// The document's title or file name.
    pub title: String,
    /// The chunk's index in the document.
    pub chunk: u32,
    /// The chunk's text.
    pub text: String,
}

/// A document to upload, already cut into chunks of text.
#[derive(Clone, Debug)]
pub struct TextDocument {
    pub title: String,
    pub chunks: Vec<String>,
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

/// A decrypted answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub text: String,
    /// Plaintext generator ids of the answer.
    pub ids: Vec<u32>,
    pub summary: AnswerSummary,
    /// Metadata of the chunks the prompt held, in prompt order.
    pub sources: Vec<ChunkMetadata>,
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
        if health.key_id != key.id() {
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

    /// Creates a collection bound to this key.
    pub fn create_collection(&self, name: &str) -> Result<()> {
        self.host
            .create_collection(name, Some(self.cipher.key_id()))?;
        Ok(())
    }

    fn seal_context(doc_id: &str, index: u32) -> Vec<u8> {
        format!("{doc_id}/{index}").into_bytes()
    }

    /// Encrypts documents into an upsert request. The document id is a keyed
    /// hash of the title and chunks, so the same document maps to the same id.
    pub fn encrypt_documents(&self, docs: &[TextDocument]) -> Result<UpsertRequest> {
        let mut documents = Vec::with_capacity(docs.len());
        for doc in docs {
            let mut content = doc.title.clone().into_bytes();
            for c in &doc.chunks {
                content.push(0);
                content.extend_from_slice(c.as_bytes());
            }
            let doc_id = self.cipher.document_id(&content);
            let mut chunks = Vec::with_capacity(doc.chunks.len());
            for (i, text) in doc.chunks.iter().enumerate() {
                let index = i as u32;
                let meta = ChunkMetadata {
                    title: doc.title.clone(),
                    chunk: index,
                    text: text.clone(),
                };
                let sealed = self.cipher.metadata().seal(
                    &serde_json::to_vec(&meta).expect("metadata serialises"),
                    &Self::seal_context(&doc_id, index),
                )?;
                let enc = self.encoder_tokenizer.encode(text)?;
                let gen = self.generator_tokenizer.encode(text)?;
                chunks.push(ChunkUpload {
                    encoder_ids: self.cipher.encrypt_encoder(&enc)?.ids().to_vec(),
                    generator_ids: self.cipher.encrypt_generator(&gen)?.ids().to_vec(),
                    metadata: sealed,
                });
            }
            documents.push(DocumentUpload {
                content_hash: doc_id.clone(),
                doc_id,
                chunks,
            });
        }
        Ok(UpsertRequest {
            key_id: self.cipher.key_id(),
            documents,
        })
    }

    /// Encrypts and uploads documents.
    pub fn upload(&self, collection: &str, docs: &[TextDocument]) -> Result<UpsertResponse> {
        let request = self.encrypt_documents(docs)?;
        Ok(self.host.upsert(collection, &request)?)
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
                    .decrypt_generator(&eerag_shared::EncGeneratorIds::new(
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

    /// The encrypted answer request for `question`: the ChatML template of
    /// SmolLM2-style instruct models, cut around the context and question.
    pub fn encrypt_question(&self, question: &str, options: &AskOptions) -> Result<AnswerRequest> {
        let tok = &self.generator_tokenizer;
        let mut before_context = tok.encode_template("<|im_start|>system\n")?;
        before_context.extend(tok.encode(&options.system)?);
        before_context.extend(tok.encode_template("<|im_end|>\n<|im_start|>user\n")?);
        before_context.extend(tok.encode("Context:\n")?);
        let template = PromptTemplate {
            before_context,
            between_chunks: tok.encode("\n\n")?,
            before_question: tok.encode("\n\nQuestion: ")?,
            after_question: tok.encode_template("<|im_end|>\n<|im_start|>assistant\n")?,
        };
        let mut stop = Vec::new();
        if let Some(id) = tok.special_id("<|im_end|>") {
            stop.push(id);
        }
        if let Some(id) = tok.eos_id() {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
        let enc = |ids: &[u32]| -> Result<Vec<u32>> {
            Ok(self.cipher.encrypt_generator(ids)?.ids().to_vec())
        };
        Ok(AnswerRequest {
            key_id: self.cipher.key_id(),
            question: EncryptedQuestion {
                encoder_ids: self
                    .cipher
                    .encrypt_encoder(&self.encoder_tokenizer.encode(question)?)?
                    .ids()
                    .to_vec(),
                generator_ids: enc(&tok.encode(question)?)?,
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
        mut on_text: impl FnMut(&str),
    ) -> Result<Answer> {
        let request = self.encrypt_question(question, options)?;
        let mut ids: Vec<u32> = Vec::new();
        let mut shown = 0usize;
        let mut failure: Option<EeError> = None;
        let summary = self.host.answer_stream(collection, &request, |c| {
            match self.cipher.decrypt_generator_id(c) {
                Ok(t) => {
                    ids.push(t);
                    // Detokenize the whole answer and show what is new, so
                    // multi-byte characters split across tokens come out whole.
                    if let Ok(text) = self.generator_tokenizer.decode(&ids) {
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
        let text = self.generator_tokenizer.decode(&ids)?;
        if text.len() > shown && text.is_char_boundary(shown) {
            on_text(&text[shown..]);
        }
        let sources = summary
            .chunks
            .iter()
            .map(|c| self.open_metadata(&c.doc_id, c.index, &c.metadata))
            .collect::<Result<Vec<_>>>()?;
        Ok(Answer {
            text,
            ids,
            summary,
            sources,
        })
    }
}
