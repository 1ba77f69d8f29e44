//! A response streamed as the Responses API's semantic events (Server-Sent Events, each named by
//! its `type` and numbered by `sequence_number`): `response.created`, `response.in_progress`,
//! `response.output_item.added`, `response.content_part.added`, `response.output_text.delta`
//! per token, `response.output_text.done`, `response.content_part.done`,
//! `response.output_item.done`, then `response.completed` (or `response.incomplete` when
//! `max_output_tokens` cut it short). An error once the stream has begun is `response.failed`.
//! A client that closes the stream drops the request, which stops its generation.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::object::{OutputMessage, OutputText};
use super::{failure, Running, Step};
use crate::error::GitcapError;
use crate::service::request::Tally;

/// Where a stream's events go, numbered in order.
struct Events {
    tx: mpsc::UnboundedSender<Event>,
    sequence_number: u64,
}

impl Events {
    /// Sends the event `kind` with `fields`; false once the client has gone.
    fn send(&mut self, kind: &str, fields: Value) -> bool {
        let mut event = json!({"type": kind, "sequence_number": self.sequence_number});
        if let (Some(event), Value::Object(fields)) = (event.as_object_mut(), fields) {
            event.extend(fields);
        }
        self.sequence_number += 1;
        self.tx.send(Event::default().event(kind).data(event.to_string())).is_ok()
    }
}

fn value(item: impl Serialize) -> Value {
    serde_json::to_value(item).expect("a response's parts serialise")
}

/// The streamed answer of `running`.
pub(super) fn events(running: Running, tally: Tally) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        let mut tally = tally;
        let mut running = running;
        let mut events = Events { tx, sequence_number: 0 };
        let result = run(&mut running, &mut events).await;
        if let Err(error) = tally.outcome_of(result) {
            if !matches!(error, GitcapError::Cancelled) {
                running.response.status = "failed";
                running.response.error = Some(failure(error));
                events.send("response.failed", json!({"response": running.response}));
            }
        }
    });
    let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// Sends the events of `running` to its end; `Cancelled` when the client goes away.
async fn run(running: &mut Running, events: &mut Events) -> crate::error::Result<()> {
    let gone = || GitcapError::Cancelled;
    let item = |status, content| value(OutputMessage::new(running.item_id.clone(), status, content));
    let (item_id, empty_item) = (running.item_id.clone(), item("in_progress", vec![]));
    let at = json!({"item_id": item_id, "output_index": 0, "content_index": 0});
    let with = |fields: Value| {
        let mut all = at.clone();
        if let (Some(all), Value::Object(fields)) = (all.as_object_mut(), fields) {
            all.extend(fields);
        }
        all
    };
    let begun = json!({"response": running.response});
    let opened = events.send("response.created", begun.clone())
        && events.send("response.in_progress", begun)
        && events.send("response.output_item.added", json!({"output_index": 0, "item": empty_item}))
        && events.send("response.content_part.added", with(json!({"part": OutputText::new(String::new(), vec![])})));
    if !opened {
        return Err(gone());
    }
    let ending = loop {
        let step = tokio::select! {
            step = running.generation.step() => step?,
            () = events.tx.closed() => return Err(gone()),
        };
        match step {
            Step::Delta(delta, logprob) if delta.is_empty() && logprob.is_none() => {}
            Step::Delta(delta, logprob) => {
                let logprobs: Vec<_> = logprob.into_iter().collect();
                if !events.send("response.output_text.delta", with(json!({"delta": delta, "logprobs": logprobs}))) {
                    return Err(gone());
                }
            }
            Step::Done(ending) => break ending,
        }
    };
    let response = running.finish(ending);
    let message = &response.output[0];
    let part = &message.content[0];
    let closed = events.send("response.output_text.done", with(json!({"text": part.text, "logprobs": part.logprobs})))
        && events.send("response.content_part.done", with(json!({"part": part})))
        && events.send("response.output_item.done", json!({"output_index": 0, "item": message}));
    let last = if response.status == "incomplete" { "response.incomplete" } else { "response.completed" };
    if !(closed && events.send(last, json!({"response": response}))) {
        return Err(gone());
    }
    Ok(())
}
