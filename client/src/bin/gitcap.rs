//! `gitcap`: caption images and videos, score labels, watch live captions, check the health
//! of a gitcap server and manage its models from the command line.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use futures::{FutureExt, StreamExt};
use gitcap_client::media::{self, MediaSource};
use gitcap_client::proto::{self, FinishReason};
use gitcap_client::{
    AliasStatus, Caption, CaptionEvent, CaptionOptions, ClientConfig, GitcapClient, HealthStatus, ListResponse,
    LiveOptions, Media, ModelEvent, ModelSpec, ModelState, ModelStatus, SwapOptions, SwapResponse, UploadOptions,
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
    /// Admin bearer token, sent with the `models` commands.
    #[arg(long, global = true, env = "GITCAP_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Seconds a call with a single answer may take.
    #[arg(long, global = true, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Seconds connecting may take.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 10.0)]
    connect_timeout: f64,
    /// PEM file of the certificate authority to trust for an https:// server (a private CA or a
    /// self-signed certificate); without it the public web roots are trusted.
    #[arg(long, global = true, env = "GITCAP_TLS_CA", value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// Name to check the server's certificate against, when it differs from the URL's host.
    #[arg(long, global = true, env = "GITCAP_TLS_DOMAIN")]
    tls_domain: Option<String>,
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
    /// Manage the server's models (the admin service; needs --admin-token or GITCAP_ADMIN_TOKEN).
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
        /// Print JSON instead of text (one object per line for `watch` and with --replicas).
        #[arg(long, global = true)]
        json: bool,
        /// Run the command on every replica instead of --server, all at once, one result line each:
        /// `dns:///host:port` (every address of the name, as a headless Service gives) or a
        /// comma-separated list of endpoints. Fails if any replica fails, naming it.
        #[arg(long, global = true, env = "GITCAP_REPLICAS", value_name = "TARGET")]
        replicas: Option<String>,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List the model versions: id, state, aliases, device, dtype, memory, load time.
    List,
    /// Show one model version (`name@version`).
    Get { id: String },
    /// Load a model version beside the others, showing its progress on stderr.
    Load {
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Unload a model version (`name@version`); requests in flight finish.
    Unload { id: String },
    /// Point an alias at a loaded, READY version (`name@version`).
    Alias { alias: String, id: String },
    /// Hot swap: load a new version, then repoint the alias; shows progress on stderr.
    Swap {
        /// The alias to repoint.
        alias: String,
        #[command(flatten)]
        spec: SpecArgs,
        /// Unload the old version first (when two copies do not fit); the alias is unavailable meanwhile.
        #[arg(long)]
        replace: bool,
        /// Keep the old version loaded for a rollback.
        #[arg(long)]
        keep_previous: bool,
    },
    /// Point an alias back at the version it pointed at before the last swap.
    Rollback { alias: String },
    /// Print state changes of every model and alias, starting with the current state, until interrupted.
    Watch,
}

#[derive(clap::Args)]
struct SpecArgs {
    /// The name requests use (also an alias of the new version, unless that alias exists).
    #[arg(long)]
    name: String,
    /// A checkpoint directory inside the server's model roots, or a Hugging Face Hub repo id.
    #[arg(long)]
    source: String,
    /// Hub revision: branch, tag or commit (default main).
    #[arg(long)]
    revision: Option<String>,
    /// Version label for a local directory (default "local").
    #[arg(long)]
    version: Option<String>,
    /// Device, e.g. cpu or cuda:0 (default: the server's).
    #[arg(long)]
    device: Option<String>,
    /// Dtype, e.g. f32, f16, bf16 (default: the server's).
    #[arg(long)]
    dtype: Option<String>,
}

impl SpecArgs {
    fn spec(&self) -> ModelSpec {
        ModelSpec {
            name: self.name.clone(),
            source: self.source.clone(),
            revision: self.revision.clone().unwrap_or_default(),
            version: self.version.clone().unwrap_or_default(),
            device: self.device.clone().unwrap_or_default(),
            dtype: self.dtype.clone().unwrap_or_default(),
        }
    }
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
    let config = client_config(cli)?;
    GitcapClient::connect(config).await.with_context(|| format!("connecting to {}", cli.server))
}

/// The connection settings the flags give, for --server.
fn client_config(cli: &Cli) -> Result<ClientConfig> {
    let mut config = ClientConfig::new(&cli.server).connect_timeout(Duration::from_secs_f64(cli.connect_timeout));
    if let Some(token) = &cli.token {
        config = config.token(token);
    }
    if let Some(token) = &cli.admin_token {
        config = config.admin_token(token);
    }
    if let Some(timeout) = cli.timeout {
        config = config.request_timeout(Duration::from_secs_f64(timeout));
    }
    if let Some(ca) = &cli.tls_ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading the TLS CA file {}", ca.display()))?;
        config = config.tls_ca_pem(pem);
    }
    if let Some(domain) = &cli.tls_domain {
        config = config.tls_domain(domain);
    }
    Ok(config)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "gitcap", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Models { command, json, replicas: Some(target) } => {
            on_replicas(&cli, target, command, *json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Models { command, json, replicas: None } => {
            let client = connect(&cli).await?;
            models(&client, command, *json).await.map_err(|error| {
                match error.downcast_ref::<gitcap_client::Error>().and_then(|e| e.code()) {
                    Some(tonic::Code::Unimplemented) => error.context(format!(
                        "{} does not serve the admin service: the server needs an admin token \
                         (GITCAP__AUTH__ADMIN_TOKEN), or it serves admin on its own address (admin.listen)",
                        cli.server
                    )),
                    _ => error,
                }
            })?;
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

async fn models(client: &GitcapClient, command: &ModelsCommand, json: bool) -> Result<()> {
    if let ModelsCommand::Watch = command {
        let mut events = client.watch_models().await?;
        while let Some(event) = events.next().await {
            match event? {
                ModelEvent::Model(status) if json => println!("{}", json!({ "model": status_json(&status) })),
                ModelEvent::Alias(alias) if json => println!("{}", json!({ "alias": alias_json(&alias) })),
                ModelEvent::Model(status) => println!("model {}", status_line(&status)),
                ModelEvent::Alias(alias) => println!("alias {}", alias_line(&alias)),
            }
        }
        return Ok(());
    }
    let answer = model_call(client, command, true).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer_json(&answer))?);
    } else {
        match &answer {
            Answer::List(list) => print!("{}", models_table(&list.models)),
            Answer::Details(status) => print!("{}", status_details(status)),
            Answer::Model(status) => println!("{}", status_line(status)),
            Answer::Alias(alias) => println!("{}", alias_line(alias)),
            Answer::Swap(swapped) => {
                println!("{}", alias_line(&swapped.alias.clone().unwrap_or_default()));
                println!("{}", status_line(&swapped.model.clone().unwrap_or_default()));
            }
        }
    }
    Ok(())
}

/// What a `models` command (other than `watch`) answered.
enum Answer {
    List(ListResponse),
    /// `get`: shown in full.
    Details(ModelStatus),
    /// `load`, `unload`: shown on one line.
    Model(ModelStatus),
    Alias(AliasStatus),
    Swap(SwapResponse),
}

/// Runs a `models` command other than `watch`; loads and swaps show their progress on stderr
/// when `progress` is set. A load that ends FAILED is an error.
async fn model_call(client: &GitcapClient, command: &ModelsCommand, progress: bool) -> Result<Answer> {
    Ok(match command {
        ModelsCommand::List => Answer::List(client.list_models().await?),
        ModelsCommand::Get { id } => Answer::Details(client.get_model(id).await?),
        ModelsCommand::Load { spec } => {
            let spec = spec.spec();
            let name = spec.name.clone();
            let status = if progress {
                with_progress(client, &name, client.load_model(spec)).await?
            } else {
                client.load_model(spec).await?
            };
            if status.state() == ModelState::Failed {
                bail!("{} failed to load: {}", status.id, status.error);
            }
            Answer::Model(status)
        }
        ModelsCommand::Unload { id } => Answer::Model(client.unload_model(id).await?),
        ModelsCommand::Alias { alias, id } => Answer::Alias(client.set_alias(alias, id).await?),
        ModelsCommand::Swap { alias, spec, replace, keep_previous } => {
            let spec = spec.spec();
            let name = spec.name.clone();
            let options = SwapOptions { replace: *replace, keep_previous: *keep_previous };
            Answer::Swap(if progress {
                with_progress(client, &name, client.swap_model(alias, spec, options)).await?
            } else {
                client.swap_model(alias, spec, options).await?
            })
        }
        ModelsCommand::Rollback { alias } => Answer::Alias(client.rollback(alias).await?),
        ModelsCommand::Watch => bail!("`models watch` is a stream, not a call"),
    })
}

/// The answer as JSON, as `--json` prints it.
fn answer_json(answer: &Answer) -> Value {
    match answer {
        Answer::List(list) => {
            let models: Vec<Value> = list.models.iter().map(status_json).collect();
            json!({"models": models, "aliases": list.aliases})
        }
        Answer::Details(status) | Answer::Model(status) => status_json(status),
        Answer::Alias(alias) => alias_json(alias),
        Answer::Swap(swapped) => json!({
            "alias": alias_json(&swapped.alias.clone().unwrap_or_default()),
            "model": status_json(&swapped.model.clone().unwrap_or_default()),
        }),
    }
}

/// The answer on one line, for a replica's result line.
fn answer_line(answer: &Answer) -> String {
    match answer {
        Answer::List(list) if list.models.is_empty() => "no models".to_string(),
        Answer::List(list) => list.models.iter().map(status_line).collect::<Vec<_>>().join("; "),
        Answer::Details(status) | Answer::Model(status) => status_line(status),
        Answer::Alias(alias) => alias_line(alias),
        Answer::Swap(swapped) => format!(
            "{}; {}",
            alias_line(&swapped.alias.clone().unwrap_or_default()),
            status_line(&swapped.model.clone().unwrap_or_default())
        ),
    }
}

/// `gitcap models --replicas TARGET …`: the command on every replica at once, one line per
/// replica (`URL ok …` or `URL FAILED error`, or a JSON object with --json); an error naming the
/// replicas that failed, if any did.
async fn on_replicas(cli: &Cli, target: &str, command: &ModelsCommand, json: bool) -> Result<()> {
    if let ModelsCommand::Watch = command {
        bail!("`models watch` follows one server: run it with --server, once per replica");
    }
    let replicas = gitcap_client::replicas::resolve(target, &client_config(cli)?).await?;
    let total = replicas.len();
    let results =
        gitcap_client::replicas::fan_out(replicas, |client| async move { model_call(&client, command, false).await })
            .await;
    let mut failed = vec![];
    for replica in results {
        let line = match (&replica.result, json) {
            (Ok(answer), true) => {
                json!({"replica": replica.url, "ok": true, "result": answer_json(answer)}).to_string()
            }
            (Err(error), true) => {
                json!({"replica": replica.url, "ok": false, "error": format!("{error:#}")}).to_string()
            }
            (Ok(answer), false) => format!("{} ok {}", replica.url, answer_line(answer)),
            (Err(error), false) => format!("{} FAILED {error:#}", replica.url),
        };
        println!("{line}");
        if replica.result.is_err() {
            failed.push(replica.url);
        }
    }
    if !failed.is_empty() {
        bail!("{} of {total} replicas failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

/// Runs a load or swap of model `name`, printing on stderr the state changes and download
/// progress of its versions from a watch opened beforehand.
async fn with_progress<T>(
    client: &GitcapClient,
    name: &str,
    call: impl std::future::Future<Output = gitcap_client::Result<T>>,
) -> Result<T> {
    let mut events = client.watch_models().await?;
    // What is already known is not news: the watch starts with the current state.
    let mut seen: HashMap<String, (i32, String)> =
        client.list_models().await?.models.into_iter().map(|m| (m.id.clone(), (m.state, m.progress.clone()))).collect();
    let mut report = |event: Option<gitcap_client::Result<ModelEvent>>| {
        if let Some(Ok(ModelEvent::Model(status))) = event {
            let key = (status.state, status.progress.clone());
            if status.name == name && seen.get(&status.id) != Some(&key) {
                eprintln!("{}", progress_line(&status));
                seen.insert(status.id.clone(), key);
            }
        }
    };
    let mut call = std::pin::pin!(call);
    let mut watching = true;
    let result = loop {
        tokio::select! {
            biased;
            event = events.next(), if watching => {
                watching = event.as_ref().is_some_and(|e| e.is_ok());
                report(event);
            }
            result = &mut call => break result,
        }
    };
    // Events already on their way (the final state) are still shown.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while watching {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(event) => {
                watching = event.as_ref().is_some_and(|e| e.is_ok());
                report(event);
            }
            Err(_) => break,
        }
    }
    while let Some(event) = events.next().now_or_never().flatten() {
        report(Some(event));
    }
    Ok(result?)
}

fn state_name(state: i32) -> &'static str {
    match ModelState::try_from(state) {
        Ok(ModelState::Loading) => "LOADING",
        Ok(ModelState::Ready) => "READY",
        Ok(ModelState::Draining) => "DRAINING",
        Ok(ModelState::Failed) => "FAILED",
        Ok(ModelState::Unloaded) => "UNLOADED",
        _ => "UNSPECIFIED",
    }
}

