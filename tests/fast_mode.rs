//! `fast` precision (bf16 vision tower, int8 decoder and LM head weights) on the tiny fixture
//! checkpoints: it loads, it really quantises, and its logits stay within the 2e-2
//! relative error of f32 (transformers' goldens, which f32 matches within 1e-4).

mod common;

use tch::{Device, Kind, Tensor};

use common::fixtures::{cases, model_dir, tensors, Case};
use gitcap_server::engine::Pipeline;
use gitcap_server::model::Precision;

/// ‖logits − f32 logits‖ / ‖f32 logits‖ over the case's prompt positions at `precision`.
fn relative_error(case: &Case, precision: Precision) -> f64 {
    let _guard = tch::no_grad_guard();
    let golden = tensors("cases.safetensors");
    let pipeline = Pipeline::load(&model_dir(&case.model), precision, Device::Cpu).unwrap();
    let ids = Tensor::from_slice(&case.prompt_ids).view([1, -1]);
    let logits = pipeline.model.forward(&case.pixel_values(&golden), &ids).unwrap().squeeze_dim(0);
    assert_eq!(logits.kind(), Kind::Float);
    let expected = &golden[&format!("{}/logits", case.name)];
    (&logits - expected).norm().double_value(&[]) / expected.norm().double_value(&[])
}

#[test]
fn fast_logits_stay_within_2e_2_of_f32() {
    let checked: Vec<Case> = cases().into_iter().filter(|c| c.has_logits && c.model != "tiny-git-wide").collect();
    assert!(checked.len() >= 3, "the fixtures should carry logits for several cases");
    for case in &checked {
        let rel = relative_error(case, Precision::Fast);
        eprintln!("{}: fast logits relative error {rel:.3e}", case.name);
        assert!(rel <= 2e-2, "{}: fast logits relative error {rel} exceeds 2e-2", case.name);
        // Not f32 in disguise: int8 weights move the logits.
        assert!(rel > 1e-4, "{}: fast logits equal f32 ({rel}): nothing was quantised", case.name);
    }
}

/// tiny-git-wide's decoder amplifies any perturbation of its image features about 16-fold
/// (measured: bf16 rounding of the vision tower alone moves its logits by 18%, an f32 vision
/// tower with int8 decoder weights by 7%), so no reduced precision meets 2e-2 on it; fast must
/// at least stay as close to f32 as the bf16 mode does.
#[test]
fn on_the_ill_conditioned_wide_fixture_fast_is_no_worse_than_bf16() {
    let case = cases().into_iter().find(|c| c.has_logits && c.model == "tiny-git-wide").unwrap();
    let fast = relative_error(&case, Precision::Fast);
    let bf16 = relative_error(&case, Kind::BFloat16.into());
    eprintln!("{}: relative error fast {fast:.3e}, bf16 {bf16:.3e}", case.name);
    assert!(fast <= bf16, "fast ({fast}) is further from f32 than bf16 ({bf16})");
}

fn server(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gitcap-server")).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn the_cli_captions_in_fast_mode_and_compares_it_with_f32() {
    let model = model_dir("tiny-git-image");
    let image = common::fixtures::fixtures().join("media/shapes.png");
    let (model, image) = (model.to_str().unwrap(), image.to_str().unwrap());
    let out = server(&["caption", "--model", model, "--image", image, "--dtype", "fast", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dtype"], "fast");
    assert!(!report["token_ids"].as_array().unwrap().is_empty());

    let cases = common::fixtures::fixtures().join("golden/cases.json");
    let args = ["fidelity", "--model", model, "--cases", cases.to_str().unwrap(), "--random-images", "1"];
    let text = String::from_utf8(server(&[&args[..], &["--max-new-tokens", "4"]].concat()).stdout).unwrap();
    assert!(text.contains("random_0") && text.contains("image_vqa_greedy"), "{text}");
    for line in ["logits relative error: max", "teacher-forced top-1 agreement:", "f32 top-1 margins"] {
        assert!(text.contains(line), "fidelity output lacks `{line}`:\n{text}");
    }
}
