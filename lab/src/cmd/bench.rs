//! `eerag bench`: its subcommands (models, host, scale, peers, each in a
//! module of its own but `models`, which is here) and `eerag bench models`:
//! the models' encrypted vs plaintext speed, side by side in one run.
//!
//! Each round runs the plaintext and the encrypted workload back to back, in
//! alternating order, so drift in machine load hits both; the figures are
//! medians over rounds and the ratio is encrypted ÷ plaintext throughput.

use std::time::Instant;

use anyhow::{ensure, Result};
use eerag_core::models::{Encoder, Generator, GeneratorOptions};
use serde_json::json;

use eerag_client::cli::ModelsArg;
use eerag_host::cli::DeviceArgs;

use crate::workload::{sample_paragraphs, sample_prompt, Pair};

/// `eerag bench`: one subcommand per measurement.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: BenchMode,
}

/// The measurements `eerag bench` makes, one subcommand each.
#[derive(clap::Subcommand)]
enum BenchMode {
    /// The encoder and the generator in process, encrypted vs plaintext on
    /// the same public models (a throwaway key's transformed copies).
    Models(ModelBenchArgs),
    /// The host service end to end over HTTP (ingest, search in every
    /// mode, answers) on two in-process hosts, encrypted vs plaintext.
    Host(crate::cmd::bench_host::HostBenchArgs),
    /// Search latency at growing corpus sizes, on synthetic chunks written
    /// straight into two hosts' stores.
    Scale(crate::cmd::bench_scale::ScaleArgs),
    /// eerag against peers on the same weights: sentence-transformers
    /// (PyTorch, CPU) and llama.cpp (llama-cpp-python), installed from PyPI
    /// into --peer-venv on first use.
    Peers(crate::cmd::bench_peers::PeerArgs),
}

