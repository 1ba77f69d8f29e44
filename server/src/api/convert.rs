//! Protocol messages ↔ the engine's types, with request validation against server limits.

use crate::engine::{InferenceOutput, Priority, TokenEvent};
use crate::error::{GitcapError, Result};
use crate::media::MediaLimits;
use crate::model::generation::{FinishReason, GenerationOptions};
use crate::proto;

/// Server-side bounds on what a request may ask for.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub media: MediaLimits,
    pub max_new_tokens: usize,
    pub max_beams: usize,
    pub max_question_chars: usize,
    pub max_labels: usize,
    /// Largest single frame of an upload, in bytes (its chunks added up).
    pub max_frame_bytes: usize,
    /// The longest deadline a caller may set; longer ones are clamped to it.
    pub max_timeout: std::time::Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            media: MediaLimits::default(),
            max_new_tokens: 256,
            max_beams: 8,
            max_question_chars: 1000,
            max_labels: 100,
            max_frame_bytes: 32 << 20,
            max_timeout: std::time::Duration::from_secs(3600),
        }
    }
}

pub fn question(text: &str, limits: &RequestLimits) -> Result<Option<String>> {
    let q = text.trim();
    if q.is_empty() {
        return Ok(None);
    }
    let chars = q.chars().count();
    if chars > limits.max_question_chars {
        return Err(GitcapError::invalid(
            "question",
            format!("{chars} characters is more than the limit of {}", limits.max_question_chars),
        ));
    }
    Ok(Some(q.to_string()))
}

/// Candidate labels for scoring: at least one, each non-empty, within the limits.
pub fn labels(labels: &[String], limits: &RequestLimits) -> Result<Vec<String>> {
    if labels.is_empty() {
        return Err(GitcapError::invalid("labels", "give at least one candidate label"));
    }
    if labels.len() > limits.max_labels {
        return Err(GitcapError::invalid(
            "labels",
            format!("{} labels is more than the limit of {}", labels.len(), limits.max_labels),
        ));
    }
    labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let label = label.trim();
            if label.is_empty() {
                Err(GitcapError::invalid(format!("labels[{i}]"), "a label must not be empty"))
            } else if label.chars().count() > limits.max_question_chars {
                Err(GitcapError::invalid(format!("labels[{i}]"), "the label is too long"))
            } else {
                Ok(label.to_string())
            }
        })
        .collect()
}

/// A request's priority (unspecified = interactive).
pub fn priority(value: i32) -> Result<Priority> {
    Priority::from_wire(value).map_err(|message| GitcapError::invalid("priority", message))
}

/// A request's generation options: read from the message, range-checked
/// ([`GenerationOptions::check`]), then held to the server's limits.
pub fn options(message: Option<&proto::GenerationOptions>, limits: &RequestLimits) -> Result<GenerationOptions> {
    let Some(message) = message else {
        return Ok(GenerationOptions::default());
    };
    let invalid = |e: gitcap_protocol::InvalidOption| GitcapError::invalid(format!("options.{}", e.field), e.message);
    let options = GenerationOptions::try_from(message).map_err(invalid)?;
    options.check().map_err(invalid)?;
    within_limits(&options, limits)?;
    Ok(options)
}

/// The server's own bounds on the options (beyond their ranges).
pub fn within_limits(options: &GenerationOptions, limits: &RequestLimits) -> Result<()> {
    let most = |field: &str, value: Option<u32>, limit: usize| match value {
        Some(n) if n as usize > limit => Err(GitcapError::invalid(
            format!("options.{field}"),
            format!("must be at most {limit} on this server, got {n}"),
        )),
        _ => Ok(()),
    };
    most("max_new_tokens", options.max_new_tokens, limits.max_new_tokens)?;
    most("min_new_tokens", options.min_new_tokens, limits.max_new_tokens)?;
    most("no_repeat_ngram_size", options.no_repeat_ngram_size, limits.max_new_tokens)?;
    most("num_beams", options.num_beams, limits.max_beams)
}

pub fn token_event(event: TokenEvent) -> proto::TokenEvent {
    proto::TokenEvent {
        token_id: event.token_id as u32,
        text_delta: event.text_delta,
        logprob: event.logprob,
        special: event.special,
        top_logprobs: event
            .top_logprobs
            .into_iter()
            .map(|(id, token, logprob)| proto::TopLogprob { token_id: id as u32, token, logprob })
            .collect(),
    }
}

pub fn response(
    output: InferenceOutput,
    queue_ms: f64,
    total_ms: f64,
    model: &str,
    version: &str,
) -> proto::CaptionResponse {
    proto::CaptionResponse {
        text: output.text,
        token_ids: output.token_ids.iter().map(|&t| t as u32).collect(),
        finish_reason: match output.finish_reason {
            FinishReason::Eos => proto::FinishReason::Eos,
            FinishReason::Length => proto::FinishReason::Length,
        } as i32,
        usage: Some(proto::Usage {
            prompt_tokens: output.prompt_tokens as u32,
            image_tokens: output.image_tokens as u32,
            generated_tokens: output.token_ids.len() as u32,
        }),
        timings: Some(proto::Timings {
            queue_ms,
            vision_ms: output.timings.vision_ms,
            prefill_ms: output.timings.prefill_ms,
            decode_ms: output.timings.decode_ms,
            total_ms,
        }),
        model: model.to_string(),
        version: version.to_string(),
        frame_timestamps_s: vec![],
    }
}
