//! Execution: what a model's thread computes for the requests the policy admitted — the vision
//! tower (batched across requests, frames and frame sequences from the feature cache skipped),
//! the image prefill and the prompt, then one decoding step for every running request at once,
//! each row attending to its own key/value cache — and the side work between steps (frames
//! encoded ahead, label scores). A request that finishes, is cancelled or runs out of time
//! leaves the batch at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tch::{Device, Tensor};

use super::feature_cache::{ContentKey, FeatureCache};
use super::frames::{EncodedFrame, Frame, PreparedFrame};
use super::messages::{EngineEvent, InferenceOutput, Job, LabelScore, Priority, Timings, TokenEvent};
use super::options::EngineOptions;
use super::pipeline::{LabelContext, Pipeline};
use super::policy::Waiting;
use super::stats::EngineStats;
use crate::error::{GitcapError, Result};
use crate::model::generation::{Generated, Search, StepControl, TokenStep};
use crate::model::tokenizer::TextStream;
use crate::model::vision::VisionProgress;
use crate::model::KvCache;

/// A request in the running batch.
pub(super) struct Running<'p> {
    job: Job,
    search: Search,
    kv: KvCache,
    stream: TextStream<'p>,
    stream_error: Option<GitcapError>,
    prompt_tokens: usize,
    image_tokens: usize,
    frames_used: usize,
    /// Its image tokens' keys and values came from the feature cache.
    image_cached: bool,
    queue_ms: f64,
    vision_ms: f64,
    /// When the image prefill of its admission batch began.
    prefill_started: Instant,
    /// When its prompt was in the cache: generation's start.
    decode_started: Instant,
    kv_tokens: usize,
}

/// Image tokens one batched image prefill takes at most (6 video frames of git-base: 1182).
const PREFILL_TOKENS_PER_PASS: i64 = 4096;

/// The model's running requests and what computing them needs.
pub(super) struct Executor<'p> {
    pub pipeline: &'p Pipeline,
    options: EngineOptions,
    closing: &'p AtomicBool,
    stats: &'p EngineStats,
    cache: FeatureCache,
    running: Vec<Running<'p>>,
}

impl<'p> Executor<'p> {
    pub fn new(
        pipeline: &'p Pipeline,
        options: EngineOptions,
        closing: &'p AtomicBool,
        stats: &'p EngineStats,
    ) -> Self {
        let cache = FeatureCache::new(options.feature_cache_bytes);
        Self { pipeline, options, closing, stats, cache, running: Vec::new() }
    }

    /// Requests in the decoding batch.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Whether an interactive request is in the decoding batch.
    pub fn interactive_running(&self) -> bool {
        self.running.iter().any(|run| run.job.request.priority == Priority::Interactive)
    }

    /// Rows and key/value positions the running requests hold.
    pub fn rows_and_tokens(&self) -> (usize, usize) {
        self.running.iter().fold((0, 0), |(r, t), run| (r + run.search.rows(), t + run.kv_tokens))
    }

    /// Reports the feature cache's counters and size.
    pub fn report_cache(&self) {
        self.stats.cache(self.cache.stats(), self.cache.bytes());
    }

    /// Validates a new request and sets up its search: the request waiting to run.
    pub fn prepare(&self, job: Job) -> std::result::Result<Waiting, (Box<Job>, GitcapError)> {
        let request = &job.request;
        let setup = || -> Result<(Search, Vec<i64>, usize)> {
            let config = self.pipeline.generation.with_options(&request.options);
            let prompt = self.pipeline.prompt_ids(request.question.as_deref())?;
            let search = Search::new(&config, &prompt)?;
            let frames = self.pipeline.frames_to_use(request.frames.len())?.len();
            let image_tokens = frames * self.pipeline.model.config.vision_config.tokens_per_image() as usize;
            // One copy of the image tokens' keys and values serves every row (KvCache).
            let kv_tokens = image_tokens + search.rows() * search.text_capacity();
            Ok((search, prompt, kv_tokens))
        };
        match setup() {
            Ok((search, prompt, kv_tokens)) => {
                Ok(Waiting { job, search, prompt, kv_tokens, vision_ms: 0.0, aged: false })
            }
            Err(e) => Err((Box::new(job), e)),
        }
    }

