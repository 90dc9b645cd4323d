//! `eerag eval`: prints the evaluation of [`crate::eval`].

use std::path::PathBuf;

use crate::eval::{self, AnswerCheck, EvalOptions, DEFAULT_DEPTH};
use anyhow::{bail, Result};
use eerag_client::chunking::ChunkingOptions;
use eerag_core::wire::SearchMode;

use eerag_client::cli::parse_mode;
use eerag_client::cli::ModelsArg;

/// `eerag eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A BEIR-format folder: corpus.jsonl, queries.jsonl, qrels.tsv.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Use at most this many documents (all judged ones first).
    #[arg(long)]
    pub docs: Option<usize>,
    /// Use at most this many judged queries.
    #[arg(long)]
    pub queries: Option<usize>,
    /// Modes to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "dense,keyword,hybrid", value_parser = parse_mode)]
    pub modes: Vec<SearchMode>,
    /// Chunks retrieved per query.
    #[arg(long, default_value_t = DEFAULT_DEPTH)]
    pub depth: usize,
    /// Also ask this many questions through both pipelines and score the
    /// answers against the set's answers.jsonl (exact match, contains).
    #[arg(long, default_value_t = 0)]
    pub answers: usize,
    /// With --answers: chunks put in each prompt.
    #[arg(long, default_value_t = 2)]
    pub answer_k: usize,
    /// With --answers: most tokens per answer.
    #[arg(long, default_value_t = 32)]
    pub answer_tokens: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelsArg,
}

/// Runs the evaluation and prints it; fails when a dense or keyword ranking
/// differs beyond near-ties between the encrypted and the plaintext
/// pipeline.
pub fn run(args: &EvalArgs) -> Result<()> {
    let models = args.models.require()?;
    let options = EvalOptions {
        dataset: args.dataset.clone(),
        max_docs: args.docs,
        max_queries: args.queries,
        modes: args.modes.clone(),
        chunking: ChunkingOptions::default(),
        depth: args.depth,
        answers: (args.answers > 0).then_some(AnswerCheck {
            questions: args.answers,
            k: args.answer_k,
            max_tokens: args.answer_tokens,
        }),
    };
    let report = eval::run(&models, &options, |line| eprintln!("{line}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {} documents ({} chunks), {} queries, {} chunks retrieved per query",
            report.dataset, report.documents, report.chunks, report.queries, report.depth
        );
        println!("| mode | pipeline | nDCG@10 | recall@100 | MRR@10 | rankings identical (up to near-ties) |");
        println!("| --- | --- | --- | --- | --- | --- |");
        for m in &report.modes {
            for (side, x) in [("encrypted", &m.encrypted), ("plaintext", &m.plaintext)] {
                println!(
                    "| {} | {side} | {:.4} | {:.4} | {:.4} | {}/{} ({}/{}) |",
                    m.mode,
                    x.ndcg_10,
                    x.recall_100,
                    x.mrr_10,
                    m.identical_rankings,
                    m.queries,
                    m.equivalent_rankings,
                    m.queries
                );
            }
        }
        println!(
            "ingest {:.1} s encrypted, {:.1} s plaintext; searches {:.1} s encrypted, {:.1} s plaintext",
            report.ingest_seconds_encrypted,
            report.ingest_seconds_plaintext,
            report.search_seconds_encrypted,
            report.search_seconds_plaintext
        );
        if let Some(a) = &report.answers {
            println!(
                "answers: {} questions, {} chunks per prompt, at most {} tokens, greedy",
                a.questions, a.k, a.max_tokens
            );
            println!("| pipeline | exact match | contains answer | gold paragraph in prompt | answers identical (same prompt) | seconds |");
            println!("| --- | --- | --- | --- | --- | --- |");
            for (side, m, secs) in [
                ("encrypted", &a.encrypted, a.seconds_encrypted),
                ("plaintext", &a.plaintext, a.seconds_plaintext),
            ] {
                println!(
                    "| {side} | {:.3} | {:.3} | {:.3} | {}/{} ({}/{}) | {secs:.0} |",
                    m.exact_match,
                    m.contains_answer,
                    m.gold_in_context,
                    a.identical_answers,
                    a.questions,
                    a.same_context,
                    a.questions
                );
            }
            for x in &a.examples {
                println!(
                    "  Q: {}\n     reference: {:?}\n     answer:    {:?}",
                    x.question, x.references, x.encrypted
                );
                if x.plaintext != x.encrypted {
                    println!("     plaintext: {:?}", x.plaintext);
                }
            }
        }
    }
    let differing: Vec<String> = report
        .modes
        .iter()
        .filter(|m| m.equivalent_rankings != m.queries)
        .map(|m| {
            format!(
                "{}: {} of {} queries, e.g. {:?}",
                m.mode,
                m.queries - m.equivalent_rankings,
                m.queries,
                m.differing_queries.first()
            )
        })
        .collect();
    if !report.retrievers_equivalent() {
        bail!(
            "encrypted and plaintext rankings differ beyond near-ties: {}",
            differing.join("; ")
        );
    }
    if !report.answers_identical() {
        bail!("encrypted and plaintext answers to the same prompt differ");
    }
    if !differing.is_empty() && !args.json {
        eprintln!(
            "note: hybrid fusion moved hits a place where a near-tie swapped ({})",
            differing.join("; ")
        );
    }
    Ok(())
}
