//! `eerag models export-generator`: a llama GGUF as a Hugging Face safetensors
//! folder in f32, f16 or bf16, the GPU format.
//!
//! The public models here ship as GGUF only (no Hugging Face access), so this
//! is how a GPU host gets dense weights of the same model. Each tensor is
//! dequantized and cast; Q and K rows are put back in Hugging Face order
//! (llama.cpp's converter interleaves them for its RoPE, and the safetensors
//! loader uses the half-split RoPE), so the folder loads like any Hugging Face
//! llama checkpoint. The result is the same function as the GGUF up to the
//! rounding of the dequantized weights; the transform then permutes it
//! exactly.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use crate::error::{EeError, Result};
use crate::gguf;
use crate::models::llama::{CONFIG_FILE, HF_OUTPUT_HEAD, HF_TOKEN_EMBEDDING, WEIGHTS_FILE};

/// Facts about a written export.
#[derive(Clone, Debug)]
pub struct Export {
    /// Tensors written.
    pub tensors: usize,
    /// Size of `model.safetensors` in bytes.
    pub bytes: u64,
}

/// Parses `f32`, `f16` or `bf16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(EeError::InvalidArgument(format!(
            "unknown dtype {s:?}: expected f32, f16 or bf16"
        ))),
    }
}

fn md_u32(content: &gguf_file::Content, key: &str) -> Result<usize> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_u32().ok())
        .map(|v| v as usize)
        .ok_or_else(|| EeError::Model(format!("GGUF metadata has no {key}")))
}

