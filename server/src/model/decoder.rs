//! The text decoder (`git.embeddings`, `git.encoder`): BERT-style post-LN layers over
//! [image tokens ; text tokens], where image tokens attend only to image tokens and text
//! attends to every image token and causally to text.
//!
//! Image tokens never see text, so their keys and values are computed once per request
//! ([`GitEncoder::prefill_image`]) and kept, shared, beside each sequence's text keys and values
//! in a [`KvCache`]; each decoding step then runs only the new text tokens.

use tch::{Device, Kind, Tensor};

use super::config::GitConfig;
use super::layers::{attention, attention_image_then_text, merge_heads, split_heads, Activation, LayerNorm, Linear};
use super::step_attention;
use super::weights::Weights;
use crate::error::Result;

/// `GitEmbeddings`: word + absolute position embeddings, then LayerNorm.
pub struct GitEmbeddings {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    layer_norm: LayerNorm,
}

impl GitEmbeddings {
    pub fn load(w: &Weights, prefix: &str, c: &GitConfig) -> Result<Self> {
        Ok(Self {
            word_embeddings: w.get(&format!("{prefix}.word_embeddings.weight"), &[c.vocab_size, c.hidden_size])?,
            position_embeddings: w
                .get(&format!("{prefix}.position_embeddings.weight"), &[c.max_position_embeddings, c.hidden_size])?,
            layer_norm: LayerNorm::load(w, &format!("{prefix}.LayerNorm"), c.hidden_size, c.layer_norm_eps)?,
        })
    }

    /// `input_ids` [batch, seq] at text positions `start..start + seq`.
    pub fn forward(&self, input_ids: &Tensor, start: i64) -> Tensor {
        let seq = input_ids.size()[1];
        let words = self.word_embeddings.index_select(0, &input_ids.flatten(0, 1)).view([input_ids.size()[0], seq, -1]);
        let positions = self.position_embeddings.narrow(0, start, seq);
        self.layer_norm.forward(&(words + positions))
    }

    /// One token per row, `input_ids` [rows, 1], each at its own text position.
    pub fn forward_rows(&self, input_ids: &Tensor, positions: &[i64]) -> Tensor {
        let rows = input_ids.size()[0];
        let words = self.word_embeddings.index_select(0, &input_ids.view([-1])).view([rows, 1, -1]);
        let index = Tensor::from_slice(positions).to_device(self.position_embeddings.device());
        let positions = self.position_embeddings.index_select(0, &index).unsqueeze(1);
        self.layer_norm.forward(&(words + positions))
    }

    pub fn word_embeddings(&self) -> &Tensor {
        &self.word_embeddings
    }
}

/// The dtype of the text keys and values, and of image ones that are not kept in bf16
/// ([`prefix_kind`]): f32 whatever the model computes in. Attention reads the cache once per
/// step, and on a CPU an f32 query over f32 keys is several times faster than libtorch's bf16
/// kernel for one query and exact where bf16 rounds the scores (see
/// [`attention_image_then_text`]); the projections that make the keys and values still run
/// in the model's dtype.
pub const CACHE_KIND: Kind = Kind::Float;

/// Keys and values of every decoder layer for a batch of sequences on one image: the image
/// tokens' [`ImagePrefix`], shared (one copy for every sequence and every request on the same
/// frames, never written after the image prefill), and each sequence's own text
/// [batch, heads, text_capacity, head_dim] per layer, filled as tokens are fed.
pub struct KvCache {
    image: ImagePrefix,
    text_keys: Vec<Tensor>,
    text_values: Vec<Tensor>,
    text_len: i64,
}

impl KvCache {
    /// A cache for `batch` sequences on `image`, with room for `text_capacity` text tokens
    /// each; the image part is shared, not copied.
    pub fn from_prefix(image: &ImagePrefix, batch: i64, text_capacity: i64) -> Self {
        let text = || {
            image
                .keys
                .iter()
                .map(|k| {
                    let size = k.size();
                    Tensor::zeros([batch, size[1], text_capacity, size[3]], (CACHE_KIND, k.device()))
                })
                .collect()
        };
        Self { image: image.share(), text_keys: text(), text_values: text(), text_len: 0 }
    }

