//! What the demo and the benchmarks share: the bundled sample corpus, and a
//! throwaway key with its host artifacts, loaded beside the public models.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use eerag_shared::client::{ClientCipher, ModelShape};
use eerag_shared::models::fetch::ModelsDir;
use eerag_shared::models::{Encoder, Generator};
use eerag_shared::tokenize::{EncoderTokenizer, GeneratorTokenizer};
use eerag_shared::transform::{self, HostArtifacts};
use eerag_shared::Key;

/// The sample corpus, compiled in so the binary runs from any directory.
pub const SAMPLE_DOCS: &[(&str, &str)] = &[
    (
        "clinic-handbook.md",
        include_str!("../datasets/sample/clinic-handbook.md"),
    ),
    (
        "engagement-letter.md",
        include_str!("../datasets/sample/engagement-letter.md"),
    ),
    (
        "incident-review.md",
        include_str!("../datasets/sample/incident-review.md"),
    ),
];

/// Paragraphs of the sample corpus with the document they come from.
pub fn sample_paragraphs() -> Vec<(&'static str, String)> {
    SAMPLE_DOCS
        .iter()
        .flat_map(|(name, text)| {
            text.split("\n\n")
                .map(|block| {
                    // Headings are not content: keep only the prose lines.
                    let prose: Vec<&str> = block.lines().filter(|l| !l.starts_with('#')).collect();
                    prose.join("\n").trim().to_string()
                })
                .filter(|p| !p.is_empty())
                .map(move |p| (*name, p))
        })
        .collect()
}

/// Public models (the client's side of the comparison) next to the
/// transformed models (the host's side) for one throwaway key.
pub struct Pair {
    pub cipher: ClientCipher,
    pub encoder_tokenizer: EncoderTokenizer,
    pub generator_tokenizer: GeneratorTokenizer,
    pub plain_encoder: Encoder,
    pub host_encoder: Encoder,
    pub plain_generator: Generator,
    pub host_generator: Generator,
    pub transform_secs: f64,
    _artifacts_dir: tempfile::TempDir,
}

impl Pair {
    /// Generates a key, transforms the models into a temporary directory and
    /// loads both sides on the CPU.
    pub fn prepare(models: &ModelsDir) -> Result<Self> {
        let key = Key::generate()?;
        let artifacts_dir = tempfile::tempdir()?;
        let out = artifacts_dir.path().join("artifacts");
        let started = Instant::now();
        transform::transform(
            &key,
            &models.encoder_dir(),
            &models.generator_gguf(),
            &out,
            false,
        )
        .context("transforming the models")?;
        let transform_secs = started.elapsed().as_secs_f64();
        let artifacts = HostArtifacts::open(&out, true)?;
        let device = Device::Cpu;
        let plain_encoder = Encoder::load(&models.encoder_dir(), &device)?;
        let host_encoder = Encoder::load(&artifacts.encoder_dir(), &device)?;
        let plain_generator = Generator::load(&models.generator_gguf(), &device)?;
        let host_generator = Generator::load(&artifacts.generator_gguf(), &device)?;
        let cipher = ClientCipher::new(
            &key,
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
            transform_secs,
            _artifacts_dir: artifacts_dir,
        })
    }
}
