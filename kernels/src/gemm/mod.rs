//! Single-precision matrix multiply: C = alpha * A * B + beta * C.
//!
//! Operands are described by row and column strides (in elements), so a transposed operand is
//! just swapped strides and costs no copy.
//!
//! Structure (BLIS, as in bluss/matrixmultiply; the five loops are labelled below):
//! - loop 5 walks column panels of B and C, `nc` wide;
//! - loop 4 walks the K dimension in blocks of `kc` and packs B[kc, nc] into micro-panels NR
//!   columns wide (the packed panel stays in L3/L2);
//! - loop 3 walks row blocks of A, `mc` tall, and packs A[mc, kc] into micro-panels MR rows tall
//!   (the packed block stays in L2);
//! - loops 2 and 1 walk the NR-wide and MR-tall micro-tiles, and the micro-kernel computes an
//!   MR x NR tile of C in registers over kc steps (one MR panel of A and one NR panel of B in L1).
//!
//! Micro-kernels: AVX-512F 12x32 (24 accumulators, pair broadcasts: see
//! `x86::kernel_avx512_12x32`), AVX2+FMA 6x16 (12 accumulators), and a portable 4x8 written
//! as plain loops. Threads: C is split into disjoint blocks along M (or N when it is wider),
//! one per thread, each run by the serial algorithm with its own packing buffers; products
//! with few rows and many columns share one packed A instead (`gemm_parallel_cols`). Every
//! element of C is computed by one thread in one order, so results do not depend on the
//! thread count. Packing buffers sit on 2 MB pages (`crate::memory`). A B used for many
//! products (a weight at inference) can be packed once: [`PackedB`].
//!
//! Skinny shapes: M = 1 or N = 1 go to a matrix-vector path (no packing); batched products
//! run one product per thread when there are at least as many products as threads.
//!
//! Files: this one holds the public entry points and the scalar reference; `driver.rs` picks
//! the blocking, micro-kernel and path; `loops.rs` runs the five loops on one thread;
//! `threads.rs` the threaded products that share a packed operand; `pack.rs` the packing;
//! `portable.rs` and `x86.rs` the micro-kernels.

use crate::memory::HugeBuffer;
use crate::parallel::{self, SharedPtr};
use crate::simd::Isa;

mod driver;
mod loops;
mod pack;
mod portable;
#[cfg(test)]
mod tests;
mod threads;
#[cfg(target_arch = "x86_64")]
mod x86;

pub(crate) use driver::*;
pub(crate) use loops::*;
pub(crate) use pack::*;
use portable::*;
use threads::*;

/// Row / column strides of the three operands, in elements.
///
/// Element (i, j) of A lives at `a[i * a_row + j * a_col]`; likewise for B and C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmStrides {
    pub a_row: usize,
    pub a_col: usize,
    pub b_row: usize,
    pub b_col: usize,
    pub c_row: usize,
    pub c_col: usize,
}

impl GemmStrides {
    /// Strides of three row-major contiguous matrices A (m, k), B (k, n), C (m, n).
    pub fn row_major(k: usize, n: usize) -> Self {
        GemmStrides { a_row: k, a_col: 1, b_row: n, b_col: 1, c_row: n, c_col: 1 }
    }
}

/// Reference GEMM: C (m, n) = alpha * A (m, k) * B (k, n) + beta * C.
///
/// Accumulates each dot product in f64 (so it is a good oracle for the fast kernels' f32
/// rounding). When `beta == 0` C is overwritten without being read, so it may hold NaN.
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    s: GemmStrides,
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                acc += a[i * s.a_row + p * s.a_col] as f64 * b[p * s.b_row + j * s.b_col] as f64;
            }
            let dst = &mut c[i * s.c_row + j * s.c_col];
            let scaled = alpha as f64 * acc;
            *dst = if beta == 0.0 { scaled as f32 } else { (scaled + beta as f64 * *dst as f64) as f32 };
        }
    }
}

/// Largest index (plus one) an (rows x cols) strided matrix touches.
/// Elements spanned by a (rows, cols) view with strides (rs, cs): one past its last element.
/// Panics when that overflows (strides no buffer could hold), so bounds checks cannot wrap.
pub(crate) fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        return 0;
    }
    (rows - 1)
        .checked_mul(rs)
        .and_then(|r| (cols - 1).checked_mul(cs).and_then(|c| r.checked_add(c)))
        .and_then(|e| e.checked_add(1))
        .expect("gemm: strides overflow the address space")
}