    /// Text tokens already in the cache.
    pub fn text_len(&self) -> i64 {
        self.text_len
    }

    pub fn image_tokens(&self) -> i64 {
        self.image.image_tokens
    }

    pub fn batch(&self) -> i64 {
        self.text_keys.first().map_or(0, |k| k.size()[0])
    }

    /// The image tokens' keys and values, shared: other requests on the same frames start from
    /// them without running the image prefill again.
    pub fn image_prefix(&self) -> ImagePrefix {
        self.image.share()
    }

    /// Layer `layer`'s image keys and values, then its text keys and values up to `text`
    /// positions.
    fn layer(&self, layer: usize, text: i64) -> ((&Tensor, &Tensor), (Tensor, Tensor)) {
        (
            (&self.image.keys[layer], &self.image.values[layer]),
            (self.text_keys[layer].narrow(2, 0, text), self.text_values[layer].narrow(2, 0, text)),
        )
    }

    /// Keeps the sequences at `indices` (beam search reordering); the image part is shared by
    /// every sequence and stays as it is.
    pub fn reorder(&mut self, indices: &Tensor) {
        let len = self.text_len;
        for buf in self.text_keys.iter_mut().chain(self.text_values.iter_mut()) {
            let mut text = buf.narrow(2, 0, len);
            let reordered = text.index_select(0, indices);
            text.copy_(&reordered);
        }
    }
}

/// The image tokens' keys and values of every layer, [1, heads, image_tokens, head_dim] each
/// in [`prefix_kind`] of the dtype the image prefill computed them in. Written once by the image
/// prefill, then only read: [`Self::share`] hands out the same tensors.
pub struct ImagePrefix {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    image_tokens: i64,
}

impl ImagePrefix {
    pub fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|t| t.numel() * t.kind().elt_size_in_bytes()).sum()
    }

    /// Decoder layers the prefix holds.
    pub fn layers(&self) -> usize {
        self.keys.len()
    }

    /// Layer `layer`'s image keys and values [1, heads, image_tokens, head_dim].
    pub fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        (&self.keys[layer], &self.values[layer])
    }

    /// The same keys and values (no copy).
    pub fn share(&self) -> ImagePrefix {
        let share = |parts: &Vec<Tensor>| parts.iter().map(Tensor::shallow_clone).collect();
        ImagePrefix { keys: share(&self.keys), values: share(&self.values), image_tokens: self.image_tokens }
    }
}

struct GitLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_layer_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_layer_norm: LayerNorm,
    act: Activation,
    heads: i64,
}

impl GitLayer {
    fn load(w: &Weights, p: &str, c: &GitConfig) -> Result<Self> {
        let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        Ok(Self {
            query: Linear::load(w, &format!("{p}.attention.self.query"), h, h)?,
            key: Linear::load(w, &format!("{p}.attention.self.key"), h, h)?,
            value: Linear::load(w, &format!("{p}.attention.self.value"), h, h)?,
            attention_output: Linear::load(w, &format!("{p}.attention.output.dense"), h, h)?,
            attention_layer_norm: LayerNorm::load(w, &format!("{p}.attention.output.LayerNorm"), h, eps)?,
            intermediate: Linear::load(w, &format!("{p}.intermediate.dense"), h, i)?,
            output: Linear::load(w, &format!("{p}.output.dense"), i, h)?,
            output_layer_norm: LayerNorm::load(w, &format!("{p}.output.LayerNorm"), h, eps)?,
            act: Activation::from_name(&c.hidden_act)?,
            heads: c.num_attention_heads,
        })
    }

