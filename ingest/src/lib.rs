//! Host-side storage of encrypted chunks (vector store + keyword index behind
//! one trait); on the client side, reading and cutting files ([`extract`],
//! [`chunking`]), the upload job ([`upload`]) and the API client that
//! encrypts before it sends ([`client`]) over the ciphertext-only HTTP
//! client ([`remote`]).

pub mod backend;
pub mod chunking;
pub mod client;
pub mod edge_store;
pub mod extract;
pub mod keyword;
pub mod qdrant_store;
pub mod ranking;
pub mod rebuild;
pub mod reindex;
pub mod remote;
pub mod store;
pub mod upload;

pub use backend::StoreSpec;
pub use edge_store::EdgeStore;
pub use qdrant_store::{QdrantOptions, QdrantStore};
pub use store::{Collection, Store, StoreError};
