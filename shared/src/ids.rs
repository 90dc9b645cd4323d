//! Ciphertext token ids: the only kind of token id host-side code accepts.
//!
//! Each sequence carries the id of the key that made it, so a sequence from one
//! key is never silently decrypted, searched or spliced under another.

use serde::{Deserialize, Serialize};

use crate::error::{EeError, Result};

macro_rules! encrypted_ids {
    ($(#[$doc:meta])* $name:ident, $vocab:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            key_id: KeyId,
            ids: Vec<u32>,
        }

        impl $name {
            /// Which vocabulary the ids index.
            pub const VOCAB: &'static str = $vocab;

            /// Wraps ciphertext ids produced under `key_id` (or by a host model
            /// transformed for it).
            pub fn new(key_id: KeyId, ids: Vec<u32>) -> Self {
                Self { key_id, ids }
            }

            /// The key the ids were encrypted under.
            pub fn key_id(&self) -> KeyId {
                self.key_id
            }

            /// The ciphertext ids, in the transformed model's id space.
            pub fn ids(&self) -> &[u32] {
                &self.ids
            }

            /// Number of tokens.
            pub fn len(&self) -> usize {
                self.ids.len()
            }

            /// True when there are no tokens.
            pub fn is_empty(&self) -> bool {
                self.ids.is_empty()
            }

            /// Checks every id is inside a vocabulary of `size` ids: the host
            /// validates before it feeds ids to a model.
            pub fn validate(&self, size: usize) -> crate::Result<()> {
                match self.ids.iter().find(|&&c| c as usize >= size) {
                    Some(&id) => Err(crate::EeError::OutOfVocabulary {
                        id,
                        vocab: $vocab,
                        size,
                    }),
                    None => Ok(()),
                }
            }
        }
    };
}

encrypted_ids!(
    /// Encrypted token ids of the encoder vocabulary (`π_enc` applied).
    EncEncoderIds,
    "encoder"
);
encrypted_ids!(
    /// Encrypted token ids of the generator vocabulary (`π_gen` applied).
    EncGeneratorIds,
    "generator"
);

/// Public identifier of a key: a hash that reveals nothing of the secret. It
/// binds collections, ciphertext and host artifacts to the key that made them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct KeyId([u8; 16]);

impl KeyId {
    /// The id with these bytes (the client derives them from its key).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        KeyId(bytes)
    }

    /// Raw bytes of the id.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for KeyId {
    type Error = EeError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl std::str::FromStr for KeyId {
    type Err = EeError;
    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| EeError::InvalidArgument("a key id is 32 hex digits".into()))?;
        Ok(KeyId(out))
    }
}
