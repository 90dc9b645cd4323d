//! The plaintext boundary, checked in the dependency graph: what the
//! `eerag-host` binary links (its normal dependencies, transitively, as
//! `cargo tree -e normal` resolves them) must not include the client crate,
//! the other eerag crates that hold a key or belong to the lab, a tokenizer
//! library, the key derivation or the metadata AEAD. A change that adds one
//! of them to the host, directly or through any dependency, fails here
//! (docs/design.md §4.2). The built binary's symbols are checked too, in
//! `tests/cli/boundary.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::process::Command;

/// The eerag crates the host may link; any other `eerag*` crate is client
/// or lab code.
const HOST_SIDE: &[&str] = &["eerag-core", "eerag-store", "eerag-remote", "eerag-host"];

/// Third-party crates that only the client may link, and why.
const CLIENT_ONLY: &[(&str, &str)] = &[
    ("tokenizers", "turns text into token ids: plaintext"),
    ("hkdf", "derives the key's sub-keys"),
    ("hmac", "keys document ids with the client's secret"),
    ("chacha20poly1305", "seals and opens metadata"),
    ("aead", "the AEAD interface of the metadata cipher"),
];

/// Edges through which a client-only crate may reach the host's graph, and
/// why that is not a crossing. candle-core 0.11 depends on `tokenizers`
/// unconditionally, for `candle_core::quantized::tokenizer` (a tokenizer
/// built from GGUF metadata); the host never calls it, and
/// `tests/cli/boundary.rs` checks that none of that code is in the binary.
const CARRIERS: &[(&str, &str)] = &[("candle-core", "tokenizers")];

/// A package's normal-dependency graph: package name -> the names it
/// depends on.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// `package`'s normal-dependency graph as cargo resolves it for a build of
/// that package (with `features`).
fn graph(package: &str, features: &[&str]) -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            package,
            "-e",
            "normal",
        ])
        .args(["--prefix", "depth", "--format", "{p}"])
        .args(features)
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_tree(&String::from_utf8(out.stdout).expect("utf-8"))
}

/// Reads `cargo tree --prefix depth --format {p}` output: each line is a
/// depth, a package name and its version; a line's parent is the last line
/// one level up. Repeated subtrees (`(*)`) were listed in full the first time.
fn parse_tree(text: &str) -> Graph {
    let mut graph = Graph::new();
    let mut path: Vec<String> = Vec::new();
    for line in text.lines() {
        let digits = line.chars().take_while(char::is_ascii_digit).count();
        let Ok(depth) = line[..digits].parse::<usize>() else {
            continue;
        };
        let Some(name) = line[digits..].split_whitespace().next() else {
            continue;
        };
        path.truncate(depth);
        if let Some(parent) = path.last() {
            graph
                .entry(parent.clone())
                .or_default()
                .insert(name.to_string());
        }
        graph.entry(name.to_string()).or_default();
        path.push(name.to_string());
    }
    graph
}

/// The packages reachable from `root` without taking a [`CARRIERS`] edge.
fn reachable(graph: &Graph, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::from([root.to_string()]);
    let mut todo = VecDeque::from([root.to_string()]);
    while let Some(p) = todo.pop_front() {
        for d in graph.get(&p).into_iter().flatten() {
            if CARRIERS.contains(&(p.as_str(), d.as_str())) {
                continue;
            }
            if seen.insert(d.clone()) {
                todo.push_back(d.clone());
            }
        }
    }
    seen
}

/// Every crossing in a set of packages, in words (empty: the boundary holds).
fn crossings(packages: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for name in packages {
        if name.starts_with("eerag") && !HOST_SIDE.contains(&name.as_str()) {
            out.push(format!("{name}: client or lab code"));
        }
        if let Some((_, why)) = CLIENT_ONLY.iter().find(|(c, _)| c == name) {
            out.push(format!("{name}: {why}"));
        }
    }
    out
}

#[test]
fn the_host_binary_links_no_key_tokenizer_aead_or_client_code() {
    // Every feature set of the host but CUDA's (whose crates cargo would
    // have to download; they are NVIDIA's kernels and bindings).
    for features in [
        &[][..],
        &["--no-default-features"][..],
        &["--no-default-features", "--features", "llama-cpp"][..],
        &["--no-default-features", "--features", "openblas"][..],
        &[
            "--features",
            "llama-cpp,llama-cpp-dynamic-backends,openblas",
        ][..],
    ] {
        let graph = graph("eerag-host", features);
        let host = reachable(&graph, "eerag-host");
        // The graph is real: the host's own stack is in it.
        for expected in [
            "eerag-core",
            "eerag-store",
            "qdrant-edge",
            "tantivy",
            "axum",
        ] {
            assert!(host.contains(expected), "{expected} missing from {host:?}");
        }
        let found = crossings(&host);
        assert!(
            found.is_empty(),
            "eerag-host ({features:?}) crosses the plaintext boundary:\n  {}",
            found.join("\n  ")
        );
    }
}

#[test]
fn the_check_finds_a_crossing_where_there_is_one() {
    // The client crate links every one of them directly: the same check on
    // its graph must name them all, or it would pass vacuously.
    let client = reachable(&graph("eerag-client", &[]), "eerag-client");
    let found = crossings(&client);
    for (name, _) in CLIENT_ONLY {
        assert!(
            found.iter().any(|f| f.starts_with(&format!("{name}:"))),
            "{name} not reported in {found:?}"
        );
    }
    // The full binary links the client and the lab.
    let full = crossings(&reachable(&graph("eerag", &[]), "eerag"));
    for name in ["eerag-client", "eerag-lab"] {
        assert!(
            full.iter().any(|f| f.starts_with(&format!("{name}:"))),
            "{name} not reported in {full:?}"
        );
    }
}

#[test]
fn a_carrier_excuses_only_its_own_edge() {
    // The host reaching `tokenizers` through candle-core passes; the same
    // crate reached any other way (here: through eerag-core) is a crossing.
    let tree = "0eerag-host v0\n1eerag-core v0\n2candle-core v0\n3tokenizers v0\n";
    assert!(crossings(&reachable(&parse_tree(tree), "eerag-host")).is_empty());
    let tree =
        "0eerag-host v0\n1eerag-core v0\n2candle-core v0\n3tokenizers v0\n2tokenizers v0 (*)\n";
    assert_eq!(
        crossings(&reachable(&parse_tree(tree), "eerag-host")),
        vec!["tokenizers: turns text into token ids: plaintext".to_string()]
    );
    let tree = "0eerag-host v0\n1eerag-store v0\n2hkdf v0\n1eerag-client v0\n";
    assert_eq!(
        crossings(&reachable(&parse_tree(tree), "eerag-host")).len(),
        2
    );
}
