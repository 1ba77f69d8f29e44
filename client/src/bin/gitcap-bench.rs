//! `gitcap-bench`: times a running gitcap server through gRPC, for `scripts/bench.sh` to
//! compare with transformers in the same run. Prints one JSON object.
//!
//!   gitcap-bench --url URL latency --media F [--media F ...] [--runs 5]
//!   gitcap-bench --url URL throughput --clients 16 --images DIR [--requests 32]
//!   gitcap-bench --url URL follow-up --sets DIR --question Q [--runs 5]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::sync::Mutex;

use gitcap_client::{CaptionOptions, ClientConfig, GitcapClient, Media};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    url: String,
    #[arg(long, default_value_t = 20)]
    max_new_tokens: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One request at a time on the same media (an image, or frames of a video); medians.
    Latency {
        #[arg(long, required = true)]
        media: Vec<PathBuf>,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// `clients` callers at once, each taking the next image of DIR until `requests` are done.
    Throughput {
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        images: PathBuf,
        #[arg(long, default_value_t = 32)]
        requests: usize,
    },
    /// For each frame set (a subdirectory of `sets`): a caption of frames the server has not
    /// seen (cold), then a question about the same frames (the feature cache's case); both
    /// generate `answer_tokens` tokens.
    FollowUp {
        #[arg(long)]
        sets: PathBuf,
        #[arg(long)]
        question: String,
        /// New tokens of the follow-up answer.
        #[arg(long, default_value_t = 5)]
        answer_tokens: u32,
    },
}

fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.sort();
    Ok(files)
}

fn media(paths: &[PathBuf]) -> Result<Media> {
    let bytes: Vec<Vec<u8>> = paths.iter().map(std::fs::read).collect::<std::io::Result<_>>()?;
    Ok(if bytes.len() == 1 { Media::image(bytes.into_iter().next().unwrap()) } else { Media::frames(bytes) })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One call: its wall time, the tokens, and the server's own timings (queue, vision, prefill,
/// decode ms).
async fn call(client: &GitcapClient, media: Media, options: &CaptionOptions) -> Result<(f64, Vec<i64>, [f64; 4])> {
    let start = Instant::now();
    let caption = client.caption(media, options).await?;
    let t = caption.timings.unwrap_or_default();
    let tokens = caption.token_ids.iter().map(|&t| t as i64).collect();
    Ok((start.elapsed().as_secs_f64(), tokens, [t.queue_ms, t.vision_ms, t.prefill_ms, t.decode_ms]))
}

async fn timed(client: &GitcapClient, media: Media, options: &CaptionOptions) -> Result<(f64, Vec<i64>)> {
    call(client, media, options).await.map(|(s, tokens, _)| (s, tokens))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = GitcapClient::connect(ClientConfig::new(args.url.clone()).max_message_size(256 << 20)).await?;
    let options = CaptionOptions::default().max_new_tokens(args.max_new_tokens);
    let report = match args.command {
        Command::Latency { media: paths, runs } => {
            let (_, tokens) = timed(&client, media(&paths)?, &options).await?; // warm-up
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                times.push(timed(&client, media(&paths)?, &options).await?.0);
            }
            json!({"median_s": median(&times), "runs_s": times, "tokens": tokens})
        }
        Command::Throughput { clients, images, requests } => {
            let images = files(&images)?;
            anyhow::ensure!(images.len() >= requests, "{requests} requests need as many distinct images");
            let queue = Arc::new(Mutex::new(images.into_iter().take(requests).collect::<Vec<_>>()));
            let start = Instant::now();
            let workers: Vec<_> = (0..clients)
                .map(|_| {
                    let (client, options, queue) = (client.clone(), options.clone(), queue.clone());
                    tokio::spawn(async move {
                        let mut calls = Vec::new();
                        loop {
                            let Some(image) = queue.lock().await.pop() else {
                                return Ok::<_, anyhow::Error>(calls);
                            };
                            let (seconds, _, server) = call(&client, media(&[image])?, &options).await?;
                            calls.push((seconds, server));
                        }
                    })
                })
                .collect();
            let mut calls = Vec::new();
            for worker in workers {
                calls.extend(worker.await??);
            }
            let wall = start.elapsed().as_secs_f64();
            let latencies: Vec<f64> = calls.iter().map(|c| c.0).collect();
            let server_ms = |i: usize| median(&calls.iter().map(|c| c.1[i]).collect::<Vec<_>>());
            json!({
                "clients": clients,
                "requests": requests,
                "wall_s": wall,
                "captions_per_s": requests as f64 / wall,
                "latency_p50_s": percentile(&latencies, 0.5),
                "latency_p99_s": percentile(&latencies, 0.99),
                "server_median_ms": {
                    "queue": server_ms(0), "vision": server_ms(1), "prefill": server_ms(2), "decode": server_ms(3)
                },
            })
        }
        Command::FollowUp { sets, question, answer_tokens } => {
            let follow_up = CaptionOptions::default().max_new_tokens(answer_tokens).question(question.clone());
            let caption = CaptionOptions::default().max_new_tokens(answer_tokens);
            let (mut cold, mut warm) = (Vec::new(), Vec::new());
            for set in files(&sets)?.into_iter().filter(|p| p.is_dir()) {
                let frames = files(&set)?;
                let (cold_s, _) = timed(&client, media(&frames)?, &caption).await?;
                let (warm_s, _) = timed(&client, media(&frames)?, &follow_up).await?;
                cold.push(cold_s);
                warm.push(warm_s);
            }
            anyhow::ensure!(cold.len() > 1, "{} needs at least two frame sets", sets.display());
            // The first set pays for lazy initialisation; leave it out.
            let (cold, warm) = (&cold[1..], &warm[1..]);
            json!({
                "cold_median_s": median(cold),
                "follow_up_median_s": median(warm),
                "ratio": median(warm) / median(cold),
                "answer_tokens": answer_tokens,
                "cold_s": cold,
                "follow_up_s": warm,
            })
        }
    };
    println!("{report}");
    Ok(())
}
