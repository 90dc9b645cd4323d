//! `eerag eval`: retrieval quality of the encrypted pipeline next to the
//! same pipeline under the identity key (plaintext), on a BEIR dataset.
//! Both go through the real client, upload job, HTTP host and store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use eerag_client::chunking::ChunkingOptions;
use eerag_client::client::{AskOptions, ClientError, Hit, TextDocument};
use eerag_client::extract::{normalize, Extracted};
use eerag_client::tokenize::EncoderTokenizer;
use eerag_client::upload::{upload_documents, UploadError, UploadOptions};
use eerag_client::Key;
use eerag_core::models::fetch::ModelsDir;
use eerag_core::wire::SearchMode;
use eerag_store::ranking::compare_rankings_with_floor;
use serde::Serialize;

use crate::beir::{load_answers, BeirError, CorpusDoc, Dataset};
use crate::ir_metrics::{mrr_at, ndcg_at, recall_at};
use crate::side::{HostSide, SideError};

/// Chunks retrieved per query: enough distinct documents for recall@100
/// when documents have a few chunks each.
pub const DEFAULT_DEPTH: usize = 300;

/// Relative score difference under which two hits count as tied (float
/// reassociation under the key may swap them): the host's own.
pub use eerag_host::service::TIE_TOLERANCE;

/// Errors of an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Dataset(#[from] BeirError),
    #[error(transparent)]
    Side(#[from] SideError),
    #[error("upload: {0}")]
    Upload(#[from] UploadError),
    #[error("search: {0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Invalid(String),
}

/// What to evaluate.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub dataset: PathBuf,
    /// Use at most this many documents (the judged ones first).
    pub max_docs: Option<usize>,
    /// Use at most this many judged queries.
    pub max_queries: Option<usize>,
    pub modes: Vec<SearchMode>,
    pub chunking: ChunkingOptions,
    /// Chunks retrieved per query.
    pub depth: usize,
    /// Also answer questions and score the answers (sets with
    /// `answers.jsonl`).
    pub answers: Option<AnswerCheck>,
}

/// The answer-quality check: the first `questions` judged queries that have
/// reference answers are asked through both pipelines (greedy, hybrid
/// retrieval of `k` chunks, at most `max_tokens` tokens).
#[derive(Clone, Copy, Debug)]
pub struct AnswerCheck {
    pub questions: usize,
    pub k: usize,
    pub max_tokens: usize,
}

/// The system prompt of the answer check: SQuAD answers are short spans.
pub const ANSWER_SYSTEM_PROMPT: &str =
    "Answer the question using only the context. Reply with the short answer only.";

/// Answer quality of one pipeline, as shares of the questions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct AnswerMetrics {
    /// The answer, normalised as SQuAD's script does (lowercase, no
    /// punctuation, no articles, single spaces), equals a reference answer.
    pub exact_match: f64,
    /// A normalised reference answer occurs, as whole words, in the
    /// normalised answer.
    pub contains_answer: f64,
    /// A paragraph judged relevant was among the chunks in the prompt.
    pub gold_in_context: f64,
}

/// One asked question, for reading the report.
#[derive(Clone, Debug, Serialize)]
pub struct AnswerExample {
    pub question: String,
    pub references: Vec<String>,
    pub encrypted: String,
    pub plaintext: String,
}

/// The answer-quality check of both pipelines.
#[derive(Clone, Debug, Serialize)]
pub struct AnswerReport {
    pub questions: usize,
    pub k: usize,
    pub max_tokens: usize,
    pub encrypted: AnswerMetrics,
    pub plaintext: AnswerMetrics,
    /// Questions whose prompts held the same chunks in the same order in
    /// both pipelines. Hybrid retrieval can differ by a near-tie swap at the
    /// cut (see [`ModeReport::equivalent_rankings`]); then the prompts, and
    /// so the answers, may differ.
    pub same_context: usize,
    /// Of those, the questions whose two answers are the same tokens (all,
    /// or the command fails).
    pub identical_answers: usize,
    pub seconds_encrypted: f64,
    pub seconds_plaintext: f64,
    pub examples: Vec<AnswerExample>,
}

