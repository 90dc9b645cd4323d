//! `eerag attack` on the real pipeline's output, small enough for CI: each
//! attack runs end to end and its figures are the ones the threat model
//! predicts (the figures in docs/security.md come from the same commands, larger).

use serde_json::Value;

use crate::eval::dataset;
use crate::{eerag, models_dir, path, stderr};

fn attack(args: &[&str]) -> Value {
    let models = models_dir();
    let mut all = args.to_vec();
    all.extend_from_slice(&["--models", path(&models), "--json"]);
    let o = eerag(&all);
    assert!(o.status.success(), "eerag {args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("JSON report")
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn frequency_analysis_of_stored_ids_beats_unigram_matching() {
    let set = dataset("scifact");
    let report = attack(&[
        "attack",
        "frequency",
        "--dataset",
        path(&set),
        "--sizes",
        "1000,10000",
        "--vocab",
        "encoder",
        "--budget-secs",
        "300",
        "--max-steps",
        "100000",
    ]);
    assert!(report["stored_encoder_tokens"].as_u64().unwrap() >= 10_000);
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{report}");
    let big = &results[1]["result"];
    assert_eq!(big["tokens"], 10_000);
    assert_eq!(big["steps"], 100_000);
    let (unigram, climbed) = (
        f(&big["unigram"]["occurrences"]),
        f(&big["hill_climb"]["occurrences"]),
    );
    // Ciphertext-only, from other documents of the same kind: the
    // substitution leaks. Measured about 7% after unigram matching and 37%
    // after climbing for 60 s (1.2 million steps); 100,000 steps must
    // already clearly beat unigram.
    assert!(unigram > 0.02, "{big}");
    assert!(climbed > unigram + 0.05, "{big}");
    assert!(f(&big["ceiling"]["occurrences"]) > 0.95, "{big}");
}

#[test]
fn one_query_resists_hill_climbing_and_random_sampling() {
    let set = dataset("scifact");
    let climb = attack(&[
        "attack",
        "hill-climb",
        "--dataset",
        path(&set),
        "--queries",
        "3",
        "--budget-secs",
        "300",
        "--max-candidates",
        "200000",
    ]);
    let tokens = climb["tokens"].as_u64().unwrap();
    assert!(tokens > 10, "{climb}");
    // The prompt template every request carries gives some ids away.
    assert!(
        climb["template_ids_known"].as_u64().unwrap() > 10,
        "{climb}"
    );
    for q in climb["per_query"].as_array().unwrap() {
        assert_eq!(q["candidates"], 200_000);
        assert!(q["recovered_tokens"].as_u64() >= q["known_tokens"].as_u64());
    }
    // The bigram loss prefers wrong texts to the truth: more search cannot
    // find the query.
    assert!(climb["best_below_truth"].as_u64().unwrap() >= 2, "{climb}");
    assert!(f(&climb["recovered_rate"]) < 0.5, "{climb}");
    let sample = attack(&[
        "attack",
        "random-sample",
        "--dataset",
        path(&set),
        "--queries",
        "1",
        "--budget-secs",
        "300",
        "--max-candidates",
        "3",
        "--scorer",
        "lm",
    ]);
    let per_query = &sample["per_query"][0];
    assert_eq!(per_query["candidates"], 3, "{sample}");
    assert!(f(&per_query["true_loss"]) > 0.0);
}

#[test]
fn brute_force_reports_the_key_space() {
    let report = attack(&["attack", "brute-force", "--budget-secs", "1"]);
    let r = &report["result"];
    // log2(30522!) and log2(49152!), by Stirling.
    assert!(
        (f(&r["log2_encoder_permutations"]) - 410_678.0).abs() < 2.0,
        "{r}"
    );
    assert!(
        (f(&r["log2_generator_permutations"]) - 695_130.0).abs() < 2.0,
        "{r}"
    );
    assert!(f(&r["keys_per_second"]) > 1.0);
    assert!(f(&r["log10_years_secret"]) > 30.0, "{r}");
}

#[test]
fn the_compute_host_recovers_the_permutations_from_the_weights() {
    let report = attack(&[
        "attack",
        "weight-match",
        "--noise",
        "0.1",
        "--sample",
        "512",
    ]);
    for r in report["results"].as_array().unwrap() {
        // Exact transforms: the public base model gives the whole
        // permutation away (a few quantized generator rows are shared by
        // several tokens).
        assert!(f(&r["exact"]["share"]) > 0.999, "{r}");
        assert!(f(&r["nearest"]["share"]) > 0.999, "{r}");
        let private = &r["perturbed"][0];
        assert_eq!(f(&private["exact_share"]), 0.0, "{r}");
        assert!(f(&private["nearest"]["share"]) > 0.99, "{r}");
        if r["vocab"] == "encoder" {
            let cos = f(&private["embedding_cosine"]);
            assert!(cos > 0.99 && cos < 1.0, "{r}");
        }
    }
}

#[test]
fn stored_vectors_do_not_match_the_public_encoder_unless_r_is_known() {
    let set = dataset("scifact");
    let report = attack(&[
        "attack",
        "vector-match",
        "--dataset",
        path(&set),
        "--chunks",
        "80",
        "--known",
        "64",
    ]);
    let r = &report["result"];
    let stored = r["stored"].as_u64().unwrap() as f64;
    assert!(stored >= 80.0, "{r}");
    // At chance with R (a few lucky hits at most), all without it.
    assert!(f(&r["with_rotation"]) * stored <= 4.0, "{r}");
    assert!(f(&r["without_rotation"]) > 0.97, "{r}");
    assert!(f(&r["max_unrotated_gap"]) < 1e-4, "{r}");
    assert_eq!(r["known_plaintext"][0]["pairs"], 64);
}
