//! Collection versions and the jobs that rebuild a collection through the
//! host's API (re-embed, rekey) on a real host with the real models: the
//! old version serves until the switch, a killed job resumes without
//! duplicates or loss, writes made meanwhile are caught up, and afterwards
//! every ranking, score and generated token is what it was before.

use std::path::Path;
use std::time::Duration;

use eerag_client::chunking::ChunkingOptions;
use eerag_client::client::{AskOptions, EncryptedClient, TextDocument};
use eerag_client::rekey::rekey;
use eerag_client::Key;
use eerag_core::wire::{DocumentStatus, SearchMode};
use eerag_remote::jobs::{self, Progress, RebuildOptions};
use eerag_remote::HostClient;
use eerag_tests::fixture;
use eerag_tests::host::{sample_documents, Host, HostOptions};

const QUERIES: &[&str] = &[
    "How warm may the vaccine fridge get?",
    "What is the hourly rate of a partner?",
    "Why did the settlement worker stall?",
    "retainer",
];

fn client(host: &Host, key: &Key) -> EncryptedClient {
    EncryptedClient::connect(
        HostClient::new(&host.url, None).unwrap(),
        key,
        &fixture().models,
    )
    .expect("client connects")
}

/// Every hit's text, title and score, per query and mode.
fn rankings(c: &EncryptedClient, collection: &str) -> Vec<Vec<(String, String, f32)>> {
    let mut out = Vec::new();
    for q in QUERIES {
        for m in [SearchMode::Dense, SearchMode::Keyword, SearchMode::Hybrid] {
            out.push(
                c.search(collection, q, 10, m)
                    .unwrap()
                    .into_iter()
                    .map(|h| (h.text, h.metadata.title, h.score))
                    .collect(),
            );
        }
    }
    out
}

/// The sample files as `eerag upload` cuts them (default chunking, so
/// several overlapping chunks per file).
fn cut_documents(c: &EncryptedClient) -> Vec<TextDocument> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/sample");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            let shown = format!("sample/{}", p.file_name().unwrap().to_string_lossy());
            TextDocument::from_file(
                p,
                &shown,
                c.encoder_tokenizer(),
                &ChunkingOptions::default(),
            )
            .unwrap()
        })
        .collect()
}

/// Same hits in the same order, scores equal up to `tolerance` (a new key
/// rotates the vectors, so cosines can differ in their last bits).
fn assert_same(a: &[Vec<(String, String, f32)>], b: &[Vec<(String, String, f32)>], tolerance: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let what = format!("{:?} in mode {}", QUERIES[i / 3], i % 3);
        let names = |h: &[(String, String, f32)]| -> Vec<(String, String)> {
            h.iter().map(|h| (h.0.clone(), h.1.clone())).collect()
        };
        assert_eq!(names(x), names(y), "{what}");
        for (p, q) in x.iter().zip(y) {
            assert!((p.2 - q.2).abs() <= tolerance, "{what}: {} vs {}", p.2, q.2);
        }
    }
}

fn options(dir: &Path) -> RebuildOptions {
    RebuildOptions {
        batch_documents: 1,
        checkpoint: dir.join("job.checkpoint"),
        keep_old: false,
        grace: Duration::ZERO,
    }
}

/// Runs `job`, killing it (a panic out of its progress report) once it
/// has done `after` documents of its first phase.
fn killed_after<T>(after: u64, job: impl FnOnce(&mut dyn FnMut(Progress<'_>)) -> T) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        job(&mut |p: Progress<'_>| {
            if p.done >= after {
                panic!("killed");
            }
        })
    }))
    .is_err()
}

