//! `eerag eval` on the BEIR-format sets in `../shared/datasets`: the
//! encrypted pipeline's retrieval quality is the plaintext pipeline's.

use std::path::PathBuf;

use serde_json::Value;

use crate::{eerag, models_dir, path, stderr};

pub(crate) fn dataset(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/datasets")
        .join(name);
    assert!(
        dir.join("corpus.jsonl").is_file(),
        "the evaluation sets are read from {} (../shared beside the checkout)",
        dir.display()
    );
    dir
}

fn eval(name: &str, docs: &str, queries: &str, extra: &[&str]) -> Value {
    let models = models_dir();
    let set = dataset(name);
    let mut args = vec![
        "eval",
        "--dataset",
        path(&set),
        "--docs",
        docs,
        "--queries",
        queries,
        "--models",
        path(&models),
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = eerag(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("JSON report")
}

fn check(report: &Value) {
    let queries = report["queries"].as_u64().unwrap();
    assert!(queries > 0);
    let modes = report["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 3);
    for m in modes {
        let equivalent = m["equivalent_rankings"].as_u64().unwrap();
        if m["mode"] == "hybrid" {
            // Fusion can turn a swapped near-tie into a place's move.
            assert!(equivalent * 10 >= queries * 9, "{m:#}");
        } else {
            assert_eq!(equivalent, queries, "{m:#}");
        }
        for metric in ["nDCG@10", "recall@100", "MRR@10"] {
            let e = m["encrypted"][metric].as_f64().unwrap();
            let p = m["plaintext"][metric].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&e), "{metric} {e}");
            // Equivalent rankings may order exactly tied documents
            // differently; nothing else may differ.
            assert!((e - p).abs() < 0.01, "{}: {metric} {e} vs {p}", m["mode"]);
        }
    }
}

#[test]
fn scifact_slice_scores_the_same_encrypted_and_plain() {
    let report = eval("scifact", "500", "50", &[]);
    assert_eq!(report["documents"], 500);
    check(&report);
    // A working retriever on this slice, not a vacuous one.
    let dense = &report["modes"][0];
    assert_eq!(dense["mode"], "dense");
    assert!(
        dense["encrypted"]["nDCG@10"].as_f64().unwrap() > 0.6,
        "{dense:#}"
    );
}

#[test]
fn any_beir_set_works_squad_paragraphs_and_answers_match() {
    // Three questions answered by both pipelines: the command itself fails
    // unless answers to the same prompt are the same tokens. These three
    // questions retrieve the same chunks in both (no near-tie at the cut).
    let report = eval("squad2-dev-subset", "173", "40", &["--answers", "3"]);
    check(&report);
    let answers = &report["answers"];
    assert_eq!(answers["questions"], 3, "{answers:#}");
    assert_eq!(answers["same_context"], 3, "{answers:#}");
    assert_eq!(answers["identical_answers"], 3, "{answers:#}");
    assert_eq!(answers["encrypted"], answers["plaintext"], "{answers:#}");
    for x in answers["examples"].as_array().unwrap() {
        assert_eq!(x["encrypted"], x["plaintext"]);
        assert!(!x["encrypted"].as_str().unwrap().is_empty(), "{x:#}");
    }
    assert!(
        report["modes"][2]["encrypted"]["recall@100"]
            .as_f64()
            .unwrap()
            > 0.8
    );
}

#[test]
fn the_scale_bench_runs_small_and_draws_its_plot() {
    // The scale figures in docs/performance.md come from this command at 1k–100k chunks;
    // here it runs at two small sizes, which still writes both stores,
    // searches every mode over HTTP and compares every pair of rankings
    // (keyed document ids on each side, so key-dependent tie order fails).
    let models = models_dir();
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("latency.svg");
    let o = eerag(&[
        "bench",
        "scale",
        "--sizes",
        "200,800",
        "--searches",
        "12",
        "--plot",
        path(&plot),
        "--models",
        path(&models),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    let sizes = report["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 2);
    assert_eq!(sizes[0]["chunks"], 200);
    assert_eq!(sizes[1]["chunks"], 800);
    for size in sizes {
        assert_eq!(size["rankings_compared_all_equal"], 36, "{size:#}");
        for mode in ["dense", "keyword", "hybrid"] {
            let s = &size[format!("search_{mode}")];
            assert_eq!(s["samples"], 12);
            assert!(s["encrypted_p50_ms"].as_f64().unwrap() > 0.0);
        }
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("hybrid p50, encrypted"));
}

#[test]
fn the_model_bench_checks_batched_decoding_and_reports_its_device() {
    // The batch figures in docs/performance.md come from this command; here it runs one
    // small round: it fails unless encrypted and plaintext tokens agree, at
    // batch 1 and batched, and batched rows equal batch-1 rows on the CPU.
    let models = models_dir();
    let o = eerag(&[
        "bench",
        "models",
        "--rounds",
        "1",
        "--sentences",
        "4",
        "--decode-tokens",
        "3",
        "--decode-batch",
        "3",
        "--device",
        "cpu",
        "--models",
        path(&models),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("models run on cpu"), "{}", stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_eq!(report["outputs_identical"], true);
    assert!(
        report["device"].as_str().unwrap().starts_with("cpu"),
        "{report:#}"
    );
    let batched = &report["generator_decode_batched"];
    assert_eq!(batched["batch"], 3, "{report:#}");
    assert!(batched["encrypted_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        report["generator_prefill"]["encrypted_ttft_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(report["generator_bytes"].as_u64().unwrap() > 50_000_000);
    // A device this binary cannot have is a clear error, not a CPU run.
    if !eerag_core::device::cuda_compiled() {
        let o = eerag(&[
            "bench",
            "models",
            "--device",
            "cuda:1",
            "--models",
            path(&models),
        ]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("built without CUDA"), "{}", stderr(&o));
    }
    let o = eerag(&[
        "bench",
        "models",
        "--device",
        "tpu",
        "--models",
        path(&models),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("expected auto, cpu, cuda or cuda:N"),
        "{}",
        stderr(&o)
    );
}
