//! Reading the golden fixtures written by `scripts/make_fixtures.py`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;
use tch::Tensor;

use gitcap_server::model::generation::GenerationOptions;

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
    /// The case's `generate` kwargs as request options: their names are the options' names.
    pub fn overrides(&self) -> GenerationOptions {
        let kwargs = serde_json::Value::Object(self.generate_kwargs.clone().into_iter().collect());
        let options: GenerationOptions = serde_json::from_value(kwargs).expect("generate kwargs as options");
        // Every kwarg must have become an option: a name the options lack would be dropped.
        let mapped = serde_json::to_value(options).unwrap();
        for key in self.generate_kwargs.keys() {
            assert!(mapped.get(key).is_some(), "case {}: generate kwarg {key} is not an option", self.name);
        }
        options
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
