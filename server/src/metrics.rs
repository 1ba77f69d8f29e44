//! Prometheus metrics: what the server records about requests, generation, batching, the
//! feature cache and model memory, and their text rendering for `GET /metrics` (crate::web).
//! Every series carries `model` and `version` labels, except the server-wide desired-state ones.
//! See docs/metrics.md.
//!
//! Counters and histograms go through the `metrics` crate to the `metrics-exporter-prometheus`
//! recorder, installed once per process by [`install`]. Gauges are kept here and rendered by
//! hand: the exporter cannot delete a series (only let it expire when idle), and an unloaded
//! model's memory must go at once, not some time later. Before [`install`] every recording
//! function is a no-op.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::{GitcapError, Result};
use serde::{Deserialize, Serialize};

/// Prometheus metrics (crate::metrics), served at `GET /metrics` without a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// Bucket bounds in seconds of the queue-time, time-to-first-token and inter-token histograms.
    pub latency_buckets: Vec<f64>,
    pub tokens_per_second_buckets: Vec<f64>,
    /// Bucket bounds of the decode batch-size and vision batch-frames histograms.
    pub batch_size_buckets: Vec<f64>,
    /// Also render the Gateway API inference extension's model-server metrics, per model, under
    /// the names its endpoint picker reads by default (vLLM's): see [`render_gateway`].
    pub inference_gateway: bool,
}

/// `Content-Type` of [`render`]'s output: the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const REQUESTS: &str = "gitcap_requests_total";
const QUEUE: &str = "gitcap_queue_seconds";
const FIRST_TOKEN: &str = "gitcap_time_to_first_token_seconds";
const INTER_TOKEN: &str = "gitcap_inter_token_seconds";
const GENERATED: &str = "gitcap_generated_tokens_total";
const TOKENS_PER_SECOND: &str = "gitcap_request_tokens_per_second";
const BATCH: &str = "gitcap_decode_batch_size";
const VISION_BATCH: &str = "gitcap_vision_batch_frames";
const CACHE_HITS: &str = "gitcap_feature_cache_hits_total";
const CACHE_MISSES: &str = "gitcap_feature_cache_misses_total";
const CACHE_BYTES: &str = "gitcap_feature_cache_bytes";
const IMAGE_CACHE_HITS: &str = "gitcap_image_cache_hits_total";
const IMAGE_CACHE_MISSES: &str = "gitcap_image_cache_misses_total";
const IMAGE_CACHE_BYTES: &str = "gitcap_image_cache_bytes";
const WEIGHT_BYTES: &str = "gitcap_model_weight_bytes";
const QUEUE_DEPTH: &str = "gitcap_queue_depth";
const QUEUE_DEPTH_BY_PRIORITY: &str = "gitcap_queue_depth_by_priority";
const RUNNING: &str = "gitcap_running_requests";
const BATCH_UTILIZATION: &str = "gitcap_batch_utilization";
const DESIRED_IN_SYNC: &str = "gitcap_desired_state_in_sync";
const DESIRED_ERRORS: &str = "gitcap_desired_state_errors_total";
const MEDIA_BUDGET_PEAK: &str = "gitcap_media_budget_peak_reserved_bytes";
const BATCH_JOBS: &str = "gitcap_batch_jobs";
const BATCH_LINES: &str = "gitcap_batch_lines_total";
const BATCH_LINES_IN_FLIGHT: &str = "gitcap_batch_lines_in_flight";

/// Help text of the gauges, in the order they are rendered.
const GAUGES: [(&str, &str); 5] = [
    (WEIGHT_BYTES, "Bytes of model weights held by a loaded model version (removed on unload)."),
    (CACHE_BYTES, "Bytes held by a model's feature cache (encoded frames and prefixes)."),
    (QUEUE_DEPTH, "Requests waiting in a model's queue."),
    (RUNNING, "Requests a model is running now (in its decoding batch)."),
    (
        BATCH_UTILIZATION,
        "Fraction (0 to 1) of a model's decoding batch its running requests hold: the larger of rows / \
         engine.max_batch_size and reserved key/value positions / engine.max_batch_tokens.",
    ),
];

