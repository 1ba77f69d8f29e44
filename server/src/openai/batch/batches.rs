//! `/v1/batches`: create a job over an uploaded file, retrieve and list jobs, cancel one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{enabled, new_id, now, page, page_limit, runner, Served};
use crate::openai::ApiError;

/// The endpoints a job's lines may call.
pub const CHAT_ENDPOINT: &str = "/v1/chat/completions";
pub const RESPONSES_ENDPOINT: &str = "/v1/responses";

/// OpenAI's bounds on a job's `metadata`.
const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY_CHARS: usize = 64;
const MAX_METADATA_VALUE_CHARS: usize = 512;

fn not_found(id: &str) -> ApiError {
    ApiError { status: StatusCode::NOT_FOUND, message: format!("no such batch: {id}"), param: Some("batch_id".into()) }
}

#[derive(Deserialize)]
struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// `POST /v1/batches`.
pub async fn create(State(state): State<Arc<Served>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let batches = enabled(&state)?;
    let mut json = serde_json::Deserializer::from_slice(&body);
    let request: CreateBatch = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        ApiError { status: StatusCode::BAD_REQUEST, message: format!("not a batch request: {e}"), param: Some(path) }
    })?;
    match request.endpoint.as_str() {
        CHAT_ENDPOINT | RESPONSES_ENDPOINT => {}
        other => {
            return Err(ApiError::invalid(
                "endpoint",
                format!("this server runs batches of {CHAT_ENDPOINT} or {RESPONSES_ENDPOINT}, not {other:?}"),
            ))
        }
    }
    if request.completion_window != "24h" {
        return Err(ApiError::invalid(
            "completion_window",
            format!("must be \"24h\", got {:?}", request.completion_window),
        ));
    }
    let metadata = request.metadata.unwrap_or_default();
    check_metadata(&metadata)?;
    let input = batches.store.file(&request.input_file_id).await?;
    if input.is_none_or(|file| file.purpose != "batch") {
        return Err(ApiError::invalid(
            "input_file_id",
            format!("no file {} uploaded with purpose \"batch\"", request.input_file_id),
        ));
    }
    let active = batches.store.active_batches().await?.len();
    if active >= batches.settings.max_active_jobs {
        return Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "{active} batches are not finished yet, the most this server runs (batch.max_active_jobs); \
                 wait for one to end or cancel one"
            ),
            param: None,
        });
    }
    let created_at = now();
    let id = new_id("batch_");
    let body = json!({
        "id": id,
        "object": "batch",
        "endpoint": request.endpoint,
        "errors": null,
        "input_file_id": request.input_file_id,
        "completion_window": request.completion_window,
        "status": "validating",
        "output_file_id": null,
        "error_file_id": null,
        "created_at": created_at,
        "in_progress_at": null,
        "expires_at": created_at + batches.settings.completion_window_secs as i64,
        "finalizing_at": null,
        "completed_at": null,
        "failed_at": null,
        "expired_at": null,
        "cancelling_at": null,
        "cancelled_at": null,
        "metadata": metadata,
    });
    batches.store.insert_batch(id.clone(), body).await?;
    let row = batches.store.batch(&id).await?.ok_or_else(|| not_found(&id))?;
    runner::spawn(state.clone(), batches.clone(), id);
    Ok(Json(row.object()))
}

fn check_metadata(metadata: &Map<String, Value>) -> Result<(), ApiError> {
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(ApiError::invalid("metadata", format!("at most {MAX_METADATA_PAIRS} pairs")));
    }
    for (key, value) in metadata {
        let Some(text) = value.as_str() else {
            return Err(ApiError::invalid(format!("metadata.{key}"), "values must be strings"));
        };
        if key.chars().count() > MAX_METADATA_KEY_CHARS || text.chars().count() > MAX_METADATA_VALUE_CHARS {
            return Err(ApiError::invalid(
                format!("metadata.{key}"),
                format!("keys are at most {MAX_METADATA_KEY_CHARS} characters, values {MAX_METADATA_VALUE_CHARS}"),
            ));
        }
    }
    Ok(())
}

/// `GET /v1/batches/{id}`.
pub async fn retrieve(State(state): State<Arc<Served>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let batches = enabled(&state)?;
    let row = batches.store.batch(&id).await?.ok_or_else(|| not_found(&id))?;
    Ok(Json(row.object()))
}

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/batches`: newest first, `after` and `limit` (1 to 100) to page.
pub async fn list(State(state): State<Arc<Served>>, Query(query): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let batches = enabled(&state)?;
    let limit = page_limit(query.limit)?;
    let rows = batches.store.batches(query.after, limit).await?;
    Ok(Json(page(rows.iter().map(|row| row.object()).collect(), limit)))
}

/// `POST /v1/batches/{id}/cancel`: the job stops taking lines, lets those in flight finish, and
/// ends `cancelled` with what is done in its output and error files.
pub async fn cancel(State(state): State<Arc<Served>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let batches = enabled(&state)?;
    let row = batches
        .store
        .update_batch(&id, |row| match row.status() {
            "validating" | "in_progress" => {
                row.body["status"] = "cancelling".into();
                row.body["cancelling_at"] = now().into();
                true
            }
            _ => false,
        })
        .await?
        .ok_or_else(|| not_found(&id))?;
    match row.status() {
        "cancelling" => {
            batches.cancel(&id);
            Ok(Json(row.object()))
        }
        "cancelled" => Ok(Json(row.object())),
        other => Err(ApiError::invalid("batch_id", format!("a batch that is {other} cannot be cancelled"))),
    }
}
