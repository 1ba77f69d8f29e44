//! Attention of one new token per row (a decoding step) over the image tokens' keys and values,
//! which every row shares, then the row's own text keys and values: scores, softmax and the
//! weighted sum in f32, one pass per head.
//!
//! The same result as [`super::layers::attention_image_then_text`] for one query, which takes
//! about ten libtorch calls per layer (scaling, two score products, a concatenation, softmax,
//! two weighted sums, their sum), each a dispatch and some a copy: 0.13 ms a layer for one
//! image on this CPU where reading its keys and values takes a third of that (bench/NOTES.md).
//! Heads are split between libtorch's own OpenMP threads ([`super::openmp`]).

use tch::{Device, Kind, Tensor};

use super::lanes::{self, Level, LANES};
use super::openmp;

/// Below this many key and value floats read in all, one thread is quicker than waking the team.
const MIN_FLOATS_TO_SPLIT: usize = 1 << 16;

/// Softmax(q kᵀ / √d) v of `q` [rows, heads, 1, head_dim] over `image` keys and values [1,
/// heads, image_tokens, head_dim] then `text` keys and values [rows, heads, text, head_dim]
/// (views with any strides but the last), as one sequence; `None` where this loop does not
/// apply (another shape or dtype, not the CPU, a head width not a multiple of 16, or a CPU
/// without AVX2 and FMA), for the caller to take the libtorch path.
pub fn attend(q: &Tensor, image: (&Tensor, &Tensor), text: (&Tensor, &Tensor)) -> Option<Tensor> {
    attend_with(Level::detect()?, q, image, text)
}

fn attend_with(level: Level, q: &Tensor, image: (&Tensor, &Tensor), text: (&Tensor, &Tensor)) -> Option<Tensor> {
    let (rows, heads, seq, head_dim) = q.size4().ok()?;
    let parts = [image.0, image.1, text.0, text.1];
    let fits = |t: &Tensor, batch: i64| {
        let size = t.size();
        t.kind() == Kind::Float
            && t.device() == Device::Cpu
            && size.len() == 4
            && size[0] == batch
            && size[1] == heads
            && size[3] == head_dim
            && t.stride()[3] == 1
    };
    if seq != 1
        || q.device() != Device::Cpu
        || !(head_dim as usize).is_multiple_of(LANES)
        || !parts[..2].iter().all(|t| fits(t, 1))
        || !parts[2..].iter().all(|t| fits(t, rows))
        || image.0.size()[2] != image.1.size()[2]
        || text.0.size()[2] != text.1.size()[2]
    {
        return None;
    }
    // Scaled before the products, in f32, as the libtorch path does.
    let q = (q.to_kind(Kind::Float) * (1.0 / (head_dim as f64).sqrt())).contiguous();
    let out = Tensor::empty([rows, heads, 1, head_dim], (Kind::Float, Device::Cpu));
    let [image_keys, image_values, text_keys, text_values] = parts.map(Tokens::of);
    let (d, heads) = (head_dim as usize, heads as usize);
    let (q_ptr, out_ptr) = (Shared(q.data_ptr() as *mut f32), Shared(out.data_ptr() as *mut f32));
    let run = |first: usize, end: usize| {
        let mut scores = Vec::new();
        for item in first..end {
            let (row, head) = (item / heads, item % heads);
            // SAFETY: every view was checked to be an f32 CPU tensor of these sizes; `q` and
            // `out` are contiguous [rows, heads, 1, d], and each item writes its own head.
            unsafe {
                let q = std::slice::from_raw_parts(q_ptr.get().add(item * d), d);
                let out = std::slice::from_raw_parts_mut(out_ptr.get().add(item * d), d);
                let head = Head {
                    image: (image_keys.at(0, head), image_values.at(0, head)),
                    text: (text_keys.at(row, head), text_values.at(row, head)),
                    d,
                };
                head_with(level, &head, q, out, &mut scores);
            }
        }
    };
    let items = rows as usize * heads;
    let floats = items * (image_keys.tokens + text_keys.tokens) * d * 2;
    match openmp::Team::get().filter(|_| items > 1 && floats >= MIN_FLOATS_TO_SPLIT) {
        Some(team) => {
            let threads = (tch::get_num_threads().max(1) as usize).min(items);
            team.run(threads, &|thread, of| run(items * thread / of, items * (thread + 1) / of))
        }
        None => run(0, items),
    }
    Some(out)
}

/// A [batch, heads, tokens, d] f32 view: where each (batch, head)'s tokens start and how far
/// apart they are.
#[derive(Clone, Copy)]
struct Tokens {
    data: Shared,
    strides: [usize; 3],
    tokens: usize,
}

