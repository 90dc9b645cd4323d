//! The generator: a llama-family model over a GGUF file or a safetensors
//! folder, with a KV cache per session, value-only sampling (see
//! [`crate::sampling`]) and batched decode steps across sessions.
//!
//! Two backends run the model: eerag's candle decoder ([`Llama`]: any
//! device, GGUF or safetensors) and, for GGUF files on the CPU, llama.cpp
//! ([`crate::models::llamacpp`], cargo feature `llama-cpp`). Both give
//! encrypted logits that are the plaintext ones permuted, bitwise.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use candle_core::{DType, Device};

use crate::error::{EeError, Result};
use crate::gguf;
use crate::models::llama::{self, KvCache, Llama};
#[cfg(feature = "llama-cpp")]
use crate::models::llamacpp::{LlamaCppModel, LlamaCppOptions, LlamaCppSequence};
use crate::sampling::{Sampler, Sampling};

/// Which implementation runs the generator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GeneratorBackend {
    /// llama.cpp for a GGUF on the CPU when this build has it (the fastest
    /// there), candle otherwise.
    #[default]
    Auto,
    /// eerag's candle decoder: every device and format.
    Candle,
    /// llama.cpp: GGUF files, on the CPU.
    LlamaCpp,
}

impl FromStr for GeneratorBackend {
    type Err = EeError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "candle" => Ok(Self::Candle),
            "llama-cpp" | "llama.cpp" | "llamacpp" => Ok(Self::LlamaCpp),
            other => Err(EeError::InvalidArgument(format!(
                "generator backend {other:?}: expected auto, candle or llama-cpp"
            ))),
        }
    }
}

impl std::fmt::Display for GeneratorBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Candle => "candle",
            Self::LlamaCpp => "llama-cpp",
        })
    }
}

/// Whether this build includes the llama.cpp backend.
pub fn llama_cpp_compiled() -> bool {
    cfg!(feature = "llama-cpp")
}

/// How to load a generator: backend, weight dtype (safetensors only), device
/// and CPU threads (llama.cpp; candle uses its own pool).
#[derive(Clone, Debug)]
pub struct GeneratorOptions {
    /// Which implementation runs the model.
    pub backend: GeneratorBackend,
    /// Weight dtype of a safetensors folder; `None` keeps the file's.
    pub dtype: Option<DType>,
    /// Where candle runs the model (llama.cpp runs on the CPU).
    pub device: Device,
    /// llama.cpp's CPU threads; `None` is all available cores.
    pub threads: Option<usize>,
    /// llama.cpp's per-session context window; `None` is the model's.
    pub context: Option<usize>,
}

impl GeneratorOptions {
    /// The defaults on `device`: automatic backend, the file's dtype.
    pub fn on(device: &Device) -> Self {
        Self {
            backend: GeneratorBackend::Auto,
            dtype: None,
            device: device.clone(),
            threads: None,
            context: None,
        }
    }
}

/// The loaded model of one backend.
#[derive(Clone)]
enum Model {
    Candle(Arc<Llama>),
    #[cfg(feature = "llama-cpp")]
    LlamaCpp(Arc<LlamaCppModel>),
}

/// A loaded llama-family model. Sessions share its weights.
#[derive(Clone)]
pub struct Generator {
    model: Model,
}

