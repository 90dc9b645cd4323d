//! Retrieval: dense, BM25 and reciprocal-rank fusion over a collection,
//! with ties at a cut kept whole; search and embed requests.

use std::collections::HashMap;
use std::sync::Arc;

use eerag_core::wire::{EmbedRequest, SearchHit, SearchMode, SearchRequest};
use eerag_core::EncEncoderIds;
use eerag_store::store::{sort_hits, ChunkId, ChunkRecord, Collection, ScoredChunk};

use super::validate::{check_ids, invalid};
use super::{Service, ServiceError};

/// Scores this close (relative) are one rank in fusion: float
/// reassociation under a key (BM25 sums terms in the ids' order, the
/// rotation reorders a dot product) moves scores by about 1e-7, and must not
/// move ranks.
pub const TIE_TOLERANCE: f32 = 1e-5;

/// Extra hits each retriever fetches so ties at its cut are kept whole.
const TIE_SLACK: usize = 32;

/// Whether two retriever scores are equal up to [`TIE_TOLERANCE`],
/// relative for large scores and absolute below 1 (a cosine near zero has
/// the same absolute rounding error as any other).
pub fn near_tie(a: f32, b: f32) -> bool {
    (a - b).abs() <= TIE_TOLERANCE * a.abs().max(b.abs()).max(1.0)
}

/// The first `depth` hits, and any after them tied with the last of those.
fn cut_after_ties(mut hits: Vec<ScoredChunk>, depth: usize) -> Vec<ScoredChunk> {
    if hits.len() > depth && depth > 0 {
        let last = hits[depth - 1].score;
        let keep = depth
            + hits[depth..]
                .iter()
                .take_while(|h| near_tie(h.score, last))
                .count();
        hits.truncate(keep);
    }
    hits
}

/// Reciprocal-rank fusion constant (Cormack et al., 2009).
pub const RRF_K: f32 = 60.0;

impl Service {
    /// Ranks chunks for encrypted query ids.
    pub(super) async fn retrieve(
        &self,
        collection: &Arc<dyn Collection>,
        query_ids: Vec<u32>,
        k: usize,
        mode: SearchMode,
    ) -> Result<Vec<(ChunkRecord, f32)>, ServiceError> {
        let engine = &self.models_for(collection.meta())?.engine;
        let facts = engine.facts();
        check_ids(
            "query_ids",
            &query_ids,
            facts.encoder_vocab,
            facts.encoder_max_tokens,
            false,
        )?;
        // Fusion looks deeper than k so a chunk ranked just below k by one
        // retriever can still be lifted by the other.
        let depth = match mode {
            SearchMode::Hybrid => (k * 2).max(50).min(self.limits.max_search_k),
            _ => k,
        };
        // Each retriever looks a little past its depth so that hits tied
        // with the last one are all kept (which of them a cut keeps would
        // otherwise depend on their keyed ids, and so on the key).
        let fetch = depth + TIE_SLACK;
        let dense = match mode {
            SearchMode::Dense | SearchMode::Hybrid => {
                let vector = engine
                    .embed(vec![query_ids.clone()])
                    .await?
                    .pop()
                    .expect("one vector per sequence");
                let c = collection.clone();
                Some(
                    self.blocking(move || c.dense_search(&vector, fetch))
                        .await
                        .map(|hits| cut_after_ties(hits, depth))?,
                )
            }
            SearchMode::Keyword => None,
        };
        let keyword = match mode {
            SearchMode::Keyword | SearchMode::Hybrid => {
                let c = collection.clone();
                let q = EncEncoderIds::new(collection.meta().key_id, query_ids);
                Some(
                    self.blocking(move || c.keyword_search(&q, fetch))
                        .await
                        .map(|hits| cut_after_ties(hits, depth))?,
                )
            }
            SearchMode::Dense => None,
        };
        let mut ranked = match (dense, keyword) {
            (Some(d), Some(kw)) => reciprocal_rank_fusion(&[d, kw]),
            (Some(d), None) => d,
            (None, Some(kw)) => kw,
            (None, None) => unreachable!("every mode uses a retriever"),
        };
        ranked.truncate(k);
        let ids: Vec<ChunkId> = ranked.iter().map(|h| h.chunk_id).collect();
        let c = collection.clone();
        let records = self.blocking(move || c.chunks(&ids)).await?;
        let scores: HashMap<ChunkId, f32> = ranked.iter().map(|h| (h.chunk_id, h.score)).collect();
        Ok(records
            .into_iter()
            .map(|r| {
                let s = scores[&r.chunk_id];
                (r, s)
            })
            .collect())
    }