/// The Gateway API inference extension's model-server protocol (its proposal 003) under the
/// names its endpoint picker reads by default (v1.5.0: vLLM's), labelled `model_name` as vLLM's
/// are: (name, help, the gitcap gauge it comes from, how a model's versions combine).
const GATEWAY: [(&str, &str, &str, Combine); 3] = [
    (
        "vllm:num_requests_waiting",
        "Requests waiting in the model's queues (gitcap_queue_depth summed over its versions).",
        QUEUE_DEPTH,
        Combine::Sum,
    ),
    (
        "vllm:num_requests_running",
        "Requests the model is running (gitcap_running_requests summed over its versions).",
        RUNNING,
        Combine::Sum,
    ),
    (
        "vllm:kv_cache_usage_perc",
        "Fraction (0 to 1) of the decoding batch in use: gitcap_batch_utilization of the model's fullest version.",
        BATCH_UTILIZATION,
        Combine::Max,
    ),
];

#[derive(Clone, Copy)]
enum Combine {
    Sum,
    Max,
}

/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<std::result::Result<PrometheusHandle, String>> = OnceLock::new();

/// (gauge name, model, version) → value.
type GaugeValues = BTreeMap<(&'static str, String, String), f64>;
static GAUGE_VALUES: Mutex<GaugeValues> = Mutex::new(BTreeMap::new());

/// Queue depth per model, version and priority (`gitcap_queue_depth` split by priority).
type PriorityDepths = BTreeMap<(String, String, String), f64>;
static QUEUE_BY_PRIORITY: Mutex<PriorityDepths> = Mutex::new(BTreeMap::new());

/// `metrics.inference_gateway` of the first [`install`].
static GATEWAY_NAMES: AtomicBool = AtomicBool::new(false);

/// The most bytes of the media budget reserved at once so far.
static MEDIA_BUDGET_PEAK_BYTES: AtomicU64 = AtomicU64::new(0);

/// Declarative mode: whether the server is in sync with its desired-state file (`None`: not in
/// declarative mode, no series).
static DESIRED_STATE: Mutex<Option<bool>> = Mutex::new(None);

/// Installs the process-wide recorder with `settings`' buckets. Idempotent: later calls (tests
/// in one process) keep the first recorder and its buckets.
pub fn install(settings: &MetricsSettings) -> Result<()> {
    for (field, buckets) in [
        ("metrics.latency_buckets", &settings.latency_buckets),
        ("metrics.tokens_per_second_buckets", &settings.tokens_per_second_buckets),
        ("metrics.batch_size_buckets", &settings.batch_size_buckets),
    ] {
        check_buckets(field, buckets)?;
    }
    let installed = RECORDER.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        let per_metric = [
            (QUEUE, &settings.latency_buckets),
            (FIRST_TOKEN, &settings.latency_buckets),
            (INTER_TOKEN, &settings.latency_buckets),
            (TOKENS_PER_SECOND, &settings.tokens_per_second_buckets),
            (BATCH, &settings.batch_size_buckets),
            (VISION_BATCH, &settings.batch_size_buckets),
        ];
        for (name, buckets) in per_metric {
            builder = builder.set_buckets_for_metric(Matcher::Full(name.into()), buckets).map_err(|e| e.to_string())?;
        }
        let handle = builder.install_recorder().map_err(|e| e.to_string())?;
        GATEWAY_NAMES.store(settings.inference_gateway, Ordering::Relaxed);
        describe();
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            })
            .map_err(|e| format!("cannot start the metrics upkeep thread: {e}"))?;
        Ok(handle)
    });
    installed.as_ref().map(|_| ()).map_err(|e| GitcapError::Internal(format!("installing the metrics recorder: {e}")))
}

fn check_buckets(field: &str, buckets: &[f64]) -> Result<()> {
    if buckets.is_empty() || buckets.iter().any(|b| !b.is_finite()) || buckets.windows(2).any(|w| w[0] >= w[1]) {
        return Err(GitcapError::invalid(field, "histogram buckets must be finite numbers in increasing order"));
    }
    Ok(())
}

