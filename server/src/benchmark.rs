//! `gitcap-server bench`: times the model path (pixels → vision → generation) on fixed
//! inputs, for `scripts/bench.sh` to compare with transformers in the same run.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use tch::{Device, Tensor};

use crate::device::{parse_device, parse_dtype};
use crate::engine::Pipeline;
use crate::error::{GitcapError, Result};
use crate::model::generation::{generate, GenerationConfig, GenerationOverrides, StepControl};

pub struct Bench {
    pub model: PathBuf,
    /// safetensors file of named pixel_values ([1, frames, 3, H, W] or [1, 3, H, W]).
    pub inputs: PathBuf,
    pub dtype: String,
    pub device: String,
    pub runs: usize,
    pub max_new_tokens: usize,
}

pub fn run(args: Bench) -> Result<()> {
    let kind = parse_dtype(&args.dtype)?;
    let device = parse_device(&args.device)?;
    let pipeline = Pipeline::load(&args.model, kind, device)?;
    let inputs = Tensor::read_safetensors(&args.inputs)
        .map_err(|e| GitcapError::invalid("inputs", format!("{}: {e}", args.inputs.display())))?;
    let options = GenerationOverrides {
        max_new_tokens: Some(args.max_new_tokens),
        num_beams: Some(1),
        do_sample: Some(false),
        ..Default::default()
    };
    let config = options.apply(&pipeline.generation);
    let one_token = GenerationOverrides { max_new_tokens: Some(1), ..options }.apply(&pipeline.generation);
    let mut report = serde_json::Map::new();
    for (name, pixel_values) in inputs {
        let size = pixel_values.size();
        let frames = pixel_values.view([-1, size[size.len() - 3], size[size.len() - 2], size[size.len() - 1]]);
        // The tokens, and the seconds spent generating them (after the vision tower).
        let once = |config: &GenerationConfig| -> Result<(Vec<i64>, f64)> {
            let _guard = tch::no_grad_guard();
            let image_tokens = pipeline.model.image_tokens(&pipeline.model.encode_frames(&frames)?)?;
            synchronize(device);
            let start = Instant::now();
            let out = generate(&pipeline.model, &image_tokens, &[101], config, &mut |_| StepControl::Continue)?;
            synchronize(device);
            Ok((out.token_ids, start.elapsed().as_secs_f64()))
        };
        let (tokens, _) = once(&config)?; // warm-up
        let (mut times, mut decode_times, mut first_token_times) = (vec![], vec![], vec![]);
        for _ in 0..args.runs {
            let start = Instant::now();
            let (_, decode) = once(&config)?;
            times.push(start.elapsed().as_secs_f64());
            decode_times.push(decode);
            first_token_times.push(once(&one_token)?.1);
        }
        // A decoding step at batch 1: generation time beyond the first token (image prefill and
        // prompt), per token.
        let steps = tokens.len().saturating_sub(1).max(1) as f64;
        let per_token_ms = (median(&decode_times) - median(&first_token_times)) * 1e3 / steps;
        report.insert(
            name,
            json!({"median_s": median(&times), "runs_s": times, "tokens": tokens, "decode_ms_per_token": per_token_ms}),
        );
    }
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}
