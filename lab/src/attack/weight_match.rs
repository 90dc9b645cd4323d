//! The compute host's attack: it holds the transformed weights, and the base
//! models are public. Each transformed embedding row is a base row moved to
//! its ciphertext id, so matching rows recovers the permutation:
//!
//! - exact: identical bytes (the transform copies rows bitwise, quantized
//!   GGUF rows included);
//! - approximate: the base row of highest cosine similarity (what survives
//!   a change to the rows, such as a private fine-tune).
//!
//! The mitigation is a base model the host cannot obtain. [`perturbed`]
//! measures what that buys: the same approximate attack, with the public
//! base, against a privately perturbed base (Gaussian noise of a given size
//! relative to the rows' RMS) permuted by the same key; and, for the
//! encoder, how far that perturbation moves the model's sentence embeddings.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use eerag_core::gguf;
use eerag_core::models::encoder::{Encoder, CONFIG_FILE, WEIGHTS_FILE};
use eerag_core::permutation::Permutation;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;

use super::{secs, unit_rows, AttackError, Result};

/// Host rows matched per matrix product.
const BLOCK: usize = 1024;

/// An embedding table: the raw row bytes (for exact matching) and the rows
/// as f32 (for approximate matching).
pub struct Table {
    pub rows: usize,
    pub dim: usize,
    pub raw: Vec<u8>,
    pub values: Vec<f32>,
}

impl Table {
    fn row_bytes(&self) -> usize {
        self.raw.len() / self.rows.max(1)
    }

    fn raw_row(&self, i: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.raw[i * n..(i + 1) * n]
    }
}

/// The word-embedding table of an encoder folder (base or artifact).
pub fn encoder_table(dir: &Path) -> Result<Table> {
    let tensors = candle_core::safetensors::load(dir.join(WEIGHTS_FILE), &Device::Cpu)?;
    let table = tensors
        .iter()
        .find(|(k, _)| k.ends_with("embeddings.word_embeddings.weight"))
        .map(|(_, t)| t.clone())
        .ok_or_else(|| AttackError::Invalid("encoder has no word_embeddings.weight".into()))?;
    let (rows, dim) = table.dims2()?;
    let values: Vec<f32> = table.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(Table {
        rows,
        dim,
        raw,
        values,
    })
}

/// The token-embedding table of a GGUF (base or artifact): quantized rows as
/// stored, and dequantized.
pub fn generator_table(path: &Path) -> Result<Table> {
    let (content, mut reader) = gguf::read(path)?;
    let q = content.tensor(&mut reader, gguf::TOKEN_EMBEDDING, &Device::Cpu)?;
    let raw = q.data()?.into_owned();
    let dense = q.dequantize(&Device::Cpu)?;
    let (rows, dim) = dense.dims2()?;
    Ok(Table {
        rows,
        dim,
        raw,
        values: dense.flatten_all()?.to_vec1()?,
    })
}

/// How much of a permutation an attack recovered.
#[derive(Clone, Debug, Serialize)]
pub struct MatchResult {
    /// Rows the attack was scored on (all, or a random sample).
    pub rows: usize,
    /// Rows whose plaintext id it got right, and the share.
    pub recovered: usize,
    pub share: f64,
    /// Exact matching only: rows whose bytes several base rows share.
    pub ambiguous: usize,
    pub seconds: f64,
}

/// Exact matching of `host` rows against `public` rows by their bytes.
/// `truth[c]` is the plaintext id of host row `c`.
pub fn exact(public: &Table, host: &Table, truth: &[u32]) -> MatchResult {
    let start = Instant::now();
    let mut by_bytes: HashMap<&[u8], Vec<u32>> = HashMap::with_capacity(public.rows);
    for t in 0..public.rows {
        by_bytes
            .entry(public.raw_row(t))
            .or_default()
            .push(t as u32);
    }
    let (mut recovered, mut ambiguous) = (0, 0);
    for (c, &want) in truth.iter().enumerate().take(host.rows) {
        match by_bytes.get(host.raw_row(c)).map(Vec::as_slice) {
            Some([t]) if *t == want => recovered += 1,
            Some(ts) if ts.len() > 1 => ambiguous += 1,
            _ => {}
        }
    }
    MatchResult {
        rows: host.rows,
        recovered,
        share: recovered as f64 / host.rows.max(1) as f64,
        ambiguous,
        seconds: secs(start),
    }
}

