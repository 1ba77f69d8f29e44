//! A model's own inference thread. Requests reach it through a bounded queue; it batches them
//! ([`super::scheduler`]) and sends each request's tokens and result back over a channel, so
//! the tokio runtime never waits on tensor work. A request whose caller went away or whose
//! deadline passed is dropped from the queue or stopped at its next token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::pipeline::{
    EncodedFrame, Frame, InferenceOutput, InferenceRequest, LabelScore, Pipeline, PreparedFrame, TokenEvent,
};
use super::scheduler::Scheduler;
use super::stats::{EngineStats, EngineStatsSnapshot};
use crate::error::{GitcapError, Result};

/// What a running request reports, in order: `Admitted` when it starts running, its tokens,
/// then one `Done` or `Failed` (a request refused before it runs reports only `Failed`).
#[derive(Debug)]
pub enum EngineEvent {
    /// The request left the queue: the model reads this many prompt and image tokens.
    Admitted {
        prompt_tokens: usize,
        image_tokens: usize,
    },
    Token(TokenEvent),
    Done {
        output: InferenceOutput,
        queue_ms: f64,
    },
    Failed(GitcapError),
}

pub(super) struct Job {
    pub request: InferenceRequest,
    pub deadline: Option<Instant>,
    pub enqueued: Instant,
    pub events: mpsc::UnboundedSender<EngineEvent>,
}

/// Work for the model thread.
pub(super) enum Command {
    Generate(Job),
    /// Run the vision tower on one frame now (frame uploads, live captioning).
    Encode {
        frame: PreparedFrame,
        reply: oneshot::Sender<Result<EncodedFrame>>,
    },
    ScoreLabels {
        frames: Vec<Frame>,
        prompt: Option<String>,
        labels: Vec<String>,
        reply: oneshot::Sender<Result<Vec<LabelScore>>>,
    },
}

/// How a model's thread queues, batches and caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Requests allowed to wait; beyond that callers get RESOURCE_EXHAUSTED at once.
    pub queue_capacity: usize,
    /// Decoder rows (sequences; a beam-search request takes one per beam) decoded together.
    pub max_batch_size: usize,
    /// Key/value positions the running requests may hold together (rows × (image tokens +
    /// text capacity)); one request always runs, however large.
    pub max_batch_tokens: usize,
    /// Frames per vision-tower pass.
    pub max_vision_batch: usize,
    /// Bytes of vision features and image keys/values kept between requests (0 = none).
    pub feature_cache_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 64,
            max_batch_size: 16,
            max_batch_tokens: 131_072,
            max_vision_batch: 8,
            feature_cache_bytes: 512 << 20,
        }
    }
}

/// Identity of a loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub dtype: crate::model::Precision,
    pub device: crate::device::DeviceSpec,
    pub max_frames: usize,
    pub weights_bytes: usize,
    /// The checkpoint's image processor: requests' frames are preprocessed with it before they
    /// reach the model thread.
    pub preprocessor: Arc<crate::media::PreprocessorConfig>,
}

/// What is left of an unloaded model while its requests in flight finish: no way to submit,
/// only to wait for the thread to end or to stop it.
pub struct Drain {
    closing: Arc<AtomicBool>,
    stopped: watch::Receiver<bool>,
}

impl Drain {
    /// Resolves once the model's thread has ended and its memory is freed.
    pub async fn stopped(&mut self) {
        let _ = self.stopped.wait_for(|s| *s).await;
    }

    /// Stops the running request at its next step and fails the queued ones.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }
}

/// The handle the API holds: cheap to clone, submits requests to the model's thread. The
/// thread ends once every handle is gone and its queue is empty, so requests in flight keep
/// their model alive after it is unloaded.
#[derive(Clone)]
pub struct ModelWorker {
    pub info: Arc<ModelInfo>,
    queue: mpsc::Sender<Command>,
    /// Set to stop the request running now and refuse the queued ones (a drain's deadline).
    closing: Arc<AtomicBool>,
    stopped: watch::Receiver<bool>,
    stats: Arc<EngineStats>,
}

impl ModelWorker {
    /// Starts the thread that owns `pipeline`.
    pub fn spawn(pipeline: Pipeline, info: ModelInfo, options: EngineOptions) -> Self {
        let (queue, mut commands) = mpsc::channel::<Command>(options.queue_capacity.max(1));
        let name = info.name.clone();
        let closing = Arc::new(AtomicBool::new(false));
        let (stopped_tx, stopped) = watch::channel(false);
        let thread_closing = closing.clone();
        let stats = Arc::new(EngineStats::new(&info.name, &info.version));
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name(format!("model-{name}"))
            .spawn(move || {
                let _guard = tch::no_grad_guard();
                Scheduler::new(&pipeline, options, &thread_closing, &thread_stats).run(&mut commands);
                drop(pipeline);
                tracing::info!(model = name, "model thread stopped");
                let _ = stopped_tx.send(true);
            })
            .expect("spawning a model thread");
        Self { info: Arc::new(info), queue, closing, stopped, stats }
    }

    /// Gives up this handle to watch the model's thread end (see [`Drain`]).
    pub fn into_drain(self) -> Drain {
        Drain { closing: self.closing, stopped: self.stopped }
    }

    /// Queues a request; fails at once with `ResourceExhausted` when the queue is full.
    pub fn submit(
        &self,
        request: InferenceRequest,
        timeout: Option<Duration>,
    ) -> Result<mpsc::UnboundedReceiver<EngineEvent>> {
        let (events, receiver) = mpsc::unbounded_channel();
        let job = Job { request, deadline: timeout.map(|t| Instant::now() + t), enqueued: Instant::now(), events };
        self.send(Command::Generate(job))?;
        Ok(receiver)
    }

    /// Runs the vision tower on one frame (or finds it in the feature cache) as soon as the
    /// model thread gets to it.
    pub async fn encode(&self, frame: PreparedFrame) -> Result<EncodedFrame> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Encode { frame, reply })?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Ranks `labels` for `frames` (see [`Pipeline::score_labels`]).
    pub async fn score_labels(
        &self,
        frames: Vec<Frame>,
        prompt: Option<String>,
        labels: Vec<String>,
    ) -> Result<Vec<LabelScore>> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::ScoreLabels { frames, prompt, labels, reply })?;
        answer.await.map_err(|_| self.gone())?
    }

    fn gone(&self) -> GitcapError {
        GitcapError::Unavailable(format!("model `{}` stopped", self.info.name))
    }

    fn send(&self, command: Command) -> Result<()> {
        self.queue.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => GitcapError::ResourceExhausted(format!(
                "model `{}` has {} requests waiting; retry later",
                self.info.name,
                self.queue.max_capacity()
            )),
            mpsc::error::TrySendError::Closed(_) => {
                GitcapError::Unavailable(format!("model `{}` is shutting down", self.info.name))
            }
        })
    }

    /// Batching and feature-cache counters of the model's thread.
    pub fn stats(&self) -> EngineStatsSnapshot {
        self.stats.snapshot()
    }

    /// Requests waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}
