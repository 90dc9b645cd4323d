//! Hosts for API tests: the `eerag-host serve` binary an operator installs
//! (artifacts, embedded store or a Qdrant server, models), started as a
//! process on a loopback port, so the tests talk to it with the blocking
//! HTTP client like any client.

use std::path::{Path, PathBuf};

use eerag_client::client::TextDocument;
use eerag_host::auth::AuthConfig;
use eerag_host::config::{ServerFile, StoreSection};
use eerag_host::engine::EngineLimits;
use eerag_store::StoreSpec;

use crate::process::HostProcess;

/// The environment variable the test host reads a Qdrant API key from.
const QDRANT_KEY_ENV: &str = "EERAG_TEST_QDRANT_API_KEY";

/// A running host and its data directory.
pub struct Host {
    pub url: String,
    // Declared before `data` so the server stops before its files go.
    _process: HostProcess,
    pub data: tempfile::TempDir,
}

/// Knobs of a test host, each passed to the binary as an operator would
/// (flags, or the configuration file).
pub struct HostOptions {
    /// `[[api_keys]]`; none is one local tenant.
    pub auth: AuthConfig,
    /// `--max-body-mib`, in bytes.
    pub max_body_bytes: usize,
    /// `--embed-batch`, `--embed-queue`, `--generate-queue`, `--generate-batch`.
    pub engine: EngineLimits,
    /// The store; `None` is the embedded one in the host's data directory.
    pub store: Option<StoreSpec>,
    /// More artifacts to serve (another key's, another encoder's).
    pub more_artifacts: Vec<PathBuf>,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            auth: AuthConfig::default(),
            max_body_bytes: 64 << 20,
            engine: EngineLimits::default(),
            store: None,
            more_artifacts: Vec::new(),
        }
    }
}

impl Host {
    /// Starts `eerag-host serve` for `artifacts` on a fresh data directory.
    pub fn start(artifacts: &Path, options: HostOptions) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let text = |p: &Path| p.to_str().expect("UTF-8 path").to_string();
        let mut args = vec!["--artifacts".to_string(), text(artifacts)];
        for more in &options.more_artifacts {
            args.extend(["--artifacts".to_string(), text(more)]);
        }
        let e = &options.engine;
        args.extend([
            "--no-verify".to_string(),
            "--max-body-mib".to_string(),
            (options.max_body_bytes as f64 / (1024.0 * 1024.0)).to_string(),
            "--embed-batch".to_string(),
            e.embed_batch.to_string(),
            "--embed-queue".to_string(),
            e.embed_queue.to_string(),
            "--generate-queue".to_string(),
            e.generate_queue.to_string(),
            "--generate-batch".to_string(),
            e.generate_batch.to_string(),
        ]);
        let mut file = ServerFile {
            api_keys: options.auth.api_keys,
            store: StoreSection::default(),
        };
        let mut env = vec![("RUST_LOG", "warn")];
        let qdrant_key;
        match options.store {
            None => args.extend(["--data".to_string(), text(&data.path().join("store"))]),
            Some(StoreSpec::Embedded(dir)) => args.extend(["--data".to_string(), text(&dir)]),
            Some(StoreSpec::Qdrant(q)) => {
                file.store = StoreSection {
                    url: Some(q.url.clone()),
                    collection_prefix: Some(q.collection_prefix.clone()),
                    shard_number: q.shard_number,
                    replication_factor: q.replication_factor,
                    write_consistency_factor: q.write_consistency_factor,
                    timeout_secs: Some(q.timeout.as_secs().max(1)),
                    connect_timeout_secs: Some(q.connect_timeout.as_secs().max(1)),
                    attempts: Some(q.attempts),
                    ..StoreSection::default()
                };
                if let Some(key) = q.api_key {
                    qdrant_key = key;
                    file.store.api_key_env = Some(QDRANT_KEY_ENV.into());
                    env.push((QDRANT_KEY_ENV, qdrant_key.as_str()));
                }
            }
        }
        if !file.api_keys.is_empty() || file.store.url.is_some() {
            let config = data.path().join("server.toml");
            std::fs::write(&config, file.to_toml()).expect("writing the configuration");
            args.extend(["--config".to_string(), text(&config)]);
        }
        let process = HostProcess::serve(&args, &env, &data.path().join("logs"));
        Self {
            url: process.url.clone(),
            _process: process,
            data,
        }
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