/// Whether a (rows, cols) view with strides (rs, cs) addresses each element once, by the
/// simple test that covers every layout this crate makes: ordered by stride, the inner axis
/// steps by at least 1 and the outer axis steps past the inner axis's whole run. (Sufficient,
/// not necessary: other layouts are checked element by element.)
fn view_is_injective(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    let ((inner_n, inner_s), (outer_n, outer_s)) =
        if rs <= cs || rows <= 1 { ((rows, rs), (cols, cs)) } else { ((cols, cs), (rows, rs)) };
    let inner_ok = inner_n <= 1 || inner_s >= 1;
    let outer_ok = outer_n <= 1 || outer_s >= extent(inner_n, 1, inner_s, 0).max(1);
    inner_ok && outer_ok
}

/// Panics unless the (m, n) C views at `offsets` (strides `rs`, `cs`) never write one element
/// twice, within a view or between views: the GEMM's threads write them concurrently, so an
/// overlap would be a data race. Common layouts pass in O(views log views); others are checked
/// exactly with a bitmap over the buffer.
pub(crate) fn assert_disjoint_writes(
    c_len: usize,
    offsets: &[usize],
    m: usize,
    n: usize,
    rs: usize,
    cs: usize,
    what: &str,
) {
    if m == 0 || n == 0 || offsets.is_empty() {
        return;
    }
    let e = extent(m, n, rs, cs);
    if view_is_injective(m, n, rs, cs) {
        if offsets.len() == 1 {
            return;
        }
        let mut spans: Vec<usize> = offsets.to_vec();
        spans.sort_unstable();
        if spans.windows(2).all(|w| w[0].checked_add(e).is_some_and(|end| end <= w[1])) {
            return;
        }
    }
    let mut written = vec![0u64; c_len.div_ceil(64)];
    for &o in offsets {
        for i in 0..m {
            for j in 0..n {
                let at = o + i * rs + j * cs; // inside c_len: the callers checked the extents
                let (word, bit) = (at / 64, 1u64 << (at % 64));
                assert!(written[word] & bit == 0, "{what}: C views write element {at} twice (overlapping outputs)");
                written[word] |= bit;
            }
        }
    }
}

/// Panics if a buffer is too short for its shape and strides, or if C's strides would make
/// two threads write one element (a caller bug, not user input): the raw-pointer routines rely
/// on both.
fn check_operands(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &[f32], s: GemmStrides) {
    assert!(a.len() >= extent(m, k, s.a_row, s.a_col), "sgemm: A buffer too short");
    assert!(b.len() >= extent(k, n, s.b_row, s.b_col), "sgemm: B buffer too short");
    assert!(c.len() >= extent(m, n, s.c_row, s.c_col), "sgemm: C buffer too short");
    assert_disjoint_writes(c.len(), &[0], m, n, s.c_row, s.c_col, "sgemm");
}

/// The fast GEMM with the best instruction set and the configured thread count.
/// Panics if a buffer is too short for its shape and strides (a caller bug, not user input).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(m: usize, k: usize, n: usize, alpha: f32, a: &[f32], b: &[f32], beta: f32, c: &mut [f32], s: GemmStrides) {
    sgemm_with(Isa::best(), parallel::num_threads(), m, k, n, alpha, a, b, beta, c, s)
}

/// [`sgemm`] plus a bias row: C = alpha * op(A) op(B) + beta * C + bias, `bias[j]` added to every
/// row of column j, in the GEMM's own store (a linear layer's output needs no separate pass to
/// lay down the bias first).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_bias(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    s: GemmStrides,
    bias: &[f32],
) {
    sgemm_bias_with(Isa::best(), parallel::num_threads(), m, k, n, alpha, a, b, beta, c, s, Some(bias))
}

/// [`sgemm`] on a chosen instruction set (capped to what the CPU has) and thread count.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with(
    isa: Isa,
    threads: usize,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    s: GemmStrides,
) {
    sgemm_bias_with(isa, threads, m, k, n, alpha, a, b, beta, c, s, None)
}

/// [`sgemm_bias`] (or, with `bias: None`, [`sgemm`]) on a chosen instruction set and thread count.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_bias_with(
    isa: Isa,
    threads: usize,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    s: GemmStrides,
    bias: Option<&[f32]>,
) {
    check_operands(m, k, n, a, b, c, s);
    assert!(bias.is_none_or(|v| v.len() >= n), "sgemm: bias shorter than N");
    if m == 0 || n == 0 {
        return;
    }
    let isa = isa.supported();
    let bias = bias.map_or(std::ptr::null(), |v| v.as_ptr());
    // SAFETY: bounds were checked above; the raw-pointer routines stay inside those extents.
    unsafe {
        sgemm_raw_bias(isa, threads.max(1), m, k, n, alpha, a.as_ptr(), b.as_ptr(), beta, c.as_mut_ptr(), s, bias)
    }
}

