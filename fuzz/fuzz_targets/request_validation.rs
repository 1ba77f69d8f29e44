//! Arbitrary bytes as a request message off the wire (prost decoding of the generated
//! `gitcap.v1` types), then the checks the Captioner service runs before a request reaches a
//! model: `api::convert` (generation options, media) and `service::validation` (question, labels,
//! options against the checkpoint's defaults and the limits) and, for uploads,
//! `service::upload::FrameChunks`. Nothing may panic; rejected input must be a typed error that
//! maps to `INVALID_ARGUMENT`; accepted options must be within the limits and, applied to the
//! default generation config, must pass or fail its validation with a typed error.
#![no_main]

use gitcap_fuzz::{expect_bad_input, media_harness, request_limits};
use gitcap_server::api::convert;
use gitcap_server::service::upload::FrameChunks;
use gitcap_server::engine::Frame;
use gitcap_server::model::generation::{GenerationConfig, Search};
use gitcap_server::proto;
use gitcap_server::service::validation::{self, RequestLimits};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Frames a GIT video checkpoint takes.
const MODEL_FRAMES: usize = 6;

fn check_question(text: &str, limits: &RequestLimits) {
    match validation::question(text, limits) {
        Ok(Some(q)) => {
            assert!(!q.is_empty() && q == q.trim());
            assert!(q.chars().count() <= limits.max_question_chars);
        }
        Ok(None) => assert!(text.trim().is_empty()),
        Err(err) => expect_bad_input(err),
    }
}

fn check_options(options: Option<&proto::GenerationOptions>, limits: &RequestLimits) {
    let model = &media_harness().model;
    let checked = convert::options(options)
        .and_then(|options| validation::generation(&model.generation, &options, limits).map(|_| options));
    match checked {
        Ok(options) => {
            assert!(options.max_new_tokens.is_none_or(|n| (1..=limits.max_new_tokens).contains(&(n as usize))));
            assert!(options.num_beams.is_none_or(|n| (1..=limits.max_beams).contains(&(n as usize))));
            assert!(options.temperature.is_none_or(|t| t > 0.0 && t <= 100.0));
            assert!(options.top_p.is_none_or(|p| p > 0.0 && p <= 1.0));
            assert!(options.repetition_penalty.is_none_or(|p| p > 0.0 && p <= 100.0));
            assert!(options.length_penalty.is_none_or(|p| p.is_finite() && p.abs() <= 100.0));
            let config = GenerationConfig::default().with_options(&options);
            // Options the core validated, over the defaults, always set up a search.
            Search::new(&config, &[101]).expect("validated options set up a search");
            let _ = config.max_total_len(limits.max_question_chars);
        }
        Err(err) => expect_bad_input(err),
    }
}

/// Media as the API prepares it: decoded within the budget, only the frames a 6-frame model uses,
/// each preprocessed. Video files and URLs have their own target (video_container).
fn check_media(media: Option<&proto::Media>) {
    use proto::media::Kind;
    if matches!(media.and_then(|m| m.kind.as_ref()), Some(Kind::Video(_) | Kind::Url(_))) {
        return;
    }
    let harness = media_harness();
    let prepared = convert::media(media.cloned())
        .and_then(|media| harness.runtime.block_on(harness.media.prepare(media, &harness.model)));
    match prepared {
        Ok(prepared) => {
            assert!(!prepared.frames.is_empty(), "media prepared into no frame");
            assert!(prepared.timestamps_s.is_empty());
            for frame in &prepared.frames {
                let Frame::Pixels(frame) = frame else { panic!("a prepared frame that is not pixels") };
                assert_eq!(frame.tensor().size(), [3, 224, 224]);
            }
        }
        Err(err) => expect_bad_input(err),
    }
}

fn check_labels(labels: &[String], limits: &RequestLimits) {
    match validation::labels(labels, limits) {
        Ok(accepted) => {
            assert_eq!(accepted.len(), labels.len());
            assert!(accepted.iter().all(|l| !l.is_empty() && l.chars().count() <= limits.max_question_chars));
        }
        Err(err) => expect_bad_input(err),
    }
}

fn check_upload(messages: &[proto::UploadMessage], limits: &RequestLimits) {
    use proto::upload_message::Message as Upload;
    let Some(Some(Upload::Start(start))) = messages.first().map(|m| &m.message) else { return };
    check_question(&start.question, limits);
    check_options(start.options.as_ref(), limits);
    let declared = start.frame_count as usize;
    let mut upload = match FrameChunks::new(limits, declared, MODEL_FRAMES) {
        Ok(upload) => upload,
        Err(err) => return expect_bad_input(err),
    };
    for message in &messages[1..] {
        let Some(Upload::Chunk(chunk)) = &message.message else { return };
        if let Err(err) = upload.push(convert::frame_chunk(chunk.clone())) {
            return expect_bad_input(err);
        }
    }
    if let Err(err) = upload.finish(declared) {
        expect_bad_input(err);
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = request_limits();
    let Some((&kind, body)) = data.split_first() else { return };
    match kind % 5 {
        0 => {
            let Ok(request) = proto::CaptionRequest::decode(body) else { return };
            check_question(&request.question, &limits);
            check_options(request.options.as_ref(), &limits);
            check_media(request.media.as_ref());
        }
        1 => {
            let Ok(request) = proto::ScoreLabelsRequest::decode(body) else { return };
            check_labels(&request.labels, &limits);
            check_question(&request.prompt, &limits);
            check_media(request.media.as_ref());
        }
        2 => {
            // An upload stream: length-delimited messages, as gRPC frames them one by one.
            let mut rest = body;
            let mut messages = Vec::new();
            while !rest.is_empty() {
                let Ok(message) = proto::UploadMessage::decode_length_delimited(&mut rest) else { break };
                messages.push(message);
            }
            check_upload(&messages, &limits);
        }
        3 => {
            use proto::live_message::Message as Live;
            let Ok(message) = proto::LiveMessage::decode(body) else { return };
            if let Some(Live::Start(start)) = message.message {
                check_question(&start.question, &limits);
                check_options(start.options.as_ref(), &limits);
            }
        }
        _ => {
            let Ok(options) = proto::GenerationOptions::decode(body) else { return };
            check_options(Some(&options), &limits);
        }
    }
});
