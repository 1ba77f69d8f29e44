//! Media that arrive in pieces. Frames (an upload, a live stream): reassembled, decoded and
//! shrunk to the model's input off the runtime (within the media budget), and handed to the
//! model thread's vision tower one by one as they complete. A video file: appended to a
//! temporary file as it arrives, within the size limit, so that a file of hundreds of MB is
//! never held in memory ([`receive_video`]).

use futures::{Stream, StreamExt};
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use std::sync::Arc;

use crate::engine::{EncodedFrame, Frame, ModelWorker};
use crate::error::{GitcapError, Result};
use crate::media::sample_frame_indices;
use crate::service::media::MediaService;
use crate::service::validation::RequestLimits;
use crate::service::{Admitted, Core};

/// A piece of a frame, as an upload or a live stream sends it; the last piece of each frame
/// says so.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameChunk {
    pub data: Vec<u8>,
    pub end_of_frame: bool,
}

/// A frame being decoded and run through the vision tower.
pub type EncodeTask = JoinHandle<Result<EncodedFrame>>;

/// Collects chunks into frames and starts encoding each frame when its last chunk arrives.
pub struct FrameAssembler {
    worker: ModelWorker,
    media: Arc<MediaService>,
    chunks: FrameChunks,
}

impl FrameAssembler {
    pub fn new(
        worker: ModelWorker,
        limits: RequestLimits,
        media: Arc<MediaService>,
        declared_frames: usize,
    ) -> Result<Self> {
        let chunks = FrameChunks::new(&limits, declared_frames, worker.info.max_frames)?;
        Ok(Self { worker, media, chunks })
    }

    /// Frames completed so far.
    pub fn received(&self) -> usize {
        self.chunks.received
    }

    /// Adds a chunk; when it ends a frame, returns that frame's index and (unless the model
    /// will not use it) a task that decodes and encodes it.
    pub fn push(&mut self, chunk: FrameChunk) -> Result<Option<(usize, Option<EncodeTask>)>> {
        let Some(CompletedFrame { index, bytes }) = self.chunks.push(chunk)? else {
            return Ok(None);
        };
        let Some(bytes) = bytes else {
            return Ok(Some((index, None)));
        };
        let (worker, media) = (self.worker.clone(), self.media.clone());
        let task = tokio::spawn(async move {
            let field = format!("frame[{index}]");
            let mut frames = media.image(bytes, field, &worker.info, false).await?;
            let Some(Frame::Pixels(frame)) = frames.pop() else {
                return Err(GitcapError::Internal("a decoded frame was not pixels".into()));
            };
            worker.encode(frame).await
        });
        Ok(Some((index, Some(task))))
    }

    /// The stream ended: any unfinished frame is an error.
    pub fn finish(&self, declared_frames: usize) -> Result<()> {
        self.chunks.finish(declared_frames)
    }
}

/// A frame whose last chunk arrived.
#[derive(Debug)]
pub struct CompletedFrame {
    /// Its position in the upload, from 0.
    pub index: usize,
    /// Its encoded bytes; `None` when the model will not use this frame.
    pub bytes: Option<Vec<u8>>,
}

/// The model-free half of [`FrameAssembler`]: joins chunks into frames within the request
/// limits and picks the frames the model will see.
#[derive(Debug)]
pub struct FrameChunks {
    max_frame_bytes: usize,
    max_frames: usize,
    /// Frames to keep, when the caller declared how many are coming; `None` = all.
    wanted: Option<Vec<usize>>,
    buffer: Vec<u8>,
    /// Frames completed so far.
    pub received: usize,
}

impl FrameChunks {
    /// `declared_frames` is the upload's announced frame count (0 = not announced);
    /// `model_frames` is how many frames the model takes.
    pub fn new(limits: &RequestLimits, declared_frames: usize, model_frames: usize) -> Result<Self> {
        let max_frames = limits.media.max_frames;
        if declared_frames > max_frames {
            return Err(GitcapError::invalid(
                "start.frame_count",
                format!("{declared_frames} frames is more than the limit of {max_frames}"),
            ));
        }
        let wanted = (declared_frames > 0).then(|| sample_frame_indices(declared_frames, model_frames));
        Ok(Self { max_frame_bytes: limits.max_frame_bytes, max_frames, wanted, buffer: Vec::new(), received: 0 })
    }

