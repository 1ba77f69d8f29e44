//! `POST /v1/responses` (OpenAI's Responses API), `GET` and `DELETE /v1/responses/{id}`: a
//! request's media and question (request) are run as one request on the model, and the answer
//! is returned as a Response object (object) whole, or streamed as the Responses API's semantic
//! events (stream). Responses are stored (store) unless `store: false`, so a follow-up naming
//! `previous_response_id` asks about the same media, which the feature cache then serves.

mod object;
pub mod request;
pub mod store;
mod stream;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::chat::with_version;
use super::error::ApiError;
use super::request::{in_openai_terms, service_tier};
use super::types::TokenLogprob;
use super::OpenAi;
use crate::engine::{EngineEvent, InferenceOutput};
use crate::error::GitcapError;
use crate::model::generation::FinishReason;
use crate::service::media::MediaInput;
use crate::service::request::{ended_without_an_answer, Started, Tally};
use object::{IncompleteDetails, OutputMessage, OutputText, ResponseObject, Usage};
use request::{Plan, Source};
pub use store::{ResponseStore, StoreLimits};

/// Answers `plan`: the whole Response object, or its events; `headers` may carry the caller's
/// deadline, route key and `traceparent`.
pub async fn create(api: &OpenAi, store: &Arc<ResponseStore>, mut plan: Plan, headers: &HeaderMap) -> Response {
    // The media to ask about, and the copy kept with the response when it is stored; taken out of
    // the plan for the core (`plan.ask`), the plan's rest is what the response echoes.
    let (media, kept) = match plan.take_media() {
        Source::Given { media, kept } => (media, kept),
        Source::Previous(id) => match store.get(&id) {
            Some(previous) => match copy(previous.media.clone()).await {
                Ok(media) => (media, Some(previous.media.clone())),
                Err(error) => return ApiError::from(error).into_response(),
            },
            None => return store::not_found(&id, Some("previous_response_id")),
        },
    };
    let mut tally = Tally::for_protocol("openai", "Responses", headers);
    let call = api.core.call(headers).map(|c| c.with_route_key_fallback(plan.echo.user.as_deref()));
    let result = match call {
        Ok(call) => api.core.start(&call, plan.ask(media), &mut tally).await,
        Err(e) => Err(e),
    };
    let started = match tally.outcome_of(result) {
        Ok(started) => started,
        Err(error) => return in_openai_terms(error, Some("max_output_tokens")).into_response(),
    };
    let version = started.model().version.clone();
    let begun = ResponseObject::begun(
        format!("resp_{:032x}", rand::random::<u128>()),
        started.model().name.clone(),
        &plan.echo,
        service_tier(plan.priority),
        plan.store,
        plan.previous_response_id.clone(),
    );
    let running = Running {
        generation: Generation::new(started, plan.logprobs),
        response: begun,
        item_id: format!("msg_{:032x}", rand::random::<u128>()),
        store: kept.filter(|_| plan.store).map(|media| (store.clone(), media)),
    };
    let response = if plan.stream {
        stream::events(running, tally)
    } else {
        match whole(running, &mut tally).await {
            Ok(response) => axum::Json(response).into_response(),
            Err(error) => in_openai_terms(error, Some("max_output_tokens")).into_response(),
        }
    };
    with_version(response, &version)
}

/// `GET /v1/responses/{id}`.
pub fn get(store: &ResponseStore, id: &str) -> Response {
    match store.get(id) {
        Some(stored) => axum::Json(&stored.response).into_response(),
        None => store::not_found(id, None),
    }
}

/// `DELETE /v1/responses/{id}`.
pub fn delete(store: &ResponseStore, id: &str) -> Response {
    if store.delete(id) {
        axum::Json(serde_json::json!({"id": id, "object": "response", "deleted": true})).into_response()
    } else {
        store::not_found(id, None)
    }
}

