//! Client-side encryption: the one place that maps between plaintext and
//! ciphertext token ids. Host code never constructs a [`ClientCipher`].

use crate::key::Key;
use crate::metadata::MetadataCipher;
use crate::rotation::Rotation;
use eerag_core::error::{EeError, Result};
use eerag_core::ids::{EncEncoderIds, EncGeneratorIds};
use eerag_core::permutation::Permutation;
use eerag_core::KeyId;

/// Sizes of the models a key is applied to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelShape {
    /// Encoder vocabulary size (30,522 for all-MiniLM-L6-v2).
    pub encoder_vocab: usize,
    /// Encoder embedding dimension (384 for all-MiniLM-L6-v2).
    pub embedding_dim: usize,
    /// Generator vocabulary size (49,152 for SmolLM2).
    pub generator_vocab: usize,
}

/// A key expanded for one pair of models: permutations, rotation, AEAD.
#[derive(Debug)]
pub struct ClientCipher {
    key_id: KeyId,
    encoder: Permutation,
    generator: Permutation,
    rotation: Rotation,
    metadata: MetadataCipher,
    document_id_key: [u8; 32],
}

impl Drop for ClientCipher {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.document_id_key);
    }
}

impl ClientCipher {
    /// Expands `key` for models of the given shape.
    pub fn new(key: &Key, shape: ModelShape) -> Self {
        Self {
            key_id: key.id(),
            encoder: key.encoder_permutation(shape.encoder_vocab),
            generator: key.generator_permutation(shape.generator_vocab),
            rotation: key.rotation(shape.embedding_dim),
            metadata: key.metadata_cipher(),
            document_id_key: key.document_id_key(),
        }
    }

    /// The id under which a document with this content is stored: a keyed
    /// hash (HMAC-SHA256, 128 bits as hex), so re-uploading the same content
    /// replaces rather than duplicates, and nobody without the key can
    /// compute a guessed document's id (its lengths and repeated ids stay
    /// visible: docs/design.md §6).
    pub fn document_id(&self, content: &[u8]) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.document_id_key)
            .expect("HMAC takes any key length");
        mac.update(content);
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// The public id of the key.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Encrypts encoder token ids.
    pub fn encrypt_encoder(&self, ids: &[u32]) -> Result<EncEncoderIds> {
        Ok(EncEncoderIds::new(
            self.key_id,
            self.encoder.apply_all(ids)?,
        ))
    }

    /// Decrypts encoder token ids, refusing ciphertext of another key.
    pub fn decrypt_encoder(&self, c: &EncEncoderIds) -> Result<Vec<u32>> {
        self.check(c.key_id())?;
        self.encoder.invert_all(c.ids())
    }

    /// Encrypts generator token ids.
    pub fn encrypt_generator(&self, ids: &[u32]) -> Result<EncGeneratorIds> {
        Ok(EncGeneratorIds::new(
            self.key_id,
            self.generator.apply_all(ids)?,
        ))
    }

    /// Decrypts generator token ids, refusing ciphertext of another key.
    pub fn decrypt_generator(&self, c: &EncGeneratorIds) -> Result<Vec<u32>> {
        self.check(c.key_id())?;
        self.generator.invert_all(c.ids())
    }

    /// Decrypts one generator id, e.g. while streaming. The caller has already
    /// checked the stream's key id.
    pub fn decrypt_generator_id(&self, c: u32) -> Result<u32> {
        self.generator.invert(c)
    }

    /// The embedding rotation `R`.
    pub fn rotation(&self) -> &Rotation {
        &self.rotation
    }

    /// The metadata AEAD.
    pub fn metadata(&self) -> &MetadataCipher {
        &self.metadata
    }

    /// `π_gen`, for code that must map logits or weights (tests, attacks).
    pub fn generator_permutation(&self) -> &Permutation {
        &self.generator
    }

    /// `π_enc`, for code that must map weights (tests, attacks).
    pub fn encoder_permutation(&self) -> &Permutation {
        &self.encoder
    }

    fn check(&self, found: KeyId) -> Result<()> {
        if found == self.key_id {
            Ok(())
        } else {
            Err(EeError::KeyMismatch {
                expected: self.key_id.to_string(),
                found: found.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: ModelShape = ModelShape {
        encoder_vocab: 1000,
        embedding_dim: 8,
        generator_vocab: 2000,
    };

    #[test]
    fn round_trip_every_id_and_wrong_key_fails() {
        let a = ClientCipher::new(&Key::from_secret([1; 32]), SHAPE);
        let b = ClientCipher::new(&Key::from_secret([2; 32]), SHAPE);
        let all_enc: Vec<u32> = (0..1000).collect();
        let all_gen: Vec<u32> = (0..2000).collect();
        let ce = a.encrypt_encoder(&all_enc).unwrap();
        let cg = a.encrypt_generator(&all_gen).unwrap();
        assert_ne!(ce.ids(), &all_enc[..]);
        assert_eq!(a.decrypt_encoder(&ce).unwrap(), all_enc);
        assert_eq!(a.decrypt_generator(&cg).unwrap(), all_gen);
        assert!(matches!(
            b.decrypt_encoder(&ce),
            Err(EeError::KeyMismatch { .. })
        ));
        assert!(matches!(
            b.decrypt_generator(&cg),
            Err(EeError::KeyMismatch { .. })
        ));
        assert!(a.encrypt_generator(&[2000]).is_err());
        assert!(cg.validate(2000).is_ok());
        assert!(EncGeneratorIds::new(a.key_id(), vec![5, 2000])
            .validate(2000)
            .is_err());
    }
}
