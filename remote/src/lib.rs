//! A typed client of the host's REST API, and the jobs that run through it
//! ([`jobs`]: versions, switching, re-embedding). It sends and receives
//! ciphertext only, so both sides may link it: the host's operator runs
//! re-embedding with it, and `eerag_client::client::EncryptedClient` puts
//! the key in front of it.

pub mod jobs;
pub mod retry;

pub use retry::RetryPolicy;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use eerag_core::wire::{
    AnswerRequest, AnswerResponse, AnswerSummary, CollectionInfo, CollectionList, CreateCollection,
    CreateVersionRequest, DeleteResponse, DocumentExport, DocumentList, EmbedRequest,
    EmbedResponse, ErrorBody, Health, ReembedRequest, ReembedResponse, SearchHit, SearchRequest,
    SearchResponse, SwitchRequest, SwitchResponse, TokenEvent, UpsertRequest, UpsertResponse,
    VersionInfo, VersionList,
};
use eerag_core::KeyId;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde::de::DeserializeOwned;

/// Errors talking to the host.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The host answered with an error status.
    #[error("host answered {status}: {code}: {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
        /// Seconds the host asked us to wait (503).
        retry_after: Option<u64>,
    },
    /// No usable answer (connection refused, timeout, broken stream).
    #[error("cannot reach the host: {0}")]
    Transport(String),
    /// The host sent something this client does not understand.
    #[error("unexpected reply from the host: {0}")]
    Protocol(String),
}

impl RemoteError {
    /// The HTTP status, if the host answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            RemoteError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error in words for the person running a command: what to do
    /// about a missing API key, a busy host or a refused request. Every
    /// command that calls a host explains its errors with this.
    pub fn explanation(&self) -> String {
        match self {
            RemoteError::Transport(m) => format!("cannot reach the host: {m}"),
            RemoteError::Status {
                status: 401,
                message,
                ..
            } => format!("the host wants an API key (--token or EERAG_TOKEN): {message}"),
            RemoteError::Status {
                status: 503,
                message,
                ..
            } => format!("the host is busy ({message}); try again shortly"),
            RemoteError::Status {
                status,
                code,
                message,
                ..
            } => format!("the host refused the request ({status} {code}): {message}"),
            RemoteError::Protocol(m) => format!("the host's reply was not understood: {m}"),
        }
    }
}

/// Result alias of the remote client.
pub type Result<T> = std::result::Result<T, RemoteError>;

/// A connection to one host.
#[derive(Clone, Debug)]
pub struct HostClient {
    base: String,
    token: Option<String>,
    http: Client,
}

fn transport(e: reqwest::Error) -> RemoteError {
    RemoteError::Transport(e.to_string())
}

