//! Frames that arrive as a stream of chunks: reassembled, decoded off the runtime, and handed
//! to the model thread's vision tower one by one as they complete.

use tokio::task::JoinHandle;

use super::convert::RequestLimits;
use crate::engine::{EncodedFrame, ModelWorker};
use crate::error::{GitcapError, Result};
use crate::media::{decode_image, sample_frame_indices};
use crate::proto::FrameChunk;

/// A frame being decoded and run through the vision tower.
pub type EncodeTask = JoinHandle<Result<EncodedFrame>>;

/// Collects chunks into frames and starts encoding each frame when its last chunk arrives.
pub struct FrameAssembler {
    worker: ModelWorker,
    limits: RequestLimits,
    /// Frames to encode, when the caller declared how many are coming; `None` = all.
    wanted: Option<Vec<usize>>,
    buffer: Vec<u8>,
    /// Frames completed so far.
    pub received: usize,
}

impl FrameAssembler {
    pub fn new(worker: ModelWorker, limits: RequestLimits, declared_frames: usize) -> Result<Self> {
        if declared_frames > limits.media.max_frames {
            return Err(GitcapError::invalid(
                "start.frame_count",
                format!("{declared_frames} frames is more than the limit of {}", limits.media.max_frames),
            ));
        }
        let wanted = (declared_frames > 0).then(|| sample_frame_indices(declared_frames, worker.info.max_frames));
        Ok(Self { worker, limits, wanted, buffer: Vec::new(), received: 0 })
    }

    /// Adds a chunk; when it ends a frame, returns that frame's index and (unless the model
    /// will not use it) a task that decodes and encodes it.
    pub fn push(&mut self, chunk: FrameChunk) -> Result<Option<(usize, Option<EncodeTask>)>> {
        let max_bytes = self.limits.max_frame_bytes;
        if self.buffer.len() + chunk.data.len() > max_bytes {
            return Err(GitcapError::invalid(
                format!("frame[{}]", self.received),
                format!("the frame's chunks add up to more than {max_bytes} bytes"),
            ));
        }
        self.buffer.extend_from_slice(&chunk.data);
        if !chunk.end_of_frame {
            return Ok(None);
        }
        let index = self.received;
        self.received += 1;
        if self.received > self.limits.media.max_frames {
            return Err(GitcapError::invalid(
                "chunk",
                format!("more than the limit of {} frames", self.limits.media.max_frames),
            ));
        }
        let bytes = std::mem::take(&mut self.buffer);
        if self.wanted.as_ref().is_some_and(|w| !w.contains(&index)) {
            return Ok(Some((index, None)));
        }
        let (worker, media_limits) = (self.worker.clone(), self.limits.media);
        let task = tokio::spawn(async move {
            let field = format!("frame[{index}]");
            let mut frames = tokio::task::spawn_blocking(move || decode_image(&bytes, &field, &media_limits))
                .await
                .map_err(|e| GitcapError::Internal(e.to_string()))??;
            worker.encode(frames.swap_remove(0)).await
        });
        Ok(Some((index, Some(task))))
    }

    /// The stream ended: any unfinished frame is an error.
    pub fn finish(&self, declared_frames: usize) -> Result<()> {
        if !self.buffer.is_empty() {
            return Err(GitcapError::invalid(
                format!("frame[{}]", self.received),
                "the stream ended inside a frame: its last chunk needs end_of_frame = true",
            ));
        }
        if self.received == 0 {
            return Err(GitcapError::invalid("chunk", "no frame was uploaded"));
        }
        if declared_frames > 0 && declared_frames != self.received {
            return Err(GitcapError::invalid(
                "start.frame_count",
                format!("{declared_frames} frames were announced but {} arrived", self.received),
            ));
        }
        Ok(())
    }
}

/// Waits for a frame's encoding task.
pub async fn encoded(task: EncodeTask) -> Result<EncodedFrame> {
    task.await.map_err(|e| GitcapError::Internal(format!("frame encoding task failed: {e}")))?
}
