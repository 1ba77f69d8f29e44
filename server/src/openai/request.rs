//! An OpenAI chat request, read as a GIT request: which media, which question, which options.
//!
//! - **Media**: those of the latest user message that has any, else the latest media anywhere in
//!   the conversation (a chat UI re-sends the whole history with each follow-up, so a follow-up
//!   question finds the same image, and the feature cache). One `image_url` is an image; several
//!   are a video's frames; one `video_url` is a video file. `data:` URIs carry the bytes; http(s)
//!   URLs are fetched by the server where `media.url` allows it.
//! - **Question**: the text of the latest user message; none (only media) means caption.
//!   System and developer prompts and earlier assistant turns are accepted and ignored.
//! - **Options**: `max_tokens`/`max_completion_tokens`, `temperature` (0 = greedy, as vLLM reads
//!   it), `top_p`, `seed`, `stop`, `logprobs`/`top_logprobs`, `n`; with neither `temperature` nor
//!   `top_p`, the checkpoint's generation config decides (greedy for GIT), as over gRPC. gitcap's
//!   own options (`num_beams`, `repetition_penalty`, every field of `GenerationOptions`) are
//!   accepted as extra fields. `service_tier: "flex"` runs the request at batch priority
//!   (`"auto"`, `"default"`, `"priority"`: interactive). What gitcap cannot honour is refused naming the field; any other
//!   field is ignored.

use base64::Engine;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::types::{ChatRequest, Content, Part, Stop};
use crate::engine::Priority;
use crate::error::GitcapError;
use crate::model::generation::GenerationOptions;
use crate::service::media::MediaInput;

/// The most completions one request may ask for (`n`).
pub const MAX_CHOICES: u32 = 8;

/// What a parameter gitcap cannot honour must be for gitcap to ignore it safely (`null` always
/// is). A value of another JSON type than the parameter has is a mistake, refused as such.
#[derive(Debug, Clone, Copy)]
pub(super) enum Harmless {
    /// A number equal to this.
    Number(f64),
    /// `false`.
    False,
    /// A list holding only these strings (none at all: empty).
    List(&'static [&'static str]),
    /// An object that is empty, or whose `type` is this.
    Object(Option<&'static str>),
    /// This string (the parameter may also be an object, which gitcap cannot honour).
    Word(&'static [&'static str]),
    /// Not given.
    Absent,
}

/// Parameters of the OpenAI API that gitcap cannot honour, with what they must be for gitcap to
/// ignore them safely.
const UNSUPPORTED: &[(&str, Harmless)] = &[
    ("frequency_penalty", Harmless::Number(0.0)),
    ("presence_penalty", Harmless::Number(0.0)),
    ("logit_bias", Harmless::Object(None)),
    ("tools", Harmless::List(&[])),
    ("tool_choice", Harmless::Word(&["none"])),
    ("functions", Harmless::List(&[])),
    ("function_call", Harmless::Word(&["none"])),
    ("response_format", Harmless::Object(Some("text"))),
    ("audio", Harmless::Absent),
    ("modalities", Harmless::List(&["text"])),
    ("prediction", Harmless::Absent),
    ("best_of", Harmless::Number(1.0)),
    ("echo", Harmless::False),
    ("suffix", Harmless::Absent),
];