#[test]
fn rekey_resumes_after_a_kill_and_ranks_and_answers_as_before() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let new_key = Key::from_secret([42; 32]);
    let new_artifacts = dir.path().join("new-artifacts");
    eerag_client::transform::transform(
        &new_key,
        &f.models.encoder_dir(),
        &f.models.generator_gguf(),
        &new_artifacts,
        false,
    )
    .unwrap();
    let host = Host::start(
        f.artifacts.dir(),
        HostOptions {
            more_artifacts: vec![new_artifacts],
            ..HostOptions::default()
        },
    );
    let (old, new) = (client(&host, &f.key), client(&host, &new_key));
    old.create_collection("docs").unwrap();
    let cut = cut_documents(&old);
    assert!(
        cut.iter().any(|d| d.chunks.len() > 1),
        "want overlapping chunks"
    );
    old.upload("docs", &cut).unwrap();
    // Ready-made chunks joined by blank lines (all but each file's first
    // paragraph, so other texts): their text cannot be put back together
    // from the chunks.
    let notes: Vec<TextDocument> = sample_documents()
        .into_iter()
        .map(|d| {
            TextDocument::from_chunks(
                format!("notes on {}", d.title),
                d.chunks.iter().skip(1).map(|c| c.text.clone()).collect(),
            )
        })
        .collect();
    old.upload("docs", &notes).unwrap();
    let before = rankings(&old, "docs");
    let ask = AskOptions {
        max_tokens: 12,
        ..AskOptions::default()
    };
    let question = "What should staff do if the vaccine refrigerator gets too warm?";
    let answer_before = old.ask("docs", question, &ask, |_| {}).unwrap();

    let options = options(dir.path());
    assert!(killed_after(2, |p| rekey(&old, &new, "docs", &options, p)));
    assert!(options.checkpoint.exists());
    // Killed half-way: the old version still serves, untouched.
    let versions = old.host().list_versions("docs").unwrap();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(versions[0].current && versions[0].key_id == f.key.id());
    assert_eq!(versions[1].key_id, new_key.id());
    assert!(versions[1].chunks > 0 && versions[1].chunks < versions[0].chunks);
    assert_eq!(rankings(&old, "docs"), before);

    let keep = RebuildOptions {
        keep_old: true,
        ..options.clone()
    };
    let report = rekey(&old, &new, "docs", &keep, &mut |_| {}).unwrap();
    assert!(report.resumed);
    assert_eq!((report.previous_version, report.version), (1, 2));
    assert_eq!(report.documents, 6);
    assert_eq!(report.chunks, versions[0].chunks);
    assert_eq!(report.ids_not_rederived, 3, "{report:?}");
    assert!(report.verified_documents > 0);
    assert!(!report.old_version_deleted);
    assert!(!options.checkpoint.exists());

    // What a host that keeps both versions learns: documents in write order
    // pair up, chunks by index and ids by position, so the old and new
    // ciphertexts of the same text give away the mapping between the keys
    // on every id the collection uses (docs/security.md).
    let (learned, right) = align_versions(old.host(), "docs.v1", "docs.v2", |o| {
        let plain = old.cipher().encoder_permutation().invert(o).unwrap();
        new.cipher().encoder_permutation().apply(plain).unwrap()
    });
    println!("rekey alignment: {right} of {learned} encoder-id pairs the host can align are the true old-to-new mapping");
    assert!(learned > 100 && right == learned, "{right}/{learned}");
    old.host().delete_collection("docs.v1").unwrap();

    // Under the new key: the same hits, order, scores (to float rounding:
    // the vectors are rotated by another key) and answer.
    assert_same(&rankings(&new, "docs"), &before, 1e-5);
    let answer_after = new.ask("docs", question, &ask, |_| {}).unwrap();
    assert_eq!(answer_after.ids, answer_before.ids);
    assert_ne!(answer_after.encrypted_ids, answer_before.encrypted_ids);
    // The cut documents kept their identity: uploading the files again
    // under the new key changes nothing.
    let again = new.upload("docs", &cut).unwrap();
    assert!(
        again
            .documents
            .iter()
            .all(|d| d.status == DocumentStatus::Unchanged),
        "{again:?}"
    );
    // The old key is refused, with the reason.
    let err = old
        .search("docs", "retainer", 3, SearchMode::Hybrid)
        .unwrap_err()
        .to_string();
    assert!(err.contains("key"), "{err}");
    let versions = new.host().list_versions("docs").unwrap();
    assert_eq!(versions.len(), 1);
    assert!(versions[0].current && versions[0].version == 2);
}

/// Pairs the encoder ids of two versions as their host can (documents by
/// write order, chunks by index, ids by position) and counts the distinct
/// pairs and those `truth` confirms.
fn align_versions(
    host: &HostClient,
    a: &str,
    b: &str,
    truth: impl Fn(u32) -> u32,
) -> (usize, usize) {
    let docs = |name: &str| {
        let mut d = host.list_documents(name, None, 1000).unwrap().documents;
        d.sort_by_key(|d| d.first_seq);
        d.into_iter()
            .map(|d| host.export_document(name, &d.doc_id).unwrap())
            .collect::<Vec<_>>()
    };
    let mut pairs = std::collections::BTreeMap::new();
    for (x, y) in docs(a).iter().zip(docs(b).iter()) {
        for (cx, cy) in x.chunks.iter().zip(&y.chunks) {
            for (i, j) in cx.encoder_ids.iter().zip(&cy.encoder_ids) {
                pairs.insert(*i, *j);
            }
        }
    }
    let right = pairs.iter().filter(|(i, j)| truth(**i) == **j).count();
    (pairs.len(), right)
}

