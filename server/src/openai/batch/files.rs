//! `/v1/files`: upload (multipart, `purpose=batch`), list, retrieve, read and delete files. An
//! upload is written to disk as it arrives, never held in memory, and is refused once it passes
//! `batch.max_file_mb` (413) or would take the files past `batch.max_disk_mb` (429).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::store::FileRow;
use super::{enabled, new_id, now, page, page_limit, Batches, Served};
use crate::openai::ApiError;

/// A file's API object.
pub fn object(file: &FileRow) -> Value {
    json!({
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": file.created_at,
        "expires_at": file.expires_at,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": null,
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError { status: StatusCode::NOT_FOUND, message: format!("no such file: {id}"), param: Some("file_id".into()) }
}

fn bad_upload(error: impl std::fmt::Display) -> ApiError {
    ApiError { status: StatusCode::BAD_REQUEST, message: format!("the upload could not be read: {error}"), param: None }
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::from(crate::error::GitcapError::Internal(format!("writing a batch file: {error}")))
}

/// An upload in progress: its temporary file, removed unless it is kept.
struct Upload {
    path: std::path::PathBuf,
    kept: bool,
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `POST /v1/files`.
pub async fn create(State(state): State<Arc<Served>>, mut form: Multipart) -> Result<Response, ApiError> {
    let batches = enabled(&state)?;
    let mut purpose = None;
    let mut upload = None;
    while let Some(mut field) = form.next_field().await.map_err(bad_upload)? {
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(bad_upload)?),
            Some("file") => {
                let filename = field.file_name().unwrap_or("upload.jsonl").to_string();
                let temp = Upload { path: batches.store.temp_path(), kept: false };
                let arriving = receive(batches, &temp.path, &mut field).await?;
                upload = Some((filename, temp, arriving));
            }
            _ => {}
        }
    }
    match purpose.as_deref() {
        Some("batch") => {}
        Some(other) => {
            return Err(ApiError::invalid("purpose", format!("gitcap takes files for \"batch\" only, got {other:?}")))
        }
        None => return Err(ApiError::invalid("purpose", "give the purpose: \"batch\"")),
    }
    let Some((filename, mut temp, arriving)) = upload else {
        return Err(ApiError::invalid("file", "give the file (a JSONL file of requests)"));
    };
    let created_at = now();
    let row = FileRow {
        id: new_id("file-"),
        filename,
        purpose: "batch".into(),
        bytes: arriving.bytes,
        created_at,
        expires_at: batches.file_expiry(created_at),
    };
    tokio::fs::rename(&temp.path, batches.store.content_path(&row.id)).await.map_err(internal)?;
    temp.kept = true;
    batches.store.insert_file(row.clone()).await?;
    drop(arriving);
    Ok(Json(object(&row)).into_response())
}

/// Bytes of one upload counted in `Batches::uploading` while it arrives.
struct Arriving<'a> {
    batches: &'a Batches,
    bytes: u64,
}

impl Arriving<'_> {
    /// Counts `n` more bytes; the bytes of every upload arriving now, this one's included.
    fn add(&mut self, n: u64) -> u64 {
        self.bytes += n;
        self.batches.uploading.fetch_add(n, Ordering::SeqCst) + n
    }
}

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        self.batches.uploading.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// Writes a multipart field to `path` as it arrives, within the per-file and total caps; its
/// size, counted as arriving until the caller drops it (once the file is recorded).
async fn receive<'a>(
    batches: &'a Batches,
    path: &std::path::Path,
    field: &mut axum::extract::multipart::Field<'_>,
) -> Result<Arriving<'a>, ApiError> {
    let held = batches.store.disk_bytes().await?;
    let (max_file, max_disk) = (batches.max_file_bytes(), batches.max_disk_bytes());
    let mut file = tokio::fs::File::create(path).await.map_err(internal)?;
    let mut arriving = Arriving { batches, bytes: 0 };
    while let Some(chunk) = field.chunk().await.map_err(bad_upload)? {
        let all_arriving = arriving.add(chunk.len() as u64);
        if arriving.bytes > max_file {
            return Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!(
                    "the file is larger than this server accepts: {} MiB (batch.max_file_mb)",
                    max_file >> 20
                ),
                param: Some("file".into()),
            });
        }
        if held + all_arriving > max_disk {
            return Err(over_quota(max_disk));
        }
        file.write_all(&chunk).await.map_err(internal)?;
    }
    file.sync_all().await.map_err(internal)?;
    // Uploads that ended while this one arrived are in the files now.
    if batches.store.disk_bytes().await? + batches.uploading.load(Ordering::SeqCst) > max_disk {
        return Err(over_quota(max_disk));
    }
    Ok(arriving)
}

fn over_quota(max_disk: u64) -> ApiError {
    ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        message: format!(
            "storage_quota_exceeded: the files on this server would pass {} MiB (batch.max_disk_mb); \
             delete files or wait for them to expire",
            max_disk >> 20
        ),
        param: Some("file".into()),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
    purpose: Option<String>,
}

/// `GET /v1/files`: newest first, `after` and `limit` (1 to 100) to page.
pub async fn list(State(state): State<Arc<Served>>, Query(query): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let batches = enabled(&state)?;
    let limit = page_limit(query.limit)?;
    let rows = batches.store.files(query.after, limit, query.purpose).await?;
    Ok(Json(page(rows.iter().map(object).collect(), limit)))
}

/// `GET /v1/files/{id}`.
pub async fn retrieve(State(state): State<Arc<Served>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let batches = enabled(&state)?;
    let row = batches.store.file(&id).await?.ok_or_else(|| not_found(&id))?;
    Ok(Json(object(&row)))
}

/// `DELETE /v1/files/{id}`. A job already reading the file keeps reading it (it is open).
pub async fn delete(State(state): State<Arc<Served>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let batches = enabled(&state)?;
    if !batches.store.delete_file(&id).await? {
        return Err(not_found(&id));
    }
    Ok(Json(json!({ "id": id, "object": "file", "deleted": true })))
}

/// `GET /v1/files/{id}/content`: the file, streamed from disk.
pub async fn content(State(state): State<Arc<Served>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let batches = enabled(&state)?;
    let row = batches.store.file(&id).await?.ok_or_else(|| not_found(&id))?;
    let file = tokio::fs::File::open(batches.store.content_path(&id)).await.map_err(|_| not_found(&id))?;
    let chunks = futures::stream::unfold(file, |mut file| async move {
        let mut buffer = vec![0u8; 64 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buffer)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let headers =
        [(header::CONTENT_TYPE, "application/jsonl".to_string()), (header::CONTENT_LENGTH, row.bytes.to_string())];
    Ok((headers, Body::from_stream(chunks)).into_response())
}
