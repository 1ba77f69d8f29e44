//! OpenAI's Files and Batches APIs on the OpenAI door: upload a JSONL file of chat requests,
//! create a job over it, and collect an output file (and an error file) when it ends. Jobs run
//! through the same path as `POST /v1/chat/completions` (in-process), at batch priority, and
//! survive restarts: their state is in an SQLite database in `batch.data_dir` ([`store`]), and a
//! job that was running resumes where it stopped ([`runner`]).

mod batches;
mod files;
pub mod line;
mod runner;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use super::{ApiError, Served};
use crate::error::Result;
use store::Store;

/// Where the Batch API keeps its jobs and files, and its bounds: the settings' `[batch]` table
/// (config/default.toml documents each key), read straight into this.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchOptions {
    /// `None`: the Batch API is off.
    #[serde(default, deserialize_with = "crate::optional_setting::optional")]
    pub data_dir: Option<std::path::PathBuf>,
    pub max_file_mb: u64,
    pub max_disk_mb: u64,
    pub max_lines: usize,
    pub max_active_jobs: usize,
    pub lines_in_flight: usize,
    pub line_attempts: u32,
    pub completion_window_secs: u64,
    pub file_expiry_secs: u64,
    pub job_expiry_secs: u64,
    pub sweep_interval_secs: f64,
}

impl Default for BatchOptions {
    /// Off; OpenAI's caps (200 MB files, 50,000 lines), 10 GiB of files, 100 jobs, 32 lines in
    /// flight, a 24 h window, files and ended jobs kept 30 days.
    fn default() -> Self {
        Self {
            data_dir: None,
            max_file_mb: 200,
            max_disk_mb: 10240,
            max_lines: 50000,
            max_active_jobs: 100,
            lines_in_flight: 32,
            line_attempts: 8,
            completion_window_secs: 86400,
            file_expiry_secs: 2_592_000,
            job_expiry_secs: 2_592_000,
            sweep_interval_secs: 60.0,
        }
    }
}

/// The Batch API's state: its store, its bounds, and the jobs running here.
pub struct Batches {
    store: Store,
    settings: BatchOptions,
    /// Lines being answered at once, over every job (`batch.lines_in_flight`).
    lines: Arc<tokio::sync::Semaphore>,
    /// The cancel signal of each job running in this process.
    running: Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
    /// Bytes of uploads still arriving, counted against `batch.max_disk_mb` with the files held,
    /// so that uploads at once cannot pass it together.
    uploading: std::sync::atomic::AtomicU64,
}

impl Batches {
    /// Opens the store in `batch.data_dir`; `None` when it is not set (the Batch API is off).
    /// Blocking: call at start-up.
    pub fn open(options: &BatchOptions) -> Result<Option<Arc<Self>>> {
        let Some(dir) = &options.data_dir else { return Ok(None) };
        let invalid = crate::error::GitcapError::invalid;
        if options.lines_in_flight == 0 {
            return Err(invalid("batch.lines_in_flight", "must be at least 1"));
        }
        if options.line_attempts == 0 {
            return Err(invalid("batch.line_attempts", "must be at least 1"));
        }
        if !(options.sweep_interval_secs.is_finite() && options.sweep_interval_secs > 0.0) {
            return Err(invalid("batch.sweep_interval_secs", "must be a positive number of seconds"));
        }
        let store = Store::open(dir)?;
        Ok(Some(Arc::new(Self {
            store,
            lines: Arc::new(tokio::sync::Semaphore::new(options.lines_in_flight)),
            settings: options.clone(),
            running: Mutex::new(HashMap::new()),
            uploading: std::sync::atomic::AtomicU64::new(0),
        })))
    }

    fn max_file_bytes(&self) -> u64 {
        self.settings.max_file_mb.saturating_mul(1 << 20)
    }

    fn max_disk_bytes(&self) -> u64 {
        self.settings.max_disk_mb.saturating_mul(1 << 20)
    }

    /// When a file created now expires, if ever.
    fn file_expiry(&self, created_at: i64) -> Option<i64> {
        (self.settings.file_expiry_secs > 0).then(|| created_at + self.settings.file_expiry_secs as i64)
    }
}

/// The Files and Batches routes.
pub(super) fn routes() -> Router<Arc<Served>> {
    Router::new()
        .route("/v1/files", post(files::create).get(files::list))
        // The upload's size is checked as it arrives (`batch.max_file_mb`), not by axum's default cap.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .route("/v1/files/{id}", get(files::retrieve).delete(files::delete))
        .route("/v1/files/{id}/content", get(files::content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::retrieve))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
}

/// Resumes the jobs a previous process left unfinished, and starts the sweeper of expired files
/// and jobs.
pub(super) fn start(state: Arc<Served>) {
    let Some(batches) = state.batch.clone() else { return };
    tokio::spawn(async move {
        match batches.store.active_batches().await {
            Ok(ids) => {
                for id in ids {
                    tracing::info!(batch = id.as_str(), "resuming a batch job");
                    runner::spawn(state.clone(), batches.clone(), id);
                }
            }
            Err(error) => tracing::error!(%error, "could not read the batch jobs to resume"),
        }
        let interval = Duration::from_secs_f64(batches.settings.sweep_interval_secs);
        loop {
            let ttl = (batches.settings.job_expiry_secs > 0).then_some(batches.settings.job_expiry_secs as i64);
            match batches.store.sweep(now(), ttl).await {
                Ok(expired) if !expired.is_empty() => {
                    tracing::info!(files = expired.len(), "expired batch files deleted")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "sweeping expired batch files"),
            }
            if let Ok(counts) = batches.store.status_counts().await {
                crate::metrics::batch_jobs(&counts);
            }
            tokio::time::sleep(interval).await;
        }
    });
}

/// The Batch API of this server, or 404 saying how to turn it on.
fn enabled(state: &Served) -> std::result::Result<&Arc<Batches>, ApiError> {
    state.batch.as_ref().ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        message: "the Files and Batches API is off on this server: set batch.data_dir (GITCAP__BATCH__DATA_DIR)".into(),
        param: None,
    })
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A new object id: `prefix` and 24 hex digits.
fn new_id(prefix: &str) -> String {
    format!("{prefix}{:024x}", rand::random::<u128>() >> 32)
}

/// `limit` of a list request: 1 to 100, 20 when not given.
fn page_limit(limit: Option<i64>) -> std::result::Result<usize, ApiError> {
    match limit {
        None => Ok(20),
        Some(n @ 1..=100) => Ok(n as usize),
        Some(n) => Err(ApiError::invalid("limit", format!("must be 1 to 100, got {n}"))),
    }
}

/// A list page in OpenAI's shape: `data`, `has_more`, `first_id`, `last_id`. `rows` holds one
/// more than `limit` when there are more.
fn page(mut data: Vec<serde_json::Value>, limit: usize) -> serde_json::Value {
    let has_more = data.len() > limit;
    data.truncate(limit);
    let id = |v: Option<&serde_json::Value>| v.and_then(|v| v["id"].as_str().map(str::to_string));
    serde_json::json!({
        "object": "list",
        "first_id": id(data.first()),
        "last_id": id(data.last()),
        "has_more": has_more,
        "data": data,
    })
}
