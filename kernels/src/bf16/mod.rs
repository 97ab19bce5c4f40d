//! bfloat16: the 16-bit float of mixed-precision training, and its kernels.
//!
//! bf16 keeps f32's 8-bit exponent and cuts the mantissa to 7 bits, so it covers f32's whole
//! range (no overflow, hence no loss scaling in training) at 2-3 significant decimal digits.
//! The CPU's bf16 instructions multiply bf16 pairs and accumulate in f32: `vdpbf16ps`
//! (AVX-512 BF16, two multiply-adds per 32-bit lane, twice the f32 FMA rate) and the AMX
//! tile unit's `tdpbf16ps` (a 16x32 by 32x16 tile product per instruction, another 8x).
//!
//! This module holds the conversions (round-to-nearest-even, as `half` and PyTorch round) and
//! [`gemm`]: C (f32) = alpha * A * B + beta * C with bf16 (or f32 rounded to bf16) operands.
//!
//! Conversion rules (pinned by the tests):
//! - finite values round to the nearest bf16, ties to the even mantissa; values past the
//!   largest bf16 round to infinity exactly when round-to-nearest says so;
//! - subnormals are kept (no flush to zero), rounded the same way;
//! - infinities stay infinities; a NaN stays a NaN (quieted, sign kept), never becomes an
//!   infinity through the rounding carry.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod gemm;
#[cfg(test)]
mod tests;

pub use gemm::*;
pub use half::bf16;

/// The arithmetic of the f32 models' matrix products (linear layers, forward and backward).
///
/// `Bf16` is mixed precision for matmuls, as PyTorch's `set_float32_matmul_precision
/// ("medium")` and autocast's matmuls: operands rounded to bf16, products summed in f32, f32
/// out; everything else (norms, softmax, activations, losses, optimiser) stays f32. Why no loss
/// scaling: bf16 has f32's exponent range, so gradients that f16 would flush to zero are
/// representable; only the mantissa is short.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    #[default]
    F32,
    Bf16,
}

impl std::str::FromStr for MatmulPrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(MatmulPrecision::F32),
            "bf16" | "bfloat16" => Ok(MatmulPrecision::Bf16),
            other => Err(format!("unknown precision `{other}` (expected f32 or bf16)")),
        }
    }
}

impl std::fmt::Display for MatmulPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MatmulPrecision::F32 => "f32",
            MatmulPrecision::Bf16 => "bf16",
        })
    }
}

static MATMUL_BF16: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets the precision of the models' matrix products from now on (process-wide).
pub fn set_matmul_precision(p: MatmulPrecision) {
    MATMUL_BF16.store(p == MatmulPrecision::Bf16, std::sync::atomic::Ordering::Relaxed);
}

thread_local! {
    static THREAD_PRECISION: std::cell::Cell<Option<MatmulPrecision>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the matmul precision `p` on the calling thread only (tests, and a model run
/// beside others in one process), whatever the process-wide setting.
pub fn with_matmul_precision<R>(p: MatmulPrecision, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<MatmulPrecision>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_PRECISION.set(self.0);
        }
    }
    let _restore = Restore(THREAD_PRECISION.replace(Some(p)));
    f()
}

/// The calling thread's matmul precision: [`with_matmul_precision`]'s inside it, else the one
/// set by [`set_matmul_precision`] (f32 unless changed).
pub fn matmul_precision() -> MatmulPrecision {
    if let Some(p) = THREAD_PRECISION.get() {
        return p;
    }
    if MATMUL_BF16.load(std::sync::atomic::Ordering::Relaxed) {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::F32
    }
}

/// The bits of `x` rounded to the nearest bf16, ties to even (NaN quieted).
///
/// Written without branches so that slice loops vectorise: the rounding adds 0x7fff plus the
/// lowest kept bit to the f32 bits and truncates; a carry out of the mantissa bumps the
/// exponent, which is exactly rounding up to the next binade (or to infinity).
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) | 0x0040) as u16;
    let is_nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
    if is_nan {
        quiet_nan
    } else {
        rounded
    }
}

/// `x` rounded to the nearest bf16 (ties to even).
#[inline(always)]
pub fn to_bf16(x: f32) -> bf16 {
    bf16::from_bits(f32_to_bf16_bits(x))
}

