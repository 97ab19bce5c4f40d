//! Dense NHWC convolution, fast paths: the implicit-GEMM forward (patch panels packed from
//! the image, or gathered straight from it on AVX-512), the K-pair 1x1 kernel, the input
//! gradient (col2im, or the forward on the flipped kernel at stride 1) and the weight gradient
//! (patch rows packed, or gathered by columns on AVX-512).

use super::*;

// =============================================================================================
// Fast paths. Same contracts as the references above; tests compare the two.
// =============================================================================================

use crate::gemm::{pack_rows_transposed, sgemm, GemmStrides, PanelGemm, MAX_PANEL_WIDTH};
use crate::parallel::{self, SharedPtr};
use crate::simd::Isa;
use rayon::prelude::*;

impl ConvGeometry {
    pub(super) fn is_pointwise(&self) -> bool {
        self.k_h == 1
            && self.k_w == 1
            && self.stride_h == 1
            && self.stride_w == 1
            && self.pad_top == 0
            && self.pad_left == 0
    }
    /// Rows of the im2col matrix per image, and its width.
    pub(super) fn patch_dims(&self) -> (usize, usize) {
        (self.out_h * self.out_w, self.k_h * self.k_w * self.c_in)
    }
}

/// Output pixels per im2col block: the block's patch rows (block x KH*KW*C_in) stay in L2
/// between being written and being packed by the GEMM.
pub(super) const IM2COL_BLOCK: usize = 256;

/// Builds patch rows for output pixels [p0, p0 + rows) of one image.
pub(super) fn im2col_rows(x_img: &[f32], g: &ConvGeometry, p0: usize, rows: usize, col: &mut [f32]) {
    let c = g.c_in;
    let width = g.k_h * g.k_w * c;
    for r in 0..rows {
        let (oh, ow) = ((p0 + r) / g.out_w, (p0 + r) % g.out_w);
        let row = &mut col[r * width..(r + 1) * width];
        for kh in 0..g.k_h {
            for kw in 0..g.k_w {
                let dst = &mut row[(kh * g.k_w + kw) * c..(kh * g.k_w + kw + 1) * c];
                match (g.input_row(oh, kh), g.input_col(ow, kw)) {
                    (Some(ih), Some(iw)) => {
                        copy_floats(&x_img[(ih * g.in_w + iw) * c..(ih * g.in_w + iw + 1) * c], dst)
                    }
                    _ => dst.fill(0.0),
                }
            }
        }
    }
}

/// dst = src (equal lengths) in fixed 4-float pieces (one 128-bit move each; MR = 12 and
/// the usual channel counts need no scalar tail): `copy_from_slice` of a run-time length is
/// a call into libc's memmove, which for one pixel's few dozen channels cost more than the
/// copy (13% of a 3 x 3 conv's training step).
#[inline(always)]
pub(super) fn copy_floats(src: &[f32], dst: &mut [f32]) {
    let mut d = dst.chunks_exact_mut(4);
    let mut s = src.chunks_exact(4);
    for (d4, s4) in (&mut d).zip(&mut s) {
        let s4: &[f32; 4] = s4.try_into().expect("chunk of 4");
        let d4: &mut [f32; 4] = d4.try_into().expect("chunk of 4");
        *d4 = *s4;
    }
    for (dv, sv) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *dv = *sv;
    }
}

/// Adds patch-row gradients for output pixels [p0, p0 + rows) back onto the image gradient.
pub(super) fn col2im_rows_add(col: &[f32], g: &ConvGeometry, p0: usize, rows: usize, dx_img: &mut [f32]) {
    let c = g.c_in;
    let width = g.k_h * g.k_w * c;
    for r in 0..rows {
        let (oh, ow) = ((p0 + r) / g.out_w, (p0 + r) % g.out_w);
        let row = &col[r * width..(r + 1) * width];
        for kh in 0..g.k_h {
            let Some(ih) = g.input_row(oh, kh) else { continue };
            for kw in 0..g.k_w {
                let Some(iw) = g.input_col(ow, kw) else { continue };
                let src = &row[(kh * g.k_w + kw) * c..(kh * g.k_w + kw + 1) * c];
                let dst = &mut dx_img[(ih * g.in_w + iw) * c..(ih * g.in_w + iw + 1) * c];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += s;
                }
            }
        }
    }
}