    /// Adds a chunk; returns the frame it completes, if it does.
    pub fn push(&mut self, chunk: FrameChunk) -> Result<Option<CompletedFrame>> {
        let max_bytes = self.max_frame_bytes;
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
        if self.received > self.max_frames {
            return Err(GitcapError::invalid("chunk", format!("more than the limit of {} frames", self.max_frames)));
        }
        let bytes = std::mem::take(&mut self.buffer);
        let used = self.wanted.as_ref().is_none_or(|w| w.contains(&index));
        Ok(Some(CompletedFrame { index, bytes: used.then_some(bytes) }))
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

/// Receives an upload's frames for `admitted`, each encoded by the vision tower as soon as it is
/// complete; `declared` is the frame count the caller announced (0 = not announced), with
/// which only the frames the model will use are decoded.
pub async fn receive_frames(
    core: &Core,
    admitted: &Admitted,
    declared: usize,
    mut chunks: impl Stream<Item = Result<FrameChunk>> + Unpin,
) -> Result<Vec<Frame>> {
    let (limits, media) = ((*core.limits).clone(), core.media.clone());
    let mut assembler = FrameAssembler::new(admitted.worker.clone(), limits, media, declared)?;
    let mut tasks = Vec::new();
    while let Some(chunk) = chunks.next().await {
        if let Some((_, Some(task))) = assembler.push(chunk?)? {
            tasks.push(task);
        }
    }
    assembler.finish(declared)?;
    let mut frames = Vec::with_capacity(tasks.len());
    for task in tasks {
        frames.push(Frame::Encoded(encoded(task).await?));
    }
    Ok(frames)
}

/// Receives a video file's pieces into a temporary file; `declared` is the size the caller
/// announced (0 = not announced). The file is opened when the first bytes arrive, not when the
/// call opens: a call that sends nothing holds no file descriptor.
pub async fn receive_video(
    mut pieces: impl Stream<Item = Result<Vec<u8>>> + Unpin,
    media: &MediaService,
    declared: u64,
) -> Result<TempPath> {
    media.video_decoder()?;
    if declared > media.max_video_bytes {
        return Err(media.too_large("start.size_bytes", declared));
    }
    let write_error = |e: std::io::Error| GitcapError::Internal(format!("writing an uploaded video to disk: {e}"));
    let mut spooled: Option<(tokio::fs::File, TempPath)> = None;
    let mut received: u64 = 0;
    while let Some(piece) = pieces.next().await {
        let piece = piece?;
        if piece.is_empty() {
            continue;
        }
        received += piece.len() as u64;
        if received > media.max_video_bytes {
            return Err(media.too_large("chunk", received));
        }
        let file = match &mut spooled {
            Some((file, _)) => file,
            none => {
                let (file, path) = media.spool_file()?.into_parts();
                &mut none.insert((tokio::fs::File::from_std(file), path)).0
            }
        };
        file.write_all(&piece).await.map_err(write_error)?;
    }
    let Some((mut file, path)) = spooled else {
        return Err(GitcapError::invalid("chunk", "no video bytes were uploaded"));
    };
    file.flush().await.map_err(write_error)?;
    if declared > 0 && declared != received {
        return Err(GitcapError::invalid(
            "start.size_bytes",
            format!("{declared} bytes were announced but {received} arrived"),
        ));
    }
    Ok(path)
}

/// Waits for a frame's encoding task.
pub async fn encoded(task: EncodeTask) -> Result<EncodedFrame> {
    task.await.map_err(|e| GitcapError::Internal(format!("frame encoding task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::MediaLimits;

    fn limits(max_frames: usize, max_frame_bytes: usize) -> RequestLimits {
        RequestLimits {
            media: MediaLimits { max_frames, ..MediaLimits::default() },
            max_frame_bytes,
            ..RequestLimits::default()
        }
    }

    fn chunk(data: &[u8], end_of_frame: bool) -> FrameChunk {
        FrameChunk { data: data.to_vec(), end_of_frame }
    }

    fn field(err: GitcapError) -> String {
        match err {
            GitcapError::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn joins_chunks_into_frames() {
        let mut chunks = FrameChunks::new(&limits(4, 8), 0, 6).unwrap();
        assert!(chunks.push(chunk(b"ab", false)).unwrap().is_none());
        let frame = chunks.push(chunk(b"cd", true)).unwrap().unwrap();
        assert_eq!((frame.index, frame.bytes.as_deref()), (0, Some(&b"abcd"[..])));
        let frame = chunks.push(chunk(b"", true)).unwrap().unwrap();
        assert_eq!((frame.index, frame.bytes.as_deref()), (1, Some(&b""[..])));
        assert_eq!(chunks.received, 2);
        chunks.finish(0).unwrap();
    }

    #[test]
    fn keeps_only_the_sampled_frames_of_an_announced_upload() {
        // 9 frames announced, the model takes 3: frames 1, 4 and 7 (segment centres).
        let mut chunks = FrameChunks::new(&limits(16, 8), 9, 3).unwrap();
        let kept: Vec<bool> =
            (0..9).map(|_| chunks.push(chunk(b"x", true)).unwrap().unwrap().bytes.is_some()).collect();
        let kept: Vec<usize> = kept.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i).collect();
        assert_eq!(kept, sample_frame_indices(9, 3));
        assert_eq!(kept, vec![1, 4, 7]);
        chunks.finish(9).unwrap();
    }

    #[test]
    fn enforces_the_limits() {
        assert_eq!(field(FrameChunks::new(&limits(4, 8), 5, 6).unwrap_err()), "start.frame_count");
        let mut chunks = FrameChunks::new(&limits(4, 8), 0, 6).unwrap();
        chunks.push(chunk(b"12345", false)).unwrap();
        assert_eq!(field(chunks.push(chunk(b"6789", true)).unwrap_err()), "frame[0]");
        let mut chunks = FrameChunks::new(&limits(2, 8), 0, 6).unwrap();
        chunks.push(chunk(b"a", true)).unwrap();
        chunks.push(chunk(b"b", true)).unwrap();
        assert_eq!(field(chunks.push(chunk(b"c", true)).unwrap_err()), "chunk");
    }

    #[test]
    fn finish_needs_whole_frames_and_the_announced_count() {
        let chunks = FrameChunks::new(&limits(4, 8), 0, 6).unwrap();
        assert_eq!(field(chunks.finish(0).unwrap_err()), "chunk");
        let mut chunks = FrameChunks::new(&limits(4, 8), 2, 6).unwrap();
        chunks.push(chunk(b"a", true)).unwrap();
        assert_eq!(field(chunks.finish(2).unwrap_err()), "start.frame_count");
        chunks.push(chunk(b"b", false)).unwrap();
        assert_eq!(field(chunks.finish(2).unwrap_err()), "frame[1]");
    }
}
