//! The sentence encoder: BERT, mean pooling, L2 normalisation and, in
//! transformed host artifacts, the secret rotation `R` as a final linear map.
//!
//! Two implementations of the BERT forward pass: eerag's own for the CPU
//! ([`crate::models::bert`], the default there: about twice candle's speed)
//! and candle-transformers' `BertModel` (every device).

use std::path::Path;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, HiddenAct, PositionEmbeddingType};

use crate::error::{EeError, Result};
use crate::models::bert::{BertShape, CpuBert};

/// Which implementation runs the encoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncoderBackend {
    /// eerag's CPU forward pass on the CPU (when the model is one it
    /// supports: absolute positions, erf GELU), candle otherwise.
    #[default]
    Auto,
    /// candle-transformers' BertModel, on any device.
    Candle,
    /// eerag's CPU forward pass.
    Cpu,
}

impl FromStr for EncoderBackend {
    type Err = EeError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "candle" => Ok(Self::Candle),
            "cpu" | "eerag" => Ok(Self::Cpu),
            other => Err(EeError::InvalidArgument(format!(
                "encoder backend {other:?}: expected auto, candle or cpu"
            ))),
        }
    }
}

impl std::fmt::Display for EncoderBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Candle => "candle",
            Self::Cpu => "cpu",
        })
    }
}

/// The loaded forward pass.
enum Forward {
    Candle(BertModel),
    Cpu(CpuBert),
}

/// Name of the extra tensor that transformed encoder artifacts carry: `R`,
/// row-major `[dim, dim]`, applied after pooling and normalisation.
pub const ROTATION_TENSOR: &str = "eerag.rotation";
/// Weights file inside an encoder directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Config file inside an encoder directory.
pub const CONFIG_FILE: &str = "config.json";

/// A BERT-family sentence encoder. The same code runs the public model on
/// plaintext ids and the transformed model on encrypted ids.
pub struct Encoder {
    model: Forward,
    rotation: Option<Tensor>,
    config: Config,
    device: Device,
}

