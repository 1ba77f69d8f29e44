//! The `gitcap.v1.Captioner` service: converts messages, prepares their media
//! ([`crate::service::media`]), hands requests to a model's worker and relays its events. One helper
//! (`submit` + `finish` / `relay`) serves every RPC; live and dense captioning and the uploads
//! have their own modules. Each RPC's outcome, queue time, token timings and generated tokens go
//! to crate::metrics.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

use super::convert;
use crate::engine::EngineEvent;
use crate::error::GitcapError;
use crate::proto::{self, captioner_server::Captioner};
use crate::service::dense::DenseSession;
use crate::service::live::LiveSession;
use crate::service::media::MediaInput;
use crate::service::request::{ended_without_an_answer, resolve, Started, Tally};
use crate::service::{upload, validation};
use crate::service::{Admitted, Ask, Call, Core};

pub struct CaptionerService {
    core: Arc<Core>,
}

impl CaptionerService {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Reads what the core needs of a call from its metadata (deadline, route key).
    fn call<T>(&self, request: &Request<T>) -> Result<Call, Status> {
        Ok(self.core.call(request.metadata().as_ref())?)
    }

    /// Validates a request, prepares its media (within its deadline) and queues it on its model.
    async fn start(&self, request: Request<proto::CaptionRequest>, tally: &mut Tally) -> Result<Started, Status> {
        let call = self.call(&request)?;
        let request = request.into_inner();
        let ask = Ask {
            model: convert::model(&request.model).map(str::to_string),
            media: convert::media(request.media)?,
            question: request.question,
            options: convert::options(request.options.as_ref())?,
            priority: convert::priority(request.priority)?,
        };
        Ok(self.core.start(&call, ask, tally).await?)
    }

    /// An upload's or stream's model, question and options, read from its start message.
    fn admit(
        &self,
        call: &Call,
        model: &str,
        question: &str,
        options: Option<&proto::GenerationOptions>,
        tally: &mut Tally,
    ) -> Result<Admitted, Status> {
        Ok(self.core.admit(call, convert::model(model), question, convert::options(options)?, tally)?)
    }

    /// Receives an upload: the start message, then frames, each encoded by the vision tower
    /// as soon as it is complete; queues the request when the stream ends.
    async fn start_upload(
        &self,
        request: Request<Streaming<proto::UploadMessage>>,
        tally: &mut Tally,
    ) -> Result<Started, Status> {
        use proto::upload_message::Message;
        let call = self.call(&request)?;
        let mut stream = request.into_inner();
        let Some(Message::Start(start)) = stream.message().await?.and_then(|m| m.message) else {
            return Err(GitcapError::invalid("start", "the first message of an upload must be `start`").into());
        };
        let admitted = self.admit(&call, &start.model, &start.question, start.options.as_ref(), tally)?;
        let priority = convert::priority(start.priority)?;
        let chunks = after_start(stream, |m| match m.message {
            Some(Message::Chunk(chunk)) => Some(convert::frame_chunk(chunk)),
            _ => None,
        });
        let frames = upload::receive_frames(&self.core, &admitted, start.frame_count as usize, chunks).await?;
        // Time to first token counts from here: the client's upload time is not the server's.
        let arrived = Instant::now();
        Ok(admitted.submit(frames, priority, &call, arrived, tally)?)
    }

    /// Receives a video file in chunks, then samples and decodes it like `Media.video`.
    async fn start_video_upload(
        &self,
        request: Request<Streaming<proto::VideoUploadMessage>>,
        tally: &mut Tally,
    ) -> Result<Started, Status> {
        use proto::video_upload_message::Message;
        let call = self.call(&request)?;
        let mut stream = request.into_inner();
        let Some(Message::Start(start)) = stream.message().await?.and_then(|m| m.message) else {
            return Err(GitcapError::invalid("start", "the first message of a video upload must be `start`").into());
        };
        let admitted = self.admit(&call, &start.model, &start.question, start.options.as_ref(), tally)?;
        let priority = convert::priority(start.priority)?;
        let pieces = after_start(stream, |m| match m.message {
            Some(Message::Chunk(piece)) => Some(piece),
            _ => None,
        });
        let file = upload::receive_video(pieces, &self.core.media, start.size_bytes).await?;
        // Time to first token counts from here: the client's upload time is not the server's.
        let arrived = Instant::now();
        let sampling = start.sampling.map(convert::sampling);
        let media = self.core.media.video(&file, sampling.as_ref(), "upload", admitted.model());
        let media = call.deadline.run(media, "the media was being decoded").await?;
        let started = admitted.submit(media.frames, priority, &call, arrived, tally)?;
        Ok(started.with_timestamps(media.timestamps_s))
    }