impl Tokens {
    fn of(t: &Tensor) -> Self {
        let stride = t.stride();
        Tokens {
            data: Shared(t.data_ptr() as *mut f32),
            strides: [stride[0] as usize, stride[1] as usize, stride[2] as usize],
            tokens: t.size()[2] as usize,
        }
    }

    /// The tokens of one (batch, head).
    fn at(&self, batch: usize, head: usize) -> Run {
        // SAFETY (of the pointer arithmetic): within the tensor, by its sizes and strides.
        let start = unsafe { self.data.get().add(batch * self.strides[0] + head * self.strides[1]) };
        Run { start, stride: self.strides[2], tokens: self.tokens }
    }
}

/// One head's keys or values: `tokens` vectors of d floats, `stride` apart.
#[derive(Clone, Copy)]
struct Run {
    start: *const f32,
    stride: usize,
    tokens: usize,
}

impl Run {
    /// # Safety
    /// `i < tokens`, and the run holds `d` floats at each token.
    unsafe fn token(&self, i: usize, d: usize) -> &[f32] {
        unsafe { std::slice::from_raw_parts(self.start.add(i * self.stride), d) }
    }
}

/// One (row, head): its image keys and values, then its text keys and values.
struct Head {
    image: (Run, Run),
    text: (Run, Run),
    d: usize,
}

/// A pointer the threads share; each writes only its own heads.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: read-only inputs, and disjoint outputs per thread (see `attend`).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

impl Shared {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// [`head`] compiled for `level`.
///
/// # Safety
/// `h`'s runs hold `h.d` floats at each of their tokens; `q` and `out` are d long.
unsafe fn head_with(level: Level, h: &Head, q: &[f32], out: &mut [f32], scores: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match level {
            Level::Avx512 => x86::head_avx512(h, q, out, scores),
            Level::Avx2 => x86::head_avx2(h, q, out, scores),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no level is detected off x86-64: {level:?} {q:p} {out:p} {scores:p}")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{head, Head};

    #[target_feature(enable = "avx512f")]
    pub unsafe fn head_avx512(h: &Head, q: &[f32], out: &mut [f32], scores: &mut Vec<f32>) {
        unsafe { head(h, q, out, scores) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn head_avx2(h: &Head, q: &[f32], out: &mut [f32], scores: &mut Vec<f32>) {
        unsafe { head(h, q, out, scores) }
    }
}

/// Softmax-weighted sum for one (row, head), written in lanes of [`LANES`] floats that the
/// compiler turns into the vector instructions of the function it is inlined into.
///
/// # Safety
/// As [`head_with`].
#[inline(always)]
unsafe fn head(h: &Head, q: &[f32], out: &mut [f32], scores: &mut Vec<f32>) {
    let d = h.d;
    let (image, text) = (h.image.0.tokens, h.text.0.tokens);
    scores.clear();
    for i in 0..image {
        scores.push(dot(q, unsafe { h.image.0.token(i, d) }));
    }
    for t in 0..text {
        scores.push(dot(q, unsafe { h.text.0.token(t, d) }));
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = exp_minus_in_place(scores, max);
    out.fill(0.0);
    for (i, &p) in scores[..image].iter().enumerate() {
        axpy(out, p, unsafe { h.image.1.token(i, d) });
    }
    for (t, &p) in scores[image..].iter().enumerate() {
        axpy(out, p, unsafe { h.text.1.token(t, d) });
    }
    let inverse = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inverse);
}

/// q · k, both a whole number of lanes long.
#[inline(always)]
fn dot(q: &[f32], k: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (q, k) in q.chunks_exact(LANES).zip(k.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] = q[l].mul_add(k[l], acc[l]);
        }
    }
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0]
}

/// out += p · v.
#[inline(always)]
fn axpy(out: &mut [f32], p: f32, v: &[f32]) {
    for (o, v) in out.chunks_exact_mut(LANES).zip(v.chunks_exact(LANES)) {
        for l in 0..LANES {
            o[l] = p.mul_add(v[l], o[l]);
        }
    }
}

/// Replaces each score s by exp(s − max); returns their sum.
#[inline(always)]
fn exp_minus_in_place(scores: &mut [f32], max: f32) -> f32 {
    let mut sums = [0f32; LANES];
    let mut chunks = scores.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        let mut lanes = [0f32; LANES];
        lanes.copy_from_slice(chunk);
        let e = lanes::exp(lanes.map(|s| s - max));
        chunk.copy_from_slice(&e);
        for l in 0..LANES {
            sums[l] += e[l];
        }
    }
    let rest = chunks.into_remainder();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    lanes[..rest.len()].copy_from_slice(rest);
    let e = lanes::exp(lanes.map(|s| s - max));
    rest.copy_from_slice(&e[..rest.len()]);
    let tail: f32 = e[..rest.len()].iter().sum();
    sums.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::model::layers::attention_image_then_text;

