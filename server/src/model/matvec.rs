//! Batch-1 decoding's matrix products: a few rows of f32 activations times a weight [n, k],
//! `y[r, o] = scale[o] · Σₖ w[o, k] · x[r, k] + bias[o]`, accumulated in f32, for int8 weights
//! (one scale per output channel: fast mode), bf16 weights (bf16 mode) and f32 weights (fast
//! mode's dense layer on CPUs without native bf16).
//!
//! Decoding one token reads every weight once for one row of activations, so its time is the
//! time to stream the weights. libtorch's kernels for one row stream cold weights at 5–16 GB/s
//! here, a third to a half of what one core reads (bench/NOTES.md). These read a weight laid out
//! for them ([`PackedWeight`]: one sequential stream, prefetched ahead), widen each value to f32
//! in registers, and add scale and bias in the same pass, with loops compiled for AVX-512 and
//! for AVX2 with FMA, picked at run time; the output channels are split between libtorch's own
//! OpenMP threads.

/// Output channels computed together: each chunk of activations is loaded once for all of them.
const BLOCK: usize = 4;
/// Values of one channel stored together: one AVX-512 register, two AVX2 registers.
const CHUNK: usize = 16;
/// Activation rows computed together: each chunk of weights is converted once for all of them.
const ROWS: usize = 4;
/// How far ahead of the loop the weights are prefetched, in bytes.
const PREFETCH: usize = 1024;
/// A cache line.
const LINE: usize = 64;

use super::lanes::Level;
use super::openmp;

/// Whether [`PackedWeight::matvec`] runs a vectorised loop on this CPU (AVX-512, or AVX2 with
/// FMA); elsewhere its portable loop is slower than libtorch's kernels.
pub fn vectorised() -> bool {
    !matches!(Dot::detect(), Dot::Portable)
}

/// A weight [n, k] laid out for [`Self::matvec`], with its scales (int8) and bias in f32: output
/// channels in blocks of [`BLOCK`], each block stored chunk by chunk ([`CHUNK`] values of each of
/// its channels in turn), so that the product reads one sequential stream. Padded with zeros to
/// whole blocks and chunks.
pub struct PackedWeight {
    values: Values,
    n: usize,
    k: usize,
    /// Int8 weights: `w[o, i] ≈ values[o, i] · scales[o]`.
    scales: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
}

enum Values {
    Int8(Stream<i8>),
    /// bf16 bit patterns.
    Bf16(Stream<u16>),
    F32(Stream<f32>),
}

impl PackedWeight {
    /// Int8 `w` [n, k] row-major, dequantised by `scales` [n].
    pub fn int8(w: &[i8], n: usize, k: usize, scales: Vec<f32>, bias: Option<Vec<f32>>) -> Self {
        assert_eq!(scales.len(), n, "PackedWeight: scales are [{n}]");
        Self { scales: Some(scales), ..Self::new(Values::Int8(pack(w, n, k)), n, k, bias) }
    }

    /// bf16 `w` [n, k] row-major, as bit patterns.
    pub fn bf16(w: &[u16], n: usize, k: usize, bias: Option<Vec<f32>>) -> Self {
        Self::new(Values::Bf16(pack(w, n, k)), n, k, bias)
    }

    /// f32 `w` [n, k] row-major.
    pub fn f32(w: &[f32], n: usize, k: usize, bias: Option<Vec<f32>>) -> Self {
        Self::new(Values::F32(pack(w, n, k)), n, k, bias)
    }

    fn new(values: Values, n: usize, k: usize, bias: Option<Vec<f32>>) -> Self {
        assert!(bias.as_ref().is_none_or(|b| b.len() == n), "PackedWeight: the bias is [{n}]");
        Self { values, n, k, scales: None, bias }
    }

    /// Output channels.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held (values, scales, bias).
    pub fn bytes(&self) -> usize {
        let values = match &self.values {
            Values::Int8(v) => v.len(),
            Values::Bf16(v) => 2 * v.len(),
            Values::F32(v) => 4 * v.len(),
        };
        let floats = self.scales.as_ref().map_or(0, Vec::len) + self.bias.as_ref().map_or(0, Vec::len);
        values + 4 * floats
    }

    /// `out[r * n + o] = scale[o] · Σᵢ w[o, i] · x[r * k + i] + bias[o]` for every row `r` of
    /// `x` (`x.len() / k` rows), the output channels split between the threads of libtorch's
    /// OpenMP team ([`openmp`]) when there are enough of them.
    pub fn matvec(&self, x: &[f32], out: &mut [f32]) {
        let threads = if self.n >= MIN_CHANNELS_TO_SPLIT { tch::get_num_threads().max(1) as usize } else { 1 };
        self.matvec_with(Dot::detect(), threads, x, out)
    }

