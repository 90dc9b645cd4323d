//! The GPU serving formats and batched decoding on the real models, on the
//! device `EERAG_TEST_DEVICE` names (`cpu` by default; `cuda` on a GPU host
//! with a `--features cuda` build): a safetensors f16 generator exported from
//! the bundled GGUF and transformed, and batched decode steps. Encrypted runs
//! must equal plaintext runs on every device.

use candle_core::{DType, Device};
use eerag_client::side_by_side::SideBySide;
use eerag_client::tokenize::chatml_prompt;
use eerag_client::Key;
use eerag_core::device::{self, DeviceChoice};
use eerag_core::models::Generator;
use eerag_core::sampling::argmax;
use eerag_tests::{fixture, greedy_walk_permuted};

fn test_device() -> Device {
    let choice: DeviceChoice = std::env::var("EERAG_TEST_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .expect("EERAG_TEST_DEVICE");
    let chosen = device::select(choice).expect("the test device");
    eprintln!("models on {}", chosen.describe());
    chosen.device
}

fn prompts(sides: &SideBySide) -> Vec<Vec<u32>> {
    [
        (
            "Answer using only the context.",
            "Context: The clinic opens at 7:30 on weekdays and at 9:00 on Saturdays.\n\nQuestion: When does the clinic open on Saturdays?",
        ),
        ("You are a terse assistant.", "Write a haiku about encrypted search."),
        ("You are a helpful assistant.", "Name a prime number."),
    ]
    .iter()
    .map(|(s, u)| chatml_prompt(&sides.generator_tokenizer, s, u).unwrap())
    .collect()
}

/// Greedy tokens of every prompt, each session alone.
fn greedy_alone(generator: &Generator, prompts: &[Vec<u32>], steps: usize) -> Vec<Vec<u32>> {
    prompts
        .iter()
        .map(|p| {
            let mut s = generator.session();
            let mut logits = s.feed(p).unwrap();
            let mut out = Vec::new();
            for _ in 0..steps {
                let next = argmax(&logits);
                out.push(next);
                logits = s.feed(&[next]).unwrap();
            }
            out
        })
        .collect()
}

/// Greedy tokens of every prompt, decoded together by `Generator::step`.
fn greedy_batched(generator: &Generator, prompts: &[Vec<u32>], steps: usize) -> Vec<Vec<u32>> {
    let mut sessions: Vec<_> = prompts.iter().map(|_| generator.session()).collect();
    let mut next: Vec<u32> = sessions
        .iter_mut()
        .zip(prompts)
        .map(|(s, p)| argmax(&s.feed(p).unwrap()))
        .collect();
    let mut out = vec![Vec::new(); prompts.len()];
    for _ in 0..steps {
        for (o, &n) in out.iter_mut().zip(&next) {
            o.push(n);
        }
        let mut refs: Vec<_> = sessions.iter_mut().collect();
        next = generator
            .step(&mut refs, &next)
            .unwrap()
            .iter()
            .map(|l| argmax(l))
            .collect();
    }
    out
}

#[test]
fn batched_decoding_of_the_gguf_is_exact_and_encrypted_equals_plaintext() {
    let f = fixture();
    let device = test_device();
    let plain = Generator::load(&f.models.generator_gguf(), &device).unwrap();
    let host = Generator::load(&f.artifacts.generator_path(), &device).unwrap();
    let prompts = prompts(&f.sides);
    let encrypted: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| f.sides.cipher.encrypt_generator(p).unwrap().ids().to_vec())
        .collect();
    let perm = f.sides.cipher.generator_permutation();
    let plain_batched = greedy_batched(&plain, &prompts, 12);
    let host_batched: Vec<Vec<u32>> = greedy_batched(&host, &encrypted, 12)
        .iter()
        .map(|t| perm.invert_all(t).unwrap())
        .collect();
    assert_eq!(
        host_batched, plain_batched,
        "encrypted batch differs from plaintext batch"
    );
    if !device.is_cuda() {
        // On the CPU a batch row is computed exactly as the sequence alone.
        assert_eq!(plain_batched, greedy_alone(&plain, &prompts, 12));
    }
}

#[test]
fn an_f16_safetensors_generator_transforms_exactly() {
    let f = fixture();
    let device = test_device();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("smollm2-f16");
    let export =
        eerag_core::convert::export_generator(&f.models.generator_gguf(), &base, DType::F16)
            .unwrap();
    // 135M parameters in two bytes each (the tied head is stored once).
    assert!(
        export.bytes > 250_000_000 && export.bytes < 300_000_000,
        "{}",
        export.bytes
    );
    let key = Key::from_secret([23; 32]);
    let (sides, artifacts, _) = SideBySide::transform_and_load_with(
        &key,
        &f.models,
        &base,
        &dir.path().join("artifacts"),
        &eerag_core::models::GeneratorOptions::on(&device),
    )
    .unwrap();
    assert_eq!(
        artifacts.manifest().generator.format,
        eerag_core::artifacts::GeneratorFormat::Safetensors
    );
    let prompts = prompts(&sides);
    let perm = sides.cipher.generator_permutation();
    // Logits bitwise permuted at every step, for the first prompt.
    let tokens = greedy_walk_permuted(
        &sides.plain_generator,
        &sides.host_generator,
        &prompts[0],
        perm,
        12,
        "f16 safetensors",
    );
    // The f16 model is the GGUF's model: it starts its answer the same way
    // (as the GGUF does on the same decoder: llama.cpp's kernels round
    // differently).
    let gguf = Generator::load_with(
        &f.models.generator_gguf(),
        &eerag_core::models::GeneratorOptions {
            backend: eerag_core::models::GeneratorBackend::Candle,
            ..eerag_core::models::GeneratorOptions::on(&device)
        },
    )
    .unwrap();
    let gguf_tokens = greedy_alone(&gguf, &prompts[..1], 6);
    assert_eq!(
        tokens[..6],
        gguf_tokens[0],
        "the f16 export began {:?}",
        sides.generator_tokenizer.decode(&tokens).unwrap()
    );
    // Batched decoding of the f16 model, encrypted equals plaintext.
    let encrypted: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| sides.cipher.encrypt_generator(p).unwrap().ids().to_vec())
        .collect();
    let plain_batched = greedy_batched(&sides.plain_generator, &prompts, 6);
    let host_batched: Vec<Vec<u32>> = greedy_batched(&sides.host_generator, &encrypted, 6)
        .iter()
        .map(|t| perm.invert_all(t).unwrap())
        .collect();
    assert_eq!(host_batched, plain_batched);
    assert_eq!(plain_batched[0], tokens[..6]);
}