    /// Label scoring's first part: the frames' image tokens and the prompt.
    pub fn label_context(&self, frames: &[Frame], prompt: Option<&str>) -> Result<LabelContext> {
        self.pipeline.label_context(frames, prompt)
    }

    /// Scores one chunk of labels.
    pub fn score_labels(&self, context: &LabelContext, labels: &[String], first: usize) -> Result<Vec<LabelScore>> {
        self.pipeline.score_label_chunk(context, labels, first)
    }

    /// An uploaded frame's features, from the cache when the same pixels were seen before.
    pub fn encode_one(&mut self, frame: PreparedFrame) -> Result<EncodedFrame> {
        let key = frame.key;
        if let Some(features) = self.cache.frame(key) {
            return Ok(EncodedFrame { key, features });
        }
        let features = self.pipeline.encode_frame(&frame)?;
        self.stats.vision_pass(1);
        self.cache.insert_frame(key, &features);
        Ok(EncodedFrame { key, features })
    }

    /// Starts `batch`: vision tower (batched across requests, cached frames skipped), image
    /// prefill (batched across requests too, or a cached prefix), prompt, and the first token
    /// of each.
    pub fn admit(&mut self, batch: Vec<Waiting>) {
        let admitted = Instant::now();
        let frames = match self.vision(&batch) {
            Ok(frames) => frames,
            Err(e) => {
                let message = format!("vision tower: {e}");
                for waiting in batch {
                    let _ = waiting.job.events.send(EngineEvent::Failed(GitcapError::Internal(message.clone())));
                }
                return;
            }
        };
        let prefill_started = Instant::now();
        let batch_vision_ms = (prefill_started - admitted).as_secs_f64() * 1e3;
        let started = self.start(&batch, frames);
        for (waiting, started) in batch.into_iter().zip(started) {
            let (kv, frames_used, image_cached) = match started {
                Ok(started) => started,
                Err(e) => {
                    let _ = waiting.job.events.send(EngineEvent::Failed(e));
                    continue;
                }
            };
            let waited_ms = admitted.saturating_duration_since(waiting.job.enqueued).as_secs_f64() * 1e3;
            let queue_ms = (waited_ms - waiting.vision_ms).max(0.0);
            let vision_ms = batch_vision_ms + waiting.vision_ms;
            let running = Running {
                image_tokens: kv.image_tokens() as usize,
                job: waiting.job,
                search: waiting.search,
                kv,
                stream: TextStream::new(&self.pipeline.tokenizer),
                stream_error: None,
                prompt_tokens: waiting.prompt.len(),
                frames_used,
                image_cached,
                queue_ms,
                vision_ms,
                prefill_started,
                decode_started: prefill_started,
                kv_tokens: waiting.kv_tokens,
            };
            self.prefill_prompt(running);
        }
    }

