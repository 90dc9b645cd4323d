//! What both sides of eerag may link: ciphertext token ids and the key id,
//! wire types, devices, model loading and inference (BERT, llama through
//! candle or llama.cpp), GGUF and safetensors reading, permutation tables,
//! sampling, and the host's view of its artifacts.
//!
//! Nothing here holds or derives key material, tokenizes text or decrypts
//! metadata: those live in `eerag-client`. The host crate depends on this
//! one, so a dependency added here lands on the untrusted host; the
//! boundary test (`query/tests/boundary.rs`) refuses the ones that must
//! not (docs/design.md, "The plaintext boundary").

pub mod artifacts;
pub mod convert;
pub mod device;
pub mod error;
pub mod fs;
pub mod gguf;
pub mod hash;
pub mod ids;
pub mod models;
pub mod permutation;
pub mod sampling;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod wire;

pub use error::{EeError, Result};
pub use ids::{EncEncoderIds, EncGeneratorIds, KeyId};
