//! `eerag attack`: runs the attacks of [`crate::attack`] on what the real
//! pipeline produced and prints what each recovered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::attack::frequency::{self, FrequencyOptions};
use crate::attack::single::{self, BigramLoss, Budget, LanguageModelLoss, Loss, Search};
use crate::attack::stats::TokenStats;
use crate::attack::victim::{self, Amount};
use crate::attack::{brute_force, vector_match, weight_match};
use crate::beir::{CorpusDoc, Dataset};
use crate::eval::corpus_documents;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Subcommand, ValueEnum};
use eerag_client::chunking::ChunkingOptions;
use eerag_client::client::{chatml_template, AskOptions, TextDocument};
use eerag_client::tokenize::{EncoderTokenizer, GeneratorTokenizer};
use eerag_client::Key;
use eerag_core::models::encoder::Encoder;
use eerag_core::models::fetch::ModelsDir;
use eerag_core::models::generator::Generator;
use serde_json::json;

use eerag_client::cli::ModelsArg;

/// `eerag attack`.
#[derive(Args, Debug)]
pub struct AttackArgs {
    #[command(subcommand)]
    pub attack: Attack,
}

/// The attacks.
#[derive(Subcommand, Debug)]
pub enum Attack {
    /// Ciphertext-only decipherment of stored ids from public token
    /// statistics (unigram matching, then hill climbing on bigrams), as the
    /// amount of stored ciphertext grows.
    Frequency(FrequencyArgs),
    /// Hill climbing on one encrypted query under a language-model loss.
    HillClimb(SingleArgs),
    /// Random sampling of whole candidate plaintexts of one encrypted query,
    /// scored by a language-model loss.
    RandomSample(SingleArgs),
    /// The key space, and the time to enumerate it at a measured rate.
    BruteForce(BruteForceArgs),
    /// The compute host matching its transformed embedding rows against the
    /// public base models (and against a privately perturbed base).
    WeightMatch(WeightMatchArgs),
    /// Matching stored vectors against the public encoder's embeddings of
    /// candidate texts, with and without the secret rotation.
    VectorMatch(VectorMatchArgs),
}

/// Where the victim's text and the attacker's public text come from.
#[derive(Args, Debug)]
pub struct TextArgs {
    /// A BEIR-format folder: the victim uploads its first documents.
    #[arg(long)]
    pub dataset: PathBuf,
    /// The attacker's public text: a BEIR folder (its corpus.jsonl) or a
    /// text file [default: the dataset's documents the victim did not
    /// upload].
    #[arg(long)]
    pub public: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct FrequencyArgs {
    #[command(flatten)]
    pub text: TextArgs,
    /// Amounts of ciphertext to attack, in tokens (prefixes of the stored
    /// chunks in write order).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,10000,100000,1000000"
    )]
    pub sizes: Vec<usize>,
    /// Which stored ids to attack.
    #[arg(long, value_delimiter = ',', default_value = "encoder,generator")]
    pub vocab: Vec<Vocab>,
    /// Seconds of hill climbing per size and vocabulary.
    #[arg(long, default_value_t = 60.0, value_parser = parse_seconds)]
    pub budget_secs: f64,
    /// Stop climbing after this many steps (for reproducible runs).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Starting temperature of the annealing, in nats per occurrence (0:
    /// plain hill climbing).
    #[arg(long, default_value_t = 3.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelsArg,
}

/// A vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Vocab {
    Encoder,
    Generator,
}

/// The loss the single-ciphertext attacks minimise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scorer {
    /// The public bigram model (fast: many candidates per second).
    Bigram,
    /// The generator's own language model (SmolLM2, the public base).
    Lm,
}