    /// Begins `waiting`'s start with its vision tower, to run in parts between decoding steps
    /// (an interruptible batch start); gives it back when it needs no vision tower (a cached
    /// prefix, frames cached or encoded ahead) or cannot run (admitting it reports why).
    pub fn begin_start(&mut self, waiting: Waiting) -> std::result::Result<Starting, Box<Waiting>> {
        let began = Instant::now();
        let frames = &waiting.job.request.frames;
        let Ok(used) = self.pipeline.frames_to_use(frames.len()) else { return Err(Box::new(waiting)) };
        let keys: Vec<ContentKey> = used.iter().map(|&i| frames[i].key()).collect();
        if self.cache.has_prefix(ContentKey::of_frames(&keys)) {
            return Err(Box::new(waiting));
        }
        // At most `max_vision_batch` frames a pass, as in `vision`; admitting the request
        // encodes any others.
        let mut to_encode: Vec<(ContentKey, Tensor)> = Vec::new();
        for (&i, &key) in used.iter().zip(&keys) {
            if to_encode.len() == self.options.max_vision_batch.max(1) {
                break;
            }
            if let Frame::Pixels(frame) = &frames[i] {
                if !self.cache.has_frame(key) && to_encode.iter().all(|(k, _)| *k != key) {
                    to_encode.push((key, frame.tensor()));
                }
            }
        }
        if to_encode.is_empty() {
            return Err(Box::new(waiting));
        }
        let pixels = Tensor::stack(&to_encode.iter().map(|(_, p)| p.shallow_clone()).collect::<Vec<_>>(), 0);
        match self.pipeline.model.begin_encoding(&pixels) {
            Ok(progress) => {
                let keys = to_encode.into_iter().map(|(key, _)| key).collect();
                Ok(Starting { waiting, keys, progress, spent: began.elapsed() })
            }
            Err(_) => Err(Box::new(waiting)),
        }
    }

    /// Runs the next part of a start's vision tower (a layer); whether the tower is done.
    pub fn continue_start(&mut self, starting: &mut Starting) -> bool {
        let began = Instant::now();
        let done = self.pipeline.model.encode_layers(&mut starting.progress, 1);
        starting.spent += began.elapsed();
        done
    }

