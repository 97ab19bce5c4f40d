//! bf16 GEMM: C (f32) = alpha * A * B + beta * C, with A and B read as bf16 (either stored as
//! bf16, or f32 rounded to bf16 while they are packed) and every product accumulated in f32.
//!
//! Kernels ([`Bf16Kernel`], chosen at run time like [`Isa`]):
//! - `Amx`: the AMX tile unit. Four 16x16 f32 accumulator tiles hold a 32x32 block of C; each
//!   step of 32 along K loads two 16x32 tiles of A and two 32x16 tiles of B ("VNNI" layout:
//!   row p of a B tile holds the pairs (B[2p][j], B[2p+1][j]) for 16 columns j) and issues four
//!   `tdpbf16ps`, 16x16x32 multiply-adds each.
//! - `DotAvx512`: AVX-512 BF16's `vdpbf16ps`, a 12x32 register tile: per pair of K, two vectors
//!   of B pairs, twelve broadcast A pairs, 24 dot-product-accumulates.
//! - `Widen(isa)`: no bf16 arithmetic on the CPU: operands widened to f32 (exact) and the f32
//!   GEMM of that instruction set run on them. This is the path of CPUs without AVX-512 BF16
//!   and the reference the fast kernels are tested against.
//!
//! The tile kernels share one packed layout for B (groups of 16 columns, pairs of K
//! interleaved: `[K/2][16][2]` per group) and run the BLIS loops of the f32 GEMM
//! (`crate::gemm`): column blocks of `nc` (B packed there for all of K), row blocks of `mc`, K
//! blocks of `kc`, then a 32-column slice of packed B held in L1 against the row panels of A
//! streaming from L2. K is zero-padded to a multiple of 32 in both packs. On AMX, A is read in
//! place when it is bf16 with cache-aligned rows, and otherwise rounded once per product into
//! tile-major panels (`WholeA`); the dot kernel packs A per block. Each row block's sums
//! build up over the K blocks in a padded L2 buffer and leave it once, row by row, through a
//! `RowSink`: into C (alpha, beta, bias), or activated and rounded into a bf16 hidden layer
//! ([`feed_forward_bf16`]).
//!
//! Accuracy: each product of two bf16 values is exact in f32 and the sums are f32 sums, so a
//! result differs from the f64 sum of the same bf16-rounded operands by the f32 accumulation
//! error only (about K * 2^-24 of the sum of |products|); the tests hold every kernel to that.

use super::{bf16_bits_to_f32, Bf16Operand};
use crate::gemm::{extent, GemmStrides};
use crate::parallel;
use crate::simd::Isa;
use std::sync::OnceLock;

/// Which bf16 GEMM kernel runs (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bf16Kernel {
    /// Operands widened to f32, then the f32 GEMM on this instruction set.
    Widen(Isa),
    /// AVX-512 BF16 `vdpbf16ps` register tile (12 x 32).
    DotAvx512,
    /// AMX-BF16 tiles (32 x 32 block of C in four accumulator tiles).
    Amx,
}

impl Bf16Kernel {
    /// Every bf16 kernel this CPU (and OS) can run, slowest first.
    pub fn available() -> Vec<Bf16Kernel> {
        let mut v: Vec<Bf16Kernel> = Isa::available().into_iter().map(Bf16Kernel::Widen).collect();
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16") {
            v.push(Bf16Kernel::DotAvx512);
        }
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        if super::amx::available() {
            v.push(Bf16Kernel::Amx);
        }
        v
    }

    /// The fastest available kernel. `ALIGN_BF16=widen|avx512bf16|amx` caps it, to compare
    /// paths end to end (`ALIGN_ISA` still picks the f32 kernels under `widen`).
    pub fn best() -> Bf16Kernel {
        static BEST: OnceLock<Bf16Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            let detected = *Bf16Kernel::available().last().expect("widen is always available");
            let cap = match std::env::var("ALIGN_BF16").ok().as_deref() {
                Some("widen") => Bf16Kernel::Widen(Isa::best()),
                Some("avx512bf16") => Bf16Kernel::DotAvx512,
                _ => Bf16Kernel::Amx,
            };
            detected.min(cap)
        })
    }

    /// The best kernel at or below `self` that the machine has.
    pub fn supported(self) -> Bf16Kernel {
        static DETECTED: OnceLock<Bf16Kernel> = OnceLock::new();
        let detected = *DETECTED.get_or_init(|| *Bf16Kernel::available().last().expect("widen is always available"));
        match self.min(detected) {
            Bf16Kernel::Widen(isa) => Bf16Kernel::Widen(isa.supported()),
            k => k,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Widen(Isa::Portable) => "widen+portable",
            Bf16Kernel::Widen(Isa::Avx2) => "widen+avx2",
            Bf16Kernel::Widen(Isa::Avx512) => "widen+avx512f",
            Bf16Kernel::DotAvx512 => "avx512bf16",
            Bf16Kernel::Amx => "amx-bf16",
        }
    }

    /// Parses a name printed by [`Bf16Kernel::name`] (or `widen`, the best widening path).
    pub fn from_name(name: &str) -> Option<Bf16Kernel> {
        Some(match name {
            "widen" => Bf16Kernel::Widen(Isa::best()),
            "widen+portable" => Bf16Kernel::Widen(Isa::Portable),
            "widen+avx2" => Bf16Kernel::Widen(Isa::Avx2),
            "widen+avx512f" => Bf16Kernel::Widen(Isa::Avx512),
            "avx512bf16" => Bf16Kernel::DotAvx512,
            "amx-bf16" | "amx" => Bf16Kernel::Amx,
            _ => return None,
        })
    }
}

/// Reference bf16 GEMM: every operand rounded to bf16, each dot product summed in f64. The
/// oracle of the fast kernels (which sum in f32). `beta == 0` overwrites C without reading it.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_reference<A: Bf16Operand, B: Bf16Operand>(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[A],
    b: &[B],
    beta: f32,
    c: &mut [f32],
    s: GemmStrides,
) {
    check(m, k, n, a.len(), b.len(), c.len(), s);
    // the operands as the exact f32 values of their bf16 roundings, then the f32 reference
    let a32: Vec<f32> = a.iter().map(|x| bf16_bits_to_f32(x.bf16_bits())).collect();
    let b32: Vec<f32> = b.iter().map(|x| bf16_bits_to_f32(x.bf16_bits())).collect();
    crate::gemm::gemm_reference(m, k, n, alpha, &a32, &b32, beta, c, s);
}

/// Panics if a buffer is too short for its shape and strides, or C's elements overlap (a
/// caller bug: the raw-pointer code below relies on both).
fn check(m: usize, k: usize, n: usize, a: usize, b: usize, c: usize, s: GemmStrides) {
    assert!(a >= extent(m, k, s.a_row, s.a_col), "gemm_bf16: A buffer too short");
    assert!(b >= extent(k, n, s.b_row, s.b_col), "gemm_bf16: B buffer too short");
    assert!(c >= extent(m, n, s.c_row, s.c_col), "gemm_bf16: C buffer too short");
    // C written by several threads: distinct (i, j) must be distinct elements.
    crate::gemm::assert_disjoint_writes(c, &[0], m, n, s.c_row, s.c_col, "gemm_bf16");
}

