//! The binaries run as a user would: `eerag`'s client commands and
//! `eerag-host`, the host's own binary (serve, migrate, re-embed): clear
//! errors, exit codes, and never a panic on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use eerag_tests::process::host_binary;

mod attack;
mod boundary;
mod client;
mod eval;
mod gateway;
mod reindex;
mod serve;

fn eerag(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eerag"))
        .args(args)
        .output()
        .expect("running eerag")
}

fn eerag_host(args: &[&str]) -> Output {
    Command::new(host_binary())
        .args(args)
        .output()
        .expect("running eerag-host")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

fn models_dir() -> PathBuf {
    std::env::var_os("EERAG_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.eekey");
    let o = eerag(&["keygen", "--out", path(&key)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("wrote key "), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let before = std::fs::read(&key).unwrap();
    assert_clean_failure(&eerag(&["keygen", "--out", path(&key)]), "already exists");
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "refused keygen changed the key"
    );
    assert!(eerag(&["keygen", "--out", path(&key), "--force"])
        .status
        .success());
    assert_ne!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn damaged_key_files_are_clear_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.eekey");
    assert!(eerag(&["keygen", "--out", path(&key)]).status.success());
    let good = std::fs::read(&key).unwrap();
    let out = dir.path().join("artifacts");
    let models = models_dir();
    let transform = |k: &Path| {
        eerag(&[
            "transform",
            "--key",
            path(k),
            "--out",
            path(&out),
            "--models",
            path(&models),
        ])
    };

    let truncated = dir.path().join("truncated.eekey");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    assert_clean_failure(&transform(&truncated), "truncated");

    let corrupted = dir.path().join("corrupted.eekey");
    let mut bad = good.clone();
    bad[20] ^= 1;
    std::fs::write(&corrupted, &bad).unwrap();
    assert_clean_failure(&transform(&corrupted), "corrupted");

    let future = dir.path().join("future.eekey");
    let mut bad = good.clone();
    bad[8] = 9;
    std::fs::write(&future, &bad).unwrap();
    assert_clean_failure(&transform(&future), "format version 9");

    let empty = dir.path().join("empty.eekey");
    std::fs::write(&empty, b"").unwrap();
    assert_clean_failure(&transform(&empty), "not an eerag key");

    assert_clean_failure(&transform(&dir.path().join("absent.eekey")), "absent.eekey");
    assert!(!out.exists(), "a failed transform left output behind");
}

#[test]
fn transform_writes_artifacts_and_replaces_them_only_when_forced() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.eekey");
    assert!(eerag(&["keygen", "--out", path(&key)]).status.success());
    let out = dir.path().join("artifacts");
    let models = models_dir();
    let args = [
        "transform",
        "--key",
        path(&key),
        "--out",
        path(&out),
        "--models",
        path(&models),
    ];
    let o = eerag(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("manifest.json").exists());
    assert!(out.join("generator/model.gguf").exists());
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    assert_clean_failure(&eerag(&args), "not empty");
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest);
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(eerag(&forced).status.success());
    assert_ne!(std::fs::read(out.join("manifest.json")).unwrap(), manifest);
    // --force never deletes a directory that is not an artifacts directory.
    let precious = dir.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("notes.txt"), b"keep me").unwrap();
    let mut elsewhere = forced.clone();
    elsewhere[4] = path(&precious);
    assert_clean_failure(&eerag(&elsewhere), "holds no eerag artifacts");
    assert_eq!(
        std::fs::read(precious.join("notes.txt")).unwrap(),
        b"keep me"
    );
    // No staging or old directories are left beside the output.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn models_fetch_without_pip_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_eerag"))
        .args(["models", "fetch", "--models", path(dir.path())])
        .env("PYTHON", "/nonexistent/python3")
        .output()
        .unwrap();
    assert_clean_failure(&o, "cannot run");
}

#[test]
fn the_demo_runs_the_whole_pipeline_and_cleans_up() {
    let o = Command::new(env!("CARGO_BIN_EXE_eerag"))
        .args(["demo", "--models", path(&models_dir())])
        // The checkout's sample corpus, as from a fresh clone.
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running eerag demo");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("uploaded 3 files"), "{out}");
    for q in ["Q1:", "Q2:", "Q3:"] {
        assert!(out.contains(q), "{out}");
    }
    assert!(out.matches("source: sample/").count() >= 3, "{out}");
    assert!(out.contains("clinic-handbook.md"), "{out}");
    assert!(out.contains("the host"), "{out}");
    assert!(out.contains("removed the demo's temporary files"), "{out}");
}