impl Harmless {
    /// The JSON type the parameter has, when a value of another type is a mistake.
    fn json_type(self) -> Option<&'static str> {
        match self {
            Harmless::Number(_) => Some("a number"),
            Harmless::False => Some("a boolean"),
            Harmless::List(_) => Some("a list"),
            Harmless::Object(_) => Some("an object"),
            Harmless::Word(_) => Some("a string or an object"),
            Harmless::Absent => None,
        }
    }

    /// How to leave the parameter, for the error message.
    fn advice(self) -> String {
        match self {
            Harmless::Number(n) => format!("{n}"),
            Harmless::False => "false".into(),
            Harmless::List([]) => "empty".into(),
            Harmless::List(words) => format!("{words:?}"),
            Harmless::Object(None) => "empty".into(),
            Harmless::Object(Some(kind)) => format!("{{\"type\": \"{kind}\"}}"),
            Harmless::Word(words) => words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(" or "),
            Harmless::Absent => "absent".into(),
        }
    }

    /// `Some(ignorable)` for a value of the parameter's type, `None` for a value of another.
    fn ignores(self, value: &Value) -> Option<bool> {
        Some(match (self, value) {
            (_, Value::Null) => true,
            (Harmless::Number(n), Value::Number(v)) => v.as_f64() == Some(n),
            (Harmless::False, Value::Bool(b)) => !b,
            (Harmless::List(words), Value::Array(a)) => {
                a.iter().all(|v| v.as_str().is_some_and(|s| words.contains(&s)))
            }
            (Harmless::Object(kind), Value::Object(o)) => {
                o.is_empty() || kind.is_some_and(|kind| o.get("type").and_then(Value::as_str) == Some(kind))
            }
            (Harmless::Word(words), Value::String(s)) => words.contains(&s.as_str()),
            (Harmless::Word(_), Value::Object(_)) | (Harmless::Absent, _) => false,
            _ => return None,
        })
    }
}

/// A chat request as gitcap runs it.
#[derive(Debug)]
pub struct Plan {
    pub model: String,
    pub media: MediaInput,
    pub question: String,
    pub options: GenerationOptions,
    pub priority: Priority,
    pub choices: u32,
    pub stops: Vec<String>,
    pub logprobs: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// OpenAI's `user` (the end user's id): the route key of a canary split when the call's
    /// `x-gitcap-route-key` header gives none, so one user stays on one version.
    pub user: Option<String>,
    /// The OpenAI parameter that set `max_new_tokens`, if one did, for error messages.
    max_tokens_param: Option<&'static str>,
}

impl Plan {
    pub fn new(request: ChatRequest, url_allowed: bool) -> Result<Self, ApiError> {
        refuse_unsupported(&request.extra, UNSUPPORTED)?;
        let options = options(&request)?;
        let (media, question) = conversation(&request, url_allowed)?;
        let priority = priority(request.service_tier.as_deref())?;
        let choices = request.n.unwrap_or(1);
        if !(1..=MAX_CHOICES).contains(&choices) {
            return Err(ApiError::invalid("n", format!("must be 1 to {MAX_CHOICES}, got {choices}")));
        }
        let stops = match request.stop {
            None => vec![],
            Some(Stop::One(stop)) => vec![stop],
            Some(Stop::Many(stops)) => stops,
        };
        if stops.len() > 4 {
            return Err(ApiError::invalid("stop", "at most 4 stop sequences"));
        }
        Ok(Self {
            model: request.model,
            media,
            question,
            options,
            priority,
            choices,
            stops,
            logprobs: request.logprobs,
            stream: request.stream,
            include_usage: request.stream_options.is_some_and(|o| o.include_usage),
            user: request.extra.get("user").and_then(Value::as_str).map(str::to_string),
            max_tokens_param: if request.max_completion_tokens.is_some() {
                Some("max_completion_tokens")
            } else {
                request.max_tokens.map(|_| "max_tokens")
            },
        })
    }

    /// An error of the core's validation, with the request field named as this request spelt
    /// it: `top_p`, not `options.top_p`; `max_tokens` where it set the most tokens that way.
    pub fn in_openai_terms(&self, error: GitcapError) -> ApiError {
        in_openai_terms(error, self.max_tokens_param)
    }
}

/// An error of the core's validation, with the request field named as an OpenAI request spells
/// it: `top_p`, not `options.top_p`; `max_tokens_param` (`max_tokens`, `max_output_tokens`)
/// where that parameter set the most tokens.
pub(super) fn in_openai_terms(error: GitcapError, max_tokens_param: Option<&'static str>) -> ApiError {
    let mut error = ApiError::from(error);
    error.param = error.param.map(|param| match param.strip_prefix("options.").unwrap_or(&param) {
        "max_new_tokens" => max_tokens_param.unwrap_or("max_new_tokens").to_string(),
        other => other.to_string(),
    });
    error
}

/// OpenAI's `service_tier` as a priority: `flex` (cheaper, slower) is batch.
/// The model a request names; an empty `model` asks for the server's default, as an empty gRPC
/// `model` does.
pub(super) fn model(name: &str) -> Option<String> {
    Some(name).filter(|name| !name.is_empty()).map(str::to_string)
}

