//! The host API on the real models: an encrypted host answers exactly as a
//! plaintext (identity-key) host does, bad input is refused with a clear
//! error and changes nothing, queues are bounded, tenants are isolated.

use std::collections::BTreeMap;

use eerag_client::client::{AskOptions, EncryptedClient};
use eerag_client::Key;
use eerag_core::sampling::Sampling;
use eerag_core::wire::{DocumentStatus, FinishReason, SearchMode};
use eerag_host::auth::{hash_token, ApiKeyEntry, AuthConfig, Role};
use eerag_host::engine::EngineLimits;
use eerag_host::openapi::ROUTES;
use eerag_remote::{HostClient, RemoteError};
use eerag_store::ranking::compare_rankings;
use eerag_tests::host::{sample_documents, Host, HostOptions};
use eerag_tests::{fixture, identity_artifacts};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const MODES: [SearchMode; 3] = [SearchMode::Dense, SearchMode::Keyword, SearchMode::Hybrid];

const QUERIES: [&str; 5] = [
    "How warm may the vaccine fridge get?",
    "What is the hourly rate of a partner?",
    "Why did the settlement worker stall?",
    "retainer",
    "Dana Whitlock",
];

fn client(host: &Host, key: &Key) -> EncryptedClient {
    EncryptedClient::connect(
        HostClient::new(&host.url, None).unwrap(),
        key,
        &fixture().models,
    )
    .expect("client connects")
}

/// A reply to a raw request: status, headers and the JSON body (or Null).
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }
    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

