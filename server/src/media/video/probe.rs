//! What a video file is: `ffprobe`'s view of the container and of its first video stream, and
//! the checks against [`VideoLimits`] made before any frame is decoded.

use std::collections::HashMap;
use std::ffi::OsString;

use serde::Deserialize;

use super::timing::TimeBase;
use super::{accepted_demuxers, VideoLimits};
use crate::error::{GitcapError, Result};

/// The container and the video stream that is decoded (the first that is not cover art).
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// ffmpeg's name for the container ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", …).
    pub container: String,
    /// The codec ("h264", "hevc", "vp9", "av1", …).
    pub codec: String,
    /// Seconds from the start of the video to its end: the container's duration (what
    /// `ffmpeg -i` prints), else the video stream's. The container's is the one to trust: an
    /// MP4's stream duration can end before its last frames (variable frame rate). Timestamps
    /// are measured from the container's start ([`Self::start_s`]).
    pub duration_s: f64,
    /// The container's start time in seconds, the origin of every timestamp (as for `ffmpeg -ss`).
    pub start_s: f64,
    /// Displayed width: after the rotation is applied, as decoded frames come out.
    pub width: u32,
    /// Displayed height.
    pub height: u32,
    /// The rotation the display matrix asks for, in degrees as ffprobe reports it, in [0, 360);
    /// at 90 and 270 the stored width and height swap (other angles keep the stored size).
    pub rotation: u32,
    /// Average frame rate, frames per second, when the container says.
    pub frame_rate: Option<f64>,
    /// Frames in the stream, when the container says.
    pub frame_count: Option<u64>,
    /// The stream's time base, in which frame timestamps are counted.
    pub time_base: TimeBase,
    /// The stream's index in the container.
    pub stream_index: usize,
}

impl VideoInfo {
    /// Bytes of one decoded RGB frame.
    pub fn frame_bytes(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }

    /// The container's start in whole microseconds (ffprobe prints it to the microsecond).
    pub(crate) fn start_us(&self) -> i64 {
        super::timing::us_from_seconds(self.start_s)
    }

    /// The frame rate, or 30 when unknown, for estimates only.
    pub(crate) fn rate_or_typical(&self) -> f64 {
        self.frame_rate.filter(|rate| rate.is_finite() && *rate > 0.0).unwrap_or(30.0)
    }
}

/// The arguments for ffprobe, after the common ones, for `url`.
pub(crate) fn probe_args(url: OsString) -> Vec<OsString> {
    let entries = "format=format_name,duration,start_time,nb_streams\
        :stream=index,codec_name,width,height,time_base,avg_frame_rate,r_frame_rate,nb_frames,duration\
        :stream_side_data=rotation:stream_tags=rotate";
    let mut args: Vec<OsString> = ["-select_streams", "V:0", "-show_entries", entries, "-of", "json", "-i"]
        .into_iter()
        .map(OsString::from)
        .collect();
    args.push(url);
    args
}

#[derive(Debug, Deserialize)]
struct ProbeOutput {
    #[serde(default)]
    streams: Vec<ProbeStream>,
    format: Option<ProbeFormat>,
}