#[derive(Args, Debug)]
pub struct SingleArgs {
    /// A BEIR-format folder: its queries are the ciphertexts attacked, its
    /// corpus the attacker's public text (unless --public).
    #[arg(long)]
    pub dataset: PathBuf,
    /// The attacker's public text: a BEIR folder or a text file.
    #[arg(long)]
    pub public: Option<PathBuf>,
    /// Queries attacked (the dataset's first ones).
    #[arg(long, default_value_t = 10)]
    pub queries: usize,
    /// Seconds of search per query.
    #[arg(long, default_value_t = 20.0, value_parser = parse_seconds)]
    pub budget_secs: f64,
    /// Stop a query's search after this many candidates (for reproducible
    /// runs).
    #[arg(long)]
    pub max_candidates: Option<u64>,
    #[arg(long, value_enum, default_value_t = Scorer::Bigram)]
    pub scorer: Scorer,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelsArg,
}

#[derive(Args, Debug)]
pub struct BruteForceArgs {
    /// The query whose encryption is attacked.
    #[arg(
        long,
        default_value = "What is the passphrase of the vault in the east wing?"
    )]
    pub query: String,
    /// Seconds spent measuring the rate.
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    pub budget_secs: f64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelsArg,
}

#[derive(Args, Debug)]
pub struct WeightMatchArgs {
    /// Noise levels of the privately perturbed base (standard deviation
    /// relative to the embedding entries' RMS).
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.1,0.3,1,3,10")]
    pub noise: Vec<f64>,
    /// Rows sampled for the approximate attack on a perturbed base.
    #[arg(long, default_value_t = 4096)]
    pub sample: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelsArg,
}

#[derive(Args, Debug)]
pub struct VectorMatchArgs {
    /// A BEIR-format folder: the victim uploads its first documents, the
    /// next ones are distractors.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Chunks the victim stores (about as many distractors are added).
    #[arg(long, default_value_t = 600)]
    pub chunks: usize,
    /// Numbers of known (text, stored vector) pairs to try.
    #[arg(long, value_delimiter = ',', default_value = "8,32,128,384")]
    pub known: Vec<usize>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelsArg,
}

/// Runs one attack and prints its report.
pub fn run(args: &AttackArgs) -> Result<()> {
    match &args.attack {
        Attack::Frequency(a) => run_frequency(a),
        Attack::HillClimb(a) => run_single(a, Search::HillClimb),
        Attack::RandomSample(a) => run_single(a, Search::RandomSample),
        Attack::BruteForce(a) => run_brute_force(a),
        Attack::WeightMatch(a) => run_weight_match(a),
        Attack::VectorMatch(a) => run_vector_match(a),
    }
}

/// A time budget: finite and not negative.
fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds")),
    }
}

