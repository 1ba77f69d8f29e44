//! `gitcap-server fidelity`: how far a reduced precision (`fast`, `bf16`, `f16`) moves a
//! checkpoint's outputs from f32 on the same inputs.
//!
//! For each input (the media and questions of the golden fixture cases, then seeded random
//! images), f32 generates greedily; both precisions then run teacher-forced on those tokens
//! (one token at a time, as a lone request decodes), and at every generated position we compare the logits: relative error ‖Δ‖/‖f32‖ and whether
//! the top-1 token is the same. Random weights give near-tied logits, where any rounding flips
//! the top-1, so the f32 top-1 margins of the positions are reported beside the agreement.

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::device::DeviceSpec;
use crate::engine::{EngineOptions, Frame, InferenceRequest, ModelWorker, Pipeline, Priority};
use crate::error::{GitcapError, Result};
use crate::media::{decode_image, MediaLimits};
use crate::model::generation::GenerationOptions;
use crate::model::Precision;

/// A precision as the engine runs it (its own thread, generating) and as the model computes
/// teacher-forced logits.
struct Loaded {
    worker: ModelWorker,
    pipeline: Pipeline,
}

impl Loaded {
    fn new(dir: &Path, precision: Precision) -> Result<Self> {
        let options = EngineOptions { feature_cache_bytes: 0, ..EngineOptions::default() };
        let worker = ModelWorker::load_checkpoint(
            dir.to_path_buf(),
            "fidelity",
            precision.name(),
            precision,
            DeviceSpec::CPU,
            options,
        )?;
        Ok(Self { worker, pipeline: Pipeline::load(dir, precision, Device::Cpu)? })
    }
}

pub struct Fidelity {
    /// Checkpoint directory.
    pub model: PathBuf,
    /// The precision compared with f32.
    pub dtype: Precision,
    /// `cases.json` of the golden fixtures; media are read from `../media` beside it.
    pub cases: Option<PathBuf>,
    pub random_images: usize,
    pub max_new_tokens: usize,
    pub seed: u64,
}

/// One input: frames and an optional question.
struct Input {
    name: String,
    frames: Vec<RgbImage>,
    question: Option<String>,
}

/// What one input gives, per generated position.
#[derive(Default)]
struct Positions {
    relative_errors: Vec<f64>,
    agree: Vec<bool>,
    margins: Vec<f64>,
    /// Free-running greedy tokens of the reduced precision equal f32's.
    same_sequence: bool,
}

pub fn run(args: Fidelity) -> Result<()> {
    let precision = args.dtype;
    let reference = Loaded::new(&args.model, Precision::from(Kind::Float))?;
    let reduced = Loaded::new(&args.model, precision)?;
    let mut inputs = match &args.cases {
        Some(path) => fixture_inputs(path)?,
        None => Vec::new(),
    };
    inputs.extend(random_inputs(args.random_images, reference.worker.info.max_frames, args.seed));
    println!(
        "{} vs f32 on {} ({} inputs, {} greedy f32 tokens each, teacher-forced)",
        precision.name(),
        args.model.display(),
        inputs.len(),
        args.max_new_tokens
    );
    println!(
        "{:<34}{:>6}{:>13}{:>13}{:>9}{:>12}{:>10}",
        "input", "pos", "max rel err", "mean rel err", "top-1", "min margin", "same seq"
    );
    let mut all = Positions { same_sequence: true, ..Default::default() };
    let mut sequences_same = 0;
    for input in &inputs {
        let p = compare(&reference, &reduced, input, args.max_new_tokens)?;
        println!(
            "{:<34}{:>6}{:>13.2e}{:>13.2e}{:>9}{:>12.4}{:>10}",
            input.name,
            p.agree.len(),
            max(&p.relative_errors),
            mean(&p.relative_errors),
            format!("{}/{}", p.agree.iter().filter(|&&a| a).count(), p.agree.len()),
            min(&p.margins),
            if p.same_sequence { "yes" } else { "no" }
        );
        sequences_same += usize::from(p.same_sequence);
        all.relative_errors.extend(p.relative_errors);
        all.agree.extend(p.agree);
        all.margins.extend(p.margins);
    }
    let agreeing = all.agree.iter().filter(|&&a| a).count();
    let mut flipped: Vec<f64> = all.agree.iter().zip(&all.margins).filter(|(&a, _)| !a).map(|(_, &m)| m).collect();
    flipped.sort_by(f64::total_cmp);
    println!("\nall {} positions:", all.agree.len());
    println!("  logits relative error: max {:.3e}, mean {:.3e}", max(&all.relative_errors), mean(&all.relative_errors));
    println!(
        "  teacher-forced top-1 agreement: {agreeing}/{} ({:.1}%)",
        all.agree.len(),
        100.0 * agreeing as f64 / all.agree.len().max(1) as f64
    );
    println!("  f32 top-1 margins (logit units): min {:.4}, median {:.4}", min(&all.margins), median(&all.margins));
    println!("  f32 margins where the top-1 differs: {flipped:.4?}");
    println!("  free-running greedy sequences identical: {sequences_same}/{}", inputs.len());
    Ok(())
}

