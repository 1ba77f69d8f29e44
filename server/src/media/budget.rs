//! The memory budget for media: how many bytes of decoded pixels all requests together may be
//! working on at once. Decoding a frame reserves what it will hold (from the size its header
//! declares, before any pixel is decoded) and gives it back once the frame has been shrunk to
//! the model's input; a request that finds the budget spent waits for room (within its
//! deadline). Four requests of 48 large JPEGs each then cost what the budget allows, not 20 GB.
//!
//! Video frames are reserved by the decoder itself, only while it holds the process slot of the
//! child writing them (see crate::media::video): a request never waits for a decoder process
//! while holding room here, so the budget and the process slots are always taken in one order
//! (slot, then room) and cannot deadlock.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

use crate::error::{GitcapError, Result};

/// Bytes of decoded pixels in flight, across all requests. Clones share the budget.
#[derive(Debug, Clone)]
pub struct MediaBudget {
    /// One permit per KiB.
    kib: Arc<Semaphore>,
    total_kib: u32,
}

/// Room reserved in the [`MediaBudget`], given back when dropped.
pub type Reservation<'a> = SemaphorePermit<'a>;

/// Room reserved in the [`MediaBudget`] that may travel with what it holds (a video frame).
pub type OwnedReservation = OwnedSemaphorePermit;

impl MediaBudget {
    pub fn new(bytes: u64) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX).min(Semaphore::MAX_PERMITS as u32);
        Self { kib: Arc::new(Semaphore::new(total_kib as usize)), total_kib }
    }

    /// The whole budget, in bytes.
    pub fn bytes(&self) -> u64 {
        u64::from(self.total_kib) * 1024
    }

    /// Bytes not reserved now.
    pub fn available(&self) -> u64 {
        self.kib.available_permits() as u64 * 1024
    }

    /// Reserves `bytes` for decoding `field`, waiting for room. More than the whole budget can
    /// never fit: RESOURCE_EXHAUSTED at once.
    pub async fn reserve(&self, bytes: u64, field: &str) -> Result<Reservation<'_>> {
        let kib = self.kib_for(bytes, field)?;
        let reservation = self.kib.acquire_many(kib).await.map_err(|_| stopping())?;
        self.report();
        Ok(reservation)
    }

    /// [`Self::reserve`], as room that is not tied to this handle's lifetime.
    pub async fn reserve_owned(&self, bytes: u64, field: &str) -> Result<OwnedReservation> {
        let kib = self.kib_for(bytes, field)?;
        let reservation = self.kib.clone().acquire_many_owned(kib).await.map_err(|_| stopping())?;
        self.report();
        Ok(reservation)
    }

    /// Tells the metrics how much is reserved now (they keep the high-water mark).
    fn report(&self) {
        crate::metrics::media_budget_reserved(self.bytes() - self.available());
    }

    fn kib_for(&self, bytes: u64, field: &str) -> Result<u32> {
        let kib = bytes.div_ceil(1024).max(1);
        if kib > u64::from(self.total_kib) {
            return Err(GitcapError::ResourceExhausted(format!(
                "{field}: decoding it needs {} MiB, more than the server's whole media budget of {} MiB \
                 (media.decode_budget_mb)",
                bytes >> 20,
                self.bytes() >> 20
            )));
        }
        Ok(kib as u32)
    }
}

fn stopping() -> GitcapError {
    GitcapError::Unavailable("the server is stopping".into())
}

/// What decoding an image of `width` × `height` holds at its peak, in bytes: the decoder's own
/// buffer (up to 16-bit RGBA) and the RGB copy, or for an animation the canvas and the frames
/// composed on it.
pub fn decode_cost(width: u32, height: u32, animated: bool) -> u64 {
    let pixels = u64::from(width) * u64::from(height);
    pixels * if animated { 16 } else { 11 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_room_and_give_it_back() {
        let budget = MediaBudget::new(10 << 20);
        assert_eq!(budget.bytes(), 10 << 20);
        let first = budget.reserve(6 << 20, "media.image").await.unwrap();
        assert_eq!(budget.available(), 4 << 20);
        // A second 6 MiB must wait for the first.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), budget.reserve(6 << 20, "x")).await;
        assert!(waiting.is_err(), "the budget was overdrawn");
        drop(first);
        let second = budget.reserve(6 << 20, "media.image").await.unwrap();
        drop(second);
        assert_eq!(budget.available(), 10 << 20);
    }

    #[tokio::test]
    async fn clones_share_the_budget_and_owned_room_travels() {
        let budget = MediaBudget::new(4 << 20);
        let room = budget.clone().reserve_owned(3 << 20, "media.video").await.unwrap();
        assert_eq!(budget.available(), 1 << 20);
        let frame = std::thread::spawn(move || room).join().unwrap();
        assert_eq!(budget.available(), 1 << 20, "the room went with the frame");
        drop(frame);
        assert_eq!(budget.available(), 4 << 20);
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_at_once() {
        let budget = MediaBudget::new(1 << 20);
        let error = budget.reserve(2 << 20, "media.frames[3]").await.unwrap_err();
        assert!(matches!(error, GitcapError::ResourceExhausted(_)), "{error:?}");
        assert!(error.to_string().contains("media.frames[3]"), "{error}");
    }
}
