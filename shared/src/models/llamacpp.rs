//! llama.cpp as the generator backend for GGUF files on the CPU (cargo
//! feature `llama-cpp`, on by default), through its C API (`llama-cpp-sys-2`).
//!
//! Why a second backend: on the CPU, llama.cpp's quantized kernels process a
//! prompt about 10× and decode about 4× faster than candle's on the same file
//! (see docs/performance.md). It runs the transformed GGUF
//! unchanged: the host file's vocabulary is opaque (`tokenizer.ggml.model`
//! "none" and a size, see [`crate::gguf::write_permuted`]) and eerag feeds ids,
//! never text. Permuting whole embedding and output rows keeps every kernel's
//! arithmetic the same, so encrypted logits are the plaintext ones permuted,
//! bitwise, as on candle (tested on the real model in eerag-tests).
//!
//! Each session owns a llama.cpp context (its KV cache); the model's weights
//! and one ggml thread pool are shared by its sessions, whose steps take
//! turns on that pool. Candle stays the backend for GPUs
//! and safetensors folders. llama.cpp is built without OpenMP by default:
//! OpenMP's spinning workers halved decode inside the host on 2 cores
//! (feature `llama-cpp-openmp` turns it on; docs/performance.md, CPU speed).
//!
//! Models, contexts and batches go through llama.cpp's C API
//! (`llama-cpp-sys-2`) rather than `llama-cpp-2`'s safe wrappers, because
//! those keep the context pointer private and a thread pool can only be
//! attached through it. Without one, ggml starts and joins its worker
//! threads for every graph, that is for every decoded token. `llama-cpp-2`
//! still starts the backend and routes llama.cpp's logs.

use std::ffi::CString;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_sys_2 as sys;

use crate::error::{EeError, Result};
use crate::gguf;

/// Most tokens one `llama_decode` call takes: longer prompts go in pieces.
const PROMPT_CHUNK: usize = 512;
/// The one sequence id each session's context holds.
const SEQUENCE: sys::llama_seq_id = 0;
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
            #[cfg(feature = "llama-cpp-dynamic-backends")]
            {
                let module = super::ggml_cpu::load()?;
                let _ = CPU_MODULE.set(module);
            }
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EeError::Model(format!("llama.cpp did not start: {e}")))
}

/// The CPU module the dynamic backends loaded (see [`kernels`]).
#[cfg(feature = "llama-cpp-dynamic-backends")]
static CPU_MODULE: OnceLock<super::ggml_cpu::CpuModule> = OnceLock::new();

/// Which of llama.cpp's CPU kernel builds runs here: with dynamic backends
/// the module's variant (`zen4`, `haswell`, …), `None` before llama.cpp has
/// started; else "static".
pub fn kernels() -> Option<String> {
    #[cfg(feature = "llama-cpp-dynamic-backends")]
    {
        CPU_MODULE.get().map(|m| m.variant.clone())
    }
    #[cfg(not(feature = "llama-cpp-dynamic-backends"))]
    {
        Some("static".to_string())
    }
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
    /// tokens/s with it and 186–218 without (`bench peers`, 2026-12-02),
    /// and with it off eerag's greedy tokens equal llama-cpp-python's.
    pub flash_attention: bool,
    /// How long the thread pool's workers spin for the next graph before
    /// they sleep, as ggml's polling level (0 sleeps at once; ggml's own
    /// default is 50: 6.5 million pause loops, which kept a core busy for
    /// about 170 ms after the last token on the 2-core EPYC VM). Long
    /// enough to catch the next token's graph; a session that ends puts
    /// the workers to sleep at once.
    pub poll: u32,
}

impl Default for LlamaCppOptions {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            context: None,
            flash_attention: false,
            poll: DEFAULT_POLL,
        }
    }
}

/// The workers' polling level by default (see [`LlamaCppOptions::poll`]).
const DEFAULT_POLL: u32 = 50;

/// ggml's thread-pool functions. A static build links them; with dynamic
/// backends (feature `llama-cpp-dynamic-backends`) they live in the CPU
/// module chosen at run time, which exports them by name.
#[derive(Clone, Copy)]
struct PoolFunctions {
    new: PoolNew,
    free: PoolFree,
    pause: PoolPause,
}