pub(super) fn priority(service_tier: Option<&str>) -> Result<Priority, ApiError> {
    match service_tier {
        None | Some("auto" | "default" | "priority") => Ok(Priority::Interactive),
        Some("flex") => Ok(Priority::Batch),
        Some(other) => Err(ApiError::invalid(
            "service_tier",
            format!("must be \"auto\", \"default\", \"flex\" (batch priority) or \"priority\", got {other:?}"),
        )),
    }
}

/// The `service_tier` a response reports for `priority`.
pub fn service_tier(priority: Priority) -> &'static str {
    match priority {
        Priority::Interactive => "default",
        Priority::Batch => "flex",
    }
}

/// Refuses, naming it, a parameter of `table` that is not at its harmless value.
pub(super) fn refuse_unsupported(extra: &Map<String, Value>, table: &[(&str, Harmless)]) -> Result<(), ApiError> {
    for &(name, harmless) in table {
        let Some(value) = extra.get(name) else { continue };
        match harmless.ignores(value) {
            Some(true) => {}
            Some(false) => {
                return Err(ApiError::invalid(
                    name,
                    format!(
                        "gitcap cannot honour `{name}` (it captions and answers questions about media); leave it {}",
                        harmless.advice()
                    ),
                ))
            }
            None => {
                let expected = harmless.json_type().unwrap_or("absent");
                return Err(ApiError::invalid(
                    name,
                    format!("`{name}` must be {expected}, got {}", json_type_of(value)),
                ));
            }
        }
    }
    Ok(())
}

/// A JSON value's type, as an error message names it.
pub(super) fn json_type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The sampling parameters every OpenAI API has (chat completions, responses), however it names
/// them.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Sampling {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub top_logprobs: Option<u32>,
}

fn options(request: &ChatRequest) -> Result<GenerationOptions, ApiError> {
    if request.top_logprobs.is_some() && !request.logprobs {
        return Err(ApiError::invalid("top_logprobs", "needs `logprobs: true`"));
    }
    let sampling = Sampling {
        max_tokens: request.max_completion_tokens.or(request.max_tokens),
        temperature: request.temperature,
        top_p: request.top_p,
        seed: request.seed,
        top_logprobs: request.top_logprobs,
    };
    generation_options(&request.extra, sampling)
}

/// gitcap's options: its own from the extra fields, then the OpenAI parameters over them
/// (temperature 0 = greedy; neither temperature nor top_p = the checkpoint's default).
pub(super) fn generation_options(
    extra: &Map<String, Value>,
    sampling: Sampling,
) -> Result<GenerationOptions, ApiError> {
    let mut options = GenerationOptions::default();
    for (name, value) in extra {
        // Each extra field on its own: a name that is not an option leaves the options empty.
        let single = Value::Object(Map::from_iter([(name.clone(), value.clone())]));
        let parsed: GenerationOptions = serde_json::from_value(single)
            .map_err(|e| ApiError::invalid(name.clone(), format!("not a valid `{name}`: {e}")))?;
        merge(&mut options, parsed);
    }
    if let Some(n) = sampling.max_tokens {
        options.max_new_tokens = Some(n);
    }
    match sampling.temperature {
        Some(0.0) => {
            options.do_sample = Some(false);
        }
        Some(t) => {
            options.do_sample = Some(true);
            options.temperature = Some(t);
        }
        None => {}
    }
    if let Some(p) = sampling.top_p {
        options.top_p = Some(p);
        if sampling.temperature.is_none_or(|t| t != 0.0) {
            options.do_sample = Some(true);
        }
    }
    if sampling.seed.is_some() {
        options.seed = sampling.seed;
    }
    if let Some(k) = sampling.top_logprobs {
        options.top_logprobs = Some(k);
    }
    Ok(options)
}

/// Sets the options `from` has.
fn merge(into: &mut GenerationOptions, from: GenerationOptions) {
    let mut merged = serde_json::to_value(*into).expect("options serialise");
    if let (Some(merged), Value::Object(from)) =
        (merged.as_object_mut(), serde_json::to_value(from).expect("options serialise"))
    {
        merged.extend(from);
    }
    *into = serde_json::from_value(merged).expect("merged options deserialise");
}

