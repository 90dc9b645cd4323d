//! The REST API: a thin axum layer over [`crate::service::Service`] that
//! parses JSON, authenticates, maps errors to status codes and streams
//! answers as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use eerag_core::wire::{
    AnswerRequest, AnswerResponse, AnswerSummary, CollectionList, CreateCollection,
    CreateVersionRequest, DeleteResponse, EmbedRequest, EmbedResponse, ErrorBody, ErrorDetail,
    FinishReason, Health, ReembedRequest, ReembedResponse, SearchRequest, SearchResponse,
    SwitchRequest, SwitchResponse, TokenEvent, UpsertRequest, VersionList,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::auth::{Auth, Principal, Role};
use crate::engine::{EngineError, GenerationEvent};
use crate::metrics::Metrics;
use crate::service::{finish_reason, Service, ServiceError};

/// Seconds a client is told to wait after a 503.
const RETRY_AFTER_SECS: u64 = 2;

/// Everything the handlers share.
pub struct AppState {
    pub service: Service,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    /// Requests being handled; when none is left new ones get 503 at once
    /// instead of piling up in memory.
    pub in_flight: Arc<Semaphore>,
}

/// An error reply: status, stable code, message without plaintext.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            ServiceError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            ServiceError::Invalid { code, message } => {
                ApiError::new(StatusCode::BAD_REQUEST, code, message)
            }
            ServiceError::Engine(EngineError::Busy(what)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!("the {what} queue is full; retry after {RETRY_AFTER_SECS} s"),
            ),
            ServiceError::Engine(e) => {
                tracing::error!(error = %e, "model engine error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "engine_error",
                    e.to_string(),
                )
            }
            ServiceError::Store(e) => {
                // Details (paths, storage messages) go to the operator's log
                // only; the client learns that it may retry.
                tracing::error!(error = %e, "store error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store could not complete the request; nothing was acknowledged",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

/// `Json` whose rejections are this API's JSON errors (400, or 413 for an
/// oversized body).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                let status = rejection.status();
                Err(if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "the request body is larger than the server accepts",
                    )
                } else if matches!(rejection, JsonRejection::MissingJsonContentType(_)) {
                    ApiError::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_media_type",
                        "send the body as application/json",
                    )
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "malformed_json",
                        redact_echo(&rejection.body_text()),
                    )
                })
            }
        }
    }
}

/// `Path` whose rejections are this API's JSON errors.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(rejection) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                redact_echo(&PathRejection::body_text(&rejection)),
            )),
        }
    }
}

/// `Query` whose rejections are this API's JSON errors.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                redact_echo(&QueryRejection::body_text(&rejection)),
            )),
        }
    }
}

/// A parser's error message with the values it quotes from the request
/// replaced by `…`: field paths, positions and what was expected stay, so
/// the message still says what is wrong without echoing request content.
fn redact_echo(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        // Quoted values: "…" (strings) and `…` after "unknown field" /
        // "unknown variant" (names from the request); other backquoted
        // text is the schema's and stays.
        let quote = rest.find('"');
        let tick = ["unknown field `", "unknown variant `"]
            .iter()
            .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
            .min();
        match (quote, tick) {
            (Some(q), t) if t.is_none_or(|(i, _)| q < i) => {
                out.push_str(&rest[..=q]);
                match rest[q + 1..].find('"') {
                    Some(end) => {
                        out.push_str("…\"");
                        rest = &rest[q + 1 + end + 1..];
                    }
                    None => {
                        out.push('…');
                        return out;
                    }
                }
            }
            (_, Some((i, len))) => {
                out.push_str(&rest[..i + len]);
                rest = &rest[i + len..];
                match rest.find('`') {
                    Some(end) => {
                        out.push_str("…`");
                        rest = &rest[end + 1..];
                    }
                    None => {
                        out.push('…');
                        return out;
                    }
                }
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn require_write(p: &Principal) -> ApiResult<()> {
    if p.role == Role::Write {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this API key may only read",
        ))
    }
}

/// Builds the router with a body limit of `max_body_bytes`.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route(
            "/v1/collections",
            post(create_collection).get(list_collections),
        )
        .route("/v1/collections/{name}", delete(delete_collection))
        .route("/v1/collections/{name}/chunks", post(upsert))
        .route("/v1/collections/{name}/documents", get(list_documents))
        .route(
            "/v1/collections/{name}/documents/{doc}",
            delete(delete_document),
        )
        .route(
            "/v1/collections/{name}/documents/{doc}/chunks",
            get(export_document),
        )
        .route(
            "/v1/collections/{name}/versions",
            post(create_version).get(list_versions),
        )
        .route(
            "/v1/collections/{name}/versions/{version}/reembed",
            post(reembed),
        )
        .route("/v1/collections/{name}/switch", post(switch_version))
        .route("/v1/collections/{name}/search", post(search))
        .route("/v1/embed", post(embed))
        .route("/v1/collections/{name}/answer", post(answer))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limit_in_flight,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts and times every request; logs route templates, never raw paths
