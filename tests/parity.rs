//! Parity with Hugging Face transformers 5.24 (`GitForCausalLM`) on the tiny random
//! checkpoints and goldens of `scripts/make_fixtures.py`: logits within 1e-4 in f32, and
//! identical token ids for greedy and beam search, images, video and VQA.

mod common;

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use common::fixtures::{cases, model_dir, tensors, Case, MODELS};
use gitcap_server::engine::{EngineOptions, Frame, InferenceRequest, ModelWorker, Pipeline, PreparedFrame, Priority};
use gitcap_server::media::{decode_image, MediaLimits};
use gitcap_server::model::generation::{FinishReason, GenerationOptions};

fn pipelines() -> HashMap<String, Pipeline> {
    MODELS
        .iter()
        .map(|name| (name.to_string(), Pipeline::load(&model_dir(name), Kind::Float, Device::Cpu).unwrap()))
        .collect()
}

#[test]
fn logits_match_transformers_within_1e_4() {
    let _guard = tch::no_grad_guard();
    let pipelines = pipelines();
    let golden = tensors("cases.safetensors");
    let with_logits: Vec<&Case> = cases_ref().iter().filter(|c| c.has_logits).collect();
    assert!(with_logits.len() >= 3, "the fixtures should carry logits for several cases");
    for case in with_logits {
        let model = &pipelines[&case.model].model;
        let ids = Tensor::from_slice(&case.prompt_ids).view([1, -1]);
        let logits = model.forward(&case.pixel_values(&golden), &ids).unwrap().squeeze_dim(0);
        let expected = &golden[&format!("{}/logits", case.name)];
        assert_eq!(logits.size(), expected.size(), "{}", case.name);
        let max_diff = (&logits - expected).abs().max().double_value(&[]);
        assert!(max_diff <= 1e-4, "{}: logits differ from transformers by {max_diff}", case.name);
    }
}

/// The vision tower run in parts, a layer at a time (as an interruptible batch start runs it),
/// gives exactly what one pass gives, and the image tokens made from it give transformers'
/// logits.
#[test]
fn the_vision_tower_in_parts_equals_one_pass() {
    let _guard = tch::no_grad_guard();
    let pipelines = pipelines();
    let golden = tensors("cases.safetensors");
    for case in cases_ref().iter().filter(|c| c.has_logits) {
        let model = &pipelines[&case.model].model;
        let pixels = case.pixel_values(&golden);
        let whole = model.encode_frames(&pixels).unwrap();
        let mut progress = model.begin_encoding(&pixels).unwrap();
        let mut parts = 1i64;
        while !model.encode_layers(&mut progress, 1) {
            parts += 1;
        }
        assert_eq!(parts, model.config.vision_config.num_hidden_layers, "{}: one part per layer", case.name);
        let in_parts = model.finish_encoding(progress);
        assert!(in_parts.equal(&whole), "{}: the tower in parts differs from one pass", case.name);
    }
}

fn cases_ref() -> &'static Vec<Case> {
    static CASES: std::sync::OnceLock<Vec<Case>> = std::sync::OnceLock::new();
    CASES.get_or_init(cases)
}

/// Every request below runs through a model's own thread, the path served requests take.
fn workers() -> &'static HashMap<String, ModelWorker> {
    static WORKERS: std::sync::OnceLock<HashMap<String, ModelWorker>> = std::sync::OnceLock::new();
    WORKERS.get_or_init(|| MODELS.iter().map(|name| (name.to_string(), common::engine::worker(name))).collect())
}

/// The case's golden pixels as the model's frames.
fn golden_frames(case: &Case, golden: &HashMap<String, Tensor>) -> Vec<Frame> {
    let pixels = case.pixel_values(golden);
    (0..pixels.size()[0]).map(|i| Frame::Pixels(PreparedFrame::from_tensor(&pixels.get(i)).unwrap())).collect()
}

fn request(frames: Vec<Frame>, question: Option<String>, options: GenerationOptions) -> InferenceRequest {
    InferenceRequest { frames, question, options, priority: Priority::Interactive }
}

#[test]
fn generated_tokens_equal_transformers_from_the_same_pixels() {
    let golden = tensors("cases.safetensors");
    for case in cases_ref() {
        let worker = &workers()[&case.model];
        let mut streamed = vec![];
        let request = request(golden_frames(case, &golden), case.question.clone(), case.overrides());
        let out = worker.run_blocking(request, |token| streamed.push(token.token_id)).unwrap();
        assert_eq!(out.prompt_tokens, case.prompt_ids.len(), "{}: prompt length", case.name);
        assert_eq!(out.token_ids, case.generated_ids, "{}: token ids differ from transformers", case.name);
        assert_eq!(streamed, case.generated_ids, "{}: streamed ids", case.name);
        let eos = if case.finished_by_eos { FinishReason::Eos } else { FinishReason::Length };
        assert_eq!(out.finish_reason, eos, "{}", case.name);
        assert_eq!(out.text, case.text, "{}: text", case.name);
    }
}

