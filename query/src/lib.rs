//! The host: retrieval (dense + BM25 + reciprocal-rank fusion), generation,
//! the axum REST API, and the operator's command line ([`cli`]). It links
//! only `eerag-core`, `eerag-store` and `eerag-remote`: no key, no
//! tokenizer, no AEAD and no client code, which `tests/boundary.rs` checks
//! in the dependency graph (docs/design.md, "The plaintext boundary").

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod openapi;
pub mod server;
pub mod service;
pub mod versions;
