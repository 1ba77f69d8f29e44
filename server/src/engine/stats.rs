//! What a model's thread has done so far: decoding steps and their batch sizes, vision-tower
//! passes and feature-cache use. The thread updates it; the API, metrics and tests read it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::feature_cache::CacheStats;

#[derive(Debug, Default)]
pub struct EngineStats {
    decode_steps: AtomicU64,
    decoded_rows: AtomicU64,
    max_rows: AtomicU64,
    vision_passes: AtomicU64,
    frames_encoded: AtomicU64,
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
    pub cache: CacheStats,
    pub cache_bytes: u64,
}

impl EngineStats {
    pub(super) fn decode_step(&self, rows: usize) {
        self.decode_steps.fetch_add(1, Relaxed);
        self.decoded_rows.fetch_add(rows as u64, Relaxed);
        self.max_rows.fetch_max(rows as u64, Relaxed);
    }

    pub(super) fn vision_pass(&self, frames: usize) {
        self.vision_passes.fetch_add(1, Relaxed);
        self.frames_encoded.fetch_add(frames as u64, Relaxed);
    }

    pub(super) fn cache(&self, stats: CacheStats, bytes: usize) {
        self.frame_hits.store(stats.frame_hits, Relaxed);
        self.frame_misses.store(stats.frame_misses, Relaxed);
        self.prefix_hits.store(stats.prefix_hits, Relaxed);
        self.prefix_misses.store(stats.prefix_misses, Relaxed);
        self.cache_bytes.store(bytes as u64, Relaxed);
    }

    pub fn snapshot(&self) -> EngineStatsSnapshot {
        EngineStatsSnapshot {
            decode_steps: self.decode_steps.load(Relaxed),
            decoded_rows: self.decoded_rows.load(Relaxed),
            max_rows: self.max_rows.load(Relaxed),
            vision_passes: self.vision_passes.load(Relaxed),
            frames_encoded: self.frames_encoded.load(Relaxed),
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