/// The thread-pool functions, or why they cannot be had.
fn pool_functions() -> Result<PoolFunctions> {
    #[cfg(not(feature = "llama-cpp-dynamic-backends"))]
    {
        Ok(PoolFunctions {
            new: sys::ggml_threadpool_new,
            free: sys::ggml_threadpool_free,
            pause: sys::ggml_threadpool_pause,
        })
    }
    #[cfg(feature = "llama-cpp-dynamic-backends")]
    {
        static FUNCTIONS: OnceLock<std::result::Result<PoolFunctions, String>> = OnceLock::new();
        FUNCTIONS
            .get_or_init(|| {
                backend().map_err(|e| e.to_string())?;
                // SAFETY: the backends are loaded (backend()); the names are
                // NUL-terminated, and the CPU module exports these three
                // functions with exactly these signatures (ggml-cpu.h): new
                // and free through ggml's registry, pause by its symbol.
                unsafe {
                    let cpu = sys::ggml_backend_reg_by_name(c"CPU".as_ptr());
                    if cpu.is_null() {
                        return Err("no CPU backend module was loaded".to_string());
                    }
                    let new = sys::ggml_backend_reg_get_proc_address(
                        cpu,
                        c"ggml_threadpool_new".as_ptr(),
                    );
                    let free = sys::ggml_backend_reg_get_proc_address(
                        cpu,
                        c"ggml_threadpool_free".as_ptr(),
                    );
                    if new.is_null() || free.is_null() {
                        return Err("the CPU backend module has no thread pool".to_string());
                    }
                    let module = CPU_MODULE
                        .get()
                        .ok_or_else(|| "no CPU backend module was loaded".to_string())?;
                    let pause = super::ggml_cpu::symbol(module, c"ggml_threadpool_pause")?;
                    Ok(PoolFunctions {
                        new: std::mem::transmute::<*mut std::ffi::c_void, PoolNew>(new),
                        free: std::mem::transmute::<*mut std::ffi::c_void, PoolFree>(free),
                        pause: std::mem::transmute::<*mut std::ffi::c_void, PoolPause>(pause),
                    })
                }
            })
            .clone()
            .map_err(|e| EeError::Model(format!("llama.cpp: {e}")))
    }
}

/// `ggml_threadpool_new`'s signature.
type PoolNew = unsafe extern "C" fn(*mut sys::ggml_threadpool_params) -> *mut sys::ggml_threadpool;
/// `ggml_threadpool_free`'s signature.
type PoolFree = unsafe extern "C" fn(*mut sys::ggml_threadpool);
/// `ggml_threadpool_pause`'s signature.
type PoolPause = unsafe extern "C" fn(*mut sys::ggml_threadpool);

/// A model as llama.cpp loaded it; freed on drop.
struct RawModel(NonNull<sys::llama_model>);

// SAFETY: llama.cpp's model is read-only once loaded and is meant to be
// shared by contexts on several threads.
unsafe impl Send for RawModel {}
// SAFETY: as for Send: every call eerag makes on a model only reads it.
unsafe impl Sync for RawModel {}

impl Drop for RawModel {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_model_load_from_file and every
        // context made from it is gone (see LlamaCppModel's field order and
        // LlamaCppSequence's Arc).
        unsafe { sys::llama_model_free(self.0.as_ptr()) }
    }
}

/// A ggml thread pool whose workers live as long as it; freed on drop.
struct RawPool {
    pool: NonNull<sys::ggml_threadpool>,
    free: PoolFree,
    pause: PoolPause,
}

// SAFETY: the pool is used by one graph at a time (LlamaCppModel keeps it
// behind a mutex held for every decode); ggml's workers are its own threads.
unsafe impl Send for RawPool {}

impl Drop for RawPool {
    fn drop(&mut self) {
        // SAFETY: made by the same module's ggml_threadpool_new, freed once,
        // after every context attached to it (LlamaCppModel's field order and
        // the sessions' Arc).
        unsafe { (self.free)(self.pool.as_ptr()) }
    }
}

