//! One decoding pass: an `ffmpeg` child that seeks once, decodes forward, and hands over the
//! frames `ffmpeg -ss t` would write for each of a run of timestamps `t`.
//!
//! The child seeks with `-ss` to the first timestamp (so ffmpeg's own `trim` drops what comes
//! before it, exactly as for `-ss t -frames:v 1`), keeps with a `select` filter only the frames
//! that can be answers, converts them to RGB, and writes each twice: its pixels on stdout
//! (`rawvideo`) and its timestamp and size on descriptor 3 (`framecrc`). The timestamp decides,
//! here, which samples the frame answers ([`super::timing`]): sample `k` gets the first frame
//! whose timestamp reaches its threshold.
//!
//! A sample whose threshold no frame reaches lies after the last frame's start: its frame is
//! the last frame. A pass that ends with such samples finds that frame with two more children:
//! one lists the timestamps of the frames near the end, one fetches the last of them.

use std::ffi::OsString;
use std::fmt::Write as _;

use image::RgbImage;
use tokio::sync::OwnedSemaphorePermit;

use super::child::{Child, Filled};
use super::timing::{ss_arg, threshold, us_from_seconds, TimeBase};
use super::{Source, VideoInfo};
use crate::error::{GitcapError, Result};
use crate::media::budget::OwnedReservation;

/// The most samples one pass picks with an exact `select` expression (one term each).
pub(crate) const MAX_EXACT_SAMPLES: usize = 64;
/// How far before a sample past the last frame the search for that frame looks: this many
/// frame durations, and at least [`TAIL_SEARCH_MIN_S`].
const TAIL_SEARCH_FRAMES: f64 = 20.0;
const TAIL_SEARCH_MIN_S: f64 = 2.0;
/// The children, as error messages name them.
const DECODER: &str = "the video decoder";

/// One timestamp asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    /// Its position in the caller's list.
    pub index: usize,
    /// As asked, in seconds.
    pub timestamp_s: f64,
    /// The same, in whole microseconds (what ffmpeg sees).
    pub us: i64,
}

impl Sample {
    pub fn new(index: usize, timestamp_s: f64) -> Self {
        Self { index, timestamp_s, us: us_from_seconds(timestamp_s) }
    }
}

/// How the child's `select` filter picks candidate frames.
#[derive(Debug, Clone, PartialEq)]
enum Select {
    /// Exactly the frames that are answers: one term per distinct threshold.
    Exact,
    /// Samples on a regular grid: threshold `k` is `k * step` ticks give or take `margin`; the
    /// frames picked are a superset of the answers (a frame within `margin` of a threshold is
    /// an extra, dropped here).
    Grid { step_ticks: f64, margin_ticks: f64 },
}

/// What one pass decodes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PassPlan {
    /// Where the child seeks to (`-ss`), microseconds from the container's start: the first
    /// sample's time.
    seek_us: i64,
    samples: Vec<Sample>,
    /// Each sample's threshold in ticks after the seek point (0 for the first).
    thresholds: Vec<i64>,
    select: Select,
    /// The most frames the child may write.
    max_frames: usize,
}

impl PassPlan {
    /// A pass for up to [`MAX_EXACT_SAMPLES`] samples of any spacing (non-decreasing times).
    pub fn exact(info: &VideoInfo, samples: Vec<Sample>) -> Self {
        debug_assert!(!samples.is_empty() && samples.len() <= MAX_EXACT_SAMPLES);
        let seek_us = samples[0].us;
        let thresholds = relative_thresholds(info, seek_us, &samples);
        let max_frames = samples.len();
        Self { seek_us, samples, thresholds, select: Select::Exact, max_frames }
    }

