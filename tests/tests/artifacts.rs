//! Host artifacts: what `eerag transform` writes, and what it must not.

use eerag_client::cipher::{ClientCipher, ModelShape};
use eerag_client::transform;
use eerag_client::Key;
use eerag_core::artifacts::{HostArtifacts, MANIFEST_FORMAT};
use eerag_core::gguf;
use eerag_core::EeError;
use eerag_tests::fixture;

#[test]
fn artifacts_hold_only_permuted_weights_and_a_verifiable_manifest() {
    let f = fixture();
    let m = f.artifacts.manifest();
    assert_eq!(m.format, MANIFEST_FORMAT);
    assert_eq!(m.key_id, f.key.id());
    assert_eq!((m.encoder.vocab_size, m.encoder.dim), (30522, 384));
    assert_eq!(m.generator.vocab_size, 49152);
    assert!(!m.generator.has_output_head);
    assert_eq!(
        m.encoder.base_sha256,
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    );

    // Exactly the listed files, and no tokenizer among them.
    let root = f.artifacts.encoder_dir().parent().unwrap().to_path_buf();
    let mut found: Vec<String> = walk(&root)
        .into_iter()
        .map(|p| {
            p.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    let mut expected: Vec<String> = m.files.keys().cloned().collect();
    expected.push("manifest.json".into());
    expected.sort();
    assert_eq!(found, expected);
    assert!(found.iter().all(|f| !f.contains("tokenizer")));
    let md = gguf::metadata(&f.artifacts.generator_path()).unwrap();
    // The one tokenizer key left is the opaque vocabulary llama.cpp needs:
    // "none", naming no token, and the size.
    assert!(
        md.iter()
            .all(|(k, v)| !k.starts_with("tokenizer.") || gguf::is_opaque_vocabulary(k, v)),
        "GGUF kept tokenizer metadata"
    );
    assert!(md.contains_key(gguf::TOKENIZER_MODEL_KEY));
    assert_eq!(
        md["llama.vocab_size"].to_u32().unwrap() as usize,
        m.generator.vocab_size
    );
    assert!(md.contains_key("llama.block_count"));

    // The manifest carries no key material: the key id is its only key-derived value.
    let text = std::fs::read_to_string(root.join("manifest.json")).unwrap();
    assert!(!text.contains(&hex_of(&eerag_tests::TEST_SECRET)));
}

#[test]
fn tampered_artifacts_fail_verification() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a");
    let key = Key::from_secret([8; 32]);
    transform::transform(
        &key,
        &f.models.encoder_dir(),
        &f.models.generator_gguf(),
        &out,
        false,
    )
    .unwrap();
    // A second transform into a non-empty directory needs --force.
    let again = transform::transform(
        &key,
        &f.models.encoder_dir(),
        &f.models.generator_gguf(),
        &out,
        false,
    );
    assert!(matches!(again, Err(EeError::Artifacts { .. })));
    let config = out.join("encoder/config.json");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push(' ');
    std::fs::write(&config, text).unwrap();
    assert!(HostArtifacts::open(&out, false).is_ok());
    assert!(matches!(
        HostArtifacts::open(&out, true),
        Err(EeError::Artifacts { .. })
    ));
}

#[test]
fn ciphertext_of_one_key_is_refused_by_another() {
    let f = fixture();
    let shape = ModelShape {
        encoder_vocab: 30522,
        embedding_dim: 384,
        generator_vocab: 49152,
    };
    let other = ClientCipher::new(&Key::generate().unwrap(), shape);
    let ids = f
        .sides
        .generator_tokenizer
        .encode("privileged and confidential")
        .unwrap();
    let c = f.sides.cipher.encrypt_generator(&ids).unwrap();
    assert!(matches!(
        other.decrypt_generator(&c),
        Err(EeError::KeyMismatch { .. })
    ));
    assert_eq!(f.sides.cipher.decrypt_generator(&c).unwrap(), ids);
    let e = f
        .sides
        .cipher
        .encrypt_encoder(&f.sides.encoder_tokenizer.encode("x").unwrap())
        .unwrap();
    assert!(matches!(
        other.decrypt_encoder(&e),
        Err(EeError::KeyMismatch { .. })
    ));
    // Metadata sealed under one key does not open under another.
    let blob = f
        .key
        .metadata_cipher()
        .seal(b"matter-4411/witness.pdf", b"c")
        .unwrap();
    assert!(matches!(
        Key::generate().unwrap().metadata_cipher().open(&blob, b"c"),
        Err(EeError::MetadataAuth)
    ));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn artifacts_of_another_key_are_refused_not_garbage() {
    let f = fixture();
    let other = Key::from_secret([0x5a; 32]);
    let loaded = eerag_client::side_by_side::SideBySide::load(
        &other,
        &f.models,
        &f.artifacts,
        &candle_core::Device::Cpu,
    );
    assert!(matches!(loaded, Err(EeError::KeyMismatch { .. })));
}

#[test]
fn transformed_models_are_not_transformed_again() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let key = Key::from_secret([9; 32]);
    let twice = transform::transform(
        &key,
        &f.models.encoder_dir(),
        &f.artifacts.generator_path(),
        &dir.path().join("a"),
        false,
    );
    assert!(matches!(twice, Err(EeError::Model(m)) if m.contains("no tokenizer metadata")));
    let twice = transform::transform(
        &key,
        &f.artifacts.encoder_dir(),
        &f.models.generator_gguf(),
        &dir.path().join("b"),
        false,
    );
    assert!(matches!(twice, Err(EeError::Model(m)) if m.contains("already transformed")));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "left files behind"
    );
}
