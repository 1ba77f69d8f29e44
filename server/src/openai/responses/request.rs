//! A `POST /v1/responses` body, read as a GIT request: which media, which question, which
//! options.
//!
//! - **Input**: a string (the question), or a list of items: messages (`{"role", "content"}`,
//!   `"type": "message"` optional) whose content is a string or parts. Parts: `input_text`;
//!   `input_image` (`image_url`: a `data:` URI, or an http(s) URL where `media.url` allows);
//!   `input_file` (`file_data`: a `data:` URI of a video or an image; `file_url`: an http(s)
//!   URL); vLLM's `video_url` (`{"url": …}` or the URL itself); `output_text` of earlier
//!   assistant turns (ignored). Other item types (tool calls, reasoning, item references) are
//!   refused naming the item.
//! - **Media**: as on chat completions: those of the latest user message with any, else the
//!   latest anywhere; one image, several images (a video's frames) or one video. With none, the
//!   media of `previous_response_id`'s response (a follow-up question on the same image, served
//!   from the feature cache).
//! - **Question**: the text of the latest user message; none means caption. `instructions`,
//!   system and developer messages are accepted and ignored.
//! - **Options**: `max_output_tokens`, `temperature` (0 = greedy), `top_p`, `seed`,
//!   `top_logprobs`, gitcap's own options as extra fields, `service_tier` — mapped as chat
//!   completions map theirs (super::super::request). Log-probabilities come with
//!   `include: ["message.output_text.logprobs"]` or `top_logprobs`.
//! - What gitcap cannot honour (tools, reasoning, `text.format` other than text, background mode,
//!   conversations, prompt templates) is refused naming the field unless at its no-op value.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::super::error::ApiError;
use super::super::request::{
    generation_options, json_type_of, media, model, priority, refuse_unsupported, Harmless, PartMedia, Sampling,
};
use crate::engine::Priority;
use crate::model::generation::GenerationOptions;
use crate::service::media::MediaInput;
use crate::service::Ask;

/// The `include` value that asks for the answer's log-probabilities.
pub const LOGPROBS_INCLUDE: &str = "message.output_text.logprobs";

/// Parameters of the Responses API that gitcap cannot honour, with what they must be for gitcap
/// to ignore them safely.
const UNSUPPORTED: &[(&str, Harmless)] = &[
    ("tools", Harmless::List(&[])),
    ("tool_choice", Harmless::Word(&["none", "auto"])),
    ("reasoning", Harmless::Object(None)),
    ("background", Harmless::False),
    ("conversation", Harmless::Absent),
    ("prompt", Harmless::Absent),
    ("frequency_penalty", Harmless::Number(0.0)),
    ("presence_penalty", Harmless::Number(0.0)),
];

/// `POST /v1/responses`. Fields not listed here are kept in `extra`: gitcap's own options are
/// read from it, parameters gitcap cannot honour are refused by name, the rest is ignored.
#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    #[serde(default)]
    pub model: String,
    pub input: Option<Input>,
    pub instructions: Option<Value>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub top_logprobs: Option<u32>,
    pub include: Option<Vec<String>>,
    #[serde(default)]
    pub stream: bool,
    pub store: Option<bool>,
    pub previous_response_id: Option<String>,
    pub service_tier: Option<String>,
    pub user: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub text: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `input`: the question alone, or a list of items.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Item>),
}

/// One input item: a message (other types are refused).
#[derive(Debug, Deserialize)]
pub struct Item {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub role: Option<String>,
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    InputText {
        text: String,
    },
    OutputText {},
    InputImage {
        image_url: Option<String>,
        file_id: Option<String>,
    },
    InputFile {
        file_data: Option<String>,
        file_url: Option<String>,
        file_id: Option<String>,
    },
    VideoUrl {
        video_url: VideoUrl,
    },
    #[serde(other)]
    Other,
}

/// vLLM writes a `video_url` part's URL as `{"url": …}`; some clients write the URL alone.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum VideoUrl {
    Object { url: String },
    Url(String),
}

