//! Retrieval (dense + BM25 + fusion), generation and the axum REST API. The
//! HTTP stack is a dependency already so the whole tree is proven to build;
//! the service lands with the host-service issue.

pub use axum;
pub use tokio;
