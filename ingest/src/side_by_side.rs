//! The public models next to their transformed twins, for the one kind of
//! code that may see both sides: the in-process demo, benchmarks, evaluation
//! and tests. Never used by host code.

use std::path::Path;

use candle_core::Device;

use crate::cipher::{ClientCipher, ModelShape};
use crate::key::Key;
use crate::tokenize::{EncoderTokenizer, GeneratorTokenizer};
use eerag_core::artifacts::HostArtifacts;
use eerag_core::error::{EeError, Result};
use eerag_core::models::fetch::ModelsDir;
use eerag_core::models::{Encoder, Generator, GeneratorOptions};

/// Client tools (key, tokenizers, public models) beside host models.
pub struct SideBySide {
    /// The key, expanded for these models.
    pub cipher: ClientCipher,
    /// The public encoder's tokenizer.
    pub encoder_tokenizer: EncoderTokenizer,
    /// The public generator's tokenizer.
    pub generator_tokenizer: GeneratorTokenizer,
    /// The public encoder (plaintext ids).
    pub plain_encoder: Encoder,
    /// The transformed encoder (encrypted ids).
    pub host_encoder: Encoder,
    /// The public generator (plaintext ids).
    pub plain_generator: Generator,
    /// The transformed generator (encrypted ids).
    pub host_generator: Generator,
}

impl SideBySide {
    /// Loads the public models from `models` and the transformed ones from
    /// `artifacts` (made for `key`) on `device`.
    pub fn load(
        key: &Key,
        models: &ModelsDir,
        artifacts: &HostArtifacts,
        device: &Device,
    ) -> Result<Self> {
        let options = GeneratorOptions::on(device);
        Self::load_with(key, models, &models.generator_gguf(), artifacts, &options)
    }

    /// As [`SideBySide::load`], with the public generator at
    /// `generator_base` (a GGUF or a safetensors folder of the models
    /// folder's generator, e.g. from `eerag models export-generator`; the
    /// tokenizer still comes from the models folder's GGUF), both
    /// generators loaded as `generator` says and both encoders on its device.
    pub fn load_with(
        key: &Key,
        models: &ModelsDir,
        generator_base: &Path,
        artifacts: &HostArtifacts,
        generator: &GeneratorOptions,
    ) -> Result<Self> {
        if artifacts.key_id() != key.id() {
            return Err(EeError::KeyMismatch {
                expected: key.id().to_string(),
                found: artifacts.key_id().to_string(),
            });
        }
        let device = &generator.device;
        let plain_encoder = Encoder::load(&models.encoder_dir(), device)?;
        let host_encoder = Encoder::load(&artifacts.encoder_dir(), device)?;
        let plain_generator = Generator::load_with(generator_base, generator)?;
        let host_generator = Generator::load_with(&artifacts.generator_path(), generator)?;
        let m = artifacts.manifest();
        for (vocab, expected, found) in [
            ("encoder", m.encoder.vocab_size, plain_encoder.vocab_size()),
            (
                "generator",
                m.generator.vocab_size,
                plain_generator.vocab_size(),
            ),
        ] {
            if expected != found {
                return Err(EeError::VocabMismatch {
                    vocab,
                    expected,
                    found,
                });
            }
        }
        let cipher = ClientCipher::new(
            key,
            ModelShape {
                encoder_vocab: plain_encoder.vocab_size(),
                embedding_dim: plain_encoder.dim(),
                generator_vocab: plain_generator.vocab_size(),
            },
        );
        Ok(Self {
            cipher,
            encoder_tokenizer: EncoderTokenizer::from_model_dir(&models.encoder_dir())?,
            generator_tokenizer: GeneratorTokenizer::from_gguf(&models.generator_gguf())?,
            plain_encoder,
            host_encoder,
            plain_generator,
            host_generator,
        })
    }

    /// Transforms the models in `models` for `key` into `out`, then loads
    /// both sides; returns them with the seconds the transform took.
    pub fn transform_and_load(
        key: &Key,
        models: &ModelsDir,
        out: &Path,
        device: &Device,
    ) -> Result<(Self, HostArtifacts, f64)> {
        let options = GeneratorOptions::on(device);
        Self::transform_and_load_with(key, models, &models.generator_gguf(), out, &options)
    }

    /// As [`SideBySide::transform_and_load`], with the public generator at
    /// `generator_base` (see [`SideBySide::load_with`]).
    pub fn transform_and_load_with(
        key: &Key,
        models: &ModelsDir,
        generator_base: &Path,
        out: &Path,
        generator: &GeneratorOptions,
    ) -> Result<(Self, HostArtifacts, f64)> {
        let started = std::time::Instant::now();
        crate::transform::transform(key, &models.encoder_dir(), generator_base, out, false)?;
        let secs = started.elapsed().as_secs_f64();
        let artifacts = HostArtifacts::open(out, true)?;
        let sides = Self::load_with(key, models, generator_base, &artifacts, generator)?;
        Ok((sides, artifacts, secs))
    }
}
