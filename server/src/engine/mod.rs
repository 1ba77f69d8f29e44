//! Running requests on a model. Read in this order: [`messages`] (what goes in and comes out),
//! [`options`] (how it queues and batches), [`worker`] (the handle and the model's own thread),
//! [`queue`] (places in the queue, given back by RAII), [`scheduler`] (the thread's loop),
//! [`policy`] (which waiting request starts next), [`executor`] (the tensor work of a batch),
//! [`pipeline`] (the model math a request needs: frames, image tokens, prompt, label scores),
//! [`feature_cache`] (vision features kept between requests).

mod executor;
pub mod feature_cache;
pub mod frames;
pub mod messages;
pub mod options;
pub mod pipeline;
mod policy;
mod queue;
mod scheduler;
pub mod stats;
pub mod worker;

pub use frames::{EncodedFrame, Frame, PreparedFrame};
pub use messages::{EngineEvent, InferenceOutput, InferenceRequest, LabelScore, Priority, Timings, TokenEvent};
pub use options::EngineOptions;
pub use pipeline::Pipeline;
pub use stats::EngineStatsSnapshot;
pub use worker::{Drain, ModelInfo, ModelWorker};
