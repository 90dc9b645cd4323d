//! Typed errors of the EE core. Messages never carry plaintext, token ids of
//! plaintext, or key material: they name what went wrong and where.

use std::path::PathBuf;

/// Everything that can go wrong in the EE core.
#[derive(Debug, thiserror::Error)]
pub enum EeError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} already exists (pass --force to overwrite it)")]
    KeyExists { path: PathBuf },
    #[error("key file {path} is not an eerag key: {reason}")]
    KeyInvalid { path: PathBuf, reason: String },
    #[error("key file {path} has format version {found}, this build reads version {supported}")]
    KeyVersion {
        path: PathBuf,
        found: u16,
        supported: u16,
    },
    #[error("key file {path} is corrupted: checksum mismatch")]
    KeyCorrupted { path: PathBuf },
    #[error("key mismatch: data was encrypted under key {found}, this key is {expected}")]
    KeyMismatch { expected: String, found: String },
    #[error("token id {id} is outside the {vocab} vocabulary of {size} ids")]
    OutOfVocabulary {
        id: u32,
        vocab: &'static str,
        size: usize,
    },
    #[error("vocabulary size mismatch for {vocab}: key material is for {expected} ids, model has {found}")]
    VocabMismatch {
        vocab: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("metadata could not be decrypted: wrong key or tampered ciphertext")]
    MetadataAuth,
    #[error("model error: {0}")]
    Model(String),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("artifacts in {dir}: {reason}")]
    Artifacts { dir: PathBuf, reason: String },
    #[error("model fetch failed: {0}")]
    Fetch(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl EeError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EeError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<candle_core::Error> for EeError {
    fn from(e: candle_core::Error) -> Self {
        EeError::Model(e.to_string())
    }
}

/// Result alias of the EE core.
pub type Result<T> = std::result::Result<T, EeError>;