fn say(json: bool) -> impl FnMut(&str) {
    move |line: &str| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn tokenizers(models: &ModelsDir) -> Result<(EncoderTokenizer, GeneratorTokenizer)> {
    Ok((
        EncoderTokenizer::from_model_dir(&models.encoder_dir())?,
        GeneratorTokenizer::from_gguf(&models.generator_gguf())?,
    ))
}

/// Public text: a BEIR folder's corpus or a plain text file (paragraphs).
fn public_corpus(path: &Path) -> Result<Vec<CorpusDoc>> {
    if path.is_dir() {
        return Ok(Dataset::load(path)?.corpus);
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the public text {}", path.display()))?;
    Ok(text
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .enumerate()
        .map(|(i, p)| CorpusDoc {
            id: format!("public-{i}"),
            title: String::new(),
            text: p.to_string(),
        })
        .collect())
}

/// Token sequences of `docs` as the upload job cuts them, in one vocabulary.
fn sequences(
    docs: &[TextDocument],
    vocab: Vocab,
    enc: &EncoderTokenizer,
    gen: &GeneratorTokenizer,
) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::new();
    for doc in docs {
        for chunk in &doc.chunks {
            out.push(match vocab {
                Vocab::Encoder => enc.encode(&chunk.text)?,
                Vocab::Generator => gen.encode(&chunk.text)?,
            });
        }
    }
    Ok(out)
}

fn run_frequency(args: &FrequencyArgs) -> Result<()> {
    let models = args.models.require()?;
    let mut log = say(args.json);
    let (enc, gen) = tokenizers(&models)?;
    let data = Dataset::load(&args.text.dataset)?;
    let chunking = ChunkingOptions::default();
    let most = args.sizes.iter().copied().max().unwrap_or(0);
    if most == 0 {
        bail!("--sizes must name at least one positive amount");
    }
    // 10% more encoder tokens than the largest size: the generator's
    // tokenizer cuts the same text into a few percent fewer tokens.
    let (victim_docs, used) = victim::documents_up_to(
        &data.corpus,
        &enc,
        &chunking,
        Amount::Tokens(most.saturating_add(most / 10)),
    )?;
    let public_docs = match &args.text.public {
        Some(p) => corpus_documents(&public_corpus(p)?, &enc, &chunking),
        None => corpus_documents(&data.corpus[used..], &enc, &chunking),
    };
    if public_docs.is_empty() {
        bail!("no public text left: pass --public or attack less ciphertext");
    }
    let victim = victim::ingest(&models, victim_docs, &mut log)?;
    let mut results = Vec::new();
    for &vocab in &args.vocab {
        let (size, cipher): (usize, Vec<Vec<u32>>) = match vocab {
            Vocab::Encoder => (
                enc.vocab_size(),
                victim
                    .chunks
                    .iter()
                    .map(|c| c.encoder_ids.clone())
                    .collect(),
            ),
            Vocab::Generator => (
                gen.vocab_size(),
                victim
                    .chunks
                    .iter()
                    .map(|c| c.generator_ids.clone())
                    .collect(),
            ),
        };
        let perm = match vocab {
            Vocab::Encoder => victim.key.encoder_permutation(size),
            Vocab::Generator => victim.key.generator_permutation(size),
        };
        let truth = perm.inverse_table();
        let public_seqs = sequences(&public_docs, vocab, &enc, &gen)?;
        let public = TokenStats::count(size, public_seqs.iter().map(Vec::as_slice));
        let stored: usize = cipher.iter().map(Vec::len).sum();
        log(&format!(
            "{vocab:?} ids: {stored} stored tokens; public text {} tokens ({} distinct)",
            public.total(),
            public.distinct()
        ));
        for &tokens in &args.sizes {
            if tokens > stored {
                log(&format!("  {tokens} tokens: only {stored} stored, skipped"));
                results.push(json!({"vocab": vocab, "skipped": tokens, "stored": stored}));
                continue;
            }
            let r = frequency::attack(
                &frequency::prefix(&cipher, tokens),
                &public,
                truth,
                &FrequencyOptions {
                    budget_secs: args.budget_secs,
                    seed: args.seed,
                    temperature: args.temperature,
                    max_steps: args.max_steps,
                },
            );
            log(&format!(
                "  {:>8} tokens ({:>6} distinct ids): unigram {:>6} of occurrences / {:>6} of ids; \
                 hill climbing {:>6} / {:>6} ({} steps, {:.0} s); ceiling {}",
                r.tokens,
                r.distinct_ids,
                pct(r.unigram.occurrences),
                pct(r.unigram.distinct),
                pct(r.hill_climb.occurrences),
                pct(r.hill_climb.distinct),
                r.steps,
                r.seconds,
                pct(r.ceiling.occurrences)
            ));
            results.push(json!({"vocab": vocab, "public_tokens": public.total(), "result": r}));
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "attack": "frequency",
                "victim_documents": victim.documents,
                "stored_encoder_tokens": victim.encoder_tokens(),
                "stored_generator_tokens": victim.generator_tokens(),
                "public": args.text.public.as_ref().map_or("the dataset's other documents".into(), |p| p.display().to_string()),
                "budget_secs": args.budget_secs,
                "results": results,
            }))?
        );
    }
    Ok(())
}

