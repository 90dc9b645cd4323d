//! `POST /v1/embeddings`: texts encrypted, embedded by the host, rotated
//! back into the public model's space.

use std::sync::Arc;

use crate::client::ClientError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine as _;
use eerag_core::wire::EmbedRequest;
use serde::Deserialize;
use serde_json::{json, Value};

use super::openai::{Body, OpenAiError};
use super::{Gateway, EMBEDDING_MODEL, EMBED_BATCH};

/// `input` of an embeddings request: text or texts (token arrays are the
/// OpenAI tokenizer's ids, meaningless here, so refused).
#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
    Tokens(#[allow(dead_code)] Value),
}

#[derive(Deserialize)]
pub(super) struct EmbeddingsRequest {
    input: EmbeddingInput,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
}

pub(super) async fn embeddings(
    State(gw): State<Arc<Gateway>>,
    Body(request): Body<EmbeddingsRequest>,
) -> Result<Json<Value>, OpenAiError> {
    let texts = match request.input {
        EmbeddingInput::One(t) => vec![t],
        EmbeddingInput::Many(t) => t,
        EmbeddingInput::Tokens(_) => {
            return Err(OpenAiError::invalid(
                "send input as text: token arrays are another tokenizer's ids",
            ))
        }
    };
    if texts.is_empty() || texts.len() > 2048 {
        return Err(OpenAiError::invalid("send 1 to 2048 inputs"));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(OpenAiError::invalid(format!(
                "encoding_format {other:?}: use float or base64"
            )))
        }
    };
    let gw2 = gw.clone();
    let (vectors, tokens) = tokio::task::spawn_blocking(move || gw2.embed(&texts))
        .await
        .map_err(|e| {
            OpenAiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list", "data": data,
        "model": request.model.unwrap_or_else(|| EMBEDDING_MODEL.into()),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

impl Gateway {
    /// Plaintext-space embeddings of `texts`: encrypt, embed on the host
    /// (vectors come back rotated by the key), rotate back.
    fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize), OpenAiError> {
        let c = &self.client;
        let mut vectors = Vec::with_capacity(texts.len());
        let mut tokens = 0;
        for batch in texts.chunks(EMBED_BATCH) {
            let mut inputs = Vec::with_capacity(batch.len());
            for text in batch {
                let ids = c
                    .encoder_tokenizer()
                    .encode(text)
                    .map_err(|e| OpenAiError::invalid(e.to_string()))?;
                tokens += ids.len();
                inputs.push(
                    c.cipher()
                        .encrypt_encoder(&ids)
                        .map_err(|e| OpenAiError::invalid(e.to_string()))?
                        .ids()
                        .to_vec(),
                );
            }
            let rotated = c
                .host()
                .embed(&EmbedRequest {
                    key_id: c.cipher().key_id(),
                    inputs,
                })
                .map_err(ClientError::from)?;
            vectors.extend(rotated.iter().map(|v| c.cipher().rotation().unrotate(v)));
        }
        Ok((vectors, tokens))
    }
}
