//! The server configuration file: `[[api_keys]]` (see [`crate::auth`]) and
//! an optional `[store]` table choosing where collections live.
//!
//! ```toml
//! [store]
//! url = "qdrant://qdrant.internal:6334"   # or "embedded" with data = "DIR"
//! api_key_env = "QDRANT_API_KEY"          # read the Qdrant key from this variable
//! shard_number = 3
//! replication_factor = 2
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use eerag_store::{QdrantOptions, StoreSpec};
use serde::{Deserialize, Serialize};

use crate::auth::{ApiKeyEntry, Auth, AuthConfig, AuthError};

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    #[serde(default)]
    pub api_keys: Vec<ApiKeyEntry>,
    #[serde(default)]
    pub store: StoreSection,
}

/// Where collections live. Every field may also come from the command
/// line, which wins.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `embedded` (the default) or a Qdrant URL: `qdrant://host:6334`,
    /// `qdrants://host:6334` (TLS), `http://` or `https://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Data directory of the embedded store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Name of an environment variable holding the Qdrant API key (the file
    /// itself holds no credentials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Prefix of eerag's Qdrant collection names (default `eerag.`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collection_prefix: Option<String>,
    /// Shards of new collections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_number: Option<u32>,
    /// Copies of each shard of new collections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<u32>,
    /// Replicas that must acknowledge a write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_consistency_factor: Option<u32>,
    /// Deadline of one Qdrant request, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Deadline of connecting to Qdrant, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_secs: Option<u64>,
    /// Attempts of a request that found no server, before answering 503.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

