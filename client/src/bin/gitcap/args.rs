//! The `gitcap` command line: its commands, flags and their help.

use clap::{Parser, Subcommand, ValueEnum};
use gitcap_client::{CaptionOptions, GenerationOptions, ModelSpec, Priority};

#[derive(Parser)]
#[command(name = "gitcap", version, about = "Client for the gitcap captioning server")]
pub struct Cli {
    /// The server's URL.
    #[arg(long, global = true, env = "GITCAP_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// Bearer token sent with every call.
    #[arg(long, global = true, env = "GITCAP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Admin bearer token, sent with the `models` commands.
    #[arg(long, global = true, env = "GITCAP_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Route key sent with every call: of a model alias split between versions (a canary), the
    /// same key always reaches the same version.
    #[arg(long, global = true, env = "GITCAP_ROUTE_KEY")]
    pub route_key: Option<String>,
    /// Seconds a call with a single answer may take.
    #[arg(long, global = true, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Seconds connecting may take.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// PEM file of the certificate authority to trust for an https:// server (a private CA or a
    /// self-signed certificate); without it the public web roots are trusted.
    #[arg(long, global = true, env = "GITCAP_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Name to check the server's certificate against, when it differs from the URL's host.
    #[arg(long, global = true, env = "GITCAP_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Caption an image, an animated GIF, a video file, a directory of frames or an http(s) URL
    /// (or answer a question about it, or rank labels for it).
    Caption {
        /// An image (JPEG, PNG, WebP, GIF), a video file (sent to the server, which samples it), a
        /// directory of frames, or an http(s) URL the server fetches (where it allows URLs).
        path: String,
        /// Rank these comma-separated labels instead of captioning.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        #[command(flatten)]
        request: RequestArgs,
        /// interactive, or batch: offline work that leaves the server's rows free for interactive
        /// callers (and is admitted anyway once it has waited the server's batch_max_wait_ms).
        #[arg(long, value_enum, default_value_t)]
        priority: Priority,
        /// Print tokens as they are generated.
        #[arg(long)]
        stream: bool,
        /// Print the answer as JSON (one object per line with --stream).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        video: VideoArgs,
    },
    /// Timestamped captions over a whole video (dense captioning): a caption of every `window`
    /// seconds, every `stride` seconds, printed as each is ready.
    Dense {
        /// A video file, or an http(s) URL of one.
        path: String,
        /// Seconds each caption covers (0 = the server's default, 10).
        #[arg(long, default_value_t = 0.0)]
        window: f64,
        /// Seconds from one caption's start to the next's (0 = the window).
        #[arg(long, default_value_t = 0.0)]
        stride: f64,
        #[command(flatten)]
        request: RequestArgs,
        /// interactive, or batch (see `gitcap caption --help`).
        #[arg(long, value_enum, default_value_t)]
        priority: Priority,
        /// How to print the windows: text (`[0.00s-10.00s] caption`, each as it is ready), jsonl
        /// (a JSON object per window), vtt or srt (subtitles, once every window is captioned;
        /// overlapping windows end where the next starts).
        #[arg(long, value_enum, default_value_t)]
        format: DenseFormat,
        /// The same as --format jsonl.
        #[arg(long, conflicts_with = "format")]
        json: bool,
    },
    /// Live captioning of a video file or directory of frames: a caption every `stride` frames
    /// of the latest `window` frames.
    Live {
        /// A video file (decoded here with ffmpeg) or a directory of frames.
        path: String,
        /// Frames per caption (0 = the model's frame count).
        #[arg(long, default_value_t = 0)]
        window: u32,
        /// A caption every this many frames (0 = the window).
        #[arg(long, default_value_t = 0)]
        stride: u32,
        #[command(flatten)]
        request: RequestArgs,
        /// Frames per second: of the extraction from a video file; for a directory, only to print times.
        #[arg(long)]
        fps: Option<f64>,
        /// Print each window as a JSON object on its own line.
        #[arg(long)]
        json: bool,
    },
    /// Caption many files: a directory of images and videos, a JSONL manifest (one object a line:
    /// `path` or `url`, optional `id`, `question`, `options`) or a CSV (columns path or url, id,
    /// question). One output line per item, written as each is done; Ctrl-C leaves an output that
    /// --resume continues.
    Batch {
        /// A directory, a .jsonl manifest or a .csv file.
        input: std::path::PathBuf,
        /// The output file (one line per item).
        #[arg(long)]
        out: std::path::PathBuf,
        /// jsonl (one JSON object a line) or csv.
        #[arg(long, value_enum, default_value_t)]
        format: gitcap_client::batch::Format,
        /// Items captioned at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Continue an output that exists: skip the items it holds.
        #[arg(long)]
        resume: bool,
        /// Caption only shard INDEX of COUNT (INDEX/COUNT, 0-based: items INDEX, INDEX + COUNT, …),
        /// so COUNT runs split the input, e.g. the pods of a Kubernetes Indexed Job.
        #[arg(long, value_name = "INDEX/COUNT")]
        shard: Option<gitcap_client::batch::Shard>,
        /// Videos get timestamped captions (DenseCaption), one WebVTT file each in --subtitles-dir.
        #[arg(long)]
        dense: bool,
        /// With --dense: the directory the WebVTT files go in (default: the output's path with the
        /// extension .vtt).
        #[arg(long, requires = "dense")]
        subtitles_dir: Option<std::path::PathBuf>,
        /// With --dense: seconds each caption covers (0 = the server's default).
        #[arg(long, default_value_t = 0.0, requires = "dense")]
        window: f64,
        /// With --dense: seconds from one caption's start to the next's (0 = the window).
        #[arg(long, default_value_t = 0.0, requires = "dense")]
        stride: f64,
        #[command(flatten)]
        request: RequestArgs,
        /// batch (the default here: leaves the server's rows free for interactive callers) or interactive.
        #[arg(long, value_enum, default_value_t = Priority::Batch)]
        priority: Priority,
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
pub enum ModelsCommand {
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
    /// Point an alias at a loaded, READY version (`name@version`), or split it between versions
    /// by weight (a canary): `coco@v1=90,coco@v2=10`.
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
pub struct SpecArgs {
    /// The name requests use (also an alias of the new version, unless that alias exists).
    #[arg(long)]
    pub name: String,
    /// A checkpoint directory inside the server's model roots, or a Hugging Face Hub repo id.
    #[arg(long)]
    pub source: String,
    /// Hub revision: branch, tag or commit (default main).
    #[arg(long)]
    pub revision: Option<String>,
    /// Version label for a local directory (default "local").
    #[arg(long)]
    pub version: Option<String>,
    /// Device, e.g. cpu or cuda:0 (default: the server's).
    #[arg(long)]
    pub device: Option<String>,
    /// Dtype, e.g. f32, f16, bf16 (default: the server's).
    #[arg(long)]
    pub dtype: Option<String>,
}

impl SpecArgs {
    pub fn spec(&self) -> ModelSpec {
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

/// Which frames of a video file are captioned, and who decodes it.
#[derive(clap::Args)]
pub struct VideoArgs {
    /// Decode the video here with ffmpeg and upload its frames, instead of sending the file to the
    /// server (which samples it itself).
    #[arg(long)]
    pub local_decode: bool,
    /// With --local-decode: frames per second extracted.
    #[arg(long, requires = "local_decode")]
    pub fps: Option<f64>,
    /// Sample the video from this many seconds in (default: its start).
    #[arg(long, value_name = "SECONDS", conflicts_with_all = ["at", "local_decode"])]
    pub start: Option<f64>,
    /// Sample the video up to this many seconds in (default: its end).
    #[arg(long, value_name = "SECONDS", conflicts_with_all = ["at", "local_decode"])]
    pub end: Option<f64>,
    /// Use the frames at exactly these timestamps (seconds, comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "SECONDS", conflicts_with = "local_decode")]
    pub at: Vec<f64>,
}

impl VideoArgs {
    /// The sampling asked for, if any.
    pub fn sampling(&self) -> Option<gitcap_client::VideoSampling> {
        if !self.at.is_empty() {
            return Some(gitcap_client::VideoSampling::at(self.at.clone()));
        }
        (self.start.is_some() || self.end.is_some()).then(|| gitcap_client::VideoSampling::window(self.start, self.end))
    }
}

/// What a captioning command asks: the model, a question, and the decoding options.
#[derive(clap::Args)]
pub struct RequestArgs {
    /// Ask this question about the media instead of captioning it.
    #[arg(long, short)]
    pub question: Option<String>,
    /// Model name, alias or version (default: the server's default model).
    #[arg(long, short)]
    pub model: Option<String>,
    #[command(flatten)]
    pub generation: GenerationOptions,
}

impl RequestArgs {
    pub fn options(&self) -> CaptionOptions {
        CaptionOptions {
            model: self.model.clone(),
            question: self.question.clone().unwrap_or_default(),
            generation: self.generation,
            ..CaptionOptions::default()
        }
    }
}

/// `gitcap dense --format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum DenseFormat {
    #[default]
    Text,
    Jsonl,
    Vtt,
    Srt,
}
