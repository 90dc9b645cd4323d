//! Host artifacts: the transformed models for one key, as `eerag transform`
//! writes them (the writer is client-side, `eerag_client::transform`), and
//! the host's checked view of them ([`HostArtifacts`]).
//!
//! Layout of an artifacts directory:
//! ```text
//! manifest.json              key id, vocab sizes, base-model hashes, SHA-256 of every file
//! encoder/config.json        unchanged BERT config
//! encoder/model.safetensors  word-embedding rows permuted by π_enc, plus `eerag.rotation` = R
//! generator/model.gguf       token-embedding (and output) rows permuted by π_gen; no tokenizer
//! ```
//! or, for a safetensors generator (f32/f16/bf16, the GPU format):
//! ```text
//! generator/config.json        the base config, marked as transformed
//! generator/model.safetensors  embed_tokens (and lm_head) rows permuted by π_gen
//! ```
//! No tokenizer and no key material beyond the permuted weights is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{EeError, Result};
use crate::hash::sha256_file;
use crate::ids::KeyId;
use crate::models::encoder::{CONFIG_FILE, WEIGHTS_FILE};
use crate::models::llama;

/// Format tag of manifests written by this build.
pub const MANIFEST_FORMAT: &str = "eerag-artifacts/1";
/// Manifest file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Folder of the transformed encoder.
pub const ENCODER_SUBDIR: &str = "encoder";
/// The transformed GGUF generator.
pub const GENERATOR_FILE: &str = "generator/model.gguf";
/// Folder of a transformed safetensors generator.
pub const GENERATOR_SUBDIR: &str = "generator";
/// Marks a transformed safetensors generator's config, so it is never
/// transformed twice (GGUF artifacts are recognised by their missing
/// tokenizer).
pub const TRANSFORMED_MARK: &str = "eerag_transformed";

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
    /// The weights' format (manifests from before safetensors support are GGUF).
    #[serde(default)]
    pub format: GeneratorFormat,
}

/// How a generator's weights are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorFormat {
    /// One GGUF file, usually quantized: the CPU format.
    #[default]
    Gguf,
    /// A Hugging Face folder (`config.json`, `model.safetensors`) in
    /// f32/f16/bf16: the GPU format.
    Safetensors,
}

/// A fresh, empty-to-be staging folder beside `out` (`.NAME.partial-PID` in
/// its parent, which is created), for writing a folder whole and renaming it
/// into place; with the parent and `out`'s name. `None` when `out` has no
/// usable name.
pub fn staging_beside(out: &Path) -> Option<Result<(PathBuf, String, PathBuf)>> {
    let name = out.file_name()?.to_str()?.to_string();
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Some((|| {
        std::fs::create_dir_all(&parent).map_err(|e| EeError::io(&parent, e))?;
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| EeError::io(&staging, e))?;
        }
        Ok((parent, name, staging))
    })())
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
pub fn artifact_files(generator: GeneratorFormat) -> Vec<String> {
    let mut files = vec![
        format!("{ENCODER_SUBDIR}/{CONFIG_FILE}"),
        format!("{ENCODER_SUBDIR}/{WEIGHTS_FILE}"),
    ];
    match generator {
        GeneratorFormat::Gguf => files.push(GENERATOR_FILE.to_string()),
        GeneratorFormat::Safetensors => {
            files.push(format!("{GENERATOR_SUBDIR}/{}", llama::CONFIG_FILE));
            files.push(format!("{GENERATOR_SUBDIR}/{}", llama::WEIGHTS_FILE));
        }
    }
    files.sort();
    files
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
        let expected: Vec<String> = artifact_files(manifest.generator.format);
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
        if manifest.generator.format == GeneratorFormat::Gguf
            && crate::gguf::metadata(&dir.join(GENERATOR_FILE))?
                .iter()
                .any(|(k, v)| {
                    k.starts_with("tokenizer.") && !crate::gguf::is_opaque_vocabulary(k, v)
                })
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

    /// The transformed generator: its GGUF file, or its safetensors folder
    /// (load either with [`crate::models::Generator`]).
    pub fn generator_path(&self) -> PathBuf {
        match self.manifest.generator.format {
            GeneratorFormat::Gguf => self.dir.join(GENERATOR_FILE),
            GeneratorFormat::Safetensors => self.dir.join(GENERATOR_SUBDIR),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_without_a_generator_format_are_gguf() {
        let old = r#"{"vocab_size": 5, "base_sha256": "ab", "has_output_head": false}"#;
        let info: GeneratorInfo = serde_json::from_str(old).unwrap();
        assert_eq!(info.format, GeneratorFormat::Gguf);
        assert_eq!(
            artifact_files(GeneratorFormat::Safetensors),
            vec![
                "encoder/config.json",
                "encoder/model.safetensors",
                "generator/config.json",
                "generator/model.safetensors"
            ]
        );
    }
}