/// A response being generated, and where it is kept once done.
struct Running {
    generation: Generation,
    /// The Response object so far.
    response: ResponseObject,
    /// The id of its output message.
    item_id: String,
    /// Where it is kept once done, with its media: `None` with `store: false`.
    store: Option<(Arc<ResponseStore>, Arc<MediaInput>)>,
}

impl Running {
    /// The Response object once the answer is whole (stored, when asked to be).
    fn finish(&mut self, ending: Ending) -> ResponseObject {
        let text = OutputText::new(self.generation.text.clone(), self.generation.logprobs.clone());
        let response = &mut self.response;
        response.status = ending.status;
        response.completed_at = Some(now());
        response.incomplete_details = ending.incomplete.then_some(IncompleteDetails { reason: "max_output_tokens" });
        response.output = vec![OutputMessage::new(self.item_id.clone(), ending.status, vec![text])];
        response.usage = Some(ending.usage);
        if let Some((store, media)) = &self.store {
            store.put(response.clone(), media.clone());
        }
        response.clone()
    }
}

/// The whole answer.
async fn whole(mut running: Running, tally: &mut Tally) -> crate::error::Result<ResponseObject> {
    // A client that goes away drops this whole future, and with it the request.
    loop {
        match tally.outcome_of(running.generation.step().await)? {
            Step::Delta(..) => {}
            Step::Done(ending) => return Ok(running.finish(ending)),
        }
    }
}

/// One request's tokens as they come.
struct Generation {
    started: Started,
    /// Whether log-probabilities were asked for.
    with_logprobs: bool,
    text: String,
    logprobs: Vec<TokenLogprob>,
}

/// What a step of a generation brought.
enum Step {
    /// Text (and its token's log-probabilities, when asked for).
    Delta(String, Option<TokenLogprob>),
    Done(Ending),
}

/// How a generation ended.
struct Ending {
    status: &'static str,
    incomplete: bool,
    usage: Usage,
}

impl Generation {
    fn new(started: Started, with_logprobs: bool) -> Self {
        Self { started, with_logprobs, text: String::new(), logprobs: Vec::new() }
    }

    async fn step(&mut self) -> crate::error::Result<Step> {
        loop {
            match self.started.next().await.ok_or_else(ended_without_an_answer)? {
                EngineEvent::Admitted { .. } => {}
                EngineEvent::Token(token) => {
                    let logprob = self.with_logprobs.then(|| TokenLogprob::of(&token));
                    self.logprobs.extend(logprob.clone());
                    self.text.push_str(&token.text_delta);
                    return Ok(Step::Delta(token.text_delta, logprob));
                }
                EngineEvent::Done { output, .. } => return Ok(Step::Done(ending(&output))),
                EngineEvent::Failed(error) => return Err(error),
            }
        }
    }
}

/// Input tokens count the image tokens too: they are what the model reads. They are cached when
/// they came from the feature cache.
fn ending(output: &InferenceOutput) -> Ending {
    let input = (output.prompt_tokens + output.image_tokens) as u32;
    let cached = if output.image_cached { output.image_tokens as u32 } else { 0 };
    let usage = Usage::new(input, cached, output.token_ids.len() as u32);
    match output.finish_reason {
        FinishReason::Eos => Ending { status: "completed", incomplete: false, usage },
        FinishReason::Length => Ending { status: "incomplete", incomplete: true, usage },
    }
}

/// A copy of stored media for the core to take, made off the async threads (a video may be tens
/// of megabytes).
async fn copy(media: Arc<MediaInput>) -> crate::error::Result<MediaInput> {
    let copied = tokio::task::spawn_blocking(move || (*media).clone());
    copied.await.map_err(|e| GitcapError::Internal(format!("copying stored media: {e}")))
}

/// Seconds since the epoch, as OpenAI's timestamps are.
fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The error object of a response that failed.
fn failure(error: GitcapError) -> object::ResponseError {
    let api = ApiError::from(error);
    let code = match api.status.as_u16() {
        429 => "rate_limit_exceeded",
        400 => "invalid_prompt",
        _ => "server_error",
    };
    object::ResponseError { code, message: api.message }
}
