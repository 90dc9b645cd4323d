//! Which build of llama.cpp's CPU kernels this process runs (feature
//! `llama-cpp-dynamic-backends`, on by default).
//!
//! With dynamic backends llama-cpp-sys-2 compiles ggml's CPU backend once per
//! x86 level (`libggml-cpu-haswell.so`, `-zen4.so`, …), so one binary gets
//! AVX-512 kernels where the CPU has them and AVX2 ones where it does not.
//! ggml's own loader takes the module whose `ggml_backend_score` is highest;
//! eerag does the same, except that it never picks a module on the skip
//! list by itself, and lets `EERAG_GGML_CPU` name one.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use llama_cpp_sys_2 as sys;

/// Names a module to load instead of the best one, e.g. `haswell` (AVX2) or
/// `zen4` (AVX-512): for comparing kernels on one machine, or for a CPU that
/// misreports what it can run.
pub const VARIANT_VAR: &str = "EERAG_GGML_CPU";

/// Modules passed over unless [`VARIANT_VAR`] names them, with why.
const SKIPPED: &[(&str, &str)] = &[(
    "sapphirerapids",
    "its AMX kernels crash in the first prompt (SIGSEGV in ggml_backend_amx_mul_mat on \
     SmolLM2's Q4_1 GGUF, llama.cpp as vendored by llama-cpp-sys-2 0.1.161, measured on a \
     Sapphire Rapids VM where AMX itself works)",
)];

/// File names of the CPU modules: `libggml-cpu-<variant>.so`.
const PREFIX: &str = "libggml-cpu-";
const SUFFIX: &str = ".so";

/// The CPU module loaded into llama.cpp's registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuModule {
    /// Its variant, e.g. `zen4`.
    pub variant: String,
    /// The file it was loaded from.
    pub path: PathBuf,
}

/// A module found on disk, with what it says about this CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Candidate {
    variant: String,
    path: PathBuf,
    /// `ggml_backend_score()`: 0 when this CPU lacks an instruction the
    /// module needs, higher for more capable builds.
    score: i32,
}

/// Finds, chooses and registers the CPU module; call once, before llama.cpp
/// is initialised.
pub fn load() -> Result<CpuModule, String> {
    let wanted = std::env::var(VARIANT_VAR)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let dirs = search_dirs();
    let candidates = dirs
        .iter()
        .map(|dir| scan(dir))
        .find(|found| !found.is_empty())
        .ok_or_else(|| {
            let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            format!(
                "no llama.cpp CPU module ({PREFIX}*{SUFFIX}) in {}",
                looked.join(" or ")
            )
        })?;
    let chosen = choose(&candidates, wanted.as_deref().map(str::trim))?;
    let path = c_path(&chosen.path)?;
    // SAFETY: a NUL-terminated path to a ggml backend module; ggml keeps the
    // registration for the life of the process.
    let reg = unsafe { sys::ggml_backend_load(path.as_ptr()) };
    if reg.is_null() {
        return Err(format!(
            "ggml could not load {} (its log says why)",
            chosen.path.display()
        ));
    }
    tracing::info!(
        variant = %chosen.variant,
        path = %chosen.path.display(),
        "llama.cpp CPU kernels chosen"
    );
    Ok(CpuModule {
        variant: chosen.variant.clone(),
        path: chosen.path.clone(),
    })
}

/// Where modules are looked for: beside the executable (an installed copy
/// with its modules), then where llama-cpp-sys-2 built them.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    if let Some(dir) = sys::BACKENDS_DIR {
        dirs.push(PathBuf::from(dir));
    }
    dirs
}

/// Every CPU module in `dir`, scored; unreadable ones are left out.
fn scan(dir: &Path) -> Vec<Candidate> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<Candidate> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let variant = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.to_string();
            match score(&path) {
                Ok(score) => Some(Candidate {
                    variant,
                    path,
                    score,
                }),
                Err(e) => {
                    tracing::warn!("skipping llama.cpp CPU module {}: {e}", path.display());
                    None
                }
            }
        })
        .collect();
    found.sort_by(|a, b| a.variant.cmp(&b.variant));
    found
}

/// Opens a module just long enough to ask its `ggml_backend_score`.
fn score(path: &Path) -> Result<i32, String> {
    let c_path = c_path(path)?;
    // SAFETY: dlopen/dlsym/dlclose on a NUL-terminated path; the symbol is
    // ggml's `int ggml_backend_score(void)` and is called while the library
    // is open.
    unsafe {
        let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            return Err(dl_error());
        }
        let symbol = libc::dlsym(handle, c"ggml_backend_score".as_ptr());
        let result = if symbol.is_null() {
            Err("no ggml_backend_score in it".to_string())
        } else {
            let score_fn = std::mem::transmute::<*mut libc::c_void, extern "C" fn() -> i32>(symbol);
            Ok(score_fn())
        };
        libc::dlclose(handle);
        result
    }
}