fn send(r: reqwest::blocking::RequestBuilder) -> Reply {
    let response = r.send().expect("request reaches the host");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().unwrap();
    Reply {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

/// Everything a client can read back from a collection, to prove a refused
/// request changed nothing.
fn snapshot(c: &EncryptedClient, collection: &str) -> (Value, Vec<String>) {
    let host = c.host();
    let list = host.list_documents(collection, None, 1000).unwrap();
    let mut exports = Vec::new();
    for d in &list.documents {
        let e = host.export_document(collection, &d.doc_id).unwrap();
        exports.push(serde_json::to_string(&e).unwrap());
    }
    let collections = serde_json::to_value(host.list_collections().unwrap()).unwrap();
    (collections, exports)
}

/// Ranking keyed by what the chunk is (title and index), which both key
/// spaces share; the document ids differ since they are keyed hashes.
fn ranking(
    c: &EncryptedClient,
    collection: &str,
    query: &str,
    mode: SearchMode,
) -> Vec<(String, f32)> {
    c.search(collection, query, 6, mode)
        .unwrap()
        .into_iter()
        .map(|h| {
            (
                format!("{}#{}", h.metadata.title, h.metadata.chunk),
                h.score,
            )
        })
        .collect()
}

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

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let f = fixture();
    let host = Host::start(
        f.artifacts.dir(),
        HostOptions {
            max_body_bytes: 256 << 10,
            engine: EngineLimits {
                generate_queue: 1,
                ..EngineLimits::default()
            },
            ..HostOptions::default()
        },
    );
    let c = client(&host, &f.key);
    c.create_collection("docs").unwrap();
    let docs = sample_documents();
    c.upload("docs", &docs[..2]).unwrap();
    let before = snapshot(&c, "docs");
    let health = c.host().health().unwrap();
    // Generations on a shared 2-core machine can outlast the default 30 s.
    let http = Client::builder()
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .unwrap();
    let url = |p: &str| format!("{}{p}", host.url);

    let good_upsert = serde_json::to_value(c.encrypt_documents(&docs[2..]).unwrap()).unwrap();
    let good_search = serde_json::to_value(
        c.encrypt_query("vaccine fridge", 3, SearchMode::Hybrid)
            .unwrap(),
    )
    .unwrap();
    let good_answer = serde_json::to_value(
        c.encrypt_question("How warm may the fridge get?", &AskOptions::default())
            .unwrap(),
    )
    .unwrap();
    let other_key = Key::from_secret([9; 32]).id().to_string();

    let with = |base: &Value, pointer: &str, value: Value| {
        let mut v = base.clone();
        *v.pointer_mut(pointer).unwrap() = value;
        v
    };
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "ids beyond the vocabulary",
            "/v1/collections/docs/chunks",
            with(
                &good_upsert,
                "/documents/0/chunks/0/encoder_ids/0",
                json!(health.encoder_vocab),
            ),
            400,
            "id_out_of_vocabulary",
        ),
        (
            "generator ids beyond the vocabulary",
            "/v1/collections/docs/chunks",
            with(
                &good_upsert,
                "/documents/0/chunks/0/generator_ids/0",
                json!(health.generator_vocab + 5),
            ),
            400,
            "id_out_of_vocabulary",
        ),
        (
            "another key's upload",
            "/v1/collections/docs/chunks",
            with(&good_upsert, "/key_id", json!(other_key)),
            400,
            "key_mismatch",
        ),
        (
            "a chunk longer than the encoder window",
            "/v1/collections/docs/chunks",
            with(
                &good_upsert,
                "/documents/0/chunks/0/encoder_ids",
                json!(vec![100; health.encoder_max_tokens + 1]),
            ),
            400,
            "too_many_ids",
        ),
        (
            "an empty chunk",
            "/v1/collections/docs/chunks",
            with(&good_upsert, "/documents/0/chunks/0/encoder_ids", json!([])),
            400,
            "empty_ids",
        ),
        (
            "a missing field",
            "/v1/collections/docs/chunks",
            json!({"documents": []}),
            400,
            "malformed_json",
        ),
        (
            "a negative id",
            "/v1/collections/docs/search",
            with(&good_search, "/query_ids/0", json!(-1)),
            400,
            "malformed_json",
        ),
        (
            "a query of another key",
            "/v1/collections/docs/search",
            with(&good_search, "/key_id", json!(other_key)),
            400,
            "key_mismatch",
        ),
        (
            "a query longer than the window",
            "/v1/collections/docs/search",
            with(
                &good_search,
                "/query_ids",
                json!(vec![100; health.encoder_max_tokens + 1]),
            ),
            400,
            "too_many_ids",
        ),
        (
            "k = 0",
            "/v1/collections/docs/search",
            with(&good_search, "/k", json!(0)),
            400,
            "invalid_k",
        ),
        (
            "an unknown mode",
            "/v1/collections/docs/search",
            with(&good_search, "/mode", json!("psychic")),
            400,
            "malformed_json",
        ),
        (
            "an unknown collection",
            "/v1/collections/nope/search",
            good_search.clone(),
            404,
            "not_found",
        ),
        (
            "a question beyond the generator's vocabulary",
            "/v1/collections/docs/answer",
            with(
                &good_answer,
                "/question/generator_ids/0",
                json!(health.generator_vocab),
            ),
            400,
            "id_out_of_vocabulary",
        ),
        (
            "a prompt longer than the generator context",
            "/v1/collections/docs/answer",
            with(
                &good_answer,
                "/template/before_context",
                json!(vec![100; health.generator_context - 8]),
            ),
            400,
            "context_too_long",
        ),
        (
            "max_tokens = 0",
            "/v1/collections/docs/answer",
            with(&good_answer, "/max_tokens", json!(0)),
            400,
            "invalid_max_tokens",
        ),
        (
            "an answer of another key",
            "/v1/collections/docs/answer",
            with(&good_answer, "/key_id", json!(other_key)),
            400,
            "key_mismatch",
        ),
        (
            "a bad collection name",
            "/v1/collections",
            json!({"name": "../etc"}),
            400,
            "invalid_name",
        ),
        (
            "a collection that exists",
            "/v1/collections",
            json!({"name": "docs"}),
            409,
            "conflict",
        ),
    ];
    for (what, path, body, status, code) in &cases {
        let r = send(http.post(url(path)).json(body));
        assert_eq!(
            (r.status, r.code()),
            (*status, *code),
            "{what}: {}",
            r.message()
        );
        assert!(!r.message().is_empty(), "{what}: the error says why");
        assert_eq!(snapshot(&c, "docs"), before, "{what} changed the store");
    }
    // The window error names the limit.
    let r = send(http.post(url("/v1/collections/docs/search")).json(&with(
        &good_search,
        "/query_ids",
        json!(vec![100; 600]),
    )));
    assert!(
        r.message().contains(&health.encoder_max_tokens.to_string()),
        "{}",
        r.message()
    );

    // Not JSON, not declared JSON, too big, unknown routes and methods.
    let r = send(
        http.post(url("/v1/collections/docs/chunks"))
            .header("content-type", "application/json")
            .body("{\"key_id\": [1, 2"),
    );
    assert_eq!((r.status, r.code()), (400, "malformed_json"));
    let r = send(
        http.post(url("/v1/collections/docs/chunks"))
            .body(good_upsert.to_string()),
    );
    assert_eq!((r.status, r.code()), (415, "unsupported_media_type"));
    let huge = with(
        &good_upsert,
        "/documents/0/chunks/0/metadata",
        json!("A".repeat(300 << 10)),
    );
    let r = send(http.post(url("/v1/collections/docs/chunks")).json(&huge));
    assert_eq!((r.status, r.code()), (413, "body_too_large"));
    let r = send(http.get(url("/v2/anything")));
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = send(http.put(url("/v1/collections/docs/search")));
    assert_eq!((r.status, r.code()), (405, "method_not_allowed"));
    let r = send(http.get(url("/v1/collections/docs/documents/nope/chunks")));
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = send(http.delete(url("/v1/collections/nope")));
    assert_eq!((r.status, r.code()), (404, "not_found"));
    // Query-string and cursor mistakes are JSON errors too.
    let r = send(http.get(url("/v1/collections/docs/documents?limit=many")));
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_query"),
        "{}",
        r.message()
    );
    let r = send(http.get(url("/v1/collections/docs/documents?after=nonsense")));
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_cursor"),
        "{}",
        r.message()
    );
    // A parser error names the field but never echoes what was sent.
    for body in [
        json!({"name": "docs", "key_id": "ECHOCANARY"}),
        json!({"name": "docs", "ECHOCANARY": 1}),
        with(&good_search, "/mode", json!("ECHOCANARY")),
    ] {
        let r = send(http.post(url("/v1/collections/docs/search")).json(&body));
        assert_eq!((r.status, r.code()), (400, "malformed_json"));
        assert!(!r.message().contains("ECHOCANARY"), "{}", r.message());
    }
    let r = send(
        http.post(url("/v1/collections"))
            .json(&json!({"name": "x", "key_id": "ECHOCANARY"})),
    );
    assert_eq!((r.status, r.code()), (400, "malformed_json"));
    assert!(
        r.message().contains("key_id") && !r.message().contains("ECHOCANARY"),
        "{}",
        r.message()
    );
    assert_eq!(
        snapshot(&c, "docs"),
        before,
        "refused requests changed the store"
    );

    // The generator queue is bounded: with room for one generation, a second
    // concurrent answer gets 503 and Retry-After, and the first is unharmed.
    let long = AskOptions {
        max_tokens: 100,
        ..AskOptions::default()
    };
    let mut request = c
        .encrypt_question("Summarise the incident review.", &long)
        .unwrap();
    request.stop_ids.clear();
    let first = http
        .post(url("/v1/collections/docs/answer"))
        .json(&request)
        .send()
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    // The stream has started (headers are sent once the generation is
    // admitted), so the queue is full now.
    let r = send(http.post(url("/v1/collections/docs/answer")).json(&request));
    assert_eq!((r.status, r.code()), (503, "busy"), "{}", r.message());
    assert_eq!(
        r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("2")
    );
    match c.host().answer("docs", &request) {
        Err(RemoteError::Status {
            status: 503,
            retry_after: Some(2),
            ..
        }) => {}
        other => panic!("expected 503 with Retry-After from the client: {other:?}"),
    }
    let text = first.text().unwrap();
    assert!(
        text.contains("event: done"),
        "first stream finished: {text}"
    );
    assert_eq!(text.matches("event: token").count(), 100);
    // Dropping a stream frees its place (the generation is cancelled).
    let abandoned = http
        .post(url("/v1/collections/docs/answer"))
        .json(&request)
        .send()
        .unwrap();
    assert_eq!(abandoned.status().as_u16(), 200);
    drop(abandoned);
    // The generator notices the dropped stream when its first token cannot
    // be sent, after the prompt's prefill (about 10 s on 2 cores): retry
    // until then, within a generous bound.
    let mut retried = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        match c.host().answer(
            "docs",
            &c.encrypt_question(
                "Who is Dana?",
                &AskOptions {
                    max_tokens: 4,
                    ..AskOptions::default()
                },
            )
            .unwrap(),
        ) {
            Ok(a) => {
                retried = Some(a);
                break;
            }
            Err(e) if e.status() == Some(503) => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(retried.is_some(), "a dropped stream never freed its place");
    assert_eq!(snapshot(&c, "docs"), before);

    // Metrics: requests by route template and status, tokens, queue depth.
    let metrics = http.get(url("/metrics")).send().unwrap().text().unwrap();
    for needle in [
        "route=\"/v1/collections/{name}/search\"",
        "status=\"400\"",
        "status=\"503\"",
        "status=\"413\"",
        "eerag_generated_tokens_total",
        "eerag_queue_depth",
        "eerag_http_request_duration_seconds_bucket",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("/v2/anything"),
        "raw paths never become labels"
    );
}