/// The bf16 GEMM with the best kernel and the configured thread count.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16<A: Bf16Operand, B: Bf16Operand>(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[A],
    b: &[B],
    beta: f32,
    c: &mut [f32],
    s: GemmStrides,
) {
    gemm_bf16_with(Bf16Kernel::best(), parallel::num_threads(), m, k, n, alpha, a, b, beta, c, s)
}

/// [`gemm_bf16`] plus a bias row: C = alpha * A B + beta * C + bias, `bias[j]` added to every
/// row (a linear layer's y = x W^T + b in one pass over y: no bias laid down first, no C read
/// when beta is 0).
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_bias<A: Bf16Operand, B: Bf16Operand>(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[A],
    b: &[B],
    beta: f32,
    c: &mut [f32],
    s: GemmStrides,
    bias: Option<&[f32]>,
) {
    gemm_bf16_bias_with(Bf16Kernel::best(), parallel::num_threads(), m, k, n, alpha, a, b, beta, c, s, bias)
}

/// [`gemm_bf16`] on a chosen kernel (capped to what the machine has) and thread count.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_with<A: Bf16Operand, B: Bf16Operand>(
    kernel: Bf16Kernel,
    threads: usize,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[A],
    b: &[B],
    beta: f32,
    c: &mut [f32],
    s: GemmStrides,
) {
    gemm_bf16_bias_with(kernel, threads, m, k, n, alpha, a, b, beta, c, s, None)
}

/// [`gemm_bf16_bias`] on a chosen kernel (capped to what the machine has) and thread count.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_bias_with<A: Bf16Operand, B: Bf16Operand>(
    kernel: Bf16Kernel,
    threads: usize,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[A],
    b: &[B],
    beta: f32,
    c: &mut [f32],
    s: GemmStrides,
    bias: Option<&[f32]>,
) {
    check(m, k, n, a.len(), b.len(), c.len(), s);
    if let Some(bias) = bias {
        assert!(bias.len() >= n, "gemm_bf16: bias shorter than N");
    }
    if m == 0 || n == 0 {
        return;
    }
    let threads = threads.max(1);
    match kernel.supported() {
        Bf16Kernel::Widen(isa) => {
            // Widen both operands to contiguous f32 (exact), then the f32 GEMM.
            let a32: Vec<f32> =
                (0..m * k).map(|e| bf16_bits_to_f32(a[(e / k) * s.a_row + (e % k) * s.a_col].bf16_bits())).collect();
            let b32: Vec<f32> =
                (0..k * n).map(|e| bf16_bits_to_f32(b[(e / n) * s.b_row + (e % n) * s.b_col].bf16_bits())).collect();
            let s32 = GemmStrides { a_row: k, a_col: 1, b_row: n, b_col: 1, c_row: s.c_row, c_col: s.c_col };
            crate::gemm::sgemm_bias_with(isa, threads, m, k, n, alpha, &a32, &b32, beta, c, s32, bias);
        }
        tiled => {
            if s.c_col != 1 {
                // The tile kernels store rows of C: gather C into a row-major copy and back.
                let mut dense = vec![0.0f32; m * n];
                if beta != 0.0 {
                    for i in 0..m {
                        for j in 0..n {
                            dense[i * n + j] = c[i * s.c_row + j * s.c_col];
                        }
                    }
                }
                let sd = GemmStrides { c_row: n, c_col: 1, ..s };
                gemm_bf16_bias_with(tiled, threads, m, k, n, alpha, a, b, beta, &mut dense, sd, bias);
                for i in 0..m {
                    for j in 0..n {
                        c[i * s.c_row + j * s.c_col] = dense[i * n + j];
                    }
                }
                return;
            }
            if k == 0 || alpha == 0.0 {
                scale_rows(m, n, beta, c, s.c_row, bias);
                return;
            }
            // SAFETY: extents checked above; C rows are disjoint (c_col == 1, checked overlap).
            unsafe {
                tiled_threads(tiled, threads, m, k, n, alpha, a.as_ptr(), b.as_ptr(), beta, c.as_mut_ptr(), s, bias)
            }
        }
    }
}

/// Register / tile block and cache blocking of one tile kernel.
#[derive(Clone, Copy)]
struct TileBlocking {
    /// rows of C per kernel call (the columns are always 32)
    mr: usize,
    kc: usize,
    mc: usize,
    nc: usize,
}

fn tile_blocking(kernel: Bf16Kernel) -> TileBlocking {
    match kernel {
        // A call reads a 32-row panel of A and a 32-column slice of B, kc deep (16 KB each,
        // so both stay in a 48 KB L1 together); the A block (mc x kc = 64 KB), the C block's
        // tiles (mc x nc f32 = 256 KB) and the B block (at most 1 MB) sit in L2. The bare
        // kernel peaks at kc 256 (about 2.1 TFLOP/s on cache-resident panels against 1.5 at
        // kc 512), and the blocked loops measured kc 256 about 10% ahead of 384 and 512 and
        // mc 128 ahead of 256 and 512 (one thread, the BERT shapes).
        Bf16Kernel::Amx => TileBlocking { mr: 32, kc: 256, mc: 128, nc: 512 },
        _ => TileBlocking { mr: 12, kc: 384, mc: 192, nc: 768 },
    }
}

/// C columns per kernel call: two groups of 16.
const NR: usize = 32;
/// K is packed in steps of 32 (one AMX tile depth; the dot kernel walks it in pairs).
const KSTEP: usize = 32;

/// Where a kernel call reads its rows of A: rows `row_bytes` apart, steps of 32 along K
/// `step_bytes` apart. The AMX kernel reads packed panels (64, 2048) or, for bf16 A with rows
/// contiguous in K, A in place (its row stride, 64); the dot kernel reads packed panels only.
#[derive(Clone, Copy)]
pub(crate) struct APanel {
    pub(crate) ptr: *const u16,
    pub(crate) row_bytes: usize,
    pub(crate) step_bytes: usize,
}

/// One kernel call: C[mr x 32] = alpha * Apanel * [Bgroup0 | Bgroup1] + beta * C, `kc` (a
/// multiple of 32) deep; `beta == 0` never reads C. Full tiles only; `ldc` in elements.
type TileKernel =
    unsafe fn(kc: usize, a: APanel, b0: *const u16, b1: *const u16, c: *mut f32, ldc: usize, alpha: f32, beta: f32);

fn tile_kernel(kernel: Bf16Kernel) -> TileKernel {
    match kernel {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Bf16Kernel::Amx => super::amx::kernel_32x32,
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::DotAvx512 => super::avx512::kernel_dot_12x32,
        _ => unreachable!("no tile kernel for {kernel:?}"),
    }
}