    fn relative(actual: &Tensor, expected: &Tensor) -> f64 {
        (actual - expected).norm().double_value(&[]) / expected.norm().double_value(&[])
    }

    /// The libtorch path of the same attention (the reference these loops replace).
    fn by_libtorch(q: &Tensor, image: (&Tensor, &Tensor), text: (&Tensor, &Tensor)) -> Tensor {
        let (heads, d) = (q.size()[1], q.size()[3]);
        let q = q.to_kind(Kind::Float) * (1.0 / (d as f64).sqrt());
        let rows = q.size()[0];
        let image_keys = image.0.expand([rows, heads, -1, d], false);
        let image_values = image.1.expand([rows, heads, -1, d], false);
        let keys = Tensor::cat(&[image_keys, text.0.shallow_clone()], 2);
        let values = Tensor::cat(&[image_values, text.1.shallow_clone()], 2);
        q.matmul(&keys.transpose(-2, -1)).softmax(-1, Kind::Float).matmul(&values)
    }

    #[test]
    fn every_level_matches_libtorchs_attention_on_views_of_a_cache() {
        let _guard = tch::no_grad_guard();
        let f32 = (Kind::Float, Device::Cpu);
        // One row and beams; a wide head; a long image (video frames); widths of one and of
        // several lanes; scores large enough that the softmax saturates.
        for (rows, heads, d, image_tokens, text, spread) in
            [(1, 12, 64, 197, 3, 1.0), (3, 4, 16, 23, 5, 1.0), (2, 2, 32, 1182, 1, 1.0), (1, 3, 64, 50, 8, 30.0)]
        {
            tch::manual_seed(rows * 100 + d);
            let image =
                (Tensor::randn([1, heads, image_tokens, d], f32), Tensor::randn([1, heads, image_tokens, d], f32));
            // The text part is a narrowed view of a cache with room for more tokens.
            let capacity = text + 4;
            let cache =
                (Tensor::randn([rows, heads, capacity, d], f32), Tensor::randn([rows, heads, capacity, d], f32));
            let text_part = (cache.0.narrow(2, 0, text), cache.1.narrow(2, 0, text));
            let q = Tensor::randn([rows, heads, 1, d], f32) * spread;
            let want = by_libtorch(&q, (&image.0, &image.1), (&text_part.0, &text_part.1));
            for level in Level::available() {
                let got = with_level(level, &q, (&image.0, &image.1), (&text_part.0, &text_part.1));
                assert_eq!(got.size(), want.size());
                let rel = relative(&got, &want);
                assert!(rel < 1e-6, "{level:?}, rows {rows}, heads {heads}, d {d}, {image_tokens} image tokens: {rel}");
            }
            // Through the decoder's entry point, bf16 queries included (bf16 mode).
            for q in [q.shallow_clone(), q.to_kind(Kind::BFloat16)] {
                let got = attention_image_then_text(&q, (&image.0, &image.1), (&text_part.0, &text_part.1), None);
                let want = by_libtorch(&q, (&image.0, &image.1), (&text_part.0, &text_part.1));
                assert!(relative(&got, &want) < 1e-6);
            }
        }
    }

    #[test]
    fn shapes_it_does_not_handle_are_left_to_libtorch() {
        let f32 = (Kind::Float, Device::Cpu);
        let image = Tensor::randn([1, 2, 5, 16], f32);
        let text = Tensor::randn([1, 2, 3, 16], f32);
        // Two queries per row (a prompt), a head width that is not a whole number of lanes, a
        // bf16 cache.
        let two_queries = Tensor::randn([1, 2, 2, 16], f32);
        assert!(attend(&two_queries, (&image, &image), (&text, &text)).is_none());
        let (image8, text8) = (Tensor::randn([1, 2, 5, 8], f32), Tensor::randn([1, 2, 3, 8], f32));
        assert!(attend(&Tensor::randn([1, 2, 1, 8], f32), (&image8, &image8), (&text8, &text8)).is_none());
        let bf16 = image.to_kind(Kind::BFloat16);
        assert!(attend(&Tensor::randn([1, 2, 1, 16], f32), (&bf16, &bf16), (&text, &text)).is_none());
    }

    /// [`attend`] with the loop of `level` (the one detected may be wider).
    fn with_level(level: Level, q: &Tensor, image: (&Tensor, &Tensor), text: (&Tensor, &Tensor)) -> Tensor {
        attend_with(level, q, image, text).expect("the loop applies")
    }
}