fn compare(reference: &Loaded, reduced: &Loaded, input: &Input, max_new_tokens: usize) -> Result<Positions> {
    let _guard = tch::no_grad_guard();
    let (reference_model, reduced_model) = (&reference.pipeline, &reduced.pipeline);
    let used = reference_model.frames_to_use(input.frames.len())?;
    let pixels = Tensor::stack(
        &used.iter().map(|&i| reference_model.pixel_values(&input.frames[i])).collect::<Result<Vec<_>>>()?,
        0,
    );
    let prompt = reference_model.prompt_ids(input.question.as_deref())?;
    // Plain greedy with EOS held back, so every input gives `max_new_tokens` positions.
    let options = GenerationOptions {
        max_new_tokens: Some(max_new_tokens as u32),
        min_new_tokens: Some(max_new_tokens as u32),
        num_beams: Some(1),
        do_sample: Some(false),
        repetition_penalty: Some(1.0),
        no_repeat_ngram_size: Some(0),
        ..Default::default()
    };
    let greedy = |loaded: &Loaded| -> Result<Vec<i64>> {
        let preprocessor = &loaded.worker.info.preprocessor;
        let frames = input.frames.iter().map(|f| Frame::from_image(f, preprocessor)).collect::<Result<_>>()?;
        let request =
            InferenceRequest { frames, question: input.question.clone(), options, priority: Priority::Interactive };
        Ok(loaded.worker.run_blocking(request, |_| {})?.token_ids)
    };
    let tokens = greedy(reference)?;
    let same_sequence = greedy(reduced)? == tokens;
    // Teacher-forced as the model runs when it serves one request: the image prefill, the
    // prompt in one pass, then each token alone. (One pass over all the positions would run
    // fast mode's layers on many rows, through the bf16 dequantised weights, not the int8
    // kernel that decodes a lone request.)
    let logits = |p: &Pipeline| -> Result<Tensor> {
        let image_tokens = p.model.image_tokens(&p.model.encode_frames(&pixels)?)?;
        let mut cache = p.model.prefill_image(&image_tokens, 1, (prompt.len() + tokens.len()) as i64)?;
        let mut rows = vec![p.model.decode_last(&Tensor::from_slice(&prompt).view([1, -1]), &mut cache)];
        for &token in &tokens[..tokens.len() - 1] {
            rows.push(p.model.decode_last(&Tensor::from_slice(&[token]).view([1, 1]), &mut cache));
        }
        Ok(Tensor::cat(&rows, 0))
    };
    let (expected, actual) = (logits(reference_model)?, logits(reduced_model)?);
    let relative = ((&actual - &expected).norm_scalaropt_dim(2, [1], false)
        / expected.norm_scalaropt_dim(2, [1], false))
    .to_kind(Kind::Double);
    let agree = expected.argmax(1, false).eq_tensor(&actual.argmax(1, false));
    let (top2, _) = expected.topk(2, 1, true, true);
    let margins = (top2.select(1, 0) - top2.select(1, 1)).to_kind(Kind::Double);
    Ok(Positions {
        relative_errors: Vec::<f64>::try_from(&relative)?,
        agree: Vec::<bool>::try_from(&agree)?,
        margins: Vec::<f64>::try_from(&margins)?,
        same_sequence,
    })
}

/// The distinct media + question pairs of the golden fixture cases.
fn fixture_inputs(cases_file: &Path) -> Result<Vec<Input>> {
    #[derive(Deserialize)]
    struct Case {
        name: String,
        media: Vec<String>,
        question: Option<String>,
    }
    let text = std::fs::read_to_string(cases_file)
        .map_err(|e| GitcapError::invalid("cases", format!("cannot read {}: {e}", cases_file.display())))?;
    let cases: Vec<Case> = serde_json::from_str(&text)
        .map_err(|e| GitcapError::invalid("cases", format!("{} is not a cases.json: {e}", cases_file.display())))?;
    let media_dir = cases_file.parent().and_then(Path::parent).unwrap_or(Path::new(".")).join("media");
    let mut seen = Vec::new();
    let mut inputs = Vec::new();
    for case in cases {
        let key = (case.media.clone(), case.question.clone());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let mut frames = Vec::new();
        for file in &case.media {
            let path = media_dir.join(file);
            let bytes = std::fs::read(&path)
                .map_err(|e| GitcapError::invalid("cases", format!("cannot read {}: {e}", path.display())))?;
            frames.extend(decode_image(&bytes, file, &MediaLimits::default())?);
        }
        inputs.push(Input { name: case.name, frames, question: case.question });
    }
    Ok(inputs)
}

/// `count` inputs of `frames` seeded random 320×240 images each: coarse random colour blocks
/// (upsampled 16×12 noise) plus fine noise, so they have both structure and texture.
fn random_inputs(count: usize, frames: usize, seed: u64) -> Vec<Input> {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(seed as i64);
    (0..count)
        .map(|i| {
            let frames = (0..frames)
                .map(|_| {
                    let coarse = Tensor::rand([1, 3, 12, 16], (Kind::Float, Device::Cpu)).upsample_bilinear2d(
                        [240, 320],
                        false,
                        None,
                        None,
                    );
                    let fine = Tensor::rand([1, 3, 240, 320], (Kind::Float, Device::Cpu));
                    let pixels = ((coarse * 0.8 + fine * 0.2) * 255.0).clamp(0.0, 255.0).to_kind(Kind::Uint8);
                    let hwc = pixels.squeeze_dim(0).permute([1, 2, 0]).contiguous();
                    let data = Vec::<u8>::try_from(&hwc.view([-1])).expect("u8 pixels");
                    RgbImage::from_raw(320, 240, data).expect("320×240×3 bytes")
                })
                .collect();
            Input { name: format!("random_{i}"), frames, question: None }
        })
        .collect()
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::min)
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}
