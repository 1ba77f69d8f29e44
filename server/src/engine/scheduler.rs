//! A model's thread: the loop that takes work off its queue, asks the policy what starts next,
//! and has the executor run it.
//!
//! Each turn: new work is taken in (requests validated into the policy's queues; frames to
//! encode and labels to score into the side queue); requests whose caller left, whose deadline
//! passed or whose model is unloading are answered and dropped; one unit of side work runs (one
//! frame, or one chunk of labels), so that it never holds up running decodes for longer than
//! that; the policy admits what fits; and every running request advances one token.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::executor::{unloaded, Executor, Starting};
use super::frames::{EncodedFrame, Frame, PreparedFrame};
use super::messages::{Command, EngineEvent, Job, LabelScore, Priority};
use super::options::EngineOptions;
use super::pipeline::{LabelContext, Pipeline};
use super::policy::{Admission, Budgets, Waiting};
use super::queue::{QueueCounts, QueueSlot};
use super::stats::EngineStats;
use crate::error::{GitcapError, Result};

/// Work that is not decoding, run one unit per turn.
enum SideWork {
    Encode { frame: PreparedFrame, reply: oneshot::Sender<Result<EncodedFrame>>, slot: QueueSlot },
    Labels(LabelWork),
}

/// Label scoring in units: the frames' image tokens first, then the labels in chunks of at most
/// `max_batch_size` rows.
struct LabelWork {
    frames: Vec<Frame>,
    prompt: Option<String>,
    labels: Vec<String>,
    context: Option<LabelContext>,
    scores: Vec<LabelScore>,
    reply: oneshot::Sender<Result<Vec<LabelScore>>>,
    slot: QueueSlot,
}

pub(super) struct Scheduler<'p> {
    executor: Executor<'p>,
    admission: Admission,
    /// A batch request whose vision tower runs a layer at a time between steps.
    starting: Option<Starting>,
    side: VecDeque<SideWork>,
    budgets: Budgets,
    chunk: usize,
    closing: &'p AtomicBool,
    stats: &'p EngineStats,
    queued: &'p QueueCounts,
}

impl<'p> Scheduler<'p> {
    pub fn new(
        pipeline: &'p Pipeline,
        options: EngineOptions,
        closing: &'p AtomicBool,
        stats: &'p EngineStats,
        queued: &'p QueueCounts,
    ) -> Self {
        let budgets = Budgets {
            max_batch_size: options.max_batch_size,
            max_batch_tokens: options.max_batch_tokens,
            interactive_rows: options.interactive_rows,
            batch_max_wait: options.batch_max_wait,
            batch_admit_every_steps: options.batch_admit_every_steps,
            batch_starts_per_step: options.batch_starts_per_step,
        };
        Self {
            executor: Executor::new(pipeline, options, closing, stats),
            admission: Admission::default(),
            starting: None,
            side: VecDeque::new(),
            budgets,
            chunk: options.max_batch_size.max(1),
            closing,
            stats,
            queued,
        }
    }

    /// Serves `commands` until every sender is gone and the last request has finished.
    pub fn run(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) {
        loop {
            let idle = self.executor.running() == 0 && self.starting.is_none();
            if idle && self.admission.is_empty() && self.side.is_empty() {
                self.report();
                let Some(command) = commands.blocking_recv() else { break };
                self.accept(command);
            }
            while let Ok(command) = commands.try_recv() {
                self.accept(command);
            }
            self.drop_stale();
            self.side_unit();
            self.admit();
            self.advance_start(commands);
            if self.executor.running() > 0 {
                self.executor.step();
                self.admission.stepped();
            }
            self.report();
        }
    }

    /// Starts what the policy admits: interactive requests (and aged batch ones) at once; a batch
    /// request whose frames need the vision tower begins an interruptible start (one at a time),
    /// others at once.
    fn admit(&mut self) {
        let (mut rows, mut tokens) = self.executor.rows_and_tokens();
        if let Some(starting) = &self.starting {
            rows += starting.waiting.search.rows();
            tokens += starting.waiting.kv_tokens;
        }
        let interactive = self.executor.interactive_running();
        let starting = self.starting.is_some();
        let batch = self.admission.next_batch(rows, tokens, interactive, starting, &self.budgets, Instant::now());
        let mut now = Vec::with_capacity(batch.len());
        for mut waiting in batch {
            waiting.job.slot.release();
            let batch = waiting.job.request.priority == Priority::Batch && !waiting.aged;
            if batch && self.starting.is_none() {
                match self.executor.begin_start(waiting) {
                    Ok(starting) => self.starting = Some(starting),
                    Err(waiting) => now.push(*waiting),
                }
            } else {
                now.push(waiting);
            }
        }
        if !now.is_empty() {
            self.executor.admit(now);
            self.executor.report_cache();
        }
    }

