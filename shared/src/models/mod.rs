//! Model loading and inference shared by client and host, plus the offline
//! model fetcher.

pub mod encoder;
pub mod fetch;
pub mod generator;

pub use encoder::Encoder;
pub use generator::{Generation, GenerationOptions, Generator, Session, StopReason};