/// Work items (image, first pixel, pixels) for the blocked im2col paths.
pub(super) fn pixel_blocks(g: &ConvGeometry) -> Vec<(usize, usize, usize)> {
    pixel_blocks_of(g, IM2COL_BLOCK)
}

/// Work items (image, first pixel, pixels) of `block` output pixels (the last of an image
/// shorter).
pub(super) fn pixel_blocks_of(g: &ConvGeometry, block: usize) -> Vec<(usize, usize, usize)> {
    let p = g.out_h * g.out_w;
    (0..g.batch).flat_map(|n| (0..p).step_by(block).map(move |p0| (n, p0, block.min(p - p0)))).collect()
}

/// Output pixels per work item of the gather forward: 22 tiles of 12. (With 256, the
/// blocked-im2col size, every block ended in a 4-pixel tile that cost a whole tile's
/// arithmetic and a bounds-checked segment build.)
pub(super) const GATHER_BLOCK: usize = 22 * 12;

/// Packs columns [pc, pc + kcb) of the (implicit) im2col matrix, for output pixels
/// q0..q0 + rows of one image, into an MR-wide A panel: panel[k * MR + r] is input element
/// (tap, channel) = divmod(pc + k, C_in) under output pixel q0 + r, or 0 in the padding.
/// Each tap contributes a run of channels that is contiguous in NHWC, so a panel is a handful
/// of small transposes from up to MR row pointers; no patch matrix is ever written.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_patch_panel(
    gemm: &PanelGemm,
    g: &ConvGeometry,
    x_img: &[f32],
    zeros: &[f32],
    q0: usize,
    rows: usize,
    pc: usize,
    kcb: usize,
    panel: &mut [f32],
) {
    let c = g.c_in;
    let mut row_ptrs = [std::ptr::null(); MAX_PANEL_WIDTH];
    // (output row, output column) of each panel row, walked without a division per row
    let mut pixel = [(0usize, 0usize); MAX_PANEL_WIDTH];
    let (mut oh, mut ow) = (q0 / g.out_w, q0 % g.out_w);
    for slot in pixel.iter_mut().take(rows) {
        *slot = (oh, ow);
        ow += 1;
        if ow == g.out_w {
            (oh, ow) = (oh + 1, 0);
        }
    }
    for tap in pc / c..(pc + kcb).div_ceil(c) {
        let (kh, kw) = (tap / g.k_w, tap % g.k_w);
        // the channels of this tap that fall in [pc, pc + kcb)
        let lo = pc.max(tap * c) - tap * c;
        let hi = (pc + kcb).min((tap + 1) * c) - tap * c;
        for (ptr, &(oh, ow)) in row_ptrs.iter_mut().zip(&pixel).take(rows) {
            *ptr = match (g.input_row(oh, kh), g.input_col(ow, kw)) {
                (Some(ih), Some(iw)) => x_img[(ih * g.in_w + iw) * c + lo..].as_ptr(),
                _ => zeros[lo..].as_ptr(), // `zeros` holds C_in zeros
            };
        }
        // SAFETY: every row pointer has hi - lo readable floats (a pixel's channels lo..hi, or
        // the zero row); the panel segment holds (hi - lo) * MR floats.
        unsafe {
            pack_rows_transposed(
                gemm.isa,
                &row_ptrs[..rows],
                hi - lo,
                gemm.mr,
                &mut panel[(tap * c + lo - pc) * gemm.mr..],
            )
        };
    }
}

/// One stretch of the K axis for `PanelGemm::gather_tile` on an edge tile: for each of the
/// 12 rows of the tile, a pointer to `len` consecutive A elements.
#[derive(Clone, Copy)]
pub(super) struct RowSegment {
    pub(super) rows: [*const f32; 12],
    pub(super) len: usize,
}

