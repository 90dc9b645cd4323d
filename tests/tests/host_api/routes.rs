//! Every documented route is served.

use std::collections::BTreeMap;

use eerag_client::client::AskOptions;
use eerag_core::wire::SearchMode;
use eerag_host::openapi::ROUTES;
use eerag_tests::fixture;
use eerag_tests::host::{sample_documents, Host, HostOptions};
use reqwest::blocking::Client;
use serde_json::{json, Value};

use crate::*;

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
