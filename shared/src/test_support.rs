//! Helpers for tests of model code, here and in the crates that build on
//! this one (feature `test-support`): a tiny random llama GGUF, and checks
//! that two runs of a model agree.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::models::generator::{Generator, GeneratorBackend, GeneratorOptions};
use crate::permutation::Permutation;

/// Vocabulary size of [`tiny_llama`].
pub const VOCAB: usize = 96;
/// Hidden size of [`tiny_llama`].
pub const DIM: usize = 64;

/// Writes a tiny random llama GGUF: Q8_0 embedding (and optionally an own
/// Q8_0 output head), f32 elsewhere, plus tokenizer metadata to strip.
pub fn tiny_llama(path: &Path, own_output_head: bool) {
    let dev = Device::Cpu;
    let rand = |shape: &[usize], seed: u64| -> Tensor {
        let n: usize = shape.iter().product();
        let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x % 2001) as f32 / 1000.0 - 1.0) * 0.5
            })
            .collect();
        Tensor::from_vec(data, shape, &dev).unwrap()
    };
    let q8 = |t: &Tensor| QTensor::quantize(t, GgmlDType::Q8_0).unwrap();
    let f32q = |t: &Tensor| QTensor::quantize(t, GgmlDType::F32).unwrap();
    let mut tensors = vec![
        ("token_embd.weight".to_string(), q8(&rand(&[VOCAB, DIM], 1))),
        (
            "output_norm.weight".to_string(),
            f32q(&Tensor::ones(DIM, DType::F32, &dev).unwrap()),
        ),
    ];
    if own_output_head {
        tensors.push(("output.weight".into(), q8(&rand(&[VOCAB, DIM], 2))));
    }
    let ones = Tensor::ones(DIM, DType::F32, &dev).unwrap();
    for (i, (name, shape)) in [
        ("attn_q", [DIM, DIM]),
        ("attn_k", [DIM, DIM]),
        ("attn_v", [DIM, DIM]),
        ("attn_output", [DIM, DIM]),
        ("ffn_gate", [2 * DIM, DIM]),
        ("ffn_up", [2 * DIM, DIM]),
        ("ffn_down", [DIM, 2 * DIM]),
    ]
    .iter()
    .enumerate()
    {
        tensors.push((
            format!("blk.0.{name}.weight"),
            f32q(&rand(shape, 10 + i as u64)),
        ));
    }
    tensors.push(("blk.0.attn_norm.weight".into(), f32q(&ones)));
    tensors.push(("blk.0.ffn_norm.weight".into(), f32q(&ones)));
    let md = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(4)),
        ("llama.block_count", Value::U32(1)),
        ("llama.embedding_length", Value::U32(DIM as u32)),
        ("llama.rope.dimension_count", Value::U32(16)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.context_length", Value::U32(64)),
        ("llama.feed_forward_length", Value::U32(2 * DIM as u32)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
    ];
    let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let mut f = File::create(path).unwrap();
    gguf_file::write(&mut f, &md, &ts).unwrap();
}

/// Asserts that two runs of one model's function agree: the largest
/// logit difference under 2% of the largest logit (different kernels or
/// weight formats round differently; a wrong row order or RoPE would be
/// off by whole units).
pub fn assert_logits_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: vocabulary sizes");
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(worst < 0.02 * scale, "{what}: max diff {worst} of {scale}");
}

/// A generator on `backend`, on the CPU.
pub fn load_on(path: &Path, backend: GeneratorBackend) -> Generator {
    let options = GeneratorOptions {
        backend,
        ..GeneratorOptions::on(&Device::Cpu)
    };
    let generator = Generator::load_with(path, &options).unwrap();
    assert_eq!(generator.backend(), backend);
    generator
}

/// Greedy-decodes `prompt` on `plain` and its encryption on `host` side
/// by side for `steps` steps, asserting at every step that the host's
/// logits are the plaintext logits permuted by `perm`, bitwise; returns
/// the plaintext tokens.
pub fn greedy_walk_permuted(
    plain: &Generator,
    host: &Generator,
    prompt: &[u32],
    perm: &Permutation,
    steps: usize,
    what: &str,
) -> Vec<u32> {
    let (mut ps, mut hs) = (plain.session(), host.session());
    let mut pl = ps.feed(prompt).unwrap();
    let mut hl = hs.feed(&perm.apply_all(prompt).unwrap()).unwrap();
    let mut tokens = Vec::with_capacity(steps);
    for step in 0..steps {
        assert_eq!(pl.len(), hl.len(), "{what}, step {step}: vocabulary sizes");
        for (t, l) in pl.iter().enumerate() {
            let c = perm.apply(t as u32).unwrap() as usize;
            assert_eq!(
                hl[c].to_bits(),
                l.to_bits(),
                "{what}, step {step}: logit of token {t} differs"
            );
        }
        let next = crate::sampling::argmax(&pl);
        tokens.push(next);
        pl = ps.feed(&[next]).unwrap();
        hl = hs.feed(&[perm.apply(next).unwrap()]).unwrap();
    }
    tokens
}

/// A random permutation of `n` generator ids from `seed` (the client derives
/// its permutations from the key instead; tests of model code need only
/// some permutation).
pub fn seeded_permutation(n: usize, seed: u64) -> Permutation {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    Permutation::fisher_yates(n, &mut rng, "generator")
}
