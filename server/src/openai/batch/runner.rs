//! Runs a job: validates its input file, answers each line through its endpoint's own path
//! (`/v1/chat/completions` or `/v1/responses`, in-process) at batch priority (`batch.lines_in_flight` at once, over every job), records each answer as it
//! comes (store::Store::record_line), and writes the output and error files at the end.
//!
//! A line's bad input is an error-file line, never the job's failure. A line the server cannot
//! take now is tried again later: while the model reloads or the server drains (503), for as long
//! as the job lasts; when the queue is full (429), up to `batch.line_attempts` times. A job resumed after a restart skips the lines it already holds.
//! Cancelling stops feeding lines, lets those in flight end, and finalises what is done; a job
//! past its window records its remaining lines as `batch_expired` errors.

use std::collections::HashSet;
use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::batches::CHAT_ENDPOINT;
use super::line::Request;
use super::store::{BatchRow, FileRow};
use super::{new_id, now, Batches, Served};
use crate::error::{GitcapError, Result};
use crate::openai::ApiError;

/// A line's answer, as its output or error line says it.
struct Answer {
    ok: bool,
    response: Option<Value>,
    error: Option<Value>,
}

impl Answer {
    fn error(code: &str, message: impl Into<String>) -> Self {
        Self { ok: false, response: None, error: Some(json!({ "code": code, "message": message.into() })) }
    }

    fn http(status: StatusCode, body: Value) -> Self {
        let request_id = body["id"].as_str().map_or_else(|| new_id("req_"), str::to_string);
        let response = json!({ "status_code": status.as_u16(), "request_id": request_id, "body": body });
        Self { ok: status.is_success(), response: Some(response), error: None }
    }

    fn line(self, custom_id: Option<&str>) -> String {
        json!({ "id": new_id("batch_req_"), "custom_id": custom_id, "response": self.response, "error": self.error })
            .to_string()
    }
}

/// Runs job `id` in the background, unless it already runs here.
pub fn spawn(state: Arc<Served>, batches: Arc<Batches>, id: String) {
    let (cancel, cancelled) = watch::channel(false);
    {
        let mut running = batches.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.contains_key(&id) {
            return;
        }
        running.insert(id.clone(), cancel);
    }
    tokio::spawn(async move {
        if let Err(error) = run(&state, &batches, &id, cancelled).await {
            tracing::error!(batch = id.as_str(), %error, "a batch job stopped");
            let failed = batches.store.update_batch(&id, |row| set_status(row, "failed", "failed_at")).await;
            if let Err(error) = failed {
                tracing::error!(batch = id.as_str(), %error, "could not mark a batch job failed");
            }
        }
        batches.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        refresh_metrics(&batches).await;
    });
}

impl Batches {
    /// Tells job `id`, if it runs here, to stop taking lines.
    pub fn cancel(&self, id: &str) {
        if let Some(cancel) = self.running.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            let _ = cancel.send(true);
        }
    }
}

fn set_status(row: &mut BatchRow, status: &str, at: &str) -> bool {
    row.body["status"] = status.into();
    row.body[at] = now().into();
    true
}

async fn refresh_metrics(batches: &Batches) {
    if let Ok(counts) = batches.store.status_counts().await {
        crate::metrics::batch_jobs(&counts);
    }
}

