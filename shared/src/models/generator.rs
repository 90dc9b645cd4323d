//! The generator: a llama-family model ([`Llama`]) over a GGUF file or a
//! safetensors folder, with a KV cache per session, value-only sampling (see
//! [`crate::sampling`]) and batched decode steps across sessions.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};

use crate::error::{EeError, Result};
use crate::gguf;
use crate::models::llama::{self, KvCache, Llama};
use crate::sampling::{Sampler, Sampling};

/// A loaded llama-family model. Sessions share its weights.
#[derive(Clone)]
pub struct Generator {
    model: Arc<Llama>,
}

impl Generator {
    /// Loads a llama-family generator: a GGUF file (quantized or not), or a
    /// folder holding `config.json` and `model.safetensors` (f32/f16/bf16).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_as(path, None, device)
    }

    /// As [`Generator::load`], converting safetensors weights to `dtype`.
    /// GGUF weights keep their quantization and compute in f32: any other
    /// `dtype` for a GGUF is an error rather than silently ignored.
    pub fn load_as(path: &Path, dtype: Option<DType>, device: &Device) -> Result<Self> {
        let model = if path.is_dir() {
            Llama::from_safetensors(path, dtype, device)?
        } else {
            if dtype.is_some_and(|d| d != DType::F32) {
                return Err(EeError::InvalidArgument(format!(
                    "{}: a GGUF generator keeps its own quantization (computing in f32); \
                     a dtype applies to safetensors generators only",
                    path.display()
                )));
            }
            let (content, mut reader) = gguf::read(path)?;
            Llama::from_gguf(&content, &mut reader, device)
                .map_err(|e| EeError::Model(format!("{}: {e}", path.display())))?
        };
        Ok(Self {
            model: Arc::new(model),
        })
    }

    /// Vocabulary size: ids must be below it.
    pub fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    /// Longest prompt plus generation the model supports.
    pub fn context_length(&self) -> usize {
        self.model.context_length()
    }

    /// A fresh session (empty KV cache). Cheap: weights are shared.
    pub fn session(&self) -> Session {
        Session {
            model: self.model.clone(),
            cache: self.model.new_cache(),
        }
    }

    /// Feeds one token to each session in one batched pass (`ids[i]` to
    /// `sessions[i]`; all must be sessions of this generator) and returns
    /// each session's next-token logits. On the CPU each row is bitwise what
    /// [`Session::feed`] gives for that session alone.
    pub fn step(&self, sessions: &mut [&mut Session], ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        if sessions.len() != ids.len() {
            return Err(EeError::InvalidArgument(format!(
                "{} tokens for {} sessions",
                ids.len(),
                sessions.len()
            )));
        }
        for (session, &id) in sessions.iter().zip(ids) {
            if !Arc::ptr_eq(&session.model, &self.model) {
                return Err(EeError::InvalidArgument(
                    "a session of another generator".into(),
                ));
            }
            session.check(&[id])?;
        }
        let mut caches: Vec<&mut KvCache> = sessions.iter_mut().map(|s| &mut s.cache).collect();
        let logits = self.model.step(&mut caches, ids)?;
        Ok(logits.to_vec2::<f32>()?)
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

/// One conversation's decoding state. A clone continues from the same point
/// (the cached keys and values are shared until either feeds more).
#[derive(Clone)]
pub struct Session {
    model: Arc<Llama>,
    cache: KvCache,
}

impl Session {
    /// Tokens processed so far.
    pub fn position(&self) -> usize {
        self.cache.len()
    }

    /// Refuses ids outside the vocabulary and feeds past the context window.
    fn check(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(EeError::InvalidArgument("nothing to feed".into()));
        }
        let vocab = self.model.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(EeError::OutOfVocabulary {
                id,
                vocab: "generator",
                size: vocab,
            });
        }
        let context = self.model.context_length();
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
        Ok(self.model.forward(&mut self.cache, ids)?.to_vec1::<f32>()?)
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
        } else if session.position() >= session.model.context_length() {
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
