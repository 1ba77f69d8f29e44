//! Live captioning: a caller streams frames (a camera); every `stride` frames the latest `window`
//! are captioned, each frame encoded once as it arrives and its features shared by the windows
//! that contain it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::request::{submit, Answer};
use super::upload::{self, FrameAssembler, FrameChunk};
use super::{Admitted, Core};
use crate::deadline::Deadline;
use crate::engine::{EncodedFrame, Frame, InferenceRequest, ModelWorker, Priority};
use crate::error::{GitcapError, Result};
use crate::media::MediaLimits;
use crate::model::generation::GenerationOptions;
use crate::service::media::MediaService;
use crate::service::validation::RequestLimits;
use crate::telemetry::RequestTrace;

/// One window's caption: the frames it covers (counted from 0 over the stream) and its answer.
pub struct LiveCaption {
    pub first_frame: u64,
    pub last_frame: u64,
    pub answer: Answer,
}

/// One live-captioning stream: frames are encoded as they arrive and kept for the current
/// window; every `stride` frames the latest `window` are captioned.
pub struct LiveSession {
    worker: ModelWorker,
    question: Option<String>,
    options: GenerationOptions,
    window: usize,
    stride: usize,
    limits: RequestLimits,
    media: Arc<MediaService>,
    /// The stream's span (crate::telemetry): each window's stages go under it.
    trace: Option<RequestTrace>,
}

impl LiveSession {
    /// A stream for `admitted`, captioning the latest `window` frames (0 = as many as the model
    /// takes) every `stride` frames (0 = `window`). A stream has no frame limit of its own: only
    /// its window is kept.
    pub fn new(core: &Core, admitted: Admitted, window: u32, stride: u32, trace: Option<RequestTrace>) -> Result<Self> {
        let Admitted { worker, question, options } = admitted;
        let max = worker.info.max_frames;
        let window = if window == 0 { max } else { window as usize };
        if window > max {
            return Err(GitcapError::invalid("start.window", format!("this model takes at most {max} frames")));
        }
        let stride = if stride == 0 { window } else { stride as usize };
        let limits = RequestLimits {
            media: MediaLimits { max_frames: usize::MAX, ..core.limits.media },
            ..(*core.limits).clone()
        };
        let media = core.media.clone();
        Ok(Self { worker, question, options, window, stride, limits, media, trace })
    }

    /// Captions the stream's windows as its frames arrive, sending each caption when ready.
    pub async fn run(
        self,
        mut chunks: impl Stream<Item = Result<FrameChunk>> + Unpin,
        tx: &mpsc::Sender<Result<LiveCaption>>,
    ) -> Result<()> {
        let mut assembler = FrameAssembler::new(self.worker.clone(), self.limits.clone(), self.media.clone(), 0)?;
        let mut recent: VecDeque<EncodedFrame> = VecDeque::with_capacity(self.window);
        let mut captioned_up_to = None;
        while let Some(chunk) = chunks.next().await {
            let Some((index, Some(task))) = assembler.push(chunk?)? else { continue };
            if recent.len() == self.window {
                recent.pop_front();
            }
            recent.push_back(upload::encoded(task).await?);
            let seen = index + 1;
            if seen >= self.window && (seen - self.window).is_multiple_of(self.stride) {
                self.caption(snapshot(&recent), index, tx).await?;
                captioned_up_to = Some(index);
            }
        }
        // A stream shorter than one window still gets a caption of what arrived.
        if captioned_up_to.is_none() && !recent.is_empty() {
            self.caption(snapshot(&recent), assembler.received() - 1, tx).await?;
        }
        Ok(())
    }

    async fn caption(
        &self,
        frames: Vec<Frame>,
        last_frame: usize,
        tx: &mpsc::Sender<Result<LiveCaption>>,
    ) -> Result<()> {
        let first_frame = (last_frame + 1 - frames.len()) as u64;
        let request = InferenceRequest {
            frames,
            question: self.question.clone(),
            options: self.options,
            priority: Priority::Interactive,
        };
        let now = Instant::now();
        let answer =
            submit(self.worker.clone(), request, Deadline::NONE, now, now, self.trace.clone())?.finish().await?;
        let caption = LiveCaption { first_frame, last_frame: last_frame as u64, answer };
        tx.send(Ok(caption)).await.map_err(|_| GitcapError::Cancelled)
    }
}

/// The window's frames, sharing the encoded features.
fn snapshot(recent: &VecDeque<EncodedFrame>) -> Vec<Frame> {
    recent.iter().map(|f| Frame::Encoded(f.clone())).collect()
}
