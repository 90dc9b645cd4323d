//! Client-side EE costs that sit on every request: encrypting and decrypting
//! token ids, and value-only sampling over a full SmolLM2-sized vocabulary
//! (the host's per-token overhead compared with a plain argmax).
//! Model throughput, encrypted vs plaintext, is measured by `eerag bench models`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use eerag_client::cipher::{ClientCipher, ModelShape};
use eerag_client::Key;
use eerag_core::sampling::{argmax, Sampler, Sampling};

fn shape() -> ModelShape {
    ModelShape {
        encoder_vocab: 30522,
        embedding_dim: 384,
        generator_vocab: 49152,
    }
}

fn ids(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % vocab)
        .collect()
}

fn token_ids(c: &mut Criterion) {
    let cipher = ClientCipher::new(&Key::from_secret([1; 32]), shape());
    let plain = ids(4096, 49152);
    let enc = cipher.encrypt_generator(&plain).unwrap();
    let mut g = c.benchmark_group("token_ids");
    g.throughput(Throughput::Elements(plain.len() as u64));
    g.bench_function("encrypt_generator_4096", |b| {
        b.iter(|| cipher.encrypt_generator(black_box(&plain)).unwrap())
    });
    g.bench_function("decrypt_generator_4096", |b| {
        b.iter(|| cipher.decrypt_generator(black_box(&enc)).unwrap())
    });
    g.finish();
}

fn sampling(c: &mut Criterion) {
    // Zipf-like logits, as a language model's are: the token of rank r (a
    // scrambled bijection of the ids) gets 12 - 2.5·ln(1 + r).
    let logits: Vec<f32> = (0..49152u64)
        .map(|i| {
            let rank = (i * 2_654_435_761) % 49152;
            12.0 - 2.5 * (1.0 + rank as f32).ln()
        })
        .collect();
    let mut g = c.benchmark_group("sampling_49152");
    g.bench_function("argmax", |b| b.iter(|| argmax(black_box(&logits))));
    let mut sampler = Sampler::new(Sampling::Random {
        temperature: 0.8,
        top_p: 0.9,
        top_k: None,
        seed: 7,
    })
    .unwrap();
    g.bench_function("top_p_0.9", |b| {
        b.iter(|| sampler.sample(black_box(&logits)).unwrap())
    });
    g.finish();
}

fn keys(c: &mut Criterion) {
    let key = Key::from_secret([2; 32]);
    c.bench_function("expand_key_for_default_models", |b| {
        b.iter(|| ClientCipher::new(black_box(&key), shape()))
    });
}

criterion_group!(benches, token_ids, sampling, keys);
criterion_main!(benches);