    /// A start whose vision tower is done: its request, with those frames encoded (and cached),
    /// ready to be admitted.
    pub fn finish_start(&mut self, starting: Starting) -> Waiting {
        let began = Instant::now();
        let Starting { mut waiting, keys, progress, spent } = starting;
        let encoded = self.pipeline.model.finish_encoding(progress);
        self.stats.vision_pass(keys.len());
        for (row, key) in keys.into_iter().enumerate() {
            let features = encoded.narrow(0, row as i64, 1);
            self.cache.insert_frame(key, &features);
            for frame in waiting.job.request.frames.iter_mut().filter(|f| f.key() == key) {
                *frame = Frame::Encoded(EncodedFrame { key, features: features.shallow_clone() });
            }
        }
        self.report_cache();
        waiting.vision_ms += (spent + began.elapsed()).as_secs_f64() * 1e3;
        waiting
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
        let keys: Vec<ContentKey> = frames.iter().map(|f| f.key()).collect();
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
                            to_encode.push((*key, frame.tensor()));
                        }
                        destinations.entry(*key).or_default().push((request, slot));
                        None
                    }
                },
            });
        }
        Ok(UsedFrames { key, count: used.len(), prefix: None, features })
    }

    /// Each request's key/value cache with its image tokens in place, the frames it used, and
    /// whether those image tokens came from the cache: from a cached prefix, or by the image prefill, run once for every distinct frame
    /// sequence and on requests with as many image tokens together (up to
    /// [`PREFILL_TOKENS_PER_PASS`] tokens a pass).
    fn start(&mut self, batch: &[Waiting], frames: Vec<Result<UsedFrames>>) -> Vec<Result<(KvCache, usize, bool)>> {
        let model = &self.pipeline.model;
        let mut started: Vec<Option<Result<(KvCache, usize, bool)>>> = (0..batch.len()).map(|_| None).collect();
        // Requests to prefill, the first of each frame sequence: (request, key, image tokens,
        // frames used).
        let mut to_prefill: Vec<(usize, ContentKey, Tensor, usize)> = Vec::new();
        // Later requests on a frame sequence being prefilled: (request, the first one).
        let mut same_frames: Vec<(usize, usize)> = Vec::new();
        for (request, (waiting, frames)) in batch.iter().zip(frames).enumerate() {
            let (rows, capacity) = (waiting.search.rows() as i64, waiting.search.text_capacity() as i64);
            let frames = match frames.and_then(|f| model.check_text_capacity(capacity).map(|()| f)) {
                Ok(frames) => frames,
                Err(e) => {
                    started[request] = Some(Err(e));
                    continue;
                }
            };
            if let Some(prefix) = &frames.prefix {
                let kv = model.cache_from_prefix(prefix, rows, capacity);
                started[request] = Some(kv.map(|kv| (kv, frames.count, true)));
            } else if let Some(&(first, ..)) = to_prefill.iter().find(|(_, key, ..)| *key == frames.key) {
                same_frames.push((request, first));
            } else {
                let (key, count) = (frames.key, frames.count);
                let features = frames
                    .features
                    .into_iter()
                    .map(|f| f.ok_or_else(|| GitcapError::Internal("a frame was not encoded".into())))
                    .collect::<Result<Vec<_>>>();
                match features.and_then(|features| model.image_tokens(&Tensor::cat(&features, 0))) {
                    Ok(image_tokens) => to_prefill.push((request, key, image_tokens, count)),
                    Err(e) => started[request] = Some(Err(e)),
                }
            }
        }
        // Requests with as many image tokens together, in order of arrival.
        let mut groups: Vec<Vec<&(usize, ContentKey, Tensor, usize)>> = Vec::new();
        for item in &to_prefill {
            let tokens = item.2.size()[1];
            match groups.iter_mut().find(|group| group[0].2.size()[1] == tokens) {
                Some(group) => group.push(item),
                None => groups.push(vec![item]),
            }
        }
        for group in groups {
            let per_pass = (PREFILL_TOKENS_PER_PASS / group[0].2.size()[1].max(1)).max(1) as usize;
            for pass in group.chunks(per_pass) {
                let tokens = Tensor::cat(&pass.iter().map(|item| item.2.shallow_clone()).collect::<Vec<_>>(), 0);
                let shapes: Vec<(i64, i64)> = pass
                    .iter()
                    .map(|item| (batch[item.0].search.rows() as i64, batch[item.0].search.text_capacity() as i64))
                    .collect();
                match model.prefill_images(&tokens, &shapes) {
                    Ok(caches) => {
                        self.stats.prefill_pass(pass.len());
                        for (&&(request, key, _, count), kv) in pass.iter().zip(caches) {
                            if self.options.feature_cache_bytes > 0 {
                                self.cache.insert_prefix(key, kv.image_prefix());
                            }
                            started[request] = Some(Ok((kv, count, false)));
                        }
                    }
                    Err(e) => {
                        for item in pass {
                            started[item.0] = Some(Err(GitcapError::Internal(format!("image prefill: {e}"))));
                        }
                    }
                }
            }
        }
        for (request, first) in same_frames {
            let (rows, capacity) = (batch[request].search.rows() as i64, batch[request].search.text_capacity() as i64);
            started[request] = Some(match &started[first] {
                Some(Ok((kv, count, _))) => {
                    model.cache_from_prefix(&kv.image_prefix(), rows, capacity).map(|kv| (kv, *count, false))
                }
                _ => Err(GitcapError::Internal("image prefill failed for these frames".into())),
            });
        }
        started.into_iter().map(|s| s.unwrap_or_else(|| Err(GitcapError::Internal("not started".into())))).collect()
    }

    /// Starts decoding a newly started request. A prompt of more than one token (a question)
    /// is fed on its own here, which yields the first token; a single-token prompt (BOS: a
    /// caption) joins the running batch as it is, and the next step feeds it with the others.
    fn prefill_prompt(&mut self, mut running: Running<'p>) {
        let admitted = EngineEvent::Admitted {
            prompt_tokens: running.prompt_tokens,
            image_tokens: running.image_tokens,
            image_cached: running.image_cached,
        };
        let _ = running.job.events.send(admitted);
        let input = running.search.next_input();
        if input.size()[1] == 1 {
            running.decode_started = Instant::now();
            self.running.push(running);
            return;
        }
        let logits = self.pipeline.model.decode_last(&input, &mut running.kv);
        running.decode_started = Instant::now();
        match advance(&mut running, &logits.to_device(Device::Cpu), self.closing) {
            Some(event) => drop(running.job.events.send(event)),
            None => self.running.push(running),
        }
    }

    /// One decoding step for the running requests together: all of them, or while interactive
    /// requests run, those and `batch_rows_while_interactive` batch rows (the oldest batch
    /// request always). The batch requests left out keep their caches and wait; one whose caller
    /// left, whose deadline passed or whose model is unloading leaves the batch.
    pub fn step(&mut self) {
        let stepping = self.stepping();
        let inputs: Vec<Tensor> =
            self.running.iter().zip(&stepping).filter(|(_, s)| **s).map(|(r, _)| r.search.next_input()).collect();
        let rows = self.running.iter().zip(&stepping).filter(|(_, s)| **s).map(|(r, _)| r.search.rows()).sum();
        self.stats.decode_step(rows);
        let logits = {
            let mut caches: Vec<&mut KvCache> =
                self.running.iter_mut().zip(&stepping).filter(|(_, s)| **s).map(|(r, _)| &mut r.kv).collect();
            self.pipeline.model.decode_step(&inputs, &mut caches).to_device(Device::Cpu)
        };

        let mut row = 0;
        let mut still_running = Vec::with_capacity(self.running.len());
        for (mut running, stepped) in self.running.drain(..).zip(stepping) {
            let event = if stepped {
                let rows = running.search.rows() as i64;
                let event = advance(&mut running, &logits.narrow(0, row, rows), self.closing);
                row += rows;
                event
            } else {
                held(&running, self.closing)
            };
            match event {
                Some(event) => drop(running.job.events.send(event)),
                None => still_running.push(running),
            }
        }
        self.running = still_running;
    }

    /// Which running requests this step advances.
    fn stepping(&self) -> Vec<bool> {
        if !self.interactive_running() {
            return vec![true; self.running.len()];
        }
        let (mut batch_rows, mut first) = (0, true);
        let allowed = self.options.batch_rows_while_interactive;
        self.running
            .iter()
            .map(|run| {
                if run.job.request.priority == Priority::Interactive {
                    return true;
                }
                let rows = run.search.rows();
                let step = first || batch_rows + rows <= allowed;
                first = false;
                if step {
                    batch_rows += rows;
                }
                step
            })
            .collect()
    }
}