fn describe() {
    describe_counter!(REQUESTS, Unit::Count, "Requests answered, by model, version, RPC and gRPC status code.");
    describe_histogram!(QUEUE, Unit::Seconds, "Seconds a request waited in its model's queue before it ran.");
    describe_histogram!(
        FIRST_TOKEN,
        Unit::Seconds,
        "Seconds from a request's arrival to its first generated token (media decoding, queue and vision included)."
    );
    describe_histogram!(
        INTER_TOKEN,
        Unit::Seconds,
        "Seconds between consecutive tokens of a request (not beam search)."
    );
    describe_counter!(GENERATED, Unit::Count, "Tokens generated (EOS included), by model and version.");
    describe_histogram!(
        TOKENS_PER_SECOND,
        "Generated tokens per second of decoding, one sample per finished request (vision excluded)."
    );
    describe_histogram!(BATCH, Unit::Count, "Rows (sequences) in each batched decode step.");
    describe_histogram!(VISION_BATCH, Unit::Count, "Frames in each batched run of the vision tower.");
    describe_counter!(
        CACHE_HITS,
        Unit::Count,
        "Feature cache look-ups that found the features, by kind (frame, prefix)."
    );
    describe_counter!(
        IMAGE_CACHE_HITS,
        Unit::Count,
        "Images sent again whose frames came from the image cache (media.image_cache_mb), not decoded."
    );
    describe_counter!(IMAGE_CACHE_MISSES, Unit::Count, "Images decoded because the image cache did not hold them.");
    describe_gauge!(IMAGE_CACHE_BYTES, Unit::Bytes, "Bytes of preprocessed pixels the image cache holds now.");
    describe_counter!(
        DESIRED_ERRORS,
        Unit::Count,
        "Attempts to apply the desired-state file that failed (unreadable, invalid, or a version or alias not reached)."
    );
    describe_gauge!(
        MEDIA_BUDGET_PEAK,
        Unit::Bytes,
        "The most bytes of media.decode_budget_mb reserved at once (decoded pixels in flight) since the server started."
    );
    describe_gauge!(
        BATCH_JOBS,
        Unit::Count,
        "Batch API jobs held, by status (validating, in_progress, completed, ...)."
    );
    describe_counter!(
        BATCH_LINES,
        Unit::Count,
        "Batch API lines answered, by outcome: completed (output file) or failed (error file)."
    );
    describe_gauge!(
        BATCH_LINES_IN_FLIGHT,
        Unit::Count,
        "Batch API lines being answered now (batch.lines_in_flight at most)."
    );
    describe_counter!(
        CACHE_MISSES,
        Unit::Count,
        "Feature cache look-ups that had to compute, by kind (frame, prefix)."
    );
}

/// The text exposition of every metric, or `None` when metrics are off (not installed).
pub fn render() -> Option<String> {
    let handle = RECORDER.get()?.as_ref().ok()?;
    let mut text = handle.render();
    {
        // One reading for both, so that the inference extension's series add up to gitcap's.
        let values = lock_gauges();
        render_gauges(&mut text, &values);
        render_queue_by_priority(&mut text);
        if GATEWAY_NAMES.load(Ordering::Relaxed) {
            render_gateway(&mut text, &values);
        }
    }
    if let Some(in_sync) = *DESIRED_STATE.lock().unwrap_or_else(|e| e.into_inner()) {
        let _ = write!(
            text,
            "# HELP {DESIRED_IN_SYNC} 1 when the server has reached the state its desired-state file describes, else 0.\n\
             # TYPE {DESIRED_IN_SYNC} gauge\n{DESIRED_IN_SYNC} {}\n\n",
            u8::from(in_sync)
        );
    }
    Some(text)
}

fn render_gauges(out: &mut String, values: &GaugeValues) {
    for (name, help) in GAUGES {
        let mut series = values.range((name, String::new(), String::new())..).take_while(|((n, _, _), _)| *n == name);
        let Some(first) = series.next() else { continue };
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n");
        for ((_, model, version), value) in std::iter::once(first).chain(series) {
            let _ = writeln!(out, "{name}{{model=\"{}\",version=\"{}\"}} {value}", escape(model), escape(version));
        }
        out.push('\n');
    }
}

fn render_queue_by_priority(out: &mut String) {
    let depths = QUEUE_BY_PRIORITY.lock().unwrap_or_else(|e| e.into_inner());
    if depths.is_empty() {
        return;
    }
    let name = QUEUE_DEPTH_BY_PRIORITY;
    let _ = write!(
        out,
        "# HELP {name} Requests waiting in a model's queue, by priority (interactive includes frames to encode and label sets to score; the priorities add up to gitcap_queue_depth).\n# TYPE {name} gauge\n"
    );
    for ((model, version, priority), value) in depths.iter() {
        let (model, version) = (escape(model), escape(version));
        let _ = writeln!(out, "{name}{{model=\"{model}\",version=\"{version}\",priority=\"{priority}\"}} {value}");
    }
    out.push('\n');
}

