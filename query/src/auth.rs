//! Bearer API keys, each mapped to a tenant and a role.
//!
//! The server keeps only SHA-256 hashes of the keys, so its configuration
//! file does not hold usable credentials. With no keys configured the server
//! is a single local tenant and must listen on loopback only (enforced by the
//! `serve` command).

use std::collections::HashMap;
use std::path::Path;

use axum::http::{header, HeaderMap};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What an API key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Search, answer, list and export.
    Read,
    /// Everything, including creating and deleting collections and uploads.
    Write,
}

/// Who a request is from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub role: Role,
}

/// The tenant of a server without API keys.
pub const LOCAL_TENANT: &str = "local";

/// One configured key.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// Hex SHA-256 of the bearer token.
    pub sha256: String,
    pub tenant: String,
    pub role: Role,
}

/// The `[[api_keys]]` section of the server configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub api_keys: Vec<ApiKeyEntry>,
}

/// Errors in the auth configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid {
        path: std::path::PathBuf,
        message: String,
    },
}

/// How requests are authenticated.
#[derive(Clone, Debug)]
pub enum Auth {
    /// No keys: every request is the local tenant with full rights.
    Local,
    /// Keys by the SHA-256 of their token.
    Keys(HashMap<[u8; 32], Principal>),
}

impl Auth {
    /// Reads `[[api_keys]]` from the server configuration file (see
    /// [`crate::config::ServerFile`]).
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        crate::config::ServerFile::read(path)?.auth(path)
    }

    /// Builds the key table; an empty list means [`Auth::Local`].
    pub fn from_config(config: &AuthConfig) -> Result<Self, String> {
        if config.api_keys.is_empty() {
            return Ok(Auth::Local);
        }
        let mut keys = HashMap::new();
        for (i, entry) in config.api_keys.iter().enumerate() {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&entry.sha256, &mut hash)
                .map_err(|_| format!("api_keys[{i}].sha256 is not 64 hex digits"))?;
            crate::service::validate_name("a tenant", &entry.tenant)
                .map_err(|e| format!("api_keys[{i}].tenant: {e}"))?;
            let principal = Principal {
                tenant: entry.tenant.clone(),
                role: entry.role,
            };
            if keys.insert(hash, principal).is_some() {
                return Err(format!("api_keys[{i}] repeats a key"));
            }
        }
        Ok(Auth::Keys(keys))
    }

    /// Whether keys are configured.
    pub fn requires_keys(&self) -> bool {
        matches!(self, Auth::Keys(_))
    }

    /// The principal of a request, or `None` (401).
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<Principal> {
        match self {
            Auth::Local => Some(Principal {
                tenant: LOCAL_TENANT.into(),
                role: Role::Write,
            }),
            Auth::Keys(keys) => {
                let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
                let token = value.strip_prefix("Bearer ")?.trim();
                let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                keys.get(&hash).cloned()
            }
        }
    }
}

/// Hex SHA-256 of a token, for writing the configuration file.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_tenants_and_unknown_keys_are_refused() {
        let text = format!(
            "[[api_keys]]\nsha256 = \"{}\"\ntenant = \"acme\"\nrole = \"write\"\n\n[[api_keys]]\nsha256 = \"{}\"\ntenant = \"acme\"\nrole = \"read\"\n",
            hash_token("w-token"),
            hash_token("r-token")
        );
        let config: AuthConfig = toml::from_str(&text).unwrap();
        let auth = Auth::from_config(&config).unwrap();
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert_eq!(
            auth.authenticate(&with("Bearer w-token")),
            Some(Principal {
                tenant: "acme".into(),
                role: Role::Write
            })
        );
        assert_eq!(
            auth.authenticate(&with("Bearer r-token")).unwrap().role,
            Role::Read
        );
        assert_eq!(auth.authenticate(&with("Bearer nope")), None);
        assert_eq!(auth.authenticate(&with("w-token")), None);
        assert_eq!(auth.authenticate(&HeaderMap::new()), None);
        assert!(Auth::from_config(&AuthConfig::default())
            .unwrap()
            .authenticate(&HeaderMap::new())
            .is_some());
    }
}
