//! One side of a side-by-side run: host artifacts for a key, an in-process
//! host on a fresh embedded store (or a given one), and the encrypting client in front of it.
//! With [`Key::identity`] it is the plaintext pipeline: the same code with
//! identity permutations and rotation.

use eerag_client::client::{ClientError, EncryptedClient};
use eerag_client::Key;
use eerag_core::models::fetch::ModelsDir;
use eerag_core::EeError;
use eerag_host::server::{BackgroundServer, ServeConfig, ServeError};
use eerag_remote::HostClient;
use eerag_store::store::{Store, StoreError};
use eerag_store::StoreSpec;

/// Errors starting a side.
#[derive(Debug, thiserror::Error)]
pub enum SideError {
    #[error("making the host artifacts: {0}")]
    Transform(#[from] EeError),
    #[error("starting the host: {0}")]
    Serve(#[from] ServeError),
    #[error("connecting to the host: {0}")]
    Client(#[from] ClientError),
    #[error("seeding the store: {0}")]
    Seed(#[from] Box<dyn std::error::Error + Send + Sync>),
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
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
        Self::start_seeded(key, models, |_| Ok::<(), StoreError>(()))
    }

    /// Like [`HostSide::start`], but first hands the host's store, opened
    /// and not yet served, to `seed` (to write a prepared corpus into it
    /// without going through the encoder).
    pub fn start_seeded<E>(
        key: &Key,
        models: &ModelsDir,
        seed: impl FnOnce(&dyn Store) -> Result<(), E>,
    ) -> Result<Self, SideError>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Self::start_seeded_on(key, models, None, seed)
    }

    /// [`HostSide::start_seeded`] on `store` (`None`: a fresh embedded
    /// store in the side's folder).
    pub fn start_seeded_on<E>(
        key: &Key,
        models: &ModelsDir,
        store: Option<StoreSpec>,
        seed: impl FnOnce(&dyn Store) -> Result<(), E>,
    ) -> Result<Self, SideError>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let spec = store.unwrap_or_else(|| StoreSpec::Embedded(data.clone()));
        {
            let (store, _) = spec.open()?;
            seed(store.as_ref()).map_err(|e| SideError::Seed(Box::new(e)))?;
        }
        let artifacts = dir.path().join("artifacts");
        eerag_client::transform::transform(
            key,
            &models.encoder_dir(),
            &models.generator_gguf(),
            &artifacts,
            false,
        )?;
        let server = BackgroundServer::start(ServeConfig {
            store: spec,
            ..ServeConfig::local(artifacts, data)
        })?;
        let host = HostClient::new(&server.url(), None).map_err(ClientError::from)?;
        let client = EncryptedClient::connect(host, key, models)?;
        Ok(Self {
            _dir: dir,
            server,
            client,
        })
    }

    /// Stops the host and hands back its folder and the data directory in
    /// it, closed, for reading the store as its operator would.
    pub fn stop(self) -> Result<(tempfile::TempDir, std::path::PathBuf), SideError> {
        let Self {
            server,
            client,
            _dir: dir,
        } = self;
        drop(client);
        server.stop()?;
        let data = dir.path().join("data");
        Ok((dir, data))
    }
}
