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

use crate::memory::HugeBuffer;
use crate::parallel::{self, SharedPtr};
use crate::simd::Isa;

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
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
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
    assert!(a.len() >= extent(m, k, s.a_row, s.a_col), "sgemm: A buffer too short");
    assert!(b.len() >= extent(k, n, s.b_row, s.b_col), "sgemm: B buffer too short");
    assert!(c.len() >= extent(m, n, s.c_row, s.c_col), "sgemm: C buffer too short");
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
    assert!(a.len() >= extent(m, k, s.a_row, s.a_col), "sgemm: A buffer too short");
    assert!(b.len() >= extent(k, n, s.b_row, s.b_col), "sgemm: B buffer too short");
    assert!(c.len() >= extent(m, n, s.c_row, s.c_col), "sgemm: C buffer too short");
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
    assert!(a.len() >= (batch - 1) * a_batch_stride + extent(m, k, s.a_row, s.a_col), "sgemm_batched: A too short");
    assert!(b.len() >= (batch - 1) * b_batch_stride + extent(k, n, s.b_row, s.b_col), "sgemm_batched: B too short");
    assert!(c.len() >= (batch - 1) * c_batch_stride + extent(m, n, s.c_row, s.c_col), "sgemm_batched: C too short");
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
                    // SAFETY: products write disjoint C regions (callers give non-overlapping
                    // batch strides), all inside the extents checked above.
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
/// (batch, head) pairs through permuted strides). `c` regions must not overlap. Products are
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
    for i in 0..a_offsets.len() {
        assert!(
            a_offsets[i] + ea <= a.len() && b_offsets[i] + eb <= b.len() && c_offsets[i] + ec <= c.len(),
            "sgemm_offsets: product {i} out of bounds"
        );
    }
    let threads = parallel::num_threads();
    let isa = Isa::best();
    let batch = a_offsets.len();
    let (ap, bp, cp) =
        (SharedPtr(a.as_ptr() as *mut f32), SharedPtr(b.as_ptr() as *mut f32), SharedPtr(c.as_mut_ptr()));
    let run = |i: usize, t: usize| {
        let (ap, bp, cp) = (ap, bp, cp);
        // SAFETY: bounds checked above; callers guarantee disjoint C regions.
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

/// Cache blocking and micro-tile of one instruction set.
#[derive(Clone, Copy)]
struct Blocking {
    mr: usize,
    nr: usize,
    kc: usize,
    mc: usize,
    nc: usize,
}

fn default_blocking(isa: Isa) -> Blocking {
    match isa {
        // mc covers 2048 rows (172 micro-panels): B is then packed once for the 2048-row shapes
        // of the benchmark and of BERT batches; with 1536, twice (pack_b was 5% of 2048^3).
        Isa::Avx512 => Blocking { mr: 12, nr: 32, kc: 384, mc: 2064, nc: 256 },
        Isa::Avx2 => Blocking { mr: 6, nr: 16, kc: 384, mc: 1536, nc: 384 },
        Isa::Portable => Blocking { mr: 4, nr: 8, kc: 256, mc: 512, nc: 256 },
    }
}

/// One micro-kernel call: C[tile] = alpha * Apanel * Bpanel + beta * C[tile], where the tile is
/// MR x NR with row stride `rsc` and unit column stride. `beta == 0` never reads C.
/// `bias` is null or points at NR floats added to every row of the tile.
type MicroKernel = unsafe fn(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    alpha: f32,
    beta: f32,
    bias: *const f32,
);

fn micro_kernel(isa: Isa) -> MicroKernel {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::kernel_avx512_12x32,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::kernel_avx2_6x16,
        _ => kernel_portable_4x8,
    }
}

/// An edge-tile micro-kernel: like [`MicroKernel`] but touching only the first `rows` x `cols`
/// of the C tile. Paths without one compute edge tiles into a scratch tile and merge.
type EdgeKernel = unsafe fn(
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
);

fn edge_micro_kernel(isa: Isa) -> Option<EdgeKernel> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(x86::kernel_avx512_12x32_edge),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_raw(
    isa: Isa,
    threads: usize,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    s: GemmStrides,
) {
    sgemm_raw_bias(isa, threads, m, k, n, alpha, a, b, beta, c, s, std::ptr::null())
}

/// The GEMM driver on raw pointers; `bias` is null or points at N floats added to every row.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_raw_bias(
    isa: Isa,
    threads: usize,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    s: GemmStrides,
    bias: *const f32,
) {
    sgemm_raw_blocked(isa, default_blocking(isa), threads, m, k, n, alpha, a, b, beta, c, s, bias)
}

/// The GEMM driver with given blocking: the matrix-vector path, or the blocked loops on one
/// thread or split across threads.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_raw_blocked(
    isa: Isa,
    bl: Blocking,
    threads: usize,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    s: GemmStrides,
    bias: *const f32,
) {
    if k == 0 || alpha == 0.0 {
        scale_c(m, n, beta, c, s, bias);
        return;
    }
    if n == 1 || m == 1 {
        gemv_path(m, k, n, alpha, a, b, beta, c, s, bias);
        return;
    }
    let work = 2 * m * n * k;
    // Below ~1 MFLOP threading costs more than it saves.
    let threads = if work < (1 << 20) { 1 } else { threads };
    if threads <= 1 {
        gemm_serial(isa, bl, m, k, n, alpha, a, b, beta, c, s, bias);
        return;
    }
    // Column chunks re-read the shared (M x kc) block of packed A from each thread's L2: only
    // when it fits there. (With M = 2048, as in BERT-base's projections, it streamed from
    // L3 into the kernel at half speed.)
    let a_block_fits_l2 = m * bl.kc <= SHARED_A_MAX_FLOATS;
    if m < n && a_block_fits_l2 && n >= 4 * threads * bl.nr && s.c_col == 1 {
        gemm_parallel_cols(isa, bl, threads, m, k, n, alpha, a, b, beta, c, s, bias);
        return;
    }
    // Otherwise C is split into `threads` blocks along its longer side, on micro-tile
    // boundaries, each computed by the serial blocked GEMM: one hand-off per thread and no
    // joins, as OpenBLAS splits. Each block packs its own copy of B (rows split); packing B
    // once and handing out row chunks (as `sgemm_packed_b` does for a pre-packed B) costs a
    // shared packing phase and one join per block of K, which measured slower on two threads
    // (1024^3: 0.82 of OpenBLAS against 0.98 with one block per thread).
    // Few rows or few columns (the column split above did not apply) take this path as well.
    let split_n = n >= m;
    let (len, unit) = if split_n { (n, bl.nr) } else { (m, bl.mr) };
    let units = len.div_ceil(unit);
    let parts = threads.min(units);
    let (ap, bp, cp) = (SharedPtr(a as *mut f32), SharedPtr(b as *mut f32), SharedPtr(c));
    let bias = SharedPtr(bias as *mut f32);
    parallel::install(|| {
        use rayon::prelude::*;
        (0..parts).into_par_iter().for_each(|t| {
            let (ap, bp, cp, bias) = (ap, bp, cp, bias);
            let bias = bias.0 as *const f32;
            let start = (units * t / parts) * unit;
            let end = ((units * (t + 1) / parts) * unit).min(len);
            if start >= end {
                return;
            }
            // SAFETY: each part writes a disjoint block of C.
            unsafe {
                if split_n {
                    gemm_serial(
                        isa,
                        bl,
                        m,
                        k,
                        end - start,
                        alpha,
                        ap.0,
                        bp.0.add(start * s.b_col),
                        beta,
                        cp.0.add(start * s.c_col),
                        s,
                        if bias.is_null() { bias } else { bias.add(start) },
                    );
                } else {
                    gemm_serial(
                        isa,
                        bl,
                        end - start,
                        k,
                        n,
                        alpha,
                        ap.0.add(start * s.a_row),
                        bp.0,
                        beta,
                        cp.0.add(start * s.c_row),
                        s,
                        bias,
                    );
                }
            }
        });
    });
}

