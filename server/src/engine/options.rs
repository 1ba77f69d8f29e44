//! How a model's thread queues, batches and caches: the options every part of the engine reads.

use std::time::Duration;

use crate::model::weights::Storage;

/// How a model's thread queues, batches and caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Interactive requests (and frames to encode, label sets to score) allowed to wait; beyond
    /// that callers get RESOURCE_EXHAUSTED at once.
    pub queue_capacity: usize,
    /// Batch-priority requests allowed to wait, counted apart from the interactive ones.
    pub batch_queue_capacity: usize,
    /// Decoder rows (sequences; a beam-search request takes one per beam) decoded together.
    pub max_batch_size: usize,
    /// Key/value positions the running requests may hold together (rows × (image tokens +
    /// text capacity)); one request always runs, however large.
    pub max_batch_tokens: usize,
    /// Frames per vision-tower pass.
    pub max_vision_batch: usize,
    /// Rows of `max_batch_size` batch requests leave free for interactive ones.
    pub interactive_rows: usize,
    /// A batch request waiting this long is admitted like an interactive one.
    pub batch_max_wait: Duration,
    /// While interactive requests run, batch requests start at most once every this many
    /// decoding steps (1 = whenever rows free up; 0 = not while they run).
    pub batch_admit_every_steps: usize,
    /// Batch requests started between two decoding steps, at most (each start's vision tower
    /// and image prefill hold up every running request).
    pub batch_starts_per_step: usize,
    /// While interactive requests run, the batch rows that keep decoding beside them (the
    /// oldest batch request always does); the others keep their caches and wait.
    pub batch_rows_while_interactive: usize,
    /// Bytes of vision features and image keys/values kept between requests (0 = none).
    pub feature_cache_bytes: usize,
    /// Whether a loaded checkpoint's tensors may stay views of its mapped file.
    pub weights: Storage,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 64,
            batch_queue_capacity: 1024,
            max_batch_size: 16,
            max_batch_tokens: 131_072,
            max_vision_batch: 8,
            interactive_rows: 4,
            batch_max_wait: Duration::from_secs(10),
            batch_admit_every_steps: 0,
            batch_starts_per_step: 1,
            batch_rows_while_interactive: 4,
            feature_cache_bytes: 512 << 20,
            weights: Storage::Mapped,
        }
    }
}
