//! The host: retrieval (dense + BM25 + reciprocal-rank fusion), generation,
//! and the axum REST API. Host code takes only ciphertext types and host
//! artifacts: there is no key and no tokenizer here.

pub mod api;
pub mod auth;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod openapi;
pub mod server;
pub mod service;
pub mod versions;