/// All of B (k x n, strides of `s`), packed for [`multiply_rows_packed_b`] into `out` (grown
/// as needed): (K, padded N), block pc starting at pc * padded_n, its panel at column jr
/// kcb * jr further on, holding [kcb][NR]. Packed in runs of up to 8 panels, so that B is read
/// in long row runs (see pack_b), the runs in parallel.
unsafe fn pack_b_whole(
    isa: Isa,
    bl: Blocking,
    k: usize,
    n: usize,
    b: *const f32,
    s: GemmStrides,
    out: &mut HugeBuffer,
) {
    let bp = SharedPtr(b as *mut f32);
    pack_shared(k, bl.kc, n, bl.nr, 8, out, |pc, kcb, jr, cols, panel| {
        // SAFETY: the caller's B holds rows pc.. and columns jr.. (strides of `s`)
        unsafe { pack_b(isa, kcb, cols, bl.nr, bp.get().add(pc * s.b_row + jr * s.b_col), s.b_row, s.b_col, panel) }
    });
}

/// The threaded loops of [`sgemm_packed_b`] against a B already packed by
/// [`pack_b_whole`] (at `packed_b`): row chunks of C handed out to the threads as they come
/// free, each packing its own rows of A.
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_rows_packed_b(
    isa: Isa,
    bl: Blocking,
    threads: usize,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    packed_b: *const f32,
    beta: f32,
    c: *mut f32,
    s: GemmStrides,
    bias: *const f32,
) {
    let (mr, nr, kc) = (bl.mr, bl.nr, bl.kc);
    let padded_n = n.div_ceil(nr) * nr;
    let pb = SharedPtr(packed_b as *mut f32);
    // Row chunks: about four per thread, whole micro-panels, at most one cache block tall.
    let chunk = m.div_ceil(4 * threads).next_multiple_of(mr).min(bl.mc);
    let (ap, cp, biasp) = (SharedPtr(a as *mut f32), SharedPtr(c), SharedPtr(bias as *mut f32));
    let tiles = TileKernels::new(isa, bl);
    parallel::install_with(threads, || {
        for_each_chunk_block(kc, m.div_ceil(chunk), k, |q, pc| {
            let kcb = kc.min(k - pc);
            let beta_block = if pc == 0 { beta } else { 1.0 };
            let (ap, cp, biasp, pb) = (ap, cp, biasp, pb);
            let (i0, rows) = (q * chunk, chunk.min(m - q * chunk));
            PACK_A.with(|pa| {
                let mut pa = pa.borrow_mut();
                let need = rows.div_ceil(mr) * mr * kcb;
                pa.grow(need);
                let a_block = ap.0.add(i0 * s.a_row + pc * s.a_col) as *const f32;
                if n <= bl.nc && s.a_col == 1 {
                    // One column panel: A packed one micro-panel at a time (UnpackedRows).
                    let bias_block = if pc == 0 { biasp.0 as *const f32 } else { std::ptr::null() };
                    let unpacked = UnpackedRows { isa, a: a_block, rs: s.a_row, cs: s.a_col, rows };
                    let b_block = pb.0.add(pc * padded_n);
                    let c_block = cp.0.add(i0 * s.c_row);
                    unpacked.multiply(&tiles, kcb, b_block, n, &mut pa, c_block, s, alpha, beta_block, bias_block);
                    return;
                }
                // Pack this chunk's rows of A for block pc.
                pack_a(isa, rows, kcb, mr, a_block, s.a_row, s.a_col, &mut pa);
                // Loop 5: column panels of the shared B (nc wide, L2-sized).
                for jc in (0..n).step_by(bl.nc) {
                    // SAFETY: rows i0.. of C belong to this chunk alone.
                    let c_block = cp.0.add(i0 * s.c_row + jc * s.c_col);
                    let bias_block =
                        if pc == 0 && !biasp.0.is_null() { biasp.0.add(jc) as *const f32 } else { std::ptr::null() };
                    let b_block = pb.0.add(pc * padded_n + jc * kcb);
                    let block = PackedBlock { kc: kcb, rows, cols: bl.nc.min(n - jc), a: pa.as_ptr(), b: b_block };
                    block.multiply(&tiles, c_block, s, alpha, beta_block, bias_block);
                }
            });
        });
    });
}

/// The threaded loop of [`multiply_rows_packed_b`] and [`gemm_parallel_cols`]: `body(q, pc)` for
/// every chunk q < `chunks` and every block of K starting at pc. Loop 4 (blocks of K) runs
/// outside the threads: every chunk works through block pc before any starts block pc + 1,
/// so the block of the shared operand that a thread's chunks read stays in its L2 from one
/// chunk to the next. (With loop 4 inside each chunk, every chunk streamed the whole shared
/// operand from L3 again: for the weight gradients, K = 2048 and M, N = 256, that was 8x the
/// traffic.) Each chunk's blocks run in the order of K, so every element of C is summed in
/// the serial order.
///
/// The chunks of a block go to threads as they come free, with a join between blocks. A
/// static schedule (thread t carries the t-th run of chunks through every block, one join
/// per product) measured the same, alternated call by call in one process
/// (`gemm_bench --threads 2 --bert-mini`, sixth session), so the join is not where
/// two-thread time goes, and the dynamic one still balances a core slowed by a neighbour.
fn for_each_chunk_block(kc: usize, chunks: usize, k: usize, body: impl Fn(usize, usize) + Sync) {
    use rayon::prelude::*;
    for pc in (0..k).step_by(kc) {
        (0..chunks).into_par_iter().for_each(|q| body(q, pc));
    }
}

