//! A local OpenAI-compatible endpoint (`eerag gateway`). Apps send it
//! plaintext as they would to OpenAI; it encrypts with the user's key,
//! calls the host, and decrypts — so an app changes only its base URL.
//! It holds the key and sees plaintext, so it listens on loopback only.
//!
//! [`Gateway::new`] checks the collection, [`serve`] runs it until a
//! shutdown signal: the binary passes Ctrl-C, tests a channel.

mod chat;
mod embeddings;
mod openai;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::client::{ClientError, EncryptedClient};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use chat::chat;
use embeddings::embeddings;
use openai::{models, OpenAiError};

/// The chat model's name in `/v1/models`.
pub const CHAT_MODEL: &str = "eerag-smollm2-135m-instruct";
/// The embedding model's name in `/v1/models`.
pub const EMBEDDING_MODEL: &str = "eerag-all-minilm-l6-v2";
/// The host's limit on answer length.
const MAX_TOKENS: usize = 2048;
/// Largest request body the gateway reads.
const MAX_BODY_BYTES: usize = 16 << 20;
/// Inputs per host embed request.
const EMBED_BATCH: usize = 64;

/// How the gateway answers.
#[derive(Clone)]
pub struct GatewayOptions {
    /// The collection chat completions retrieve from.
    pub collection: String,
    /// Chunks retrieved per question.
    pub k: usize,
    /// The bearer token apps must send; `None` lets any local process in.
    pub api_key: Option<String>,
    /// Answer length when the request does not say.
    pub max_tokens: usize,
}

impl std::fmt::Debug for GatewayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayOptions")
            .field("collection", &self.collection)
            .field("k", &self.k)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

/// Why the gateway cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The listener is not on a loopback address.
    #[error("refusing to listen on {0}: the gateway holds the key and handles plaintext, so it only listens on loopback (127.0.0.1 or ::1)")]
    NotLoopback(SocketAddr),
    /// The host refused or could not be reached (e.g. no such collection).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The listener or the runtime failed.
    #[error("{what}: {source}")]
    Io {
        /// What the gateway was doing.
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// The gateway's state: an encrypting client bound to one collection.
pub struct Gateway {
    client: EncryptedClient,
    api_key: Option<String>,
    collection: String,
    k: usize,
    max_tokens: usize,
}

impl Gateway {
    /// A gateway over `client`, once the host confirms the collection
    /// exists under the client's key.
    pub fn new(client: EncryptedClient, options: GatewayOptions) -> Result<Self, GatewayError> {
        client.require_collection(&options.collection)?;
        Ok(Self {
            client,
            api_key: options.api_key.filter(|k| !k.is_empty()),
            collection: options.collection,
            k: options.k.max(1),
            max_tokens: options.max_tokens.max(1),
        })
    }
}

/// Refuses any address but loopback: the gateway holds the key and
/// handles plaintext.
pub fn check_listen(addr: SocketAddr) -> Result<(), GatewayError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(GatewayError::NotLoopback(addr))
    }
}

/// Serves `gateway` on `listener` (loopback only) until `shutdown`
/// completes, on a runtime of its own. Blocks; call it outside any async
/// runtime (the client's blocking HTTP calls run on the runtime's blocking
/// pool).
pub fn serve(
    listener: std::net::TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| GatewayError::Io { what, source }
    };
    check_listen(listener.local_addr().map_err(io("reading the address"))?)?;
    listener
        .set_nonblocking(true)
        .map_err(io("configuring the listener"))?;
    let gateway = Arc::new(gateway);
    let runtime = tokio::runtime::Runtime::new().map_err(io("starting the async runtime"))?;
    let served = runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(io("configuring the listener"))?;
        axum::serve(listener, router(gateway.clone()))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(io("serving"))
    });
    // The blocking HTTP client inside is dropped outside the runtime.
    drop(runtime);
    drop(gateway);
    served
}

fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .fallback(|| async {
            OpenAiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), guard))
        .with_state(gateway)
}

/// Lets through only requests addressed to a loopback name (a web page
/// that rebinds its own domain to 127.0.0.1 still sends its domain as the
/// Host) and, when the gateway has an API key, carrying it.
async fn guard(
    State(gw): State<Arc<Gateway>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !is_loopback_host(host) {
        return OpenAiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            "the gateway answers only requests addressed to localhost, 127.0.0.1 or [::1]",
        )
        .into_response();
    }
    if let Some(key) = &gw.api_key {
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        if sent != Some(key.as_str()) {
            return OpenAiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "this gateway wants its API key (--api-key) as the bearer token",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_names_pass() {
        for ok in [
            "localhost",
            "127.0.0.1:8090",
            "[::1]:8090",
            "LOCALHOST:1",
            "127.5.0.1",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:8090",
            "10.0.0.1",
            "[::2]:80",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
