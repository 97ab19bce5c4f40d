//! Packing: A into MR-tall and B into NR-wide micro-panels in the order the micro-kernel reads
//! them, transposing row runs with register transposes where the ISA has them.

use super::*;

/// How many source rows ahead the row-walking packers ask for: each row is a run of a few
/// hundred bytes to a few KB, a page or more from the last, which the hardware prefetchers
/// do not guess; eight rows cover the L3 latency at the copy's pace.
pub(super) const PACK_PREFETCH_ROWS: usize = 8;

/// Hints the cache lines of `len` contiguous floats at `p` into the caches (no-op off x86).
/// Safe for any pointer, in or out of any buffer: a prefetch never faults, and the addresses
/// are formed with wrapping arithmetic (no pointer is ever offset past its allocation).
#[inline(always)]
pub(crate) fn prefetch_span(p: *const f32, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        if len == 0 {
            return;
        }
        let bytes = p as *const i8;
        for off in (0..len * 4).step_by(64) {
            // SAFETY: PREFETCHT0 is a hint: it reads nothing architecturally and never faults,
            // whatever the address; SSE is part of x86_64.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.wrapping_add(off)) };
        }
        // the last line, when the span does not start on a line boundary
        // SAFETY: as above.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.wrapping_add(len * 4 - 1)) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// Packs A[mc, kc] (strided) into micro-panels: panel q holds rows q*MR.. as [kc][MR], zero-padded.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pack_a(
    isa: Isa,
    mc: usize,
    kc: usize,
    mr: usize,
    a: *const f32,
    rs: usize,
    cs: usize,
    out: &mut [f32],
) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
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
                    prefetch_span(row.wrapping_add(PACK_PREFETCH_ROWS * cs), full_panels * mr);
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
}

/// Packs B[kc, nc] (strided) into micro-panels: panel q holds columns q*NR.. as [kc][NR].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pack_b(
    isa: Isa,
    kc: usize,
    nc: usize,
    nr: usize,
    b: *const f32,
    rs: usize,
    cs: usize,
    out: &mut [f32],
) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
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
                    prefetch_span(row.wrapping_add(PACK_PREFETCH_ROWS * rs), full_panels * nr);
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
}

/// Copies one MR or NR row of a panel. With the width known at compile time this is a few
/// vector moves; `copy_nonoverlapping` with a run-time length is a call into libc's memmove
/// per row (9% of a BERT step went there).
#[inline(always)]
pub(super) unsafe fn copy_micro_row(src: *const f32, dst: *mut f32, n: usize) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        #[inline(always)]
        pub(super) unsafe fn fixed<const N: usize>(src: *const f32, dst: *mut f32) {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
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
}

/// out[p * width + r] = src[r * stride + p] for r < rows, p < kc; zeros for rows..width.
///
/// The packing step both operands need when their K axis is the contiguous one (A row-major,
/// or B transposed). Element by element this is a scatter with a `width`-float stride, about
/// 4.5 cycles per element here (13% of a BERT training step went to it); the AVX path moves
/// 8 x 8 and 4 x 8 blocks through register transposes instead.
pub(super) unsafe fn pack_transposed(
    isa: Isa,
    rows: usize,
    kc: usize,
    width: usize,
    src: *const f32,
    stride: usize,
    out: &mut [f32],
) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        debug_assert!(rows <= width && width <= MAX_PANEL_WIDTH && out.len() >= kc * width);
        let mut row_ptrs = [std::ptr::null(); MAX_PANEL_WIDTH];
        for (r, ptr) in row_ptrs.iter_mut().enumerate().take(rows) {
            *ptr = src.add(r * stride);
        }
        pack_rows_transposed(isa, &row_ptrs[..rows], kc, width, out);
    }
}

/// The widest micro-panel any path packs (NR of the AVX-512 kernel).
pub(crate) const MAX_PANEL_WIDTH: usize = 32;

/// [`pack_transposed`] with each source row given by its own pointer (rows of an implicit
/// im2col matrix live in different places of the image): out[p * width + r] = rows[r][p] for
/// p < kc, and zero for rows.len() <= r < width.
pub(crate) unsafe fn pack_rows_transposed(isa: Isa, rows: &[*const f32], kc: usize, width: usize, out: &mut [f32]) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
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
}

/// Scalar reference of [`pack_transposed`].
#[cfg(test)]
pub(super) unsafe fn pack_transposed_reference(
    rows: usize,
    kc: usize,
    width: usize,
    src: *const f32,
    stride: usize,
    out: &mut [f32],
) {
    // SAFETY: callers guarantee the pointers are valid for what this reads and writes,
    // and the CPU features of the vector type in use.
    unsafe {
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
}