impl Generator {
    /// Loads a llama-family generator: a GGUF file (quantized or not), or a
    /// folder holding `config.json` and `model.safetensors` (f32/f16/bf16),
    /// on the automatic backend.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_with(path, &GeneratorOptions::on(device))
    }

    /// As [`Generator::load`], converting safetensors weights to `dtype`.
    pub fn load_as(path: &Path, dtype: Option<DType>, device: &Device) -> Result<Self> {
        Self::load_with(
            path,
            &GeneratorOptions {
                dtype,
                ..GeneratorOptions::on(device)
            },
        )
    }

    /// Loads with explicit options. GGUF weights keep their quantization and
    /// compute in f32: any other `dtype` for a GGUF is an error rather than
    /// silently ignored. llama.cpp takes GGUF files on the CPU only.
    pub fn load_with(path: &Path, options: &GeneratorOptions) -> Result<Self> {
        let gguf_file = !path.is_dir();
        if gguf_file && options.dtype.is_some_and(|d| d != DType::F32) {
            return Err(EeError::InvalidArgument(format!(
                "{}: a GGUF generator keeps its own quantization (computing in f32); \
                 a dtype applies to safetensors generators only",
                path.display()
            )));
        }
        let cpu = options.device.is_cpu();
        match options.backend {
            GeneratorBackend::LlamaCpp if !gguf_file || !cpu => {
                return Err(EeError::InvalidArgument(format!(
                    "{}: the llama.cpp backend runs GGUF files on the CPU; use the candle \
                     backend for safetensors folders and GPUs",
                    path.display()
                )))
            }
            GeneratorBackend::LlamaCpp => return Self::load_llama_cpp(path, options),
            // Auto takes llama.cpp where it can and candle where llama.cpp
            // cannot read the file (e.g. host artifacts from before the
            // opaque vocabulary), saying so.
            GeneratorBackend::Auto if llama_cpp_compiled() && gguf_file && cpu => {
                match Self::load_llama_cpp(path, options) {
                    Ok(generator) => return Ok(generator),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "llama.cpp cannot run this generator; using candle"
                    ),
                }
            }
            _ => {}
        }
        let device = &options.device;
        let dtype = options.dtype;
        let model = if !gguf_file {
            Llama::from_safetensors(path, dtype, device)?
        } else {
            let (content, mut reader) = gguf::read(path)?;
            Llama::from_gguf(&content, &mut reader, device)
                .map_err(|e| EeError::Model(format!("{}: {e}", path.display())))?
        };
        Ok(Self {
            model: Model::Candle(Arc::new(model)),
        })
    }

    /// Loads a GGUF into llama.cpp.
    #[cfg(feature = "llama-cpp")]
    fn load_llama_cpp(path: &Path, options: &GeneratorOptions) -> Result<Self> {
        let defaults = LlamaCppOptions::default();
        let model = LlamaCppModel::load(
            path,
            LlamaCppOptions {
                threads: options.threads.unwrap_or(defaults.threads),
                context: options.context,
                ..defaults
            },
        )?;
        Ok(Self {
            model: Model::LlamaCpp(Arc::new(model)),
        })
    }

    /// Without the `llama-cpp` feature: says so.
    #[cfg(not(feature = "llama-cpp"))]
    fn load_llama_cpp(_path: &Path, _options: &GeneratorOptions) -> Result<Self> {
        Err(EeError::InvalidArgument(
            "this build has no llama.cpp backend (cargo feature llama-cpp)".into(),
        ))
    }

    /// The backend running this generator (never `Auto`).
    pub fn backend(&self) -> GeneratorBackend {
        match &self.model {
            Model::Candle(_) => GeneratorBackend::Candle,
            #[cfg(feature = "llama-cpp")]
            Model::LlamaCpp(_) => GeneratorBackend::LlamaCpp,
        }
    }

    /// Vocabulary size: ids must be below it.
    pub fn vocab_size(&self) -> usize {
        match &self.model {
            Model::Candle(m) => m.vocab_size(),
            #[cfg(feature = "llama-cpp")]
            Model::LlamaCpp(m) => m.vocab_size(),
        }
    }

    /// Longest prompt plus generation the model supports.
    pub fn context_length(&self) -> usize {
        match &self.model {
            Model::Candle(m) => m.context_length(),
            #[cfg(feature = "llama-cpp")]
            Model::LlamaCpp(m) => m.context_length(),
        }
    }

    /// A fresh session (empty KV cache). Cheap: weights are shared, and a
    /// llama.cpp session allocates its context at its first feed.
    pub fn session(&self) -> Session {
        let state = match &self.model {
            Model::Candle(m) => State::Candle(m.new_cache()),
            #[cfg(feature = "llama-cpp")]
            Model::LlamaCpp(_) => State::LlamaCpp(None),
        };
        Session {
            generator: self.clone(),
            state,
        }
    }

    /// Whether `session` was made by this generator.
    fn owns(&self, session: &Session) -> bool {
        match (&self.model, &session.generator.model) {
            (Model::Candle(a), Model::Candle(b)) => Arc::ptr_eq(a, b),
            #[cfg(feature = "llama-cpp")]
            (Model::LlamaCpp(a), Model::LlamaCpp(b)) => Arc::ptr_eq(a, b),
            #[cfg(feature = "llama-cpp")]
            _ => false,
        }
    }

    /// Feeds one token to each session in one batched pass (`ids[i]` to
    /// `sessions[i]`; all must be sessions of this generator) and returns
    /// each session's next-token logits. On the CPU each row is bitwise what
    /// [`Session::feed`] gives for that session alone. (llama.cpp sessions
    /// have a context each, so there the steps run one after another.)
    pub fn step(&self, sessions: &mut [&mut Session], ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        if sessions.len() != ids.len() {
            return Err(EeError::InvalidArgument(format!(
                "{} tokens for {} sessions",
                ids.len(),
                sessions.len()
            )));
        }
        for (session, &id) in sessions.iter().zip(ids) {
            if !self.owns(session) {
                return Err(EeError::InvalidArgument(
                    "a session of another generator".into(),
                ));
            }
            session.check(&[id])?;
        }
        match &self.model {
            Model::Candle(model) => {
                let mut caches: Vec<&mut KvCache> = sessions
                    .iter_mut()
                    .map(|s| match &mut s.state {
                        State::Candle(cache) => Ok(cache),
                        #[cfg(feature = "llama-cpp")]
                        State::LlamaCpp(_) => Err(EeError::InvalidArgument(
                            "a session of another generator".into(),
                        )),
                    })
                    .collect::<Result<_>>()?;
                Ok(model.step(&mut caches, ids)?.to_vec2::<f32>()?)
            }
            #[cfg(feature = "llama-cpp")]
            Model::LlamaCpp(_) => sessions
                .iter_mut()
                .zip(ids)
                .map(|(s, &id)| s.feed(&[id]))
                .collect(),
        }
    }
}