impl RawPool {
    /// A pool of `threads` workers (the caller's thread among them) that
    /// spin at polling level `poll` between graphs before they sleep.
    fn new(threads: i32, poll: u32) -> Result<Self> {
        let functions = pool_functions()?;
        // SAFETY: default pool parameters for our thread count.
        let pool = unsafe {
            let mut params = sys::ggml_threadpool_params_default(threads);
            params.poll = poll;
            NonNull::new((functions.new)(&mut params))
        };
        let pool =
            pool.ok_or_else(|| EeError::Model("ggml could not start its thread pool".into()))?;
        Ok(Self {
            pool,
            free: functions.free,
            pause: functions.pause,
        })
    }

    /// Puts the workers to sleep now instead of letting them spin for the
    /// next graph (about 170 ms of a core at polling level 50, measured);
    /// the next graph wakes them.
    fn pause(&self) {
        // SAFETY: a live pool; pausing takes ggml's own lock and no graph
        // runs (the caller holds the model's pool lock).
        unsafe { (self.pause)(self.pool.as_ptr()) }
    }
}

/// A context (one sequence's KV cache); freed on drop.
struct RawContext {
    context: NonNull<sys::llama_context>,
}

// SAFETY: a context is used by one thread at a time (every use takes
// `&mut self`); moving it between threads is allowed by llama.cpp.
unsafe impl Send for RawContext {}

impl Drop for RawContext {
    fn drop(&mut self) {
        // SAFETY: owned by this value; freed before the model's pool it is
        // attached to.
        unsafe { sys::llama_free(self.context.as_ptr()) }
    }
}

impl RawContext {
    /// Empties the KV cache.
    fn clear(&mut self) {
        // SAFETY: a live context; its memory handle lives as long as it.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.context.as_ptr()), true) }
    }

    /// Runs `batch` on the attached pool, whose lock the caller holds
    /// (`_pool`), and returns the logits of its last token (the only one that
    /// asks for them).
    fn decode(&mut self, batch: &RawBatch, vocab: usize, _pool: &RawPool) -> Result<Vec<f32>> {
        // SAFETY: a live context and a batch whose `n_tokens` entries are
        // filled (RawBatch::fill); no other graph runs on the pool.
        let status = unsafe { sys::llama_decode(self.context.as_ptr(), batch.batch) };
        match status {
            0 => {}
            1 => {
                return Err(EeError::Model(
                    "llama.cpp: no room left in the KV cache".into(),
                ))
            }
            2 => return Err(EeError::Model("llama.cpp: decode aborted".into())),
            other => return Err(EeError::Model(format!("llama.cpp decode failed ({other})"))),
        }
        // SAFETY: the index is the batch's last token, which asked for
        // logits; llama.cpp returns null for any other.
        let logits =
            unsafe { sys::llama_get_logits_ith(self.context.as_ptr(), batch.batch.n_tokens - 1) };
        if logits.is_null() {
            return Err(EeError::Model("llama.cpp returned no logits".into()));
        }
        // SAFETY: llama.cpp's logits row holds the vocabulary's size of
        // floats and stays valid until the next decode; copied at once.
        Ok(unsafe { std::slice::from_raw_parts(logits, vocab) }.to_vec())
    }

    /// The sequence's state (KV cache and position), to copy into another
    /// context.
    fn state(&self) -> Result<Vec<u8>> {
        let context = self.context.as_ptr();
        // SAFETY: a live context, and a buffer of the size it asked for.
        unsafe {
            let mut state = vec![0u8; sys::llama_state_seq_get_size(context, SEQUENCE)];
            let written =
                sys::llama_state_seq_get_data(context, state.as_mut_ptr(), state.len(), SEQUENCE);
            if written == 0 {
                return Err(EeError::Model("llama.cpp could not save a sequence".into()));
            }
            state.truncate(written);
            Ok(state)
        }
    }