/// Cache-block sizes of the blocked GEMM: `kc` elements of K per packed block, `mc` rows of A
/// per packed block (rounded up to whole micro-panels), `nc` columns of B per packed panel
/// (likewise). [`CacheBlocking::default_for`] gives the sizes every product uses; other sizes
/// change only the speed, never the result beyond rounding (the sum over K is split at other
/// places), which is what tuning runs and the tests of the loop edges rely on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheBlocking {
    pub kc: usize,
    pub mc: usize,
    pub nc: usize,
}

impl CacheBlocking {
    pub fn default_for(isa: Isa) -> CacheBlocking {
        let bl = default_blocking(isa.supported());
        CacheBlocking { kc: bl.kc, mc: bl.mc, nc: bl.nc }
    }
}

/// [`sgemm_with`] with chosen cache-block sizes (see [`CacheBlocking`]).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_blocked(
    isa: Isa,
    threads: usize,
    blocking: CacheBlocking,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    s: GemmStrides,
) {
    check_operands(m, k, n, a, b, c, s);
    if m == 0 || n == 0 {
        return;
    }
    let isa = isa.supported();
    let mut bl = default_blocking(isa);
    bl.kc = blocking.kc.max(1);
    bl.mc = blocking.mc.max(1).next_multiple_of(bl.mr);
    bl.nc = blocking.nc.max(1).next_multiple_of(bl.nr);
    // SAFETY: bounds were checked above; the raw-pointer routines stay inside those extents.
    unsafe {
        sgemm_raw_blocked(
            isa,
            bl,
            threads.max(1),
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            b.as_ptr(),
            beta,
            c.as_mut_ptr(),
            s,
            std::ptr::null(),
        )
    }
}

/// B packed once for many products against it: a layer's weight at inference, where the same
/// W meets a new batch of inputs on every call. [`sgemm_packed_b`] skips the packing that
/// [`sgemm`] redoes on every call (about 5% of a BERT-base forward, where every weight is
/// read transposed, gathered into panels and written out again before the kernel reads it).
/// The layout is [`sgemm`]'s own for that instruction set, so results are bitwise those of
/// [`sgemm_bias_with`] on the same operands (for M and N above 1, where that takes the blocked
/// path rather than the matrix-vector one).
///
/// ```
/// use kernels::gemm::{sgemm_packed_b, GemmStrides, PackedB};
/// use kernels::Isa;
/// // W (3 x 2, out x in) used as B = W^T (2 x 3): strides (1, 2)
/// let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
/// let packed = PackedB::new(Isa::best(), 2, 3, &w, 1, 2);
/// let x = [1.0, 1.0, 0.0, 1.0]; // (2 x 2)
/// let mut y = [0.0; 6];
/// let s = GemmStrides { a_row: 2, a_col: 1, b_row: 0, b_col: 0, c_row: 3, c_col: 1 };
/// sgemm_packed_b(1, 2, 1.0, &x, &packed, 0.0, &mut y, s, None);
/// assert_eq!(y, [3.0, 7.0, 11.0, 2.0, 4.0, 6.0]);
/// ```
pub struct PackedB {
    isa: Isa,
    k: usize,
    n: usize,
    data: HugeBuffer,
}

impl PackedB {
    /// Packs B (k x n, element (p, j) at `b[p * b_row + j * b_col]`) for `isa` (or the best
    /// path below it that the machine has), on the configured threads.
    pub fn new(isa: Isa, k: usize, n: usize, b: &[f32], b_row: usize, b_col: usize) -> PackedB {
        assert!(b.len() >= extent(k, n, b_row, b_col), "PackedB: B buffer too short");
        let isa = isa.supported();
        let mut data = HugeBuffer::new();
        if k > 0 && n > 0 {
            let s = GemmStrides { a_row: 0, a_col: 0, b_row, b_col, c_row: 0, c_col: 0 };
            // SAFETY: B's extent was checked above.
            unsafe { pack_b_whole(isa, default_blocking(isa), k, n, b.as_ptr(), s, &mut data) };
        }
        PackedB { isa, k, n, data }
    }