/// Whether `path` names a safetensors generator folder rather than a GGUF.
pub fn is_safetensors_dir(path: &Path) -> bool {
    path.join(llama::CONFIG_FILE).is_file() && path.join(llama::WEIGHTS_FILE).is_file()
}

/// Why a generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop id was produced (it is included in the output).
    StopToken,
    /// `max_tokens` were produced.
    MaxTokens,
    /// The model's context window is full.
    ContextFull,
    /// The token callback asked to stop (e.g. the client went away).
    Cancelled,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerationOptions {
    /// Upper bound on generated tokens.
    pub max_tokens: usize,
    /// Ids that end the generation (e.g. `<|im_end|>`), in the model's id space.
    pub stop_ids: Vec<u32>,
    /// How to choose each token.
    pub sampling: Sampling,
}

/// The result of [`Session::generate`].
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated ids, in the model's id space.
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub stop: StopReason,
}

/// One conversation's decoding state.
pub struct Session {
    generator: Generator,
    state: State,
}

/// A session's KV cache, in its backend's form.
enum State {
    Candle(KvCache),
    /// Made at the first feed (a context is a large allocation).
    #[cfg(feature = "llama-cpp")]
    LlamaCpp(Option<LlamaCppSequence>),
}

impl Session {
    /// Tokens processed so far.
    pub fn position(&self) -> usize {
        match &self.state {
            State::Candle(cache) => cache.len(),
            #[cfg(feature = "llama-cpp")]
            State::LlamaCpp(sequence) => sequence.as_ref().map_or(0, |s| s.position()),
        }
    }

    /// A session that continues from the same point. On candle the cached
    /// keys and values are shared until either feeds more; on llama.cpp the
    /// copy gets a context of its own.
    pub fn fork(&self) -> Result<Session> {
        let state = match &self.state {
            State::Candle(cache) => State::Candle(cache.clone()),
            #[cfg(feature = "llama-cpp")]
            State::LlamaCpp(sequence) => {
                State::LlamaCpp(sequence.as_ref().map(|s| s.fork()).transpose()?)
            }
        };
        Ok(Session {
            generator: self.generator.clone(),
            state,
        })
    }