#[derive(Debug, Deserialize)]
struct ProbeFormat {
    format_name: Option<String>,
    duration: Option<String>,
    start_time: Option<String>,
    nb_streams: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ProbeStream {
    index: usize,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    time_base: Option<String>,
    avg_frame_rate: Option<String>,
    r_frame_rate: Option<String>,
    nb_frames: Option<String>,
    duration: Option<String>,
    #[serde(default)]
    side_data_list: Vec<SideData>,
    #[serde(default)]
    tags: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct SideData {
    rotation: Option<f64>,
}

/// Reads ffprobe's JSON and checks the video against `limits`; errors name `field`.
pub(crate) fn parse(json: &[u8], limits: &VideoLimits, field: &str) -> Result<VideoInfo> {
    let output: ProbeOutput = serde_json::from_slice(json)
        .map_err(|e| GitcapError::Internal(format!("ffprobe printed JSON that does not parse: {e}")))?;
    let format = output.format.ok_or_else(|| GitcapError::media(field, "the file is not a readable video"))?;
    let Some(stream) = output.streams.into_iter().next() else {
        return Err(GitcapError::media(
            field,
            if format.nb_streams.unwrap_or(0) > 0 {
                "the file has no video stream (audio only?)"
            } else {
                "the file has no streams at all"
            },
        ));
    };
    let (stored_width, stored_height) = match (stream.width, stream.height) {
        (Some(w), Some(h)) if w > 0 && h > 0 => (w, h),
        _ => return Err(GitcapError::media(field, "the video stream does not say its frame size")),
    };
    let rotation = rotation(&stream);
    let (width, height) =
        if rotation % 180 == 90 { (stored_height, stored_width) } else { (stored_width, stored_height) };
    let duration_s = number(&format.duration).or_else(|| number(&stream.duration));
    let Some(duration_s) = duration_s.filter(|d| d.is_finite() && *d > 0.0) else {
        return Err(GitcapError::media(
            field,
            "the video's duration is zero or unknown; re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4",
        ));
    };
    let time_base = stream
        .time_base
        .as_deref()
        .and_then(TimeBase::parse)
        .ok_or_else(|| GitcapError::media(field, "the video stream has no valid time base"))?;
    let info = VideoInfo {
        container: format.format_name.unwrap_or_default(),
        codec: stream.codec_name.unwrap_or_else(|| "unknown".into()),
        duration_s,
        start_s: number(&format.start_time).filter(|s| s.is_finite()).unwrap_or(0.0),
        width,
        height,
        rotation,
        frame_rate: rate(&stream.avg_frame_rate).or_else(|| rate(&stream.r_frame_rate)),
        frame_count: stream.nb_frames.as_deref().and_then(|n| n.parse().ok()).filter(|n| *n > 0),
        time_base,
        stream_index: stream.index,
    };
    check(&info, limits, field)?;
    Ok(info)
}

/// The limits a video is checked against before decoding.
fn check(info: &VideoInfo, limits: &VideoLimits, field: &str) -> Result<()> {
    let pixels = u64::from(info.width) * u64::from(info.height);
    if pixels > limits.max_pixels {
        return Err(GitcapError::media(
            field,
            format!(
                "the video is {}x{} ({:.1} megapixels a frame); the limit is {:.1} megapixels",
                info.width,
                info.height,
                pixels as f64 / 1e6,
                limits.max_pixels as f64 / 1e6
            ),
        ));
    }
    if info.duration_s > limits.max_duration_s {
        return Err(GitcapError::media(
            field,
            format!("the video is {:.1} s long; the limit is {} s", info.duration_s, limits.max_duration_s),
        ));
    }
    if !accepted_demuxers().iter().any(|name| info.container.split(',').any(|part| part == *name)) {
        return Err(GitcapError::media(field, format!("videos in {} containers are not accepted", info.container)));
    }
    Ok(())
}

/// The display matrix's rotation (else the old `rotate` tag) in [0, 360), to the nearest degree.
fn rotation(stream: &ProbeStream) -> u32 {
    let degrees = stream
        .side_data_list
        .iter()
        .find_map(|side| side.rotation)
        .or_else(|| stream.tags.get("rotate").and_then(|r| r.parse().ok()))
        .unwrap_or(0.0);
    if !degrees.is_finite() {
        return 0;
    }
    (degrees.round() as i64).rem_euclid(360) as u32
}

/// ffprobe prints numbers as strings, and "N/A" for unknown ones.
fn number(text: &Option<String>) -> Option<f64> {
    text.as_deref().and_then(|t| t.parse().ok())
}

/// `30000/1001` → 29.97; `0/0` → None.
fn rate(text: &Option<String>) -> Option<f64> {
    let (num, den) = text.as_deref()?.split_once('/')?;
    let (num, den): (f64, f64) = (num.parse().ok()?, den.parse().ok()?);
    let rate = num / den;
    (rate.is_finite() && rate > 0.0).then_some(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHONE: &str = r#"{"programs": [], "streams": [{"index": 1, "codec_name": "h264", "width": 1920,
        "height": 1080, "avg_frame_rate": "30000/1001", "r_frame_rate": "30000/1001", "time_base": "1/90000",
        "duration": "12.012000", "nb_frames": "360",
        "side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}], "tags": {}}],
        "format": {"nb_streams": 2, "format_name": "mov,mp4,m4a,3gp,3g2,mj2", "start_time": "0.000000",
        "duration": "12.050000"}}"#;

    fn field_error(result: Result<VideoInfo>) -> String {
        match result {
            Err(GitcapError::Media { field, message }) => {
                assert_eq!(field, "media.video");
                message
            }
            other => panic!("expected a media error, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_rotated_phone_video() {
        let info = parse(PHONE.as_bytes(), &VideoLimits::default(), "media.video").unwrap();
        assert_eq!((info.width, info.height, info.rotation), (1080, 1920, 270));
        assert_eq!(info.duration_s, 12.05);
        assert_eq!(info.frame_count, Some(360));
        assert!((info.frame_rate.unwrap() - 29.97).abs() < 0.01);
        assert_eq!(info.time_base, TimeBase { num: 1, den: 90000 });
        assert_eq!(info.stream_index, 1);
        assert_eq!(info.frame_bytes(), 1080 * 1920 * 3);
    }

    #[test]
    fn falls_back_to_the_stream_duration() {
        let json =
            PHONE.replace(r#""duration": "12.050000""#, r#""duration": "N/A""#).replace(r#""nb_frames": "360","#, "");
        let info = parse(json.as_bytes(), &VideoLimits::default(), "media.video").unwrap();
        assert_eq!(info.duration_s, 12.012);
        assert_eq!(info.frame_count, None);
    }

    #[test]
    fn refuses_what_the_limits_do_not_allow() {
        let small = VideoLimits { max_pixels: 1920 * 1080 - 1, ..VideoLimits::default() };
        assert!(field_error(parse(PHONE.as_bytes(), &small, "media.video")).contains("megapixels"));
        let short = VideoLimits { max_duration_s: 10.0, ..VideoLimits::default() };
        assert!(field_error(parse(PHONE.as_bytes(), &short, "media.video")).contains("the limit is 10 s"));
        let hls = PHONE.replace("mov,mp4,m4a,3gp,3g2,mj2", "hls");
        assert!(field_error(parse(hls.as_bytes(), &VideoLimits::default(), "media.video")).contains("hls"));
    }

    #[test]
    fn explains_missing_streams_and_durations() {
        let audio = r#"{"streams": [], "format": {"nb_streams": 1, "format_name": "mov", "duration": "3.0"}}"#;
        assert!(field_error(parse(audio.as_bytes(), &VideoLimits::default(), "media.video")).contains("audio only"));
        let zero = PHONE.replace("12.012000", "0.000000").replace("12.050000", "0.0");
        assert!(field_error(parse(zero.as_bytes(), &VideoLimits::default(), "media.video")).contains("duration"));
        let unknown = PHONE.replace("12.012000", "N/A").replace("12.050000", "N/A");
        assert!(field_error(parse(unknown.as_bytes(), &VideoLimits::default(), "media.video")).contains("duration"));
    }
}