/// The A operand of the implicit GEMM for output pixels q0..q0 + rows of one image and
/// columns [pc, pc + kcb) of the im2col matrix, as row-pointer segments for
/// `PanelGemm::gather_tile`: one segment per tap, each row pointing at that pixel's input
/// channels under the tap (or at `zeros` in the padding, and for rows past `rows`). For
/// tiles at the image's edges; the others take [`window_corners`] and [`tap_runs`].
#[allow(clippy::too_many_arguments)]
pub(super) fn patch_segments(
    g: &ConvGeometry,
    x_img: &[f32],
    zeros: &[f32],
    q0: usize,
    rows: usize,
    pc: usize,
    kcb: usize,
    out: &mut Vec<RowSegment>,
) {
    let c = g.c_in;
    out.clear();
    let mut pixel = [(0usize, 0usize); 12];
    let (mut oh, mut ow) = (q0 / g.out_w, q0 % g.out_w);
    for slot in pixel.iter_mut().take(rows) {
        *slot = (oh, ow);
        ow += 1;
        if ow == g.out_w {
            (oh, ow) = (oh + 1, 0);
        }
    }
    // Rows whose whole window is inside the image take their window corner plus the tap's
    // offset; only the rows on the padding check each tap.
    let mut corner = [None; 12];
    for (corner, &(oh, ow)) in corner.iter_mut().zip(&pixel).take(rows) {
        *corner = window_corner(g, oh, ow);
    }
    for tap in pc / c..(pc + kcb).div_ceil(c) {
        let (kh, kw) = (tap / g.k_w, tap % g.k_w);
        let lo = pc.max(tap * c) - tap * c;
        let hi = (pc + kcb).min((tap + 1) * c) - tap * c;
        let offset = (kh * g.in_w + kw) * c + lo;
        let mut seg = RowSegment { rows: [zeros[lo..].as_ptr(); 12], len: hi - lo };
        for ((ptr, &(oh, ow)), corner) in seg.rows.iter_mut().zip(&pixel).zip(&corner).take(rows) {
            if let Some(corner) = corner {
                *ptr = x_img[corner + offset..].as_ptr();
            } else if let (Some(ih), Some(iw)) = (g.input_row(oh, kh), g.input_col(ow, kw)) {
                *ptr = x_img[(ih * g.in_w + iw) * c + lo..].as_ptr();
            }
        }
        out.push(seg);
    }
}

/// One stretch of the K axis of the gather forward, the same for every tile inside the
/// image: each row reads `len` consecutive channels from its window corner plus `offset`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct TapRun {
    pub(super) offset: usize,
    pub(super) len: usize,
}

/// The taps of columns [pc, pc + kcb) of the im2col matrix as runs from a pixel's window
/// corner (its tap (0, 0) input pixel): tap (kh, kw), channels lo..hi, starts
/// (kh * W_in + kw) * C_in + lo floats further on. The same for every tile inside the image.
///
/// The taps of one kernel row read neighbouring input pixels, so their channel runs follow
/// one another in memory (and in the weight's (kh, kw, ci) order): they merge into one run
/// of up to K_W * C_in. A 3x3 tile then makes three calls of the segment loop, not nine,
/// each saving and restoring the 24 accumulators once.
pub(super) fn tap_runs(g: &ConvGeometry, pc: usize, kcb: usize) -> Vec<TapRun> {
    let c = g.c_in;
    let mut runs: Vec<TapRun> = Vec::new();
    for tap in pc / c..(pc + kcb).div_ceil(c) {
        let (kh, kw) = (tap / g.k_w, tap % g.k_w);
        let lo = pc.max(tap * c) - tap * c;
        let hi = (pc + kcb).min((tap + 1) * c) - tap * c;
        let run = TapRun { offset: (kh * g.in_w + kw) * c + lo, len: hi - lo };
        match runs.last_mut() {
            Some(last) if last.offset + last.len == run.offset => last.len += run.len,
            _ => runs.push(run),
        }
    }
    runs
}

/// The offset in its image of output pixel (oh, ow)'s window corner (the input pixel under
/// tap (0, 0)), when the whole window lies inside the image.
pub(super) fn window_corner(g: &ConvGeometry, oh: usize, ow: usize) -> Option<usize> {
    let (ih, iw) = (g.input_row(oh, 0)?, g.input_col(ow, 0)?);
    g.input_row(oh, g.k_h - 1)?;
    g.input_col(ow, g.k_w - 1)?;
    Some((ih * g.in_w + iw) * g.c_in)
}

