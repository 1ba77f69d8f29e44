//! What travels between the API and a model's thread, in types neither side owns: requests and
//! the work commands that carry them in, events and results out.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::frames::{EncodedFrame, Frame, PreparedFrame};
use super::queue::QueueSlot;
use crate::deadline::Deadline;
use crate::error::{GitcapError, Result};
use crate::model::generation::{FinishReason, GenerationOptions};

/// Interactive or batch (see [`super::policy`]), defined once in the protocol crate.
pub use gitcap_protocol::Priority;

/// A request as the model sees it: frames in order, an optional question, the caller's
/// generation options (over the checkpoint's `generation_config.json`), and its priority.
pub struct InferenceRequest {
    pub frames: Vec<Frame>,
    pub question: Option<String>,
    pub options: GenerationOptions,
    pub priority: Priority,
}

impl InferenceRequest {
    /// The same request, sharing its frames (several choices of one chat request, tests).
    pub fn share(&self) -> Self {
        Self {
            frames: self.frames.iter().map(super::frames::Frame::share).collect(),
            question: self.question.clone(),
            options: self.options,
            priority: self.priority,
        }
    }
}

/// A generated token with the text it adds (possibly empty, see
/// [`crate::model::tokenizer::TextStream`]).
#[derive(Debug, Clone)]
pub struct TokenEvent {
    pub token_id: i64,
    pub text_delta: String,
    pub logprob: f32,
    pub special: bool,
    /// The likeliest tokens at this step (id, text, log-probability), when asked for.
    pub top_logprobs: Vec<(i64, String, f32)>,
}

#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// The vision tower (for frames not encoded ahead).
    pub vision_ms: f64,
    /// The image prefill (of the requests admitted with this one, or a cached prefix copied)
    /// and a prompt of more than one token, which yields the first token.
    pub prefill_ms: f64,
    /// Generation after the prefill.
    pub decode_ms: f64,
}

#[derive(Debug, Clone)]
pub struct InferenceOutput {
    /// Generated ids after the prompt (EOS included when produced).
    pub token_ids: Vec<i64>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub image_tokens: usize,
    pub frames_used: usize,
    /// The image tokens' keys and values came from the feature cache (the same frames were
    /// seen before): no vision tower, no image prefill.
    pub image_cached: bool,
    pub timings: Timings,
}

/// What a running request reports, in order: `Admitted` when it starts running, its tokens,
/// then one `Done` or `Failed` (a request refused before it runs reports only `Failed`).
#[derive(Debug)]
pub enum EngineEvent {
    /// The request left the queue: the model reads this many prompt and image tokens.
    Admitted {
        prompt_tokens: usize,
        image_tokens: usize,
        /// Its image tokens came from the feature cache.
        image_cached: bool,
    },
    Token(TokenEvent),
    Done {
        output: InferenceOutput,
        queue_ms: f64,
    },
    Failed(GitcapError),
}

/// A candidate label's score: log p(label tokens, EOS | media, prompt).
#[derive(Debug, Clone)]
pub struct LabelScore {
    pub label: String,
    pub logprob: f64,
    pub tokens: usize,
}

/// A generation request on its way to the model's thread.
pub(super) struct Job {
    pub request: InferenceRequest,
    pub deadline: Deadline,
    pub enqueued: Instant,
    pub events: mpsc::UnboundedSender<EngineEvent>,
    /// Its place in the queue, given back when it starts running or is dropped.
    pub slot: QueueSlot,
}

/// Work for a model's thread.
pub(super) enum Command {
    Generate(Job),
    /// Run the vision tower on one frame (frame uploads, live and dense captioning).
    Encode {
        frame: PreparedFrame,
        reply: oneshot::Sender<Result<EncodedFrame>>,
        slot: QueueSlot,
    },
    /// Score candidate labels after the frames (teacher-forced).
    ScoreLabels {
        frames: Vec<Frame>,
        prompt: Option<String>,
        labels: Vec<String>,
        reply: oneshot::Sender<Result<Vec<LabelScore>>>,
        slot: QueueSlot,
    },
}