unsafe fn scale_c(m: usize, n: usize, beta: f32, c: *mut f32, s: GemmStrides, bias: *const f32) {
    for i in 0..m {
        for j in 0..n {
            let p = c.add(i * s.c_row + j * s.c_col);
            let add = if bias.is_null() { 0.0 } else { *bias.add(j) };
            *p = if beta == 0.0 { add } else { beta * *p + add };
        }
    }
}

/// One operand of a threaded GEMM packed whole, for all threads to share: for every block of
/// K (kc deep) and every run of `run` micro-panels (`unit` wide) along the other axis (`len`
/// long), `pack(pc, kcb, start, count, out)` fills that run's panels, the runs in parallel.
/// Block pc starts at pc * padded len, a run at `start` kcb * start further on, in `packed`
/// (grown as needed). The threaded GEMMs pass the calling thread's buffer, kept between
/// calls (fresh pages for a few MB per GEMM would cost page faults on every call): taken out
/// of its cell, so a nested call would simply find an empty one, and put back with
/// [`return_shared`]; a [`PackedB`] passes its own.
fn pack_shared(
    k: usize,
    kc: usize,
    len: usize,
    unit: usize,
    run: usize,
    packed: &mut HugeBuffer,
    pack: impl Fn(usize, usize, usize, usize, &mut [f32]) + Sync,
) {
    use rayon::prelude::*;
    let padded = len.div_ceil(unit) * unit;
    packed.grow(k * padded);
    let run = run * unit;
    let items: Vec<(usize, usize)> =
        (0..k).step_by(kc).flat_map(|pc| (0..len).step_by(run).map(move |start| (pc, start))).collect();
    let base = SharedPtr(packed.as_mut_ptr());
    parallel::install(|| {
        items.par_iter().for_each(|&(pc, start)| {
            let kcb = kc.min(k - pc);
            let count = run.min(len - start);
            // SAFETY: each item owns its run's floats of the buffer (k * padded long).
            let out = unsafe {
                std::slice::from_raw_parts_mut(
                    base.get().add(pc * padded + start * kcb),
                    count.div_ceil(unit) * unit * kcb,
                )
            };
            pack(pc, kcb, start, count, out);
        });
    });
}

/// Puts a [`pack_shared`] buffer back in its cell for the next call.
fn return_shared(buffer: HugeBuffer) {
    SHARED_PACKED.with(|cell| *cell.borrow_mut() = buffer);
}

/// The largest block of packed A (floats) that [`gemm_parallel_cols`] shares: 512 KB, half
/// this Xeon's 1 MB L2.
const SHARED_A_MAX_FLOATS: usize = 128 * 1024;

/// Several threads, fewer rows than columns: the mirror image of [`multiply_rows_packed_b`]. A,
/// the smaller operand, is packed once and shared; column chunks of C (whole NR-wide panels)
/// are handed out, each packing its own columns of B. With row chunks, every chunk read the
/// whole (kc x N) block of packed B again, more than L2 holds when N = 1024: the weight
/// gradient 256 x 2048 x 1024 of BERT-mini's feed-forward ran at 0.73x numpy's speed. A
/// column chunk re-reads the (M x kc) block of A instead, the smaller one. Results are
/// bitwise those of one thread (each element is summed over K in the same order).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_parallel_cols(
    isa: Isa,
    bl: Blocking,
    threads: usize,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    s: GemmStrides,
    bias: *const f32,
) {
    let (mr, nr, kc) = (bl.mr, bl.nr, bl.kc);
    let padded_m = m.div_ceil(mr) * mr;
    // Packed A, (K, padded M): block pc starts at pc * padded_m; its micro-panel at row ir
    // starts kcb * ir further on and holds [kcb][MR]. Packed in runs of up to 16
    // micro-panels, so that a transposed A is still read in long runs (see pack_a).
    let ap = SharedPtr(a as *mut f32);
    let mut packed_a = SHARED_PACKED.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
    pack_shared(k, kc, m, mr, 16, &mut packed_a, |pc, kcb, ir, rows, out| {
        // SAFETY: the caller's A holds rows ir.. and columns pc.. (strides of `s`)
        unsafe { pack_a(isa, rows, kcb, mr, ap.get().add(ir * s.a_row + pc * s.a_col), s.a_row, s.a_col, out) }
    });
    let pa = SharedPtr(packed_a.as_mut_ptr());
    // Column chunks: about four per thread, whole NR-wide panels, at most nc wide.
    let chunk = n.div_ceil(4 * threads).next_multiple_of(nr).min(bl.nc);
    let (bp, cp, biasp) = (SharedPtr(b as *mut f32), SharedPtr(c), SharedPtr(bias as *mut f32));
    let tiles = TileKernels::new(isa, bl);
    parallel::install(|| {
        for_each_chunk_block(kc, n.div_ceil(chunk), k, |q, pc| {
            let kcb = kc.min(k - pc);
            let beta_block = if pc == 0 { beta } else { 1.0 };
            let (bp, cp, biasp, pa) = (bp, cp, biasp, pa);
            let (j0, cols) = (q * chunk, chunk.min(n - q * chunk));
            PACK_B.with(|pb| {
                let mut pb = pb.borrow_mut();
                let need = cols.div_ceil(nr) * nr * kcb;
                pb.grow(need);
                pack_b(isa, kcb, cols, nr, bp.0.add(pc * s.b_row + j0 * s.b_col), s.b_row, s.b_col, &mut pb);
                let bias_block =
                    if pc == 0 && !biasp.0.is_null() { biasp.0.add(j0) as *const f32 } else { std::ptr::null() };
                // Loop 3: row blocks of the shared A.
                for ic in (0..m).step_by(bl.mc) {
                    // SAFETY: columns j0.. of C belong to this chunk alone.
                    let c_block = cp.0.add(ic * s.c_row + j0 * s.c_col);
                    let a_block = pa.0.add(pc * padded_m + ic * kcb);
                    let block = PackedBlock { kc: kcb, rows: bl.mc.min(m - ic), cols, a: a_block, b: pb.as_ptr() };
                    block.multiply(&tiles, c_block, s, alpha, beta_block, bias_block);
                }
            });
        });
    });
    return_shared(packed_a);
}

thread_local! {
    static PACK_A: std::cell::RefCell<HugeBuffer> = const { std::cell::RefCell::new(HugeBuffer::new()) };
    static PACK_B: std::cell::RefCell<HugeBuffer> = const { std::cell::RefCell::new(HugeBuffer::new()) };
    /// All of A, packed once for the threads of [`gemm_parallel_cols`].
    static SHARED_PACKED: std::cell::RefCell<HugeBuffer> = const { std::cell::RefCell::new(HugeBuffer::new()) };
}

/// The micro-kernels of one instruction set, and how a C tile of any size goes through them.
#[derive(Clone, Copy)]
struct TileKernels {
    kernel: MicroKernel,
    edge: Option<EdgeKernel>,
    mr: usize,
    nr: usize,
}

