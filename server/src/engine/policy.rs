//! Admission policy: which waiting requests start next, apart from how they run.
//!
//! Requests wait in two queues, interactive and batch, each first come, first served. Between
//! decoding steps the policy admits what fits the batch's row and key/value budgets:
//! interactive requests first, and up to all `max_batch_size` rows; batch requests only up to
//! `max_batch_size - interactive_rows`, so an interactive request finds rows free and starts at
//! the next step instead of waiting for batch work to end.
//!
//! A start runs the vision tower and image prefill between two steps, and every running request
//! waits through it, so batch starts are kept short and out of interactive work's way: at most
//! `batch_starts_per_step` batch requests start between two steps, and while interactive
//! requests run, batch requests start at most once every `batch_admit_every_steps` steps (0:
//! not at all). Batch work is never starved: when no batch request has started for
//! `batch_max_wait`, the oldest one that waited that long is admitted like an interactive one.
//! One request always runs when nothing else does, however large.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::messages::{Job, Priority};
use crate::model::generation::Search;

/// A request received and validated, its search set up, not yet running.
pub(super) struct Waiting {
    pub job: Job,
    pub search: Search,
    pub prompt: Vec<i64>,
    /// Key/value positions it will hold: image tokens (one copy for all its rows) + rows × text
    /// capacity.
    pub kv_tokens: usize,
    /// Milliseconds its frames spent in the vision tower before it was admitted (a start in
    /// parts, see [`super::executor::Starting`]).
    pub vision_ms: f64,
    /// A batch request the starvation guard admits like an interactive one.
    pub aged: bool,
}

/// The budgets the policy admits within.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budgets {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    /// Rows batch requests leave free for interactive ones.
    pub interactive_rows: usize,
    pub batch_max_wait: Duration,
    /// While interactive requests run, the fewest decoding steps between two batch starts
    /// (0: none while they run).
    pub batch_admit_every_steps: usize,
    /// Batch requests started between two decoding steps, at most.
    pub batch_starts_per_step: usize,
}

impl Budgets {
    /// How full the decoding batch is, 0 to 1: the larger of its two bounds' shares, since
    /// either one turns the next request away. (A request larger than a whole budget runs
    /// alone, so the shares may pass 1; they are clamped.)
    pub fn utilization(&self, rows: usize, tokens: usize) -> f64 {
        let share = |used: usize, limit: usize| if limit == 0 { 1.0 } else { used as f64 / limit as f64 };
        share(rows, self.max_batch_size).max(share(tokens, self.max_batch_tokens)).min(1.0)
    }
}

#[derive(Default)]
pub(super) struct Admission {
    interactive: VecDeque<Waiting>,
    batch: VecDeque<Waiting>,
    /// Decoding steps since batch requests last started (`None`: not since the start).
    steps_since_batch: Option<usize>,
    /// When batch requests last started (`None`: not since the start).
    last_batch_start: Option<Instant>,
}

impl Admission {
    pub fn push(&mut self, waiting: Waiting) {
        match waiting.job.request.priority {
            Priority::Interactive => self.interactive.push_back(waiting),
            Priority::Batch => self.batch.push_back(waiting),
        }
    }