/// SQuAD's answer normalisation: lowercase, punctuation removed, the
/// articles a/an/the removed, whitespace collapsed.
pub fn normalize_answer(text: &str) -> String {
    let lower: String = text
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// (exact match, contains) of `answer` against the references.
pub fn score_answer(answer: &str, references: &[String]) -> (bool, bool) {
    let got = normalize_answer(answer);
    let padded = format!(" {got} ");
    let mut exact = false;
    let mut contains = false;
    for r in references {
        let want = normalize_answer(r);
        if want.is_empty() {
            continue;
        }
        exact |= got == want;
        // Whole words only: "10" is not found in "1066".
        contains |= padded.contains(&format!(" {want} "));
    }
    (exact, contains)
}

/// One pipeline's answer to one question.
struct Generated {
    query: usize,
    text: String,
    ids: Vec<u32>,
    /// The prompt's chunks in order, as (document, chunk index).
    sources: Vec<(String, u32)>,
}

/// The three metrics, averaged over the queries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Metrics {
    #[serde(rename = "nDCG@10")]
    pub ndcg_10: f64,
    #[serde(rename = "recall@100")]
    pub recall_100: f64,
    #[serde(rename = "MRR@10")]
    pub mrr_10: f64,
}

/// One mode's results on both pipelines.
#[derive(Clone, Debug, Serialize)]
pub struct ModeReport {
    pub mode: String,
    pub encrypted: Metrics,
    pub plaintext: Metrics,
    /// Queries whose document rankings are exactly the same.
    pub identical_rankings: usize,
    /// Queries whose chunk rankings agree up to swaps of near-tied scores.
    pub equivalent_rankings: usize,
    pub queries: usize,
    /// Up to five queries whose rankings differ beyond near-ties, each with
    /// where.
    pub differing_queries: Vec<String>,
}

/// The whole report (`--json` prints it).
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub dataset: String,
    pub documents: usize,
    pub chunks: usize,
    pub queries: usize,
    pub depth: usize,
    pub modes: Vec<ModeReport>,
    /// Ingest time of each pipeline, seconds.
    pub ingest_seconds_encrypted: f64,
    pub ingest_seconds_plaintext: f64,
    /// Search time of each pipeline over all queries and modes, seconds.
    pub search_seconds_encrypted: f64,
    pub search_seconds_plaintext: f64,
    /// The answer-quality check, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answers: Option<AnswerReport>,
}

impl EvalReport {
    /// True when every query ranks the same in both pipelines (up to
    /// near-ties) in the dense and keyword modes. Hybrid fusion is left
    /// out: it turns a near-tie that swapped into a rank one apart, which
    /// can move a fused hit by a place or two; its count is reported.
    pub fn retrievers_equivalent(&self) -> bool {
        self.modes
            .iter()
            .filter(|m| m.mode != "hybrid")
            .all(|m| m.equivalent_rankings == m.queries)
    }

    /// True unless the answer check found two different answers to the
    /// same prompt.
    pub fn answers_identical(&self) -> bool {
        self.answers
            .as_ref()
            .is_none_or(|a| a.identical_answers == a.same_context)
    }
}

/// What one pipeline retrieved: per mode, per query, the hits.
struct Retrieved {
    hits: HashMap<(usize, String), Vec<Hit>>,
    ingest_seconds: f64,
    search_seconds: f64,
    chunks: usize,
    answers: Vec<Generated>,
    answer_seconds: f64,
}

fn mode_name(mode: SearchMode) -> &'static str {
    match mode {
        SearchMode::Dense => "dense",
        SearchMode::Keyword => "keyword",
        SearchMode::Hybrid => "hybrid",
    }
}

/// Documents in ranking order: each document at its best chunk's place.
fn document_ranking(hits: &[Hit]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    hits.iter()
        .filter(|h| seen.insert(h.metadata.path.clone()))
        .map(|h| h.metadata.path.clone())
        .collect()
}

/// The corpus as the upload job takes it: title and text normalised and cut
/// as `eerag upload` cuts a file, each document named by its id. Documents
/// with no text are left out.
pub fn corpus_documents(
    corpus: &[CorpusDoc],
    tokenizer: &EncoderTokenizer,
    chunking: &ChunkingOptions,
) -> Vec<TextDocument> {
    corpus
        .iter()
        .filter_map(|d| {
            let text = normalize(&format!("{}\n\n{}", d.title, d.text));
            let extracted = Extracted {
                title: d.title.clone(),
                text,
            };
            TextDocument::from_text(&d.id, extracted, tokenizer, chunking).ok()
        })
        .collect()
}