    /// Writes this layer's keys and values of `xs` [batch, seq, hidden] into the text part of
    /// `cache` at `at..`, split into heads.
    fn store_text_kv(&self, xs: &Tensor, cache: &KvCache, layer: usize, rows: (i64, i64), at: i64) {
        let (k, v) = self.key_values(xs);
        let (first, count) = rows;
        let len = xs.size()[1];
        cache.text_keys[layer].narrow(0, first, count).narrow(2, at, len).copy_(&k);
        cache.text_values[layer].narrow(0, first, count).narrow(2, at, len).copy_(&v);
    }

    /// Runs text `xs` [batch, seq, hidden] (text positions `at..at + seq` of `cache`)
    /// attending to every image token and to the text up to itself.
    fn forward_text(&self, xs: &Tensor, cache: &KvCache, layer: usize, at: i64) -> Tensor {
        self.store_text_kv(xs, cache, layer, (0, cache.batch()), at);
        let (image, (keys, values)) = cache.layer(layer, at + xs.size()[1]);
        let q = split_heads(&self.query.forward(xs), self.heads);
        let context = attention_image_then_text(&q, image, (&keys, &values));
        self.output_block(&context.to_kind(xs.kind()), xs)
    }

    /// This layer's keys and values of `xs` [batch, seq, hidden], split into heads.
    fn key_values(&self, xs: &Tensor) -> (Tensor, Tensor) {
        (split_heads(&self.key.forward(xs), self.heads), split_heads(&self.value.forward(xs), self.heads))
    }

    /// `xs`' queries attending to `keys`/`values` [batch, heads, visible, head_dim], then the
    /// output block (the image tokens among themselves).
    fn attend(&self, xs: &Tensor, keys: &Tensor, values: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let q = split_heads(&self.query.forward(xs), self.heads);
        self.output_block(&attention(&q, keys, values, mask), xs)
    }

    /// One new token per row for several requests at once, `xs` [rows, 1, hidden]: the
    /// projections and the feed-forward run on every row together, attention on each request's
    /// own cache (`caches`, in row order).
    fn forward_step(&self, xs: &Tensor, caches: &[&mut KvCache], layer: usize) -> Tensor {
        let q = split_heads(&self.query.forward(xs), self.heads);
        let k = split_heads(&self.key.forward(xs), self.heads);
        let v = split_heads(&self.value.forward(xs), self.heads);
        let mut contexts = Vec::with_capacity(caches.len());
        let mut row = 0;
        for cache in caches {
            let (rows, at) = (cache.batch(), cache.text_len);
            cache.text_keys[layer].narrow(2, at, 1).copy_(&k.narrow(0, row, rows));
            cache.text_values[layer].narrow(2, at, 1).copy_(&v.narrow(0, row, rows));
            let (image, (keys, values)) = cache.layer(layer, at + 1);
            contexts.push(attention_image_then_text(&q.narrow(0, row, rows), image, (&keys, &values)));
            row += rows;
        }
        let context = if contexts.len() == 1 { contexts.remove(0) } else { Tensor::cat(&contexts, 0) };
        let context = if context.kind() == xs.kind() { context } else { context.to_kind(xs.kind()) };
        self.output_block(&context, xs)
    }

    /// Attention output projection and the feed-forward block, each with its residual and
    /// post-LayerNorm.
    fn output_block(&self, context: &Tensor, xs: &Tensor) -> Tensor {
        let attended = self.attention_layer_norm.forward(&(self.attention_output.forward(&merge_heads(context)) + xs));
        let ffn = self.output.forward(&self.act.forward(&self.intermediate.forward(&attended)));
        self.output_layer_norm.forward(&(ffn + attended))
    }

    /// Fast mode: int8 weights for every linear layer but the value projection, `dense` for
    /// many rows; returns the change in bytes held. The value projection stays dense in `dense`
    /// (bf16 where the CPU has it natively, else f32): its int8 rounding made 28 % of fast
    /// mode's squared logits error, from 3 % of the weights a decoding step reads
    /// (docs/fast-mode.md, "Which layers stay out of int8").
    fn quantize_int8(&mut self, dense: Kind) -> i64 {
        let int8: i64 =
            [&mut self.query, &mut self.key, &mut self.attention_output, &mut self.intermediate, &mut self.output]
                .into_iter()
                .map(|linear| linear.quantize_int8(dense))
                .sum();
        int8 + self.value.keep_dense(dense) + self.value.pack_for_one_row()
    }

