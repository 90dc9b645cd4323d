//! `eerag bench host`: the host service end to end over HTTP, encrypted
//! vs plaintext (identity key), side by side in one run.
//!
//! Two in-process hosts on the embedded store serve the same corpus: one
//! with the artifacts of a throwaway key, one with the identity key's. Each
//! round times ingest, searches in every mode and answers on both, in
//! alternating order, and checks the two give the same rankings and tokens.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use eerag_client::client::{AskOptions, TextDocument};
use eerag_client::Key;
use eerag_core::wire::SearchMode;
use eerag_store::ranking::compare_rankings;
use serde_json::json;

use crate::cmd::bench::{CommonArgs, Timing};
use crate::side::HostSide as Side;
use crate::workload::sample_paragraphs;

/// Options of `eerag bench host`.
#[derive(clap::Args)]
pub struct HostBenchArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Measurement rounds (each runs both hosts).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Copies of the sample corpus ingested per round.
    #[arg(long, default_value_t = 8)]
    copies: usize,
    /// Searches per mode per round.
    #[arg(long, default_value_t = 50)]
    searches: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 32)]
    answer_tokens: usize,
}

const QUESTIONS: [&str; 4] = [
    "How warm may the vaccine refrigerator get?",
    "What is the hourly rate of a partner?",
    "Why did the settlement worker stall?",
    "Who approves a refund of the retainer?",
];

/// The search queries: the first sentence of every sample paragraph, and
/// the questions.
pub(crate) fn queries() -> Vec<String> {
    sample_paragraphs()
        .iter()
        .map(|(_, p)| p.split(". ").next().unwrap_or(p).to_string())
        .chain(QUESTIONS.iter().map(|q| q.to_string()))
        .collect()
}

/// The corpus of one round: `copies` copies of the sample paragraphs, each
/// copy a distinct document set.
fn corpus(round: usize, copies: usize) -> Vec<TextDocument> {
    let paragraphs = sample_paragraphs();
    (0..copies)
        .flat_map(|copy| {
            let paragraphs = &paragraphs;
            crate::workload::SAMPLE_DOCS.iter().map(move |(name, _)| {
                TextDocument::from_chunks(
                    format!("{name} (round {round}, copy {copy})"),
                    paragraphs
                        .iter()
                        .filter(|(n, _)| n == name)
                        .map(|(_, p)| format!("Copy {copy}. {p}"))
                        .collect(),
                )
            })
        })
        .collect()
}

fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    let i = ((xs.len() as f64 - 1.0) * p).round() as usize;
    xs[i]
}

/// Latencies of both sides over all rounds, in seconds.
#[derive(Default)]
struct Latencies {
    plain: Vec<f64>,
    encrypted: Vec<f64>,
}

impl Latencies {
    fn row(&self, work: &str) -> String {
        let ms = |xs: &[f64], p| percentile(xs, p) * 1e3;
        format!(
            "| {work} | p50 {:.1} ms, p99 {:.1} ms | p50 {:.1} ms, p99 {:.1} ms | {:.2} (p50), {:.2} (p99) |",
            ms(&self.plain, 0.5),
            ms(&self.plain, 0.99),
            ms(&self.encrypted, 0.5),
            ms(&self.encrypted, 0.99),
            ms(&self.plain, 0.5) / ms(&self.encrypted, 0.5),
            ms(&self.plain, 0.99) / ms(&self.encrypted, 0.99),
        )
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "plaintext_p50_ms": percentile(&self.plain, 0.5) * 1e3,
            "plaintext_p99_ms": percentile(&self.plain, 0.99) * 1e3,
            "encrypted_p50_ms": percentile(&self.encrypted, 0.5) * 1e3,
            "encrypted_p99_ms": percentile(&self.encrypted, 0.99) * 1e3,
            "samples": self.plain.len(),
        })
    }
}

