//! x86-64 micro-kernels: AVX2+FMA 6x16 and AVX-512F 12x32 (pair broadcasts, edge tiles,
//! gathered rows, K pairs), and the AVX transposing pack.

use std::arch::x86_64::*;

/// `kc` repetitions of `$step`, four to a loop iteration (so that the loop's own
/// instructions do not crowd the front end), then the remainder.
macro_rules! unrolled_by_4 {
    ($kc:expr, $step:expr) => {{
        for _ in 0..$kc / 4 {
            $step;
            $step;
            $step;
            $step;
        }
        for _ in 0..$kc % 4 {
            $step;
        }
    }};
}

/// How many k-steps ahead the AVX-512 kernel prefetches its B stream.
const PREFETCH_STEPS: usize = 8;

/// [`super::pack_transposed`] with register transposes: rows in groups of 8 (8 x 8 blocks
/// of __m256) then 4 (4 x 8 as two 4 x 4 __m128 transposes), k in steps of 8; leftover rows
/// and k steps element by element.
#[target_feature(enable = "avx")]
pub unsafe fn pack_transposed_avx(row_ptrs: &[*const f32], kc: usize, width: usize, out: &mut [f32]) {
    // SAFETY: this unsafe fn's callers guarantee a CPU with avx (they dispatch on
    // `Isa::supported()`) and pointers valid for every offset it reads and writes.
    unsafe {
        let rows = row_ptrs.len();
        let o = out.as_mut_ptr();
        let k8 = kc / 8 * 8;
        let mut r0 = 0;
        while r0 + 8 <= rows {
            let row = |i: usize| row_ptrs[r0 + i];
            for p in (0..k8).step_by(8) {
                let mut x = [_mm256_setzero_ps(); 8];
                for (i, v) in x.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(row(i).add(p));
                }
                let t0 = _mm256_unpacklo_ps(x[0], x[1]);
                let t1 = _mm256_unpackhi_ps(x[0], x[1]);
                let t2 = _mm256_unpacklo_ps(x[2], x[3]);
                let t3 = _mm256_unpackhi_ps(x[2], x[3]);
                let t4 = _mm256_unpacklo_ps(x[4], x[5]);
                let t5 = _mm256_unpackhi_ps(x[4], x[5]);
                let t6 = _mm256_unpacklo_ps(x[6], x[7]);
                let t7 = _mm256_unpackhi_ps(x[6], x[7]);
                let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                // column p + j across the 8 rows
                let cols = [
                    _mm256_permute2f128_ps::<0x20>(s0, s4),
                    _mm256_permute2f128_ps::<0x20>(s1, s5),
                    _mm256_permute2f128_ps::<0x20>(s2, s6),
                    _mm256_permute2f128_ps::<0x20>(s3, s7),
                    _mm256_permute2f128_ps::<0x31>(s0, s4),
                    _mm256_permute2f128_ps::<0x31>(s1, s5),
                    _mm256_permute2f128_ps::<0x31>(s2, s6),
                    _mm256_permute2f128_ps::<0x31>(s3, s7),
                ];
                for (j, c) in cols.into_iter().enumerate() {
                    _mm256_storeu_ps(o.add((p + j) * width + r0), c);
                }
            }
            r0 += 8;
        }
        while r0 + 4 <= rows {
            let row = |i: usize| row_ptrs[r0 + i];
            for p in (0..k8).step_by(8) {
                let mut x = [_mm256_setzero_ps(); 4];
                for (i, v) in x.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(row(i).add(p));
                }
                for half in 0..2 {
                    let mut h = [_mm_setzero_ps(); 4];
                    for (hv, &xv) in h.iter_mut().zip(&x) {
                        *hv = if half == 0 { _mm256_castps256_ps128(xv) } else { _mm256_extractf128_ps::<1>(xv) };
                    }
                    let t0 = _mm_unpacklo_ps(h[0], h[1]);
                    let t1 = _mm_unpacklo_ps(h[2], h[3]);
                    let t2 = _mm_unpackhi_ps(h[0], h[1]);
                    let t3 = _mm_unpackhi_ps(h[2], h[3]);
                    let cols =
                        [_mm_movelh_ps(t0, t1), _mm_movehl_ps(t1, t0), _mm_movelh_ps(t2, t3), _mm_movehl_ps(t3, t2)];
                    for (j, c) in cols.into_iter().enumerate() {
                        _mm_storeu_ps(o.add((p + 4 * half + j) * width + r0), c);
                    }
                }
            }
            r0 += 4;
        }
        // leftover rows (all k), leftover k steps (rows done in blocks), zero padding
        for (r, &row) in row_ptrs.iter().enumerate().skip(r0) {
            for p in 0..kc {
                *o.add(p * width + r) = *row.add(p);
            }
        }
        for (r, &row) in row_ptrs[..r0].iter().enumerate() {
            for p in k8..kc {
                *o.add(p * width + r) = *row.add(p);
            }
        }
        for p in 0..kc {
            for r in rows..width {
                *o.add(p * width + r) = 0.0;
            }
        }
    }
}

