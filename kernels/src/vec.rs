//! A minimal SIMD vector abstraction so each vectorised algorithm is written once and compiled
//! for AVX2 (8 lanes) and AVX-512 (16 lanes).
//!
//! The kernels are generic `#[inline(always)]` functions over [`F32Vec`]; each instruction set
//! gets a `#[target_feature]` entry point that instantiates them, so after inlining every
//! intrinsic is compiled with the right features. The methods are `unsafe` because they may
//! only run on a CPU with the feature, which the dispatcher guarantees.

#![allow(clippy::missing_safety_doc)]

pub trait F32Vec: Copy {
    const LANES: usize;
    unsafe fn splat(v: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    /// LANES bf16 values (raw bits) widened to f32: exact, a bf16 is the upper half of an f32.
    unsafe fn load_bf16(p: *const u16) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// A store that bypasses the caches (non-temporal) when `p` is aligned to the vector
    /// width, a plain store otherwise. For outputs much larger than the caches it saves the
    /// read-for-ownership of every line written.
    unsafe fn store_stream(self, p: *mut f32) {
        // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
        // and the CPU features of the vector type in use.
        unsafe { self.store(p) }
    }
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    unsafe fn div(self, o: Self) -> Self;
    /// 1 / self via the hardware estimate refined by one Newton step (relative error < 1e-7);
    /// much cheaper than a division, whose throughput limits erf and sigmoid otherwise.
    unsafe fn recip(self) -> Self;
    /// self * a + b
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    unsafe fn max(self, o: Self) -> Self;
    unsafe fn min(self, o: Self) -> Self;
    unsafe fn abs(self) -> Self;
    /// Copies the sign bit of `sign` onto |self|.
    unsafe fn with_sign_of(self, sign: Self) -> Self;
    unsafe fn round(self) -> Self;
    /// 2^n for whole-number lanes n in [-126, 127].
    unsafe fn pow2i(n: Self) -> Self;
    /// Lanes where `x >= 0` take `self`, the others `other`.
    unsafe fn select_nonneg(self, x: Self, other: Self) -> Self;
    /// Lanes where self < o become 0.
    unsafe fn zero_where_lt(self, x: Self, bound: Self) -> Self;
    unsafe fn reduce_sum(self) -> f32;
    unsafe fn reduce_max(self) -> f32;
    /// Correctly rounded square root (IEEE, as `f32::sqrt`).
    unsafe fn sqrt(self) -> Self;
    /// LANES partial sums in double precision, for [`F32Vec::add_squares_f64`].
    type F64Sums: Copy;
    unsafe fn f64_sums_zero() -> Self::F64Sums;
    /// `sums + self * self`, lane by lane in double precision. The square of an f32 is exact in
    /// f64, so a norm over millions of weights loses nothing per term (the optimiser's trust
    /// ratio); only the order of the f64 additions differs from a sequential sum.
    unsafe fn add_squares_f64(self, sums: Self::F64Sums) -> Self::F64Sums;
    unsafe fn f64_sums_total(sums: Self::F64Sums) -> f64;
    /// Stores 2 * LANES floats, self's and `odd`'s lanes alternating: p[2i] = self[i],
    /// p[2i + 1] = odd[i] (two rows interleaved for the pair-broadcast GEMM kernel).
    #[inline(always)]
    unsafe fn store_interleaved(self, odd: Self, p: *mut f32) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            let (mut even_lanes, mut odd_lanes) = ([0.0f32; 16], [0.0f32; 16]);
            self.store(even_lanes.as_mut_ptr());
            odd.store(odd_lanes.as_mut_ptr());
            for i in 0..Self::LANES {
                *p.add(2 * i) = even_lanes[i];
                *p.add(2 * i + 1) = odd_lanes[i];
            }
        }
    }
}