impl TileKernels {
    fn new(isa: Isa, bl: Blocking) -> TileKernels {
        TileKernels { kernel: micro_kernel(isa), edge: edge_micro_kernel(isa), mr: bl.mr, nr: bl.nr }
    }

    /// C tile (rows x cols, strides of `s`) = alpha * A panel x B panel + beta * C + bias:
    /// the full kernel, the masked edge kernel, or a scratch tile merged element by element
    /// (strided C, or a path without an edge kernel).
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        &self,
        kc: usize,
        a_panel: *const f32,
        b_panel: *const f32,
        c_tile: *mut f32,
        s: GemmStrides,
        alpha: f32,
        beta: f32,
        bias_tile: *const f32,
        rows: usize,
        cols: usize,
    ) {
        if rows == self.mr && cols == self.nr && s.c_col == 1 {
            (self.kernel)(kc, a_panel, b_panel, c_tile, s.c_row, alpha, beta, bias_tile);
        } else if let (Some(edge), 1) = (self.edge, s.c_col) {
            edge(kc, a_panel, b_panel, c_tile, s.c_row, alpha, beta, bias_tile, rows, cols);
        } else {
            let mut tile = [0.0f32; 12 * 32];
            (self.kernel)(kc, a_panel, b_panel, tile.as_mut_ptr(), self.nr, 1.0, 0.0, std::ptr::null());
            for i in 0..rows {
                for j in 0..cols {
                    let dst = c_tile.add(i * s.c_row + j * s.c_col);
                    let mut v = alpha * tile[i * self.nr + j];
                    if !bias_tile.is_null() {
                        v += *bias_tile.add(j);
                    }
                    *dst = if beta == 0.0 { v } else { v + beta * *dst };
                }
            }
        }
    }
}

/// A packed A block (`rows` x kc, MR-tall micro-panels [kc][MR]) and a packed B panel (kc x
/// `cols`, NR-wide micro-panels [kc][NR]), ready for loops 2 and 1.
struct PackedBlock {
    kc: usize,
    rows: usize,
    cols: usize,
    a: *const f32,
    b: *const f32,
}

impl PackedBlock {
    /// Loops 2 and 1 in the A-resident order: C block (+)= A block x B panel, one MR-tall A
    /// micro-panel kept in L1 while the NR-wide B micro-panels stream past it from L2 (the
    /// kernel prefetches them). `bias` is null or points at the block's first column's bias.
    ///
    /// # Safety
    /// The packed buffers hold the block; the C block (strides of `s`) is writable.
    unsafe fn multiply(
        &self,
        tiles: &TileKernels,
        c: *mut f32,
        s: GemmStrides,
        alpha: f32,
        beta: f32,
        bias: *const f32,
    ) {
        let (mr, nr, kc) = (tiles.mr, tiles.nr, self.kc);
        // Loop 2: MR-tall micro-panels of A (one stays in L1 ...
        for ir in (0..self.rows).step_by(mr) {
            // Loop 1: ... while the NR-wide micro-panels of B stream from L2).
            for jr in (0..self.cols).step_by(nr) {
                let bias_tile = if bias.is_null() { bias } else { bias.add(jr) };
                tiles.run(
                    kc,
                    self.a.add(ir * kc),
                    self.b.add(jr * kc),
                    c.add(ir * s.c_row + jr * s.c_col),
                    s,
                    alpha,
                    beta,
                    bias_tile,
                    mr.min(self.rows - ir),
                    nr.min(self.cols - jr),
                );
            }
        }
    }
}

/// Rows of A not yet packed: `rows` x kc at `a` (strides `rs`, `cs`), for a B that is one
/// column panel wide. Then each A row block is used once, so instead of packing the whole
/// block before the arithmetic (a pure memory stream, then pure arithmetic, one after the
/// other), each MR-tall micro-panel is packed just before its tiles run. Its source rows
/// arrive while the previous micro-panel's FMAs execute, and the hardware prefetcher keeps
/// streaming; the packed panel is still in L1 when the kernel reads it. A 1 x 1 convolution
/// to few channels (M = N*H*W, K = C_in <= kc, N <= nc) spent 43% of its time in a separate
/// packing pass bound by memory bandwidth.
struct UnpackedRows {
    isa: Isa,
    a: *const f32,
    rs: usize,
    cs: usize,
    rows: usize,
}

impl UnpackedRows {
    /// C block (+)= A rows x packed B panel (kc x `cols`, NR-wide micro-panels), packing one
    /// MR-tall A micro-panel at a time into `scratch` (at least MR * kc floats).
    ///
    /// # Safety
    /// As [`PackedBlock::multiply`]; the A rows are readable.
    #[allow(clippy::too_many_arguments)]
    unsafe fn multiply(
        &self,
        tiles: &TileKernels,
        kc: usize,
        b: *const f32,
        cols: usize,
        scratch: &mut [f32],
        c: *mut f32,
        s: GemmStrides,
        alpha: f32,
        beta: f32,
        bias: *const f32,
    ) {
        let mr = tiles.mr;
        for ir in (0..self.rows).step_by(mr) {
            let rows = mr.min(self.rows - ir);
            // Ask for the micro-panel after next now: its lines arrive from memory during
            // this panel's and the next one's arithmetic.
            let ahead = ir + 2 * mr;
            if self.cs == 1 && ahead < self.rows {
                for r in ahead..(ahead + mr).min(self.rows) {
                    prefetch_span(self.a.add(r * self.rs), kc);
                }
            }
            pack_a(self.isa, rows, kc, mr, self.a.add(ir * self.rs), self.rs, self.cs, scratch);
            let panel = PackedBlock { kc, rows, cols, a: scratch.as_ptr(), b };
            panel.multiply(tiles, c.add(ir * s.c_row), s, alpha, beta, bias);
        }
    }
}

