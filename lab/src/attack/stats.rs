//! Token statistics: unigram and bigram counts over token sequences, and the
//! smoothed bigram language model the decipherment attacks score with. Built
//! from public text (the attacker's prior) or from ciphertext (what the
//! attacker observes): the same counting either way.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A multiplicative hasher for the u64 bigram keys: the attacks look bigrams
/// up millions of times a second, and SipHash's DoS resistance buys nothing
/// here.
#[derive(Default)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type PairMap = HashMap<u64, u32, BuildHasherDefault<PairHasher>>;

/// How many successors and predecessors of each token are kept for
/// proposing candidates.
const NEIGHBOURS: usize = 48;
/// Weight of the bigram estimate against the independence (unigram) one.
const LAMBDA: f64 = 0.9;

/// Unigram and bigram counts over sequences of ids below `vocab`.
pub struct TokenStats {
    vocab: usize,
    unigram: Vec<u64>,
    total: u64,
    bigram: PairMap,
    bigram_total: u64,
    /// Smoothed unigram probabilities.
    probability: Vec<f64>,
    successors: Vec<Vec<u32>>,
    predecessors: Vec<Vec<u32>>,
    ranked: Vec<u32>,
    rank: Vec<u32>,
}

fn pair(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

impl TokenStats {
    /// Counts `sequences` (bigrams never cross from one sequence into the
    /// next). Ids at or above `vocab` are ignored.
    pub fn count<'a>(vocab: usize, sequences: impl IntoIterator<Item = &'a [u32]>) -> Self {
        let mut unigram = vec![0u64; vocab];
        let mut bigram = PairMap::default();
        let mut total = 0u64;
        let mut bigram_total = 0u64;
        for seq in sequences {
            let seq: Vec<u32> = seq
                .iter()
                .copied()
                .filter(|&t| (t as usize) < vocab)
                .collect();
            for &t in &seq {
                unigram[t as usize] += 1;
                total += 1;
            }
            for w in seq.windows(2) {
                *bigram.entry(pair(w[0], w[1])).or_insert(0) += 1;
                bigram_total += 1;
            }
        }
        let mut followers: Vec<Vec<(u32, u32)>> = vec![Vec::new(); vocab];
        let mut leaders: Vec<Vec<(u32, u32)>> = vec![Vec::new(); vocab];
        for (&k, &c) in &bigram {
            let (a, b) = ((k >> 32) as u32, k as u32);
            followers[a as usize].push((c, b));
            leaders[b as usize].push((c, a));
        }
        let top = |mut v: Vec<(u32, u32)>| {
            v.sort_unstable_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
            v.truncate(NEIGHBOURS);
            v.into_iter().map(|(_, t)| t).collect::<Vec<u32>>()
        };
        let successors = followers.into_iter().map(top).collect();
        let predecessors = leaders.into_iter().map(top).collect();
        let mut ranked: Vec<u32> = (0..vocab as u32).collect();
        ranked.sort_by(|&a, &b| {
            unigram[b as usize]
                .cmp(&unigram[a as usize])
                .then(a.cmp(&b))
        });
        let mut rank = vec![0u32; vocab];
        for (r, &t) in ranked.iter().enumerate() {
            rank[t as usize] = r as u32;
        }
        let denominator = total as f64 + 0.5 * vocab as f64;
        let probability = unigram
            .iter()
            .map(|&c| (c as f64 + 0.5) / denominator)
            .collect();
        Self {
            vocab,
            unigram,
            total,
            bigram,
            bigram_total,
            probability,
            successors,
            predecessors,
            ranked,
            rank,
        }
    }

    /// The vocabulary size.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Tokens counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// How often `t` occurred.
    pub fn count_of(&self, t: u32) -> u64 {
        self.unigram.get(t as usize).copied().unwrap_or(0)
    }

    /// How often `a` was directly followed by `b`.
    pub fn pair_count(&self, a: u32, b: u32) -> u32 {
        self.bigram.get(&pair(a, b)).copied().unwrap_or(0)
    }

    /// Distinct tokens that occurred.
    pub fn distinct(&self) -> usize {
        self.unigram.iter().filter(|&&c| c > 0).count()
    }

    /// Every id, most frequent first (ties by id).
    pub fn ranked(&self) -> &[u32] {
        &self.ranked
    }

    /// `t`'s place in [`TokenStats::ranked`].
    pub fn rank_of(&self, t: u32) -> usize {
        self.rank[t as usize] as usize
    }

    /// The tokens that most often follow `t`, most frequent first.
    pub fn successors(&self, t: u32) -> &[u32] {
        &self.successors[t as usize]
    }

    /// The tokens that most often precede `t`, most frequent first.
    pub fn predecessors(&self, t: u32) -> &[u32] {
        &self.predecessors[t as usize]
    }

    /// Every distinct bigram with its count.
    pub fn bigrams(&self) -> impl Iterator<Item = (u32, u32, u32)> + '_ {
        self.bigram
            .iter()
            .map(|(&k, &c)| ((k >> 32) as u32, k as u32, c))
    }

    /// log P(t), add-½ smoothed over the vocabulary.
    pub fn log_unigram(&self, t: u32) -> f64 {
        self.probability[t as usize].ln()
    }

    /// log P(a, b): the bigram estimate interpolated with P(a)·P(b).
    pub fn log_joint(&self, a: u32, b: u32) -> f64 {
        let independent = self.probability[a as usize] * self.probability[b as usize];
        let seen = if self.bigram_total == 0 {
            0.0
        } else {
            f64::from(self.pair_count(a, b)) / self.bigram_total as f64
        };
        (LAMBDA * seen + (1.0 - LAMBDA) * independent).ln()
    }

    /// log P(b | a) under the same model.
    pub fn log_next(&self, a: u32, b: u32) -> f64 {
        self.log_joint(a, b) - self.log_unigram(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rank_and_neighbours() {
        let a: &[u32] = &[1, 2, 3, 1, 2];
        let b: &[u32] = &[2, 1];
        let s = TokenStats::count(5, [a, b]);
        assert_eq!(s.total(), 7);
        assert_eq!(s.count_of(1), 3);
        assert_eq!(s.pair_count(1, 2), 2);
        assert_eq!(s.pair_count(3, 1), 1);
        // No bigram across sequences.
        assert_eq!(s.pair_count(2, 2), 0);
        assert_eq!(&s.ranked()[..3], &[1, 2, 3]);
        assert_eq!(s.successors(1), &[2]);
        assert_eq!(s.predecessors(1), &[2, 3]);
        assert!(s.log_joint(1, 2) > s.log_joint(2, 3));
        assert!(s.log_joint(4, 4) < s.log_joint(1, 2));
        // A distribution: the joint sums to one over the vocabulary.
        let sum: f64 = (0..5u32)
            .flat_map(|x| (0..5u32).map(move |y| (x, y)))
            .map(|(x, y)| s.log_joint(x, y).exp())
            .sum();
        assert!((sum - 1.0).abs() < 1e-9, "{sum}");
    }
}
