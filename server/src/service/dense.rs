//! Dense video captioning: timestamped captions over a whole video file.
//!
//! The frames are sampled on one grid, `window_s / frames` apart (the model's frame count per
//! window), decoded in passes along it (`VideoDecoder::frames_on_grid`), and each goes through
//! the vision tower once, as it arrives; every window is then captioned from the encoded frames
//! it contains, so overlapping windows share their frames' features — the live-captioning
//! machinery applied to a file. Captions are sent as they are ready, in order.
//!
//! What a request may cost is bounded before anything is decoded ([`DensePlan::new`] against
//! [`DenseLimits`]); the call's deadline stops decoding and captioning; and a client that stops
//! reading holds no decoder process: the decoding pass is stopped while the request waits to
//! send, and a new one picks up the grid where it left off.

use std::collections::VecDeque;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::sync::mpsc::{self, error::TrySendError};

use super::request::{submit, Answer};
use super::{Admitted, Call, Core};
use crate::deadline::Deadline;
use crate::engine::{EncodedFrame, Frame, InferenceRequest, ModelWorker, Priority};
use crate::error::{GitcapError, Result};
use crate::media::video::{DenseLimits, TimedFrame, VideoDecoder, VideoInfo};
use crate::model::generation::GenerationOptions;
use crate::service::media::MediaInput;
use crate::service::media::MediaService;
use crate::telemetry::RequestTrace;

/// Seconds a window covers when the request leaves `window_s` at 0.
pub const DEFAULT_WINDOW_S: f64 = 10.0;

/// The request field errors about the video file are reported on.
const MEDIA_FIELD: &str = "media";

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
    /// `stride_s` seconds (0 = the defaults), `frames_per_window` frames each. Refused, naming
    /// `window_s` or `stride_s`, when it breaks `limits`; the counts are checked before the list
    /// of windows is built.
    pub fn new(
        duration_s: f64,
        window_s: f64,
        stride_s: f64,
        frames_per_window: usize,
        limits: &DenseLimits,
    ) -> Result<Self> {
        let window_s = if window_s == 0.0 { DEFAULT_WINDOW_S } else { window_s };
        if !(window_s.is_finite() && window_s > 0.0 && window_s >= limits.min_window_secs) {
            return Err(GitcapError::invalid(
                "window_s",
                format!(
                    "must be at least {} s (media.dense.min_window_secs), or 0 for {DEFAULT_WINDOW_S} s; not {window_s}",
                    limits.min_window_secs
                ),
            ));
        }
        let stride_s = if stride_s == 0.0 { window_s } else { stride_s };
        if !(stride_s.is_finite() && stride_s > 0.0 && stride_s >= limits.min_stride_secs) {
            return Err(GitcapError::invalid(
                "stride_s",
                format!(
                    "must be at least {} s (media.dense.min_stride_secs), or 0 for windows that do not overlap; \
                     not {stride_s}",
                    limits.min_stride_secs
                ),
            ));
        }
        if !(duration_s.is_finite() && duration_s > 0.0) {
            return Err(GitcapError::media(
                MEDIA_FIELD,
                format!("the video's duration ({duration_s} s) is not usable"),
            ));
        }
        // A video shorter than one window is one window over the whole of it.
        let window_s = window_s.min(duration_s);
        let frames_per_window = frames_per_window.max(1);
        let step_s = window_s / frames_per_window as f64;
        let first_s = step_s / 2.0;
        // Grid frames at first_s + k * step_s, before the end of the video: counted in f64, so
        // that no window can ask for an allocation or a loop before the limit is checked.
        let frames = ((duration_s - first_s) / step_s).ceil().max(1.0);
        if !frames.is_finite() || frames > limits.max_frames as f64 {
            let shortest = frames_per_window as f64 * duration_s / limits.max_frames.max(1) as f64;
            return Err(GitcapError::invalid(
                "window_s",
                format!(
                    "{window_s} s windows of {frames_per_window} frames need {frames} frames over this {duration_s:.3} s \
                     video, more than the {} one request may decode (media.dense.max_frames); use windows of at \
                     least {shortest:.3} s",
                    limits.max_frames
                ),
            ));
        }
        let frames = frames as usize;
        let stride_frames = ((stride_s / step_s).round() as usize).max(1);
        let count = if frames >= frames_per_window { (frames - frames_per_window) / stride_frames + 1 } else { 1 };
        if count > limits.max_windows {
            let shortest = duration_s / limits.max_windows.max(1) as f64;
            return Err(GitcapError::invalid(
                "stride_s",
                format!(
                    "a window every {stride_s} s makes {count} captions of this {duration_s:.3} s video, more than \
                     the {} one request may ask for (media.dense.max_windows); use a stride of at least \
                     {shortest:.3} s",
                    limits.max_windows
                ),
            ));
        }
        let windows = (0..count).map(|j| j * stride_frames).collect();
        Ok(Self { step_s, first_s, frames, frames_per_window, stride_frames, windows, window_s })
    }

    /// The time range of window `first` (its first grid frame): `[start, end)` seconds.
    pub fn range(&self, first: usize) -> (f64, f64) {
        let start = first as f64 * self.step_s;
        (start, start + self.window_s)
    }
}