/// Splits C over the threads (along its longer side, on tile boundaries) and runs the
/// blocked loops on each part.
#[allow(clippy::too_many_arguments)]
unsafe fn tiled_threads<A: Bf16Operand, B: Bf16Operand>(
    kernel: Bf16Kernel,
    threads: usize,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const A,
    b: *const B,
    beta: f32,
    c: *mut f32,
    s: GemmStrides,
    bias: Option<&[f32]>,
) {
    let bl = tile_blocking(kernel);
    let threads = if 2 * m * n * k < (1 << 21) { 1 } else { threads };
    let split_n = n >= m;
    let (len, unit) = if split_n { (n, NR) } else { (m, bl.mr) };
    let units = len.div_ceil(unit);
    let parts = threads.min(units);
    let mut whole_a =
        (kernel == Bf16Kernel::Amx && !reads_a_in_place(a, k, s)).then(|| prepack_a(bl, parts, m, k, a, s));
    let whole_a_ref = whole_a.as_mut().map(|w| w.rows());
    let sink = StoreF32 { c: SendPtr(c as *const f32), ldc: s.c_row, alpha, beta, bias };
    let (ap, bp) = (SendPtr(a), SendPtr(b));
    let run = |t: usize| {
        let (ap, bp) = (ap, bp);
        let start = (units * t / parts) * unit;
        let end = ((units * (t + 1) / parts) * unit).min(len);
        if start >= end {
            return;
        }
        // SAFETY: each part covers a disjoint block of C inside the checked extents.
        unsafe {
            if split_n {
                tiled_serial(
                    kernel,
                    bl,
                    None,
                    whole_a_ref,
                    m,
                    k,
                    end - start,
                    ap.0,
                    bp.0.add(start * s.b_col),
                    s,
                    &sink,
                    (0, start),
                );
            } else {
                // this part starts at row `start` of the whole A
                let part_a = whole_a_ref.map(|w| &w[start * padded_depth(bl, k)..]);
                tiled_serial(
                    kernel,
                    bl,
                    None,
                    part_a,
                    end - start,
                    k,
                    n,
                    ap.0.add(start * s.a_row),
                    bp.0,
                    s,
                    &sink,
                    (start, 0),
                );
            }
        }
    };
    run_parts(parts, run);
    if let Some(w) = whole_a {
        w.recycle();
    }
}

/// Whether the AMX kernel can read A where it lies (bf16, rows contiguous in K, K a whole
/// number of tile steps, every tile row inside one cache line) rather than from a [`WholeA`].
fn reads_a_in_place<A: Bf16Operand>(a: *const A, k: usize, s: GemmStrides) -> bool {
    A::STORED_AS_BF16
        && s.a_col == 1
        && k.is_multiple_of(KSTEP)
        && (a as usize).is_multiple_of(64)
        && (2 * s.a_row).is_multiple_of(64)
}

/// K padded to whole tile steps, block by block (every K block but the last is already a
/// multiple of 32, so this is K rounded up to 32).
fn padded_depth(bl: TileBlocking, k: usize) -> usize {
    k_blocks(bl, k).iter().map(|&(_, kb)| kb.next_multiple_of(KSTEP)).sum()
}

/// All of A in bf16, made once per product for the AMX kernel when it cannot read A where it
/// lies (f32 A, strided A, K not a multiple of 32, or rows off a cache line): 32-row panels
/// of the whole padded depth (`k_padded`, K rounded up to 32 and zero-filled; zero rows below
/// A), each in the kernel's tile-major layout `[k_padded / 32][32 rows][32]`, so the panel of
/// rows `i..i + 32`, K block at `pc`, starts at `(i / 32) * 32 * k_padded + pc * 32`.
///
/// Packing per (row block, K block) instead, as the f32 GEMM does, repeats the packing (and,
/// for f32, the rounding) once per column block of C: with K = 3072 the 1 MB budget for
/// packed B allows 160 columns per block, so a 3072-column product rounded every element of A
/// about 19 times. Made once, A costs one read of the f32 and one write of bf16, spread over
/// the threads.
struct WholeA {
    buffer: CacheAligned<u16>,
    len: usize,
}

thread_local! {
    /// The calling thread's whole-A buffer, kept between products (taken while in use, so a
    /// product started from inside another one allocates its own).
    static WHOLE_A: std::cell::Cell<CacheAligned<u16>> = const { std::cell::Cell::new(CacheAligned::new()) };
}

impl WholeA {
    fn rows(&mut self) -> &[u16] {
        self.buffer.slice(self.len)
    }

    fn recycle(self) {
        WHOLE_A.set(self.buffer);
    }
}

/// Rounds (or copies) all m rows of A (`a` strided as `s` says) into a [`WholeA`], panels
/// split over `parts` threads.
fn prepack_a<A: Bf16Operand>(
    bl: TileBlocking,
    parts: usize,
    m: usize,
    k: usize,
    a: *const A,
    s: GemmStrides,
) -> WholeA {
    let k_padded = padded_depth(bl, k);
    let panels = m.div_ceil(bl.mr);
    let panel_len = bl.mr * k_padded;
    let mut buffer = WHOLE_A.take();
    let buf = buffer.slice(panels * panel_len);
    let ap = SendPtr(a);
    let pack = |first_panel: usize, out: &mut [u16]| {
        let ap = &ap; // the whole wrapper (Send), not its raw pointer field
        let first_row = first_panel * bl.mr;
        let rows = (out.len() / panel_len * bl.mr).min(m - first_row);
        // SAFETY: rows first_row.. first_row + rows of A lie inside the extent `check` verified.
        unsafe {
            pack_a_panels(
                Bf16Kernel::Amx,
                bl.mr,
                rows,
                k,
                k_padded,
                ap.0.add(first_row * s.a_row),
                s.a_row,
                s.a_col,
                out,
            )
        };
    };
    let per_part = panels.div_ceil(parts.max(1));
    if parts <= 1 || panels <= 1 || panels * panel_len < (1 << 16) {
        pack(0, buf);
    } else {
        parallel::install_with(parts, || {
            use rayon::prelude::*;
            buf.par_chunks_mut(per_part * panel_len).enumerate().for_each(|(t, out)| pack(t * per_part, out));
        });
    }
    WholeA { buffer, len: panels * panel_len }
}

/// Runs `run(0..parts)`, on the kernel pool when there is more than one part.
fn run_parts(parts: usize, run: impl Fn(usize) + Send + Sync) {
    if parts <= 1 {
        run(0);
    } else {
        parallel::install_with(parts, || {
            use rayon::prelude::*;
            (0..parts).into_par_iter().for_each(run);
        });
    }
}

/// C = beta * C (+ bias) on m rows of n (row stride `c_row`); beta 0 writes without reading.
fn scale_rows(m: usize, n: usize, beta: f32, c: &mut [f32], c_row: usize, bias: Option<&[f32]>) {
    for i in 0..m {
        for (j, v) in c[i * c_row..i * c_row + n].iter_mut().enumerate() {
            let scaled = if beta == 0.0 { 0.0 } else { beta * *v };
            *v = bias.map_or(scaled, |b| scaled + b[j]);
        }
    }
}