fn run_single(args: &SingleArgs, search: Search) -> Result<()> {
    let models = args.models.require()?;
    let mut log = say(args.json);
    let (enc, gen) = tokenizers(&models)?;
    let data = Dataset::load(&args.dataset)?;
    let chunking = ChunkingOptions::default();
    let public_docs = match &args.public {
        Some(p) => corpus_documents(&public_corpus(p)?, &enc, &chunking),
        None => corpus_documents(&data.corpus, &enc, &chunking),
    };
    let public_seqs = sequences(&public_docs, Vocab::Generator, &enc, &gen)?;
    let public = TokenStats::count(gen.vocab_size(), public_seqs.iter().map(Vec::as_slice));
    let generator = match args.scorer {
        Scorer::Lm => Some(Generator::load(&models.generator_gguf(), &Device::Cpu)?),
        Scorer::Bigram => None,
    };
    let mut loss: Box<dyn Loss> = match &generator {
        Some(g) => Box::new(LanguageModelLoss {
            generator: g,
            prefix: gen.encode_template("<|im_start|>user\n")?,
        }),
        None => Box::new(BigramLoss(&public)),
    };
    // The victim's key; the queries are encrypted as the client encrypts
    // them (the generator ids of an `ask`).
    let key = Key::generate()?;
    let perm = key.generator_permutation(gen.vocab_size());
    // Every `ask` also carries the prompt template, encrypted; its plaintext
    // is public (eerag's default), so the host learns those ids' meanings.
    let template = chatml_template(&gen, &AskOptions::default().system)?;
    let mut known = HashMap::new();
    for &t in template
        .before_context
        .iter()
        .chain(&template.between_chunks)
        .chain(&template.before_question)
        .chain(&template.after_question)
    {
        known.insert(perm.apply(t)?, t);
    }
    let mut rows = Vec::new();
    let (mut right, mut total, mut known_total) = (0usize, 0usize, 0usize);
    let mut below_truth = 0usize;
    for (i, q) in data.queries.iter().take(args.queries).enumerate() {
        let plain = gen.encode(&q.text)?;
        if plain.is_empty() {
            log(&format!("  query {}: no tokens, skipped", i + 1));
            continue;
        }
        let cipher = perm.apply_all(&plain)?;
        let r = single::attack(
            &cipher,
            &plain,
            &known,
            &public,
            loss.as_mut(),
            search,
            Budget {
                seconds: args.budget_secs,
                max_candidates: args.max_candidates,
            },
            args.seed + i as u64,
        )?;
        right += r.recovered_tokens;
        total += r.tokens;
        known_total += r.known_tokens;
        if r.best_loss < r.true_loss {
            below_truth += 1;
        }
        log(&format!(
            "  query {}: {}/{} tokens recovered ({} known from the template), {} candidates, \
             best loss {:.1} vs the truth's {:.1}",
            i + 1,
            r.recovered_tokens,
            r.tokens,
            r.known_tokens,
            r.candidates,
            r.best_loss,
            r.true_loss
        ));
        rows.push(r);
    }
    let rate = right as f64 / total.max(1) as f64;
    log(&format!(
        "{search:?} ({:?} loss, {} s per query): {} of {} query tokens recovered ({}), {} of them \
         known from the prompt template ({} distinct template ids); the search found a text the \
         loss prefers to the truth in {} of {} queries",
        args.scorer,
        args.budget_secs,
        right,
        total,
        pct(rate),
        known_total,
        known.len(),
        below_truth,
        rows.len()
    ));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "attack": search,
                "scorer": args.scorer,
                "budget_secs": args.budget_secs,
                "queries": rows.len(),
                "tokens": total,
                "recovered_tokens": right,
                "recovered_rate": rate,
                "known_from_template": known_total,
                "template_ids_known": known.len(),
                "chance_rate": 1.0 / gen.vocab_size() as f64,
                "best_below_truth": below_truth,
                "per_query": rows,
            }))?
        );
    }
    Ok(())
}

