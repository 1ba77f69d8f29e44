//! What a model's thread has done so far: decoding steps and their batch sizes, vision-tower
//! passes and feature-cache use. The thread updates it and the Prometheus metrics; tests and
//! the API read it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::feature_cache::CacheStats;
use crate::metrics;

#[derive(Debug, Default)]
pub struct EngineStats {
    /// The model's name and version, as metric labels.
    model: String,
    version: String,
    decode_steps: AtomicU64,
    decoded_rows: AtomicU64,
    max_rows: AtomicU64,
    vision_passes: AtomicU64,
    frames_encoded: AtomicU64,
    prefill_passes: AtomicU64,
    images_prefilled: AtomicU64,
    frame_hits: AtomicU64,
    frame_misses: AtomicU64,
    prefix_hits: AtomicU64,
    prefix_misses: AtomicU64,
    cache_bytes: AtomicU64,
}

/// A reading of [`EngineStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStatsSnapshot {
    /// Batched decoding steps run.
    pub decode_steps: u64,
    /// Rows (sequences) advanced, summed over steps.
    pub decoded_rows: u64,
    /// The most rows one step advanced.
    pub max_rows: u64,
    pub vision_passes: u64,
    pub frames_encoded: u64,
    /// Image prefill passes run, and the frame sequences they prefilled.
    pub prefill_passes: u64,
    pub images_prefilled: u64,
    pub cache: CacheStats,
    pub cache_bytes: u64,
}

impl EngineStats {
    pub fn new(model: &str, version: &str) -> Self {
        Self { model: model.into(), version: version.into(), ..Default::default() }
    }

    pub(super) fn decode_step(&self, rows: usize) {
        metrics::batch_size(&self.model, &self.version, rows);
        self.decode_steps.fetch_add(1, Relaxed);
        self.decoded_rows.fetch_add(rows as u64, Relaxed);
        self.max_rows.fetch_max(rows as u64, Relaxed);
    }

    pub(super) fn vision_pass(&self, frames: usize) {
        metrics::vision_batch_size(&self.model, &self.version, frames);
        self.vision_passes.fetch_add(1, Relaxed);
        self.frames_encoded.fetch_add(frames as u64, Relaxed);
    }

    pub(super) fn prefill_pass(&self, sequences: usize) {
        self.prefill_passes.fetch_add(1, Relaxed);
        self.images_prefilled.fetch_add(sequences as u64, Relaxed);
    }

    pub(super) fn cache(&self, stats: CacheStats, bytes: usize) {
        let counters = [
            (&self.frame_hits, stats.frame_hits, "frame", true),
            (&self.frame_misses, stats.frame_misses, "frame", false),
            (&self.prefix_hits, stats.prefix_hits, "prefix", true),
            (&self.prefix_misses, stats.prefix_misses, "prefix", false),
        ];
        for (counter, total, kind, hit) in counters {
            let before = counter.swap(total, Relaxed);
            for _ in before..total {
                metrics::feature_cache(&self.model, &self.version, kind, hit);
            }
        }
        self.cache_bytes.store(bytes as u64, Relaxed);
        metrics::feature_cache_bytes(&self.model, &self.version, bytes);
    }

    pub(super) fn queue_depth(&self, interactive: usize, batch: usize) {
        metrics::queue_depth(&self.model, &self.version, interactive, batch);
    }

    pub(super) fn running(&self, requests: usize) {
        metrics::running_requests(&self.model, &self.version, requests);
    }

    pub(super) fn batch_utilization(&self, fraction: f64) {
        metrics::batch_utilization(&self.model, &self.version, fraction);
    }

    pub fn snapshot(&self) -> EngineStatsSnapshot {
        EngineStatsSnapshot {
            decode_steps: self.decode_steps.load(Relaxed),
            decoded_rows: self.decoded_rows.load(Relaxed),
            max_rows: self.max_rows.load(Relaxed),
            vision_passes: self.vision_passes.load(Relaxed),
            frames_encoded: self.frames_encoded.load(Relaxed),
            prefill_passes: self.prefill_passes.load(Relaxed),
            images_prefilled: self.images_prefilled.load(Relaxed),
            cache: CacheStats {
                frame_hits: self.frame_hits.load(Relaxed),
                frame_misses: self.frame_misses.load(Relaxed),
                prefix_hits: self.prefix_hits.load(Relaxed),
                prefix_misses: self.prefix_misses.load(Relaxed),
            },
            cache_bytes: self.cache_bytes.load(Relaxed),
        }
    }
}
