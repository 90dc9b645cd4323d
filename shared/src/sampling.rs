//! Token sampling whose choices depend only on the logits' values.
//!
//! On encrypted ids the transformed generator's logits are the plaintext
//! logits permuted. Sorting by value turns both into the same sequence of
//! values, and every later step (temperature, top-k, top-p, the random draw)
//! runs on that sequence, so both choose the same *position*, which maps back
//! to the same plaintext token. The one case that can differ is an exact tie
//! between distinct tokens at the chosen position: ties are broken by id, and
//! ids differ between the two spaces.

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
        let value = |i: &u32| sortable(logits[*i as usize]);
        let order = &mut self.order;
        order.clear();
        order.extend(0..logits.len() as u32);
        if let Some(k) = top_k.filter(|&k| k < order.len()) {
            order.select_nth_unstable_by(k - 1, |a, b| value(b).total_cmp(&value(a)));
            order.truncate(k);
        }
        order.sort_unstable_by(|a, b| value(b).total_cmp(&value(a)));
        // Everything below runs on the sorted values only.
        let max = value(&order[0]);
        let weights: Vec<f64> = order
            .iter()
            .map(|i| (((value(i) - max) / temperature) as f64).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut kept = weights.len();
        if top_p < 1.0 {
            let mut cum = 0.0;
            for (n, w) in weights.iter().enumerate() {
                cum += w;
                if cum >= top_p as f64 * total {
                    kept = n + 1;
                    break;
                }
            }
        }
        let kept_total: f64 = weights[..kept].iter().sum();
        let target = self.rng.random::<f64>() * kept_total;
        let mut cum = 0.0;
        for (n, w) in weights[..kept].iter().enumerate() {
            cum += w;
            if target < cum {
                return order[n];
            }
        }
        order[kept - 1]
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
