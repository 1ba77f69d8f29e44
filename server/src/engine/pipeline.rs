//! One loaded checkpoint and the whole inference path for a request: frames → pixels →
//! vision tower → image tokens → generation → text. The engine thread and the one-shot CLI
//! both run requests through this.

use std::path::Path;
use std::time::Instant;

use image::RgbImage;
use tch::{Device, Kind, Tensor};

use crate::error::{GitcapError, Result};
use crate::media::{sample_frame_indices, PreprocessorConfig};
use crate::model::generation::{
    self, FinishReason, GenerationConfig, GenerationOverrides, StepControl, TokenStep,
};
use crate::model::tokenizer::{GitTokenizer, TextStream};
use crate::model::GitForCausalLM;

pub struct Pipeline {
    pub model: GitForCausalLM,
    pub tokenizer: GitTokenizer,
    pub preprocessor: PreprocessorConfig,
    /// The checkpoint's `generation_config.json` defaults.
    pub generation: GenerationConfig,
}

/// A request as the model sees it: decoded frames in order, an optional question, and the
/// caller's generation options (over the checkpoint's `generation_config.json`).
pub struct InferenceRequest {
    pub frames: Vec<RgbImage>,
    pub question: Option<String>,
    pub options: GenerationOverrides,
}

/// A generated token with the text it adds (possibly empty, see [`TextStream`]).
#[derive(Debug, Clone)]
pub struct TokenEvent {
    pub token_id: i64,
    pub text_delta: String,
    pub logprob: f32,
    pub special: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub vision_ms: f64,
    pub decode_ms: f64,
}

#[derive(Debug, Clone)]
pub struct InferenceOutput {
    /// Generated ids after the prompt (EOS included when produced).
    pub token_ids: Vec<i64>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub image_tokens: usize,
    pub frames_used: usize,
    pub timings: Timings,
}

impl Pipeline {
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let model = GitForCausalLM::from_dir(dir, kind, device)?;
        let c = &model.config;
        let generation =
            GenerationConfig::for_checkpoint(dir, c.bos_token_id, c.eos_token_id, c.pad_token_id)?;
        let tokenizer = GitTokenizer::from_dir(dir)?;
        let preprocessor = PreprocessorConfig::from_file(&dir.join("preprocessor_config.json"))?;
        Ok(Self {
            model,
            tokenizer,
            preprocessor,
            generation,
        })
    }

    /// The frames the model will look at: a video checkpoint takes up to its frame count,
    /// sampled evenly across longer videos; an image checkpoint takes the first frame.
    pub fn select_frames<'a>(&self, frames: &'a [RgbImage]) -> Result<Vec<&'a RgbImage>> {
        if frames.is_empty() {
            return Err(GitcapError::invalid("media", "no image or frame was given"));
        }
        let wanted = self.model.config.max_frames() as usize;
        Ok(sample_frame_indices(frames.len(), wanted)
            .into_iter()
            .map(|i| &frames[i])
            .collect())
    }

    /// Preprocessed pixels [frames, 3, H, W] (f32, CPU).
    pub fn pixel_values(&self, frames: &[&RgbImage]) -> Result<Tensor> {
        let per_frame: Vec<Tensor> = frames
            .iter()
            .map(|frame| {
                let pixels = self.preprocessor.preprocess(frame)?;
                Ok(Tensor::from_slice(&pixels.data).view([
                    3,
                    pixels.height as i64,
                    pixels.width as i64,
                ]))
            })
            .collect::<Result<_>>()?;
        Ok(Tensor::stack(&per_frame, 0))
    }

    /// Prompt ids: [CLS] (the BOS id), then the question's tokens without [SEP].
    pub fn prompt_ids(&self, question: Option<&str>) -> Result<Vec<i64>> {
        let bos = self
            .generation
            .bos_token_id
            .unwrap_or(self.model.config.bos_token_id);
        let mut ids = vec![bos];
        if let Some(question) = question.filter(|q| !q.trim().is_empty()) {
            ids.extend(self.tokenizer.encode(question)?);
        }
        Ok(ids)
    }

    /// Runs a whole request, calling `on_token` as tokens are chosen; `on_token` returning
    /// [`StepControl::Stop`] ends generation with [`GitcapError::Cancelled`].
    pub fn run(
        &self,
        request: &InferenceRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> StepControl,
    ) -> Result<InferenceOutput> {
        let _guard = tch::no_grad_guard();
        let started = Instant::now();
        let frames = self.select_frames(&request.frames)?;
        let pixel_values = self.pixel_values(&frames)?;
        let preprocessed = Instant::now();
        let image_tokens = self
            .model
            .image_tokens(&self.model.encode_frames(&pixel_values)?)?;
        let prompt = self.prompt_ids(request.question.as_deref())?;
        let encoded = Instant::now();
        let mut stream = TextStream::new(&self.tokenizer);
        let mut stream_error = None;
        let config = request.options.apply(&self.generation);
        let generated = generation::generate(
            &self.model,
            &image_tokens,
            &prompt,
            &config,
            &mut |step: TokenStep| {
                let text_delta = stream.push(step.token_id, step.last).unwrap_or_else(|e| {
                    stream_error = Some(e);
                    String::new()
                });
                let special = self.tokenizer.is_special(step.token_id);
                on_token(TokenEvent {
                    token_id: step.token_id,
                    text_delta,
                    logprob: step.logprob,
                    special,
                })
            },
        )?;
        if let Some(e) = stream_error {
            return Err(e);
        }
        let text = self.tokenizer.decode(&generated.token_ids)?;
        let done = Instant::now();
        Ok(InferenceOutput {
            prompt_tokens: prompt.len(),
            image_tokens: image_tokens.size()[1] as usize,
            frames_used: frames.len(),
            token_ids: generated.token_ids,
            text,
            finish_reason: generated.finish_reason,
            timings: Timings {
                preprocess_ms: ms(started, preprocessed),
                vision_ms: ms(preprocessed, encoded),
                decode_ms: ms(encoded, done),
            },
        })
    }
}

fn ms(from: Instant, to: Instant) -> f64 {
    (to - from).as_secs_f64() * 1e3
}
