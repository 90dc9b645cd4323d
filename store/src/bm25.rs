//! The keyword scoring both backends use, stated once: the formula,
//! tantivy's constants, the per-chunk weights and the IDF.
//!
//! A chunk scores for a query term `t` it contains `tf` times
//!
//! ```text
//! idf(t) (k1 + 1) tf / (tf + k1 (1 - b + b dl / avgdl))
//! idf(t) = ln(1 + (N - n + 0.5) / (n + 0.5))
//! ```
//!
//! with `dl` the chunk's length in ids (quantised to tantivy's one-byte
//! field norm), `avgdl` the average chunk length, `N` the number of chunks
//! and `n` the number holding `t`; a query's score is the sum over its
//! distinct terms. These are tantivy 0.27's formula and constants
//! (`tantivy::query::bm25`), which the embedded backend's tantivy index
//! ([`crate::keyword`]) applies itself; the Qdrant backend stores
//! [`document_weights`] as each chunk's sparse vector and Qdrant's IDF
//! modifier multiplies in [`idf`] at query time. The tests below hold this
//! statement to tantivy's own scorer.

use std::collections::BTreeMap;

use tantivy::fieldnorm::FieldNormReader;

/// BM25 term saturation, as tantivy 0.27's `K1` in `tantivy::query::bm25`.
pub const K1: f32 = 1.2;
/// BM25 length normalisation, as tantivy 0.27's `B` in
/// `tantivy::query::bm25`.
pub const B: f32 = 0.75;

/// The BM25 weight of each distinct id of a chunk, as tantivy scores it
/// bar the IDF (which Qdrant's modifier supplies at query time):
/// `(k1 + 1) tf / (tf + k1 (1 - b + b dl / avgdl))`, with the chunk length
/// `dl` quantised to tantivy's one-byte field norm. Sorted by id.
pub fn document_weights(ids: &[u32], avgdl: f32) -> (Vec<u32>, Vec<f32>) {
    let mut tf: BTreeMap<u32, u32> = BTreeMap::new();
    for &id in ids {
        *tf.entry(id).or_default() += 1;
    }
    let dl = FieldNormReader::id_to_fieldnorm(FieldNormReader::fieldnorm_to_id(ids.len() as u32));
    let norm = K1 * (1.0 - B + B * dl as f32 / avgdl);
    tf.into_iter()
        .map(|(id, f)| {
            let f = f as f32;
            (id, (1.0 + K1) * f / (f + norm))
        })
        .unzip()
}

/// The inverse document frequency of a term held by `doc_freq` of
/// `doc_count` chunks: `ln(1 + (N - n + 0.5) / (n + 0.5))`, as tantivy
/// computes it and Qdrant's IDF modifier does (a `doc_freq` past
/// `doc_count` counts as `doc_count`).
pub fn idf(doc_freq: u64, doc_count: u64) -> f32 {
    let x = (doc_count.saturating_sub(doc_freq) as f32 + 0.5) / (doc_freq as f32 + 0.5);
    (1.0 + x).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bm25_weights_follow_tantivy() {
        // tf 2 in a chunk of average length: (k1 + 1) 2 / (2 + k1).
        let (ids, w) = document_weights(&[7, 3, 7, 9], 4.0);
        assert_eq!(ids, vec![3, 7, 9]);
        assert!((w[1] - 2.2 * 2.0 / (2.0 + 1.2)).abs() < 1e-6);
        assert!((w[0] - 2.2 / (1.0 + 1.2)).abs() < 1e-6);
        // Longer chunks weigh each occurrence less; lengths are quantised
        // as tantivy stores them (exact when short).
        let long: Vec<u32> = (0..200).collect();
        let (_, wl) = document_weights(&long, 100.0);
        assert!(wl[0] < w[0]);
        let dl = FieldNormReader::id_to_fieldnorm(FieldNormReader::fieldnorm_to_id(200));
        let expected = 2.2 / (1.0 + 1.2 * (0.25 + 0.75 * dl as f32 / 100.0));
        assert!((wl[0] - expected).abs() < 1e-6);
    }

    #[test]
    fn idf_times_weight_is_tantivys_score() {
        for tf in 1..=5u32 {
            for dl in [1u32, 3, 17, 40, 200, 1000] {
                if tf > dl {
                    continue;
                }
                // Id 0 `tf` times, the rest of the chunk distinct ids.
                let mut ids = vec![0u32; tf as usize];
                ids.extend(1..=dl - tf);
                assert_eq!(ids.len(), dl as usize);
                for avgdl in [4.0f32, 37.5, 120.0] {
                    let (terms, weights) = document_weights(&ids, avgdl);
                    assert_eq!(terms[0], 0);
                    for (n, total) in [(1u64, 10u64), (3, 10), (10, 10), (1, 1000)] {
                        let ours = idf(n, total) * weights[0];
                        let theirs = tantivy::query::Bm25Weight::for_one_term(n, total, avgdl)
                            .score(FieldNormReader::fieldnorm_to_id(dl), tf);
                        assert!(
                            (ours - theirs).abs() <= 1e-5 * theirs.abs(),
                            "tf {tf}, dl {dl}, avgdl {avgdl}, n {n}, N {total}: \
                             {ours} against tantivy's {theirs}"
                        );
                    }
                }
            }
        }
    }
}
