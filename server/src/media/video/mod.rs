//! Video files → RGB frames at chosen timestamps, decoded out of process by the `ffmpeg` and
//! `ffprobe` programs under hard limits.
//!
//! The API layer spools an upload or download to a file; [`VideoDecoder::probe`] reads what it
//! is ([`VideoInfo`]) and refuses what the [`VideoLimits`] do not allow; [`sample_timestamps`]
//! turns a [`Sampling`] into timestamps; [`VideoDecoder::frames_at`] (a few timestamps, a seek
//! each) and [`VideoDecoder::frames_on_grid`] (many on a grid, one pass) stream the frames.
//! [`sniff_container`] names a container from its first bytes.
//!
//! # The frame at a timestamp
//!
//! "The frame at `t`" is exactly the frame `ffmpeg -ss t -i FILE -frames:v 1 out.png` writes
//! (accurate input seeking, ffmpeg's default autorotation), as RGB. Timestamps count seconds
//! from the container's start time ([`VideoInfo::start_s`]), as `-ss` does. What that means,
//! checked with ffmpeg 5.1 against every frame of H.264 MP4 (time base 1/15360), Matroska
//! (1/1000), MPEG-4 AVI (1/25), variable-frame-rate MP4 and Matroska (1/90000, 1/1000) and a
//! Matroska file starting at 1.235 s, at each frame boundary and one microsecond either side:
//!
//! - `t` is taken to the microsecond; the frame is the **first frame whose timestamp is at or
//!   after `t`**, comparing in the stream's ticks: `pts >= round(t + start)`, where the rounding
//!   is ffmpeg's `av_rescale_q` (nearest tick, halves away from zero). A `t` exactly on a frame's
//!   timestamp gives that frame; a microsecond later gives the next one. It is not "the frame on
//!   screen at `t`" (the last one starting at or before `t`).
//! - Variable frame rate changes nothing: frames are found by their own timestamps.
//! - After the last frame's start (`t` in its display time, up to the duration) ffmpeg writes
//!   nothing at all; here the answer is then the last frame, the one on screen. So a one-frame
//!   video gives its frame for every `t`.
//! - Autorotation: a 90° or 270° display matrix swaps width and height ([`VideoInfo::width`] and
//!   `height` are the displayed ones).
//! - 8-bit video converts to the same RGB as ffmpeg's PNG. For more than 8 bits per sample
//!   ffmpeg writes a 16-bit PNG, which the frames here (converted straight to 8-bit RGB by
//!   ffmpeg) do not match exactly.
//! - MPEG-TS is not accepted: seeking in it lands between keyframes and ffmpeg's own `-ss`
//!   output then differs from decoding the file from its start (damaged frames).
//! - A video's duration is the container's (what `ffmpeg -i` prints): an MP4's video-stream
//!   duration can end before its last frames (seen with variable frame rate).
//!
//! Both ways of decoding give those pixels exactly (the tests compare them with ffmpeg's PNGs):
//! each pass (see `pass`) seeks with `-ss` to its first timestamp, lets ffmpeg decode on, and
//! picks the frames for the later timestamps by their timestamps with the rule above.
//!
//! # Cost
//!
//! A seek decodes from the keyframe before the sample: up to a whole GOP (x264's default is 250
//! frames, 8.3 s at 30 fps). So `frames_at` decodes timestamps less than 90 frames apart in one
//! pass, and runs farther ones as separate passes, `processes_per_call` at a time.
//! `scripts/bench-video.sh` times 6 segment-centre samples of 1080p x264 files; on the 2-core
//! development machine (shared, load 6) the 10-minute file takes about 0.85 s (probe 80 ms)
//! and the 10-second one 1.7 s: there the 6 samples need 276 of its 300 frames decoded, while
//! in the 10-minute file every segment centre happens to be a keyframe (multiples of 50 s). 5
//! or 7 samples of the same file, off the keyframes, take 3-5 s (0.6-0.8 s a sample).
//!
//! # Isolation
//!
//! Every child runs under `RLIMIT_CPU`, `RLIMIT_AS`, `RLIMIT_FSIZE = 0` and `RLIMIT_CORE = 0` in
//! its own process group, with an empty environment and no stdin; a call stops waiting on it
//! after `wall_seconds` and kills it; dropping a stream kills its children; a semaphore bounds
//! the children alive at once. Inputs are read through the `file` protocol only, by the demuxers
//! of [`accepted_demuxers`] only, so an HLS or ffconcat playlist (which would make ffmpeg open
//! other files or URLs) is refused before it is parsed. See `child` for the details.

pub mod bench;
mod child;
mod decoder;
mod pass;
mod probe;
mod sampling;
mod sniff;
mod stream;
mod timing;
mod tools;

pub use decoder::{TimedFrame, VideoDecoder};
pub use limits::{DenseLimits, VideoLimits};
pub use probe::VideoInfo;
pub use sampling::{sample_timestamps, Sampling, SAMPLING_FIELD};
pub use sniff::sniff_container;
pub use timing::TimeBase;

pub(crate) use decoder::Source;

mod limits;

/// The containers accepted, by ffmpeg's demuxer names (`-format_whitelist`), from the one media
/// table.
pub use gitcap_protocol::media_kind::accepted_demuxers;

/// The same, by the names [`sniff_container`] gives: every video container, and animated GIFs.
pub fn accepted_names() -> Vec<&'static str> {
    use gitcap_protocol::media_kind::{ImageFormat, VideoContainer};
    VideoContainer::ALL.map(VideoContainer::name).into_iter().chain([ImageFormat::Gif.name()]).collect()
}
