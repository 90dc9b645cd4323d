//! The attack harness behind `eerag attack`: each attack runs on what the
//! real pipeline produced (ciphertext written by the upload job into a real
//! store, host artifacts written by `eerag transform`) and is scored against
//! the key it never sees.
//!
//! - [`frequency`]: ciphertext-only decipherment of stored ids (a storage or
//!   database operator) from public token statistics;
//! - [`single`]: hill climbing and random sampling on one short ciphertext
//!   (one query) under a language-model loss;
//! - [`brute_force`]: the key space and the time to enumerate it;
//! - [`weight_match`]: the compute host matching its transformed embedding
//!   rows against the public base model's;
//! - [`vector_match`]: matching stored vectors against the public encoder's.

pub mod brute_force;
pub mod frequency;
pub mod single;
pub mod stats;
pub mod vector_match;
pub mod victim;
pub mod weight_match;

/// Errors of the attack harness (never of the attack itself: an attack that
/// recovers nothing is a result).
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    #[error(transparent)]
    Ee(#[from] eerag_core::EeError),
    #[error("model arithmetic: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Side(#[from] crate::side::SideError),
    #[error(transparent)]
    Store(#[from] eerag_store::store::StoreError),
    #[error(transparent)]
    Client(#[from] eerag_client::client::ClientError),
    #[error(transparent)]
    Upload(#[from] eerag_client::upload::UploadError),
    #[error(transparent)]
    Dataset(#[from] crate::beir::BeirError),
    #[error("{0}")]
    Invalid(String),
}

/// Result of the harness.
pub type Result<T> = std::result::Result<T, AttackError>;

/// `t`'s rows scaled to unit length (cosine similarity becomes a dot
/// product); all-zero rows stay zero.
pub(crate) fn unit_rows(t: &candle_core::Tensor) -> Result<candle_core::Tensor> {
    let norms = t.sqr()?.sum_keepdim(1)?.sqrt()?.affine(1.0, 1e-12)?;
    Ok(t.broadcast_div(&norms)?)
}

/// Seconds since `start`.
pub(crate) fn secs(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64()
}