    /// Loads a state saved by [`Self::state`] into this (empty) context.
    fn restore(&mut self, state: &[u8]) -> Result<()> {
        // SAFETY: a live context reading `state.len()` bytes.
        let read = unsafe {
            sys::llama_state_seq_set_data(
                self.context.as_ptr(),
                state.as_ptr(),
                state.len(),
                SEQUENCE,
            )
        };
        if read == 0 {
            return Err(EeError::Model(
                "llama.cpp could not restore a sequence".into(),
            ));
        }
        Ok(())
    }
}

/// A token batch for one sequence, up to [`PROMPT_CHUNK`] tokens.
struct RawBatch {
    batch: sys::llama_batch,
}

// SAFETY: the batch's arrays are owned by it and used under `&mut self`.
unsafe impl Send for RawBatch {}

impl Drop for RawBatch {
    fn drop(&mut self) {
        // SAFETY: allocated by llama_batch_init, freed once.
        unsafe { sys::llama_batch_free(self.batch) }
    }
}

impl RawBatch {
    fn new() -> Self {
        // SAFETY: plain allocation; `embd` 0 means token ids.
        let batch = unsafe { sys::llama_batch_init(PROMPT_CHUNK as i32, 0, 1) };
        Self { batch }
    }

    /// Puts `ids` at positions `start..`, logits wanted for the last one.
    fn fill(&mut self, ids: &[u32], start: usize) -> Result<()> {
        assert!(
            ids.len() <= PROMPT_CHUNK,
            "batch larger than its allocation"
        );
        let tokens = ids.iter().map(|&id| {
            sys::llama_token::try_from(id)
                .map_err(|_| EeError::InvalidArgument(format!("token id {id} out of range")))
        });
        for (i, token) in tokens.enumerate() {
            let position = sys::llama_pos::try_from(start + i).map_err(|_| {
                EeError::InvalidArgument(format!("position {} out of range", start + i))
            })?;
            // SAFETY: i < ids.len() <= PROMPT_CHUNK, the arrays' length, and
            // each token's seq_id array has room for one sequence.
            unsafe {
                *self.batch.token.add(i) = token?;
                *self.batch.pos.add(i) = position;
                *self.batch.n_seq_id.add(i) = 1;
                **self.batch.seq_id.add(i) = SEQUENCE;
                *self.batch.logits.add(i) = i8::from(i + 1 == ids.len());
            }
        }
        self.batch.n_tokens = ids.len() as i32;
        Ok(())
    }
}

