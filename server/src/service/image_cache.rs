//! Images recently sent, kept as the model's input and keyed by their encoded bytes: a caller
//! that sends the same image again (a chat client resends its conversation's images every turn,
//! a follow-up question sends the same frames) skips decoding and preprocessing it, and its
//! frames' content keys then find their vision features in the model's feature cache.
//!
//! One per server, shared by every door; an LRU bounded in bytes of pixels (`media.image_cache_mb`),
//! so a caller sending endless new images only evicts older entries.

use std::sync::Mutex;

use lru::LruCache;

use crate::engine::{Frame, PreparedFrame};
use crate::media::PreprocessorConfig;

/// What an image's frames depend on: its bytes, the image processor, and whether every frame of
/// an animation is used. A BLAKE3 hash, so a caller cannot make another's image collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageKey([u8; 32]);

impl ImageKey {
    pub fn new(bytes: &[u8], preprocessor: &PreprocessorConfig, all_frames: bool) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"encoded image");
        hasher.update(format!("{preprocessor:?}").as_bytes());
        hasher.update(&[u8::from(all_frames)]);
        hasher.update(bytes);
        Self(*hasher.finalize().as_bytes())
    }
}

/// Look-ups since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageCacheStats {
    pub hits: u64,
    pub misses: u64,
}

pub struct ImageCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    entries: LruCache<ImageKey, Vec<PreparedFrame>>,
    bytes: usize,
    stats: ImageCacheStats,
}

fn bytes_of(frames: &[PreparedFrame]) -> usize {
    frames.iter().map(PreparedFrame::bytes).sum()
}

impl ImageCache {
    /// A cache holding at most `max_bytes` of pixels; 0 turns it off.
    pub fn new(max_bytes: usize) -> Self {
        let inner = Inner { entries: LruCache::unbounded(), bytes: 0, stats: ImageCacheStats::default() };
        Self { max_bytes, inner: Mutex::new(inner) }
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The frames of an image sent before, sharing their pixels.
    pub fn get(&self, key: ImageKey) -> Option<Vec<Frame>> {
        let mut inner = self.lock();
        let found = inner.entries.get(&key).map(|frames| frames.iter().map(|f| Frame::Pixels(f.share())).collect());
        if found.is_some() {
            inner.stats.hits += 1;
        } else {
            inner.stats.misses += 1;
        }
        crate::metrics::image_cache(found.is_some());
        found
    }

    /// Keeps an image's frames (shared, not copied), evicting the least recently used entries
    /// past the bound. Frames other than pixels, or more than the whole bound, are not kept.
    pub fn insert(&self, key: ImageKey, frames: &[Frame]) {
        let frames: Option<Vec<PreparedFrame>> = frames
            .iter()
            .map(|frame| match frame {
                Frame::Pixels(pixels) => Some(pixels.share()),
                Frame::Encoded(_) => None,
            })
            .collect();
        let Some(frames) = frames else { return };
        let size = bytes_of(&frames);
        if size > self.max_bytes {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.entries.put(key, frames) {
            inner.bytes -= bytes_of(&old);
        }
        inner.bytes += size;
        while inner.bytes > self.max_bytes {
            let Some((_, evicted)) = inner.entries.pop_lru() else { break };
            inner.bytes -= bytes_of(&evicted);
        }
        crate::metrics::image_cache_bytes(inner.bytes);
    }

    /// Bytes of pixels held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn stats(&self) -> ImageCacheStats {
        self.lock().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::PixelValues;

    fn frame(value: f32, values: usize) -> Frame {
        Frame::Pixels(PreparedFrame::from_pixel_values(PixelValues {
            data: vec![value; values],
            height: 1,
            width: values,
        }))
    }

    fn key(n: u8) -> ImageKey {
        ImageKey::new(&[n], &PreprocessorConfig::clip(), false)
    }

    #[test]
    fn keys_follow_the_bytes_the_processor_and_the_animation_flag() {
        let clip = PreprocessorConfig::clip();
        let other = PreprocessorConfig { do_center_crop: !clip.do_center_crop, ..clip.clone() };
        assert_eq!(ImageKey::new(b"png", &clip, false), ImageKey::new(b"png", &clip, false));
        assert_ne!(ImageKey::new(b"png", &clip, false), ImageKey::new(b"pnh", &clip, false));
        assert_ne!(ImageKey::new(b"png", &clip, false), ImageKey::new(b"png", &other, false));
        assert_ne!(ImageKey::new(b"png", &clip, false), ImageKey::new(b"png", &clip, true));
    }

    #[test]
    fn a_hit_shares_the_pixels_it_kept_and_is_counted() {
        let cache = ImageCache::new(1 << 20);
        assert!(cache.get(key(1)).is_none());
        let frames = vec![frame(1.0, 10), frame(2.0, 10)];
        cache.insert(key(1), &frames);
        let hit = cache.get(key(1)).expect("a hit");
        let keys = |frames: &[Frame]| frames.iter().map(Frame::key).collect::<Vec<_>>();
        assert_eq!(keys(&hit), keys(&frames));
        let (Frame::Pixels(kept), Frame::Pixels(sent)) = (&hit[0], &frames[0]) else { unreachable!() };
        assert!(kept.shares_pixels_with(sent));
        assert_eq!(cache.stats(), ImageCacheStats { hits: 1, misses: 1 });
    }

    #[test]
    fn stays_within_its_byte_bound_under_endless_new_images() {
        // Room for two images of 100 floats.
        let cache = ImageCache::new(800);
        cache.insert(key(0), &[frame(0.0, 100)]);
        cache.insert(key(1), &[frame(1.0, 100)]);
        assert!(cache.get(key(0)).is_some()); // 0 is now the most recently used
        cache.insert(key(2), &[frame(2.0, 100)]);
        assert_eq!(cache.bytes(), 800);
        assert!(cache.get(key(1)).is_none(), "the least recently used entry went");
        assert!(cache.get(key(0)).is_some() && cache.get(key(2)).is_some());
        // Replacing an entry does not count it twice; one over the bound is not kept.
        cache.insert(key(2), &[frame(2.0, 100)]);
        assert_eq!(cache.bytes(), 800);
        cache.insert(key(3), &[frame(3.0, 201)]);
        assert!(cache.get(key(3)).is_none());
        for n in 10..=255 {
            cache.insert(key(n), &[frame(f32::from(n), 1 + usize::from(n) % 150)]);
            assert!(cache.bytes() <= 800);
        }
    }

    #[test]
    fn a_zero_bound_keeps_nothing() {
        let cache = ImageCache::new(0);
        cache.insert(key(1), &[frame(1.0, 1)]);
        assert!(cache.get(key(1)).is_none());
        assert_eq!(cache.bytes(), 0);
    }
}
