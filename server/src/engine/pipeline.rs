//! One loaded checkpoint and the whole inference path for a request: frames → pixels →
//! vision tower → image tokens → generation → text. The engine thread and the one-shot CLI
//! both run requests through this.

use std::path::Path;
use std::time::Instant;

use image::RgbImage;
use tch::{Device, Tensor};

use super::feature_cache::ContentKey;
use crate::error::{GitcapError, Result};
use crate::media::{sample_frame_indices, PreprocessorConfig};
use crate::model::generation::{self, FinishReason, GenerationConfig, GenerationOptions, StepControl, TokenStep};
use crate::model::tokenizer::{GitTokenizer, TextStream};
use crate::model::{GitForCausalLM, Precision};

pub struct Pipeline {
    pub model: GitForCausalLM,
    pub tokenizer: GitTokenizer,
    pub preprocessor: PreprocessorConfig,
    /// The checkpoint's `generation_config.json` defaults.
    pub generation: GenerationConfig,
    /// Bytes of weights the model holds.
    pub weights_bytes: usize,
}

/// One frame of a request: its preprocessed pixels, or the vision tower's output for it when it
/// was encoded ahead, as frames arrived.
pub enum Frame {
    Pixels(PreparedFrame),
    Encoded(EncodedFrame),
}

impl Frame {
    /// The same frame, sharing its pixels or features (requests that see the same frames).
    pub fn share(&self) -> Frame {
        match self {
            Frame::Pixels(p) => Frame::Pixels(PreparedFrame { key: p.key, pixels: p.pixels.shallow_clone() }),
            Frame::Encoded(e) => Frame::Encoded(e.clone()),
        }
    }

    /// A decoded image as the model's input (see [`PreparedFrame::new`]).
    pub fn from_image(image: &RgbImage, preprocessor: &PreprocessorConfig) -> Result<Self> {
        Ok(Frame::Pixels(PreparedFrame::new(image, preprocessor)?))
    }
}

/// A frame ready for the vision tower: the image processor's output [3, H, W] (f32, CPU) and
/// the content key of those pixels. Made off the model thread, as soon as a frame is decoded,
/// so that only the model's input size is kept, not the decoded image.
pub struct PreparedFrame {
    pub key: ContentKey,
    pub pixels: Tensor,
}

impl PreparedFrame {
    /// Resizes, crops and normalises `image` as the checkpoint's image processor does.
    pub fn new(image: &RgbImage, preprocessor: &PreprocessorConfig) -> Result<Self> {
        let pixels = preprocessor.preprocess(image)?;
        let key = ContentKey::of_pixels(&pixels);
        let (height, width) = (pixels.height as i64, pixels.width as i64);
        Ok(Self { key, pixels: Tensor::from_slice(&pixels.data).view([3, height, width]) })
    }
}

/// A frame's vision features [1, tokens_per_image, vision hidden] and the content key of its
/// pixels (see [`ContentKey::of_frame`]).
pub struct EncodedFrame {
    pub key: ContentKey,
    pub features: Tensor,
}

impl Clone for EncodedFrame {
    /// Shares the features.
    fn clone(&self) -> Self {
        Self { key: self.key, features: self.features.shallow_clone() }
    }
}

/// A request as the model sees it: frames in order, an optional question, and the
/// caller's generation options (over the checkpoint's `generation_config.json`).
pub struct InferenceRequest {
    pub frames: Vec<Frame>,
    pub question: Option<String>,
    pub options: GenerationOptions,
}

/// A generated token with the text it adds (possibly empty, see [`TextStream`]).
#[derive(Debug, Clone)]
pub struct TokenEvent {
    pub token_id: i64,
    pub text_delta: String,
    pub logprob: f32,
    pub special: bool,
    /// The likeliest tokens at this step (id, text, log-probability), when asked for.
    pub top_logprobs: Vec<(i64, String, f32)>,
}

