//! A model's own inference thread and the handle that feeds it. Requests reach the thread
//! through a queue bounded per priority; it batches them ([`super::scheduler`]) and sends each
//! request's tokens and result back over a channel, so the tokio runtime never waits on tensor
//! work. A request whose caller went away or whose deadline passed is dropped from the queue or
//! stopped at its next token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

use super::frames::{EncodedFrame, Frame, PreparedFrame};
use super::messages::{Command, EngineEvent, InferenceOutput, InferenceRequest, Job, LabelScore, Priority, TokenEvent};
use super::options::EngineOptions;
use super::pipeline::Pipeline;
use super::queue::{QueueCounts, QueueSlot, Waits};
use super::scheduler::Scheduler;
use super::stats::{EngineStats, EngineStatsSnapshot};
use crate::deadline::Deadline;
use crate::error::{GitcapError, Result};

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
    /// The checkpoint's generation defaults (`generation_config.json`), which requests'
    /// options are validated against and applied over.
    pub generation: Arc<crate::model::generation::GenerationConfig>,
}

impl ModelInfo {
    /// Describes `pipeline` loaded as `name` `version` at `dtype` on `device`.
    pub fn describe(
        pipeline: &Pipeline,
        name: &str,
        version: &str,
        dtype: crate::model::Precision,
        device: crate::device::DeviceSpec,
    ) -> Self {
        Self {
            name: name.to_string(),
            version: version.to_string(),
            dtype,
            device,
            max_frames: pipeline.model.config.max_frames() as usize,
            weights_bytes: pipeline.weights_bytes,
            preprocessor: Arc::new(pipeline.preprocessor.clone()),
            generation: Arc::new(pipeline.generation.clone()),
        }
    }
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
    queue: mpsc::UnboundedSender<Command>,
    queued: Arc<QueueCounts>,
    options: EngineOptions,
    /// Set to stop the request running now and refuse the queued ones (a drain's deadline).
    closing: Arc<AtomicBool>,
    stopped: watch::Receiver<bool>,
    stats: Arc<EngineStats>,
}

impl ModelWorker {
    /// [`Self::load`] of the checkpoint in `dir` at `dtype` on `device`, served as `name`
    /// `version`.
    pub fn load_checkpoint(
        dir: std::path::PathBuf,
        name: &str,
        version: &str,
        dtype: crate::model::Precision,
        device: crate::device::DeviceSpec,
        options: EngineOptions,
    ) -> Result<Self> {
        let (thread_name, version, weights) = (name.to_string(), version.to_string(), options.weights);
        let load = move || {
            let pipeline = Pipeline::load_stored(&dir, dtype, device.available()?, weights)?;
            let info = ModelInfo::describe(&pipeline, &thread_name, &version, dtype, device);
            Ok((pipeline, info))
        };
        Self::load(name, load, options)
    }