    /// Embeds encrypted encoder ids without storing them (the vectors stay
    /// in the key's rotated space).
    pub async fn embed(&self, request: EmbedRequest) -> Result<Vec<Vec<f32>>, ServiceError> {
        let engine = &self
            .models_for_key(request.key_id)
            .map_err(|_| {
                invalid(
                    "key_mismatch",
                    format!(
                        "the request is encrypted under key {}, this host's models under key {}",
                        request.key_id,
                        self.key_id()
                    ),
                )
            })?
            .engine;
        if request.inputs.is_empty() || request.inputs.len() > self.limits.max_embed_inputs {
            return Err(invalid(
                "invalid_inputs",
                format!(
                    "send 1 to {} inputs per request",
                    self.limits.max_embed_inputs
                ),
            ));
        }
        let facts = engine.facts();
        for (i, ids) in request.inputs.iter().enumerate() {
            check_ids(
                &format!("inputs[{i}]"),
                ids,
                facts.encoder_vocab,
                facts.encoder_max_tokens,
                false,
            )?;
        }
        Ok(engine.embed(request.inputs).await?)
    }

    /// Searches a collection.
    pub async fn search(
        &self,
        tenant: &str,
        name: &str,
        request: SearchRequest,
    ) -> Result<Vec<SearchHit>, ServiceError> {
        let collection = self.open(tenant, name).await?;
        self.check_key(collection.as_ref(), request.key_id)?;
        if request.k == 0 || request.k > self.limits.max_search_k {
            return Err(invalid(
                "invalid_k",
                format!("k must be 1 to {}", self.limits.max_search_k),
            ));
        }
        let hits = self
            .retrieve(&collection, request.query_ids, request.k, request.mode)
            .await?;
        Ok(hits
            .into_iter()
            .map(|(r, score)| SearchHit {
                chunk_id: r.chunk_id.to_string(),
                doc_id: r.doc_id,
                index: r.index,
                score,
                generator_ids: r.generator_ids.ids().to_vec(),
                metadata: r.metadata,
            })
            .collect())
    }
}