#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Preprocessing and the vision tower (for frames not encoded ahead).
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
    /// Loads a checkpoint directory at `precision` (a [`tch::Kind`] for one dtype throughout, or
    /// [`Precision::Fast`]).
    pub fn load(dir: &Path, precision: impl Into<Precision>, device: Device) -> Result<Self> {
        let (model, weights_bytes) = precision.into().load(dir, device)?;
        let c = &model.config;
        let generation = GenerationConfig::for_checkpoint(dir, c.bos_token_id, c.eos_token_id, c.pad_token_id)?;
        let tokenizer = GitTokenizer::from_dir(dir)?;
        let preprocessor = PreprocessorConfig::from_file(&dir.join("preprocessor_config.json"))?;
        Ok(Self { model, tokenizer, preprocessor, generation, weights_bytes })
    }

    /// Indices of the frames the model will look at, out of `total`: a video checkpoint takes
    /// up to its frame count, sampled evenly across longer videos; an image checkpoint one.
    pub fn frames_to_use(&self, total: usize) -> Result<Vec<usize>> {
        if total == 0 {
            return Err(GitcapError::invalid("media", "no image or frame was given"));
        }
        Ok(sample_frame_indices(total, self.model.config.max_frames() as usize))
    }

    /// Preprocessed pixels of one image [3, H, W] (f32, CPU).
    pub fn pixel_values(&self, image: &RgbImage) -> Result<Tensor> {
        Ok(PreparedFrame::new(image, &self.preprocessor)?.pixels)
    }

    /// The vision tower's output for one frame: [1, tokens_per_image, vision hidden].
    pub fn encode_frame(&self, frame: &PreparedFrame) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        self.model.encode_frames(&frame.pixels.unsqueeze(0))
    }

    /// The decoder's image tokens for the frames the model uses, and how many that is.
    fn image_tokens(&self, frames: &[Frame]) -> Result<(Tensor, usize)> {
        let used = self.frames_to_use(frames.len())?;
        let mut features: Vec<Option<Tensor>> = Vec::with_capacity(used.len());
        let mut pending = Vec::new();
        for &i in &used {
            match &frames[i] {
                Frame::Encoded(e) => features.push(Some(e.features.shallow_clone())),
                Frame::Pixels(frame) => {
                    pending.push((features.len(), frame.pixels.shallow_clone()));
                    features.push(None);
                }
            }
        }
        if !pending.is_empty() {
            // Frames still to encode go through the vision tower as one batch.
            let pixels = Tensor::stack(&pending.iter().map(|(_, p)| p.shallow_clone()).collect::<Vec<_>>(), 0);
            let encoded = self.model.encode_frames(&pixels)?;
            for (row, (slot, _)) in pending.iter().enumerate() {
                features[*slot] = Some(encoded.narrow(0, row as i64, 1));
            }
        }
        let features: Vec<Tensor> = features.into_iter().map(|f| f.expect("every frame is encoded")).collect();
        Ok((self.model.image_tokens(&Tensor::cat(&features, 0))?, used.len()))
    }

    /// Prompt ids: [CLS] (the BOS id), then the question's tokens without [SEP].
    pub fn prompt_ids(&self, question: Option<&str>) -> Result<Vec<i64>> {
        let bos = self.generation.bos_token_id.unwrap_or(self.model.config.bos_token_id);
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
        on_token: &mut dyn FnMut(Option<TokenEvent>) -> StepControl,
    ) -> Result<InferenceOutput> {
        let _guard = tch::no_grad_guard();
        let started = Instant::now();
        let (image_tokens, frames_used) = self.image_tokens(&request.frames)?;
        let prompt = self.prompt_ids(request.question.as_deref())?;
        let encoded = Instant::now();
        let mut stream = TextStream::new(&self.tokenizer);
        let mut stream_error = None;
        let config = self.generation.with_options(&request.options);
        let generated =
            generation::generate(&self.model, &image_tokens, &prompt, &config, &mut |step: Option<TokenStep>| {
                let Some(step) = step else { return on_token(None) };
                let text_delta = stream.push(step.token_id, step.last).unwrap_or_else(|e| {
                    stream_error = Some(e);
                    String::new()
                });
                let special = self.tokenizer.is_special(step.token_id);
                let top_logprobs = self.tokenizer.top_logprobs(&step.top);
                on_token(Some(TokenEvent {
                    token_id: step.token_id,
                    text_delta,
                    logprob: step.logprob,
                    special,
                    top_logprobs,
                }))
            })?;
        if let Some(e) = stream_error {
            return Err(e);
        }
        let text = self.tokenizer.decode(&generated.token_ids)?;
        let done = Instant::now();
        Ok(InferenceOutput {
            prompt_tokens: prompt.len(),
            image_tokens: image_tokens.size()[1] as usize,
            frames_used,
            token_ids: generated.token_ids,
            text,
            finish_reason: generated.finish_reason,
            timings: Timings { vision_ms: ms(started, encoded), decode_ms: ms(encoded, done) },
        })
    }
}

fn ms(from: Instant, to: Instant) -> f64 {
    (to - from).as_secs_f64() * 1e3
}

/// A candidate label's score: log p(label tokens, EOS | media, prompt).
#[derive(Debug, Clone)]
pub struct LabelScore {
    pub label: String,
    pub logprob: f64,
    pub tokens: usize,
}

impl Pipeline {
    /// Scores each label as the continuation of `[CLS] prompt` after the frames, teacher-forced
    /// in one batch: the sum of the log-probabilities of its tokens and of EOS.
    pub fn score_labels(&self, frames: &[Frame], prompt: Option<&str>, labels: &[String]) -> Result<Vec<LabelScore>> {
        let _guard = tch::no_grad_guard();
        let (image_tokens, _) = self.image_tokens(frames)?;
        let prompt = self.prompt_ids(prompt)?;
        let eos = self.generation.eos_token_ids().first().copied().unwrap_or(self.model.config.eos_token_id);
        let mut targets = Vec::with_capacity(labels.len());
        for (i, label) in labels.iter().enumerate() {
            let mut ids = self.tokenizer.encode(label)?;
            if ids.is_empty() {
                return Err(GitcapError::invalid(format!("labels[{i}]"), "the label has no tokens"));
            }
            ids.push(eos);
            targets.push(ids);
        }
        let longest = targets.iter().map(Vec::len).max().unwrap_or(0);
        let width = prompt.len() + longest - 1;
        let pad = self.model.config.pad_token_id;
        let rows: Vec<i64> = targets
            .iter()
            .flat_map(|t| {
                let mut row = prompt.clone();
                row.extend(&t[..t.len() - 1]);
                row.resize(width, pad);
                row
            })
            .collect();
        let input = Tensor::from_slice(&rows).view([labels.len() as i64, width as i64]);
        let mut cache = self.model.prefill_image(&image_tokens, labels.len() as i64, width as i64)?;
        // Padding sits after each row's real tokens, so causal attention never lets it matter.
        let log_probs = self.model.decode(&input, &mut cache).log_softmax(-1, tch::Kind::Float).to_device(Device::Cpu);
        Ok(labels
            .iter()
            .zip(&targets)
            .enumerate()
            .map(|(row, (label, target))| {
                let logprob = target
                    .iter()
                    .enumerate()
                    .map(|(j, &token)| log_probs.double_value(&[row as i64, (prompt.len() - 1 + j) as i64, token]))
                    .sum();
                LabelScore { label: label.clone(), logprob, tokens: target.len() }
            })
            .collect())
    }
}