/// A GGUF model loaded by llama.cpp. Sessions share its weights.
pub struct LlamaCppModel {
    // Declared before `pool` and `model`, so the idle contexts are freed
    // first.
    idle: Mutex<Vec<RawContext>>,
    /// The workers every context of this model computes on. One pool, not
    /// one per context: sessions stepped in turn (the host's batch) would
    /// otherwise leave each finished context's workers spinning on the cores
    /// the next one needs, and start from sleeping workers every time.
    /// Locked for each decode.
    pool: Mutex<RawPool>,
    model: RawModel,
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
        backend()?;
        let c_path = path
            .to_str()
            .and_then(|p| CString::new(p).ok())
            .ok_or_else(|| EeError::Model(format!("{}: path not usable", path.display())))?;
        // SAFETY: a NUL-terminated path and llama.cpp's default parameters.
        let raw = unsafe {
            sys::llama_model_load_from_file(c_path.as_ptr(), sys::llama_model_default_params())
        };
        let model = RawModel(NonNull::new(raw).ok_or_else(|| {
            EeError::Model(format!(
                "{}: llama.cpp could not load it (its log says why)",
                path.display()
            ))
        })?);
        // SAFETY: a live model; the vocabulary lives as long as it.
        let (n_vocab, trained) = unsafe {
            let vocab = sys::llama_model_get_vocab(model.0.as_ptr());
            (
                sys::llama_vocab_n_tokens(vocab),
                sys::llama_n_ctx_train(model.0.as_ptr()),
            )
        };
        if usize::try_from(n_vocab).ok() != Some(vocab) {
            return Err(EeError::Model(format!(
                "{}: llama.cpp sees {n_vocab} tokens, the embedding has {vocab} rows",
                path.display()
            )));
        }
        let trained = usize::try_from(trained).unwrap_or(0).max(1);
        let context = options.context.map_or(trained, |c| c.clamp(1, trained));
        let pool = RawPool::new(threads, options.poll)?;
        Ok(Self {
            idle: Mutex::new(Vec::new()),
            pool: Mutex::new(pool),
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
            batch: RawBatch::new(),
            position: 0,
            model: self.clone(),
        })
    }

    /// A new context over the whole window, attached to the model's pool.
    fn new_context(&self) -> Result<RawContext> {
        let window = u32::try_from(self.context)
            .map_err(|_| EeError::Model("context window out of range".into()))?;
        // SAFETY: plain parameter structs, filled in before use.
        let mut params = unsafe { sys::llama_context_default_params() };
        params.n_ctx = window;
        params.n_batch = PROMPT_CHUNK as u32;
        params.n_ubatch = PROMPT_CHUNK as u32;
        params.n_seq_max = 1;
        params.n_threads = self.threads;
        params.n_threads_batch = self.threads;
        params.flash_attn_type = if self.flash_attention {
            sys::LLAMA_FLASH_ATTN_TYPE_ENABLED
        } else {
            sys::LLAMA_FLASH_ATTN_TYPE_DISABLED
        };
        // SAFETY: a live model (self holds it) and complete parameters.
        let context =
            NonNull::new(unsafe { sys::llama_init_from_model(self.model.0.as_ptr(), params) })
                .ok_or_else(|| EeError::Model("llama.cpp could not make a context".into()))?;
        let pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: both live; the pool outlives the context (field order, and
        // sessions hold the model).
        unsafe {
            sys::llama_attach_threadpool(context.as_ptr(), pool.pool.as_ptr(), pool.pool.as_ptr())
        };
        Ok(RawContext { context })
    }
}

/// The error for a sequence whose context is gone (only ever while it is
/// dropped; an error rather than a panic on the host).
fn released() -> EeError {
    EeError::Model("llama.cpp context already released".into())
}

/// One session's state in llama.cpp: its context (KV cache) and position.
pub struct LlamaCppSequence {
    // Declared before `model`, so it is dropped first. `None` only while
    // being handed back in `drop`.
    context: Option<RawContext>,
    batch: RawBatch,
    position: usize,
    model: Arc<LlamaCppModel>,
}

impl Drop for LlamaCppSequence {
    /// Hands the context back, emptied, for the model's next session, and
    /// sends the pool's workers to sleep: a finished answer should leave no
    /// thread spinning on the cores the encoder, the host or the next
    /// session's prompt need (steps of other sessions wake them again).
    fn drop(&mut self) {
        self.model
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pause();
        if let Some(mut context) = self.context.take() {
            context.clear();
            if let Ok(mut idle) = self.model.idle.lock() {
                if idle.len() < IDLE_CONTEXTS {
                    idle.push(context);
                }
            }
        }
    }
}

impl LlamaCppSequence {
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
        if ids.is_empty() {
            return Err(EeError::InvalidArgument("nothing to feed".into()));
        }
        let vocab = self.model.vocab;
        let mut logits = Vec::new();
        for chunk in ids.chunks(PROMPT_CHUNK) {
            self.batch.fill(chunk, self.position)?;
            let context = self.context.as_mut().ok_or_else(released)?;
            // Per chunk, so a long prompt lets other sessions' steps in.
            let pool = self
                .model
                .pool
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            logits = context.decode(&self.batch, vocab, &pool)?;
            self.position += chunk.len();
        }
        Ok(logits)
    }

    /// A copy that continues from the same point, with its own KV cache.
    pub fn fork(&self) -> Result<Self> {
        let mut copy = self.model.sequence()?;
        if self.position > 0 {
            let state = self.context.as_ref().ok_or_else(released)?.state()?;
            copy.context
                .as_mut()
                .ok_or_else(released)?
                .restore(&state)?;
            copy.position = self.position;
        }
        Ok(copy)
    }
}
