//! The lab: what eerag measures about itself, on the real pipeline.
//!
//! - Evaluation: BEIR datasets ([`beir`]), retrieval metrics
//!   ([`ir_metrics`]), the encrypted-vs-plaintext evaluation ([`eval`]) over
//!   side-by-side in-process hosts ([`side`]).
//! - Benchmarks: search latency as the corpus grows ([`scale`], drawn by
//!   [`plot`]), the sample workload ([`workload`]); the criterion
//!   benchmarks live in `benches/`.
//! - The attack harness ([`attack`]).
//! - The commands that drive them ([`cmd`]: `eerag eval`, `eerag bench`,
//!   `eerag attack`).
//!
//! The lab holds keys and plaintext on purpose (it scores attacks against
//! the key): no host code may depend on it (docs/design.md, the plaintext
//! boundary).

pub mod attack;
pub mod beir;
pub mod cmd;
pub mod eval;
pub mod ir_metrics;
pub mod plot;
pub mod scale;
pub mod side;
pub mod workload;
