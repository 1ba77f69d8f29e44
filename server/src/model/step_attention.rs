//! Attention of the new text tokens of each row (a decoding step's one, a prompt's few) over the
//! image tokens' keys and values, which every row shares, then the row's own text keys and
//! values up to each token: scores, softmax and the weighted sum in f32, one pass per query.
//! The image keys and values may be bf16 (as a bf16 image prefill computed them; see
//! `decoder::prefix_kind`): each value is widened to f32 in registers, so the result is the same
//! as over their f32 copy, from half the bytes.
//!
//! The same result as [`super::layers::attention_image_then_text`]'s libtorch path, which takes
//! about ten libtorch calls per layer (scaling, two score products, a concatenation, softmax,
//! two weighted sums, their sum), each a dispatch and some a copy: 0.13 ms a layer for one
//! image on this CPU where reading its keys and values takes a third of that (bench/NOTES.md).
//! Heads are split between libtorch's own OpenMP threads ([`super::openmp`]).

use tch::{Device, Kind, Tensor};

use super::lanes::{self, Level, LANES};
use super::matvec::{Bf16, Element};
use super::openmp;

/// Below this many key and value floats read in all, one thread is quicker than waking the team.
const MIN_FLOATS_TO_SPLIT: usize = 1 << 16;

/// Softmax(q kᵀ / √d) v of `q` [rows, heads, seq, head_dim] over `image` keys and values [1,
/// heads, image_tokens, head_dim] (f32 or bf16) then `text` keys and values [rows, heads, text,
/// head_dim] (f32), all views with any strides but the last, as one sequence. The queries are
/// the text's last `seq` tokens (a step: one; a prompt: several), each seeing every image token
/// and the text up to its own position. `None` where this loop does not apply (another shape or
/// dtype, not the CPU, a head width not a multiple of 16, or a CPU without AVX2 and FMA), for
/// the caller to take the libtorch path.
pub fn attend(q: &Tensor, image: (&Tensor, &Tensor), text: (&Tensor, &Tensor)) -> Option<Tensor> {
    attend_with(Level::detect()?, q, image, text)
}

/// Whether [`attend`] reads image keys and values of `kind` on this CPU.
pub fn reads_image_kind(kind: Kind) -> bool {
    Level::detect().is_some() && matches!(kind, Kind::Float | Kind::BFloat16)
}

fn attend_with(level: Level, q: &Tensor, image: (&Tensor, &Tensor), text: (&Tensor, &Tensor)) -> Option<Tensor> {
    match image.0.kind() {
        Kind::Float => attend_over::<f32>(level, q, image, text),
        Kind::BFloat16 => attend_over::<Bf16>(level, q, image, text),
        _ => None,
    }
}

