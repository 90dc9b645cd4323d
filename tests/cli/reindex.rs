//! `eerag reindex` as a user runs it, on stores a real host wrote.

use eerag_core::wire::SearchMode;

use crate::serve::{setup, Server};
use crate::{eerag, eerag_host, path, stderr};

#[test]
fn migrate_copies_a_collection_that_then_serves_identically() {
    let setup = setup();
    let logs = setup.dir.path().join("logs");
    let from = setup.dir.path().join("from");
    let to = setup.dir.path().join("to");
    let queries = ["How warm may the vaccine fridge get?", "retainer"];
    let modes = [SearchMode::Dense, SearchMode::Keyword, SearchMode::Hybrid];
    let before = {
        let server = Server::start(&setup.artifacts, &from, &logs, "warn");
        let client = server.client(&setup);
        client.create_collection("handbook").unwrap();
        client
            .upload("handbook", &crate::serve::sample_documents())
            .unwrap();
        let mut hits = Vec::new();
        for q in queries {
            for m in modes {
                hits.push(client.search("handbook", q, 8, m).unwrap());
            }
        }
        server.stop();
        hits
    };
    let checkpoint = setup.dir.path().join("migrate.json");
    // The host operator's binary runs the job.
    let o = eerag_host(&[
        "migrate",
        "--from",
        path(&from),
        "--to",
        path(&to),
        "--checkpoint",
        path(&checkpoint),
        "--batch",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &report[0];
    assert_eq!(r["name"], "local.handbook");
    assert_eq!(r["source_chunks"], r["target_chunks"]);
    assert_eq!(r["chunks_written"], r["source_chunks"]);
    assert!(r["sampled"].as_u64().unwrap() > 0);
    assert_eq!(r["payloads_verified"], r["sampled"]);
    assert_eq!(r["vectors_verified"], r["sampled"]);
    assert!(!checkpoint.exists(), "a finished job leaves no checkpoint");

    // The copy serves the same hits, scores and order.
    let server = Server::start(&setup.artifacts, &to, &logs, "warn");
    let client = server.client(&setup);
    let mut i = 0;
    for q in queries {
        for m in modes {
            let after = client.search("handbook", q, 8, m).unwrap();
            let key = |h: &Vec<eerag_client::client::Hit>| {
                h.iter()
                    .map(|h| (h.text.clone(), h.score))
                    .collect::<Vec<_>>()
            };
            assert_eq!(key(&before[i]), key(&after), "{q:?} {m:?}");
            i += 1;
        }
    }
    server.stop();

    // Refusals are one clear line each.
    let o = eerag(&[
        "reindex",
        "migrate",
        "--from",
        path(&from),
        "--to",
        path(&from),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("the same directory"), "{}", stderr(&o));
    let missing = setup.dir.path().join("missing");
    let o = eerag(&[
        "reindex",
        "migrate",
        "--from",
        path(&missing),
        "--to",
        path(&to),
    ]);
    assert!(
        stderr(&o).contains("no such data directory"),
        "{}",
        stderr(&o)
    );
}

/// Every hit's text, title and score, per query and mode.
fn rankings(
    client: &eerag_client::client::EncryptedClient,
    collection: &str,
) -> Vec<Vec<(String, String, f32)>> {
    let queries = [
        "How warm may the vaccine fridge get?",
        "retainer",
        "what changed after the incident",
    ];
    let mut out = Vec::new();
    for q in queries {
        for m in [SearchMode::Dense, SearchMode::Keyword, SearchMode::Hybrid] {
            out.push(
                client
                    .search(collection, q, 8, m)
                    .unwrap()
                    .into_iter()
                    .map(|h| (h.text, h.metadata.title, h.score))
                    .collect(),
            );
        }
    }
    out
}

/// Same hits in the same order, scores equal up to `tolerance`.
fn assert_same(a: &[Vec<(String, String, f32)>], b: &[Vec<(String, String, f32)>], tolerance: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let names = |h: &[(String, String, f32)]| -> Vec<(String, String)> {
            h.iter().map(|h| (h.0.clone(), h.1.clone())).collect()
        };
        assert_eq!(names(x), names(y), "ranking {i}");
        for (p, q) in x.iter().zip(y) {
            assert!(
                (p.2 - q.2).abs() <= tolerance,
                "ranking {i}: {} vs {}",
                p.2,
                q.2
            );
        }
    }
}

#[test]
fn re_embed_then_rekey_switch_versions_and_rank_exactly_as_before() {
    let setup = setup();
    let logs = setup.dir.path().join("logs");
    let data = setup.dir.path().join("data");
    let old_key = setup.dir.path().join("client.eekey");
    let new_key = setup.dir.path().join("new.eekey");
    let new_artifacts = setup.dir.path().join("artifacts-new");
    let models = crate::models_dir();
    let o = eerag(&["keygen", "--out", path(&new_key)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = eerag(&[
        "transform",
        "--key",
        path(&new_key),
        "--out",
        path(&new_artifacts),
        "--models",
        path(&models),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    // One host serving both keys' models, as during a rotation.
    let server = Server::start_serving(&[&setup.artifacts, &new_artifacts], &data, &logs, "warn");
    let client = server.client(&setup);
    client.create_collection("handbook").unwrap();
    client
        .upload("handbook", &crate::serve::sample_documents())
        .unwrap();
    let before = rankings(&client, "handbook");

    // Re-embed: the operator's job, no key.
    let checkpoint = setup.dir.path().join("re-embed.checkpoint");
    let o = eerag_host(&[
        "re-embed",
        "--server",
        &server.url,
        "--collection",
        "handbook",
        "--artifacts",
        path(&setup.artifacts),
        "--checkpoint",
        path(&checkpoint),
        "--batch",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["previous_version"].as_u64(), r["version"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(r["old_version_deleted"], true);
    assert_eq!(r["documents"], 3);
    assert!(!checkpoint.exists());
    // Dense scores are bitwise the same; BM25 sums its statistics over the
    // new version's own segments, so keyword scores can differ in the last
    // bits.
    assert_same(&rankings(&client, "handbook"), &before, 1e-5);
    let listed = client.host().list_collections().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].name.as_str(), listed[0].version),
        ("handbook", 2)
    );

    // Rekey: the client's job, with both keys; the host gets neither.
    let o = eerag(&[
        "reindex",
        "rekey",
        "--server",
        &server.url,
        "--key",
        path(&old_key),
        "--new-key",
        path(&new_key),
        "--models",
        path(&models),
        "--collection",
        "handbook",
        "--checkpoint",
        path(&setup.dir.path().join("rekey.checkpoint")),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["previous_version"].as_u64(), r["version"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(r["documents"], 3);
    assert!(r["verified_documents"].as_u64().unwrap() > 0);
    let rekeyed = eerag_client::client::EncryptedClient::connect(
        eerag_remote::HostClient::new(&server.url, None).unwrap(),
        &eerag_client::Key::load(&new_key).unwrap(),
        &setup.models,
    )
    .unwrap();
    // Rotated by another key, cosines can differ in their last bits.
    assert_same(&rankings(&rekeyed, "handbook"), &before, 1e-5);
    // The old key no longer opens it, and says why.
    let err = client
        .search("handbook", "retainer", 3, SearchMode::Hybrid)
        .unwrap_err()
        .to_string();
    assert!(err.contains("key"), "{err}");
    let versions = client.host().list_versions("handbook").unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert!(versions[0].current && versions[0].key_id == rekeyed.cipher().key_id());
    server.stop();

    // A host without the new key's models says so instead of answering.
    let server = Server::start(&setup.artifacts, &data, &logs, "warn");
    let err = server
        .client(&setup)
        .host()
        .list_collections()
        .map(|c| format!("{c:?}"))
        .unwrap();
    assert!(err.contains("handbook"), "{err}");
    let o = eerag(&[
        "search",
        "--server",
        &server.url,
        "--key",
        path(&new_key),
        "--models",
        path(&models),
        "--collection",
        "handbook",
        "retainer",
    ]);
    assert!(!o.status.success());
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    server.stop();
}
