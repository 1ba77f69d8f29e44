//! `gitcap`: caption images and videos, score labels, watch live captions, check the health
//! of a gitcap server and manage its models from the command line.
//!
//! `args` defines the command line, `caption`, `dense` and `models` run the commands, `render` prints
//! their answers.

mod args;
mod batch;
mod caption;
mod dense;
mod models;
mod render;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};
use gitcap_client::{ClientConfig, GitcapClient, HealthStatus};

use args::{Cli, Command, DenseFormat};

/// The health service that says whether the server decodes video files.
const VIDEO_HEALTH_SERVICE: &str = "gitcap.v1.VideoDecoding";

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
    if let Some(key) = &cli.route_key {
        config = config.route_key(key);
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
            models::on_replicas(&cli, target, command, *json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Models { command, json, replicas: None } => {
            let client = connect(&cli).await?;
            models::models(&client, command, *json).await.map_err(|error| {
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
            if service.is_empty() {
                // What the server can do beyond serving its models.
                let video = client.health(VIDEO_HEALTH_SERVICE).await.map_or_else(|e| e.to_string(), |s| s.to_string());
                println!("video decoding: {video}");
            }
            Ok(if status == HealthStatus::Serving { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Caption { path, labels, request, priority, stream, json, video } => {
            let client = || connect(&cli);
            let options = request.options().priority(*priority);
            caption::caption(client, path, labels, options, *stream, *json, video).await
        }
        Command::Dense { path, window, stride, request, priority, format, json } => {
            let client = connect(&cli).await?;
            let options = request.options().priority(*priority);
            let format = if *json { DenseFormat::Jsonl } else { *format };
            dense::dense(&client, path, *window, *stride, options, format).await
        }
        Command::Batch {
            input,
            out,
            format,
            concurrency,
            resume,
            shard,
            dense,
            subtitles_dir,
            window,
            stride,
            request,
            priority,
        } => {
            let client = connect(&cli).await?;
            let dense = dense.then(|| gitcap_client::batch::Dense {
                dir: subtitles_dir.clone().unwrap_or_else(|| out.with_extension("vtt")),
                window_s: *window,
                stride_s: *stride,
            });
            let plan = gitcap_client::batch::Plan { options: request.options().priority(*priority), dense };
            let files = batch::Files { input, out, format: *format, resume: *resume, shard: *shard };
            batch::batch(client, files, *concurrency, plan).await
        }
        Command::Live { path, window, stride, request, fps, json } => {
            let client = || connect(&cli);
            caption::live(client, path, *window, *stride, request, *fps, *json).await
        }
    }
}
