//! The host's model engine on the real encoder: embedding requests from
//! concurrent clients share forward passes, and each gets its own vectors.

use std::sync::Arc;

use candle_core::Device;
use eerag_query::engine::{Engine, EngineLimits};
use eerag_query::metrics::Metrics;
use eerag_tests::fixture;

fn counter(metrics: &Metrics, name: &str) -> u64 {
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn concurrent_embedding_requests_share_a_forward_pass() {
    let f = fixture();
    let metrics = Arc::new(Metrics::default());
    let limits = EngineLimits {
        embed_batch: 16,
        ..EngineLimits::default()
    };
    let engine =
        Arc::new(Engine::start(&f.artifacts, &Device::Cpu, limits, metrics.clone()).unwrap());
    let c = &f.sides.cipher;
    let tok = &f.sides.encoder_tokenizer;
    let encrypt = |text: &str| {
        c.encrypt_encoder(&tok.encode(text).unwrap())
            .unwrap()
            .ids()
            .to_vec()
    };
    let long = encrypt(&"the settlement worker stalled and the queue grew ".repeat(40));
    let queries: Vec<Vec<u32>> = [
        "How warm may the vaccine fridge get?",
        "What is the hourly rate of a partner?",
        "Why did the settlement worker stall?",
        "retainer",
        "Dana Whitlock",
        "Who approves a refund?",
        "When does the clinic open on Saturdays?",
        "needle-stick injury",
    ]
    .map(encrypt)
    .to_vec();
    // Each query alone, for reference.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let alone: Vec<Vec<f32>> = queries
        .iter()
        .map(|q| {
            runtime
                .block_on(engine.embed(vec![q.clone()]))
                .unwrap()
                .remove(0)
        })
        .collect();
    let before = counter(&metrics, "eerag_embed_batches_total");

    // Keep the worker busy with 16 window-length sequences, then send the
    // eight queries as eight concurrent requests: they wait together and
    // are embedded in one pass.
    let together: Vec<Vec<f32>> = runtime.block_on(async {
        let busy = {
            let engine = engine.clone();
            let long = long.clone();
            tokio::spawn(async move { engine.embed(vec![long; 16]).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let handles: Vec<_> = queries
            .iter()
            .map(|q| {
                let (engine, q) = (engine.clone(), q.clone());
                tokio::spawn(async move { engine.embed(vec![q]).await })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap().unwrap().remove(0));
        }
        busy.await.unwrap().unwrap();
        out
    });
    let batches = counter(&metrics, "eerag_embed_batches_total") - before;
    assert_eq!(
        batches, 2,
        "16 long sequences, then 8 one-query requests in one shared pass"
    );
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        // Padding to the batch's longest sequence changes the float
        // summation order, not the vector.
        assert!(cosine(a, t) > 1.0 - 1e-5, "query {i} got another's vector");
        for (j, other) in alone.iter().enumerate() {
            if j != i {
                assert!(cosine(other, t) < 0.999, "query {i} looks like {j}");
            }
        }
    }
}