impl HostClient {
    /// A client of the host at `base_url` (e.g. `http://127.0.0.1:8080`),
    /// sending `token` as a bearer API key when given.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self> {
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Answers on a busy CPU host can take minutes.
            .timeout(Duration::from_secs(3600))
            .build()
            .map_err(transport)?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth(&self, r: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    fn check(response: Response) -> Result<Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = response.text().unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => (body.error.code, body.error.message),
            Err(_) => ("unknown".into(), text.chars().take(200).collect()),
        };
        Err(RemoteError::Status {
            status: status.as_u16(),
            code,
            message,
            retry_after,
        })
    }

    fn json<T: DeserializeOwned>(r: RequestBuilder) -> Result<T> {
        let response = Self::check(r.send().map_err(transport)?)?;
        response
            .json()
            .map_err(|e| RemoteError::Protocol(e.to_string()))
    }

    /// `GET /metrics`: the Prometheus text.
    pub fn metrics(&self) -> Result<String> {
        Self::check(
            self.http
                .get(self.url("/metrics"))
                .send()
                .map_err(transport)?,
        )?
        .text()
        .map_err(transport)
    }

    /// `GET /health`.
    pub fn health(&self) -> Result<Health> {
        Self::json(self.http.get(self.url("/health")))
    }

    /// `POST /v1/collections`.
    pub fn create_collection(&self, name: &str, key_id: Option<KeyId>) -> Result<CollectionInfo> {
        Self::json(
            self.auth(self.http.post(self.url("/v1/collections")))
                .json(&CreateCollection {
                    name: name.into(),
                    key_id,
                }),
        )
    }

    /// `GET /v1/collections`.
    pub fn list_collections(&self) -> Result<Vec<CollectionInfo>> {
        let list: CollectionList =
            Self::json(self.auth(self.http.get(self.url("/v1/collections"))))?;
        Ok(list.collections)
    }

    /// `DELETE /v1/collections/{name}`.
    pub fn delete_collection(&self, name: &str) -> Result<()> {
        let r = self.auth(
            self.http
                .delete(self.url(&format!("/v1/collections/{name}"))),
        );
        Self::check(r.send().map_err(transport)?)?;
        Ok(())
    }

    /// `GET /v1/collections/{name}/versions`.
    pub fn list_versions(&self, collection: &str) -> Result<Vec<VersionInfo>> {
        let list: VersionList = Self::json(
            self.auth(
                self.http
                    .get(self.url(&format!("/v1/collections/{collection}/versions"))),
            ),
        )?;
        Ok(list.versions)
    }

    /// `POST /v1/collections/{name}/versions`: the next version, empty.
    pub fn create_version(
        &self,
        collection: &str,
        request: &CreateVersionRequest,
    ) -> Result<VersionInfo> {
        Self::json(
            self.auth(
                self.http
                    .post(self.url(&format!("/v1/collections/{collection}/versions"))),
            )
            .json(request),
        )
    }

    /// `POST /v1/collections/{name}/versions/{version}/reembed`: one step.
    pub fn reembed(
        &self,
        collection: &str,
        version: u32,
        request: &ReembedRequest,
    ) -> Result<ReembedResponse> {
        Self::json(
            self.auth(self.http.post(self.url(&format!(
                "/v1/collections/{collection}/versions/{version}/reembed"
            ))))
            .json(request),
        )
    }

    /// `POST /v1/collections/{name}/switch`.
    pub fn switch_version(&self, collection: &str, version: u32) -> Result<SwitchResponse> {
        Self::json(
            self.auth(
                self.http
                    .post(self.url(&format!("/v1/collections/{collection}/switch"))),
            )
            .json(&SwitchRequest { version }),
        )
    }

    /// `POST /v1/collections/{name}/chunks`.
    pub fn upsert(&self, collection: &str, request: &UpsertRequest) -> Result<UpsertResponse> {
        Self::json(
            self.auth(
                self.http
                    .post(self.url(&format!("/v1/collections/{collection}/chunks"))),
            )
            .json(request),
        )
    }

    /// `DELETE /v1/collections/{name}/documents/{doc}`.
    pub fn delete_document(&self, collection: &str, doc_id: &str) -> Result<DeleteResponse> {
        Self::json(
            self.auth(
                self.http
                    .delete(self.url(&format!("/v1/collections/{collection}/documents/{doc_id}"))),
            ),
        )
    }

    /// `GET /v1/collections/{name}/documents/{doc}/chunks`.
    pub fn export_document(&self, collection: &str, doc_id: &str) -> Result<DocumentExport> {
        Self::json(self.auth(self.http.get(self.url(&format!(
            "/v1/collections/{collection}/documents/{doc_id}/chunks"
        )))))
    }

    /// `GET /v1/collections/{name}/documents`, one page.
    pub fn list_documents(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<DocumentList> {
        let mut r = self
            .auth(
                self.http
                    .get(self.url(&format!("/v1/collections/{collection}/documents"))),
            )
            .query(&[("limit", limit.to_string())]);
        if let Some(a) = after {
            r = r.query(&[("after", a)]);
        }
        Self::json(r)
    }

    /// `POST /v1/collections/{name}/search`.
    pub fn search(&self, collection: &str, request: &SearchRequest) -> Result<Vec<SearchHit>> {
        let response: SearchResponse = Self::json(
            self.auth(
                self.http
                    .post(self.url(&format!("/v1/collections/{collection}/search"))),
            )
            .json(request),
        )?;
        Ok(response.hits)
    }

    /// `POST /v1/embed`: vectors (in the key's rotated space) for encrypted
    /// encoder ids.
    pub fn embed(&self, request: &EmbedRequest) -> Result<Vec<Vec<f32>>> {
        let response: EmbedResponse = Self::json(
            self.auth(self.http.post(self.url("/v1/embed")))
                .json(request),
        )?;
        Ok(response.vectors)
    }

    /// `POST /v1/collections/{name}/answer` without streaming.
    pub fn answer(&self, collection: &str, request: &AnswerRequest) -> Result<AnswerResponse> {
        let mut request = request.clone();
        request.stream = false;
        Self::json(
            self.auth(
                self.http
                    .post(self.url(&format!("/v1/collections/{collection}/answer"))),
            )
            .json(&request),
        )
    }

    /// `POST /v1/collections/{name}/answer` as server-sent events: calls
    /// `on_token` with each encrypted id as it arrives and returns the final
    /// summary.
    pub fn answer_stream(
        &self,
        collection: &str,
        request: &AnswerRequest,
        mut on_token: impl FnMut(u32),
    ) -> Result<AnswerSummary> {
        let mut request = request.clone();
        request.stream = true;
        let response = Self::check(
            self.auth(
                self.http
                    .post(self.url(&format!("/v1/collections/{collection}/answer"))),
            )
            .json(&request)
            .send()
            .map_err(transport)?,
        )?;
        let mut event = String::new();
        let mut data = String::new();
        for line in BufReader::new(response).lines() {
            let line = line.map_err(|e| RemoteError::Transport(e.to_string()))?;
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                let parse_err = |e: serde_json::Error| RemoteError::Protocol(e.to_string());
                match event.as_str() {
                    "token" => {
                        let t: TokenEvent = serde_json::from_str(&data).map_err(parse_err)?;
                        on_token(t.id);
                    }
                    "done" => return serde_json::from_str(&data).map_err(parse_err),
                    "error" => {
                        let body: ErrorBody = serde_json::from_str(&data).map_err(parse_err)?;
                        return Err(RemoteError::Status {
                            status: 500,
                            code: body.error.code,
                            message: body.error.message,
                            retry_after: None,
                        });
                    }
                    other => return Err(RemoteError::Protocol(format!("unknown event {other:?}"))),
                }
                event.clear();
                data.clear();
            }
        }
        Err(RemoteError::Transport(
            "the answer stream ended before its done event".into(),
        ))
    }
}