    /// Reads a live stream's start message and checks its window.
    async fn start_live(
        &self,
        request: Request<Streaming<proto::LiveMessage>>,
        tally: &mut Tally,
    ) -> Result<(LiveSession, Streaming<proto::LiveMessage>), Status> {
        use proto::live_message::Message;
        let call = self.call(&request)?;
        let mut stream = request.into_inner();
        let Some(Message::Start(start)) = stream.message().await?.and_then(|m| m.message) else {
            return Err(GitcapError::invalid("start", "the first message of a live stream must be `start`").into());
        };
        let admitted = self.admit(&call, &start.model, &start.question, start.options.as_ref(), tally)?;
        let live = LiveSession::new(&self.core, admitted, start.window, start.stride, tally.trace())?;
        Ok((live, stream))
    }

    async fn score(
        &self,
        request: Request<proto::ScoreLabelsRequest>,
        tally: &mut Tally,
    ) -> Result<proto::ScoreLabelsResponse, Status> {
        let call = self.call(&request)?;
        let request = request.into_inner();
        let worker = resolve(&self.core.registry, convert::model(&request.model), &call, tally)?;
        let labels = validation::labels(&request.labels, &self.core.limits)?;
        let prompt = validation::question(&request.prompt, &self.core.limits)?;
        let frames = self.core.media.prepare(convert::media(request.media)?, &worker.info);
        let frames = call.deadline.run(frames, "the media was being decoded");
        let frames = frames.await?.frames;
        let scores = worker.score_labels(frames, prompt, labels);
        let mut scores = call.deadline.run(scores, "the labels were being scored").await?;
        scores.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
        Ok(proto::ScoreLabelsResponse {
            scores: scores
                .into_iter()
                .map(|s| proto::LabelScore {
                    mean_logprob: s.logprob / s.tokens as f64,
                    label: s.label,
                    logprob: s.logprob,
                    tokens: s.tokens as u32,
                })
                .collect(),
            model: worker.info.name.clone(),
            version: worker.info.version.clone(),
        })
    }
}

fn log_done(reply: &proto::CaptionResponse) {
    let timings = reply.timings.unwrap_or_default();
    tracing::info!(
        model = reply.model,
        tokens = reply.token_ids.len(),
        queue_ms = timings.queue_ms,
        total_ms = timings.total_ms,
        "answered"
    );
}

/// The whole answer of a started request, as the gRPC response (failures logged).
async fn answer(started: Started) -> Result<proto::CaptionResponse, Status> {
    started.finish().await.map(convert::response).map_err(Status::from).inspect_err(log_failure)
}

