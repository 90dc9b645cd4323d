//! The generator: candle's quantized llama over a GGUF file, with a KV cache
//! per session and value-only sampling (see [`crate::sampling`]).

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

use crate::error::{EeError, Result};
use crate::gguf;
use crate::sampling::{Sampler, Sampling};

/// A loaded llama-family model. Sessions share its weights.
pub struct Generator {
    weights: ModelWeights,
    vocab_size: usize,
    context_length: usize,
    device: Device,
}

impl Generator {
    /// Loads a llama-family GGUF file (quantized or not).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (content, mut reader) = gguf::read(path)?;
        let vocab_size = gguf::vocab_size(&content)?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| "llama".into());
        let context_length = content
            .metadata
            .get(&format!("{arch}.context_length"))
            .and_then(|v| v.to_u32().ok())
            .map(|n| n as usize)
            .unwrap_or(2048);
        let weights = ModelWeights::from_gguf(content, &mut reader, device)
            .map_err(|e| EeError::Model(format!("{}: {e}", path.display())))?;
        Ok(Self {
            weights,
            vocab_size,
            context_length,
            device: device.clone(),
        })
    }

    /// Vocabulary size: ids must be below it.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Longest prompt plus generation the model supports.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// A fresh session (empty KV cache). Cheap: weights are shared.
    pub fn session(&self) -> Session {
        let mut model = self.weights.clone();
        model.clear_kv_cache();
        Session {
            model,
            position: 0,
            vocab_size: self.vocab_size,
            context_length: self.context_length,
            device: self.device.clone(),
        }
    }
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
    model: ModelWeights,
    position: usize,
    vocab_size: usize,
    context_length: usize,
    device: Device,
}

impl Session {
    /// Tokens processed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Feeds `ids` (a prompt, or one sampled token) and returns the logits for
    /// the next token, indexed by id in the model's id space.
    pub fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(EeError::InvalidArgument("nothing to feed".into()));
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(EeError::OutOfVocabulary {
                id,
                vocab: "generator",
                size: self.vocab_size,
            });
        }
        if self.position + ids.len() > self.context_length {
            return Err(EeError::InvalidArgument(format!(
                "{} tokens exceed the context window of {}",
                self.position + ids.len(),
                self.context_length
            )));
        }
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let logits = self.model.forward(&input, self.position)?;
        self.position += ids.len();
        Ok(logits.squeeze(0)?.to_vec1::<f32>()?)
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
        let mut sampler = Sampler::new(options.sampling.clone())?;
        let mut tokens = Vec::new();
        if options.max_tokens == 0 {
            return Ok(Generation {
                tokens,
                stop: StopReason::MaxTokens,
            });
        }
        let mut logits = self.feed(prompt)?;
        loop {
            let next = sampler.sample(&logits)?;
            tokens.push(next);
            if !on_token(next) {
                return Ok(Generation {
                    tokens,
                    stop: StopReason::Cancelled,
                });
            }
            let stop = if options.stop_ids.contains(&next) {
                Some(StopReason::StopToken)
            } else if tokens.len() >= options.max_tokens {
                Some(StopReason::MaxTokens)
            } else if self.position >= self.context_length {
                Some(StopReason::ContextFull)
            } else {
                None
            };
            if let Some(stop) = stop {
                return Ok(Generation { tokens, stop });
            }
            logits = self.feed(&[next])?;
        }
    }
}
