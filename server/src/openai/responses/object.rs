//! The Response object as OpenAI documents it (and the `openai` SDK's `Response` type reads it):
//! gitcap's answer is one assistant message with one `output_text` part.

use serde::Serialize;
use serde_json::{Map, Value};

use super::request::Echo;
use crate::openai::types::TokenLogprob;

#[derive(Debug, Clone, Serialize)]
pub struct ResponseObject {
    pub id: String,
    pub object: &'static str,
    pub created_at: u64,
    /// `in_progress`, `completed`, `incomplete` (stopped at `max_output_tokens`) or `failed`.
    pub status: &'static str,
    pub completed_at: Option<u64>,
    pub error: Option<ResponseError>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<Value>,
    pub max_output_tokens: Option<u32>,
    pub metadata: Map<String, Value>,
    pub model: String,
    pub output: Vec<OutputMessage>,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    pub reasoning: Option<Value>,
    pub service_tier: &'static str,
    pub store: bool,
    pub temperature: Option<f32>,
    pub text: Value,
    pub tool_choice: &'static str,
    pub tools: Vec<Value>,
    pub top_logprobs: Option<u32>,
    pub top_p: Option<f32>,
    pub truncation: &'static str,
    pub background: bool,
    pub usage: Option<Usage>,
    pub user: Option<String>,
}

impl ResponseObject {
    /// A response just begun: no output yet.
    pub fn begun(
        id: String,
        model: String,
        echo: &Echo,
        service_tier: &'static str,
        store: bool,
        previous: Option<String>,
    ) -> Self {
        Self {
            id,
            object: "response",
            created_at: super::now(),
            status: "in_progress",
            completed_at: None,
            error: None,
            incomplete_details: None,
            instructions: echo.instructions.clone(),
            max_output_tokens: echo.max_output_tokens,
            metadata: echo.metadata.clone(),
            model,
            output: vec![],
            parallel_tool_calls: false,
            previous_response_id: previous,
            reasoning: None,
            service_tier,
            store,
            temperature: echo.temperature,
            text: serde_json::json!({"format": {"type": "text"}}),
            tool_choice: "none",
            tools: vec![],
            top_logprobs: echo.top_logprobs,
            top_p: echo.top_p,
            truncation: "disabled",
            background: false,
            usage: None,
            user: echo.user.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ResponseError {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncompleteDetails {
    pub reason: &'static str,
}

/// The assistant's message: gitcap's only output item.
#[derive(Debug, Clone, Serialize)]
pub struct OutputMessage {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: &'static str,
    pub role: &'static str,
    pub content: Vec<OutputText>,
}

impl OutputMessage {
    pub fn new(id: String, status: &'static str, content: Vec<OutputText>) -> Self {
        Self { id, kind: "message", status, role: "assistant", content }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OutputText {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
    pub annotations: Vec<Value>,
    pub logprobs: Vec<TokenLogprob>,
}

impl OutputText {
    pub fn new(text: String, logprobs: Vec<TokenLogprob>) -> Self {
        Self { kind: "output_text", text, annotations: vec![], logprobs }
    }
}

/// Tokens read (prompt and image tokens: what the model reads) and written.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub input_tokens: u32,
    pub input_tokens_details: InputDetails,
    pub output_tokens: u32,
    pub output_tokens_details: OutputDetails,
    pub total_tokens: u32,
}

impl Usage {
    /// `cached_tokens` of the `input_tokens` came from the feature cache (a follow-up's image).
    pub fn new(input_tokens: u32, cached_tokens: u32, output_tokens: u32) -> Self {
        Self {
            input_tokens,
            input_tokens_details: InputDetails { cached_tokens, cache_write_tokens: 0 },
            output_tokens,
            output_tokens_details: OutputDetails { reasoning_tokens: 0 },
            total_tokens: input_tokens + output_tokens,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct InputDetails {
    pub cached_tokens: u32,
    pub cache_write_tokens: u32,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct OutputDetails {
    pub reasoning_tokens: u32,
}
