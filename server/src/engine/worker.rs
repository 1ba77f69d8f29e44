//! A model's own inference thread. Requests reach it through a bounded queue; it sends each
//! request's tokens and result back over a channel, so the tokio runtime never waits on
//! tensor work. A request whose caller went away or whose deadline passed is dropped from the
//! queue or stopped at its next token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use tch::Tensor;
use tokio::sync::{mpsc, oneshot, watch};

use super::pipeline::{Frame, InferenceOutput, InferenceRequest, LabelScore, Pipeline, TokenEvent};
use crate::error::{GitcapError, Result};
use crate::model::generation::StepControl;

/// What a running request reports, in order: tokens, then one `Done` or `Failed`.
#[derive(Debug)]
pub enum EngineEvent {
    Token(TokenEvent),
    Done { output: InferenceOutput, queue_ms: f64 },
    Failed(GitcapError),
}

struct Job {
    request: InferenceRequest,
    deadline: Option<Instant>,
    enqueued: Instant,
    events: mpsc::UnboundedSender<EngineEvent>,
}

/// Work for the model thread.
enum Command {
    Generate(Job),
    /// Run the vision tower on one frame now (frame uploads, live captioning).
    Encode {
        frame: RgbImage,
        reply: oneshot::Sender<Result<Tensor>>,
    },
    ScoreLabels {
        frames: Vec<Frame>,
        prompt: Option<String>,
        labels: Vec<String>,
        reply: oneshot::Sender<Result<Vec<LabelScore>>>,
    },
}

/// Identity of a loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub dtype: String,
    pub device: String,
    pub max_frames: usize,
    pub weights_bytes: usize,
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
}

impl ModelWorker {
    /// Starts the thread that owns `pipeline`; at most `queue_capacity` requests wait.
    pub fn spawn(pipeline: Pipeline, info: ModelInfo, queue_capacity: usize) -> Self {
        let (queue, mut commands) = mpsc::channel::<Command>(queue_capacity.max(1));
        let name = info.name.clone();
        let closing = Arc::new(AtomicBool::new(false));
        let (stopped_tx, stopped) = watch::channel(false);
        let thread_closing = closing.clone();
        std::thread::Builder::new()
            .name(format!("model-{name}"))
            .spawn(move || {
                let _guard = tch::no_grad_guard();
                while let Some(command) = commands.blocking_recv() {
                    match command {
                        Command::Generate(job) => run_job(&pipeline, job, &thread_closing),
                        Command::Encode { frame, reply } => {
                            if !reply.is_closed() {
                                let _ = reply.send(pipeline.encode_frame(&frame));
                            }
                        }
                        Command::ScoreLabels { frames, prompt, labels, reply } => {
                            if !reply.is_closed() {
                                let _ = reply.send(pipeline.score_labels(&frames, prompt.as_deref(), &labels));
                            }
                        }
                    }
                }
                drop(pipeline);
                tracing::info!(model = name, "model thread stopped");
                let _ = stopped_tx.send(true);
            })
            .expect("spawning a model thread");
        Self { info: Arc::new(info), queue, closing, stopped }
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

    /// Runs the vision tower on one frame, as soon as the model thread gets to it.
    pub async fn encode(&self, frame: RgbImage) -> Result<Tensor> {
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

    /// Requests waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

fn run_job(pipeline: &Pipeline, job: Job, closing: &AtomicBool) {
    let queue_ms = job.enqueued.elapsed().as_secs_f64() * 1e3;
    if job.events.is_closed() {
        return;
    }
    let unloaded = || GitcapError::Unavailable("the model was unloaded before the request finished".into());
    if closing.load(Ordering::Relaxed) {
        let _ = job.events.send(EngineEvent::Failed(unloaded()));
        return;
    }
    if job.deadline.is_some_and(|d| Instant::now() >= d) {
        let _ = job.events.send(EngineEvent::Failed(GitcapError::DeadlineExceeded(format!(
            "while waiting in the queue ({queue_ms:.0} ms)"
        ))));
        return;
    }
    let mut expired = false;
    let mut closed = false;
    let result = pipeline.run(&job.request, &mut |event| {
        if closing.load(Ordering::Relaxed) {
            closed = true;
            return StepControl::Stop;
        }
        if job.deadline.is_some_and(|d| Instant::now() >= d) {
            expired = true;
            return StepControl::Stop;
        }
        let Some(event) = event else {
            return if job.events.is_closed() { StepControl::Stop } else { StepControl::Continue };
        };
        match job.events.send(EngineEvent::Token(event)) {
            Ok(()) => StepControl::Continue,
            Err(_) => StepControl::Stop,
        }
    });
    let event = match result {
        Ok(output) => EngineEvent::Done { output, queue_ms },
        Err(GitcapError::Cancelled) if closed => EngineEvent::Failed(unloaded()),
        Err(GitcapError::Cancelled) if expired => {
            EngineEvent::Failed(GitcapError::DeadlineExceeded("during generation".into()))
        }
        Err(e) => EngineEvent::Failed(e),
    };
    let _ = job.events.send(event);
}