/// Runs the host benchmark.
pub fn run(args: &HostBenchArgs) -> Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(args.copies > 0, "--copies must be at least 1");
    let models = &args.common.models.require()?;
    let started = Instant::now();
    let key = Key::generate()?;
    let sides = [
        Side::start(&Key::identity(), models).context("starting the plaintext host")?,
        Side::start(&key, models).context("starting the encrypted host")?,
    ];
    let setup_secs = started.elapsed().as_secs_f64();
    let queries = queries();
    let modes = [SearchMode::Dense, SearchMode::Keyword, SearchMode::Hybrid];

    let mut ingest = Timing::new();
    let mut chunks_per_round = 0usize;
    let mut search: [Latencies; 3] = Default::default();
    let mut first_token = Latencies::default();
    let mut decode = Timing::new();
    let mut decoded_tokens = 0usize;
    let mut rankings_checked = 0usize;
    for round in 0..args.rounds {
        let docs = corpus(round, args.copies);
        chunks_per_round = docs.iter().map(|d| d.chunks.len()).sum();
        let collection = format!("bench-{round}");
        let order = [round % 2, 1 - round % 2];
        for &s in &order {
            let client = &sides[s].client;
            client.create_collection(&collection)?;
            // Encrypting is the client's work: not part of the host's ingest.
            let requests = docs
                .chunks(4)
                .map(|batch| client.encrypt_documents(batch))
                .collect::<Result<Vec<_>, _>>()?;
            let t = Instant::now();
            for r in &requests {
                client.host().upsert(&collection, r)?;
            }
            let secs = t.elapsed().as_secs_f64();
            if s == 0 {
                ingest.plain.push(secs);
            } else {
                ingest.encrypted.push(secs);
            }
        }

        for (m, mode) in modes.iter().enumerate() {
            for (i, query) in queries.iter().cycle().take(args.searches).enumerate() {
                let mut ranked: [Vec<(String, f32)>; 2] = Default::default();
                for &s in &order {
                    let client = &sides[s].client;
                    let request = client.encrypt_query(query, 10, *mode)?;
                    let t = Instant::now();
                    let hits = client.host().search(&collection, &request)?;
                    let secs = t.elapsed().as_secs_f64();
                    let lat = &mut search[m];
                    if s == 0 {
                        lat.plain.push(secs);
                    } else {
                        lat.encrypted.push(secs);
                    }
                    // Compare the first pass only: decrypting every hit is
                    // client work that would slow the loop.
                    if i < queries.len() {
                        ranked[s] = hits
                            .iter()
                            .map(|h| {
                                let meta = client.open_metadata(&h.doc_id, h.index, &h.metadata)?;
                                Ok((format!("{}#{}", meta.title, meta.chunk), h.score))
                            })
                            .collect::<Result<_, anyhow::Error>>()?;
                    }
                }
                if i < queries.len() {
                    compare_rankings(&ranked[0], &ranked[1], 1e-5).map_err(|e| {
                        anyhow::anyhow!("{mode:?} rankings differ for {query:?}: {e}")
                    })?;
                    rankings_checked += 1;
                }
            }
        }

        let question = QUESTIONS[round % QUESTIONS.len()];
        let options = AskOptions {
            max_tokens: args.answer_tokens,
            ..AskOptions::default()
        };
        let mut ids: [Vec<u32>; 2] = Default::default();
        let mut decode_secs = [0.0; 2];
        for &s in &order {
            let client = &sides[s].client;
            let request = client.encrypt_question(question, &options)?;
            let mut request = request;
            request.stop_ids.clear(); // always decode the full budget
            let t = Instant::now();
            let mut first: Option<f64> = None;
            let mut tokens = Vec::new();
            client.host().answer_stream(&collection, &request, |id| {
                first.get_or_insert_with(|| t.elapsed().as_secs_f64());
                tokens.push(id);
            })?;
            let total = t.elapsed().as_secs_f64();
            let first = first.context("the answer produced no token")?;
            decode_secs[s] = total - first;
            let lat = &mut first_token;
            if s == 0 {
                lat.plain.push(first);
            } else {
                lat.encrypted.push(first);
            }
            ids[s] = client
                .cipher()
                .decrypt_generator(&eerag_core::EncGeneratorIds::new(
                    client.cipher().key_id(),
                    tokens,
                ))?;
        }
        ensure!(ids[0] == ids[1], "encrypted and plaintext answers differ");
        decoded_tokens = ids[0].len().saturating_sub(1);
        decode.plain.push(decode_secs[0]);
        decode.encrypted.push(decode_secs[1]);
    }
    drop(sides.map(|s| s.server.stop()));

    let ingest_f = ingest.figures(chunks_per_round as f64);
    let decode_f = decode.figures(decoded_tokens as f64);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if args.common.json {
        let mut out = json!({
            "threads": threads,
            "rounds": args.rounds,
            "setup_seconds": setup_secs,
            "ingest": ingest_f.json("chunks"),
            "answer_first_token": first_token.json(),
            "answer_decode": decode_f.json("tokens"),
            "rankings_compared": rankings_checked,
            "outputs_identical": true,
        });
        out["ingest"]["chunks"] = json!(chunks_per_round);
        for (m, mode) in ["dense", "keyword", "hybrid"].iter().enumerate() {
            out[format!("search_{mode}")] = search[m].json();
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "eerag bench host: {threads} threads, {} rounds, two in-process hosts over HTTP (setup {:.1} s)",
            args.rounds, setup_secs
        );
        println!("| work | plaintext | encrypted | ratio (min–max over rounds) |");
        println!("| --- | --- | --- | --- |");
        let work = format!(
            "ingest {chunks_per_round} chunks in batches of 4 documents (embed, store, index, fsync)",
        );
        println!("{}", ingest_f.row(&work, "chunks"));
        for (m, mode) in ["dense", "keyword", "hybrid"].iter().enumerate() {
            println!(
                "{}",
                search[m].row(&format!(
                    "search {mode}, k 10, {chunks_per_round} chunks ({} queries)",
                    search[m].plain.len()
                ))
            );
        }
        println!(
            "{}",
            first_token.row("answer: time to first token (retrieve k 3, prefill)")
        );
        println!(
            "{}",
            decode_f.row(
                &format!("answer: decode after the first token, {decoded_tokens} tokens"),
                "tokens"
            )
        );
        println!(
            "rankings identical for {rankings_checked} searches, answers identical in every round: true"
        );
    }
    Ok(())
}
