//! `gitcap-server caption`: caption or answer a question from the command line, without
//! serving, through the same model thread and scheduler as the server.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use crate::device::DeviceSpec;
use crate::engine::{EngineOptions, Frame, InferenceRequest, ModelWorker, Priority};
use crate::error::{GitcapError, Result};
use crate::media::{decode_image, MediaLimits};
use crate::model::generation::{FinishReason, GenerationOptions};
use crate::model::Precision;
use crate::registry::{resolve, HubOptions};

pub struct OneShot {
    pub model: String,
    pub revision: Option<String>,
    pub hub: HubOptions,
    pub device: DeviceSpec,
    pub dtype: Precision,
    /// One image, or the frames of a video in order.
    pub media: Vec<PathBuf>,
    pub question: Option<String>,
    pub options: GenerationOptions,
    pub json: bool,
    /// Print each token's text as soon as it is generated.
    pub stream: bool,
}

pub fn run(args: OneShot) -> Result<()> {
    let flag =
        |e: gitcap_protocol::InvalidOption| GitcapError::invalid(format!("--{}", e.field.replace('_', "-")), e.message);
    args.options.check().map_err(flag)?;
    let load_started = Instant::now();
    args.device.available()?; // before any download: a missing device fails at once
    let precision = args.dtype.for_device(args.device.0);
    let checkpoint = resolve(&args.model, args.revision.as_deref(), &args.hub)?;
    let options = EngineOptions { feature_cache_bytes: 0, ..EngineOptions::default() };
    let worker = ModelWorker::load_checkpoint(
        checkpoint.dir,
        &args.model,
        &checkpoint.version,
        precision,
        args.device,
        options,
    )?;
    let preprocessor = (*worker.info.preprocessor).clone();
    let load_ms = load_started.elapsed().as_secs_f64() * 1e3;

    let limits = MediaLimits::default();
    let mut frames = Vec::new();
    for (i, path) in args.media.iter().enumerate() {
        let bytes = std::fs::read(path)
            .map_err(|e| GitcapError::invalid(format!("media[{i}]"), format!("cannot read {}: {e}", path.display())))?;
        frames.extend(decode_image(&bytes, &path.display().to_string(), &limits)?);
    }
    let request = InferenceRequest {
        frames: frames.iter().map(|f| Frame::from_image(f, &preprocessor)).collect::<Result<_>>()?,
        question: args.question.clone(),
        options: args.options,
        priority: Priority::Interactive,
    };
    let started = Instant::now();
    let mut first_token_ms = None;
    let output = worker.run_blocking(request, |event| {
        first_token_ms.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
        if args.stream && !args.json {
            use std::io::Write;
            print!("{}", event.text_delta);
            let _ = std::io::stdout().flush();
        }
    })?;
    let total_ms = started.elapsed().as_secs_f64() * 1e3;

    if args.json {
        let report = json!({
            "model": args.model,
            "version": checkpoint.version,
            // What was loaded: `auto` resolved to a concrete precision.
            "dtype": worker.info.dtype.name(),
            "device": args.device.to_string(),
            "question": args.question,
            "token_ids": output.token_ids,
            "text": output.text,
            "finish_reason": match output.finish_reason { FinishReason::Eos => "eos", FinishReason::Length => "length" },
            "frames": output.frames_used,
            "prompt_tokens": output.prompt_tokens,
            "image_tokens": output.image_tokens,
            "timings_ms": {
                "load": load_ms,
                "vision": output.timings.vision_ms,
                "prefill": output.timings.prefill_ms,
                "decode": output.timings.decode_ms,
                "first_token": first_token_ms,
                "total": total_ms,
            },
        });
        println!("{}", serde_json::to_string_pretty(&report).expect("a JSON value serialises"));
    } else if args.stream {
        println!();
    } else {
        println!("{}", output.text);
    }
    Ok(())
}
