//! `eerag bench --peers`: eerag's encoder and generator, plaintext and
//! encrypted, next to the usual way of running the same public weights on the
//! same machine in the same run: sentence-transformers (PyTorch, CPU) for
//! all-MiniLM-L6-v2 and llama.cpp (llama-cpp-python) for the SmolLM2 GGUF.
//!
//! The peers are installed by this command into a virtual environment of
//! their own (pinned versions, from PyPI) and driven by `benches/peers.py`;
//! a peer that cannot be installed or loaded is skipped with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench::median;
use crate::workload::{sample_paragraphs, Pair};
use eerag_shared::models::fetch::ModelsDir;
use eerag_shared::models::generator::llama_cpp_compiled;
use eerag_shared::models::{
    Encoder, EncoderBackend, Generator, GeneratorBackend, GeneratorOptions,
};

/// The peers, as pip installs them: (name on the command line, requirement,
/// module to import).
const PEERS: [(&str, &str, &str); 2] = [
    (
        "sentence-transformers",
        "sentence-transformers==6.2.0",
        "sentence_transformers",
    ),
    ("llama-cpp", "llama-cpp-python==0.3.36", "llama_cpp"),
];

/// The peer script, compiled in so the binary runs from any directory.
const PEERS_PY: &str = include_str!("../benches/peers.py");

/// Options of the peer comparison.
pub struct PeerArgs {
    pub venv: PathBuf,
    pub rounds: usize,
    pub sentences: usize,
    pub batch: usize,
    pub decode_tokens: usize,
    pub json: bool,
}

/// Makes the venv if needed and installs each peer that is not importable
/// yet; returns the reason for every peer that could not be installed.
fn install_peers(venv: &Path) -> (PathBuf, Vec<(String, String)>) {
    let python = venv.join("bin").join("python");
    let skip_all = |why: String| {
        PEERS
            .iter()
            .map(|(name, _, _)| (name.to_string(), why.clone()))
            .collect()
    };
    if !python.exists() {
        eprintln!(
            "  making a virtual environment for the peers in {}",
            venv.display()
        );
        match Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let why = String::from_utf8_lossy(&o.stderr).trim().to_string();
                return (python, skip_all(format!("python3 -m venv failed: {why}")));
            }
            Err(e) => return (python, skip_all(format!("cannot run python3: {e}"))),
        }
    }
    let mut skipped = Vec::new();
    for (name, requirement, module) in PEERS {
        let present = Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if present {
            continue;
        }
        eprintln!("  installing {requirement} (first run only; minutes)");
        let why = match Command::new(&python)
            .args(["-m", "pip", "install", "-q", requirement])
            .output()
        {
            Ok(o) if o.status.success() => continue,
            Ok(o) => String::from_utf8_lossy(&o.stderr)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("pip failed")
                .to_string(),
            Err(e) => format!("cannot run pip: {e}"),
        };
        skipped.push((
            name.to_string(),
            format!("pip install {requirement}: {why}"),
        ));
    }
    (python, skipped)
}

/// The largest difference between the peer's embeddings and eerag's, or an
/// error if they are not even the same shape (then they are not the same
/// model, and no throughput comparison means anything).
fn embedding_gap(theirs: &[Value], ours: &[Vec<f32>]) -> Result<f64> {
    if theirs.len() != ours.len() {
        bail!(
            "sentence-transformers returned {} embeddings for {} sentences",
            theirs.len(),
            ours.len()
        );
    }
    let mut gap: f64 = 0.0;
    for (t, o) in theirs.iter().zip(ours) {
        let t = t.as_array().map(Vec::as_slice).unwrap_or_default();
        if t.len() != o.len() {
            bail!(
                "sentence-transformers embeddings have {} dimensions, eerag's {}",
                t.len(),
                o.len()
            );
        }
        for (a, b) in t.iter().zip(o) {
            let d = (a.as_f64().unwrap_or(f64::NAN) - f64::from(*b)).abs();
            if !d.is_finite() {
                bail!("sentence-transformers returned a non-finite embedding value");
            }
            gap = gap.max(d);
        }
    }
    Ok(gap)
}

/// One generator backend's timings (plaintext, encrypted) and its tokens.
struct GeneratorRun {
    backend: GeneratorBackend,
    prefill_secs: [Vec<f64>; 2],
    decode_secs: [Vec<f64>; 2],
    tokens: Vec<u32>,
}