/// AVX2+FMA 6x16 micro-kernel: 12 ymm accumulators, 2 B loads and 6 broadcasts per k step.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn kernel_avx2_6x16(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    alpha: f32,
    beta: f32,
    bias: *const f32,
) {
    // SAFETY: this unsafe fn's callers guarantee a CPU with avx2,fma (they dispatch on
    // `Isa::supported()`) and pointers valid for every offset it reads and writes.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; 6];
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(r));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
            a = a.add(6);
            b = b.add(16);
        }
        let alpha_v = _mm256_set1_ps(alpha);
        let beta_v = _mm256_set1_ps(beta);
        for (r, row) in acc.iter().enumerate() {
            let cp = c.add(r * rsc);
            for (h, &v) in row.iter().enumerate() {
                let mut out = _mm256_mul_ps(v, alpha_v);
                if !bias.is_null() {
                    out = _mm256_add_ps(out, _mm256_loadu_ps(bias.add(8 * h)));
                }
                if beta != 0.0 {
                    out = _mm256_fmadd_ps(_mm256_loadu_ps(cp.add(8 * h)), beta_v, out);
                }
                _mm256_storeu_ps(cp.add(8 * h), out);
            }
        }
    }
}

/// [`super::fma_peak`]'s loops: `$chains` independent accumulators (more than the 4-cycle
/// FMA latency times two FMA ports needs), `iterations` x `$chains` FMAs of `$lanes` lanes,
/// no loads; each returns its flops.
macro_rules! fma_chains {
    ($name:ident, $features:literal, $set1:ident, $fmadd:ident, $chains:expr, $lanes:expr) => {
        #[target_feature(enable = $features)]
        pub unsafe fn $name(iterations: usize) -> usize {
            let mut acc = [$set1(1.0); $chains];
            let (x, y) = (std::hint::black_box($set1(0.999)), std::hint::black_box($set1(1e-3)));
            for _ in 0..iterations {
                for a in acc.iter_mut() {
                    *a = $fmadd(*a, x, y);
                }
            }
            std::hint::black_box(&acc);
            iterations * $chains * $lanes * 2
        }
    };
}
fma_chains!(fma_chains_avx512, "avx512f", _mm512_set1_ps, _mm512_fmadd_ps, 24, 16);
fma_chains!(fma_chains_avx2, "avx2,fma", _mm256_set1_ps, _mm256_fmadd_ps, 12, 8);

/// One B row of the 32-wide panel as even and odd lane duplicates, for the pair
/// broadcasts of [`kernel_avx512_12x32`]: (lanes 0 0 2 2 .. of b[0..16], 1 1 3 3 ..
/// of b[0..16], the same of b[16..32]). `vmovsldup` / `vmovshdup` from memory are one
/// load-port uop each; written in asm because LLVM merges the even and odd loads of one
/// address into a load and two register shuffles, which take port 5 from the FMAs.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_duplicated_pairs(b: *const f32) -> [__m512; 4] {
    // SAFETY: this unsafe fn's callers guarantee a CPU with avx512f (they dispatch on
    // `Isa::supported()`) and pointers valid for every offset it reads and writes.
    unsafe {
        let (e0, o0, e1, o1): (__m512, __m512, __m512, __m512);
        std::arch::asm!(
            "vmovsldup {e0}, zmmword ptr [{b}]",
            "vmovshdup {o0}, zmmword ptr [{b}]",
            "vmovsldup {e1}, zmmword ptr [{b} + 64]",
            "vmovshdup {o1}, zmmword ptr [{b} + 64]",
            b = in(reg) b,
            e0 = out(zmm_reg) e0,
            o0 = out(zmm_reg) o0,
            e1 = out(zmm_reg) e1,
            o1 = out(zmm_reg) o1,
            options(pure, readonly, nostack, preserves_flags)
        );
        [e0, o0, e1, o1]
    }
}