    /// A pass for `count` samples `start_s + k * step_s` (numbered from `first_index`).
    pub fn grid(info: &VideoInfo, start_s: f64, step_s: f64, count: usize, first_index: usize) -> Self {
        let samples: Vec<Sample> =
            (0..count).map(|k| Sample::new(first_index + k, start_s + k as f64 * step_s)).collect();
        if count <= MAX_EXACT_SAMPLES {
            return Self::exact(info, samples);
        }
        let seek_us = samples[0].us;
        let thresholds = relative_thresholds(info, seek_us, &samples);
        let tb = info.time_base;
        let ticks_per_us = tb.den as f64 / (tb.num as f64 * 1e6);
        // Two roundings to the microsecond (each sample and the seek point) and two to the tick.
        let margin_ticks = 1.0 + 1.001 * ticks_per_us + 1e-6;
        let step_ticks = step_s * 1e6 * ticks_per_us;
        // A frame is an extra only near a threshold: at most this many per sample.
        let per_sample = 2 * (margin_ticks.ceil() as usize) + 2;
        let max_frames = count.saturating_mul(per_sample);
        Self { seek_us, samples, thresholds, select: Select::Grid { step_ticks, margin_ticks }, max_frames }
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The `select` filter's expression: true for frames to keep. `prev_pts` is the timestamp
    /// of the frame before (NaN for the first one after the seek, which always answers the
    /// first sample).
    fn select_expression(&self) -> String {
        let mut terms = String::from("isnan(prev_pts)");
        match self.select {
            Select::Exact => {
                let mut previous = None;
                for &threshold in &self.thresholds {
                    if previous != Some(threshold) {
                        let _ = write!(terms, "+gte(pts\\,{threshold})*lt(prev_pts\\,{threshold})");
                        previous = Some(threshold);
                    }
                }
            }
            Select::Grid { step_ticks, margin_ticks } => {
                // Is there a k in [0, count) with prev_pts - margin < k * step <= pts + margin?
                let last = self.samples.len() - 1;
                let _ = write!(
                    terms,
                    "+gte(min(floor((pts+{margin_ticks})/{step_ticks})\\,{last})\\,\
                     max(floor((prev_pts-{margin_ticks})/{step_ticks})+1\\,0))"
                );
            }
        }
        format!("gt({terms}\\,0)")
    }

    /// ffmpeg's arguments, after the common ones, to run this pass on `url` (a `file:` URL).
    pub fn ffmpeg_args(&self, info: &VideoInfo, url: OsString, threads: usize) -> Vec<OsString> {
        let time_base = info.time_base.ratio_arg();
        let frames = self.max_frames.max(1).to_string();
        let threads = threads.to_string();
        let seek = ss_arg(self.seek_us);
        let graph = format!("[0:V:0]select='{}',format=rgb24,split=2[stamps][pixels]", self.select_expression());
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        push(&["-threads", &threads, "-ss", &seek, "-i"]);
        args.push(url);
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        push(&["-filter_complex_threads", "1", "-filter_complex", &graph]);
        // Output 0 on descriptor 3: each frame's timestamp (in the stream's time base, untouched
        // by frame-rate conversion) and size. Output 1 on stdout: its pixels.
        for (label, format, target) in [("[stamps]", "framecrc", "pipe:3"), ("[pixels]", "rawvideo", "pipe:1")] {
            push(&["-map", label, "-c:v", "rawvideo", "-fps_mode", "passthrough", "-enc_time_base:v", &time_base]);
            push(&["-frames:v", &frames, "-flush_packets", "1", "-f", format, target]);
        }
        args
    }
}

/// Each sample's threshold in ticks, relative to the seek point's.
fn relative_thresholds(info: &VideoInfo, seek_us: i64, samples: &[Sample]) -> Vec<i64> {
    let (tb, start_us) = (info.time_base, info.start_us());
    let origin = threshold(tb, start_us, seek_us);
    samples.iter().map(|sample| threshold(tb, start_us, sample.us).saturating_sub(origin)).collect()
}

/// A frame and the samples it answers.
pub(crate) struct Hit {
    pub image: RgbImage,
    pub samples: Vec<Sample>,
    /// The image's room in the media budget.
    pub room: Option<OwnedReservation>,
}

/// What a pass gives next.
pub(crate) enum Step {
    /// A frame and the samples it answers.
    Hit(Hit),
    /// Every sample of the pass has its frame.
    Done,
    /// The child ended with these samples unanswered: they lie after the last frame's start
    /// (see [`last_frame`]).
    AfterLastFrame(Vec<Sample>),
}

/// A pass whose child is running.
pub(crate) struct RunningPass {
    plan: PassPlan,
    child: Option<Child>,
    /// The first sample not yet answered.
    next: usize,
    frames_read: usize,
}

impl RunningPass {
    /// Starts the child in `slot`.
    pub fn start(plan: PassPlan, source: &Source, slot: OwnedSemaphorePermit) -> Result<Self> {
        let mut args = source.ffmpeg_common_args();
        args.extend(plan.ffmpeg_args(&source.info, source.url(), source.budget.limits.threads_per_process));
        let child = Child::spawn(&source.tools.ffmpeg, args, true, DECODER, &source.budget, slot)?;
        Ok(Self { plan, child: Some(child), next: 0, frames_read: 0 })
    }

