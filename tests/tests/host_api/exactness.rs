//! An encrypted host answers exactly as a plaintext (identity-key) host does.

use std::collections::BTreeMap;

use eerag_client::client::AskOptions;
use eerag_client::Key;
use eerag_core::sampling::Sampling;
use eerag_core::wire::{DocumentStatus, FinishReason, SearchMode};
use eerag_store::ranking::compare_rankings;
use eerag_tests::host::{sample_documents, Host, HostOptions};
use eerag_tests::{fixture, identity_artifacts};

use crate::*;

#[test]
fn encrypted_host_answers_exactly_as_the_plaintext_host() {
    let f = fixture();
    let docs = sample_documents();
    let encrypted = Host::start(f.artifacts.dir(), HostOptions::default());
    let plain = Host::start(identity_artifacts().dir(), HostOptions::default());
    let enc = client(&encrypted, &f.key);
    let pla = client(&plain, &Key::identity());
    for c in [&enc, &pla] {
        c.create_collection("handbook").unwrap();
        let first = c.upload("handbook", &docs).unwrap();
        assert!(first
            .documents
            .iter()
            .all(|d| d.status == DocumentStatus::Created));
        let total: usize = docs.iter().map(|d| d.chunks.len()).sum();
        assert_eq!(first.chunks_written, total);
        // Re-sending the same content replaces nothing and duplicates nothing.
        let again = c.upload("handbook", &docs).unwrap();
        assert!(again
            .documents
            .iter()
            .all(|d| d.status == DocumentStatus::Unchanged));
        assert_eq!(again.chunks_written, 0);
        let info = &c.host().list_collections().unwrap()[0];
        assert_eq!(info.chunks as usize, total);
    }

    // The host stores ciphertext: the encrypted host's ids differ from the
    // plaintext ones, yet both decrypt to the same text.
    let plain_request = pla.encrypt_documents(&docs).unwrap();
    let enc_request = enc.encrypt_documents(&docs).unwrap();
    let (p0, e0) = (
        &plain_request.documents[0].chunks[1],
        &enc_request.documents[0].chunks[1],
    );
    assert_ne!(p0.encoder_ids, e0.encoder_ids);
    assert_ne!(p0.generator_ids, e0.generator_ids);

    let mut compared = 0;
    for query in QUERIES {
        for mode in MODES {
            let p = ranking(&pla, "handbook", query, mode);
            let e = ranking(&enc, "handbook", query, mode);
            assert!(!p.is_empty(), "{query:?} {mode:?} found nothing");
            compare_rankings(&p, &e, 1e-5)
                .unwrap_or_else(|err| panic!("{query:?} {mode:?}: {err}\n{p:?}\n{e:?}"));
            compared += 1;
        }
    }
    assert_eq!(compared, QUERIES.len() * MODES.len());

    // Hits decrypt to the chunk they name.
    let chunks: BTreeMap<(String, u32), String> = docs
        .iter()
        .flat_map(|d| {
            d.chunks
                .iter()
                .enumerate()
                .map(|(i, t)| ((d.title.clone(), i as u32), t.text.clone()))
        })
        .collect();
    for hit in enc
        .search("handbook", QUERIES[0], 3, SearchMode::Hybrid)
        .unwrap()
    {
        let text = &chunks[&(hit.metadata.title.clone(), hit.metadata.chunk)];
        assert!(text.starts_with(&hit.metadata.preview));
        assert_eq!(hit.metadata.end - hit.metadata.start, text.len() as u64);
        assert_eq!(hit.text.trim(), text.trim());
    }
    let top = &enc
        .search("handbook", QUERIES[0], 1, SearchMode::Dense)
        .unwrap()[0];
    assert!(
        top.text.contains("2 and 8 degrees"),
        "top hit: {}",
        top.text
    );

    let question = "Between which temperatures must vaccines be kept?";
    for sampling in [
        Sampling::Greedy,
        Sampling::Random {
            temperature: 0.9,
            top_p: 0.95,
            top_k: Some(50),
            seed: 7,
        },
    ] {
        let options = AskOptions {
            k: 2,
            max_tokens: 24,
            sampling: sampling.clone(),
            ..AskOptions::default()
        };
        let mut streamed = String::new();
        let e = enc
            .ask("handbook", question, &options, |t| streamed.push_str(t))
            .unwrap();
        let p = pla.ask("handbook", question, &options, |_| {}).unwrap();
        assert_eq!(e.ids, p.ids, "{sampling:?}: generated tokens differ");
        assert_eq!(e.text, p.text);
        assert_eq!(streamed, e.text, "streamed text is the answer");
        assert!(!e.ids.is_empty());
        let titles = |a: &eerag_client::client::Answer| {
            a.sources
                .iter()
                .map(|s| (s.metadata.title.clone(), s.metadata.chunk))
                .collect::<Vec<_>>()
        };
        assert_eq!(titles(&e), titles(&p));
        assert_eq!(e.sources.len(), 2);
        assert_eq!(e.summary.prompt_tokens, p.summary.prompt_tokens);
        assert_eq!(e.summary.finish_reason, p.summary.finish_reason);
        assert_eq!(e.summary.generated_tokens, e.ids.len());
        assert!(
            e.sources
                .iter()
                .any(|s| s.metadata.preview.contains("2 and 8 degrees")),
            "the vaccine chunk is in the prompt: {:?}",
            e.sources
        );

        // The plain (non-streaming) answer is the same answer.
        let request = enc.encrypt_question(question, &options).unwrap();
        let whole = enc.host().answer("handbook", &request).unwrap();
        let ids = enc
            .cipher()
            .decrypt_generator(&eerag_core::EncGeneratorIds::new(
                f.key.id(),
                whole.generator_ids.clone(),
            ))
            .unwrap();
        assert_eq!(ids, e.ids);
        assert_eq!(whole.summary.chunks.len(), 2);
    }

    // A one-token budget stops on length.
    let short = AskOptions {
        max_tokens: 1,
        ..AskOptions::default()
    };
    let a = enc.ask("handbook", question, &short, |_| {}).unwrap();
    assert_eq!(a.summary.finish_reason, FinishReason::Length);
    assert_eq!(a.ids.len(), 1);

    // Delete a document: it leaves search and the chunk count in both.
    for c in [&enc, &pla] {
        let request = c.encrypt_documents(&docs[..1]).unwrap();
        let doc_id = &request.documents[0].doc_id;
        let deleted = c.host().delete_document("handbook", doc_id).unwrap();
        assert_eq!(deleted.deleted_chunks, docs[0].chunks.len());
        let hits = c
            .search("handbook", QUERIES[0], 20, SearchMode::Hybrid)
            .unwrap();
        assert!(hits.iter().all(|h| h.metadata.title != docs[0].title));
        let err = c.host().export_document("handbook", doc_id).unwrap_err();
        assert_eq!(err.status(), Some(404));
    }
    for mode in MODES {
        compare_rankings(
            &ranking(&pla, "handbook", QUERIES[2], mode),
            &ranking(&enc, "handbook", QUERIES[2], mode),
            1e-5,
        )
        .unwrap();
    }
}
