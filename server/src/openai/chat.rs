//! `POST /v1/chat/completions`: the request's media are prepared as for gRPC, one request per
//! choice is queued on the model, and the answer is returned whole or streamed as Server-Sent
//! Events in OpenAI's chunk format. A client that closes the stream drops its requests, which
//! stops their generation at the next token.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::request::{service_tier, Plan};
use super::stop::{Released, StopMatcher};
use super::types::{
    AssistantMessage, ChatChunk, ChatCompletion, Choice, ChunkChoice, Delta, Logprobs, PromptTokensDetails,
    TokenLogprob, Usage,
};
use super::OpenAi;
use crate::engine::{EngineEvent, InferenceOutput};
use crate::error::GitcapError;
use crate::model::generation::FinishReason;
use crate::service::media::MediaInput;
use crate::service::request::{ended_without_an_answer, Started, Tally};
use crate::service::{Ask, Call};

/// One choice being generated.
struct Running {
    index: u32,
    started: Started,
    stops: StopMatcher,
    /// Text released so far.
    text: String,
    logprobs: Vec<TokenLogprob>,
}

/// How a choice ended.
struct Finished {
    reason: &'static str,
    usage: Usage,
}

/// Text released to the client, with its token's log-probabilities when asked for.
struct Piece {
    text: String,
    logprob: Option<TokenLogprob>,
}

/// Answers `plan`; `headers` may carry the caller's `traceparent`.
pub async fn completions(
    state: &OpenAi,
    mut plan: Plan,
    headers: &axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let mut tally = Tally::for_protocol("openai", "ChatCompletions", headers);
    let call = state.core.call(headers).map(|c| c.with_route_key_fallback(plan.user.as_deref()));
    // The media go to the core (no copy of them is kept); the plan keeps the rest.
    let media = std::mem::replace(&mut plan.media, MediaInput::Frames(Vec::new()));
    let result = match call {
        Ok(call) => start(state, &plan, media, &call, &mut tally).await,
        Err(e) => Err(e),
    };
    let running = tally.outcome_of(result).map_err(|e| plan.in_openai_terms(e))?;
    let version = running[0].started.model().version.clone();
    let response = answer(running, tally, &plan).await?;
    Ok(with_version(response, &version))
}

/// Which version of a model answered, on every OpenAI response: of a canary split, the one the
/// call's route key picked (the gRPC response's `version`).
pub const VERSION_HEADER: &str = "x-gitcap-model-version";

pub(super) fn with_version(mut response: Response, version: &str) -> Response {
    if let Ok(value) = axum::http::HeaderValue::from_str(version) {
        response.headers_mut().insert(VERSION_HEADER, value);
    }
    response
}

/// The whole answer, or its stream, for the choices running.
async fn answer(running: Vec<Running>, mut tally: Tally, plan: &Plan) -> Result<Response, ApiError> {
    let header = Header {
        id: format!("chatcmpl-{:032x}", rand::random::<u128>()),
        model: running[0].started.model().name.clone(),
        created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        service_tier: service_tier(plan.priority),
    };
    if plan.stream {
        return Ok(stream(running, tally, header, plan.logprobs, plan.include_usage));
    }
    let mut choices = Vec::with_capacity(running.len());
    let mut usage = Usage::default();
    for mut choice in running {
        // A client that goes away drops this whole future, and with it the request.
        let listening = std::future::pending();
        let finished = tally.outcome_of(drive(&mut choice, plan.logprobs, listening, |_| true).await)?;
        usage += finished.usage;
        choices.push(Choice {
            index: choice.index,
            message: AssistantMessage { role: "assistant", content: choice.text },
            finish_reason: finished.reason,
            logprobs: plan.logprobs.then_some(Logprobs { content: choice.logprobs }),
        });
    }
    let completion = ChatCompletion {
        id: header.id,
        object: "chat.completion",
        created: header.created,
        model: header.model,
        choices,
        usage,
        system_fingerprint: fingerprint(),
        service_tier: header.service_tier,
    };
    Ok(axum::Json(completion).into_response())
}

/// Resolves the model (of a canary split, the version the call's route key picks), prepares
/// the media and queues one request per choice, all within the call's deadline.
async fn start(
    state: &OpenAi,
    plan: &Plan,
    media: MediaInput,
    call: &Call,
    tally: &mut Tally,
) -> crate::error::Result<Vec<Running>> {
    let ask = Ask {
        model: super::request::model(&plan.model),
        media,
        question: plan.question.clone(),
        options: plan.options,
        priority: plan.priority,
    };
    let prepared = state.core.prepare(call, ask, tally).await?;
    let mut running = Vec::with_capacity(plan.choices as usize);
    for index in 0..plan.choices {
        let mut options = plan.options;
        // Sampled choices differ: each its own seed when one was given.
        options.seed = options.seed.map(|seed| seed.wrapping_add(u64::from(index)));
        running.push(Running {
            index,
            started: prepared.submit(options, tally)?,
            stops: StopMatcher::new(plan.stops.clone()),
            text: String::new(),
            logprobs: Vec::new(),
        });
    }
    Ok(running)
}

