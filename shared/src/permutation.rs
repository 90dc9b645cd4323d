//! A secret bijection of a vocabulary: the substitution at the heart of EE.

use rand::Rng;
use rand_chacha::ChaCha20Rng;

use crate::error::{EeError, Result};

/// A permutation `π` of `0..n` and its inverse, so both directions are O(1).
#[derive(Clone, PartialEq, Eq)]
pub struct Permutation {
    forward: Vec<u32>,
    inverse: Vec<u32>,
    vocab: &'static str,
}

// Never print the mapping itself: it is key material.
impl std::fmt::Debug for Permutation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permutation({}, {} ids)", self.vocab, self.forward.len())
    }
}

impl Permutation {
    /// Draws a uniformly random permutation of `0..n` by Fisher–Yates over the
    /// given ChaCha20 stream. `vocab` names the vocabulary in error messages.
    pub fn fisher_yates(n: usize, rng: &mut ChaCha20Rng, vocab: &'static str) -> Self {
        assert!(n <= u32::MAX as usize, "vocabulary too large");
        let mut forward: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            let j = rng.random_range(0..=i);
            forward.swap(i, j);
        }
        Self::from_forward(forward, vocab).expect("Fisher-Yates yields a bijection")
    }

    /// The identity permutation: the plaintext pipeline expressed as a key.
    pub fn identity(n: usize, vocab: &'static str) -> Self {
        Self::from_forward((0..n as u32).collect(), vocab).expect("identity is a bijection")
    }

    /// Builds a permutation from its forward table, checking it is a bijection.
    pub fn from_forward(forward: Vec<u32>, vocab: &'static str) -> Result<Self> {
        let n = forward.len();
        let mut inverse = vec![u32::MAX; n];
        for (t, &c) in forward.iter().enumerate() {
            let slot = inverse
                .get_mut(c as usize)
                .ok_or(EeError::OutOfVocabulary {
                    id: c,
                    vocab,
                    size: n,
                })?;
            if *slot != u32::MAX {
                return Err(EeError::InvalidArgument(format!(
                    "{vocab} table maps two ids to the same id"
                )));
            }
            *slot = t as u32;
        }
        Ok(Self {
            forward,
            inverse,
            vocab,
        })
    }

    /// Number of ids in the vocabulary.
    pub fn len(&self) -> usize {
        self.forward.len()
    }

    /// True for the empty vocabulary.
    pub fn is_empty(&self) -> bool {
        self.forward.is_empty()
    }

    /// `π[t]`, or an error for an id outside the vocabulary.
    pub fn apply(&self, t: u32) -> Result<u32> {
        self.forward.get(t as usize).copied().ok_or(self.oov(t))
    }

    /// `π⁻¹[c]`, or an error for an id outside the vocabulary.
    pub fn invert(&self, c: u32) -> Result<u32> {
        self.inverse.get(c as usize).copied().ok_or(self.oov(c))
    }

    /// Maps a whole sequence through `π`.
    pub fn apply_all(&self, ids: &[u32]) -> Result<Vec<u32>> {
        ids.iter().map(|&t| self.apply(t)).collect()
    }

    /// Maps a whole sequence through `π⁻¹`.
    pub fn invert_all(&self, ids: &[u32]) -> Result<Vec<u32>> {
        ids.iter().map(|&c| self.invert(c)).collect()
    }

    /// The forward table: entry `t` is `π[t]`. Needed to permute weight rows.
    pub fn forward_table(&self) -> &[u32] {
        &self.forward
    }

    /// The inverse table: entry `c` is `π⁻¹[c]` (what ciphertext id `c`
    /// decrypts to; the attack harness scores with it).
    pub fn inverse_table(&self) -> &[u32] {
        &self.inverse
    }

    fn oov(&self, id: u32) -> EeError {
        EeError::OutOfVocabulary {
            id,
            vocab: self.vocab,
            size: self.forward.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn fisher_yates_is_a_bijection_and_round_trips() {
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let p = Permutation::fisher_yates(30522, &mut rng, "encoder");
        let mut seen = vec![false; p.len()];
        for t in 0..p.len() as u32 {
            let c = p.apply(t).unwrap();
            assert!(!seen[c as usize], "id {c} hit twice");
            seen[c as usize] = true;
            assert_eq!(p.invert(c).unwrap(), t);
        }
        let fixed = (0..p.len() as u32)
            .filter(|&t| p.apply(t).unwrap() == t)
            .count();
        assert!(fixed < 10, "{fixed} fixed points: not a random permutation");
    }

    #[test]
    fn out_of_vocabulary_is_an_error() {
        let p = Permutation::identity(10, "generator");
        assert!(matches!(
            p.apply(10),
            Err(EeError::OutOfVocabulary {
                id: 10,
                size: 10,
                ..
            })
        ));
        assert!(p.invert(u32::MAX).is_err());
    }

    #[test]
    fn non_bijective_table_is_rejected() {
        assert!(Permutation::from_forward(vec![0, 0, 1], "x").is_err());
        assert!(Permutation::from_forward(vec![0, 3, 1], "x").is_err());
    }
}
