//! gRPC messages ↔ the core's types; what they carry is checked by the core
//! (crate::service::validation).

use crate::engine::{Priority, TokenEvent};
use crate::error::{GitcapError, Result};
use crate::model::generation::{FinishReason, GenerationOptions};
use crate::proto;
use crate::service::dense::DenseCaption;
use crate::service::live::LiveCaption;
use crate::service::media::{MediaInput, VideoSampling};
use crate::service::request::Answer;
use crate::service::upload::FrameChunk;

/// A request's model: a name, alias or `name@version`; empty (proto3's unset) = the default.
pub fn model(name: &str) -> Option<&str> {
    Some(name).filter(|name| !name.is_empty())
}

/// A request's priority (unspecified = interactive).
pub fn priority(value: i32) -> Result<Priority> {
    Priority::from_wire(value).map_err(|message| GitcapError::invalid("priority", message))
}

/// A request's media as the core takes it; `None` when the message has none.
pub fn media(media: Option<proto::Media>) -> Result<MediaInput> {
    use proto::media::Kind;
    let media = media.unwrap_or_default();
    let sampling = media.sampling.map(sampling);
    let Some(kind) = media.kind else {
        return Err(GitcapError::invalid(
            "media",
            "no media: set media.image, media.frames, media.raw, media.video or media.url",
        ));
    };
    if sampling.is_some() && !matches!(kind, Kind::Video(_) | Kind::Url(_)) {
        return Err(GitcapError::invalid("media.sampling", "applies to video files only (media.video, media.url)"));
    }
    Ok(match kind {
        Kind::Image(bytes) => MediaInput::Image(bytes),
        Kind::Frames(list) => MediaInput::Frames(list.frames),
        Kind::Raw(raw) => MediaInput::Raw { width: raw.width, height: raw.height, rgb: raw.rgb },
        Kind::Video(bytes) => MediaInput::Video { bytes, sampling },
        Kind::Url(url) => MediaInput::Url { url, sampling },
    })
}

/// Which frames of a video file a request samples.
pub fn sampling(sampling: proto::VideoSampling) -> VideoSampling {
    let proto::VideoSampling { start_s, end_s, timestamps_s } = sampling;
    VideoSampling { start_s, end_s, timestamps_s }
}

/// A request's generation options as the message carries them (the core checks them for the
/// model: crate::service::validation).
pub fn options(message: Option<&proto::GenerationOptions>) -> Result<GenerationOptions> {
    match message {
        None => Ok(GenerationOptions::default()),
        Some(message) => GenerationOptions::try_from(message)
            .map_err(|e| GitcapError::invalid(format!("options.{}", e.field), e.message)),
    }
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

/// The gRPC response for a request's whole answer.
pub fn response(answer: Answer) -> proto::CaptionResponse {
    let Answer { output, queue_ms, total_ms, model, timestamps_s } = answer;
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
            cached_image_tokens: if output.image_cached { output.image_tokens as u32 } else { 0 },
        }),
        timings: Some(proto::Timings {
            queue_ms,
            vision_ms: output.timings.vision_ms,
            prefill_ms: output.timings.prefill_ms,
            decode_ms: output.timings.decode_ms,
            total_ms,
        }),
        model: model.name.clone(),
        version: model.version.clone(),
        frame_timestamps_s: timestamps_s,
    }
}

/// A piece of an uploaded or live frame.
pub fn frame_chunk(chunk: proto::FrameChunk) -> FrameChunk {
    let proto::FrameChunk { data, end_of_frame } = chunk;
    FrameChunk { data, end_of_frame }
}

pub fn live_event(caption: LiveCaption) -> proto::LiveEvent {
    let LiveCaption { first_frame, last_frame, answer } = caption;
    proto::LiveEvent { first_frame, last_frame, caption: Some(response(answer)) }
}

pub fn dense_event(caption: DenseCaption) -> proto::DenseCaptionEvent {
    let DenseCaption { start_s, end_s, answer } = caption;
    proto::DenseCaptionEvent { start_s, end_s, caption: Some(response(answer)) }
}