    fn matvec_with(&self, dot: Dot, threads: usize, x: &[f32], out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        assert!(
            x.len().is_multiple_of(k) && out.len() == x.len() / k * n,
            "PackedWeight: x is [rows, {k}], out [rows, {n}]"
        );
        let kp = k.div_ceil(CHUNK) * CHUNK;
        // Activations padded to whole chunks (GIT's widths are whole already).
        let padded: Vec<f32>;
        let x = if kp == k {
            x
        } else {
            padded =
                x.chunks_exact(k).flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(0.0, kp - k))).collect();
            &padded
        };
        let blocks = n.div_ceil(BLOCK);
        let out = Output(out.as_mut_ptr());
        let run = |first: usize, end: usize| {
            // SAFETY: each call writes the output channels of its own blocks only.
            unsafe {
                match &self.values {
                    Values::Int8(values) => self.blocks(&values[..], dot, first..end, kp, x, out),
                    Values::Bf16(values) => self.blocks(Bf16::slice(&values[..]), dot, first..end, kp, x, out),
                    Values::F32(values) => self.blocks(&values[..], dot, first..end, kp, x, out),
                }
            }
        };
        match openmp::Team::get().filter(|_| threads > 1) {
            Some(team) => team.run(threads, &|thread, of| run(blocks * thread / of, blocks * (thread + 1) / of)),
            None => run(0, blocks),
        }
    }

    /// The output channels of blocks `range` of `values`, for every row of `x` (padded to `kp`).
    ///
    /// # Safety
    /// `out` points to `[rows, n]` f32s, and no other thread writes these blocks' channels.
    unsafe fn blocks<E: Element>(
        &self,
        values: &[E],
        dot: Dot,
        range: std::ops::Range<usize>,
        kp: usize,
        x: &[f32],
        out: Output,
    ) {
        let (n, rows) = (self.n, x.len() / kp);
        let (scales, bias) = (self.scales.as_deref(), self.bias.as_deref());
        for b in range {
            let block = &values[b * BLOCK * kp..][..BLOCK * kp];
            let o = b * BLOCK;
            let channels = BLOCK.min(n - o);
            let mut r = 0;
            while r < rows {
                let group = ROWS.min(rows - r);
                let input = |i: usize| &x[(r + i) * kp..][..kp];
                let write = |i: usize, sums: [f32; BLOCK]| {
                    for j in 0..channels {
                        let value = scales.map_or(1.0, |s| s[o + j]) * sums[j] + bias.map_or(0.0, |b| b[o + j]);
                        // SAFETY: within [rows, n], in this call's channels (the caller's promise).
                        unsafe { *out.0.add((r + i) * n + o + j) = value };
                    }
                };
                match group {
                    1 => dot.block(block, &[input(0)]).into_iter().enumerate().for_each(|(i, s)| write(i, s)),
                    2 => dot.block(block, &[input(0), input(1)]).into_iter().enumerate().for_each(|(i, s)| write(i, s)),
                    3 => dot
                        .block(block, &[input(0), input(1), input(2)])
                        .into_iter()
                        .enumerate()
                        .for_each(|(i, s)| write(i, s)),
                    _ => dot
                        .block(block, &[input(0), input(1), input(2), input(3)])
                        .into_iter()
                        .enumerate()
                        .for_each(|(i, s)| write(i, s)),
                }
                r += group;
            }
        }
    }
}

/// `w` [n, k] row-major in the packed layout (see [`PackedWeight`]).
fn pack<E: Copy + Default>(w: &[E], n: usize, k: usize) -> Stream<E> {
    assert!(n > 0 && k > 0 && w.len() == n * k, "PackedWeight: {} values are not [{n}, {k}]", w.len());
    let (blocks, chunks) = (n.div_ceil(BLOCK), k.div_ceil(CHUNK));
    let mut values = Stream::zeroed(blocks * BLOCK * chunks * CHUNK);
    for o in 0..n {
        let (block, j) = (o / BLOCK, o % BLOCK);
        for (c, chunk) in w[o * k..][..k].chunks(CHUNK).enumerate() {
            let at = ((block * chunks + c) * BLOCK + j) * CHUNK;
            values[at..at + chunk.len()].copy_from_slice(chunk);
        }
    }
    values
}