    /// Packs every dense linear layer for batch-1 decoding ([`Linear::pack_for_one_row`]);
    /// returns the bytes added.
    fn pack_for_one_row(&mut self) -> i64 {
        [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.attention_output,
            &mut self.intermediate,
            &mut self.output,
        ]
        .into_iter()
        .map(Linear::pack_for_one_row)
        .sum()
    }

    /// This layer with dense weights in `kind` (see [`Linear::dense_twin`]).
    fn dense_twin(&self, kind: Kind) -> GitLayer {
        GitLayer {
            query: self.query.dense_twin(kind),
            key: self.key.dense_twin(kind),
            value: self.value.dense_twin(kind),
            attention_output: self.attention_output.dense_twin(kind),
            attention_layer_norm: self.attention_layer_norm.to_kind(kind),
            intermediate: self.intermediate.dense_twin(kind),
            output: self.output.dense_twin(kind),
            output_layer_norm: self.output_layer_norm.to_kind(kind),
            act: self.act,
            heads: self.heads,
        }
    }
}

/// `GitEncoder`: the stack of decoder layers.
pub struct GitEncoder {
    layers: Vec<GitLayer>,
    /// Fast mode: the layers with dense weights for the image prefill, hundreds of tokens per
    /// request, and the dtype they compute in. On a CPU with native bf16: bf16 GEMMs on the int8
    /// layers' dequantised weights and bf16 activations, about twice as fast as f32; the keys and
    /// values it stores are converted to the cache's f32. Elsewhere bf16 is emulated and slower
    /// than f32: f32, on the layers' own f32 weights (shared), so the prefill is f32's exactly.
    prefill_layers: Option<(Vec<GitLayer>, Kind)>,
}

impl GitEncoder {
    pub fn load(w: &Weights, prefix: &str, c: &GitConfig) -> Result<Self> {
        Ok(Self {
            layers: (0..c.num_hidden_layers)
                .map(|i| GitLayer::load(w, &format!("{prefix}.layer.{i}"), c))
                .collect::<Result<_>>()?,
            prefill_layers: None,
        })
    }

    /// Runs the projected image tokens [1, image_tokens, hidden] through every layer and
    /// returns a cache holding their keys and values for `batch` sequences, with room for
    /// `text_capacity` text tokens each.
    pub fn prefill_image(&self, image_tokens: &Tensor, batch: i64, text_capacity: i64) -> KvCache {
        self.prefill_images(image_tokens, &[(batch, text_capacity)]).remove(0)
    }

    /// [`Self::prefill_image`] for several requests with the same number of image tokens at
    /// once: `image_tokens` [requests, image_tokens, hidden], `shapes[r]` = (sequences, text
    /// capacity) of request `r`'s cache. Each layer's matrix products run on every request's
    /// tokens together; each request's image tokens attend only to its own (image tokens see
    /// only image tokens).
    ///
    /// The image tokens' outputs of the last layer are never used (logits come from text
    /// positions), so that layer only computes their keys and values.
    pub fn prefill_images(&self, image_tokens: &Tensor, shapes: &[(i64, i64)]) -> Vec<KvCache> {
        let (requests, n) = (image_tokens.size()[0], image_tokens.size()[1]);
        let (layers, compute_kind) = match &self.prefill_layers {
            Some((layers, dense)) => (layers, *dense),
            None => (&self.layers, image_tokens.kind()),
        };
        let mut prefixes: Vec<ImagePrefix> =
            (0..requests).map(|_| ImagePrefix { keys: Vec::new(), values: Vec::new(), image_tokens: n }).collect();
        let mut xs = image_tokens.to_kind(compute_kind);
        let last = layers.len() - 1;
        for (i, layer) in layers.iter().enumerate() {
            let (keys, values) = layer.key_values(&xs);
            for (r, prefix) in prefixes.iter_mut().enumerate() {
                prefix.keys.push(stored(&keys.narrow(0, r as i64, 1)));
                prefix.values.push(stored(&values.narrow(0, r as i64, 1)));
            }
            if i != last {
                xs = layer.attend(&xs, &keys, &values, None);
            }
        }
        prefixes
            .iter()
            .zip(shapes)
            .map(|(prefix, &(batch, text_capacity))| KvCache::from_prefix(prefix, batch, text_capacity))
            .collect()
    }

