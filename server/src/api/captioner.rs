//! The `gitcap.v1.Captioner` service: converts messages, hands requests to a model's worker
//! and relays its events. One helper (`start` + `relay`) serves every RPC.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{self, RequestLimits};
use crate::engine::{EngineEvent, InferenceRequest, ModelWorker};
use crate::error::GitcapError;
use crate::proto::{self, captioner_server::Captioner};
use crate::registry::Models;

pub struct CaptionerService {
    models: Arc<Models>,
    limits: Arc<RequestLimits>,
}

impl CaptionerService {
    pub fn new(models: Arc<Models>, limits: RequestLimits) -> Self {
        Self {
            models,
            limits: Arc::new(limits),
        }
    }

    /// Validates and decodes a request (off the runtime) and queues it on its model.
    async fn start(&self, request: Request<proto::CaptionRequest>) -> Result<Started, Status> {
        let started = Instant::now();
        let timeout = grpc_timeout(&request);
        let request = request.into_inner();
        let worker = self.models.get(&request.model)?;
        let question = convert::question(&request, &self.limits)?;
        let options = convert::overrides(request.options.as_ref(), &self.limits)?;
        let limits = self.limits.clone();
        let frames = tokio::task::spawn_blocking(move || {
            convert::decode_media(request.media.as_ref(), &limits.media)
        })
        .await
        .map_err(|e| Status::internal(format!("media decoding task failed: {e}")))??;
        let remaining = timeout.map(|t| t.saturating_sub(started.elapsed()));
        let events = worker.submit(
            InferenceRequest {
                frames,
                question,
                options,
            },
            remaining,
        )?;
        Ok(Started {
            worker,
            events,
            started,
        })
    }
}

struct Started {
    worker: ModelWorker,
    events: mpsc::UnboundedReceiver<EngineEvent>,
    started: Instant,
}

impl Started {
    fn response(
        &self,
        output: crate::engine::InferenceOutput,
        queue_ms: f64,
    ) -> proto::CaptionResponse {
        let total_ms = self.started.elapsed().as_secs_f64() * 1e3;
        convert::response(
            output,
            queue_ms,
            total_ms,
            &self.worker.info.name,
            &self.worker.info.version,
        )
    }
}

/// Parses the `grpc-timeout` header ("<digits><H|M|S|m|u|n>").
fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::CaptionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Captioner for CaptionerService {
    async fn caption(
        &self,
        request: Request<proto::CaptionRequest>,
    ) -> Result<Response<proto::CaptionResponse>, Status> {
        let mut started = self.start(request).await?;
        while let Some(event) = started.events.recv().await {
            match event {
                EngineEvent::Token(_) => {}
                EngineEvent::Done { output, queue_ms } => {
                    return Ok(Response::new(started.response(output, queue_ms)))
                }
                EngineEvent::Failed(e) => return Err(e.into()),
            }
        }
        Err(GitcapError::Internal("the model thread ended without an answer".into()).into())
    }

    type CaptionStreamStream = EventStream;

    async fn caption_stream(
        &self,
        request: Request<proto::CaptionRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let started = self.start(request).await?;
        Ok(Response::new(relay(started)))
    }
}

/// Forwards a request's engine events to the client as `CaptionEvent`s. When the client goes
/// away the send fails, the engine's receiver is dropped, and the model thread stops the
/// request at its next token.
fn relay(mut started: Started) -> EventStream {
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(async move {
        use proto::caption_event::Event;
        while let Some(event) = started.events.recv().await {
            let (message, last) = match event {
                EngineEvent::Token(token) => (Ok(Event::Token(convert::token_event(token))), false),
                EngineEvent::Done { output, queue_ms } => {
                    (Ok(Event::Done(started.response(output, queue_ms))), true)
                }
                EngineEvent::Failed(e) => (Err(Status::from(e)), true),
            };
            let message = message.map(|event| proto::CaptionEvent { event: Some(event) });
            if tx.send(message).await.is_err() || last {
                break;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
