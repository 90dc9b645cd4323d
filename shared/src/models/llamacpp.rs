//! llama.cpp as the generator backend for GGUF files on the CPU (cargo
//! feature `llama-cpp`, on by default), through the `llama-cpp-2` bindings.
//!
//! Why a second backend: on the CPU, llama.cpp's quantized kernels process a
//! prompt about 10× and decode about 4× faster than candle's on the same file
//! (see the README's performance section). It runs the transformed GGUF
//! unchanged: the host file's vocabulary is opaque (`tokenizer.ggml.model`
//! "none" and a size, see [`crate::gguf::write_permuted`]) and eerag feeds ids,
//! never text. Permuting whole embedding and output rows keeps every kernel's
//! arithmetic the same, so encrypted logits are the plaintext ones permuted,
//! bitwise, as on candle (tested on the real model in eerag-tests).
//!
//! Each session owns a llama.cpp context (its KV cache); the model's weights
//! are shared. Candle stays the backend for GPUs and safetensors folders.
//! llama.cpp is built without OpenMP by default: OpenMP's spinning workers
//! halved decode inside the host on 2 cores (feature `llama-cpp-openmp`
//! turns it on; README, CPU speed).

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::session::LlamaStateSeqFlags;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::error::{EeError, Result};
use crate::gguf;

/// Most tokens one `llama_decode` call takes: longer prompts go in pieces.
const PROMPT_CHUNK: usize = 512;
/// The one sequence id each session's context holds.
const SEQUENCE: i32 = 0;
/// Idle contexts a model keeps for its next sessions: making one allocates
/// and clears the KV cache of the whole window (about 190 MB for SmolLM2's
/// 8,192 tokens), which would otherwise land on every answer's first token.
const IDLE_CONTEXTS: usize = 8;

/// llama.cpp's process-wide state, initialised once.
fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp's own log lines go to `tracing` (target
            // `llama-cpp-2`). Host files hold no tokens and eerag passes
            // llama.cpp only ids, so nothing it logs is plaintext.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EeError::Model(format!("llama.cpp did not start: {e}")))
}

/// How llama.cpp runs a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlamaCppOptions {
    /// CPU threads for prompts and decode steps.
    pub threads: usize,
    /// Context window of each session, in tokens; `None` is the model's
    /// trained context. Every session allocates its KV cache for the whole
    /// window up front.
    pub context: Option<usize>,
    /// llama.cpp's flash attention. Off by default, as in llama-cpp-python:
    /// on this project's 2-core machines a 197-token prompt ran at 174–181
    /// tokens/s with it and 186–218 without (`bench --peers`, 2026-12-02),
    /// and with it off eerag's greedy tokens equal llama-cpp-python's.
    pub flash_attention: bool,
}

impl Default for LlamaCppOptions {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            context: None,
            flash_attention: false,
        }
    }
}

/// A GGUF model loaded by llama.cpp. Sessions share its weights.
pub struct LlamaCppModel {
    // Declared before `model`, so the idle contexts are freed first.
    idle: Mutex<Vec<LlamaContext<'static>>>,
    model: LlamaModel,
    vocab: usize,
    context: usize,
    threads: i32,
    flash_attention: bool,
}

impl LlamaCppModel {
    /// Loads a llama-family GGUF. Host artifacts written before the opaque
    /// vocabulary existed are refused with what to do.
    pub fn load(path: &Path, options: LlamaCppOptions) -> Result<Self> {
        let (content, _) = gguf::read(path)?;
        if !gguf::declares_vocabulary(&content) {
            return Err(EeError::Model(format!(
                "{}: no {} in the file, which llama.cpp needs to load it; host artifacts \
                 from before the llama.cpp backend lack it: run `eerag transform` again, \
                 or choose the candle backend",
                path.display(),
                gguf::TOKENIZER_MODEL_KEY
            )));
        }
        let vocab = gguf::vocab_size(&content)?;
        drop(content);
        let threads = i32::try_from(options.threads.max(1))
            .map_err(|_| EeError::InvalidArgument("too many threads".into()))?;
        let model = LlamaModel::load_from_file(backend()?, path, &LlamaModelParams::default())
            .map_err(|e| EeError::Model(format!("{}: llama.cpp: {e}", path.display())))?;
        if usize::try_from(model.n_vocab()).ok() != Some(vocab) {
            return Err(EeError::Model(format!(
                "{}: llama.cpp sees {} tokens, the embedding has {vocab} rows",
                path.display(),
                model.n_vocab()
            )));
        }
        let trained = model.n_ctx_train() as usize;
        let context = options.context.map_or(trained, |c| c.clamp(1, trained));
        Ok(Self {
            idle: Mutex::new(Vec::new()),
            model,
            vocab,
            context,
            threads,
            flash_attention: options.flash_attention,
        })
    }

    /// Vocabulary size: ids must be below it.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Context window of each session.
    pub fn context_length(&self) -> usize {
        self.context
    }

