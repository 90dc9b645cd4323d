//! Attacks on one short ciphertext (one encrypted query), as the seed paper
//! lists them: search for the plaintext whose language-model loss is lowest
//! among those consistent with the ciphertext (equal ciphertext ids decrypt
//! to equal tokens, distinct to distinct), within a fixed time budget.
//!
//! - hill climbing: change one ciphertext id's guess at a time, keep the
//!   change when the loss falls;
//! - random sampling: draw whole candidate plaintexts from the public bigram
//!   model, keep the one with the lowest loss.
//!
//! The loss is either the public bigram model's or the generator's own
//! (SmolLM2, the public base model: the attacker has it). The loss of the
//! true plaintext is reported next to the best found: when the search finds
//! a lower loss than the truth's, more search cannot help.

use std::collections::HashMap;
use std::time::Instant;

use eerag_core::models::generator::Generator;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use super::stats::TokenStats;
use super::Result;

/// Scores a candidate plaintext: lower is more likely.
pub trait Loss {
    /// Negative log-likelihood of `tokens` (nats).
    fn loss(&mut self, tokens: &[u32]) -> Result<f64>;
}

/// The public bigram model's loss.
pub struct BigramLoss<'a>(pub &'a TokenStats);

impl Loss for BigramLoss<'_> {
    fn loss(&mut self, tokens: &[u32]) -> Result<f64> {
        let Some(&first) = tokens.first() else {
            return Ok(0.0);
        };
        let mut ll = self.0.log_unigram(first);
        for w in tokens.windows(2) {
            ll += self.0.log_next(w[0], w[1]);
        }
        Ok(-ll)
    }
}

/// The generator's loss, given the plaintext prefix the attacker knows
/// comes first (the chat template's user turn).
pub struct LanguageModelLoss<'a> {
    pub generator: &'a Generator,
    pub prefix: Vec<u32>,
}

impl Loss for LanguageModelLoss<'_> {
    fn loss(&mut self, tokens: &[u32]) -> Result<f64> {
        let mut session = self.generator.session();
        let mut logits = session.feed(&self.prefix)?;
        let mut nll = 0.0;
        for (i, &t) in tokens.iter().enumerate() {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
            nll -= f64::from(logits[t as usize] - max) - sum.ln();
            if i + 1 < tokens.len() {
                logits = session.feed(&[t])?;
            }
        }
        Ok(nll)
    }
}

/// Which search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Search {
    HillClimb,
    RandomSample,
}

/// The attack on one ciphertext.
#[derive(Clone, Debug, Serialize)]
pub struct QueryResult {
    pub tokens: usize,
    pub distinct_ids: usize,
    /// Positions the attacker knew before searching (ids the prompt
    /// template gives away).
    pub known_tokens: usize,
    /// Positions whose token the best candidate got right (known ones
    /// included).
    pub recovered_tokens: usize,
    /// Candidates scored in the budget.
    pub candidates: u64,
    pub best_loss: f64,
    pub true_loss: f64,
    pub seconds: f64,
}

/// Candidate plaintexts as assignments of the ciphertext's distinct ids.
struct Problem<'a> {
    /// Per position, the index of its ciphertext id among the distinct ones.
    slots: Vec<usize>,
    distinct: usize,
    /// Per distinct id, its plaintext if the attacker already knows it.
    fixed: Vec<Option<u32>>,
    /// Plaintext tokens already known to belong to other ciphertext ids:
    /// no unknown id can decrypt to one of them.
    known_plain: std::collections::HashSet<u32>,
    public: &'a TokenStats,
    /// The most frequent public tokens, for unigram proposals.
    common: &'a [u32],
}

impl Problem<'_> {
    fn text(&self, assignment: &[u32]) -> Vec<u32> {
        self.slots.iter().map(|&s| assignment[s]).collect()
    }

    /// A whole candidate drawn left to right from the public bigram model,
    /// one to one.
    fn sample(&self, rng: &mut ChaCha20Rng) -> Vec<u32> {
        let mut assignment: Vec<u32> = self.fixed.iter().map(|f| f.unwrap_or(u32::MAX)).collect();
        let mut used = self.known_plain.clone();
        let mut prev: Option<u32> = None;
        for &s in &self.slots {
            if assignment[s] == u32::MAX {
                let pick = |rng: &mut ChaCha20Rng| -> u32 {
                    if let Some(p) = prev {
                        let next = self.public.successors(p);
                        if !next.is_empty() && rng.random_bool(0.8) {
                            let r = rng.random_range(0..next.len());
                            return next[rng.random_range(0..=r)];
                        }
                    }
                    self.common[rng.random_range(0..self.common.len())]
                };
                let mut t = pick(rng);
                let mut tries = 0;
                while used.contains(&t) {
                    tries += 1;
                    t = if tries < 64 {
                        pick(rng)
                    } else {
                        rng.random_range(0..self.public.vocab() as u32)
                    };
                }
                used.insert(t);
                assignment[s] = t;
            }
            prev = Some(assignment[s]);
        }
        assignment
    }

    /// `assignment` with slot `s` given a new token (swapping with the slot
    /// that held it, to stay one to one).
    fn neighbour(&self, assignment: &[u32], rng: &mut ChaCha20Rng) -> Vec<u32> {
        let mut next = assignment.to_vec();
        let open: Vec<usize> = (0..self.slots.len())
            .filter(|&p| self.fixed[self.slots[p]].is_none())
            .collect();
        if open.is_empty() {
            return next;
        }
        let pos = open[rng.random_range(0..open.len())];
        let s = self.slots[pos];
        let t = match pos.checked_sub(1) {
            Some(p) if rng.random_bool(0.5) => {
                let after = self.public.successors(assignment[self.slots[p]]);
                if after.is_empty() {
                    self.common[rng.random_range(0..self.common.len())]
                } else {
                    after[rng.random_range(0..after.len())]
                }
            }
            _ => self.common[rng.random_range(0..self.common.len())],
        };
        if self.known_plain.contains(&t) {
            return next; // belongs to a known id: not a candidate
        }
        if let Some(other) = next.iter().position(|&x| x == t) {
            next[other] = next[s];
        }
        next[s] = t;
        next
    }
}