/// One-lane "vector" for the portable path (the compiler vectorises the plain loops).
#[derive(Clone, Copy)]
pub(crate) struct Scalar(pub(crate) f32);
impl F32Vec for Scalar {
    const LANES: usize = 1;
    unsafe fn splat(v: f32) -> Self {
        Scalar(v)
    }
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
        // and the CPU features of the vector type in use.
        unsafe { Scalar(*p) }
    }
    unsafe fn load_bf16(p: *const u16) -> Self {
        // SAFETY: callers guarantee `p` is valid for one read.
        unsafe { Scalar(f32::from_bits((*p as u32) << 16)) }
    }
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
        // and the CPU features of the vector type in use.
        unsafe { *p = self.0 }
    }
    unsafe fn add(self, o: Self) -> Self {
        Scalar(self.0 + o.0)
    }
    unsafe fn sub(self, o: Self) -> Self {
        Scalar(self.0 - o.0)
    }
    unsafe fn mul(self, o: Self) -> Self {
        Scalar(self.0 * o.0)
    }
    unsafe fn div(self, o: Self) -> Self {
        Scalar(self.0 / o.0)
    }
    unsafe fn recip(self) -> Self {
        Scalar(1.0 / self.0)
    }
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        Scalar(self.0 * a.0 + b.0)
    }
    unsafe fn max(self, o: Self) -> Self {
        Scalar(self.0.max(o.0))
    }
    unsafe fn min(self, o: Self) -> Self {
        Scalar(self.0.min(o.0))
    }
    unsafe fn abs(self) -> Self {
        Scalar(self.0.abs())
    }
    unsafe fn with_sign_of(self, sign: Self) -> Self {
        Scalar(self.0.abs().copysign(sign.0))
    }
    unsafe fn round(self) -> Self {
        Scalar(self.0.round_ties_even())
    }
    unsafe fn pow2i(n: Self) -> Self {
        Scalar(f32::from_bits(((n.0 as i32 + 127) as u32) << 23))
    }
    unsafe fn select_nonneg(self, x: Self, other: Self) -> Self {
        if x.0 >= 0.0 {
            self
        } else {
            other
        }
    }
    unsafe fn zero_where_lt(self, x: Self, bound: Self) -> Self {
        if x.0 < bound.0 {
            Scalar(0.0)
        } else {
            self
        }
    }
    unsafe fn reduce_sum(self) -> f32 {
        self.0
    }
    unsafe fn reduce_max(self) -> f32 {
        self.0
    }
    unsafe fn sqrt(self) -> Self {
        Scalar(self.0.sqrt())
    }
    type F64Sums = f64;
    unsafe fn f64_sums_zero() -> f64 {
        0.0
    }
    unsafe fn add_squares_f64(self, sums: f64) -> f64 {
        sums + self.0 as f64 * self.0 as f64
    }
    unsafe fn f64_sums_total(sums: f64) -> f64 {
        sums
    }
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::F32Vec;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub struct Avx2(pub __m256);
    #[derive(Clone, Copy)]
    pub struct Avx512(pub __m512);

    impl F32Vec for Avx2 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx2(_mm256_set1_ps(v)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx2(_mm256_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u16) -> Self {
            // SAFETY: callers guarantee `p` is valid for 8 u16 reads and a CPU with AVX2.
            unsafe {
                Avx2(_mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))))
            }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn store_stream(self, p: *mut f32) {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                if (p as usize).is_multiple_of(32) {
                    _mm256_stream_ps(p, self.0)
                } else {
                    _mm256_storeu_ps(p, self.0)
                }
            }
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx2(_mm256_add_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx2(_mm256_sub_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx2(_mm256_mul_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn div(self, o: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx2(_mm256_div_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn recip(self) -> Self {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                let r = _mm256_rcp_ps(self.0);
                // r (2 - x r)
                Avx2(_mm256_mul_ps(r, _mm256_fnmadd_ps(self.0, r, _mm256_set1_ps(2.0))))
            }
        }
        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx2(_mm256_fmadd_ps(self.0, a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx2(_mm256_max_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn min(self, o: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx2(_mm256_min_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn abs(self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx2(_mm256_andnot_ps(_mm256_set1_ps(-0.0), self.0)) }
        }
        #[inline(always)]
        unsafe fn with_sign_of(self, sign: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx2(_mm256_or_ps(self.abs().0, _mm256_and_ps(sign.0, _mm256_set1_ps(-0.0)))) }
        }
        #[inline(always)]
        unsafe fn round(self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx2(_mm256_round_ps(self.0, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)) }
        }
        #[inline(always)]
        unsafe fn pow2i(n: Self) -> Self {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                let bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n.0), _mm256_set1_epi32(127)), 23);
                Avx2(_mm256_castsi256_ps(bits))
            }
        }
        #[inline(always)]
        unsafe fn select_nonneg(self, x: Self, other: Self) -> Self {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                let m = _mm256_cmp_ps(x.0, _mm256_setzero_ps(), _CMP_GE_OQ);
                Avx2(_mm256_blendv_ps(other.0, self.0, m))
            }
        }
        #[inline(always)]
        unsafe fn zero_where_lt(self, x: Self, bound: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx2(_mm256_andnot_ps(_mm256_cmp_ps(x.0, bound.0, _CMP_LT_OQ), self.0)) }
        }
        #[inline(always)]
        unsafe fn reduce_sum(self) -> f32 {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps(self.0, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
            }
        }
        #[inline(always)]
        unsafe fn reduce_max(self) -> f32 {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                let s = _mm_max_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps(self.0, 1));
                let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps(s, s, 1)))
            }
        }
        #[inline(always)]
        unsafe fn sqrt(self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx2(_mm256_sqrt_ps(self.0)) }
        }
        type F64Sums = (__m256d, __m256d);
        #[inline(always)]
        unsafe fn f64_sums_zero() -> Self::F64Sums {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { (_mm256_setzero_pd(), _mm256_setzero_pd()) }
        }
        #[inline(always)]
        unsafe fn add_squares_f64(self, (low, high): Self::F64Sums) -> Self::F64Sums {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                let x_low = _mm256_cvtps_pd(_mm256_castps256_ps128(self.0));
                let x_high = _mm256_cvtps_pd(_mm256_extractf128_ps(self.0, 1));
                (_mm256_fmadd_pd(x_low, x_low, low), _mm256_fmadd_pd(x_high, x_high, high))
            }
        }
        #[inline(always)]
        unsafe fn f64_sums_total((low, high): Self::F64Sums) -> f64 {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                let mut lanes = [0.0f64; 4];
                _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(low, high));
                (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
            }
        }
    }

    impl F32Vec for Avx512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn store_interleaved(self, odd: Self, p: *mut f32) {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                // lanes 0..8 of each into the first 16 floats, 8..16 into the next
                let first = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
                let second = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
                _mm512_storeu_ps(p, _mm512_permutex2var_ps(self.0, first, odd.0));
                _mm512_storeu_ps(p.add(16), _mm512_permutex2var_ps(self.0, second, odd.0));
            }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx512(_mm512_set1_ps(v)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx512(_mm512_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u16) -> Self {
            // SAFETY: callers guarantee `p` is valid for 16 u16 reads and a CPU with AVX-512F.
            unsafe {
                Avx512(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
                    p.cast(),
                )))))
            }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn store_stream(self, p: *mut f32) {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                if (p as usize).is_multiple_of(64) {
                    _mm512_stream_ps(p, self.0)
                } else {
                    _mm512_storeu_ps(p, self.0)
                }
            }
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx512(_mm512_add_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn sub(self, o: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx512(_mm512_sub_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx512(_mm512_mul_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn div(self, o: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx512(_mm512_div_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn recip(self) -> Self {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                let r = _mm512_rcp14_ps(self.0);
                Avx512(_mm512_mul_ps(r, _mm512_fnmadd_ps(self.0, r, _mm512_set1_ps(2.0))))
            }
        }
        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx512(_mm512_fmadd_ps(self.0, a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn max(self, o: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx512(_mm512_max_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn min(self, o: Self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx512(_mm512_min_ps(self.0, o.0)) }
        }
        #[inline(always)]
        unsafe fn abs(self) -> Self {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                Avx512(_mm512_castsi512_ps(_mm512_and_si512(
                    _mm512_castps_si512(self.0),
                    _mm512_set1_epi32(0x7fff_ffff),
                )))
            }
        }
        #[inline(always)]
        unsafe fn with_sign_of(self, sign: Self) -> Self {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                let s = _mm512_and_si512(_mm512_castps_si512(sign.0), _mm512_set1_epi32(i32::MIN));
                Avx512(_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(self.abs().0), s)))
            }
        }
        #[inline(always)]
        unsafe fn round(self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx512(_mm512_roundscale_ps(self.0, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)) }
        }
        #[inline(always)]
        unsafe fn pow2i(n: Self) -> Self {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                let bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n.0), _mm512_set1_epi32(127)), 23);
                Avx512(_mm512_castsi512_ps(bits))
            }
        }
        #[inline(always)]
        unsafe fn select_nonneg(self, x: Self, other: Self) -> Self {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                let m = _mm512_cmp_ps_mask(x.0, _mm512_setzero_ps(), _CMP_GE_OQ);
                Avx512(_mm512_mask_blend_ps(m, other.0, self.0))
            }
        }
        #[inline(always)]
        unsafe fn zero_where_lt(self, x: Self, bound: Self) -> Self {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                let keep = _mm512_cmp_ps_mask(x.0, bound.0, _CMP_GE_OQ);
                Avx512(_mm512_maskz_mov_ps(keep, self.0))
            }
        }
        #[inline(always)]
        unsafe fn reduce_sum(self) -> f32 {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { _mm512_reduce_add_ps(self.0) }
        }
        #[inline(always)]
        unsafe fn reduce_max(self) -> f32 {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { _mm512_reduce_max_ps(self.0) }
        }
        #[inline(always)]
        unsafe fn sqrt(self) -> Self {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { Avx512(_mm512_sqrt_ps(self.0)) }
        }
        type F64Sums = (__m512d, __m512d);
        #[inline(always)]
        unsafe fn f64_sums_zero() -> Self::F64Sums {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { (_mm512_setzero_pd(), _mm512_setzero_pd()) }
        }
        #[inline(always)]
        unsafe fn add_squares_f64(self, (low, high): Self::F64Sums) -> Self::F64Sums {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                let x_low = _mm512_cvtps_pd(_mm512_castps512_ps256(self.0));
                let x_high = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(self.0), 1)));
                (_mm512_fmadd_pd(x_low, x_low, low), _mm512_fmadd_pd(x_high, x_high, high))
            }
        }
        #[inline(always)]
        unsafe fn f64_sums_total((low, high): Self::F64Sums) -> f64 {
            // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
            // and the CPU features of the vector type in use.
            unsafe { _mm512_reduce_add_pd(_mm512_add_pd(low, high)) }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generic vector maths (same algorithms and constants as the scalar forms in `vmath`)
// ---------------------------------------------------------------------------------------------

use crate::vmath::consts::*;

/// e^x; 0 below -87.3.
#[inline(always)]
pub unsafe fn exp<V: F32Vec>(x: V) -> V {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let xc = x.min(V::splat(EXP_HI)).max(V::splat(EXP_LO));
        let n = xc.mul(V::splat(LOG2E)).round();
        let r = n.mul_add(V::splat(-LN2_HI), xc);
        let r = n.mul_add(V::splat(-LN2_LO), r);
        let r2 = r.mul(r);
        let mut p = V::splat(P0);
        p = p.mul_add(r, V::splat(P1));
        p = p.mul_add(r, V::splat(P2));
        p = p.mul_add(r, V::splat(P3));
        p = p.mul_add(r, V::splat(P4));
        p = p.mul_add(r, V::splat(P5));
        let e = p.mul_add(r2, r).add(V::splat(1.0));
        e.mul(V::pow2i(n)).zero_where_lt(x, V::splat(EXP_LO))
    }
}

