//! Host-side storage of encrypted chunks (vector store + keyword index behind
//! one trait), and, on the client side, reading and chunking files.

pub mod edge_store;
pub mod keyword;
pub mod ranking;
pub mod store;

pub use edge_store::EdgeStore;
pub use store::{Collection, Store, StoreError};