/// The f32 that a bf16 stands for (exact: bf16 is f32 with the low 16 mantissa bits zero).
#[inline(always)]
pub fn bf16_bits_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// `x` rounded to bf16 and back: the value a bf16 kernel sees for the f32 input `x`.
#[inline(always)]
pub fn round_through_bf16(x: f32) -> f32 {
    bf16_bits_to_f32(f32_to_bf16_bits(x))
}

/// Rounds `src` into `dst` (ties to even). Panics if the lengths differ.
pub fn f32_to_bf16_slice(src: &[f32], dst: &mut [bf16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_bf16_slice: lengths differ");
    // SAFETY: bf16 is repr(transparent) over u16.
    let bits = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u16, dst.len()) };
    f32_to_bf16_bits_run(src, bits);
}

/// The bf16 bits of every element of `src` into `dst` (ties to even, NaN quieted, subnormals
/// kept), on the widest vector unit the CPU has: the packers' inner loop. The hardware's own
/// conversion (`vcvtneps2bf16`) is not used because it flushes subnormals to zero.
/// Panics if the lengths differ.
pub fn f32_to_bf16_bits_run(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_bf16_bits_run: lengths differ");
    #[cfg(target_arch = "x86_64")]
    match crate::simd::Isa::best().supported() {
        // SAFETY: the instruction sets were detected.
        crate::simd::Isa::Avx512 => return unsafe { round_run_avx512(src, dst) },
        // SAFETY: as above.
        crate::simd::Isa::Avx2 => return unsafe { round_run_avx2(src, dst) },
        crate::simd::Isa::Portable => {}
    }
    round_run(src, dst)
}

/// Scalar definition of [`f32_to_bf16_bits_run`] (branch-free, so the compiler vectorises it
/// for whatever instruction set the caller was compiled for).
#[inline(always)]
fn round_run(src: &[f32], dst: &mut [u16]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = f32_to_bf16_bits(x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn round_run_avx512(src: &[f32], dst: &mut [u16]) {
    round_run(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn round_run_avx2(src: &[f32], dst: &mut [u16]) {
    round_run(src, dst)
}

/// Widens `src` into `dst` (exact). Panics if the lengths differ.
pub fn bf16_to_f32_slice(src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "bf16_to_f32_slice: lengths differ");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16_bits_to_f32(s.to_bits());
    }
}

/// `src` rounded to bf16 in a new vector.
pub fn to_bf16_vec(src: &[f32]) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; src.len()];
    f32_to_bf16_slice(src, &mut out);
    out
}

/// `src` widened to f32 in a new vector.
pub fn to_f32_vec(src: &[bf16]) -> Vec<f32> {
    src.iter().map(|x| bf16_bits_to_f32(x.to_bits())).collect()
}

/// Rounds every element of `x` through bf16 in place (what a bf16 store followed by a load
/// does to an f32 activation).
pub fn round_through_bf16_in_place(x: &mut [f32]) {
    for v in x {
        *v = round_through_bf16(*v);
    }
}

/// An element a bf16 kernel can read: bf16 itself, or f32 rounded to bf16 as it is packed
/// (so an f32 activation meets bf16 weights without a separate conversion pass).
pub trait Bf16Operand: Copy + Send + Sync + 'static {
    /// Whether the element is stored as bf16 (a kernel may then read it in place).
    const STORED_AS_BF16: bool;

    /// The bf16 bits this element contributes to a product.
    fn bf16_bits(self) -> u16;

    /// The bf16 bits of `src[..dst.len()]`, a contiguous run (the packers' inner loop: a copy
    /// for bf16, a vectorised rounding loop for f32).
    ///
    /// # Safety
    /// `src` points at `dst.len()` readable elements.
    unsafe fn bf16_run(src: *const Self, dst: &mut [u16]);
}

impl Bf16Operand for bf16 {
    const STORED_AS_BF16: bool = true;

    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        self.to_bits()
    }

    #[inline(always)]
    unsafe fn bf16_run(src: *const Self, dst: &mut [u16]) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            std::ptr::copy_nonoverlapping(src as *const u16, dst.as_mut_ptr(), dst.len());
        }
    }
}

impl Bf16Operand for f32 {
    const STORED_AS_BF16: bool = false;

    #[inline(always)]
    fn bf16_bits(self) -> u16 {
        f32_to_bf16_bits(self)
    }

    #[inline(always)]
    unsafe fn bf16_run(src: *const Self, dst: &mut [u16]) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe { f32_to_bf16_bits_run(std::slice::from_raw_parts(src, dst.len()), dst) }
    }
}