impl ServerFile {
    /// The file as TOML, as [`Self::read`] reads it back.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a server file serialises")
    }

    /// Reads and checks the file.
    pub fn read(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| AuthError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The API keys as an [`Auth`].
    pub fn auth(&self, path: &Path) -> Result<Auth, AuthError> {
        Auth::from_config(&AuthConfig {
            api_keys: self.api_keys.clone(),
        })
        .map_err(|message| AuthError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }
}

impl StoreSection {
    /// This section with every field `over` sets replaced by its value.
    pub fn overridden_by(&self, over: &StoreSection) -> StoreSection {
        StoreSection {
            url: over.url.clone().or_else(|| self.url.clone()),
            data: over.data.clone().or_else(|| self.data.clone()),
            api_key_env: over
                .api_key_env
                .clone()
                .or_else(|| self.api_key_env.clone()),
            collection_prefix: over
                .collection_prefix
                .clone()
                .or_else(|| self.collection_prefix.clone()),
            shard_number: over.shard_number.or(self.shard_number),
            replication_factor: over.replication_factor.or(self.replication_factor),
            write_consistency_factor: over
                .write_consistency_factor
                .or(self.write_consistency_factor),
            timeout_secs: over.timeout_secs.or(self.timeout_secs),
            connect_timeout_secs: over.connect_timeout_secs.or(self.connect_timeout_secs),
            attempts: over.attempts.or(self.attempts),
        }
    }

    /// The store this section describes; `api_key` (from the command line
    /// or its environment variable) wins over `api_key_env`.
    pub fn spec(&self, api_key: Option<String>) -> Result<StoreSpec, String> {
        let url = self.url.as_deref().unwrap_or("embedded");
        let mut spec = StoreSpec::parse(url, self.data.clone()).map_err(|e| e.to_string())?;
        if let StoreSpec::Qdrant(options) = &mut spec {
            apply_qdrant(self, api_key, options)?;
        }
        Ok(spec)
    }
}

fn apply_qdrant(
    section: &StoreSection,
    api_key: Option<String>,
    options: &mut QdrantOptions,
) -> Result<(), String> {
    options.api_key = match (api_key, &section.api_key_env) {
        (Some(key), _) => Some(key),
        (None, Some(var)) => Some(
            std::env::var(var)
                .map_err(|_| format!("store.api_key_env names {var:?}, which is not set"))?,
        ),
        (None, None) => None,
    };
    if let Some(prefix) = &section.collection_prefix {
        let ok = prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !ok || prefix.len() > 64 {
            return Err("store.collection_prefix must be at most 64 of A-Z a-z 0-9 _ - .".into());
        }
        options.collection_prefix = prefix.clone();
    }
    for (name, value) in [
        ("shard_number", section.shard_number),
        ("replication_factor", section.replication_factor),
        ("write_consistency_factor", section.write_consistency_factor),
        ("attempts", section.attempts),
    ] {
        if value == Some(0) {
            return Err(format!("store.{name} must be at least 1"));
        }
    }
    options.shard_number = section.shard_number;
    options.replication_factor = section.replication_factor;
    options.write_consistency_factor = section.write_consistency_factor;
    if let Some(secs) = section.timeout_secs {
        options.timeout = Duration::from_secs(secs.max(1));
    }
    if let Some(secs) = section.connect_timeout_secs {
        options.connect_timeout = Duration::from_secs(secs.max(1));
    }
    if let Some(n) = section.attempts {
        options.attempts = n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_section_from_file_and_overrides() {
        let file: ServerFile = toml::from_str(
            r#"
            [store]
            url = "qdrant://db:7000"
            shard_number = 3
            replication_factor = 2
            "#,
        )
        .unwrap();
        let cli = StoreSection {
            shard_number: Some(4),
            ..Default::default()
        };
        let StoreSpec::Qdrant(o) = file
            .store
            .overridden_by(&cli)
            .spec(Some("k".into()))
            .unwrap()
        else {
            panic!("a Qdrant store");
        };
        assert_eq!(o.url, "http://db:7000");
        assert_eq!((o.shard_number, o.replication_factor), (Some(4), Some(2)));
        assert_eq!(o.api_key.as_deref(), Some("k"));
        // The default is the embedded store, which needs a directory.
        assert!(StoreSection::default().spec(None).is_err());
        let with_data = StoreSection {
            data: Some("/tmp/x".into()),
            ..Default::default()
        };
        assert!(matches!(with_data.spec(None), Ok(StoreSpec::Embedded(_))));
        assert!(toml::from_str::<ServerFile>("[store]\nurl = 1").is_err());
        assert!(toml::from_str::<ServerFile>("[store]\nshards = 1").is_err());
        let zero = StoreSection {
            url: Some("qdrant://db".into()),
            shard_number: Some(0),
            ..Default::default()
        };
        assert!(zero.spec(None).is_err());
    }

    #[test]
    fn a_written_file_reads_back_the_same() {
        let file = ServerFile {
            api_keys: vec![ApiKeyEntry {
                sha256: crate::auth::hash_token("token"),
                tenant: "alpha".into(),
                role: crate::auth::Role::Read,
            }],
            store: StoreSection {
                url: Some("http://127.0.0.1:6334".into()),
                collection_prefix: Some("eerag-test-1.".into()),
                replication_factor: Some(2),
                timeout_secs: Some(3),
                connect_timeout_secs: Some(1),
                attempts: Some(3),
                ..Default::default()
            },
        };
        let path =
            std::env::temp_dir().join(format!("eerag-config-test-{}.toml", std::process::id()));
        std::fs::write(&path, file.to_toml()).unwrap();
        let read = ServerFile::read(&path);
        let _ = std::fs::remove_file(&path);
        let read = read.unwrap();
        assert_eq!(read.api_keys.len(), 1);
        assert_eq!(read.api_keys[0].sha256, file.api_keys[0].sha256);
        assert_eq!(read.api_keys[0].role, crate::auth::Role::Read);
        assert!(read.auth(&path).is_ok());
        let StoreSpec::Qdrant(o) = read.store.spec(None).unwrap() else {
            panic!("a Qdrant store");
        };
        assert_eq!(o.url, "http://127.0.0.1:6334");
        assert_eq!(o.collection_prefix, "eerag-test-1.");
        assert_eq!(o.replication_factor, Some(2));
        assert_eq!(
            (o.timeout.as_secs(), o.connect_timeout.as_secs(), o.attempts),
            (3, 1, 3)
        );
        // Without keys or a store, the file is empty and means the defaults.
        let empty = ServerFile::default().to_toml();
        let empty: ServerFile = toml::from_str(&empty).unwrap();
        assert!(empty.api_keys.is_empty() && empty.store.url.is_none());
    }
}
