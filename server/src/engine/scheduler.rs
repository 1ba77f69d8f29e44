//! The model thread's loop: continuous batching.
//!
//! New requests are admitted between decoding steps: their frames go through the vision tower
//! in batches (skipping frames and frame sequences the [`FeatureCache`] already holds), each
//! gets its image keys/values and its prompt prefilled, and from then on every running request
//! advances one token per step in a single decoder pass, each row attending to its own cache.
//! A request that finishes, is cancelled or runs out of time leaves at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tch::{Device, Tensor};
use tokio::sync::mpsc;

use super::feature_cache::{ContentKey, FeatureCache};
use super::pipeline::{EncodedFrame, Frame, InferenceOutput, Pipeline, PreparedFrame, Timings, TokenEvent};
use super::stats::EngineStats;
use super::worker::{Command, EngineEvent, EngineOptions, Job};
use crate::error::{GitcapError, Result};
use crate::model::generation::{Generated, Search, StepControl, TokenStep};
use crate::model::tokenizer::TextStream;
use crate::model::KvCache;

/// A request received but not yet running: validated, with its search set up.
struct Waiting {
    job: Job,
    search: Search,
    prompt: Vec<i64>,
    queue_ms: f64,
    /// Key/value positions it will hold: rows × (image tokens + text capacity).
    kv_tokens: usize,
}

/// A request in the running batch.
struct Running<'p> {
    job: Job,
    search: Search,
    kv: KvCache,
    stream: TextStream<'p>,
    stream_error: Option<GitcapError>,
    prompt_tokens: usize,
    image_tokens: usize,
    frames_used: usize,
    queue_ms: f64,
    vision_ms: f64,
    decode_started: Instant,
    kv_tokens: usize,
}

pub(super) struct Scheduler<'p> {
    pipeline: &'p Pipeline,
    options: EngineOptions,
    closing: &'p AtomicBool,
    stats: &'p EngineStats,
    cache: FeatureCache,
    waiting: VecDeque<Waiting>,
    running: Vec<Running<'p>>,
}

impl<'p> Scheduler<'p> {
    pub fn new(
        pipeline: &'p Pipeline,
        options: EngineOptions,
        closing: &'p AtomicBool,
        stats: &'p EngineStats,
    ) -> Self {
        let cache = FeatureCache::new(options.feature_cache_bytes);
        Self { pipeline, options, closing, stats, cache, waiting: VecDeque::new(), running: Vec::new() }
    }