/// The final event of a request that a step left out, if it has ended meanwhile.
fn held(running: &Running, closing: &AtomicBool) -> Option<EngineEvent> {
    if closing.load(Ordering::Relaxed) {
        return Some(EngineEvent::Failed(unloaded()));
    }
    if running.job.deadline.passed() {
        return Some(EngineEvent::Failed(GitcapError::DeadlineExceeded(
            "while waiting for interactive requests to finish".into(),
        )));
    }
    // A caller that went away gets no event; the request just leaves.
    running.job.events.is_closed().then(|| EngineEvent::Failed(GitcapError::Cancelled))
}

/// A batch request whose frames are partway through the vision tower, run a layer at a time
/// between decoding steps so that an interactive request arriving meanwhile waits for one
/// layer, not a whole tower (see [`super::scheduler`]).
pub(super) struct Starting {
    pub waiting: Waiting,
    /// The content keys of the frames being encoded, in the pass's order.
    keys: Vec<ContentKey>,
    progress: VisionProgress,
    /// Time spent on it so far.
    spent: std::time::Duration,
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
        if job.deadline.passed() {
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
        image_cached: running.image_cached,
        timings: Timings {
            vision_ms: running.vision_ms,
            prefill_ms: (running.decode_started - running.prefill_started).as_secs_f64() * 1e3,
            decode_ms: running.decode_started.elapsed().as_secs_f64() * 1e3,
        },
    };
    EngineEvent::Done { output, queue_ms: running.queue_ms }
}

pub(super) fn unloaded() -> GitcapError {
    GitcapError::Unavailable("the model was unloaded before the request finished".into())
}