    /// (K, N) of the packed B.
    pub fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Bytes held by the packed copy.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }
}

/// C = alpha * A * B + beta * C (+ bias on every row) with B from [`PackedB`]: A is m x K and
/// C m x N, strided by `s` (its B strides are not used), on `threads` threads.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed_b(
    threads: usize,
    m: usize,
    alpha: f32,
    a: &[f32],
    packed: &PackedB,
    beta: f32,
    c: &mut [f32],
    s: GemmStrides,
    bias: Option<&[f32]>,
) {
    let (k, n) = (packed.k, packed.n);
    assert!(a.len() >= extent(m, k, s.a_row, s.a_col), "sgemm_packed_b: A buffer too short");
    assert!(c.len() >= extent(m, n, s.c_row, s.c_col), "sgemm_packed_b: C buffer too short");
    assert!(bias.is_none_or(|v| v.len() >= n), "sgemm_packed_b: bias shorter than N");
    assert_disjoint_writes(c.len(), &[0], m, n, s.c_row, s.c_col, "sgemm_packed_b");
    if m == 0 || n == 0 {
        return;
    }
    let bias = bias.map_or(std::ptr::null(), |v| v.as_ptr());
    // SAFETY: bounds were checked above; the packed B holds K x padded N for this isa.
    unsafe {
        if k == 0 || alpha == 0.0 {
            scale_c(m, n, beta, c.as_mut_ptr(), s, bias);
            return;
        }
        let isa = packed.isa;
        multiply_rows_packed_b(
            isa,
            default_blocking(isa),
            threads.max(1),
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            packed.data.as_ptr(),
            beta,
            c.as_mut_ptr(),
            s,
            bias,
        );
    }
}

/// Strided-batched GEMM: `batch` independent products, operand p of product i starting at
/// `i * batch_stride` of its buffer (attention's batch x heads products). Small products run one
/// per thread; large ones are threaded internally.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_batched(
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    a_batch_stride: usize,
    b: &[f32],
    b_batch_stride: usize,
    beta: f32,
    c: &mut [f32],
    c_batch_stride: usize,
    s: GemmStrides,
) {
    if batch == 0 || m == 0 || n == 0 {
        return;
    }
    let span = |stride: usize, view: usize| (batch - 1).checked_mul(stride).and_then(|x| x.checked_add(view));
    assert!(
        span(a_batch_stride, extent(m, k, s.a_row, s.a_col)).is_some_and(|e| a.len() >= e),
        "sgemm_batched: A too short"
    );
    assert!(
        span(b_batch_stride, extent(k, n, s.b_row, s.b_col)).is_some_and(|e| b.len() >= e),
        "sgemm_batched: B too short"
    );
    assert!(
        span(c_batch_stride, extent(m, n, s.c_row, s.c_col)).is_some_and(|e| c.len() >= e),
        "sgemm_batched: C too short"
    );
    let c_offsets: Vec<usize> = (0..batch).map(|i| i * c_batch_stride).collect();
    assert_disjoint_writes(c.len(), &c_offsets, m, n, s.c_row, s.c_col, "sgemm_batched");
    let threads = parallel::num_threads();
    let isa = Isa::best();
    let flops_per_product = 2 * m * n * k;
    let (ap, bp, cp) =
        (SharedPtr(a.as_ptr() as *mut f32), SharedPtr(b.as_ptr() as *mut f32), SharedPtr(c.as_mut_ptr()));
    if threads > 1 && batch >= threads && flops_per_product < (1 << 24) {
        parallel::install(|| {
            use rayon::prelude::*;
            let chunk = batch.div_ceil(threads);
            (0..threads).into_par_iter().for_each(|t| {
                let (ap, bp, cp) = (ap, bp, cp);
                for i in t * chunk..((t + 1) * chunk).min(batch) {
                    // SAFETY: every operand lies inside the extents checked above, and the C views
                    // were checked to be disjoint (assert_disjoint_writes), so threads never
                    // write one element.
                    unsafe {
                        sgemm_raw(
                            isa,
                            1,
                            m,
                            k,
                            n,
                            alpha,
                            ap.0.add(i * a_batch_stride),
                            bp.0.add(i * b_batch_stride),
                            beta,
                            cp.0.add(i * c_batch_stride),
                            s,
                        )
                    }
                }
            });
        });
    } else {
        for i in 0..batch {
            // SAFETY: as above.
            unsafe {
                sgemm_raw(
                    isa,
                    threads,
                    m,
                    k,
                    n,
                    alpha,
                    ap.0.add(i * a_batch_stride),
                    bp.0.add(i * b_batch_stride),
                    beta,
                    cp.0.add(i * c_batch_stride),
                    s,
                )
            }
        }
    }
}

