//! A local OpenAI-compatible endpoint (`eerag gateway`). Apps send it
//! plaintext as they would to OpenAI; it encrypts with the user's key,
//! calls the host, and decrypts — so an app changes only its base URL.
//! It holds the key and sees plaintext, so it listens on loopback only.
//!
//! [`Gateway::new`] checks the collection, [`serve`] runs it until a
//! shutdown signal: the binary passes Ctrl-C, tests a channel.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::client::{Answer, AskOptions, ClientError, EncryptedClient};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use eerag_core::sampling::Sampling;
use eerag_core::wire::{EmbedRequest, FinishReason, SearchMode};
use eerag_remote::RemoteError;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// The chat model's name in `/v1/models`.
pub const CHAT_MODEL: &str = "eerag-smollm2-135m-instruct";
/// The embedding model's name in `/v1/models`.
pub const EMBEDDING_MODEL: &str = "eerag-all-minilm-l6-v2";
/// The host's limit on answer length.
const MAX_TOKENS: usize = 2048;
/// Largest request body the gateway reads.
const MAX_BODY_BYTES: usize = 16 << 20;
/// Inputs per host embed request.
const EMBED_BATCH: usize = 64;

/// How the gateway answers.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// The collection chat completions retrieve from.
    pub collection: String,
    /// Chunks retrieved per question.
    pub k: usize,
    /// The bearer token apps must send; `None` lets any local process in.
    pub api_key: Option<String>,
    /// Answer length when the request does not say.
    pub max_tokens: usize,
}

/// Why the gateway cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("refusing to listen on {0}: the gateway holds the key and handles plaintext, so it only listens on loopback (127.0.0.1 or ::1)")]
    NotLoopback(SocketAddr),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// The gateway's state: an encrypting client bound to one collection.
pub struct Gateway {
    client: EncryptedClient,
    api_key: Option<String>,
    collection: String,
    k: usize,
    max_tokens: usize,
}

impl Gateway {
    /// A gateway over `client`, once the host confirms the collection
    /// exists under the client's key.
    pub fn new(client: EncryptedClient, options: GatewayOptions) -> Result<Self, GatewayError> {
        client.require_collection(&options.collection)?;
        Ok(Self {
            client,
            api_key: options.api_key.filter(|k| !k.is_empty()),
            collection: options.collection,
            k: options.k.max(1),
            max_tokens: options.max_tokens.max(1),
        })
    }
}

/// Refuses any address but loopback: the gateway holds the key and
/// handles plaintext.
pub fn check_listen(addr: SocketAddr) -> Result<(), GatewayError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(GatewayError::NotLoopback(addr))
    }
}

/// Serves `gateway` on `listener` (loopback only) until `shutdown`
/// completes, on a runtime of its own. Blocks; call it outside any async
/// runtime (the client's blocking HTTP calls run on the runtime's blocking
/// pool).
pub fn serve(
    listener: std::net::TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| GatewayError::Io { what, source }
    };
    check_listen(listener.local_addr().map_err(io("reading the address"))?)?;
    listener
        .set_nonblocking(true)
        .map_err(io("configuring the listener"))?;
    let gateway = Arc::new(gateway);
    let runtime = tokio::runtime::Runtime::new().map_err(io("starting the async runtime"))?;
    let served = runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(io("configuring the listener"))?;
        axum::serve(listener, router(gateway.clone()))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(io("serving"))
    });
    // The blocking HTTP client inside is dropped outside the runtime.
    drop(runtime);
    drop(gateway);
    served
}

fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .fallback(|| async {
            OpenAiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), guard))
        .with_state(gateway)
}

/// Lets through only requests addressed to a loopback name (a web page
/// that rebinds its own domain to 127.0.0.1 still sends its domain as the
/// Host) and, when the gateway has an API key, carrying it.
async fn guard(
    State(gw): State<Arc<Gateway>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !is_loopback_host(host) {
        return OpenAiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            "the gateway answers only requests addressed to localhost, 127.0.0.1 or [::1]",
        )
        .into_response();
    }
    if let Some(key) = &gw.api_key {
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        if sent != Some(key.as_str()) {
            return OpenAiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "this gateway wants its API key (--api-key) as the bearer token",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "code"}}`.
struct OpenAiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl OpenAiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
}

impl From<ClientError> for OpenAiError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Remote(RemoteError::Status {
                status: 503,
                retry_after,
                message,
                ..
            }) => Self {
                retry_after: Some(retry_after.unwrap_or(2)),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "host_busy",
                    format!("the host is busy: {message}"),
                )
            },
            // The request's own fault: the app should not retry it.
            ClientError::Remote(RemoteError::Status {
                status: status @ (400 | 404 | 413),
                code,
                message,
                ..
            }) => Self::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                "host_refused",
                format!("the host refused the request ({code}): {message}"),
            ),
            ClientError::Remote(RemoteError::Status {
                status,
                code,
                message,
                ..
            }) => Self::new(
                StatusCode::BAD_GATEWAY,
                "host_error",
                format!("the host refused the request ({status} {code}): {message}"),
            ),
            ClientError::Remote(e) => {
                Self::new(StatusCode::BAD_GATEWAY, "host_unreachable", e.to_string())
            }
            other => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "client_error",
                other.to_string(),
            ),
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let kind = if self.status.is_client_error() {
            "invalid_request_error"
        } else {
            "api_error"
        };
        let body = json!({"error": {"message": self.message, "type": kind, "code": self.code}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// JSON bodies whose rejections are OpenAI-shaped errors.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = OpenAiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, OpenAiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(OpenAiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                format!("the request is larger than {} MiB", MAX_BODY_BYTES >> 20),
            )),
            Err(e) => Err(OpenAiError::invalid(JsonRejection::body_text(&e))),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn models() -> Json<Value> {
    let model = |id: &str| json!({"id": id, "object": "model", "created": 0, "owned_by": "eerag"});
    Json(json!({"object": "list", "data": [model(CHAT_MODEL), model(EMBEDDING_MODEL)]}))
}

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
struct ChatRequest {
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

async fn chat(
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
struct EmbeddingsRequest {
    input: EmbeddingInput,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
}

async fn embeddings(
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

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_names_pass() {
        for ok in [
            "localhost",
            "127.0.0.1:8090",
            "[::1]:8090",
            "LOCALHOST:1",
            "127.5.0.1",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:8090",
            "10.0.0.1",
            "[::2]:80",
            "localhost.evil.example",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
