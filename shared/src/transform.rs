//! `eerag transform`: turns the public base models into host artifacts for one
//! key (DESIGN.md §2), and opens such artifacts on the host.
//!
//! Layout of an artifacts directory:
//! ```text
//! manifest.json              key id, vocab sizes, base-model hashes, SHA-256 of every file
//! encoder/config.json        unchanged BERT config
//! encoder/model.safetensors  word-embedding rows permuted by π_enc, plus `eerag.rotation` = R
//! generator/model.gguf       token-embedding (and output) rows permuted by π_gen; no tokenizer
//! ```
//! No tokenizer and no key material beyond the permuted weights is written.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{EeError, Result};
use crate::gguf;
use crate::hash::sha256_file;
use crate::key::{Key, KeyId};
use crate::models::encoder::{CONFIG_FILE, ROTATION_TENSOR, WEIGHTS_FILE};

/// Format tag of manifests written by this build.
pub const MANIFEST_FORMAT: &str = "eerag-artifacts/1";
/// Manifest file name.
pub const MANIFEST_FILE: &str = "manifest.json";
const ENCODER_SUBDIR: &str = "encoder";
const GENERATOR_FILE: &str = "generator/model.gguf";

/// What the host needs to know about its artifacts; nothing in it is secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// The key the artifacts were made for.
    pub key_id: KeyId,
    /// Seconds since the Unix epoch.
    pub created_unix_secs: u64,
    /// The transformed encoder.
    pub encoder: EncoderInfo,
    /// The transformed generator.
    pub generator: GeneratorInfo,
    /// SHA-256 of every artifact file, by path relative to the directory.
    pub files: BTreeMap<String, String>,
}

/// Encoder facts recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderInfo {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Embedding dimension.
    pub dim: usize,
    /// SHA-256 of the base model's weights.
    pub base_sha256: String,
    /// Pooling applied after the last layer.
    pub pooling: String,
}

/// Generator facts recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeneratorInfo {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// SHA-256 of the base GGUF.
    pub base_sha256: String,
    /// Whether the model has its own output head (else tied to the embedding).
    pub has_output_head: bool,
}

/// Writes the host artifacts for `key` into `out`. `out` must not exist or be
/// empty unless `overwrite`; the files are written to a sibling temporary
/// directory and renamed into place, so a failed run leaves nothing half done.
pub fn transform(
    key: &Key,
    encoder_dir: &Path,
    generator_gguf: &Path,
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
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| refuse("the output path must end in a directory name"))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| EeError::io(parent, e))?;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| EeError::io(&staging, e))?;
    }
    let manifest = match write_artifacts(key, encoder_dir, generator_gguf, &staging) {
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
    generator_gguf: &Path,
    dir: &Path,
) -> Result<Manifest> {
    let enc_dir = dir.join(ENCODER_SUBDIR);
    std::fs::create_dir_all(&enc_dir).map_err(|e| EeError::io(&enc_dir, e))?;
    let encoder = transform_encoder(key, encoder_dir, &enc_dir)?;

    let gen_path = dir.join(GENERATOR_FILE);
    let gen_parent = gen_path.parent().expect("generator path has a parent");
    std::fs::create_dir_all(gen_parent).map_err(|e| EeError::io(gen_parent, e))?;
    let (content, _) = gguf::read(generator_gguf)?;
    // Host artifacts have their tokenizer stripped: a GGUF without one is
    // most likely transformed already, and permuting it again is garbage.
    if !content.metadata.contains_key("tokenizer.ggml.tokens") {
        return Err(EeError::Model(format!(
            "{} has no tokenizer metadata: transform the public base model, not host artifacts",
            generator_gguf.display()
        )));
    }
    let vocab = gguf::vocab_size(&content)?;
    let has_output_head = content.tensor_infos.contains_key(gguf::OUTPUT_HEAD);
    drop(content);
    gguf::write_permuted(generator_gguf, &gen_path, &key.generator_permutation(vocab))?;
    let generator = GeneratorInfo {
        vocab_size: vocab,
        base_sha256: sha256_file(generator_gguf)?,
        has_output_head,
    };

    let mut files = BTreeMap::new();
    for rel in artifact_files() {
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

/// Every entry under `dir` that is not a directory (files, and symbolic
/// links, which are not followed), as `/`-separated paths relative to it.
fn files_under(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    Ok(out)
}

/// Paths of the artifact files (besides the manifest), in sorted order.
fn artifact_files() -> Vec<String> {
    let mut files = vec![
        format!("{ENCODER_SUBDIR}/{CONFIG_FILE}"),
        format!("{ENCODER_SUBDIR}/{WEIGHTS_FILE}"),
        GENERATOR_FILE.to_string(),
    ];
    files.sort();
    files
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

/// A host's view of an artifacts directory: paths and the manifest.
#[derive(Clone, Debug)]
pub struct HostArtifacts {
    dir: PathBuf,
    manifest: Manifest,
}

impl HostArtifacts {
    /// Opens `dir`, checking the manifest format and, if `verify`, the SHA-256
    /// of every file.
    pub fn open(dir: &Path, verify: bool) -> Result<Self> {
        let bad = |reason: String| EeError::Artifacts {
            dir: dir.to_path_buf(),
            reason,
        };
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| EeError::io(&path, e))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| bad(format!("bad manifest: {e}")))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "manifest format {:?}, this build reads {MANIFEST_FORMAT:?}",
                manifest.format
            )));
        }
        let expected: Vec<String> = artifact_files();
        if !manifest.files.keys().eq(expected.iter()) {
            return Err(bad(format!(
                "manifest lists {:?}, expected exactly {expected:?}",
                manifest.files.keys().collect::<Vec<_>>()
            )));
        }
        // Nothing else may sit beside the artifacts: a tokenizer or a key
        // file in the host's folder is exactly what must never reach it.
        for rel in files_under(dir).map_err(|e| EeError::io(dir, e))? {
            if rel != MANIFEST_FILE && !manifest.files.contains_key(&rel) {
                return Err(bad(format!(
                    "{rel} is not a host artifact: the host's folder must hold only what \
                     `eerag transform` wrote (never a key file or a tokenizer)"
                )));
            }
        }
        let generator = dir.join(GENERATOR_FILE);
        if crate::gguf::metadata(&generator)?
            .keys()
            .any(|k| k.starts_with("tokenizer."))
        {
            return Err(bad(format!(
                "{GENERATOR_FILE} carries tokenizer metadata: the host takes transformed \
                 artifacts, never a model with its tokenizer"
            )));
        }
        if verify {
            for (rel, want) in &manifest.files {
                let got = sha256_file(&dir.join(rel))?;
                if &got != want {
                    return Err(bad(format!("{rel} does not match its manifest hash")));
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The artifacts directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The key the artifacts serve.
    pub fn key_id(&self) -> KeyId {
        self.manifest.key_id
    }

    /// Directory of the transformed encoder (load with [`crate::models::Encoder`]).
    pub fn encoder_dir(&self) -> PathBuf {
        self.dir.join(ENCODER_SUBDIR)
    }

    /// The transformed generator GGUF (load with [`crate::models::Generator`]).
    pub fn generator_gguf(&self) -> PathBuf {
        self.dir.join(GENERATOR_FILE)
    }
}
