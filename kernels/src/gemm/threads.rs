//! Threaded products that share one packed operand: all of B packed once for row chunks
//! (a pre-packed weight, `PackedB`), or all of A packed once for column chunks (few rows,
//! many columns). Each element of C is still summed over K by one thread in serial order.

use super::*;

/// All of B (k x n, strides of `s`), packed for [`multiply_rows_packed_b`] into `out` (grown
/// as needed): (K, padded N), block pc starting at pc * padded_n, its panel at column jr
/// kcb * jr further on, holding [kcb][NR]. Packed in runs of up to 8 panels, so that B is read
/// in long row runs (see pack_b), the runs in parallel.
pub(super) unsafe fn pack_b_whole(
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
pub(super) unsafe fn multiply_rows_packed_b(
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
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
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
                        let bias_block = if pc == 0 && !biasp.0.is_null() {
                            biasp.0.add(jc) as *const f32
                        } else {
                            std::ptr::null()
                        };
                        let b_block = pb.0.add(pc * padded_n + jc * kcb);
                        let block = PackedBlock { kc: kcb, rows, cols: bl.nc.min(n - jc), a: pa.as_ptr(), b: b_block };
                        block.multiply(&tiles, c_block, s, alpha, beta_block, bias_block);
                    }
                });
            });
        });
    }
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
/// (`gemm_bench --threads 2 --bert-mini`), so the join is not where
/// two-thread time goes, and the dynamic one still balances a core slowed by a neighbour.
pub(super) fn for_each_chunk_block(kc: usize, chunks: usize, k: usize, body: impl Fn(usize, usize) + Sync) {
    use rayon::prelude::*;
    for pc in (0..k).step_by(kc) {
        (0..chunks).into_par_iter().for_each(|q| body(q, pc));
    }
}

pub(super) unsafe fn scale_c(m: usize, n: usize, beta: f32, c: *mut f32, s: GemmStrides, bias: *const f32) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        for i in 0..m {
            for j in 0..n {
                let p = c.add(i * s.c_row + j * s.c_col);
                let add = if bias.is_null() { 0.0 } else { *bias.add(j) };
                *p = if beta == 0.0 { add } else { beta * *p + add };
            }
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
pub(super) fn pack_shared(
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
pub(super) fn return_shared(buffer: HugeBuffer) {
    SHARED_PACKED.with(|cell| *cell.borrow_mut() = buffer);
}

/// The largest block of packed A (floats) that [`gemm_parallel_cols`] shares: 512 KB, half
/// this Xeon's 1 MB L2.
pub(super) const SHARED_A_MAX_FLOATS: usize = 128 * 1024;

/// Several threads, fewer rows than columns: the mirror image of [`multiply_rows_packed_b`]. A,
/// the smaller operand, is packed once and shared; column chunks of C (whole NR-wide panels)
/// are handed out, each packing its own columns of B. With row chunks, every chunk read the
/// whole (kc x N) block of packed B again, more than L2 holds when N = 1024: the weight
/// gradient 256 x 2048 x 1024 of BERT-mini's feed-forward ran at 0.73x numpy's speed. A
/// column chunk re-reads the (M x kc) block of A instead, the smaller one. Results are
/// bitwise those of one thread (each element is summed over K in the same order).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_parallel_cols(
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
        let (mr, nr, kc) = (bl.mr, bl.nr, bl.kc);
        let padded_m = m.div_ceil(mr) * mr;
        // Packed A, (K, padded M): block pc starts at pc * padded_m; its micro-panel at row ir
        // starts kcb * ir further on and holds [kcb][MR]. Packed in runs of up to 16
        // micro-panels, so that a transposed A is still read in long runs (see pack_a).
        let ap = SharedPtr(a as *mut f32);
        let mut packed_a = SHARED_PACKED.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
        pack_shared(k, kc, m, mr, 16, &mut packed_a, |pc, kcb, ir, rows, out| {
            // (inside the enclosing unsafe block) the caller's A holds rows ir.. and columns pc..
            pack_a(isa, rows, kcb, mr, ap.get().add(ir * s.a_row + pc * s.a_col), s.a_row, s.a_col, out)
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
}

thread_local! {
    pub(super) static PACK_A: std::cell::RefCell<HugeBuffer> = const { std::cell::RefCell::new(HugeBuffer::new()) };
    pub(super) static PACK_B: std::cell::RefCell<HugeBuffer> = const { std::cell::RefCell::new(HugeBuffer::new()) };
    /// All of A, packed once for the threads of [`gemm_parallel_cols`].
    pub(super) static SHARED_PACKED: std::cell::RefCell<HugeBuffer> = const { std::cell::RefCell::new(HugeBuffer::new()) };
}
