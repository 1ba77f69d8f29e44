//! `gitcap-bench`: times a running gitcap server through gRPC, for `scripts/bench.sh` to
//! compare with transformers in the same run. Prints one JSON object.
//!
//!   gitcap-bench --url URL latency --media F [--media F ...] [--runs 5]
//!   gitcap-bench --url URL throughput --clients 16 --images DIR [--requests 32] [--priority batch]
//!   gitcap-bench --url URL follow-up --sets DIR --question Q [--runs 5]
//!   gitcap-bench --url URL priority --images DIR [--batch-clients 16] [--runs 5]
//!   gitcap-bench --url URL video --file F [--file F ...] [--runs 3]
//!   gitcap-bench --url URL oip --media F [--runs 20] [--model default]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::sync::Mutex;

use gitcap_client::{CaptionOptions, ClientConfig, GitcapClient, Media, Priority, VideoUploadOptions};

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
        /// interactive, or batch (as the Batch API's lines run).
        #[arg(long, value_enum, default_value_t)]
        priority: Priority,
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
    /// Interactive requests while batch work keeps the model busy and its queue full:
    /// `batch_clients` callers send batch-priority captions of the images in DIR without pause;
    /// meanwhile `runs` interactive captions, one after another. Reports the interactive queue
    /// times against one vision pass plus one decoding step of the batch work.
    Priority {
        #[arg(long)]
        images: PathBuf,
        #[arg(long, default_value_t = 16)]
        batch_clients: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Each video file uploaded (`UploadVideo`, in chunks) and captioned by the server, which
    /// decodes and samples it: wall time per caption and the server's timings; medians of
    /// `runs` after a warm-up call per file (feature cache off on the server, or each run after
    /// the first is a cache hit).
    Video {
        #[arg(long, required = true)]
        file: Vec<PathBuf>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// One image captioned through the Open Inference Protocol (gRPC `ModelInfer`) and through
    /// native `Caption`, in `runs` back-to-back pairs (which goes first alternates): each side's
    /// median latency, their ratio, and the median of the pairs' ratios (which drift over the
    /// run does not move). Both must generate the same tokens.
    Oip {
        #[arg(long)]
        media: PathBuf,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// The protocol's model name (a gitcap model name or alias).
        #[arg(long, default_value = "default")]
        model: String,
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
            let mut stages: Vec<Vec<_>> = (0..4).map(|_| Vec::with_capacity(runs)).collect();
            for _ in 0..runs {
                let (seconds, _, ms) = call(&client, media(&paths)?, &options).await?;
                times.push(seconds);
                stages.iter_mut().zip(ms).for_each(|(stage, ms)| stage.push(ms));
            }
            // Where the time went, as the server reports it (medians of each stage, ms).
            let [queue, vision, prefill, decode] = [0, 1, 2, 3].map(|i| median(&stages[i]));
            let stages_ms = json!({"queue": queue, "vision": vision, "prefill": prefill, "decode": decode});
            json!({"median_s": median(&times), "runs_s": times, "tokens": tokens, "median_stages_ms": stages_ms})
        }
        Command::Throughput { clients, images, requests, priority } => {
            let options = options.clone().priority(priority);
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
            let (mut cold, mut warm, mut stages) = (Vec::new(), Vec::new(), vec![Vec::new(); 4]);
            for set in files(&sets)?.into_iter().filter(|p| p.is_dir()) {
                let frames = files(&set)?;
                let (cold_s, _) = timed(&client, media(&frames)?, &caption).await?;
                let (warm_s, _, ms) = call(&client, media(&frames)?, &follow_up).await?;
                cold.push(cold_s);
                warm.push(warm_s);
                stages.iter_mut().zip(ms).for_each(|(stage, ms)| stage.push(ms));
            }
            anyhow::ensure!(cold.len() > 1, "{} needs at least two frame sets", sets.display());
            // The first set pays for lazy initialisation; leave it out.
            let (cold, warm) = (&cold[1..], &warm[1..]);
            // The follow-up's stages as the server reports them: with its image keys and values
            // cached, `prefill` is its prompt's prefill (and attaching the cached image tokens).
            let [queue, vision, prefill, decode] = [0, 1, 2, 3].map(|i| median(&stages[i][1..]));
            json!({
                "cold_median_s": median(cold),
                "follow_up_median_s": median(warm),
                "ratio": median(warm) / median(cold),
                "answer_tokens": answer_tokens,
                "cold_s": cold,
                "follow_up_s": warm,
                "follow_up_median_stages_ms": {"queue": queue, "vision": vision, "prefill": prefill, "decode": decode},
            })
        }
        Command::Priority { images, batch_clients, runs } => {
            priority(&client, &options, &images, batch_clients, runs).await?
        }
        Command::Video { file, runs } => {
            let upload = VideoUploadOptions::new(options.clone());
            let mut files = Vec::new();
            for path in file {
                client.upload_video_file(&path, &upload).await?; // warm-up
                let (mut wall, mut server) = (Vec::new(), Vec::new());
                for _ in 0..runs {
                    let start = Instant::now();
                    let caption = client.upload_video_file(&path, &upload).await?;
                    wall.push(start.elapsed().as_secs_f64());
                    server.push(caption.timings.unwrap_or_default());
                }
                let server_ms =
                    |f: fn(&gitcap_client::proto::Timings) -> f64| median(&server.iter().map(f).collect::<Vec<_>>());
                files.push(json!({
                    "file": path.display().to_string(),
                    "bytes": std::fs::metadata(&path)?.len(),
                    "caption_median_s": median(&wall),
                    "runs_s": wall,
                    "server_median_ms": {
                        "queue": server_ms(|t| t.queue_ms), "vision": server_ms(|t| t.vision_ms),
                        "prefill": server_ms(|t| t.prefill_ms), "decode": server_ms(|t| t.decode_ms),
                        "total": server_ms(|t| t.total_ms),
                    },
                }));
            }
            json!({ "files": files })
        }
        Command::Oip { media: path, runs, model } => oip(&args.url, args.max_new_tokens, &path, runs, &model).await?,
    };
    println!("{report}");
    Ok(())
}

