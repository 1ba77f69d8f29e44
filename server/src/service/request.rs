//! One request's life, whatever the protocol (gRPC, the OpenAI-compatible API): its model
//! resolved, queued on it within its deadline, its events observed for the latency and token
//! metrics and its trace (crate::telemetry), its outcome counted.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::Call;
use crate::deadline::Deadline;
use crate::engine::{EngineEvent, InferenceOutput, InferenceRequest, ModelInfo, ModelWorker, Priority};
use crate::error::GitcapError;
use crate::metrics;
use crate::registry::Registry;
use crate::telemetry::{self, RequestTrace, Stages};

/// What `gitcap_requests_total` needs to know of one call: its protocol and name, the model it
/// reached, and its status code, recorded when the tally is dropped. A call dropped before it set
/// a code (its client went away) counts as CANCELLED. With traces on, the call's span lives as
/// long as the tally.
pub struct Tally {
    protocol: &'static str,
    rpc: &'static str,
    pub model: Option<Arc<ModelInfo>>,
    pub code: Code,
    trace: Option<RequestTrace>,
}

impl Tally {
    /// A gRPC call, with its metadata (a caller's `traceparent`).
    pub fn new(rpc: &'static str, metadata: &tonic::metadata::MetadataMap) -> Self {
        Self::for_protocol("grpc", rpc, metadata.as_ref())
    }

    /// A call of `protocol`, with its headers (a caller's `traceparent`).
    pub fn for_protocol(protocol: &'static str, rpc: &'static str, headers: &http::HeaderMap) -> Self {
        let trace = telemetry::request(protocol, rpc, headers);
        Self { protocol, rpc, model: None, code: Code::Cancelled, trace }
    }

    /// The call's span, for the requests it queues ([`submit`]); `None` with traces off.
    pub fn trace(&self) -> Option<RequestTrace> {
        self.trace.clone()
    }

    /// Notes `result`'s status code and passes it on.
    pub fn outcome<T>(&mut self, result: Result<T, Status>) -> Result<T, Status> {
        self.code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        result
    }

    /// The same for an error that has not become a gRPC status.
    pub fn outcome_of<T>(&mut self, result: crate::error::Result<T>) -> crate::error::Result<T> {
        self.code = result.as_ref().map_or_else(GitcapError::code, |_| Code::Ok);
        result
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let (model, version) = self.model.as_ref().map_or(("", ""), |m| (m.name.as_str(), m.version.as_str()));
        metrics::request_finished(model, version, self.protocol, self.rpc, self.code);
        if let Some(trace) = self.trace.take() {
            trace.end(self.model.as_deref(), self.code);
        }
    }
}

/// The worker serving `name` (`None`: the default model) for `call` (of a canary split, the
/// version its route key picks), noted in the call's tally.
pub fn resolve(
    registry: &Registry,
    name: Option<&str>,
    call: &Call,
    tally: &mut Tally,
) -> crate::error::Result<ModelWorker> {
    let worker = registry.get_routed(name, call.route_key.as_deref())?;
    tally.model = Some(worker.info.clone());
    Ok(worker)
}

/// Queues `request`, to be answered by `deadline`; `started` is when its call began, `arrived`
/// when all of it had arrived; `trace` is its call's span ([`Tally::trace`]), which gets the
/// request's stages.
pub fn submit(
    worker: ModelWorker,
    request: InferenceRequest,
    deadline: Deadline,
    started: Instant,
    arrived: Instant,
    trace: Option<RequestTrace>,
) -> crate::error::Result<Started> {
    // Beam search sends its tokens all at once at the end: no inter-token gaps to measure.
    let beam = worker.info.generation.with_options(&request.options).is_beam_search();
    let priority = request.priority;
    if let Some(trace) = &trace {
        trace.priority(priority);
    }
    let events = worker.submit(request, deadline)?;
    Ok(Started {
        worker,
        events,
        started,
        arrived,
        beam,
        priority,
        last_token: None,
        timestamps: vec![],
        read_tokens: 0,
        cached_tokens: 0,
        trace,
    })
}