    /// Runs the batch start under way, a layer at a time, until its vision tower is done (then
    /// it is admitted) or interactive work arrives. While interactive requests run, it
    /// advances a layer only on the turns the policy gives batch work.
    fn advance_start(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) {
        let Some(mut starting) = self.starting.take() else { return };
        if !self.admission.batch_turn(self.executor.interactive_running(), &self.budgets) {
            self.starting = Some(starting);
            return;
        }
        loop {
            if self.executor.continue_start(&mut starting) {
                let waiting = self.executor.finish_start(starting);
                self.executor.admit(vec![waiting]);
                self.executor.report_cache();
                return;
            }
            while let Ok(command) = commands.try_recv() {
                self.accept(command);
            }
            // Interactive work (a request, or a frame of an upload to encode) goes first.
            if self.admission.interactive_waiting() || !self.side.is_empty() || self.executor.interactive_running() {
                break;
            }
        }
        self.starting = Some(starting);
    }

    /// Reports what runs and what waits; waiting is counted from the queue's own slots, so the
    /// gauge shows everything that holds a place (work still in the channel included), which
    /// is what turns callers away when the queue is full.
    fn report(&self) {
        self.stats.running(self.executor.running());
        let (interactive, batch) = self.queued.by_priority();
        self.stats.queue_depth(interactive, batch);
        let (rows, tokens) = self.executor.rows_and_tokens();
        self.stats.batch_utilization(self.budgets.utilization(rows, tokens));
    }

    fn accept(&mut self, command: Command) {
        match command {
            Command::Generate(job) => self.take(job),
            Command::Encode { frame, reply, slot } => self.side.push_back(SideWork::Encode { frame, reply, slot }),
            Command::ScoreLabels { frames, prompt, labels, reply, slot } => {
                let work = LabelWork { frames, prompt, labels, context: None, scores: vec![], reply, slot };
                self.side.push_back(SideWork::Labels(work));
            }
        }
    }

    /// Validates a new request into the policy's queues; one that cannot run is answered now.
    fn take(&mut self, job: Job) {
        if job.events.is_closed() {
            return;
        }
        if let Some(error) = refusal(self.closing, &job) {
            self.fail(job, error);
            return;
        }
        match self.executor.prepare(job) {
            Ok(waiting) => self.admission.push(waiting),
            Err((job, error)) => self.fail(*job, error),
        }
    }

    fn fail(&self, job: Job, error: GitcapError) {
        let _ = job.events.send(EngineEvent::Failed(error));
    }

    /// Drops waiting requests whose caller went away, whose deadline passed, or whose model is
    /// being unloaded.
    fn drop_stale(&mut self) {
        let closing = self.closing;
        if let Some(starting) = self.starting.take() {
            let job = &starting.waiting.job;
            match refusal(closing, job) {
                Some(error) => self.fail(starting.waiting.job, error),
                None if job.events.is_closed() => {}
                None => self.starting = Some(starting),
            }
        }
        let dropped =
            self.admission.drop_where(|w: &Waiting| w.job.events.is_closed() || refusal(closing, &w.job).is_some());
        for waiting in dropped {
            if let Some(error) = refusal(closing, &waiting.job) {
                self.fail(waiting.job, error);
            }
        }
    }

    /// Runs one unit of side work, if any waits.
    fn side_unit(&mut self) {
        let Some(work) = self.side.pop_front() else { return };
        match work {
            SideWork::Encode { frame, reply, slot } => {
                drop(slot);
                if !reply.is_closed() {
                    let _ = reply.send(self.executor.encode_one(frame));
                    self.executor.report_cache();
                }
            }
            SideWork::Labels(mut work) => {
                if work.reply.is_closed() {
                    return;
                }
                match self.label_unit(&mut work) {
                    Ok(false) => self.side.push_front(SideWork::Labels(work)),
                    Ok(true) => {
                        work.slot.release();
                        let _ = work.reply.send(Ok(std::mem::take(&mut work.scores)));
                    }
                    Err(error) => {
                        work.slot.release();
                        let _ = work.reply.send(Err(error));
                    }
                }
            }
        }
    }

    /// One unit of label scoring; whether the request is complete.
    fn label_unit(&mut self, work: &mut LabelWork) -> Result<bool> {
        let Some(context) = &work.context else {
            work.context = Some(self.executor.label_context(&work.frames, work.prompt.as_deref())?);
            return Ok(work.labels.is_empty());
        };
        let first = work.scores.len();
        let chunk = &work.labels[first..(first + self.chunk).min(work.labels.len())];
        let scores = self.executor.score_labels(context, chunk, first)?;
        work.scores.extend(scores);
        Ok(work.scores.len() == work.labels.len())
    }
}

/// Why a request may not start now, if it may not.
fn refusal(closing: &AtomicBool, job: &Job) -> Option<GitcapError> {
    if closing.load(Ordering::Relaxed) {
        return Some(unloaded());
    }
    if job.deadline.passed() {
        let queue_ms = job.enqueued.elapsed().as_secs_f64() * 1e3;
        return Some(GitcapError::DeadlineExceeded(format!("while waiting in the queue ({queue_ms:.0} ms)")));
    }
    None
}