async fn run(
    state: &Arc<Served>,
    batches: &Arc<Batches>,
    id: &str,
    mut cancelled: watch::Receiver<bool>,
) -> Result<()> {
    let Some(row) = batches.store.batch(id).await? else { return Ok(()) };
    let input = batches.store.content_path(row.body["input_file_id"].as_str().unwrap_or_default());
    if row.status() == "validating" {
        match validate(input.clone(), batches.settings.max_lines).await? {
            Ok(total) => {
                batches
                    .store
                    .update_batch(id, move |row| {
                        row.total = total;
                        row.body["status"] != "cancelling" && set_status(row, "in_progress", "in_progress_at")
                    })
                    .await?;
            }
            Err(errors) => {
                batches
                    .store
                    .update_batch(id, move |row| {
                        row.body["errors"] = json!({ "object": "list", "data": errors });
                        set_status(row, "failed", "failed_at")
                    })
                    .await?;
                return Ok(());
            }
        }
        refresh_metrics(batches).await;
    }
    let Some(row) = batches.store.batch(id).await? else { return Ok(()) };
    let ending = match row.status() {
        "in_progress" => answer_lines(state, batches, id, &row, input, &mut cancelled).await?,
        "cancelling" => "cancelled",
        "finalizing" => row.body["_ending"].as_str().unwrap_or("completed"),
        _ => return Ok(()),
    };
    let ending = ending.to_string();
    let cancelling = batches.store.batch(id).await?.is_some_and(|row| row.status() == "cancelling");
    let ending = if cancelling { "cancelled".to_string() } else { ending };
    batches
        .store
        .update_batch(id, move |row| {
            row.body["_ending"] = ending.into();
            set_status(row, "finalizing", "finalizing_at")
        })
        .await?;
    refresh_metrics(batches).await;
    finalize(batches, id).await
}

/// Checks a job's input file before it runs: a count of requests within `max_lines`, no
/// `custom_id` twice. Lines that are not requests are not the job's failure: they become error
/// lines when the job runs. `Err` holds the errors that fail the job.
async fn validate(path: std::path::PathBuf, max_lines: usize) -> Result<std::result::Result<u64, Vec<Value>>> {
    let checked = tokio::task::spawn_blocking(move || {
        let error = |code: &str, message: String, line: Option<u64>| json!({ "code": code, "message": message, "param": null, "line": line });
        let Ok(file) = std::fs::File::open(&path) else {
            return Err(vec![error("input_file_missing", "the input file was deleted".into(), None)]);
        };
        let mut seen = HashSet::new();
        let mut total = 0u64;
        for (index, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
            let Ok(line) = line else {
                return Err(vec![error("input_file_unreadable", "the input file could not be read".into(), None)]);
            };
            if line.trim_ascii().is_empty() {
                continue;
            }
            total += 1;
            if total > max_lines as u64 {
                let message = format!("more than {max_lines} requests in one batch (batch.max_lines)");
                return Err(vec![error("too_many_requests", message, None)]);
            }
            let custom_id =
                serde_json::from_slice::<Value>(&line).ok().and_then(|v| v["custom_id"].as_str().map(str::to_string));
            if let Some(custom_id) = custom_id {
                if !seen.insert(custom_id.clone()) {
                    let message = format!("custom_id {custom_id:?} is used by more than one line; each must be unique");
                    return Err(vec![error("duplicate_custom_id", message, Some(index as u64 + 1))]);
                }
            }
        }
        if total == 0 {
            return Err(vec![error("empty_file", "the input file holds no requests".into(), None)]);
        }
        Ok(total)
    });
    checked.await.map_err(|e| GitcapError::Internal(format!("validating a batch: {e}")))
}

