//! `POST /v1/chat/completions`: a question from the messages, asked
//! through the encrypting client, answered whole or streamed.

use std::convert::Infallible;
use std::sync::Arc;

use crate::client::{Answer, AskOptions, ClientError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use eerag_core::sampling::Sampling;
use eerag_core::wire::{FinishReason, SearchMode};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::openai::{now, Body, OpenAiError};
use super::{Gateway, CHAT_MODEL, MAX_TOKENS};

/// Message content: a string, or an array of parts of which the text ones
/// count.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

impl Content {
    fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// The part of OpenAI's chat request eerag acts on; other fields are
/// accepted and ignored.
#[derive(Deserialize)]
pub(super) struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// What a chat request asks, as eerag's question: retrieval uses the last
/// user message; the prompt gets the earlier turns too.
struct Question {
    retrieval: String,
    prompt: String,
    options: AskOptions,
    model: String,
}

impl Gateway {
    fn question(&self, r: ChatRequest) -> Result<Question, OpenAiError> {
        if r.n.unwrap_or(1) != 1 {
            return Err(OpenAiError::invalid("only n = 1 is supported"));
        }
        let last_user = r
            .messages
            .iter()
            .rposition(|m| m.role == "user")
            .ok_or_else(|| OpenAiError::invalid("messages need a user message"))?;
        let text = |m: &Message| m.content.as_ref().map(Content::text).unwrap_or_default();
        let retrieval = text(&r.messages[last_user]);
        if retrieval.trim().is_empty() {
            return Err(OpenAiError::invalid("the last user message is empty"));
        }
        let system: Vec<String> = r
            .messages
            .iter()
            .filter(|m| m.role == "system" || m.role == "developer")
            .map(text)
            .collect();
        let history: Vec<String> = r.messages[..last_user]
            .iter()
            .filter(|m| m.role == "user" || m.role == "assistant")
            .map(|m| format!("{}: {}", m.role, text(m)))
            .collect();
        let prompt = if history.is_empty() {
            retrieval.clone()
        } else {
            format!(
                "(conversation so far)\n{}\n\n{}",
                history.join("\n"),
                retrieval
            )
        };
        let defaults = AskOptions::default();
        let sampling = match r.temperature {
            Some(t) if t > 0.0 => Sampling::Random {
                temperature: t,
                top_p: r.top_p.unwrap_or(1.0),
                top_k: None,
                seed: r.seed.unwrap_or_else(rand_seed),
            },
            _ => Sampling::Greedy,
        };
        Ok(Question {
            retrieval,
            prompt,
            options: AskOptions {
                k: self.k,
                mode: SearchMode::Hybrid,
                // The host's limit (a longer request would be refused).
                max_tokens: r
                    .max_completion_tokens
                    .or(r.max_tokens)
                    .unwrap_or(self.max_tokens)
                    .clamp(1, MAX_TOKENS),
                sampling,
                system: if system.is_empty() {
                    defaults.system
                } else {
                    system.join("\n")
                },
            },
            model: r.model.unwrap_or_else(|| CHAT_MODEL.into()),
        })
    }

    /// Encrypts, asks, decrypts; `on_text` gets the answer as it streams.
    fn ask(&self, q: &Question, on_text: impl FnMut(&str)) -> Result<Answer, ClientError> {
        let request = self
            .client
            .encrypt_question_parts(&q.retrieval, &q.prompt, &q.options)?;
        self.client.ask_request(&self.collection, &request, on_text)
    }
}

fn rand_seed() -> u64 {
    let mut bytes = [0u8; 8];
    // Only a sampling seed; a failed draw still gives a usable one.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes) ^ now()
}

fn finish(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        _ => "length",
    }
}

fn sources(answer: &Answer) -> Value {
    answer
        .sources
        .iter()
        .map(|s| {
            json!({"path": s.metadata.path, "title": s.metadata.title, "chunk": s.metadata.chunk,
                   "score": s.score, "preview": s.metadata.preview})
        })
        .collect()
}

pub(super) async fn chat(
    State(gw): State<Arc<Gateway>>,
    Body(request): Body<ChatRequest>,
) -> Result<Response, OpenAiError> {
    let stream = request.stream;
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let question = gw.question(request)?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = now();
    if !stream {
        let gw = gw.clone();
        let (answer, question) = tokio::task::spawn_blocking(move || {
            let answer = gw.ask(&question, |_| {});
            (answer, question)
        })
        .await
        .map_err(|e| {
            OpenAiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        let answer = answer?;
        let prompt = answer.summary.prompt_tokens;
        let completion = answer.summary.generated_tokens;
        return Ok(Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": question.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text.trim()},
                         "finish_reason": finish(answer.summary.finish_reason)}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
            "eerag_sources": sources(&answer),
        }))
        .into_response());
    }

    // Streaming: text pieces go from the blocking client to the SSE body.
    // The response starts only once the host has answered (first text, the
    // end, or its refusal), so a refusal is a proper HTTP error that the
    // app's client can retry or report.
    let (tx, mut rx) = mpsc::channel::<StreamMessage>(1024);
    let model = question.model.clone();
    let role_chunk = ChunkMaker {
        id: id.clone(),
        model: model.clone(),
        created,
    }
    .chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    let gw2 = gw.clone();
    tokio::task::spawn_blocking(move || {
        let result = gw2.ask(&question, |text| {
            let _ = tx.blocking_send(StreamMessage::Text(text.to_string()));
        });
        let _ = tx.blocking_send(match result {
            Ok(answer) => StreamMessage::Done(Box::new(answer)),
            Err(e) => StreamMessage::Failed(e.into()),
        });
    });
    let first = match rx.recv().await {
        Some(StreamMessage::Failed(e)) => return Err(e),
        Some(m) => m,
        None => {
            return Err(OpenAiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the answer ended without a result",
            ))
        }
    };
    let chunks = ChunkMaker { id, model, created };
    let to_events = move |m: StreamMessage| -> Vec<Value> {
        match m {
            StreamMessage::Text(text) => vec![chunks.chunk(json!({"content": text}), Value::Null)],
            StreamMessage::Done(answer) => {
                let reason = json!(finish(answer.summary.finish_reason));
                let mut last = chunks.chunk(json!({}), reason);
                last["eerag_sources"] = sources(&answer);
                let mut events = vec![last];
                if include_usage {
                    let (p, c) = (
                        answer.summary.prompt_tokens,
                        answer.summary.generated_tokens,
                    );
                    let mut usage = chunks.chunk(json!({}), Value::Null);
                    usage["choices"] = json!([]);
                    usage["usage"] =
                        json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
                    events.push(usage);
                }
                events
            }
            StreamMessage::Failed(e) => {
                vec![json!({"error": {"message": e.message, "type": "api_error", "code": e.code}})]
            }
        }
    };
    let mut head = vec![role_chunk];
    head.extend(to_events(first));
    let rest = futures_util::stream::unfold(Some(rx), move |rx| {
        let to_events = to_events.clone();
        async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(m) => Some((to_events(m), Some(rx))),
                None => Some((vec![], None)),
            }
        }
    });
    use futures_util::StreamExt;
    let events = futures_util::stream::iter(vec![head])
        .chain(rest)
        .flat_map(futures_util::stream::iter)
        .map(|v| Event::default().data(v.to_string()))
        .chain(futures_util::stream::once(async {
            Event::default().data("[DONE]")
        }))
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(events).into_response())
}

/// Builds `chat.completion.chunk` objects of one response.
#[derive(Clone)]
struct ChunkMaker {
    id: String,
    model: String,
    created: u64,
}

impl ChunkMaker {
    fn chunk(&self, delta: Value, finish_reason: Value) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
               "model": self.model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})
    }
}

/// What the blocking client sends the SSE body.
enum StreamMessage {
    Text(String),
    Done(Box<Answer>),
    Failed(OpenAiError),
}
