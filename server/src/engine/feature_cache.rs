//! Vision features kept between requests, in an LRU bounded in bytes and keyed by content:
//! a frame's vision-tower output (keyed by its preprocessed pixels), and a request's image keys/values in
//! the decoder (keyed by the frames it uses, in order). A follow-up question on the same
//! image or video, a repeated frame, or overlapping live-captioning windows then skip the
//! vision tower, and the same frames skip the image prefill too.

use std::rc::Rc;

use lru::LruCache;
use tch::Tensor;

use crate::media::PixelValues;
use crate::model::decoder::ImagePrefix;

/// A content hash (BLAKE3) of a frame's pixels or of a sequence of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentKey([u8; 32]);

impl ContentKey {
    /// The key of a frame's preprocessed pixels (the model's input): their size and values.
    pub fn of_pixels(pixels: &PixelValues) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"pixels");
        hasher.update(&(pixels.height as u64).to_le_bytes());
        hasher.update(&(pixels.width as u64).to_le_bytes());
        // In blocks: one small update per value cost milliseconds a frame.
        let mut block = [0u8; 4096];
        for values in pixels.data.chunks(block.len() / 4) {
            for (bytes, value) in block.chunks_exact_mut(4).zip(values) {
                bytes.copy_from_slice(&value.to_le_bytes());
            }
            hasher.update(&block[..values.len() * 4]);
        }
        Self(*hasher.finalize().as_bytes())
    }

    /// The key of the image tokens made from `frames` in this order.
    pub fn of_frames(frames: &[ContentKey]) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"frames");
        for frame in frames {
            hasher.update(&frame.0);
        }
        Self(*hasher.finalize().as_bytes())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    Frame(ContentKey),
    Prefix(ContentKey),
}

enum Cached {
    /// [1, tokens_per_image, vision hidden].
    Frame(Tensor),
    Prefix(Rc<ImagePrefix>),
}

impl Cached {
    fn bytes(&self) -> usize {
        match self {
            Cached::Frame(t) => t.numel() * t.kind().elt_size_in_bytes(),
            Cached::Prefix(p) => p.bytes(),
        }
    }
}

/// Lookups that found (hits) or missed their entry, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub frame_hits: u64,
    pub frame_misses: u64,
    pub prefix_hits: u64,
    pub prefix_misses: u64,
}

pub struct FeatureCache {
    entries: LruCache<Slot, Cached>,
    bytes: usize,
    max_bytes: usize,
    stats: CacheStats,
}