/// The five BLIS loops on one thread.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_serial(
    isa: Isa,
    bl: Blocking,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    s: GemmStrides,
    bias: *const f32,
) {
    let (kernel, edge_kernel) = (micro_kernel(isa), edge_micro_kernel(isa));
    let (mr, nr) = (bl.mr, bl.nr);
    PACK_A.with(|pa| {
        PACK_B.with(|pb| {
            let mut pa = pa.borrow_mut();
            let mut pb = pb.borrow_mut();
            let a_need = bl.mc.min(m.div_ceil(mr) * mr) * bl.kc.min(k);
            let b_need = bl.nc.min(n.div_ceil(nr) * nr) * bl.kc.min(k);
            pa.grow(a_need);
            pb.grow(b_need);
            let tiles = TileKernels { kernel, edge: edge_kernel, mr, nr };
            // A-resident order: the packed A block lives in L3, the packed B panel in L2, one
            // MR-tall A micro-panel in L1 while NR-wide B micro-panels stream past it (the
            // kernel prefetches them). Suits wide register tiles whose B panel would fill L1.
            // Loop 3: row blocks of A.
            for ic in (0..m).step_by(bl.mc) {
                let mc = bl.mc.min(m - ic);
                // Loop 4: blocks of K; pack A[ic.., pc..] into MR-tall micro-panels.
                for pc in (0..k).step_by(bl.kc) {
                    let kc = bl.kc.min(k - pc);
                    let beta_block = if pc == 0 { beta } else { 1.0 };
                    let a_block = a.add(ic * s.a_row + pc * s.a_col);
                    let bias_block = if pc == 0 { bias } else { std::ptr::null() };
                    if n <= bl.nc && s.a_col == 1 {
                        // One column panel: each A micro-panel is used once, packed just in time.
                        // (Only for rows of A contiguous: A given transposed packs fastest
                        // as a whole block, walking its rows.)
                        pack_b(isa, kc, n, nr, b.add(pc * s.b_row), s.b_row, s.b_col, &mut pb);
                        let rows = UnpackedRows { isa, a: a_block, rs: s.a_row, cs: s.a_col, rows: mc };
                        rows.multiply(
                            &tiles,
                            kc,
                            pb.as_ptr(),
                            n,
                            &mut pa,
                            c.add(ic * s.c_row),
                            s,
                            alpha,
                            beta_block,
                            bias_block,
                        );
                        continue;
                    }
                    pack_a(isa, mc, kc, mr, a_block, s.a_row, s.a_col, &mut pa);
                    // Loop 5: column panels of B; pack B[pc.., jc..] into NR-wide micro-panels.
                    for jc in (0..n).step_by(bl.nc) {
                        let nc = bl.nc.min(n - jc);
                        pack_b(isa, kc, nc, nr, b.add(pc * s.b_row + jc * s.b_col), s.b_row, s.b_col, &mut pb);
                        let c_block = c.add(ic * s.c_row + jc * s.c_col);
                        let bias_block = if pc == 0 && !bias.is_null() { bias.add(jc) } else { std::ptr::null() };
                        let block = PackedBlock { kc, rows: mc, cols: nc, a: pa.as_ptr(), b: pb.as_ptr() };
                        block.multiply(&tiles, c_block, s, alpha, beta_block, bias_block);
                    }
                }
            }
        })
    });
}

/// B (k x n <= 24, row-major, k even) interleaved for the K-pair kernel: k / 2 blocks of 48
/// floats, (B[2q][j], B[2q+1][j]) for j < 24, zeros past column n.
pub(crate) fn interleave_k_pairs(b: &[f32], k: usize, n: usize) -> Vec<f32> {
    assert!(k.is_multiple_of(2) && n <= 24 && b.len() >= k * n, "interleave_k_pairs: shapes");
    let mut out = vec![0.0f32; k / 2 * 48];
    for q in 0..k / 2 {
        for j in 0..n {
            out[q * 48 + 2 * j] = b[2 * q * n + j];
            out[q * 48 + 2 * j + 1] = b[(2 * q + 1) * n + j];
        }
    }
    out
}

/// The micro-kernel and its blocking, for callers that pack their own A panels (the
/// implicit-GEMM convolution builds each A panel straight from the image, with no im2col
/// matrix in between). B is packed once per call with [`PanelGemm::pack_b`].
pub(crate) struct PanelGemm {
    pub isa: Isa,
    pub mr: usize,
    pub nr: usize,
    pub kc: usize,
    tiles: TileKernels,
}

impl PanelGemm {
    pub(crate) fn new(isa: Isa) -> PanelGemm {
        let isa = isa.supported();
        let bl = default_blocking(isa);
        PanelGemm { isa, mr: bl.mr, nr: bl.nr, kc: bl.kc, tiles: TileKernels::new(isa, bl) }
    }

    /// Columns of C rounded up to whole NR-wide panels.
    pub(crate) fn padded_cols(&self, n: usize) -> usize {
        n.div_ceil(self.nr) * self.nr
    }

    /// Packs B (k x n, row-major, row stride `ldb`) for every block of K: block q (rows
    /// q*kc..) starts at q * kc * padded_cols(n) and holds the NR-wide panels, [kcb][NR] each.
    pub(crate) fn pack_b(&self, k: usize, n: usize, b: &[f32], ldb: usize) -> Vec<f32> {
        let mut out = Vec::new();
        self.pack_b_into(k, n, b, ldb, &mut out);
        out
    }

    /// [`PanelGemm::pack_b`] into a buffer the caller keeps (grown as needed), for callers
    /// that pack a new B for every block of a loop.
    pub(crate) fn pack_b_into(&self, k: usize, n: usize, b: &[f32], ldb: usize, out: &mut Vec<f32>) {
        assert!(k == 0 || b.len() >= (k - 1) * ldb + n, "pack_b: B too short");
        let np = self.padded_cols(n);
        if out.len() < k * np {
            out.resize(k * np, 0.0);
        }
        for pc in (0..k).step_by(self.kc) {
            let kcb = self.kc.min(k - pc);
            // SAFETY: rows pc..pc + kcb of B are inside `b` (asserted above).
            unsafe { pack_b(self.isa, kcb, n, self.nr, b.as_ptr().add(pc * ldb), ldb, 1, &mut out[pc * np..]) };
        }
    }

