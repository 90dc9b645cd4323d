//! Metadata encryption: file names, titles, offsets and previews travel to the
//! host as opaque XChaCha20-Poly1305 blobs it stores but cannot read.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use eerag_core::error::{EeError, Result};
use eerag_core::KeyId;

const NONCE_LEN: usize = 24;

/// Seals and opens metadata under the key's AEAD sub-key. The key id is bound
/// as associated data, so a blob from another key fails to open.
pub struct MetadataCipher {
    aead: XChaCha20Poly1305,
    key_id: KeyId,
}

impl std::fmt::Debug for MetadataCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MetadataCipher(key {})", self.key_id)
    }
}

impl MetadataCipher {
    pub(crate) fn new(mut key: [u8; 32], key_id: KeyId) -> Self {
        let aead = XChaCha20Poly1305::new((&key).into());
        zeroize::Zeroize::zeroize(&mut key);
        Self { aead, key_id }
    }

    /// Encrypts `plaintext` with a fresh random nonce: `nonce ‖ ciphertext ‖ tag`.
    /// `context` (e.g. a collection name) is authenticated but not encrypted.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| EeError::InvalidArgument(format!("OS random source failed: {e}")))?;
        let aad = self.aad(context);
        let ct = self
            .aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| EeError::InvalidArgument("metadata too large to encrypt".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts a blob from [`seal`](Self::seal) with the same `context`.
    pub fn open(&self, blob: &[u8], context: &[u8]) -> Result<Vec<u8>> {
        if blob.len() < NONCE_LEN {
            return Err(EeError::MetadataAuth);
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let aad = self.aad(context);
        self.aead
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| EeError::MetadataAuth)
    }

    fn aad(&self, context: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(16 + context.len());
        aad.extend_from_slice(self.key_id.as_bytes());
        aad.extend_from_slice(context);
        aad
    }
}

#[cfg(test)]
mod tests {
    use crate::key::Key;
    use eerag_core::EeError;

    #[test]
    fn seal_open_round_trip_and_rejects_wrong_key_or_context() {
        let k = Key::from_secret([5; 32]).metadata_cipher();
        let blob = k.seal(b"contracts/2024/nda.pdf", b"legal").unwrap();
        assert!(!blob.windows(3).any(|w| w == b"nda"));
        assert_eq!(k.open(&blob, b"legal").unwrap(), b"contracts/2024/nda.pdf");
        assert!(matches!(
            k.open(&blob, b"other"),
            Err(EeError::MetadataAuth)
        ));
        let other = Key::from_secret([6; 32]).metadata_cipher();
        assert!(other.open(&blob, b"legal").is_err());
        assert!(k.open(&blob[..10], b"legal").is_err());
        // Fresh nonces: sealing twice gives different blobs.
        assert_ne!(blob, k.seal(b"contracts/2024/nda.pdf", b"legal").unwrap());
    }
}
