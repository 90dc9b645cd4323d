//! eerag's EE core: keys, token permutations, metadata AEAD, exact model
//! transforms, model loading, tokenizers and ciphertext wire types.
//!
//! The plaintext boundary is visible in the modules: [`key`], [`client`] and
//! [`tokenize`] are client-side; host-side code takes only [`ids`] (ciphertext
//! token ids), [`transform::HostArtifacts`] and the models in [`models`].

pub mod client;
pub mod convert;
pub mod device;
pub mod error;
pub mod gguf;
pub mod hash;
pub mod ids;
pub mod key;
pub mod metadata;
pub mod models;
pub mod permutation;
pub mod rotation;
pub mod sampling;
pub mod side_by_side;
pub mod tokenize;
pub mod transform;
pub mod wire;

pub use error::{EeError, Result};
pub use ids::{EncEncoderIds, EncGeneratorIds};
pub use key::{Key, KeyId};
