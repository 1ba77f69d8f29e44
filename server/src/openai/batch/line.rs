//! One line of a job's input file, read as the request it holds: the line's envelope
//! (`custom_id`, `method`, `url`, `body`) checked against the job's endpoint, then the body read as
//! that endpoint reads its requests, at batch priority. Pure and CPU-bound: the runner calls
//! [`plan`] off the async threads.

use serde_json::Value;

use super::batches::RESPONSES_ENDPOINT;
use crate::engine::Priority;
use crate::openai::request::Plan as ChatPlan;
use crate::openai::responses::request::{Plan as ResponsesPlan, Source};
use crate::openai::ApiError;

/// Why a line holds no request: its error line's `code`, the line's field at fault, a message.
#[derive(Debug)]
pub struct LineError {
    pub code: &'static str,
    pub field: &'static str,
    pub message: String,
}

impl LineError {
    fn new(code: &'static str, field: &'static str, message: impl Into<String>) -> Self {
        Self { code, field, message: message.into() }
    }
}

/// The body (JSON) of the request a line holds for `endpoint`.
pub fn read(line: &[u8], endpoint: &str) -> Result<Vec<u8>, LineError> {
    let request: Value = serde_json::from_slice(line)
        .map_err(|e| LineError::new("invalid_json_line", "line", format!("the line is not JSON: {e}")))?;
    if !request["custom_id"].is_string() {
        return Err(LineError::new("missing_custom_id", "custom_id", "each line needs a custom_id (a string)"));
    }
    if request["method"] != "POST" {
        return Err(LineError::new("invalid_method", "method", "method must be \"POST\""));
    }
    if request["url"] != endpoint {
        let message = format!("url must be the batch's endpoint, {endpoint}, got {}", request["url"]);
        return Err(LineError::new("mismatched_endpoint", "url", message));
    }
    if !request["body"].is_object() {
        let message = format!("body must be a request to {endpoint} (a JSON object)");
        return Err(LineError::new("invalid_body", "body", message));
    }
    Ok(serde_json::to_vec(&request["body"]).unwrap_or_default())
}

/// A line's request, as its endpoint runs it.
#[derive(Debug)]
pub enum Request {
    Chat(ChatPlan),
    Responses(ResponsesPlan),
}

/// A line's `body` read as `endpoint` (`/v1/responses`, else chat completions) reads a request:
/// never streamed, at batch priority, and (Responses) not stored: batch answers are in the output
/// file, and kept in memory too they would push out the responses interactive callers follow up on.
pub fn plan(endpoint: &str, body: &[u8], urls_enabled: bool) -> Result<Request, ApiError> {
    let no_stream = || ApiError::invalid("stream", "a batch request cannot stream: leave stream false");
    if endpoint == RESPONSES_ENDPOINT {
        let mut plan = crate::openai::responses_plan(body, urls_enabled)?;
        if plan.stream {
            return Err(no_stream());
        }
        plan.priority = Priority::Batch;
        plan.store = false;
        if let Source::Given { kept, .. } = &mut plan.media {
            // The copy a stored response would keep of its media.
            *kept = None;
        }
        Ok(Request::Responses(plan))
    } else {
        let mut plan = crate::openai::plan(body, urls_enabled)?;
        if plan.stream {
            return Err(no_stream());
        }
        plan.priority = Priority::Batch;
        Ok(Request::Chat(plan))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::batch::batches::CHAT_ENDPOINT;

    /// A 1x1 PNG as a data: URI.
    const IMAGE: &str = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";

    fn line(url: &str, body: Value) -> Vec<u8> {
        serde_json::json!({"custom_id": "a", "method": "POST", "url": url, "body": body}).to_string().into_bytes()
    }

    #[test]
    fn a_line_names_the_field_at_fault() {
        let cases: [(&[u8], &str, &str); 5] = [
            (b"{", "invalid_json_line", "line"),
            (br#"{"custom_id": 1}"#, "missing_custom_id", "custom_id"),
            (br#"{"custom_id": "a", "method": "GET"}"#, "invalid_method", "method"),
            (br#"{"custom_id": "a", "method": "POST", "url": "/v1/embeddings"}"#, "mismatched_endpoint", "url"),
            (br#"{"custom_id": "a", "method": "POST", "url": "/v1/responses", "body": []}"#, "invalid_body", "body"),
        ];
        for (line, code, field) in cases {
            let error = read(line, RESPONSES_ENDPOINT).unwrap_err();
            assert_eq!((error.code, error.field), (code, field), "{}", String::from_utf8_lossy(line));
        }
        let body = read(&line(CHAT_ENDPOINT, serde_json::json!({"model": "m"})), CHAT_ENDPOINT).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), serde_json::json!({"model": "m"}));
    }

    #[test]
    fn a_responses_line_runs_at_batch_priority_unstored_without_a_copy_of_its_media() {
        let body =
            serde_json::json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": IMAGE}]}]});
        let body = read(&line(RESPONSES_ENDPOINT, body), RESPONSES_ENDPOINT).unwrap();
        let Request::Responses(plan) = plan(RESPONSES_ENDPOINT, &body, false).unwrap() else {
            panic!("not a Responses plan")
        };
        assert_eq!(plan.priority, Priority::Batch);
        assert!(!plan.store);
        let Source::Given { kept, .. } = plan.media else { panic!("the line's own media") };
        assert!(kept.is_none(), "a batch line kept a second copy of its media");
    }

    #[test]
    fn a_line_cannot_stream() {
        for (endpoint, body) in [
            (
                RESPONSES_ENDPOINT,
                serde_json::json!({"stream": true, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": IMAGE}]}]}),
            ),
            (
                CHAT_ENDPOINT,
                serde_json::json!({"stream": true, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}}]}]}),
            ),
        ] {
            let error = plan(endpoint, body.to_string().as_bytes(), false).unwrap_err();
            assert_eq!(error.param.as_deref(), Some("stream"), "{endpoint}");
        }
    }
}
