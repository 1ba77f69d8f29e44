//! `gitcap-server bench`: times the model path (pixels → vision → generation) on fixed
//! inputs, for `scripts/bench.sh` to compare with transformers in the same run.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use tch::{Device, Tensor};

use crate::device::{parse_device, parse_dtype};
use crate::engine::Pipeline;
use crate::error::{GitcapError, Result};
use crate::model::generation::{generate, GenerationOverrides, StepControl};

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
    let mut report = serde_json::Map::new();
    for (name, pixel_values) in inputs {
        let size = pixel_values.size();
        let frames = pixel_values.view([-1, size[size.len() - 3], size[size.len() - 2], size[size.len() - 1]]);
        let once = || -> Result<Vec<i64>> {
            let _guard = tch::no_grad_guard();
            let image_tokens = pipeline.model.image_tokens(&pipeline.model.encode_frames(&frames)?)?;
            let out = generate(&pipeline.model, &image_tokens, &[101], &config, &mut |_| StepControl::Continue)?;
            if device != Device::Cpu {
                tch::Cuda::synchronize(0);
            }
            Ok(out.token_ids)
        };
        let tokens = once()?; // warm-up
        let mut times = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            let start = Instant::now();
            once()?;
            times.push(start.elapsed().as_secs_f64());
        }
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        report.insert(name, json!({"median_s": median, "runs_s": times, "tokens": tokens}));
    }
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}
