//! `media::video` against the ffmpeg program itself: for every codec and container, the frames
//! `frames_at` and `frames_on_grid` give are, pixel for pixel, the PNGs
//! `ffmpeg -ss t -i FILE -frames:v 1` writes; bad and hostile files are media errors naming the
//! field, within the limits, never a panic or a hang. Videos are generated at test time
//! (tests/common/videos.rs).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use gitcap_server::error::GitcapError;
use gitcap_server::media::video::{sample_timestamps, Sampling, TimedFrame, VideoDecoder, VideoInfo, VideoLimits};
use image::RgbImage;

use common::videos::{ffmpeg_frame_at, ffmpeg_last_frame, frame_times, Videos};

const FIELD: &str = "media.video";

fn decoder(limits: VideoLimits) -> VideoDecoder {
    VideoDecoder::detect(None, None, limits).expect("ffmpeg and ffprobe on PATH (apt-get install ffmpeg)")
}

async fn collect(stream: impl Stream<Item = Result<TimedFrame, GitcapError>>) -> Result<Vec<TimedFrame>, GitcapError> {
    let mut stream = std::pin::pin!(stream);
    let mut frames = Vec::new();
    while let Some(frame) = stream.next().await {
        frames.push(frame?);
    }
    Ok(frames)
}

/// The media error's message, after checking that it names `field`.
fn media_message(error: GitcapError, field: &str) -> String {
    match error {
        GitcapError::Media { field: named, message } if named == field => message,
        other => panic!("expected a media error on {field}, got {other:?}"),
    }
}

fn assert_same_pixels(ours: &RgbImage, theirs: &RgbImage, what: &str) {
    assert_eq!(ours.dimensions(), theirs.dimensions(), "{what}: size");
    if ours != theirs {
        let differing = ours.pixels().zip(theirs.pixels()).filter(|(a, b)| a != b).count();
        panic!("{what}: {differing} of {} pixels differ from ffmpeg's", ours.width() * ours.height());
    }
}

/// Timestamps that probe the rule: segment centres; some frames' own timestamps, one microsecond
/// either side of them, and 0.4, 0.5 and 0.6 of a tick after them (ffmpeg rounds to the nearest
/// tick, halves up); all before the last frame's start.
fn probing_timestamps(file: &Path, info: &VideoInfo) -> Vec<f64> {
    let times: Vec<f64> = frame_times(file).into_iter().map(|t| t - info.start_s).collect();
    let last = times.iter().cloned().fold(0.0, f64::max);
    let mut timestamps = sample_timestamps(info, &Sampling::Even { start_s: None, end_s: None }, 6).unwrap();
    let picks = [1, 2, times.len() / 2, times.len().saturating_sub(2)];
    for &i in picks.iter().filter(|&&i| i < times.len()) {
        let t = (times[i] * 1e6).round() / 1e6;
        timestamps.extend([t - 1e-6, t, t + 1e-6]);
        let tick = info.time_base.num as f64 / info.time_base.den as f64;
        timestamps.extend([0.4, 0.5, 0.6].map(|part| ((times[i] + part * tick) * 1e6).round() / 1e6));
    }
    timestamps.retain(|&t| t >= 0.0 && t <= last);
    timestamps.sort_by(f64::total_cmp);
    timestamps
}

/// `frames_at` (all at once, and one call per timestamp) and `frames_on_grid` against ffmpeg.
async fn check_parity(decoder: &VideoDecoder, file: &Path, name: &str) -> VideoInfo {
    let info = decoder.probe(file, FIELD).await.unwrap_or_else(|e| panic!("{name}: probe: {e}"));
    let timestamps = probing_timestamps(file, &info);
    let together = collect(decoder.frames_at(file, &info, &timestamps, FIELD)).await.unwrap();
    assert_eq!(together.len(), timestamps.len(), "{name}");
    for (frame, (i, &t)) in together.iter().zip(timestamps.iter().enumerate()) {
        assert_eq!((frame.index, frame.timestamp_s), (i, t), "{name}");
        let theirs = ffmpeg_frame_at(file, t).unwrap_or_else(|| panic!("{name}: ffmpeg wrote no frame at {t}"));
        assert_same_pixels(&frame.image, &theirs, &format!("{name} at {t:.6} s"));
        assert_eq!(frame.image.dimensions(), (info.width, info.height), "{name}");
    }
    // One call per timestamp: every frame comes from a seek of its own.
    for (i, &t) in timestamps.iter().enumerate().step_by(3) {
        let alone = collect(decoder.frames_at(file, &info, &[t], FIELD)).await.unwrap();
        assert_same_pixels(&alone[0].image, &together[i].image, &format!("{name} at {t:.6} s alone"));
    }
    let step = info.duration_s / 7.0;
    let grid = collect(decoder.frames_on_grid(file, &info, step / 2.0, step, 7, FIELD)).await.unwrap();
    for frame in &grid {
        let t = step / 2.0 + frame.index as f64 * step;
        assert_eq!(frame.timestamp_s, t);
        match ffmpeg_frame_at(file, t) {
            Some(theirs) => assert_same_pixels(&frame.image, &theirs, &format!("{name} grid at {t:.6} s")),
            None => assert_same_pixels(&frame.image, &ffmpeg_last_frame(file), &format!("{name} grid tail")),
        }
    }
    info
}