fn run_side(
    key: &Key,
    models: &ModelsDir,
    data: &Dataset,
    options: &EvalOptions,
    references: Option<&HashMap<String, Vec<String>>>,
    progress: &mut impl FnMut(&str),
) -> Result<Retrieved, EvalError> {
    let side = HostSide::start(key, models)?;
    let client = &side.client;
    let docs = corpus_documents(&data.corpus, client.encoder_tokenizer(), &options.chunking);
    let started = Instant::now();
    let summary = upload_documents(
        client,
        "eval",
        docs,
        &UploadOptions {
            chunking: options.chunking,
            ..UploadOptions::default()
        },
        |_| {},
    )?;
    if !summary.complete() {
        return Err(EvalError::Invalid(format!(
            "the corpus did not upload: {}",
            summary.stopped.unwrap_or_default()
        )));
    }
    let ingest_seconds = started.elapsed().as_secs_f64();
    progress(&format!(
        "  ingested {} documents as {} chunks in {:.1} s ({:.1} chunks/s)",
        summary.uploaded, summary.chunks, ingest_seconds, summary.chunks_per_sec
    ));
    let started = Instant::now();
    let mut hits = HashMap::new();
    for (i, q) in data.queries.iter().enumerate() {
        for &mode in &options.modes {
            let found = client.search("eval", &q.text, options.depth, mode)?;
            hits.insert((i, mode_name(mode).to_string()), found);
        }
    }
    let search_seconds = started.elapsed().as_secs_f64();
    progress(&format!(
        "  ran {} searches in {:.1} s",
        data.queries.len() * options.modes.len(),
        search_seconds
    ));
    let started = Instant::now();
    let mut answers = Vec::new();
    if let (Some(check), Some(references)) = (options.answers, references) {
        let ask = AskOptions {
            k: check.k,
            mode: SearchMode::Hybrid,
            max_tokens: check.max_tokens,
            system: ANSWER_SYSTEM_PROMPT.into(),
            ..AskOptions::default()
        };
        for (i, q) in data
            .queries
            .iter()
            .enumerate()
            .filter(|(_, q)| references.contains_key(&q.id))
            .take(check.questions)
        {
            let answer = client.ask("eval", &q.text, &ask, |_| {})?;
            answers.push(Generated {
                query: i,
                text: answer.text,
                ids: answer.ids,
                sources: answer
                    .sources
                    .into_iter()
                    .map(|s| (s.metadata.path, s.metadata.chunk))
                    .collect(),
            });
        }
        progress(&format!(
            "  answered {} questions in {:.1} s",
            answers.len(),
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(Retrieved {
        hits,
        ingest_seconds,
        search_seconds,
        chunks: summary.chunks,
        answers,
        answer_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs the evaluation; `progress` gets a line per stage.
pub fn run(
    models: &ModelsDir,
    options: &EvalOptions,
    mut progress: impl FnMut(&str),
) -> Result<EvalReport, EvalError> {
    if options.modes.is_empty() || options.depth == 0 {
        return Err(EvalError::Invalid(
            "need at least one mode and depth > 0".into(),
        ));
    }
    let data = Dataset::load(&options.dataset)?.slice(options.max_docs, options.max_queries);
    if data.queries.is_empty() {
        return Err(EvalError::Invalid(format!(
            "{} has no query with a relevant document",
            options.dataset.display()
        )));
    }
    progress(&format!(
        "{}: {} documents, {} judged queries",
        options.dataset.display(),
        data.corpus.len(),
        data.queries.len()
    ));
    // Read before the long runs, so a missing answers.jsonl fails at once.
    let references = match options.answers {
        Some(_) => {
            let references = load_answers(&options.dataset)?;
            if !data.queries.iter().any(|q| references.contains_key(&q.id)) {
                return Err(EvalError::Invalid(
                    "no judged query has a reference answer in answers.jsonl".into(),
                ));
            }
            Some(references)
        }
        None => None,
    };
    progress("encrypted pipeline (throwaway key):");
    let encrypted = run_side(
        &Key::generate().map_err(SideError::from)?,
        models,
        &data,
        options,
        references.as_ref(),
        &mut progress,
    )?;
    progress("plaintext pipeline (identity key):");
    let plaintext = run_side(
        &Key::identity(),
        models,
        &data,
        options,
        references.as_ref(),
        &mut progress,
    )?;

    let mut modes = Vec::new();
    for &mode in &options.modes {
        let name = mode_name(mode).to_string();
        let (mut enc, mut pla) = (Metrics::default(), Metrics::default());
        let (mut identical, mut equivalent) = (0, 0);
        let mut differing = Vec::new();
        for (i, q) in data.queries.iter().enumerate() {
            let judged = &data.qrels[&q.id];
            let key = (i, name.clone());
            let (e, p) = (&encrypted.hits[&key], &plaintext.hits[&key]);
            let (de, dp) = (document_ranking(e), document_ranking(p));
            for (m, d) in [(&mut enc, &de), (&mut pla, &dp)] {
                m.ndcg_10 += ndcg_at(d, judged, 10);
                m.recall_100 += recall_at(d, judged, 100);
                m.mrr_10 += mrr_at(d, judged, 10);
            }
            if de == dp {
                identical += 1;
            }
            // Chunk ids differ between keys (they are keyed); compare the
            // chunks by document and index.
            let scored = |hits: &[Hit]| -> Vec<(String, f32)> {
                hits.iter()
                    .map(|h| (format!("{}#{}", h.metadata.path, h.metadata.chunk), h.score))
                    .collect()
            };
            // Retriever scores tie like the host's fusion ties them; fused
            // scores are exact sums of 1/(60 + rank), compared relatively.
            let floor = if mode == SearchMode::Hybrid { 0.0 } else { 1.0 };
            match compare_rankings_with_floor(&scored(p), &scored(e), TIE_TOLERANCE, floor) {
                Ok(()) => equivalent += 1,
                Err(why) if differing.len() < 5 => differing.push(format!("{}: {why}", q.id)),
                Err(_) => {}
            }
        }
        let n = data.queries.len() as f64;
        for m in [&mut enc, &mut pla] {
            m.ndcg_10 /= n;
            m.recall_100 /= n;
            m.mrr_10 /= n;
        }
        modes.push(ModeReport {
            mode: name,
            encrypted: enc,
            plaintext: pla,
            identical_rankings: identical,
            equivalent_rankings: equivalent,
            queries: data.queries.len(),
            differing_queries: differing,
        });
    }
    let answers = match (options.answers, &references) {
        (Some(check), Some(references)) => Some(answer_report(
            &data, references, check, &encrypted, &plaintext,
        )?),
        _ => None,
    };
    Ok(EvalReport {
        answers,
        dataset: options.dataset.display().to_string(),
        documents: data.corpus.len(),
        chunks: encrypted.chunks,
        queries: data.queries.len(),
        depth: options.depth,
        modes,
        ingest_seconds_encrypted: encrypted.ingest_seconds,
        ingest_seconds_plaintext: plaintext.ingest_seconds,
        search_seconds_encrypted: encrypted.search_seconds,
        search_seconds_plaintext: plaintext.search_seconds,
    })
}

/// Scores both pipelines' answers and counts the identical ones.
fn answer_report(
    data: &Dataset,
    references: &HashMap<String, Vec<String>>,
    check: AnswerCheck,
    encrypted: &Retrieved,
    plaintext: &Retrieved,
) -> Result<AnswerReport, EvalError> {
    let asked = |r: &Retrieved| r.answers.iter().map(|g| g.query).collect::<Vec<_>>();
    if encrypted.answers.is_empty() || asked(encrypted) != asked(plaintext) {
        return Err(EvalError::Invalid(
            "the two pipelines did not answer the same questions".into(),
        ));
    }
    let mut report = AnswerReport {
        questions: encrypted.answers.len(),
        k: check.k,
        max_tokens: check.max_tokens,
        encrypted: AnswerMetrics::default(),
        plaintext: AnswerMetrics::default(),
        same_context: 0,
        identical_answers: 0,
        seconds_encrypted: encrypted.answer_seconds,
        seconds_plaintext: plaintext.answer_seconds,
        examples: Vec::new(),
    };
    for (e, p) in encrypted.answers.iter().zip(&plaintext.answers) {
        let q = &data.queries[e.query];
        let refs = &references[&q.id];
        let judged = &data.qrels[&q.id];
        for (m, g) in [(&mut report.encrypted, e), (&mut report.plaintext, p)] {
            let (exact, contains) = score_answer(&g.text, refs);
            m.exact_match += f64::from(u8::from(exact));
            m.contains_answer += f64::from(u8::from(contains));
            let gold = g
                .sources
                .iter()
                .any(|(doc, _)| judged.get(doc).is_some_and(|&grade| grade > 0));
            m.gold_in_context += f64::from(u8::from(gold));
        }
        if e.sources == p.sources {
            report.same_context += 1;
            if e.ids == p.ids {
                report.identical_answers += 1;
            }
        }
        if report.examples.len() < 5 {
            report.examples.push(AnswerExample {
                question: q.text.clone(),
                references: refs.clone(),
                encrypted: e.text.clone(),
                plaintext: p.text.clone(),
            });
        }
    }
    let n = report.questions as f64;
    for m in [&mut report.encrypted, &mut report.plaintext] {
        m.exact_match /= n;
        m.contains_answer /= n;
        m.gold_in_context /= n;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_scored_as_squad_normalises_them() {
        assert_eq!(
            normalize_answer("The  Normans, in France!"),
            "normans in france"
        );
        let refs = vec!["10th and 11th centuries".to_string(), "France".to_string()];
        assert_eq!(score_answer("France.", &refs), (true, true));
        assert_eq!(
            score_answer("In the 10th and 11th centuries, they ...", &refs),
            (false, true)
        );
        assert_eq!(score_answer("Francesca", &refs), (false, false));
        let year = vec!["10".to_string()];
        assert_eq!(score_answer("in 1066", &year), (false, false));
    }
}
