//! `gitcap-server bench`: times the model path (pixels → vision → generation) on fixed
//! inputs, for `scripts/bench.sh` to compare with transformers in the same run.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use tch::{Device, Tensor};

use crate::device::DeviceSpec;
use crate::engine::{EngineOptions, Frame, InferenceRequest, ModelWorker, PreparedFrame, Priority};
use crate::error::{GitcapError, Result};
use crate::model::generation::GenerationOptions;
use crate::model::Precision;

pub struct Bench {
    pub model: PathBuf,
    /// safetensors file of named pixel_values ([1, frames, 3, H, W] or [1, 3, H, W]).
    pub inputs: PathBuf,
    pub dtype: Precision,
    pub device: DeviceSpec,
    pub runs: usize,
    pub max_new_tokens: usize,
}

pub fn run(args: Bench) -> Result<()> {
    let precision = args.dtype.for_device(args.device.0);
    let device = args.device.available()?;
    // Every run computes the vision tower: no features kept between runs.
    let options = EngineOptions { feature_cache_bytes: 0, ..EngineOptions::default() };
    let worker =
        ModelWorker::load_checkpoint(args.model.clone(), "bench", precision.name(), precision, args.device, options)?;
    // Read on a thread of its own that then ends, so that its tensor work leaves no OpenMP team
    // behind to slow the model's thread down (see ModelWorker::load).
    let path = args.inputs.clone();
    let inputs = std::thread::spawn(move || read_inputs(&path))
        .join()
        .map_err(|_| GitcapError::Internal("reading the inputs panicked".into()))??;
    let options = GenerationOptions {
        max_new_tokens: Some(args.max_new_tokens as u32),
        num_beams: Some(1),
        do_sample: Some(false),
        ..Default::default()
    };
    let mut report = serde_json::Map::new();
    for (name, frames) in inputs {
        // Returns the tokens and the seconds to the first token and between the first and last.
        let once = || -> Result<(Vec<i64>, f64, f64)> {
            let request = InferenceRequest {
                frames: frames.iter().map(|f| Frame::Pixels(f.share())).collect(),
                question: None,
                options,
                priority: Priority::Interactive,
            };
            let start = Instant::now();
            let (mut first, mut last) = (None, start);
            let out = worker.run_blocking(request, |_| {
                last = Instant::now();
                first.get_or_insert(last);
            })?;
            if device != Device::Cpu {
                tch::Cuda::synchronize(0);
            }
            let first = first.unwrap_or(last);
            Ok((out.token_ids, (first - start).as_secs_f64(), (last - first).as_secs_f64()))
        };
        let (tokens, _, _) = once()?; // warm-up
        let (mut times, mut per_token_ms, mut first_token_s) = (vec![], vec![], vec![]);
        for _ in 0..args.runs {
            let start = Instant::now();
            let (tokens, first, rest) = once()?;
            times.push(start.elapsed().as_secs_f64());
            first_token_s.push(first);
            per_token_ms.push(rest * 1e3 / (tokens.len().max(2) - 1) as f64);
        }
        report.insert(
            name,
            json!({
                "median_s": median(&times),
                "runs_s": times,
                "first_token_median_s": median(&first_token_s),
                "per_token_median_ms": median(&per_token_ms),
                "tokens": tokens,
            }),
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

/// The named pixel_values of the inputs file, each as its frames.
fn read_inputs(path: &std::path::Path) -> Result<Vec<(String, Vec<PreparedFrame>)>> {
    let inputs = Tensor::read_safetensors(path)
        .map_err(|e| GitcapError::invalid("inputs", format!("{}: {e}", path.display())))?;
    inputs
        .into_iter()
        .map(|(name, pixel_values)| {
            let size = pixel_values.size();
            let frames = pixel_values.view([-1, size[size.len() - 3], size[size.len() - 2], size[size.len() - 1]]);
            let frames =
                (0..frames.size()[0]).map(|i| PreparedFrame::from_tensor(&frames.get(i))).collect::<Result<_>>()?;
            Ok((name, frames))
        })
        .collect()
}