#[test]
fn tenants_see_only_their_own_collections() {
    let f = fixture();
    let entry = |token: &str, tenant: &str, role| ApiKeyEntry {
        sha256: hash_token(token),
        tenant: tenant.into(),
        role,
    };
    let auth = AuthConfig {
        api_keys: vec![
            entry("alpha-writer", "alpha", Role::Write),
            entry("alpha-reader", "alpha", Role::Read),
            entry("beta-writer", "beta", Role::Write),
        ],
    };
    let host = Host::start(
        f.artifacts.dir(),
        HostOptions {
            auth,
            ..HostOptions::default()
        },
    );
    let as_ = |token: Option<&str>| {
        EncryptedClient::connect(
            HostClient::new(&host.url, token.map(String::from)).unwrap(),
            &f.key,
            &f.models,
        )
        .unwrap()
    };
    let alpha = as_(Some("alpha-writer"));
    let reader = as_(Some("alpha-reader"));
    let beta = as_(Some("beta-writer"));
    let nobody = as_(None);
    let stranger = as_(Some("not-a-key"));
    let docs = sample_documents();

    alpha.create_collection("shared-name").unwrap();
    alpha.upload("shared-name", &docs[..1]).unwrap();
    for c in [&nobody, &stranger] {
        match c.host().list_collections() {
            Err(RemoteError::Status { status: 401, .. }) => {}
            other => panic!("expected 401: {other:?}"),
        }
    }
    let r = send(Client::new().get(format!("{}/v1/collections", host.url)));
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers.get("www-authenticate").unwrap().to_str().unwrap(),
        "Bearer"
    );
    // Health and metrics are open (they hold no tenant data).
    assert!(nobody.host().health().is_ok());

    // The reader reads and may not write.
    assert_eq!(reader.host().list_collections().unwrap().len(), 1);
    assert!(!reader
        .search("shared-name", "vaccine", 2, SearchMode::Hybrid)
        .unwrap()
        .is_empty());
    for result in [
        reader.create_collection("mine").map(|_| ()),
        reader.upload("shared-name", &docs[1..2]).map(|_| ()),
        reader
            .host()
            .delete_collection("shared-name")
            .map_err(Into::into),
    ] {
        match result {
            Err(eerag_client::client::ClientError::Remote(RemoteError::Status {
                status: 403,
                ..
            })) => {}
            other => panic!("expected 403: {other:?}"),
        }
    }

    // Beta sees nothing of alpha's and can use the same name for its own.
    assert!(beta.host().list_collections().unwrap().is_empty());
    let err = beta
        .search("shared-name", "vaccine", 2, SearchMode::Hybrid)
        .unwrap_err();
    assert!(matches!(
        err,
        eerag_client::client::ClientError::Remote(RemoteError::Status { status: 404, .. })
    ));
    let alpha_docs = alpha
        .host()
        .list_documents("shared-name", None, 10)
        .unwrap();
    let doc_id = &alpha_docs.documents[0].doc_id;
    assert_eq!(
        beta.host()
            .export_document("shared-name", doc_id)
            .unwrap_err()
            .status(),
        Some(404)
    );
    assert_eq!(
        beta.host()
            .delete_collection("shared-name")
            .unwrap_err()
            .status(),
        Some(404)
    );
    beta.create_collection("shared-name").unwrap();
    beta.upload("shared-name", &docs[2..]).unwrap();
    let beta_hits = beta
        .search("shared-name", "vaccine fridge", 10, SearchMode::Hybrid)
        .unwrap();
    assert!(beta_hits.iter().all(|h| h.metadata.title == docs[2].title));
    let alpha_hits = alpha
        .search("shared-name", "vaccine fridge", 10, SearchMode::Hybrid)
        .unwrap();
    assert!(alpha_hits.iter().all(|h| h.metadata.title == docs[0].title));
    assert_eq!(
        alpha.host().list_collections().unwrap()[0].chunks as usize,
        docs[0].chunks.len()
    );
}