    /// C tile (rows <= 8 x cols <= 24) = A B over pairs of K, A's 8 rows read in place and
    /// B interleaved by [`interleave_k_pairs`] (see `kernel_avx512_8x24_kpairs`).
    ///
    /// # Safety
    /// Each row pointer (even past `rows`) has `k` (even) readable floats; B holds k / 2 x 48
    /// floats; the C tile is writable for rows < `rows`, cols < `cols`. Only when
    /// [`PanelGemm::can_gather`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn k_pairs_tile(
        &self,
        a: &[*const f32; 8],
        k: usize,
        b: *const f32,
        c: *mut f32,
        rsc: usize,
        rows: usize,
        cols: usize,
    ) {
        debug_assert!(self.can_gather() && k.is_multiple_of(2) && rows <= 8 && cols <= 24);
        #[cfg(target_arch = "x86_64")]
        x86::kernel_avx512_8x24_kpairs(a, k, b, c, rsc, rows, cols);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (a, k, b, c, rsc, rows, cols);
    }

    /// Whether [`PanelGemm::gather_tile`] runs on this instruction set (AVX-512: the one
    /// with registers for 24 accumulators next to 12 row pointers' broadcasts).
    pub(crate) fn can_gather(&self) -> bool {
        self.isa == Isa::Avx512 && self.mr == 12 && self.nr == 32
    }

    /// C tile (rows x cols, row stride `rsc`) = A x B panel + beta * C, A given as
    /// segments along K, each 12 row pointers to `len` consecutive floats (no packed A
    /// panel; see `kernel_avx512_12x32_gather`). Row pointers >= `rows` must still point at
    /// readable memory (a zero row). A convolution passes per-tap pointers for a tile on the
    /// image's edge, and its 12 window corners moved on by each run's offset for the others.
    ///
    /// # Safety
    /// As the kernel's; only when [`PanelGemm::can_gather`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gather_tile(
        &self,
        segments: impl Iterator<Item = ([*const f32; 12], usize)>,
        b_panel: *const f32,
        c: *mut f32,
        rsc: usize,
        beta: f32,
        rows: usize,
        cols: usize,
    ) {
        debug_assert!(self.can_gather());
        #[cfg(target_arch = "x86_64")]
        x86::kernel_avx512_12x32_gather(segments, b_panel, c, rsc, beta, rows, cols);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (segments, b_panel, c, rsc, beta, rows, cols);
    }

    /// C tile (rows x cols, row stride `rsc`) = A x B panel + beta * C, A's rows in
    /// interleaved pairs `pair_stride` floats apart (see `kernel_avx512_12x32_pair_rows`).
    ///
    /// # Safety
    /// All 6 pairs (even past `rows`) have 2 * kcb readable floats; the B panel holds
    /// kcb x 32 floats; the C tile is writable for rows < `rows`, cols < `cols`. Only when
    /// [`PanelGemm::can_gather`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn pair_rows_tile(
        &self,
        kcb: usize,
        a: *const f32,
        pair_stride: usize,
        b_panel: *const f32,
        c: *mut f32,
        rsc: usize,
        beta: f32,
        rows: usize,
        cols: usize,
    ) {
        debug_assert!(self.can_gather());
        #[cfg(target_arch = "x86_64")]
        x86::kernel_avx512_12x32_pair_rows(kcb, a, pair_stride, b_panel, c, rsc, beta, rows, cols);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (kcb, a, pair_stride, b_panel, c, rsc, beta, rows, cols);
    }

    /// C tile (rows x cols, row stride `rsc`) += A x B panel (kcb x NR, packed), A given by
    /// columns: column k of A (MR elements) is the MR consecutive floats at
    /// `columns[k] + offset`. A convolution's weight gradient reads its im2col^T panels this
    /// way straight from the image: along K (output pixels) each column is one input pixel's
    /// run of channels under a tap, so nothing is copied into a panel.
    ///
    /// # Safety
    /// `columns` has kcb pointers, each with `offset + MR` readable floats (also for rows
    /// past `rows`, whose results are dropped); the B panel holds kcb * NR floats; the C tile
    /// is writable. Only when [`PanelGemm::can_gather`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gather_columns_tile(
        &self,
        columns: &[*const f32],
        offset: usize,
        b_panel: *const f32,
        c: *mut f32,
        rsc: usize,
        rows: usize,
        cols: usize,
    ) {
        debug_assert!(self.can_gather());
        #[cfg(target_arch = "x86_64")]
        x86::kernel_avx512_12x32_columns(columns, offset, b_panel, c, rsc, rows, cols);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (columns, offset, b_panel, c, rsc, rows, cols);
    }

    /// C tile (rows x cols, row stride `rsc`) = A panel (MR x kcb, packed) x B panel
    /// (kcb x NR, packed) + beta * C.
    ///
    /// # Safety
    /// The panels hold kcb * MR and kcb * NR floats; the C tile is writable.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn tile(
        &self,
        kcb: usize,
        a_panel: *const f32,
        b_panel: *const f32,
        c: *mut f32,
        rsc: usize,
        beta: f32,
        rows: usize,
        cols: usize,
    ) {
        let s = GemmStrides { a_row: 0, a_col: 0, b_row: 0, b_col: 0, c_row: rsc, c_col: 1 };
        self.tiles.run(kcb, a_panel, b_panel, c, s, 1.0, beta, std::ptr::null(), rows, cols);
    }
}

/// How many source rows ahead the row-walking packers ask for: each row is a run of a few
/// hundred bytes to a few KB, a page or more from the last, which the hardware prefetchers
/// do not guess; eight rows cover the L3 latency at the copy's pace.
const PACK_PREFETCH_ROWS: usize = 8;

/// Hints the cache lines of `len` contiguous floats at `p` into the caches (no-op off x86).
#[inline(always)]
pub(crate) unsafe fn prefetch_span(p: *const f32, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = p as *const i8;
        for off in (0..len * 4).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(bytes.add(off));
        }
        // the last line, when the span does not start on a line boundary
        _mm_prefetch::<_MM_HINT_T0>(bytes.add(len * 4 - 1));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// Packs A[mc, kc] (strided) into micro-panels: panel q holds rows q*MR.. as [kc][MR], zero-padded.
#[allow(clippy::too_many_arguments)]
unsafe fn pack_a(isa: Isa, mc: usize, kc: usize, mr: usize, a: *const f32, rs: usize, cs: usize, out: &mut [f32]) {
    let full_panels = mc / mr;
    if rs == 1 && cs != 1 && full_panels > 0 {
        // A given transposed (columns contiguous): walk its k rows in order, each one's mc
        // floats in one run, dealing MR-wide pieces out to the panels, as pack_b does. (Panel
        // by panel, each panel read 4 * MR bytes from each of kc rows a page apart, and the
        // next panel came back for the neighbouring bytes: the weight gradients' pattern.)
        assert!(out.len() >= full_panels * mr * kc);
        let o = out.as_mut_ptr();
        for p in 0..kc {
            let row = a.add(p * cs);
            if p + PACK_PREFETCH_ROWS < kc {
                prefetch_span(row.add(PACK_PREFETCH_ROWS * cs), full_panels * mr);
            }
            for q in 0..full_panels {
                copy_micro_row(row.add(q * mr), o.add(q * mr * kc + p * mr), mr);
            }
        }
    }
    for (q, ir) in (0..mc).step_by(mr).enumerate() {
        let rows = mr.min(mc - ir);
        let panel = &mut out[q * mr * kc..(q + 1) * mr * kc];
        if cs == 1 {
            // Rows contiguous: the panel is a transpose of a rows x kc block.
            pack_transposed(isa, rows, kc, mr, a.add(ir * rs), rs, panel);
            continue;
        }
        if rs == 1 && rows == mr {
            continue; // packed above
        }
        for p in 0..kc {
            for r in 0..rows {
                *panel.get_unchecked_mut(p * mr + r) = *a.add((ir + r) * rs + p * cs);
            }
            for r in rows..mr {
                panel[p * mr + r] = 0.0;
            }
        }
    }
}

