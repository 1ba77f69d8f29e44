//! Videos generated at test time with ffmpeg's lavfi test sources (no video file is committed),
//! in a temporary directory, and ffmpeg's own answers to compare with.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use image::RgbImage;

/// A temporary directory of generated videos.
pub struct Videos {
    dir: tempfile::TempDir,
}

impl Default for Videos {
    fn default() -> Self {
        Self::new()
    }
}

impl Videos {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("a temporary directory") }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `testsrc2` (a moving pattern, every frame different) of `size` at `rate` for `seconds`,
    /// encoded with `codec` (ffmpeg arguments) into `name`.
    pub fn encode(&self, name: &str, size: &str, rate: u32, seconds: f64, codec: &[&str]) -> PathBuf {
        let out = self.path(name);
        let source = format!("testsrc2=size={size}:rate={rate}:duration={seconds}");
        let mut args = vec!["-f", "lavfi", "-i", &source];
        args.extend_from_slice(codec);
        args.push(out.to_str().unwrap());
        ffmpeg(&args);
        out
    }

    /// H.264 (x264 defaults, 4:2:0) in MP4.
    pub fn h264_mp4(&self, name: &str, size: &str, rate: u32, seconds: f64) -> PathBuf {
        self.encode(name, size, rate, seconds, &["-c:v", "libx264", "-pix_fmt", "yuv420p"])
    }

    /// H.264 in a QuickTime MOV.
    pub fn h264_mov(&self) -> PathBuf {
        self.encode("h264.mov", "160x120", 30, 2.0, &["-c:v", "libx264", "-pix_fmt", "yuv420p"])
    }

    /// H.265 (x265, 8-bit) in Matroska.
    pub fn hevc_mkv(&self) -> PathBuf {
        let quiet = ["-x265-params", "log-level=error"];
        self.encode("hevc.mkv", "160x120", 25, 2.0, &["-c:v", "libx265", "-pix_fmt", "yuv420p", quiet[0], quiet[1]])
    }

    /// VP8 in WebM.
    pub fn vp8_webm(&self) -> PathBuf {
        self.encode("vp8.webm", "160x120", 30, 2.0, &["-c:v", "libvpx", "-b:v", "300k"])
    }

    /// VP9 in WebM.
    pub fn vp9_webm(&self) -> PathBuf {
        self.encode(
            "vp9.webm",
            "160x120",
            30,
            2.0,
            &["-c:v", "libvpx-vp9", "-b:v", "300k", "-deadline", "realtime", "-cpu-used", "8"],
        )
    }

    /// AV1 in MP4, with the first AV1 encoder this ffmpeg has; without one, `None`, and the
    /// case is missing from test `test` (a failure in CI, a recorded skip elsewhere).
    pub fn av1_mp4(&self, test: &str) -> Option<PathBuf> {
        let encoders = ffmpeg_output(&["-hide_banner", "-encoders"]);
        let settings: &[&str] = if encoders.contains("libsvtav1") {
            &["-c:v", "libsvtav1", "-preset", "12"]
        } else if encoders.contains("libaom-av1") {
            &["-c:v", "libaom-av1", "-cpu-used", "8", "-b:v", "200k"]
        } else if encoders.contains("librav1e") {
            &["-c:v", "librav1e", "-speed", "10"]
        } else {
            super::tools::missing(
                test,
                "an ffmpeg with an AV1 encoder (libsvtav1, libaom-av1 or librav1e) for its AV1 case",
                "apt-get install -y ffmpeg (Debian 12's has all three)",
            );
            return None;
        };
        Some(self.encode("av1.mp4", "160x120", 24, 2.0, settings))
    }

    /// An animated GIF (palette frames, time base 1/100 s).
    pub fn animated_gif(&self) -> PathBuf {
        self.encode("anim.gif", "96x64", 20, 2.0, &[])
    }

    /// MPEG-4 part 2 in AVI (time base 1/25: one tick a frame).
    pub fn mpeg4_avi(&self) -> PathBuf {
        self.encode("mpeg4.avi", "160x120", 25, 2.0, &["-c:v", "mpeg4", "-q:v", "5"])
    }

    /// 321x241 (odd: 4:2:0 chroma planes round up), VP9 4:2:0 in WebM. (testsrc2 itself only
    /// makes even sizes, so its frames are converted to RGB and cropped.)
    pub fn odd_size_vp9(&self) -> PathBuf {
        self.odd_size(
            "odd.webm",
            &["-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p", "-deadline", "realtime", "-cpu-used", "8"],
        )
    }

    /// 321x241, H.264 4:4:4 in MP4 (4:2:0 H.264 cannot have an odd size).
    pub fn odd_size_h264(&self) -> PathBuf {
        self.odd_size("odd.mp4", &["-c:v", "libx264", "-pix_fmt", "yuv444p"])
    }

    fn odd_size(&self, name: &str, codec: &[&str]) -> PathBuf {
        let out = self.path(name);
        let mut args = vec![
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=322x242:rate=30:duration=1",
            "-vf",
            "format=rgb24,crop=321:241:0:0",
        ];
        args.extend_from_slice(codec);
        args.push(out.to_str().unwrap());
        ffmpeg(&args);
        out
    }

    /// A phone-style video: stored 320x240, with a display matrix rotating it by 90 degrees.
    pub fn rotated_90(&self) -> PathBuf {
        let stored = self.h264_mp4("unrotated.mp4", "320x240", 30, 1.0);
        let out = self.path("rotated.mp4");
        ffmpeg(&["-i", stored.to_str().unwrap(), "-c", "copy", "-metadata:s:v:0", "rotate=90", out.to_str().unwrap()]);
        out
    }

    /// Variable frame rate: 20 frames 10 ms apart, 20 frames 100 ms apart, then 517 ms apart,
    /// in MP4 (time base 1/90000).
    pub fn variable_rate(&self) -> PathBuf {
        let out = self.path("vfr.mp4");
        let timing = "setpts='if(lt(N,20),N*0.01,if(lt(N,40),0.2+(N-20)*0.1,2.2+(N-40)*0.517))/TB'";
        let args = [
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=100:duration=0.5",
            "-vf",
            timing,
            "-fps_mode",
            "vfr",
            "-enc_time_base",
            "1:90000",
            "-video_track_timescale",
            "90000",
            "-c:v",
            "libx264",
            out.to_str().unwrap(),
        ];
        ffmpeg(&args);
        out
    }

    /// A video of one frame.
    pub fn one_frame(&self) -> PathBuf {
        self.encode("one-frame.mp4", "64x48", 25, 0.04, &["-frames:v", "1", "-c:v", "libx264"])
    }

    /// Audio only: a sine in AAC, in MP4.
    pub fn audio_only(&self) -> PathBuf {
        let out = self.path("audio.m4a");
        ffmpeg(&["-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", out.to_str().unwrap()]);
        out
    }

    /// One frame in Matroska written to a pipe, so the muxer could not go back to write a
    /// duration: ffprobe reports none.
    pub fn unknown_duration(&self) -> PathBuf {
        let out = self.path("no-duration.mkv");
        let output = Command::new("ffmpeg")
            .args([
                "-nostdin",
                "-hide_banner",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=64x48:rate=25",
            ])
            .args(["-frames:v", "1", "-c:v", "libx264", "-f", "matroska", "pipe:1"])
            .stderr(Stdio::inherit())
            .output()
            .expect("ffmpeg runs");
        assert!(output.status.success());
        std::fs::write(&out, output.stdout).unwrap();
        out
    }

    /// The first half of an MP4 whose index (moov) is at its end: it has no index at all.
    pub fn truncated(&self) -> PathBuf {
        let whole = self.h264_mp4("whole.mp4", "160x120", 30, 2.0);
        let bytes = std::fs::read(whole).unwrap();
        self.write("truncated.mp4", &bytes[..bytes.len() / 2])
    }

    /// An 8-second MP4 with its index first (faststart), cut after about a third of its frames:
    /// it promises frames it does not have.
    pub fn truncated_faststart(&self) -> PathBuf {
        let whole = self.encode("faststart.mp4", "160x120", 30, 8.0, &["-c:v", "libx264", "-movflags", "+faststart"]);
        let bytes = std::fs::read(whole).unwrap();
        self.write("truncated-faststart.mp4", &bytes[..bytes.len() / 3])
    }

    /// A PNG image under a video's name.
    pub fn png_bytes(&self) -> PathBuf {
        let out = self.path("image.mp4");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x48",
            "-frames:v",
            "1",
            "-f",
            "image2",
            "-c:v",
            "png",
            out.to_str().unwrap(),
        ]);
        out
    }

    /// 64 KiB of seeded noise.
    pub fn random_bytes(&self) -> PathBuf {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let bytes: Vec<u8> = (0..65536)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        self.write("noise.mp4", &bytes)
    }

    /// An HLS playlist whose one segment is `target` (a path or URL).
    pub fn hls_playlist(&self, name: &str, target: &str) -> PathBuf {
        let text =
            format!("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{target}\n#EXT-X-ENDLIST\n");
        self.write(name, text.as_bytes())
    }

    /// An ffconcat list of `target`.
    pub fn concat_list(&self, name: &str, target: &str) -> PathBuf {
        self.write(name, format!("ffconcat version 1.0\nfile '{target}'\n").as_bytes())
    }

    /// H.264 in MPEG-TS.
    pub fn mpeg_ts(&self) -> PathBuf {
        self.encode("h264.ts", "160x120", 30, 1.0, &["-c:v", "libx264"])
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let out = self.path(name);
        std::fs::write(&out, bytes).unwrap();
        out
    }
}

