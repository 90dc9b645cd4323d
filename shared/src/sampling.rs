//! Token sampling whose choices depend only on the logits' values.
//!
//! On encrypted ids the transformed generator's logits are the plaintext
//! logits permuted. Every step here (temperature, top-k, top-p, the random
//! draw) is a function of the multiset of values and of walking them from the
//! largest down, and sums are exact fixed-point integers, so both spaces
//! choose the same *position*, which maps back to the same plaintext token.
//! The one case that can differ is an exact tie between distinct tokens at the
//! chosen position: ties are broken by id, and ids differ between the spaces.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::error::{EeError, Result};

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// Seeded sampling from the tempered, top-k and top-p truncated distribution.
    Random {
        temperature: f32,
        #[serde(default = "default_top_p")]
        top_p: f32,
        #[serde(default)]
        top_k: Option<usize>,
        seed: u64,
    },
}

fn default_top_p() -> f32 {
    1.0
}

impl Sampling {
    /// Checks the parameters are usable.
    pub fn validate(&self) -> Result<()> {
        if let Sampling::Random {
            temperature,
            top_p,
            top_k,
            ..
        } = self
        {
            if !temperature.is_finite() || *temperature < 0.0 {
                return Err(EeError::InvalidArgument(
                    "temperature must be a finite number >= 0".into(),
                ));
            }
            if !(top_p.is_finite() && *top_p > 0.0 && *top_p <= 1.0) {
                return Err(EeError::InvalidArgument("top_p must be in (0, 1]".into()));
            }
            if *top_k == Some(0) {
                return Err(EeError::InvalidArgument("top_k must be at least 1".into()));
            }
        }
        Ok(())
    }
}

/// A sampler with its own random stream (one per generation).
pub struct Sampler {
    sampling: Sampling,
    rng: ChaCha20Rng,
    order: Vec<u32>,
}

impl Sampler {
    /// A sampler for `sampling`; its stream is seeded from the request's seed.
    pub fn new(sampling: Sampling) -> Result<Self> {
        sampling.validate()?;
        let seed = match &sampling {
            Sampling::Random { seed, .. } => *seed,
            Sampling::Greedy => 0,
        };
        Ok(Self {
            sampling,
            rng: ChaCha20Rng::seed_from_u64(seed),
            order: Vec::new(),
        })
    }

    /// Chooses the next token id from `logits` (indexed by id).
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(EeError::Model("empty logits".into()));
        }
        match self.sampling.clone() {
            // Temperature 0 is greedy by convention.
            Sampling::Greedy
            | Sampling::Random {
                temperature: 0.0, ..
            } => Ok(argmax(logits)),
            Sampling::Random {
                temperature,
                top_p,
                top_k,
                ..
            } => Ok(self.sample_random(logits, temperature, top_p, top_k)),
        }
    }

    fn sample_random(
        &mut self,
        logits: &[f32],
        temperature: f32,
        top_p: f32,
        top_k: Option<usize>,
    ) -> u32 {
        let value = |i: u32| sortable(logits[i as usize]);
        let max = logits
            .iter()
            .map(|&x| sortable(x))
            .fold(f32::NEG_INFINITY, f32::max);
        // Weights in fixed point: integer sums are exact, so they do not depend
        // on the order the ids come in, and no full sort is needed to total them.
        let weight = |i: u32| -> u128 {
            let w = ((value(i) - max) / temperature).exp();
            // A NaN (from an infinite logit) casts to 0.
            (w as f64 * WEIGHT_ONE) as u128
        };
        let order = &mut self.order;
        order.clear();
        order.extend(0..logits.len() as u32);
        if let Some(k) = top_k.filter(|&k| k < order.len()) {
            order.select_nth_unstable_by(k - 1, |a, b| value(*b).total_cmp(&value(*a)));
            order.truncate(k);
        }
        let total: u128 = order.iter().map(|&i| weight(i)).sum();
        if total == 0 {
            return argmax(logits);
        }
        // The nucleus: the shortest run of most likely tokens holding top_p of the mass.
        let kept_total = if top_p < 1.0 {
            let goal = ((total as f64 * top_p as f64).ceil() as u128).clamp(1, total);
            prefix_mass(order, &value, &weight, |cum| cum >= goal).1
        } else {
            total
        };
        // Uniform in [0, kept_total): the total can exceed 2^64, so draw in u128.
        let target = self.rng.random_range(0..kept_total);
        let (n, _) = prefix_mass(order, &value, &weight, |cum| cum > target);
        order[n - 1]
    }
}

/// Fixed-point one: weights are in (0, 1], so each fits in 62 bits and a sum
/// over any vocabulary fits in a u128.
const WEIGHT_ONE: f64 = (1u64 << 62) as f64;

/// Walks `order` from the largest value down, accumulating `weight`, and
/// returns how many entries it took (and their mass) for `done` to hold.
/// Only the front of `order` is sorted, growing 4× at a time: the mass of a
/// language model's next-token distribution sits in its first few dozen ids.
/// Ties are interchangeable here — equal values have equal weights, so every
/// prefix has the same mass whichever tied id comes first.
fn prefix_mass(
    order: &mut [u32],
    value: &impl Fn(u32) -> f32,
    weight: &impl Fn(u32) -> u128,
    done: impl Fn(u128) -> bool,
) -> (usize, u128) {
    let by_value_desc = |a: &u32, b: &u32| value(*b).total_cmp(&value(*a));
    let mut front = order.len().min(64);
    loop {
        if front < order.len() {
            order.select_nth_unstable_by(front - 1, by_value_desc);
        }
        order[..front].sort_unstable_by(by_value_desc);
        let mut cum = 0u128;
        for (n, &i) in order[..front].iter().enumerate() {
            cum += weight(i);
            if done(cum) {
                return (n + 1, cum);
            }
        }
        if front == order.len() {
            // Unreachable for the callers' goals (at most the total mass).
            return (front, cum);
        }
        front = (front * 4).min(order.len());
    }
}