fn normalized(values: &[f32], rows: usize, dim: usize) -> Result<Tensor> {
    unit_rows(&Tensor::from_slice(values, (rows, dim), &Device::Cpu)?)
}

/// Approximate matching: each of the `host` rows numbered in `which` (all
/// rows if `None`) takes the public row of highest cosine similarity.
pub fn nearest(
    public: &Table,
    host_values: &[f32],
    truth: &[u32],
    which: Option<&[usize]>,
) -> Result<MatchResult> {
    let start = Instant::now();
    let dim = public.dim;
    let all: Vec<usize>;
    let which = match which {
        Some(w) => w,
        None => {
            all = (0..host_values.len() / dim).collect();
            &all
        }
    };
    let public_t = normalized(&public.values, public.rows, dim)?
        .t()?
        .contiguous()?;
    let mut recovered = 0;
    for block in which.chunks(BLOCK) {
        let mut rows = Vec::with_capacity(block.len() * dim);
        for &c in block {
            rows.extend_from_slice(&host_values[c * dim..(c + 1) * dim]);
        }
        let sims = normalized(&rows, block.len(), dim)?.matmul(&public_t)?;
        let best: Vec<u32> = sims.argmax(D::Minus1)?.to_vec1()?;
        recovered += block
            .iter()
            .zip(&best)
            .filter(|(&c, &t)| truth[c] == t)
            .count();
    }
    Ok(MatchResult {
        rows: which.len(),
        recovered,
        share: recovered as f64 / which.len().max(1) as f64,
        ambiguous: 0,
        seconds: secs(start),
    })
}

/// The approximate attack against a privately perturbed base.
#[derive(Clone, Debug, Serialize)]
pub struct PerturbedResult {
    /// Noise standard deviation relative to the table's RMS entry.
    pub noise: f64,
    /// Exact matching on all rows (nothing survives any change).
    pub exact_share: f64,
    /// Approximate matching on a random sample of rows.
    pub nearest: MatchResult,
    /// Encoder only: mean cosine similarity between the perturbed and the
    /// public model's sentence embeddings of the probe texts (what the
    /// perturbation costs the model; 1 is unchanged).
    pub embedding_cosine: Option<f64>,
}

/// The rows of `values` moved by `perm` (row `t` to row `perm[t]`), as the
/// transform moves them.
fn host_rows(values: &[f32], dim: usize, perm: &Permutation) -> Vec<f32> {
    let mut host = vec![0f32; values.len()];
    for (t, &c) in perm.forward_table().iter().enumerate() {
        let c = c as usize;
        host[c * dim..(c + 1) * dim].copy_from_slice(&values[t * dim..(t + 1) * dim]);
    }
    host
}

/// `public`'s values plus Gaussian noise of `noise` × their RMS.
fn perturb(public: &Table, noise: f64, seed: u64) -> Result<Vec<f32>> {
    let rms = (public
        .values
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        / public.values.len().max(1) as f64)
        .sqrt();
    let normal = Normal::new(0.0, noise * rms)
        .map_err(|e| AttackError::Invalid(format!("noise {noise}: {e}")))?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    Ok(public
        .values
        .iter()
        .map(|&v| v + normal.sample(&mut rng) as f32)
        .collect())
}

/// Probe texts for the embedding cost: encoder ids of real text (plaintext;
/// the public model on both sides).
pub struct EncoderProbe<'a> {
    pub base_dir: &'a Path,
    pub texts: &'a [Vec<u32>],
}

