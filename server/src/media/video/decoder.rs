//! [`VideoDecoder`]: probing a video file and streaming its frames at chosen timestamps.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::Stream;
use image::RgbImage;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

use super::child::{Budget, Child};
use super::pass::{PassPlan, Sample, MAX_EXACT_SAMPLES};
use super::probe::{self, VideoInfo};
use super::sampling::{check_timestamps, SAMPLING_FIELD};
use super::sniff::{sniff_container, SNIFF_BYTES};
use super::tools::{self, Tools};
use super::{accepted_demuxers, accepted_names, stream, VideoLimits};
use crate::error::{GitcapError, Result};
use crate::media::budget::{MediaBudget, OwnedReservation};

/// Largest ffprobe report read (a video stream's entries are about 1 KiB).
const PROBE_OUTPUT_BYTES: u64 = 1 << 20;
/// Samples closer than this many frames apart are decoded by one child going forward rather
/// than by a seek each: decoding that many frames costs about what a new child and a seek do.
const JOIN_GAP_FRAMES: f64 = 90.0;

/// Decodes videos with the `ffmpeg` and `ffprobe` programs, each call in children of its own
/// under [`VideoLimits`]. Cheap to clone; clones share the limit on children running at once.
#[derive(Clone)]
pub struct VideoDecoder {
    tools: Arc<Tools>,
    limits: Arc<VideoLimits>,
    slots: Arc<Semaphore>,
    /// Where decoded frames reserve their memory (see [`Self::with_media_budget`]).
    room: Option<MediaBudget>,
}

/// A decoded frame and the sample it answers.
#[derive(Debug)]
pub struct TimedFrame {
    /// The sample's position in the timestamps asked for.
    pub index: usize,
    /// The timestamp asked for, in seconds from the video's start.
    pub timestamp_s: f64,
    /// The frame `ffmpeg -ss <timestamp> -i FILE -frames:v 1` writes, as RGB.
    pub image: RgbImage,
    /// Its room in the media budget (with [`VideoDecoder::with_media_budget`]): drop it once
    /// the image has been shrunk.
    pub room: Option<OwnedReservation>,
}

impl VideoDecoder {
    /// Finds `ffmpeg` and `ffprobe` (the given paths, else on `$PATH`) and checks they run.
    /// The error says how to install them.
    pub fn detect(ffmpeg: Option<&Path>, ffprobe: Option<&Path>, limits: VideoLimits) -> Result<Self, String> {
        let tools = tools::find(ffmpeg, ffprobe)?;
        let slots = Arc::new(Semaphore::new(limits.max_processes.max(1)));
        Ok(Self { tools: Arc::new(tools), limits: Arc::new(limits), slots, room: None })
    }

    /// Each decoded frame reserves twice its RGB size in `budget` (the frame, and a copy while
    /// one frame answers several timestamps) before it is read from its child, and holds it in
    /// [`TimedFrame::room`]. The decoder reserves only while it holds the frame's process slot,
    /// so requests waiting for room and requests waiting for a process cannot deadlock.
    pub fn with_media_budget(mut self, budget: MediaBudget) -> Self {
        self.room = Some(budget);
        self
    }