/// The inference extension's gauges, one series per model (`model_name`), from the same values
/// as gitcap's own: an endpoint picker scores pods by them without knowing gitcap.
fn render_gateway(out: &mut String, values: &GaugeValues) {
    for (name, help, source, combine) in GATEWAY {
        let mut per_model: BTreeMap<&str, f64> = BTreeMap::new();
        for ((_, model, _), value) in
            values.range((source, String::new(), String::new())..).take_while(|((n, _, _), _)| *n == source)
        {
            let combined = per_model.entry(model.as_str()).or_insert(0.0);
            *combined = match combine {
                Combine::Sum => *combined + value,
                Combine::Max => combined.max(*value),
            };
        }
        if per_model.is_empty() {
            continue;
        }
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n");
        for (model, value) in per_model {
            let _ = writeln!(out, "{name}{{model_name=\"{}\"}} {value}", escape(model));
        }
        out.push('\n');
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn lock_gauges() -> std::sync::MutexGuard<'static, GaugeValues> {
    GAUGE_VALUES.lock().unwrap_or_else(|e| e.into_inner())
}

fn installed() -> bool {
    RECORDER.get().is_some_and(|r| r.is_ok())
}

fn set_gauge(name: &'static str, model: &str, version: &str, value: Option<f64>) {
    if !installed() {
        return;
    }
    let key = (name, model.to_string(), version.to_string());
    let mut values = lock_gauges();
    match value {
        Some(value) => values.insert(key, value),
        None => values.remove(&key),
    };
}

/// The canonical name of a gRPC status code (`OK`, `INVALID_ARGUMENT`, …).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One answered request. `model` and `version` are empty when it never reached a model
/// (unknown model name, malformed start message).
/// A call answered: `protocol` is `grpc` or `openai`, `rpc` the method (`Caption`,
/// `ChatCompletions`, …), `code` the gRPC status code its outcome maps to.
pub fn request_finished(model: &str, version: &str, protocol: &str, rpc: &str, code: tonic::Code) {
    counter!(REQUESTS, "model" => model.to_string(), "version" => version.to_string(),
        "protocol" => protocol.to_string(), "rpc" => rpc.to_string(), "code" => code_name(code))
    .increment(1);
}

/// Time a request waited in the queue.
pub fn queue_time(model: &str, version: &str, priority: gitcap_protocol::Priority, seconds: f64) {
    let labels = [("model", model.to_string()), ("version", version.to_string()), ("priority", priority.to_string())];
    histogram!(QUEUE, &labels).record(seconds);
}

/// Time from a request's arrival to its first token.
pub fn time_to_first_token(model: &str, version: &str, seconds: f64) {
    histogram!(FIRST_TOKEN, "model" => model.to_string(), "version" => version.to_string()).record(seconds);
}

/// Time between two consecutive tokens of one request.
pub fn inter_token(model: &str, version: &str, seconds: f64) {
    histogram!(INTER_TOKEN, "model" => model.to_string(), "version" => version.to_string()).record(seconds);
}

/// A finished request's generated tokens and the seconds its decoding took.
pub fn tokens_generated(model: &str, version: &str, tokens: u64, seconds: f64) {
    counter!(GENERATED, "model" => model.to_string(), "version" => version.to_string()).increment(tokens);
    if tokens > 0 && seconds > 0.0 {
        histogram!(TOKENS_PER_SECOND, "model" => model.to_string(), "version" => version.to_string())
            .record(tokens as f64 / seconds);
    }
}

/// Rows in one batched decode step.
pub fn batch_size(model: &str, version: &str, rows: usize) {
    histogram!(BATCH, "model" => model.to_string(), "version" => version.to_string()).record(rows as f64);
}

/// Frames in one batched vision-tower run.
pub fn vision_batch_size(model: &str, version: &str, frames: usize) {
    histogram!(VISION_BATCH, "model" => model.to_string(), "version" => version.to_string()).record(frames as f64);
}

/// One feature-cache look-up; `kind` is `frame` or `prefix`.
pub fn feature_cache(model: &str, version: &str, kind: &str, hit: bool) {
    let name = if hit { CACHE_HITS } else { CACHE_MISSES };
    counter!(name, "model" => model.to_string(), "version" => version.to_string(), "kind" => kind.to_string())
        .increment(1);
}

/// Bytes the feature cache holds now.
pub fn feature_cache_bytes(model: &str, version: &str, bytes: usize) {
    set_gauge(CACHE_BYTES, model, version, Some(bytes as f64));
}

/// Bytes of a loaded version's weights; `None` when it is unloaded, which also removes the
/// version's other gauges (feature cache bytes, queue depth, running, batch utilization).
pub fn model_memory(model: &str, version: &str, bytes: Option<usize>) {
    match bytes {
        Some(bytes) => set_gauge(WEIGHT_BYTES, model, version, Some(bytes as f64)),
        None => {
            for (name, _) in GAUGES {
                set_gauge(name, model, version, None);
            }
            let mut depths = QUEUE_BY_PRIORITY.lock().unwrap_or_else(|e| e.into_inner());
            depths.retain(|(m, v, _), _| m != model || v != version);
        }
    }
}

/// Requests waiting in a model's queue now: interactive (with side work) and batch. Both series
/// change under the gauges' lock, which a scrape holds too, so they always add up.
pub fn queue_depth(model: &str, version: &str, interactive: usize, batch: usize) {
    if !installed() {
        return;
    }
    let mut values = lock_gauges();
    let mut depths = QUEUE_BY_PRIORITY.lock().unwrap_or_else(|e| e.into_inner());
    values.insert((QUEUE_DEPTH, model.to_string(), version.to_string()), (interactive + batch) as f64);
    for (priority, waiting) in
        [(gitcap_protocol::Priority::Interactive, interactive), (gitcap_protocol::Priority::Batch, batch)]
    {
        depths.insert((model.to_string(), version.to_string(), priority.to_string()), waiting as f64);
    }
}

pub fn running_requests(model: &str, version: &str, running: usize) {
    set_gauge(RUNNING, model, version, Some(running as f64));
}

/// The fraction of a model's decoding batch in use (0 to 1; more is clamped).
pub fn batch_utilization(model: &str, version: &str, fraction: f64) {
    set_gauge(BATCH_UTILIZATION, model, version, Some(fraction.clamp(0.0, 1.0)));
}

/// The Batch API's jobs in each status (every status, so one that empties reads 0).
pub fn batch_jobs(counts: &[(String, u64)]) {
    const STATUSES: [&str; 8] =
        ["validating", "in_progress", "finalizing", "completed", "failed", "cancelling", "cancelled", "expired"];
    for status in STATUSES {
        let count = counts.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
        gauge!(BATCH_JOBS, "status" => status).set(count as f64);
    }
}

/// One Batch API line answered: to the output file (`ok`) or to the error file.
pub fn batch_line(ok: bool) {
    counter!(BATCH_LINES, "outcome" => if ok { "completed" } else { "failed" }).increment(1);
}

/// Batch API lines being answered now, up or down by `change`.
pub fn batch_lines_in_flight(change: i64) {
    gauge!(BATCH_LINES_IN_FLIGHT).increment(change as f64);
}

/// Declarative mode: whether the server has reached its desired-state file's state.
pub fn desired_state(in_sync: bool) {
    if installed() {
        *DESIRED_STATE.lock().unwrap_or_else(|e| e.into_inner()) = Some(in_sync);
    }
}

/// The media budget has `reserved` bytes reserved, just after a reservation: its high-water mark.
pub fn media_budget_reserved(reserved: u64) {
    let peak = MEDIA_BUDGET_PEAK_BYTES.fetch_max(reserved, Ordering::Relaxed).max(reserved);
    gauge!(MEDIA_BUDGET_PEAK).set(peak as f64);
}

/// One image-cache look-up.
pub fn image_cache(hit: bool) {
    counter!(if hit { IMAGE_CACHE_HITS } else { IMAGE_CACHE_MISSES }).increment(1);
}

/// Bytes the image cache holds now.
pub fn image_cache_bytes(bytes: usize) {
    gauge!(IMAGE_CACHE_BYTES).set(bytes as f64);
}

/// Declarative mode: an attempt to apply the desired-state file failed.
pub fn desired_state_error() {
    counter!(DESIRED_ERRORS).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not from `Settings::load`: the settings test changes the environment meanwhile.
    fn settings() -> MetricsSettings {
        MetricsSettings {
            enabled: true,
            latency_buckets: vec![0.001, 0.01, 0.025, 0.1, 0.25, 1.0],
            tokens_per_second_buckets: vec![1.0, 10.0, 20.0, 100.0],
            batch_size_buckets: vec![1.0, 2.0, 4.0, 8.0],
            inference_gateway: true,
        }
    }

    /// The lines of `text` that start with `prefix`.
    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn renders_every_kind_of_series_with_model_and_version_labels() {
        install(&settings()).unwrap();
        install(&settings()).expect("a second install keeps the first recorder");
        // Names of their own: other tests in this process record too.
        let (m, v) = ("render-test", "v\"1");
        request_finished(m, v, "grpc", "Caption", tonic::Code::Ok);
        request_finished(m, v, "grpc", "Caption", tonic::Code::Ok);
        request_finished(m, v, "grpc", "CaptionStream", tonic::Code::InvalidArgument);
        queue_time(m, v, gitcap_protocol::Priority::Batch, 0.003);
        time_to_first_token(m, v, 0.02);
        time_to_first_token(m, v, 0.2);
        inter_token(m, v, 0.004);
        tokens_generated(m, v, 10, 0.5);
        batch_size(m, v, 3);
        vision_batch_size(m, v, 6);
        feature_cache(m, v, "frame", true);
        feature_cache(m, v, "frame", false);
        feature_cache(m, v, "frame", true);
        feature_cache_bytes(m, v, 4096);
        model_memory(m, v, Some(123_456));
        queue_depth(m, v, 2, 5);
        running_requests(m, v, 3);
        media_budget_reserved(5 << 20);
        media_budget_reserved(1 << 20);
        image_cache(true);
        image_cache(false);
        image_cache_bytes(4096);

        let text = render().unwrap();
        let labels = r#"model="render-test",version="v\"1""#;
        let series = |text: &str, name: &str| lines(text, &format!("{name}{{{labels}")).join("\n");
        assert!(series(&text, REQUESTS).contains(r#"rpc="Caption",code="OK"} 2"#), "{text}");
        assert!(series(&text, REQUESTS).contains(r#"rpc="CaptionStream",code="INVALID_ARGUMENT"} 1"#), "{text}");
        assert!(series(&text, GENERATED).ends_with(" 10"), "{text}");
        assert!(series(&text, CACHE_HITS).contains(r#"kind="frame"} 2"#), "{text}");
        assert!(series(&text, CACHE_MISSES).contains(r#"kind="frame"} 1"#), "{text}");
        assert_eq!(series(&text, WEIGHT_BYTES), format!("{WEIGHT_BYTES}{{{labels}}} 123456"));
        assert_eq!(series(&text, CACHE_BYTES), format!("{CACHE_BYTES}{{{labels}}} 4096"));
        assert_eq!(series(&text, QUEUE_DEPTH), format!("{QUEUE_DEPTH}{{{labels}}} 7"));
        assert_eq!(
            lines(&text, &format!("{QUEUE_DEPTH_BY_PRIORITY}{{{labels}")),
            [
                format!(r#"{QUEUE_DEPTH_BY_PRIORITY}{{{labels},priority="batch"}} 5"#),
                format!(r#"{QUEUE_DEPTH_BY_PRIORITY}{{{labels},priority="interactive"}} 2"#),
            ]
        );
        assert_eq!(series(&text, RUNNING), format!("{RUNNING}{{{labels}}} 3"));
        // The high-water mark (the budget's own tests in this process may have reserved more).
        let peak = lines(&text, &format!("{MEDIA_BUDGET_PEAK} "));
        let peak: f64 = peak.first().and_then(|l| l.rsplit(' ').next()?.parse().ok()).expect("the gauge");
        assert!(peak >= f64::from(5 << 20), "{text}");

        // Histograms: the configured buckets, cumulative counts, sum and count.
        let ttft = format!("{FIRST_TOKEN}_bucket{{{labels}");
        assert!(text.contains(&format!(r#"{ttft},le="0.025"}} 1"#)), "{text}");
        assert!(text.contains(&format!(r#"{ttft},le="0.25"}} 2"#)), "{text}");
        assert!(text.contains(&format!(r#"{ttft},le="+Inf"}} 2"#)), "{text}");
        assert!(text.contains(&format!("{FIRST_TOKEN}_count{{{labels}}} 2")), "{text}");
        assert!(text.contains(&format!("{TOKENS_PER_SECOND}_bucket{{{labels},le=\"20\"}} 1")), "{text}");
        assert!(text.contains(&format!("{TOKENS_PER_SECOND}_bucket{{{labels},le=\"10\"}} 0")), "{text}");
        for name in [INTER_TOKEN, BATCH, VISION_BATCH] {
            assert!(text.contains(&format!("{name}_count{{{labels}}} 1")), "{name}: {text}");
        }
        assert!(text.contains(&format!("{QUEUE}_count{{{labels},priority=\"batch\"}} 1")), "{text}");
        // Process-wide series (the image cache's own tests in this process count too).
        for name in [IMAGE_CACHE_HITS, IMAGE_CACHE_MISSES, IMAGE_CACHE_BYTES] {
            let value =
                lines(&text, &format!("{name} ")).first().and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
            assert!(value.is_some(), "{name}: {text}");
        }
        for name in [REQUESTS, QUEUE, FIRST_TOKEN, WEIGHT_BYTES, CACHE_HITS, IMAGE_CACHE_HITS, IMAGE_CACHE_BYTES] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no help: {text}");
        }
        assert_eq!(lines(&text, &format!("# TYPE {WEIGHT_BYTES} gauge")).len(), 1);

        // Unloading removes the version's gauges, and only its own.
        model_memory("other-model", "1", Some(7));
        model_memory(m, v, None);
        let text = render().unwrap();
        for name in [WEIGHT_BYTES, CACHE_BYTES, QUEUE_DEPTH, QUEUE_DEPTH_BY_PRIORITY, RUNNING, BATCH_UTILIZATION] {
            assert_eq!(series(&text, name), "", "{name} stays after the unload: {text}");
        }
        assert_eq!(
            lines(&text, &format!("{WEIGHT_BYTES}{{model=\"other-model\"")),
            [format!(r#"{WEIGHT_BYTES}{{model="other-model",version="1"}} 7"#)]
        );
        assert!(series(&text, REQUESTS).contains(r#"code="OK"} 2"#), "counters stay after an unload: {text}");
        model_memory("other-model", "1", None);
    }

    /// The inference extension's names: one series per model, its versions summed (waiting,
    /// running) or the fullest one (utilization), from gitcap's own gauges.
    #[test]
    fn renders_the_inference_gateway_gauges_per_model_from_gitcaps_own() {
        install(&settings()).unwrap();
        let m = "gateway-test";
        queue_depth(m, "v1", 2, 0);
        queue_depth(m, "v2", 1, 2);
        running_requests(m, "v1", 4);
        running_requests(m, "v2", 1);
        batch_utilization(m, "v1", 0.25);
        batch_utilization(m, "v2", 1.5);
        let text = render().unwrap();
        let series = |name: &str| lines(&text, &format!("{name}{{model_name=\"{m}\"}}")).join("\n");
        assert_eq!(series("vllm:num_requests_waiting"), format!("vllm:num_requests_waiting{{model_name=\"{m}\"}} 5"));
        assert_eq!(series("vllm:num_requests_running"), format!("vllm:num_requests_running{{model_name=\"{m}\"}} 5"));
        assert_eq!(series("vllm:kv_cache_usage_perc"), format!("vllm:kv_cache_usage_perc{{model_name=\"{m}\"}} 1"));
        assert_eq!(lines(&text, "# TYPE vllm:num_requests_waiting gauge").len(), 1);
        // Unloaded versions leave the sums; the last one takes the model's series with it.
        model_memory(m, "v2", None);
        let text = render().unwrap();
        assert!(text.contains(&format!("vllm:num_requests_waiting{{model_name=\"{m}\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("vllm:kv_cache_usage_perc{{model_name=\"{m}\"}} 0.25\n")), "{text}");
        model_memory(m, "v1", None);
        assert!(!render().unwrap().contains(&format!("model_name=\"{m}\"")));
    }

    #[test]
    fn rejects_buckets_out_of_order() {
        let mut bad = settings();
        bad.latency_buckets = vec![0.1, 0.01];
        let error = install(&bad).unwrap_err().to_string();
        assert!(error.contains("metrics.latency_buckets"), "{error}");
        bad.latency_buckets = vec![];
        assert!(install(&bad).is_err());
    }
}