#[tokio::test]
async fn every_codec_and_container_gives_ffmpegs_pixels() {
    let videos = Videos::new();
    let decoder = decoder(VideoLimits::default());
    assert!(decoder.version().starts_with("ffmpeg "), "{}", decoder.version());
    let mut cases = vec![
        ("H.264 MP4", videos.h264_mp4("h264.mp4", "160x120", 30, 2.0)),
        ("H.264 MOV", videos.h264_mov()),
        ("H.265 MKV", videos.hevc_mkv()),
        ("VP8 WebM", videos.vp8_webm()),
        ("VP9 WebM", videos.vp9_webm()),
        ("MPEG-4 AVI", videos.mpeg4_avi()),
        ("GIF", videos.animated_gif()),
        ("321x241 VP9 4:2:0", videos.odd_size_vp9()),
        ("321x241 H.264 4:4:4", videos.odd_size_h264()),
    ];
    cases.extend(videos.av1_mp4("video_decode_every_codec_av1").map(|file| ("AV1 MP4", file)));
    for (name, file) in &cases {
        let info = check_parity(&decoder, file, name).await;
        eprintln!(
            "{name}: {} {}x{} {:.3} s, time base {:?}",
            info.codec, info.width, info.height, info.duration_s, info.time_base
        );
    }
    let info = decoder.probe(&cases[1].1, FIELD).await.unwrap();
    assert_eq!((info.codec.as_str(), info.width, info.height, info.frame_count), ("h264", 160, 120, Some(60)));
    assert!(info.container.contains("mov"), "{}", info.container);
    for odd in [&cases[7].1, &cases[8].1] {
        let info = decoder.probe(odd, FIELD).await.unwrap();
        assert_eq!((info.width, info.height), (321, 241), "{}", odd.display());
    }
}

#[tokio::test]
async fn a_rotated_phone_video_is_turned_upright() {
    let videos = Videos::new();
    let decoder = decoder(VideoLimits::default());
    let file = videos.rotated_90();
    let info = check_parity(&decoder, &file, "rotated").await;
    assert_eq!((info.width, info.height), (240, 320), "displayed size");
    assert!(info.rotation == 90 || info.rotation == 270, "{}", info.rotation);
}

#[tokio::test]
async fn variable_frame_rate_frames_are_found_by_their_timestamps() {
    let videos = Videos::new();
    let decoder = decoder(VideoLimits::default());
    let file = videos.variable_rate();
    let info = check_parity(&decoder, &file, "VFR").await;
    // Every frame boundary of the three rates, and between them.
    let times = frame_times(&file);
    let mut timestamps: Vec<f64> = times.iter().map(|t| (t * 1e6).round() / 1e6).collect();
    timestamps.extend(times.windows(2).map(|w| ((w[0] + w[1]) / 2.0 * 1e6).round() / 1e6));
    timestamps.sort_by(f64::total_cmp);
    let frames = collect(decoder.frames_at(&file, &info, &timestamps, FIELD)).await.unwrap();
    for (frame, &t) in frames.iter().zip(&timestamps) {
        let theirs = ffmpeg_frame_at(&file, t).expect("a frame");
        assert_same_pixels(&frame.image, &theirs, &format!("VFR at {t:.6} s"));
    }
}

#[tokio::test]
async fn samples_far_apart_seek_and_run_in_parallel() {
    let videos = Videos::new();
    let decoder = decoder(VideoLimits { processes_per_call: 3, ..VideoLimits::default() });
    let file = videos.h264_mp4("long.mp4", "160x120", 30, 40.0);
    let info = decoder.probe(&file, FIELD).await.unwrap();
    let timestamps = sample_timestamps(&info, &Sampling::Even { start_s: None, end_s: None }, 6).unwrap();
    let frames = collect(decoder.frames_at(&file, &info, &timestamps, FIELD)).await.unwrap();
    for (frame, &t) in frames.iter().zip(&timestamps) {
        assert_same_pixels(&frame.image, &ffmpeg_frame_at(&file, t).unwrap(), &format!("long at {t} s"));
    }
}

