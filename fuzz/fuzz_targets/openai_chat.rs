//! Arbitrary bytes as the body of `POST /v1/chat/completions`: the JSON parse (serde, with the
//! flattened extra fields and untagged content), `openai::request::Plan` (options from OpenAI's
//! parameters and gitcap's own, the parameters gitcap cannot honour, the conversation's media
//! and question, `data:` URIs decoded from base64), then the media as the API prepares them.
//! Nothing may panic; a refusal must be a 400 naming a non-empty parameter (always, when the body
//! is a JSON object); an accepted request must keep the plan's own bounds (the options' ranges and
//! the server's limits are the core's validation, fuzzed by request_validation).
#![no_main]

use gitcap_fuzz::{check_media, expect_bad_request};
use gitcap_server::openai::request::MAX_CHOICES;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let plan = match gitcap_server::openai::plan(body, false) {
        Ok(plan) => plan,
        Err(error) => return expect_bad_request(&error, body),
    };
    assert!((1..=MAX_CHOICES).contains(&plan.choices), "{} choices", plan.choices);
    assert!(plan.stops.len() <= 4, "{} stop sequences", plan.stops.len());
    assert_eq!(plan.question, plan.question.trim());
    check_media(plan.media);
});