    /// Refuses ids outside the vocabulary and feeds past the context window.
    fn check(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(EeError::InvalidArgument("nothing to feed".into()));
        }
        let vocab = self.generator.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(EeError::OutOfVocabulary {
                id,
                vocab: "generator",
                size: vocab,
            });
        }
        let context = self.generator.context_length();
        if self.position() + ids.len() > context {
            return Err(EeError::InvalidArgument(format!(
                "{} tokens exceed the context window of {context}",
                self.position() + ids.len(),
            )));
        }
        Ok(())
    }

    /// Feeds `ids` (a prompt, or one sampled token) and returns the logits for
    /// the next token, indexed by id in the model's id space.
    pub fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.check(ids)?;
        match (&mut self.state, &self.generator.model) {
            (State::Candle(cache), Model::Candle(model)) => {
                Ok(model.forward(cache, ids)?.to_vec1::<f32>()?)
            }
            #[cfg(feature = "llama-cpp")]
            (State::LlamaCpp(sequence), Model::LlamaCpp(model)) => {
                let sequence = match sequence {
                    Some(s) => s,
                    None => sequence.insert(model.sequence()?),
                };
                debug_assert!(sequence.is_of(model));
                sequence.feed(ids)
            }
            #[cfg(feature = "llama-cpp")]
            _ => Err(EeError::Model(
                "a session's state does not match its generator's backend".into(),
            )),
        }
    }

    /// Runs the prompt, then samples until a stop id, `max_tokens`, the end of
    /// the context, or `on_token` returning false. `on_token` sees each id as
    /// soon as it is chosen (for streaming).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        options: &GenerationOptions,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Generation> {
        let mut decoding = Decoding::new(options)?;
        if options.max_tokens == 0 {
            return Ok(decoding.finish(StopReason::MaxTokens));
        }
        let mut logits = self.feed(prompt)?;
        loop {
            let (next, stop) = decoding.choose(&logits, self)?;
            if !on_token(next) {
                return Ok(decoding.finish(StopReason::Cancelled));
            }
            if let Some(stop) = stop {
                return Ok(decoding.finish(stop));
            }
            logits = self.feed(&[next])?;
        }
    }
}

/// One generation's token choice and stop rules, apart from running the
/// model: [`Session::generate`] drives one alone, a batching server drives
/// many through [`Generator::step`], and both stop the same way.
pub struct Decoding {
    sampler: Sampler,
    max_tokens: usize,
    stop_ids: Vec<u32>,
    tokens: Vec<u32>,
}

impl Decoding {
    /// A generation that has produced nothing yet.
    pub fn new(options: &GenerationOptions) -> Result<Self> {
        Ok(Self {
            sampler: Sampler::new(options.sampling.clone())?,
            max_tokens: options.max_tokens,
            stop_ids: options.stop_ids.clone(),
            tokens: Vec::new(),
        })
    }

    /// Chooses the next token from `logits` (the output of feeding
    /// `session`), and says whether the generation ends with it.
    pub fn choose(
        &mut self,
        logits: &[f32],
        session: &Session,
    ) -> Result<(u32, Option<StopReason>)> {
        let next = self.sampler.sample(logits)?;
        self.tokens.push(next);
        let stop = if self.stop_ids.contains(&next) {
            Some(StopReason::StopToken)
        } else if self.tokens.len() >= self.max_tokens {
            Some(StopReason::MaxTokens)
        } else if session.position() >= session.generator.context_length() {
            Some(StopReason::ContextFull)
        } else {
            None
        };
        Ok((next, stop))
    }

    /// Tokens chosen so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The generation, ended for `stop`.
    pub fn finish(self, stop: StopReason) -> Generation {
        Generation {
            tokens: self.tokens,
            stop,
        }
    }
}
