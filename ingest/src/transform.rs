//! `eerag transform`: turns the public base models into host artifacts for
//! one key (docs/design.md, "Keys and transforms"). The layout and the host's
//! reader are in `eerag_core::artifacts`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use eerag_core::artifacts::{
    artifact_files, staging_beside, EncoderInfo, GeneratorFormat, GeneratorInfo, Manifest,
    ENCODER_SUBDIR, GENERATOR_FILE, GENERATOR_SUBDIR, MANIFEST_FILE, MANIFEST_FORMAT,
    TRANSFORMED_MARK,
};
use eerag_core::error::{EeError, Result};
use eerag_core::gguf;
use eerag_core::hash::sha256_file;
use eerag_core::models::encoder::{CONFIG_FILE, ROTATION_TENSOR, WEIGHTS_FILE};
use eerag_core::models::llama;

use crate::key::Key;

/// Writes the host artifacts for `key` into `out`. `out` must not exist or be
/// empty unless `overwrite`; the files are written to a sibling temporary
/// directory and renamed into place, so a failed run leaves nothing half done.
pub fn transform(
    key: &Key,
    encoder_dir: &Path,
    generator: &Path,
    out: &Path,
    overwrite: bool,
) -> Result<Manifest> {
    let refuse = |reason: &str| EeError::Artifacts {
        dir: out.to_path_buf(),
        reason: reason.into(),
    };
    let mut replacing = false;
    if out.exists() {
        let non_empty = std::fs::read_dir(out)
            .map_err(|e| EeError::io(out, e))?
            .next()
            .is_some();
        if non_empty {
            // --force replaces earlier artifacts, never an arbitrary directory.
            if !out.join(MANIFEST_FILE).is_file() {
                return Err(refuse(
                    "directory is not empty and holds no eerag artifacts",
                ));
            }
            if !overwrite {
                return Err(refuse(
                    "directory is not empty (pass --force to replace it)",
                ));
            }
            replacing = true;
        }
    }
    let (parent, name, staging) = staging_beside(out)
        .ok_or_else(|| refuse("the output path must end in a directory name"))??;
    let manifest = match write_artifacts(key, encoder_dir, generator, &staging) {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    // Move the old artifacts aside before the new ones take the name, so a
    // failure in between leaves one complete set in place or beside it.
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if replacing {
        std::fs::rename(out, &old).map_err(|e| EeError::io(out, e))?;
    } else if out.exists() {
        std::fs::remove_dir(out).map_err(|e| EeError::io(out, e))?;
    }
    if let Err(e) = std::fs::rename(&staging, out) {
        if replacing {
            let _ = std::fs::rename(&old, out);
        }
        return Err(EeError::io(out, e));
    }
    if replacing {
        std::fs::remove_dir_all(&old).map_err(|e| EeError::io(&old, e))?;
    }
    Ok(manifest)
}

fn write_artifacts(
    key: &Key,
    encoder_dir: &Path,
    generator_base: &Path,
    dir: &Path,
) -> Result<Manifest> {
    let enc_dir = dir.join(ENCODER_SUBDIR);
    std::fs::create_dir_all(&enc_dir).map_err(|e| EeError::io(&enc_dir, e))?;
    let encoder = transform_encoder(key, encoder_dir, &enc_dir)?;

    let generator = if eerag_core::models::generator::is_safetensors_dir(generator_base) {
        let out = dir.join(GENERATOR_SUBDIR);
        std::fs::create_dir_all(&out).map_err(|e| EeError::io(&out, e))?;
        transform_safetensors_generator(key, generator_base, &out)?
    } else {
        transform_gguf_generator(key, generator_base, &dir.join(GENERATOR_FILE))?
    };

    let mut files = BTreeMap::new();
    for rel in artifact_files(generator.format) {
        files.insert(rel.clone(), sha256_file(&dir.join(&rel))?);
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        key_id: key.id(),
        created_unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        encoder,
        generator,
        files,
    };
    let path = dir.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    std::fs::write(&path, text).map_err(|e| EeError::io(&path, e))?;
    Ok(manifest)
}

/// Writes the GGUF generator with its vocabulary rows permuted, whole
/// quantized rows at a time (bitwise exact).
fn transform_gguf_generator(key: &Key, base: &Path, out: &Path) -> Result<GeneratorInfo> {
    let parent = out.parent().expect("generator path has a parent");
    std::fs::create_dir_all(parent).map_err(|e| EeError::io(parent, e))?;
    let (content, _) = gguf::read(base)?;
    // Host artifacts have their tokenizer stripped: a GGUF without one is
    // most likely transformed already, and permuting it again is garbage.
    if !content.metadata.contains_key("tokenizer.ggml.tokens") {
        return Err(EeError::Model(format!(
            "{} has no tokenizer metadata: transform the public base model, not host artifacts",
            base.display()
        )));
    }
    let vocab = gguf::vocab_size(&content)?;
    let has_output_head = content.tensor_infos.contains_key(gguf::OUTPUT_HEAD);
    drop(content);
    gguf::write_permuted(base, out, &key.generator_permutation(vocab))?;
    Ok(GeneratorInfo {
        vocab_size: vocab,
        base_sha256: sha256_file(base)?,
        has_output_head,
        format: GeneratorFormat::Gguf,
    })
}

/// Writes the safetensors generator with the rows of `embed_tokens` (and of
/// `lm_head`, when it has its own) permuted by `π_gen`: row `t` moves to row
/// `π[t]`, copied bit for bit in the file's own dtype.
fn transform_safetensors_generator(key: &Key, base: &Path, out: &Path) -> Result<GeneratorInfo> {
    let config_src = base.join(llama::CONFIG_FILE);
    let config_text =
        std::fs::read_to_string(&config_src).map_err(|e| EeError::io(&config_src, e))?;
    let mut config: serde_json::Value = serde_json::from_str(&config_text)
        .map_err(|e| EeError::Model(format!("{}: {e}", config_src.display())))?;
    if config.get(TRANSFORMED_MARK).is_some() {
        return Err(EeError::Model(format!(
            "{} is already transformed: transform the public base model",
            base.display()
        )));
    }
    // Refuse what the host could not load, before writing anything.
    llama::HfConfig::check(config.clone(), &config_src)?;
    let weights = base.join(llama::WEIGHTS_FILE);
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&weights, &Device::Cpu)?;
    let vocab = match tensors.get(llama::HF_TOKEN_EMBEDDING).map(Tensor::dims) {
        Some([vocab, _]) => *vocab,
        other => {
            return Err(EeError::Model(format!(
                "{}: {} is {other:?}, expected [vocab, dim]",
                weights.display(),
                llama::HF_TOKEN_EMBEDDING
            )))
        }
    };
    let perm = key.generator_permutation(vocab);
    let index = Tensor::new(perm.inverse_table(), &Device::Cpu)?;
    let has_output_head = tensors.contains_key(llama::HF_OUTPUT_HEAD);
    for name in [llama::HF_TOKEN_EMBEDDING, llama::HF_OUTPUT_HEAD] {
        if let Some(table) = tensors.get(name) {
            if table.dims().first() != Some(&vocab) {
                return Err(EeError::VocabMismatch {
                    vocab: "generator",
                    expected: vocab,
                    found: table.dims().first().copied().unwrap_or(0),
                });
            }
            // new[c] = old[π⁻¹[c]]: index_select copies rows exactly.
            let permuted = table.index_select(&index, 0)?;
            tensors.insert(name.to_string(), permuted);
        }
    }
    candle_core::safetensors::save(&tensors, out.join(llama::WEIGHTS_FILE))?;
    config[TRANSFORMED_MARK] = serde_json::Value::Bool(true);
    let config_dst = out.join(llama::CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config).expect("config serialises");
    std::fs::write(&config_dst, text).map_err(|e| EeError::io(&config_dst, e))?;
    Ok(GeneratorInfo {
        vocab_size: vocab,
        base_sha256: sha256_file(&weights)?,
        has_output_head,
        format: GeneratorFormat::Safetensors,
    })
}

