//! `eerag bench peers`: eerag's encoder and generator, plaintext and
//! encrypted, next to the usual way of running the same public weights on the
//! same machine in the same run: sentence-transformers (PyTorch, CPU) for
//! all-MiniLM-L6-v2 and llama.cpp (llama-cpp-python) for the SmolLM2 GGUF.
//!
//! The peers are installed by this command into a virtual environment of
//! their own (pinned versions, from PyPI) and driven by `lab/peers.py`;
//! a peer that cannot be installed or loaded is skipped with the reason.
//! Each peer runs in a process of its own (one crashing takes no other
//! down) that stays running and runs one round per request, so every
//! round runs eerag plaintext, eerag encrypted and the peer in turn (who
//! goes first rotates) and each ratio is the median of per-round ratios:
//! this machine's speed drifts by ±10–15% over minutes, which would otherwise
//! land on one side.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use eerag_core::models::generator::llama_cpp_compiled;
use eerag_core::models::{Encoder, EncoderBackend, Generator, GeneratorBackend, GeneratorOptions};

use crate::cmd::bench::{median, speed_ratios, CommonArgs};
use crate::workload::{sample_paragraphs, sample_prompt, Pair};

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
const PEERS_PY: &str = include_str!("../../peers.py");

/// Options of `eerag bench peers`.
#[derive(clap::Args)]
pub struct PeerArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The peers' virtual environment (made if missing).
    #[arg(long, default_value = "target/eerag-peer-venv")]
    peer_venv: PathBuf,
    /// Measurement rounds (each runs eerag plaintext, eerag encrypted and
    /// each peer).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Paragraphs embedded per encoder round.
    #[arg(long, default_value_t = 64)]
    sentences: usize,
    /// Encoder batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Tokens decoded per generator round.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
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
        let build = (name == "llama-cpp").then(llama_cpp_cmake_args);
        let stamp = venv.join(format!("eerag-{name}.build"));
        let built_as_asked = build
            .as_ref()
            .is_none_or(|args| std::fs::read_to_string(&stamp).ok().as_deref() == Some(args));
        let present = built_as_asked
            && Command::new(&python)
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success());
        if present {
            continue;
        }
        eprintln!("  installing {requirement} (first run only; minutes)");
        let mut pip = Command::new(&python);
        pip.args(["-m", "pip", "install", "-q", requirement]);
        if let Some(args) = &build {
            // A build with other flags goes first; pip's wheel cache would
            // hand it back, so this one is built from source with ours.
            let _ = Command::new(&python)
                .args(["-m", "pip", "uninstall", "-q", "-y"])
                .arg(requirement.split("==").next().unwrap_or(requirement))
                .output();
            pip.arg("--no-cache-dir").env("CMAKE_ARGS", args);
        }
        let why = match pip.output() {
            Ok(o) if o.status.success() => {
                if let Some(args) = &build {
                    let _ = std::fs::write(&stamp, args);
                }
                continue;
            }
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

/// How llama-cpp-python's llama.cpp is compiled: for this CPU's vector
/// extensions, as its default `-march=native` build is, but without AMX.
/// On the 2-core Sapphire Rapids VMs this project runs on, the native build
/// (AMX tiles on) segfaults in its first `llama_decode` (measured with
/// llama-cpp-python 0.3.36, 2026-12-02), so the peer would not run at all.
fn llama_cpp_cmake_args() -> String {
    let mut args = vec!["-DGGML_NATIVE=OFF".to_string()];
    #[cfg(target_arch = "x86_64")]
    {
        let features = [
            ("GGML_AVX", std::arch::is_x86_feature_detected!("avx")),
            ("GGML_AVX2", std::arch::is_x86_feature_detected!("avx2")),
            ("GGML_FMA", std::arch::is_x86_feature_detected!("fma")),
            ("GGML_F16C", std::arch::is_x86_feature_detected!("f16c")),
            ("GGML_BMI2", std::arch::is_x86_feature_detected!("bmi2")),
            (
                "GGML_AVX_VNNI",
                std::arch::is_x86_feature_detected!("avxvnni"),
            ),
            (
                "GGML_AVX512",
                std::arch::is_x86_feature_detected!("avx512f"),
            ),
            (
                "GGML_AVX512_VBMI",
                std::arch::is_x86_feature_detected!("avx512vbmi"),
            ),
            (
                "GGML_AVX512_VNNI",
                std::arch::is_x86_feature_detected!("avx512vnni"),
            ),
            (
                "GGML_AVX512_BF16",
                std::arch::is_x86_feature_detected!("avx512bf16"),
            ),
        ];
        args.extend(
            features
                .iter()
                .map(|(flag, on)| format!("-D{flag}={}", if *on { "ON" } else { "OFF" })),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        args[0] = "-DGGML_NATIVE=ON".to_string();
    }
    args.join(" ")
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

/// What the peer script prints before each of its replies.
const REPLY: &str = "EERAG-PEER ";

/// The peer script, running: it loads the peers once, then runs one round
/// per request.
struct PeerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl PeerProcess {
    /// Starts the script on `work` for the `wanted` peers; returns it with
    /// its "ready" reply (each peer's versions, or why it is skipped).
    fn start(python: &Path, wanted: &[&str], work: &Value) -> Result<(Self, Value)> {
        let dir = tempfile::tempdir()?;
        let script = dir.path().join("peers.py");
        std::fs::write(&script, PEERS_PY)?;
        let work_file = dir.path().join("work.json");
        std::fs::write(&work_file, serde_json::to_vec(work)?)?;
        let stderr = dir.path().join("stderr.txt");
        let mut child = Command::new(python)
            .arg(&script)
            .arg(&work_file)
            .arg(wanted.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .context("running the peer script")?;
        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(i), Some(o)) => (i, BufReader::new(o)),
            _ => bail!("the peer script's pipes are missing"),
        };
        let mut process = Self {
            child,
            stdin,
            stdout,
            stderr,
            _dir: dir,
        };
        let ready = process.reply()?["ready"].take();
        Ok((process, ready))
    }

    /// The next reply; other lines (libraries' own output) are skipped.
    fn reply(&mut self) -> Result<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                let last = log.lines().rev().find(|l| !l.trim().is_empty());
                let status = self
                    .child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                bail!(
                    "the peer script exited ({status}); its last words: {}",
                    last.unwrap_or("none")
                );
            }
            if let Some(reply) = line.strip_prefix(REPLY) {
                return serde_json::from_str(reply.trim()).context("reading a peer's reply");
            }
        }
    }

    /// One round of `peer`; `vectors` asks the encoder peer for its embeddings.
    fn round(&mut self, peer: &str, vectors: bool) -> Result<Value> {
        writeln!(self.stdin, "{}", json!({"peer": peer, "vectors": vectors}))?;
        self.stdin.flush()?;
        let reply = self.reply()?;
        if let Some(why) = reply["error"].as_str() {
            bail!("{why}");
        }
        Ok(reply)
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

/// The peers still in the running, each in a process of its own (a peer
/// that crashes takes no other down), and why the others dropped out.
struct Peers {
    processes: Vec<(String, PeerProcess)>,
    ready: Value,
    skipped: Vec<(String, String)>,
}

impl Peers {
    /// One round of `peer`, or `None` (and it is skipped from now on) if it
    /// is not running or this round failed.
    fn round(&mut self, peer: &str, vectors: bool) -> Option<Value> {
        let at = self.processes.iter().position(|(name, _)| name == peer)?;
        match self.processes[at].1.round(peer, vectors) {
            Ok(reply) => Some(reply),
            Err(e) => {
                self.processes.remove(at);
                self.skipped
                    .push((peer.to_string(), format!("failed in a round: {e:#}")));
                None
            }
        }
    }

    /// `key` of the peer's "ready" reply (its versions).
    fn info(&self, peer: &str, key: &str) -> String {
        self.ready[peer][key].as_str().unwrap_or("?").to_string()
    }
}

/// Who goes in which place in `round`: 0 and 1 are eerag plaintext and
/// encrypted, 2 the peer; the first place rotates round by round.
fn turns(round: usize) -> [usize; 3] {
    [round % 3, (round + 1) % 3, (round + 2) % 3]
}

/// eerag's rates (plaintext, encrypted) and the peer's, all per second, with
/// the median (min–max) of the per-round ratios eerag encrypted ÷ peer.
struct Rates {
    ours: [f64; 2],
    peer: Option<f64>,
    ratio: Option<(f64, f64, f64)>,
}

impl Rates {
    /// From seconds per round (plaintext, encrypted, peer) for `work` units;
    /// the peer counts only if it ran every round.
    fn new(ours: &[Vec<f64>; 2], peer: &[f64], work: f64) -> Self {
        let complete = !peer.is_empty() && peer.len() == ours[1].len();
        Self {
            ours: [
                work / median(ours[0].clone()),
                work / median(ours[1].clone()),
            ],
            peer: complete.then(|| work / median(peer.to_vec())),
            ratio: complete.then(|| speed_ratios(peer, &ours[1])),
        }
    }

    fn json(&self, unit: &str) -> Value {
        json!({
            format!("eerag_plaintext_{unit}_per_s"): self.ours[0],
            format!("eerag_encrypted_{unit}_per_s"): self.ours[1],
            format!("peer_{unit}_per_s"): self.peer,
            "encrypted_over_peer": self.ratio.map(|r| r.0),
            "encrypted_over_peer_min": self.ratio.map(|r| r.1),
            "encrypted_over_peer_max": self.ratio.map(|r| r.2),
        })
    }

    fn row(&self, work: &str, unit: &str, peer: &str) -> String {
        let peer = match self.peer {
            Some(r) => format!("{r:.1} {unit}/s ({peer})"),
            None => format!("skipped ({peer})"),
        };
        let ratio = match self.ratio {
            Some((median, min, max)) => format!("**{median:.2}** ({min:.2}–{max:.2})"),
            None => "–".into(),
        };
        format!(
            "| {work} | {:.1} {unit}/s | {:.1} {unit}/s | {peer} | {ratio} |",
            self.ours[0], self.ours[1]
        )
    }
}

/// Embeddings further apart than this are not the same weights.
const SAME_WEIGHTS_TOLERANCE: f64 = 1e-4;

/// Runs the comparison and prints a table (or JSON).
pub fn run(args: &PeerArgs) -> Result<()> {
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(args.sentences > 0, "--sentences must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let models = &args.common.models.require()?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (python, skipped) = install_peers(&args.peer_venv);

    let pair = Pair::prepare(models)?;
    let sides = &pair.sides;
    let paragraphs = sample_paragraphs();
    let sentences: Vec<String> = (0..args.sentences)
        .map(|i| paragraphs[i % paragraphs.len()].1.clone())
        .collect();
    let prompt = sample_prompt(&sides.generator_tokenizer)?;

    // The peers load once, before eerag's first round, on the same inputs.
    let mut peers = Peers {
        processes: Vec::new(),
        ready: json!({}),
        skipped,
    };
    let work = json!({
        "threads": threads,
        "sentences": sentences,
        "batch": args.batch,
        "max_seq_length": eerag_client::tokenize::DEFAULT_ENCODER_MAX_TOKENS,
        "encoder_dir": models.encoder_dir(),
        "generator_gguf": models.generator_gguf(),
        "prompt_ids": prompt,
        "decode_tokens": args.decode_tokens,
    });
    for (name, _, _) in PEERS {
        if peers.skipped.iter().any(|(s, _)| s == name) {
            continue;
        }
        eprintln!("  loading {name}");
        match PeerProcess::start(&python, &[name], &work) {
            Ok((process, mut ready)) => {
                let ready = ready[name].take();
                if let Some(why) = ready["skipped"].as_str() {
                    peers.skipped.push((name.to_string(), why.to_string()));
                } else {
                    peers.processes.push((name.to_string(), process));
                }
                peers.ready[name] = ready;
            }
            Err(e) => peers.skipped.push((name.to_string(), format!("{e:#}"))),
        }
    }

    // eerag: tokenizing (and encrypting) is part of the timed work, as
    // sentence-transformers' encode() tokenizes too. Each encoder backend,
    // candle first (the "before"), in turns with sentence-transformers.
    let mut encoder_runs = Vec::new();
    let mut st_vectors: Option<Vec<Value>> = None;
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
        let mut peer_secs = Vec::new();
        let mut plain_vectors = Vec::new();
        for round in 0..args.rounds {
            for turn in turns(round) {
                if turn == 2 {
                    let reply = peers.round("sentence-transformers", st_vectors.is_none());
                    if let Some(mut reply) = reply {
                        peer_secs.push(reply["seconds"].as_f64().unwrap_or(f64::NAN));
                        if let Value::Array(vectors) = reply["embeddings"].take() {
                            st_vectors = Some(vectors);
                        }
                    }
                    continue;
                }
                let (t, vectors) = embed(turn == 1)?;
                secs[turn].push(t);
                if turn == 0 {
                    plain_vectors = vectors;
                }
            }
        }
        let rates = Rates::new(&secs, &peer_secs, sentences.len() as f64);
        encoder_runs.push((backend, rates, plain_vectors));
    }
    // Same weights? The largest difference between their embeddings and ours.
    let mut worst_gap: Option<f64> = None;
    if let Some(theirs) = &st_vectors {
        for (_, _, vectors) in &encoder_runs {
            let gap = embedding_gap(theirs, vectors)?;
            worst_gap = Some(worst_gap.map_or(gap, |g: f64| g.max(gap)));
        }
    }
    if let Some(gap) = worst_gap.filter(|&g| g > SAME_WEIGHTS_TOLERANCE) {
        bail!("sentence-transformers' embeddings differ from eerag's by {gap:.1e}: not the same model");
    }

    // Each generator backend this build has, plaintext and encrypted, in
    // turns with llama.cpp: candle first (the "before"), then llama.cpp.
    let enc_prompt = sides.cipher.encrypt_generator(&prompt)?;
    let mut generator_runs = Vec::new();
    let mut llama_tokens: Option<Vec<u32>> = None;
    // eerag plaintext reads a copy of the public GGUF, not the file the peer
    // maps: sharing those pages (still in the cache after the peer's round)
    // sped up whichever of the two ran after the other, while the encrypted
    // side's file never shared anything.
    let plain_copy = tempfile::tempdir()?;
    let plain_gguf = plain_copy.path().join("model.gguf");
    std::fs::copy(models.generator_gguf(), &plain_gguf).context("copying the public GGUF")?;
    for backend in [GeneratorBackend::Candle, GeneratorBackend::LlamaCpp] {
        if backend == GeneratorBackend::LlamaCpp && !llama_cpp_compiled() {
            continue;
        }
        let options = GeneratorOptions {
            backend,
            ..GeneratorOptions::on(&candle_core::Device::Cpu)
        };
        let plain = Generator::load_with(&plain_gguf, &options)?;
        let host = Generator::load_with(&pair.artifacts.generator_path(), &options)?;
        // Warm-up, as the peer script warms llama.cpp up.
        crate::cmd::bench::run_generator(&plain, &prompt, 4)?;
        crate::cmd::bench::run_generator(&host, enc_prompt.ids(), 4)?;
        let mut prefill_secs = [Vec::new(), Vec::new()];
        let mut decode_secs = [Vec::new(), Vec::new()];
        let (mut peer_prefill, mut peer_decode) = (Vec::new(), Vec::new());
        let mut tokens_seen: Vec<u32> = Vec::new();
        for round in 0..args.rounds {
            for turn in turns(round) {
                if turn == 2 {
                    if let Some(reply) = peers.round("llama-cpp", false) {
                        peer_prefill.push(reply["prefill_seconds"].as_f64().unwrap_or(f64::NAN));
                        peer_decode.push(reply["decode_seconds"].as_f64().unwrap_or(f64::NAN));
                        llama_tokens = reply["tokens"].as_array().map(|t| {
                            t.iter()
                                .filter_map(|v| v.as_u64().map(|x| x as u32))
                                .collect()
                        });
                    }
                    continue;
                }
                let (p, d, tokens) = if turn == 0 {
                    crate::cmd::bench::run_generator(&plain, &prompt, args.decode_tokens)?
                } else {
                    let (p, d, t) = crate::cmd::bench::run_generator(
                        &host,
                        enc_prompt.ids(),
                        args.decode_tokens,
                    )?;
                    (p, d, sides.cipher.generator_permutation().invert_all(&t)?)
                };
                prefill_secs[turn].push(p);
                decode_secs[turn].push(d);
                if !tokens_seen.is_empty() {
                    anyhow::ensure!(
                        tokens_seen == tokens,
                        "{backend}: encrypted and plaintext tokens differ"
                    );
                }
                tokens_seen = tokens;
            }
        }
        let prefill = Rates::new(&prefill_secs, &peer_prefill, prompt.len() as f64);
        let decode = Rates::new(&decode_secs, &peer_decode, args.decode_tokens as f64);
        generator_runs.push((backend, prefill, decode, tokens_seen));
    }
    peers.processes.clear();
    let skipped = &peers.skipped;
    let common_prefix = |ours: &[u32]| {
        llama_tokens
            .as_ref()
            .map(|t| t.iter().zip(ours).take_while(|(a, b)| a == b).count())
    };

    if args.common.json {
        let out = json!({
            "threads": threads,
            "rounds": args.rounds,
            "embed": {
                "sentences": sentences.len(), "batch": args.batch,
                "sentence_transformers_version": peers.info("sentence-transformers", "version"),
                "torch_version": peers.info("sentence-transformers", "torch"),
                "max_abs_embedding_difference": worst_gap,
                "runs": encoder_runs.iter().map(|(b, rates, _)| {
                    let mut run = rates.json("sentences");
                    run["backend"] = json!(b.to_string());
                    run
                }).collect::<Vec<Value>>(),
            },
            "prompt_tokens": prompt.len(),
            "decode_tokens": args.decode_tokens,
            "llama_cpp_version": peers.info("llama-cpp", "version"),
            "eerag_llama_cpp_kernels": crate::cmd::bench::llama_cpp_kernels(),
            "generator": generator_runs.iter().map(|(b, prefill, decode, tokens)| json!({
                "backend": b.to_string(),
                "prefill": prefill.json("tokens"),
                "decode": decode.json("tokens"),
                "greedy_tokens_shared_with_llama_cpp": common_prefix(tokens),
            })).collect::<Vec<Value>>(),
            "skipped": skipped.iter().map(|(n, w)| json!({"peer": n, "reason": w})).collect::<Vec<Value>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "eerag bench peers: {threads} threads, {} rounds, medians; each round runs eerag plaintext, eerag encrypted and the peer in turn (rotating who goes first)",
        args.rounds
    );
    println!("| work | eerag plaintext | eerag encrypted | peer, same rounds | eerag encrypted ÷ peer, median of rounds (min–max) |");
    println!("| --- | --- | --- | --- | --- |");
    let st_label = format!(
        "sentence-transformers {}, torch {}",
        peers.info("sentence-transformers", "version"),
        peers.info("sentence-transformers", "torch")
    );
    for (backend, rates, _) in &encoder_runs {
        let work = format!(
            "embed {} sample paragraphs, batch {} (tokenizing included; eerag on {backend})",
            sentences.len(),
            args.batch
        );
        println!("{}", rates.row(&work, "sentences", &st_label));
    }
    let llama_label = format!(
        "llama.cpp via llama-cpp-python {}",
        peers.info("llama-cpp", "version")
    );
    for (backend, prefill, decode, _) in &generator_runs {
        let work = format!(
            "generator prefill, {}-token prompt (eerag on {backend})",
            prompt.len()
        );
        println!("{}", prefill.row(&work, "tokens", &llama_label));
        let work = format!(
            "generator greedy decode, {} tokens (eerag on {backend})",
            args.decode_tokens
        );
        println!("{}", decode.row(&work, "tokens", &llama_label));
    }
    if let Some(gap) = worst_gap {
        println!("same weights: sentence-transformers' embeddings differ from eerag's by at most {gap:.1e}");
    }
    for (backend, _, _, tokens) in &generator_runs {
        if let Some(n) = common_prefix(tokens) {
            println!(
                "greedy tokens on {backend}: eerag encrypted = eerag plaintext; llama-cpp-python agrees on the first {n} of {}",
                args.decode_tokens
            );
        }
    }
    if let Some(kernels) = crate::cmd::bench::llama_cpp_kernels() {
        println!("eerag's llama.cpp CPU kernels: {kernels}");
    }
    for (name, why) in skipped {
        println!("skipped {name}: {why}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_side_takes_every_place_once_in_three_rounds() {
        for round in 0..6 {
            let mut sides = turns(round);
            sides.sort_unstable();
            assert_eq!(sides, [0, 1, 2], "round {round}");
        }
        for place in 0..3 {
            let mut sides: Vec<usize> = (0..3).map(|round| turns(round)[place]).collect();
            sides.sort_unstable();
            assert_eq!(sides, [0, 1, 2], "place {place}");
        }
    }

    #[test]
    fn the_peer_llama_cpp_is_built_without_native_or_amx() {
        let args = llama_cpp_cmake_args();
        assert!(!args.contains("AMX"), "{args}");
        if cfg!(target_arch = "x86_64") {
            assert!(args.starts_with("-DGGML_NATIVE=OFF"), "{args}");
            let avx2 = if std::arch::is_x86_feature_detected!("avx2") {
                "ON"
            } else {
                "OFF"
            };
            assert!(args.contains(&format!("-DGGML_AVX2={avx2}")), "{args}");
        }
    }

    #[test]
    fn a_peer_that_missed_a_round_gets_no_ratio() {
        let ours = [vec![1.0, 1.0, 1.0], vec![2.0, 2.0, 2.0]];
        let all = Rates::new(&ours, &[4.0, 4.0, 4.0], 8.0);
        assert_eq!(all.ours, [8.0, 4.0]);
        assert_eq!(all.peer, Some(2.0));
        assert_eq!(all.ratio, Some((2.0, 2.0, 2.0)));
        let missed = Rates::new(&ours, &[4.0, 4.0], 8.0);
        assert_eq!((missed.peer, missed.ratio), (None, None));
    }
}