/// One window's caption: the seconds it covers and its answer (with its frames' timestamps).
pub struct DenseCaption {
    pub start_s: f64,
    pub end_s: f64,
    pub answer: Answer,
}

type Sender = mpsc::Sender<Result<DenseCaption>>;

/// One dense captioning request, validated.
pub struct DenseSession {
    worker: ModelWorker,
    media: Arc<MediaService>,
    question: Option<String>,
    options: GenerationOptions,
    priority: Priority,
    window_s: f64,
    stride_s: f64,
    /// The caller's deadline.
    deadline: Deadline,
    /// The call's span (crate::telemetry): each window's stages go under it.
    trace: Option<RequestTrace>,
}

impl DenseSession {
    /// Dense captions for `admitted` with windows of `window_s` seconds every `stride_s` (0 = the
    /// defaults; checked against the video once its duration is known), within `call`'s
    /// deadline. Refused at once where this server decodes no video.
    pub fn new(
        core: &Core,
        admitted: Admitted,
        priority: Priority,
        window_s: f64,
        stride_s: f64,
        call: &Call,
        trace: Option<RequestTrace>,
    ) -> Result<Self> {
        core.media.video_decoder()?;
        let Admitted { worker, question, options } = admitted;
        let media = core.media.clone();
        Ok(Self { worker, media, question, options, priority, window_s, stride_s, deadline: call.deadline, trace })
    }

    /// Captions every window of the video in `media`, sending each caption as it is ready;
    /// DEADLINE_EXCEEDED, with decoding and captioning stopped, at the caller's deadline.
    pub async fn run(self, media: MediaInput, tx: &Sender) -> Result<()> {
        let Some(at) = self.deadline.instant() else { return self.captions(media, tx).await };
        match tokio::time::timeout_at(at.into(), self.captions(media, tx)).await {
            Ok(result) => result,
            Err(_) => Err(GitcapError::DeadlineExceeded("while the video was being captioned".into())),
        }
    }

    /// How long the request waits for its client to take an event (`media.dense.send_timeout_secs`).
    pub fn send_timeout(&self) -> Duration {
        let seconds = self.media.video_decoder().map_or(0.0, |decoder| decoder.limits().dense.send_timeout_secs);
        Duration::from_secs_f64(seconds.max(0.0))
    }

    async fn captions(&self, media: MediaInput, tx: &Sender) -> Result<()> {
        let file = self.media.video_file(media).await?;
        let decoder = self.media.video_decoder()?;
        let info = decoder.probe(&file, MEDIA_FIELD).await?;
        let limits = &decoder.limits().dense;
        let plan = DensePlan::new(info.duration_s, self.window_s, self.stride_s, self.worker.info.max_frames, limits)?;
        let mut grid = GridFrames::new(decoder, &file, &info, &plan);
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
                let pixels = self.media.shrink(frame.image, &self.worker.info).await?;
                drop(frame.room);
                let Frame::Pixels(pixels) = pixels else {
                    return Err(GitcapError::Internal("a decoded frame was not pixels".into()));
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
            let event = self.caption(&plan, first, window).await?;
            send(tx, event, &mut grid, self.send_timeout()).await?;
        }
        Ok(())
    }