/// The Hugging Face name of a GGUF llama tensor.
fn hf_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        gguf::TOKEN_EMBEDDING => return Some(HF_TOKEN_EMBEDDING.into()),
        gguf::OUTPUT_HEAD => return Some(HF_OUTPUT_HEAD.into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let hf = match part {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's Q/K row interleaving: GGUF rows are
/// `hf.reshape(heads, 2, d/2, in).transpose(1, 2)`.
fn unpermute_rows(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    if heads == 0 || !out.is_multiple_of(heads * 2) {
        return Err(EeError::Model(format!(
            "{out} rows do not split into {heads} heads"
        )));
    }
    Ok(w.reshape((heads, out / heads / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// Writes `out/config.json` and `out/model.safetensors` from the llama GGUF
/// at `gguf_path`, with every tensor in `dtype`. `out` must not exist.
pub fn export_generator(gguf_path: &Path, out: &Path, dtype: DType) -> Result<Export> {
    if out.exists() {
        return Err(EeError::InvalidArgument(format!(
            "{} already exists",
            out.display()
        )));
    }
    let (content, mut reader) = gguf::read(gguf_path)?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_default();
    if arch != "llama" {
        return Err(EeError::Model(format!(
            "{}: architecture {arch:?}, only llama can be exported",
            gguf_path.display()
        )));
    }
    let heads = md_u32(&content, "llama.attention.head_count")?;
    let kv_heads = md_u32(&content, "llama.attention.head_count_kv")?;
    let hidden = md_u32(&content, "llama.embedding_length")?;
    let layers = md_u32(&content, "llama.block_count")?;
    let ffn = match content.tensor_infos.get("blk.0.ffn_gate.weight") {
        Some(info) => info.shape.dims()[0],
        None => md_u32(&content, "llama.feed_forward_length")?,
    };
    let context = md_u32(&content, "llama.context_length").unwrap_or(2048);
    let eps = content
        .metadata
        .get("llama.attention.layer_norm_rms_epsilon")
        .and_then(|v| v.to_f32().ok())
        .ok_or_else(|| EeError::Model("GGUF metadata has no rms epsilon".into()))?;
    let rope_theta = content
        .metadata
        .get("llama.rope.freq_base")
        .and_then(|v| v.to_f32().ok())
        .unwrap_or(10_000.0);
    let vocab = gguf::vocab_size(&content)?;
    let tied = !content.tensor_infos.contains_key(gguf::OUTPUT_HEAD);

    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    for name in names {
        let hf = hf_name(&name).ok_or_else(|| {
            EeError::Model(format!("GGUF tensor {name} has no llama counterpart"))
        })?;
        let q = content.tensor(&mut reader, &name, &Device::Cpu)?;
        let mut w = q.dequantize(&Device::Cpu)?;
        if name.ends_with("attn_q.weight") {
            w = unpermute_rows(&w, heads)?;
        } else if name.ends_with("attn_k.weight") {
            w = unpermute_rows(&w, kv_heads)?;
        }
        tensors.insert(hf, w.to_dtype(dtype)?);
    }
    let dtype_name = match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    };
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "rms_norm_eps": eps,
        "rope_theta": rope_theta,
        "max_position_embeddings": context,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype_name,
        "hidden_act": "silu",
    });
    // Written beside, then renamed: a failed export leaves no half folder.
    let (_, _, staging) = crate::artifacts::staging_beside(out)
        .ok_or_else(|| EeError::InvalidArgument("the output must end in a folder name".into()))??;
    std::fs::create_dir_all(&staging).map_err(|e| EeError::io(&staging, e))?;
    let written = (|| -> Result<()> {
        candle_core::safetensors::save(&tensors, staging.join(WEIGHTS_FILE))?;
        let text = serde_json::to_string_pretty(&config).expect("config serialises");
        let path = staging.join(CONFIG_FILE);
        std::fs::write(&path, text).map_err(|e| EeError::io(&path, e))
    })();
    if let Err(e) =
        written.and_then(|_| std::fs::rename(&staging, out).map_err(|e| EeError::io(out, e)))
    {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let bytes = std::fs::metadata(out.join(WEIGHTS_FILE))
        .map_err(|e| EeError::io(out, e))?
        .len();
    Ok(Export {
        tensors: tensors.len(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Generator;
    use crate::test_support::tiny_llama;

    #[test]
    fn the_export_computes_what_the_gguf_computes() {
        let dir = tempfile::tempdir().unwrap();
        let gguf_path = dir.path().join("tiny.gguf");
        tiny_llama(&gguf_path, false);
        let out = dir.path().join("st");
        let export = export_generator(&gguf_path, &out, DType::F32).unwrap();
        assert_eq!(export.tensors, 11);
        assert!(
            export_generator(&gguf_path, &out, DType::F32).is_err(),
            "refuses to overwrite"
        );

        let quantized = crate::test_support::load_on(
            &gguf_path,
            crate::models::generator::GeneratorBackend::Candle,
        );
        let dense = Generator::load(&out, &Device::Cpu).unwrap();
        assert_eq!(dense.vocab_size(), quantized.vocab_size());
        assert_eq!(dense.context_length(), quantized.context_length());
        let (mut q, mut d) = (quantized.session(), dense.session());
        let prompt = [3u32, 17, 42, 5, 88];
        let (mut ql, mut dl) = (q.feed(&prompt).unwrap(), d.feed(&prompt).unwrap());
        for step in 0..6 {
            // The same function up to the Q8_0 head's activation rounding.
            crate::test_support::assert_logits_close(&ql, &dl, &format!("step {step}"));
            let next = crate::sampling::argmax(&ql);
            assert_eq!(crate::sampling::argmax(&dl), next, "step {step}");
            ql = q.feed(&[next]).unwrap();
            dl = d.feed(&[next]).unwrap();
        }
    }

    #[test]
    fn a_dtype_for_a_gguf_is_refused_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let gguf_path = dir.path().join("tiny.gguf");
        tiny_llama(&gguf_path, false);
        let err = Generator::load_as(&gguf_path, Some(DType::F16), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("keeps its own quantization"), "{err}");
        assert!(Generator::load_as(&gguf_path, Some(DType::F32), &Device::Cpu).is_ok());
    }

    #[test]
    fn bad_dtypes_and_non_llama_files_are_refused() {
        assert!(parse_dtype("f8")
            .unwrap_err()
            .to_string()
            .contains("f32, f16 or bf16"));
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.gguf");
        std::fs::write(&junk, b"not a gguf").unwrap();
        assert!(export_generator(&junk, &dir.path().join("out"), DType::F16).is_err());
        assert!(!dir.path().join("out").exists());
    }
}
