//! Model loading and inference shared by client and host, plus the offline
//! model fetcher.

pub mod bert;
pub mod encoder;
pub mod fetch;
pub mod generator;
#[cfg(feature = "llama-cpp-dynamic-backends")]
pub mod ggml_cpu;
pub mod llama;
#[cfg(feature = "llama-cpp")]
pub mod llamacpp;

pub use encoder::{Encoder, EncoderBackend};
pub use generator::{
    Decoding, Generation, GenerationOptions, Generator, GeneratorBackend, GeneratorOptions,
    Session, StopReason,
};