/// For the 12 output pixels q0.. of one image: when every one's window lies inside the
/// image, the offsets of their window corners in the image (and true); else false. (With the
/// bounds of every row and tap checked in the segment builder, a tile's pointers cost a
/// third as much as its arithmetic; inside the image they are 12 additions.)
pub(super) fn window_corners(g: &ConvGeometry, q0: usize, corners: &mut [usize; 12]) -> bool {
    let (oh, ow) = (q0 / g.out_w, q0 % g.out_w);
    let rows_inside = |oh: usize| g.input_row(oh, 0).filter(|_| g.input_row(oh, g.k_h - 1).is_some());
    if ow + 12 <= g.out_w {
        // One output row: the first pixel's left tap and the last one's right tap bound all.
        let (Some(ih), Some(iw), Some(_)) = (rows_inside(oh), g.input_col(ow, 0), g.input_col(ow + 11, g.k_w - 1))
        else {
            return false;
        };
        for (r, corner) in corners.iter_mut().enumerate() {
            *corner = (ih * g.in_w + iw + r * g.stride_w) * g.c_in;
        }
        return true;
    }
    let (mut oh, mut ow) = (oh, ow);
    for corner in corners.iter_mut() {
        let Some(offset) = window_corner(g, oh, ow) else { return false };
        *corner = offset;
        ow += 1;
        if ow == g.out_w {
            (oh, ow) = (oh + 1, 0);
        }
    }
    true
}

/// y (N, OH, OW, C_out) = conv(x, w HWIO). A 1x1 stride-1 conv is one GEMM over all pixels.
/// Other kernels are an implicit GEMM: the weight, seen as a (KH*KW*C_in, C_out) matrix, is
/// packed once; each MR-pixel A panel is packed straight from the image (`pack_patch_panel`)
/// and multiplied at once while it sits in L1. Pixel blocks spread over the threads.
pub fn conv2d_forward(x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry) {
    conv2d_forward_with(Isa::best(), x, w, y, g)
}

/// [`conv2d_forward`] on a chosen instruction set (tests run every path the CPU has).
pub(crate) fn conv2d_forward_with(isa: Isa, x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry) {
    g.assert_valid();
    let gemm = PanelGemm::new(isa);
    if super::winograd::applies(g, &gemm) {
        return super::winograd::conv2d_forward_winograd(&gemm, x, w, y, g);
    }
    conv2d_forward_direct_with(isa, x, w, y, g)
}

/// [`conv2d_forward`] without the Winograd path: the implicit GEMM for every geometry (for
/// comparisons; `conv2d_forward` picks the faster path itself).
pub fn conv2d_forward_direct(x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry) {
    conv2d_forward_direct_with(Isa::best(), x, w, y, g)
}

/// [`conv2d_forward_direct`] on a chosen instruction set.
pub(crate) fn conv2d_forward_direct_with(isa: Isa, x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry) {
    g.assert_valid();
    let (p, kdim) = g.patch_dims();
    let gemm = PanelGemm::new(isa);
    if g.is_pointwise() && !gemm.can_gather() {
        let s = GemmStrides::row_major(g.c_in, g.c_out);
        crate::gemm::sgemm_with(gemm.isa, parallel::num_threads(), g.batch * p, g.c_in, g.c_out, 1.0, x, w, 0.0, y, s);
        return;
    }
    assert!(x.len() >= g.input_len() && y.len() >= g.output_len() && w.len() >= kdim * g.c_out);
    if gemm.can_gather() && g.is_pointwise() && g.c_in.is_multiple_of(2) && (17..=24).contains(&g.c_out) {
        return conv1x1_forward_k_pairs(&gemm, x, w, y, g);
    }
    if gemm.can_gather() {
        return conv2d_forward_gather(&gemm, x, w, y, g);
    }
    let img = g.in_h * g.in_w * g.c_in;
    let (mr, nr, kc) = (gemm.mr, gemm.nr, gemm.kc);
    // (kdim, C_out) weight in NR-wide panels per block of K, shared by all threads
    let packed_w = gemm.pack_b(kdim, g.c_out, w, g.c_out);
    let padded = gemm.padded_cols(g.c_out);
    let yp = SharedPtr(y.as_mut_ptr());
    let blocks = pixel_blocks(g);
    parallel::install(|| {
        blocks.par_iter().for_each_init(
            || (vec![0.0f32; mr * kc], vec![0.0f32; g.c_in]),
            |(panel, zeros), &(n, p0, rows)| {
                let x_img = &x[n * img..(n + 1) * img];
                for i0 in (0..rows).step_by(mr) {
                    let panel_rows = mr.min(rows - i0);
                    for pc in (0..kdim).step_by(kc) {
                        let kcb = kc.min(kdim - pc);
                        pack_patch_panel(&gemm, g, x_img, zeros, p0 + i0, panel_rows, pc, kcb, panel);
                        for jr in (0..g.c_out).step_by(nr) {
                            let b_panel = packed_w[pc * padded + jr * kcb..].as_ptr();
                            // SAFETY: this block alone writes output pixels p0.. of image n;
                            // the tile lies inside y (asserted above).
                            unsafe {
                                let c = yp.get().add((n * p + p0 + i0) * g.c_out + jr);
                                let beta = if pc == 0 { 0.0 } else { 1.0 };
                                gemm.tile(
                                    kcb,
                                    panel.as_ptr(),
                                    b_panel,
                                    c,
                                    g.c_out,
                                    beta,
                                    panel_rows,
                                    nr.min(g.c_out - jr),
                                );
                            }
                        }
                    }
                }
            },
        );
    });
}

