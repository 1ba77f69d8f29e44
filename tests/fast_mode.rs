//! `fast` precision (int8 decoder and LM head weights; vision tower and image prefill in bf16,
//! or f32 on CPUs without native bf16) on the tiny fixture checkpoints: it loads, it really
//! quantises, and its logits stay within the 2e-2 relative error of f32 (transformers'
//! goldens, which f32 matches within 1e-4). And `auto`, which picks a precision per machine.

mod common;

use tch::{Device, Kind, Tensor};

use common::fixtures::{cases, model_dir, tensors, Case};
use common::server::TestServer;
use gitcap_server::engine::Pipeline;
use gitcap_server::model::precision::load_fast;
use gitcap_server::model::weights::Storage;
use gitcap_server::model::{GitForCausalLM, KvCache, Precision};

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
/// (measured: bf16 rounding of the vision tower alone moves its logits by 18%), so no mode whose
/// vision tower runs in bf16 meets 2e-2 on it, and the sum of the tower's and the int8 decoder's
/// errors moves either way with any rounding (fast with a bf16 tower: 18.1% before its one-row
/// products took f32 activations, 18.5% after, against bf16 mode's 18.1%). Fast mode's own part,
/// its int8 decoder and LM head with the dense work in f32 (as on CPUs without native bf16), must
/// meet the 2e-2 even here, and so stay closer to f32 than bf16 mode does.
#[test]
fn on_the_ill_conditioned_wide_fixture_fasts_int8_decoder_stays_within_2e_2() {
    let _guard = tch::no_grad_guard();
    let case = cases().into_iter().find(|c| c.has_logits && c.model == "tiny-git-wide").unwrap();
    let golden = tensors("cases.safetensors");
    let ids = Tensor::from_slice(&case.prompt_ids).view([1, -1]);
    let logits = fast_with(&case, Kind::Float).forward(&case.pixel_values(&golden), &ids).unwrap().squeeze_dim(0);
    let expected = &golden[&format!("{}/logits", case.name)];
    let int8 = (&logits - expected).norm().double_value(&[]) / expected.norm().double_value(&[]);
    let (fast, bf16) = (relative_error(&case, Precision::Fast), relative_error(&case, Kind::BFloat16.into()));
    eprintln!("{}: relative error int8 decoder {int8:.3e}, fast {fast:.3e}, bf16 {bf16:.3e}", case.name);
    assert!(int8 <= 2e-2 && int8 > 1e-4, "fast's int8 decoder moves the logits by {int8}");
    assert!(int8 <= bf16, "fast's int8 decoder ({int8}) is further from f32 than bf16 mode ({bf16})");
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
    // `auto` reports what it resolved to, as the server's List does.
    let out =
        server(&["caption", "--model", model, "--image", image, "--dtype", "auto", "--max-new-tokens", "1", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(["f32", "bf16", "fast"].contains(&report["dtype"].as_str().unwrap()), "{report}");

    let cases = common::fixtures::fixtures().join("golden/cases.json");
    let args = ["fidelity", "--model", model, "--cases", cases.to_str().unwrap(), "--random-images", "1"];
    let text = String::from_utf8(server(&[&args[..], &["--max-new-tokens", "4"]].concat()).stdout).unwrap();
    assert!(text.contains("random_0") && text.contains("image_vqa_greedy"), "{text}");
    for line in ["logits relative error: max", "teacher-forced top-1 agreement:", "f32 top-1 margins"] {
        assert!(text.contains(line), "fidelity output lacks `{line}`:\n{text}");
    }
}

fn load(case: &Case, precision: Precision) -> GitForCausalLM {
    precision.load(&model_dir(&case.model), Device::Cpu, Storage::Mapped).unwrap().0
}

/// Fast mode with its dense work (vision tower, image prefill) in `dense`, as on a CPU with
/// (bf16) or without (f32) native bf16.
fn fast_with(case: &Case, dense: Kind) -> GitForCausalLM {
    load_fast(&model_dir(&case.model), Device::Cpu, Storage::Mapped, dense).unwrap().0
}

/// The image prefill of `case`'s frames, batched with 63 copies of itself as the engine
/// batches requests (so its products have the many rows of a real prefill): the first cache.
fn prefill(model: &GitForCausalLM, case: &Case) -> KvCache {
    let golden = tensors("cases.safetensors");
    let tokens = model.image_tokens(&model.encode_frames(&case.pixel_values(&golden)).unwrap()).unwrap();
    model.prefill_images(&tokens.repeat([64, 1, 1]), &[(1, 4); 64]).unwrap().remove(0)
}

/// The largest ‖a − b‖ / ‖b‖ over every layer's image keys and values.
fn cache_difference(a: &KvCache, b: &KvCache) -> f64 {
    let (a, b) = (a.image_prefix(), b.image_prefix());
    (0..b.layers())
        .flat_map(|i| {
            let ((ka, va), (kb, vb)) = (a.layer(i), b.layer(i));
            [(ka, kb), (va, vb)]
        })
        .map(|(x, y)| (x - y).norm().double_value(&[]) / y.norm().double_value(&[]))
        .fold(0.0, f64::max)
}

/// One case per fixture model.
fn one_case_per_model() -> Vec<Case> {
    let mut seen = std::collections::HashSet::new();
    cases().into_iter().filter(|c| seen.insert(c.model.clone())).collect()
}

#[test]
fn without_native_bf16_fast_mode_prefills_exactly_as_f32_does() {
    let _guard = tch::no_grad_guard();
    for case in one_case_per_model() {
        let reference = prefill(&load(&case, Kind::Float.into()), &case);
        let f32_dense = cache_difference(&prefill(&fast_with(&case, Kind::Float), &case), &reference);
        assert_eq!(f32_dense, 0.0, "{}: no bf16 anywhere in the vision tower and prefill", case.model);
        // With bf16 dense work (a CPU with native bf16; every CPU before this change) the
        // prefill differs: the check above tells the two apart.
        let bf16_dense = cache_difference(&prefill(&fast_with(&case, Kind::BFloat16), &case), &reference);
        assert!(bf16_dense > 1e-4, "{}: the bf16 prefill should round ({bf16_dense})", case.model);
    }
}

/// The f32 top-1 margin (best logit minus the second) and top-1 token per position.
fn margins_and_top1(logits: &Tensor) -> (Vec<f64>, Vec<i64>) {
    let (values, indices) = logits.topk(2, -1, true, true);
    let margins = (values.select(-1, 0) - values.select(-1, 1)).to_kind(Kind::Double);
    (Vec::<f64>::try_from(&margins).unwrap(), Vec::<i64>::try_from(&indices.select(-1, 0)).unwrap())
}

/// Fast mode's greedy tokens (teacher-forced on f32's greedy sequences, each step's top-1) equal
/// f32's wherever f32's top-1 margin exceeds 1e-2 (issue 25's bound), with its dense work in f32
/// (CPUs without native bf16) as in bf16. Before the value projections stayed out of int8, one
/// position per dense dtype flipped here (f32 margins 0.032 and 0.037).
#[test]
fn fast_greedy_tokens_equal_f32s_wherever_the_f32_margin_is_clear() {
    let _guard = tch::no_grad_guard();
    let golden = tensors("cases.safetensors");
    let mut compared = 0;
    for case in cases().into_iter().filter(|c| c.model != "tiny-git-wide") {
        let ids: Vec<i64> = case.prompt_ids.iter().chain(&case.generated_ids).copied().collect();
        let ids = Tensor::from_slice(&ids).view([1, -1]);
        let pixels = case.pixel_values(&golden);
        let reference = load(&case, Kind::Float.into()).forward(&pixels, &ids).unwrap().squeeze_dim(0);
        let (margins, expected) = margins_and_top1(&reference);
        for dense in [Kind::Float, Kind::BFloat16] {
            let logits = fast_with(&case, dense).forward(&pixels, &ids).unwrap().squeeze_dim(0);
            let (_, actual) = margins_and_top1(&logits);
            for (position, &margin) in margins.iter().enumerate() {
                if margin > 1e-2 {
                    compared += 1;
                    let same = actual[position] == expected[position];
                    assert!(same, "{} ({dense:?} dense): top-1 differs at {position}, f32 margin {margin}", case.name);
                }
            }
        }
    }
    eprintln!("top-1 equal at {compared} positions with an f32 margin > 1e-2");
    assert!(compared > 200, "too few positions compared: {compared}");
}

#[tokio::test]
async fn a_server_started_with_auto_lists_the_dtype_it_chose() {
    let env = [("GITCAP__MODEL__DTYPE", "auto"), ("GITCAP__AUTH__ADMIN_TOKEN", "admin-secret")];
    let server = TestServer::start_with_env("tiny-git-image", &[], &env);
    let list = server.client(Some("admin-secret")).await.list_models().await.unwrap();
    let dtypes: Vec<&str> = list.models.iter().map(|m| m.dtype.as_str()).collect();
    assert_eq!(dtypes.len(), 1, "{dtypes:?}");
    assert!(["f32", "bf16", "fast"].contains(&dtypes[0]), "auto resolves to a concrete dtype: {dtypes:?}");
}
