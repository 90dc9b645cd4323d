//! Where the host keeps encrypted chunks: one [`Store`] trait with two
//! backends, the embedded store ([`EdgeStore`]: qdrant-edge for vectors and
//! payloads, tantivy for keywords, in-process and on disk) and a Qdrant
//! server or cluster ([`QdrantStore`], over gRPC), chosen by a
//! [`StoreSpec`]; and [`migrate`], which copies collections between them.
//!
//! Everything here takes ciphertext: encrypted token ids, vectors the
//! transformed encoder made, sealed metadata bytes and a key id. Nothing
//! here can read them.

pub mod backend;
/// BM25, the keyword scoring both backends share.
pub mod bm25;
pub mod edge_store;
pub mod keyword;
pub mod migrate;
pub mod qdrant_store;
pub mod ranking;
pub mod store;

pub use backend::StoreSpec;
pub use edge_store::EdgeStore;
pub use qdrant_store::{QdrantOptions, QdrantStore};
pub use store::{Collection, Store, StoreError};