/// AVX-512F 12x32 micro-kernel with pair broadcasts. Per k-step, B's 32 floats are loaded
/// as even-lane and odd-lane duplicates (four zmm: b0 b0 b2 b2 .., b1 b1 b3 b3 .., for
/// each 16-wide half) and A's 12 floats as six broadcast pairs (a[2p] a[2p+1] repeated,
/// one `vbroadcastsd`). Each pair times each duplicate is one FMA whose lanes hold two
/// rows' products for alternating columns; 24 such accumulators cover the 12 x 32 tile,
/// and a blend per row untangles them at the end.
///
/// Why: the plain kernel (2 B loads, 12 `vbroadcastss`, 24 FMAs per k-step, plus two
/// prefetches) issues about 40 fused uops per 12 FMA cycles, close to this core's
/// 4-per-cycle rename limit; this one issues 10 loads instead of 14 (about 36 uops).
/// Every product and every sum is the same as the plain kernel's, in the same order, so
/// results are bit-identical. Alternated call by call against the plain kernel on one
/// thread: 2048 x 768 x 3072 109 vs 103, 2048^3 104 vs 101 GFLOP/s (+2-6% across the
/// benchmark shapes; the host's noise is of the same order, but the sign held in every
/// paired run).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn kernel_avx512_12x32(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    alpha: f32,
    beta: f32,
    bias: *const f32,
) {
    // SAFETY: callers guarantee a CPU with avx512f (they dispatch on `Isa::supported()`)
    // and pointers valid for what this reads and writes.
    unsafe { kernel_avx512_pairs::<false>(kc, a, 0, b, c, rsc, alpha, beta, bias, 12, 32) }
}

/// [`kernel_avx512_12x32`] with A's row pairs apart: pair p (rows 2p, 2p + 1) is
/// interleaved, (a[2p][k], a[2p+1][k]) at `a + p * pair_stride + 2k`. The Winograd
/// convolution's transformed input, written two tiles at a time, is read this way in
/// place: two rows interleave with one shuffle, where a packed 12-row panel would need a
/// 12-way transpose. Stores rows < `rows`, columns < `cols`; C = A B + beta C.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn kernel_avx512_12x32_pair_rows(
    kc: usize,
    a: *const f32,
    pair_stride: usize,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    beta: f32,
    rows: usize,
    cols: usize,
) {
    // SAFETY: callers guarantee a CPU with avx512f (they dispatch on `Isa::supported()`)
    // and pointers valid for what this reads and writes.
    unsafe { kernel_avx512_pairs::<true>(kc, a, pair_stride, b, c, rsc, 1.0, beta, std::ptr::null(), rows, cols) }
}