    /// Runs text embeddings [batch, seq, hidden] that follow the cached tokens; returns the
    /// last layer's hidden states [batch, seq, hidden] and appends to the cache.
    pub fn forward_text(&self, embeddings: &Tensor, cache: &mut KvCache) -> Tensor {
        let seq = embeddings.size()[1];
        let at = cache.text_len;
        let mut xs = embeddings.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward_text(&xs, cache, i, at);
        }
        cache.text_len += seq;
        xs
    }

    /// Fast mode: int8 weights for the linear layers of every decoder layer, their dense work
    /// (prefill) in `dense`, bf16 or f32 (see [`Linear::quantize_int8`]); returns the change in
    /// bytes held.
    pub fn quantize_int8(&mut self, dense: Kind) -> i64 {
        let change = self.layers.iter_mut().map(|layer| layer.quantize_int8(dense)).sum();
        self.prefill_layers = Some((self.layers.iter().map(|layer| layer.dense_twin(dense)).collect(), dense));
        change
    }

    /// Packs every layer's dense weights for batch-1 decoding ([`Linear::pack_for_one_row`]);
    /// returns the bytes added.
    pub fn pack_for_one_row(&mut self) -> i64 {
        self.layers.iter_mut().map(GitLayer::pack_for_one_row).sum()
    }
}

impl GitEncoder {
    /// One decoding step for several requests: `embeddings` [rows, 1, hidden] holds one new
    /// token per row, the rows of `caches[0]` first. Returns the last layer's hidden states
    /// [rows, 1, hidden] and appends to each cache.
    pub fn forward_step(&self, embeddings: &Tensor, caches: &mut [&mut KvCache]) -> Tensor {
        let mut xs = embeddings.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward_step(&xs, caches, i);
        }
        for cache in caches.iter_mut() {
            cache.text_len += 1;
        }
        xs
    }
}

/// A contiguous copy of image keys or values [1, heads, image_tokens, head_dim] in
/// [`prefix_kind`], owning its memory (not a view of the whole batch's).
fn stored(part: &Tensor) -> Tensor {
    let mut out = Tensor::empty(part.size(), (prefix_kind(part.kind(), part.device()), part.device()));
    out.copy_(part);
    out
}

