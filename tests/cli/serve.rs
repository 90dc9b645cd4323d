//! `eerag-host serve` as a real process: what it prints and stores holds no
//! plaintext, and a kill -9 mid-ingest loses no acknowledged document.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eerag_client::client::{AskOptions, EncryptedClient, TextDocument};
use eerag_client::Key;
use eerag_core::models::fetch::ModelsDir;
use eerag_core::wire::{DocumentExport, SearchMode, UpsertRequest};
use eerag_remote::HostClient;
use eerag_tests::process::HostProcess;

use crate::{eerag, eerag_host, models_dir, path, stderr};

/// A key and its host artifacts, made with the CLI like a user would.
pub(crate) struct Setup {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) key: Key,
    pub(crate) artifacts: PathBuf,
    pub(crate) models: ModelsDir,
}

pub(crate) fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("client.eekey");
    let artifacts = dir.path().join("artifacts");
    let models = models_dir();
    let o = eerag(&["keygen", "--out", path(&key_path)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = eerag(&[
        "transform",
        "--key",
        path(&key_path),
        "--out",
        path(&artifacts),
        "--models",
        path(&models),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    Setup {
        key: Key::load(&key_path).unwrap(),
        dir,
        artifacts,
        models: ModelsDir::new(models),
    }
}

/// A running `eerag-host serve` ([`HostProcess`]) on the CLI's setup.
pub(crate) struct Server(HostProcess);

impl std::ops::Deref for Server {
    type Target = HostProcess;
    fn deref(&self) -> &HostProcess {
        &self.0
    }
}

impl Server {
    /// Starts a server on a free loopback port and waits until it listens.
    pub(crate) fn start(artifacts: &Path, data: &Path, logs: &Path, rust_log: &str) -> Server {
        Self::start_serving(&[artifacts], data, logs, rust_log)
    }

    /// Like [`Self::start`], serving several sets of artifacts.
    pub(crate) fn start_serving(
        artifacts: &[&Path],
        data: &Path,
        logs: &Path,
        rust_log: &str,
    ) -> Server {
        let mut args = Vec::new();
        for a in artifacts {
            args.extend(["--artifacts".to_string(), path(a).to_string()]);
        }
        args.extend(["--data".to_string(), path(data).to_string()]);
        Server(HostProcess::serve(&args, &[("RUST_LOG", rust_log)], logs))
    }

    pub(crate) fn client(&self, setup: &Setup) -> EncryptedClient {
        EncryptedClient::connect(
            HostClient::new(&self.url, None).unwrap(),
            &setup.key,
            &setup.models,
        )
        .expect("client connects")
    }

    /// SIGTERM, and wait for a clean exit.
    pub(crate) fn stop(self) {
        self.0.stop()
    }

    /// SIGKILL: no chance to flush or clean up.
    fn kill_9(self) {
        self.0.kill_9()
    }
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out
}

fn contains_ignoring_ascii_case(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.to_ascii_lowercase().into_bytes();
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(&needle))
}

/// The sample corpus, one chunk per paragraph.
pub(crate) fn sample_documents() -> Vec<TextDocument> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/sample");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let chunks = std::fs::read_to_string(dir.join(&name))
                .unwrap()
                .split("\n\n")
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
            TextDocument::from_chunks(name, chunks)
        })
        .collect()
}

/// Words no model vocabulary or log line holds by chance.
const CANARIES: [&str; 4] = [
    "Quorvantine",
    "zephyrlaminate",
    "Blixtrombe",
    "Mirabundel Oskarvane",
];

/// Words only the questions contain (never the corpus): they reach the host
/// only through the search and answer paths.
const QUERY_CANARIES: [&str; 3] = ["Vexmorrowind", "glimmerquaint", "Trask Ollevander"];

fn canary_corpus() -> Vec<TextDocument> {
    let mut docs = sample_documents();
    docs.push(TextDocument::from_chunks(
        "Quorvantine protocol.md",
        vec![
            "The Quorvantine protocol governs the zephyrlaminate vault in the east wing.".into(),
            "Only Mirabundel Oskarvane may open the vault; the passphrase is Blixtrombe.".into(),
            "The vault is inspected every ninth day by two officers.".into(),
        ],
    ));
    docs
}

