//! How to reach a Qdrant server: [`QdrantOptions`] and the parsing of
//! `qdrant://` URLs.

use std::time::Duration;

use crate::store::{Result, StoreError};

/// How to reach and lay out collections on a Qdrant server or cluster.
#[derive(Clone)]
pub struct QdrantOptions {
    /// gRPC endpoint, `http://host:6334` or `https://host:6334` (TLS with the
    /// system's roots; `SSL_CERT_FILE` adds a private CA).
    pub url: String,
    /// Qdrant API key (never logged).
    pub api_key: Option<String>,
    /// Prefix of eerag's Qdrant collection names, so a cluster can be shared.
    pub collection_prefix: String,
    /// Shards of a new collection (Qdrant's default when unset).
    pub shard_number: Option<u32>,
    /// Copies of each shard of a new collection.
    pub replication_factor: Option<u32>,
    /// Replicas that must acknowledge a write.
    pub write_consistency_factor: Option<u32>,
    /// Deadline of one request.
    pub timeout: Duration,
    /// Deadline of connecting.
    pub connect_timeout: Duration,
    /// Attempts of a request that failed for want of a server (with
    /// exponential backoff between them) before the store reports it
    /// unavailable.
    pub attempts: u32,
}

impl std::fmt::Debug for QdrantOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantOptions")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("collection_prefix", &self.collection_prefix)
            .field("shard_number", &self.shard_number)
            .field("replication_factor", &self.replication_factor)
            .field("write_consistency_factor", &self.write_consistency_factor)
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl QdrantOptions {
    /// Options for `url`: `qdrant://host:port` (plain gRPC),
    /// `qdrants://host:port` (TLS), or an `http://` / `https://` gRPC URL.
    /// The port defaults to 6334.
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = || {
            StoreError::Config(format!(
                "{url:?} is not a Qdrant URL: use qdrant://host:6334, qdrants://host:6334 (TLS), http:// or https://"
            ))
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let scheme = match scheme {
            "qdrant" | "http" => "http",
            "qdrants" | "https" => "https",
            _ => return Err(bad()),
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || authority.contains('@') {
            return Err(bad());
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.ends_with(']') || port.parse::<u16>().is_ok())
            && !authority.ends_with(']');
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:6334")
        };
        Ok(Self {
            url: format!("{scheme}://{authority}"),
            api_key: None,
            collection_prefix: "eerag.".into(),
            shard_number: None,
            replication_factor: None,
            write_consistency_factor: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            attempts: 4,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let o = QdrantOptions::from_url("qdrant://db.internal").unwrap();
        assert_eq!(o.url, "http://db.internal:6334");
        let o = QdrantOptions::from_url("qdrants://db.internal:7000/").unwrap();
        assert_eq!(o.url, "https://db.internal:7000");
        let o = QdrantOptions::from_url("http://127.0.0.1:6334").unwrap();
        assert_eq!(o.url, "http://127.0.0.1:6334");
        let o = QdrantOptions::from_url("qdrant://[::1]").unwrap();
        assert_eq!(o.url, "http://[::1]:6334");
        let o = QdrantOptions::from_url("qdrant://[::1]:7001").unwrap();
        assert_eq!(o.url, "http://[::1]:7001");
        for bad in [
            "db:6334",
            "ftp://db",
            "qdrant://",
            "qdrant://u:p@db",
            "qdrant://db/x",
        ] {
            assert!(QdrantOptions::from_url(bad).is_err(), "{bad}");
        }
        let mut o = QdrantOptions::from_url("qdrant://db").unwrap();
        o.api_key = Some("secret-key".into());
        assert!(!format!("{o:?}").contains("secret-key"));
    }
}
