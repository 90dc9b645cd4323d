//! The gRPC client on its own tokio runtime, retrying transient failures,
//! and the mapping of Qdrant's errors to the store's.

use std::future::Future;
use std::time::Duration;

use qdrant_client::{Qdrant, QdrantError};

use crate::store::{Result, StoreError};

/// Whether a failed request may succeed if sent again: the server was
/// unreachable, timed out or shed load.
fn transient(e: &QdrantError) -> bool {
    match e {
        QdrantError::ResponseError { status } => {
            matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
                    | tonic::Code::Aborted
            )
            // The client's channel pool reports a refused connection so.
            || (status.code() == tonic::Code::Internal
                && status.message().starts_with("Failed to connect"))
        }
        QdrantError::ResourceExhaustedError { .. } => true,
        QdrantError::Io(_) => true,
        _ => false,
    }
}

/// Maps a Qdrant error to the store's, naming `collection` where it is
/// missing or exists already.
fn store_err(collection: &str, e: QdrantError) -> StoreError {
    if transient(&e) {
        return StoreError::Unavailable(format!("Qdrant server: {}", status_text(&e)));
    }
    if let QdrantError::ResponseError { status } = &e {
        match status.code() {
            tonic::Code::NotFound => {
                return StoreError::CollectionNotFound(collection.chars().take(80).collect())
            }
            tonic::Code::AlreadyExists => {
                return StoreError::CollectionExists(collection.chars().take(80).collect())
            }
            _ => {}
        }
        // Qdrant reports a missing collection as a bad request in places.
        if status.message().contains("Not found: Collection") {
            return StoreError::CollectionNotFound(collection.chars().take(80).collect());
        }
    }
    StoreError::Vector(format!("Qdrant server: {}", status_text(&e)))
}

/// A short description of `e`: the gRPC code and message, without the
/// request metadata the client's Display adds.
pub(super) fn status_text(e: &QdrantError) -> String {
    match e {
        QdrantError::ResponseError { status }
        | QdrantError::ResourceExhaustedError { status, .. } => {
            let message: String = status.message().chars().take(300).collect();
            format!("{:?}: {message}", status.code())
        }
        other => other.to_string().chars().take(300).collect(),
    }
}

/// The gRPC client with its own runtime, so the store's blocking methods
/// work from any thread (the host calls them on its blocking pool).
pub(super) struct Client {
    pub(super) qdrant: Qdrant,
    pub(super) runtime: Option<tokio::runtime::Runtime>,
    pub(super) attempts: u32,
}

impl Client {
    /// Sends a request built by `call`, retrying transient failures with
    /// exponential backoff (100 ms, 200 ms, 400 ms, ...).
    pub(super) fn run<'a, T, F>(
        &'a self,
        collection: &str,
        call: impl Fn(&'a Qdrant) -> F,
    ) -> Result<T>
    where
        F: Future<Output = std::result::Result<T, QdrantError>> + 'a,
    {
        let runtime = self.runtime.as_ref().expect("present until drop");
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match runtime.block_on(call(&self.qdrant)) {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) && attempt < self.attempts => {
                    tracing::warn!(attempt, error = %status_text(&e), "Qdrant request failed; retrying");
                    std::thread::sleep(delay);
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(store_err(collection, e)),
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // The host may drop the store on an async thread, where a runtime
        // must not block on its own shutdown.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
