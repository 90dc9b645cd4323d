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

/// The peers, as pip installs them: (name on the command line, requirement,
/// module to import).
const PEERS: [(&str, &str, &str); 2] = [
    (
        "sentence-transformers",
        "sentence-transformers==6.2.0",
        "sentence_transformers",
    ),
    ("llama-cpp", "llama-cpp-python==0.3.16", "llama_cpp"),
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
    // sentence-transformers' encode() tokenizes too.
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
        let encoder = if encrypted {
            &sides.host_encoder
        } else {
            &sides.plain_encoder
        };
        let out = encoder.embed(&refs, args.batch)?;
        Ok((t.elapsed().as_secs_f64(), out))
    };
    embed(false)?; // warm-up
    let mut embed_secs = [Vec::new(), Vec::new()];
    let mut plain_vectors = Vec::new();
    for round in 0..args.rounds {
        for side in [round % 2, 1 - round % 2] {
            let (secs, vectors) = embed(side == 1)?;
            embed_secs[side].push(secs);
            if side == 0 {
                plain_vectors = vectors;
            }
        }
    }
    let enc_prompt = sides.cipher.encrypt_generator(&prompt)?;
    // Warm-up, as the peer script warms llama.cpp up.
    crate::bench::run_generator(&sides.plain_generator, &prompt, 4)?;
    crate::bench::run_generator(&sides.host_generator, enc_prompt.ids(), 4)?;
    let mut prefill_secs = [Vec::new(), Vec::new()];
    let mut decode_secs = [Vec::new(), Vec::new()];
    let mut our_tokens = Vec::new();
    for round in 0..args.rounds {
        for side in [round % 2, 1 - round % 2] {
            let (p, d, tokens) = if side == 0 {
                crate::bench::run_generator(&sides.plain_generator, &prompt, args.decode_tokens)?
            } else {
                let (p, d, t) = crate::bench::run_generator(
                    &sides.host_generator,
                    enc_prompt.ids(),
                    args.decode_tokens,
                )?;
                (p, d, sides.cipher.generator_permutation().invert_all(&t)?)
            };
            prefill_secs[side].push(p);
            decode_secs[side].push(d);
            if !our_tokens.is_empty() {
                anyhow::ensure!(
                    our_tokens == tokens,
                    "encrypted and plaintext tokens differ"
                );
            }
            our_tokens = tokens;
        }
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
    let embed_rate = ours(&embed_secs, sentences.len() as f64);
    let prefill_rate = ours(&prefill_secs, prompt.len() as f64);
    let decode_rate = ours(&decode_secs, args.decode_tokens as f64);
    let st = &peers["sentence_transformers"];
    let llama = &peers["llama_cpp"];
    let st_rate = st["sentences_per_s"].as_f64();
    let llama_prefill = llama["prefill_tokens_per_s"].as_f64();
    let llama_decode = llama["decode_tokens_per_s"].as_f64();
    // Same weights? The largest difference between their embeddings and ours.
    let embedding_gap = st["embeddings"]
        .as_array()
        .map(|theirs| embedding_gap(theirs, &plain_vectors))
        .transpose()?;
    if let Some(gap) = embedding_gap.filter(|&g| g > SAME_WEIGHTS_TOLERANCE) {
        bail!("sentence-transformers' embeddings differ from eerag's by {gap:.1e}: not the same model");
    }
    let llama_tokens: Option<Vec<u32>> = llama["tokens"].as_array().map(|t| {
        t.iter()
            .filter_map(|v| v.as_u64().map(|x| x as u32))
            .collect()
    });
    let common_prefix = llama_tokens.as_ref().map(|t| {
        t.iter()
            .zip(&our_tokens)
            .take_while(|(a, b)| a == b)
            .count()
    });

    if args.json {
        let out = json!({
            "threads": threads,
            "rounds": args.rounds,
            "embed": {
                "sentences": sentences.len(), "batch": args.batch,
                "eerag_plaintext_sentences_per_s": embed_rate[0],
                "eerag_encrypted_sentences_per_s": embed_rate[1],
                "sentence_transformers_sentences_per_s": st_rate,
                "sentence_transformers_version": st["version"],
                "torch_version": st["torch"],
                "max_abs_embedding_difference": embedding_gap,
            },
            "prefill": {
                "prompt_tokens": prompt.len(),
                "eerag_plaintext_tokens_per_s": prefill_rate[0],
                "eerag_encrypted_tokens_per_s": prefill_rate[1],
                "llama_cpp_tokens_per_s": llama_prefill,
            },
            "decode": {
                "tokens": args.decode_tokens,
                "eerag_plaintext_tokens_per_s": decode_rate[0],
                "eerag_encrypted_tokens_per_s": decode_rate[1],
                "llama_cpp_tokens_per_s": llama_decode,
                "llama_cpp_version": llama["version"],
                "greedy_tokens_shared_with_llama_cpp": common_prefix,
            },
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
    println!(
        "| embed {} sample paragraphs, batch {} (tokenizing included) | {:.1} sentences/s | {:.1} sentences/s | {} | {} |",
        sentences.len(),
        args.batch,
        embed_rate[0],
        embed_rate[1],
        peer_cell(st_rate, "sentences", &st_label),
        ratio(embed_rate[1], st_rate)
    );
    let llama_label = format!(
        "llama.cpp via llama-cpp-python {}",
        llama["version"].as_str().unwrap_or("?")
    );
    println!(
        "| generator prefill, {}-token prompt | {:.1} tokens/s | {:.1} tokens/s | {} | {} |",
        prompt.len(),
        prefill_rate[0],
        prefill_rate[1],
        peer_cell(llama_prefill, "tokens", &llama_label),
        ratio(prefill_rate[1], llama_prefill)
    );
    println!(
        "| generator greedy decode, {} tokens | {:.1} tokens/s | {:.1} tokens/s | {} | {} |",
        args.decode_tokens,
        decode_rate[0],
        decode_rate[1],
        peer_cell(llama_decode, "tokens", &llama_label),
        ratio(decode_rate[1], llama_decode)
    );
    if let Some(gap) = embedding_gap {
        println!("same weights: sentence-transformers' embeddings differ from eerag's by at most {gap:.1e}");
    }
    if let Some(n) = common_prefix {
        println!(
            "greedy tokens: eerag encrypted = eerag plaintext; llama.cpp agrees on the first {n} of {} (different kernels round differently)",
            args.decode_tokens
        );
    }
    for (name, why) in &skipped {
        println!("skipped {name}: {why}");
    }
    Ok(())
}