/// [`kernel_avx512_12x32`] storing only rows < `rows` and columns < `cols` of C. A is a
/// packed panel ([k][12]) or, when `PAIR_ROWS`, pairs of rows `pair_stride` apart
/// (see [`kernel_avx512_12x32_pair_rows`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx512_pairs<const PAIR_ROWS: bool>(
    kc: usize,
    a: *const f32,
    pair_stride: usize,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    alpha: f32,
    beta: f32,
    bias: *const f32,
    rows: usize,
    cols: usize,
) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        // For the row pair p (rows 2p, 2p+1) and half h (columns 16h..16h+16), over k:
        // even[p][h] lanes (2j, 2j+1) = sum b[2j] * (a[2p], a[2p+1]);
        // odd[p][h]  lanes (2j, 2j+1) = sum b[2j+1] * (a[2p], a[2p+1]).
        let mut even = [[_mm512_setzero_ps(); 2]; 6];
        let mut odd = [[_mm512_setzero_ps(); 2]; 6];
        prefetch_c_tile::<32>(c, rsc, rows);
        let (mut a, mut b) = (a, b);
        // where pair p of the current k-step is, from `a`, and how far `a` moves per k-step
        let (pair_offset, k_step) = if PAIR_ROWS { (pair_stride, 2) } else { (2, 12) };
        macro_rules! step {
            () => {{
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(32 * PREFETCH_STEPS) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(32 * PREFETCH_STEPS + 16) as *const i8);
                let [e0, o0, e1, o1] = load_duplicated_pairs(b);
                for p in 0..6 {
                    let at = a.add(p * pair_offset);
                    let pair = _mm512_castpd_ps(_mm512_set1_pd(std::ptr::read_unaligned(at as *const f64)));
                    even[p][0] = _mm512_fmadd_ps(e0, pair, even[p][0]);
                    odd[p][0] = _mm512_fmadd_ps(o0, pair, odd[p][0]);
                    even[p][1] = _mm512_fmadd_ps(e1, pair, even[p][1]);
                    odd[p][1] = _mm512_fmadd_ps(o1, pair, odd[p][1]);
                }
                a = a.add(k_step);
                b = b.add(32);
            }};
        }
        unrolled_by_4!(kc, step!());
        // Untangle: row 2p = (even lane 2j, odd lane 2j) for column pair j, row 2p + 1 =
        // (even lane 2j + 1, odd lane 2j + 1).
        let mut lo = [_mm512_setzero_ps(); 12];
        let mut hi = [_mm512_setzero_ps(); 12];
        for p in 0..6 {
            for h in 0..2 {
                let (e, o) = (even[p][h], odd[p][h]);
                let first = _mm512_mask_blend_ps(0xAAAA, e, _mm512_moveldup_ps(o));
                let second = _mm512_mask_blend_ps(0xAAAA, _mm512_movehdup_ps(e), o);
                if h == 0 {
                    lo[2 * p] = first;
                    lo[2 * p + 1] = second;
                } else {
                    hi[2 * p] = first;
                    hi[2 * p + 1] = second;
                }
            }
        }
        store_tile_avx512::<32>(&lo, &hi, c, rsc, alpha, beta, bias, rows, cols);
    }
}

/// The 12x32 kernel for an edge tile: only rows < `rows` and columns < `cols` of C are
/// read or written (masked loads and stores), so edge tiles need no scratch tile and no
/// scalar merge. (A 1x1 convolution to 24 channels is all edge tiles: the merge used to
/// cost about three times the tile's arithmetic.) Tiles at most 16 columns wide run a
/// loop with one zmm accumulator per row instead of two, half the FMAs (EfficientNet's
/// 1 x 1 convolutions to 16, 40, 80, 112 and 144 channels end in such a tile). A 24-wide
/// variant (a zmm and a ymm per row) measured slower than 32 here (32.7 vs 39.6 GFLOP/s
/// at 768 x 256 x 24): on this Xeon, 256-bit FMAs issue to one port while 512-bit ones
/// are in flight, so they save nothing, and the extra broadcasts cost shuffle slots.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn kernel_avx512_12x32_edge(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    alpha: f32,
    beta: f32,
    bias: *const f32,
    rows: usize,
    cols: usize,
) {
    // SAFETY: this unsafe fn's callers guarantee a CPU with avx512f (they dispatch on
    // `Isa::supported()`) and pointers valid for every offset it reads and writes.
    unsafe {
        if cols <= 16 {
            kernel_avx512_16(kc, a, b, c, rsc, alpha, beta, bias, rows, cols)
        } else {
            kernel_avx512_pairs::<false>(kc, a, 0, b, c, rsc, alpha, beta, bias, rows, cols)
        }
    }
}

/// The AVX-512 tile loop for edge tiles at most 16 columns wide: the first 16 of the
/// panel's 32 columns, one zmm accumulator per row (half the FMAs of a full tile).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx512_16(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    alpha: f32,
    beta: f32,
    bias: *const f32,
    rows: usize,
    cols: usize,
) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let mut lo = [_mm512_setzero_ps(); 12];
        let mut hi = [_mm512_setzero_ps(); 12]; // untouched at this width
        prefetch_c_tile::<16>(c, rsc, rows);
        let (mut a, mut b) = (a, b);
        // One k-step: 1 load of B, 12 broadcasts of A, 12 FMAs.
        macro_rules! step {
            () => {{
                k_step::<16>(a, b, &mut lo, &mut hi);
                a = a.add(12);
                b = b.add(32);
            }};
        }
        unrolled_by_4!(kc, step!());
        store_tile_avx512::<16>(&lo, &hi, c, rsc, alpha, beta, bias, rows, cols);
    }
}

