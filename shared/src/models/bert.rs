//! A BERT forward pass for sentence embedding on the CPU: the math of
//! candle-transformers' `BertModel` (and of Hugging Face's), arranged for
//! speed on a few cores.
//!
//! Why not candle's: profiling (docs/performance.md, CPU speed) showed about
//! 40% of its time outside the matrix products, in steps candle runs on one
//! thread with a new tensor each: bias adds, the attention mask, a five-pass
//! softmax and the erf GELU. Here every matrix product is one `gemm` call
//! (candle's own CPU kernel) whose output starts as the bias (plus the
//! residual where there is one), so the adds cost nothing; the other steps are
//! fused passes over rows, in parallel with rayon. Sequences are packed
//! without padding: the dense layers run on real tokens only, and attention
//! reads each sequence's rows in place, so no mask is needed.
//!
//! Encryption changes only which embedding rows are read, so encrypted and
//! plaintext embeddings are computed by the same operations in the same
//! order: bitwise equal.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::error::{EeError, Result};

/// Weights of one dense layer: `out = x · weightᵀ + bias`.
struct Dense {
    /// Row-major `[outputs, inputs]`, as stored.
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

/// A layer norm's scale and shift.
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct Layer {
    /// Query, key and value in one `[3·hidden, hidden]` matrix.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    up: Dense,
    down: Dense,
    output_norm: Norm,
}

/// The hyper-parameters the forward pass needs.
#[derive(Clone, Copy, Debug)]
pub struct BertShape {
    pub vocab: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub layers: usize,
    pub eps: f32,
}

/// BERT weights in plain `f32` buffers, and the forward pass over them.
pub struct CpuBert {
    shape: BertShape,
    word: Vec<f32>,
    position: Vec<f32>,
    /// Row 0 of the token-type embeddings: every token is of type 0.
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    threads: usize,
}

fn take(tensors: &HashMap<String, Tensor>, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = tensors
        .get(name)
        .ok_or_else(|| EeError::Model(format!("encoder has no {name}")))?;
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if v.len() != len {
        return Err(EeError::Model(format!(
            "{name} has {} values, expected {len}",
            v.len()
        )));
    }
    Ok(v)
}

fn dense(
    tensors: &HashMap<String, Tensor>,
    names: &[&str],
    inputs: usize,
    outputs_each: usize,
) -> Result<Dense> {
    let (mut weight, mut bias) = (Vec::new(), Vec::new());
    for name in names {
        weight.extend(take(
            tensors,
            &format!("{name}.weight"),
            outputs_each * inputs,
        )?);
        bias.extend(take(tensors, &format!("{name}.bias"), outputs_each)?);
    }
    Ok(Dense {
        weight,
        bias,
        inputs,
        outputs: outputs_each * names.len(),
    })
}

fn norm(tensors: &HashMap<String, Tensor>, name: &str, hidden: usize) -> Result<Norm> {
    Ok(Norm {
        weight: take(tensors, &format!("{name}.weight"), hidden)?,
        bias: take(tensors, &format!("{name}.bias"), hidden)?,
    })
}

impl CpuBert {
    /// Takes the weights of a Hugging Face BERT checkpoint (names as in
    /// all-MiniLM-L6-v2, with or without a `bert.` prefix).
    pub fn new(tensors: &HashMap<String, Tensor>, shape: BertShape) -> Result<Self> {
        if shape.heads == 0 || !shape.hidden.is_multiple_of(shape.heads) {
            return Err(EeError::Model(format!(
                "{} heads do not divide a hidden size of {}",
                shape.heads, shape.hidden
            )));
        }
        let prefixed;
        let tensors = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            prefixed = tensors
                .iter()
                .filter_map(|(k, v)| k.strip_prefix("bert.").map(|k| (k.to_string(), v.clone())))
                .collect::<HashMap<_, _>>();
            &prefixed
        } else {
            tensors
        };
        let h = shape.hidden;
        let mut token_type = take(
            tensors,
            "embeddings.token_type_embeddings.weight",
            tensors
                .get("embeddings.token_type_embeddings.weight")
                .map_or(0, |t| t.elem_count()),
        )?;
        if token_type.len() < h {
            return Err(EeError::Model("token-type embeddings too small".into()));
        }
        token_type.truncate(h);
        let mut layers = Vec::with_capacity(shape.layers);
        for i in 0..shape.layers {
            let p = format!("encoder.layer.{i}");
            let (q, k, v) = (
                format!("{p}.attention.self.query"),
                format!("{p}.attention.self.key"),
                format!("{p}.attention.self.value"),
            );
            layers.push(Layer {
                qkv: dense(tensors, &[&q, &k, &v], h, h)?,
                attention_out: dense(tensors, &[&format!("{p}.attention.output.dense")], h, h)?,
                attention_norm: norm(tensors, &format!("{p}.attention.output.LayerNorm"), h)?,
                up: dense(
                    tensors,
                    &[&format!("{p}.intermediate.dense")],
                    h,
                    shape.intermediate,
                )?,
                down: dense(
                    tensors,
                    &[&format!("{p}.output.dense")],
                    shape.intermediate,
                    h,
                )?,
                output_norm: norm(tensors, &format!("{p}.output.LayerNorm"), h)?,
            });
        }
        Ok(Self {
            word: take(
                tensors,
                "embeddings.word_embeddings.weight",
                shape.vocab * h,
            )?,
            position: take(
                tensors,
                "embeddings.position_embeddings.weight",
                shape.max_positions * h,
            )?,
            token_type,
            embedding_norm: norm(tensors, "embeddings.LayerNorm", h)?,
            layers,
            shape,
            threads: rayon::current_num_threads().max(1),
        })
    }

