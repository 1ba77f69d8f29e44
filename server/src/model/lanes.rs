//! Math on lanes of f32s, written so that the compiler turns each lane loop into the vector
//! instructions of the function it is inlined into (one AVX-512 register, two AVX2 registers):
//! the exponential for [`super::step_attention`]'s softmax and the exact GELU of the decoder's
//! feed-forward block for one decoding step, where libtorch's erf-based GELU takes 20 µs for the
//! 3072 values of one row.

/// f32 lanes the loops work in.
pub const LANES: usize = 16;

/// The loop compiled for the widest vector extension this CPU has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Level {
    Avx2,
    Avx512,
}

impl Level {
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Some(Level::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Some(Level::Avx2);
            }
        }
        None
    }

    /// Every level this CPU runs (tests compare them).
    #[cfg(test)]
    pub fn available() -> Vec<Self> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                all.push(Level::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                all.push(Level::Avx512);
            }
        }
        all
    }
}

/// eˣ for x ≤ 0 (scores minus their maximum), to about 1 ulp: x = n ln 2 + r with |r| ≤ ln 2 / 2,
/// eʳ by a degree-7 polynomial (Cephes' expf coefficients), 2ⁿ into the exponent bits. Below
/// −87 (where eˣ is under 2⁻¹²⁵) the result is 0.
#[inline(always)]
pub fn exp(x: [f32; LANES]) -> [f32; LANES] {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n · LN2_HIGH is exact.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding and subtracting it rounds an f32 to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let mut out = [0f32; LANES];
    for l in 0..LANES {
        let v = x[l].max(-87.0);
        let rounded = v * LOG2_E + ROUND;
        let n = rounded - ROUND;
        let r = n.mul_add(-LN2_LOW, n.mul_add(-LN2_HIGH, v));
        let mut p = 1.987_569_1e-4f32;
        p = p.mul_add(r, 1.398_199_9e-3);
        p = p.mul_add(r, 8.333_452e-3);
        p = p.mul_add(r, 4.166_579_6e-2);
        p = p.mul_add(r, 1.666_666_5e-1);
        p = p.mul_add(r, 0.5);
        let er = p.mul_add(r * r, r + 1.0);
        // n as an integer, from the bits of n + ROUND (whose ulp is 1): `n as i32` would
        // saturate per lane, a branch the compiler does not vectorise.
        let n_int = rounded.to_bits() as i32 - ROUND.to_bits() as i32;
        let scale = f32::from_bits(((n_int + 127) as u32) << 23);
        out[l] = if x[l] < -87.0 { 0.0 } else { er * scale };
    }
    out
}

/// erfc(x) for x ≥ 0 to a relative error under 1.2·10⁻⁷ everywhere (Numerical Recipes'
/// Chebyshev fit `erfcc`): t · exp(−x² + P(t)), t = 1 / (1 + x/2).
#[inline(always)]
fn erfc_nonnegative(x: [f32; LANES]) -> [f32; LANES] {
    const P: [f32; 10] = [
        0.170_872_77,
        -0.822_152_23,
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ];
    let mut t = [0f32; LANES];
    let mut exponent = [0f32; LANES];
    for l in 0..LANES {
        t[l] = 1.0 / x[l].mul_add(0.5, 1.0);
        let mut p = P[0];
        for c in &P[1..] {
            p = p.mul_add(t[l], *c);
        }
        exponent[l] = (-x[l]).mul_add(x[l], p);
    }
    let e = exp(exponent);
    let mut out = [0f32; LANES];
    for l in 0..LANES {
        out[l] = t[l] * e[l];
    }
    out
}

