//! Every check a request's content passes before it is queued, in one place, whatever door it
//! came through: its question, its candidate labels, and the generation settings it runs with —
//! the checkpoint's `generation_config.json` with the request's options over it, each option in
//! its range, within the server's limits, and agreeing with the checkpoint's values. Errors name
//! the request field (`options.num_beams`); a door that spells a field otherwise renames it.

use std::time::Duration;

use crate::error::{GitcapError, Result};
use crate::media::MediaLimits;
use crate::model::generation::{GenerationConfig, GenerationOptions};

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
    pub max_timeout: Duration,
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
            max_timeout: Duration::from_secs(3600),
        }
    }
}

/// A request's question, trimmed; `None` when it has none (a caption).
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

/// The generation settings a request runs with: `defaults` (the checkpoint's) with `options`
/// over them, checked once. Each option's own range comes from its definition
/// ([`GenerationOptions::check`]); the server's limits and the checks that need the checkpoint's
/// values too come here.
pub fn generation(
    defaults: &GenerationConfig,
    options: &GenerationOptions,
    limits: &RequestLimits,
) -> Result<GenerationConfig> {
    let invalid = |e: gitcap_protocol::InvalidOption| GitcapError::invalid(format!("options.{}", e.field), e.message);
    options.check().map_err(invalid)?;
    let at_most = |field: &str, value: Option<u32>, limit: usize| match value {
        Some(n) if n as usize > limit => Err(GitcapError::invalid(
            format!("options.{field}"),
            format!("must be at most {limit} on this server, got {n}"),
        )),
        _ => Ok(()),
    };
    at_most("max_new_tokens", options.max_new_tokens, limits.max_new_tokens)?;
    at_most("min_new_tokens", options.min_new_tokens, limits.max_new_tokens)?;
    at_most("no_repeat_ngram_size", options.no_repeat_ngram_size, limits.max_new_tokens)?;
    at_most("num_beams", options.num_beams, limits.max_beams)?;
    let config = defaults.with_options(options);
    if let (Some(min), Some(max)) = (config.min_new_tokens, config.max_new_tokens) {
        if min > max {
            return Err(GitcapError::invalid(
                "options.min_new_tokens",
                format!("{min} is more than max_new_tokens {max} (the request's or the checkpoint's)"),
            ));
        }
    }
    if config.do_sample && !(config.temperature > 0.0 && config.temperature.is_finite()) {
        return Err(GitcapError::invalid(
            "options.temperature",
            format!("sampling needs a positive temperature; the checkpoint's is {}", config.temperature),
        ));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(error: GitcapError) -> String {
        match error {
            GitcapError::InvalidArgument { field, .. } => field,
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn options_apply_over_the_checkpoints_defaults() {
        let defaults = GenerationConfig { num_beams: 3, max_new_tokens: Some(20), ..Default::default() };
        let limits = RequestLimits::default();
        let config = generation(&defaults, &GenerationOptions::default(), &limits).unwrap();
        assert!(config.is_beam_search(), "the checkpoint's num_beams counts when the request sets none");
        let greedy = GenerationOptions { num_beams: Some(1), max_new_tokens: Some(5), ..Default::default() };
        let config = generation(&defaults, &greedy, &limits).unwrap();
        assert!(!config.is_beam_search());
        assert_eq!(config.max_new_tokens, Some(5));
    }

    #[test]
    fn every_layer_of_checks_names_its_field() {
        let limits = RequestLimits { max_beams: 4, max_new_tokens: 50, ..Default::default() };
        let defaults = GenerationConfig { max_new_tokens: Some(10), ..Default::default() };
        let cases = [
            // The option's own range.
            (GenerationOptions { top_p: Some(1.5), ..Default::default() }, "options.top_p"),
            // The server's limits.
            (GenerationOptions { num_beams: Some(5), ..Default::default() }, "options.num_beams"),
            (GenerationOptions { max_new_tokens: Some(51), ..Default::default() }, "options.max_new_tokens"),
            (
                GenerationOptions { no_repeat_ngram_size: Some(51), ..Default::default() },
                "options.no_repeat_ngram_size",
            ),
            // With the checkpoint's values.
            (GenerationOptions { min_new_tokens: Some(12), ..Default::default() }, "options.min_new_tokens"),
        ];
        for (options, expected) in cases {
            assert_eq!(field(generation(&defaults, &options, &limits).unwrap_err()), expected, "{options:?}");
        }
        let cold = GenerationConfig { temperature: 0.0, ..Default::default() };
        let sample = GenerationOptions { do_sample: Some(true), ..Default::default() };
        assert_eq!(field(generation(&cold, &sample, &limits).unwrap_err()), "options.temperature");
    }

    #[test]
    fn questions_and_labels_are_bounded() {
        let limits = RequestLimits { max_question_chars: 5, max_labels: 2, ..Default::default() };
        assert_eq!(question("  ", &limits).unwrap(), None);
        assert_eq!(question(" cat ", &limits).unwrap().as_deref(), Some("cat"));
        assert_eq!(field(question("a long question", &limits).unwrap_err()), "question");
        let three = ["a", "b", "c"].map(String::from);
        assert_eq!(field(labels(&three, &limits).unwrap_err()), "labels");
        assert_eq!(field(labels(&["a".into(), " ".into()], &limits).unwrap_err()), "labels[1]");
    }
}