/// Asks for the C tile's rows (the first W columns of each) at the start of a tile: it is
/// read (beta != 0) and written at the end, a few thousand cycles later.
#[inline(always)]
unsafe fn prefetch_c_tile<const W: usize>(c: *mut f32, rsc: usize, rows: usize) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        for r in 0..rows {
            _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(r * rsc) as *const i8);
            if W > 16 {
                _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(r * rsc + 16) as *const i8);
            }
        }
    }
}

/// One k-step of the 12 x W tile (W = 16 or 32): the 12 A elements at `a` broadcast
/// against W / 16 vectors of the B row at `b` (12 W / 16 FMAs), B's lines PREFETCH_STEPS
/// k-steps ahead requested (B streams from L2).
#[inline(always)]
unsafe fn k_step<const W: usize>(a: *const f32, b: *const f32, lo: &mut [__m512; 12], hi: &mut [__m512; 12]) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(32 * PREFETCH_STEPS) as *const i8);
        if W > 16 {
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(32 * PREFETCH_STEPS + 16) as *const i8);
        }
        let b0 = _mm512_loadu_ps(b);
        let b1 = if W == 32 { _mm512_loadu_ps(b.add(16)) } else { _mm512_setzero_ps() };
        for r in 0..12 {
            let av = _mm512_set1_ps(*a.add(r));
            lo[r] = _mm512_fmadd_ps(av, b0, lo[r]);
            if W == 32 {
                hi[r] = _mm512_fmadd_ps(av, b1, hi[r]);
            }
        }
    }
}

/// The end of every AVX-512 tile: C = alpha * acc + bias + beta * C for rows < `rows`
/// and columns < `cols` (masked loads and stores at the edges), from the per-row
/// accumulators of lanes 0..16 (`lo`) and 16..32 (`hi`, unused when W = 16).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_tile_avx512<const W: usize>(
    lo: &[__m512; 12],
    hi: &[__m512; 12],
    c: *mut f32,
    rsc: usize,
    alpha: f32,
    beta: f32,
    bias: *const f32,
    rows: usize,
    cols: usize,
) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let alpha_v = _mm512_set1_ps(alpha);
        let beta_v = _mm512_set1_ps(beta);
        // lanes of each 16-wide half that belong to C
        let masks: [__mmask16; 2] = [
            if cols >= 16 { 0xFFFF } else { ((1u32 << cols) - 1) as __mmask16 },
            if cols >= 32 { 0xFFFF } else { ((1u32 << cols.saturating_sub(16)) - 1) as __mmask16 },
        ];
        // the bias halves (zero when there is none), read once for all rows
        let mut bias_v = [_mm512_setzero_ps(); 2];
        if !bias.is_null() {
            for (h, bv) in bias_v.iter_mut().enumerate() {
                *bv = _mm512_maskz_loadu_ps(masks[h], bias.add(16 * h));
            }
        }
        for r in 0..rows {
            let cp = c.add(r * rsc);
            for (h, &v) in [lo[r], hi[r]].iter().enumerate().take(W.div_ceil(16)) {
                let mut out = _mm512_mul_ps(v, alpha_v);
                if !bias.is_null() {
                    out = _mm512_add_ps(out, bias_v[h]);
                }
                if cols == 32 {
                    if beta != 0.0 {
                        out = _mm512_fmadd_ps(_mm512_loadu_ps(cp.add(16 * h)), beta_v, out);
                    }
                    _mm512_storeu_ps(cp.add(16 * h), out);
                } else if masks[h] != 0 {
                    if beta != 0.0 {
                        out = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(masks[h], cp.add(16 * h)), beta_v, out);
                    }
                    _mm512_mask_storeu_ps(cp.add(16 * h), masks[h], out);
                }
            }
        }
    }
}