fn log_failure(status: &Status) {
    tracing::info!(code = ?status.code(), message = status.message(), "failed");
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::CaptionEvent, Status>> + Send>>;

type LiveStream = Pin<Box<dyn Stream<Item = Result<proto::LiveEvent, Status>> + Send>>;

type DenseStream = Pin<Box<dyn Stream<Item = Result<proto::DenseCaptionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Captioner for CaptionerService {
    async fn caption(
        &self,
        request: Request<proto::CaptionRequest>,
    ) -> Result<Response<proto::CaptionResponse>, Status> {
        let mut tally = Tally::new("Caption", request.metadata());
        let result = async { answer(self.start(request, &mut tally).await?).await }.await;
        let reply = tally.outcome(result)?;
        log_done(&reply);
        Ok(Response::new(reply))
    }

    type CaptionStreamStream = EventStream;

    async fn caption_stream(&self, request: Request<proto::CaptionRequest>) -> Result<Response<EventStream>, Status> {
        let mut tally = Tally::new("CaptionStream", request.metadata());
        let started = self.start(request, &mut tally).await;
        let started = tally.outcome(started)?;
        Ok(Response::new(relay(started, tally)))
    }

    async fn upload_frames(
        &self,
        request: Request<Streaming<proto::UploadMessage>>,
    ) -> Result<Response<proto::CaptionResponse>, Status> {
        let mut tally = Tally::new("UploadFrames", request.metadata());
        let result = async { answer(self.start_upload(request, &mut tally).await?).await }.await;
        let reply = tally.outcome(result)?;
        log_done(&reply);
        Ok(Response::new(reply))
    }

    type UploadFramesStreamStream = EventStream;

    async fn upload_frames_stream(
        &self,
        request: Request<Streaming<proto::UploadMessage>>,
    ) -> Result<Response<EventStream>, Status> {
        let mut tally = Tally::new("UploadFramesStream", request.metadata());
        let started = self.start_upload(request, &mut tally).await;
        let started = tally.outcome(started)?;
        Ok(Response::new(relay(started, tally)))
    }

    type LiveCaptionStream = LiveStream;

    async fn live_caption(
        &self,
        request: Request<Streaming<proto::LiveMessage>>,
    ) -> Result<Response<LiveStream>, Status> {
        let mut tally = Tally::new("LiveCaption", request.metadata());
        let session = self.start_live(request, &mut tally).await;
        let (live, stream) = tally.outcome(session)?;
        let chunks = after_start(stream, |m| match m.message {
            Some(proto::live_message::Message::Chunk(chunk)) => Some(convert::frame_chunk(chunk)),
            _ => None,
        });
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let result = live.run(chunks, &tx).await;
            if let Err(error) = tally.outcome_of(result) {
                let _ = tx.send(Err(error)).await;
            }
        });
        let events = ReceiverStream::new(rx).map(|caption| Ok(convert::live_event(caption?)));
        Ok(Response::new(Box::pin(events)))
    }

    async fn score_labels(
        &self,
        request: Request<proto::ScoreLabelsRequest>,
    ) -> Result<Response<proto::ScoreLabelsResponse>, Status> {
        let mut tally = Tally::new("ScoreLabels", request.metadata());
        let result = self.score(request, &mut tally).await;
        Ok(Response::new(tally.outcome(result)?))
    }

    async fn upload_video(
        &self,
        request: Request<Streaming<proto::VideoUploadMessage>>,
    ) -> Result<Response<proto::CaptionResponse>, Status> {
        let mut tally = Tally::new("UploadVideo", request.metadata());
        let result = async { answer(self.start_video_upload(request, &mut tally).await?).await }.await;
        let reply = tally.outcome(result)?;
        log_done(&reply);
        Ok(Response::new(reply))
    }

    type UploadVideoStreamStream = EventStream;

    async fn upload_video_stream(
        &self,
        request: Request<Streaming<proto::VideoUploadMessage>>,
    ) -> Result<Response<EventStream>, Status> {
        let mut tally = Tally::new("UploadVideoStream", request.metadata());
        let started = self.start_video_upload(request, &mut tally).await;
        let started = tally.outcome(started)?;
        Ok(Response::new(relay(started, tally)))
    }

    type DenseCaptionStream = DenseStream;

    async fn dense_caption(
        &self,
        request: Request<proto::DenseCaptionRequest>,
    ) -> Result<Response<DenseStream>, Status> {
        let mut tally = Tally::new("DenseCaption", request.metadata());
        let call = self.call(&request);
        let mut request = request.into_inner();
        let media = request.media.take();
        let session = (|| -> Result<(DenseSession, MediaInput), Status> {
            let call = call?;
            let admitted =
                self.admit(&call, &request.model, &request.question, request.options.as_ref(), &mut tally)?;
            let priority = convert::priority(request.priority)?;
            let (window_s, stride_s) = (request.window_s, request.stride_s);
            let dense = DenseSession::new(&self.core, admitted, priority, window_s, stride_s, &call, tally.trace())?;
            let media = match media {
                None => {
                    return Err(
                        GitcapError::invalid("media", "a video file is needed: set media.video or media.url").into()
                    )
                }
                media => convert::media(media)?,
            };
            Ok((dense, media))
        })();
        let (session, media) = tally.outcome(session)?;
        let send_timeout = session.send_timeout();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(
            async move {
                let result = session.run(media, &tx).await;
                if let Err(error) = tally.outcome_of(result) {
                    // Bounded too: a client that reads nothing must not keep this task.
                    let _ = tokio::time::timeout(send_timeout, tx.send(Err(error))).await;
                }
            }
            .instrument(tracing::Span::current()),
        );
        let events = ReceiverStream::new(rx).map(|caption| Ok(convert::dense_event(caption?)));
        Ok(Response::new(Box::pin(events)))
    }
}

/// The messages of a client stream after its start message, as `chunk` reads them; a second
/// start (or an empty message) is refused by name, and the stream's own errors pass on.
fn after_start<M, C>(
    stream: Streaming<M>,
    chunk: impl Fn(M) -> Option<C>,
) -> impl futures::Stream<Item = crate::error::Result<C>> + Unpin {
    stream.map(move |message| {
        chunk(message?).ok_or_else(|| GitcapError::invalid("start", "only the first message may be `start`"))
    })
}

/// Forwards a request's engine events to the client as `CaptionEvent`s. When the client goes
/// away the send fails, the engine's receiver is dropped, and the model thread stops the
/// request at its next token. The tally gets the stream's final code.
fn relay(mut started: Started, mut tally: Tally) -> EventStream {
    let (tx, rx) = mpsc::channel(32);
    let relaying = async move {
        use proto::caption_event::Event;
        let code = loop {
            // Watch the client too: beam search sends nothing until it ends.
            let event = tokio::select! {
                event = started.next() => event,
                _ = tx.closed() => break Code::Cancelled,
            };
            let event = event.unwrap_or_else(|| EngineEvent::Failed(ended_without_an_answer()));
            let (message, code) = match event {
                EngineEvent::Admitted { .. } => continue,
                EngineEvent::Token(token) => (Ok(Event::Token(convert::token_event(token))), None),
                EngineEvent::Done { output, queue_ms } => {
                    let reply = convert::response(started.answer(output, queue_ms));
                    log_done(&reply);
                    (Ok(Event::Done(reply)), Some(Code::Ok))
                }
                EngineEvent::Failed(e) => {
                    let status = Status::from(e);
                    log_failure(&status);
                    let code = status.code();
                    (Err(status), Some(code))
                }
            };
            let message = message.map(|event| proto::CaptionEvent { event: Some(event) });
            if tx.send(message).await.is_err() {
                break Code::Cancelled;
            }
            if let Some(code) = code {
                break code;
            }
        };
        tally.code = code;
        drop(tally);
    };
    tokio::spawn(relaying.instrument(tracing::Span::current()));
    Box::pin(ReceiverStream::new(rx))
}
