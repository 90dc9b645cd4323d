//! Model loading and inference shared by client and host, plus the offline
//! model fetcher.

pub mod encoder;
pub mod fetch;
pub mod generator;
pub mod llama;

pub use encoder::Encoder;
pub use generator::{Decoding, Generation, GenerationOptions, Generator, Session, StopReason};
