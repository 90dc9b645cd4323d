//! `eerag-host serve` as a real process: the binary an operator installs
//! serves every API test (the CLI tests' and this crate's).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `eerag-host` binary of this build (`target/<profile>/eerag-host`,
/// beside the test executables' `deps/`). It belongs to another package,
/// so cargo builds it for `cargo test --workspace`, not for one package's
/// tests alone; a binary older than the host's sources is refused rather
/// than tested.
pub fn host_binary() -> PathBuf {
    static CHECKED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("the test executable's path");
            // target/<profile>/deps/<test> → target/<profile>/eerag-host
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("the test executable lives in target/<profile>/deps");
            let host = profile_dir.join(format!("eerag-host{}", std::env::consts::EXE_SUFFIX));
            let rebuild = "run the tests with --workspace, or `cargo build -p eerag-host` (same profile) first";
            let built = std::fs::metadata(&host)
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| panic!("{} is not built: {rebuild}", host.display()));
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            for dir in ["query/src", "shared/src", "store/src", "remote/src"] {
                if let Some(newer) = newer_file(&root.join(dir), built) {
                    panic!(
                        "{} is older than {}: {rebuild}",
                        host.display(),
                        newer.display()
                    );
                }
            }
            host
        })
        .clone()
}

/// A file under `dir` changed after `time`, if there is one.
fn newer_file(dir: &Path, time: std::time::SystemTime) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            if let Some(p) = newer_file(&path, time) {
                return Some(p);
            }
        } else if meta.modified().is_ok_and(|m| m > time) {
            return Some(path);
        }
    }
    None
}

/// A running `eerag-host serve`; its stdout and stderr go to files.
/// Dropping it kills the process.
pub struct HostProcess {
    child: Child,
    /// The base URL it listens on.
    pub url: String,
    /// Its standard output.
    pub stdout: PathBuf,
    /// Its standard error (the log).
    pub stderr: PathBuf,
}

impl HostProcess {
    /// Runs `eerag-host serve ARGS --listen 127.0.0.1:0` with `env` added,
    /// its output in numbered files under `logs`, and waits until it
    /// listens (the line it prints for tests and scripts).
    pub fn serve(args: &[String], env: &[(&str, &str)], logs: &Path) -> HostProcess {
        std::fs::create_dir_all(logs).unwrap();
        let n = std::fs::read_dir(logs).unwrap().count();
        let stdout = logs.join(format!("stdout-{n}.log"));
        let stderr = logs.join(format!("stderr-{n}.log"));
        let mut child = Command::new(host_binary())
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("starting eerag-host serve");
        let started = Instant::now();
        let url = loop {
            let out = std::fs::read_to_string(&stdout).unwrap_or_default();
            if let Some(rest) = out.split("eerag host listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "eerag-host serve exited with {status}: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "eerag-host serve did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        HostProcess {
            child,
            url,
            stdout,
            stderr,
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "eerag-host serve exited with {status}: {}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