#[tokio::test]
async fn dense_grids_match_ffmpeg_even_on_coarse_time_bases() {
    let videos = Videos::new();
    let decoder = decoder(VideoLimits::default());
    // Past 64 grid points the child selects frames by arithmetic on the grid; AVI counts time in
    // whole frames (1/25 s), so every grid point is within a tick of a frame.
    for (name, file, step) in [
        ("AVI", videos.mpeg4_avi(), 0.02),
        ("MP4 on frame boundaries", videos.h264_mp4("grid.mp4", "96x64", 30, 3.0), 1.0 / 30.0),
        ("MP4 finer than frames", videos.h264_mp4("fine.mp4", "96x64", 30, 3.0), 0.0123),
    ] {
        let info = decoder.probe(&file, FIELD).await.unwrap();
        let last_frame = frame_times(&file).into_iter().fold(0.0, f64::max) - info.start_s;
        let count = ((last_frame - 0.001) / step).floor() as usize;
        assert!(count > 64, "{name}: {count}");
        let frames = collect(decoder.frames_on_grid(&file, &info, 0.001, step, count, FIELD)).await.unwrap();
        assert_eq!(frames.len(), count, "{name}");
        for frame in &frames {
            let theirs = ffmpeg_frame_at(&file, frame.timestamp_s).expect("a frame");
            assert_same_pixels(&frame.image, &theirs, &format!("{name} grid at {:.6} s", frame.timestamp_s));
        }
    }
}

#[tokio::test]
async fn after_the_last_frame_starts_the_answer_is_the_last_frame() {
    let videos = Videos::new();
    let decoder = decoder(VideoLimits::default());
    let one = videos.one_frame();
    let info = decoder.probe(&one, FIELD).await.unwrap();
    let timestamps = sample_timestamps(&info, &Sampling::Even { start_s: None, end_s: None }, 6).unwrap();
    assert!(ffmpeg_frame_at(&one, timestamps[0]).is_none(), "ffmpeg itself writes no frame there");
    let frames = collect(decoder.frames_at(&one, &info, &timestamps, FIELD)).await.unwrap();
    assert_eq!(frames.len(), 6);
    let only = ffmpeg_last_frame(&one);
    for frame in &frames {
        assert_same_pixels(&frame.image, &only, "one-frame video");
    }
    // In a longer video: the last frame, and the samples before it as usual, through both paths.
    let file = videos.h264_mp4("tail.mp4", "96x64", 30, 2.0);
    let info = decoder.probe(&file, FIELD).await.unwrap();
    let end = info.duration_s - 0.001;
    let frames = collect(decoder.frames_at(&file, &info, &[1.0, end], FIELD)).await.unwrap();
    assert_same_pixels(&frames[0].image, &ffmpeg_frame_at(&file, 1.0).unwrap(), "before the tail");
    assert_same_pixels(&frames[1].image, &ffmpeg_last_frame(&file), "tail");
    let grid = collect(decoder.frames_on_grid(&file, &info, 1.9, 0.0499, 2, FIELD)).await.unwrap();
    assert_same_pixels(&grid[1].image, &ffmpeg_last_frame(&file), "grid tail");
}

#[tokio::test]
async fn broken_and_foreign_files_are_media_errors() {
    let videos = Videos::new();
    let decoder = decoder(VideoLimits::default());
    let cases = [
        (videos.truncated(), "is it complete"),
        (videos.png_bytes(), "not a video in an accepted container"),
        (videos.random_bytes(), "not a video in an accepted container"),
        (videos.write("empty.mp4", b""), "empty"),
        (videos.audio_only(), "no video stream (audio only?)"),
        (videos.unknown_duration(), "duration is zero or unknown"),
        (videos.mpeg_ts(), "MPEG-TS videos are not accepted"),
    ];
    for (file, needle) in cases {
        let message = media_message(decoder.probe(&file, FIELD).await.unwrap_err(), FIELD);
        assert!(message.contains(needle), "{}: {message}", file.display());
        assert!(!message.contains(videos.path("").to_str().unwrap()), "the message leaks the path: {message}");
    }
}

