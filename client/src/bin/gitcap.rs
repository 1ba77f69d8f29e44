//! `gitcap`: caption images and videos, score labels, watch live captions and check the health
//! of a gitcap server from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use futures::StreamExt;
use gitcap_client::media::{self, MediaSource};
use gitcap_client::proto::{self, FinishReason};
use gitcap_client::{
    Caption, CaptionEvent, CaptionOptions, ClientConfig, GitcapClient, HealthStatus, LiveOptions, Media, UploadOptions,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

/// Frames per second extracted from a video file unless `--fps` says otherwise.
const DEFAULT_VIDEO_FPS: f64 = 2.0;

#[derive(Parser)]
#[command(name = "gitcap", version, about = "Client for the gitcap captioning server")]
struct Cli {
    /// The server's URL.
    #[arg(long, global = true, env = "GITCAP_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Bearer token sent with every call.
    #[arg(long, global = true, env = "GITCAP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds a call with a single answer may take.
    #[arg(long, global = true, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Seconds connecting may take.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 10.0)]
    connect_timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Caption an image, an animated GIF, a video file or a directory of frames (or answer a
    /// question about it, or rank labels for it).
    Caption {
        /// An image (JPEG, PNG, WebP, GIF), a video file (needs ffmpeg) or a directory of frames.
        path: PathBuf,
        /// Rank these comma-separated labels instead of captioning.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        #[command(flatten)]
        generation: GenerationArgs,
        /// Print tokens as they are generated.
        #[arg(long)]
        stream: bool,
        /// Print the answer as JSON (one object per line with --stream).
        #[arg(long)]
        json: bool,
        /// Frames per second extracted from a video file.
        #[arg(long)]
        fps: Option<f64>,
    },
    /// Live captioning of a video file or directory of frames: a caption every `stride` frames
    /// of the latest `window` frames.
    Live {
        /// A video file (needs ffmpeg) or a directory of frames.
        path: PathBuf,
        /// Frames per caption (0 = the model's frame count).
        #[arg(long, default_value_t = 0)]
        window: u32,
        /// A caption every this many frames (0 = the window).
        #[arg(long, default_value_t = 0)]
        stride: u32,
        #[command(flatten)]
        generation: GenerationArgs,
        /// Frames per second: of the extraction from a video file; for a directory, only to print times.
        #[arg(long)]
        fps: Option<f64>,
        /// Print each window as a JSON object on its own line.
        #[arg(long)]
        json: bool,
    },
    /// Check the server's health.
    Health {
        /// The service to check (empty = the whole server), e.g. gitcap.v1.Captioner.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(clap::Args)]
struct GenerationArgs {
    /// Ask this question about the media instead of captioning it.
    #[arg(long, short)]
    question: Option<String>,
    /// Model name, alias or version (default: the server's default model).
    #[arg(long, short)]
    model: Option<String>,
    /// Most tokens to generate.
    #[arg(long)]
    max_new_tokens: Option<u32>,
    /// Fewest tokens to generate.
    #[arg(long)]
    min_new_tokens: Option<u32>,
    /// Beam search with this many beams (1 = greedy).
    #[arg(long)]
    num_beams: Option<u32>,
    /// Sample instead of picking the likeliest token.
    #[arg(long)]
    do_sample: bool,
    /// Sampling temperature.
    #[arg(long)]
    temperature: Option<f32>,
    /// Sample among the k likeliest tokens.
    #[arg(long)]
    top_k: Option<u32>,
    /// Nucleus sampling: the smallest set of tokens with this total probability.
    #[arg(long)]
    top_p: Option<f32>,
    /// Random seed: same seed, same request, same output.
    #[arg(long)]
    seed: Option<u64>,
    /// Penalty on repeated tokens (1 = none).
    #[arg(long)]
    repetition_penalty: Option<f32>,
}

impl GenerationArgs {
    fn options(&self) -> CaptionOptions {
        CaptionOptions {
            model: self.model.clone().unwrap_or_default(),
            question: self.question.clone().unwrap_or_default(),
            generation: proto::GenerationOptions {
                max_new_tokens: self.max_new_tokens,
                min_new_tokens: self.min_new_tokens,
                num_beams: self.num_beams,
                do_sample: self.do_sample.then_some(true),
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
                repetition_penalty: self.repetition_penalty,
                ..Default::default()
            },
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("gitcap: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(cli: &Cli) -> Result<GitcapClient> {
    let mut config = ClientConfig::new(&cli.server).connect_timeout(Duration::from_secs_f64(cli.connect_timeout));
    if let Some(token) = &cli.token {
        config = config.token(token);
    }
    if let Some(timeout) = cli.timeout {
        config = config.request_timeout(Duration::from_secs_f64(timeout));
    }
    GitcapClient::connect(config).await.with_context(|| format!("connecting to {}", cli.server))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "gitcap", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { service } => {
            let client = connect(&cli).await?;
            let status = client.health(service).await?;
            println!("{status}");
            Ok(if status == HealthStatus::Serving { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Caption { path, labels, generation, stream, json, fps } => {
            let source = media::classify(path).with_context(|| format!("reading {}", path.display()))?;
            let frames = match &source {
                MediaSource::Image(..) => None,
                MediaSource::Frames(paths) => Some(read_frames(paths)?),
                MediaSource::Video(path) => Some(media::extract_video_frames(path, fps.unwrap_or(DEFAULT_VIDEO_FPS))?),
            };
            let client = connect(&cli).await?;
            let options = generation.options();
            if !labels.is_empty() {
                let media = match (&source, frames) {
                    (MediaSource::Image(path, _), _) => Media::image(read(path)?),
                    (_, frames) => Media::frames(frames.unwrap_or_default()),
                };
                let ranked = client.score_labels(media, labels.clone(), &options.question, &options.model).await?;
                print_labels(&ranked, *json);
                return Ok(ExitCode::SUCCESS);
            }
            match (&source, frames) {
                (MediaSource::Image(path, _), _) => {
                    let media = Media::image(read(path)?);
                    if *stream {
                        print_events(client.caption_stream(media, &options).await?, *json).await?;
                    } else {
                        print_caption(&client.caption(media, &options).await?, *json);
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
                    if *stream {
                        let events = client.upload_frames_stream(frames, &upload).await;
                        bar.finish_and_clear();
                        print_events(events?, *json).await?;
                    } else {
                        let caption = client.upload_frames(frames, &upload).await;
                        bar.finish_and_clear();
                        print_caption(&caption?, *json);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Live { path, window, stride, generation, fps, json } => {
            let source = media::classify(path).with_context(|| format!("reading {}", path.display()))?;
            let (frames, fps) = match &source {
                MediaSource::Image(..) => {
                    bail!("{}: live captioning needs a video file or a directory of frames", path.display())
                }
                MediaSource::Frames(paths) => (read_frames(paths)?, *fps),
                MediaSource::Video(path) => {
                    let fps = fps.unwrap_or(DEFAULT_VIDEO_FPS);
                    (media::extract_video_frames(path, fps)?, Some(fps))
                }
            };
            let client = connect(&cli).await?;
            let options =
                LiveOptions { caption: generation.options(), window: *window, stride: *stride, progress: None };
            let mut events = client.live(futures::stream::iter(frames), &options).await?;
            while let Some(event) = events.next().await {
                let event = event?;
                let caption = event.caption.clone().unwrap_or_default();
                if *json {
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
                            format!(
                                ", {:.2}s-{:.2}s",
                                event.first_frame as f64 / fps,
                                (event.last_frame + 1) as f64 / fps
                            )
                        })
                        .unwrap_or_default();
                    println!("[frames {}-{}{times}] {}", event.first_frame, event.last_frame, caption.text);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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

async fn print_events(
    mut events: impl futures::Stream<Item = gitcap_client::Result<CaptionEvent>> + Unpin,
    json: bool,
) -> Result<()> {
    let mut stdout = std::io::stdout();
    while let Some(event) = events.next().await {
        match event? {
            CaptionEvent::Token(token) => {
                if json {
                    let value = json!({"token": {"id": token.token_id, "text": token.text_delta, "logprob": token.logprob, "special": token.special}});
                    writeln!(stdout, "{value}")?;
                } else {
                    write!(stdout, "{}", token.text_delta)?;
                    stdout.flush()?;
                }
            }
            CaptionEvent::Done(caption) => {
                if json {
                    writeln!(stdout, "{}", json!({ "done": caption_json(&caption) }))?;
                } else {
                    writeln!(stdout)?;
                }
            }
        }
    }
    Ok(())
}

fn print_caption(caption: &Caption, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(&caption_json(caption)).unwrap_or_default());
    } else {
        println!("{}", caption.text);
    }
}

fn print_labels(ranked: &proto::ScoreLabelsResponse, json: bool) {
    if json {
        let scores: Vec<Value> = ranked
            .scores
            .iter()
            .map(
                |s| json!({"label": s.label, "logprob": s.logprob, "mean_logprob": s.mean_logprob, "tokens": s.tokens}),
            )
            .collect();
        let value = json!({"scores": scores, "model": ranked.model, "version": ranked.version});
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    } else {
        let width = ranked.scores.iter().map(|s| s.label.chars().count()).max().unwrap_or(0);
        for (rank, score) in ranked.scores.iter().enumerate() {
            println!(
                "{:>2}. {:<width$}  logprob {:>9.4}  mean {:>8.4}",
                rank + 1,
                score.label,
                score.logprob,
                score.mean_logprob
            );
        }
    }
}

fn caption_json(caption: &Caption) -> Value {
    let finish_reason = match FinishReason::try_from(caption.finish_reason) {
        Ok(FinishReason::Eos) => "eos",
        Ok(FinishReason::Length) => "length",
        _ => "unspecified",
    };
    let usage = caption.usage.unwrap_or_default();
    let timings = caption.timings.unwrap_or_default();
    json!({
        "text": caption.text,
        "token_ids": caption.token_ids,
        "finish_reason": finish_reason,
        "model": caption.model,
        "version": caption.version,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "image_tokens": usage.image_tokens,
            "generated_tokens": usage.generated_tokens,
        },
        "timings_ms": {
            "queue": timings.queue_ms,
            "vision": timings.vision_ms,
            "decode": timings.decode_ms,
            "total": timings.total_ms,
        },
    })
}