    pub fn len(&self) -> usize {
        self.interactive.len() + self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts a decoding step.
    pub fn stepped(&mut self) {
        if let Some(steps) = &mut self.steps_since_batch {
            *steps += 1;
        }
    }

    /// Takes out the waiting requests `drop` says to drop (it answers them).
    pub fn drop_where(&mut self, mut drop: impl FnMut(&Waiting) -> bool) -> Vec<Waiting> {
        let mut dropped = Vec::new();
        for queue in [&mut self.interactive, &mut self.batch] {
            let (gone, kept): (VecDeque<Waiting>, VecDeque<Waiting>) =
                std::mem::take(queue).into_iter().partition(&mut drop);
            *queue = kept;
            dropped.extend(gone);
        }
        dropped
    }

    /// Interactive requests waiting to start.
    pub fn interactive_waiting(&self) -> bool {
        !self.interactive.is_empty()
    }

    /// Whether batch work (a part of a batch start) may run this turn: always while no
    /// interactive request runs, else once every `batch_admit_every_steps` steps (0: never).
    pub fn batch_turn(&mut self, interactive_running: bool, budgets: &Budgets) -> bool {
        if !interactive_running {
            return true;
        }
        let every = budgets.batch_admit_every_steps;
        let due = every != 0 && self.steps_since_batch.is_none_or(|steps| steps >= every);
        if due {
            self.steps_since_batch = Some(0);
        }
        due
    }

    /// The requests to start now, in order, given the rows and key/value positions the running
    /// (and starting) requests hold, whether an interactive one is among them, and whether a
    /// batch start is under way (then no other batch request starts).
    pub fn next_batch(
        &mut self,
        rows: usize,
        tokens: usize,
        interactive_running: bool,
        batch_starting: bool,
        budgets: &Budgets,
        now: Instant,
    ) -> Vec<Waiting> {
        // Starvation guard: when no batch request has started for `batch_max_wait`, the oldest
        // one that waited that long joins the interactive ones, in arrival order. One at a time,
        // so that a deep batch queue does not turn into interactive work wholesale.
        let batch_stalled = self.last_batch_start.is_none_or(|at| now.duration_since(at) >= budgets.batch_max_wait);
        if batch_stalled
            && self.batch.front().is_some_and(|w| now.duration_since(w.job.enqueued) >= budgets.batch_max_wait)
        {
            let mut aged = self.batch.pop_front().expect("a front");
            aged.aged = true;
            let at = self.interactive.partition_point(|w| w.job.enqueued <= aged.job.enqueued);
            self.interactive.insert(at, aged);
            self.last_batch_start = Some(now);
        }
        let batch_rows = budgets.max_batch_size.saturating_sub(budgets.interactive_rows).max(1);
        let (mut rows, mut tokens) = (rows, tokens);
        let mut admitted = Vec::new();
        if !take(
            &mut self.interactive,
            budgets.max_batch_size,
            usize::MAX,
            budgets,
            &mut rows,
            &mut tokens,
            &mut admitted,
        ) {
            return admitted;
        }
        // Batch starts are paced while interactive requests run (or start now).
        let interactive = interactive_running || !admitted.is_empty();
        let every = budgets.batch_admit_every_steps;
        let paced = every == 0 || self.steps_since_batch.is_some_and(|steps| steps < every);
        if (interactive && paced) || batch_starting {
            return admitted;
        }
        let before = admitted.len();
        let starts = budgets.batch_starts_per_step.max(1);
        take(&mut self.batch, batch_rows, starts, budgets, &mut rows, &mut tokens, &mut admitted);
        if admitted.len() > before {
            self.steps_since_batch = Some(0);
            self.last_batch_start = Some(now);
        }
        admitted
    }
}

/// Moves up to `count` requests from the front of `queue` into `admitted` while they fit
/// `row_limit` rows and the key/value budget (or nothing runs at all); false when one did not fit.
fn take(
    queue: &mut VecDeque<Waiting>,
    row_limit: usize,
    count: usize,
    budgets: &Budgets,
    rows: &mut usize,
    tokens: &mut usize,
    admitted: &mut Vec<Waiting>,
) -> bool {
    let mut taken = 0;
    while let Some(next) = queue.front() {
        if taken == count {
            return true;
        }
        let fits = *rows + next.search.rows() <= row_limit && *tokens + next.kv_tokens <= budgets.max_batch_tokens;
        let nothing_runs = *rows == 0 && admitted.is_empty();
        if !fits && !nothing_runs {
            return false;
        }
        *rows += next.search.rows();
        *tokens += next.kv_tokens;
        admitted.extend(queue.pop_front());
        taken += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::deadline::Deadline;
    use crate::engine::messages::InferenceRequest;
    use crate::engine::queue::{QueueCounts, QueueSlot, Waits};
    use crate::model::generation::GenerationConfig;

    fn budgets() -> Budgets {
        Budgets {
            max_batch_size: 16,
            max_batch_tokens: 1 << 20,
            interactive_rows: 4,
            batch_max_wait: Duration::from_millis(100),
            batch_admit_every_steps: 0,
            batch_starts_per_step: 1,
        }
    }

    /// A one-row request of `priority`, queued at `enqueued`.
    fn waiting(priority: Priority, enqueued: Instant) -> Waiting {
        let counts = Arc::new(QueueCounts::default());
        let request = InferenceRequest { frames: vec![], question: None, options: Default::default(), priority };
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        let slot = QueueSlot::take(&counts, Waits::Request(priority), 1).expect("a slot");
        let job = Job { request, deadline: Deadline::NONE, enqueued, events, slot };
        let search = Search::new(&GenerationConfig::default(), &[101]).expect("a search");
        Waiting { job, search, prompt: vec![101], kv_tokens: 10, vision_ms: 0.0, aged: false }
    }

    fn queued(priority: Priority, n: usize, enqueued: Instant) -> Admission {
        let mut admission = Admission::default();
        for _ in 0..n {
            admission.push(waiting(priority, enqueued));
        }
        admission
    }

    #[test]
    fn batch_requests_start_a_few_at_a_time() {
        let now = Instant::now();
        let mut admission = queued(Priority::Batch, 5, now);
        let budgets = Budgets { batch_starts_per_step: 2, ..budgets() };
        let starts: Vec<usize> =
            (0..4).map(|_| admission.next_batch(0, 0, false, false, &budgets, now).len()).collect();
        assert_eq!(starts, [2, 2, 1, 0]);
    }

    #[test]
    fn a_deep_batch_queue_ages_one_request_at_a_time() {
        // Every queued batch request has waited past batch_max_wait while interactive work runs
        // (and batch starts are off while it does): only the oldest is admitted, then one more
        // each time batch_max_wait passes without a batch start.
        let now = Instant::now();
        let mut admission = queued(Priority::Batch, 5, now - Duration::from_secs(1));
        let budgets = budgets();
        assert_eq!(admission.next_batch(1, 10, true, false, &budgets, now).len(), 1);
        assert_eq!(admission.next_batch(2, 20, true, false, &budgets, now + Duration::from_millis(50)).len(), 0);
        assert_eq!(admission.next_batch(2, 20, true, false, &budgets, now + Duration::from_millis(100)).len(), 1);
        assert_eq!(admission.len(), 3);
    }

    #[test]
    fn pacing_zero_starts_no_batch_work_beside_interactive_work() {
        let now = Instant::now();
        let mut admission = queued(Priority::Batch, 2, now);
        let budgets = budgets();
        assert!(admission.next_batch(1, 10, true, false, &budgets, now).is_empty());
        assert_eq!(admission.next_batch(0, 0, false, false, &budgets, now).len(), 1, "once it is done");
    }

    #[test]
    fn utilization_is_the_fuller_bound_within_0_and_1() {
        let budgets = Budgets {
            max_batch_size: 16,
            max_batch_tokens: 1000,
            interactive_rows: 4,
            batch_max_wait: Duration::from_secs(1),
            batch_admit_every_steps: 8,
            batch_starts_per_step: 1,
        };
        assert_eq!(budgets.utilization(0, 0), 0.0);
        assert_eq!(budgets.utilization(4, 100), 0.25);
        assert_eq!(budgets.utilization(2, 500), 0.5);
        assert_eq!(budgets.utilization(1, 5000), 1.0, "one request over the token budget runs alone");
    }
}
