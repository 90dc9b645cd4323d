//! With llama.cpp's dynamic backends (the default), `eerag-host` and `eerag`
//! (whose package uses this same script) link `libllama.so.0` and
//! `libggml*.so.0`, which llama-cpp-sys-2 builds into its own output
//! directory (the copies it puts in `target/<profile>/` are
//! symlinks that point nowhere). Record that directory, and the binary's
//! own, as the binary's library path, so it runs without `LD_LIBRARY_PATH`.
//! (`cargo run` and `cargo test` set that path themselves.)
fn main() {
    // Cargo reruns a changed script anyway; nothing else it reads changes.
    println!("cargo:rerun-if-env-changed=DEP_LLAMA_BACKENDS_DIR");
    if std::env::var_os("CARGO_FEATURE_LLAMA_CPP_DYNAMIC_BACKENDS").is_none()
        || std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
    {
        return;
    }
    // An installed copy with its libraries beside it.
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,$ORIGIN");
    // Set by llama-cpp-sys-2 (`links = "llama"`): <its OUT_DIR>/backends,
    // next to the <its OUT_DIR>/lib it links from.
    if let Some(backends) = std::env::var_os("DEP_LLAMA_BACKENDS_DIR") {
        let libs = std::path::Path::new(&backends).with_file_name("lib");
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", libs.display());
    }
}