/// [`conv2d_forward`] on the AVX-512 gather kernel: the same blocking, but each MR-pixel
/// tile reads its A elements straight from the image through per-tap row pointers
/// ([`patch_segments`]) instead of a packed panel. 1 x 1 convolutions take this path too
/// (one tap): their pack was 40% of the time for 96 -> 24 channels.
pub(super) fn conv2d_forward_gather(gemm: &PanelGemm, x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry) {
    let (p, kdim) = g.patch_dims();
    let img = g.in_h * g.in_w * g.c_in;
    let (mr, nr, kc) = (gemm.mr, gemm.nr, gemm.kc);
    let packed_w = gemm.pack_b(kdim, g.c_out, w, g.c_out);
    let padded = gemm.padded_cols(g.c_out);
    let yp = SharedPtr(y.as_mut_ptr());
    let blocks = pixel_blocks_of(g, GATHER_BLOCK);
    let pointwise = g.is_pointwise();
    // Per block of K, the taps as runs from a window corner, for the tiles inside the image.
    let runs: Vec<Vec<TapRun>> = (0..kdim).step_by(kc).map(|pc| tap_runs(g, pc, kc.min(kdim - pc))).collect();
    parallel::install(|| {
        blocks.par_iter().for_each_init(
            || (Vec::new(), vec![0.0f32; g.c_in]),
            |(segments, zeros), &(n, p0, rows)| {
                let x_img = &x[n * img..(n + 1) * img];
                let mut corners = [0usize; 12];
                for i0 in (0..rows).step_by(mr) {
                    let tile_rows = mr.min(rows - i0);
                    let inside = if pointwise {
                        // a 1x1 stride-1 unpadded conv reads pixel q for output pixel q: no
                        // window to check (rows past the tile's repeat its last pixel)
                        for (r, corner) in corners.iter_mut().enumerate() {
                            *corner = (p0 + i0 + r.min(tile_rows - 1)) * g.c_in;
                        }
                        true
                    } else {
                        tile_rows == 12 && window_corners(g, p0 + i0, &mut corners)
                    };
                    // SAFETY (wrapping_add): inside the image, corner + offset + len of every
                    // run stays inside x_img (the whole window does).
                    let bases: [*const f32; 12] = std::array::from_fn(|r| x_img.as_ptr().wrapping_add(corners[r]));
                    for (block, pc) in (0..kdim).step_by(kc).enumerate() {
                        let kcb = kc.min(kdim - pc);
                        if !inside {
                            patch_segments(g, x_img, zeros, p0 + i0, tile_rows, pc, kcb, segments);
                        }
                        for jr in (0..g.c_out).step_by(nr) {
                            let b_panel = packed_w[pc * padded + jr * kcb..].as_ptr();
                            // SAFETY: this block alone writes output pixels p0.. of image n;
                            // the tile lies inside y (asserted by the caller); every row
                            // pointer has its run's floats (a pixel's channels or the zero row).
                            unsafe {
                                let c = yp.get().add((n * p + p0 + i0) * g.c_out + jr);
                                let beta = if pc == 0 { 0.0 } else { 1.0 };
                                let cols = nr.min(g.c_out - jr);
                                if inside {
                                    // each run's row pointers: the 12 corners moved on by its offset
                                    let runs = runs[block].iter().map(|run| {
                                        (std::array::from_fn(|r| bases[r].wrapping_add(run.offset)), run.len)
                                    });
                                    gemm.gather_tile(runs, b_panel, c, g.c_out, beta, tile_rows, cols);
                                } else {
                                    let segments = segments.iter().map(|s| (s.rows, s.len));
                                    gemm.gather_tile(segments, b_panel, c, g.c_out, beta, tile_rows, cols);
                                }
                            }
                        }
                    }
                }
            },
        );
    });
}