#[tokio::test]
async fn a_file_promising_more_frames_than_it_has_is_decoded_up_to_its_end() {
    let videos = Videos::new();
    let decoder = decoder(VideoLimits::default());
    let file = videos.truncated_faststart();
    let info = decoder.probe(&file, FIELD).await.expect("the index is whole");
    let last = frame_times(&file).into_iter().fold(0.0, f64::max);
    assert!(last + 3.0 < info.duration_s, "the cut left frames up to {last} s of {} s", info.duration_s);
    // Shortly after the last frame there is, that frame (as for any video)...
    let frames = collect(decoder.frames_at(&file, &info, &[0.5, last + 0.5], FIELD)).await.unwrap();
    assert_same_pixels(&frames[1].image, &ffmpeg_last_frame(&file), "truncated tail");
    // ...far after it, an error that says what is wrong.
    let error = collect(decoder.frames_at(&file, &info, &[0.5, last + 2.5], FIELD)).await.unwrap_err();
    let message = media_message(error, FIELD);
    assert!(message.contains("may be truncated"), "{message}");
}

#[tokio::test]
async fn limits_refuse_videos_before_decoding() {
    let videos = Videos::new();
    let file = videos.h264_mp4("small.mp4", "160x120", 30, 2.0);
    let narrow = decoder(VideoLimits { max_pixels: 160 * 120 - 1, ..VideoLimits::default() });
    let message = media_message(narrow.probe(&file, FIELD).await.unwrap_err(), FIELD);
    assert!(message.contains("160x120") && message.contains("megapixels"), "{message}");
    let short = decoder(VideoLimits { max_duration_s: 1.5, ..VideoLimits::default() });
    let message = media_message(short.probe(&file, FIELD).await.unwrap_err(), FIELD);
    assert!(message.contains("2.0 s long") && message.contains("1.5 s"), "{message}");
    let few = decoder(VideoLimits { max_frames: 5, ..VideoLimits::default() });
    let info = few.probe(&file, FIELD).await.unwrap();
    let error = collect(few.frames_on_grid(&file, &info, 0.0, 0.1, 6, FIELD)).await.unwrap_err();
    assert!(
        matches!(&error, GitcapError::InvalidArgument { field, .. } if field == "media.sampling.count"),
        "{error:?}"
    );
    let error = collect(few.frames_at(&file, &info, &[0.5, 0.2], FIELD)).await.unwrap_err();
    assert!(
        matches!(&error, GitcapError::InvalidArgument { field, .. } if field == "media.sampling.timestamps_s[1]"),
        "{error:?}"
    );
}

