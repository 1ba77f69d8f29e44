//! The OpenAI-compatible API, on the gRPC port: `POST /v1/chat/completions` (captions and
//! answers about images and videos, whole or streamed as Server-Sent Events) and
//! `GET /v1/models`, so chat UIs and the `openai` SDKs can use gitcap. The same engine, queues,
//! limits, media budget, metrics (`protocol="openai"`) and inference token as gRPC; how a chat
//! maps onto GIT is in [`request`].

mod chat;
mod error;
pub mod request;
mod stop;
pub mod types;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::api::auth::BearerAuth;
use crate::api::media::MediaService;
use crate::registry::Registry;
use crate::service::validation::RequestLimits;
pub use error::ApiError;
use request::Plan;
use types::{ChatRequest, ModelCard, ModelList};

/// What the API's handlers share.
pub struct OpenAi {
    pub registry: Arc<Registry>,
    pub limits: RequestLimits,
    pub media: Arc<MediaService>,
    pub auth: BearerAuth,
}

/// The routes under `/v1`. Request bodies may be up to `max_body_bytes` (media arrive base64
/// encoded, a third larger than in a gRPC message).
pub fn router(state: OpenAi, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such endpoint: gitcap serves POST /v1/chat/completions and GET /v1/models".into(),
                param: None,
            }
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::cors::CorsLayer::very_permissive())
        .with_state(Arc::new(state))
}

impl OpenAi {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let header = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if self.auth.allows(header) {
            Ok(())
        } else {
            Err(crate::error::GitcapError::Unauthenticated.into())
        }
    }
}

async fn chat_completions(
    State(state): State<Arc<OpenAi>>,
    headers: HeaderMap,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    state.authorize(&headers)?;
    let Json(request) = body.map_err(rejection)?;
    let plan = Plan::new(request, state.media.urls_enabled())?;
    let span = tracing::info_span!("request", method = "/v1/chat/completions", model = plan.model.as_str());
    let _entered = span.enter();
    chat::completions(&state, plan, &headers).await
}

/// A body that is not the JSON a chat request is: 413 when it is too large, else 400 with
/// serde's words.
fn rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError {
            status,
            message: "the request body is larger than this server accepts (server.max_message_bytes × 2)".into(),
            param: None,
        };
    }
    // A field of the wrong type: axum says which, as `path: what serde expected`.
    let text = rejection.body_text();
    let detail = text.strip_prefix("Failed to deserialize the JSON body into the target type: ").unwrap_or(&text);
    let param = detail.split_once(": ").map(|(path, _)| path.to_string()).filter(|p| !p.contains(' '));
    ApiError { status: StatusCode::BAD_REQUEST, message: text.clone(), param }
}

/// Every name a request may use: aliases (the model names among them) and exact versions.
async fn models(State(state): State<Arc<OpenAi>>, headers: HeaderMap) -> Result<impl IntoResponse, ApiError> {
    state.authorize(&headers)?;
    let (versions, aliases) = state.registry.list();
    let mut data: Vec<ModelCard> = aliases
        .keys()
        .cloned()
        .chain(versions.iter().filter(|v| v.state == crate::registry::ModelState::Ready).map(|v| v.id.clone()))
        .map(|id| ModelCard { id, object: "model", created: 0, owned_by: "gitcap".into() })
        .collect();
    data.dedup_by(|a, b| a.id == b.id);
    Ok(Json(ModelList { object: "list", data }))
}