    /// The ffmpeg in use, e.g. `ffmpeg 5.1.6-0+deb12u1`.
    pub fn version(&self) -> &str {
        &self.tools.version
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> &VideoLimits {
        &self.limits
    }

    /// Reads the container and its first video stream (cover art aside) with `ffprobe`, and
    /// checks them against the limits. Errors are [`GitcapError::Media`] on `field`, saying what
    /// is wrong with the file (no video stream, unknown duration, too large or long, a container
    /// that is not accepted, or unreadable), or `ResourceExhausted` when no process slot frees up.
    pub async fn probe(&self, file: &Path, field: &str) -> Result<VideoInfo> {
        let file = absolute(file)?;
        let budget = self.budget(&file, field);
        let mut args = self.ffprobe_common_args();
        args.extend(probe::probe_args(file_url(&file)));
        let slot = budget.wait_for_slot().await?;
        let mut child = Child::spawn(&self.tools.ffprobe, args, false, "ffprobe", &budget, slot)?;
        let mut json = Vec::new();
        let mut first_line = String::new();
        // The report is small; reading it whole (bounded) before the exit status is safe.
        while let Some(line) = child.stdout_line(PROBE_OUTPUT_BYTES as usize).await? {
            if json.len() as u64 + line.len() as u64 > PROBE_OUTPUT_BYTES {
                return Err(GitcapError::Internal("ffprobe's report is larger than 1 MiB".into()));
            }
            if first_line.is_empty() {
                first_line = line.clone();
            }
            json.extend_from_slice(line.as_bytes());
            json.push(b'\n');
        }
        if let Some(said) = child.finish_plainly().await? {
            return Err(budget.media_error(unreadable_message(&file, &said).await));
        }
        probe::parse(&json, &self.limits, field)
    }

    /// The frames at `timestamps` (seconds from the start, non-decreasing, within the video:
    /// what [`super::sample_timestamps`] returns), in order, as a stream that reads each frame
    /// from its decoder only when asked (one frame in memory at a time; a second while one frame
    /// answers several timestamps). Dropping the stream kills its decoders.
    ///
    /// Timestamps close together are decoded by one child going forward; far apart, each run of
    /// them by a child that seeks to the keyframe before it, up to `processes_per_call` at once.
    /// The first error ends the stream. Drop each frame's [`TimedFrame::room`] before asking for
    /// the next frame: the stream may wait for a process slot, and must not hold room meanwhile.
    pub fn frames_at(
        &self,
        file: &Path,
        info: &VideoInfo,
        timestamps: &[f64],
        field: &str,
    ) -> impl Stream<Item = Result<TimedFrame>> + Send {
        let field_of_timestamps = format!("{SAMPLING_FIELD}.timestamps_s");
        let checked = self
            .check_count(timestamps.len(), &field_of_timestamps)
            .and_then(|()| check_timestamps(timestamps, info.duration_s, &field_of_timestamps));
        let source = checked.and_then(|()| self.source(file, info, field));
        let samples: Vec<Sample> = timestamps.iter().enumerate().map(|(i, &t)| Sample::new(i, t)).collect();
        let passes = plan_passes(info, samples);
        stream::frames(source, passes)
    }

    /// The frames at `start_s + k * step_s` for `k` in `0..count`, decoded by one child in one
    /// pass from the keyframe before `start_s` (rather than a seek per frame): for captioning a
    /// whole video densely. The pixels are the ones [`Self::frames_at`] gives for the same
    /// timestamps. Errors name `media.sampling.start_s`, `.step_s` or `.count`.
    pub fn frames_on_grid(
        &self,
        file: &Path,
        info: &VideoInfo,
        start_s: f64,
        step_s: f64,
        count: usize,
        field: &str,
    ) -> impl Stream<Item = Result<TimedFrame>> + Send {
        let checked = self.check_grid(info, start_s, step_s, count);
        let source = checked.and_then(|()| self.source(file, info, field));
        let passes = if source.is_ok() { vec![PassPlan::grid(info, start_s, step_s, count, 0)] } else { Vec::new() };
        stream::frames(source, passes)
    }

    fn check_count(&self, count: usize, field: &str) -> Result<()> {
        if count > self.limits.max_frames {
            return Err(GitcapError::invalid(
                field,
                format!("{count} frames asked for; the limit is {} a call", self.limits.max_frames),
            ));
        }
        Ok(())
    }

    fn check_grid(&self, info: &VideoInfo, start_s: f64, step_s: f64, count: usize) -> Result<()> {
        let duration = info.duration_s;
        if !start_s.is_finite() || start_s < 0.0 || start_s >= duration {
            return Err(GitcapError::invalid(
                format!("{SAMPLING_FIELD}.start_s"),
                format!("must be at least 0 and before the end of the video ({duration:.3} s), not {start_s}"),
            ));
        }
        if !step_s.is_finite() || step_s <= 0.0 {
            return Err(GitcapError::invalid(
                format!("{SAMPLING_FIELD}.step_s"),
                format!("must be above 0, not {step_s}"),
            ));
        }
        let count_field = format!("{SAMPLING_FIELD}.count");
        if count == 0 {
            return Err(GitcapError::invalid(count_field, "ask for at least one frame"));
        }
        self.check_count(count, &count_field)?;
        let last = start_s + (count - 1) as f64 * step_s;
        if last >= duration {
            return Err(GitcapError::invalid(
                count_field,
                format!("{count} frames every {step_s} s from {start_s} s reach {last:.3} s, past the end ({duration:.3} s)"),
            ));
        }
        Ok(())
    }

    fn source(&self, file: &Path, info: &VideoInfo, field: &str) -> Result<Source> {
        let file = absolute(file)?;
        let pixels = u64::from(info.width) * u64::from(info.height);
        if pixels == 0 || pixels > self.limits.max_pixels {
            return Err(GitcapError::media(field, format!("a {}x{} video cannot be decoded", info.width, info.height)));
        }
        Ok(Source { tools: self.tools.clone(), info: info.clone(), budget: self.budget(&file, field), file })
    }

    fn budget(&self, file: &Path, field: &str) -> Budget {
        let (limits, slots, room) = (self.limits.clone(), self.slots.clone(), self.room.clone());
        Budget { limits, slots, field: field.into(), file: file.into(), room }
    }

    fn ffprobe_common_args(&self) -> Vec<OsString> {
        ["-hide_banner", "-loglevel", "error"].into_iter().map(OsString::from).chain(input_restrictions()).collect()
    }
}

/// What one call decodes, and with what.
pub(crate) struct Source {
    pub tools: Arc<Tools>,
    pub info: VideoInfo,
    pub budget: Budget,
    file: PathBuf,
}

impl Source {
    /// The file as ffmpeg is given it.
    pub fn url(&self) -> OsString {
        file_url(&self.file)
    }

