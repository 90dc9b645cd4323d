//! In-process hosts for API tests: the `eerag-host serve` stack (artifacts,
//! embedded store or a Qdrant server, models, axum on a loopback port) on its own runtime, so
//! the tests can talk to it with the blocking HTTP client like any client.

use std::path::Path;
use std::time::Duration;

use eerag_client::client::TextDocument;
use eerag_host::auth::Auth;
use eerag_host::engine::EngineLimits;
use eerag_host::server::{BackgroundServer, ServeConfig};
use eerag_store::StoreSpec;

/// A running host and its data directory.
pub struct Host {
    pub url: String,
    // Declared before `data` so the server stops before its files go.
    server: BackgroundServer,
    pub data: tempfile::TempDir,
}

/// Knobs of a test host.
pub struct HostOptions {
    pub auth: Auth,
    pub max_body_bytes: usize,
    pub engine: EngineLimits,
    /// The store; `None` is the embedded one in the host's data directory.
    pub store: Option<StoreSpec>,
    /// More artifacts to serve (another key's, another encoder's).
    pub more_artifacts: Vec<std::path::PathBuf>,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            auth: Auth::Local,
            max_body_bytes: 64 << 20,
            engine: EngineLimits::default(),
            store: None,
            more_artifacts: Vec::new(),
        }
    }
}

impl Host {
    /// Starts a host serving `artifacts` on a fresh data directory.
    pub fn start(artifacts: &Path, options: HostOptions) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = ServeConfig {
            more_artifacts: options.more_artifacts,
            auth: options.auth,
            verify_artifacts: false,
            max_body_bytes: options.max_body_bytes,
            engine: options.engine,
            optimize_every: Duration::from_secs(3600),
            ..ServeConfig::local(artifacts.to_path_buf(), data.path().to_path_buf())
        };
        if let Some(store) = options.store {
            config.store = store;
        }
        let server = BackgroundServer::start(config).expect("host starts");
        Self {
            url: server.url(),
            server,
            data,
        }
    }

    /// The server.
    pub fn server(&self) -> &BackgroundServer {
        &self.server
    }
}

/// The sample corpus as documents of paragraph chunks.
pub fn sample_documents() -> Vec<TextDocument> {
    [
        (
            "clinic-handbook.md",
            include_str!("../../datasets/sample/clinic-handbook.md"),
        ),
        (
            "engagement-letter.md",
            include_str!("../../datasets/sample/engagement-letter.md"),
        ),
        (
            "incident-review.md",
            include_str!("../../datasets/sample/incident-review.md"),
        ),
    ]
    .into_iter()
    .map(|(title, text)| {
        TextDocument::from_chunks(
            title,
            text.split("\n\n")
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect(),
        )
    })
    .collect()
}