/// A raw pointer handed to the worker threads, which read shared operands through it or write
/// disjoint blocks of C (the split in [`tiled_threads`] makes them disjoint).
#[derive(Clone, Copy)]
struct SendPtr<T>(*const T);
// SAFETY: see the type's comment; every use stays inside the extents `check` verified.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// The blocked loops on one thread over an m x n product whose row 0, column 0 are the whole
/// product's `(row0, col0)`: each finished row of a C block goes to `sink`.
#[allow(clippy::too_many_arguments)]
unsafe fn tiled_serial<A: Bf16Operand, B: Bf16Operand>(
    kernel: Bf16Kernel,
    bl: TileBlocking,
    prepacked: Option<&[u16]>,
    whole_a: Option<&[u16]>,
    m: usize,
    k: usize,
    n: usize,
    a: *const A,
    b: *const B,
    s: GemmStrides,
    sink: &dyn RowSink,
    (row0, col0): (usize, usize),
) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let micro = tile_kernel(kernel);
        let blocks = k_blocks(bl, k);
        let kc = blocks[0].1.next_multiple_of(KSTEP);
        let k_padded: usize = blocks.iter().map(|&(_, kb)| kb.next_multiple_of(KSTEP)).sum();
        // B for the whole of K is packed once per column block and stays in L2 (at most ~1 MB),
        // so that a row block's sums are finished over all K blocks before the next row block
        // starts: they are re-read from L2 between K blocks and leave for C once.
        let nc = column_block(bl, k_padded);
        let nc_max = nc.min(n.next_multiple_of(NR));
        let mc_max = bl.mc.min(m.next_multiple_of(bl.mr));
        PACK_BUFFERS.with_borrow_mut(|(packed_a, packed_b, c_tiles)| {
            let packed_b = packed_b.slice(if prepacked.is_none() { nc_max * k_padded } else { 0 });
            let packed_a = packed_a.slice(if whole_a.is_none() { mc_max * kc } else { 0 });
            // The block of C being summed over K (see `PACK_BUFFERS`): row-major, rows
            // `ld_sums` floats apart.
            let ld_sums = nc_max + SUMS_ROW_PAD;
            let c_tiles = c_tiles.slice(mc_max.next_multiple_of(bl.mr) * ld_sums);
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            let _tiles = (kernel == Bf16Kernel::Amx).then(super::amx::TileSession::start);
            for jc in (0..n).step_by(nc) {
                let nb = nc.min(n - jc);
                let groups_len = nb.next_multiple_of(NR);
                // the column block's packed B: packed now, or a window of a pre-packed whole B
                let (b_blocks, start): (&[u16], usize) = match prepacked {
                    Some(whole) => (whole, jc * k_padded),
                    None => {
                        let mut offset = 0;
                        for &(pc, kb) in &blocks {
                            let kbp = kb.next_multiple_of(KSTEP);
                            let b_window = b.add(pc * s.b_row + jc * s.b_col);
                            pack_b_groups(kb, kbp, nb, b_window, s.b_row, s.b_col, &mut packed_b[offset..]);
                            offset += groups_len * kbp;
                        }
                        (&packed_b[..], 0)
                    }
                };
                for ic in (0..m).step_by(bl.mc) {
                    let mb = bl.mc.min(m - ic);
                    let mut offset = start;
                    for &(pc, kb) in &blocks {
                        let kbp = kb.next_multiple_of(KSTEP);
                        let b_block = &b_blocks[offset..];
                        offset += groups_len * kbp;
                        // the first K block starts the sums, the others add to them
                        let beta_tiles = if pc == 0 { 0.0 } else { 1.0 };
                        // bf16 A with rows contiguous in K is read in place by the AMX kernel
                        let a_block = a.add(ic * s.a_row + pc * s.a_col);
                        let in_place = whole_a.is_none()
                            && kernel == Bf16Kernel::Amx
                            && A::STORED_AS_BF16
                            && s.a_col == 1
                            && kb == kbp;
                        if whole_a.is_none() && (!in_place || !mb.is_multiple_of(bl.mr)) {
                            pack_a_panels(kernel, bl.mr, mb, kb, kbp, a_block, s.a_row, s.a_col, packed_a);
                        }
                        for jr in (0..nb).step_by(NR) {
                            let b0 = b_block.as_ptr().add((jr / 16) * kbp * 16);
                            let b1 = b0.add(kbp * 16);
                            for (q, ir) in (0..mb).step_by(bl.mr).enumerate() {
                                let rows = bl.mr.min(mb - ir);
                                let ap = if let Some(w) = whole_a {
                                    APanel {
                                        ptr: w.as_ptr().add((ic + ir) / bl.mr * bl.mr * k_padded + pc * bl.mr),
                                        row_bytes: 2 * KSTEP,
                                        step_bytes: 2 * bl.mr * KSTEP,
                                    }
                                } else if in_place && rows == bl.mr {
                                    APanel {
                                        ptr: a_block.add(ir * s.a_row) as *const u16,
                                        row_bytes: 2 * s.a_row,
                                        step_bytes: 2 * KSTEP,
                                    }
                                } else {
                                    APanel {
                                        ptr: packed_a.as_ptr().add(q * bl.mr * kbp),
                                        row_bytes: 2 * KSTEP,
                                        step_bytes: 2 * bl.mr * KSTEP,
                                    }
                                };
                                // whole tiles always: A and B are zero-padded past their edges
                                let tile = c_tiles.as_mut_ptr().add(ir * ld_sums + jr);
                                micro(kbp, ap, b0, b1, tile, ld_sums, 1.0, beta_tiles);
                            }
                        }
                    }
                    // C = alpha * sums + beta * C, the valid part of each tile
                    // the finished rows, to C (or wherever the sink stores them)
                    for i in 0..mb {
                        sink.put(row0 + ic + i, col0 + jc, &c_tiles[i * ld_sums..i * ld_sums + nb]);
                    }
                }
            }
        });
    }
}

/// Floats of padding after each row of the C block's sums. With rows a power of two of bytes
/// apart (512 floats: 2 KB) the 16 rows of a tile fall into two L1 sets and evict each other;
/// one more cache line per row spreads them over sixteen. The bare kernel measured 950-1060
/// GFLOP/s with tile rows 2 or 12 KB apart against 1670-1700 with the rows of a contiguous
/// tile (kc 256, one thread).
const SUMS_ROW_PAD: usize = 16;

/// Where the blocked loops hand each finished row of a C block: `sums`, all of K summed, for
/// row `i` of the product, columns `j0..j0 + sums.len()`.
trait RowSink: Sync {
    /// # Safety
    /// Row `i`, columns `j0..j0 + sums.len()` lie inside the product, and no other thread
    /// stores to them.
    unsafe fn put(&self, i: usize, j0: usize, sums: &[f32]);
}

/// C (f32, rows `ldc` apart) = alpha * sums + beta * C + bias.
struct StoreF32<'a> {
    c: SendPtr<f32>,
    ldc: usize,
    alpha: f32,
    beta: f32,
    bias: Option<&'a [f32]>,
}

impl RowSink for StoreF32<'_> {
    unsafe fn put(&self, i: usize, j0: usize, sums: &[f32]) {
        let n = sums.len();
        // SAFETY: the caller keeps (i, j0..j0 + n) inside C and owned by this thread.
        let dst = unsafe { std::slice::from_raw_parts_mut((self.c.0 as *mut f32).add(i * self.ldc + j0), n) };
        merge_row(dst, sums, self.alpha, self.beta, self.bias.map(|b| &b[j0..j0 + n]));
    }
}