/// A content part's media: its URL, and the request field it came from.
pub(super) enum PartMedia {
    Image { url: String, field: String },
    Video { url: String, field: String },
}

/// The media and the question of the conversation (see the module documentation).
fn conversation(request: &ChatRequest, url_allowed: bool) -> Result<(MediaInput, String), ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::invalid("messages", "the conversation is empty"));
    }
    let mut media_of_messages: Vec<(usize, bool, Vec<PartMedia>)> = Vec::new();
    let mut question = None;
    for (i, message) in request.messages.iter().enumerate() {
        let user = message.role == "user";
        let (text, media) = parts(message.content.as_ref(), i)?;
        if !media.is_empty() {
            media_of_messages.push((i, user, media));
        }
        if user {
            question = Some(text);
        }
    }
    let chosen = media_of_messages.iter().rev().find(|(_, user, _)| *user).or(media_of_messages.last());
    let Some((index, _, parts)) = chosen else {
        return Err(ApiError::invalid(
            "messages",
            "no image or video in the conversation: gitcap captions and answers questions about media; add an \
             image_url or video_url part",
        ));
    };
    let media = media(parts, &format!("messages[{index}].content"), url_allowed)?;
    Ok((media, question.unwrap_or_default().trim().to_string()))
}

/// A message's text and media parts.
fn parts(content: Option<&Content>, message: usize) -> Result<(String, Vec<PartMedia>), ApiError> {
    match content {
        None => Ok((String::new(), vec![])),
        Some(Content::Text(text)) => Ok((text.clone(), vec![])),
        Some(Content::Parts(parts)) => {
            let mut text = Vec::new();
            let mut media = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                match part {
                    Part::Text { text: t } => text.push(t.as_str()),
                    Part::ImageUrl { image_url } => media.push(PartMedia::Image {
                        url: image_url.url.clone(),
                        field: format!("messages[{message}].content.image_url.url"),
                    }),
                    Part::VideoUrl { video_url } => media.push(PartMedia::Video {
                        url: video_url.url.clone(),
                        field: format!("messages[{message}].content.video_url.url"),
                    }),
                    Part::Other => {
                        return Err(ApiError::invalid(
                            format!("messages[{message}].content[{j}].type"),
                            "gitcap reads text, image_url and video_url parts only",
                        ))
                    }
                }
            }
            Ok((text.join(" "), media))
        }
    }
}

