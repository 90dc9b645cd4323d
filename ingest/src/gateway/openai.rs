//! OpenAI's wire shapes the routes share: errors, the JSON body extractor,
//! `/v1/models`.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::client::ClientError;
use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use eerag_remote::RemoteError;
use serde_json::{json, Value};

use super::{CHAT_MODEL, EMBEDDING_MODEL, MAX_BODY_BYTES};

/// An error in OpenAI's shape: `{"error": {"message", "type", "code"}}`.
pub(super) struct OpenAiError {
    status: StatusCode,
    /// The machine-readable code.
    pub(super) code: &'static str,
    /// What went wrong, for a person.
    pub(super) message: String,
    retry_after: Option<u64>,
}

impl OpenAiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(super) fn invalid(message: impl Into<String>) -> Self {
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
pub(super) struct Body<T>(pub(super) T);

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

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) async fn models() -> Json<Value> {
    let model = |id: &str| json!({"id": id, "object": "model", "created": 0, "owned_by": "eerag"});
    Json(json!({"object": "list", "data": [model(CHAT_MODEL), model(EMBEDDING_MODEL)]}))
}
