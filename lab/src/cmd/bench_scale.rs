//! `eerag bench scale`: search latency as the corpus grows, encrypted vs
//! plaintext, with an optional SVG plot (see `crate::scale`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::cmd::bench::CommonArgs;
use crate::scale::{self, percentile, ScaleOptions, MODES};

/// Options of `eerag bench scale`.
#[derive(clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Corpus sizes in chunks.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    sizes: Vec<usize>,
    /// Timed searches per mode, size and pipeline.
    #[arg(long, default_value_t = 200)]
    searches: usize,
    /// Also draw latency vs corpus size into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Compare stores instead of keys: the embedded store vs this one
    /// (`qdrant://host:6334`), both under one throwaway key. The bench's
    /// collection on the server is deleted after each size.
    #[arg(long, conflicts_with = "plot")]
    compare_store: Option<String>,
}

/// Runs the scale benchmark and prints a table (or JSON); draws the plot.
pub fn run(args: &ScaleArgs) -> Result<()> {
    let models = &args.common.models.require()?;
    let options = &ScaleOptions {
        sizes: args.sizes.clone(),
        searches: args.searches,
        compare_store: args
            .compare_store
            .as_deref()
            .map(|url| eerag_store::StoreSpec::parse(url, None))
            .transpose()?,
        ..Default::default()
    };
    let plot = args.plot.as_deref();
    let json_out = args.common.json;
    let started = Instant::now();
    let queries = crate::cmd::bench_host::queries();
    let results = scale::run(models, options, &queries, |line| {
        eprintln!("  {line} ({:.0} s)", started.elapsed().as_secs_f64())
    })?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let ms = |xs: &[f64], p| percentile(xs, p) * 1e3;
    let [a, b] = options.labels();
    if json_out {
        let sizes: Vec<_> = results
            .iter()
            .map(|r| {
                let mut size = json!({
                    "chunks": r.chunks,
                    "write_chunks_per_s": {
                        a: r.chunks as f64 / r.write_secs[0],
                        b: r.chunks as f64 / r.write_secs[1],
                    },
                    "rankings_compared_all_equal": r.rankings_compared,
                });
                for (m, mode) in MODES.iter().enumerate() {
                    let l = &r.search[m];
                    size[format!("search_{}", format!("{mode:?}").to_lowercase())] = json!({
                        format!("{a}_p50_ms"): ms(&l.plaintext, 0.5),
                        format!("{a}_p99_ms"): ms(&l.plaintext, 0.99),
                        format!("{b}_p50_ms"): ms(&l.encrypted, 0.5),
                        format!("{b}_p99_ms"): ms(&l.encrypted, 0.99),
                        "samples": l.encrypted.len(),
                        "overlap_at_k": r.overlap[m],
                    });
                }
                size
            })
            .collect();
        let out = json!({
            "threads": threads,
            "k": scale::K,
            "chunk_tokens": options.chunk_tokens,
            "sizes": sizes,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "eerag bench scale: {threads} threads, k {}, {} searches per mode, size and pipeline ({:.0} s in all)",
            scale::K,
            options.searches,
            started.elapsed().as_secs_f64()
        );
        println!(
            "| chunks | work | {a} | {b} | ratio ({a} ÷ {b} time) | overlap@{} |",
            scale::K
        );
        println!("| --- | --- | --- | --- | --- | --- |");
        for r in &results {
            let (p, e) = (
                r.chunks as f64 / r.write_secs[0],
                r.chunks as f64 / r.write_secs[1],
            );
            println!(
                "| {} | store write (vectors precomputed) | {p:.0} chunks/s | {e:.0} chunks/s | {:.2} | |",
                r.chunks,
                e / p
            );
            for (m, mode) in MODES.iter().enumerate() {
                let l = &r.search[m];
                println!(
                    "| {} | search {} | p50 {:.1} ms, p99 {:.1} ms | p50 {:.1} ms, p99 {:.1} ms | {:.2} (p50), {:.2} (p99) | {:.3} |",
                    r.chunks,
                    format!("{mode:?}").to_lowercase(),
                    ms(&l.plaintext, 0.5),
                    ms(&l.plaintext, 0.99),
                    ms(&l.encrypted, 0.5),
                    ms(&l.encrypted, 0.99),
                    ms(&l.plaintext, 0.5) / ms(&l.encrypted, 0.5),
                    ms(&l.plaintext, 0.99) / ms(&l.encrypted, 0.99),
                    r.overlap[m],
                );
            }
        }
        let compared: usize = results.iter().map(|r| r.rankings_compared).sum();
        if options.compare_store.is_some() {
            println!("dense rankings equal (up to near-ties) for all {compared} dense searches");
        } else {
            println!("rankings equal (up to near-ties) for all {compared} searches");
        }
    }
    if let Some(path) = plot {
        let subtitle = format!(
            "{threads} CPU threads; synthetic {}-token chunks; {} searches per point; `eerag bench scale`",
            options.chunk_tokens, options.searches
        );
        crate::plot::latency_vs_size(&results, &subtitle, path)
            .with_context(|| format!("drawing {}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}