/// Limits of one search.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub seconds: f64,
    /// Stop after this many candidates even within the time (for
    /// reproducible runs).
    pub max_candidates: Option<u64>,
}

/// Runs `search` on `cipher` within `budget`; `known` maps ciphertext ids
/// the attacker already knows (from the public prompt template every
/// request carries) to their plaintext; `truth` is the plaintext, used only
/// to score the result.
#[allow(clippy::too_many_arguments)]
pub fn attack(
    cipher: &[u32],
    truth: &[u32],
    known: &HashMap<u32, u32>,
    public: &TokenStats,
    loss: &mut dyn Loss,
    search: Search,
    budget: Budget,
    seed: u64,
) -> Result<QueryResult> {
    if cipher.is_empty() {
        return Err(super::AttackError::Invalid("an empty ciphertext".into()));
    }
    let budget_secs = budget.seconds;
    let mut index: HashMap<u32, usize> = HashMap::new();
    let slots: Vec<usize> = cipher
        .iter()
        .map(|&c| {
            let n = index.len();
            *index.entry(c).or_insert(n)
        })
        .collect();
    let common_len = public.distinct().clamp(1, 8192);
    let mut fixed = vec![None; index.len()];
    for (&c, &i) in &index {
        fixed[i] = known.get(&c).copied();
    }
    let known_tokens = cipher.iter().filter(|c| known.contains_key(c)).count();
    let problem = Problem {
        distinct: index.len(),
        slots,
        fixed,
        known_plain: known.values().copied().collect(),
        public,
        common: &public.ranked()[..common_len],
    };
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let start = Instant::now();
    let mut best = problem.sample(&mut rng);
    let mut best_loss = loss.loss(&problem.text(&best))?;
    let mut candidates = 1u64;
    // Hill climbing restarts from a fresh sample after this many proposals
    // without improvement (a local optimum); the best overall is kept.
    let patience = 50 + 20 * problem.distinct as u64;
    let (mut current, mut current_loss, mut stale) = (best.clone(), best_loss, 0u64);
    while start.elapsed().as_secs_f64() < budget_secs
        && budget.max_candidates.is_none_or(|m| candidates < m)
    {
        let candidate = match search {
            Search::HillClimb if stale >= patience => {
                stale = 0;
                current_loss = f64::INFINITY;
                problem.sample(&mut rng)
            }
            Search::HillClimb => problem.neighbour(&current, &mut rng),
            Search::RandomSample => problem.sample(&mut rng),
        };
        let l = loss.loss(&problem.text(&candidate))?;
        candidates += 1;
        if l < current_loss {
            current_loss = l;
            current = candidate.clone();
            stale = 0;
        } else {
            stale += 1;
        }
        if l < best_loss {
            best = candidate;
            best_loss = l;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let guess = problem.text(&best);
    Ok(QueryResult {
        tokens: cipher.len(),
        distinct_ids: problem.distinct,
        known_tokens,
        recovered_tokens: guess.iter().zip(truth).filter(|(a, b)| a == b).count(),
        candidates,
        best_loss,
        true_loss: loss.loss(truth)?,
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_keep_the_ciphertext_equalities() {
        let seqs: Vec<Vec<u32>> = vec![vec![1, 2, 3, 4, 5, 1, 2], vec![3, 4, 5, 6, 7]];
        let public = TokenStats::count(10, seqs.iter().map(|s| s.as_slice()));
        let problem = Problem {
            slots: vec![0, 1, 0, 2],
            distinct: 3,
            fixed: vec![None, None, Some(6)],
            known_plain: [6u32, 7].into_iter().collect(),
            public: &public,
            common: &public.ranked()[..7],
        };
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        for _ in 0..50 {
            let a = problem.sample(&mut rng);
            let text = problem.text(&a);
            assert_eq!(text[0], text[2]);
            assert_ne!(text[0], text[1]);
            assert_ne!(text[1], text[3]);
            // Known ids keep their plaintext; others never take a known one.
            assert_eq!(text[3], 6);
            assert!(text[0] != 7 && text[1] != 7 && text[0] != 6 && text[1] != 6);
            let b = problem.neighbour(&a, &mut rng);
            assert_eq!(b[2], 6);
            assert!(!b[..2].contains(&7));
            let mut sorted = b.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "one to one: {b:?}");
        }
    }

    #[test]
    fn hill_climbing_finds_a_plaintext_the_loss_singles_out() {
        // A public model in which "1 2 3 4" is by far the likeliest text.
        let seqs: Vec<Vec<u32>> = (0..50).map(|_| vec![1, 2, 3, 4]).collect();
        let public = TokenStats::count(8, seqs.iter().map(|s| s.as_slice()));
        let result = attack(
            &[7, 5, 6, 0],
            &[1, 2, 3, 4],
            &HashMap::new(),
            &public,
            &mut BigramLoss(&public),
            Search::HillClimb,
            Budget {
                seconds: 600.0,
                max_candidates: Some(20_000),
            },
            1,
        )
        .unwrap();
        assert_eq!(result.candidates, 20_000);
        assert_eq!(result.recovered_tokens, 4, "{result:?}");
        assert!(result.best_loss <= result.true_loss + 1e-9);
    }
}