/// Answers every line of the input not answered yet; how the job ends (`completed`, `cancelled`
/// or `expired`).
async fn answer_lines(
    state: &Arc<Served>,
    batches: &Arc<Batches>,
    id: &str,
    row: &BatchRow,
    input: std::path::PathBuf,
    cancelled: &mut watch::Receiver<bool>,
) -> Result<&'static str> {
    let done = batches.store.done_lines(id).await?;
    let endpoint = row.body["endpoint"].as_str().unwrap_or(CHAT_ENDPOINT).to_string();
    let expires_at = row.body["expires_at"].as_i64().unwrap_or(i64::MAX);
    let (tx, mut lines) = mpsc::channel::<(u64, Vec<u8>)>(batches.settings.lines_in_flight.max(1) * 2);
    // The file is read on a blocking thread, a bounded way ahead of the lines answered.
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let file = std::fs::File::open(input)?;
        for (index, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
            let (number, line) = (index as u64 + 1, line?);
            if line.trim_ascii().is_empty() || done.contains(&number) {
                continue;
            }
            if tx.blocking_send((number, line)).is_err() {
                break;
            }
        }
        Ok(())
    });
    let mut in_flight = tokio::task::JoinSet::new();
    let mut ending = "completed";
    while let Some((number, line)) = lines.recv().await {
        if now() >= expires_at {
            ending = "expired";
            let custom_id = custom_id_of(&line);
            let answer = Answer::error("batch_expired", "the batch expired before this request ran");
            record(batches, id, number, custom_id.as_deref(), answer).await?;
            continue;
        }
        let permit = tokio::select! {
            permit = batches.lines.clone().acquire_owned() => permit.map_err(|e| GitcapError::Internal(e.to_string()))?,
            _ = cancelled.wait_for(|c| *c) => { ending = "cancelled"; break }
        };
        if *cancelled.borrow() {
            ending = "cancelled";
            break;
        }
        let (state, batches, id) = (state.clone(), batches.clone(), id.to_string());
        let until = Until { expires_at, cancelled: cancelled.clone() };
        let endpoint = endpoint.clone();
        in_flight.spawn(async move {
            let _permit = permit;
            crate::metrics::batch_lines_in_flight(1);
            let answered = answer_line(&state, &batches, &endpoint, &line, until).await;
            crate::metrics::batch_lines_in_flight(-1);
            if let Some(answer) = answered {
                record(&batches, &id, number, custom_id_of(&line).as_deref(), answer).await?;
            }
            Ok::<_, GitcapError>(())
        });
        // Answers recorded so far are reaped as they come, so errors surface early.
        while let Some(done) = in_flight.try_join_next() {
            done.map_err(|e| GitcapError::Internal(e.to_string()))??;
        }
    }
    drop(lines);
    while let Some(done) = in_flight.join_next().await {
        done.map_err(|e| GitcapError::Internal(e.to_string()))??;
    }
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) if ending == "completed" => {
            return Err(GitcapError::Internal(format!("reading the batch's input file: {error}")))
        }
        _ => {}
    }
    Ok(ending)
}

fn custom_id_of(line: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(line).ok()?["custom_id"].as_str().map(str::to_string)
}

async fn record(batches: &Batches, id: &str, number: u64, custom_id: Option<&str>, answer: Answer) -> Result<()> {
    let ok = answer.ok;
    crate::metrics::batch_line(ok);
    batches.store.record_line(id, number, ok, answer.line(custom_id)).await
}

/// When a job stops waiting for the server: its end (`expires_at`) or its cancellation.
struct Until {
    expires_at: i64,
    cancelled: watch::Receiver<bool>,
}

/// A line's answer; `None` when the job was cancelled while the line waited for the server (it
/// is left unanswered).
async fn answer_line(
    state: &Served,
    batches: &Batches,
    endpoint: &str,
    line: &[u8],
    mut until: Until,
) -> Option<Answer> {
    let body = match super::line::read(line, endpoint) {
        Ok(body) => body,
        Err(error) => return Some(Answer::error(error.code, error.message)),
    };
    let mut wait = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        let error = match answer_request(state, endpoint, body.clone()).await {
            Ok((status, body)) => return Some(Answer::http(status, body)),
            Err(error) => error,
        };
        // The model reloading or the server draining (503) passes: wait for it while the job
        // lasts. A full queue (429) is tried `batch.line_attempts` times: a request that can
        // never fit (larger than the media budget) must not hold its place for ever.
        let again = match error.status {
            StatusCode::SERVICE_UNAVAILABLE => true,
            StatusCode::TOO_MANY_REQUESTS => attempt < batches.settings.line_attempts,
            _ => false,
        };
        if !again {
            return Some(Answer::http(error.status, error.json()));
        }
        if now() >= until.expires_at {
            return Some(Answer::error("batch_expired", "the batch expired before this request ran"));
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = until.cancelled.wait_for(|c| *c) => return None,
        }
        wait = (wait * 2).min(Duration::from_secs(5));
        attempt += 1;
    }
}

