//! Models on their own threads for tests that drive the engine without a server: the path a
//! served request takes, from the fixture checkpoints.

#![allow(dead_code)]

use tch::{Device, Kind};

use super::fixtures::model_dir;
use gitcap_server::device::DeviceSpec;
use gitcap_server::engine::{EngineOptions, ModelInfo, ModelWorker, Pipeline};
use gitcap_server::model::Precision;

/// Fixture model `model` in f32 on the CPU, nothing cached between requests.
pub fn worker(model: &str) -> ModelWorker {
    worker_with(model, EngineOptions { feature_cache_bytes: 0, ..EngineOptions::default() })
}

pub fn worker_with(model: &str, options: EngineOptions) -> ModelWorker {
    let pipeline = Pipeline::load(&model_dir(model), Kind::Float, Device::Cpu).unwrap();
    let info = ModelInfo::describe(&pipeline, model, "test", Precision::from(Kind::Float), DeviceSpec::CPU);
    ModelWorker::spawn(pipeline, info, options)
}
