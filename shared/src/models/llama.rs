//! A llama-family decoder with one KV cache per sequence, so that the decode
//! steps of several sequences share one pass over the weights (batched
//! serving, [`Llama::step`]).
//!
//! Two weight formats load into it: GGUF (quantized, the CPU default; the op
//! sequence is candle's `quantized_llama`, whose logits it reproduces
//! bitwise) and a Hugging Face safetensors folder in f32/f16/bf16 (for GPUs).
//! Every per-token operation (embedding lookup, norms, RoPE, attention, the
//! quantized matmul's per-row activation quantization) is row-independent, so
//! on the CPU a sequence's logits are bitwise the same alone or in a batch.

use std::path::Path;

use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Embedding, Linear};
use serde::Deserialize;

use crate::error::{EeError, Result};

/// Config file of a safetensors generator folder.
pub const CONFIG_FILE: &str = "config.json";
/// Weights file of a safetensors generator folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Token embedding of a safetensors llama.
pub const HF_TOKEN_EMBEDDING: &str = "model.embed_tokens.weight";
/// Output head of a safetensors llama (absent when tied).
pub const HF_OUTPUT_HEAD: &str = "lm_head.weight";

/// A weight matrix `[out, in]`, quantized or dense.
#[derive(Clone)]
enum Weight {
    Quantized(QMatMul),
    Dense(Linear),
}

impl Weight {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Quantized(w) => w.forward(x)?,
            Self::Dense(w) => w.forward(x)?,
        })
    }
}

#[derive(Clone)]
struct Layer {
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    gate: Weight,
    up: Weight,
    down: Weight,
    attn_norm: Tensor,
    ffn_norm: Tensor,
}

/// The shape of a llama model.
#[derive(Clone, Copy, Debug)]
struct Shape {
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    rms_eps: f32,
    /// GGUF stores Q/K rows for interleaved RoPE (pairs 2i, 2i+1); Hugging
    /// Face checkpoints for the half-split kind (pairs i, i + d/2).
    interleaved_rope: bool,
}

/// The weights of one llama-family model, shared by all its sequences.
#[derive(Clone)]
pub struct Llama {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Weight,
    shape: Shape,
    cos: Tensor,
    sin: Tensor,
    neg_inf: Tensor,
    /// Activations' dtype: f32 for GGUF, the weights' dtype for safetensors.
    dtype: DType,
    vocab_size: usize,
    context_length: usize,
    device: Device,
}

