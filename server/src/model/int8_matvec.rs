//! Fast mode's product of a few rows of f32 activations with an int8 weight (one scale per
//! output channel): `y[r, o] = scale[o] · Σₖ w[o, k] · x[r, k] + bias[o]`, accumulated in f32.
//!
//! Decoding one token reads every weight once for one row of activations, so its time is the
//! time to stream the weights. libtorch's kernel for this (`_weight_int8pack_mm`) takes bf16
//! activations and streams cold weights at 5–10 GB/s here, a third of what one core reads
//! (bench/NOTES.md). This one reads a weight laid out for it ([`PackedInt8`]: one sequential
//! stream, prefetched ahead), keeps the activations in f32 and adds scale and bias in the same
//! pass, with loops compiled for AVX-512 and for AVX2 with FMA, picked at run time.

/// Output channels computed together: each chunk of activations is loaded once for all of them.
const BLOCK: usize = 4;
/// Values of one channel stored together: one AVX-512 register, two AVX2 registers.
const CHUNK: usize = 16;
/// Activation rows computed together: each chunk of weights is converted once for all of them.
const ROWS: usize = 4;
/// How far ahead of the loop the weights are prefetched, in bytes.
const PREFETCH: usize = 1024;

/// Whether [`PackedInt8::matvec`] runs a vectorised loop on this CPU (AVX-512, or AVX2 with
/// FMA); elsewhere its portable loop is slower than libtorch's kernel.
pub fn vectorised() -> bool {
    !matches!(Dot::detect(), Dot::Portable)
}

/// An int8 weight [n, k] laid out for [`Self::matvec`]: output channels in blocks of [`BLOCK`],
/// each block stored chunk by chunk ([`CHUNK`] values of each of its channels in turn), so that
/// the product reads one sequential stream. Padded with zeros to whole blocks and chunks.
pub struct PackedInt8 {
    values: Vec<i8>,
    n: usize,
    k: usize,
}

impl PackedInt8 {
    /// Packs `w`, int8 [n, k] row-major.
    pub fn pack(w: &[i8], n: usize, k: usize) -> Self {
        assert!(n > 0 && k > 0 && w.len() == n * k, "PackedInt8: {} values are not [{n}, {k}]", w.len());
        let (blocks, chunks) = (n.div_ceil(BLOCK), k.div_ceil(CHUNK));
        let mut values = vec![0i8; blocks * BLOCK * chunks * CHUNK];
        for o in 0..n {
            let (block, j) = (o / BLOCK, o % BLOCK);
            for (c, chunk) in w[o * k..][..k].chunks(CHUNK).enumerate() {
                let at = ((block * chunks + c) * BLOCK + j) * CHUNK;
                values[at..at + chunk.len()].copy_from_slice(chunk);
            }
        }
        Self { values, n, k }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.values.len()
    }

    /// `out[r * n + o] = scales[o] · Σᵢ w[o, i] · x[r * k + i] + bias[o]` for every row `r` of
    /// `x` (`x.len() / k` rows), the output channels split between the threads of libtorch's
    /// OpenMP team ([`openmp`]) when there are enough of them.
    pub fn matvec(&self, scales: &[f32], bias: Option<&[f32]>, x: &[f32], out: &mut [f32]) {
        let threads = if self.n >= MIN_CHANNELS_TO_SPLIT { tch::get_num_threads().max(1) as usize } else { 1 };
        self.matvec_with(Dot::detect(), threads, scales, bias, x, out)
    }

    fn matvec_with(&self, dot: Dot, threads: usize, scales: &[f32], bias: Option<&[f32]>, x: &[f32], out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        assert!(scales.len() == n && bias.is_none_or(|b| b.len() == n), "PackedInt8: scales and bias are [{n}]");
        assert!(
            x.len().is_multiple_of(k) && out.len() == x.len() / k * n,
            "PackedInt8: x is [rows, {k}], out [rows, {n}]"
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
            unsafe { self.blocks(dot, first..end, kp, scales, bias, x, out) }
        };
        match openmp::Team::get().filter(|_| threads > 1) {
            Some(team) => team.run(threads, &|thread, of| run(blocks * thread / of, blocks * (thread + 1) / of)),
            None => run(0, blocks),
        }
    }

