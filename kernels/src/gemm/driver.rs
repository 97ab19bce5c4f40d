//! The GEMM driver: cache blocking and micro-kernel of each instruction set, and the choice
//! between the matrix-vector path, the serial blocked loops and the threaded splits.

use super::*;

/// Cache blocking and micro-tile of one instruction set.
#[derive(Clone, Copy)]
pub(super) struct Blocking {
    pub(super) mr: usize,
    pub(super) nr: usize,
    pub(super) kc: usize,
    pub(super) mc: usize,
    pub(super) nc: usize,
}

pub(super) fn default_blocking(isa: Isa) -> Blocking {
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
pub(super) type MicroKernel = unsafe fn(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rsc: usize,
    alpha: f32,
    beta: f32,
    bias: *const f32,
);

pub(super) fn micro_kernel(isa: Isa) -> MicroKernel {
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
pub(super) type EdgeKernel = unsafe fn(
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

pub(super) fn edge_micro_kernel(isa: Isa) -> Option<EdgeKernel> {
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
    // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
    // and the CPU features of the vector type in use.
    unsafe { sgemm_raw_bias(isa, threads, m, k, n, alpha, a, b, beta, c, s, std::ptr::null()) }
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
    // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
    // and the CPU features of the vector type in use.
    unsafe { sgemm_raw_blocked(isa, default_blocking(isa), threads, m, k, n, alpha, a, b, beta, c, s, bias) }
}

/// The GEMM driver with given blocking: the matrix-vector path, or the blocked loops on one
/// thread or split across threads.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn sgemm_raw_blocked(
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
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
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
                // (inside the enclosing unsafe block) each part writes a disjoint block of C.
                {
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
}