    /// A fresh sequence with its own (empty) KV cache: an idle context if
    /// there is one, else a new one.
    pub fn sequence(self: &Arc<Self>) -> Result<LlamaCppSequence> {
        let idle = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
        let context = match idle {
            Some(context) => context,
            None => self.new_context()?,
        };
        Ok(LlamaCppSequence {
            context: Some(context),
            batch: LlamaBatch::new(PROMPT_CHUNK, 1),
            position: 0,
            model: self.clone(),
        })
    }

    /// A new context over the whole window.
    fn new_context(&self) -> Result<LlamaContext<'static>> {
        let window = u32::try_from(self.context)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| EeError::Model("context window out of range".into()))?;
        let params = LlamaContextParams::default()
            .with_n_ctx(Some(window))
            .with_n_batch(PROMPT_CHUNK as u32)
            .with_n_ubatch(PROMPT_CHUNK as u32)
            .with_n_seq_max(1)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
            .with_flash_attention_policy(if self.flash_attention {
                llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED
            } else {
                llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED
            });
        // SAFETY: the context borrows the model. It lives either in a
        // sequence, which holds the model's `Arc` and frees the context (or
        // hands it back) before that, or in the model's idle list, which is
        // freed before the model (field order).
        let model: &'static LlamaModel = unsafe { &*std::ptr::addr_of!(self.model) };
        model
            .new_context(backend()?, params)
            .map_err(|e| EeError::Model(format!("llama.cpp context: {e}")))
    }
}

/// One session's state in llama.cpp: its context (KV cache) and position.
pub struct LlamaCppSequence {
    // Declared before `model`, so it is dropped first. `None` only while
    // being handed back in `drop`.
    context: Option<LlamaContext<'static>>,
    batch: LlamaBatch<'static>,
    position: usize,
    model: Arc<LlamaCppModel>,
}

impl Drop for LlamaCppSequence {
    /// Hands the context back, emptied, for the model's next session.
    fn drop(&mut self) {
        if let Some(mut context) = self.context.take() {
            context.clear_kv_cache();
            if let Ok(mut idle) = self.model.idle.lock() {
                if idle.len() < IDLE_CONTEXTS {
                    idle.push(context);
                }
            }
        }
    }
}

impl LlamaCppSequence {
    /// The context (present until drop).
    fn context(&mut self) -> Result<&mut LlamaContext<'static>> {
        self.context
            .as_mut()
            .ok_or_else(|| EeError::Model("llama.cpp context already released".into()))
    }

    /// Tokens processed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Whether this sequence belongs to `model`.
    pub fn is_of(&self, model: &Arc<LlamaCppModel>) -> bool {
        Arc::ptr_eq(&self.model, model)
    }

    /// Feeds `ids` (checked by the caller: in the vocabulary, inside the
    /// window) and returns the next token's logits.
    pub fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let chunks = ids.chunks(PROMPT_CHUNK);
        let last_chunk = chunks.len().saturating_sub(1);
        for (n, chunk) in chunks.enumerate() {
            self.batch.clear();
            for (i, &id) in chunk.iter().enumerate() {
                let wants_logits = n == last_chunk && i + 1 == chunk.len();
                let (token, pos) = (as_token(id)?, as_pos(self.position + i)?);
                self.batch
                    .add(token, pos, &[SEQUENCE], wants_logits)
                    .map_err(|e| EeError::Model(format!("llama.cpp batch: {e}")))?;
            }
            let context = self
                .context
                .as_mut()
                .ok_or_else(|| EeError::Model("llama.cpp context already released".into()))?;
            context
                .decode(&mut self.batch)
                .map_err(|e| EeError::Model(format!("llama.cpp decode: {e}")))?;
            self.position += chunk.len();
        }
        let last = self.batch.n_tokens() - 1;
        Ok(self.context()?.get_logits_ith(last).to_vec())
    }

    /// A copy that continues from the same point, with its own KV cache.
    pub fn fork(&self) -> Result<Self> {
        let mut copy = self.model.sequence()?;
        if self.position > 0 {
            let state = self
                .context
                .as_ref()
                .ok_or_else(|| EeError::Model("llama.cpp context already released".into()))?
                .state_seq_get(SEQUENCE, LlamaStateSeqFlags::empty())
                .map_err(|e| EeError::Model(format!("llama.cpp state: {e}")))?;
            copy.context()?
                .state_seq_set(&state, SEQUENCE)
                .map_err(|e| EeError::Model(format!("llama.cpp state: {e}")))?;
            copy.position = self.position;
        }
        Ok(copy)
    }
}

fn as_token(id: u32) -> Result<LlamaToken> {
    i32::try_from(id)
        .map(LlamaToken)
        .map_err(|_| EeError::InvalidArgument(format!("token id {id} out of range")))
}

fn as_pos(position: usize) -> Result<i32> {
    i32::try_from(position)
        .map_err(|_| EeError::InvalidArgument(format!("position {position} out of range")))
}
