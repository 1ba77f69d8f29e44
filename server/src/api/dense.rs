//! Dense video captioning: timestamped captions over a whole video file.
//!
//! The frames are sampled on one grid, `window_s / frames` apart (the model's frame count per
//! window), decoded in one pass (`VideoDecoder::frames_on_grid`), and each goes through the
//! vision tower once, as it arrives; every window is then captioned from the encoded frames it
//! contains, so overlapping windows share their frames' features — the live-captioning
//! machinery applied to a file. Captions are sent as they are ready, in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::Status;

use super::media::MediaService;
use crate::deadline::Deadline;
use crate::engine::{EncodedFrame, Frame, InferenceRequest, ModelWorker, Priority};
use crate::error::{GitcapError, Result};
use crate::model::generation::GenerationOptions;
use crate::proto;
use crate::service::request::submit;
use crate::telemetry::RequestTrace;

/// Seconds a window covers when the request leaves `window_s` at 0.
pub const DEFAULT_WINDOW_S: f64 = 10.0;

/// Where the frames and windows of a dense captioning fall.
#[derive(Debug, Clone, PartialEq)]
pub struct DensePlan {
    /// Seconds between two grid frames, and the first one's timestamp (half a step).
    pub step_s: f64,
    pub first_s: f64,
    /// Frames on the grid.
    pub frames: usize,
    /// Frames per window and grid frames from one window to the next.
    pub frames_per_window: usize,
    pub stride_frames: usize,
    /// Each window's first grid frame.
    pub windows: Vec<usize>,
    pub window_s: f64,
}

impl DensePlan {
    /// The plan for a video of `duration_s` seconds with windows of `window_s` seconds every
    /// `stride_s` seconds (0 = the defaults), `frames_per_window` frames each.
    pub fn new(duration_s: f64, window_s: f64, stride_s: f64, frames_per_window: usize) -> Result<Self> {
        let window_s = if window_s == 0.0 { DEFAULT_WINDOW_S } else { window_s };
        if !(window_s.is_finite() && window_s > 0.0) {
            return Err(GitcapError::invalid(
                "window_s",
                format!("must be a positive number of seconds, not {window_s}"),
            ));
        }
        let stride_s = if stride_s == 0.0 { window_s } else { stride_s };
        if !(stride_s.is_finite() && stride_s > 0.0) {
            return Err(GitcapError::invalid(
                "stride_s",
                format!("must be a positive number of seconds, not {stride_s}"),
            ));
        }
        // A video shorter than one window is one window over the whole of it.
        let window_s = window_s.min(duration_s);
        let frames_per_window = frames_per_window.max(1);
        let step_s = window_s / frames_per_window as f64;
        let first_s = step_s / 2.0;
        // Grid frames at first_s + k * step_s, before the end of the video.
        let frames = (((duration_s - first_s) / step_s).ceil() as usize).max(1);
        let stride_frames = ((stride_s / step_s).round() as usize).max(1);
        let windows: Vec<usize> =
            (0..).map(|j| j * stride_frames).take_while(|&first| first + frames_per_window <= frames).collect();
        let windows = if windows.is_empty() { vec![0] } else { windows };
        Ok(Self { step_s, first_s, frames, frames_per_window, stride_frames, windows, window_s })
    }

    /// The time range of window `first` (its first grid frame): `[start, end)` seconds.
    pub fn range(&self, first: usize) -> (f64, f64) {
        let start = first as f64 * self.step_s;
        (start, start + self.window_s)
    }
}

/// One dense captioning request, validated.
pub(super) struct DenseSession {
    pub worker: ModelWorker,
    pub media: Arc<MediaService>,
    pub question: Option<String>,
    pub options: GenerationOptions,
    pub priority: Priority,
    pub window_s: f64,
    pub stride_s: f64,
    /// The call's span (crate::telemetry): each window's stages go under it.
    pub trace: Option<RequestTrace>,
}