/// Memory for packed values, which each decoding step reads once from end to end: its own
/// anonymous mapping, aligned to a huge page, and every whole huge page of it advised to the
/// kernel as one (`MADV_HUGEPAGE`, which the default `madvise` setting of transparent huge
/// pages honours). Streaming from 4 KiB pages costs a TLB miss every 4 KiB and stops the
/// hardware prefetcher at each page's end: one thread read 22 GB/s from them against 27 from
/// huge pages on the benchmark's CPU. The tail past the last whole huge page stays in small
/// pages, so no memory is spent on padding.
struct Stream<E> {
    data: std::ptr::NonNull<E>,
    len: usize,
    /// The whole mapping, from its start.
    mapping: (*mut libc::c_void, usize),
}

const HUGE_PAGE: usize = 2 << 20;

impl<E: Copy + Default> Stream<E> {
    /// `len` zeros (E's default must be all-zero bits, as for the number types used here).
    fn zeroed(len: usize) -> Self {
        let bytes = (len * size_of::<E>()).max(1);
        let size = bytes + HUGE_PAGE;
        // SAFETY: a fresh private anonymous mapping (zero-filled), checked below.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            start != libc::MAP_FAILED,
            "PackedWeight: cannot map {size} bytes: {}",
            std::io::Error::last_os_error()
        );
        let aligned = (start as usize).next_multiple_of(HUGE_PAGE);
        let whole = bytes / HUGE_PAGE * HUGE_PAGE;
        if whole > 0 {
            // SAFETY: within the mapping; advice only (an error leaves small pages).
            unsafe { libc::madvise(aligned as *mut libc::c_void, whole, libc::MADV_HUGEPAGE) };
        }
        Stream {
            data: std::ptr::NonNull::new(aligned as *mut E).expect("a mapping is not at address 0"),
            len,
            mapping: (start, size),
        }
    }
}

impl<E> std::ops::Deref for Stream<E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        // SAFETY: `len` values, zero-initialised at mapping and written only through `deref_mut`.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.len) }
    }
}

impl<E> std::ops::DerefMut for Stream<E> {
    fn deref_mut(&mut self) -> &mut [E] {
        // SAFETY: as in `deref`, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr(), self.len) }
    }
}

impl<E> Drop for Stream<E> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `zeroed`, unmapped once.
        unsafe { libc::munmap(self.mapping.0, self.mapping.1) };
    }
}

// SAFETY: the values are plain numbers, owned by the stream, and only read while shared.
unsafe impl<E: Send> Send for Stream<E> {}
unsafe impl<E: Sync> Sync for Stream<E> {}

/// A bf16 value, as its bit pattern: the high half of the f32 it widens to.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Bf16 {
    fn slice(bits: &[u16]) -> &[Bf16] {
        // SAFETY: `Bf16` is a transparent u16.
        unsafe { std::slice::from_raw_parts(bits.as_ptr().cast(), bits.len()) }
    }

    pub fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }

    /// The nearest bf16 (ties to even), as libtorch rounds; NaN stays NaN.
    pub fn from_f32(value: f32) -> Self {
        let bits = value.to_bits();
        if value.is_nan() {
            return Bf16(((bits >> 16) | 0x40) as u16);
        }
        Bf16((bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16)
    }
}