    async fn caption(&self, plan: &DensePlan, first: usize, window: Vec<(f64, Frame)>) -> Result<DenseCaption> {
        let (timestamps, frames): (Vec<f64>, Vec<Frame>) = window.into_iter().unzip();
        let request = InferenceRequest {
            frames,
            question: self.question.clone(),
            options: self.options,
            priority: self.priority,
        };
        let now = Instant::now();
        let answer = submit(self.worker.clone(), request, self.deadline, now, now, self.trace.clone())?
            .with_timestamps(timestamps)
            .finish()
            .await?;
        let (start_s, end_s) = plan.range(first);
        Ok(DenseCaption { start_s, end_s, answer })
    }
}

/// Sends `event` to the client. When the client is not keeping up (the stream's buffer is
/// full), the decoding pass is stopped first, so that no decoder process waits on the client,
/// and the wait is bounded by `media.dense.send_timeout_secs`.
async fn send(tx: &Sender, event: DenseCaption, grid: &mut GridFrames<'_>, wait: Duration) -> Result<()> {
    let permit = match tx.try_reserve() {
        Ok(permit) => permit,
        Err(TrySendError::Closed(())) => return Err(GitcapError::Cancelled),
        Err(TrySendError::Full(())) => {
            grid.pause();
            match tokio::time::timeout(wait, tx.reserve()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(GitcapError::Cancelled),
                Err(_) => return Err(client_stalled(wait)),
            }
        }
    };
    permit.send(Ok(event));
    Ok(())
}

/// The error of a request whose client read nothing for `media.dense.send_timeout_secs`.
fn client_stalled(wait: Duration) -> GitcapError {
    GitcapError::DeadlineExceeded(format!(
        "the client read no caption for {} s (media.dense.send_timeout_secs)",
        wait.as_secs_f64()
    ))
}

type FrameStream<'a> = Pin<Box<dyn Stream<Item = Result<TimedFrame>> + Send + 'a>>;

/// A plan's grid frames, in order, decoded in passes of at most the decoder's frames per call.
/// [`Self::pause`] stops the pass (its process and slot go back); the next frame asked for
/// starts a new pass there.
struct GridFrames<'a> {
    decoder: &'a VideoDecoder,
    file: &'a Path,
    info: &'a VideoInfo,
    plan: &'a DensePlan,
    /// The next grid frame, and where the running pass ends.
    next: usize,
    pass_end: usize,
    pass: Option<FrameStream<'a>>,
}

impl<'a> GridFrames<'a> {
    fn new(decoder: &'a VideoDecoder, file: &'a Path, info: &'a VideoInfo, plan: &'a DensePlan) -> Self {
        Self { decoder, file, info, plan, next: 0, pass_end: 0, pass: None }
    }

    /// The next grid frame; `None` after the last, or when the video ends before the grid.
    async fn next(&mut self) -> Option<Result<TimedFrame>> {
        if self.next >= self.plan.frames {
            return None;
        }
        let plan = self.plan;
        let pass = match &mut self.pass {
            Some(pass) => pass,
            none => {
                let count = (plan.frames - self.next).min(self.decoder.limits().max_frames.max(1));
                let start_s = plan.first_s + self.next as f64 * plan.step_s;
                self.pass_end = self.next + count;
                let frames =
                    self.decoder.frames_on_grid(self.file, self.info, start_s, plan.step_s, count, MEDIA_FIELD);
                none.insert(Box::pin(frames))
            }
        };
        let frame = pass.next().await;
        match &frame {
            Some(Ok(_)) => {
                self.next += 1;
                if self.next == self.pass_end {
                    self.pass = None;
                }
            }
            // An error, or the video's end: nothing more.
            _ => {
                self.pass = None;
                self.next = plan.frames;
            }
        }
        frame
    }

