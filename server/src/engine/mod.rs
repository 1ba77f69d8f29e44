//! Running requests on a model: the inference pipeline, and the model's own thread that feeds
//! it from a bounded queue.

pub mod pipeline;
pub mod worker;

pub use pipeline::{Frame, InferenceOutput, InferenceRequest, LabelScore, Pipeline, TokenEvent};
pub use worker::{Drain, EngineEvent, ModelInfo, ModelWorker};