    /// ffmpeg's arguments before the input's own.
    pub fn ffmpeg_common_args(&self) -> Vec<OsString> {
        ["-nostdin", "-hide_banner", "-loglevel", "error"]
            .into_iter()
            .map(OsString::from)
            .chain(input_restrictions())
            .collect()
    }
}

/// Input options that keep a hostile file from making ffmpeg read anything but itself: only the
/// `file` protocol (no network, no `concat:`/`subfile:` tricks), only the accepted demuxers (no
/// HLS, DASH or ffconcat playlists, no image sequences).
fn input_restrictions() -> [OsString; 4] {
    ["-protocol_whitelist", "file", "-format_whitelist", &accepted_demuxers().join(",")].map(OsString::from)
}

/// `file:` and the absolute path, so that no part of the name reads as another protocol.
fn file_url(file: &Path) -> OsString {
    let mut url = OsString::from("file:");
    url.push(file.as_os_str());
    url
}

fn absolute(file: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(file)
        .map_err(|e| GitcapError::Internal(format!("the video file {} cannot be opened: {e}", file.display())))
}

/// Groups samples into passes: one pass while consecutive samples are at most
/// [`JOIN_GAP_FRAMES`] apart (and it has at most [`MAX_EXACT_SAMPLES`]), a new seek otherwise.
fn plan_passes(info: &VideoInfo, samples: Vec<Sample>) -> Vec<PassPlan> {
    let join_gap_s = JOIN_GAP_FRAMES / info.rate_or_typical();
    let mut passes = Vec::new();
    let mut run: Vec<Sample> = Vec::new();
    for sample in samples {
        let joins = run.last().is_some_and(|last| sample.timestamp_s - last.timestamp_s <= join_gap_s);
        if !run.is_empty() && (!joins || run.len() == MAX_EXACT_SAMPLES) {
            passes.push(PassPlan::exact(info, std::mem::take(&mut run)));
        }
        run.push(sample);
    }
    if !run.is_empty() {
        passes.push(PassPlan::exact(info, run));
    }
    passes
}

/// Why ffprobe could not read a file, from what it said and what the file's first bytes are.
async fn unreadable_message(file: &Path, said: &str) -> String {
    let mut head = Vec::new();
    if let Ok(opened) = tokio::fs::File::open(file).await {
        let _ = opened.take(SNIFF_BYTES as u64).read_to_end(&mut head).await;
    }
    let names = accepted_names();
    let accepted = names.join(", ");
    match sniff_container(&head) {
        Some(list @ ("HLS playlist" | "ffconcat list" | "DASH manifest")) => {
            format!("an {list} points at other files and is not accepted; send the video file itself")
        }
        Some(name) if !names.contains(&name) => format!(
            "{name} videos are not accepted (accepted: {accepted}); convert it, e.g. ffmpeg -i IN -c copy OUT.mp4 \
             (or -c:v libx264 if the codec does not fit MP4)"
        ),
        Some(name) => format!("the {name} file could not be read ({said}); is it complete?"),
        None if head.is_empty() => "the file is empty".to_string(),
        None => format!("the file is not a video in an accepted container ({accepted})"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;
    use crate::media::video::TimeBase;

    fn video(frame_rate: f64) -> VideoInfo {
        VideoInfo {
            container: "avi".into(),
            codec: "mpeg4".into(),
            duration_s: 600.0,
            start_s: 0.0,
            width: 16,
            height: 16,
            rotation: 0,
            frame_rate: Some(frame_rate),
            frame_count: None,
            time_base: TimeBase { num: 1, den: 25 },
            stream_index: 0,
        }
    }

    #[test]
    fn close_samples_share_a_pass_and_far_ones_seek() {
        let samples = |times: &[f64]| times.iter().enumerate().map(|(i, &t)| Sample::new(i, t)).collect();
        let passes = plan_passes(&video(30.0), samples(&[0.5, 1.0, 3.0, 50.0, 51.0, 300.0]));
        let sizes: Vec<usize> = passes.iter().map(|pass| pass.samples().len()).collect();
        assert_eq!(sizes, vec![3, 2, 1]);
        let indices: Vec<usize> = passes.iter().flat_map(|pass| pass.samples().iter().map(|s| s.index)).collect();
        assert_eq!(indices, (0..6).collect::<Vec<_>>());
        // At 1 frame a second the same gaps are far apart in frames.
        assert_eq!(plan_passes(&video(1.0), samples(&[0.5, 1.0, 300.0])).len(), 1 + 1);
        let many: Vec<Sample> = (0..150).map(|i| Sample::new(i, i as f64 * 0.01)).collect();
        let sizes: Vec<usize> = plan_passes(&video(30.0), many).iter().map(|pass| pass.samples().len()).collect();
        assert_eq!(sizes, vec![64, 64, 22]);
    }

    #[test]
    fn urls_keep_colons_in_paths_literal() {
        assert_eq!(file_url(Path::new("/tmp/concat:x|y.mp4")), OsString::from("file:/tmp/concat:x|y.mp4"));
        assert_eq!(file_url(Path::new("/tmp/a\u{e9}.mp4")).as_bytes(), "file:/tmp/a\u{e9}.mp4".as_bytes());
    }
}
