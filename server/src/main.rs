//! `gitcap-server`: serve GIT models over gRPC, or caption once from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use gitcap_server::benchmark::{self, Bench};
use gitcap_server::device::DeviceSpec;
use gitcap_server::fidelity::{self, Fidelity};
use gitcap_server::media::video::bench::{self as video_bench, BenchVideo};
use gitcap_server::model::generation::GenerationOptions;
use gitcap_server::model::Precision;
use gitcap_server::oneshot::{self, OneShot};
use gitcap_server::registry::HubOptions;
use gitcap_server::settings::{LogFormat, Settings};

#[derive(Parser)]
#[command(name = "gitcap-server", version, about = "Serve Microsoft's GIT vision-language models over gRPC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (Captioner, health, reflection, gRPC-Web).
    Serve(ServeArgs),
    /// Caption an image or video frames (or answer a question) once, without serving.
    Caption(CaptionArgs),
    /// Time generation on fixed inputs (used by scripts/bench.sh).
    Bench(BenchArgs),
    /// Compare a reduced precision (fast, bf16, f16) with f32: logits error and top-1 agreement.
    Fidelity(FidelityArgs),
    /// Time probing video files and sampling frames from them (used by scripts/bench-video.sh).
    BenchVideo(BenchVideoArgs),
}

/// Flags override the config file and GITCAP__* environment variables.
#[derive(Args)]
struct ServeArgs {
    /// A TOML file layered over config/default.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 = any free port).
    #[arg(long)]
    listen: Option<String>,
    /// Checkpoint directory or hub repo id of the model to serve.
    #[arg(long)]
    model: Option<String>,
    /// Name requests use for the model.
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    revision: Option<String>,
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    dtype: Option<String>,
    /// Read the hub cache only.
    #[arg(long)]
    offline: bool,
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long)]
    queue_capacity: Option<usize>,
    /// Largest request message accepted, in bytes.
    #[arg(long)]
    max_message_bytes: Option<usize>,
}

#[derive(Args)]
struct BenchArgs {
    /// Checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// safetensors file of named pixel_values tensors.
    #[arg(long)]
    inputs: PathBuf,
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    /// libtorch intra-op threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

#[derive(Args)]
struct FidelityArgs {
    /// Checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// The precision compared with f32: fast, bf16 or f16.
    #[arg(long, default_value = "fast")]
    dtype: Precision,
    /// The golden fixture cases whose media and questions are inputs.
    #[arg(long, default_value = "tests/fixtures/golden/cases.json")]
    cases: PathBuf,
    /// Random images only.
    #[arg(long)]
    no_cases: bool,
    /// Seeded random images (as many frames as the checkpoint takes) added to the inputs.
    #[arg(long, default_value_t = 8)]
    random_images: usize,
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// libtorch intra-op threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

#[derive(Args)]
struct BenchVideoArgs {
    /// Video files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Frames sampled evenly from each file.
    #[arg(long, default_value_t = 6)]
    frames: usize,
    /// Decoder processes one call runs at once (default: the server's).
    #[arg(long)]
    processes_per_call: Option<usize>,
    /// Decoder threads per process (0 = ffmpeg's choice; default: the server's).
    #[arg(long)]
    threads_per_process: Option<usize>,
}

#[derive(Args)]
struct ModelArgs {
    /// A checkpoint directory, or a Hugging Face Hub repo id.
    #[arg(long, default_value = "microsoft/git-base-vatex")]
    model: String,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    revision: Option<String>,
    /// Read the hub cache only (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
    /// Hub token (also HF_TOKEN).
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    hf_token: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// auto (the fastest on this machine), f32, bf16, f16, or fast (CPU: int8 decoder and LM
    /// head weights).
    #[arg(long, default_value = "auto")]
    dtype: Precision,
    /// libtorch intra-op threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

#[derive(Args)]
struct CaptionArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// An image (JPEG, PNG, WebP, GIF; an animated GIF is read as video frames).
    #[arg(long, conflicts_with = "frames", required_unless_present = "frames")]
    image: Option<PathBuf>,
    /// Video frames, in order.
    #[arg(long, num_args = 1..)]
    frames: Vec<PathBuf>,
    /// Ask a question about the media (visual question answering).
    #[arg(long)]
    question: Option<String>,
    #[command(flatten)]
    generation: GenerationOptions,
    /// Print token ids, text and timings as JSON.
    #[arg(long)]
    json: bool,
    /// Print the text token by token as it is generated.
    #[arg(long)]
    stream: bool,
}

/// Logs to stderr: JSON lines, or text coloured only when stderr is a terminal (not in a
/// pipe, a file or a container's log).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn serve(args: ServeArgs) -> Result<(), gitcap_server::error::GitcapError> {
    let settings = Settings::load(
        args.config.as_deref(),
        &[
            ("server.listen", args.listen),
            ("model.source", args.model),
            ("model.name", args.name),
            ("model.revision", args.revision),
            ("model.device", args.device),
            ("model.dtype", args.dtype),
            ("hub.offline", args.offline.then(|| "true".to_string())),
            ("model.threads", args.threads.map(|t| t.to_string())),
            ("model.queue_capacity", args.queue_capacity.map(|t| t.to_string())),
            ("server.max_message_bytes", args.max_message_bytes.map(|t| t.to_string())),
        ],
    )?;
    init_logging(settings.log.format);
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| gitcap_server::error::GitcapError::Internal(e.to_string()))?;
    runtime.block_on(gitcap_server::server::run(settings))
}

fn main() -> ExitCode {
    gitcap_server::allocator::keep_freed_tensor_memory();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging(LogFormat::Text);
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Caption(args) => {
            if args.model.threads > 0 {
                tch::set_num_threads(args.model.threads);
            }
            oneshot::run(OneShot {
                hub: HubOptions { offline: args.model.offline, token: args.model.hf_token.clone(), cache_dir: None },
                model: args.model.model,
                revision: args.model.revision,
                device: args.model.device,
                dtype: args.model.dtype,
                media: args.image.into_iter().chain(args.frames).collect(),
                question: args.question,
                options: args.generation,
                json: args.json,
                stream: args.stream,
            })
        }
        Command::Bench(args) => {
            if args.threads > 0 {
                tch::set_num_threads(args.threads);
            }
            benchmark::run(Bench {
                model: args.model,
                inputs: args.inputs,
                dtype: args.dtype,
                device: args.device,
                runs: args.runs,
                max_new_tokens: args.max_new_tokens,
            })
        }
        Command::Fidelity(args) => {
            if args.threads > 0 {
                tch::set_num_threads(args.threads);
            }
            fidelity::run(Fidelity {
                cases: (!args.no_cases).then_some(args.cases),
                model: args.model,
                dtype: args.dtype,
                random_images: args.random_images,
                max_new_tokens: args.max_new_tokens,
                seed: args.seed,
            })
        }
        Command::BenchVideo(args) => video_bench::run(BenchVideo {
            files: args.files,
            runs: args.runs,
            frames: args.frames,
            processes_per_call: args.processes_per_call,
            threads_per_process: args.threads_per_process,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