/// A 1x1 convolution to 17..24 channels (EfficientNet's projections to 24) on the K-pair
/// kernel: 8 pixels by 24 outputs a tile, every FMA lane useful (the 32-wide tile would
/// waste a quarter), the pixels' channels read in place two at a time. The output is
/// (N*H*W, C_out) = x (N*H*W, C_in) W, one GEMM over all pixels.
pub(super) fn conv1x1_forward_k_pairs(gemm: &PanelGemm, x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry) {
    let (ci, co) = (g.c_in, g.c_out);
    let pixels = g.batch * g.in_h * g.in_w;
    assert!(x.len() >= pixels * ci && y.len() >= pixels * co && w.len() >= ci * co);
    let b = crate::gemm::interleave_k_pairs(w, ci, co);
    let yp = SharedPtr(y.as_mut_ptr());
    // blocks of 8-pixel tiles, a few per thread
    let block = (pixels.div_ceil(8 * parallel::num_threads() * 8) * 8).clamp(64, 4096);
    parallel::install(|| {
        (0..pixels.div_ceil(block)).into_par_iter().for_each(|q| {
            let (p0, p1) = (q * block, pixels.min(q * block + block));
            for t0 in (p0..p1).step_by(8) {
                let rows = 8.min(p1 - t0);
                // rows past the tile repeat its last pixel (read, not stored)
                let a: [*const f32; 8] = std::array::from_fn(|r| x[(t0 + r.min(rows - 1)) * ci..].as_ptr());
                // SAFETY: pixel rows have C_in floats each; the tile's output rows t0.. belong
                // to this block alone and lie inside y (asserted above).
                unsafe { gemm.k_pairs_tile(&a, ci, b.as_ptr(), yp.get().add(t0 * co), co, rows, co) };
            }
        });
    });
}

/// dx from dy: per block, dcol = dy W^T, then col2im-add (images in parallel; pointwise: one GEMM).
pub fn conv2d_backward_input(dy: &[f32], w: &[f32], dx: &mut [f32], g: &ConvGeometry) {
    g.assert_valid();
    let (p, kdim) = g.patch_dims();
    // W seen as (C_out, kdim) through strides: element (co, k) at w[k * c_out + co].
    let s = GemmStrides { a_row: g.c_out, a_col: 1, b_row: 1, b_col: g.c_out, c_row: kdim, c_col: 1 };
    if g.is_pointwise() {
        sgemm(g.batch * p, g.c_out, g.c_in, 1.0, dy, w, 0.0, dx, s);
        return;
    }
    if g.stride_h == 1 && g.stride_w == 1 && g.pad_top < g.k_h && g.pad_left < g.k_w {
        // Stride 1: the input gradient is itself a convolution, of dy with the kernel turned
        // 180 degrees and its channel axes swapped, padded by K - 1 - pad before:
        //   dx[ih, iw, ci] = sum over (kh', kw', co) of dy[ih + kh' - (KH-1-pad_top), ..., co]
        //                    * W[KH-1-kh', KW-1-kw', ci, co]
        // so it runs on the implicit-GEMM forward (no dcol matrix, no scattered col2im adds).
        let flipped = ConvGeometry {
            in_h: g.out_h,
            in_w: g.out_w,
            c_in: g.c_out,
            c_out: g.c_in,
            pad_top: g.k_h - 1 - g.pad_top,
            pad_left: g.k_w - 1 - g.pad_left,
            out_h: g.in_h,
            out_w: g.in_w,
            ..*g
        };
        // (KH, KW, C_out, C_in) from (KH, KW, C_in, C_out)
        let mut w_flipped = vec![0.0f32; kdim * g.c_out];
        for kh in 0..g.k_h {
            for kw in 0..g.k_w {
                let src = &w[((g.k_h - 1 - kh) * g.k_w + (g.k_w - 1 - kw)) * g.c_in * g.c_out..][..g.c_in * g.c_out];
                let dst = &mut w_flipped[(kh * g.k_w + kw) * g.c_out * g.c_in..][..g.c_out * g.c_in];
                for ci in 0..g.c_in {
                    for co in 0..g.c_out {
                        dst[co * g.c_in + ci] = src[ci * g.c_out + co];
                    }
                }
            }
        }
        conv2d_forward(dy, &w_flipped, dx, &flipped);
        return;
    }
    let img = g.in_h * g.in_w * g.c_in;
    let isa = Isa::best();
    dx[..g.input_len()].fill(0.0);
    parallel::install(|| {
        dx[..g.input_len()].par_chunks_mut(img).enumerate().for_each_init(
            || vec![0.0f32; IM2COL_BLOCK * kdim],
            |col, (n, dx_img)| {
                for p0 in (0..p).step_by(IM2COL_BLOCK) {
                    let rows = IM2COL_BLOCK.min(p - p0);
                    crate::gemm::sgemm_with(
                        isa,
                        1,
                        rows,
                        g.c_out,
                        kdim,
                        1.0,
                        &dy[(n * p + p0) * g.c_out..],
                        w,
                        0.0,
                        col,
                        s,
                    );
                    col2im_rows_add(col, g, p0, rows, dx_img);
                }
            },
        );
    });
}

