//! The host's model engine on the real encoder: embedding requests from
//! concurrent clients share forward passes, and each gets its own vectors.

use std::sync::Arc;

use eerag_core::models::{GenerationOptions, StopReason};
use eerag_core::sampling::Sampling;
use eerag_host::engine::{Engine, EngineLimits, GenerationEvent, Placement};
use eerag_host::metrics::Metrics;
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
        Arc::new(Engine::start(&f.artifacts, &Placement::cpu(), limits, metrics.clone()).unwrap());
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

/// Tokens and stop reason of one generation, read off its events.
async fn collect(mut rx: tokio::sync::mpsc::Receiver<GenerationEvent>) -> (Vec<u32>, StopReason) {
    let mut tokens = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            GenerationEvent::Token(id) => tokens.push(id),
            GenerationEvent::Done(stop) => return (tokens, stop),
            GenerationEvent::Failed(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("the generation ended without a final event")
}

#[test]
fn concurrent_generations_decode_in_one_batch_with_their_tokens_alone() {
    let f = fixture();
    let metrics = Arc::new(Metrics::default());
    let engine = Engine::start(
        &f.artifacts,
        &Placement::cpu(),
        EngineLimits::default(),
        metrics.clone(),
    )
    .unwrap();
    let tok = &f.sides.generator_tokenizer;
    let c = &f.sides.cipher;
    let prompts: Vec<Vec<u32>> = [
        "When does the clinic open on Saturdays?",
        "Who approves a refund?",
        "Name a colour.",
        "What is the hourly rate of a partner at the firm?",
    ]
    .iter()
    .map(|q| {
        let plain = eerag_client::tokenize::chatml_prompt(tok, "Answer briefly.", q).unwrap();
        c.encrypt_generator(&plain).unwrap().ids().to_vec()
    })
    .collect();
    let options = |max_tokens| GenerationOptions {
        max_tokens,
        stop_ids: vec![],
        sampling: Sampling::Greedy,
    };
    let lengths = [12, 5, 9, 12];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let alone: Vec<(Vec<u32>, StopReason)> = prompts
        .iter()
        .zip(lengths)
        .map(|(p, n)| runtime.block_on(collect(engine.generate(p.clone(), options(n)).unwrap())))
        .collect();
    let steps_alone = counter(&metrics, "eerag_decode_steps_total");
    // Each generation alone: one decode step per token after the first.
    assert_eq!(
        steps_alone,
        lengths.iter().map(|n| n - 1).sum::<usize>() as u64
    );

    // All four at once: they run their prompts, then share decode steps;
    // one ends early and the others go on without it.
    let receivers: Vec<_> = prompts
        .iter()
        .zip(lengths)
        .map(|(p, n)| engine.generate(p.clone(), options(n)).unwrap())
        .collect();
    let together: Vec<(Vec<u32>, StopReason)> =
        runtime.block_on(async { futures_collect(receivers).await });
    let steps_together = counter(&metrics, "eerag_decode_steps_total") - steps_alone;
    assert_eq!(
        together, alone,
        "a generation's tokens do not depend on its batch"
    );
    for (t, n) in together.iter().zip(lengths) {
        assert_eq!((t.0.len(), t.1), (n, StopReason::MaxTokens));
    }
    assert!(
        steps_together < steps_alone,
        "{steps_together} decode steps together vs {steps_alone} alone: nothing was batched"
    );
}

async fn futures_collect(
    receivers: Vec<tokio::sync::mpsc::Receiver<GenerationEvent>>,
) -> Vec<(Vec<u32>, StopReason)> {
    let handles: Vec<_> = receivers
        .into_iter()
        .map(|rx| tokio::spawn(collect(rx)))
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