#[test]
fn every_documented_route_is_served() {
    let f = fixture();
    let host = Host::start(f.artifacts.dir(), HostOptions::default());
    let c = client(&host, &f.key);
    c.create_collection("r").unwrap();
    let docs = sample_documents();
    let upload = c.encrypt_documents(&docs[..1]).unwrap();
    let doc = upload.documents[0].doc_id.clone();
    let http = Client::new();
    let bodies: BTreeMap<&str, Value> = [
        ("/v1/collections", json!({"name": "r2"})),
        (
            "/v1/collections/{name}/chunks",
            serde_json::to_value(&upload).unwrap(),
        ),
        // Version 2, filled from version 1 and switched to before the reads.
        ("/v1/collections/{name}/versions", json!({})),
        (
            "/v1/collections/{name}/versions/{version}/reembed",
            json!({"limit": 10}),
        ),
        ("/v1/collections/{name}/switch", json!({"version": 2})),
        (
            "/v1/collections/{name}/search",
            serde_json::to_value(c.encrypt_query("fridge", 2, SearchMode::Dense).unwrap()).unwrap(),
        ),
        (
            "/v1/embed",
            json!({"key_id": c.cipher().key_id(), "inputs": [[101, 2000, 102]]}),
        ),
        (
            "/v1/collections/{name}/answer",
            serde_json::to_value({
                let mut q = c
                    .encrypt_question(
                        "When does the clinic open?",
                        &AskOptions {
                            max_tokens: 2,
                            ..AskOptions::default()
                        },
                    )
                    .unwrap();
                q.stream = false;
                q
            })
            .unwrap(),
        ),
    ]
    .into_iter()
    .collect();
    // Writes first, deletes last, so every route has something to act on.
    let mut routes: Vec<_> = ROUTES.to_vec();
    routes.sort_by_key(|(m, p)| match *m {
        "post" => 0,
        "get" => 1,
        _ if p.contains("{doc}") => 2,
        _ => 3,
    });
    for (method, template) in routes {
        let path = template
            .replace("{name}", "r")
            .replace("{doc}", &doc)
            .replace("{version}", "2");
        let url = format!("{}{path}", host.url);
        let request = match method {
            "get" => http.get(&url),
            "delete" => http.delete(&url),
            "post" => http.post(&url).json(&bodies[template]),
            m => panic!("unexpected method {m}"),
        };
        let response = request.send().unwrap();
        assert!(
            response.status().is_success(),
            "{method} {template}: {} {}",
            response.status(),
            response.text().unwrap_or_default()
        );
    }
    let doc: Value = serde_json::from_str(
        &http
            .get(format!("{}/openapi.json", host.url))
            .send()
            .unwrap()
            .text()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
}
