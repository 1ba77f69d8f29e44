//! The OpenAI-compatible API, on the gRPC port: `POST /v1/chat/completions` and `POST
//! /v1/responses` (captions and answers about images and videos, whole or streamed as
//! Server-Sent Events; stored responses at `/v1/responses/{id}`) and `GET /v1/models`, so chat
//! UIs, the `openai` SDKs and the Vercel AI SDK can use gitcap. The same engine, queues,
//! limits, media budget, metrics (`protocol="openai"`) and inference token as gRPC; how a chat
//! maps onto GIT is in [`request`].

pub mod batch;
mod chat;
mod error;
pub mod request;
pub mod responses;
mod stop;
pub mod types;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::service::auth::BearerAuth;
use crate::service::body::BodyError;
use crate::service::Core;
pub use error::ApiError;
use request::Plan;
use responses::request::{Plan as ResponsesPlan, ResponsesRequest};
use responses::{ResponseStore, StoreLimits};
use types::{ChatRequest, ModelCard, ModelList};

/// What the API's handlers share.
pub struct OpenAi {
    pub core: Arc<Core>,
    pub auth: BearerAuth,
    /// The bounds on stored responses (`responses.*`).
    pub stored_responses: StoreLimits,
}

/// The API's state: what the handlers share, the stored responses, and the largest request body.
struct Served {
    api: OpenAi,
    responses: Arc<ResponseStore>,
    max_body_bytes: usize,
    /// The Files and Batches API, when `batch.data_dir` is set.
    batch: Option<Arc<batch::Batches>>,
}

/// The routes under `/v1`. Request bodies may be up to `max_body_bytes` (media arrive base64
/// encoded, a third larger than in a gRPC message). Every route checks the inference token
/// first, before any of the body is read.
pub fn router(state: OpenAi, max_body_bytes: usize, batch: Option<Arc<batch::Batches>>) -> Router {
    let responses = Arc::new(ResponseStore::new(state.stored_responses));
    let state = Arc::new(Served { api: state, responses, max_body_bytes, batch });
    batch::start(state.clone());
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/responses", post(create_response))
        .route("/v1/responses/{id}", get(get_response).delete(delete_response))
        .route("/v1/models", get(models))
        .merge(batch::routes())
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such endpoint: gitcap serves POST /v1/chat/completions, POST /v1/responses, \
                          GET and DELETE /v1/responses/{id}, GET /v1/models, /v1/files and /v1/batches"
                    .into(),
                param: None,
            }
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .layer(tower_http::cors::CorsLayer::very_permissive())
        .with_state(state)
}

/// Lets a request through to its route only with the inference token (when one is set); the
/// refusal comes before any of the body is read. CORS preflights (OPTIONS) carry no token and
/// are answered by the CORS layer in front.
async fn authorize(State(state): State<Arc<Served>>, request: Request, next: Next) -> Response {
    let header = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if state.api.auth.allows(header) {
        next.run(request).await
    } else {
        ApiError::from(crate::error::GitcapError::Unauthenticated).into_response()
    }
}

async fn chat_completions(
    State(state): State<Arc<Served>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let plan = read_request(&state, &headers, body, plan).await?;
    let span = tracing::info_span!("request", method = "/v1/chat/completions", model = plan.model.as_str());
    let _entered = span.enter();
    chat::completions(&state.api, plan, &headers).await
}

async fn create_response(
    State(state): State<Arc<Served>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    use tracing::Instrument;
    let plan = read_request(&state, &headers, body, responses_plan).await?;
    let span = tracing::info_span!("request", method = "/v1/responses", model = plan.model.as_str());
    Ok(responses::create(&state.api, &state.responses, plan, &headers).instrument(span).await)
}

async fn get_response(State(state): State<Arc<Served>>, Path(id): Path<String>) -> Response {
    responses::get(&state.responses, &id)
}

async fn delete_response(State(state): State<Arc<Served>>, Path(id): Path<String>) -> Response {
    responses::delete(&state.responses, &id)
}

/// Reads a request's body and parses it with `parse` (the JSON, then the base64 of its media)
/// within the media budget and off the async threads: a large body costs memory and CPU seconds,
/// and must neither exceed the budget nor hold up other requests while it is parsed.
async fn read_request<T: Send + 'static>(
    state: &Served,
    headers: &HeaderMap,
    body: Body,
    parse: fn(&[u8], bool) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let urls_enabled = state.api.core.media.urls_enabled();
    let budget = state.api.core.media.budget();
    let parse = move |bytes: Vec<u8>| parse(&bytes, urls_enabled);
    crate::service::body::read_and_parse(body, headers, state.max_body_bytes, budget, parse).await
}