/// Runs one choice to its end, handing each piece of released text to `on_text`, which says
/// whether anyone still listens. When no one does — `on_text` says so, or `gone` resolves while
/// the request waits in the queue or between tokens — the request is dropped, which takes it out
/// of the queue or stops its generation.
async fn drive(
    choice: &mut Running,
    logprobs: bool,
    gone: impl std::future::Future<Output = ()>,
    mut on_text: impl FnMut(Piece) -> bool,
) -> crate::error::Result<Finished> {
    let mut generated = 0u32;
    let mut gone = std::pin::pin!(gone);
    loop {
        let event = tokio::select! {
            event = choice.started.next() => event.ok_or_else(ended_without_an_answer)?,
            () = &mut gone => return Err(GitcapError::Cancelled),
        };
        let (piece, end) = match event {
            EngineEvent::Admitted { .. } => continue,
            EngineEvent::Token(token) => {
                generated += 1;
                let logprob = logprobs.then(|| TokenLogprob::of(&token));
                if let Some(logprob) = &logprob {
                    choice.logprobs.push(logprob.clone());
                }
                match choice.stops.push(&token.text_delta) {
                    Released::Text(text) => (Piece { text, logprob }, None),
                    Released::Stopped(text) => {
                        let prompt = choice.started.prompt_tokens();
                        let usage = Usage {
                            prompt_tokens: prompt,
                            completion_tokens: generated,
                            total_tokens: prompt + generated,
                            prompt_tokens_details: PromptTokensDetails {
                                cached_tokens: choice.started.cached_tokens(),
                            },
                        };
                        (Piece { text, logprob }, Some(Finished { reason: "stop", usage }))
                    }
                }
            }
            EngineEvent::Done { output, .. } => {
                let text = choice.stops.finish();
                (
                    Piece { text, logprob: None },
                    Some(Finished { reason: finish_reason(&output), usage: usage(&output) }),
                )
            }
            EngineEvent::Failed(error) => return Err(error),
        };
        choice.text.push_str(&piece.text);
        if !on_text(piece) {
            return Err(GitcapError::Cancelled);
        }
        if let Some(finished) = end {
            return Ok(finished);
        }
    }
}

fn finish_reason(output: &InferenceOutput) -> &'static str {
    match output.finish_reason {
        FinishReason::Eos => "stop",
        FinishReason::Length => "length",
    }
}

/// Prompt tokens count the image tokens too: they are what the model reads.
fn usage(output: &InferenceOutput) -> Usage {
    let prompt = (output.prompt_tokens + output.image_tokens) as u32;
    let completion = output.token_ids.len() as u32;
    let cached_tokens = if output.image_cached { output.image_tokens as u32 } else { 0 };
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        prompt_tokens_details: PromptTokensDetails { cached_tokens },
    }
}

fn fingerprint() -> String {
    format!("gitcap-{}", env!("CARGO_PKG_VERSION"))
}

struct Header {
    id: String,
    model: String,
    created: u64,
    service_tier: &'static str,
}

impl Header {
    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Event {
        let chunk = ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            system_fingerprint: fingerprint(),
            service_tier: self.service_tier,
            usage,
        };
        Event::default().data(serde_json::to_string(&chunk).expect("a chunk serialises"))
    }
}

/// The streamed answer: for each choice a first chunk with the role, then its text as it is
/// released, then a chunk with its finish reason; the usage when asked; then `[DONE]`. An error
/// after the stream began is sent as an event with OpenAI's error object, and the stream ends.
fn stream(running: Vec<Running>, tally: Tally, header: Header, logprobs: bool, include_usage: bool) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        let mut tally = tally;
        let choices = running.into_iter().map(|mut choice| {
            let (tx, header) = (tx.clone(), &header);
            async move {
                let index = choice.index;
                let role = Delta { role: Some("assistant"), content: Some(String::new()) };
                let first = ChunkChoice { index, delta: role, finish_reason: None, logprobs: None };
                if tx.send(header.chunk(vec![first], None)).is_err() {
                    return Err(GitcapError::Cancelled);
                }
                let send = |piece: Piece| {
                    if piece.text.is_empty() && piece.logprob.is_none() {
                        return !tx.is_closed();
                    }
                    let delta = Delta { role: None, content: Some(piece.text) };
                    let logprobs = piece.logprob.map(|l| Logprobs { content: vec![l] });
                    let chunk = ChunkChoice { index, delta, finish_reason: None, logprobs };
                    tx.send(header.chunk(vec![chunk], None)).is_ok()
                };
                let finished = drive(&mut choice, logprobs, tx.closed(), send).await?;
                let last = ChunkChoice {
                    index,
                    delta: Delta::default(),
                    finish_reason: Some(finished.reason),
                    logprobs: None,
                };
                tx.send(header.chunk(vec![last], None)).map_err(|_| GitcapError::Cancelled)?;
                Ok(finished.usage)
            }
        });
        let results = futures::future::join_all(choices).await;
        let mut usage = Usage::default();
        for result in results {
            match tally.outcome_of(result) {
                Ok(choice_usage) => usage += choice_usage,
                Err(GitcapError::Cancelled) => return,
                Err(error) => {
                    let error = ApiError::from(error).json();
                    let _ = tx.send(Event::default().data(error.to_string()));
                    return;
                }
            }
        }
        if include_usage {
            let _ = tx.send(header.chunk(vec![], Some(usage)));
        }
        let _ = tx.send(Event::default().data("[DONE]"));
    });
    let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