/// A value the loops widen to f32 (weights here, image keys and values in `step_attention`).
pub(super) trait Element: Copy + Sync {
    fn widen(self) -> f32;
    /// Sixteen values from `p`, widened.
    ///
    /// # Safety
    /// AVX-512F is present and `p` points to 16 values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16_avx512(p: *const Self) -> std::arch::x86_64::__m512;
    /// Eight values from `p`, widened.
    ///
    /// # Safety
    /// AVX2 is present and `p` points to 8 values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8_avx2(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Element for i8 {
    fn widen(self) -> f32 {
        f32::from(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16_avx512(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(unsafe { _mm_loadu_si128(p.cast()) }))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8_avx2(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(unsafe { _mm_loadl_epi64(p.cast()) }))
    }
}

impl Element for Bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16_avx512(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let halves = unsafe { _mm256_loadu_si256(p.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8_avx2(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let halves = unsafe { _mm_loadu_si128(p.cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)))
    }
}

impl Element for f32 {
    fn widen(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16_avx512(p: *const Self) -> std::arch::x86_64::__m512 {
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8_avx2(p: *const Self) -> std::arch::x86_64::__m256 {
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

/// Products with fewer output channels than this run on one thread (waking the team costs more).
const MIN_CHANNELS_TO_SPLIT: usize = 256;

/// The output of a product, written by several threads at disjoint channels.
#[derive(Clone, Copy)]
struct Output(*mut f32);
// SAFETY: the threads write disjoint elements (see `PackedWeight::blocks`).
unsafe impl Sync for Output {}
unsafe impl Send for Output {}

/// The widest dot-product loop this CPU runs: a vector one ([`Level`]) or the portable one.
#[derive(Debug, Clone, Copy)]
enum Dot {
    Portable,
    Vector(Level),
}

impl Dot {
    /// Every loop this CPU runs (tests compare them).
    #[cfg(test)]
    fn available() -> Vec<Self> {
        std::iter::once(Dot::Portable).chain(Level::available().into_iter().map(Dot::Vector)).collect()
    }

    fn detect() -> Self {
        Level::detect().map_or(Dot::Portable, Dot::Vector)
    }

    /// `sums[r][j]` = Σᵢ (channel j of `block`)[i] · inputs[r][i], in f32; `block` is one packed
    /// block, each input a whole number of chunks as long.
    fn block<E: Element, const R: usize>(self, block: &[E], inputs: &[&[f32]; R]) -> [[f32; BLOCK]; R] {
        assert!(inputs.iter().all(|x| x.len() * BLOCK == block.len() && x.len() % CHUNK == 0));
        match self {
            Dot::Portable => {
                let mut sums = [[0f32; BLOCK]; R];
                for (c, chunk) in block.chunks_exact(BLOCK * CHUNK).enumerate() {
                    for (sums, x) in sums.iter_mut().zip(inputs) {
                        let x = &x[c * CHUNK..][..CHUNK];
                        for (sum, w) in sums.iter_mut().zip(chunk.chunks_exact(CHUNK)) {
                            *sum += w.iter().zip(x).map(|(w, x)| w.widen() * x).sum::<f32>();
                        }
                    }
                }
                sums
            }
            // SAFETY: the level was detected on this CPU; lengths checked above.
            #[cfg(target_arch = "x86_64")]
            Dot::Vector(Level::Avx2) => unsafe { x86::block_avx2(block, inputs) },
            #[cfg(target_arch = "x86_64")]
            Dot::Vector(Level::Avx512) => unsafe { x86::block_avx512(block, inputs) },
            #[cfg(not(target_arch = "x86_64"))]
            Dot::Vector(level) => unreachable!("no vector level is detected off x86-64: {level:?}"),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Element, BLOCK, CHUNK, LINE, PREFETCH};

    /// Prefetches the lines of one chunk step, [`PREFETCH`] bytes ahead of `p`.
    #[inline(always)]
    fn prefetch<E>(p: *const E) {
        let bytes = BLOCK * CHUNK * size_of::<E>();
        let ahead = p.cast::<i8>().wrapping_add(PREFETCH);
        for line in (0..bytes).step_by(LINE) {
            // SAFETY: a prefetch of any address is harmless.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line)) };
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn block_avx512<E: Element, const R: usize>(block: &[E], inputs: &[&[f32]; R]) -> [[f32; BLOCK]; R] {
        let mut acc = [[_mm512_setzero_ps(); BLOCK]; R];
        let mut p = block.as_ptr();
        for c in 0..block.len() / (BLOCK * CHUNK) {
            prefetch(p);
            let mut w = [_mm512_setzero_ps(); BLOCK];
            for (j, w) in w.iter_mut().enumerate() {
                *w = unsafe { E::load16_avx512(p.add(j * CHUNK)) };
            }
            for (acc, x) in acc.iter_mut().zip(inputs) {
                let x = unsafe { _mm512_loadu_ps(x.as_ptr().add(c * CHUNK)) };
                for (acc, w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_fmadd_ps(*w, x, *acc);
                }
            }
            p = unsafe { p.add(BLOCK * CHUNK) };
        }
        acc.map(|row| row.map(|acc| _mm512_reduce_add_ps(acc)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block_avx2<E: Element, const R: usize>(block: &[E], inputs: &[&[f32]; R]) -> [[f32; BLOCK]; R] {
        let mut acc = [[_mm256_setzero_ps(); BLOCK]; R];
        let mut p = block.as_ptr();
        for c in 0..block.len() / (BLOCK * CHUNK) {
            prefetch(p);
            for half in [0, 8] {
                let mut w = [_mm256_setzero_ps(); BLOCK];
                for (j, w) in w.iter_mut().enumerate() {
                    *w = unsafe { E::load8_avx2(p.add(j * CHUNK + half)) };
                }
                for (acc, x) in acc.iter_mut().zip(inputs) {
                    let x = unsafe { _mm256_loadu_ps(x.as_ptr().add(c * CHUNK + half)) };
                    for (acc, w) in acc.iter_mut().zip(&w) {
                        *acc = _mm256_fmadd_ps(*w, x, *acc);
                    }
                }
            }
            p = unsafe { p.add(BLOCK * CHUNK) };
        }
        acc.map(|row| row.map(|acc| sum256(acc)))
    }

    #[target_feature(enable = "avx2")]
    fn sum256(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same product in f64 (exact for these sizes up to the final rounding).
    fn reference(w: &[f64], scales: Option<&[f32]>, bias: Option<&[f32]>, x: &[f32], k: usize) -> Vec<f64> {
        let n = w.len() / k;
        let mut out = Vec::new();
        for x_row in x.chunks_exact(k) {
            for o in 0..n {
                let dot: f64 = (0..k).map(|i| w[o * k + i] * f64::from(x_row[i])).sum();
                let scale = scales.map_or(1.0, |s| f64::from(s[o]));
                out.push(scale * dot + bias.map_or(0.0, |b| f64::from(b[o])));
            }
        }
        out
    }

    /// Pseudo-random values in [-1, 1) from a fixed seed.
    fn values(seed: u64, len: usize) -> impl Iterator<Item = f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len).map(move |_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
    }

    /// Every element type, through every loop this CPU has on one to three threads, against the
    /// product in f64, for channels that are and are not whole blocks, widths that are and are
    /// not whole chunks, one row and rows in groups and not.
    #[test]
    fn every_loop_matches_the_product_in_f64_for_every_shape_and_element() {
        for (n, k, rows) in
            [(1, 1, 1), (5, 7, 1), (8, 16, 2), (9, 33, 3), (13, 768, 1), (7, 3072, 4), (6, 40, 5), (11, 776, 9)]
        {
            let int8: Vec<i8> = values(1, n * k).map(|v| (v * 127.0).round() as i8).collect();
            let scales: Vec<f32> = values(2, n).map(|v| (v.abs() + 0.1) / 127.0).collect();
            let bias: Vec<f32> = values(3, n).collect();
            let x: Vec<f32> = values(4, rows * k).map(|v| v * 3.0).collect();
            let bf16: Vec<u16> = values(5, n * k).map(|v| Bf16::from_f32(v).0).collect();
            let f32s: Vec<f32> = values(6, n * k).collect();
            for bias in [None, Some(bias.clone())] {
                // (weight, its values in f64, scales, the largest |product| of one term)
                let cases = [
                    (
                        PackedWeight::int8(&int8, n, k, scales.clone(), bias.clone()),
                        int8.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                        Some(scales.as_slice()),
                        3.0 * 1.1,
                    ),
                    (
                        PackedWeight::bf16(&bf16, n, k, bias.clone()),
                        bf16.iter().map(|&v| f64::from(Bf16(v).to_f32())).collect(),
                        None,
                        3.0,
                    ),
                    (
                        PackedWeight::f32(&f32s, n, k, bias.clone()),
                        f32s.iter().map(|&v| f64::from(v)).collect(),
                        None,
                        3.0,
                    ),
                ];
                for (packed, w, scales, term) in cases {
                    let want = reference(&w, scales, bias.as_deref(), &x, k);
                    // f32 accumulation of k terms of at most `term`.
                    let bound = 1e-6 * (k as f64) * term + 1e-6;
                    let mut out = vec![f32::NAN; rows * n];
                    packed.matvec(&x, &mut out);
                    for (dot, threads) in Dot::available().into_iter().flat_map(|dot| [(dot, 1), (dot, 2), (dot, 3)]) {
                        let mut by = vec![f32::NAN; rows * n];
                        packed.matvec_with(dot, threads, &x, &mut by);
                        for (got, want) in by.iter().chain(&out).zip(want.iter().cycle()) {
                            let error = (f64::from(*got) - want).abs();
                            assert!(
                                error <= bound,
                                "[{n}, {k}] × {rows} rows, {dot:?} on {threads} threads: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// bf16 rounding as libtorch's: to nearest, ties to even, NaN kept.
    #[test]
    fn bf16_rounds_to_nearest_even() {
        let bf16 = |bits: u32| Bf16::from_f32(f32::from_bits(bits)).0;
        assert_eq!(bf16(0x3f80_0000), 0x3f80); // 1.0 exactly
        assert_eq!(bf16(0x3f80_7fff), 0x3f80); // below half: down
        assert_eq!(bf16(0x3f80_8001), 0x3f81); // above half: up
        assert_eq!(bf16(0x3f80_8000), 0x3f80); // a tie to the even 0x3f80
        assert_eq!(bf16(0x3f81_8000), 0x3f82); // a tie to the even 0x3f82
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        assert_eq!(Bf16::from_f32(-2.5).to_f32(), -2.5);
    }
}
