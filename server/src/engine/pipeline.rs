//! One loaded checkpoint and what the engine computes with it: which frames a request uses,
//! prompt ids, vision features, image tokens, and label scores. Generation itself runs in the
//! model's thread (`executor`), the one inference path.

use std::path::Path;

use image::RgbImage;
use tch::{Device, Tensor};

use super::frames::{Frame, PreparedFrame};
use super::messages::LabelScore;
use crate::error::{GitcapError, Result};
use crate::media::{sample_frame_indices, PreprocessorConfig};
use crate::model::generation::GenerationConfig;
use crate::model::tokenizer::GitTokenizer;
use crate::model::weights::Storage;
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

impl Pipeline {
    /// Loads a checkpoint directory at `precision` (a [`tch::Kind`] for one dtype throughout, or
    /// [`Precision::Fast`]).
    pub fn load(dir: &Path, precision: impl Into<Precision>, device: Device) -> Result<Self> {
        Self::load_stored(dir, precision, device, Storage::Mapped)
    }

    /// [`Self::load`] with the choice of mapping the weights or copying them.
    pub fn load_stored(dir: &Path, precision: impl Into<Precision>, device: Device, storage: Storage) -> Result<Self> {
        let (model, weights_bytes) = precision.into().load(dir, device, storage)?;
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
        Ok(PreparedFrame::new(image, &self.preprocessor)?.tensor())
    }

    /// The vision tower's output for one frame: [1, tokens_per_image, vision hidden].
    pub fn encode_frame(&self, frame: &PreparedFrame) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        self.model.encode_frames(&frame.tensor().unsqueeze(0))
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
                    pending.push((features.len(), frame.tensor()));
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
}

/// What scoring labels for some frames needs once: the frames' image tokens and the prompt.
pub struct LabelContext {
    image_tokens: Tensor,
    prompt: Vec<i64>,
}

impl Pipeline {
    /// The image tokens of `frames` and the prompt, for [`Self::score_label_chunk`].
    pub fn label_context(&self, frames: &[Frame], prompt: Option<&str>) -> Result<LabelContext> {
        let _guard = tch::no_grad_guard();
        let (image_tokens, _) = self.image_tokens(frames)?;
        Ok(LabelContext { image_tokens, prompt: self.prompt_ids(prompt)? })
    }

    /// Scores each of `labels` (the request's labels from index `first` on) as the continuation
    /// of `[CLS] prompt` after the frames, teacher-forced in one batch: the sum of the
    /// log-probabilities of its tokens and of EOS.
    pub fn score_label_chunk(
        &self,
        context: &LabelContext,
        labels: &[String],
        first: usize,
    ) -> Result<Vec<LabelScore>> {
        let _guard = tch::no_grad_guard();
        let prompt = &context.prompt;
        let eos = self.generation.eos_token_ids().first().copied().unwrap_or(self.model.config.eos_token_id);
        let mut targets = Vec::with_capacity(labels.len());
        for (i, label) in labels.iter().enumerate() {
            let mut ids = self.tokenizer.encode(label)?;
            if ids.is_empty() {
                return Err(GitcapError::invalid(format!("labels[{}]", first + i), "the label has no tokens"));
            }
            // The prompt and the label (EOS excluded) are fed together: they must fit the model.
            let positions = self.model.config.max_position_embeddings;
            let fed = (prompt.len() + ids.len()) as i64;
            if fed > positions {
                return Err(GitcapError::invalid(
                    format!("labels[{}]", first + i),
                    format!(
                        "the prompt and this label take {fed} tokens; this model reads at most {positions}                          (shorten the label or the prompt)"
                    ),
                ));
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
        let mut cache = self.model.prefill_image(&context.image_tokens, labels.len() as i64, width as i64)?;
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
