//! Retrieval metrics as BEIR computes them (pytrec_eval): nDCG@k with
//! linear gains, recall@k over the relevant documents, MRR@k.

use std::collections::HashMap;

/// nDCG@k of `ranking` (document ids, best first): gains are the grades,
/// discounted by log2(rank + 1), over the ideal ordering of all judged
/// documents.
pub fn ndcg_at(ranking: &[String], judged: &HashMap<String, i32>, k: usize) -> f64 {
    let dcg: f64 = ranking
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, d)| {
            f64::from(judged.get(d).copied().unwrap_or(0).max(0)) / (i as f64 + 2.0).log2()
        })
        .sum();
    let mut ideal: Vec<i32> = judged.values().copied().filter(|&g| g > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, &g)| f64::from(g) / (i as f64 + 2.0).log2())
        .sum();
    if idcg == 0.0 {
        0.0
    } else {
        dcg / idcg
    }
}

/// Share of the relevant documents in the first `k`.
pub fn recall_at(ranking: &[String], judged: &HashMap<String, i32>, k: usize) -> f64 {
    let relevant = judged.values().filter(|&&g| g > 0).count();
    if relevant == 0 {
        return 0.0;
    }
    let found = ranking
        .iter()
        .take(k)
        .filter(|d| judged.get(*d).is_some_and(|&g| g > 0))
        .count();
    found as f64 / relevant as f64
}

/// Reciprocal rank of the first relevant document within the first `k`.
pub fn mrr_at(ranking: &[String], judged: &HashMap<String, i32>, k: usize) -> f64 {
    ranking
        .iter()
        .take(k)
        .position(|d| judged.get(d).is_some_and(|&g| g > 0))
        .map_or(0.0, |i| 1.0 / (i as f64 + 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn judged(v: &[(&str, i32)]) -> HashMap<String, i32> {
        v.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    #[test]
    fn metrics_match_hand_computed_values() {
        let q = judged(&[("a", 1), ("b", 2), ("z", 0)]);
        let r = ids(&["x", "b", "y", "a"]);
        // DCG = 2/log2(3) + 1/log2(5); IDCG = 2/1 + 1/log2(3).
        let dcg = 2.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 2.0 + 1.0 / 3f64.log2();
        assert!((ndcg_at(&r, &q, 10) - dcg / idcg).abs() < 1e-12);
        assert!((ndcg_at(&ids(&["b", "a"]), &q, 10) - 1.0).abs() < 1e-12);
        assert_eq!(ndcg_at(&r, &q, 1), 0.0);
        assert_eq!(recall_at(&r, &q, 2), 0.5);
        assert_eq!(recall_at(&r, &q, 100), 1.0);
        assert_eq!(mrr_at(&r, &q, 10), 0.5);
        assert_eq!(mrr_at(&r, &q, 1), 0.0);
        assert_eq!(ndcg_at(&r, &judged(&[("z", 0)]), 10), 0.0);
    }
}
