//! Flags the client's commands and the lab's share, defined once (clap),
//! behind the `cli` feature.

use std::path::PathBuf;

use eerag_core::models::fetch::ModelsDir;
use eerag_core::wire::SearchMode;

/// The models folder option.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelsArg {
    /// Models folder [default: $EERAG_MODELS or ./models].
    #[arg(long = "models")]
    dir: Option<PathBuf>,
}

/// The models folder lacks verified models.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// Files missing, or not the pinned ones.
    #[error("models missing or not verified in {root} ({files}): run `eerag models fetch`")]
    Missing {
        /// The models folder.
        root: String,
        /// The files missing or wrong, comma-separated.
        files: String,
    },
    /// The folder could not be read.
    #[error("checking the models in {root}: {source}")]
    Check {
        /// The models folder.
        root: String,
        /// The error reading it.
        source: eerag_core::EeError,
    },
}

impl ModelsArg {
    /// The resolved models folder.
    pub fn resolve(&self) -> ModelsDir {
        ModelsDir::resolve(self.dir.as_deref())
    }

    /// The resolved folder, checked to hold the pinned models (SHA-256).
    pub fn require(&self) -> Result<ModelsDir, ModelsError> {
        let dir = self.resolve();
        let root = dir.root().display().to_string();
        let bad = dir
            .missing_or_wrong()
            .map_err(|source| ModelsError::Check {
                root: root.clone(),
                source,
            })?;
        if !bad.is_empty() {
            return Err(ModelsError::Missing {
                root,
                files: bad
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(dir)
    }
}

/// A `--mode` value.
pub fn parse_mode(s: &str) -> Result<SearchMode, String> {
    match s {
        "dense" => Ok(SearchMode::Dense),
        "keyword" => Ok(SearchMode::Keyword),
        "hybrid" => Ok(SearchMode::Hybrid),
        _ => Err("use dense, keyword or hybrid".into()),
    }
}