/// The media of one message's parts (`content` names the message's content, for errors): one
/// image, several images (a video's frames), or one video.
pub(super) fn media(parts: &[PartMedia], content: &str, url_allowed: bool) -> Result<MediaInput, ApiError> {
    let videos: Vec<(&String, &String)> = parts
        .iter()
        .filter_map(|p| if let PartMedia::Video { url, field } = p { Some((url, field)) } else { None })
        .collect();
    let images: Vec<(&String, &String)> = parts
        .iter()
        .filter_map(|p| if let PartMedia::Image { url, field } = p { Some((url, field)) } else { None })
        .collect();
    match (videos.as_slice(), images.as_slice()) {
        ([(video, field)], []) => match data_uri(video, field)? {
            Some(bytes) => Ok(MediaInput::Video { bytes, sampling: None }),
            None => remote(video, field, url_allowed),
        },
        ([], [(image, field)]) => match data_uri(image, field)? {
            Some(bytes) => Ok(MediaInput::Image(bytes)),
            None => remote(image, field, url_allowed),
        },
        ([], images) => {
            let frames = images
                .iter()
                .map(|(url, field)| {
                    data_uri(url, field)?.ok_or_else(|| {
                        ApiError::invalid(*field, "several images (a video's frames) must be data: URIs")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(MediaInput::Frames(frames))
        }
        _ => Err(ApiError::invalid(content, "one message may hold one video, or images, not both")),
    }
}

/// The bytes of a `data:` URI (`None` for any other URL).
pub(super) fn data_uri(url: &str, field: &str) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(rest) = url.strip_prefix("data:") else { return Ok(None) };
    let Some((header, data)) = rest.split_once(',') else {
        return Err(ApiError::invalid(field, "a data: URI needs a comma before its data"));
    };
    if !header.ends_with(";base64") {
        return Err(ApiError::invalid(field, "only base64 data: URIs are read (data:image/png;base64,…)"));
    }
    // The content decides what the bytes are; a declared image or video type outside the media
    // table is refused at once. (An untyped or generic one, application/octet-stream, is sniffed.)
    let mime = header.split(';').next().unwrap_or_default();
    let media_type = mime.starts_with("image/") || mime.starts_with("video/");
    if media_type && !gitcap_protocol::media_kind::is_known_mime(mime) {
        return Err(ApiError::invalid(
            field,
            format!(
                "{mime} is not a kind gitcap reads: images {}, videos {}",
                gitcap_protocol::media_kind::image_names(),
                gitcap_protocol::media_kind::video_names()
            ),
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ApiError::invalid(field, format!("the data: URI's base64 does not decode: {e}")))?;
    Ok(Some(bytes))
}

pub(super) fn remote(url: &str, field: &str, url_allowed: bool) -> Result<MediaInput, ApiError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ApiError::invalid(field, "must be a data: URI or an http(s) URL"));
    }
    if !url_allowed {
        return Err(ApiError::invalid(
            field,
            "this server does not fetch media from URLs (media.url.enabled is off): send the media as a data: URI",
        ));
    }
    Ok(MediaInput::Url { url: url.to_string(), sampling: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_uri_of_a_media_type_gitcap_does_not_read_is_refused_naming_the_kinds() {
        let error = data_uri("data:image/heic;base64,AAAA", "messages[0].content[0].image_url").unwrap_err();
        assert_eq!(error.param.as_deref(), Some("messages[0].content[0].image_url"));
        assert!(
            error.message.contains("image/heic") && error.message.contains("JPEG, PNG, WebP, GIF"),
            "{}",
            error.message
        );
        assert!(data_uri("data:video/mpeg;base64,AAAA", "f").is_err());
        for fine in ["image/jpeg", "image/jpg", "video/webm", "video/mp4", "application/octet-stream", ""] {
            assert!(data_uri(&format!("data:{fine};base64,AAAA"), "f").is_ok(), "{fine}");
        }
    }

    fn plan(json: serde_json::Value) -> Result<Plan, ApiError> {
        let mut request = serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
        request.as_object_mut().unwrap().extend(json.as_object().unwrap().clone());
        Plan::new(serde_json::from_value(request).unwrap(), false)
    }

    #[test]
    fn parameters_gitcap_cannot_honour_are_ignored_only_when_harmless() {
        for harmless in [
            serde_json::json!({"frequency_penalty": 0, "presence_penalty": 0.0, "best_of": 1, "echo": false}),
            serde_json::json!({"tools": [], "tool_choice": "none", "function_call": null, "logit_bias": {}}),
            serde_json::json!({"response_format": {"type": "text"}, "modalities": ["text"]}),
        ] {
            assert!(plan(harmless.clone()).is_ok(), "{harmless}");
        }
        let error = plan(serde_json::json!({"frequency_penalty": 0.5})).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("frequency_penalty"));
        assert!(error.message.contains("leave it 0"), "{}", error.message);
        let error = plan(serde_json::json!({"tool_choice": {"type": "function"}})).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("tool_choice"));
    }

    /// A string where a number is meant is a mistake, not a harmless value: "none" once passed
    /// for `frequency_penalty` because `tool_choice` may say "none".
    #[test]
    fn a_value_of_the_wrong_type_is_refused_naming_the_field() {
        for (name, value, expected) in [
            ("frequency_penalty", serde_json::json!("none"), "`frequency_penalty` must be a number, got a string"),
            ("presence_penalty", serde_json::json!("0"), "`presence_penalty` must be a number, got a string"),
            ("echo", serde_json::json!("false"), "`echo` must be a boolean, got a string"),
            ("tools", serde_json::json!("none"), "`tools` must be a list, got a string"),
            ("tool_choice", serde_json::json!(0), "`tool_choice` must be a string or an object, got a number"),
        ] {
            let error = plan(serde_json::json!({ name: value })).unwrap_err();
            assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST);
            assert_eq!(error.param.as_deref(), Some(name));
            assert_eq!(error.message, expected);
        }
    }
}
