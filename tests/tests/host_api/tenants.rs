//! Tenants see only their own collections.

use eerag_client::client::EncryptedClient;
use eerag_core::wire::SearchMode;
use eerag_host::auth::{hash_token, ApiKeyEntry, AuthConfig, Role};
use eerag_remote::{HostClient, RemoteError};
use eerag_tests::fixture;
use eerag_tests::host::{sample_documents, Host, HostOptions};
use reqwest::blocking::Client;

use crate::*;

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
