//! `eerag demo`: the whole product in one process, on the sample corpus. A
//! throwaway key, host artifacts, a host on the embedded store (in-process,
//! reached over HTTP like any remote host), the upload job, three questions
//! — and, side by side, what the user saw and what the host saw.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use eerag_client::client::{Answer, AskOptions, EncryptedClient};
use eerag_client::upload::{self, UploadOptions};
use eerag_client::{transform, Key};
use eerag_core::models::fetch;
use eerag_host::server::{BackgroundServer, ServeConfig};
use eerag_remote::HostClient;

use eerag_client::cli::ModelsArg;
use eerag_lab::workload::SAMPLE_DOCS;

/// The demo's questions, each answered by one of the sample documents.
pub const QUESTIONS: [&str; 3] = [
    "What should staff do if the vaccine refrigerator gets too warm?",
    "What does the engagement letter say about fees?",
    "What caused the incident and what was changed afterwards?",
];

const COLLECTION: &str = "sample";

/// Runs the demo; `questions` replace the default ones when given. The
/// working files go to `keep` when given, else to a temporary folder that
/// is removed at the end.
pub fn run(
    models: &ModelsArg,
    questions: &[String],
    keep: Option<&Path>,
    device: &eerag_host::cli::DeviceArgs,
) -> Result<()> {
    let started = Instant::now();
    let dir = models.resolve();
    fetch::fetch(&dir, |line| eprintln!("{line}"))?;
    let temp;
    let work: PathBuf = match keep {
        Some(p) => {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
            p.to_path_buf()
        }
        None => {
            temp = tempfile::Builder::new().prefix("eerag-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };

    // Client side: a key, and the host artifacts made from it. A kept
    // folder keeps its key too, so a second run finds its collection.
    let key_file = work.join("demo.eekey");
    let key = if keep.is_some() && key_file.exists() {
        Key::load(&key_file)?
    } else {
        let key = Key::generate()?;
        if keep.is_some() {
            key.save(&key_file, false)?;
        }
        key
    };
    let artifacts = work.join("host-artifacts");
    let t = Instant::now();
    transform::transform(
        &key,
        &dir.encoder_dir(),
        &dir.generator_gguf(),
        &artifacts,
        true,
    )?;
    println!(
        "1. made a key {} and the host's transformed models in {:.1} s",
        key.id(),
        t.elapsed().as_secs_f64()
    );

    // Host side: holds the artifacts and the store, never the key.
    let t = Instant::now();
    let server = BackgroundServer::start(ServeConfig {
        device: device.device,
        generator_backend: device.generator_backend,
        ..ServeConfig::local(artifacts, work.join("host-data"))
    })?;
    println!(
        "2. started a host at {} on the embedded store ({:.1} s); it has no key and no tokenizer",
        server.url(),
        t.elapsed().as_secs_f64()
    );
    let client = EncryptedClient::connect(HostClient::new(&server.url(), None)?, &key, &dir)?;

    // Upload the sample corpus through the real upload job.
    let corpus = sample_corpus(&work)?;
    let summary = upload::upload(
        &client,
        COLLECTION,
        std::slice::from_ref(&corpus),
        &UploadOptions::default(),
        |_| {},
    )?;
    ensure!(summary.complete(), "the sample corpus did not upload");
    println!(
        "3. uploaded {} files from {} as {} encrypted chunks in {:.1} s",
        summary.uploaded,
        corpus.display(),
        summary.chunks,
        summary.seconds
    );

    let questions: Vec<String> = if questions.is_empty() {
        QUESTIONS.iter().map(|q| q.to_string()).collect()
    } else {
        questions.to_vec()
    };
    let options = AskOptions {
        k: 2,
        max_tokens: 96,
        ..AskOptions::default()
    };
    let mut first: Option<(String, Answer)> = None;
    for (i, question) in questions.iter().enumerate() {
        println!("\nQ{}: {question}", i + 1);
        print!("A:  ");
        let answer = client.ask(COLLECTION, question, &options, |text| {
            use std::io::Write;
            print!("{}", text.replace('\n', "\n    "));
            let _ = std::io::stdout().flush();
        })?;
        println!();
        for s in &answer.sources {
            println!(
                "    source: {} — {} (chunk {}/{}, score {:.4})",
                s.metadata.path,
                s.metadata.title,
                s.metadata.chunk + 1,
                s.metadata.chunks,
                s.score
            );
        }
        if first.is_none() {
            first = Some((question.clone(), answer));
        }
    }
    if let Some((question, answer)) = &first {
        side_by_side(&client, question, answer, &options)?;
    }
    drop(client);
    server.stop()?;
    match keep {
        Some(p) => println!(
            "\nleft the key (demo.eekey), the host's artifacts and its data in {}",
            p.display()
        ),
        None => println!("\nremoved the demo's temporary files"),
    }
    println!("done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The bundled sample corpus: the repository's `datasets/sample` when run
/// from a checkout, else the copy compiled into the binary.
fn sample_corpus(work: &Path) -> Result<PathBuf> {
    let local = PathBuf::from("datasets/sample");
    if local.is_dir() {
        return Ok(local);
    }
    let copy = work.join("sample");
    std::fs::create_dir_all(&copy)?;
    for (name, text) in SAMPLE_DOCS {
        std::fs::write(copy.join(name), text)?;
    }
    Ok(copy)
}

/// The first question as the user saw it and as the host saw it.
fn side_by_side(
    client: &EncryptedClient,
    question: &str,
    answer: &Answer,
    options: &AskOptions,
) -> Result<()> {
    let request = client.encrypt_question(question, options)?;
    let ids = |v: &[u32], n: usize| {
        let shown: Vec<String> = v.iter().take(n).map(u32::to_string).collect();
        format!(
            "[{}{}] ({} ids)",
            shown.join(", "),
            if v.len() > n { ", …" } else { "" },
            v.len()
        )
    };
    let cut = |s: &str, n: usize| {
        let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
        if flat.chars().count() > n {
            format!("{}…", flat.chars().take(n).collect::<String>())
        } else {
            flat
        }
    };
    let source = answer.sources.first();
    let rows = [
        (
            "question",
            cut(question, 44),
            ids(&request.question.encoder_ids, 6),
        ),
        (
            "source",
            source
                .map(|s| cut(&format!("{}: {}", s.metadata.path, s.metadata.preview), 44))
                .unwrap_or_default(),
            answer
                .summary
                .chunks
                .first()
                .map(|c| {
                    format!(
                        "doc {}…, {} sealed bytes",
                        &c.doc_id[..12.min(c.doc_id.len())],
                        c.metadata.len()
                    )
                })
                .unwrap_or_default(),
        ),
        (
            "answer",
            cut(&answer.text, 44),
            ids(&answer.encrypted_ids, 6),
        ),
    ];
    println!("\nWhat you saw, and what the host saw, for Q1:");
    println!("  {:<9} {:<46} the host", "", "you (client, with the key)");
    for (what, mine, host) in rows {
        println!("  {what:<9} {mine:<46} {host}");
    }
    println!(
        "  The same ids mean other words under another key; the host's vectors are rotated by the key too."
    );
    Ok(())
}