#[tokio::test]
async fn decoders_are_stopped_at_their_cpu_time_wall_time_and_memory_limits() {
    let videos = Videos::new();
    // A frame bomb: 960 frames of 1280x720 in 4 seconds.
    let bomb = videos.encode("bomb.mp4", "1280x720", 240, 4.0, &["-c:v", "libx264", "-preset", "ultrafast"]);
    let info = decoder(VideoLimits::default()).probe(&bomb, FIELD).await.unwrap();
    let all_frames = |decoder: VideoDecoder| {
        let (file, info) = (bomb.clone(), info.clone());
        async move { collect(decoder.frames_on_grid(&file, &info, 0.0, 1.0 / 240.0, 950, FIELD)).await }
    };
    let started = Instant::now();
    let cpu = decoder(VideoLimits { cpu_seconds: 1, ..VideoLimits::default() });
    let message = media_message(all_frames(cpu).await.unwrap_err(), FIELD);
    assert!(message.contains("1 s of CPU time"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());

    let started = Instant::now();
    let wall = decoder(VideoLimits { wall_seconds: 0.5, ..VideoLimits::default() });
    let message = media_message(all_frames(wall).await.unwrap_err(), FIELD);
    assert!(message.contains("time limit of 0.5 s"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    let small = decoder(VideoLimits { memory_bytes: 32 << 20, ..VideoLimits::default() });
    let message = media_message(small.probe(&bomb, FIELD).await.unwrap_err(), FIELD);
    assert!(message.contains("32 MiB memory limit"), "{message}");
}

#[tokio::test]
async fn playlists_and_lists_cannot_make_ffmpeg_read_other_files_or_the_network() {
    let videos = Videos::new();
    let decoder = decoder(VideoLimits::default());
    let segment = videos.mpeg_ts();
    let video = videos.h264_mp4("target.mp4", "64x48", 25, 1.0);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://127.0.0.1:{}/segment.ts", listener.local_addr().unwrap().port());
    let cases = [
        videos.hls_playlist("passwd.m3u8", "file:///etc/passwd"),
        videos.hls_playlist("segment.mp4", segment.to_str().unwrap()),
        videos.hls_playlist("network.m3u8", &url),
        videos.concat_list("passwd.ffconcat", "/etc/passwd"),
        videos.concat_list("video.mp4", video.to_str().unwrap()),
    ];
    let real = decoder.probe(&video, FIELD).await.unwrap();
    for file in &cases {
        let message = media_message(decoder.probe(file, FIELD).await.unwrap_err(), FIELD);
        assert!(message.contains("points at other files"), "{}: {message}", file.display());
        // Even handed straight to the decoder, as if it had passed the probe.
        let error = collect(decoder.frames_at(file, &real, &[0.1], FIELD)).await.unwrap_err();
        let message = media_message(error, FIELD);
        assert!(message.contains("not on whitelist") || message.contains("Invalid"), "{}: {message}", file.display());
    }
    assert!(listener.accept().is_err(), "ffmpeg connected to 127.0.0.1");
}

#[tokio::test]
async fn dropping_a_stream_frees_its_process_slot() {
    let videos = Videos::new();
    let file = videos.h264_mp4("drop.mp4", "160x120", 30, 3.0);
    let limits = VideoLimits { max_processes: 1, processes_per_call: 1, wall_seconds: 5.0, ..VideoLimits::default() };
    let decoder = decoder(limits);
    let info = decoder.probe(&file, FIELD).await.unwrap();
    let timestamps = [0.1, 0.2, 2.5];
    {
        let mut stream = std::pin::pin!(decoder.frames_at(&file, &info, &timestamps, FIELD));
        stream.next().await.unwrap().unwrap();
    }
    let started = Instant::now();
    let frames = collect(decoder.frames_at(&file, &info, &timestamps, FIELD)).await.unwrap();
    assert_eq!(frames.len(), 3);
    assert!(started.elapsed() < Duration::from_secs(4), "waited {:?} for the slot", started.elapsed());
    // Two calls at once share the one slot: the second waits, both finish.
    let (a, b) = tokio::join!(
        collect(decoder.frames_at(&file, &info, &timestamps, FIELD)),
        collect(decoder.frames_on_grid(&file, &info, 0.0, 0.5, 5, FIELD))
    );
    assert_eq!((a.unwrap().len(), b.unwrap().len()), (3, 5));
}

/// The processes whose parent is this one, whose name is `name` and whose command line
/// mentions `file` (as a path or a `file:` URL; other tests here run ffmpeg too, on files of
/// their own).
fn children_on(name: &str, file: &Path) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
            let ppid = stat[close + 1..].split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let path = file.as_os_str().as_encoded_bytes();
            let mentions = cmdline.windows(path.len()).any(|w| w == path);
            &stat[open + 1..close] == name && ppid == Some(me) && mentions
        })
        .collect()
}

/// How the live process `pid` falls short of a decoder child's isolation: it may write no file
/// (`RLIMIT_FSIZE` 0, soft and hard), dump no core, and leads its own process group (so that
/// killing the group kills whatever it started). Empty when it is isolated.
fn isolation_faults(pid: u32) -> Vec<String> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| -> Vec<String> {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {limits}"));
        line[name.len()..].split_whitespace().take(2).map(str::to_string).collect()
    };
    let mut faults = vec![];
    for name in ["Max file size", "Max core file size"] {
        if limit(name) != ["0", "0"] {
            faults.push(format!("{name} is {:?}, not 0", limit(name)));
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    let pgid: u32 = after_name.split_whitespace().nth(2).unwrap().parse().unwrap();
    if pgid != pid {
        faults.push(format!("process group {pgid}, not its own ({pid})"));
    }
    faults
}

#[tokio::test]
async fn decoder_children_may_write_no_file_and_lead_their_own_process_group() {
    let videos = Videos::new();
    let file = videos.h264_mp4("long.mp4", "640x480", 25, 12.0);
    let decoder = decoder(VideoLimits::default());
    let info = decoder.probe(&file, FIELD).await.unwrap();
    // One frame read of 250: the child is alive, blocked writing the next ones into its pipe.
    let mut stream = std::pin::pin!(decoder.frames_on_grid(&file, &info, 0.0, 0.04, 250, FIELD));
    stream.next().await.unwrap().unwrap();
    let children = children_on("ffmpeg", &file);
    assert!(!children.is_empty(), "no ffmpeg child alive while its frames are being read");
    for pid in children {
        assert_eq!(isolation_faults(pid), Vec::<String>::new(), "ffmpeg child {pid}");
        assert_eq!(std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), Path::new("/"), "its working directory");
    }

    // The check itself: a child started without the isolation fails it.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let plain = Killed(std::process::Command::new("sleep").arg("30").spawn().unwrap());
    let faults = isolation_faults(plain.0.id());
    drop(plain);
    let said = |what: &str| faults.iter().any(|f| f.contains(what));
    assert!(said("Max file size") && said("process group"), "{faults:?}");
}