/// Y (bf16 bits, rows `ld` apart) = act(sums + bias), rounded to bf16: a hidden layer stored
/// as the next product's operand.
struct StoreActBf16<'a> {
    y: SendPtr<u16>,
    ld: usize,
    bias: Option<&'a [f32]>,
    act: Option<crate::activation::Activation>,
}

impl RowSink for StoreActBf16<'_> {
    unsafe fn put(&self, i: usize, j0: usize, sums: &[f32]) {
        let n = sums.len();
        // SAFETY: the caller keeps (i, j0..j0 + n) inside Y and owned by this thread.
        let dst = unsafe { std::slice::from_raw_parts_mut((self.y.0 as *mut u16).add(i * self.ld + j0), n) };
        ROW_SCRATCH.with_borrow_mut(|(pre, post)| {
            // (scratch rows kept per thread: zeroing two fresh 2 KB arrays per row cost more
            // than the activation)
            pre.resize(n, 0.0);
            post.resize(n, 0.0);
            let (pre, post) = (&mut pre[..n], &mut post[..n]);
            match self.bias {
                Some(b) => pre.iter_mut().zip(sums).zip(&b[j0..j0 + n]).for_each(|((p, &v), &b)| *p = v + b),
                None => pre.copy_from_slice(sums),
            }
            let out = match self.act {
                Some(act) => {
                    crate::activation::activation_forward_with(Isa::best(), act, pre, post);
                    &*post
                }
                None => &*pre,
            };
            super::f32_to_bf16_bits_run(out, dst);
        });
    }
}

/// `dst = alpha * sums + beta * dst (+ bias)` (beta 0: `dst` is not read, so NaN there does not
/// leak), on the widest vector unit the CPU has.
fn merge_row(dst: &mut [f32], sums: &[f32], alpha: f32, beta: f32, bias: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    if Isa::best().supported() == Isa::Avx512 {
        // SAFETY: the instruction set was detected.
        return unsafe { merge_row_avx512(dst, sums, alpha, beta, bias) };
    }
    merge_row_scalar(dst, sums, alpha, beta, bias)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn merge_row_avx512(dst: &mut [f32], sums: &[f32], alpha: f32, beta: f32, bias: Option<&[f32]>) {
    merge_row_scalar(dst, sums, alpha, beta, bias)
}

/// Scalar definition of [`merge_row`] (vectorised by the compiler for its caller's ISA).
#[inline(always)]
fn merge_row_scalar(dst: &mut [f32], sums: &[f32], alpha: f32, beta: f32, bias: Option<&[f32]>) {
    let n = dst.len();
    let sums = &sums[..n];
    match (beta == 0.0, bias) {
        (true, None) => {
            for (d, &v) in dst.iter_mut().zip(sums) {
                *d = alpha * v;
            }
        }
        (true, Some(b)) => {
            for ((d, &v), &b) in dst.iter_mut().zip(sums).zip(&b[..n]) {
                *d = alpha * v + b;
            }
        }
        (false, None) => {
            for (d, &v) in dst.iter_mut().zip(sums) {
                *d = alpha * v + beta * *d;
            }
        }
        (false, Some(b)) => {
            for ((d, &v), &b) in dst.iter_mut().zip(sums).zip(&b[..n]) {
                *d = alpha * v + beta * *d + b;
            }
        }
    }
}

/// A reusable buffer whose slices start on a 64-byte boundary. A tile row is 64 bytes;
/// aligned, it is one cache line, misaligned two, and AMX products whose packed B or A rows
/// sat 16 bytes off a line ran at about half speed (~900 against ~1700 GFLOP/s at
/// 2048 x 768 x 3072 on two threads).
#[derive(Default)]
struct CacheAligned<T> {
    raw: Vec<T>,
}

impl<T: Copy + Default> CacheAligned<T> {
    const fn new() -> CacheAligned<T> {
        CacheAligned { raw: Vec::new() }
    }

    /// The first `len` elements from the first 64-byte boundary (contents unspecified; a
    /// fresh buffer holds `T::default()`).
    fn slice(&mut self, len: usize) -> &mut [T] {
        let slack = 64 / std::mem::size_of::<T>();
        if self.raw.len() < len + slack {
            self.raw.resize(len + slack, T::default());
        }
        let start = Self::aligned_start(self.raw.as_ptr());
        &mut self.raw[start..][..len]
    }

    /// Elements to skip to reach a 64-byte boundary (0 if `align_offset` declines to say: the
    /// buffer then works unaligned, only slower).
    fn aligned_start(p: *const T) -> usize {
        let slack = 64 / std::mem::size_of::<T>();
        let start = p.align_offset(64);
        if start < slack {
            start
        } else {
            0
        }
    }

    /// What [`CacheAligned::slice`] last handed out, `len` long.
    fn view(&self, len: usize) -> &[T] {
        if len == 0 {
            return &[];
        }
        &self.raw[Self::aligned_start(self.raw.as_ptr())..][..len]
    }
}

/// Bytes of packed B per column block (all of K): kept well inside a 2 MB L2.
const B_BLOCK_BYTES: usize = 1 << 20;

/// Columns of B per column block for a padded depth: as many as fit [`B_BLOCK_BYTES`].
fn column_block(bl: TileBlocking, k_padded: usize) -> usize {
    (B_BLOCK_BYTES / (2 * k_padded)).clamp(NR, bl.nc) / NR * NR
}

/// The K blocks `(start, len)` of a product of depth `k`: equal sizes, multiples of 32.
fn k_blocks(bl: TileBlocking, k: usize) -> Vec<(usize, usize)> {
    let count = k.div_ceil(bl.kc).max(1);
    let kc = k.div_ceil(count).next_multiple_of(KSTEP);
    (0..k).step_by(kc).map(|pc| (pc, kc.min(k - pc))).collect()
}

thread_local! {
    /// Each thread's packing buffers (A panels, B groups) and the C block summed over K, kept
    /// between calls: allocating them per call cost a page fault per 4 KB of every product.
    ///
    /// The C block is summed over K in this buffer (rows padded by [`SUMS_ROW_PAD`]) and
    /// merged into C once, row by row, when all of K is in: tiles loaded from and stored to C
    /// itself were slow for wide C, whose rows `ldc` floats apart fall into few L1 sets (with
    /// ldc = 3072 every row of a tile maps to the same set).
    static PACK_BUFFERS: std::cell::RefCell<(CacheAligned<u16>, CacheAligned<u16>, CacheAligned<f32>)> =
        const { std::cell::RefCell::new((CacheAligned::new(), CacheAligned::new(), CacheAligned::new())) };
}

/// Packs B[kb x nb] (strided) into groups of 16 columns, each `[kbp/2][16][2]` (pairs of K
/// interleaved per column), zero-padded to `kbp` rows and to a whole number of 32-column
/// slices.
#[allow(clippy::too_many_arguments)]
unsafe fn pack_b_groups<B: Bf16Operand>(
    kb: usize,
    kbp: usize,
    nb: usize,
    b: *const B,
    rs: usize,
    cs: usize,
    out: &mut [u16],
) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let groups = nb.next_multiple_of(NR) / 16;
        let out = &mut out[..groups * kbp * 16];
        if cs == 1 && rs != 1 {
            // Row-major B: two rows of the block rounded (or copied) in one pass each, then
            // interleaved pair by pair into every group.
            if !nb.is_multiple_of(16) || kb < kbp {
                out.fill(0);
            }
            let mut rows = vec![0u16; 2 * nb];
            let (even, odd) = rows.split_at_mut(nb);
            for pp in 0..kb.div_ceil(2) {
                B::bf16_run(b.add(2 * pp * rs), even);
                if 2 * pp + 1 < kb {
                    B::bf16_run(b.add((2 * pp + 1) * rs), odd);
                } else {
                    odd.fill(0);
                }
                for g in 0..groups {
                    let cols = 16.min(nb.saturating_sub(g * 16));
                    let dst = &mut out[g * kbp * 16 + pp * 32..][..32];
                    for j in 0..cols {
                        dst[2 * j] = even[g * 16 + j];
                        dst[2 * j + 1] = odd[g * 16 + j];
                    }
                }
            }
            return;
        }
        // one column of a transposed B (rs == 1), reused for every column
        let mut col = if rs == 1 { vec![0u16; kb] } else { Vec::new() };
        for g in 0..groups {
            let group = &mut out[g * kbp * 16..(g + 1) * kbp * 16];
            let cols = 16.min(nb.saturating_sub(g * 16));
            if cols < 16 || kb < kbp {
                group.fill(0);
            }
            let src = b.add(g * 16 * cs);
            if rs == 1 && cols > 0 {
                // B = W^T (a weight read transposed): column j is a contiguous run of K; a pair of
                // K for one column is two neighbouring elements.
                for j in 0..cols {
                    B::bf16_run(src.add(j * cs), &mut col);
                    for (p, &v) in col.iter().enumerate() {
                        *group.get_unchecked_mut((p / 2) * 32 + 2 * j + (p & 1)) = v;
                    }
                }
            } else {
                for p in 0..kb {
                    let row = &mut group[(p / 2) * 32 + (p & 1)..];
                    for j in 0..cols {
                        *row.get_unchecked_mut(2 * j) = (*src.add(p * rs + j * cs)).bf16_bits();
                    }
                }
            }
        }
    }
}