#[test]
fn re_embed_catches_up_with_writes_made_while_it_ran() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(f.artifacts.dir(), HostOptions::default());
    let c = client(&host, &f.key);
    c.create_collection("docs").unwrap();
    c.upload("docs", &sample_documents()).unwrap();
    let first = c.host().list_documents("docs", None, 10).unwrap().documents[0].clone();

    let options = options(dir.path());
    assert!(killed_after(1, |p| jobs::reembed(
        c.host(),
        "docs",
        None,
        &options,
        p
    )));
    let v2 = c.host().list_versions("docs").unwrap()[1].clone();
    assert!(!v2.current && v2.chunks > 0);
    // Meanwhile clients write to the version that serves: a new document,
    // and the first one (already copied) deleted.
    c.upload(
        "docs",
        &[TextDocument::from_chunks(
            "late.md",
            vec!["A late note about the vaccine fridge alarm and the retainer.".into()],
        )],
    )
    .unwrap();
    c.host().delete_document("docs", &first.doc_id).unwrap();
    let expected = rankings(&c, "docs");

    let report = jobs::reembed(c.host(), "docs", None, &options, &mut |_| {}).unwrap();
    assert!(report.resumed);
    assert_eq!((report.previous_version, report.version), (1, 2));
    assert_eq!(report.documents, 3);
    assert_eq!(report.documents_removed, 1);
    assert!(report.old_version_deleted);
    // Dense rankings are the old version's, and scores equal to float
    // rounding (the CPU encoder's products round a text's last bits
    // differently in a batch of another size). BM25 counts
    // deleted chunks that tantivy has not merged away yet, and the old
    // version still holds the deleted document (it shared a segment),
    // while the new one does not (its copy was alone in a segment, which
    // tantivy drops): keyword scores differ. The new version ranks as a
    // collection freshly built from the same documents does (in other
    // segments, so BM25 sums can differ in their last bits).
    let after = rankings(&c, "docs");
    let dense = |r: &[Vec<(String, String, f32)>]| -> Vec<Vec<(String, String, f32)>> {
        // Keep the slots (assert_same names queries and modes by index),
        // emptying the keyword and hybrid ones.
        r.iter()
            .enumerate()
            .map(|(i, h)| if i % 3 == 0 { h.clone() } else { Vec::new() })
            .collect()
    };
    assert_same(&dense(&after), &dense(&expected), 1e-6);
    c.create_collection("fresh").unwrap();
    let kept: Vec<TextDocument> = sample_documents()
        .into_iter()
        .filter(|d| c.document_id(&d.text) != first.doc_id)
        .collect();
    c.upload("fresh", &kept).unwrap();
    c.upload(
        "fresh",
        &[TextDocument::from_chunks(
            "late.md",
            vec!["A late note about the vaccine fridge alarm and the retainer.".into()],
        )],
    )
    .unwrap();
    assert_same(&after, &rankings(&c, "fresh"), 1e-5);

    // The version routes refuse what makes no sense, each with a reason.
    let h = c.host();
    let status = |e: eerag_remote::RemoteError| e.status();
    assert_eq!(status(h.switch_version("docs", 9).unwrap_err()), Some(404));
    assert_eq!(
        status(h.delete_collection("docs.v2").unwrap_err()),
        Some(409)
    );
    let unserved = eerag_core::wire::CreateVersionRequest {
        key_id: Some(Key::from_secret([5; 32]).id()),
        encoder: None,
    };
    assert_eq!(
        status(h.create_version("docs", &unserved).unwrap_err()),
        Some(400)
    );
    let step = eerag_core::wire::ReembedRequest {
        after: None,
        limit: 10,
        prune: false,
        from: None,
    };
    assert_eq!(status(h.reembed("docs", 2, &step).unwrap_err()), Some(400));
    assert_eq!(status(h.reembed("nope", 2, &step).unwrap_err()), Some(404));
    assert_eq!(status(h.list_versions("docs.v0").unwrap_err()), Some(400));
    // Switching back and forth is atomic and reversible.
    let v3 = h
        .create_version("docs", &eerag_core::wire::CreateVersionRequest::default())
        .unwrap();
    assert_eq!(v3.version, 3);
    assert_eq!(h.switch_version("docs", 3).unwrap().previous, 2);
    assert!(c
        .search("docs", "retainer", 3, SearchMode::Keyword)
        .unwrap()
        .is_empty());
    assert_eq!(h.switch_version("docs", 2).unwrap().previous, 3);
    assert_eq!(rankings(&c, "docs"), after);
    // Deleting the collection takes every version and frees the name.
    h.delete_collection("docs").unwrap();
    h.delete_collection("fresh").unwrap();
    assert!(h.list_collections().unwrap().is_empty());
    c.create_collection("docs").unwrap();
    assert_eq!(h.list_versions("docs").unwrap().len(), 1);
}