/// See [`Command::Oip`]. Both sides are the generated clients on one HTTP/2 channel, so the
/// difference is the server's doors, not the clients.
async fn oip(url: &str, max_new_tokens: u32, path: &Path, runs: usize, model: &str) -> Result<serde_json::Value> {
    use gitcap_client::proto::captioner_client::CaptionerClient;
    use gitcap_client::proto::{media::Kind, CaptionRequest, GenerationOptions};
    use gitcap_protocol::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
    use gitcap_protocol::inference::model_infer_request::InferInputTensor;
    use gitcap_protocol::inference::{infer_parameter::ParameterChoice, InferParameter, ModelInferRequest};

    anyhow::ensure!(runs > 0, "give at least one run");
    let image = std::fs::read(path)?;
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?.connect().await?;
    let native = CaptionerClient::new(channel.clone()).max_decoding_message_size(256 << 20);
    let oip = GrpcInferenceServiceClient::new(channel).max_decoding_message_size(256 << 20);
    let caption_request = CaptionRequest {
        model: model.to_string(),
        media: Some(gitcap_client::proto::Media { kind: Some(Kind::Image(image.clone())), ..Default::default() }),
        options: Some(GenerationOptions { max_new_tokens: Some(max_new_tokens), ..Default::default() }),
        ..Default::default()
    };
    let infer_request = ModelInferRequest {
        model_name: model.to_string(),
        parameters: [(
            "max_new_tokens".to_string(),
            InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(max_new_tokens.into())) },
        )]
        .into(),
        inputs: vec![InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            ..Default::default()
        }],
        raw_input_contents: vec![[&(image.len() as u32).to_le_bytes()[..], &image].concat()],
        ..Default::default()
    };
    let caption = || {
        let (mut native, request) = (native.clone(), caption_request.clone());
        async move {
            let start = Instant::now();
            let response = native.caption(request).await?.into_inner();
            let tokens: Vec<i64> = response.token_ids.iter().map(|&t| i64::from(t)).collect();
            Ok::<_, anyhow::Error>((start.elapsed().as_secs_f64(), tokens))
        }
    };
    let infer = || {
        let (mut oip, request) = (oip.clone(), infer_request.clone());
        async move {
            let start = Instant::now();
            let response = oip.model_infer(request).await?.into_inner();
            let index = response.outputs.iter().position(|o| o.name == "token_ids").context("no token_ids output")?;
            let tokens: Vec<i64> = response.raw_output_contents[index]
                .chunks(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            Ok::<_, anyhow::Error>((start.elapsed().as_secs_f64(), tokens))
        }
    };
    // Warm-up, and both sides must generate the same tokens.
    let (_, native_tokens) = caption().await?;
    let (_, oip_tokens) = infer().await?;
    anyhow::ensure!(native_tokens == oip_tokens, "OIP tokens {oip_tokens:?} differ from Caption's {native_tokens:?}");
    let (mut native_s, mut oip_s) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for run in 0..runs {
        let (n, o) = if run % 2 == 0 {
            let n = caption().await?.0;
            (n, infer().await?.0)
        } else {
            let o = infer().await?.0;
            (caption().await?.0, o)
        };
        native_s.push(n);
        oip_s.push(o);
    }
    let ratios: Vec<f64> = oip_s.iter().zip(&native_s).map(|(o, n)| o / n).collect();
    Ok(json!({
        "runs": runs,
        "tokens": native_tokens.len(),
        "native_caption_median_s": median(&native_s),
        "oip_model_infer_median_s": median(&oip_s),
        "ratio_of_medians": median(&oip_s) / median(&native_s),
        "median_pair_ratio": median(&ratios),
        "native_s": native_s,
        "oip_s": oip_s,
    }))
}