impl DenseSession {
    /// Captions every window of the video in `media`, sending each caption as it is ready.
    pub async fn run(
        self,
        media: Option<proto::Media>,
        tx: &mpsc::Sender<std::result::Result<proto::DenseCaptionEvent, Status>>,
    ) -> std::result::Result<(), Status> {
        let file = self.media.video_file(media).await?;
        let decoder = self.media.video_decoder()?;
        let info = decoder.probe(&file, "media").await?;
        let plan = DensePlan::new(info.duration_s, self.window_s, self.stride_s, self.worker.info.max_frames)?;
        let grid = decoder.frames_on_grid(&file, &info, plan.first_s, plan.step_s, plan.frames, "media");
        let mut grid = std::pin::pin!(grid);
        // The encoded frames the next windows still need, with their grid index and timestamp.
        let mut recent: VecDeque<(usize, f64, EncodedFrame)> = VecDeque::new();
        let (mut next, mut grid_ended) = (0, false);
        for &first in &plan.windows {
            let end = first + plan.frames_per_window;
            while !grid_ended && next < end {
                let Some(frame) = grid.next().await else {
                    // The video ended before the grid did (its duration overstated it).
                    grid_ended = true;
                    break;
                };
                let frame = frame?;
                let Frame::Pixels(pixels) = self.media.shrink(frame.image, &self.worker.info).await? else {
                    return Err(GitcapError::Internal("a decoded frame was not pixels".into()).into());
                };
                recent.push_back((next, frame.timestamp_s, self.worker.encode(pixels).await?));
                next += 1;
            }
            while recent.front().is_some_and(|(i, _, _)| *i < first) {
                recent.pop_front();
            }
            // The window's frames share their features with the other windows that hold them.
            let window: Vec<(f64, Frame)> = recent
                .iter()
                .take_while(|(i, _, _)| *i < end)
                .map(|(_, t, encoded)| (*t, Frame::Encoded(encoded.clone())))
                .collect();
            if window.is_empty() {
                break;
            }
            self.caption(&plan, first, window, tx).await?;
        }
        Ok(())
    }

    async fn caption(
        &self,
        plan: &DensePlan,
        first: usize,
        window: Vec<(f64, Frame)>,
        tx: &mpsc::Sender<std::result::Result<proto::DenseCaptionEvent, Status>>,
    ) -> std::result::Result<(), Status> {
        let (timestamps, frames): (Vec<f64>, Vec<Frame>) = window.into_iter().unzip();
        let request = InferenceRequest {
            frames,
            question: self.question.clone(),
            options: self.options,
            priority: self.priority,
        };
        let now = Instant::now();
        let caption = submit(self.worker.clone(), request, Deadline::NONE, now, now, self.trace.clone())?
            .with_timestamps(timestamps)
            .finish()
            .await?;
        let caption = super::convert::response(caption);
        let (start_s, end_s) = plan.range(first);
        let event = proto::DenseCaptionEvent { start_s, end_s, caption: Some(caption) };
        tx.send(Ok(event)).await.map_err(|_| GitcapError::Cancelled.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_share_one_grid_of_frames() {
        // 60 s, 10 s windows of 6 frames every 5 s: frames every 1.667 s from 0.833 s.
        let plan = DensePlan::new(60.0, 10.0, 5.0, 6).unwrap();
        assert!((plan.step_s - 10.0 / 6.0).abs() < 1e-12);
        assert_eq!(plan.frames, 36);
        assert_eq!(plan.stride_frames, 3);
        assert_eq!(plan.windows, (0..=30).step_by(3).collect::<Vec<_>>());
        assert_eq!(plan.range(3), (5.0, 15.0));
        // Defaults: 10 s windows that do not overlap.
        let plan = DensePlan::new(25.0, 0.0, 0.0, 6).unwrap();
        assert_eq!((plan.window_s, plan.stride_frames, plan.windows.clone()), (10.0, 6, vec![0, 6]));
    }

    #[test]
    fn a_short_video_is_one_window_over_all_of_it() {
        let plan = DensePlan::new(3.0, 10.0, 5.0, 6).unwrap();
        assert_eq!((plan.window_s, plan.frames, plan.windows.clone()), (3.0, 6, vec![0]));
        assert!((plan.first_s - 0.25).abs() < 1e-12);
    }

    #[test]
    fn bad_windows_name_their_field() {
        for (window, stride, field) in [(-1.0, 0.0, "window_s"), (f64::NAN, 0.0, "window_s"), (5.0, -2.0, "stride_s")] {
            match DensePlan::new(30.0, window, stride, 6).unwrap_err() {
                GitcapError::InvalidArgument { field: f, .. } => assert_eq!(f, field),
                other => panic!("{other:?}"),
            }
        }
    }
}