pub struct Started {
    worker: ModelWorker,
    events: mpsc::UnboundedReceiver<EngineEvent>,
    started: Instant,
    arrived: Instant,
    beam: bool,
    priority: Priority,
    last_token: Option<Instant>,
    /// The video frames' timestamps, reported in the response.
    timestamps: Vec<f64>,
    /// Prompt and image tokens the model reads, once it has admitted the request.
    read_tokens: usize,
    /// Of those, the image tokens that came from the feature cache.
    cached_tokens: usize,
    trace: Option<RequestTrace>,
}

impl Started {
    pub fn with_timestamps(mut self, timestamps: Vec<f64>) -> Self {
        self.timestamps = timestamps;
        self
    }

    /// The model serving this request.
    pub fn model(&self) -> &ModelInfo {
        &self.worker.info
    }

    /// Prompt and image tokens the model reads (0 until it has admitted the request).
    pub fn prompt_tokens(&self) -> u32 {
        self.read_tokens as u32
    }

    /// Image tokens that came from the feature cache (0 until the model has admitted the
    /// request).
    pub fn cached_tokens(&self) -> u32 {
        self.cached_tokens as u32
    }

    /// The next event of the request, once its metrics are recorded; `None` if the model thread
    /// ended without one (an internal error).
    pub async fn next(&mut self) -> Option<EngineEvent> {
        let event = self.events.recv().await?;
        self.observe(&event);
        Some(event)
    }

    /// Records an event's metrics: time to first token, inter-token gaps, and at the end the
    /// queue time and generated tokens, and the stages' spans.
    fn observe(&mut self, event: &EngineEvent) {
        let (model, version) = (self.worker.info.name.as_str(), self.worker.info.version.as_str());
        match event {
            EngineEvent::Admitted { prompt_tokens, image_tokens, image_cached } => {
                self.read_tokens = prompt_tokens + image_tokens;
                self.cached_tokens = if *image_cached { *image_tokens } else { 0 };
            }
            EngineEvent::Token(_) => {
                let now = Instant::now();
                match self.last_token {
                    None => metrics::time_to_first_token(model, version, (now - self.arrived).as_secs_f64()),
                    Some(last) if !self.beam => metrics::inter_token(model, version, (now - last).as_secs_f64()),
                    Some(_) => {}
                }
                self.last_token = Some(now);
            }
            EngineEvent::Done { output, queue_ms } => {
                metrics::queue_time(model, version, self.priority, queue_ms / 1e3);
                let decode_seconds = output.timings.decode_ms / 1e3;
                metrics::tokens_generated(model, version, output.token_ids.len() as u64, decode_seconds);
                if let Some(trace) = &self.trace {
                    let stages = Stages {
                        queue_ms: *queue_ms,
                        vision_ms: output.timings.vision_ms,
                        prefill_ms: output.timings.prefill_ms,
                        decode_ms: output.timings.decode_ms,
                        prompt_tokens: (output.prompt_tokens + output.image_tokens) as u64,
                        generated_tokens: output.token_ids.len() as u64,
                    };
                    trace.stages(SystemTime::now(), &stages);
                }
            }
            EngineEvent::Failed(_) => {}
        }
    }

    /// Waits for the whole answer.
    pub async fn finish(mut self) -> crate::error::Result<Answer> {
        while let Some(event) = self.next().await {
            match event {
                EngineEvent::Admitted { .. } | EngineEvent::Token(_) => {}
                EngineEvent::Done { output, queue_ms } => return Ok(self.answer(output, queue_ms)),
                EngineEvent::Failed(e) => return Err(e),
            }
        }
        Err(ended_without_an_answer())
    }

    /// The whole answer, once the request's output has come.
    pub fn answer(&self, output: InferenceOutput, queue_ms: f64) -> Answer {
        Answer {
            output,
            queue_ms,
            total_ms: self.started.elapsed().as_secs_f64() * 1e3,
            model: self.worker.info.clone(),
            timestamps_s: self.timestamps.clone(),
        }
    }
}

/// A request's whole answer as the core has it; each door writes it in its own format.
pub struct Answer {
    pub output: InferenceOutput,
    /// Time in the model's queue, and from the call's start to the answer.
    pub queue_ms: f64,
    pub total_ms: f64,
    /// The model (name and version) that answered.
    pub model: Arc<ModelInfo>,
    /// The video frames' timestamps, for a video file.
    pub timestamps_s: Vec<f64>,
}

/// The error for a model thread that ended without answering.
pub fn ended_without_an_answer() -> GitcapError {
    GitcapError::Internal("the model thread ended without an answer".into())
}