impl Encoder {
    /// Loads `config.json` and `model.safetensors` from `dir`, on the
    /// automatic backend.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_with(dir, device, EncoderBackend::Auto)
    }

    /// As [`Encoder::load`], on `backend` (`Cpu` needs the CPU device).
    pub fn load_with(dir: &Path, device: &Device, backend: EncoderBackend) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let config_text =
            std::fs::read_to_string(&config_path).map_err(|e| EeError::io(&config_path, e))?;
        let config: Config = serde_json::from_str(&config_text)
            .map_err(|e| EeError::Model(format!("{}: {e}", config_path.display())))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        if !weights_path.exists() {
            return Err(EeError::Model(format!(
                "no encoder weights at {}",
                weights_path.display()
            )));
        }
        let mut tensors = candle_core::safetensors::load(&weights_path, device)?;
        let rotation = tensors.remove(ROTATION_TENSOR);
        if let Some(r) = &rotation {
            if r.dims() != [config.hidden_size, config.hidden_size] {
                return Err(EeError::Model(format!(
                    "{ROTATION_TENSOR} has shape {:?}, expected [{1}, {1}]",
                    r.dims(),
                    config.hidden_size
                )));
            }
        }
        let dtype = tensors
            .iter()
            .find(|(k, _)| k.ends_with("word_embeddings.weight"))
            .map(|(_, t)| t.dtype())
            .ok_or_else(|| EeError::Model("encoder has no word_embeddings.weight".into()))?;
        let cpu_supported = matches!(config.hidden_act, HiddenAct::Gelu)
            && matches!(
                config.position_embedding_type,
                PositionEmbeddingType::Absolute
            );
        let use_cpu = match backend {
            EncoderBackend::Candle => false,
            EncoderBackend::Auto => device.is_cpu() && cpu_supported,
            EncoderBackend::Cpu if !device.is_cpu() => {
                return Err(EeError::InvalidArgument(
                    "the cpu encoder backend runs on the CPU only".into(),
                ))
            }
            EncoderBackend::Cpu if !cpu_supported => {
                return Err(EeError::Model(format!(
                    "{}: the cpu encoder backend supports BERT with absolute positions and \
                     the erf GELU; use the candle backend",
                    config_path.display()
                )))
            }
            EncoderBackend::Cpu => true,
        };
        let model = if use_cpu {
            Forward::Cpu(CpuBert::new(
                &tensors,
                BertShape {
                    vocab: config.vocab_size,
                    hidden: config.hidden_size,
                    heads: config.num_attention_heads,
                    intermediate: config.intermediate_size,
                    max_positions: config.max_position_embeddings,
                    layers: config.num_hidden_layers,
                    eps: config.layer_norm_eps as f32,
                },
            )?)
        } else {
            let vb = VarBuilder::from_tensors(tensors, dtype, device);
            Forward::Candle(BertModel::load(vb, &config)?)
        };
        let rotation = rotation.map(|r| r.to_dtype(DType::F32)).transpose()?;
        Ok(Self {
            model,
            rotation,
            config,
            device: device.clone(),
        })
    }

    /// The backend running this encoder (never `Auto`).
    pub fn backend(&self) -> EncoderBackend {
        match self.model {
            Forward::Candle(_) => EncoderBackend::Candle,
            Forward::Cpu(_) => EncoderBackend::Cpu,
        }
    }

    /// Vocabulary size: ids must be below it.
    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// Longest sequence the position embeddings allow.
    pub fn max_tokens(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// Whether this encoder applies a secret rotation (transformed artifacts).
    pub fn is_rotated(&self) -> bool {
        self.rotation.is_some()
    }

    /// Embeds sequences in batches of `batch_size` and returns one unit-length
    /// vector per sequence, in the order given.
    ///
    /// Batches are cut from the sequences sorted by length (as
    /// sentence-transformers does), so each batch pads to a length close to
    /// all of its members' and little compute goes to padding. The order
    /// depends only on lengths, which encryption keeps, so the encrypted and
    /// the plaintext run batch the same sequences together.
    pub fn embed(&self, seqs: &[&[u32]], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
        let mut out = vec![Vec::new(); seqs.len()];
        for batch in order.chunks(batch_size.max(1)) {
            let members: Vec<&[u32]> = batch.iter().map(|&i| seqs[i]).collect();
            for (&i, vector) in batch.iter().zip(self.embed_batch(&members)?) {
                out[i] = vector;
            }
        }
        Ok(out)
    }

    /// One forward pass over `batch`, padded to its longest sequence.
    ///
    /// Padding uses id 0 under a zero attention mask. Masked positions get
    /// exactly zero attention weight and are excluded from pooling, so the
    /// result does not depend on which id pads — which is why the host can pad
    /// encrypted sequences without knowing the encrypted `[PAD]`.
    pub fn embed_batch(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let max_len = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        if max_len == 0 || max_len > self.max_tokens() {
            return Err(EeError::InvalidArgument(format!(
                "sequences must hold 1 to {} tokens, got {max_len}",
                self.max_tokens()
            )));
        }
        let vocab = self.vocab_size();
        for seq in batch {
            if seq.is_empty() {
                return Err(EeError::InvalidArgument("empty sequence".into()));
            }
            if let Some(&id) = seq.iter().find(|&&id| id as usize >= vocab) {
                return Err(EeError::OutOfVocabulary {
                    id,
                    vocab: "encoder",
                    size: vocab,
                });
            }
        }
        let model = match &self.model {
            Forward::Candle(model) => model,
            Forward::Cpu(model) => {
                let dim = self.dim();
                let pooled = model.pooled(batch);
                let pooled = Tensor::from_vec(
                    pooled.into_iter().flatten().collect::<Vec<f32>>(),
                    (batch.len(), dim),
                    &self.device,
                )?;
                return self.finish(pooled);
            }
        };
        let mut ids = Vec::with_capacity(batch.len() * max_len);
        let mut mask = Vec::with_capacity(batch.len() * max_len);
        for seq in batch {
            ids.extend_from_slice(seq);
            ids.extend(std::iter::repeat_n(0u32, max_len - seq.len()));
            mask.extend(std::iter::repeat_n(1u32, seq.len()));
            mask.extend(std::iter::repeat_n(0u32, max_len - seq.len()));
        }
        let shape = (batch.len(), max_len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = model.forward(&ids, &token_types, Some(&mask))?;
        let hidden = hidden.to_dtype(DType::F32)?;
        // Mean pooling over real tokens.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?;
        let pooled = summed.broadcast_div(&counts)?;
        self.finish(pooled)
    }

    /// Normalises pooled vectors `[batch, dim]` and applies the rotation.
    fn finish(&self, pooled: Tensor) -> Result<Vec<Vec<f32>>> {
        let norms = pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let mut unit = pooled.broadcast_div(&norms)?;
        if let Some(r) = &self.rotation {
            // Row vectors: (R·v)ᵀ = vᵀ·Rᵀ.
            unit = unit.matmul(&r.t()?)?;
        }
        Ok(unit.to_vec2::<f32>()?)
    }
}