/// Packs A[mb x kb] (strided) into row panels of `mr` rows, zero-padded to `kbp` columns and
/// to whole panels, in the order the kernel reads them: AMX `[kbp/32][32 rows][32]` (two
/// 16-row tiles per step of K), the dot kernel `[kbp/2][mr][2]` (one broadcast pair per row).
#[allow(clippy::too_many_arguments)]
unsafe fn pack_a_panels<A: Bf16Operand>(
    kernel: Bf16Kernel,
    mr: usize,
    mb: usize,
    kb: usize,
    kbp: usize,
    a: *const A,
    rs: usize,
    cs: usize,
    out: &mut [u16],
) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let panels = mb.div_ceil(mr);
        if kernel == Bf16Kernel::Amx && rs == 1 && cs != 1 {
            // A read transposed (A^T stored row-major, as dW = dY^T X reads dY): for each k the
            // panel's rows are a contiguous run, rounded in one pass, then written down a
            // column of the tile rows.
            let mut run = [0u16; 32];
            for q in 0..panels {
                let panel = &mut out[q * mr * kbp..(q + 1) * mr * kbp];
                let rows = mr.min(mb - q * mr);
                if rows < mr || kb < kbp {
                    panel.fill(0);
                }
                for p in 0..kb {
                    A::bf16_run(a.add(q * mr + p * cs), &mut run[..rows]);
                    let base = (p / KSTEP) * mr * KSTEP + p % KSTEP;
                    for (r, &v) in run[..rows].iter().enumerate() {
                        *panel.get_unchecked_mut(base + r * KSTEP) = v;
                    }
                }
            }
            return;
        }
        // one row of A as bf16 bits: rounded in one vectorised pass, then cut into tile rows
        let mut row_bits = if kernel == Bf16Kernel::Amx && cs == 1 { vec![0u16; kb] } else { Vec::new() };
        for q in 0..panels {
            let panel = &mut out[q * mr * kbp..(q + 1) * mr * kbp];
            let rows = mr.min(mb - q * mr);
            if rows < mr || kb < kbp {
                panel.fill(0);
            }
            for r in 0..rows {
                let src = a.add((q * mr + r) * rs);
                match (kernel == Bf16Kernel::Amx, cs == 1) {
                    (true, true) => {
                        // AMX rows are runs of 32 of K: cuts of A's row (copied or rounded).
                        A::bf16_run(src, &mut row_bits);
                        for (step, run) in row_bits.chunks(KSTEP).enumerate() {
                            let at = step * mr * KSTEP + r * KSTEP;
                            panel[at..at + run.len()].copy_from_slice(run);
                        }
                    }
                    (true, false) => {
                        for p in 0..kb {
                            *panel.get_unchecked_mut((p / KSTEP) * mr * KSTEP + r * KSTEP + p % KSTEP) =
                                (*src.add(p * cs)).bf16_bits();
                        }
                    }
                    (false, _) => {
                        for p in 0..kb {
                            *panel.get_unchecked_mut((p / 2) * mr * 2 + r * 2 + (p & 1)) =
                                (*src.add(p * cs)).bf16_bits();
                        }
                    }
                }
            }
        }
    }
}

/// B packed once in bf16 for many products against it: a weight at inference, held in bf16
/// (half the bytes of f32) in the tile kernels' layout, so [`gemm_bf16_packed_b`] neither
/// converts nor packs it again. Results are bitwise those of [`gemm_bf16_with`] on the same
/// kernel and operands.
///
/// ```
/// use kernels::bf16::{gemm_bf16_packed_b, Bf16Kernel, PackedBf16B};
/// use kernels::gemm::GemmStrides;
/// // W (3 x 2, out x in) used as B = W^T (2 x 3): strides (1, 2)
/// let w = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
/// let packed = PackedBf16B::new(Bf16Kernel::best(), 2, 3, &w, 1, 2);
/// let x = [1.0f32, 1.0, 0.0, 1.0]; // (2 x 2)
/// let mut y = [0.0; 6];
/// let s = GemmStrides { a_row: 2, a_col: 1, b_row: 0, b_col: 0, c_row: 3, c_col: 1 };
/// gemm_bf16_packed_b(1, 2, 1.0, &x, &packed, 0.0, &mut y, s, None);
/// assert_eq!(y, [3.0, 7.0, 11.0, 2.0, 4.0, 6.0]);
/// ```
pub struct PackedBf16B {
    kernel: Bf16Kernel,
    k: usize,
    n: usize,
    /// Tile kernels: column blocks, each its K blocks of 16-column groups. Widening kernels:
    /// B as bf16, row-major (k, n). Starts on a cache line (see [`CacheAligned`]).
    buffer: CacheAligned<u16>,
    len: usize,
}