impl FeatureCache {
    /// A cache holding at most `max_bytes` of tensors; 0 turns it off.
    pub fn new(max_bytes: usize) -> Self {
        Self { entries: LruCache::unbounded(), bytes: 0, max_bytes, stats: CacheStats::default() }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// A frame's vision features, if kept.
    pub fn frame(&mut self, key: ContentKey) -> Option<Tensor> {
        let found = match self.entries.get(&Slot::Frame(key)) {
            Some(Cached::Frame(t)) => Some(t.shallow_clone()),
            _ => None,
        };
        if found.is_some() {
            self.stats.frame_hits += 1;
        } else {
            self.stats.frame_misses += 1;
        }
        found
    }

    /// The image keys/values for these frames, if kept.
    pub fn prefix(&mut self, key: ContentKey) -> Option<Rc<ImagePrefix>> {
        let found = match self.entries.get(&Slot::Prefix(key)) {
            Some(Cached::Prefix(p)) => Some(p.clone()),
            _ => None,
        };
        if found.is_some() {
            self.stats.prefix_hits += 1;
        } else {
            self.stats.prefix_misses += 1;
        }
        found
    }

    /// Whether a frame's features are kept (not counted as a lookup, not made recent).
    pub fn has_frame(&self, key: ContentKey) -> bool {
        self.entries.peek(&Slot::Frame(key)).is_some()
    }

    /// Whether the image keys/values for these frames are kept (not counted, not made recent).
    pub fn has_prefix(&self, key: ContentKey) -> bool {
        self.entries.peek(&Slot::Prefix(key)).is_some()
    }

    /// Keeps a frame's features (a copy, so a batch's output is not held through one row).
    pub fn insert_frame(&mut self, key: ContentKey, features: &Tensor) {
        self.insert(Slot::Frame(key), Cached::Frame(features.copy()));
    }

    pub fn insert_prefix(&mut self, key: ContentKey, prefix: ImagePrefix) {
        self.insert(Slot::Prefix(key), Cached::Prefix(Rc::new(prefix)));
    }

    fn insert(&mut self, slot: Slot, value: Cached) {
        let size = value.bytes();
        if size > self.max_bytes {
            return;
        }
        if let Some(old) = self.entries.put(slot, value) {
            self.bytes -= old.bytes();
        }
        self.bytes += size;
        while self.bytes > self.max_bytes {
            let Some((_, evicted)) = self.entries.pop_lru() else { break };
            self.bytes -= evicted.bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(value: u8) -> PixelValues {
        PixelValues { data: vec![f32::from(value); 3 * 4 * 3], height: 3, width: 4 }
    }

    fn features(elements: i64) -> Tensor {
        Tensor::ones([1, elements], (tch::Kind::Float, tch::Device::Cpu))
    }

    #[test]
    fn keys_follow_content_not_identity() {
        assert_eq!(ContentKey::of_pixels(&frame(7)), ContentKey::of_pixels(&frame(7)));
        assert_ne!(ContentKey::of_pixels(&frame(7)), ContentKey::of_pixels(&frame(8)));
        // Same values, other shape.
        let tall = PixelValues { height: 4, width: 3, ..frame(7) };
        assert_ne!(ContentKey::of_pixels(&frame(7)), ContentKey::of_pixels(&tall));
        let (a, b) = (ContentKey::of_pixels(&frame(1)), ContentKey::of_pixels(&frame(2)));
        assert_ne!(ContentKey::of_frames(&[a, b]), ContentKey::of_frames(&[b, a]));
    }

    #[test]
    fn hits_return_what_was_stored_and_are_counted() {
        let mut cache = FeatureCache::new(1 << 20);
        let key = ContentKey::of_pixels(&frame(1));
        assert!(cache.frame(key).is_none());
        cache.insert_frame(key, &(features(10) * 3.0));
        let hit = cache.frame(key).expect("a hit");
        assert_eq!(hit.sum(tch::Kind::Float).double_value(&[]), 30.0);
        assert_eq!(cache.stats(), CacheStats { frame_hits: 1, frame_misses: 1, ..Default::default() });
    }

    #[test]
    fn stays_within_its_byte_bound_evicting_the_least_recently_used() {
        // Room for two entries of 100 floats.
        let mut cache = FeatureCache::new(800);
        let keys: Vec<ContentKey> = (0..3).map(|i| ContentKey::of_pixels(&frame(i))).collect();
        cache.insert_frame(keys[0], &features(100));
        cache.insert_frame(keys[1], &features(100));
        assert!(cache.frame(keys[0]).is_some()); // 0 is now the most recently used
        cache.insert_frame(keys[2], &features(100));
        assert_eq!(cache.bytes(), 800);
        assert!(cache.frame(keys[1]).is_none(), "the least recently used entry went");
        assert!(cache.frame(keys[0]).is_some() && cache.frame(keys[2]).is_some());
        // Replacing an entry does not count it twice; an entry over the bound is not kept.
        cache.insert_frame(keys[2], &features(100));
        assert_eq!(cache.bytes(), 800);
        cache.insert_frame(ContentKey::of_pixels(&frame(9)), &features(1000));
        assert_eq!(cache.bytes(), 800);
        for i in 10..50 {
            cache.insert_frame(ContentKey::of_pixels(&frame(i)), &features(30 + i as i64));
            assert!(cache.bytes() <= 800);
        }
    }

    #[test]
    fn a_zero_bound_keeps_nothing() {
        let mut cache = FeatureCache::new(0);
        let key = ContentKey::of_pixels(&frame(1));
        cache.insert_frame(key, &features(1));
        assert!(cache.frame(key).is_none());
        assert_eq!(cache.bytes(), 0);
    }
}
