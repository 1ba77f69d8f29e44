//! The text decoder (`git.embeddings`, `git.encoder`): BERT-style post-LN layers over
//! [image tokens ; text tokens], where image tokens attend only to image tokens and text
//! attends to every image token and causally to text.
//!
//! Image tokens never see text, so their keys and values are computed once per request
//! ([`GitEncoder::prefill_image`]) and kept in a [`KvCache`] with the text's; each decoding
//! step then runs only the new text tokens.

use tch::{Device, Kind, Tensor};

use super::config::GitConfig;
use super::layers::{attention, merge_heads, split_heads, Activation, LayerNorm, Linear};
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

/// Keys and values of every decoder layer for a batch of sequences that share one image
/// prefix: [batch, heads, capacity, head_dim] per layer, image tokens first.
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    image_tokens: i64,
    text_len: i64,
}

impl KvCache {
    /// Text tokens already in the cache.
    pub fn text_len(&self) -> i64 {
        self.text_len
    }

    pub fn image_tokens(&self) -> i64 {
        self.image_tokens
    }

    pub fn batch(&self) -> i64 {
        self.keys.first().map_or(0, |k| k.size()[0])
    }

    /// Positions the cache has room for: image tokens, then text.
    pub fn capacity(&self) -> i64 {
        self.keys.first().map_or(0, |k| k.size()[2])
    }

    /// Bytes the cache holds.
    pub fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|t| t.numel() * t.kind().elt_size_in_bytes()).sum()
    }

    /// Layer `layer`'s keys and values [batch, heads, capacity, head_dim].
    pub fn layer(&self, layer: usize) -> (&Tensor, &Tensor) {
        (&self.keys[layer], &self.values[layer])
    }

    /// Decoder layers the cache holds.
    pub fn layers(&self) -> usize {
        self.keys.len()
    }

    /// A copy of the image tokens' keys and values, to start other requests on the same frames
    /// without running the image prefill again.
    pub fn image_prefix(&self) -> ImagePrefix {
        let n = self.image_tokens;
        let copy = |bufs: &Vec<Tensor>| bufs.iter().map(|b| b.narrow(0, 0, 1).narrow(2, 0, n).copy()).collect();
        ImagePrefix { keys: copy(&self.keys), values: copy(&self.values), image_tokens: n }
    }

    /// A cache for `batch` sequences starting from `prefix`, with room for `text_capacity`
    /// text tokens each.
    pub fn from_prefix(prefix: &ImagePrefix, batch: i64, text_capacity: i64) -> Self {
        let n = prefix.image_tokens;
        let expand = |parts: &Vec<Tensor>| {
            parts
                .iter()
                .map(|p| {
                    let size = p.size();
                    let buf = Tensor::zeros([batch, size[1], n + text_capacity, size[3]], (p.kind(), p.device()));
                    buf.narrow(2, 0, n).copy_(p);
                    buf
                })
                .collect()
        };
        Self { keys: expand(&prefix.keys), values: expand(&prefix.values), image_tokens: n, text_len: 0 }
    }

    /// Keeps the sequences at `indices` (beam search reordering); image entries are shared.
    pub fn reorder(&mut self, indices: &Tensor) {
        let (start, len) = (self.image_tokens, self.text_len);
        for buf in self.keys.iter_mut().chain(self.values.iter_mut()) {
            let mut text = buf.narrow(2, start, len);
            let reordered = text.index_select(0, indices);
            text.copy_(&reordered);
        }
    }
}

/// The image tokens' keys and values of every layer, [1, heads, image_tokens, head_dim] each.
pub struct ImagePrefix {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    image_tokens: i64,
}

