//! Brute force: the size of the key space and how long enumerating it takes
//! at a rate measured here. The spaces: the 256-bit master secret every
//! permutation is derived from (an attacker running eerag's own key
//! derivation: the real bound on recovering the key), the permutations
//! themselves (V! per vocabulary), and the mappings of one query's distinct
//! ids alone — a space an attacker could enumerate without deriving keys,
//! but with no way to tell the right candidate from the others beyond a
//! language model's loss (see [`super::single`]).

use std::time::Instant;

use eerag_client::Key;
use serde::Serialize;

use super::secs;

const SECONDS_PER_YEAR: f64 = 365.25 * 24.0 * 3600.0;

/// The key space and the measured enumeration rate.
#[derive(Clone, Debug, Serialize)]
pub struct BruteForceReport {
    pub encoder_vocab: usize,
    pub generator_vocab: usize,
    /// log₂ of V! for each vocabulary.
    pub log2_encoder_permutations: f64,
    pub log2_generator_permutations: f64,
    /// log₂ of the mappings of one query's distinct ids alone
    /// (V·(V−1)·…·(V−d+1)): all a brute-force search of one query needs.
    pub query_distinct_ids: usize,
    pub log2_query_mappings: f64,
    /// Bits of the master secret.
    pub secret_bits: u32,
    /// Candidate keys derived and tried on the query per second (master
    /// secret → both permutations → decrypt the query), on this machine.
    pub keys_per_second: f64,
    pub keys_tried: u64,
    pub seconds: f64,
    /// log₁₀ of the years to enumerate each space at the measured rate.
    pub log10_years_secret: f64,
    pub log10_years_query_mappings: f64,
    pub log10_years_generator_permutations: f64,
    /// The query's mappings at a generous 10⁹ candidates a second (an
    /// attacker skipping key derivation, on fast hardware).
    pub log10_years_query_mappings_at_1e9: f64,
}

/// log₂(n!).
pub fn log2_factorial(n: usize) -> f64 {
    (2..=n).map(|i| (i as f64).log2()).sum()
}

/// log₂ of n·(n−1)·…·(n−k+1).
pub fn log2_falling(n: usize, k: usize) -> f64 {
    (0..k.min(n)).map(|i| ((n - i) as f64).log2()).sum()
}

fn log10_years(log2_space: f64, per_second: f64) -> f64 {
    log2_space * 2f64.log10() - per_second.log10() - SECONDS_PER_YEAR.log10()
}

/// Measures for `budget_secs` how fast candidate keys can be derived and
/// tried on `query` (generator ciphertext ids).
pub fn measure(
    encoder_vocab: usize,
    generator_vocab: usize,
    query: &[u32],
    budget_secs: f64,
) -> super::Result<BruteForceReport> {
    let start = Instant::now();
    let mut tried = 0u64;
    let mut sink = 0u64;
    while tried == 0 || secs(start) < budget_secs {
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&tried.to_le_bytes());
        let key = Key::from_secret(secret);
        let generator = key.generator_permutation(generator_vocab);
        let _encoder = key.encoder_permutation(encoder_vocab);
        let plain = generator.invert_all(query)?;
        sink = sink.wrapping_add(u64::from(plain.first().copied().unwrap_or(0)));
        tried += 1;
    }
    std::hint::black_box(sink);
    let seconds = secs(start);
    let rate = tried as f64 / seconds;
    let distinct = {
        let mut d = query.to_vec();
        d.sort_unstable();
        d.dedup();
        d.len()
    };
    let log2_gen = log2_factorial(generator_vocab);
    let log2_query = log2_falling(generator_vocab, distinct);
    Ok(BruteForceReport {
        encoder_vocab,
        generator_vocab,
        log2_encoder_permutations: log2_factorial(encoder_vocab),
        log2_generator_permutations: log2_gen,
        query_distinct_ids: distinct,
        log2_query_mappings: log2_query,
        secret_bits: 256,
        keys_per_second: rate,
        keys_tried: tried,
        seconds,
        log10_years_secret: log10_years(256.0, rate),
        log10_years_query_mappings: log10_years(log2_query, rate),
        log10_years_generator_permutations: log10_years(log2_gen, rate),
        log10_years_query_mappings_at_1e9: log10_years(log2_query, 1e9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factorials() {
        assert!((log2_factorial(5) - 120f64.log2()).abs() < 1e-12);
        assert!((log2_falling(10, 3) - 720f64.log2()).abs() < 1e-12);
        assert_eq!(log2_factorial(1), 0.0);
        // Stirling: log2(n!) ≈ n log2(n/e) + ½ log2(2πn).
        let n = 30_522f64;
        let stirling =
            n * (n / std::f64::consts::E).log2() + 0.5 * (2.0 * std::f64::consts::PI * n).log2();
        assert!((log2_factorial(30_522) - stirling).abs() < 1e-3);
    }
}
