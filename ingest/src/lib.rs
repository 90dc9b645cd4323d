//! The client side of eerag: everything that holds the key or sees
//! plaintext. The key and what it derives ([`key`]: vocabulary permutations,
//! the embedding rotation, the metadata cipher), encrypting ids and sealing
//! metadata ([`cipher`]), the public tokenizers ([`tokenize`]), writing host
//! artifacts ([`transform`]), reading and cutting files ([`extract`],
//! [`chunking`]), the upload job ([`upload`]), the API client that encrypts
//! before it sends ([`client`]), key rotation ([`rekey`]), the local
//! OpenAI-compatible gateway ([`gateway`]) and, with the `cli` feature, the
//! flags the client's commands and the lab share (`cli`).
//!
//! The host never links this crate: the boundary test
//! (`query/tests/boundary.rs`) fails if its binary's dependencies reach it.

pub mod chunking;
pub mod cipher;
#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod extract;
pub mod gateway;
pub mod key;
pub mod metadata;
pub mod rekey;
pub mod rotation;
#[cfg(any(test, feature = "test-support"))]
pub mod side_by_side;
pub mod tokenize;
pub mod transform;
pub mod upload;

pub use key::Key;
