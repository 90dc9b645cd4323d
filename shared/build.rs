//! Works around llama-cpp-sys-2 0.1.161 with dynamic backends (the default):
//! its build script "copies" llama.cpp's shared libraries into
//! `target/<profile>/` and `deps/` by hard-linking the unversioned names,
//! which are symlinks, so the copies dangle (eerag's binary finds the real
//! files through its rpath, see query/build.rs). The next build of
//! llama-cpp-sys-2 with other features in the same target directory (say
//! `cargo test -p eerag-core` after a workspace build) then stops on them
//! with "File exists". This script runs right after every such build and
//! removes the dangling links, and nothing else.
use std::path::Path;

fn main() {
    if std::env::var_os("CARGO_FEATURE_LLAMA_CPP_DYNAMIC_BACKENDS").is_none() {
        return;
    }
    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        return;
    };
    // OUT_DIR is target/<profile>/build/<package>-<hash>/out.
    let Some(profile_dir) = Path::new(&out_dir).ancestors().nth(3) else {
        return;
    };
    for dir in [
        profile_dir.to_path_buf(),
        profile_dir.join("deps"),
        profile_dir.join("examples"),
    ] {
        for name in [
            "libllama.so",
            "libllama-common.so",
            "libggml.so",
            "libggml-base.so",
        ] {
            let link = dir.join(name);
            let is_symlink =
                std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink());
            if is_symlink && std::fs::metadata(&link).is_err() {
                let _ = std::fs::remove_file(&link);
            }
        }
    }
}