/// See [`Command::Priority`].
async fn priority(
    client: &GitcapClient,
    options: &CaptionOptions,
    images: &Path,
    batch_clients: usize,
    runs: usize,
) -> Result<serde_json::Value> {
    let images = Arc::new(files(images)?);
    anyhow::ensure!(images.len() > runs, "{} needs more than {runs} images", images.len());
    let stop = Arc::new(AtomicBool::new(false));
    let batch_options = options.clone().priority(Priority::Batch);
    let workers: Vec<_> = (0..batch_clients)
        .map(|worker| {
            let (client, options, images, stop) = (client.clone(), batch_options.clone(), images.clone(), stop.clone());
            tokio::spawn(async move {
                // (vision ms, decode ms per generated token) of each batch request.
                let mut stages = Vec::new();
                let mut next = worker;
                while !stop.load(Ordering::Relaxed) {
                    let image = images[next % images.len()].clone();
                    next += batch_clients;
                    let caption = client.caption(media(&[image])?, &options).await?;
                    let timings = caption.timings.unwrap_or_default();
                    let tokens = caption.token_ids.len().max(1) as f64;
                    stages.push((timings.vision_ms, timings.decode_ms / tokens));
                }
                Ok::<_, anyhow::Error>(stages)
            })
        })
        .collect();
    // Let the batch work fill the model and its queue first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut queue_ms = Vec::with_capacity(runs);
    for run in 0..runs {
        let image = images[images.len() - 1 - run].clone();
        let caption = client.caption(media(&[image])?, options).await?;
        queue_ms.push(caption.timings.unwrap_or_default().queue_ms);
    }
    stop.store(true, Ordering::Relaxed);
    let mut stages = Vec::new();
    for worker in workers {
        stages.extend(worker.await??);
    }
    let vision = median(&stages.iter().map(|s| s.0).collect::<Vec<_>>());
    let step = median(&stages.iter().map(|s| s.1).collect::<Vec<_>>());
    let queue = median(&queue_ms);
    Ok(json!({
        "batch_clients": batch_clients,
        "batch_requests": stages.len(),
        "interactive_queue_ms": queue_ms,
        "interactive_queue_median_ms": queue,
        "batch_vision_median_ms": vision,
        "batch_step_median_ms": step,
        "bound_ms": vision + step,
        "ratio": queue / (vision + step),
    }))
}