    /// Mean-pooled last hidden states, one vector per sequence (not yet
    /// normalised). Ids must be checked by the caller (below the vocabulary,
    /// at most `max_positions` per sequence, none empty).
    pub fn pooled(&self, seqs: &[&[u32]]) -> Vec<Vec<f32>> {
        let h = self.shape.hidden;
        let mut offsets = Vec::with_capacity(seqs.len() + 1);
        offsets.push(0usize);
        for s in seqs {
            offsets.push(offsets.last().copied().unwrap_or(0) + s.len());
        }
        let tokens = offsets.last().copied().unwrap_or(0);
        let mut x = vec![0f32; tokens * h];
        self.embed_tokens(seqs, &mut x);
        for layer in &self.layers {
            x = self.layer(layer, &x, &offsets);
        }
        offsets
            .windows(2)
            .map(|w| {
                let mut sum = vec![0f32; h];
                for row in x[w[0] * h..w[1] * h].chunks_exact(h) {
                    for (s, v) in sum.iter_mut().zip(row) {
                        *s += v;
                    }
                }
                let n = (w[1] - w[0]) as f32;
                sum.iter_mut().for_each(|s| *s /= n);
                sum
            })
            .collect()
    }

    /// Word + position + token-type embeddings, then the layer norm.
    fn embed_tokens(&self, seqs: &[&[u32]], x: &mut [f32]) {
        let h = self.shape.hidden;
        let mut rows: Vec<(&mut [f32], u32, usize)> = Vec::with_capacity(x.len() / h);
        let mut rest = x;
        for seq in seqs {
            for (p, &id) in seq.iter().enumerate() {
                let (row, tail) = rest.split_at_mut(h);
                rows.push((row, id, p));
                rest = tail;
            }
        }
        rows.into_par_iter().for_each(|(row, id, p)| {
            let word = &self.word[id as usize * h..][..h];
            let pos = &self.position[p * h..][..h];
            for i in 0..h {
                row[i] = word[i] + pos[i] + self.token_type[i];
            }
            layer_norm(row, &self.embedding_norm, self.shape.eps);
        });
    }

