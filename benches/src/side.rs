//! One side of a side-by-side run: host artifacts for a key, an in-process
//! host on a fresh embedded store, and the encrypting client in front of it.
//! With [`Key::identity`] it is the plaintext pipeline: the same code with
//! identity permutations and rotation.

use eerag_ingest::client::{ClientError, EncryptedClient};
use eerag_ingest::remote::HostClient;
use eerag_query::server::{BackgroundServer, ServeConfig, ServeError};
use eerag_shared::models::fetch::ModelsDir;
use eerag_shared::{EeError, Key};

/// Errors starting a side.
#[derive(Debug, thiserror::Error)]
pub enum SideError {
    #[error("making the host artifacts: {0}")]
    Transform(#[from] EeError),
    #[error("starting the host: {0}")]
    Serve(#[from] ServeError),
    #[error("connecting to the host: {0}")]
    Client(#[from] ClientError),
    #[error("temporary folder: {0}")]
    Io(#[from] std::io::Error),
}

/// A host and the client in front of it.
pub struct HostSide {
    // Fields drop in order: the server closes its store before the files go.
    pub server: BackgroundServer,
    pub client: EncryptedClient,
    _dir: tempfile::TempDir,
}

impl HostSide {
    /// Transforms the models for `key` and starts a host on them.
    pub fn start(key: &Key, models: &ModelsDir) -> Result<Self, SideError> {
        let dir = tempfile::tempdir()?;
        let artifacts = dir.path().join("artifacts");
        eerag_shared::transform::transform(
            key,
            &models.encoder_dir(),
            &models.generator_gguf(),
            &artifacts,
            false,
        )?;
        let server =
            BackgroundServer::start(ServeConfig::local(artifacts, dir.path().join("data")))?;
        let host = HostClient::new(&server.url(), None).map_err(ClientError::from)?;
        let client = EncryptedClient::connect(host, key, models)?;
        Ok(Self {
            _dir: dir,
            server,
            client,
        })
    }
}