/// One sequence's keys and values, per layer: `[1, n_kv_head, len, head_dim]`.
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// Tokens cached so far (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The `[positions, head_dim / 2]` RoPE tables, computed as candle's
/// `quantized_llama` does (an outer product by matmul) so they match bitwise.
fn rope_tables(
    head_dim: usize,
    base: f32,
    positions: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let theta: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / base.powf(i as f32 / head_dim as f32))
        .collect();
    let theta = Tensor::new(theta.as_slice(), device)?;
    let angles = Tensor::arange(0, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?
        .matmul(&theta.reshape((1, theta.elem_count()))?)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// The causal mask of `seq_len` new tokens after `past` cached ones: 1 where
/// a query may not look.
fn causal_mask(seq_len: usize, past: usize, device: &Device) -> Result<Tensor> {
    let kv_len = past + seq_len;
    let mask: Vec<u8> = (0..seq_len)
        .flat_map(|i| (0..kv_len).map(move |j| u8::from(j > past + i)))
        .collect();
    Ok(Tensor::from_slice(&mask, (seq_len, kv_len), device)?)
}

fn model_error(what: impl std::fmt::Display) -> EeError {
    EeError::Model(what.to_string())
}

impl Llama {
    /// Loads a llama-architecture GGUF file's weights onto `device`.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let md = |key: &str| {
            content
                .metadata
                .get(key)
                .ok_or_else(|| model_error(format!("GGUF metadata has no {key}")))
        };
        let arch = md("general.architecture")
            .ok()
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| "llama".into());
        if arch != "llama" {
            return Err(model_error(format!(
                "GGUF architecture {arch:?} is not supported (llama only)"
            )));
        }
        let u =
            |key: &str| -> Result<usize> { Ok(md(key)?.to_u32().map_err(model_error)? as usize) };
        if u("llama.expert_count").unwrap_or(0) > 1 {
            return Err(model_error(
                "mixture-of-experts GGUF models are not supported",
            ));
        }
        let n_head = u("llama.attention.head_count")?;
        let n_kv_head = u("llama.attention.head_count_kv")?;
        let layers = u("llama.block_count")?;
        let embedding = u("llama.embedding_length")?;
        let rope_dim = u("llama.rope.dimension_count")?;
        let rms_eps = md("llama.attention.layer_norm_rms_epsilon")?
            .to_f32()
            .map_err(model_error)?;
        let rope_base = md("llama.rope.freq_base")
            .and_then(|v| v.to_f32().map_err(model_error))
            .unwrap_or(10_000.0);
        let context_length = u("llama.context_length").unwrap_or(2048);
        let mut tensor = |name: &str| {
            content
                .tensor(reader, name, device)
                .map_err(|e| model_error(format!("GGUF tensor {name}: {e}")))
        };
        let embed_q = tensor(super::super::gguf::TOKEN_EMBEDDING)?;
        let vocab_size = embed_q.shape().dims()[0];
        let embed = Embedding::new(embed_q.dequantize(device)?, embedding);
        let norm = tensor("output_norm.weight")?.dequantize(device)?;
        let output = match tensor(super::super::gguf::OUTPUT_HEAD) {
            Ok(head) => head,
            Err(_) => embed_q,
        };
        let q = |t: candle_core::quantized::QTensor| -> Result<Weight> {
            Ok(Weight::Quantized(QMatMul::from_qtensor(t)?))
        };
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let mut t = |suffix: &str| tensor(&format!("blk.{i}.{suffix}.weight"));
            blocks.push(Layer {
                wq: q(t("attn_q")?)?,
                wk: q(t("attn_k")?)?,
                wv: q(t("attn_v")?)?,
                wo: q(t("attn_output")?)?,
                gate: q(t("ffn_gate")?)?,
                up: q(t("ffn_up")?)?,
                down: q(t("ffn_down")?)?,
                attn_norm: t("attn_norm")?.dequantize(device)?,
                ffn_norm: t("ffn_norm")?.dequantize(device)?,
            });
        }
        let shape = Shape {
            n_head,
            n_kv_head,
            head_dim: embedding / n_head,
            rms_eps,
            interleaved_rope: true,
        };
        Self::assemble(
            embed,
            blocks,
            norm,
            q(output)?,
            shape,
            (rope_dim, rope_base),
            DType::F32,
            (vocab_size, context_length),
            device,
        )
    }

    /// Loads a Hugging Face llama folder (`config.json`, `model.safetensors`)
    /// onto `device`, computing in `dtype` (the weights' own when `None`).
    pub fn from_safetensors(dir: &Path, dtype: Option<DType>, device: &Device) -> Result<Self> {
        let config = HfConfig::read(dir)?;
        let weights = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
            .map_err(|e| model_error(format!("{}: {e}", weights.display())))?;
        let file_dtype = tensors
            .get(HF_TOKEN_EMBEDDING)
            .map(Tensor::dtype)
            .ok_or_else(|| {
                model_error(format!("{} has no {HF_TOKEN_EMBEDDING}", weights.display()))
            })?;
        let dtype = dtype.unwrap_or(file_dtype);
        let get = |name: &str| -> Result<Tensor> {
            let t = tensors
                .get(name)
                .ok_or_else(|| model_error(format!("{} has no {name}", weights.display())))?;
            Ok(t.to_dtype(dtype)?.to_device(device)?)
        };
        let dense =
            |name: &str| -> Result<Weight> { Ok(Weight::Dense(Linear::new(get(name)?, None))) };
        let embed_weights = get(HF_TOKEN_EMBEDDING)?;
        let (vocab_size, hidden) = embed_weights.dims2()?;
        if hidden != config.hidden_size || vocab_size != config.vocab_size {
            return Err(model_error(format!(
                "{HF_TOKEN_EMBEDDING} is [{vocab_size}, {hidden}], config says [{}, {}]",
                config.vocab_size, config.hidden_size
            )));
        }
        let output = if tensors.contains_key(HF_OUTPUT_HEAD) {
            dense(HF_OUTPUT_HEAD)?
        } else if config.tie_word_embeddings {
            Weight::Dense(Linear::new(embed_weights.clone(), None))
        } else {
            return Err(model_error(format!(
                "{} has no {HF_OUTPUT_HEAD} and the config does not tie it",
                weights.display()
            )));
        };
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            blocks.push(Layer {
                wq: dense(&format!("{p}.self_attn.q_proj.weight"))?,
                wk: dense(&format!("{p}.self_attn.k_proj.weight"))?,
                wv: dense(&format!("{p}.self_attn.v_proj.weight"))?,
                wo: dense(&format!("{p}.self_attn.o_proj.weight"))?,
                gate: dense(&format!("{p}.mlp.gate_proj.weight"))?,
                up: dense(&format!("{p}.mlp.up_proj.weight"))?,
                down: dense(&format!("{p}.mlp.down_proj.weight"))?,
                attn_norm: get(&format!("{p}.input_layernorm.weight"))?,
                ffn_norm: get(&format!("{p}.post_attention_layernorm.weight"))?,
            });
        }
        let n_kv_head = config
            .num_key_value_heads
            .unwrap_or(config.num_attention_heads);
        let head_dim = config.hidden_size / config.num_attention_heads;
        let shape = Shape {
            n_head: config.num_attention_heads,
            n_kv_head,
            head_dim,
            rms_eps: config.rms_norm_eps as f32,
            interleaved_rope: false,
        };
        Self::assemble(
            Embedding::new(embed_weights, hidden),
            blocks,
            get("model.norm.weight")?,
            output,
            shape,
            (head_dim, config.rope_theta as f32),
            dtype,
            (vocab_size, config.max_position_embeddings),
            device,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        embed: Embedding,
        layers: Vec<Layer>,
        norm: Tensor,
        output: Weight,
        shape: Shape,
        (rope_dim, rope_base): (usize, f32),
        dtype: DType,
        (vocab_size, context_length): (usize, usize),
        device: &Device,
    ) -> Result<Self> {
        if shape.n_head == 0
            || shape.n_kv_head == 0
            || !shape.n_head.is_multiple_of(shape.n_kv_head)
            || rope_dim != shape.head_dim
        {
            return Err(model_error(format!(
                "unsupported attention shape: {} heads, {} key/value heads, head size {}, RoPE size {rope_dim}",
                shape.n_head, shape.n_kv_head, shape.head_dim
            )));
        }
        let (cos, sin) = rope_tables(shape.head_dim, rope_base, context_length.max(1), device)?;
        Ok(Self {
            embed,
            layers,
            norm,
            output,
            shape,
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            neg_inf: Tensor::new(f32::NEG_INFINITY, device)?,
            dtype,
            vocab_size,
            context_length,
            device: device.clone(),
        })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Longest sequence the model supports.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: vec![None; self.layers.len()],
            len: 0,
        }
    }

    /// Feeds `ids` to one sequence (a prompt, or one token) and returns the
    /// logits for its next token, as f32 `[vocab]`.
    pub fn forward(&self, cache: &mut KvCache, ids: &[u32]) -> Result<Tensor> {
        if ids.len() == 1 {
            return Ok(self.step(&mut [cache], ids)?.squeeze(0)?);
        }
        let past = cache.len;
        let seq_len = ids.len();
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let mask = causal_mask(seq_len, past, &self.device)?;
        let cos = self.cos.narrow(0, past, seq_len)?;
        let sin = self.sin.narrow(0, past, seq_len)?;
        let mut x = self.embed.forward(&input)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.shape.rms_eps)?;
            let (q, k, v) = self.qkv(layer, &h, 1, seq_len, &cos, &sin)?;
            let y = self.attend(&mut cache.layers[l], &q, k, v, Some(&mask))?;
            let y = y.transpose(1, 2)?.reshape((1, seq_len, ()))?;
            x = self.finish_layer(layer, x, &y)?;
        }
        cache.len += seq_len;
        self.logits(&x.i((.., seq_len - 1, ..))?)?
            .squeeze(0)
            .map_err(Into::into)
    }

    /// One decode step of several sequences at once: `ids[i]` is fed to
    /// `caches[i]`. The matmuls see all of them as one batch (the weights are
    /// read once); attention runs per sequence, over its own cache. Returns
    /// f32 logits `[batch, vocab]`.
    pub fn step(&self, caches: &mut [&mut KvCache], ids: &[u32]) -> Result<Tensor> {
        let batch = ids.len();
        if batch == 0 || caches.len() != batch {
            return Err(EeError::InvalidArgument(format!(
                "{batch} tokens for {} sequences",
                caches.len()
            )));
        }
        let positions: Vec<u32> = caches.iter().map(|c| c.len as u32).collect();
        let positions = Tensor::new(positions.as_slice(), &self.device)?;
        let half = self.shape.head_dim / 2;
        let cos = self
            .cos
            .index_select(&positions, 0)?
            .reshape((batch, 1, half))?;
        let sin = self
            .sin
            .index_select(&positions, 0)?
            .reshape((batch, 1, half))?;
        let input = Tensor::new(ids, &self.device)?.unsqueeze(1)?;
        let mut x = self.embed.forward(&input)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.shape.rms_eps)?;
            let (q, k, v) = self.qkv(layer, &h, batch, 1, &cos, &sin)?;
            let mut ys = Vec::with_capacity(batch);
            for (i, cache) in caches.iter_mut().enumerate() {
                ys.push(self.attend(
                    &mut cache.layers[l],
                    &q.i(i..i + 1)?,
                    k.i(i..i + 1)?,
                    v.i(i..i + 1)?,
                    None,
                )?);
            }
            let y = Tensor::cat(&ys, 0)?
                .transpose(1, 2)?
                .reshape((batch, 1, ()))?;
            x = self.finish_layer(layer, x, &y)?;
        }
        for cache in caches.iter_mut() {
            cache.len += 1;
        }
        self.logits(&x.squeeze(1)?)
    }

    /// Q, K, V of `h` `[b, t, hidden]` as `[b, heads, t, head_dim]`, with
    /// RoPE applied (`cos`/`sin` are `[t, d/2]`, or `[b, t, d/2]` per row).
    fn qkv(
        &self,
        layer: &Layer,
        h: &Tensor,
        b: usize,
        t: usize,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let s = self.shape;
        let q = layer
            .wq
            .forward(h)?
            .reshape((b, t, s.n_head, s.head_dim))?
            .transpose(1, 2)?;
        let k = layer
            .wk
            .forward(h)?
            .reshape((b, t, s.n_kv_head, s.head_dim))?
            .transpose(1, 2)?;
        let v = layer
            .wv
            .forward(h)?
            .reshape((b, t, s.n_kv_head, s.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let rope = |x: Tensor| -> Result<Tensor> {
            let x = x.contiguous()?;
            Ok(if s.interleaved_rope {
                candle_nn::rotary_emb::rope_i(&x, cos, sin)?
            } else {
                candle_nn::rotary_emb::rope(&x, cos, sin)?
            })
        };
        Ok((rope(q)?, rope(k)?, v))
    }

    /// Appends `k`, `v` (`[1, kv_heads, t, d]`) to one sequence's layer cache
    /// and attends `q` over it; `[1, heads, t, d]`.
    fn attend(
        &self,
        cache: &mut Option<(Tensor, Tensor)>,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (k, v) = match cache.as_ref() {
            Some((k_cache, v_cache)) => (
                Tensor::cat(&[k_cache, &k], 2)?,
                Tensor::cat(&[v_cache, &v], 2)?,
            ),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let repeat = self.shape.n_head / self.shape.n_kv_head;
        let k = candle_transformers::utils::repeat_kv(k, repeat)?;
        let v = candle_transformers::utils::repeat_kv(v, repeat)?;
        // Attention scores in f32 whatever the weights' dtype.
        let (q, k, v) = (
            q.to_dtype(DType::F32)?,
            k.to_dtype(DType::F32)?,
            v.to_dtype(DType::F32)?,
        );
        let att = (q.matmul(&k.t()?)? / (self.shape.head_dim as f64).sqrt())?;
        let att = match mask {
            None => att,
            Some(mask) => {
                let mask = mask.broadcast_as(att.shape())?;
                mask.where_cond(&self.neg_inf.broadcast_as(att.shape().dims())?, &att)?
            }
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        Ok(att.matmul(&v.contiguous()?)?.to_dtype(self.dtype)?)
    }

    /// The attention output projection, both residuals and the MLP.
    fn finish_layer(&self, layer: &Layer, x: Tensor, y: &Tensor) -> Result<Tensor> {
        let x = (layer.wo.forward(y)? + x)?;
        let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.shape.rms_eps)?;
        let gate = candle_nn::ops::silu(&layer.gate.forward(&h)?)?;
        let mlp = layer.down.forward(&(gate * layer.up.forward(&h)?)?)?;
        Ok((mlp + x)?)
    }

    /// Final norm and output head of `[b, hidden]` rows: f32 `[b, vocab]`.
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = candle_nn::ops::rms_norm(x, &self.norm, self.shape.rms_eps)?;
        Ok(self.output.forward(&x)?.to_dtype(DType::F32)?)
    }
}

/// The fields of a Hugging Face llama `config.json` that the model needs.
#[derive(Clone, Debug, Deserialize)]
pub struct HfConfig {
    /// Must be `LlamaForCausalLM`-compatible ("llama").
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    pub num_hidden_layers: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_context")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_context() -> usize {
    2048
}

impl HfConfig {
    /// Reads and checks `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| EeError::io(&path, e))?;
        let value = serde_json::from_str(&text)
            .map_err(|e| model_error(format!("{}: {e}", path.display())))?;
        Self::check(value, &path)
    }

    /// Checks a parsed `config.json` (`path` names it in errors).
    pub fn check(value: serde_json::Value, path: &Path) -> Result<Self> {
        let config: Self = serde_json::from_value(value)
            .map_err(|e| model_error(format!("{}: {e}", path.display())))?;
        if let Some(kind) = config.model_type.as_deref().filter(|k| *k != "llama") {
            return Err(model_error(format!(
                "{}: model_type {kind:?} is not supported (llama only)",
                path.display()
            )));
        }
        if config.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(model_error(format!(
                "{}: rope_scaling is not supported",
                path.display()
            )));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::tiny_llama;
    use candle_transformers::models::quantized_llama::ModelWeights;

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    }

    fn argmax(t: &Tensor) -> u32 {
        crate::sampling::argmax(&t.to_vec1::<f32>().unwrap())
    }

    #[test]
    fn reproduces_candle_quantized_llama_bitwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        tiny_llama(&path, true);
        let (content, mut reader) = crate::gguf::read(&path).unwrap();
        let ours = Llama::from_gguf(&content, &mut reader, &Device::Cpu).unwrap();
        let (content, mut reader) = crate::gguf::read(&path).unwrap();
        let mut theirs = ModelWeights::from_gguf(content, &mut reader, &Device::Cpu).unwrap();

        let mut cache = ours.new_cache();
        let prompt = [3u32, 17, 42, 5, 88, 1, 60];
        let mut mine = ours.forward(&mut cache, &prompt).unwrap();
        let input = Tensor::new(&prompt[..], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut reference = theirs.forward(&input, 0).unwrap().squeeze(0).unwrap();
        let mut position = prompt.len();
        for step in 0..8 {
            assert_eq!(
                bits(&mine),
                bits(&reference),
                "logits differ at step {step}"
            );
            let next = argmax(&mine);
            mine = ours.forward(&mut cache, &[next]).unwrap();
            let input = Tensor::new(&[next], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            reference = theirs
                .forward(&input, position)
                .unwrap()
                .squeeze(0)
                .unwrap();
            position += 1;
        }
        assert_eq!(cache.len(), position);
    }

    #[test]
    fn a_batched_step_gives_each_sequence_its_logits_alone_bitwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        tiny_llama(&path, false);
        let (content, mut reader) = crate::gguf::read(&path).unwrap();
        let model = Llama::from_gguf(&content, &mut reader, &Device::Cpu).unwrap();
        let prompts: [&[u32]; 3] = [&[7, 8], &[1, 2, 3, 4, 5], &[90, 12, 33, 4, 4, 4, 61, 0, 9]];

        // Alone: each sequence prompt-fed, then stepped on its own.
        let mut alone: Vec<Vec<Vec<u32>>> = Vec::new();
        for prompt in prompts {
            let mut cache = model.new_cache();
            let mut logits = model.forward(&mut cache, prompt).unwrap();
            let mut steps = vec![bits(&logits)];
            for _ in 0..6 {
                logits = model.forward(&mut cache, &[argmax(&logits)]).unwrap();
                steps.push(bits(&logits));
            }
            alone.push(steps);
        }

        // Together: the same prompts, then every step in one batch.
        let mut caches: Vec<KvCache> = Vec::new();
        let mut next = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let mut cache = model.new_cache();
            let logits = model.forward(&mut cache, prompt).unwrap();
            assert_eq!(bits(&logits), alone[i][0]);
            next.push(argmax(&logits));
            caches.push(cache);
        }
        for step in 1..=6 {
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            let logits = model.step(&mut refs, &next).unwrap();
            for (i, expected) in alone.iter().enumerate() {
                let row = logits.get(i).unwrap();
                assert_eq!(bits(&row), expected[step], "sequence {i}, step {step}");
                next[i] = argmax(&row);
            }
        }
        let lens: Vec<usize> = caches.iter().map(KvCache::len).collect();
        assert_eq!(lens, vec![8, 11, 15]);
    }

    #[test]
    fn unsupported_models_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            r#"{"model_type": "mistral", "hidden_size": 8, "num_attention_heads": 2,
                "num_hidden_layers": 1, "vocab_size": 4, "rms_norm_eps": 1e-5}"#,
        )
        .unwrap();
        let err = HfConfig::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("mistral") && err.contains("llama only"),
            "{err}"
        );
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            r#"{"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
                "vocab_size": 4, "rms_norm_eps": 1e-5, "rope_scaling": {"type": "llama3"}}"#,
        )
        .unwrap();
        let err = HfConfig::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("rope_scaling"), "{err}");
    }
}