/// What every bench mode takes.
#[derive(clap::Args)]
pub(crate) struct CommonArgs {
    // The models folder (`--models`).
    #[command(flatten)]
    pub(crate) models: ModelsArg,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Options of `eerag bench models`.
#[derive(clap::Args)]
pub struct ModelBenchArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Measurement rounds (each runs both pipelines).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Sentences per encoder round.
    #[arg(long, default_value_t = 64)]
    sentences: usize,
    /// Tokens per sentence, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 100)]
    sentence_tokens: usize,
    /// Encoder batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Tokens decoded per generator round.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Generations decoded together in the batched-decode rows (the
    /// server's continuous batching); 1 skips them.
    #[arg(long, default_value_t = 8)]
    decode_batch: usize,
    /// The public generator to measure: a GGUF, or a safetensors folder from
    /// `eerag models export-generator` [default: the models folder's GGUF].
    #[arg(long)]
    generator: Option<std::path::PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Sentences of exactly `len` encoder tokens cut from the sample corpus.
fn encoder_workload(pair: &Pair, count: usize, len: usize) -> Result<Vec<Vec<u32>>> {
    let tok = &pair.sides.encoder_tokenizer;
    let wrap = tok.encode("")?; // [CLS] [SEP]
    ensure!(
        wrap.len() == 2 && len > 2,
        "unexpected encoder special tokens"
    );
    let body: Vec<u32> = sample_paragraphs()
        .iter()
        .map(|(_, p)| tok.encode_plain(p))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let inner = len - 2;
    ensure!(body.len() > inner, "sample corpus too small");
    Ok((0..count)
        .map(|i| {
            let start = (i * 37) % (body.len() - inner);
            let mut s = vec![wrap[0]];
            s.extend_from_slice(&body[start..start + inner]);
            s.push(wrap[1]);
            s
        })
        .collect())
}

/// How much faster `ours` ran than `base`, round by round (same work in
/// each round, so base seconds ÷ our seconds): (median, min, max). Pairing
/// each round's runs cancels slow drift in machine load.
pub(crate) fn speed_ratios(base: &[f64], ours: &[f64]) -> (f64, f64, f64) {
    let ratios: Vec<f64> = base.iter().zip(ours).map(|(b, o)| b / o).collect();
    (
        median(ratios.clone()),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

/// Seconds per round for each side.
pub(crate) struct Timing {
    pub(crate) plain: Vec<f64>,
    pub(crate) encrypted: Vec<f64>,
}

/// Throughputs (`work` units per second) and the encrypted ÷ plaintext ratio.
pub(crate) struct Figures {
    plain: f64,
    encrypted: f64,
    /// Median of the per-round ratios: pairing each round's two runs cancels
    /// slow drift in machine load.
    ratio: f64,
    ratio_min: f64,
    ratio_max: f64,
}

impl Timing {
    pub(crate) fn new() -> Self {
        Self {
            plain: Vec::new(),
            encrypted: Vec::new(),
        }
    }

    pub(crate) fn figures(&self, work: f64) -> Figures {
        let (ratio, ratio_min, ratio_max) = speed_ratios(&self.plain, &self.encrypted);
        Figures {
            plain: work / median(self.plain.clone()),
            encrypted: work / median(self.encrypted.clone()),
            ratio,
            ratio_min,
            ratio_max,
        }
    }
}

impl Figures {
    pub(crate) fn json(&self, unit: &str) -> serde_json::Value {
        json!({
            format!("plaintext_{unit}_per_s"): self.plain,
            format!("encrypted_{unit}_per_s"): self.encrypted,
            "ratio": self.ratio,
            "ratio_min": self.ratio_min,
            "ratio_max": self.ratio_max,
        })
    }

    pub(crate) fn row(&self, work: &str, unit: &str) -> String {
        format!(
            "| {work} | {:.1} {unit}/s | {:.1} {unit}/s | {:.2} ({:.2}–{:.2}) |",
            self.plain, self.encrypted, self.ratio, self.ratio_min, self.ratio_max
        )
    }
}

fn run_encoder(enc: &Encoder, seqs: &[Vec<u32>], batch: usize) -> Result<(f64, Vec<Vec<f32>>)> {
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let started = Instant::now();
    let out = enc.embed(&refs, batch)?;
    Ok((started.elapsed().as_secs_f64(), out))
}

/// Which build of llama.cpp's CPU kernels eerag ran, once it has started.
pub(crate) fn llama_cpp_kernels() -> Option<String> {
    #[cfg(feature = "llama-cpp")]
    {
        eerag_core::models::llamacpp::kernels()
    }
    #[cfg(not(feature = "llama-cpp"))]
    {
        None
    }
}

/// (prefill seconds, decode seconds, tokens).
pub(crate) fn run_generator(
    gen: &Generator,
    prompt: &[u32],
    decode: usize,
) -> Result<(f64, f64, Vec<u32>)> {
    let mut session = gen.session();
    let started = Instant::now();
    let mut logits = session.feed(prompt)?;
    let prefill = started.elapsed().as_secs_f64();
    let mut tokens = Vec::with_capacity(decode);
    let started = Instant::now();
    for _ in 0..decode {
        let next = eerag_core::sampling::argmax(&logits);
        tokens.push(next);
        logits = session.feed(&[next])?;
    }
    Ok((prefill, started.elapsed().as_secs_f64(), tokens))
}

/// `batch` generations of `prompt`, prefilled once and then decoded
/// together by [`Generator::step`]; (decode seconds, each one's tokens).
fn run_generator_batch(
    gen: &Generator,
    prompt: &[u32],
    batch: usize,
    decode: usize,
) -> Result<(f64, Vec<Vec<u32>>)> {
    let mut first = gen.session();
    let start = eerag_core::sampling::argmax(&first.feed(prompt)?);
    let mut sessions = (0..batch)
        .map(|_| first.fork())
        .collect::<Result<Vec<_>, _>>()?;
    let mut next = vec![start; batch];
    let mut tokens = vec![Vec::with_capacity(decode); batch];
    let started = Instant::now();
    for _ in 0..decode {
        for (t, &n) in tokens.iter_mut().zip(&next) {
            t.push(n);
        }
        let mut refs: Vec<_> = sessions.iter_mut().collect();
        let logits = gen.step(&mut refs, &next)?;
        next = logits
            .iter()
            .map(|l| eerag_core::sampling::argmax(l))
            .collect();
    }
    Ok((started.elapsed().as_secs_f64(), tokens))
}

/// Bytes of a file, or of the files in a folder.
fn file_bytes(path: &std::path::Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

/// Runs the chosen benchmark.
pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.mode {
        BenchMode::Models(args) => run_models(args),
        BenchMode::Host(args) => crate::cmd::bench_host::run(args),
        BenchMode::Scale(args) => crate::cmd::bench_scale::run(args),
        BenchMode::Peers(args) => crate::cmd::bench_peers::run(args),
    }
}

/// `eerag bench models`.
fn run_models(args: &ModelBenchArgs) -> Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    let models = args.common.models.require()?;
    let device = args.device.select()?;
    let generator_base = args
        .generator
        .clone()
        .unwrap_or_else(|| models.generator_gguf());
    let generator_options = GeneratorOptions {
        backend: args.device.generator_backend,
        ..GeneratorOptions::on(&device)
    };
    let pair = Pair::prepare_on(&models, &generator_base, &generator_options)?;
    eprintln!("generator backend: {}", pair.sides.host_generator.backend());
    if let Some(kernels) = llama_cpp_kernels() {
        eprintln!("llama.cpp CPU kernels: {kernels}");
    }
    let c = &pair.sides.cipher;

    let plain_seqs = encoder_workload(&pair, args.sentences, args.sentence_tokens)?;
    let enc_seqs: Vec<Vec<u32>> = plain_seqs
        .iter()
        .map(|s| c.encrypt_encoder(s).map(|e| e.ids().to_vec()))
        .collect::<Result<_, _>>()?;
    // One untimed warm-up of each side.
    run_encoder(
        &pair.sides.plain_encoder,
        &plain_seqs[..args.batch.min(plain_seqs.len())],
        args.batch,
    )?;
    run_encoder(
        &pair.sides.host_encoder,
        &enc_seqs[..args.batch.min(enc_seqs.len())],
        args.batch,
    )?;
    let mut enc_t = Timing::new();
    for round in 0..args.rounds {
        for side in [round % 2, 1 - round % 2] {
            if side == 0 {
                let (s, _) = run_encoder(&pair.sides.plain_encoder, &plain_seqs, args.batch)?;
                enc_t.plain.push(s);
            } else {
                let (s, _) = run_encoder(&pair.sides.host_encoder, &enc_seqs, args.batch)?;
                enc_t.encrypted.push(s);
            }
        }
    }

    let prompt = sample_prompt(&pair.sides.generator_tokenizer)?;
    let enc_prompt = c.encrypt_generator(&prompt)?;
    let mut prefill_t = Timing::new();
    let mut decode_t = Timing::new();
    for round in 0..args.rounds {
        let mut outs = [Vec::new(), Vec::new()];
        for side in [round % 2, 1 - round % 2] {
            if side == 0 {
                let (p, d, toks) =
                    run_generator(&pair.sides.plain_generator, &prompt, args.decode_tokens)?;
                prefill_t.plain.push(p);
                decode_t.plain.push(d);
                outs[0] = toks;
            } else {
                let (p, d, toks) = run_generator(
                    &pair.sides.host_generator,
                    enc_prompt.ids(),
                    args.decode_tokens,
                )?;
                prefill_t.encrypted.push(p);
                decode_t.encrypted.push(d);
                outs[1] = c.generator_permutation().invert_all(&toks)?;
            }
        }
        ensure!(outs[0] == outs[1], "encrypted and plaintext tokens differ");
    }

    // Batched decode: `decode_batch` copies of the prompt, prefilled one by
    // one, then decoded together; each must produce the batch-1 tokens.
    let batch = args.decode_batch;
    let mut batch_t = Timing::new();
    if batch > 1 {
        let alone = run_generator(&pair.sides.plain_generator, &prompt, args.decode_tokens)?.2;
        for round in 0..args.rounds {
            let mut outs = [Vec::new(), Vec::new()];
            for side in [round % 2, 1 - round % 2] {
                if side == 0 {
                    let (secs, toks) = run_generator_batch(
                        &pair.sides.plain_generator,
                        &prompt,
                        batch,
                        args.decode_tokens,
                    )?;
                    batch_t.plain.push(secs);
                    outs[0] = toks;
                } else {
                    let (secs, toks) = run_generator_batch(
                        &pair.sides.host_generator,
                        enc_prompt.ids(),
                        batch,
                        args.decode_tokens,
                    )?;
                    batch_t.encrypted.push(secs);
                    outs[1] = toks
                        .iter()
                        .map(|t| c.generator_permutation().invert_all(t))
                        .collect::<Result<_, _>>()?;
                }
            }
            ensure!(
                outs[0] == outs[1],
                "encrypted and plaintext batched tokens differ"
            );
            if !device.is_cuda() {
                // On the CPU every row is computed as it is alone.
                ensure!(
                    outs[0].iter().all(|t| *t == alone),
                    "batched tokens differ from batch-1 tokens"
                );
            }
        }
    }

    let encoder = enc_t.figures(args.sentences as f64);
    let prefill = prefill_t.figures(prompt.len() as f64);
    let decode = decode_t.figures(args.decode_tokens as f64);
    let batched = (batch > 1).then(|| batch_t.figures((batch * args.decode_tokens) as f64));
    // Time to first token: the prompt's prefill plus choosing the token.
    let ttft_ms = |t: &[f64]| median(t.to_vec()) * 1e3;
    let device_name = eerag_core::device::ChosenDevice {
        device: device.clone(),
        asked: args.device.device,
        fallback: None,
    }
    .describe();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if args.common.json {
        let mut enc_json = encoder.json("sentences");
        enc_json["sentences"] = json!(args.sentences);
        enc_json["sentence_tokens"] = json!(args.sentence_tokens);
        enc_json["batch"] = json!(args.batch);
        let mut prefill_json = prefill.json("tokens");
        prefill_json["prompt_tokens"] = json!(prompt.len());
        let mut decode_json = decode.json("tokens");
        decode_json["tokens"] = json!(args.decode_tokens);
        prefill_json["plaintext_ttft_ms"] = json!(ttft_ms(&prefill_t.plain));
        prefill_json["encrypted_ttft_ms"] = json!(ttft_ms(&prefill_t.encrypted));
        let batched_json = batched.as_ref().map(|b| {
            let mut j = b.json("tokens");
            j["batch"] = json!(batch);
            j["tokens_per_generation"] = json!(args.decode_tokens);
            j
        });
        let out = json!({
            "device": device_name,
            "generator": generator_base.display().to_string(),
            "generator_bytes": file_bytes(&generator_base),
            "generator_decode_batched": batched_json,
            "threads": threads,
            "rounds": args.rounds,
            "transform_seconds": pair.transform_secs,
            "encoder": enc_json,
            "generator_prefill": prefill_json,
            "generator_decode": decode_json,
            "outputs_identical": true,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "eerag bench models: {device_name}, {threads} threads, {} rounds, medians (transform took {:.1} s)",
            args.rounds, pair.transform_secs
        );
        println!("| work | plaintext | encrypted | ratio (min–max over rounds) |");
        println!("| --- | --- | --- | --- |");
        let encoder_work = format!(
            "encoder, {} × {}-token sentences, batch {}",
            args.sentences, args.sentence_tokens, args.batch
        );
        println!("{}", encoder.row(&encoder_work, "sentences"));
        let prefill_work = format!("generator prefill, {}-token prompt", prompt.len());
        println!("{}", prefill.row(&prefill_work, "tokens"));
        let decode_work = format!("generator greedy decode, {} tokens", args.decode_tokens);
        println!("{}", decode.row(&decode_work, "tokens"));
        if let Some(b) = &batched {
            let work = format!(
                "generator batched decode, {batch} generations × {} tokens",
                args.decode_tokens
            );
            println!("{}", b.row(&work, "tokens"));
        }
        println!(
            "time to first token: plaintext {:.0} ms, encrypted {:.0} ms",
            ttft_ms(&prefill_t.plain),
            ttft_ms(&prefill_t.encrypted)
        );
        println!("generated tokens identical in every round: true");
    }
    Ok(())
}