    /// Serves `commands` until every sender is gone and the last request has finished.
    pub fn run(&mut self, commands: &mut mpsc::Receiver<Command>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                let Some(command) = commands.blocking_recv() else { break };
                self.accept(command);
            }
            while self.has_room() {
                let Ok(command) = commands.try_recv() else { break };
                self.accept(command);
            }
            self.drop_stale_waiting();
            self.stats.queue_depth(self.waiting.len() + commands.len());
            let batch = self.take_admissible();
            if !batch.is_empty() {
                self.admit(batch);
                self.stats.cache(self.cache.stats(), self.cache.bytes());
            }
            if !self.running.is_empty() {
                self.step();
            }
            self.stats.running(self.running.len());
            self.stats.queue_depth(self.waiting.len() + commands.len());
        }
    }

    fn rows_and_tokens(&self) -> (usize, usize) {
        let running = self.running.iter().map(|r| (r.search.rows(), r.kv_tokens));
        let waiting = self.waiting.iter().map(|w| (w.search.rows(), w.kv_tokens));
        running.chain(waiting).fold((0, 0), |(r, t), (rows, tokens)| (r + rows, t + tokens))
    }

    /// Whether to take more requests off the queue now.
    fn has_room(&self) -> bool {
        let (rows, tokens) = self.rows_and_tokens();
        rows < self.options.max_batch_size && tokens < self.options.max_batch_tokens
    }

    fn accept(&mut self, command: Command) {
        match command {
            Command::Generate(job) => {
                if let Some(waiting) = self.prepare(job) {
                    self.waiting.push_back(waiting);
                }
            }
            Command::Encode { frame, reply } => {
                if !reply.is_closed() {
                    let _ = reply.send(self.encode_one(frame));
                    self.stats.cache(self.cache.stats(), self.cache.bytes());
                }
            }
            Command::ScoreLabels { frames, prompt, labels, reply } => {
                if !reply.is_closed() {
                    let _ = reply.send(self.pipeline.score_labels(&frames, prompt.as_deref(), &labels));
                }
            }
        }
    }

    /// An uploaded frame's features, from the cache when the same pixels were seen before.
    fn encode_one(&mut self, frame: PreparedFrame) -> Result<EncodedFrame> {
        let key = frame.key;
        if let Some(features) = self.cache.frame(key) {
            return Ok(EncodedFrame { key, features });
        }
        let features = self.pipeline.encode_frame(&frame)?;
        self.stats.vision_pass(1);
        self.cache.insert_frame(key, &features);
        Ok(EncodedFrame { key, features })
    }

    /// Validates a new request and sets up its search; a request that cannot run is answered
    /// at once.
    fn prepare(&mut self, job: Job) -> Option<Waiting> {
        let queue_ms = job.enqueued.elapsed().as_secs_f64() * 1e3;
        if job.events.is_closed() {
            return None;
        }
        if let Some(error) = self.refusal(&job, queue_ms) {
            let _ = job.events.send(EngineEvent::Failed(error));
            return None;
        }
        let setup = || -> Result<(Search, Vec<i64>, usize)> {
            let config = self.pipeline.generation.with_options(&job.request.options);
            let prompt = self.pipeline.prompt_ids(job.request.question.as_deref())?;
            let search = Search::new(&config, &prompt)?;
            let frames = self.pipeline.frames_to_use(job.request.frames.len())?.len();
            let image_tokens = frames * self.pipeline.model.config.vision_config.tokens_per_image() as usize;
            let kv_tokens = search.rows() * (image_tokens + search.text_capacity());
            Ok((search, prompt, kv_tokens))
        };
        match setup() {
            Ok((search, prompt, kv_tokens)) => Some(Waiting { job, search, prompt, queue_ms, kv_tokens }),
            Err(e) => {
                let _ = job.events.send(EngineEvent::Failed(e));
                None
            }
        }
    }

    /// Why a request may not start now, if it may not.
    fn refusal(&self, job: &Job, queue_ms: f64) -> Option<GitcapError> {
        if self.closing.load(Ordering::Relaxed) {
            return Some(unloaded());
        }
        if job.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(GitcapError::DeadlineExceeded(format!("while waiting in the queue ({queue_ms:.0} ms)")));
        }
        None
    }

    /// Drops waiting requests whose caller went away, whose deadline passed, or whose model
    /// is being unloaded.
    fn drop_stale_waiting(&mut self) {
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for waiting in std::mem::take(&mut self.waiting) {
            if waiting.job.events.is_closed() {
                continue;
            }
            let queue_ms = waiting.job.enqueued.elapsed().as_secs_f64() * 1e3;
            match self.refusal(&waiting.job, queue_ms) {
                Some(error) => drop(waiting.job.events.send(EngineEvent::Failed(error))),
                None => kept.push_back(waiting),
            }
        }
        self.waiting = kept;
    }

    /// Waiting requests that fit in the batch's row and key/value budgets, in arrival order;
    /// one request always runs when nothing else does, however large.
    fn take_admissible(&mut self) -> Vec<Waiting> {
        let (mut rows, mut tokens) =
            self.running.iter().fold((0, 0), |(r, t), run| (r + run.search.rows(), t + run.kv_tokens));
        let mut batch = Vec::new();
        while let Some(next) = self.waiting.front() {
            let fits = rows + next.search.rows() <= self.options.max_batch_size
                && tokens + next.kv_tokens <= self.options.max_batch_tokens;
            if !fits && (rows > 0 || !batch.is_empty()) {
                break;
            }
            rows += next.search.rows();
            tokens += next.kv_tokens;
            batch.extend(self.waiting.pop_front());
        }
        batch
    }

    /// Starts `batch`: vision tower (batched across requests, cached frames skipped), image
    /// prefill (or a cached prefix), prompt, and the first token of each.
    fn admit(&mut self, batch: Vec<Waiting>) {
        let started = Instant::now();
        let mut frames = match self.vision(&batch) {
            Ok(frames) => frames,
            Err(e) => {
                let message = format!("vision tower: {e}");
                for waiting in batch {
                    let _ = waiting.job.events.send(EngineEvent::Failed(GitcapError::Internal(message.clone())));
                }
                return;
            }
        };
        let vision_ms = started.elapsed().as_secs_f64() * 1e3;
        for (waiting, frames) in batch.into_iter().zip(frames.drain(..)) {
            // Decoding starts with the image prefill.
            let decode_started = Instant::now();
            let started = frames.and_then(|frames| {
                let count = frames.count;
                self.start(&waiting.search, frames).map(|kv| (kv, count))
            });
            let (kv, frames_used) = match started {
                Ok(started) => started,
                Err(e) => {
                    let _ = waiting.job.events.send(EngineEvent::Failed(e));
                    continue;
                }
            };
            let running = Running {
                image_tokens: kv.image_tokens() as usize,
                job: waiting.job,
                search: waiting.search,
                kv,
                stream: TextStream::new(&self.pipeline.tokenizer),
                stream_error: None,
                prompt_tokens: waiting.prompt.len(),
                frames_used,
                queue_ms: waiting.queue_ms,
                vision_ms,
                decode_started,
                kv_tokens: waiting.kv_tokens,
            };
            self.prefill_prompt(running);
        }
    }

    /// Each request's used frames: a cached image prefix, or their vision features (frames not
    /// encoded ahead nor cached go through the vision tower together, each distinct one once).
    fn vision(&mut self, batch: &[Waiting]) -> Result<Vec<Result<UsedFrames>>> {
        let mut prepared = Vec::with_capacity(batch.len());
        let mut to_encode: Vec<(ContentKey, Tensor)> = Vec::new();
        // Where each frame to encode goes: (request, frame slot).
        let mut destinations: HashMap<ContentKey, Vec<(usize, usize)>> = HashMap::new();
        for (request, waiting) in batch.iter().enumerate() {
            prepared.push(self.lookup(request, &waiting.job.request.frames, &mut to_encode, &mut destinations));
        }
        for chunk in to_encode.chunks(self.options.max_vision_batch.max(1)) {
            let pixels = Tensor::stack(&chunk.iter().map(|(_, p)| p.shallow_clone()).collect::<Vec<_>>(), 0);
            let encoded = self.pipeline.model.encode_frames(&pixels)?;
            self.stats.vision_pass(chunk.len());
            for (row, (key, _)) in chunk.iter().enumerate() {
                let features = encoded.narrow(0, row as i64, 1);
                self.cache.insert_frame(*key, &features);
                for &(request, slot) in destinations.get(key).into_iter().flatten() {
                    if let Some(Ok(used)) = prepared.get_mut(request) {
                        used.features[slot] = Some(features.shallow_clone());
                    }
                }
            }
        }
        Ok(prepared)
    }

    /// One request's frames from the cache; the pixels of the others are queued in `to_encode`.
    fn lookup(
        &mut self,
        request: usize,
        all_frames: &[Frame],
        to_encode: &mut Vec<(ContentKey, Tensor)>,
        destinations: &mut HashMap<ContentKey, Vec<(usize, usize)>>,
    ) -> Result<UsedFrames> {
        let used = self.pipeline.frames_to_use(all_frames.len())?;
        let frames: Vec<&Frame> = used.iter().map(|&i| &all_frames[i]).collect();
        let keys: Vec<ContentKey> = frames
            .iter()
            .map(|f| match f {
                Frame::Pixels(frame) => frame.key,
                Frame::Encoded(e) => e.key,
            })
            .collect();
        let key = ContentKey::of_frames(&keys);
        if let Some(prefix) = self.cache.prefix(key) {
            return Ok(UsedFrames { key, count: used.len(), prefix: Some(prefix), features: vec![] });
        }
        let mut features = Vec::with_capacity(frames.len());
        for (slot, (frame, key)) in frames.iter().zip(&keys).enumerate() {
            features.push(match frame {
                Frame::Encoded(e) => Some(e.features.shallow_clone()),
                Frame::Pixels(frame) => match self.cache.frame(*key) {
                    Some(found) => Some(found),
                    None => {
                        if !destinations.contains_key(key) {
                            to_encode.push((*key, frame.pixels.shallow_clone()));
                        }
                        destinations.entry(*key).or_default().push((request, slot));
                        None
                    }
                },
            });
        }
        Ok(UsedFrames { key, count: used.len(), prefix: None, features })
    }

    /// A request's key/value cache with its image tokens in place.
    fn start(&mut self, search: &Search, frames: UsedFrames) -> Result<KvCache> {
        let model = &self.pipeline.model;
        let (rows, capacity) = (search.rows() as i64, search.text_capacity() as i64);
        if let Some(prefix) = frames.prefix {
            return model.cache_from_prefix(&prefix, rows, capacity);
        }
        let features = frames
            .features
            .into_iter()
            .map(|f| f.ok_or_else(|| GitcapError::Internal("a frame was not encoded".into())))
            .collect::<Result<Vec<_>>>()?;
        let image_tokens = model.image_tokens(&Tensor::cat(&features, 0))?;
        let kv = model.prefill_image(&image_tokens, rows, capacity)?;
        if self.options.feature_cache_bytes > 0 {
            self.cache.insert_prefix(frames.key, kv.image_prefix());
        }
        Ok(kv)
    }

    /// Feeds a newly started request's prompt and takes its first token; it joins the running
    /// batch unless that already ended it.
    fn prefill_prompt(&mut self, mut running: Running<'p>) {
        let admitted =
            EngineEvent::Admitted { prompt_tokens: running.prompt_tokens, image_tokens: running.image_tokens };
        let _ = running.job.events.send(admitted);
        let logits = self.pipeline.model.decode_last(&running.search.next_input(), &mut running.kv);
        match advance(&mut running, &logits.to_device(Device::Cpu), self.closing) {
            Some(event) => drop(running.job.events.send(event)),
            None => self.running.push(running),
        }
    }

    /// One decoding step for every running request together.
    fn step(&mut self) {
        let inputs: Vec<Tensor> = self.running.iter().map(|r| r.search.next_input()).collect();
        self.stats.decode_step(self.running.iter().map(|r| r.search.rows()).sum());
        let logits = {
            let mut caches: Vec<&mut KvCache> = self.running.iter_mut().map(|r| &mut r.kv).collect();
            self.pipeline.model.decode_step(&inputs, &mut caches).to_device(Device::Cpu)
        };
        let mut row = 0;
        let mut still_running = Vec::with_capacity(self.running.len());
        for mut running in self.running.drain(..) {
            let rows = running.search.rows() as i64;
            let event = advance(&mut running, &logits.narrow(0, row, rows), self.closing);
            row += rows;
            match event {
                Some(event) => drop(running.job.events.send(event)),
                None => still_running.push(running),
            }
        }
        self.running = still_running;
    }
}

