//! The host's side of the plaintext boundary, checked in the source: no
//! host-side module (the query crate, `eerag serve`, the store, the keyword
//! index) names the key, a tokenizer, the client cipher or the client, so no
//! host-side code path can load a key file or a tokenizer. The types keep
//! plaintext out of the host; this keeps the means to make it out too.
//! (`tests/cli/serve.rs` checks the running binary: `eerag serve` refuses a
//! key or tokenizer flag and an artifacts folder holding either.)

use std::path::{Path, PathBuf};

/// Types and functions only client-side code may use (matched as whole
/// words, so `KeyId` is not `Key`).
const CLIENT_ONLY_NAMES: [&str; 9] = [
    "Key",
    "EncoderTokenizer",
    "GeneratorTokenizer",
    "ClientCipher",
    "MetadataCipher",
    "EncryptedClient",
    "Permutation",
    "chatml_prompt",
    "tokenize",
];

/// Client-side modules and crates (a path ending in `::` matches any item
/// under it).
const CLIENT_ONLY_MODULES: [&str; 8] = [
    "tokenizers::",
    "eerag_shared::key",
    "eerag_shared::client",
    "eerag_shared::metadata",
    "eerag_shared::permutation",
    "eerag_ingest::client",
    "eerag_ingest::upload",
    "eerag_ingest::extract",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The host-side source files.
fn host_sources() -> Vec<PathBuf> {
    let root = root();
    let mut files = Vec::new();
    let mut dirs = vec![root.join("query/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    for f in [
        "src/serve.rs",
        "ingest/src/store.rs",
        "ingest/src/edge_store.rs",
        "ingest/src/keyword.rs",
        "ingest/src/ranking.rs",
    ] {
        files.push(root.join(f));
    }
    files.sort();
    files
}

/// The code of a file without its comments, string literals and its test
/// module (`#[cfg(test)] mod tests`, last in the file by convention).
fn code_of(text: &str) -> String {
    let test_module = text
        .match_indices("#[cfg(test)]")
        .find(|(i, m)| text[i + m.len()..].trim_start().starts_with("mod tests"));
    let text = match test_module {
        Some((i, _)) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|line| {
            let code = match line.find("//") {
                Some(i) => &line[..i],
                None => line,
            };
            // Drop string literals (error messages may say "key").
            let mut out = String::new();
            let mut in_str = false;
            let mut prev = ' ';
            for ch in code.chars() {
                if ch == '"' && prev != '\\' {
                    in_str = !in_str;
                } else if !in_str {
                    out.push(ch);
                }
                prev = ch;
            }
            out
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifier-like words and `::`-joined paths of `code`.
fn words(code: &str) -> Vec<String> {
    code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn client_names_in(code: &str) -> Vec<String> {
    let words = words(code);
    let mut found: Vec<String> = CLIENT_ONLY_NAMES
        .iter()
        .filter(|name| words.iter().any(|w| w == *name))
        .map(|name| name.to_string())
        .collect();
    // Paths with the spaces around `::` taken out (`a :: b`, line breaks).
    let joined = code
        .split("::")
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("::");
    for module in CLIENT_ONLY_MODULES {
        let ident = |c: char| c.is_alphanumeric() || c == '_';
        let whole = joined.match_indices(module).any(|(i, m)| {
            let starts = !joined[..i]
                .chars()
                .next_back()
                .is_some_and(|c| ident(c) || c == '.');
            let ends =
                m.ends_with("::") || !joined[i + m.len()..].chars().next().is_some_and(ident);
            starts && ends
        });
        if whole {
            found.push(module.to_string());
        }
    }
    found
}

#[test]
fn no_host_side_module_names_the_key_or_a_tokenizer() {
    let files = host_sources();
    assert!(files.len() >= 12, "host sources found: {files:?}");
    let mut offences = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for name in client_names_in(&code_of(&text)) {
            offences.push(format!("{} uses {name}", f.display()));
        }
    }
    assert!(
        offences.is_empty(),
        "client-side names in host code: {offences:?}"
    );
}

#[test]
fn the_check_catches_what_it_should() {
    let leak = "use eerag_shared::Key;\nfn f(p: &Path) { let k = Key::load(p); }";
    assert!(client_names_in(&code_of(leak)).contains(&"Key".to_string()));
    let tok = "let t = eerag_shared::tokenize::EncoderTokenizer::from_model_dir(d)?;";
    let found = client_names_in(&code_of(tok));
    assert!(
        found.contains(&"tokenize".to_string()) && found.contains(&"EncoderTokenizer".to_string())
    );
    let module = "use eerag_shared::{\n    client::ClientCipher as C,\n};";
    assert!(!client_names_in(&code_of(module)).is_empty());
    let crate_path = "let t = tokenizers::Tokenizer::from_file(p);";
    assert_eq!(
        client_names_in(&code_of(crate_path)),
        vec!["tokenizers::".to_string()]
    );
    // tantivy's own `index.tokenizers()` is not the crate.
    assert!(client_names_in(&code_of("index.tokenizers().register(x);")).is_empty());
    let grouped = "use eerag_ingest::client :: X;";
    assert_eq!(
        client_names_in(&code_of(grouped)),
        vec!["eerag_ingest::client".to_string()]
    );
    // Not: longer identifiers, comments, strings, test modules.
    let hidden = "#[cfg(test)]\nfn helper() {}\nuse eerag_shared::Key;";
    assert!(client_names_in(&code_of(hidden)).contains(&"Key".to_string()));
    let fine = "use eerag_shared::KeyId; // the Key stays with the client\n\
                let m = \"no key or tokenizer here\";\n#[cfg(test)]\nmod tests { use eerag_shared::Key; }";
    assert!(
        client_names_in(&code_of(fine)).is_empty(),
        "{:?}",
        client_names_in(&code_of(fine))
    );
}

/// Direct dependencies only: `eerag-shared` links `tokenizers` for the
/// client, and the source check above keeps the host from using it.
#[test]
fn the_host_crate_does_not_depend_on_a_tokenizer() {
    let manifest = std::fs::read_to_string(root().join("query/Cargo.toml")).unwrap();
    assert!(
        !manifest.contains("tokenizers"),
        "query/Cargo.toml pulls in tokenizers"
    );
}
