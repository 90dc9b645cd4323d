//! Evaluation and benchmark support: BEIR datasets ([`beir`]), retrieval
//! metrics ([`ir_metrics`]), the encrypted-vs-plaintext evaluation
//! ([`eval`]) over side-by-side in-process hosts ([`side`]). The criterion
//! benchmarks live in `benches/`.

pub mod beir;
pub mod eval;
pub mod ir_metrics;
pub mod plot;
pub mod scale;
pub mod side;
