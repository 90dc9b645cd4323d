//! BM25 over encrypted encoder ids of real text ranks as over the plaintext
//! ids, up to near-ties.

use eerag_core::EncEncoderIds;
use eerag_store::keyword::{assert_same_ranking, KeywordChunk, KeywordIndex};
use eerag_tests::{fixture, texts};

fn index(chunks: &[EncEncoderIds]) -> KeywordIndex {
    let index = KeywordIndex::in_memory().unwrap();
    let chunk_ids: Vec<String> = (0..chunks.len()).map(|i| format!("c{i:04}")).collect();
    let batch: Vec<KeywordChunk> = chunks
        .iter()
        .enumerate()
        .map(|(i, ids)| KeywordChunk {
            chunk_id: &chunk_ids[i],
            doc_id: "d",
            version: "v1",
            ids,
            seq: i as u64,
        })
        .collect();
    index.upsert(&batch).unwrap();
    index
}

#[test]
fn keyword_rankings_of_real_text_are_the_same_encrypted() {
    let f = fixture();
    let tok = &f.sides.encoder_tokenizer;
    let c = &f.sides.cipher;
    // The plaintext baseline reuses the ciphertext type with plaintext ids: tests only.
    let plain: Vec<EncEncoderIds> = texts()
        .iter()
        .map(|t| EncEncoderIds::new(c.key_id(), tok.encode(t).unwrap()))
        .collect();
    let enc: Vec<EncEncoderIds> = plain
        .iter()
        .map(|p| c.encrypt_encoder(p.ids()).unwrap())
        .collect();
    let (pi, ei) = (index(&plain), index(&enc));
    let queries = [
        "vaccine refrigerator temperature",
        "how much does a partner bill per hour",
        "who acknowledged the page",
        "termination notice period",
        "records copies identification",
    ];
    for q in queries {
        let ids = tok.encode(q).unwrap();
        let p = pi
            .search(&EncEncoderIds::new(c.key_id(), ids.clone()), 10)
            .unwrap();
        let e = ei.search(&c.encrypt_encoder(&ids).unwrap(), 10).unwrap();
        assert!(p.len() >= 3, "{q}: too few hits to compare");
        assert_same_ranking(&p, &e);
    }
}
