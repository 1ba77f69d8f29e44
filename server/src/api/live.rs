//! Live captioning: a caller streams frames (a camera); every `stride` frames the latest `window`
//! are captioned, each frame encoded once as it arrives and its features shared by the windows
//! that contain it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::upload::{self, FrameAssembler};
use crate::deadline::Deadline;
use crate::engine::{EncodedFrame, Frame, InferenceRequest, ModelWorker, Priority};
use crate::error::GitcapError;
use crate::model::generation::GenerationOptions;
use crate::proto;
use crate::service::media::MediaService;
use crate::service::request::submit;
use crate::service::validation::RequestLimits;
use crate::telemetry::RequestTrace;

/// One live-captioning stream: frames are encoded as they arrive and kept for the current
/// window; every `stride` frames the latest `window` are captioned.
pub(super) struct LiveSession {
    pub worker: ModelWorker,
    pub question: Option<String>,
    pub options: GenerationOptions,
    pub window: usize,
    pub stride: usize,
    pub limits: RequestLimits,
    pub media: Arc<MediaService>,
    /// The stream's span (crate::telemetry): each window's stages go under it.
    pub trace: Option<RequestTrace>,
}

impl LiveSession {
    pub async fn run(
        self,
        stream: &mut Streaming<proto::LiveMessage>,
        tx: &mpsc::Sender<Result<proto::LiveEvent, Status>>,
    ) -> Result<(), Status> {
        use proto::live_message::Message;
        let mut assembler = FrameAssembler::new(self.worker.clone(), self.limits.clone(), self.media.clone(), 0)?;
        let mut recent: VecDeque<EncodedFrame> = VecDeque::with_capacity(self.window);
        let mut captioned_up_to = None;
        while let Some(message) = stream.message().await? {
            let Some(Message::Chunk(chunk)) = message.message else {
                return Err(GitcapError::invalid("start", "only the first message may be `start`").into());
            };
            let Some((index, Some(task))) = assembler.push(chunk)? else { continue };
            if recent.len() == self.window {
                recent.pop_front();
            }
            recent.push_back(upload::encoded(task).await?);
            let seen = index + 1;
            if seen >= self.window && (seen - self.window) % self.stride == 0 {
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
        tx: &mpsc::Sender<Result<proto::LiveEvent, Status>>,
    ) -> Result<(), Status> {
        let first_frame = (last_frame + 1 - frames.len()) as u64;
        let request = InferenceRequest {
            frames,
            question: self.question.clone(),
            options: self.options,
            priority: Priority::Interactive,
        };
        let now = Instant::now();
        let caption =
            submit(self.worker.clone(), request, Deadline::NONE, now, now, self.trace.clone())?.finish().await?;
        let caption = super::convert::response(caption);
        let event = proto::LiveEvent { first_frame, last_frame: last_frame as u64, caption: Some(caption) };
        tx.send(Ok(event)).await.map_err(|_| GitcapError::Cancelled.into())
    }
}

/// The window's frames, sharing the encoded features.
fn snapshot(recent: &VecDeque<EncodedFrame>) -> Vec<Frame> {
    recent.iter().map(|f| Frame::Encoded(f.clone())).collect()
}