fn too_large() -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: "the request body is larger than this server accepts (server.max_message_bytes × 2)".into(),
        param: None,
    }
}

impl From<BodyError> for ApiError {
    /// 413 over the limit, 408 when it did not arrive in time (crate::deadline::TimedBody), else 400.
    fn from(error: BodyError) -> Self {
        let (status, message) = match error {
            BodyError::TooLarge { .. } => return too_large(),
            BodyError::TimedOut(message) => (StatusCode::REQUEST_TIMEOUT, message),
            BodyError::Unreadable(message) => (StatusCode::BAD_REQUEST, message),
            BodyError::Refused(error) => return error.into(),
        };
        ApiError { status, message, param: None }
    }
}

/// A body that is not the JSON a `what` (chat request) is: 400 with serde's words, naming the
/// field (`messages[0].content`) when the JSON is well formed but a value is not what it should be,
/// or a field is missing or given twice.
fn not_json(error: serde_path_to_error::Error<serde_json::Error>, what: &str) -> ApiError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    if inner.classify() != serde_json::error::Category::Data {
        return ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("the body is not a valid {what}: {inner}"),
            param: None,
        };
    }
    let (message, param) = match path.as_str() {
        // serde reports a field missing from, or given twice in, the body itself at the body (no
        // path), naming the field only in its message.
        "." => (format!("the body is not a valid {what}: {inner}"), field_named_in(&inner)),
        _ => (format!("the body is not a valid {what}: {path}: {inner}"), Some(path)),
    };
    ApiError { status: StatusCode::BAD_REQUEST, message, param }
}

/// The field of serde's "missing field `x`" and "duplicate field `x`" errors.
fn field_named_in(error: &serde_json::Error) -> Option<String> {
    let message = error.to_string();
    let rest = message.strip_prefix("missing field `").or_else(|| message.strip_prefix("duplicate field `"))?;
    rest.split_once('`').map(|(field, _)| field.to_string())
}

/// A chat request's body (JSON) as the request gitcap runs: parsed, read as a GIT request, its
/// `data:` media decoded from base64. CPU work proportional to the body: call it off the async
/// threads.
pub fn plan(body: &[u8], urls_enabled: bool) -> Result<Plan, ApiError> {
    Plan::new(parse::<ChatRequest>(body, "chat request")?, urls_enabled)
}

/// A Responses request's body (JSON) as the request gitcap runs: parsed, read as a GIT request,
/// its `data:` media decoded from base64. CPU work proportional to the body: call it off the
/// async threads.
pub fn responses_plan(body: &[u8], urls_enabled: bool) -> Result<ResponsesPlan, ApiError> {
    ResponsesPlan::new(parse::<ResponsesRequest>(body, "responses request")?, urls_enabled)
}

/// Parses a request (a `what`, for errors), keeping the path of the field at fault.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let request = serde_path_to_error::deserialize(&mut json).map_err(|e| not_json(e, what))?;
    json.end().map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!("the body is not a valid {what}: {e}"),
        param: None,
    })?;
    Ok(request)
}

/// Every name a request may use: aliases (the model names among them) and exact versions.
async fn models(State(state): State<Arc<Served>>) -> Result<impl IntoResponse, ApiError> {
    let (versions, aliases) = state.api.core.registry.list();
    let mut data: Vec<ModelCard> = aliases
        .keys()
        .cloned()
        .chain(versions.iter().filter(|v| v.state == crate::registry::ModelState::Ready).map(|v| v.id.clone()))
        .map(|id| ModelCard { id, object: "model", created: 0, owned_by: "gitcap".into() })
        .collect();
    data.dedup_by(|a, b| a.id == b.id);
    Ok(Json(ModelList { object: "list", data }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_body_without_a_required_field_or_with_one_twice_names_it() {
        let missing = super::plan(br#"{"model": "tiny"}"#, false).unwrap_err();
        assert_eq!(missing.param.as_deref(), Some("messages"), "{missing:?}");
        let twice = super::responses_plan(br#"{"input": "a", "include": [], "include": []}"#, false).unwrap_err();
        assert_eq!(twice.param.as_deref(), Some("include"), "{twice:?}");
        assert_eq!(twice.status, axum::http::StatusCode::BAD_REQUEST);
        let nested = super::plan(br#"{"messages": [{"content": "a"}]}"#, false).unwrap_err();
        assert_eq!(nested.param.as_deref(), Some("messages[0]"), "{nested:?}");
        let not_an_object = super::plan(b"[]", false).unwrap_err();
        assert_eq!(not_an_object.param, None, "{not_an_object:?}");
    }
}