fn progress_line(status: &ModelStatus) -> String {
    let mut line = format!("{}: {}", status.id, state_name(status.state));
    if !status.progress.is_empty() {
        line += &format!(" {}", status.progress);
    }
    if !status.error.is_empty() {
        line += &format!(": {}", status.error);
    }
    line
}

/// `id STATE key=value…` on one line.
fn status_line(status: &ModelStatus) -> String {
    let mut line = format!("{} {}", status.id, state_name(status.state));
    if !status.aliases.is_empty() {
        line += &format!(" aliases={}", status.aliases.join(","));
    }
    for (key, value) in [("device", &status.device), ("dtype", &status.dtype)] {
        if !value.is_empty() {
            line += &format!(" {key}={value}");
        }
    }
    if status.memory_bytes > 0 {
        line += &format!(" memory={}", human_bytes(status.memory_bytes));
    }
    if status.load_seconds > 0.0 {
        line += &format!(" load_time={:.2}s", status.load_seconds);
    }
    if !status.progress.is_empty() {
        line += &format!(" progress={:?}", status.progress);
    }
    if !status.error.is_empty() {
        line += &format!(" error={:?}", status.error);
    }
    line
}

fn alias_line(alias: &AliasStatus) -> String {
    let mut line = format!("{} -> {}", alias.alias, alias.id);
    if !alias.previous_id.is_empty() {
        line += &format!(" (was {})", alias.previous_id);
    }
    line
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn or_dash(value: &str) -> &str {
    if value.is_empty() {
        "-"
    } else {
        value
    }
}

/// The `models list` table, columns aligned.
fn models_table(models: &[ModelStatus]) -> String {
    let header = ["ID", "STATE", "ALIASES", "DEVICE", "DTYPE", "MEMORY", "LOAD TIME"].map(String::from);
    let mut rows = vec![header.to_vec()];
    for m in models {
        rows.push(vec![
            m.id.clone(),
            state_name(m.state).to_string(),
            or_dash(&m.aliases.join(",")).to_string(),
            or_dash(&m.device).to_string(),
            or_dash(&m.dtype).to_string(),
            if m.memory_bytes > 0 { human_bytes(m.memory_bytes) } else { "-".into() },
            if m.load_seconds > 0.0 { format!("{:.2}s", m.load_seconds) } else { "-".into() },
        ]);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

fn status_details(status: &ModelStatus) -> String {
    let mut out = String::new();
    let fields = [
        ("id", status.id.clone()),
        ("state", state_name(status.state).to_string()),
        ("aliases", status.aliases.join(", ")),
        ("source", status.source.clone()),
        ("device", status.device.clone()),
        ("dtype", status.dtype.clone()),
        ("memory", if status.memory_bytes > 0 { human_bytes(status.memory_bytes) } else { String::new() }),
        ("load time", if status.load_seconds > 0.0 { format!("{:.2}s", status.load_seconds) } else { String::new() }),
        ("progress", status.progress.clone()),
        ("error", status.error.clone()),
    ];
    for (key, value) in fields {
        if !value.is_empty() {
            out += &format!("{:<10} {value}\n", format!("{key}:"));
        }
    }
    out
}

fn status_json(status: &ModelStatus) -> Value {
    json!({
        "id": status.id,
        "name": status.name,
        "version": status.version,
        "state": state_name(status.state),
        "error": status.error,
        "source": status.source,
        "device": status.device,
        "dtype": status.dtype,
        "load_seconds": status.load_seconds,
        "memory_bytes": status.memory_bytes,
        "aliases": status.aliases,
        "progress": status.progress,
    })
}

fn alias_json(alias: &AliasStatus) -> Value {
    json!({"alias": alias.alias, "id": alias.id, "previous_id": alias.previous_id})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn the_table_aligns_columns_and_dashes_blanks() {
        let model = ModelStatus {
            id: "tiny@local".into(),
            state: ModelState::Ready as i32,
            aliases: vec!["default".into(), "tiny".into()],
            device: "cpu".into(),
            dtype: "f32".into(),
            memory_bytes: 2 << 20,
            load_seconds: 0.25,
            ..Default::default()
        };
        let loading = ModelStatus { id: "x@v2".into(), state: ModelState::Loading as i32, ..Default::default() };
        let table = models_table(&[model, loading]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "ID          STATE    ALIASES       DEVICE  DTYPE  MEMORY   LOAD TIME");
        assert_eq!(lines[1], "tiny@local  READY    default,tiny  cpu     f32    2.0 MiB  0.25s");
        assert_eq!(lines[2], "x@v2        LOADING  -             -       -      -        -");
    }

    #[test]
    fn replica_answers_fit_on_one_line() {
        let ready = |id: &str| ModelStatus { id: id.into(), state: ModelState::Ready as i32, ..Default::default() };
        let list = ListResponse { models: vec![ready("a@1"), ready("b@2")], ..Default::default() };
        assert_eq!(answer_line(&Answer::List(list)), "a@1 READY; b@2 READY");
        assert_eq!(answer_line(&Answer::List(ListResponse::default())), "no models");
        let alias = AliasStatus { alias: "default".into(), id: "b@2".into(), previous_id: "a@1".into() };
        let swapped = SwapResponse { alias: Some(alias), model: Some(ready("b@2")) };
        assert_eq!(answer_line(&Answer::Swap(swapped)), "default -> b@2 (was a@1); b@2 READY");
    }

    #[test]
    fn progress_lines_show_progress_and_errors() {
        let mut status = ModelStatus { id: "hub@abc".into(), state: ModelState::Loading as i32, ..Default::default() };
        status.progress = "model.safetensors: 1.0 of 2.0 MB".into();
        assert_eq!(progress_line(&status), "hub@abc: LOADING model.safetensors: 1.0 of 2.0 MB");
        let failed = ModelStatus { state: ModelState::Failed as i32, error: "boom".into(), ..status };
        assert_eq!(progress_line(&failed), "hub@abc: FAILED model.safetensors: 1.0 of 2.0 MB: boom");
    }
}