/// erf(x): x P(x^2) / Q(x^2) on [-4, 4] (see `vmath`).
#[inline(always)]
pub unsafe fn erf<V: F32Vec>(x: V) -> V {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let x = x.min(V::splat(4.0)).max(V::splat(-4.0));
        let x2 = x.mul(x);
        let mut p = V::splat(ERF_ALPHA[6]);
        for &c in ERF_ALPHA[..6].iter().rev() {
            p = p.mul_add(x2, V::splat(c));
        }
        let mut q = V::splat(ERF_BETA[4]);
        for &c in ERF_BETA[..4].iter().rev() {
            q = q.mul_add(x2, V::splat(c));
        }
        x.mul(p).mul(q.recip())
    }
}

/// (sigmoid(x), 1 - sigmoid(x)), both without cancellation or overflow: with e = e^-|x| <= 1
/// and r = 1 / (1 + e), sigmoid(|x|) = r and sigmoid(-|x|) = e r.
#[inline(always)]
pub unsafe fn sigmoid_pair<V: F32Vec>(x: V) -> (V, V) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let e = exp(V::splat(0.0).sub(x.abs()));
        let r = V::splat(1.0).add(e).recip();
        let small = e.mul(r);
        (r.select_nonneg(x, small), small.select_nonneg(x, r))
    }
}

/// sigmoid(x)
#[inline(always)]
pub unsafe fn sigmoid<V: F32Vec>(x: V) -> V {
    // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
    // and the CPU features of the vector type in use.
    unsafe { sigmoid_pair(x).0 }
}
