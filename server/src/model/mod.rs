//! GIT (`GitForCausalLM`) in tch, read side by side with transformers' `modeling_git.py`.

pub mod config;
pub mod cpu;
pub mod decoder;
pub mod generation;
pub mod git;
pub mod lanes;
pub mod layers;
pub mod matvec;
pub mod openmp;
pub mod precision;
pub mod step_attention;
pub mod tokenizer;
pub mod vision;
pub mod weights;

pub use config::{GitConfig, GitVisionConfig};
pub use decoder::KvCache;
pub use git::GitForCausalLM;
pub use precision::Precision;
pub use weights::Weights;