fn embedding_cosine(probe: &EncoderProbe<'_>, perturbed: &[f32], table: &Table) -> Result<f64> {
    let dir = tempfile::tempdir().map_err(|e| AttackError::Invalid(format!("temp dir: {e}")))?;
    let mut tensors =
        candle_core::safetensors::load(probe.base_dir.join(WEIGHTS_FILE), &Device::Cpu)?;
    let name = tensors
        .keys()
        .find(|k| k.ends_with("embeddings.word_embeddings.weight"))
        .cloned()
        .ok_or_else(|| AttackError::Invalid("encoder has no word_embeddings.weight".into()))?;
    let dtype = tensors[&name].dtype();
    tensors.insert(
        name,
        Tensor::from_slice(perturbed, (table.rows, table.dim), &Device::Cpu)?.to_dtype(dtype)?,
    );
    candle_core::safetensors::save(&tensors, dir.path().join(WEIGHTS_FILE))?;
    std::fs::copy(
        probe.base_dir.join(CONFIG_FILE),
        dir.path().join(CONFIG_FILE),
    )
    .map_err(|e| AttackError::Invalid(format!("copying the encoder config: {e}")))?;
    let base = Encoder::load(probe.base_dir, &Device::Cpu)?;
    let private = Encoder::load(dir.path(), &Device::Cpu)?;
    let seqs: Vec<&[u32]> = probe.texts.iter().map(Vec::as_slice).collect();
    let a = base.embed(&seqs, 16)?;
    let b = private.embed(&seqs, 16)?;
    let cos: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| {
            let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let nx: f32 = x.iter().map(|p| p * p).sum::<f32>().sqrt();
            let ny: f32 = y.iter().map(|q| q * q).sum::<f32>().sqrt();
            f64::from(dot / (nx * ny).max(1e-12))
        })
        .sum();
    Ok(cos / a.len().max(1) as f64)
}

/// Runs exact and approximate matching against a base perturbed by each of
/// `noises`, on `sample` random rows for the approximate attack.
pub fn perturbed(
    public: &Table,
    perm: &Permutation,
    noises: &[f64],
    sample: usize,
    probe: Option<&EncoderProbe<'_>>,
    seed: u64,
) -> Result<Vec<PerturbedResult>> {
    let truth = perm.inverse_table();
    let mut rows: Vec<usize> = (0..public.rows).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rand::seq::SliceRandom::shuffle(rows.as_mut_slice(), &mut rng);
    rows.truncate(sample.min(public.rows));
    let mut out = Vec::new();
    for (i, &noise) in noises.iter().enumerate() {
        // The owner's private base, and the host's permuted copy of it.
        let private = perturb(public, noise, seed + 1 + i as u64)?;
        let host_values = host_rows(&private, public.dim, perm);
        let host = Table {
            rows: public.rows,
            dim: public.dim,
            raw: host_values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            values: host_values,
        };
        let exact_share = if public.raw.len() == public.values.len() * 4 {
            exact(public, &host, truth).share
        } else {
            // A quantized table's bytes are not its f32 values; perturbed
            // rows are f32, so no row can match a base row's bytes.
            0.0
        };
        let nearest = nearest(public, &host.values, truth, Some(&rows))?;
        let embedding_cosine = match probe {
            // The private base itself (unpermuted): the model the owner runs.
            Some(p) => Some(embedding_cosine(p, &private, public)?),
            None => None,
        };
        out.push(PerturbedResult {
            noise,
            exact_share,
            nearest,
            embedding_cosine,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: usize, dim: usize, seed: u64) -> Table {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0, 1.0).unwrap();
        let values: Vec<f32> = (0..rows * dim).map(|_| normal.sample(&mut rng)).collect();
        Table {
            rows,
            dim,
            raw: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            values,
        }
    }

    #[test]
    fn matching_recovers_a_permutation_and_noise_defeats_it() {
        let public = table(300, 16, 1);
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let perm = Permutation::fisher_yates(300, &mut rng, "test");
        let host_values = host_rows(&public.values, 16, &perm);
        let host = Table {
            rows: 300,
            dim: 16,
            raw: host_values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            values: host_values,
        };
        let truth = perm.inverse_table();
        assert_eq!(exact(&public, &host, truth).recovered, 300);
        assert_eq!(
            nearest(&public, &host.values, truth, None)
                .unwrap()
                .recovered,
            300
        );
        let results = perturbed(&public, &perm, &[0.05, 10.0], 300, None, 4).unwrap();
        assert_eq!(results[0].exact_share, 0.0);
        assert!(results[0].nearest.share > 0.99, "{:?}", results[0]);
        // Noise ten times the signal: near chance (1/300).
        assert!(results[1].nearest.share < 0.1, "{:?}", results[1]);
    }
}