/// Reciprocal-rank fusion: each list (sorted best first) adds
/// `1 / (RRF_K + rank)` to a chunk's score. Equal scores share a rank (the
/// best of their positions): near-ties (scores a float rounding apart) can
/// swap between id spaces, and giving tied chunks one rank keeps the fused
/// scores the same in every id space. Equal fused scores go by write order,
/// then chunk id. The lists are
/// summed in a fixed order so equal inputs give bitwise equal scores.
pub fn reciprocal_rank_fusion(lists: &[Vec<ScoredChunk>]) -> Vec<ScoredChunk> {
    let mut fused: HashMap<ChunkId, f32> = HashMap::new();
    let mut order: Vec<(ChunkId, u64)> = Vec::new();
    for list in lists {
        let mut rank = 0;
        let mut group_score = f32::NAN;
        for (position, hit) in list.iter().enumerate() {
            if position == 0 || !near_tie(hit.score, group_score) {
                rank = position + 1;
                group_score = hit.score;
            }
            let add = 1.0 / (RRF_K + rank as f32);
            match fused.get_mut(&hit.chunk_id) {
                Some(s) => *s += add,
                None => {
                    fused.insert(hit.chunk_id, add);
                    order.push((hit.chunk_id, hit.seq));
                }
            }
        }
    }
    let mut hits: Vec<ScoredChunk> = order
        .into_iter()
        .map(|(chunk_id, seq)| ScoredChunk {
            chunk_id,
            score: fused[&chunk_id],
            seq,
        })
        .collect();
    sort_hits(&mut hits);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(doc: &str, score: f32) -> ScoredChunk {
        ScoredChunk {
            chunk_id: ChunkId::new(doc, 0),
            score,
            seq: 0,
        }
    }

    #[test]
    fn rrf_rewards_agreement_and_depends_on_ranks_only() {
        let dense = vec![hit("a", 0.9), hit("b", 0.8), hit("c", 0.1)];
        let keyword = vec![hit("b", 12.0), hit("d", 3.0), hit("a", 1.0)];
        let fused = reciprocal_rank_fusion(&[dense.clone(), keyword.clone()]);
        let order: Vec<ChunkId> = fused.iter().map(|h| h.chunk_id).collect();
        // b: 1/62 + 1/61, a: 1/61 + 1/63, then d (1/62) before c (1/63).
        assert_eq!(
            order,
            ["b", "a", "d", "c"].map(|d| ChunkId::new(d, 0)).to_vec()
        );
        let rescaled: Vec<ScoredChunk> = keyword
            .iter()
            .map(|h| ScoredChunk {
                score: h.score * 7.0,
                ..*h
            })
            .collect();
        assert_eq!(fused, reciprocal_rank_fusion(&[dense, rescaled]));
    }

    #[test]
    fn rrf_gives_tied_scores_one_rank_whatever_their_order() {
        let tied = vec![hit("a", 2.0), hit("b", 1.0), hit("c", 1.0), hit("d", 0.5)];
        let swapped = vec![hit("a", 2.0), hit("c", 1.0), hit("b", 1.0), hit("d", 0.5)];
        let other = vec![hit("c", 0.9), hit("d", 0.8)];
        let score = |fused: &[ScoredChunk], d: &str| {
            fused
                .iter()
                .find(|h| h.chunk_id == ChunkId::new(d, 0))
                .unwrap()
                .score
        };
        let f1 = reciprocal_rank_fusion(&[tied, other.clone()]);
        let f2 = reciprocal_rank_fusion(&[swapped, other]);
        for d in ["a", "b", "c", "d"] {
            assert_eq!(score(&f1, d).to_bits(), score(&f2, d).to_bits(), "{d}");
        }
        // b and c share rank 2; d is 4th.
        assert_eq!(score(&f1, "b"), 1.0 / (RRF_K + 2.0));
        assert_eq!(score(&f1, "d"), 1.0 / (RRF_K + 4.0) + 1.0 / (RRF_K + 2.0));
        // Scores a float reassociation apart are tied too.
        let near = vec![
            hit("a", 2.0),
            hit("c", 1.000_000_1),
            hit("b", 1.0),
            hit("d", 0.5),
        ];
        let f3 = reciprocal_rank_fusion(&[near, vec![hit("c", 0.9), hit("d", 0.8)]]);
        for d in ["a", "b", "c", "d"] {
            assert_eq!(score(&f1, d).to_bits(), score(&f3, d).to_bits(), "{d}");
        }
    }

    #[test]
    fn a_cut_keeps_every_hit_tied_with_the_last() {
        let hits = vec![hit("a", 3.0), hit("b", 2.0), hit("c", 2.0), hit("d", 1.0)];
        let ids = |v: &[ScoredChunk]| v.len();
        assert_eq!(ids(&cut_after_ties(hits.clone(), 2)), 3);
        assert_eq!(ids(&cut_after_ties(hits.clone(), 3)), 3);
        assert_eq!(ids(&cut_after_ties(hits.clone(), 1)), 1);
        assert_eq!(ids(&cut_after_ties(hits, 10)), 4);
    }
}
