//! `eerag bench`: encrypted vs plaintext speed, side by side in one run.
//!
//! Each round runs the plaintext and the encrypted workload back to back, in
//! alternating order, so drift in machine load hits both; the figures are
//! medians over rounds and the ratio is encrypted ÷ plaintext throughput.

use std::time::Instant;

use anyhow::{ensure, Result};
use eerag_shared::models::{Encoder, Generator};
use serde_json::json;

use crate::workload::{sample_paragraphs, Pair};
use crate::ModelsArg;

/// Options of `eerag bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    models: ModelsArg,
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
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn median(mut xs: Vec<f64>) -> f64 {
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
    let tok = &pair.encoder_tokenizer;
    let wrap = tok.encode("")?; // [CLS] [SEP]
    ensure!(wrap.len() == 2 && len > 2, "unexpected encoder special tokens");
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

struct Timing {
    plain: Vec<f64>,
    encrypted: Vec<f64>,
}

impl Timing {
    fn new() -> Self {
        Self {
            plain: Vec::new(),
            encrypted: Vec::new(),
        }
    }
}

fn run_encoder(enc: &Encoder, seqs: &[Vec<u32>], batch: usize) -> Result<(f64, Vec<Vec<f32>>)> {
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let started = Instant::now();
    let out = enc.embed(&refs, batch)?;
    Ok((started.elapsed().as_secs_f64(), out))
}

/// (prefill seconds, decode seconds, tokens).
fn run_generator(gen: &Generator, prompt: &[u32], decode: usize) -> Result<(f64, f64, Vec<u32>)> {
    let mut session = gen.session();
    let started = Instant::now();
    let mut logits = session.feed(prompt)?;
    let prefill = started.elapsed().as_secs_f64();
    let mut tokens = Vec::with_capacity(decode);
    let started = Instant::now();
    for _ in 0..decode {
        let next = eerag_shared::sampling::argmax(&logits);
        tokens.push(next);
        logits = session.feed(&[next])?;
    }
    Ok((prefill, started.elapsed().as_secs_f64(), tokens))
}

/// Runs the benchmark.
pub fn run(args: &BenchArgs) -> Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    let models = args.models.require()?;
    let pair = Pair::prepare(&models)?;
    let c = &pair.cipher;

    let plain_seqs = encoder_workload(&pair, args.sentences, args.sentence_tokens)?;
    let enc_seqs: Vec<Vec<u32>> = plain_seqs
        .iter()
        .map(|s| c.encrypt_encoder(s).map(|e| e.ids().to_vec()))
        .collect::<Result<_, _>>()?;
    // One untimed warm-up of each side.
    run_encoder(&pair.plain_encoder, &plain_seqs[..args.batch.min(plain_seqs.len())], args.batch)?;
    run_encoder(&pair.host_encoder, &enc_seqs[..args.batch.min(enc_seqs.len())], args.batch)?;
    let mut enc_t = Timing::new();
    for round in 0..args.rounds {
        for side in [round % 2, 1 - round % 2] {
            if side == 0 {
                let (s, _) = run_encoder(&pair.plain_encoder, &plain_seqs, args.batch)?;
                enc_t.plain.push(s);
            } else {
                let (s, _) = run_encoder(&pair.host_encoder, &enc_seqs, args.batch)?;
                enc_t.encrypted.push(s);
            }
        }
    }

    let gtok = &pair.generator_tokenizer;
    let context: String = sample_paragraphs()
        .iter()
        .take(2)
        .map(|(_, p)| p.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    let prompt = eerag_shared::tokenize::chatml_prompt(
        gtok,
        "Answer using only the context.",
        &format!("Context:\n{context}\n\nQuestion: When does the clinic open on Saturdays?"),
    )?;
    let enc_prompt = c.encrypt_generator(&prompt)?;
    let mut prefill_t = Timing::new();
    let mut decode_t = Timing::new();
    for round in 0..args.rounds {
        let mut outs = [Vec::new(), Vec::new()];
        for side in [round % 2, 1 - round % 2] {
            if side == 0 {
                let (p, d, toks) = run_generator(&pair.plain_generator, &prompt, args.decode_tokens)?;
                prefill_t.plain.push(p);
                decode_t.plain.push(d);
                outs[0] = toks;
            } else {
                let (p, d, toks) =
                    run_generator(&pair.host_generator, enc_prompt.ids(), args.decode_tokens)?;
                prefill_t.encrypted.push(p);
                decode_t.encrypted.push(d);
                outs[1] = c.generator_permutation().invert_all(&toks)?;
            }
        }
        ensure!(outs[0] == outs[1], "encrypted and plaintext tokens differ");
    }

    let sentences = args.sentences as f64;
    let enc_plain = sentences / median(enc_t.plain);
    let enc_enc = sentences / median(enc_t.encrypted);
    let pre_plain = prompt.len() as f64 / median(prefill_t.plain);
    let pre_enc = prompt.len() as f64 / median(prefill_t.encrypted);
    let dec_plain = args.decode_tokens as f64 / median(decode_t.plain);
    let dec_enc = args.decode_tokens as f64 / median(decode_t.encrypted);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if args.json {
        let out = json!({
            "threads": threads,
            "rounds": args.rounds,
            "transform_seconds": pair.transform_secs,
            "encoder": {
                "sentences": args.sentences, "sentence_tokens": args.sentence_tokens, "batch": args.batch,
                "plaintext_sentences_per_s": enc_plain, "encrypted_sentences_per_s": enc_enc,
                "ratio": enc_enc / enc_plain,
            },
            "generator_prefill": {
                "prompt_tokens": prompt.len(),
                "plaintext_tokens_per_s": pre_plain, "encrypted_tokens_per_s": pre_enc,
                "ratio": pre_enc / pre_plain,
            },
            "generator_decode": {
                "tokens": args.decode_tokens,
                "plaintext_tokens_per_s": dec_plain, "encrypted_tokens_per_s": dec_enc,
                "ratio": dec_enc / dec_plain,
            },
            "outputs_identical": true,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "eerag bench: {threads} threads, {} rounds, medians (transform took {:.1} s)",
            args.rounds, pair.transform_secs
        );
        println!("| work | plaintext | encrypted | ratio |");
        println!("| --- | --- | --- | --- |");
        println!(
            "| encoder, {} × {}-token sentences, batch {} | {:.1} sentences/s | {:.1} sentences/s | {:.2} |",
            args.sentences, args.sentence_tokens, args.batch, enc_plain, enc_enc, enc_enc / enc_plain
        );
        println!(
            "| generator prefill, {}-token prompt | {:.1} tokens/s | {:.1} tokens/s | {:.2} |",
            prompt.len(), pre_plain, pre_enc, pre_enc / pre_plain
        );
        println!(
            "| generator greedy decode, {} tokens | {:.1} tokens/s | {:.1} tokens/s | {:.2} |",
            args.decode_tokens, dec_plain, dec_enc, dec_enc / dec_plain
        );
        println!("generated tokens identical in every round: true");
    }
    Ok(())
}