/// The machine's FMA ceiling (GFLOP/s on the calling thread): 24 independent chains of
/// register-only FMAs at the widest vector width available (zmm, else ymm), no loads. The
/// figure every kernel's GFLOP/s is a fraction of; measured beside the kernels, it also
/// shows what the host grants at that moment (this shared Xeon's cores run 1.5x apart).
pub fn fma_peak(isa: Isa, iterations: usize) -> f64 {
    let start = std::time::Instant::now();
    let flops = match isa.supported() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path was checked by `supported`.
        Isa::Avx512 => (unsafe { x86::fma_chains_avx512(iterations) }) as f64,
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => (unsafe { x86::fma_chains_avx2(iterations) }) as f64,
        _ => return f64::NAN,
    };
    flops / start.elapsed().as_secs_f64() / 1e9
}

/// Throughput of the bare micro-kernel on L1-resident panels (GFLOP/s), for tuning: the
/// ceiling the blocked GEMM can approach.
pub fn micro_kernel_peak(isa: Isa, kc: usize, calls: usize) -> f64 {
    let isa = isa.supported();
    let bl = default_blocking(isa);
    let a = vec![0.5f32; bl.mr * kc];
    let b = vec![0.25f32; bl.nr * kc];
    let mut c = vec![0.0f32; bl.mr * bl.nr];
    let kernel = micro_kernel(isa);
    let t = std::time::Instant::now();
    for _ in 0..calls {
        // SAFETY: panels and tile are sized for this kernel.
        unsafe { kernel(kc, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), bl.nr, 1.0, 1.0, std::ptr::null()) };
    }
    std::hint::black_box(&c);
    (2 * bl.mr * bl.nr * kc * calls) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Many products of one shape at arbitrary offsets (a batch of views, e.g. attention's
/// (batch, head) pairs through permuted strides). Panics if `c` regions overlap. Products are
/// spread over the threads when there are enough of them, else each is threaded internally.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_offsets(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    a_offsets: &[usize],
    b: &[f32],
    b_offsets: &[usize],
    beta: f32,
    c: &mut [f32],
    c_offsets: &[usize],
    s: GemmStrides,
) {
    assert!(
        a_offsets.len() == b_offsets.len() && a_offsets.len() == c_offsets.len(),
        "sgemm_offsets: offset lists differ"
    );
    if m == 0 || n == 0 {
        return;
    }
    let (ea, eb, ec) = (extent(m, k, s.a_row, s.a_col), extent(k, n, s.b_row, s.b_col), extent(m, n, s.c_row, s.c_col));
    let inside = |offset: usize, view: usize, len: usize| offset.checked_add(view).is_some_and(|end| end <= len);
    for i in 0..a_offsets.len() {
        assert!(
            inside(a_offsets[i], ea, a.len()) && inside(b_offsets[i], eb, b.len()) && inside(c_offsets[i], ec, c.len()),
            "sgemm_offsets: product {i} out of bounds"
        );
    }
    assert_disjoint_writes(c.len(), c_offsets, m, n, s.c_row, s.c_col, "sgemm_offsets");
    let threads = parallel::num_threads();
    let isa = Isa::best();
    let batch = a_offsets.len();
    let (ap, bp, cp) =
        (SharedPtr(a.as_ptr() as *mut f32), SharedPtr(b.as_ptr() as *mut f32), SharedPtr(c.as_mut_ptr()));
    let run = |i: usize, t: usize| {
        let (ap, bp, cp) = (ap, bp, cp);
        // SAFETY: every product lies inside the bounds checked above, and the C views were
        // checked to be disjoint (assert_disjoint_writes): concurrent products never share an
        // element.
        unsafe {
            sgemm_raw(
                isa,
                t,
                m,
                k,
                n,
                alpha,
                ap.0.add(a_offsets[i]),
                bp.0.add(b_offsets[i]),
                beta,
                cp.0.add(c_offsets[i]),
                s,
            )
        }
    };
    if threads > 1 && batch >= threads && 2 * m * n * k < (1 << 24) {
        parallel::install(|| {
            use rayon::prelude::*;
            (0..batch).into_par_iter().with_min_len(batch.div_ceil(threads * 4)).for_each(|i| run(i, 1));
        });
    } else {
        for i in 0..batch {
            run(i, threads);
        }
    }
}