/// The frame `ffmpeg -ss t -i FILE -frames:v 1 out.png` writes, as RGB (`t` to the
/// microsecond), or `None` when it writes none.
pub fn ffmpeg_frame_at(file: &Path, t: f64) -> Option<RgbImage> {
    let out = tempfile::Builder::new().suffix(".png").tempfile().unwrap();
    std::fs::remove_file(out.path()).unwrap();
    let seek = format!("{t:.6}");
    ffmpeg(&["-ss", &seek, "-i", file.to_str().unwrap(), "-frames:v", "1", out.path().to_str().unwrap()]);
    out.path().exists().then(|| image::open(out.path()).expect("ffmpeg's PNG").to_rgb8())
}

/// The last frame of the video as ffmpeg decodes it from the start.
pub fn ffmpeg_last_frame(file: &Path) -> RgbImage {
    let out = tempfile::Builder::new().suffix(".png").tempfile().unwrap();
    ffmpeg(&["-i", file.to_str().unwrap(), "-update", "1", "-fps_mode", "passthrough", out.path().to_str().unwrap()]);
    image::open(out.path()).expect("ffmpeg's PNG").to_rgb8()
}

/// Every frame's timestamp in seconds (ffprobe, decoding the whole file), in order.
pub fn frame_times(file: &Path) -> Vec<f64> {
    let text = probe_output(&[
        "-select_streams",
        "v:0",
        "-show_entries",
        "frame=best_effort_timestamp_time",
        "-of",
        "csv=p=0",
        file.to_str().unwrap(),
    ]);
    text.split_whitespace().map(|t| t.trim_end_matches(',').parse().expect("a timestamp")).collect()
}

/// Runs ffmpeg (quiet, overwriting) and panics with its message if it fails.
pub fn ffmpeg(args: &[&str]) {
    let output = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("ffmpeg runs (apt-get install ffmpeg)");
    assert!(output.status.success(), "ffmpeg {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

fn ffmpeg_output(args: &[&str]) -> String {
    let output = Command::new("ffmpeg").args(args).stdin(Stdio::null()).output().expect("ffmpeg runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn probe_output(args: &[&str]) -> String {
    let output = Command::new("ffprobe").args(["-v", "error"]).args(args).output().expect("ffprobe runs");
    assert!(output.status.success(), "ffprobe {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}