    /// The next frame that answers samples, in order.
    pub async fn next_step(&mut self, source: &Source) -> Result<Step> {
        while self.next < self.plan.samples.len() && self.frames_read < self.plan.max_frames {
            let Some(Decoded { pixels, pts, room }) = next_frame(&mut self.child, source).await? else { break };
            self.frames_read += 1;
            let first = self.next;
            while self.next < self.plan.samples.len() && self.plan.thresholds[self.next] <= pts {
                self.next += 1;
            }
            if self.next > first {
                if self.next == self.plan.samples.len() {
                    self.stop();
                }
                let image = to_image(&source.info, pixels)?;
                return Ok(Step::Hit(Hit { image, samples: self.plan.samples[first..self.next].to_vec(), room }));
            }
        }
        self.stop();
        if self.next == self.plan.samples.len() {
            return Ok(Step::Done);
        }
        let rest = self.plan.samples[self.next..].to_vec();
        self.next = self.plan.samples.len();
        Ok(Step::AfterLastFrame(rest))
    }

    /// The samples not answered yet.
    pub fn unanswered(&self) -> &[Sample] {
        &self.plan.samples[self.next..]
    }

    /// Kills the child: nothing more is needed from it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }
}

/// A frame read from a child.
struct Decoded {
    pixels: Vec<u8>,
    pts: i64,
    /// Its room in the media budget (twice its size: see `VideoDecoder::with_media_budget`).
    room: Option<OwnedReservation>,
}

/// The next frame's pixels and timestamp from a pass's child; `None` once it ended cleanly (it
/// is then gone from `running`). A child that ended badly is an error saying why. The frame's
/// room is reserved while this pass holds its child's slot, before the pixels are allocated.
async fn next_frame(running: &mut Option<Child>, source: &Source) -> Result<Option<Decoded>> {
    let Some(child) = running.as_mut() else { return Ok(None) };
    let frame_bytes = source.info.frame_bytes();
    let room = source.budget.frame_room(frame_bytes as u64 * 2).await?;
    let mut pixels = vec![0u8; frame_bytes];
    let problem = match child.read_frame(&mut pixels).await? {
        Filled::Whole => match frame_stamp(child, source).await? {
            Some(pts) => return Ok(Some(Decoded { pixels, pts, room })),
            None => Some("the video decoder wrote a frame without its timestamp".to_string()),
        },
        Filled::Ended => None,
        Filled::Partly(bytes) => {
            Some(format!("the video decoder stopped in the middle of a frame ({bytes} of {frame_bytes} bytes)"))
        }
    };
    // Its exit status says why it ended, when it failed.
    running.take().expect("the child is running").finish().await?;
    match problem {
        None => Ok(None),
        Some(problem) => Err(source.budget.media_error(problem)),
    }
}

/// Reads the side channel's lines up to the one for the frame just read: its timestamp, after
/// checking that its size is the one expected; `None` if the channel closed first.
async fn frame_stamp(child: &mut Child, source: &Source) -> Result<Option<i64>> {
    let frame_bytes = source.info.frame_bytes();
    while let Some(line) = child.side_line().await? {
        check_time_base(&line, source.info.time_base)?;
        let Some(stamp) = parse_framecrc(&line) else { continue };
        if stamp.size != frame_bytes {
            return Err(source.budget.media_error(format!(
                "the video changes frame size part way through ({} bytes instead of {frame_bytes}); \
                 re-encode it to one size",
                stamp.size
            )));
        }
        return Ok(Some(stamp.pts));
    }
    Ok(None)
}

/// Timestamps are only comparable with thresholds in the stream's own time base.
fn check_time_base(line: &str, expected: TimeBase) -> Result<()> {
    match parse_framecrc_time_base(line) {
        Some(declared) if declared != expected => Err(GitcapError::Internal(format!(
            "ffmpeg counted time in ticks of {}/{} s, not in the stream's time base",
            declared.num, declared.den
        ))),
        _ => Ok(()),
    }
}

/// One `framecrc` line: `stream, dts, pts, duration, size, checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    pts: i64,
    size: usize,
}

