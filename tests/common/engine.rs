//! Models on their own threads for tests that drive the engine without a server: the path a
//! served request takes, from the fixture checkpoints.

#![allow(dead_code)]

use tch::Kind;

use super::fixtures::model_dir;
use gitcap_server::device::DeviceSpec;
use gitcap_server::engine::{EngineOptions, ModelWorker};
use gitcap_server::model::Precision;

/// Fixture model `model` in f32 on the CPU, nothing cached between requests.
pub fn worker(model: &str) -> ModelWorker {
    worker_with(model, EngineOptions { feature_cache_bytes: 0, ..EngineOptions::default() })
}

/// Loaded on the model's own thread, as the server loads it.
pub fn worker_with(model: &str, options: EngineOptions) -> ModelWorker {
    ModelWorker::load_checkpoint(
        model_dir(model),
        model,
        "test",
        Precision::from(Kind::Float),
        DeviceSpec::CPU,
        options,
    )
    .unwrap()
}