/// [`attend_with`] for image keys and values of element type `I`.
fn attend_over<I: Element>(
    level: Level,
    q: &Tensor,
    image: (&Tensor, &Tensor),
    text: (&Tensor, &Tensor),
) -> Option<Tensor> {
    let (rows, heads, seq, head_dim) = q.size4().ok()?;
    let parts = [image.0, image.1, text.0, text.1];
    let fits = |t: &Tensor, batch: i64, kind: Kind| {
        let size = t.size();
        t.kind() == kind
            && t.device() == Device::Cpu
            && size.len() == 4
            && size[0] == batch
            && size[1] == heads
            && size[3] == head_dim
            && t.stride()[3] == 1
    };
    if seq < 1
        || seq > text.0.size().get(2).copied().unwrap_or(0)
        || q.device() != Device::Cpu
        || !(head_dim as usize).is_multiple_of(LANES)
        || !parts[..2].iter().all(|t| fits(t, 1, image.0.kind()))
        || !parts[2..].iter().all(|t| fits(t, rows, Kind::Float))
        || image.0.size()[2] != image.1.size()[2]
        || text.0.size()[2] != text.1.size()[2]
    {
        return None;
    }
    // Scaled before the products, in f32, as the libtorch path does.
    let q = (q.to_kind(Kind::Float) * (1.0 / (head_dim as f64).sqrt())).contiguous();
    let out = Tensor::empty([rows, heads, seq, head_dim], (Kind::Float, Device::Cpu));
    let (image_keys, image_values) = (Tokens::<I>::of(image.0), Tokens::<I>::of(image.1));
    let (text_keys, text_values) = (Tokens::<f32>::of(text.0), Tokens::<f32>::of(text.1));
    let (d, heads, seq) = (head_dim as usize, heads as usize, seq as usize);
    let (q_ptr, out_ptr) = (Shared(q.data_ptr() as *mut f32), Shared(out.data_ptr() as *mut f32));
    let run = |first: usize, end: usize| {
        let mut scores = Vec::new();
        for item in first..end {
            let (row, head, query) = (item / (heads * seq), item / seq % heads, item % seq);
            // Query `query` of the last `seq` text tokens sees the text up to itself.
            let visible = text_keys.tokens - seq + query + 1;
            // SAFETY: every view was checked to be a CPU tensor of these sizes, the image parts
            // of type `I` and the text parts f32, with at least `seq` text tokens; `q` and `out`
            // are contiguous [rows, heads, seq, d], and each item writes its own query.
            unsafe {
                let q = std::slice::from_raw_parts(q_ptr.get().add(item * d), d);
                let out = std::slice::from_raw_parts_mut(out_ptr.get().add(item * d), d);
                let head = Head {
                    image: (image_keys.at(0, head), image_values.at(0, head)),
                    text: (text_keys.at(row, head).first(visible), text_values.at(row, head).first(visible)),
                };
                head_with(level, &head, q, out, &mut scores);
            }
        }
    };
    let items = rows as usize * heads * seq;
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

/// A [batch, heads, tokens, d] view of `E` values: where each (batch, head)'s tokens start and
/// how far apart they are.
#[derive(Clone, Copy)]
struct Tokens<E> {
    data: Shared<E>,
    strides: [usize; 3],
    tokens: usize,
}

impl<E> Tokens<E> {
    /// `t`'s values, which the caller checked to be of type `E`.
    fn of(t: &Tensor) -> Self {
        let stride = t.stride();
        Tokens {
            data: Shared(t.data_ptr() as *mut E),
            strides: [stride[0] as usize, stride[1] as usize, stride[2] as usize],
            tokens: t.size()[2] as usize,
        }
    }

    /// The tokens of one (batch, head).
    fn at(&self, batch: usize, head: usize) -> Run<E> {
        // SAFETY (of the pointer arithmetic): within the tensor, by its sizes and strides.
        let start = unsafe { self.data.get().add(batch * self.strides[0] + head * self.strides[1]) };
        Run { start, stride: self.strides[2], tokens: self.tokens }
    }
}

/// One head's keys or values: `tokens` vectors of d values, `stride` apart.
#[derive(Clone, Copy)]
struct Run<E> {
    start: *const E,
    stride: usize,
    tokens: usize,
}

impl<E> Run<E> {
    /// The run's first `tokens` tokens (at most all of them).
    fn first(self, tokens: usize) -> Self {
        Run { tokens: tokens.min(self.tokens), ..self }
    }

    /// Where token `i`'s values start.
    ///
    /// # Safety
    /// `i < tokens`.
    unsafe fn token(&self, i: usize) -> *const E {
        unsafe { self.start.add(i * self.stride) }
    }
}

/// One (row, head): its image keys and values (of type `I`), then its text keys and values.
struct Head<I> {
    image: (Run<I>, Run<I>),
    text: (Run<f32>, Run<f32>),
}

/// A pointer the threads share; each writes only its own heads.
struct Shared<E>(*mut E);
// SAFETY: read-only inputs, and disjoint outputs per thread (see `attend`).
unsafe impl<E> Sync for Shared<E> {}
unsafe impl<E> Send for Shared<E> {}

impl<E> Clone for Shared<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for Shared<E> {}

impl<E> Shared<E> {
    fn get(self) -> *mut E {
        self.0
    }
}

/// [`head`] compiled for `level`.
///
/// # Safety
/// `h`'s runs hold `q.len()` values at each of their tokens, a whole number of [`LANES`];
/// `out` is as long as `q`.
unsafe fn head_with<I: Element>(level: Level, h: &Head<I>, q: &[f32], out: &mut [f32], scores: &mut Vec<f32>) {
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

/// The two vector loops of a head, in one level's instructions.
trait Lanes {
    /// q · k for `q.len()` values of `k` (a whole number of [`LANES`]).
    ///
    /// # Safety
    /// The level's instructions are present; `k` points to `q.len()` values.
    unsafe fn dot<E: Element>(q: &[f32], k: *const E) -> f32;

    /// `out` += Σᵢ `weights[i]` · (token i's values in `run`), `out.len()` values (a whole
    /// number of [`LANES`]).
    ///
    /// # Safety
    /// The level's instructions are present; `run` holds `out.len()` values at each of its
    /// first `weights.len()` tokens.
    unsafe fn weighted_sum<E: Element>(out: &mut [f32], weights: &[f32], run: &Run<E>);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{head, Element, Head, Lanes, Run, LANES};

    /// Output values a weighted sum keeps in registers at once.
    const HELD: usize = 4 * LANES;

    pub struct Avx512;

    impl Lanes for Avx512 {
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn dot<E: Element>(q: &[f32], k: *const E) -> f32 {
            let mut acc = _mm512_setzero_ps();
            for c in (0..q.len()).step_by(16) {
                let (q, k) = unsafe { (_mm512_loadu_ps(q.as_ptr().add(c)), E::load16_avx512(k.add(c))) };
                acc = _mm512_fmadd_ps(q, k, acc);
            }
            _mm512_reduce_add_ps(acc)
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn weighted_sum<E: Element>(out: &mut [f32], weights: &[f32], run: &Run<E>) {
            for (part, out) in out.chunks_mut(HELD).enumerate() {
                let at = part * HELD;
                let mut acc = [_mm512_setzero_ps(); HELD / 16];
                let held = &mut acc[..out.len() / 16];
                for (j, acc) in held.iter_mut().enumerate() {
                    *acc = unsafe { _mm512_loadu_ps(out.as_ptr().add(16 * j)) };
                }
                for (i, &w) in weights.iter().enumerate() {
                    let (w, v) = (_mm512_set1_ps(w), unsafe { run.token(i).add(at) });
                    for (j, acc) in held.iter_mut().enumerate() {
                        *acc = _mm512_fmadd_ps(w, unsafe { E::load16_avx512(v.add(16 * j)) }, *acc);
                    }
                }
                for (j, acc) in held.iter().enumerate() {
                    unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(16 * j), *acc) };
                }
            }
        }
    }

    pub struct Avx2;

    impl Lanes for Avx2 {
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn dot<E: Element>(q: &[f32], k: *const E) -> f32 {
            let mut acc = _mm256_setzero_ps();
            for c in (0..q.len()).step_by(8) {
                let (q, k) = unsafe { (_mm256_loadu_ps(q.as_ptr().add(c)), E::load8_avx2(k.add(c))) };
                acc = _mm256_fmadd_ps(q, k, acc);
            }
            let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
            let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
            _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)))
        }

        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn weighted_sum<E: Element>(out: &mut [f32], weights: &[f32], run: &Run<E>) {
            for (part, out) in out.chunks_mut(HELD).enumerate() {
                let at = part * HELD;
                let mut acc = [_mm256_setzero_ps(); HELD / 8];
                let held = &mut acc[..out.len() / 8];
                for (j, acc) in held.iter_mut().enumerate() {
                    *acc = unsafe { _mm256_loadu_ps(out.as_ptr().add(8 * j)) };
                }
                for (i, &w) in weights.iter().enumerate() {
                    let (w, v) = (_mm256_set1_ps(w), unsafe { run.token(i).add(at) });
                    for (j, acc) in held.iter_mut().enumerate() {
                        *acc = _mm256_fmadd_ps(w, unsafe { E::load8_avx2(v.add(8 * j)) }, *acc);
                    }
                }
                for (j, acc) in held.iter().enumerate() {
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * j), *acc) };
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn head_avx512<I: Element>(h: &Head<I>, q: &[f32], out: &mut [f32], scores: &mut Vec<f32>) {
        unsafe { head::<Avx512, I>(h, q, out, scores) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn head_avx2<I: Element>(h: &Head<I>, q: &[f32], out: &mut [f32], scores: &mut Vec<f32>) {
        unsafe { head::<Avx2, I>(h, q, out, scores) }
    }
}

/// Softmax-weighted sum for one (row, head) with the loops of `L`: the scores of every image and
/// text token, their softmax (in lanes of [`LANES`] floats that the compiler turns into the
/// vector instructions of the function it is inlined into), then the weighted sum of the values.
///
/// # Safety
/// As [`head_with`], on a CPU with `L`'s instructions.
#[inline(always)]
unsafe fn head<L: Lanes, I: Element>(h: &Head<I>, q: &[f32], out: &mut [f32], scores: &mut Vec<f32>) {
    let (image, text) = (h.image.0.tokens, h.text.0.tokens);
    scores.clear();
    for i in 0..image {
        scores.push(unsafe { L::dot(q, h.image.0.token(i)) });
    }
    for t in 0..text {
        scores.push(unsafe { L::dot(q, h.text.0.token(t)) });
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = exp_minus_in_place(scores, max);
    out.fill(0.0);
    unsafe {
        L::weighted_sum(out, &scores[..image], &h.image.1);
        L::weighted_sum(out, &scores[image..], &h.text.1);
    }
    let inverse = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inverse);
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
                let got = attention_image_then_text(&q, (&image.0, &image.1), (&text_part.0, &text_part.1));
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
        // More queries than text tokens, a head width that is not a whole number of lanes,
        // bf16 text keys and values, f16 image ones.
        let four_queries = Tensor::randn([1, 2, 4, 16], f32);
        assert!(attend(&four_queries, (&image, &image), (&text, &text)).is_none());
        let (image8, text8) = (Tensor::randn([1, 2, 5, 8], f32), Tensor::randn([1, 2, 3, 8], f32));
        assert!(attend(&Tensor::randn([1, 2, 1, 8], f32), (&image8, &image8), (&text8, &text8)).is_none());
        let one_query = Tensor::randn([1, 2, 1, 16], f32);
        let bf16 = text.to_kind(Kind::BFloat16);
        assert!(attend(&one_query, (&image, &image), (&bf16, &bf16)).is_none());
        let f16 = image.to_kind(Kind::Half);
        assert!(attend(&one_query, (&f16, &f16), (&text, &text)).is_none());
    }

    #[test]
    fn bf16_image_keys_and_values_give_exactly_their_f32_copys_result() {
        let _guard = tch::no_grad_guard();
        let f32 = (Kind::Float, Device::Cpu);
        for (rows, heads, d, image_tokens, text) in [(1, 12, 64, 197, 3), (3, 4, 16, 1182, 5)] {
            tch::manual_seed(rows * 10 + d);
            let bf16 = |t: Tensor| t.to_kind(Kind::BFloat16);
            let image = (
                bf16(Tensor::randn([1, heads, image_tokens, d], f32)),
                bf16(Tensor::randn([1, heads, image_tokens, d], f32)),
            );
            let widened = (image.0.to_kind(Kind::Float), image.1.to_kind(Kind::Float));
            let text = (Tensor::randn([rows, heads, text, d], f32), Tensor::randn([rows, heads, text, d], f32));
            // A step (one query per row) and a prompt (the text's last three tokens).
            for seq in [1, 3] {
                let q = Tensor::randn([rows, heads, seq, d], f32) * 3.0;
                for level in Level::available() {
                    let got = with_level(level, &q, (&image.0, &image.1), (&text.0, &text.1));
                    let want = with_level(level, &q, (&widened.0, &widened.1), (&text.0, &text.1));
                    assert!(got.equal(&want), "{level:?}, {seq} queries: bf16 image part differs from its f32 copy");
                }
            }
        }
        // Heads of 8 take the libtorch path, which widens them to f32 first: the same result too.
        let image = Tensor::randn([1, 2, 30, 8], f32).to_kind(Kind::BFloat16);
        let widened = image.to_kind(Kind::Float);
        let text = Tensor::randn([1, 2, 4, 8], f32);
        for seq in [1, 3] {
            let q = Tensor::randn([1, 2, seq, 8], f32);
            let got = attention_image_then_text(&q, (&image, &image), (&text, &text));
            let want = attention_image_then_text(&q, (&widened, &widened), (&text, &text));
            assert!(got.equal(&want), "libtorch path, {seq} queries: bf16 image part differs from its f32 copy");
        }
    }

    /// [`attend`] with the loop of `level` (the one detected may be wider).
    fn with_level(level: Level, q: &Tensor, image: (&Tensor, &Tensor), text: (&Tensor, &Tensor)) -> Tensor {
        attend_with(level, q, image, text).expect("the loop applies")
    }
}
