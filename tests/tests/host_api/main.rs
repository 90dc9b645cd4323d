//! The host API on the real models, served by the `eerag-host serve`
//! binary: an encrypted host answers exactly as a plaintext (identity-key)
//! host does ([`exactness`]), bad input is refused with a clear error and
//! changes nothing and queues are bounded ([`bad_input`]), tenants are
//! isolated ([`tenants`]), every documented route is served ([`routes`]).

mod bad_input;
mod exactness;
mod routes;
mod tenants;

use eerag_client::client::EncryptedClient;
use eerag_client::Key;
use eerag_core::wire::SearchMode;
use eerag_remote::HostClient;
use eerag_tests::fixture;
use eerag_tests::host::Host;
use serde_json::Value;

pub(crate) const MODES: [SearchMode; 3] =
    [SearchMode::Dense, SearchMode::Keyword, SearchMode::Hybrid];

pub(crate) const QUERIES: [&str; 5] = [
    "How warm may the vaccine fridge get?",
    "What is the hourly rate of a partner?",
    "Why did the settlement worker stall?",
    "retainer",
    "Dana Whitlock",
];

pub(crate) fn client(host: &Host, key: &Key) -> EncryptedClient {
    EncryptedClient::connect(
        HostClient::new(&host.url, None).unwrap(),
        key,
        &fixture().models,
    )
    .expect("client connects")
}

/// A reply to a raw request: status, headers and the JSON body (or Null).
pub(crate) struct Reply {
    /// The HTTP status.
    pub(crate) status: u16,
    /// The response headers.
    pub(crate) headers: reqwest::header::HeaderMap,
    /// The JSON body, or Null.
    pub(crate) body: Value,
}

impl Reply {
    /// The error code of an error reply.
    pub(crate) fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }
    /// The error message of an error reply.
    pub(crate) fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

/// Sends a raw request and reads the reply.
pub(crate) fn send(r: reqwest::blocking::RequestBuilder) -> Reply {
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
pub(crate) fn snapshot(c: &EncryptedClient, collection: &str) -> (Value, Vec<String>) {
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
pub(crate) fn ranking(
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