/// The whole path a request takes: file bytes → decode → preprocess → model → text.
#[test]
fn pipeline_from_media_files_equals_transformers() {
    let pipelines = pipelines();
    let media = common::fixtures::fixtures().join("media");
    for case in cases_ref() {
        let p = &pipelines[&case.model];
        let frames: Vec<_> = case
            .media
            .iter()
            .flat_map(|f| decode_image(&std::fs::read(media.join(f)).unwrap(), f, &MediaLimits::default()).unwrap())
            .collect();
        let frames = frames.iter().map(|f| Frame::from_image(f, &p.preprocessor).unwrap()).collect();
        let mut deltas = String::new();
        let out = workers()[&case.model]
            .run_blocking(request(frames, case.question.clone(), case.overrides()), |token| {
                deltas.push_str(&token.text_delta)
            })
            .unwrap();
        assert_eq!(p.prompt_ids(case.question.as_deref()).unwrap(), case.prompt_ids, "{}: prompt ids", case.name);
        assert_eq!(out.token_ids, case.generated_ids, "{}: token ids", case.name);
        assert_eq!(out.text, case.text, "{}: text", case.name);
        assert_eq!(deltas, out.text, "{}: streamed deltas must add up to the text", case.name);
    }
}

#[test]
fn sampling_with_a_seed_is_reproducible() {
    let golden = tensors("cases.safetensors");
    let case = cases_ref().iter().find(|c| c.name == "image_caption_greedy").unwrap();
    let worker = &workers()[&case.model];
    let run = |seed: u64, beams: u32| {
        let options = GenerationOptions {
            do_sample: Some(true),
            seed: Some(seed),
            num_beams: Some(beams),
            max_new_tokens: Some(12),
            temperature: Some(1.5),
            top_k: Some(100),
            top_p: Some(0.95),
            ..Default::default()
        };
        worker.run_blocking(request(golden_frames(case, &golden), None, options), |_| {}).unwrap().token_ids
    };
    for beams in [1, 3] {
        assert_eq!(run(7, beams), run(7, beams), "same seed, same tokens (beams {beams})");
        let distinct: std::collections::HashSet<Vec<i64>> = (0..6).map(|seed| run(seed, beams)).collect();
        assert!(distinct.len() > 1, "different seeds should give different samples (beams {beams})");
    }
}

#[test]
fn reduced_precision_runs_and_stays_close() {
    let _guard = tch::no_grad_guard();
    let golden = tensors("cases.safetensors");
    let case = cases_ref().iter().find(|c| c.name == "image_caption_greedy").unwrap();
    let expected = &golden[&format!("{}/logits", case.name)];
    let p = Pipeline::load(&model_dir(&case.model), Kind::BFloat16, Device::Cpu).unwrap();
    let ids = Tensor::from_slice(&case.prompt_ids).view([1, -1]);
    let logits = p.model.forward(&case.pixel_values(&golden), &ids).unwrap().squeeze_dim(0);
    let rel = (&logits - expected).norm().double_value(&[]) / expected.norm().double_value(&[]);
    assert!(rel < 0.1, "bf16 logits relative error {rel}");
}

/// Label scores (one padded batch) equal the log-probabilities of each label computed alone
/// through the parity-checked forward pass.
#[test]
fn label_scores_equal_teacher_forced_log_probabilities() {
    let _guard = tch::no_grad_guard();
    let p = Pipeline::load(&model_dir("tiny-git-image"), Kind::Float, Device::Cpu).unwrap();
    let media = common::fixtures::fixtures().join("media/shapes.png");
    let image = decode_image(&std::fs::read(media).unwrap(), "image", &MediaLimits::default()).unwrap().remove(0);
    let labels: Vec<String> = ["a dog", "two red circles on a table", "shapes"].iter().map(|s| s.to_string()).collect();
    // Two rows per batch: the labels are scored in two chunks between decoding steps.
    let options = EngineOptions { max_batch_size: 2, feature_cache_bytes: 0, ..EngineOptions::default() };
    let worker = common::engine::worker_with("tiny-git-image", options);
    let frames = vec![Frame::from_image(&image, &p.preprocessor).unwrap()];
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let scores = runtime.block_on(worker.score_labels(frames, Some("what is it?".into()), labels.clone())).unwrap();
    let pixels = p.pixel_values(&image).unwrap().unsqueeze(0);
    let prompt = p.prompt_ids(Some("what is it?")).unwrap();
    for (label, score) in labels.iter().zip(&scores) {
        let mut target = p.tokenizer.encode(label).unwrap();
        target.push(102);
        let mut ids = prompt.clone();
        ids.extend(&target[..target.len() - 1]);
        let logits = p.model.forward(&pixels, &Tensor::from_slice(&ids).view([1, -1])).unwrap();
        let log_probs = logits.log_softmax(-1, Kind::Float);
        let expected: f64 = target
            .iter()
            .enumerate()
            .map(|(j, &t)| log_probs.double_value(&[0, (prompt.len() - 1 + j) as i64, t]))
            .sum();
        assert_eq!(score.tokens, target.len());
        assert!((score.logprob - expected).abs() < 1e-3, "{label}: {} vs {expected}", score.logprob);
    }
}
