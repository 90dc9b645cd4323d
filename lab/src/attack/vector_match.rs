//! Matching stored vectors against the public encoder: an attacker without
//! the transformed weights (a storage or database operator) embeds candidate
//! texts with the public all-MiniLM-L6-v2 and takes, for each stored vector,
//! the candidate of highest cosine similarity. The candidates include every
//! stored chunk's true text (the attacker guessed them all: the worst case)
//! among as many distractors.
//!
//! Three attackers: one who matches the stored vectors as they are (the
//! secret rotation `R` in place); the counterfactual store without `R`; and
//! one who knows some (text, stored vector) pairs and estimates `R` from
//! them (orthogonal Procrustes) before matching the rest.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use eerag_core::models::encoder::Encoder;
use serde::Serialize;

use super::victim::Victim;
use super::{secs, unit_rows, Result};

/// Top-1 match rate with `pairs` known (text, vector) pairs.
#[derive(Clone, Debug, Serialize)]
pub struct KnownPlaintext {
    pub pairs: usize,
    /// Stored vectors scored (those not among the known pairs).
    pub scored: usize,
    pub top1: f64,
}

/// The attack's results.
#[derive(Clone, Debug, Serialize)]
pub struct VectorMatchReport {
    /// Stored vectors attacked.
    pub stored: usize,
    /// Candidate texts embedded (the stored chunks' texts and distractors).
    pub candidates: usize,
    /// Top-1 rate of a random guess.
    pub chance: f64,
    /// Top-1 rate against the stored vectors.
    pub with_rotation: f64,
    /// Top-1 rate had the store held the public model's vectors.
    pub without_rotation: f64,
    /// Largest difference between a stored vector with `R` undone and the
    /// public model's vector of its text (the store holds `R·e(x)`).
    pub max_unrotated_gap: f32,
    pub known_plaintext: Vec<KnownPlaintext>,
    /// Seconds the attacker spent embedding candidates.
    pub embed_seconds: f64,
}

fn matrix(rows: &[Vec<f32>]) -> Result<Tensor> {
    let dim = rows.first().map_or(0, Vec::len);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    unit_rows(&Tensor::from_slice(&flat, (rows.len(), dim), &Device::Cpu)?.to_dtype(DType::F64)?)
}

/// For each row of `queries`, the index of the most similar row of `keys`.
fn best_matches(queries: &Tensor, keys: &Tensor) -> Result<Vec<u32>> {
    Ok(queries.matmul(&keys.t()?)?.argmax(D::Minus1)?.to_vec1()?)
}

fn top1(found: &[u32], want: impl Fn(usize) -> u32) -> f64 {
    let right = found
        .iter()
        .enumerate()
        .filter(|(i, &f)| f == want(*i))
        .count();
    right as f64 / found.len().max(1) as f64
}

/// The orthogonal matrix nearest to `m` (its polar factor) by Newton–Schulz
/// iteration. For a rank-deficient `m` (fewer known pairs than dimensions)
/// the iteration leaves the null space at zero: a partial isometry that
/// undoes `R` on the span of the known vectors only.
fn polar(m: &Tensor) -> Result<Tensor> {
    let fro = m.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    let mut x = (m / fro.max(1e-300))?;
    for _ in 0..80 {
        let xxtx = x.matmul(&x.t()?)?.matmul(&x)?;
        x = ((&x * 1.5)? - (xxtx * 0.5)?)?;
    }
    Ok(x)
}

/// Runs the attack: `victim`'s stored vectors against the public `encoder`'s
/// embeddings of the victim's own chunk texts and of `distractors`
/// (plaintext encoder ids of other texts); `known` lists the numbers of
/// known pairs to try.
pub fn attack(
    victim: &Victim,
    distractors: &[Vec<u32>],
    encoder: &Encoder,
    known: &[usize],
    progress: &mut dyn FnMut(&str),
) -> Result<VectorMatchReport> {
    let perm = victim.key.encoder_permutation(encoder.vocab_size());
    let rotation = victim.key.rotation(encoder.dim());
    // The judge decrypts each stored chunk to the text the attacker guessed.
    let texts: Vec<Vec<u32>> = victim
        .chunks
        .iter()
        .map(|c| perm.invert_all(&c.encoder_ids))
        .collect::<eerag_core::Result<_>>()?;
    let stored = texts.len();
    let candidates: Vec<&[u32]> = texts.iter().chain(distractors).map(Vec::as_slice).collect();
    progress(&format!(
        "embedding {} candidate texts with the public encoder",
        candidates.len()
    ));
    let start = Instant::now();
    let public = encoder.embed(&candidates, 16)?;
    let embed_seconds = secs(start);

    let keys = matrix(&public)?;
    let stored_rows: Vec<Vec<f32>> = victim.chunks.iter().map(|c| c.vector.clone()).collect();
    let with_rotation = top1(&best_matches(&matrix(&stored_rows)?, &keys)?, |i| i as u32);

    let unrotated: Vec<Vec<f32>> = stored_rows.iter().map(|v| rotation.unrotate(v)).collect();
    let max_unrotated_gap = unrotated
        .iter()
        .zip(&public)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0f32, f32::max);
    let without_rotation = top1(&best_matches(&matrix(&unrotated)?, &keys)?, |i| i as u32);

    let stored_m = matrix(&stored_rows)?;
    let mut known_plaintext = Vec::new();
    for &pairs in known {
        if pairs == 0 || pairs >= stored {
            continue;
        }
        // M = Σ y xᵀ over the known pairs (y stored, x public); R̂ = polar(M).
        let ys = stored_m.narrow(0, 0, pairs)?;
        let xs = keys.narrow(0, 0, pairs)?;
        let r_hat = polar(&ys.t()?.matmul(&xs)?)?;
        // Undo R̂ on the other stored vectors: x ≈ R̂ᵀ y, i.e. rows y·R̂.
        let rest = stored_m.narrow(0, pairs, stored - pairs)?;
        let found = best_matches(&rest.matmul(&r_hat)?, &keys)?;
        known_plaintext.push(KnownPlaintext {
            pairs,
            scored: stored - pairs,
            top1: top1(&found, |i| (i + pairs) as u32),
        });
    }
    Ok(VectorMatchReport {
        stored,
        candidates: candidates.len(),
        chance: 1.0 / candidates.len().max(1) as f64,
        with_rotation,
        without_rotation,
        max_unrotated_gap,
        known_plaintext,
        embed_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polar_factor_of_a_rotated_cloud_is_the_rotation() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let r = eerag_client::rotation::Rotation::random(8, &mut rng);
        let normal = rand_distr::Normal::new(0f32, 1.0).unwrap();
        let xs: Vec<Vec<f32>> = (0..20)
            .map(|_| {
                (0..8)
                    .map(|_| rand_distr::Distribution::sample(&normal, &mut rng))
                    .collect()
            })
            .collect();
        let ys: Vec<Vec<f32>> = xs.iter().map(|x| r.rotate(x)).collect();
        let (x, y) = (matrix(&xs).unwrap(), matrix(&ys).unwrap());
        let r_hat = polar(&y.t().unwrap().matmul(&x).unwrap()).unwrap();
        let want = Tensor::from_slice(r.rows(), (8, 8), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let gap = (r_hat - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(gap < 1e-4, "{gap}");
    }
}
