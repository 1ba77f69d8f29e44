//! `gitcap caption` and `gitcap live`: read the media, send it, print the answers.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use gitcap_client::media::{self, MediaSource};
use gitcap_client::{GitcapClient, LiveOptions, Media, UploadOptions};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::args::RequestArgs;
use crate::render::{caption_json, print_caption, print_events, print_labels};

/// Frames per second extracted from a video file unless `--fps` says otherwise.
const DEFAULT_VIDEO_FPS: f64 = 2.0;

/// `gitcap caption`.
pub async fn caption<F: Future<Output = Result<GitcapClient>>>(
    connect: impl FnOnce() -> F,
    path: &Path,
    labels: &[String],
    request: &RequestArgs,
    stream: bool,
    json: bool,
    fps: Option<f64>,
) -> Result<ExitCode> {
    let source = media::classify(path).with_context(|| format!("reading {}", path.display()))?;
    let frames = match &source {
        MediaSource::Image(..) => None,
        MediaSource::Frames(paths) => Some(read_frames(paths)?),
        MediaSource::Video(path) => Some(media::extract_video_frames(path, fps.unwrap_or(DEFAULT_VIDEO_FPS))?),
    };
    let client = connect().await?;
    let options = request.options();
    if !labels.is_empty() {
        let media = match (&source, frames) {
            (MediaSource::Image(path, _), _) => Media::image(read(path)?),
            (_, frames) => Media::frames(frames.unwrap_or_default()),
        };
        let ranked = client.score_labels(media, labels.to_vec(), &options.question, &options.model).await?;
        print_labels(&ranked, json);
        return Ok(ExitCode::SUCCESS);
    }
    match (&source, frames) {
        (MediaSource::Image(path, _), _) => {
            let media = Media::image(read(path)?);
            if stream {
                print_events(client.caption_stream(media, &options).await?, json).await?;
            } else {
                print_caption(&client.caption(media, &options).await?, json);
            }
        }
        (_, frames) => {
            let frames = frames.unwrap_or_default();
            let bar = progress_bar(frames.len() as u64);
            let tick = bar.clone();
            let upload = UploadOptions::new(options)
                .frame_count(frames.len() as u32)
                .progress(move |p| tick.set_position(p.frames));
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
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `gitcap live`.
pub async fn live<F: Future<Output = Result<GitcapClient>>>(
    connect: impl FnOnce() -> F,
    path: &Path,
    window: u32,
    stride: u32,
    request: &RequestArgs,
    fps: Option<f64>,
    json: bool,
) -> Result<ExitCode> {
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

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn read_frames(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    paths.iter().map(|p| read(p)).collect()
}

fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{spinner} uploading frames {bar:30} {pos}/{len} {elapsed}") {
        bar.set_style(style);
    }
    bar
}