    /// The output channels of blocks `range`, for every row of `x` (padded to `kp`).
    ///
    /// # Safety
    /// `out` points to `[rows, n]` f32s, and no other thread writes these blocks' channels.
    #[allow(clippy::too_many_arguments)]
    unsafe fn blocks(
        &self,
        dot: Dot,
        range: std::ops::Range<usize>,
        kp: usize,
        scales: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        out: Output,
    ) {
        let (n, rows) = (self.n, x.len() / kp);
        for b in range {
            let block = &self.values[b * BLOCK * kp..][..BLOCK * kp];
            let o = b * BLOCK;
            let channels = BLOCK.min(n - o);
            let mut r = 0;
            while r < rows {
                let group = ROWS.min(rows - r);
                let input = |i: usize| &x[(r + i) * kp..][..kp];
                let write = |i: usize, sums: [f32; BLOCK]| {
                    for j in 0..channels {
                        let value = scales[o + j] * sums[j] + bias.map_or(0.0, |b| b[o + j]);
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

/// Products with fewer output channels than this run on one thread (waking the team costs more).
const MIN_CHANNELS_TO_SPLIT: usize = 256;

/// The output of a product, written by several threads at disjoint channels.
#[derive(Clone, Copy)]
struct Output(*mut f32);
// SAFETY: the threads write disjoint elements (see `PackedInt8::blocks`).
unsafe impl Sync for Output {}
unsafe impl Send for Output {}

/// libtorch's OpenMP runtime (libgomp), found among the libraries already loaded, so that the
/// loop's threads are the ones libtorch's own parallel regions use: a thread of gitcap's own
/// would compete with libgomp's worker, which spin-waits on the other core between the step's
/// small parallel regions (see `ModelWorker::load`).
mod openmp {
    use std::ffi::{c_int, c_uint, c_void, CStr};
    use std::sync::OnceLock;

    type Body = unsafe extern "C" fn(*mut c_void);

    pub struct Team {
        /// `GOMP_parallel(fn, data, num_threads, flags)`: what `#pragma omp parallel` compiles to.
        parallel: unsafe extern "C" fn(Body, *mut c_void, c_uint, c_uint),
        thread_num: unsafe extern "C" fn() -> c_int,
        num_threads: unsafe extern "C" fn() -> c_int,
    }

    impl Team {
        /// The runtime, if this process has libgomp loaded (libtorch's CPU builds link it).
        pub fn get() -> Option<&'static Team> {
            static TEAM: OnceLock<Option<Team>> = OnceLock::new();
            TEAM.get_or_init(|| {
                let find = |name: &CStr| {
                    // SAFETY: dlsym with a NUL-terminated name; null when absent.
                    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
                    (!symbol.is_null()).then_some(symbol)
                };
                let (parallel, thread_num, num_threads) =
                    (find(c"GOMP_parallel")?, find(c"omp_get_thread_num")?, find(c"omp_get_num_threads")?);
                // SAFETY: libgomp's documented signatures.
                unsafe {
                    Some(Team {
                        parallel: std::mem::transmute::<
                            *mut c_void,
                            unsafe extern "C" fn(Body, *mut c_void, c_uint, c_uint),
                        >(parallel),
                        thread_num: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(thread_num),
                        num_threads: std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> c_int>(num_threads),
                    })
                }
            })
            .as_ref()
        }

        /// Runs `work(thread, threads)` on up to `threads` threads of the calling thread's team
        /// (this thread is thread 0), returning when every one has finished.
        pub fn run(&self, threads: usize, work: &(dyn Fn(usize, usize) + Sync)) {
            struct Call<'a> {
                team: &'a Team,
                work: &'a (dyn Fn(usize, usize) + Sync),
            }
            unsafe extern "C" fn body(data: *mut c_void) {
                // SAFETY: `data` is the `Call` below, alive until GOMP_parallel returns.
                let call = unsafe { &*(data as *const Call) };
                let (thread, of) = unsafe { ((call.team.thread_num)(), (call.team.num_threads)()) };
                (call.work)(thread.max(0) as usize, of.max(1) as usize);
            }
            let call = Call { team: self, work };
            // SAFETY: `body` reads `call` only while GOMP_parallel runs; flags 0 = no proc_bind.
            unsafe { (self.parallel)(body, &call as *const Call as *mut c_void, threads as c_uint, 0) };
        }
    }
}

/// The widest dot-product loop this CPU runs.
#[derive(Debug, Clone, Copy)]
enum Dot {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Dot {
    /// Every loop this CPU runs (tests compare them).
    #[cfg(test)]
    fn available() -> Vec<Self> {
        let mut all = vec![Dot::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                all.push(Dot::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                all.push(Dot::Avx512);
            }
        }
        all
    }

    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Dot::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Dot::Avx2;
            }
        }
        Dot::Portable
    }

    /// `sums[r][j]` = Σᵢ (channel j of `block`)[i] · inputs[r][i], in f32; `block` is one packed
    /// block, each input a whole number of chunks as long.
    fn block<const R: usize>(self, block: &[i8], inputs: &[&[f32]; R]) -> [[f32; BLOCK]; R] {
        assert!(inputs.iter().all(|x| x.len() * BLOCK == block.len() && x.len() % CHUNK == 0));
        match self {
            Dot::Portable => {
                let mut sums = [[0f32; BLOCK]; R];
                for (c, chunk) in block.chunks_exact(BLOCK * CHUNK).enumerate() {
                    for (sums, x) in sums.iter_mut().zip(inputs) {
                        let x = &x[c * CHUNK..][..CHUNK];
                        for (sum, w) in sums.iter_mut().zip(chunk.chunks_exact(CHUNK)) {
                            *sum += w.iter().zip(x).map(|(w, x)| f32::from(*w) * x).sum::<f32>();
                        }
                    }
                }
                sums
            }
            // SAFETY: detect() found the features each is compiled for; lengths checked above.
            #[cfg(target_arch = "x86_64")]
            Dot::Avx2 => unsafe { x86::block_avx2(block, inputs) },
            #[cfg(target_arch = "x86_64")]
            Dot::Avx512 => unsafe { x86::block_avx512(block, inputs) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK, CHUNK, PREFETCH};

    #[target_feature(enable = "avx512f")]
    pub unsafe fn block_avx512<const R: usize>(block: &[i8], inputs: &[&[f32]; R]) -> [[f32; BLOCK]; R] {
        let mut acc = [[_mm512_setzero_ps(); BLOCK]; R];
        let mut p = block.as_ptr();
        for c in 0..block.len() / (BLOCK * CHUNK) {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH));
            let mut w = [_mm512_setzero_ps(); BLOCK];
            for (j, w) in w.iter_mut().enumerate() {
                *w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(j * CHUNK).cast())));
            }
            for (acc, x) in acc.iter_mut().zip(inputs) {
                let x = _mm512_loadu_ps(x.as_ptr().add(c * CHUNK));
                for (acc, w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_fmadd_ps(*w, x, *acc);
                }
            }
            p = p.add(BLOCK * CHUNK);
        }
        acc.map(|row| row.map(|acc| _mm512_reduce_add_ps(acc)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block_avx2<const R: usize>(block: &[i8], inputs: &[&[f32]; R]) -> [[f32; BLOCK]; R] {
        let mut acc = [[_mm256_setzero_ps(); BLOCK]; R];
        let mut p = block.as_ptr();
        for c in 0..block.len() / (BLOCK * CHUNK) {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH));
            for half in [0, 8] {
                let mut w = [_mm256_setzero_ps(); BLOCK];
                for (j, w) in w.iter_mut().enumerate() {
                    let bytes = _mm_loadl_epi64(p.add(j * CHUNK + half).cast());
                    *w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
                }
                for (acc, x) in acc.iter_mut().zip(inputs) {
                    let x = _mm256_loadu_ps(x.as_ptr().add(c * CHUNK + half));
                    for (acc, w) in acc.iter_mut().zip(&w) {
                        *acc = _mm256_fmadd_ps(*w, x, *acc);
                    }
                }
            }
            p = p.add(BLOCK * CHUNK);
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
    fn reference(w: &[i8], scales: &[f32], bias: Option<&[f32]>, x: &[f32], k: usize) -> Vec<f64> {
        let n = scales.len();
        let mut out = Vec::new();
        for x_row in x.chunks_exact(k) {
            for o in 0..n {
                let dot: f64 = (0..k).map(|i| f64::from(w[o * k + i]) * f64::from(x_row[i])).sum();
                out.push(f64::from(scales[o]) * dot + bias.map_or(0.0, |b| f64::from(b[o])));
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

    #[test]
    fn every_loop_matches_the_product_in_f64_for_every_shape() {
        // Channels that are and are not whole blocks, widths that are and are not whole
        // chunks, one row and rows in groups and not.
        for (n, k, rows) in
            [(1, 1, 1), (5, 7, 1), (8, 16, 2), (9, 33, 3), (13, 768, 1), (7, 3072, 4), (6, 40, 5), (11, 776, 9)]
        {
            let w: Vec<i8> = values(1, n * k).map(|v| (v * 127.0).round() as i8).collect();
            let scales: Vec<f32> = values(2, n).map(|v| (v.abs() + 0.1) / 127.0).collect();
            let bias: Vec<f32> = values(3, n).collect();
            let x: Vec<f32> = values(4, rows * k).map(|v| v * 3.0).collect();
            let packed = PackedInt8::pack(&w, n, k);
            // f32 accumulation of k products of size ≤ 3 × 127, scaled by ≤ 1.1 / 127.
            let bound = 1e-6 * (k as f64) * 3.0 * 1.1 + 1e-6;
            for bias in [None, Some(bias.as_slice())] {
                let want = reference(&w, &scales, bias, &x, k);
                let mut out = vec![f32::NAN; rows * n];
                packed.matvec(&scales, bias, &x, &mut out);
                for (dot, threads) in Dot::available().into_iter().flat_map(|dot| [(dot, 1), (dot, 2), (dot, 3)]) {
                    let mut by = vec![f32::NAN; rows * n];
                    packed.matvec_with(dot, threads, &scales, bias, &x, &mut by);
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

    /// libtorch's CPU build links libgomp, and its team runs the work on every thread asked for.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_work_runs_on_each_thread_of_libtorchs_openmp_team_once() {
        let team = openmp::Team::get().expect("libgomp is loaded with libtorch");
        let seen = std::sync::Mutex::new(Vec::new());
        team.run(2, &|thread, of| seen.lock().unwrap().push((thread, of)));
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, [(0, 2), (1, 2)]);
    }
}