/// Packs B[kc, nc] (strided) into micro-panels: panel q holds columns q*NR.. as [kc][NR].
#[allow(clippy::too_many_arguments)]
unsafe fn pack_b(isa: Isa, kc: usize, nc: usize, nr: usize, b: *const f32, rs: usize, cs: usize, out: &mut [f32]) {
    let full_panels = nc / nr;
    if cs == 1 && full_panels > 0 {
        // Rows contiguous: walk B row by row, each row's nc floats in one run, dealing its
        // NR-wide pieces out to the panels. (Panel by panel, every panel re-walked all kc
        // rows for 4 * NR bytes each, a page-strided pattern the prefetchers follow badly.)
        assert!(out.len() >= full_panels * nr * kc);
        let o = out.as_mut_ptr();
        for p in 0..kc {
            let row = b.add(p * rs);
            if p + PACK_PREFETCH_ROWS < kc {
                prefetch_span(row.add(PACK_PREFETCH_ROWS * rs), full_panels * nr);
            }
            for q in 0..full_panels {
                copy_micro_row(row.add(q * nr), o.add(q * nr * kc + p * nr), nr);
            }
        }
    }
    for (q, jr) in (0..nc).step_by(nr).enumerate() {
        let cols = nr.min(nc - jr);
        let panel = &mut out[q * nr * kc..(q + 1) * nr * kc];
        if cs == 1 && cols == nr {
            // packed above
        } else if rs == 1 {
            // B given transposed (columns contiguous): the panel is a transpose of cols x kc.
            pack_transposed(isa, cols, kc, nr, b.add(jr * cs), cs, panel);
        } else {
            for p in 0..kc {
                for j in 0..nr {
                    panel[p * nr + j] = if j < cols { *b.add(p * rs + (jr + j) * cs) } else { 0.0 };
                }
            }
        }
    }
}

/// Copies one MR or NR row of a panel. With the width known at compile time this is a few
/// vector moves; `copy_nonoverlapping` with a run-time length is a call into libc's memmove
/// per row (9% of a BERT step went there).
#[inline(always)]
unsafe fn copy_micro_row(src: *const f32, dst: *mut f32, n: usize) {
    #[inline(always)]
    unsafe fn fixed<const N: usize>(src: *const f32, dst: *mut f32) {
        // (On x86-64 as explicit 128-bit moves, SSE being part of the baseline: written as
        // one [f32; 32] copy, LLVM emitted a call to memcpy for 128 bytes, 6% of a 2048^3
        // GEMM.)
        #[cfg(target_arch = "x86_64")]
        if N.is_multiple_of(4) {
            use std::arch::x86_64::{_mm_loadu_ps, _mm_storeu_ps};
            for j in (0..N).step_by(4) {
                _mm_storeu_ps(dst.add(j), _mm_loadu_ps(src.add(j)));
            }
            return;
        }
        (dst as *mut [f32; N]).write_unaligned((src as *const [f32; N]).read_unaligned());
    }
    match n {
        32 => fixed::<32>(src, dst),
        16 => fixed::<16>(src, dst),
        12 => fixed::<12>(src, dst),
        8 => fixed::<8>(src, dst),
        6 => fixed::<6>(src, dst),
        4 => fixed::<4>(src, dst),
        _ => std::ptr::copy_nonoverlapping(src, dst, n),
    }
}

/// out[p * width + r] = src[r * stride + p] for r < rows, p < kc; zeros for rows..width.
///
/// The packing step both operands need when their K axis is the contiguous one (A row-major,
/// or B transposed). Element by element this is a scatter with a `width`-float stride, about
/// 4.5 cycles per element here (13% of a BERT training step went to it); the AVX path moves
/// 8 x 8 and 4 x 8 blocks through register transposes instead.
unsafe fn pack_transposed(
    isa: Isa,
    rows: usize,
    kc: usize,
    width: usize,
    src: *const f32,
    stride: usize,
    out: &mut [f32],
) {
    debug_assert!(rows <= width && width <= MAX_PANEL_WIDTH && out.len() >= kc * width);
    let mut row_ptrs = [std::ptr::null(); MAX_PANEL_WIDTH];
    for (r, ptr) in row_ptrs.iter_mut().enumerate().take(rows) {
        *ptr = src.add(r * stride);
    }
    pack_rows_transposed(isa, &row_ptrs[..rows], kc, width, out);
}

/// The widest micro-panel any path packs (NR of the AVX-512 kernel).
pub(crate) const MAX_PANEL_WIDTH: usize = 32;

/// [`pack_transposed`] with each source row given by its own pointer (rows of an implicit
/// im2col matrix live in different places of the image): out[p * width + r] = rows[r][p] for
/// p < kc, and zero for rows.len() <= r < width.
pub(crate) unsafe fn pack_rows_transposed(isa: Isa, rows: &[*const f32], kc: usize, width: usize, out: &mut [f32]) {
    debug_assert!(rows.len() <= width && out.len() >= kc * width);
    #[cfg(target_arch = "x86_64")]
    if isa.supported() != Isa::Portable {
        // SAFETY: Avx2 / Avx512 detection implies AVX; `out` holds kc * width floats.
        return x86::pack_transposed_avx(rows, kc, width, out);
    }
    for (r, &row) in rows.iter().enumerate() {
        for p in 0..kc {
            out[p * width + r] = *row.add(p);
        }
    }
    for p in 0..kc {
        out[p * width + rows.len()..(p + 1) * width].fill(0.0);
    }
}

/// Scalar reference of [`pack_transposed`].
#[cfg(test)]
unsafe fn pack_transposed_reference(
    rows: usize,
    kc: usize,
    width: usize,
    src: *const f32,
    stride: usize,
    out: &mut [f32],
) {
    for r in 0..rows {
        let row = src.add(r * stride);
        for p in 0..kc {
            *out.get_unchecked_mut(p * width + r) = *row.add(p);
        }
    }
    for p in 0..kc {
        for r in rows..width {
            out[p * width + r] = 0.0;
        }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn kernel_portable_4x8(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    alpha: f32,
    beta: f32,
    bias: *const f32,
) {
    const MR: usize = 4;
    const NR: usize = 8;
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..kc {
        let bp = std::slice::from_raw_parts(b.add(p * NR), NR);
        let ap = std::slice::from_raw_parts(a.add(p * MR), MR);
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] += ap[i] * bp[j];
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let dst = c.add(i * rsc + j);
            let v = if bias.is_null() { alpha * v } else { alpha * v + *bias.add(j) };
            *dst = if beta == 0.0 { v } else { v + beta * *dst };
        }
    }
}

