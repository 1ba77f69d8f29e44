//! Reading the golden fixtures written by `scripts/make_fixtures.py`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;
use tch::Tensor;

use gitcap_server::model::generation::{EarlyStopping, GenerationOverrides};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub const MODELS: [&str; 3] = ["tiny-git-image", "tiny-git-video", "tiny-git-wide"];

#[derive(Debug, Deserialize)]
pub struct Case {
    pub name: String,
    pub model: String,
    pub media: Vec<String>,
    pub question: Option<String>,
    pub prompt_ids: Vec<i64>,
    pub generate_kwargs: HashMap<String, serde_json::Value>,
    pub generated_ids: Vec<i64>,
    pub text: String,
    pub has_logits: bool,
    pub finished_by_eos: bool,
}

impl Case {
    /// The case's `generate` kwargs as request overrides.
    pub fn overrides(&self) -> GenerationOverrides {
        let k = &self.generate_kwargs;
        let uint = |name: &str| k.get(name).and_then(|v| v.as_u64()).map(|v| v as usize);
        let float = |name: &str| k.get(name).and_then(|v| v.as_f64());
        let known = [
            "max_new_tokens",
            "min_new_tokens",
            "num_beams",
            "length_penalty",
            "early_stopping",
            "do_sample",
            "repetition_penalty",
            "no_repeat_ngram_size",
        ];
        for key in k.keys() {
            assert!(known.contains(&key.as_str()), "case {}: generate kwarg {key} is not mapped", self.name);
        }
        GenerationOverrides {
            max_new_tokens: uint("max_new_tokens"),
            min_new_tokens: uint("min_new_tokens"),
            num_beams: uint("num_beams"),
            length_penalty: float("length_penalty"),
            early_stopping: k.get("early_stopping").map(|v| match v {
                serde_json::Value::Bool(true) => EarlyStopping::Yes,
                serde_json::Value::String(s) if s == "never" => EarlyStopping::Never,
                _ => EarlyStopping::No,
            }),
            do_sample: k.get("do_sample").and_then(|v| v.as_bool()),
            repetition_penalty: float("repetition_penalty"),
            no_repeat_ngram_size: uint("no_repeat_ngram_size"),
            ..Default::default()
        }
    }

    /// The exact model input: [frames, 3, H, W].
    pub fn pixel_values(&self, tensors: &HashMap<String, Tensor>) -> Tensor {
        let pv = &tensors[&format!("{}/pixel_values", self.name)];
        let size = pv.size();
        pv.view([-1, size[size.len() - 3], size[size.len() - 2], size[size.len() - 1]])
    }
}

pub fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("golden/cases.json")).expect("golden/cases.json");
    serde_json::from_str(&text).expect("valid cases.json")
}

pub fn tensors(file: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("golden").join(file)).expect("golden safetensors").into_iter().collect()
}
