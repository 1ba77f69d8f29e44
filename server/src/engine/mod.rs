//! Running requests on a model: the inference pipeline, the model's own thread that batches
//! requests from a bounded queue, and the cache of vision features it keeps.

pub mod feature_cache;
pub mod pipeline;
mod scheduler;
pub mod stats;
pub mod worker;

pub use pipeline::{
    EncodedFrame, Frame, InferenceOutput, InferenceRequest, LabelScore, Pipeline, PreparedFrame, TokenEvent,
};
pub use stats::EngineStatsSnapshot;
pub use worker::{Drain, EngineEvent, EngineOptions, ModelInfo, ModelWorker};