/// A request's frames as the vision side left them.
struct UsedFrames {
    /// The content key of the frame sequence.
    key: ContentKey,
    count: usize,
    prefix: Option<std::rc::Rc<crate::model::decoder::ImagePrefix>>,
    /// Per used frame, once encoded.
    features: Vec<Option<Tensor>>,
}

/// Advances one request with its rows of the step's `logits`, streaming its tokens; returns
/// its final event once it has ended (finished, failed, cancelled or out of time).
fn advance(running: &mut Running, logits: &Tensor, closing: &AtomicBool) -> Option<EngineEvent> {
    let Running { job, search, kv, stream, stream_error, .. } = running;
    let tokenizer = stream.tokenizer();
    let (mut expired, mut closed) = (false, false);
    let result = search.step(logits, kv, &mut |step: Option<TokenStep>| {
        if closing.load(Ordering::Relaxed) {
            closed = true;
            return StepControl::Stop;
        }
        if job.deadline.is_some_and(|d| Instant::now() >= d) {
            expired = true;
            return StepControl::Stop;
        }
        let Some(step) = step else {
            return if job.events.is_closed() { StepControl::Stop } else { StepControl::Continue };
        };
        let text_delta = stream.push(step.token_id, step.last).unwrap_or_else(|e| {
            *stream_error = Some(e);
            String::new()
        });
        let token = TokenEvent {
            token_id: step.token_id,
            text_delta,
            logprob: step.logprob,
            special: tokenizer.is_special(step.token_id),
            top_logprobs: tokenizer.top_logprobs(&step.top),
        };
        match job.events.send(EngineEvent::Token(token)) {
            Ok(()) => StepControl::Continue,
            Err(_) => StepControl::Stop,
        }
    });
    match result {
        Ok(None) => None,
        Ok(Some(generated)) => Some(finish(running, generated)),
        Err(GitcapError::Cancelled) if closed => Some(EngineEvent::Failed(unloaded())),
        Err(GitcapError::Cancelled) if expired => {
            Some(EngineEvent::Failed(GitcapError::DeadlineExceeded("during generation".into())))
        }
        Err(e) => Some(EngineEvent::Failed(e)),
    }
}

fn finish(running: &mut Running, generated: Generated) -> EngineEvent {
    if let Some(e) = running.stream_error.take() {
        return EngineEvent::Failed(e);
    }
    let text = match running.stream.tokenizer().decode(&generated.token_ids) {
        Ok(text) => text,
        Err(e) => return EngineEvent::Failed(e),
    };
    let output = InferenceOutput {
        token_ids: generated.token_ids,
        text,
        finish_reason: generated.finish_reason,
        prompt_tokens: running.prompt_tokens,
        image_tokens: running.image_tokens,
        frames_used: running.frames_used,
        timings: Timings {
            vision_ms: running.vision_ms,
            decode_ms: running.decode_started.elapsed().as_secs_f64() * 1e3,
        },
    };
    EngineEvent::Done { output, queue_ms: running.queue_ms }
}

fn unloaded() -> GitcapError {
    GitcapError::Unavailable("the model was unloaded before the request finished".into())
}