/// Permutes the word-embedding rows by `π_enc` (bitwise copies) and adds `R`.
fn transform_encoder(key: &Key, base: &Path, out: &Path) -> Result<EncoderInfo> {
    let config_src = base.join(CONFIG_FILE);
    let config_text =
        std::fs::read_to_string(&config_src).map_err(|e| EeError::io(&config_src, e))?;
    let config: serde_json::Value = serde_json::from_str(&config_text)
        .map_err(|e| EeError::Model(format!("{}: {e}", config_src.display())))?;
    let dim = config["hidden_size"]
        .as_u64()
        .ok_or_else(|| EeError::Model("encoder config has no hidden_size".into()))?
        as usize;
    let weights = base.join(WEIGHTS_FILE);
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&weights, &Device::Cpu)?;
    if tensors.contains_key(ROTATION_TENSOR) {
        return Err(EeError::Model(format!(
            "{} is already transformed: transform the public base model",
            weights.display()
        )));
    }
    let name = tensors
        .keys()
        .find(|k| k.ends_with("embeddings.word_embeddings.weight"))
        .cloned()
        .ok_or_else(|| EeError::Model("encoder has no word_embeddings.weight".into()))?;
    let table = &tensors[&name];
    let vocab = match table.dims() {
        [vocab, _] => *vocab,
        dims => {
            return Err(EeError::Model(format!(
                "{name} has shape {dims:?}, expected [vocab, dim]"
            )))
        }
    };
    let perm = key.encoder_permutation(vocab);
    // new[c] = old[π⁻¹[c]], i.e. row t moves to row π[t].
    let inverse: Vec<u32> = (0..vocab as u32)
        .map(|c| perm.invert(c))
        .collect::<Result<_>>()?;
    let index = Tensor::new(inverse.as_slice(), &Device::Cpu)?;
    let permuted = table.index_select(&index, 0)?;
    tensors.insert(name, permuted);
    let r = key.rotation(dim);
    tensors.insert(
        ROTATION_TENSOR.into(),
        Tensor::from_slice(r.rows(), (dim, dim), &Device::Cpu)?,
    );
    candle_core::safetensors::save(&tensors, out.join(WEIGHTS_FILE))?;
    let config_dst = out.join(CONFIG_FILE);
    std::fs::write(&config_dst, config_text).map_err(|e| EeError::io(&config_dst, e))?;
    Ok(EncoderInfo {
        vocab_size: vocab,
        dim,
        base_sha256: sha256_file(&weights)?,
        pooling: "mean+l2".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use eerag_core::models::Generator;
    use eerag_core::test_support::{greedy_walk_permuted, tiny_llama};

    /// Plaintext and transformed safetensors generators of one tiny model:
    /// logits bitwise equal up to the permutation, at every step.
    fn check_safetensors_transform(dtype: DType) {
        let dir = tempfile::tempdir().unwrap();
        let gguf_path = dir.path().join("tiny.gguf");
        tiny_llama(&gguf_path, true);
        let base = dir.path().join("base");
        eerag_core::convert::export_generator(&gguf_path, &base, dtype).unwrap();
        let key = Key::from_secret([9; 32]);
        let out = dir.path().join("generator");
        std::fs::create_dir_all(&out).unwrap();
        let info = transform_safetensors_generator(&key, &base, &out).unwrap();
        assert_eq!(info.format, GeneratorFormat::Safetensors);
        assert!(info.has_output_head);
        // Transforming host artifacts again is refused.
        let again = dir.path().join("again");
        std::fs::create_dir_all(&again).unwrap();
        let err = transform_safetensors_generator(&key, &out, &again).unwrap_err();
        assert!(err.to_string().contains("already transformed"), "{err}");

        let perm = key.generator_permutation(info.vocab_size);
        let plain = Generator::load(&base, &Device::Cpu).unwrap();
        let host = Generator::load(&out, &Device::Cpu).unwrap();
        let prompt = [3u32, 17, 42, 5, 88];
        greedy_walk_permuted(&plain, &host, &prompt, &perm, 8, &format!("{dtype:?}"));
    }

    #[test]
    fn safetensors_generator_permutes_exactly_in_f32() {
        check_safetensors_transform(DType::F32);
    }

    #[test]
    fn safetensors_generator_permutes_exactly_in_f16() {
        check_safetensors_transform(DType::F16);
    }

    #[test]
    fn safetensors_generator_permutes_exactly_in_bf16() {
        check_safetensors_transform(DType::BF16);
    }
}
