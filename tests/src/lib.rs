//! Shared fixtures of eerag's end-to-end tests: the real base models, a fixed
//! test key, and its host artifacts, built once per test binary.

pub mod host;
pub mod process;

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use eerag_client::side_by_side::SideBySide;
use eerag_client::Key;
use eerag_core::artifacts::HostArtifacts;
use eerag_core::models::fetch::ModelsDir;
use eerag_core::models::{Generator, GeneratorBackend, GeneratorOptions};

/// The models folder: `$EERAG_MODELS`, else `<workspace>/models`. Panics with
/// the fix when the models are missing: these tests must not pass vacuously.
pub fn models() -> ModelsDir {
    let dir = match std::env::var_os("EERAG_MODELS") {
        Some(d) => ModelsDir::new(d),
        None => ModelsDir::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")),
    };
    let bad = dir.missing_or_wrong().expect("reading the models folder");
    assert!(
        bad.is_empty(),
        "real-model tests need the pinned models: run `eerag models fetch` (missing or wrong: {bad:?})"
    );
    dir
}

/// The secret of the fixed test key.
pub const TEST_SECRET: [u8; 32] = *b"eerag test key: not for real use";

/// Host artifacts of the identity key (the plaintext baseline), built once
/// per test binary.
pub fn identity_artifacts() -> &'static HostArtifacts {
    static ARTIFACTS: OnceLock<(HostArtifacts, tempfile::TempDir)> = OnceLock::new();
    &ARTIFACTS
        .get_or_init(|| {
            let models = models();
            let dir = tempfile::tempdir().expect("temp dir");
            let out = dir.path().join("artifacts");
            eerag_client::transform::transform(
                &Key::identity(),
                &models.encoder_dir(),
                &models.generator_gguf(),
                &out,
                false,
            )
            .expect("identity transform");
            (HostArtifacts::open(&out, true).expect("open"), dir)
        })
        .0
}

/// Everything a real-model test compares.
pub struct Fixture {
    pub key: Key,
    pub sides: SideBySide,
    pub artifacts: HostArtifacts,
    pub models: ModelsDir,
    _dir: tempfile::TempDir,
}

/// The fixture, built on first use (transform included).
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let models = models();
        let key = Key::from_secret(TEST_SECRET);
        let dir = tempfile::tempdir().expect("temp dir");
        let (sides, artifacts, _) = SideBySide::transform_and_load(
            &key,
            &models,
            &dir.path().join("artifacts"),
            &Device::Cpu,
        )
        .expect("transform and load the models");
        Fixture {
            key,
            sides,
            artifacts,
            models,
            _dir: dir,
        }
    })
}

/// The generator backends this build has: candle always, llama.cpp with the
/// `llama-cpp` feature. Equivalence tests run on each.
pub fn generator_backends() -> Vec<GeneratorBackend> {
    let mut out = vec![GeneratorBackend::Candle];
    if eerag_core::models::generator::llama_cpp_compiled() {
        out.push(GeneratorBackend::LlamaCpp);
    }
    out
}

/// The fixture's public and transformed generators on `backend` (CPU),
/// loaded once per test binary and backend.
pub fn generators_on(backend: GeneratorBackend) -> &'static (Generator, Generator) {
    static CANDLE: OnceLock<(Generator, Generator)> = OnceLock::new();
    static LLAMA_CPP: OnceLock<(Generator, Generator)> = OnceLock::new();
    let cell = match backend {
        GeneratorBackend::LlamaCpp => &LLAMA_CPP,
        _ => &CANDLE,
    };
    cell.get_or_init(|| {
        let f = fixture();
        let options = GeneratorOptions {
            backend,
            ..GeneratorOptions::on(&Device::Cpu)
        };
        let load = |path: &std::path::Path| {
            let g = Generator::load_with(path, &options).expect("load the generator");
            assert_eq!(g.backend(), backend);
            g
        };
        (
            load(&f.models.generator_gguf()),
            load(&f.artifacts.generator_path()),
        )
    })
}

/// The one greedy side-by-side walk, shared with eerag-core's own tests.
pub use eerag_core::test_support::greedy_walk_permuted;

/// Varied texts: prose from the sample corpus, short queries, numbers,
/// punctuation, non-ASCII, and one longer than the encoder window.
pub fn texts() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for doc in [
        include_str!("../../datasets/sample/clinic-handbook.md"),
        include_str!("../../datasets/sample/engagement-letter.md"),
        include_str!("../../datasets/sample/incident-review.md"),
    ] {
        out.extend(
            doc.split("\n\n")
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from),
        );
    }
    out.extend(
        [
            "How warm may the vaccine fridge get?",
            "retainer",
            "What is the hourly rate of a partner?",
            "Ärztliche Schweigepflicht gilt auch für Praktikanten — immer.",
            "患者の記録は書面での請求があった場合にのみ印刷されます。",
            "Invoice #2024-117: 3 × 420 € = 1,260 €; due in 21 days!!",
            "fn main() { println!(\"{}\", 2 + 2); }",
            "   leading and trailing spaces   ",
            "😀 emoji, tabs\tand\nnewlines",
        ]
        .map(String::from),
    );
    out.push("the settlement worker stalled and the queue grew ".repeat(60));
    out
}