    /// Starts a model's thread named after `name`, which runs `load` and then serves what it
    /// loaded; returns once `load` has succeeded (or with its error).
    ///
    /// The weights are loaded (read, converted, quantised) on the thread that will run the
    /// model, so that all of a model's tensor work happens on one thread. libtorch's OpenMP
    /// (libgomp) keeps a team of threads for every thread that ran a parallel region, and once
    /// those teams hold more threads than there are CPUs it stops spin-waiting between parallel
    /// regions; a decoding step is hundreds of small ones. Loading on another thread that stays
    /// alive made every bf16 decoding step 1.5× slower (measured: 14.4 against 9.2 ms at batch 1).
    pub fn load(
        name: &str,
        load: impl FnOnce() -> Result<(Pipeline, ModelInfo)> + Send + 'static,
        options: EngineOptions,
    ) -> Result<Self> {
        let (queue, mut commands) = mpsc::unbounded_channel::<Command>();
        let queued = Arc::new(QueueCounts::default());
        let thread_queued = queued.clone();
        let closing = Arc::new(AtomicBool::new(false));
        let (stopped_tx, stopped) = watch::channel(false);
        let thread_closing = closing.clone();
        let (loaded_tx, loaded) = std::sync::mpsc::channel::<Result<(ModelInfo, Arc<EngineStats>)>>();
        std::thread::Builder::new()
            .name(format!("model-{name}"))
            .spawn(move || {
                let _guard = tch::no_grad_guard();
                let loaded = load();
                crate::allocator::release_free_memory();
                let (pipeline, info) = match loaded {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        let _ = stopped_tx.send(true);
                        return;
                    }
                };
                let stats = Arc::new(EngineStats::new(&info.name, &info.version));
                let name = info.name.clone();
                let _ = loaded_tx.send(Ok((info, stats.clone())));
                Scheduler::new(&pipeline, options, &thread_closing, &stats, &thread_queued).run(&mut commands);
                drop(pipeline);
                crate::allocator::release_free_memory();
                tracing::info!(model = name, "model thread stopped");
                let _ = stopped_tx.send(true);
            })
            .map_err(|e| GitcapError::Internal(format!("spawning a model thread: {e}")))?;
        let (info, stats) = loaded
            .recv()
            .map_err(|_| GitcapError::Internal(format!("the thread loading `{name}` ended without a word")))??;
        Ok(Self { info: Arc::new(info), queue, queued, options, closing, stopped, stats })
    }

    /// Gives up this handle to watch the model's thread end (see [`Drain`]).
    pub fn into_drain(self) -> Drain {
        Drain { closing: self.closing, stopped: self.stopped }
    }

    /// Queues a request, to be answered by `deadline`; fails at once with `ResourceExhausted`
    /// when its priority's queue is full. Its place in the queue is given back when it starts
    /// or is dropped, whatever happens in between.
    pub fn submit(
        &self,
        request: InferenceRequest,
        deadline: Deadline,
    ) -> Result<mpsc::UnboundedReceiver<EngineEvent>> {
        let priority = request.priority;
        let (capacity, what) = match priority {
            Priority::Interactive => (self.options.queue_capacity, "requests"),
            Priority::Batch => (self.options.batch_queue_capacity, "batch requests"),
        };
        let Some(slot) = QueueSlot::take(&self.queued, Waits::Request(priority), capacity.max(1)) else {
            return Err(self.full(capacity, what));
        };
        let (events, receiver) = mpsc::unbounded_channel();
        let job = Job { request, deadline, enqueued: Instant::now(), events, slot };
        self.send(Command::Generate(job))?;
        Ok(receiver)
    }

    /// Runs `request` to its end from a thread outside the async runtime (the command-line
    /// caption, warm-up, benchmarks, tests), through the same queue and batches as served
    /// requests, calling `on_token` with each token as it is generated.
    pub fn run_blocking(
        &self,
        request: InferenceRequest,
        mut on_token: impl FnMut(&TokenEvent),
    ) -> Result<InferenceOutput> {
        let mut events = self.submit(request, Deadline::NONE)?;
        while let Some(event) = events.blocking_recv() {
            match event {
                EngineEvent::Admitted { .. } => {}
                EngineEvent::Token(token) => on_token(&token),
                EngineEvent::Done { output, .. } => return Ok(output),
                EngineEvent::Failed(error) => return Err(error),
            }
        }
        Err(self.gone())
    }

    /// Runs the vision tower on one frame (or finds it in the feature cache) as soon as the
    /// model thread gets to it.
    pub async fn encode(&self, frame: PreparedFrame) -> Result<EncodedFrame> {
        let (reply, answer) = oneshot::channel();
        let slot = self.side_slot()?;
        self.send(Command::Encode { frame, reply, slot })?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Ranks `labels` for `frames` (see [`Pipeline::score_label_chunk`]), in chunks of at most
    /// `max_batch_size` labels between decoding steps.
    pub async fn score_labels(
        &self,
        frames: Vec<Frame>,
        prompt: Option<String>,
        labels: Vec<String>,
    ) -> Result<Vec<LabelScore>> {
        let (reply, answer) = oneshot::channel();
        let slot = self.side_slot()?;
        self.send(Command::ScoreLabels { frames, prompt, labels, reply, slot })?;
        answer.await.map_err(|_| self.gone())?
    }

    fn gone(&self) -> GitcapError {
        GitcapError::Unavailable(format!("model `{}` stopped", self.info.name))
    }

    fn full(&self, capacity: usize, what: &str) -> GitcapError {
        GitcapError::ResourceExhausted(format!("model `{}` has {capacity} {what} waiting; retry later", self.info.name))
    }

    /// Side work shares the interactive queue's capacity: it is what interactive callers wait on.
    fn side_slot(&self) -> Result<QueueSlot> {
        let capacity = self.options.queue_capacity.max(1);
        let room = capacity.saturating_sub(self.queued.interactive());
        QueueSlot::take(&self.queued, Waits::Side, room).ok_or_else(|| self.full(capacity, "requests"))
    }

    fn send(&self, command: Command) -> Result<()> {
        self.queue
            .send(command)
            .map_err(|_| GitcapError::Unavailable(format!("model `{}` is shutting down", self.info.name)))
    }

    /// Batching and feature-cache counters of the model's thread.
    pub fn stats(&self) -> EngineStatsSnapshot {
        self.stats.snapshot()
    }

    /// Requests, frames and label sets waiting for the model's thread.
    pub fn queued(&self) -> usize {
        self.queued.total()
    }
}