impl ImagePrefix {
    pub fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|t| t.numel() * t.kind().elt_size_in_bytes()).sum()
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

    /// Writes this layer's keys and values of `xs` into `keys`/`values` at `at..`, split into
    /// heads.
    fn store_kv(&self, xs: &Tensor, keys: &Tensor, values: &Tensor, at: i64) {
        let len = xs.size()[1];
        let (k, v) = self.key_values(xs);
        keys.narrow(2, at, len).copy_(&k);
        values.narrow(2, at, len).copy_(&v);
    }

    /// Runs `xs` (tokens `at..at + len` of the cache) attending to cache entries `..at + len`.
    fn forward(&self, xs: &Tensor, keys: &Tensor, values: &Tensor, at: i64, mask: Option<&Tensor>) -> Tensor {
        self.store_kv(xs, keys, values, at);
        let visible = at + xs.size()[1];
        self.attend(xs, &keys.narrow(2, 0, visible), &values.narrow(2, 0, visible), mask)
    }

    /// This layer's keys and values of `xs` [batch, seq, hidden], split into heads.
    fn key_values(&self, xs: &Tensor) -> (Tensor, Tensor) {
        (split_heads(&self.key.forward(xs), self.heads), split_heads(&self.value.forward(xs), self.heads))
    }

    /// `xs`' queries attending to `keys`/`values` [batch, heads, visible, head_dim], then the
    /// output block.
    fn attend(&self, xs: &Tensor, keys: &Tensor, values: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let q = split_heads(&self.query.forward(xs), self.heads);
        self.output_block(&attention(&q, keys, values, mask), xs)
    }

    /// One new token per row for several requests at once, `xs` [rows, 1, hidden]: the
    /// projections and the feed-forward run on every row together, attention on each request's
    /// own cache (`caches`, in row order, holding this layer at `layer`).
    fn forward_step(&self, xs: &Tensor, caches: &[&mut KvCache], layer: usize) -> Tensor {
        let q = split_heads(&self.query.forward(xs), self.heads);
        let k = split_heads(&self.key.forward(xs), self.heads);
        let v = split_heads(&self.value.forward(xs), self.heads);
        let mut contexts = Vec::with_capacity(caches.len());
        let mut row = 0;
        for cache in caches {
            let (rows, at) = (cache.batch(), cache.image_tokens + cache.text_len);
            let (keys, values) = (&cache.keys[layer], &cache.values[layer]);
            keys.narrow(2, at, 1).copy_(&k.narrow(0, row, rows));
            values.narrow(2, at, 1).copy_(&v.narrow(0, row, rows));
            let q = q.narrow(0, row, rows);
            contexts.push(attention(&q, &keys.narrow(2, 0, at + 1), &values.narrow(2, 0, at + 1), None));
            row += rows;
        }
        self.output_block(&Tensor::cat(&contexts, 0), xs)
    }

    /// Attention output projection and the feed-forward block, each with its residual and
    /// post-LayerNorm.
    fn output_block(&self, context: &Tensor, xs: &Tensor) -> Tensor {
        let attended = self.attention_layer_norm.forward(&(self.attention_output.forward(&merge_heads(context)) + xs));
        let ffn = self.output.forward(&self.act.forward(&self.intermediate.forward(&attended)));
        self.output_layer_norm.forward(&(ffn + attended))
    }

    /// Fast mode: int8 weights for every linear layer, `dense` for many rows; returns the
    /// change in bytes held.
    fn quantize_int8(&mut self, dense: Kind) -> i64 {
        [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.attention_output,
            &mut self.intermediate,
            &mut self.output,
        ]
        .into_iter()
        .map(|linear| linear.quantize_int8(dense))
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
    heads: i64,
    head_dim: i64,
}

impl GitEncoder {
    pub fn load(w: &Weights, prefix: &str, c: &GitConfig) -> Result<Self> {
        Ok(Self {
            layers: (0..c.num_hidden_layers)
                .map(|i| GitLayer::load(w, &format!("{prefix}.layer.{i}"), c))
                .collect::<Result<_>>()?,
            prefill_layers: None,
            heads: c.num_attention_heads,
            head_dim: c.hidden_size / c.num_attention_heads,
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
        let n = image_tokens.size()[1];
        let (kind, device) = (image_tokens.kind(), image_tokens.device());
        let mut caches: Vec<KvCache> = shapes
            .iter()
            .map(|&(batch, text_capacity)| {
                let shape = [batch, self.heads, n + text_capacity, self.head_dim];
                KvCache {
                    keys: (0..self.layers.len()).map(|_| Tensor::zeros(shape, (kind, device))).collect(),
                    values: (0..self.layers.len()).map(|_| Tensor::zeros(shape, (kind, device))).collect(),
                    image_tokens: n,
                    text_len: 0,
                }
            })
            .collect();
        let (layers, compute_kind) = match &self.prefill_layers {
            Some((layers, dense)) => (layers, *dense),
            None => (&self.layers, kind),
        };
        let mut xs = image_tokens.to_kind(compute_kind);
        let last = layers.len() - 1;
        for (i, layer) in layers.iter().enumerate() {
            let (keys, values) = layer.key_values(&xs);
            // One copy of the image states per request serves every sequence of its batch.
            for (r, cache) in caches.iter().enumerate() {
                cache.keys[i].narrow(0, 0, 1).narrow(2, 0, n).copy_(&keys.narrow(0, r as i64, 1));
                cache.values[i].narrow(0, 0, 1).narrow(2, 0, n).copy_(&values.narrow(0, r as i64, 1));
            }
            if i != last {
                xs = layer.attend(&xs, &keys, &values, None);
            }
        }
        for cache in &mut caches {
            if cache.batch() > 1 {
                for buf in cache.keys.iter_mut().chain(cache.values.iter_mut()) {
                    let mut image = buf.narrow(2, 0, n);
                    let first = image.narrow(0, 0, 1).copy();
                    image.copy_(&first);
                }
            }
        }
        caches
    }

    /// Runs text embeddings [batch, seq, hidden] that follow the cached tokens; returns the
    /// last layer's hidden states [batch, seq, hidden] and appends to the cache.
    pub fn forward_text(&self, embeddings: &Tensor, cache: &mut KvCache) -> Tensor {
        let seq = embeddings.size()[1];
        let at = cache.image_tokens + cache.text_len;
        let mask = (seq > 1).then(|| causal_text_mask(cache.image_tokens, cache.text_len, seq, embeddings.device()));
        let mut xs = embeddings.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs, &cache.keys[i], &cache.values[i], at, mask.as_ref());
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

/// [seq, visible] boolean mask for `seq` new text tokens: every image token, every cached
/// text token, and the new tokens up to and including themselves.
fn causal_text_mask(image_tokens: i64, cached_text: i64, seq: i64, device: Device) -> Tensor {
    let prefix = image_tokens + cached_text;
    let rows = Tensor::arange(seq, (Kind::Int64, device)).unsqueeze(1);
    let cols = Tensor::arange(prefix + seq, (Kind::Int64, device)).unsqueeze(0);
    cols.le_tensor(&(rows + prefix))
}