/// What the parameters the response echoes were.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub instructions: Option<Value>,
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_logprobs: Option<u32>,
    pub metadata: Map<String, Value>,
    pub user: Option<String>,
}

/// Where a request's media come from.
#[derive(Debug)]
pub enum Source {
    /// Its own; with the copy to keep with the response when it is stored (the core takes the
    /// request's own), made here, off the async threads.
    Given { media: MediaInput, kept: Option<Arc<MediaInput>> },
    /// Those of the stored response with this id.
    Previous(String),
}

/// A Responses request as gitcap runs it.
#[derive(Debug)]
pub struct Plan {
    pub model: String,
    pub media: Source,
    pub question: String,
    pub options: GenerationOptions,
    pub priority: Priority,
    pub stream: bool,
    pub store: bool,
    pub previous_response_id: Option<String>,
    pub logprobs: bool,
    pub echo: Echo,
}

impl Plan {
    pub fn new(request: ResponsesRequest, url_allowed: bool) -> Result<Self, ApiError> {
        refuse_unsupported(&request.extra, UNSUPPORTED)?;
        text_format(request.text.as_ref())?;
        let sampling = Sampling {
            max_tokens: request.max_output_tokens,
            temperature: request.temperature,
            top_p: request.top_p,
            seed: request.seed,
            top_logprobs: request.top_logprobs,
        };
        let options = generation_options(&request.extra, sampling)?;
        let (media, question) = match &request.input {
            None => (None, String::new()),
            Some(Input::Text(text)) => (None, text.trim().to_string()),
            Some(Input::Items(items)) => conversation(items, url_allowed)?,
        };
        let store = request.store.unwrap_or(true);
        let media = match (media, &request.previous_response_id) {
            (Some(media), _) => Source::Given { kept: store.then(|| Arc::new(media.clone())), media },
            (None, Some(id)) => Source::Previous(id.clone()),
            (None, None) => {
                return Err(ApiError::invalid(
                    "input",
                    "no image or video in the input: gitcap captions and answers questions about media; add an \
                     input_image or input_file part, or name a previous_response_id whose media to ask about",
                ))
            }
        };
        let logprobs = request.top_logprobs.is_some()
            || request.include.iter().flatten().any(|include| include == LOGPROBS_INCLUDE);
        Ok(Self {
            model: request.model,
            media,
            question,
            options,
            priority: priority(request.service_tier.as_deref())?,
            stream: request.stream,
            store,
            previous_response_id: request.previous_response_id,
            logprobs,
            echo: Echo {
                instructions: request.instructions,
                max_output_tokens: request.max_output_tokens,
                temperature: request.temperature,
                top_p: request.top_p,
                top_logprobs: request.top_logprobs,
                metadata: request.metadata.unwrap_or_default(),
                user: request.user,
            },
        })
    }

    /// Where the request's media come from, taken out of the plan (which keeps an empty
    /// `Source::Previous`): the core takes the media, the rest of the plan shapes the response.
    pub fn take_media(&mut self) -> Source {
        std::mem::replace(&mut self.media, Source::Previous(String::new()))
    }

    /// What the core is asked, about `media` (the request's own or those of the response it follows).
    pub fn ask(&self, media: MediaInput) -> Ask {
        Ask {
            model: model(&self.model),
            media,
            question: self.question.clone(),
            options: self.options,
            priority: self.priority,
        }
    }
}

/// `text`: its `format` must be plain text (structured outputs cannot be honoured).
fn text_format(text: Option<&Value>) -> Result<(), ApiError> {
    let format = match text {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(text)) => text.get("format"),
        Some(other) => {
            return Err(ApiError::invalid("text", format!("`text` must be an object, got {}", json_type_of(other))))
        }
    };
    match format {
        None | Some(Value::Null) => Ok(()),
        Some(format) if format.get("type").and_then(Value::as_str) == Some("text") => Ok(()),
        Some(_) => Err(ApiError::invalid(
            "text.format",
            "gitcap answers in plain text only (no JSON schema or JSON mode); leave it {\"type\": \"text\"}",
        )),
    }
}

