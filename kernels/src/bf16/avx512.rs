//! AVX-512 BF16 micro-kernel: `vdpbf16ps` on a 12 x 32 register tile of C.
//!
//! Each 32-bit lane of a `vdpbf16ps` source holds a pair of bf16 values; the instruction adds
//! a.lo * b.lo + a.hi * b.hi to each f32 lane of the accumulator. Packed B holds, per pair of
//! K, the pairs of 32 columns (two zmm); packed A holds the pairs of 12 rows, each broadcast
//! to all lanes. 24 accumulators, 2 loads and 12 broadcasts per 24 dot-products, as the f32
//! kernel's 12 x 32 tile does with FMAs (`crate::gemm`), at twice the multiply-adds per
//! instruction.

use super::gemm::APanel;
use std::arch::x86_64::*;

/// C[12 x 32] = alpha * A * B + beta * C over `kc` (even) steps of K; `beta == 0` never
/// reads C. `a.ptr`: `[kc/2][12][2]` (packed; the strides are not used); `b0`, `b1`: `[kc/2][16][2]` each (columns 0-15, 16-31).
///
/// # Safety
/// The CPU has AVX-512F and AVX-512 BF16; the panels hold `kc` steps; C has 12 rows of 32
/// writable floats `ldc` apart.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel_dot_12x32(
    kc: usize,
    a: APanel,
    b0: *const u16,
    b1: *const u16,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    // SAFETY: this unsafe fn's callers guarantee a CPU with avx512f,avx512bf16 (they dispatch on
    // `Isa::supported()`) and pointers valid for every offset it reads and writes.
    unsafe {
        const MR: usize = 12;
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let a = a.ptr as *const i32;
        for p in 0..kc / 2 {
            let vb0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.add(p * 32) as *const _));
            let vb1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.add(p * 32) as *const _));
            let ap = a.add(p * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let va: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r)));
                row[0] = _mm512_dpbf16_ps(row[0], va, vb0);
                row[1] = _mm512_dpbf16_ps(row[1], va, vb1);
            }
        }
        let valpha = _mm512_set1_ps(alpha);
        let vbeta = _mm512_set1_ps(beta);
        for (r, row) in acc.iter().enumerate() {
            let cr = c.add(r * ldc);
            for (h, v) in row.iter().enumerate() {
                let dst = cr.add(16 * h);
                let out = if beta == 0.0 {
                    _mm512_mul_ps(*v, valpha)
                } else {
                    _mm512_fmadd_ps(*v, valpha, _mm512_mul_ps(_mm512_loadu_ps(dst), vbeta))
                };
                _mm512_storeu_ps(dst, out);
            }
        }
    }
}

/// `iterations` rounds of 24 independent `vdpbf16ps` chains on registers; returns the flops.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512 BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn dot_chains(iterations: usize) -> usize {
    // SAFETY: this unsafe fn's callers guarantee a CPU with avx512f,avx512bf16 (they dispatch on
    // `Isa::supported()`) and pointers valid for every offset it reads and writes.
    unsafe {
        const CHAINS: usize = 24;
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
        let y: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3c00_3c00));
        for _ in 0..iterations {
            for v in acc.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, x, y);
            }
        }
        std::hint::black_box(&acc);
        iterations * CHAINS * 16 * 2 * 2
    }
}
