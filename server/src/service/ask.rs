//! A caption or answer as every door asks for it, and the one way it is started: the model
//! resolved (of a canary split, the version the call's route key picks), the question and
//! options validated for that model, the media prepared within the call's deadline and the
//! media budget, and the request queued. A door reads its wire format into an [`Ask`] and
//! writes the [`Started`] request's events or [`super::request::Answer`] in its own format.

use std::sync::Arc;
use std::time::Instant;

use super::media::{MediaInput, MediaService, PreparedMedia};
use super::request::{resolve, submit, Started, Tally};
use super::validation::{self, RequestLimits};
use super::Call;
use crate::engine::{Frame, InferenceRequest, ModelInfo, ModelWorker, Priority};
use crate::error::Result;
use crate::model::generation::GenerationOptions;
use crate::registry::Registry;

/// What every door shares: the models, the request limits, media preparation.
pub struct Core {
    pub registry: Arc<Registry>,
    pub limits: Arc<RequestLimits>,
    pub media: Arc<MediaService>,
}

/// A caption (no question) or an answer about media, as the core takes it from any door.
pub struct Ask {
    /// A model name, alias or `name@version`; `None` = the default model.
    pub model: Option<String>,
    pub media: MediaInput,
    /// Empty for a caption.
    pub question: String,
    pub options: GenerationOptions,
    pub priority: Priority,
}

/// A request's model, with its question and options validated for that model; its media come
/// separately (uploads, live streams and dense captions bring their own).
pub struct Admitted {
    pub worker: ModelWorker,
    pub question: Option<String>,
    pub options: GenerationOptions,
}

/// An admitted request whose media are ready: it can be queued once, or several times sharing
/// its frames (the choices of one chat request).
pub struct Prepared {
    pub admitted: Admitted,
    pub media: PreparedMedia,
    pub priority: Priority,
    call: Call,
}

impl Core {
    pub fn new(registry: Arc<Registry>, limits: RequestLimits, media: Arc<MediaService>) -> Self {
        Self { registry, limits: Arc::new(limits), media }
    }

    /// Reads what the core needs of a call from its headers (deadline, route key).
    pub fn call(&self, headers: &http::HeaderMap) -> Result<Call> {
        Call::read(headers, self.limits.max_timeout)
    }

    /// The worker serving `model` (`None`: the default) for `call` (noted in its tally), with `question` and `options`
    /// checked for it ([`validation`]: one place for every door).
    pub fn admit(
        &self,
        call: &Call,
        model: Option<&str>,
        question: &str,
        options: GenerationOptions,
        tally: &mut Tally,
    ) -> Result<Admitted> {
        let worker = resolve(&self.registry, model, call, tally)?;
        let question = validation::question(question, &self.limits)?;
        validation::generation(&worker.info.generation, &options, &self.limits)?;
        Ok(Admitted { worker, question, options })
    }

    /// Admits `ask` and prepares its media within the call's deadline.
    pub async fn prepare(&self, call: &Call, ask: Ask, tally: &mut Tally) -> Result<Prepared> {
        let Ask { model, media, question, options, priority } = ask;
        let admitted = self.admit(call, model.as_deref(), &question, options, tally)?;
        let media = self.media.prepare(media, &admitted.worker.info);
        let media = call.deadline.run(media, "the media was being decoded").await?;
        Ok(Prepared { admitted, media, priority, call: call.clone() })
    }

    /// Prepares `ask` and queues it once.
    pub async fn start(&self, call: &Call, ask: Ask, tally: &mut Tally) -> Result<Started> {
        let prepared = self.prepare(call, ask, tally).await?;
        let options = prepared.admitted.options;
        prepared.submit(options, tally)
    }
}

impl Admitted {
    /// Queues the request on `frames` for `call`; `arrived` is when all of it had arrived (an
    /// upload's last byte), from which its time to first token counts.
    pub fn submit(
        &self,
        frames: Vec<Frame>,
        priority: Priority,
        call: &Call,
        arrived: Instant,
        tally: &Tally,
    ) -> Result<Started> {
        let request = InferenceRequest { frames, question: self.question.clone(), options: self.options, priority };
        submit(self.worker.clone(), request, call.deadline, call.started, arrived, tally.trace())
    }

    pub fn model(&self) -> &Arc<ModelInfo> {
        &self.worker.info
    }
}

impl Prepared {
    /// Queues the request with `options` (the admitted ones, or a variant of them such as another
    /// seed for another choice), sharing the prepared frames.
    pub fn submit(&self, options: GenerationOptions, tally: &Tally) -> Result<Started> {
        let frames = self.media.frames.iter().map(Frame::share).collect();
        let request =
            InferenceRequest { frames, question: self.admitted.question.clone(), options, priority: self.priority };
        let call = &self.call;
        let started =
            submit(self.admitted.worker.clone(), request, call.deadline, call.started, call.started, tally.trace())?;
        Ok(started.with_timestamps(self.media.timestamps_s.clone()))
    }

    pub fn model(&self) -> &Arc<ModelInfo> {
        self.admitted.model()
    }
}
