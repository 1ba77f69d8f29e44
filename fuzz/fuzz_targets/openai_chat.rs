//! Arbitrary bytes as the body of `POST /v1/chat/completions`: the JSON parse (serde, with the
//! flattened extra fields and untagged content), `openai::request::Plan` (options from OpenAI's
//! parameters and gitcap's own, the parameters gitcap cannot honour, the conversation's media
//! and question, `data:` URIs decoded from base64), then the media as the API prepares them.
//! Nothing may panic; a refusal must be a 4xx naming the parameter at fault when it names one;
//! an accepted request must keep the plan's own bounds (the options' ranges and the server's
//! limits are the core's validation, fuzzed by request_validation).
#![no_main]

use gitcap_fuzz::{expect_bad_input, media_harness};
use gitcap_server::openai::request::MAX_CHOICES;
use gitcap_server::service::media::MediaInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let plan = match gitcap_server::openai::plan(body, false) {
        Ok(plan) => plan,
        Err(error) => {
            assert!(error.status.is_client_error(), "{error:?}");
            assert!(!error.message.is_empty(), "{error:?}");
            assert!(error.param.as_ref().is_none_or(|p| !p.is_empty()), "{error:?}");
            return;
        }
    };
    assert!((1..=MAX_CHOICES).contains(&plan.choices), "{} choices", plan.choices);
    assert!(plan.stops.len() <= 4, "{} stop sequences", plan.stops.len());
    assert_eq!(plan.question, plan.question.trim());
    match plan.media {
        // URLs are off here; video files have their own target (video_container).
        MediaInput::Url { .. } => panic!("a URL accepted with URLs off"),
        MediaInput::Video { .. } => {}
        media => {
            let harness = media_harness();
            if let Err(error) = harness.runtime.block_on(harness.media.prepare(media, &harness.model)) {
                expect_bad_input(error);
            }
        }
    }
});
