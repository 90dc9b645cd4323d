//! `eerag demo`: the whole EE round trip in one process, on the sample corpus.
//!
//! The client side encrypts; the host side (transformed models) only ever
//! sees ciphertext ids; the plaintext pipeline runs beside it so the user can
//! see the outputs are the same.

use std::time::Instant;

use anyhow::{ensure, Result};
use eerag_shared::models::fetch;
use eerag_shared::models::GenerationOptions;
use eerag_shared::sampling::Sampling;
use eerag_shared::tokenize::chatml_prompt;

use crate::workload::{sample_paragraphs, Pair};
use crate::ModelsArg;

/// The demo's default question.
pub const DEFAULT_QUESTION: &str =
    "What should staff do if the vaccine refrigerator gets too warm?";

const SYSTEM: &str = "You are a helpful assistant. Answer the question using only the context.";

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Runs the demo.
pub fn run(models: &ModelsArg, question: &str) -> Result<()> {
    let dir = models.resolve();
    fetch::fetch(&dir, |line| eprintln!("{line}"))?;
    let pair = Pair::prepare(&dir)?;
    let c = &pair.sides.cipher;
    println!(
        "key {} (throwaway), host artifacts written in {:.1} s",
        c.key_id(),
        pair.transform_secs
    );

    // Client: tokenize and encrypt the corpus and the question.
    let paragraphs = sample_paragraphs();
    ensure!(!paragraphs.is_empty(), "the sample corpus is empty");
    let tok = &pair.sides.encoder_tokenizer;
    let plain_ids: Vec<Vec<u32>> = paragraphs
        .iter()
        .map(|(_, p)| tok.encode(p))
        .collect::<Result<_, _>>()?;
    let enc_ids = plain_ids
        .iter()
        .map(|ids| c.encrypt_encoder(ids))
        .collect::<Result<Vec<_>, _>>()?;
    let q_plain = tok.encode(question)?;
    let q_enc = c.encrypt_encoder(&q_plain)?;

    // Host: embeds ciphertext with the transformed encoder.
    let started = Instant::now();
    let enc_refs: Vec<&[u32]> = enc_ids.iter().map(|e| e.ids()).collect();
    let host_vectors = pair.sides.host_encoder.embed(&enc_refs, 32)?;
    let host_query = &pair.sides.host_encoder.embed(&[q_enc.ids()], 1)?[0];
    let host_secs = started.elapsed().as_secs_f64();
    // Plaintext pipeline for comparison.
    let plain_refs: Vec<&[u32]> = plain_ids.iter().map(Vec::as_slice).collect();
    let plain_vectors = pair.sides.plain_encoder.embed(&plain_refs, 32)?;
    let plain_query = &pair.sides.plain_encoder.embed(&[&q_plain], 1)?[0];

    let mut max_err = 0f32;
    for (h, p) in host_vectors.iter().zip(&plain_vectors) {
        let expected = c.rotation().rotate(p);
        for (a, b) in h.iter().zip(&expected) {
            max_err = max_err.max((a - b).abs());
        }
    }
    let rank = |q: &[f32], vs: &[Vec<f32>]| {
        let mut order: Vec<(usize, f32)> = vs.iter().map(|v| cosine(q, v)).enumerate().collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1));
        order
    };
    let host_rank = rank(host_query, &host_vectors);
    let plain_rank = rank(plain_query, &plain_vectors);
    let same_rank = host_rank
        .iter()
        .map(|r| r.0)
        .eq(plain_rank.iter().map(|r| r.0));
    println!(
        "embedded {} encrypted paragraphs on the host in {:.2} s; max |host − R·plain| = {:.1e}; rankings identical: {}",
        paragraphs.len(),
        host_secs,
        max_err,
        same_rank
    );
    ensure!(same_rank, "encrypted and plaintext rankings differ");
    println!("\nquestion: {question}");
    println!(
        "host saw encoder ids: {:?} …",
        &q_enc.ids()[..q_enc.len().min(8)]
    );
    for (i, score) in host_rank.iter().take(3) {
        let (doc, p) = &paragraphs[*i];
        let preview: String = p.chars().take(90).collect();
        println!("  {score:.3}  {doc}: {preview}…");
    }

    // Client: build the prompt from the top paragraph, encrypt it.
    let gtok = &pair.sides.generator_tokenizer;
    let context = &paragraphs[host_rank[0].0].1;
    let user = format!("Context:\n{context}\n\nQuestion: {question}");
    let prompt = chatml_prompt(gtok, SYSTEM, &user)?;
    let enc_prompt = c.encrypt_generator(&prompt)?;
    let im_end = gtok
        .special_id("<|im_end|>")
        .ok_or_else(|| anyhow::anyhow!("generator has no <|im_end|> token"))?;
    let options = |stop: u32| GenerationOptions {
        max_tokens: 96,
        stop_ids: vec![stop],
        sampling: Sampling::Greedy,
    };

    // Host: generates in ciphertext id space.
    let started = Instant::now();
    let host_out = pair.sides.host_generator.session().generate(
        enc_prompt.ids(),
        &options(c.encrypt_generator(&[im_end])?.ids()[0]),
        |_| true,
    )?;
    let host_secs = started.elapsed().as_secs_f64();
    let host_tokens = eerag_shared::EncGeneratorIds::new(c.key_id(), host_out.tokens);
    // Plaintext pipeline for comparison.
    let plain_out =
        pair.sides
            .plain_generator
            .session()
            .generate(&prompt, &options(im_end), |_| true)?;

    let decrypted = c.decrypt_generator(&host_tokens)?;
    println!(
        "\nhost generated {} encrypted tokens in {:.1} s from a {}-token encrypted prompt; first ids: {:?} …",
        host_tokens.len(),
        host_secs,
        prompt.len(),
        &host_tokens.ids()[..host_tokens.len().min(8)]
    );
    println!(
        "client decrypted answer:\n  {}",
        gtok.decode(&decrypted)?
            .trim_end_matches("<|im_end|>")
            .trim()
    );
    let same = decrypted == plain_out.tokens;
    println!("identical to the plaintext pipeline's answer: {same}");
    ensure!(same, "encrypted and plaintext generations differ");
    Ok(())
}
