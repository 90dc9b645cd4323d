//! The client's secret key (docs/design.md §2). Client-side only: host code never
//! takes a [`Key`], only the [`KeyId`] it publishes.
//!
//! The file holds one 256-bit master secret. Every sub-key (vocabulary
//! permutations, the embedding rotation, the metadata AEAD key, the public key
//! id) is derived from it with HKDF-SHA256 under its own label, so one secret
//! can never be reused across roles.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use hkdf::Hkdf;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use eerag_core::error::{EeError, Result};
use eerag_core::KeyId;

use crate::metadata::MetadataCipher;
use crate::rotation::Rotation;
use eerag_core::permutation::Permutation;

const MAGIC: &[u8; 8] = b"EERAGKEY";
/// Format version of key files written by this build.
pub const KEY_FILE_VERSION: u16 = 1;
const HKDF_SALT: &[u8] = b"eerag/v1";
const HEADER_LEN: usize = 8 + 2 + 4;
const CHECKSUM_LEN: usize = 32;

/// Sub-key labels. Changing one changes every derived key: they are part of
/// the file format.
mod label {
    pub const ENCODER_VOCAB: &str = "eerag/v1/encoder-vocab";
    pub const GENERATOR_VOCAB: &str = "eerag/v1/generator-vocab";
    pub const ROTATION: &str = "eerag/v1/embedding-rotation";
    pub const METADATA_AEAD: &str = "eerag/v1/metadata-aead";
    pub const KEY_ID: &str = "eerag/v1/key-id";
    pub const DOCUMENT_ID: &str = "eerag/v1/document-id";
    /// Hashed into the fixed id of [`super::Key::identity`].
    pub const IDENTITY_KEY_ID: &str = "eerag/v1/identity-key";
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct KeyFileBody {
    master_secret: [u8; 32],
    created_unix_secs: u64,
}

/// A client's secret key. Permutations and the rotation are derived on demand
/// for the vocabulary size and dimension of the model at hand, so one key
/// serves any model of the supported families.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct Key {
    master_secret: [u8; 32],
    #[zeroize(skip)]
    created_unix_secs: u64,
    /// The plaintext baseline (see [`Key::identity`]).
    #[zeroize(skip)]
    identity: bool,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(id {})", self.id())
    }
}