/// The dtype image keys and values computed in `computed` are kept in: bf16 as they are where
/// the decoding step's attention reads bf16 (on a CPU with AVX2: it widens each value to f32 in
/// registers, so attention sees exactly the f32 copy's values, from half the bytes a step
/// streams: 22 MB instead of 44 for six frames of git-base), else [`CACHE_KIND`].
pub fn prefix_kind(computed: Kind, device: Device) -> Kind {
    if computed == Kind::BFloat16 && device == Device::Cpu && step_attention::reads_image_kind(computed) {
        Kind::BFloat16
    } else {
        CACHE_KIND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder of `layers` layers with random weights in `kind`: hidden 64 in 4 heads of 16,
    /// the narrowest head the decoding step's own attention loop takes.
    fn random_encoder(layers: usize, kind: Kind) -> (GitEncoder, GitConfig) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/tiny-git-wide");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        json["hidden_size"] = 64.into();
        json["num_attention_heads"] = 4.into();
        json["intermediate_size"] = 128.into();
        json["num_hidden_layers"] = layers.into();
        let c: GitConfig = serde_json::from_value(json).unwrap();
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let mut tensors = std::collections::HashMap::new();
        let mut put = |name: String, size: &[i64], scale: f64| {
            tensors.insert(name, (Tensor::randn(size, (Kind::Float, Device::Cpu)) * scale).to_kind(kind));
        };
        for l in 0..layers {
            let p = format!("encoder.layer.{l}");
            for (name, out, inp) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", i, h),
                ("output.dense", h, i),
            ] {
                put(format!("{p}.{name}.weight"), &[out, inp], 1.0 / (inp as f64).sqrt());
                put(format!("{p}.{name}.bias"), &[out], 0.1);
            }
            for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
                put(format!("{p}.{norm}.weight"), &[h], 1.0);
                put(format!("{p}.{norm}.bias"), &[h], 0.1);
            }
        }
        let w = Weights::from_map(tensors);
        (GitEncoder::load(&w, "encoder", &c).unwrap(), c)
    }

    #[test]
    fn a_bf16_image_prefill_keeps_bf16_keys_and_values_and_decodes_as_from_their_f32_copy() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(7);
        let (encoder, c) = random_encoder(2, Kind::BFloat16);
        let image_tokens = Tensor::randn([1, 40, c.hidden_size], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let mut kept = encoder.prefill_image(&image_tokens, 2, 8);
        let prefix = kept.image_prefix();
        let expected = prefix_kind(Kind::BFloat16, Device::Cpu);
        assert_eq!(expected == Kind::BFloat16, step_attention::reads_image_kind(Kind::BFloat16));
        for layer in 0..prefix.layers() {
            let (k, v) = prefix.layer(layer);
            assert_eq!((k.kind(), v.kind()), (expected, expected), "layer {layer}");
        }
        let widen = |parts: &Vec<Tensor>| parts.iter().map(|t| t.to_kind(Kind::Float)).collect();
        let copy = ImagePrefix { keys: widen(&prefix.keys), values: widen(&prefix.values), image_tokens: 40 };
        let mut widened = KvCache::from_prefix(&copy, 2, 8);
        // A prompt of three tokens, then two steps, all through the step attention loop.
        let prompt = (Tensor::randn([2, 3, c.hidden_size], (Kind::Float, Device::Cpu))).to_kind(Kind::BFloat16);
        let (a, b) = (encoder.forward_text(&prompt, &mut kept), encoder.forward_text(&prompt, &mut widened));
        assert!(a.equal(&b), "the prompt's hidden states differ");
        for step in 0..2 {
            let token = Tensor::randn([2, 1, c.hidden_size], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let a = encoder.forward_step(&token, &mut [&mut kept]);
            let b = encoder.forward_step(&token, &mut [&mut widened]);
            assert!(a.equal(&b), "step {step}: the hidden states differ");
        }
        assert_eq!(prefix.bytes() * if expected == Kind::BFloat16 { 2 } else { 1 }, copy.bytes());
    }

    #[test]
    fn caches_started_from_a_prefix_share_its_image_keys_and_values() {
        let f32 = (CACHE_KIND, Device::Cpu);
        let part = || (0..2).map(|_| Tensor::randn([1, 4, 17, 8], f32)).collect::<Vec<_>>();
        let prefix = ImagePrefix { keys: part(), values: part(), image_tokens: 17 };
        let beams = KvCache::from_prefix(&prefix, 3, 5);
        let follow_up = KvCache::from_prefix(&beams.image_prefix(), 1, 9);
        for cache in [&beams, &follow_up] {
            let image = cache.image_prefix();
            for layer in 0..prefix.layers() {
                let ((k, v), (pk, pv)) = (image.layer(layer), prefix.layer(layer));
                assert_eq!((k.data_ptr(), v.data_ptr()), (pk.data_ptr(), pv.data_ptr()), "layer {layer} is a copy");
            }
        }
        assert_eq!(beams.text_keys[0].size(), [3, 4, 5, 8]);
        assert_eq!(follow_up.text_values[1].size(), [1, 4, 9, 8]);
        assert_eq!((beams.image_tokens(), beams.batch(), follow_up.text_len()), (17, 3, 0));
    }
}