impl PackedBf16B {
    /// Packs B (k x n, element (p, j) at `b[p * b_row + j * b_col]`) for `kernel` (or the best
    /// kernel below it that the machine has).
    pub fn new<B: Bf16Operand>(
        kernel: Bf16Kernel,
        k: usize,
        n: usize,
        b: &[B],
        b_row: usize,
        b_col: usize,
    ) -> PackedBf16B {
        assert!(b.len() >= extent(k, n, b_row, b_col), "PackedBf16B: B buffer too short");
        let kernel = kernel.supported();
        let mut buffer = CacheAligned::new();
        let mut len = 0;
        if k > 0 && n > 0 {
            match kernel {
                Bf16Kernel::Widen(_) => {
                    len = k * n;
                    for (e, v) in buffer.slice(len).iter_mut().enumerate() {
                        *v = b[(e / n) * b_row + (e % n) * b_col].bf16_bits();
                    }
                }
                _ => {
                    let bl = tile_blocking(kernel);
                    let blocks = k_blocks(bl, k);
                    let k_padded: usize = blocks.iter().map(|&(_, kb)| kb.next_multiple_of(KSTEP)).sum();
                    let nc = column_block(bl, k_padded);
                    len = n.next_multiple_of(NR) * k_padded;
                    // zero-filled: a fresh buffer
                    let data = buffer.slice(len);
                    for jc in (0..n).step_by(nc) {
                        let nb = nc.min(n - jc);
                        let mut offset = jc * k_padded;
                        for &(pc, kb) in &blocks {
                            let kbp = kb.next_multiple_of(KSTEP);
                            // SAFETY: the window (pc.., jc..) of B lies inside the checked extent.
                            unsafe {
                                pack_b_groups(
                                    kb,
                                    kbp,
                                    nb,
                                    b.as_ptr().add(pc * b_row + jc * b_col),
                                    b_row,
                                    b_col,
                                    &mut data[offset..],
                                )
                            };
                            offset += nb.next_multiple_of(NR) * kbp;
                        }
                    }
                }
            }
        }
        PackedBf16B { kernel, k, n, buffer, len }
    }

    /// (K, N) of the packed B.
    pub fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.len * 2
    }

    /// The kernel it was packed for.
    pub fn kernel(&self) -> Bf16Kernel {
        self.kernel
    }

    fn data(&self) -> &[u16] {
        self.buffer.view(self.len)
    }
}

/// C (m x n) = alpha * A * B + beta * C with B pre-packed ([`PackedBf16B`]); A's and C's
/// strides come from `s` (B's are ignored). Rows of C are split over the threads.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_packed_b<A: Bf16Operand>(
    threads: usize,
    m: usize,
    alpha: f32,
    a: &[A],
    packed: &PackedBf16B,
    beta: f32,
    c: &mut [f32],
    s: GemmStrides,
    bias: Option<&[f32]>,
) {
    let (k, n) = packed.shape();
    if let Some(bias) = bias {
        assert!(bias.len() >= n, "gemm_bf16_packed_b: bias shorter than N");
    }
    assert!(a.len() >= extent(m, k, s.a_row, s.a_col), "gemm_bf16_packed_b: A buffer too short");
    assert!(c.len() >= extent(m, n, s.c_row, s.c_col), "gemm_bf16_packed_b: C buffer too short");
    assert!(s.c_col == 1 && (m <= 1 || s.c_row >= n), "gemm_bf16_packed_b: C must be row-major with disjoint rows");
    if m == 0 || n == 0 {
        return;
    }
    let kernel = packed.kernel;
    if let Bf16Kernel::Widen(_) = kernel {
        let b: &[half::bf16] = bytemuck_u16(packed.data());
        let sb = GemmStrides { b_row: n, b_col: 1, ..s };
        gemm_bf16_bias_with(kernel, threads, m, k, n, alpha, a, b, beta, c, sb, bias);
        return;
    }
    if k == 0 || alpha == 0.0 {
        scale_rows(m, n, beta, c, s.c_row, bias);
        return;
    }
    let sink = StoreF32 { c: SendPtr(c.as_mut_ptr() as *const f32), ldc: s.c_row, alpha, beta, bias };
    // SAFETY: extents checked above; C's rows are disjoint (asserted), one thread per row block.
    unsafe { packed_b_product(threads, m, a, s, packed, &sink) }
}

/// The tile kernels' product of A (m x K) and a pre-packed B, rows split over the threads,
/// every finished row handed to `sink`.
///
/// # Safety
/// `a` holds m rows of K as `s` says; `sink` may be given any row < m and column < N.
unsafe fn packed_b_product<A: Bf16Operand>(
    threads: usize,
    m: usize,
    a: &[A],
    s: GemmStrides,
    packed: &PackedBf16B,
    sink: &dyn RowSink,
) {
    let (k, n) = packed.shape();
    let kernel = packed.kernel;
    let bl = tile_blocking(kernel);
    let units = m.div_ceil(bl.mr);
    let parts = if 2 * m * n * k < (1 << 21) { 1 } else { threads.max(1).min(units) };
    let mut whole_a = (kernel == Bf16Kernel::Amx && !reads_a_in_place(a.as_ptr(), k, s))
        .then(|| prepack_a(bl, parts, m, k, a.as_ptr(), s));
    let whole_a_ref = whole_a.as_mut().map(|w| w.rows());
    let k_padded = padded_depth(bl, k);
    let ap = SendPtr(a.as_ptr());
    let data = packed.data();
    let run = |t: usize| {
        let ap = &ap; // the whole wrapper (Send), not its raw pointer field
        let start = (units * t / parts) * bl.mr;
        let end = ((units * (t + 1) / parts) * bl.mr).min(m);
        if start >= end {
            return;
        }
        let no_b = std::ptr::null::<half::bf16>();
        // SAFETY: each part hands the sink its own rows; B is the pre-packed whole (the B
        // pointer is never read).
        unsafe {
            tiled_serial(
                kernel,
                bl,
                Some(data),
                whole_a_ref.map(|w| &w[start * k_padded..]),
                end - start,
                k,
                n,
                ap.0.add(start * s.a_row),
                no_b,
                s,
                sink,
                (start, 0),
            )
        }
    };
    run_parts(parts, run);
    if let Some(w) = whole_a {
        w.recycle();
    }
}