fn run_brute_force(args: &BruteForceArgs) -> Result<()> {
    let models = args.models.require()?;
    let mut log = say(args.json);
    let (enc, gen) = tokenizers(&models)?;
    let key = Key::generate()?;
    let cipher = key
        .generator_permutation(gen.vocab_size())
        .apply_all(&gen.encode(&args.query)?)?;
    let r = brute_force::measure(
        enc.vocab_size(),
        gen.vocab_size(),
        &cipher,
        args.budget_secs,
    )?;
    log(&format!(
        "key space: log2(V!) = {:.0} bits for the encoder vocabulary ({}), {:.0} bits for the generator's ({}); \
         one query's {} distinct ids alone: {:.0} bits; the master secret: {} bits",
        r.log2_encoder_permutations,
        r.encoder_vocab,
        r.log2_generator_permutations,
        r.generator_vocab,
        r.query_distinct_ids,
        r.log2_query_mappings,
        r.secret_bits
    ));
    log(&format!(
        "measured: {:.1} candidate keys per second ({} in {:.1} s: derive both permutations, decrypt the query)",
        r.keys_per_second, r.keys_tried, r.seconds
    ));
    log(&format!(
        "time to enumerate: 10^{:.0} years for the secret, 10^{:.0} years for one query's mappings, 10^{:.0} years for the generator permutations",
        r.log10_years_secret, r.log10_years_query_mappings, r.log10_years_generator_permutations
    ));
    log(&format!(
        "  one query's mappings at a generous 10^9 candidates per second: 10^{:.0} years",
        r.log10_years_query_mappings_at_1e9
    ));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"attack": "brute-force", "result": r}))?
        );
    }
    Ok(())
}

/// Sentences of different kinds, for measuring how far a perturbed encoder
/// moves sentence embeddings.
const PROBE_TEXTS: [&str; 12] = [
    "The patient was given 5 mg of the drug twice a day for two weeks.",
    "Quarterly revenue rose 12% on strong demand for cloud services.",
    "The tenant must give sixty days' written notice before leaving.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "How do I reset my password if I no longer have the recovery email?",
    "The court held that the contract was void for lack of consideration.",
    "Mix the flour and butter, then add cold water a spoonful at a time.",
    "The train to Lyon leaves at 7:42 from platform nine.",
    "Mutations in the BRCA1 gene raise the risk of breast cancer.",
    "fn main() { println!(\"hello\"); }",
    "Der Vertrag tritt am ersten Januar in Kraft.",
    "Our encrypted search never shows the host a single word of plaintext.",
];