/// Matrix-vector products (M = 1 or N = 1): no packing, the matrix is streamed once.
/// Computes y = alpha * Mat x + beta * y with Mat = A (when N = 1) or B^T (when M = 1).
#[allow(clippy::too_many_arguments)]
unsafe fn gemv_path(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    b: *const f32,
    beta: f32,
    c: *mut f32,
    s: GemmStrides,
    bias: *const f32,
) {
    let (rows, mat, m_rs, m_cs, x, x_s, y, y_s) = if n == 1 {
        (m, a, s.a_row, s.a_col, b, s.b_row, c, s.c_row)
    } else {
        (n, b, s.b_col, s.b_row, a, s.a_col, c, s.c_col)
    };
    let xv: Vec<f32> = (0..k).map(|p| *x.add(p * x_s)).collect();
    let store = |i: usize, v: f32| {
        let dst = y.add(i * y_s);
        // output i lies in column 0 (N = 1) or column i (M = 1)
        let v = match (bias.is_null(), n == 1) {
            (true, _) => alpha * v,
            (false, true) => alpha * v + *bias,
            (false, false) => alpha * v + *bias.add(i),
        };
        *dst = if beta == 0.0 { v } else { v + beta * *dst };
    };
    if m_cs == 1 {
        // dot form: each output is a contiguous matrix row dotted with x
        for i in 0..rows {
            let row = std::slice::from_raw_parts(mat.add(i * m_rs), k);
            store(i, crate::reduce::dot(row, &xv));
        }
    } else {
        // axpy form: accumulate x[p] times column p of the matrix
        let mut acc = vec![0.0f32; rows];
        for (p, &xp) in xv.iter().enumerate() {
            if m_rs == 1 {
                let col = std::slice::from_raw_parts(mat.add(p * m_cs), rows);
                crate::reduce::axpy(xp, col, &mut acc);
            } else {
                for (i, slot) in acc.iter_mut().enumerate() {
                    *slot += xp * *mat.add(i * m_rs + p * m_cs);
                }
            }
        }
        for (i, v) in acc.into_iter().enumerate() {
            store(i, v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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
        kernel_avx512_pairs::<false>(kc, a, 0, b, c, rsc, alpha, beta, bias, 12, 32)
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
        kernel_avx512_pairs::<true>(kc, a, pair_stride, b, c, rsc, 1.0, beta, std::ptr::null(), rows, cols)
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
                _mm_prefetch::<_MM_HINT_T0>(b.add(32 * PREFETCH_STEPS) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.add(32 * PREFETCH_STEPS + 16) as *const i8);
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
        if cols <= 16 {
            kernel_avx512_16(kc, a, b, c, rsc, alpha, beta, bias, rows, cols)
        } else {
            kernel_avx512_pairs::<false>(kc, a, 0, b, c, rsc, alpha, beta, bias, rows, cols)
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

    /// Asks for the C tile's rows (the first W columns of each) at the start of a tile: it is
    /// read (beta != 0) and written at the end, a few thousand cycles later.
    #[inline(always)]
    unsafe fn prefetch_c_tile<const W: usize>(c: *mut f32, rsc: usize, rows: usize) {
        for r in 0..rows {
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * rsc) as *const i8);
            if W > 16 {
                _mm_prefetch::<_MM_HINT_T0>(c.add(r * rsc + 16) as *const i8);
            }
        }
    }

    /// One k-step of the 12 x W tile (W = 16 or 32): the 12 A elements at `a` broadcast
    /// against W / 16 vectors of the B row at `b` (12 W / 16 FMAs), B's lines PREFETCH_STEPS
    /// k-steps ahead requested (B streams from L2).
    #[inline(always)]
    unsafe fn k_step<const W: usize>(a: *const f32, b: *const f32, lo: &mut [__m512; 12], hi: &mut [__m512; 12]) {
        _mm_prefetch::<_MM_HINT_T0>(b.add(32 * PREFETCH_STEPS) as *const i8);
        if W > 16 {
            _mm_prefetch::<_MM_HINT_T0>(b.add(32 * PREFETCH_STEPS + 16) as *const i8);
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
        if cols <= 16 {
            gather_avx512::<16>(segments, b, c, rsc, beta, rows, cols)
        } else {
            gather_avx512::<32>(segments, b, c, rsc, beta, rows, cols)
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
        if cols <= 16 {
            columns_avx512::<16>(columns, offset, b, c, rsc, rows, cols)
        } else {
            columns_avx512::<32>(columns, offset, b, c, rsc, rows, cols)
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
        let mut lo = [_mm512_setzero_ps(); 12];
        let mut hi = [_mm512_setzero_ps(); 12];
        let mut b = b;
        for (row_ptrs, len) in segments {
            b = gather_segment::<W>(&mut lo, &mut hi, &row_ptrs, len, b);
        }
        store_tile_avx512::<W>(&lo, &hi, c, rsc, 1.0, beta, std::ptr::null(), rows, cols);
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
        let (mut l, mut h) = (*lo, *hi);
        let p = *p;
        let mut b = b;
        // One k-step: 2 B loads, 12 broadcasts, 24 FMAs; four per loop iteration, so that
        // the loop's own instructions do not crowd the front end.
        macro_rules! step {
            ($k:expr) => {{
                _mm_prefetch::<_MM_HINT_T0>(b.add(32 * PREFETCH_STEPS) as *const i8);
                if W > 16 {
                    _mm_prefetch::<_MM_HINT_T0>(b.add(32 * PREFETCH_STEPS + 16) as *const i8);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_gemm_matches_hand_computed_product_and_transposed_strides() {
        // A = [[1,2,3],[4,5,6]] (2x3), B = [[7,8],[9,10],[11,12]] (3x2)
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
        let mut c = [1.0f32; 4];
        gemm_reference(2, 3, 2, 1.0, &a, &b, 0.5, &mut c, GemmStrides::row_major(3, 2));
        assert_eq!(c, [58.5, 64.5, 139.5, 154.5]);
        // Same product with A given as its transpose stored row-major (3x2) read via swapped strides.
        let at = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        let mut c2 = [f32::NAN; 4];
        let s = GemmStrides { a_row: 1, a_col: 2, b_row: 2, b_col: 1, c_row: 2, c_col: 1 };
        gemm_reference(2, 3, 2, 2.0, &at, &b, 0.0, &mut c2, s);
        assert_eq!(c2, [116.0, 128.0, 278.0, 308.0]);
    }

    #[test]
    fn transposing_pack_matches_its_reference_on_every_path() {
        // rows cover the 8-, 4- and 1-row groups; kc covers the 8-step blocks and leftovers
        for isa in Isa::available() {
            for &(width, rows) in &[(12, 12), (12, 11), (12, 5), (32, 32), (32, 17), (16, 3), (6, 6), (4, 4), (8, 1)] {
                for &kc in &[1, 7, 8, 9, 17, 64] {
                    let stride = kc + 3;
                    let src: Vec<f32> = (0..rows * stride).map(|i| i as f32 * 0.5 - 7.0).collect();
                    let mut want = vec![f32::NAN; kc * width];
                    let mut got = vec![f32::NAN; kc * width];
                    unsafe {
                        pack_transposed_reference(rows, kc, width, src.as_ptr(), stride, &mut want);
                        pack_transposed(isa, rows, kc, width, src.as_ptr(), stride, &mut got);
                    }
                    assert_eq!(got, want, "{isa:?} width {width} rows {rows} kc {kc}");
                }
            }
        }
    }
}