/// NaN sorts below every number, so a broken logit is never chosen.
fn sortable(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// Index of the largest logit; the lowest index among exact ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in logits.iter().enumerate() {
        if sortable(x) > sortable(logits[best]) {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permutation::Permutation;

    fn permuted(logits: &[f32], p: &Permutation) -> Vec<f32> {
        let mut out = vec![0.0; logits.len()];
        for (t, &l) in logits.iter().enumerate() {
            out[p.apply(t as u32).unwrap() as usize] = l;
        }
        out
    }

    #[test]
    fn choices_are_the_same_in_any_id_space() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let p = Permutation::fisher_yates(5000, &mut rng, "generator");
        let settings = [
            Sampling::Greedy,
            Sampling::Random {
                temperature: 0.7,
                top_p: 0.9,
                top_k: None,
                seed: 42,
            },
            Sampling::Random {
                temperature: 1.3,
                top_p: 1.0,
                top_k: Some(40),
                seed: 7,
            },
            Sampling::Random {
                temperature: 1.0,
                top_p: 0.5,
                top_k: Some(3),
                seed: 9,
            },
            // Nearly flat: draws land deep in the order, past the first sorted front.
            Sampling::Random {
                temperature: 50.0,
                top_p: 1.0,
                top_k: None,
                seed: 3,
            },
        ];
        for s in settings {
            let mut plain = Sampler::new(s.clone()).unwrap();
            let mut enc = Sampler::new(s.clone()).unwrap();
            let mut distinct = std::collections::HashSet::new();
            for step in 0..200 {
                let logits: Vec<f32> = (0..5000)
                    .map(|i| ((i * 7919 + step * 104729) % 10007) as f32 / 997.0)
                    .collect();
                let t = plain.sample(&logits).unwrap();
                let c = enc.sample(&permuted(&logits, &p)).unwrap();
                assert_eq!(p.invert(c).unwrap(), t, "{s:?} step {step}");
                distinct.insert(t);
            }
            if !matches!(s, Sampling::Greedy) {
                assert!(distinct.len() > 1, "{s:?} never varied");
            }
        }
    }

    fn frequencies(sampling: Sampling, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut sampler = Sampler::new(sampling).unwrap();
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[sampler.sample(logits).unwrap() as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn draws_follow_the_tempered_truncated_distribution() {
        // Probabilities 1/7, 2/7, 4/7 and 0.
        let logits = [0.0, 2f32.ln(), 4f32.ln(), f32::NEG_INFINITY];
        let close =
            |got: &[f64], want: &[f64]| got.iter().zip(want).all(|(g, w)| (g - w).abs() < 0.015);
        let random = |temperature, top_p, top_k| Sampling::Random {
            temperature,
            top_p,
            top_k,
            seed: 5,
        };
        let f = frequencies(random(1.0, 1.0, None), &logits, 40_000);
        assert!(close(&f, &[1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0, 0.0]), "{f:?}");
        // top_p 0.5: the most likely token alone holds 4/7 >= 0.5.
        let f = frequencies(random(1.0, 0.5, None), &logits, 2_000);
        assert_eq!(f, vec![0.0, 0.0, 1.0, 0.0]);
        // top_p 0.8: the two most likely, renormalised to 2/6 and 4/6.
        let f = frequencies(random(1.0, 0.8, None), &logits, 40_000);
        assert!(close(&f, &[0.0, 1.0 / 3.0, 2.0 / 3.0, 0.0]), "{f:?}");
        // top_k 2 at temperature 2: weights sqrt(2) and sqrt(4).
        let f = frequencies(random(2.0, 1.0, Some(2)), &logits, 40_000);
        let (a, b) = (2f64.sqrt(), 2.0);
        assert!(close(&f, &[0.0, a / (a + b), b / (a + b), 0.0]), "{f:?}");
    }

    #[test]
    fn draws_reach_deep_into_a_flat_distribution() {
        // 1,000 equal logits: the total weight is 1,000 × 2^62, far past 2^64.
        let logits = vec![1.5f32; 1000];
        let random = Sampling::Random {
            temperature: 1.0,
            top_p: 1.0,
            top_k: None,
            seed: 21,
        };
        let f = frequencies(random, &logits, 50_000);
        // Ten buckets of 100 ids each get about a tenth of the draws.
        for bucket in f.chunks(100) {
            let share: f64 = bucket.iter().sum();
            assert!((share - 0.1).abs() < 0.01, "bucket share {share}");
        }
        let deep: f64 = f[500..].iter().sum();
        assert!(deep > 0.45, "only {deep} of draws past id 500");
    }

    #[test]
    fn bad_parameters_are_rejected_and_nan_is_never_chosen() {
        for bad in [
            Sampling::Random {
                temperature: -1.0,
                top_p: 1.0,
                top_k: None,
                seed: 0,
            },
            Sampling::Random {
                temperature: 1.0,
                top_p: 0.0,
                top_k: None,
                seed: 0,
            },
            Sampling::Random {
                temperature: 1.0,
                top_p: 1.0,
                top_k: Some(0),
                seed: 0,
            },
            Sampling::Random {
                temperature: f32::NAN,
                top_p: 1.0,
                top_k: None,
                seed: 0,
            },
        ] {
            assert!(Sampler::new(bad).is_err());
        }
        assert_eq!(argmax(&[f32::NAN, 1.0, 3.0, 2.0]), 2);
    }
}