    /// One transformer layer over the packed tokens `x` (`offsets` bound the
    /// sequences), returning its output.
    fn layer(&self, layer: &Layer, x: &[f32], offsets: &[usize]) -> Vec<f32> {
        let h = self.shape.hidden;
        let tokens = x.len() / h;
        let par = Parallelism::Rayon(self.threads);
        let qkv = dense_forward(&layer.qkv, x, None, par);
        let context = self.attention(&qkv, offsets, tokens);
        let mut attended = dense_forward(&layer.attention_out, &context, Some(x), par);
        attended
            .par_chunks_mut(h)
            .for_each(|row| layer_norm(row, &layer.attention_norm, self.shape.eps));
        let mut up = dense_forward(&layer.up, &attended, None, par);
        up.par_chunks_mut(4096).for_each(gelu_erf);
        let mut out = dense_forward(&layer.down, &up, Some(&attended), par);
        out.par_chunks_mut(h)
            .for_each(|row| layer_norm(row, &layer.output_norm, self.shape.eps));
        out
    }

    /// Scaled dot-product attention of each sequence over itself, reading
    /// queries, keys and values from the packed `qkv` rows; sequences in
    /// parallel, each with single-threaded products.
    fn attention(&self, qkv: &[f32], offsets: &[usize], tokens: usize) -> Vec<f32> {
        let h = self.shape.hidden;
        let heads = self.shape.heads;
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let stride = 3 * h;
        let mut context = vec![0f32; tokens * h];
        let mut parts: Vec<(&mut [f32], usize, usize)> = Vec::with_capacity(offsets.len());
        let mut rest = context.as_mut_slice();
        for w in offsets.windows(2) {
            let (part, tail) = rest.split_at_mut((w[1] - w[0]) * h);
            parts.push((part, w[0], w[1] - w[0]));
            rest = tail;
        }
        parts.into_par_iter().for_each(|(out, start, n)| {
            let rows = &qkv[start * stride..(start + n) * stride];
            let mut scores = vec![0f32; n * n];
            for head in 0..heads {
                let (q, k, v) = (head * d, h + head * d, 2 * h + head * d);
                // scores = scale · Q Kᵀ
                // SAFETY: every index the strides reach is inside `rows`
                // (n rows of `stride`, columns below q/k + d ≤ stride) or
                // `scores` (n × n).
                unsafe {
                    gemm::gemm(
                        n,
                        n,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        rows.as_ptr().add(q),
                        1,
                        stride as isize,
                        rows.as_ptr().add(k),
                        stride as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                for row in scores.chunks_exact_mut(n) {
                    softmax(row);
                }
                // context rows, this head's columns = P V
                // SAFETY: `out` holds n rows of h, this head's columns are
                // below head·d + d ≤ h; V as above.
                unsafe {
                    gemm::gemm(
                        n,
                        d,
                        n,
                        out.as_mut_ptr().add(head * d),
                        1,
                        h as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        n as isize,
                        rows.as_ptr().add(v),
                        1,
                        stride as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
        });
        context
    }
}

/// `x · weightᵀ + bias (+ residual)`, with the output initialised to the
/// bias (and residual) so the product accumulates onto it.
fn dense_forward(
    layer: &Dense,
    x: &[f32],
    residual: Option<&[f32]>,
    parallelism: Parallelism,
) -> Vec<f32> {
    let (k, n) = (layer.inputs, layer.outputs);
    let m = x.len() / k;
    assert_eq!(x.len(), m * k, "input rows of {k}");
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    for _ in 0..m {
        out.extend_from_slice(&layer.bias);
    }
    if let Some(r) = residual {
        assert_eq!(r.len(), m * n, "residual rows of {n}");
        out.par_chunks_mut(n)
            .zip(r.par_chunks(n))
            .for_each(|(o, r)| o.iter_mut().zip(r).for_each(|(o, r)| *o += r));
    }
    if m == 0 {
        return out;
    }
    assert_eq!(layer.weight.len(), n * k, "weights of {n} × {k}");
    #[cfg(feature = "openblas")]
    {
        let _ = parallelism;
        let (mi, ni, ki) = (as_blas(m), as_blas(n), as_blas(k));
        // SAFETY: out is m × n (row-major, ldc n), x is m × k (lda k),
        // weight is n × k read transposed (ldb k); all lengths checked above.
        unsafe {
            openblas::cblas_sgemm(
                openblas::ROW_MAJOR,
                openblas::NO_TRANS,
                openblas::TRANS,
                mi,
                ni,
                ki,
                1.0,
                x.as_ptr(),
                ki,
                layer.weight.as_ptr(),
                ki,
                1.0,
                out.as_mut_ptr(),
                ni,
            );
        }
        out
    }
    #[cfg(not(feature = "openblas"))]
    // SAFETY: out is m × n (row-major), x is m × k, weight is n × k and is
    // read transposed (k × n, column stride k); all lengths checked above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            layer.weight.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
        out
    }
}

/// A BLAS dimension (`int`): the encoder's are far below `i32::MAX`.
#[cfg(feature = "openblas")]
fn as_blas(n: usize) -> i32 {
    i32::try_from(n).expect("encoder matrices fit BLAS int dimensions")
}

/// The one OpenBLAS routine the encoder calls: its dense layers. OpenBLAS's
/// f32 kernels ran 30–40% faster than `gemm`'s on this project's machines
/// (same shapes, 2 threads), and PyTorch's MKL as fast; the library comes
/// from the system (Debian: libopenblas-dev).
#[cfg(feature = "openblas")]
mod openblas {
    pub const ROW_MAJOR: i32 = 101;
    pub const NO_TRANS: i32 = 111;
    pub const TRANS: i32 = 112;

    #[link(name = "openblas")]
    extern "C" {
        #[allow(clippy::too_many_arguments)]
        pub fn cblas_sgemm(
            layout: i32,
            trans_a: i32,
            trans_b: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const f32,
            lda: i32,
            b: *const f32,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
    }
}

/// In-place layer norm of one row (f32 statistics, as PyTorch).
fn layer_norm(row: &mut [f32], norm: &Norm, eps: f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, w), b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
        *v = (*v - mean) * inv * w + b;
    }
}

/// In-place softmax of one row.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// The erf GELU, `x·(1 + erf(x/√2))/2` (BERT's "gelu"), in place.
///
/// erf is the rational approximation XLA and Eigen use for f32 (accurate to
/// a few ulp, clamped to ±4 where erf is ±1 in f32): branch-free, so the loop
/// vectorises, where candle's scalar erf took a fifth of the encoder's time.
/// With AVX2 and FMA present it runs in a copy compiled for them.
fn gelu_erf(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the copy is compiled for.
        unsafe { gelu_erf_avx2(values) };
        return;
    }
    gelu_erf_portable(values);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_erf_avx2(values: &mut [f32]) {
    gelu_erf_portable(values);
}

#[inline(always)]
fn gelu_erf_portable(values: &mut [f32]) {
    for v in values {
        let x = *v * std::f32::consts::FRAC_1_SQRT_2;
        *v *= 0.5 * (1.0 + erf(x));
    }
}

/// erf for f32: XLA's `ErfImpl32` / Eigen's `generic_fast_erf_float`
/// (odd numerator, even denominator, in x²).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_a_reference_erf() {
        let mut worst = 0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let reference = candle_core::cpu::erf::erf_f64(f64::from(x)) as f32;
            worst = worst.max((erf(x) - reference).abs());
        }
        assert!(worst < 1e-6, "max |erf error| = {worst}");
        let mut v = vec![-3.0f32, -0.5, 0.0, 0.5, 3.0, 10.0];
        gelu_erf(&mut v);
        let expected = [-0.004_049_7f32, -0.154_269, 0.0, 0.345_731, 2.995_95, 10.0];
        for (a, b) in v.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "gelu {a} vs {b}");
        }
    }

    #[test]
    fn dense_forward_adds_bias_and_residual() {
        let layer = Dense {
            weight: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            bias: vec![0.5, -1.0],
            inputs: 3,
            outputs: 2,
        };
        let x = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
        let out = dense_forward(
            &layer,
            &x,
            Some(&[10.0, 20.0, 30.0, 40.0]),
            Parallelism::None,
        );
        assert_eq!(
            out,
            vec![
                10.0 + 0.5 - 2.0,
                20.0 - 1.0 - 2.0,
                30.0 + 0.5 + 4.0,
                40.0 - 1.0 + 13.0
            ]
        );
    }
}