/// The 12x32 tile over A rows that are not packed: C tile (+)= A x B panel where the K
/// axis of A is a list of segments, each giving for every one of the 12 rows a pointer to
/// `len` consecutive floats (a tap of a convolution: for each output pixel, the run of
/// input channels under that tap). Each A element is broadcast straight from the image,
/// as the packed kernel broadcasts it from the panel, so no transposed copy of A is made:
/// the panel packing this replaces cost a third of the arithmetic's time in a 3 x 3
/// convolution. B is packed as for the other kernels, its rows in the segments' order.
///
/// # Safety
/// Every row pointer of a segment has `len` readable floats; B holds sum(len) x 32; the
/// C tile is writable for rows < `rows`, cols < `cols`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn kernel_avx512_12x32_gather(
    segments: impl Iterator<Item = ([*const f32; 12], usize)>,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    beta: f32,
    rows: usize,
    cols: usize,
) {
    // SAFETY: this unsafe fn's callers guarantee a CPU with avx512f (they dispatch on
    // `Isa::supported()`) and pointers valid for every offset it reads and writes.
    unsafe {
        if cols <= 16 {
            gather_avx512::<16>(segments, b, c, rsc, beta, rows, cols)
        } else {
            gather_avx512::<32>(segments, b, c, rsc, beta, rows, cols)
        }
    }
}

/// C tile (rows <= 8 x cols <= 24, row stride `rsc`) = A B over pairs of K: row p of A
/// is `k` floats at `a[p]` (k even), B is given interleaved, k/2 blocks of 48 floats
/// (B[2q][j], B[2q+1][j]) for j < 24. One `vbroadcastsd` takes two consecutive K
/// elements of a row; each FMA lane then holds one column's even-k or odd-k partial sum,
/// added at the end. For outputs 24 wide (EfficientNet's 1x1 projections to 24
/// channels) every lane does useful work, where the 32-wide tile wastes a quarter of its
/// FMAs; 11 loads per 24 FMAs.
#[target_feature(enable = "avx512f")]
pub unsafe fn kernel_avx512_8x24_kpairs(
    a: &[*const f32; 8],
    k: usize,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    rows: usize,
    cols: usize,
) {
    // SAFETY: this unsafe fn's callers guarantee a CPU with avx512f (they dispatch on
    // `Isa::supported()`) and pointers valid for every offset it reads and writes.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 3]; 8];
        let p = *a;
        let mut b = b;
        let mut q = 0;
        while q < k {
            let (b0, b1, b2) = (_mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16)), _mm512_loadu_ps(b.add(32)));
            for r in 0..8 {
                let pair = _mm512_castpd_ps(_mm512_set1_pd(std::ptr::read_unaligned(p[r].add(q) as *const f64)));
                acc[r][0] = _mm512_fmadd_ps(pair, b0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(pair, b1, acc[r][1]);
                acc[r][2] = _mm512_fmadd_ps(pair, b2, acc[r][2]);
            }
            b = b.add(48);
            q += 2;
        }
        // even lanes of two vectors, in order: columns 0..8 of the first, 8..16 of the second
        let even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        let (lo_mask, hi_mask) = (((1u32 << cols.min(16)) - 1) as u16, ((1u32 << cols.saturating_sub(16)) - 1) as u16);
        for (r, row) in acc.iter().enumerate().take(rows) {
            // lane 2j + odd lane 2j + 1: the column's whole sum, in the even lane
            let s0 = _mm512_add_ps(row[0], _mm512_movehdup_ps(row[0]));
            let s1 = _mm512_add_ps(row[1], _mm512_movehdup_ps(row[1]));
            let s2 = _mm512_add_ps(row[2], _mm512_movehdup_ps(row[2]));
            let out = c.add(r * rsc);
            _mm512_mask_storeu_ps(out, lo_mask, _mm512_permutex2var_ps(s0, even, s1));
            _mm512_mask_storeu_ps(out.add(16), hi_mask, _mm512_permutexvar_ps(even, s2));
        }
    }
}

