//! `gitcap caption` and `gitcap live`: read the media, send it, print the answers.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use gitcap_client::media::{self, MediaSource};
use gitcap_client::{CaptionOptions, GitcapClient, LiveOptions, Media, UploadOptions, VideoUploadOptions};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::args::{RequestArgs, VideoArgs};
use crate::render::{caption_json, print_caption, print_events, print_labels};

/// Frames per second extracted from a video file unless `--fps` says otherwise.
const DEFAULT_VIDEO_FPS: f64 = 2.0;

/// `gitcap caption`.
pub async fn caption<F: Future<Output = Result<GitcapClient>>>(
    connect: impl FnOnce() -> F,
    target: &str,
    labels: &[String],
    options: CaptionOptions,
    stream: bool,
    json: bool,
    video: &VideoArgs,
) -> Result<ExitCode> {
    if is_url(target) {
        let client = connect().await?;
        let media = Media::url(target);
        let media = match video.sampling() {
            Some(sampling) => media.with_sampling(sampling),
            None => media,
        };
        return caption_media(&client, media, labels, &options, stream, json).await;
    }
    let path = Path::new(target);
    let source = media::classify(path).with_context(|| format!("reading {}", path.display()))?;
    if video.sampling().is_some() && !matches!(source, MediaSource::Video(_)) {
        bail!("--start, --end and --at apply to video files only");
    }
    match &source {
        MediaSource::Image(path, _) => {
            let client = connect().await?;
            caption_media(&client, Media::image(read(path)?), labels, &options, stream, json).await
        }
        MediaSource::Video(path) if !video.local_decode => {
            let client = connect().await?;
            if !labels.is_empty() {
                let media = Media::video(read(path)?);
                let media = match video.sampling() {
                    Some(sampling) => media.with_sampling(sampling),
                    None => media,
                };
                return caption_media(&client, media, labels, &options, stream, json).await;
            }
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let bar = progress_bar(size, "uploading the video {bar:30} {bytes}/{total_bytes} {elapsed}");
            let tick = bar.clone();
            let mut upload = VideoUploadOptions::new(options).progress(move |p| tick.set_position(p.bytes));
            upload.sampling = video.sampling();
            if stream {
                let events = client.upload_video_file_stream(path, &upload).await;
                bar.finish_and_clear();
                print_events(events?, json).await?;
            } else {
                let caption = client.upload_video_file(path, &upload).await;
                bar.finish_and_clear();
                print_caption(&caption?, json);
            }
            Ok(ExitCode::SUCCESS)
        }
        MediaSource::Video(path) => {
            let frames = media::extract_video_frames(path, video.fps.unwrap_or(DEFAULT_VIDEO_FPS))?;
            let client = connect().await?;
            caption_frames(&client, frames, labels, options, stream, json).await
        }
        MediaSource::Frames(paths) => {
            let frames = read_frames(paths)?;
            let client = connect().await?;
            caption_frames(&client, frames, labels, options, stream, json).await
        }
    }
}

pub fn is_url(target: &str) -> bool {
    target.starts_with("http://") || target.starts_with("https://")
}

/// One piece of media in one message: captioned, answered, or its labels ranked.
async fn caption_media(
    client: &GitcapClient,
    media: Media,
    labels: &[String],
    options: &CaptionOptions,
    stream: bool,
    json: bool,
) -> Result<ExitCode> {
    if !labels.is_empty() {
        let ranked = client
            .score_labels(media, labels.to_vec(), &options.question, options.model.as_deref().unwrap_or_default())
            .await?;
        print_labels(&ranked, json);
    } else if stream {
        print_events(client.caption_stream(media, options).await?, json).await?;
    } else {
        print_caption(&client.caption(media, options).await?, json);
    }
    Ok(ExitCode::SUCCESS)
}

/// Frames uploaded one by one (or, for labels, sent in one message).
async fn caption_frames(
    client: &GitcapClient,
    frames: Vec<Vec<u8>>,
    labels: &[String],
    options: CaptionOptions,
    stream: bool,
    json: bool,
) -> Result<ExitCode> {
    if !labels.is_empty() {
        return caption_media(client, Media::frames(frames), labels, &options, stream, json).await;
    }
    let bar = progress_bar(frames.len() as u64, "uploading frames {bar:30} {pos}/{len} {elapsed}");
    let tick = bar.clone();
    let upload =
        UploadOptions::new(options).frame_count(frames.len() as u32).progress(move |p| tick.set_position(p.frames));
    let frames = futures::stream::iter(frames);
    if stream {
        let events = client.upload_frames_stream(frames, &upload).await;
        bar.finish_and_clear();
        print_events(events?, json).await?;
    } else {
        let caption = client.upload_frames(frames, &upload).await;
        bar.finish_and_clear();
        print_caption(&caption?, json);
    }
    Ok(ExitCode::SUCCESS)
}

/// `gitcap live`.
pub async fn live<F: Future<Output = Result<GitcapClient>>>(
    connect: impl FnOnce() -> F,
    path: &str,
    window: u32,
    stride: u32,
    request: &RequestArgs,
    fps: Option<f64>,
    json: bool,
) -> Result<ExitCode> {
    let path = Path::new(path);
    let source = media::classify(path).with_context(|| format!("reading {}", path.display()))?;
    let (frames, fps) = match &source {
        MediaSource::Image(..) => {
            bail!("{}: live captioning needs a video file or a directory of frames", path.display())
        }
        MediaSource::Frames(paths) => (read_frames(paths)?, fps),
        MediaSource::Video(path) => {
            let fps = fps.unwrap_or(DEFAULT_VIDEO_FPS);
            (media::extract_video_frames(path, fps)?, Some(fps))
        }
    };
    let client = connect().await?;
    let options = LiveOptions { caption: request.options(), window, stride, progress: None };
    let mut events = client.live(futures::stream::iter(frames), &options).await?;
    while let Some(event) = events.next().await {
        let event = event?;
        let caption = event.caption.clone().unwrap_or_default();
        if json {
            let mut value = json!({
                "first_frame": event.first_frame,
                "last_frame": event.last_frame,
                "caption": caption_json(&caption),
            });
            if let Some(fps) = fps {
                value["start_seconds"] = json!(event.first_frame as f64 / fps);
                value["end_seconds"] = json!((event.last_frame + 1) as f64 / fps);
            }
            println!("{value}");
        } else {
            let times = fps
                .map(|fps| {
                    format!(", {:.2}s-{:.2}s", event.first_frame as f64 / fps, (event.last_frame + 1) as f64 / fps)
                })
                .unwrap_or_default();
            println!("[frames {}-{}{times}] {}", event.first_frame, event.last_frame, caption.text);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn read_frames(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    paths.iter().map(|p| read(p)).collect()
}

fn progress_bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(&format!("{{spinner}} {template}")) {
        bar.set_style(style);
    }
    bar
}
