//! The secret orthogonal rotation `R` of the embedding space.
//!
//! Vectors at rest are `R·e(x)`, not the public model's `e(x)`: an observer
//! cannot match them against public-model embeddings, while cosine similarity
//! (what retrieval uses) is unchanged because `R` is orthogonal.

use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};

/// A `dim × dim` orthogonal matrix, row-major f32.
#[derive(Clone, PartialEq)]
pub struct Rotation {
    dim: usize,
    rows: Vec<f32>,
}

impl std::fmt::Debug for Rotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rotation({}x{})", self.dim, self.dim)
    }
}

impl Rotation {
    /// Draws a Haar-uniform orthogonal matrix: QR (modified Gram–Schmidt, in
    /// f64) of a Gaussian matrix from the given ChaCha20 stream.
    pub fn random(dim: usize, rng: &mut ChaCha20Rng) -> Self {
        // Columns of a Gaussian matrix, orthonormalised one after the other.
        let mut cols: Vec<Vec<f64>> = (0..dim)
            .map(|_| (0..dim).map(|_| StandardNormal.sample(rng)).collect())
            .collect();
        for j in 0..dim {
            // Two passes of projection keep the result orthogonal to f64 precision.
            for _ in 0..2 {
                for k in 0..j {
                    let (done, rest) = cols.split_at_mut(j);
                    let q = &done[k];
                    let v = &mut rest[0];
                    let d: f64 = q.iter().zip(v.iter()).map(|(a, b)| a * b).sum();
                    v.iter_mut().zip(q).for_each(|(x, qi)| *x -= d * qi);
                }
            }
            let norm = cols[j].iter().map(|x| x * x).sum::<f64>().sqrt();
            cols[j].iter_mut().for_each(|x| *x /= norm);
        }
        let mut rows = vec![0f32; dim * dim];
        for (j, col) in cols.iter().enumerate() {
            for (i, &x) in col.iter().enumerate() {
                rows[i * dim + j] = x as f32;
            }
        }
        Self { dim, rows }
    }

    /// The identity: no rotation (the plaintext pipeline).
    pub fn identity(dim: usize) -> Self {
        let mut rows = vec![0f32; dim * dim];
        (0..dim).for_each(|i| rows[i * dim + i] = 1.0);
        Self { dim, rows }
    }

    /// Wraps a row-major matrix (e.g. read back from host artifacts).
    pub fn from_rows(dim: usize, rows: Vec<f32>) -> Self {
        assert_eq!(rows.len(), dim * dim, "rotation must be dim x dim");
        Self { dim, rows }
    }

    /// Side length of the matrix.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row-major entries.
    pub fn rows(&self) -> &[f32] {
        &self.rows
    }

    /// `R·v`, accumulated in f64.
    pub fn rotate(&self, v: &[f32]) -> Vec<f32> {
        self.apply(v, false)
    }

    /// `Rᵀ·v = R⁻¹·v`: back to the public model's embedding space.
    pub fn unrotate(&self, v: &[f32]) -> Vec<f32> {
        self.apply(v, true)
    }

    fn apply(&self, v: &[f32], transpose: bool) -> Vec<f32> {
        assert_eq!(v.len(), self.dim, "vector has the wrong dimension");
        (0..self.dim)
            .map(|i| {
                (0..self.dim)
                    .map(|j| {
                        let r = if transpose {
                            self.rows[j * self.dim + i]
                        } else {
                            self.rows[i * self.dim + j]
                        };
                        r as f64 * v[j] as f64
                    })
                    .sum::<f64>() as f32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn random_rotation_is_orthogonal_and_not_trivial() {
        let mut rng = ChaCha20Rng::from_seed([3; 32]);
        let r = Rotation::random(64, &mut rng);
        let d = r.dim();
        for i in 0..d {
            for k in 0..d {
                let dot: f64 = (0..d)
                    .map(|j| r.rows()[i * d + j] as f64 * r.rows()[k * d + j] as f64)
                    .sum();
                let want = if i == k { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-6, "R Rᵀ[{i},{k}] = {dot}");
            }
        }
        assert!(r != Rotation::identity(d));
        let v: Vec<f32> = (0..d).map(|i| (i as f32).sin()).collect();
        let back = r.unrotate(&r.rotate(&v));
        for (a, b) in v.iter().zip(&back) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