#[test]
fn the_host_never_prints_or_stores_plaintext() {
    let setup = setup();
    let data = setup.dir.path().join("data");
    let logs = setup.dir.path().join("logs");
    let server = Server::start(&setup.artifacts, &data, &logs, "trace");
    let client = server.client(&setup);
    client.create_collection("vault").unwrap();
    let docs = canary_corpus();
    client.upload("vault", &docs).unwrap();
    // Exercise every route that touches user data.
    let hits = client
        .search(
            "vault",
            "Who may open the zephyrlaminate vault?",
            3,
            SearchMode::Hybrid,
        )
        .unwrap();
    assert_eq!(
        hits[0].metadata.title, "Quorvantine protocol.md",
        "the pipeline works end to end"
    );
    for mode in [SearchMode::Dense, SearchMode::Keyword] {
        assert!(!client
            .search("vault", "Quorvantine Blixtrombe", 2, mode)
            .unwrap()
            .is_empty());
    }
    let answer = client
        .ask(
            "vault",
            "What is the passphrase of the Quorvantine vault?",
            &AskOptions {
                k: 2,
                max_tokens: 16,
                ..AskOptions::default()
            },
            |_| {},
        )
        .unwrap();
    assert!(answer
        .sources
        .iter()
        .any(|s| s.metadata.title == "Quorvantine protocol.md"));
    let request = client
        .encrypt_question("Who inspects the vault?", &AskOptions::default())
        .unwrap();
    let mut short = request.clone();
    short.max_tokens = 4;
    client.host().answer("vault", &short).unwrap();
    // The search and answer paths with words the corpus does not hold, and
    // what the host sends back for them (ids and scores, never text).
    let mut responses: Vec<(String, Vec<u8>)> = Vec::new();
    // Raw bodies, as the host sent them.
    let http = reqwest::blocking::Client::new();
    let raw = |route: &str, body: Vec<u8>| -> Vec<u8> {
        let response = http
            .post(format!("{}/v1/collections/vault/{route}", server.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        assert!(
            response.status().is_success(),
            "{route}: {}",
            response.status()
        );
        response.bytes().unwrap().to_vec()
    };
    for mode in [SearchMode::Dense, SearchMode::Keyword, SearchMode::Hybrid] {
        let request = client
            .encrypt_query("Did Trask Ollevander see the Vexmorrowind?", 3, mode)
            .unwrap();
        let body = raw("search", serde_json::to_vec(&request).unwrap());
        responses.push((format!("{mode:?} search response"), body));
    }
    let mut question = client
        .encrypt_question(
            "Is the glimmerquaint kept by Trask Ollevander in the Vexmorrowind vault?",
            &AskOptions {
                k: 2,
                ..AskOptions::default()
            },
        )
        .unwrap();
    question.max_tokens = 8;
    for stream in [false, true] {
        question.stream = stream;
        let body = raw("answer", serde_json::to_vec(&question).unwrap());
        assert!(body.len() > 20, "an answer came back");
        responses.push((format!("answer response (stream {stream})"), body));
    }
    let streamed = client
        .ask(
            "vault",
            "Did Trask Ollevander hide the glimmerquaint?",
            &AskOptions {
                k: 2,
                max_tokens: 8,
                ..AskOptions::default()
            },
            |_| {},
        )
        .unwrap();
    assert!(!streamed.sources.is_empty(), "the streamed answer ran");
    let listed = client.host().list_documents("vault", None, 100).unwrap();
    responses.push(("document list".into(), serde_json::to_vec(&listed).unwrap()));
    for d in &listed.documents {
        let export = client.host().export_document("vault", &d.doc_id).unwrap();
        responses.push((
            "document export".into(),
            serde_json::to_vec(&export).unwrap(),
        ));
    }
    // Refused requests must not echo plaintext either (there is none to
    // echo: the client sends ids), and errors are logged too.
    let mut bad = client
        .encrypt_query("Quorvantine", 2, SearchMode::Dense)
        .unwrap();
    bad.query_ids.push(u32::MAX);
    assert!(client.host().search("vault", &bad).is_err());
    let gone = client.encrypt_documents(&docs[..1]).unwrap();
    client
        .host()
        .delete_document("vault", &gone.documents[0].doc_id)
        .unwrap();
    let metrics = client.host().metrics().unwrap();
    let (stdout_path, stderr_path) = (server.stdout.clone(), server.stderr.clone());
    server.stop();

    let mut scanned = 0usize;
    let mut scanned_bytes = 0usize;
    let mut leaks = Vec::new();
    let mut sources: Vec<(String, Vec<u8>)> = files_under(&data)
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    sources.push(("stdout".into(), std::fs::read(&stdout_path).unwrap()));
    sources.push(("stderr".into(), std::fs::read(&stderr_path).unwrap()));
    assert!(
        metrics.contains("search") && metrics.contains("answer"),
        "the metrics counted the search and answer paths"
    );
    sources.push(("/metrics".into(), metrics.into_bytes()));
    sources.extend(responses);
    for (name, bytes) in &sources {
        scanned += 1;
        scanned_bytes += bytes.len();
        for canary in CANARIES.iter().chain(&QUERY_CANARIES) {
            if contains_ignoring_ascii_case(bytes, canary) {
                leaks.push(format!("{canary} in {name}"));
            }
        }
    }
    assert!(leaks.is_empty(), "plaintext reached the host: {leaks:?}");
    // The scan saw what it should: a store with data and a verbose log.
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(log.contains("TRACE"), "the log ran at trace level");
    assert!(log.contains("/v1/collections/{name}/search"));
    assert!(
        scanned > 10 && scanned_bytes > 100_000,
        "scanned {scanned} files, {scanned_bytes} bytes"
    );
    // The same scan finds the canaries where they are: on the client side.
    let plain_sent = serde_json::to_vec(&docs.iter().map(|d| &d.text).collect::<Vec<_>>()).unwrap();
    assert!(contains_ignoring_ascii_case(&plain_sent, CANARIES[0]));
}

/// A synthetic document of `chunks` chunks, distinct per `n`.
fn synthetic_document(n: usize, chunks: usize) -> TextDocument {
    const WORDS: [&str; 24] = [
        "ledger",
        "harbour",
        "invoice",
        "clinic",
        "vault",
        "rota",
        "patient",
        "retainer",
        "settlement",
        "audit",
        "fridge",
        "courier",
        "archive",
        "partner",
        "pension",
        "ward",
        "tariff",
        "dossier",
        "ferry",
        "quarry",
        "orchard",
        "lantern",
        "meadow",
        "copper",
    ];
    let mut state = (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    TextDocument::from_chunks(
        format!("record-{n}.txt"),
        (0..chunks)
            .map(|c| {
                let words: Vec<&str> = (0..40)
                    .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
                    .collect();
                format!("Record {n} part {c}: {}.", words.join(" "))
            })
            .collect(),
    )
}

#[test]
fn kill_9_mid_ingest_loses_no_acknowledged_document() {
    let setup = setup();
    let data = setup.dir.path().join("data");
    let logs = setup.dir.path().join("logs");
    let mut acknowledged: BTreeMap<String, UpsertRequest> = BTreeMap::new();
    let mut next_doc = 0usize;
    let rounds = 3;
    for round in 0..rounds {
        let server = Server::start(&setup.artifacts, &data, &logs, "info");
        let client = server.client(&setup);
        if round == 0 {
            client.create_collection("ledger").unwrap();
        }
        verify(&client, &acknowledged);

        // Upload one- and two-document batches back to back from a thread;
        // kill the server after a few acknowledgements, mid-request.
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Arc<Mutex<Vec<UpsertRequest>>> = Arc::default();
        let first = next_doc;
        let uploader = {
            let (stop, acks) = (stop.clone(), acks.clone());
            let requests: Vec<UpsertRequest> = (0..40)
                .map(|i| {
                    let n = first + 2 * i;
                    let batch = if i % 2 == 0 {
                        vec![synthetic_document(n, 6)]
                    } else {
                        vec![synthetic_document(n, 3), synthetic_document(n + 1, 9)]
                    };
                    client.encrypt_documents(&batch).unwrap()
                })
                .collect();
            let host = client.host().clone();
            std::thread::spawn(move || {
                for request in requests {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    match host.upsert("ledger", &request) {
                        Ok(_) => acks.lock().unwrap().push(request),
                        // The server died under this request: not acknowledged.
                        Err(_) => break,
                    }
                }
            })
        };
        next_doc += 80;
        let wanted = 2 + 2 * round;
        let started = Instant::now();
        while acks.lock().unwrap().len() < wanted {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "uploads stalled"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Vary the moment within the next request.
        std::thread::sleep(Duration::from_millis(37 * round as u64));
        server.kill_9();
        stop.store(true, Ordering::SeqCst);
        uploader.join().unwrap();
        let acks = std::mem::take(&mut *acks.lock().unwrap());
        assert!(acks.len() >= wanted);
        for request in acks {
            for d in &request.documents {
                let single = UpsertRequest {
                    key_id: request.key_id,
                    documents: vec![d.clone()],
                };
                acknowledged.insert(d.doc_id.clone(), single);
            }
        }
    }
    let server = Server::start(&setup.artifacts, &data, &logs, "info");
    let client = server.client(&setup);
    verify(&client, &acknowledged);
    let log = std::fs::read_to_string(&server.stderr).unwrap();
    assert!(log.contains("store opened"), "{log}");
    server.stop();
    eprintln!(
        "{rounds} kills; {} acknowledged documents all whole",
        acknowledged.len()
    );
}

/// Every acknowledged document is whole (the same chunks, byte for byte) and
/// findable by keyword and by vector; every listed document is whole.
fn verify(client: &EncryptedClient, acknowledged: &BTreeMap<String, UpsertRequest>) {
    let host = client.host();
    let mut listed = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = host.list_documents("ledger", after.as_deref(), 50).unwrap();
        for d in &page.documents {
            listed.insert(d.doc_id.clone(), d.chunks);
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    for (doc_id, request) in acknowledged {
        let sent = &request.documents[0];
        let stored: DocumentExport = host
            .export_document("ledger", doc_id)
            .unwrap_or_else(|e| panic!("acknowledged document {doc_id} lost: {e}"));
        assert_eq!(stored.content_hash, sent.content_hash);
        assert_eq!(stored.chunks.len(), sent.chunks.len(), "{doc_id} partial");
        for (i, (s, c)) in stored.chunks.iter().zip(&sent.chunks).enumerate() {
            assert_eq!(s.index as usize, i);
            assert_eq!(s.encoder_ids, c.encoder_ids);
            assert_eq!(s.generator_ids, c.generator_ids);
            assert_eq!(s.metadata, c.metadata);
        }
        let ids = client
            .cipher()
            .decrypt_generator(&eerag_core::EncGeneratorIds::new(
                client.cipher().key_id(),
                sent.chunks[0].generator_ids.clone(),
            ))
            .unwrap();
        let text = client.generator_tokenizer().decode(&ids).unwrap();
        // The chunk's own text: its vector is the nearest, and its ids are
        // in the keyword index (near the top; BM25 may prefer a longer chunk).
        let dense = client
            .search("ledger", &text, 1, SearchMode::Dense)
            .unwrap();
        assert_eq!(dense[0].doc_id, *doc_id, "dense search misses {doc_id}");
        let keyword = client
            .search("ledger", &text, 10, SearchMode::Keyword)
            .unwrap();
        assert!(
            keyword.iter().any(|h| h.doc_id == *doc_id),
            "keyword search misses acknowledged {doc_id}"
        );
    }
    // Documents whose acknowledgement the kill swallowed may be there, but
    // only whole.
    for (doc_id, chunks) in &listed {
        let export = host.export_document("ledger", doc_id).unwrap();
        assert_eq!(export.chunks.len(), *chunks);
        let n: usize = client
            .open_metadata(doc_id, 0, &export.chunks[0].metadata)
            .unwrap()
            .title
            .trim_start_matches("record-")
            .trim_end_matches(".txt")
            .parse()
            .unwrap();
        // Batches alternate: one 6-chunk document, then a 3- and a 9-chunk one.
        let expected = match n % 4 {
            0 => 6,
            2 => 3,
            _ => 9,
        };
        assert_eq!(*chunks, expected, "document record-{n} is partial");
    }
}

/// `eerag-host serve` with `args` added to a valid command line: its output.
fn serve_refusing(setup: &Setup, artifacts: &Path, args: &[&str]) -> std::process::Output {
    let data = setup.dir.path().join("refused-data");
    let mut all = vec![
        "serve",
        "--artifacts",
        path(artifacts),
        "--data",
        path(&data),
        "--listen",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(args);
    let out = eerag_host(&all);
    assert!(!out.status.success(), "eerag-host serve {args:?} started");
    assert!(!data.exists(), "a refused start created its data directory");
    out
}

#[test]
fn the_host_refuses_a_key_or_a_tokenizer() {
    let setup = setup();
    let key_file = setup.dir.path().join("client.eekey");
    let tokenizer = setup.models.encoder_dir().join("tokenizer.json");
    assert!(key_file.is_file() && tokenizer.is_file());
    // No option takes either, and naming one is refused with the reason.
    // (`eerag serve` is the same command, in the full binary.)
    for help in [
        eerag_host(&["serve", "--help"]),
        eerag(&["serve", "--help"]),
    ] {
        let help_text = String::from_utf8_lossy(&help.stdout).to_string();
        assert!(help_text.contains("--artifacts"));
        assert!(
            !help_text.contains("--key") && !help_text.contains("--tokenizer"),
            "{help_text}"
        );
    }
    for flags in [
        vec!["--key", path(&key_file)],
        vec!["--key"],
        vec!["--tokenizer", path(&tokenizer)],
    ] {
        let out = serve_refusing(&setup, &setup.artifacts, &flags);
        assert!(
            stderr(&out).contains("takes no key and no tokenizer"),
            "{flags:?}: {}",
            stderr(&out)
        );
    }
    // Nor does it start on an artifacts folder holding a key file or a
    // tokenizer, wherever in the folder.
    for (name, from) in [
        ("client.eekey", &key_file),
        ("encoder/tokenizer.json", &tokenizer),
    ] {
        let artifacts = setup
            .dir
            .path()
            .join(format!("artifacts-with-{}", name.replace('/', "-")));
        copy_dir(&setup.artifacts, &artifacts);
        std::fs::copy(from, artifacts.join(name)).unwrap();
        let out = serve_refusing(&setup, &artifacts, &[]);
        assert!(
            stderr(&out).contains(&format!("{name} is not a host artifact")),
            "{name}: {}",
            stderr(&out)
        );
    }
    // Nor on a generator that still carries its tokenizer (the base model
    // put where the transformed one belongs, manifest hash and all).
    let artifacts = setup.dir.path().join("artifacts-with-base-gguf");
    copy_dir(&setup.artifacts, &artifacts);
    std::fs::copy(
        setup.models.generator_gguf(),
        artifacts.join("generator/model.gguf"),
    )
    .unwrap();
    let out = serve_refusing(&setup, &artifacts, &["--no-verify"]);
    assert!(
        stderr(&out).contains("carries tokenizer metadata"),
        "{}",
        stderr(&out)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_dead_or_malformed_qdrant_store_is_a_clear_error_at_start() {
    let setup = setup();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("qdrant://127.0.0.1:{port}");
    let out = serve_refusing(&setup, &setup.artifacts, &["--store", &url]);
    let err = stderr(&out);
    assert!(
        err.contains("store unavailable") && err.contains("Qdrant"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let out = serve_refusing(&setup, &setup.artifacts, &["--store", "ftp://db:6334"]);
    assert!(
        stderr(&out).contains("is not a Qdrant URL"),
        "{}",
        stderr(&out)
    );
}
