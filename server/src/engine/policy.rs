//! Admission policy: which waiting requests start next, apart from how they run.
//!
//! Requests wait in two queues, interactive and batch, each first come, first served. Between
//! decoding steps the policy admits what fits the batch's row and key/value budgets:
//! interactive requests first, and up to all `max_batch_size` rows; batch requests only up to
//! `max_batch_size - interactive_rows`, so an interactive request finds rows free and starts at
//! the next step instead of waiting for batch work to end. A batch request that has waited
//! `batch_max_wait` counts as interactive, so batch work is never starved. While interactive
//! requests run, batch requests start at most once every `batch_admit_every_steps` steps: each
//! start runs the vision tower and image prefill between two steps, which every running request
//! waits through. One request always runs when nothing else does, however large.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::messages::{Job, Priority};
use crate::model::generation::Search;

/// A request received and validated, its search set up, not yet running.
pub(super) struct Waiting {
    pub job: Job,
    pub search: Search,
    pub prompt: Vec<i64>,
    /// Key/value positions it will hold: rows × (image tokens + text capacity).
    pub kv_tokens: usize,
}

/// The budgets the policy admits within.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budgets {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    /// Rows batch requests leave free for interactive ones.
    pub interactive_rows: usize,
    pub batch_max_wait: Duration,
    /// While interactive requests run, the fewest decoding steps between two batch starts.
    pub batch_admit_every_steps: usize,
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

    /// The requests to start now, in order, given the rows and key/value positions the running
    /// requests hold and whether an interactive one is among them.
    pub fn next_batch(
        &mut self,
        rows: usize,
        tokens: usize,
        interactive_running: bool,
        budgets: &Budgets,
        now: Instant,
    ) -> Vec<Waiting> {
        // Batch requests that waited too long join the interactive ones, in arrival order.
        while self.batch.front().is_some_and(|w| now.duration_since(w.job.enqueued) >= budgets.batch_max_wait) {
            let aged = self.batch.pop_front().expect("a front");
            let at = self.interactive.partition_point(|w| w.job.enqueued <= aged.job.enqueued);
            self.interactive.insert(at, aged);
        }
        let batch_rows = budgets.max_batch_size.saturating_sub(budgets.interactive_rows).max(1);
        let (mut rows, mut tokens) = (rows, tokens);
        let mut admitted = Vec::new();
        if !take(&mut self.interactive, budgets.max_batch_size, budgets, &mut rows, &mut tokens, &mut admitted) {
            return admitted;
        }
        // Batch starts are paced while interactive requests run (or start now).
        let interactive = interactive_running || !admitted.is_empty();
        let paced = self.steps_since_batch.is_some_and(|steps| steps < budgets.batch_admit_every_steps.max(1));
        if interactive && paced {
            return admitted;
        }
        let before = admitted.len();
        take(&mut self.batch, batch_rows, budgets, &mut rows, &mut tokens, &mut admitted);
        if admitted.len() > before {
            self.steps_since_batch = Some(0);
        }
        admitted
    }
}

/// Moves requests from the front of `queue` into `admitted` while they fit `row_limit` rows and
/// the key/value budget (or nothing runs at all); false when one did not fit.
fn take(
    queue: &mut VecDeque<Waiting>,
    row_limit: usize,
    budgets: &Budgets,
    rows: &mut usize,
    tokens: &mut usize,
    admitted: &mut Vec<Waiting>,
) -> bool {
    while let Some(next) = queue.front() {
        let fits = *rows + next.search.rows() <= row_limit && *tokens + next.kv_tokens <= budgets.max_batch_tokens;
        let nothing_runs = *rows == 0 && admitted.is_empty();
        if !fits && !nothing_runs {
            return false;
        }
        *rows += next.search.rows();
        *tokens += next.kv_tokens;
        admitted.extend(queue.pop_front());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_is_the_fuller_bound_within_0_and_1() {
        let budgets = Budgets {
            max_batch_size: 16,
            max_batch_tokens: 1000,
            interactive_rows: 4,
            batch_max_wait: Duration::from_secs(1),
            batch_admit_every_steps: 8,
        };
        assert_eq!(budgets.utilization(0, 0), 0.0);
        assert_eq!(budgets.utilization(4, 100), 0.25);
        assert_eq!(budgets.utilization(2, 500), 0.5);
        assert_eq!(budgets.utilization(1, 5000), 1.0, "one request over the token budget runs alone");
    }
}
