//! Reading and chunking files (client side), the host ingest pipeline and the
//! batch re-indexing jobs.
//!
//! So far: the keyword index ([`keyword`]). The vector store (qdrant-edge) is
//! a dependency already so the whole tree is proven to build.

pub mod keyword;

pub use qdrant_edge;
