//! Arbitrary bytes as one line of a Batch API input file, for a job of either endpoint (the first
//! byte picks `/v1/chat/completions` or `/v1/responses`, the rest is the line):
//! `openai::batch::line::read` (the envelope: `custom_id`, `method`, `url`, `body`) and
//! `line::plan` (the body read as its endpoint reads requests, not streamed, at batch priority),
//! what the runner calls, then the core's `Ask` and its validation and media as the core does
//! them. Nothing may panic; a line that holds no request names its error code and the line's
//! field at fault; a body refused is a 400 naming a non-empty parameter; an accepted line's
//! request never streams, runs at batch priority, and a Responses one keeps no copy of its media.
#![no_main]

use gitcap_fuzz::{check_ask, check_media, check_question_and_options, expect_bad_request};
use gitcap_server::engine::Priority;
use gitcap_server::openai::batch::line::{self, Request};
use gitcap_server::openai::responses::request::Source;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Some((&selector, line)) = bytes.split_first() else { return };
    let endpoint = if selector & 1 == 0 { "/v1/chat/completions" } else { "/v1/responses" };
    let body = match line::read(line, endpoint) {
        Ok(body) => body,
        Err(error) => {
            assert!(!error.code.is_empty() && !error.field.is_empty() && !error.message.is_empty(), "{error:?}");
            return;
        }
    };
    let request: serde_json::Value = serde_json::from_slice(line).expect("an accepted line is JSON");
    assert!(request["custom_id"].is_string() && request["method"] == "POST" && request["url"] == endpoint);
    let plan = match line::plan(endpoint, &body, false) {
        Ok(plan) => plan,
        Err(error) => return expect_bad_request(&error, &body),
    };
    match plan {
        Request::Chat(plan) => {
            assert!(!plan.stream && plan.priority == Priority::Batch, "{plan:?}");
            if check_question_and_options(&plan.question, &plan.options) {
                check_media(plan.media);
            }
        }
        Request::Responses(mut plan) => {
            assert!(!plan.stream && plan.priority == Priority::Batch && !plan.store, "{plan:?}");
            if let Source::Given { media, kept } = plan.take_media() {
                assert!(kept.is_none(), "a batch line kept a copy of its media");
                check_ask(plan.ask(media));
            }
        }
    }
});