impl Key {
    /// A fresh key: 256 bits from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut master_secret = [0u8; 32];
        getrandom::fill(&mut master_secret)
            .map_err(|e| EeError::InvalidArgument(format!("OS random source failed: {e}")))?;
        let created_unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Self {
            master_secret,
            created_unix_secs,
            identity: false,
        })
    }

    /// The plaintext baseline: every permutation is the identity and `R = I`,
    /// so the same pipeline runs on plaintext ids and vectors. It has a fixed
    /// public id and cannot be saved. For equivalence tests and evaluation
    /// only: it protects nothing.
    pub fn identity() -> Self {
        Self {
            master_secret: [0; 32],
            created_unix_secs: 0,
            identity: true,
        }
    }

    /// Whether this is the [`Key::identity`] plaintext baseline.
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// A key from a known secret: for tests and reproducible benchmarks only.
    pub fn from_secret(master_secret: [u8; 32]) -> Self {
        Self {
            master_secret,
            created_unix_secs: 0,
            identity: false,
        }
    }

    /// When the key was generated (seconds since the Unix epoch; 0 if unknown).
    pub fn created_unix_secs(&self) -> u64 {
        self.created_unix_secs
    }

    fn derive(&self, info: &str) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), &self.master_secret);
        let mut out = [0u8; 32];
        hk.expand(info.as_bytes(), &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }

    fn stream(&self, info: &str) -> ChaCha20Rng {
        let mut seed = self.derive(info);
        let rng = ChaCha20Rng::from_seed(seed);
        seed.zeroize();
        rng
    }

    /// The public key id: HKDF output under its own label, hashed once more.
    pub fn id(&self) -> KeyId {
        let digest = if self.identity {
            Sha256::digest(label::IDENTITY_KEY_ID)
        } else {
            Sha256::digest(self.derive(label::KEY_ID))
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        KeyId::from_bytes(id)
    }

    /// `π_enc` for an encoder vocabulary of `vocab_size` ids.
    pub fn encoder_permutation(&self, vocab_size: usize) -> Permutation {
        if self.identity {
            return Permutation::identity(vocab_size, "encoder");
        }
        let mut rng = self.stream(&format!("{}/{vocab_size}", label::ENCODER_VOCAB));
        Permutation::fisher_yates(vocab_size, &mut rng, "encoder")
    }

    /// `π_gen` for a generator vocabulary of `vocab_size` ids.
    pub fn generator_permutation(&self, vocab_size: usize) -> Permutation {
        if self.identity {
            return Permutation::identity(vocab_size, "generator");
        }
        let mut rng = self.stream(&format!("{}/{vocab_size}", label::GENERATOR_VOCAB));
        Permutation::fisher_yates(vocab_size, &mut rng, "generator")
    }

    /// The orthogonal rotation `R` of a `dim`-dimensional embedding space.
    pub fn rotation(&self, dim: usize) -> Rotation {
        if self.identity {
            return Rotation::identity(dim);
        }
        let mut rng = self.stream(&format!("{}/{dim}", label::ROTATION));
        Rotation::random(dim, &mut rng)
    }

    /// The AEAD that seals metadata (file names, titles, offsets, previews).
    pub fn metadata_cipher(&self) -> MetadataCipher {
        MetadataCipher::new(self.derive(label::METADATA_AEAD), self.id())
    }

    /// The key of [`crate::cipher::ClientCipher::document_id`]: document ids
    /// are keyed hashes, so the host cannot confirm a guess of a document's
    /// content by hashing it.
    pub fn document_id_key(&self) -> [u8; 32] {
        self.derive(label::DOCUMENT_ID)
    }

    /// Serialises the key file: magic, version, bincode body, SHA-256 checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = KeyFileBody {
            master_secret: self.master_secret,
            created_unix_secs: self.created_unix_secs,
        };
        let encoded = bincode::serde::encode_to_vec(&body, bincode::config::standard())
            .expect("a fixed-size struct always encodes");
        let mut out = Vec::with_capacity(HEADER_LEN + encoded.len() + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&KEY_FILE_VERSION.to_le_bytes());
        out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        out.extend_from_slice(&encoded);
        let mut encoded = encoded;
        encoded.zeroize();
        let checksum = Sha256::digest(&out);
        out.extend_from_slice(&checksum);
        out
    }

    /// Parses a key file; `path` is only used in error messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let invalid = |reason: &str| EeError::KeyInvalid {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(invalid("missing EERAGKEY header"));
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != KEY_FILE_VERSION {
            return Err(EeError::KeyVersion {
                path: path.to_path_buf(),
                found: version,
                supported: KEY_FILE_VERSION,
            });
        }
        let body_len = u32::from_le_bytes(bytes[10..14].try_into().expect("4 bytes")) as usize;
        let expected_len = HEADER_LEN
            .checked_add(body_len)
            .and_then(|n| n.checked_add(CHECKSUM_LEN));
        if expected_len != Some(bytes.len()) {
            return Err(invalid("truncated or padded file"));
        }
        let (signed, checksum) = bytes.split_at(HEADER_LEN + body_len);
        if Sha256::digest(signed).as_slice() != checksum {
            return Err(EeError::KeyCorrupted {
                path: path.to_path_buf(),
            });
        }
        let (body, used): (KeyFileBody, usize) =
            bincode::serde::decode_from_slice(&signed[HEADER_LEN..], bincode::config::standard())
                .map_err(|_| invalid("undecodable body"))?;
        if used != body_len {
            return Err(invalid("trailing bytes in body"));
        }
        Ok(Self {
            master_secret: body.master_secret,
            created_unix_secs: body.created_unix_secs,
            identity: false,
        })
    }

    /// Writes the key file with mode 0600. Refuses to replace an existing file
    /// unless `overwrite` is set: losing a key makes its data unreadable.
    ///
    /// The bytes go to a private temporary file beside `path`, are synced, and
    /// only then take the final name (a hard link when the name must be new, a
    /// rename when replacing), so a crash never leaves a half-written key where
    /// a good one was or was expected.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<()> {
        if self.identity {
            return Err(EeError::InvalidArgument(
                "the identity (plaintext) key cannot be saved".into(),
            ));
        }
        if !overwrite && path.exists() {
            return Err(EeError::KeyExists {
                path: path.to_path_buf(),
            });
        }
        let file_name = path.file_name().ok_or_else(|| {
            EeError::InvalidArgument(format!("{} is not a file name", path.display()))
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce)
            .map_err(|e| EeError::InvalidArgument(format!("OS random source failed: {e}")))?;
        tmp_name.push(format!(".tmp-{}", hex::encode(nonce)));
        let tmp = path.with_file_name(tmp_name);
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut bytes = self.to_bytes();
        let written = opts.open(&tmp).and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_all()
        });
        bytes.zeroize();
        let placed = written.and_then(|()| {
            if overwrite {
                std::fs::rename(&tmp, path)
            } else {
                std::fs::hard_link(&tmp, path).and_then(|()| std::fs::remove_file(&tmp))
            }
        });
        placed.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                EeError::KeyExists {
                    path: path.to_path_buf(),
                }
            } else {
                EeError::io(path, e)
            }
        })
    }

    /// Reads and verifies a key file.
    pub fn load(path: &Path) -> Result<Self> {
        let mut bytes = std::fs::read(path).map_err(|e| EeError::io(path, e))?;
        let key = Self::from_bytes(&bytes, path);
        bytes.zeroize();
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.eekey");
        let key = Key::generate().unwrap();
        key.save(&path, false).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = Key::load(&path).unwrap();
        assert_eq!(back.id(), key.id());
        assert_eq!(
            back.generator_permutation(1000),
            key.generator_permutation(1000)
        );
        assert!(matches!(
            key.save(&path, false),
            Err(EeError::KeyExists { .. })
        ));
        // Replace a world-readable file: the new one is private, and no
        // temporary file is left behind.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let other = Key::from_secret([3; 32]);
        other.save(&path, true).unwrap();
        assert_eq!(Key::load(&path).unwrap().id(), other.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn damaged_key_files_are_clear_errors() {
        let p = Path::new("k");
        let good = Key::from_secret([9; 32]).to_bytes();
        for cut in 0..good.len() {
            assert!(
                Key::from_bytes(&good[..cut], p).is_err(),
                "truncated at {cut}"
            );
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(Key::from_bytes(&bad, p).is_err(), "flipped byte {i}");
        }
        let mut future = good.clone();
        future[8] = 2;
        assert!(matches!(
            Key::from_bytes(&future, p),
            Err(EeError::KeyVersion { found: 2, .. })
        ));
        assert!(matches!(
            Key::from_bytes(b"hello world, not a key", p),
            Err(EeError::KeyInvalid { .. })
        ));
    }

    #[test]
    fn sub_keys_are_independent_and_key_specific() {
        let a = Key::from_secret([1; 32]);
        let b = Key::from_secret([2; 32]);
        assert_ne!(a.id(), b.id());
        assert_ne!(a.encoder_permutation(500), b.encoder_permutation(500));
        // Same size, different role: different permutations.
        assert_ne!(
            a.encoder_permutation(500).forward_table(),
            a.generator_permutation(500).forward_table()
        );
        assert_eq!(a.rotation(8), Key::from_secret([1; 32]).rotation(8));
        let id: KeyId = a.id().to_string().parse().unwrap();
        assert_eq!(id, a.id());
    }
}