/// `None` for header lines (`#tb 0: 1/15360`) and anything else that is not a frame.
fn parse_framecrc(line: &str) -> Option<Stamp> {
    if line.starts_with('#') {
        return None;
    }
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    if fields.len() < 6 {
        return None;
    }
    Some(Stamp { pts: fields[2].parse().ok()?, size: fields[4].parse().ok()? })
}

/// The time base a `framecrc` header line declares for stream 0.
fn parse_framecrc_time_base(line: &str) -> Option<TimeBase> {
    TimeBase::parse(line.strip_prefix("#tb 0:")?)
}

fn to_image(info: &VideoInfo, pixels: Vec<u8>) -> Result<RgbImage> {
    RgbImage::from_raw(info.width, info.height, pixels)
        .ok_or_else(|| GitcapError::Internal("a decoded frame does not fill its image".into()))
}

/// The last frame of the video, the answer for every sample after its start (`sample` is the
/// first of them): one child lists the timestamps of the frames from a little before `sample`
/// to the end, a second fetches the last of them. Each waits for a process slot. The image comes
/// with its room in the media budget.
pub(crate) async fn last_frame(source: &Source, sample: Sample) -> Result<(RgbImage, Option<OwnedReservation>)> {
    let info = &source.info;
    let search_s = (TAIL_SEARCH_FRAMES / info.rate_or_typical()).max(TAIL_SEARCH_MIN_S);
    let seek_us = (sample.us - us_from_seconds(search_s)).max(0);
    let most_frames = ((search_s + 1.0) * info.rate_or_typical() * 4.0).ceil() as usize + 64;
    let Some(last) = last_stamp(source, seek_us, most_frames).await? else {
        return Err(source.budget.media_error(format!(
            "no frame of the video could be decoded between {:.3} s and its end ({:.3} s); the file may be truncated",
            seek_us as f64 / 1e6,
            info.duration_s
        )));
    };
    // Seek to a microsecond whose threshold is at most that frame's timestamp, then take the
    // first frame that reaches the timestamp.
    let (tb, start_us) = (info.time_base, info.start_us());
    let absolute = last + threshold(tb, start_us, seek_us);
    let at_us = ((absolute as f64 * tb.num as f64 * 1e6 / tb.den as f64).floor() as i64 - start_us).max(0);
    let mut fetch = PassPlan::exact(info, vec![Sample { us: at_us, ..sample }]);
    fetch.thresholds = vec![absolute - threshold(tb, start_us, at_us)];
    let wanted = fetch.thresholds[0];
    // The first frame after the seek, then the one reaching the timestamp (the same, mostly).
    fetch.max_frames = 2;
    let slot = source.budget.wait_for_slot().await?;
    let mut pass = RunningPass::start(fetch, source, slot)?;
    while let Some(Decoded { pixels, pts, room }) = next_frame(&mut pass.child, source).await? {
        if pts >= wanted {
            pass.stop();
            return Ok((to_image(info, pixels)?, room));
        }
    }
    Err(source.budget.media_error("the video's last frame could not be decoded a second time"))
}