/// C tile += A x B with A given by columns: column k is the 12 floats at
/// `columns[k] + offset` (see `PanelGemm::gather_columns_tile`). One pointer load per
/// k-step, then 12 broadcasts from one base, folded into the FMAs as in the packed kernel.
#[target_feature(enable = "avx512f")]
pub unsafe fn kernel_avx512_12x32_columns(
    columns: &[*const f32],
    offset: usize,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    rows: usize,
    cols: usize,
) {
    // SAFETY: this unsafe fn's callers guarantee a CPU with avx512f (they dispatch on
    // `Isa::supported()`) and pointers valid for every offset it reads and writes.
    unsafe {
        if cols <= 16 {
            columns_avx512::<16>(columns, offset, b, c, rsc, rows, cols)
        } else {
            columns_avx512::<32>(columns, offset, b, c, rsc, rows, cols)
        }
    }
}

#[inline(always)]
unsafe fn columns_avx512<const W: usize>(
    columns: &[*const f32],
    offset: usize,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    rows: usize,
    cols: usize,
) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let mut lo = [_mm512_setzero_ps(); 12];
        let mut hi = [_mm512_setzero_ps(); 12];
        let mut b = b;
        // One k-step: a pointer, W / 16 loads of B, 12 broadcasts, 12 W / 16 FMAs.
        macro_rules! step {
            ($col:expr) => {{
                k_step::<W>($col.add(offset), b, &mut lo, &mut hi);
                b = b.add(32);
            }};
        }
        let mut quads = columns.chunks_exact(4);
        for q in &mut quads {
            step!(q[0]);
            step!(q[1]);
            step!(q[2]);
            step!(q[3]);
        }
        for &col in quads.remainder() {
            step!(col);
        }
        store_tile_avx512::<W>(&lo, &hi, c, rsc, 1.0, 1.0, std::ptr::null(), rows, cols);
    }
}

/// The tile over the segments: (12 row pointers, length) each.
#[inline(always)]
unsafe fn gather_avx512<const W: usize>(
    segments: impl Iterator<Item = ([*const f32; 12], usize)>,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    beta: f32,
    rows: usize,
    cols: usize,
) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let mut lo = [_mm512_setzero_ps(); 12];
        let mut hi = [_mm512_setzero_ps(); 12];
        let mut b = b;
        for (row_ptrs, len) in segments {
            b = gather_segment::<W>(&mut lo, &mut hi, &row_ptrs, len, b);
        }
        store_tile_avx512::<W>(&lo, &hi, c, rsc, 1.0, beta, std::ptr::null(), rows, cols);
    }
}

/// One segment's k-steps of the gather kernel. A function of its own, not inlined: with
/// the segment loop around it in one body, the compiler kept the 24 accumulators moving
/// between registers and the stack on every k-step (the tile ran at half speed). Here
/// they are loaded once per segment and stored once at its end.
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn gather_segment<const W: usize>(
    lo: &mut [__m512; 12],
    hi: &mut [__m512; 12],
    p: &[*const f32; 12],
    len: usize,
    b: *const f32,
) -> *const f32 {
    // SAFETY: this unsafe fn's callers guarantee a CPU with avx512f (they dispatch on
    // `Isa::supported()`) and pointers valid for every offset it reads and writes.
    unsafe {
        let (mut l, mut h) = (*lo, *hi);
        let p = *p;
        let mut b = b;
        // One k-step: 2 B loads, 12 broadcasts, 24 FMAs; four per loop iteration, so that
        // the loop's own instructions do not crowd the front end.
        macro_rules! step {
            ($k:expr) => {{
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(32 * PREFETCH_STEPS) as *const i8);
                if W > 16 {
                    _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(32 * PREFETCH_STEPS + 16) as *const i8);
                }
                let b0 = _mm512_loadu_ps(b);
                let b1 = if W == 32 { _mm512_loadu_ps(b.add(16)) } else { _mm512_setzero_ps() };
                for r in 0..12 {
                    let av = _mm512_set1_ps(*p[r].add($k));
                    l[r] = _mm512_fmadd_ps(av, b0, l[r]);
                    if W == 32 {
                        h[r] = _mm512_fmadd_ps(av, b1, h[r]);
                    }
                }
                b = b.add(32);
            }};
        }
        let mut k = 0;
        while k + 4 <= len {
            step!(k);
            step!(k + 1);
            step!(k + 2);
            step!(k + 3);
            k += 4;
        }
        while k < len {
            step!(k);
            k += 1;
        }
        (*lo, *hi) = (l, h);
        b
    }
}
