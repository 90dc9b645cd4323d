//! Reading and chunking files (client side), the host ingest pipeline and the
//! batch re-indexing jobs. The store backends (qdrant-edge + tantivy) are
//! dependencies already so the whole tree is proven to build; the pipeline
//! itself lands with the host-service issue.

pub use qdrant_edge;
pub use tantivy;