/// dw (HWIO) from x and dy: per-thread partial sums of col^T dy over blocks, then added.
pub fn conv2d_backward_weight(x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeometry) {
    g.assert_valid();
    let (p, kdim) = g.patch_dims();
    if g.is_pointwise() {
        let m = g.batch * p;
        let s = GemmStrides { a_row: 1, a_col: g.c_in, b_row: g.c_out, b_col: 1, c_row: g.c_out, c_col: 1 };
        sgemm(g.c_in, m, g.c_out, 1.0, x, dy, 0.0, dw, s);
        return;
    }
    let gemm = PanelGemm::new(Isa::best());
    // Channels in whole 12-row panels but for at most 1/8 wasted rows (32: three panels, 36 rows)
    let panel_rows_used = g.c_in.div_ceil(gemm.mr) * gemm.mr * 8 <= g.c_in * 9;
    if gemm.can_gather() && panel_rows_used {
        return conv2d_backward_weight_gather(&gemm, x, dy, dw, g);
    }
    // dW (kdim, C_out) = col^T dy, one block of output pixels (the K axis) at a time. The
    // A operand, col^T, is packed straight into the micro-kernel's panels: each pixel's patch
    // row is assembled in an L1 buffer and dealt out MR floats per panel. (Writing the block's
    // im2col matrix and then packing its transpose moved every patch element through L2
    // twice more: im2col and packing were 28% of a 3x3 conv's training step.)
    let img = g.in_h * g.in_w * g.c_in;
    let (mr, nr) = (gemm.mr, gemm.nr);
    assert!(IM2COL_BLOCK <= gemm.kc, "a pixel block must be one block of K");
    let a_panels = kdim.div_ceil(mr);
    weight_gradient_over_blocks(g, dw, |chunk, acc| {
        // [panel][pixel][MR]: the MR-tall panels of col^T over one block of pixels
        let mut packed_a = vec![0.0f32; a_panels * mr * IM2COL_BLOCK];
        // one pixel's patch row, padded with zeros to whole panels
        let mut patch = vec![0.0f32; a_panels * mr];
        // the block's output gradient, packed into NR-wide panels (reused per block)
        let mut packed_dy = Vec::new();
        for &(n, p0, rows) in chunk {
            let x_img = &x[n * img..(n + 1) * img];
            for r in 0..rows {
                im2col_rows(x_img, g, p0 + r, 1, &mut patch[..kdim]);
                for (q, piece) in patch.chunks_exact(mr).enumerate() {
                    copy_floats(piece, &mut packed_a[(q * rows + r) * mr..][..mr]);
                }
            }
            gemm.pack_b_into(rows, g.c_out, &dy[(n * p + p0) * g.c_out..], g.c_out, &mut packed_dy);
            for q in 0..a_panels {
                for jr in (0..g.c_out).step_by(nr) {
                    // SAFETY: panel q holds rows x MR floats, the dy panel rows x NR;
                    // the C tile (rows q*MR.., columns jr..) lies inside acc.
                    unsafe {
                        gemm.tile(
                            rows,
                            packed_a[q * rows * mr..].as_ptr(),
                            packed_dy[jr * rows..].as_ptr(),
                            acc[q * mr * g.c_out + jr..].as_mut_ptr(),
                            g.c_out,
                            1.0,
                            mr.min(kdim - q * mr),
                            nr.min(g.c_out - jr),
                        )
                    };
                }
            }
        }
    });
}