/// BERT's exact GELU, x · Φ(x) = x/2 · (1 + erf(x/√2)), in place. From erfc, so that the
/// relative error stays about 10⁻⁷ in both tails: for x < 0 it is x/2 · erfc(|x|/√2), for x ≥ 0
/// x/2 · (2 − erfc(x/√2)).
#[inline(always)]
fn gelu_lanes(values: &mut [f32; LANES]) {
    let z = values.map(|x| x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    let c = erfc_nonnegative(z);
    for l in 0..LANES {
        let x = values[l];
        let twice_phi = if x < 0.0 { c[l] } else { 2.0 - c[l] };
        values[l] = 0.5 * x * twice_phi;
    }
}

/// [`gelu_lanes`] over `values`, of any length.
#[inline(always)]
fn gelu_slice(values: &mut [f32]) {
    let mut chunks = values.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        let lanes: &mut [f32; LANES] = chunk.try_into().expect("a whole chunk");
        gelu_lanes(lanes);
    }
    let rest = chunks.into_remainder();
    let mut lanes = [0f32; LANES];
    lanes[..rest.len()].copy_from_slice(rest);
    gelu_lanes(&mut lanes);
    let n = rest.len();
    rest.copy_from_slice(&lanes[..n]);
}

/// Exact GELU of `values` in place with the loop of `level`.
pub fn gelu(level: Level, values: &mut [f32]) {
    // SAFETY: `level` was detected on this CPU (or listed by `Level::available`).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match level {
            Level::Avx512 => x86::gelu_avx512(values),
            Level::Avx2 => x86::gelu_avx2(values),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no level is detected off x86-64: {level:?} {}", values.len())
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::gelu_slice;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn gelu_avx512(values: &mut [f32]) {
        gelu_slice(values)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_avx2(values: &mut [f32]) {
        gelu_slice(values)
    }
}

#[cfg(test)]
mod tests {
    use tch::Tensor;

    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_library_exp() {
        for i in 0..=200_000 {
            let x = -(i as f32) * 87.0 / 200_000.0;
            let lanes = exp([x; LANES]);
            let want = x.exp();
            let ulp = f32::from_bits(want.to_bits() + 1) - want;
            assert!((lanes[0] - want).abs() <= 2.0 * ulp, "exp({x}) = {} vs {want}", lanes[0]);
        }
        assert_eq!(exp([-90.0; LANES])[0], 0.0);
        assert_eq!(exp([f32::NEG_INFINITY; LANES])[0], 0.0);
    }

    #[test]
    fn gelu_is_the_exact_gelu_to_a_few_ulp_in_both_tails() {
        let _guard = tch::no_grad_guard();
        // −12 … 12 in fine steps (and a length that is not a whole number of lanes).
        let xs: Vec<f32> = (0..=48_001).map(|i| -12.0 + i as f32 * 0.0005).collect();
        // x/2 · erfc(−x/√2) in f64: no cancellation in either tail.
        let x64 = Tensor::from_slice(&xs).to_kind(tch::Kind::Double);
        let exact: Vec<f64> = Vec::try_from(&x64 * 0.5 * (-&x64 * std::f64::consts::FRAC_1_SQRT_2).erfc()).unwrap();
        let libtorch_f32: Vec<f32> = Vec::try_from(Tensor::from_slice(&xs).gelu("none")).unwrap();
        for level in Level::available() {
            let mut got = xs.clone();
            gelu(level, &mut got);
            for (((x, got), exact), libtorch) in xs.iter().zip(&got).zip(&exact).zip(&libtorch_f32) {
                // exp(−x²/2) in f32 carries the rounding of x²/2 (relative ε·x²/2) into the
                // negative tail, where the result is below 10⁻⁴·|x|.
                let error = (f64::from(*got) - exact).abs();
                let ulps = 4.0 + 2.0 * f64::from(*x) * f64::from(*x);
                assert!(
                    error <= ulps * f64::from(f32::EPSILON) * exact.abs() + 1e-45,
                    "{level:?}: gelu({x}) = {got} vs {exact} in f64"
                );
                // libtorch's f32 GELU computes 1 + erf, which cancels in the negative tail: its
                // erf's few ulp near −1 become an absolute error of a few ε·|x| there.
                let error = (got - libtorch).abs();
                assert!(
                    error <= 4.0 * f32::EPSILON * (libtorch.abs() + x.abs()),
                    "{level:?}: gelu({x}) = {got} vs libtorch's f32 {libtorch}"
                );
            }
        }
    }
}
