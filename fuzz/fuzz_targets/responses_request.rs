//! Arbitrary bytes as the body of `POST /v1/responses`: `openai::responses_plan` (what the
//! handler calls: the JSON parse with its flattened extra fields and untagged input and content,
//! the parameters gitcap cannot honour, `text.format`, the input items' media and question,
//! `data:` URIs decoded from base64, `previous_response_id`), then `Plan::ask` (the core's `Ask`,
//! as the handler builds it), the core's validation of its question and options, and its media
//! prepared as the core prepares them. Nothing may panic; a refusal must be a 400 naming a
//! non-empty parameter (every JSON object refused names one) or, from the core, `INVALID_ARGUMENT`
//! naming a field; an accepted request keeps the plan's own promises.
#![no_main]

use gitcap_fuzz::{check_ask, expect_bad_request};
use gitcap_server::openai::responses::request::Source;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let mut plan = match gitcap_server::openai::responses_plan(body, false) {
        Ok(plan) => plan,
        Err(error) => return expect_bad_request(&error, body),
    };
    assert_eq!(plan.question, plan.question.trim());
    match plan.media {
        Source::Previous(ref id) => assert_eq!(Some(id), plan.previous_response_id.as_ref()),
        Source::Given { ref kept, .. } => assert_eq!(kept.is_some(), plan.store, "a copy kept without storing"),
    }
    let Source::Given { media, .. } = plan.take_media() else { return };
    let ask = plan.ask(media);
    assert_eq!(ask.model.is_none(), plan.model.is_empty());
    check_ask(ask);
});