/// Embeddings further apart than this are not the same weights.
const SAME_WEIGHTS_TOLERANCE: f64 = 1e-4;

/// Runs the comparison and prints a table (or JSON).
pub fn run(models: &ModelsDir, args: &PeerArgs) -> Result<()> {
    anyhow::ensure!(args.rounds > 0 && args.sentences > 0 && args.batch > 0);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (python, mut skipped) = install_peers(&args.venv);

    let pair = Pair::prepare(models)?;
    let sides = &pair.sides;
    let paragraphs = sample_paragraphs();
    let sentences: Vec<String> = (0..args.sentences)
        .map(|i| paragraphs[i % paragraphs.len()].1.clone())
        .collect();
    let context: String = paragraphs
        .iter()
        .take(2)
        .map(|(_, p)| p.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    let prompt = eerag_shared::tokenize::chatml_prompt(
        &sides.generator_tokenizer,
        "Answer using only the context.",
        &format!("Context:\n{context}\n\nQuestion: When does the clinic open on Saturdays?"),
    )?;

    // eerag: tokenizing (and encrypting) is part of the timed work, as
    // sentence-transformers' encode() tokenizes too. Each encoder backend,
    // candle first (the "before").
    let mut encoder_runs = Vec::new();
    for backend in [EncoderBackend::Candle, EncoderBackend::Cpu] {
        let cpu = candle_core::Device::Cpu;
        let plain = Encoder::load_with(&models.encoder_dir(), &cpu, backend)?;
        let host = Encoder::load_with(&pair.artifacts.encoder_dir(), &cpu, backend)?;
        let embed = |encrypted: bool| -> Result<(f64, Vec<Vec<f32>>)> {
            let t = Instant::now();
            let mut seqs = Vec::with_capacity(sentences.len());
            for s in &sentences {
                let ids = sides.encoder_tokenizer.encode(s)?;
                seqs.push(if encrypted {
                    sides.cipher.encrypt_encoder(&ids)?.ids().to_vec()
                } else {
                    ids
                });
            }
            let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
            let encoder = if encrypted { &host } else { &plain };
            let out = encoder.embed(&refs, args.batch)?;
            Ok((t.elapsed().as_secs_f64(), out))
        };
        embed(false)?; // warm-up
        let mut secs = [Vec::new(), Vec::new()];
        let mut plain_vectors = Vec::new();
        for round in 0..args.rounds {
            for side in [round % 2, 1 - round % 2] {
                let (t, vectors) = embed(side == 1)?;
                secs[side].push(t);
                if side == 0 {
                    plain_vectors = vectors;
                }
            }
        }
        encoder_runs.push((backend, secs, plain_vectors));
    }
    let enc_prompt = sides.cipher.encrypt_generator(&prompt)?;
    // Each generator backend this build has, plaintext and encrypted: candle
    // first (the "before"), then llama.cpp.
    let mut generator_runs = Vec::new();
    for backend in [GeneratorBackend::Candle, GeneratorBackend::LlamaCpp] {
        if backend == GeneratorBackend::LlamaCpp && !llama_cpp_compiled() {
            continue;
        }
        let options = GeneratorOptions {
            backend,
            ..GeneratorOptions::on(&candle_core::Device::Cpu)
        };
        let plain = Generator::load_with(&models.generator_gguf(), &options)?;
        let host = Generator::load_with(&pair.artifacts.generator_path(), &options)?;
        // Warm-up, as the peer script warms llama.cpp up.
        crate::bench::run_generator(&plain, &prompt, 4)?;
        crate::bench::run_generator(&host, enc_prompt.ids(), 4)?;
        let mut prefill_secs = [Vec::new(), Vec::new()];
        let mut decode_secs = [Vec::new(), Vec::new()];
        let mut tokens_seen: Vec<u32> = Vec::new();
        for round in 0..args.rounds {
            for side in [round % 2, 1 - round % 2] {
                let (p, d, tokens) = if side == 0 {
                    crate::bench::run_generator(&plain, &prompt, args.decode_tokens)?
                } else {
                    let (p, d, t) =
                        crate::bench::run_generator(&host, enc_prompt.ids(), args.decode_tokens)?;
                    (p, d, sides.cipher.generator_permutation().invert_all(&t)?)
                };
                prefill_secs[side].push(p);
                decode_secs[side].push(d);
                if !tokens_seen.is_empty() {
                    anyhow::ensure!(
                        tokens_seen == tokens,
                        "{backend}: encrypted and plaintext tokens differ"
                    );
                }
                tokens_seen = tokens;
            }
        }
        generator_runs.push(GeneratorRun {
            backend,
            prefill_secs,
            decode_secs,
            tokens: tokens_seen,
        });
    }

    // The peers, after ours, in the same run and on the same inputs.
    let wanted: Vec<&str> = PEERS
        .iter()
        .map(|p| p.0)
        .filter(|name| !skipped.iter().any(|(s, _)| s == name))
        .collect();
    let mut peers = json!({});
    if !wanted.is_empty() {
        let dir = tempfile::tempdir()?;
        let script = dir.path().join("peers.py");
        std::fs::write(&script, PEERS_PY)?;
        let work = dir.path().join("work.json");
        std::fs::write(
            &work,
            serde_json::to_vec(&json!({
                "threads": threads,
                "rounds": args.rounds,
                "sentences": sentences,
                "batch": args.batch,
                "max_seq_length": eerag_shared::tokenize::DEFAULT_ENCODER_MAX_TOKENS,
                "encoder_dir": models.encoder_dir(),
                "generator_gguf": models.generator_gguf(),
                "prompt_ids": prompt,
                "decode_tokens": args.decode_tokens,
            }))?,
        )?;
        eprintln!("  running the peers: {}", wanted.join(", "));
        let result = dir.path().join("result.json");
        let out = Command::new(&python)
            .arg(&script)
            .arg(&work)
            .arg(wanted.join(","))
            .arg(&result)
            .output()
            .context("running the peer script")?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            let last = why
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            for name in wanted {
                skipped.push((name.to_string(), format!("the peer script failed: {last}")));
            }
        } else {
            peers = serde_json::from_slice(&std::fs::read(&result)?)
                .context("reading the peers' output")?;
        }
    }
    for (key, name) in [
        ("sentence_transformers", "sentence-transformers"),
        ("llama_cpp", "llama-cpp"),
    ] {
        if let Some(why) = peers[key]["skipped"].as_str() {
            skipped.push((name.to_string(), why.to_string()));
        }
    }

    let ours = |secs: &[Vec<f64>; 2], work: f64| {
        [
            work / median(secs[0].clone()),
            work / median(secs[1].clone()),
        ]
    };
    let embed_rates: Vec<(EncoderBackend, [f64; 2])> = encoder_runs
        .iter()
        .map(|(b, secs, _)| (*b, ours(secs, sentences.len() as f64)))
        .collect();
    let st = &peers["sentence_transformers"];
    let llama = &peers["llama_cpp"];
    let st_rate = st["sentences_per_s"].as_f64();
    let llama_prefill = llama["prefill_tokens_per_s"].as_f64();
    let llama_decode = llama["decode_tokens_per_s"].as_f64();
    // Same weights? The largest difference between their embeddings and ours.
    let mut worst_gap: Option<f64> = None;
    if let Some(theirs) = st["embeddings"].as_array() {
        for (_, _, vectors) in &encoder_runs {
            let gap = embedding_gap(theirs, vectors)?;
            worst_gap = Some(worst_gap.map_or(gap, |g: f64| g.max(gap)));
        }
    }
    if let Some(gap) = worst_gap.filter(|&g| g > SAME_WEIGHTS_TOLERANCE) {
        bail!("sentence-transformers' embeddings differ from eerag's by {gap:.1e}: not the same model");
    }
    let llama_tokens: Option<Vec<u32>> = llama["tokens"].as_array().map(|t| {
        t.iter()
            .filter_map(|v| v.as_u64().map(|x| x as u32))
            .collect()
    });
    let common_prefix = |ours: &[u32]| {
        llama_tokens
            .as_ref()
            .map(|t| t.iter().zip(ours).take_while(|(a, b)| a == b).count())
    };
    let rates: Vec<(&GeneratorRun, [f64; 2], [f64; 2])> = generator_runs
        .iter()
        .map(|r| {
            (
                r,
                ours(&r.prefill_secs, prompt.len() as f64),
                ours(&r.decode_secs, args.decode_tokens as f64),
            )
        })
        .collect();

    if args.json {
        let out = json!({
            "threads": threads,
            "rounds": args.rounds,
            "embed": {
                "sentences": sentences.len(), "batch": args.batch,
                "eerag": embed_rates.iter().map(|(b, r)| json!({
                    "backend": b.to_string(),
                    "plaintext_sentences_per_s": r[0],
                    "encrypted_sentences_per_s": r[1],
                })).collect::<Vec<Value>>(),
                "sentence_transformers_sentences_per_s": st_rate,
                "sentence_transformers_version": st["version"],
                "torch_version": st["torch"],
                "max_abs_embedding_difference": worst_gap,
            },
            "prompt_tokens": prompt.len(),
            "decode_tokens": args.decode_tokens,
            "llama_cpp_prefill_tokens_per_s": llama_prefill,
            "llama_cpp_decode_tokens_per_s": llama_decode,
            "llama_cpp_version": llama["version"],
            "generator": rates.iter().map(|(r, prefill, decode)| json!({
                "backend": r.backend.to_string(),
                "eerag_plaintext_prefill_tokens_per_s": prefill[0],
                "eerag_encrypted_prefill_tokens_per_s": prefill[1],
                "eerag_plaintext_decode_tokens_per_s": decode[0],
                "eerag_encrypted_decode_tokens_per_s": decode[1],
                "greedy_tokens_shared_with_llama_cpp": common_prefix(&r.tokens),
            })).collect::<Vec<Value>>(),
            "skipped": skipped.iter().map(|(n, w)| json!({"peer": n, "reason": w})).collect::<Vec<Value>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let peer_cell = |rate: Option<f64>, unit: &str, label: &str| match rate {
        Some(r) => format!("{r:.1} {unit}/s ({label})"),
        None => format!("skipped ({label})"),
    };
    let ratio = |ours: f64, theirs: Option<f64>| match theirs {
        Some(t) => format!("{:.2}", ours / t),
        None => "–".into(),
    };
    println!(
        "eerag bench --peers: {threads} threads, {} rounds, medians; the peers run after eerag in the same process tree",
        args.rounds
    );
    println!("| work | eerag plaintext | eerag encrypted | peer | eerag encrypted ÷ peer |");
    println!("| --- | --- | --- | --- | --- |");
    let st_label = format!(
        "sentence-transformers {}, torch {}",
        st["version"].as_str().unwrap_or("?"),
        st["torch"].as_str().unwrap_or("?")
    );
    for (backend, rate) in &embed_rates {
        println!(
            "| embed {} sample paragraphs, batch {} (tokenizing included; eerag on {backend}) | {:.1} sentences/s | {:.1} sentences/s | {} | {} |",
            sentences.len(),
            args.batch,
            rate[0],
            rate[1],
            peer_cell(st_rate, "sentences", &st_label),
            ratio(rate[1], st_rate)
        );
    }
    let llama_label = format!(
        "llama.cpp via llama-cpp-python {}",
        llama["version"].as_str().unwrap_or("?")
    );
    for (r, prefill_rate, decode_rate) in &rates {
        println!(
            "| generator prefill, {}-token prompt (eerag on {}) | {:.1} tokens/s | {:.1} tokens/s | {} | {} |",
            prompt.len(),
            r.backend,
            prefill_rate[0],
            prefill_rate[1],
            peer_cell(llama_prefill, "tokens", &llama_label),
            ratio(prefill_rate[1], llama_prefill)
        );
        println!(
            "| generator greedy decode, {} tokens (eerag on {}) | {:.1} tokens/s | {:.1} tokens/s | {} | {} |",
            args.decode_tokens,
            r.backend,
            decode_rate[0],
            decode_rate[1],
            peer_cell(llama_decode, "tokens", &llama_label),
            ratio(decode_rate[1], llama_decode)
        );
    }
    if let Some(gap) = worst_gap {
        println!("same weights: sentence-transformers' embeddings differ from eerag's by at most {gap:.1e}");
    }
    for (r, _, _) in &rates {
        if let Some(n) = common_prefix(&r.tokens) {
            println!(
                "greedy tokens on {}: eerag encrypted = eerag plaintext; llama-cpp-python agrees on the first {n} of {}",
                r.backend, args.decode_tokens
            );
        }
    }
    for (name, why) in &skipped {
        println!("skipped {name}: {why}");
    }
    Ok(())
}