/// The dense weight gradient's threading: the pixel blocks in one run per thread, each
/// thread summing its blocks' products into its own (kdim, C_out) buffer (`f(blocks, acc)`),
/// then dw = the buffers added in thread order.
pub(super) fn weight_gradient_over_blocks(
    g: &ConvGeometry,
    dw: &mut [f32],
    f: impl Fn(&[(usize, usize, usize)], &mut [f32]) + Sync,
) {
    let (_, kdim) = g.patch_dims();
    let blocks = pixel_blocks(g);
    let per = blocks.len().div_ceil(parallel::num_threads().max(1));
    let partials: Vec<Vec<f32>> = parallel::install(|| {
        blocks
            .par_chunks(per.max(1))
            .map(|chunk| {
                let mut acc = vec![0.0f32; kdim * g.c_out];
                f(chunk, &mut acc);
                acc
            })
            .collect()
    });
    dw[..kdim * g.c_out].fill(0.0);
    for part in partials {
        for (d, v) in dw.iter_mut().zip(part) {
            *d += v;
        }
    }
}

/// The weight gradient on the column-gather kernel (AVX-512): dW (kdim, C_out) = col^T dy
/// with no im2col at all. For one block of output pixels (the K axis) and one tap, column k
/// of a 12-row panel of col^T is 12 consecutive channels of the input pixel under that
/// tap, so the kernel reads it from the image through one pointer per pixel
/// (`PanelGemm::gather_columns_tile`). Per block, the pointers (taps x pixels, or a zero row
/// in the padding) are all that is built. Panels stay inside one tap: C_in = 32 runs as
/// panels of 12, 12 and 8 rows. (The packed path moved every patch element twice, into a
/// patch row and then into the panels: 70% of the weight gradient's time at 3x3, 32 -> 32.)
pub(super) fn conv2d_backward_weight_gather(gemm: &PanelGemm, x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeometry) {
    let (p, _) = g.patch_dims();
    let (c, img, taps) = (g.c_in, g.in_h * g.in_w * g.c_in, g.k_h * g.k_w);
    let (mr, nr) = (gemm.mr, gemm.nr);
    // A panel's unused rows read up to `reach` floats from a pixel's first channel; only the
    // last pixel of x can run past its end, and reads a zero-padded copy instead.
    let reach = c.div_ceil(mr) * mr;
    let x_end = x.as_ptr() as usize + std::mem::size_of_val(x);
    weight_gradient_over_blocks(g, dw, |chunk, acc| {
        let zeros = vec![0.0f32; reach];
        let mut tail = vec![0.0f32; reach];
        // [tap][pixel of the block]: where column (tap, pixel) of col^T starts
        let mut columns = vec![std::ptr::null::<f32>(); taps * IM2COL_BLOCK];
        let mut packed_dy = Vec::new();
        for &(n, p0, rows) in chunk {
            let x_img = &x[n * img..(n + 1) * img];
            let (mut oh, mut ow) = (p0 / g.out_w, p0 % g.out_w);
            for r in 0..rows {
                for tap in 0..taps {
                    let (kh, kw) = (tap / g.k_w, tap % g.k_w);
                    columns[tap * IM2COL_BLOCK + r] = match (g.input_row(oh, kh), g.input_col(ow, kw)) {
                        (Some(ih), Some(iw)) => {
                            let pixel = &x_img[(ih * g.in_w + iw) * c..][..c];
                            if pixel.as_ptr() as usize + reach * 4 > x_end {
                                tail[..c].copy_from_slice(pixel);
                                tail.as_ptr()
                            } else {
                                pixel.as_ptr()
                            }
                        }
                        _ => zeros.as_ptr(),
                    };
                }
                ow += 1;
                if ow == g.out_w {
                    (oh, ow) = (oh + 1, 0);
                }
            }
            gemm.pack_b_into(rows, g.c_out, &dy[(n * p + p0) * g.c_out..], g.c_out, &mut packed_dy);
            for tap in 0..taps {
                let cols_of_tap = &columns[tap * IM2COL_BLOCK..][..rows];
                for ci0 in (0..c).step_by(mr) {
                    for jr in (0..g.c_out).step_by(nr) {
                        // SAFETY: every column pointer has `reach` >= ci0 + MR readable
                        // floats (a pixel inside x, the padded tail copy or the zero
                        // row); the dy panel holds rows x NR floats; the C tile (rows
                        // tap * C + ci0.., columns jr..) lies inside acc.
                        unsafe {
                            gemm.gather_columns_tile(
                                cols_of_tap,
                                ci0,
                                packed_dy[jr * rows..].as_ptr(),
                                acc[(tap * c + ci0) * g.c_out + jr..].as_mut_ptr(),
                                g.c_out,
                                mr.min(c - ci0),
                                nr.min(g.c_out - jr),
                            )
                        };
                    }
                }
            }
        }
    });
}