/// The media and the question of the input items (see the module documentation).
fn conversation(items: &[Item], url_allowed: bool) -> Result<(Option<MediaInput>, String), ApiError> {
    let mut media_of_messages: Vec<(usize, bool, Vec<PartMedia>)> = Vec::new();
    let mut question = None;
    for (i, item) in items.iter().enumerate() {
        if item.kind.as_deref().is_some_and(|kind| kind != "message") {
            return Err(ApiError::invalid(
                format!("input[{i}].type"),
                "gitcap reads message items only (no tool calls, reasoning or item references)",
            ));
        }
        let user = item.role.as_deref() == Some("user");
        let (text, media) = parts(item.content.as_ref(), i)?;
        if !media.is_empty() {
            media_of_messages.push((i, user, media));
        }
        if user {
            question = Some(text);
        }
    }
    let chosen = media_of_messages.iter().rev().find(|(_, user, _)| *user).or(media_of_messages.last());
    let media = match chosen {
        Some((index, _, parts)) => Some(media(parts, &format!("input[{index}].content"), url_allowed)?),
        None => None,
    };
    Ok((media, question.unwrap_or_default().trim().to_string()))
}

/// An item's text and media parts.
fn parts(content: Option<&Content>, item: usize) -> Result<(String, Vec<PartMedia>), ApiError> {
    let parts = match content {
        None => return Ok((String::new(), vec![])),
        Some(Content::Text(text)) => return Ok((text.clone(), vec![])),
        Some(Content::Parts(parts)) => parts,
    };
    let mut text = Vec::new();
    let mut media = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let at = format!("input[{item}].content[{j}]");
        match part {
            Part::InputText { text: t } => text.push(t.as_str()),
            Part::OutputText {} => {}
            Part::InputImage { image_url: Some(url), .. } => {
                media.push(PartMedia::Image { url: url.clone(), field: format!("{at}.image_url") })
            }
            Part::InputImage { .. } => {
                return Err(ApiError::invalid(
                    format!("{at}.image_url"),
                    "an input_image needs an image_url (a data: URI or an http(s) URL); gitcap does not read file_id",
                ))
            }
            Part::InputFile { file_data: Some(data), .. } => media.push(file(data, format!("{at}.file_data"))?),
            Part::InputFile { file_url: Some(url), .. } => {
                media.push(PartMedia::Video { url: url.clone(), field: format!("{at}.file_url") })
            }
            Part::InputFile { .. } => {
                return Err(ApiError::invalid(
                    format!("{at}.file_data"),
                    "an input_file needs file_data (a data: URI) or file_url; gitcap does not read file_id",
                ))
            }
            Part::VideoUrl { video_url: VideoUrl::Object { url } | VideoUrl::Url(url) } => {
                media.push(PartMedia::Video { url: url.clone(), field: format!("{at}.video_url") })
            }
            Part::Other => {
                return Err(ApiError::invalid(
                    format!("{at}.type"),
                    "gitcap reads input_text, input_image, input_file and video_url parts only",
                ))
            }
        }
    }
    Ok((text.join(" "), media))
}

/// An `input_file`'s `file_data`: a video file, or an image when its type says so. Other
/// documents (PDF, text) are refused: gitcap reads only media.
fn file(data: &str, field: String) -> Result<PartMedia, ApiError> {
    let mime = data.strip_prefix("data:").and_then(|rest| rest.split([';', ',']).next()).unwrap_or_default();
    if mime.starts_with("image/") {
        return Ok(PartMedia::Image { url: data.to_string(), field });
    }
    if !(mime.is_empty() || mime.starts_with("video/") || mime == "application/octet-stream") {
        return Err(ApiError::invalid(field, format!("gitcap reads video and image files only, not {mime}")));
    }
    if !data.starts_with("data:") {
        return Err(ApiError::invalid(field, "file_data must be a data: URI (data:video/mp4;base64,…)"));
    }
    Ok(PartMedia::Video { url: data.to_string(), field })
}