/// or bodies.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    // A fixed set, so a client cannot mint metric labels or log values.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(req).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state
        .metrics
        .observe_request(&route, method, status, elapsed);
    tracing::info!(
        %method,
        %route,
        status,
        ms = elapsed.as_secs_f64() * 1e3,
        "request"
    );
    response
}

/// Refuses work beyond the in-flight limit with 503 + Retry-After.
async fn limit_in_flight(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match state.in_flight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => {
            state.metrics.rejected("request");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!("the server is at its request limit; retry after {RETRY_AFTER_SECS} s"),
            )
            .into_response()
        }
    }
}

async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    match state.auth.authenticate(req.headers()) {
        Some(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        None => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid API key is required (Authorization: Bearer <key>)",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

async fn health(State(state): State<Arc<AppState>>) -> Json<Health> {
    let facts = state.service.engine().facts();
    Json(Health {
        status: "ok".into(),
        key_id: state.service.key_id(),
        key_ids: state.service.key_ids(),
        encoder_vocab: facts.encoder_vocab,
        generator_vocab: facts.generator_vocab,
        dim: facts.dim,
        encoder_max_tokens: facts.encoder_max_tokens,
        generator_context: facts.generator_context,
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
}

async fn openapi() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        crate::openapi::DOCUMENT,
    )
}

async fn create_collection(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiJson(body): ApiJson<CreateCollection>,
) -> ApiResult<impl IntoResponse> {
    require_write(&p)?;
    let info = state
        .service
        .create_collection(&p.tenant, &body.name, body.key_id)
        .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn list_collections(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<CollectionList>> {
    Ok(Json(CollectionList {
        collections: state.service.list_collections(&p.tenant).await?,
    }))
}

async fn delete_collection(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    require_write(&p)?;
    state.service.delete_collection(&p.tenant, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_versions(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<VersionList>> {
    Ok(Json(state.service.list_versions(&p.tenant, &name).await?))
}

async fn create_version(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<CreateVersionRequest>,
) -> ApiResult<impl IntoResponse> {
    require_write(&p)?;
    let info = state.service.create_version(&p.tenant, &name, body).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn reembed(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiPath((name, version)): ApiPath<(String, u32)>,
    ApiJson(body): ApiJson<ReembedRequest>,
) -> ApiResult<Json<ReembedResponse>> {
    require_write(&p)?;
    Ok(Json(
        state
            .service
            .reembed(&p.tenant, &name, version, body)
            .await?,
    ))
}

async fn switch_version(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<SwitchRequest>,
) -> ApiResult<Json<SwitchResponse>> {
    require_write(&p)?;
    Ok(Json(
        state
            .service
            .switch_version(&p.tenant, &name, body.version)
            .await?,
    ))
}

async fn embed(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<EmbedRequest>,
) -> ApiResult<Json<EmbedResponse>> {
    Ok(Json(EmbedResponse {
        vectors: state.service.embed(body).await?,
    }))
}

async fn upsert(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<UpsertRequest>,
) -> ApiResult<impl IntoResponse> {
    require_write(&p)?;
    Ok(Json(state.service.upsert(&p.tenant, &name, body).await?))
}

#[derive(Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn list_documents(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        state
            .service
            .list_documents(&p.tenant, &name, page.after, page.limit.unwrap_or(100))
            .await?,
    ))
}

async fn delete_document(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiPath((name, doc)): ApiPath<(String, String)>,
) -> ApiResult<Json<DeleteResponse>> {
    require_write(&p)?;
    let n = state
        .service
        .delete_document(&p.tenant, &name, &doc)
        .await?;
    Ok(Json(DeleteResponse {
        doc_id: doc,
        deleted_chunks: n,
    }))
}

async fn export_document(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiPath((name, doc)): ApiPath<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        state
            .service
            .export_document(&p.tenant, &name, &doc)
            .await?,
    ))
}

async fn search(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<SearchRequest>,
) -> ApiResult<Json<SearchResponse>> {
    let hits = state.service.search(&p.tenant, &name, body).await?;
    Ok(Json(SearchResponse { hits }))
}

async fn answer(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<AnswerRequest>,
) -> ApiResult<Response> {
    let stream = body.stream;
    let prepared = state.service.answer(&p.tenant, &name, body).await?;
    let mut summary = AnswerSummary {
        finish_reason: FinishReason::Length,
        prompt_tokens: prepared.prompt_tokens,
        generated_tokens: 0,
        chunks: prepared.chunks,
    };
    let mut events = prepared.events;
    if !stream {
        let mut ids = Vec::new();
        while let Some(event) = events.recv().await {
            match event {
                GenerationEvent::Token(id) => ids.push(id),
                GenerationEvent::Done(stop) => summary.finish_reason = finish_reason(stop),
                GenerationEvent::Failed(e) => {
                    tracing::error!(error = %e, "generation failed");
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "generation_failed",
                        e,
                    ));
                }
            }
        }
        summary.generated_tokens = ids.len();
        return Ok(Json(AnswerResponse {
            generator_ids: ids,
            summary,
        })
        .into_response());
    }
    // token events, then one `done` (or `error`) event.
    let sse = futures_util::stream::unfold(Some((events, summary)), |state| async move {
        let (mut events, mut summary) = state?;
        let event = match events.recv().await {
            Some(GenerationEvent::Token(id)) => {
                summary.generated_tokens += 1;
                let e = Event::default()
                    .event("token")
                    .json_data(TokenEvent { id })
                    .expect("token events serialise");
                return Some((Ok::<_, Infallible>(e), Some((events, summary))));
            }
            Some(GenerationEvent::Done(stop)) => {
                summary.finish_reason = finish_reason(stop);
                Event::default()
                    .event("done")
                    .json_data(&summary)
                    .expect("summaries serialise")
            }
            Some(GenerationEvent::Failed(e)) => {
                tracing::error!(error = %e, "generation failed");
                Event::default()
                    .event("error")
                    .json_data(ErrorBody {
                        error: ErrorDetail {
                            code: "generation_failed".into(),
                            message: e,
                        },
                    })
                    .expect("errors serialise")
            }
            None => return None,
        };
        Some((Ok(event), None))
    });
    Ok(Sse::new(sse)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::redact_echo;

    #[test]
    fn parser_messages_keep_the_field_and_lose_the_value() {
        let cases = [
            (
                r#"key_id: invalid type: string "SECRET", expected u32 at line 1 column 9"#,
                r#"key_id: invalid type: string "…", expected u32 at line 1 column 9"#,
            ),
            (
                "unknown field `SECRET`, expected one of `name`, `key_id`",
                "unknown field `…`, expected one of `name`, `key_id`",
            ),
            (
                "mode: unknown variant `SECRET`, expected `dense` or `keyword`",
                "mode: unknown variant `…`, expected `dense` or `keyword`",
            ),
            ("missing field `query_ids`", "missing field `query_ids`"),
            (r#"unterminated "SECRET"#, r#"unterminated "…"#),
        ];
        for (input, want) in cases {
            assert_eq!(redact_echo(input), want);
        }
    }
}