/// A feed-forward block, y (m x N2) = act(x W1^T + b1) W2^T + b2, with the hidden layer
/// (m x N1) held in bf16 only: the first product's rows are biased, activated and rounded as
/// they leave the accumulators and the second product reads them in place. Against the same
/// steps as separate ops (an f32 hidden layer written, activated, read and rounded again
/// while packed), this skips three passes over the hidden layer, the largest activation of a
/// transformer layer (4x its width).
///
/// `w1` packs B = W1^T (K x N1), `w2` packs B = W2^T (N1 x N2), both for the same kernel.
/// Inference only (nothing is kept for a backward pass). On the widening kernels the same
/// steps run as separate passes, with the same rounding of the hidden layer.
///
/// ```
/// use kernels::activation::Activation;
/// use kernels::bf16::{feed_forward_bf16, Bf16Kernel, PackedBf16B};
/// // 2 tokens of width 2, hidden width 3, output width 2; W1 (3 x 2) and W2 (2 x 3) as stored
/// let w1 = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
/// let w2 = [1.0f32, 1.0, 1.0, 0.0, 0.0, 1.0];
/// let p1 = PackedBf16B::new(Bf16Kernel::best(), 2, 3, &w1, 1, 2);
/// let p2 = PackedBf16B::new(Bf16Kernel::best(), 3, 2, &w2, 1, 3);
/// let x = [1.0f32, 2.0, -4.0, 0.5];
/// let mut y = [0.0f32; 4];
/// feed_forward_bf16(1, 2, &x, &p1, None, None, &p2, Some(&[0.5, 0.0]), &mut y);
/// // hidden rows [1, 2, 3] and [-4, 0.5, -3.5]
/// assert_eq!(y, [6.5, 3.0, -6.5, -3.5]);
/// // with GELU (erf form) on the hidden layer
/// feed_forward_bf16(1, 2, &x, &p1, None, Some(Activation::GeluErf), &p2, None, &mut y);
/// assert!((y[1] - 2.996).abs() < 0.01);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn feed_forward_bf16(
    threads: usize,
    m: usize,
    x: &[f32],
    w1: &PackedBf16B,
    b1: Option<&[f32]>,
    act: Option<crate::activation::Activation>,
    w2: &PackedBf16B,
    b2: Option<&[f32]>,
    y: &mut [f32],
) {
    let ((k, n1), (k2, n2)) = (w1.shape(), w2.shape());
    assert_eq!(k2, n1, "feed_forward_bf16: W2's input width is not W1's output width");
    assert!(x.len() >= m * k && y.len() >= m * n2, "feed_forward_bf16: x or y too short");
    assert!(b1.is_none_or(|b| b.len() >= n1) && b2.is_none_or(|b| b.len() >= n2), "feed_forward_bf16: bias too short");
    if m == 0 {
        return;
    }
    let mut hidden_buf = HIDDEN.take();
    let hidden = hidden_buf.slice(m * n1);
    let s1 = GemmStrides { a_row: k, a_col: 1, b_row: 0, b_col: 0, c_row: n1, c_col: 1 };
    match w1.kernel {
        Bf16Kernel::Widen(_) => {
            let mut pre = vec![0.0f32; m * n1];
            gemm_bf16_packed_b(threads, m, 1.0, x, w1, 0.0, &mut pre, s1, b1);
            let post = match act {
                Some(act) => {
                    let mut post = vec![0.0f32; m * n1];
                    crate::activation::activation_forward(act, &pre, &mut post);
                    post
                }
                None => pre,
            };
            super::f32_to_bf16_bits_run(&post, hidden);
        }
        _ if k == 0 => {
            let zeros = vec![0.0f32; n1];
            let sink = StoreActBf16 { y: SendPtr(hidden.as_ptr()), ld: n1, bias: b1, act };
            for i in 0..m {
                // SAFETY: row i < m of the hidden layer, this thread only.
                unsafe { sink.put(i, 0, &zeros) };
            }
        }
        _ => {
            let sink = StoreActBf16 { y: SendPtr(hidden.as_ptr()), ld: n1, bias: b1, act };
            // SAFETY: x holds m rows of k (asserted); the hidden layer is m x n1.
            unsafe { packed_b_product(threads, m, &x[..m * k], s1, w1, &sink) };
        }
    }
    let s2 = GemmStrides { a_row: n1, a_col: 1, b_row: 0, b_col: 0, c_row: n2, c_col: 1 };
    gemm_bf16_packed_b(threads, m, 1.0, bytemuck_u16(hidden), w2, 0.0, y, s2, b2);
    HIDDEN.set(hidden_buf);
}

thread_local! {
    /// [`StoreActBf16`]'s rows before and after the activation.
    static ROW_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    /// [`feed_forward_bf16`]'s hidden layer, kept between calls (taken while in use).
    static HIDDEN: std::cell::Cell<CacheAligned<u16>> = const { std::cell::Cell::new(CacheAligned::new()) };
}

/// The u16 bits of packed bf16 values seen as `bf16` (same size and layout).
fn bytemuck_u16(v: &[u16]) -> &[half::bf16] {
    // SAFETY: bf16 is repr(transparent) over u16.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const half::bf16, v.len()) }
}

/// Dot-product ceiling of AVX-512 BF16 on the calling thread (GFLOP/s): independent chains of
/// register-only `vdpbf16ps`, 64 flops each. NaN where the CPU lacks the instruction.
pub fn bf16_dot_peak(iterations: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if Bf16Kernel::DotAvx512.supported() >= Bf16Kernel::DotAvx512 {
        let start = std::time::Instant::now();
        // SAFETY: the instruction set was checked above.
        let flops = unsafe { super::avx512::dot_chains(iterations) } as f64;
        return flops / start.elapsed().as_secs_f64() / 1e9;
    }
    let _ = iterations;
    f64::NAN
}

/// AMX tile ceiling on the calling thread (GFLOP/s): `tdpbf16ps` on register-resident tiles,
/// 16384 flops each. NaN where AMX is unavailable.
pub fn amx_peak(iterations: usize) -> f64 {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if Bf16Kernel::Amx.supported() == Bf16Kernel::Amx {
        let start = std::time::Instant::now();
        // SAFETY: AMX was checked (and permitted) above.
        let flops = unsafe { super::amx::tile_chains(iterations) } as f64;
        return flops / start.elapsed().as_secs_f64() / 1e9;
    }
    let _ = iterations;
    f64::NAN
}

/// Throughput of the bare AMX kernel on cache-resident panels `kc` deep (GFLOP/s on the
/// calling thread), for tuning: the ceiling the blocked loops can approach. NaN without AMX.
pub fn amx_kernel_peak(kc: usize, calls: usize) -> f64 {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if Bf16Kernel::Amx.supported() == Bf16Kernel::Amx {
        let kc = kc.next_multiple_of(KSTEP);
        let mut a_buf = CacheAligned::new();
        let a = a_buf.slice(32 * kc);
        a.fill(0x3f80);
        let mut b_buf = CacheAligned::new();
        let b = b_buf.slice(32 * kc);
        b.fill(0x3c00);
        let mut c_buf = CacheAligned::new();
        let c = c_buf.slice(32 * NR);
        let panel = APanel { ptr: a.as_ptr(), row_bytes: 2 * KSTEP, step_bytes: 2 * 32 * KSTEP };
        let _tiles = super::amx::TileSession::start();
        let t = std::time::Instant::now();
        for _ in 0..calls {
            // SAFETY: AMX checked above; the panels and tile are sized for the kernel.
            unsafe {
                super::amx::kernel_32x32(kc, panel, b.as_ptr(), b.as_ptr().add(16 * kc), c.as_mut_ptr(), NR, 1.0, 1.0)
            };
        }
        std::hint::black_box(&c);
        return (2 * 32 * NR * kc * calls) as f64 / t.elapsed().as_secs_f64() / 1e9;
    }
    let _ = (kc, calls);
    f64::NAN
}
