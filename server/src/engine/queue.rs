//! Work waiting for a model's thread, counted per priority so that handles can refuse what is
//! over capacity at once. Each piece of waiting work holds a [`QueueSlot`] that gives its place
//! back when the work starts or is dropped, whatever happens in between (a failed send, a
//! panic, a caller gone), so a slot can never leak and wedge the queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gitcap_protocol::Priority;

/// What is waiting, by kind.
#[derive(Default)]
pub(super) struct QueueCounts {
    interactive: AtomicUsize,
    batch: AtomicUsize,
    /// Frames to encode and label sets to score (they share the interactive capacity).
    side: AtomicUsize,
}

/// The kinds of waiting work counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waits {
    Request(Priority),
    Side,
}

impl QueueCounts {
    fn counter(&self, kind: Waits) -> &AtomicUsize {
        match kind {
            Waits::Request(Priority::Interactive) => &self.interactive,
            Waits::Request(Priority::Batch) => &self.batch,
            Waits::Side => &self.side,
        }
    }

    /// Interactive requests waiting.
    pub fn interactive(&self) -> usize {
        self.interactive.load(Ordering::Acquire)
    }

    /// What waits by priority: (interactive requests with side work, batch requests), each
    /// counter read once so that the two never overlap.
    pub fn by_priority(&self) -> (usize, usize) {
        let load = |c: &AtomicUsize| c.load(Ordering::Acquire);
        (load(&self.interactive) + load(&self.side), load(&self.batch))
    }

    /// Everything waiting.
    pub fn total(&self) -> usize {
        [&self.interactive, &self.batch, &self.side].iter().map(|c| c.load(Ordering::Acquire)).sum()
    }
}

/// One place in the queue, given back when released or dropped.
pub(super) struct QueueSlot {
    counts: Arc<QueueCounts>,
    kind: Waits,
    held: bool,
}

impl QueueSlot {
    /// Takes a place for `kind`, unless `capacity` of that kind are waiting already.
    pub fn take(counts: &Arc<QueueCounts>, kind: Waits, capacity: usize) -> Option<Self> {
        let counter = counts.counter(kind);
        let entered = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < capacity).then_some(n + 1));
        entered.ok().map(|_| Self { counts: counts.clone(), kind, held: true })
    }

    /// Gives the place back now (the work started); later calls and the drop do nothing.
    pub fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            self.counts.counter(self.kind).fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back_once() {
        let counts = Arc::new(QueueCounts::default());
        let kind = Waits::Request(Priority::Interactive);
        let mut first = QueueSlot::take(&counts, kind, 2).unwrap();
        let second = QueueSlot::take(&counts, kind, 2).unwrap();
        assert!(QueueSlot::take(&counts, kind, 2).is_none(), "a third place beyond a capacity of 2");
        assert!(QueueSlot::take(&counts, Waits::Request(Priority::Batch), 2).is_some(), "batch counts apart");
        first.release();
        first.release();
        drop(first);
        assert_eq!(counts.interactive(), 1);
        drop(second);
        assert_eq!(counts.total(), 0);
    }

    #[test]
    fn a_slot_held_across_a_panic_is_given_back() {
        let counts = Arc::new(QueueCounts::default());
        let held = counts.clone();
        let result = std::panic::catch_unwind(move || {
            let _slot = QueueSlot::take(&held, Waits::Side, 1).unwrap();
            panic!("after the slot was taken");
        });
        assert!(result.is_err());
        assert_eq!(counts.total(), 0);
    }
}
