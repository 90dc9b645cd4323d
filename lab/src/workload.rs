//! What the demo and the benchmarks share: the bundled sample corpus, and a
//! throwaway key with its host artifacts, loaded beside the public models.

use anyhow::{Context, Result};
use candle_core::Device;
use eerag_client::side_by_side::SideBySide;
use eerag_client::tokenize::GeneratorTokenizer;
use eerag_client::Key;
use eerag_core::artifacts::HostArtifacts;
use eerag_core::models::fetch::ModelsDir;
use eerag_core::models::GeneratorOptions;

/// The sample corpus, compiled in so the binary runs from any directory.
pub const SAMPLE_DOCS: &[(&str, &str)] = &[
    (
        "clinic-handbook.md",
        include_str!("../../datasets/sample/clinic-handbook.md"),
    ),
    (
        "engagement-letter.md",
        include_str!("../../datasets/sample/engagement-letter.md"),
    ),
    (
        "incident-review.md",
        include_str!("../../datasets/sample/incident-review.md"),
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

/// The generator benchmarks' prompt: a ChatML question about the clinic
/// over the first two sample paragraphs as context.
pub fn sample_prompt(tok: &GeneratorTokenizer) -> Result<Vec<u32>> {
    let context: String = sample_paragraphs()
        .iter()
        .take(2)
        .map(|(_, p)| p.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    Ok(eerag_client::tokenize::chatml_prompt(
        tok,
        "Answer using only the context.",
        &format!("Context:\n{context}\n\nQuestion: When does the clinic open on Saturdays?"),
    )?)
}

/// The public models beside the transformed models of one throwaway key.
pub struct Pair {
    pub sides: SideBySide,
    /// The transformed models `sides` loaded its host side from.
    pub artifacts: HostArtifacts,
    pub transform_secs: f64,
    _artifacts_dir: tempfile::TempDir,
}

impl Pair {
    /// Generates a key, transforms the models into a temporary directory and
    /// loads both sides on the CPU.
    pub fn prepare(models: &ModelsDir) -> Result<Self> {
        Self::prepare_on(
            models,
            &models.generator_gguf(),
            &GeneratorOptions::on(&Device::Cpu),
        )
    }

    /// As [`Pair::prepare`], with the public generator at `generator_base`
    /// (GGUF or safetensors folder), both generators loaded as `generator`
    /// says and the encoders on its device.
    pub fn prepare_on(
        models: &ModelsDir,
        generator_base: &std::path::Path,
        generator: &GeneratorOptions,
    ) -> Result<Self> {
        let key = Key::generate()?;
        let artifacts_dir = tempfile::tempdir()?;
        let (sides, artifacts, transform_secs) = SideBySide::transform_and_load_with(
            &key,
            models,
            generator_base,
            &artifacts_dir.path().join("artifacts"),
            generator,
        )
        .context("transforming and loading the models")?;
        Ok(Self {
            sides,
            artifacts,
            transform_secs,
            _artifacts_dir: artifacts_dir,
        })
    }
}