/// The timestamp (ticks after the seek point's threshold) of the last frame from `seek_us` on.
async fn last_stamp(source: &Source, seek_us: i64, most_frames: usize) -> Result<Option<i64>> {
    let mut args = source.ffmpeg_common_args();
    let threads = source.budget.limits.threads_per_process.to_string();
    args.extend(["-threads", &threads, "-ss", &ss_arg(seek_us), "-i"].map(OsString::from));
    args.push(source.url());
    let time_base = source.info.time_base.ratio_arg();
    let frames = most_frames.to_string();
    let outputs = ["-map", "0:V:0", "-c:v", "wrapped_avframe", "-fps_mode", "passthrough", "-enc_time_base:v"];
    args.extend(outputs.map(OsString::from));
    args.extend([time_base.as_str(), "-frames:v", &frames, "-f", "framecrc", "pipe:1"].map(OsString::from));
    let slot = source.budget.wait_for_slot().await?;
    let mut child = Child::spawn(&source.tools.ffmpeg, args, false, DECODER, &source.budget, slot)?;
    let (mut last, mut listed) = (None, 0);
    while let Some(line) = child.stdout_line(1024).await? {
        check_time_base(&line, source.info.time_base)?;
        if let Some(stamp) = parse_framecrc(&line) {
            last = Some(stamp.pts);
            listed += 1;
        }
    }
    child.finish().await?;
    if listed >= most_frames {
        return Err(source.budget.media_error(format!(
            "the video has more than {most_frames} frames after {:.3} s; its frame rate is implausible",
            seek_us as f64 / 1e6
        )));
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(time_base: TimeBase, start_s: f64) -> VideoInfo {
        VideoInfo {
            container: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            codec: "h264".into(),
            duration_s: 10.0,
            start_s,
            width: 4,
            height: 2,
            rotation: 0,
            frame_rate: Some(30.0),
            frame_count: Some(300),
            time_base,
            stream_index: 0,
        }
    }

    #[test]
    fn thresholds_are_relative_to_the_seek_point() {
        let info = video(TimeBase { num: 1, den: 15360 }, 0.0);
        let plan =
            PassPlan::exact(&info, vec![Sample::new(0, 1.0), Sample::new(1, 1.0 + 1.0 / 30.0), Sample::new(2, 2.0)]);
        assert_eq!(plan.seek_us, 1_000_000);
        assert_eq!(plan.thresholds, vec![0, 512, 15360]);
        assert_eq!(plan.max_frames, 3);
        let offset = video(TimeBase { num: 1, den: 90_000 }, 1.466667);
        let plan = PassPlan::exact(&offset, vec![Sample::new(4, 0.0), Sample::new(5, 0.1)]);
        assert_eq!(plan.thresholds, vec![0, 9000]);
        assert_eq!(plan.samples()[1].index, 5);
    }

    #[test]
    fn exact_selection_has_one_term_per_distinct_threshold() {
        let info = video(TimeBase { num: 1, den: 1000 }, 0.0);
        let plan = PassPlan::exact(&info, vec![Sample::new(0, 0.5), Sample::new(1, 0.5), Sample::new(2, 0.75)]);
        assert_eq!(
            plan.select_expression(),
            "gt(isnan(prev_pts)+gte(pts\\,0)*lt(prev_pts\\,0)+gte(pts\\,250)*lt(prev_pts\\,250)\\,0)"
        );
    }

    #[test]
    fn grid_margins_cover_the_rounding() {
        let info = video(TimeBase { num: 1, den: 15360 }, 0.0);
        let plan = PassPlan::grid(&info, 0.25, 0.1, 100, 0);
        let Select::Grid { step_ticks, margin_ticks } = plan.select else { panic!("{:?}", plan.select) };
        assert!((step_ticks - 1536.0).abs() < 1e-9);
        for (k, &threshold) in plan.thresholds.iter().enumerate() {
            assert!((threshold as f64 - k as f64 * step_ticks).abs() <= margin_ticks, "{k}: {threshold}");
        }
        assert_eq!(PassPlan::grid(&info, 0.25, 0.1, 10, 0).select, Select::Exact);
    }

    #[test]
    fn reads_framecrc_lines() {
        assert_eq!(
            parse_framecrc("0,        512,        512,        1,    57600, 0x5a552c57"),
            Some(Stamp { pts: 512, size: 57600 })
        );
        assert_eq!(parse_framecrc("#tb 0: 1/15360"), None);
        assert_eq!(parse_framecrc("garbage"), None);
        assert_eq!(parse_framecrc_time_base("#tb 0: 1/15360"), Some(TimeBase { num: 1, den: 15360 }));
    }
}
