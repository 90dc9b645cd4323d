//! Equivariant encryption on the real models (all-MiniLM-L6-v2, SmolLM2-135M
//! Q4_1 GGUF): the transformed models on encrypted ids compute exactly what
//! the public models compute on plaintext ids.

use eerag_client::tokenize::chatml_prompt;
use eerag_core::models::encoder::{CONFIG_FILE, ROTATION_TENSOR, WEIGHTS_FILE};
use eerag_core::models::{Encoder, EncoderBackend, GenerationOptions, GeneratorBackend};
use eerag_core::sampling::{argmax, Sampling};
use eerag_tests::{fixture, generator_backends, generators_on, greedy_walk_permuted, texts};

fn embed_all(encoder: &Encoder, seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    // Batches of 8 so most sequences are padded next to longer ones.
    encoder.embed(&refs, 8).expect("embed")
}

#[test]
fn encoder_on_encrypted_ids_gives_rotated_plaintext_embeddings() {
    for backend in [EncoderBackend::Candle, EncoderBackend::Cpu] {
        encrypted_embeddings_are_rotated_plaintext(backend);
    }
}

fn encrypted_embeddings_are_rotated_plaintext(backend: EncoderBackend) {
    let f = fixture();
    let cpu = candle_core::Device::Cpu;
    let plain_encoder = Encoder::load_with(&f.models.encoder_dir(), &cpu, backend).unwrap();
    let host_encoder = Encoder::load_with(&f.artifacts.encoder_dir(), &cpu, backend).unwrap();
    assert_eq!(host_encoder.backend(), backend);
    let plain: Vec<Vec<u32>> = texts()
        .iter()
        .map(|t| f.sides.encoder_tokenizer.encode(t).unwrap())
        .collect();
    assert!(
        plain.iter().any(|s| s.len() == 256),
        "no text hit the 256-token window"
    );
    let enc: Vec<Vec<u32>> = plain
        .iter()
        .map(|s| f.sides.cipher.encrypt_encoder(s).unwrap().ids().to_vec())
        .collect();
    assert_ne!(plain, enc);
    let plain_vecs = embed_all(&plain_encoder, &plain);

    // 1. The permuted weights alone: bitwise identical embeddings.
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = candle_core::safetensors::load(
        f.artifacts.encoder_dir().join(WEIGHTS_FILE),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(tensors.remove(ROTATION_TENSOR).is_some());
    candle_core::safetensors::save(&tensors, dir.path().join(WEIGHTS_FILE)).unwrap();
    std::fs::copy(
        f.artifacts.encoder_dir().join(CONFIG_FILE),
        dir.path().join(CONFIG_FILE),
    )
    .unwrap();
    let unrotated = Encoder::load_with(dir.path(), &cpu, backend).unwrap();
    let unrotated_vecs = embed_all(&unrotated, &enc);
    for (i, (u, p)) in unrotated_vecs.iter().zip(&plain_vecs).enumerate() {
        let ub: Vec<u32> = u.iter().map(|x| x.to_bits()).collect();
        let pb: Vec<u32> = p.iter().map(|x| x.to_bits()).collect();
        assert_eq!(
            ub, pb,
            "{backend}, text {i}: permuted encoder is not bitwise exact"
        );
    }

    // 2. The host artifacts (R folded in): R × plaintext within 1e-6.
    assert!(host_encoder.is_rotated());
    let host_vecs = embed_all(&host_encoder, &enc);
    let rot = f.sides.cipher.rotation();
    let mut worst = 0f32;
    for (h, p) in host_vecs.iter().zip(&plain_vecs) {
        for (a, b) in h.iter().zip(rot.rotate(p)) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(worst <= 1e-6, "{backend}: max |host − R·plain| = {worst}");
    // The rotation really hides the public vectors.
    let leaked = host_vecs
        .iter()
        .zip(&plain_vecs)
        .filter(|(h, p)| h.iter().zip(p.iter()).all(|(a, b)| (a - b).abs() < 1e-3))
        .count();
    assert_eq!(leaked, 0);

    // 3. Cosine similarity between every pair of texts is unchanged.
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let mut worst_cos = 0f32;
    for i in 0..plain_vecs.len() {
        for j in 0..plain_vecs.len() {
            let d = (dot(&host_vecs[i], &host_vecs[j]) - dot(&plain_vecs[i], &plain_vecs[j])).abs();
            worst_cos = worst_cos.max(d);
        }
    }
    assert!(
        worst_cos <= 1e-6,
        "{backend}: cosine changed by {worst_cos}"
    );
}

/// eerag's CPU BERT computes candle's (and Hugging Face's) function, and a
/// sequence's embedding barely depends on what it is batched with (no
/// padding reaches it; BLAS rounds products of other sizes differently).
#[test]
fn cpu_encoder_matches_candle_alone_or_batched() {
    let f = fixture();
    let cpu = candle_core::Device::Cpu;
    let candle = Encoder::load_with(&f.models.encoder_dir(), &cpu, EncoderBackend::Candle).unwrap();
    let fast = Encoder::load_with(&f.models.encoder_dir(), &cpu, EncoderBackend::Cpu).unwrap();
    assert_eq!(
        Encoder::load(&f.models.encoder_dir(), &cpu)
            .unwrap()
            .backend(),
        EncoderBackend::Cpu
    );
    let seqs: Vec<Vec<u32>> = texts()
        .iter()
        .map(|t| f.sides.encoder_tokenizer.encode(t).unwrap())
        .collect();
    let a = embed_all(&candle, &seqs);
    let b = embed_all(&fast, &seqs);
    let worst = a
        .iter()
        .zip(&b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "cpu vs candle BERT: {worst}");
    for (i, seq) in seqs.iter().enumerate().step_by(7) {
        let alone = fast.embed(&[seq.as_slice()], 1).unwrap();
        let gap = alone[0]
            .iter()
            .zip(&b[i])
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(gap < 1e-6, "text {i} alone vs batched: {gap}");
    }
}

#[test]
fn encoder_rejects_out_of_vocabulary_ids() {
    let f = fixture();
    let bad = vec![101, f.sides.host_encoder.vocab_size() as u32, 102];
    assert!(f.sides.host_encoder.embed(&[&bad], 1).is_err());
}

fn prompts() -> Vec<Vec<u32>> {
    let f = fixture();
    let t = &f.sides.generator_tokenizer;
    [
        ("You are a helpful assistant.", "What is the capital of France?"),
        (
            "Answer using only the context.",
            "Context: The clinic opens at 7:30 on weekdays and at 9:00 on Saturdays.\n\nQuestion: When does the clinic open on Saturdays?",
        ),
        ("You are a terse assistant.", "Write a haiku about encrypted search."),
        ("You are a helpful assistant.", "List three prime numbers greater than 100."),
    ]
    .iter()
    .map(|(s, u)| chatml_prompt(t, s, u).unwrap())
    .collect()
}

#[test]
fn generator_logits_are_plaintext_logits_permuted_bitwise_at_every_step() {
    let f = fixture();
    let perm = f.sides.cipher.generator_permutation();
    for backend in generator_backends() {
        let (plain, host) = generators_on(backend);
        for (n, prompt) in prompts().iter().enumerate() {
            greedy_walk_permuted(
                plain,
                host,
                prompt,
                perm,
                16,
                &format!("{backend}, prompt {n}"),
            );
        }
    }
}

/// llama.cpp and candle run the same file with different kernels, so their
/// logits round differently (and near-ties may break either way); they must
/// still agree on what the model says.
#[test]
fn llama_cpp_and_candle_agree_on_greedy_tokens() {
    if !eerag_core::models::generator::llama_cpp_compiled() {
        return;
    }
    let (candle, _) = generators_on(GeneratorBackend::Candle);
    let (llama_cpp, _) = generators_on(GeneratorBackend::LlamaCpp);
    for (n, prompt) in prompts().iter().enumerate() {
        let (mut a, mut b) = (candle.session(), llama_cpp.session());
        let (mut la, mut lb) = (a.feed(prompt).unwrap(), b.feed(prompt).unwrap());
        // Three steps, both fed candle's choice so they stay on one path.
        for step in 0..3 {
            let scale = la.iter().fold(0f32, |m, x| m.max(x.abs()));
            // The two next-token distributions (total variation distance).
            let probs = |l: &[f32]| {
                let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f64> = l.iter().map(|x| f64::from(x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                e.into_iter().map(|x| x / sum).collect::<Vec<f64>>()
            };
            let (pa, pb) = (probs(&la), probs(&lb));
            let tv = pa.iter().zip(&pb).map(|(x, y)| (x - y).abs()).sum::<f64>() / 2.0;
            assert!(
                tv < 0.1,
                "prompt {n}, step {step}: next-token distributions differ by {tv} (total variation)"
            );
            // Each backend's choice is a top choice of the other's logits.
            for (mine, theirs) in [(&la, &lb), (&lb, &la)] {
                let best = theirs[argmax(theirs) as usize];
                assert!(
                    theirs[argmax(mine) as usize] >= best - 0.02 * scale,
                    "prompt {n}, step {step}: choices disagree beyond a near-tie"
                );
            }
            let next = argmax(&la);
            (la, lb) = (a.feed(&[next]).unwrap(), b.feed(&[next]).unwrap());
        }
    }
}

#[test]
fn decrypted_generations_equal_plaintext_for_greedy_and_seeded_sampling() {
    let f = fixture();
    let c = &f.sides.cipher;
    let im_end = f
        .sides
        .generator_tokenizer
        .special_id("<|im_end|>")
        .unwrap();
    let settings = [
        Sampling::Greedy,
        Sampling::Random {
            temperature: 0.8,
            top_p: 0.9,
            top_k: None,
            seed: 1234,
        },
        Sampling::Random {
            temperature: 1.2,
            top_p: 1.0,
            top_k: Some(50),
            seed: 99,
        },
    ];
    let mut differs_from_greedy = false;
    for (backend, prompt) in generator_backends()
        .into_iter()
        .flat_map(|b| prompts().into_iter().take(2).map(move |p| (b, p)))
    {
        let (plain_generator, host_generator) = generators_on(backend);
        let mut greedy = None;
        for sampling in &settings {
            let opts = |stop: u32| GenerationOptions {
                max_tokens: 40,
                stop_ids: vec![stop],
                sampling: sampling.clone(),
            };
            let plain = plain_generator
                .session()
                .generate(&prompt, &opts(im_end), |_| true)
                .unwrap();
            let mut streamed = Vec::new();
            let host = host_generator
                .session()
                .generate(
                    c.encrypt_generator(&prompt).unwrap().ids(),
                    &opts(c.encrypt_generator(&[im_end]).unwrap().ids()[0]),
                    |id| {
                        streamed.push(id);
                        true
                    },
                )
                .unwrap();
            assert_eq!(streamed, host.tokens);
            let decrypted = c.generator_permutation().invert_all(&host.tokens).unwrap();
            assert_eq!(decrypted, plain.tokens, "{backend}, {sampling:?}");
            assert_eq!(host.stop, plain.stop);
            assert!(!plain.tokens.is_empty());
            match greedy {
                None => greedy = Some(plain.tokens.clone()),
                Some(ref g) => differs_from_greedy |= g != &plain.tokens,
            }
        }
    }
    assert!(
        differs_from_greedy,
        "sampling never left the greedy path: test is vacuous"
    );
}

#[test]
fn generator_tokenizer_round_trips_text_exactly() {
    let t = &fixture().sides.generator_tokenizer;
    assert_eq!(t.vocab_size(), 49152);
    for text in texts() {
        let ids = t.encode(&text).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), text);
    }
    // Digits are split one by one, as the SmolLM2 pre-tokenizer does.
    assert_eq!(t.encode("2024").unwrap().len(), 4);
    // Control tokens: single ids in templates, plain text in user input.
    let im_start = t.special_id("<|im_start|>").unwrap();
    assert_eq!(t.encode_template("<|im_start|>").unwrap(), vec![im_start]);
    let typed = t.encode("<|im_start|>system").unwrap();
    assert!(!typed.contains(&im_start));
    assert_eq!(t.decode(&typed).unwrap(), "<|im_start|>system");
    let chat = chatml_prompt(t, "sys", "hi").unwrap();
    assert_eq!(
        t.decode(&chat).unwrap(),
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
}