    /// Stops the running pass, if any.
    fn pause(&mut self) {
        self.pass = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DenseLimits {
        DenseLimits::default()
    }

    #[test]
    fn windows_share_one_grid_of_frames() {
        // 60 s, 10 s windows of 6 frames every 5 s: frames every 1.667 s from 0.833 s.
        let plan = DensePlan::new(60.0, 10.0, 5.0, 6, &limits()).unwrap();
        assert!((plan.step_s - 10.0 / 6.0).abs() < 1e-12);
        assert_eq!(plan.frames, 36);
        assert_eq!(plan.stride_frames, 3);
        assert_eq!(plan.windows, (0..=30).step_by(3).collect::<Vec<_>>());
        assert_eq!(plan.range(3), (5.0, 15.0));
        // Defaults: 10 s windows that do not overlap.
        let plan = DensePlan::new(25.0, 0.0, 0.0, 6, &limits()).unwrap();
        assert_eq!((plan.window_s, plan.stride_frames, plan.windows.clone()), (10.0, 6, vec![0, 6]));
    }

    #[test]
    fn a_short_video_is_one_window_over_all_of_it() {
        let plan = DensePlan::new(3.0, 10.0, 5.0, 6, &limits()).unwrap();
        assert_eq!((plan.window_s, plan.frames, plan.windows.clone()), (3.0, 6, vec![0]));
        assert!((plan.first_s - 0.25).abs() < 1e-12);
    }

    #[test]
    fn tiny_windows_and_strides_are_refused_before_anything_is_built() {
        // Each of these once built a multi-GiB list of windows, or looped forever.
        for (window, stride, field) in
            [(1e-6, 0.0, "window_s"), (5e-324, 0.0, "window_s"), (0.5, 0.0, "window_s"), (10.0, 1e-9, "stride_s")]
        {
            match DensePlan::new(7200.0, window, stride, 6, &limits()).unwrap_err() {
                GitcapError::InvalidArgument { field: f, message } => {
                    assert_eq!(f, field, "{message}");
                    assert!(message.contains("media.dense.min_"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn the_longest_video_accepted_fits_the_default_caps_and_more_is_refused_by_name() {
        // media.video.max_duration_secs at the default window and stride of a 6-frame model.
        let plan = DensePlan::new(7200.0, 0.0, 0.0, 6, &limits()).unwrap();
        assert_eq!((plan.frames, plan.windows.len()), (4320, 720));
        // Small windows over a long video: too many frames, named on window_s with a way out.
        let error = DensePlan::new(7200.0, 2.0, 0.0, 6, &limits()).unwrap_err();
        let GitcapError::InvalidArgument { field, message } = error else { panic!("{error:?}") };
        assert_eq!(field, "window_s");
        assert!(message.contains("media.dense.max_frames") && message.contains("at least 10.000 s"), "{message}");
        // A window every grid frame (the stride rounds to 1 frame): too many captions, named on
        // stride_s.
        let error = DensePlan::new(7200.0, 10.0, 1.0, 6, &limits()).unwrap_err();
        let GitcapError::InvalidArgument { field, message } = error else { panic!("{error:?}") };
        assert_eq!(field, "stride_s");
        assert!(message.contains("media.dense.max_windows") && message.contains("4315 captions"), "{message}");
        // The caps are settings.
        let tight = DenseLimits { max_windows: 3, max_frames: 18, ..limits() };
        assert_eq!(DensePlan::new(30.0, 10.0, 0.0, 6, &tight).unwrap().windows, vec![0, 6, 12]);
        assert!(DensePlan::new(40.0, 10.0, 0.0, 6, &tight).is_err());
    }

    #[test]
    fn bad_windows_name_their_field() {
        for (window, stride, field) in [(-1.0, 0.0, "window_s"), (f64::NAN, 0.0, "window_s"), (5.0, -2.0, "stride_s")] {
            match DensePlan::new(30.0, window, stride, 6, &limits()).unwrap_err() {
                GitcapError::InvalidArgument { field: f, .. } => assert_eq!(f, field),
                other => panic!("{other:?}"),
            }
        }
    }
}
