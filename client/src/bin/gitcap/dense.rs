//! `gitcap dense`: timestamped captions over a whole video, as text, JSON lines or subtitles.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use futures::StreamExt;
use gitcap_client::subtitles::{self, Segment};
use gitcap_client::{CaptionOptions, DenseOptions, GitcapClient, Media};
use serde_json::json;

use crate::args::DenseFormat;
use crate::caption::{is_url, read};
use crate::render::caption_json;

/// `gitcap dense`: text and JSON lines are printed as each window is ready; subtitles once every
/// window is (a cue's end depends on the next window's start).
pub async fn dense(
    client: &GitcapClient,
    target: &str,
    window: f64,
    stride: f64,
    caption: CaptionOptions,
    format: DenseFormat,
) -> Result<ExitCode> {
    let media = if is_url(target) { Media::url(target) } else { Media::video(read(Path::new(target))?) };
    let options = DenseOptions { caption, window_s: window, stride_s: stride };
    let mut windows = client.dense_caption(media, &options).await?;
    let mut segments = Vec::new();
    while let Some(window) = windows.next().await {
        let window = window?;
        let caption = window.caption.clone().unwrap_or_default();
        match format {
            DenseFormat::Text => println!("[{:.2}s-{:.2}s] {}", window.start_s, window.end_s, caption.text),
            DenseFormat::Jsonl => {
                println!(
                    "{}",
                    json!({"start_s": window.start_s, "end_s": window.end_s, "caption": caption_json(&caption)})
                )
            }
            DenseFormat::Vtt | DenseFormat::Srt => segments.push(Segment::from(&window)),
        }
    }
    match format {
        DenseFormat::Vtt => print!("{}", subtitles::vtt(&segments)),
        DenseFormat::Srt => print!("{}", subtitles::srt(&segments)),
        DenseFormat::Text | DenseFormat::Jsonl => {}
    }
    Ok(ExitCode::SUCCESS)
}
