//! The lab's commands, as the `eerag` binary exposes them: their flags
//! (clap) and drivers. They report through `anyhow`, the binary's edge.

pub mod attack;
pub mod bench;
mod bench_host;
mod bench_peers;
mod bench_scale;
pub mod eval;