/// Answers a request's body as `POST {endpoint}` does, in-process, at batch priority: the
/// response's status and JSON.
async fn answer_request(
    state: &Served,
    endpoint: &str,
    body: Vec<u8>,
) -> std::result::Result<(StatusCode, Value), ApiError> {
    if body.len() > state.max_body_bytes {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: "the request body is larger than this server accepts (server.max_message_bytes × 2)".into(),
            param: Some("body".into()),
        });
    }
    let cost = (body.len() as u64).saturating_mul(crate::service::body::PARSE_BYTES_PER_BODY_BYTE);
    let room = state.api.core.media.budget().reserve(cost, "a batch line").await?;
    let urls_enabled = state.api.core.media.urls_enabled();
    let endpoint = endpoint.to_string();
    let parsed = tokio::task::spawn_blocking(move || super::line::plan(&endpoint, &body, urls_enabled));
    let plan = parsed.await.map_err(parsing)??;
    drop(room);
    let response = match plan {
        Request::Responses(plan) => {
            super::super::responses::create(&state.api, &state.responses, plan, &HeaderMap::new()).await
        }
        Request::Chat(plan) => super::super::chat::completions(&state.api, plan, &HeaderMap::new()).await?,
    };
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::from(GitcapError::Internal(format!("reading an answer: {e}"))))?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
        // Tried again by the caller, as an error of the chat door is.
        let message = body["error"]["message"].as_str().unwrap_or_default().to_string();
        return Err(ApiError { status, message, param: None });
    }
    Ok((status, body))
}

fn parsing(error: tokio::task::JoinError) -> ApiError {
    ApiError::from(GitcapError::Internal(format!("parsing a line: {error}")))
}

/// Writes the job's output and error files from its recorded answers and ends it. Safe to run
/// again after a crash: the files' ids are the job's, and are written whole before they count.
async fn finalize(batches: &Batches, id: &str) -> Result<()> {
    let suffix = id.trim_start_matches("batch_");
    let mut files = Vec::new();
    for (ok, kind) in [(true, "output"), (false, "error")] {
        let created_at = now();
        let row = FileRow {
            id: format!("file-{suffix}-{kind}"),
            filename: format!("{id}_{kind}.jsonl"),
            purpose: "batch_output".into(),
            bytes: 0,
            created_at,
            expires_at: batches.file_expiry(created_at),
        };
        let temp = batches.store.temp_path();
        let Some(bytes) = batches.store.write_results(id, ok, temp.clone()).await? else { continue };
        tokio::fs::rename(&temp, batches.store.content_path(&row.id))
            .await
            .map_err(|e| GitcapError::Internal(format!("writing a batch's {kind} file: {e}")))?;
        files.push(FileRow { bytes, ..row });
    }
    let Some(row) = batches.store.batch(id).await? else { return Ok(()) };
    let mut body = row.body;
    let ending = body["_ending"].as_str().unwrap_or("completed").to_string();
    let at = format!("{ending}_at");
    body["status"] = ending.as_str().into();
    body[at.as_str()] = now().into();
    for file in &files {
        let field = if file.id.ends_with("-output") { "output_file_id" } else { "error_file_id" };
        body[field] = file.id.clone().into();
    }
    if let Some(object) = body.as_object_mut() {
        object.remove("_ending");
    }
    batches.store.finish_batch(id, files, body).await?;
    refresh_metrics(batches).await;
    tracing::info!(batch = id, status = ending.as_str(), "batch job finished");
    Ok(())
}