fn run_weight_match(args: &WeightMatchArgs) -> Result<()> {
    let models = args.models.require()?;
    let mut log = say(args.json);
    let (enc, _) = tokenizers(&models)?;
    let key = Key::generate()?;
    let dir = tempfile::tempdir()?;
    let artifacts = dir.path().join("artifacts");
    log("transforming the models for a throwaway key (what the host is given)");
    eerag_client::transform::transform(
        &key,
        &models.encoder_dir(),
        &models.generator_gguf(),
        &artifacts,
        false,
    )?;
    let host = eerag_core::artifacts::HostArtifacts::open(&artifacts, true)?;
    let probe_ids: Vec<Vec<u32>> = PROBE_TEXTS
        .iter()
        .map(|t| enc.encode(t))
        .collect::<Result<_, _>>()?;
    let mut reports = Vec::new();
    for vocab in [Vocab::Encoder, Vocab::Generator] {
        let start = Instant::now();
        let (public, transformed) = match vocab {
            Vocab::Encoder => (
                weight_match::encoder_table(&models.encoder_dir())?,
                weight_match::encoder_table(&host.encoder_dir())?,
            ),
            Vocab::Generator => (
                weight_match::generator_table(&models.generator_gguf())?,
                weight_match::generator_table(&host.generator_path())?,
            ),
        };
        let load_seconds = start.elapsed().as_secs_f64();
        let perm = match vocab {
            Vocab::Encoder => key.encoder_permutation(public.rows),
            Vocab::Generator => key.generator_permutation(public.rows),
        };
        let truth = perm.inverse_table();
        let exact = weight_match::exact(&public, &transformed, truth);
        log(&format!(
            "{vocab:?} ({} rows x {}): exact matching recovered {} ({}) in {:.2} s ({} rows ambiguous); tables read in {:.1} s",
            public.rows, public.dim, exact.recovered, pct(exact.share), exact.seconds, exact.ambiguous, load_seconds
        ));
        let nearest = weight_match::nearest(&public, &transformed.values, truth, None)?;
        log(&format!(
            "  nearest-row matching recovered {} ({}) in {:.1} s",
            nearest.recovered,
            pct(nearest.share),
            nearest.seconds
        ));
        let base_dir = models.encoder_dir();
        let probe = weight_match::EncoderProbe {
            base_dir: &base_dir,
            texts: &probe_ids,
        };
        let perturbed = weight_match::perturbed(
            &public,
            &perm,
            &args.noise,
            args.sample,
            (vocab == Vocab::Encoder).then_some(&probe),
            args.seed,
        )?;
        for p in &perturbed {
            log(&format!(
                "  private base with noise {} x RMS: exact {}, nearest {} of {} sampled rows{}",
                p.noise,
                pct(p.exact_share),
                pct(p.nearest.share),
                p.nearest.rows,
                p.embedding_cosine
                    .map(|c| format!(
                        "; sentence embeddings move to cosine {c:.4} of the public model's"
                    ))
                    .unwrap_or_default()
            ));
        }
        reports.push(json!({
            "vocab": vocab,
            "rows": public.rows,
            "dim": public.dim,
            "load_seconds": load_seconds,
            "exact": exact,
            "nearest": nearest,
            "perturbed": perturbed,
        }));
    }
    log("the encoder artifact also holds the rotation R as a tensor (eerag.rotation): the host reads it directly");
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"attack": "weight-match", "results": reports}))?
        );
    }
    Ok(())
}

fn run_vector_match(args: &VectorMatchArgs) -> Result<()> {
    let models = args.models.require()?;
    let mut log = say(args.json);
    let (enc, _) = tokenizers(&models)?;
    let data = Dataset::load(&args.dataset)?;
    let chunking = ChunkingOptions::default();
    let (victim_docs, used) =
        victim::documents_up_to(&data.corpus, &enc, &chunking, Amount::Chunks(args.chunks))?;
    let (distractor_docs, _) = victim::documents_up_to(
        &data.corpus[used..],
        &enc,
        &chunking,
        Amount::Chunks(args.chunks),
    )?;
    let distractors = sequences(
        &distractor_docs,
        Vocab::Encoder,
        &enc,
        &GeneratorTokenizer::from_gguf(&models.generator_gguf())?,
    )?;
    let victim = victim::ingest(&models, victim_docs, &mut log)?;
    let encoder = Encoder::load(&models.encoder_dir(), &Device::Cpu)?;
    let r = vector_match::attack(&victim, &distractors, &encoder, &args.known, &mut log)?;
    log(&format!(
        "{} stored vectors, {} candidate texts (chance {}): top-1 match {} with the rotation, {} without it (stored = R·public within {:.1e})",
        r.stored,
        r.candidates,
        pct(r.chance),
        pct(r.with_rotation),
        pct(r.without_rotation),
        r.max_unrotated_gap
    ));
    for k in &r.known_plaintext {
        log(&format!(
            "  knowing {} (text, vector) pairs: R estimated, top-1 match {} on the other {}",
            k.pairs,
            pct(k.top1),
            k.scored
        ));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"attack": "vector-match", "result": r}))?
        );
    }
    Ok(())
}