/// The address of `name` in the loaded module, for the functions ggml's
/// registry does not hand out (`ggml_backend_reg_get_proc_address` has no
/// `ggml_threadpool_pause`).
pub fn symbol(module: &CpuModule, name: &CStr) -> Result<*mut std::ffi::c_void, String> {
    let c_path = c_path(&module.path)?;
    // SAFETY: RTLD_NOLOAD only looks up the library ggml_backend_load
    // opened, which stays loaded for the process's life; closing this
    // handle just drops the reference dlopen added, so the address stays
    // valid.
    unsafe {
        let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return Err(format!(
                "{} is not loaded: {}",
                module.path.display(),
                dl_error()
            ));
        }
        let address = libc::dlsym(handle, name.as_ptr());
        libc::dlclose(handle);
        if address.is_null() {
            return Err(format!(
                "no {} in {}",
                name.to_string_lossy(),
                module.path.display()
            ));
        }
        Ok(address)
    }
}

/// `path` as the C string the loader takes.
fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: path not usable", path.display()))
}

/// The dynamic loader's last error.
fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the
    // next dl* call on this thread; it is copied at once.
    unsafe {
        let message = libc::dlerror();
        if message.is_null() {
            "unknown dynamic loader error".to_string()
        } else {
            CStr::from_ptr(message).to_string_lossy().into_owned()
        }
    }
}

/// The module to load: the one `wanted` names (it must run on this CPU), or
/// the best-scoring one off the skip list.
fn choose<'a>(candidates: &'a [Candidate], wanted: Option<&str>) -> Result<&'a Candidate, String> {
    let names = || {
        candidates
            .iter()
            .map(|c| c.variant.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(wanted) = wanted {
        let candidate = candidates
            .iter()
            .find(|c| c.variant == wanted)
            .ok_or_else(|| {
                format!(
                    "{VARIANT_VAR}={wanted}: no such llama.cpp CPU module (there are: {})",
                    names()
                )
            })?;
        if candidate.score <= 0 {
            return Err(format!(
                "{VARIANT_VAR}={wanted}: this CPU lacks instructions that module needs"
            ));
        }
        return Ok(candidate);
    }
    let mut best: Option<&Candidate> = None;
    for candidate in candidates.iter().filter(|c| c.score > 0) {
        if let Some((_, why)) = SKIPPED.iter().find(|(name, _)| *name == candidate.variant) {
            tracing::info!(
                "passing over llama.cpp CPU module {}: {why}; {VARIANT_VAR}={} loads it anyway",
                candidate.variant,
                candidate.variant
            );
            continue;
        }
        if best.is_none_or(|b| candidate.score > b.score) {
            best = Some(candidate);
        }
    }
    best.ok_or_else(|| {
        format!(
            "no llama.cpp CPU module runs on this CPU (found: {})",
            names()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(variant: &str, score: i32) -> Candidate {
        Candidate {
            variant: variant.into(),
            path: PathBuf::from(format!("{PREFIX}{variant}{SUFFIX}")),
            score,
        }
    }

    #[test]
    fn the_best_scoring_module_off_the_skip_list_is_chosen() {
        let found = [
            candidate("haswell", 64),
            candidate("sapphirerapids", 200),
            candidate("x64", 1),
            candidate("zen4", 160),
            candidate("alderlake", 0),
        ];
        assert_eq!(choose(&found, None).unwrap().variant, "zen4");
        // Only modules this CPU can run count.
        let found = [candidate("haswell", 0), candidate("x64", 1)];
        assert_eq!(choose(&found, None).unwrap().variant, "x64");
        let found = [candidate("haswell", 0), candidate("sapphirerapids", 9)];
        assert!(choose(&found, None)
            .unwrap_err()
            .contains("no llama.cpp CPU module runs"));
    }

    #[test]
    fn a_named_module_is_loaded_if_this_cpu_runs_it() {
        let found = [
            candidate("haswell", 64),
            candidate("sapphirerapids", 200),
            candidate("cannonlake", 0),
        ];
        assert_eq!(choose(&found, Some("haswell")).unwrap().variant, "haswell");
        // The skip list yields to an explicit choice.
        assert_eq!(
            choose(&found, Some("sapphirerapids")).unwrap().variant,
            "sapphirerapids"
        );
        let unknown = choose(&found, Some("zen9")).unwrap_err();
        assert!(
            unknown.contains("no such") && unknown.contains("haswell"),
            "{unknown}"
        );
        let unrunnable = choose(&found, Some("cannonlake")).unwrap_err();
        assert!(unrunnable.contains("lacks instructions"), "{unrunnable}");
    }

    #[test]
    fn the_built_modules_are_found_and_one_runs_here() {
        let dir = sys::BACKENDS_DIR.expect("dynamic backends record their directory");
        let found = scan(Path::new(dir));
        assert!(
            found.iter().any(|c| c.variant == "x64" && c.score > 0),
            "the baseline module is built and runs everywhere: {found:?}"
        );
        let chosen = choose(&found, None).unwrap();
        assert!(chosen.score > 0);
        assert!(SKIPPED.iter().all(|(name, _)| *name != chosen.variant));
    }
}
