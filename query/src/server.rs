//! Starting the host: open the artifacts and the store, load the models,
//! serve the API until shut down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use candle_core::DType;
use eerag_core::artifacts::HostArtifacts;
use eerag_core::device::{self, DeviceChoice};
use eerag_core::models::GeneratorBackend;
use eerag_core::KeyId;
use eerag_store::edge_store::Recovery;
use eerag_store::StoreSpec;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::api::{router, AppState};
use crate::auth::Auth;
use crate::engine::{Engine, EngineLimits, Placement};
use crate::metrics::Metrics;
use crate::service::{ServedModels, Service, ServiceLimits};

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("host artifacts: {0}")]
    Artifacts(#[from] eerag_core::EeError),
    #[error("store: {0}")]
    Store(#[from] eerag_store::StoreError),
    #[error("models: {0}")]
    Engine(#[from] crate::engine::EngineError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "refusing to listen on {0} without API keys: with no keys configured the server only listens on loopback (configure [[api_keys]] to serve a network)"
    )]
    OpenWithoutKeys(SocketAddr),
    #[error("{0}: these artifacts are for a key and encoder already loaded")]
    DuplicateArtifacts(PathBuf),
    #[error("device: {0}")]
    Device(eerag_core::EeError),
}

/// Default bound on API requests handled at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// Everything `eerag serve` is configured with.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Host artifacts from `eerag transform`: the default models.
    pub artifacts: PathBuf,
    /// More artifacts served at once (another key's during a key rotation,
    /// another encoder's during a re-embedding): each collection is served
    /// by the models of its key and encoder.
    pub more_artifacts: Vec<PathBuf>,
    /// Where collections are stored.
    pub store: StoreSpec,
    pub listen: SocketAddr,
    pub auth: Auth,
    /// Check every artifact file against its manifest hash at start-up.
    pub verify_artifacts: bool,
    pub max_body_bytes: usize,
    /// API requests handled at once; more get 503 + Retry-After.
    pub max_in_flight: usize,
    pub engine: EngineLimits,
    /// Where the models run.
    pub device: DeviceChoice,
    /// Compute dtype of a safetensors generator (`None`: the weights' own).
    pub generator_dtype: Option<DType>,
    /// Which implementation runs the generator.
    pub generator_backend: GeneratorBackend,
    pub limits: ServiceLimits,
    /// How often the store's optimiser runs.
    pub optimize_every: Duration,
}

impl ServeConfig {
    /// A single-tenant server on a free loopback port with default limits:
    /// what the demo and the lab's benchmarks run in process.
    pub fn local(artifacts: PathBuf, data: PathBuf) -> Self {
        Self {
            artifacts,
            more_artifacts: Vec::new(),
            store: StoreSpec::Embedded(data),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth: Auth::Local,
            verify_artifacts: true,
            max_body_bytes: 64 << 20,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            engine: EngineLimits::default(),
            device: DeviceChoice::Auto,
            generator_dtype: None,
            generator_backend: GeneratorBackend::Auto,
            limits: ServiceLimits::default(),
            optimize_every: Duration::from_secs(60),
        }
    }
}

/// A running server.
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The artifacts' key id.
    pub key_id: KeyId,
    /// What opening the store had to repair.
    pub recovery: Recovery,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    optimizer: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Stops accepting connections, finishes in-flight requests and returns.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let served = self.task.await.unwrap_or(Ok(()));
        // The optimiser holds the store: stop it so the store closes here.
        self.optimizer.abort();
        let _ = self.optimizer.await;
        served
    }

    /// Waits until the server stops on its own (it only does on error) or
    /// `signal` completes, then shuts it down.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        signal.await;
        self.shutdown().await
    }
}

/// Loads everything and starts serving in the background.
pub async fn start(config: ServeConfig) -> Result<RunningServer, ServeError> {
    if !config.auth.requires_keys() && !config.listen.ip().is_loopback() {
        return Err(ServeError::OpenWithoutKeys(config.listen));
    }
    let metrics = Arc::new(Metrics::default());
    let chosen = device::select(config.device).map_err(ServeError::Device)?;
    tracing::info!(device = %chosen.describe(), "models run on");
    let placement = Placement {
        device: chosen.device.clone(),
        generator_dtype: config.generator_dtype,
        generator_backend: config.generator_backend,
    };
    let mut models: Vec<ServedModels> = Vec::new();
    for dir in std::iter::once(&config.artifacts).chain(&config.more_artifacts) {
        let artifacts = {
            let (dir, verify) = (dir.clone(), config.verify_artifacts);
            tokio::task::spawn_blocking(move || HostArtifacts::open(&dir, verify))
                .await
                .expect("artifact check does not panic")?
        };
        let key_id = artifacts.key_id();
        let encoder = artifacts.manifest().encoder.base_sha256.clone();
        if models
            .iter()
            .any(|m| m.key_id == key_id && m.encoder == encoder)
        {
            return Err(ServeError::DuplicateArtifacts(dir.clone()));
        }
        let engine = {
            let (limits, metrics) = (config.engine.clone(), metrics.clone());
            let placement = placement.clone();
            tokio::task::spawn_blocking(move || {
                Engine::start(&artifacts, &placement, limits, metrics)
            })
            .await
            .expect("model loading does not panic")?
        };
        tracing::info!(key_id = %key_id, encoder = %encoder.chars().take(12).collect::<String>(), "models loaded");
        models.push(ServedModels {
            engine,
            key_id,
            encoder,
        });
    }
    let key_id = models[0].key_id;
    let (store, recovery) = {
        let spec = config.store.clone();
        tokio::task::spawn_blocking(move || spec.open())
            .await
            .expect("store opening does not panic")?
    };
    tracing::info!(
        key_id = %key_id,
        store = %config.store.describe(),
        keyword_reindexed = recovery.keyword_reindexed,
        keyword_removed = recovery.keyword_removed,
        leftovers_removed = recovery.leftovers_removed,
        "store opened"
    );
    let service = Service::new(store, models, metrics.clone(), config.limits);
    let state = Arc::new(AppState {
        service,
        metrics,
        auth: config.auth,
        in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1))),
    });
    let app = router(state.clone(), config.max_body_bytes);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    let (shutdown, stop) = oneshot::channel::<()>();
    let optimizer = {
        // Segment merging and vacuuming, off the request path.
        let state = state.clone();
        let every = config.optimize_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = state.service.optimize_all().await {
                    tracing::warn!(error = %e, "store optimisation failed");
                }
            }
        })
    };
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop.await;
            })
            .await
    });
    Ok(RunningServer {
        addr,
        key_id,
        recovery,
        shutdown: Some(shutdown),
        task,
        optimizer,
    })
}

/// A server on its own tokio runtime, for callers that are not async (the
/// demo, benchmarks, tests): they talk to it over HTTP like any client.
pub struct BackgroundServer {
    server: Option<RunningServer>,
    runtime: tokio::runtime::Runtime,
}

impl BackgroundServer {
    /// Starts `config` on a new two-worker runtime.
    pub fn start(config: ServeConfig) -> Result<Self, ServeError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("eerag-host")
            .enable_all()
            .build()
            .map_err(|source| ServeError::Listen {
                addr: config.listen,
                source,
            })?;
        let server = runtime.block_on(start(config))?;
        Ok(Self {
            server: Some(server),
            runtime,
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server().addr)
    }

    /// The running server.
    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("running until dropped")
    }

    /// Shuts down gracefully (also done on drop).
    pub fn stop(mut self) -> std::io::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> std::io::Result<()> {
        match self.server.take() {
            Some(s) => self.runtime.block_on(s.shutdown()),
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}
