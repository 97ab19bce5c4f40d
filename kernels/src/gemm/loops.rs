//! The five BLIS loops on one thread (loop 5: column panels of B; loop 4: blocks of K;
//! loop 3: row blocks of A; loops 2 and 1: micro-tiles), the tile runner with its edge
//! handling, and `PanelGemm` for callers that pack their own A panels (the convolutions).

use super::*;

/// The micro-kernels of one instruction set, and how a C tile of any size goes through them.
#[derive(Clone, Copy)]
pub(super) struct TileKernels {
    pub(super) kernel: MicroKernel,
    pub(super) edge: Option<EdgeKernel>,
    pub(super) mr: usize,
    pub(super) nr: usize,
}

impl TileKernels {
    pub(super) fn new(isa: Isa, bl: Blocking) -> TileKernels {
        TileKernels { kernel: micro_kernel(isa), edge: edge_micro_kernel(isa), mr: bl.mr, nr: bl.nr }
    }

    /// C tile (rows x cols, strides of `s`) = alpha * A panel x B panel + beta * C + bias:
    /// the full kernel, the masked edge kernel, or a scratch tile merged element by element
    /// (strided C, or a path without an edge kernel).
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn run(
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
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
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
}

/// A packed A block (`rows` x kc, MR-tall micro-panels [kc][MR]) and a packed B panel (kc x
/// `cols`, NR-wide micro-panels [kc][NR]), ready for loops 2 and 1.
pub(super) struct PackedBlock {
    pub(super) kc: usize,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) a: *const f32,
    pub(super) b: *const f32,
}

impl PackedBlock {
    /// Loops 2 and 1 in the A-resident order: C block (+)= A block x B panel, one MR-tall A
    /// micro-panel kept in L1 while the NR-wide B micro-panels stream past it from L2 (the
    /// kernel prefetches them). `bias` is null or points at the block's first column's bias.
    ///
    /// # Safety
    /// The packed buffers hold the block; the C block (strides of `s`) is writable.
    pub(super) unsafe fn multiply(
        &self,
        tiles: &TileKernels,
        c: *mut f32,
        s: GemmStrides,
        alpha: f32,
        beta: f32,
        bias: *const f32,
    ) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
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
}

/// Rows of A not yet packed: `rows` x kc at `a` (strides `rs`, `cs`), for a B that is one
/// column panel wide. Then each A row block is used once, so instead of packing the whole
/// block before the arithmetic (a pure memory stream, then pure arithmetic, one after the
/// other), each MR-tall micro-panel is packed just before its tiles run. Its source rows
/// arrive while the previous micro-panel's FMAs execute, and the hardware prefetcher keeps
/// streaming; the packed panel is still in L1 when the kernel reads it. A 1 x 1 convolution
/// to few channels (M = N*H*W, K = C_in <= kc, N <= nc) spent 43% of its time in a separate
/// packing pass bound by memory bandwidth.
pub(super) struct UnpackedRows {
    pub(super) isa: Isa,
    pub(super) a: *const f32,
    pub(super) rs: usize,
    pub(super) cs: usize,
    pub(super) rows: usize,
}

impl UnpackedRows {
    /// C block (+)= A rows x packed B panel (kc x `cols`, NR-wide micro-panels), packing one
    /// MR-tall A micro-panel at a time into `scratch` (at least MR * kc floats).
    ///
    /// # Safety
    /// As [`PackedBlock::multiply`]; the A rows are readable.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn multiply(
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
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            let mr = tiles.mr;
            for ir in (0..self.rows).step_by(mr) {
                let rows = mr.min(self.rows - ir);
                // Ask for the micro-panel after next now: its lines arrive from memory during
                // this panel's and the next one's arithmetic.
                let ahead = ir + 2 * mr;
                if self.cs == 1 && ahead < self.rows {
                    for r in ahead..(ahead + mr).min(self.rows) {
                        prefetch_span(self.a.wrapping_add(r * self.rs), kc);
                    }
                }
                pack_a(self.isa, rows, kc, mr, self.a.add(ir * self.rs), self.rs, self.cs, scratch);
                let panel = PackedBlock { kc, rows, cols, a: scratch.as_ptr(), b };
                panel.multiply(tiles, c.add(ir * s.c_row), s, alpha, beta, bias);
            }
        }
    }
}

/// The five BLIS loops on one thread.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_serial(
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
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
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
    pub(super) tiles: TileKernels,
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
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            debug_assert!(self.can_gather() && k.is_multiple_of(2) && rows <= 8 && cols <= 24);
            #[cfg(target_arch = "x86_64")]
            x86::kernel_avx512_8x24_kpairs(a, k, b, c, rsc, rows, cols);
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (a, k, b, c, rsc, rows, cols);
        }
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
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            debug_assert!(self.can_gather());
            #[cfg(target_arch = "x86_64")]
            x86::kernel_avx512_12x32_gather(segments, b_panel, c, rsc, beta, rows, cols);
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (segments, b_panel, c, rsc, beta, rows, cols);
        }
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
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            debug_assert!(self.can_gather());
            #[cfg(target_arch = "x86_64")]
            x86::kernel_avx512_12x32_pair_rows(kcb, a, pair_stride, b_panel, c, rsc, beta, rows, cols);
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (kcb, a, pair_stride, b_panel, c, rsc, beta, rows, cols);
        }
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
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            debug_assert!(self.can_gather());
            #[cfg(target_arch = "x86_64")]
            x86::kernel_avx512_12x32_columns(columns, offset, b_panel, c, rsc, rows, cols);
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (columns, offset, b_panel, c, rsc, rows, cols);
        }
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
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            let s = GemmStrides { a_row: 0, a_col: 0, b_row: 0, b_col: 0, c_row: rsc, c_col: 1 };
            self.tiles.run(kcb, a_panel, b_panel, c, s, 1.0, beta, std::ptr::null(), rows, cols);
        }
    }
}
