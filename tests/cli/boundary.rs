//! The plaintext boundary in the built binaries: no function of a
//! client-only crate is linked into `eerag-host` (the dependency graph is
//! checked in `query/tests/boundary.rs`; this catches what the graph must
//! excuse, such as candle-core's unconditional `tokenizers` dependency).
//! The full `eerag` binary is shown to hold code of `tokenizers`, the AEAD
//! and the client crate, so the check can see those. hkdf and hmac are
//! generic and compile into the client crate's functions: they are seen as
//! `eerag_client` code here, and kept out by the dependency graph.

use std::path::Path;
use std::process::Command;

/// Crates (and modules) whose code must not be in the host binary, as they
/// start a demangled symbol's path.
const CLIENT_ONLY_CODE: &[&str] = &[
    "tokenizers",
    "hkdf",
    "hmac",
    "chacha20poly1305",
    "aead",
    "eerag_client",
    "candle_core::quantized::tokenizer",
];

/// The demangled symbol names of a binary (`nm -C`, from binutils).
fn symbols(binary: &Path) -> Vec<String> {
    let out = Command::new("nm")
        .args(["-C", "--defined-only"])
        .arg(binary)
        .output()
        .expect("running nm (binutils) on the binary");
    assert!(out.status.success(), "nm {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.splitn(3, ' ').nth(2))
        .map(str::to_string)
        .collect()
}

/// The crate-qualified path a symbol's item lives at, without the crate
/// hashes (`tokenizers[ab12]::x` -> `tokenizers::x`): of the item itself,
/// or of the trait for `<T as Trait>::f`. A generic std function
/// instantiated with a client type (`<RawVec<tokenizers::X>>::grow_one`)
/// is std's code, not the client crate's.
fn item_paths(symbol: &str) -> Vec<String> {
    let unhashed = {
        let mut out = String::with_capacity(symbol.len());
        let mut skip = false;
        for c in symbol.chars() {
            match c {
                '[' => skip = true,
                ']' if skip => skip = false,
                _ if !skip => out.push(c),
                _ => {}
            }
        }
        out
    };
    let mut paths = vec![unhashed.trim_start_matches('<').to_string()];
    if let Some((_, tail)) = unhashed.split_once(" as ") {
        paths.push(tail.to_string());
    }
    paths
}

/// The symbols of `binary` that are code of a client-only crate.
fn client_code_in(binary: &Path) -> Vec<String> {
    symbols(binary)
        .into_iter()
        .filter(|s| {
            item_paths(s).iter().any(|p| {
                CLIENT_ONLY_CODE
                    .iter()
                    .any(|c| p.starts_with(&format!("{c}::")))
            })
        })
        .collect()
}

#[test]
fn the_host_binary_holds_no_client_code() {
    let found = client_code_in(&crate::host_binary());
    assert!(
        found.is_empty(),
        "client-only code in eerag-host ({} symbols), e.g. {:?}",
        found.len(),
        &found[..found.len().min(5)]
    );
}

#[test]
fn the_full_binary_does_hold_it() {
    let found = client_code_in(Path::new(env!("CARGO_BIN_EXE_eerag")));
    // (hkdf is generic and inlined into eerag_client's key code.)
    for c in ["tokenizers", "chacha20poly1305", "aead", "eerag_client"] {
        assert!(
            found.iter().any(|s| item_paths(s)
                .iter()
                .any(|p| p.starts_with(&format!("{c}::")))),
            "no {c} code found in eerag: the symbol check would be vacuous"
        );
    }
}

#[test]
fn generic_std_code_over_a_client_type_is_not_client_code() {
    let std_code =
        "<alloc[1]::raw_vec::RawVec<alloc[1]::rc::Rc<tokenizers[2]::models::Node>>>::grow_one";
    assert!(item_paths(std_code)
        .iter()
        .all(|p| !p.starts_with("tokenizers::")));
    let client = "<tokenizers[2]::models::bpe::BPE as tokenizers[2]::tokenizer::Model>::tokenize";
    assert!(item_paths(client)
        .iter()
        .any(|p| p.starts_with("tokenizers::")));
    let trait_impl = "<candle_core[3]::Foo as hkdf[4]::HmacImpl>::new";
    assert!(item_paths(trait_impl)
        .iter()
        .any(|p| p.starts_with("hkdf::")));
}
