//! Bad input gets a clear error and changes nothing; queues are bounded.

use eerag_client::client::AskOptions;
use eerag_client::Key;
use eerag_core::wire::SearchMode;
use eerag_host::engine::EngineLimits;
use eerag_remote::RemoteError;
use eerag_tests::fixture;
use eerag_tests::host::{sample_documents, Host, HostOptions};
use reqwest::blocking::Client;
use serde_json::{json, Value};

use crate::*;

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
