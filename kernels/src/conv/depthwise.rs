//! Depthwise NHWC convolution (channel multiplier 1), fast paths vectorised along channels:
//! sliding-window runs for the forward and the weight gradient, the stride-1 input gradient as
//! the forward on the flipped kernel.

use super::*;
use crate::parallel;
use crate::simd::Isa;
use crate::vec::Scalar;
use rayon::prelude::*;

// ---------------------------------------------------------------------------------------------
// Depthwise: vectorised along channels, threaded over images (forward, input gradient) or over
// images with per-thread partial sums (weight gradient).
// ---------------------------------------------------------------------------------------------

mod dw_generic {
    use super::ConvGeometry;
    use crate::vec::F32Vec;

    /// Output pixels per register block of the forward.
    const PIXELS: usize = 4;

    /// Forward for one image: every output pixel accumulates its taps in registers and is
    /// stored once. Where a run of PIXELS neighbouring outputs has all its taps inside the
    /// image (every pixel but a few at the left and right edges), the run is computed together:
    /// each weight vector is loaded once per tap for all PIXELS outputs, which takes the loop
    /// from two loads per FMA (load-bound) to 1.25. Per output element the taps are summed in
    /// the same (kh, kw) order either way, so results do not depend on the blocking.
    ///
    /// Kernels 3 and 5 wide at stride 1 or 2 go further: runs of SLIDE_PIXELS outputs keep
    /// the row of K weight vectors in registers and load each input column once for every
    /// output that uses it ([`forward_slide`]).
    #[inline(always)]
    pub unsafe fn forward_image<V: F32Vec>(x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            match (g.k_w, g.stride_w) {
                (3, 1) => forward_image_k::<V, 3, 1>(x, w, y, g),
                (3, 2) => forward_image_k::<V, 3, 2>(x, w, y, g),
                (5, 1) => forward_image_k::<V, 5, 1>(x, w, y, g),
                (5, 2) => forward_image_k::<V, 5, 2>(x, w, y, g),
                _ => forward_image_k::<V, 0, 0>(x, w, y, g),
            }
        }
    }

    /// Outputs per sliding-window run (with two channel vectors: 8 accumulators, 2K weights
    /// and 2 inputs in registers; 8 outputs needed 28 and spilled).
    const SLIDE_PIXELS: usize = 4;
    /// How many output columns ahead [`prefetch_new_rows`] fetches.
    const PREFETCH_COLUMNS: usize = 8;

    /// Asks for the input pixels that output row `oh` is the first to read (its window's
    /// bottom S rows), under output columns ow..ow + SLIDE_PIXELS. Those rows come from
    /// memory, a page at a time past the hardware prefetcher's reach: one FMA loading from a
    /// fresh line held 18% of the 5x5 forward's samples. Called PREFETCH_COLUMNS ahead.
    #[inline(always)]
    pub(super) fn prefetch_new_rows<const K: usize, const S: usize>(x: &[f32], g: &ConvGeometry, oh: usize, ow: usize) {
        if ow >= g.out_w {
            return;
        }
        let last = (ow + SLIDE_PIXELS).min(g.out_w) - 1;
        let (Some(iw0), Some(iw1)) = (
            g.input_col(ow, 0).or_else(|| g.input_col(ow, g.k_w - 1)),
            g.input_col(last, K - 1).or_else(|| g.input_col(last, 0)),
        ) else {
            return;
        };
        for kh in K.saturating_sub(S)..K {
            if let Some(ih) = g.input_row(oh, kh) {
                let start = (ih * g.in_w + iw0) * g.c_in;
                let len = (iw1 + 1).saturating_sub(iw0) * g.c_in;
                if start + len <= x.len() {
                    crate::gemm::prefetch_span(x.as_ptr().wrapping_add(start), len);
                }
            }
        }
    }

    /// [`forward_image`] for kernel width K and stride S known at compile time (K = 0: any,
    /// without sliding-window runs).
    #[inline(always)]
    pub(super) unsafe fn forward_image_k<V: F32Vec, const K: usize, const S: usize>(
        x: &[f32],
        w: &[f32],
        y: &mut [f32],
        g: &ConvGeometry,
    ) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            for oh in 0..g.out_h {
                let mut ow = 0;
                while ow < g.out_w {
                    if K > 0
                        && ow + SLIDE_PIXELS <= g.out_w
                        && g.input_col(ow, 0).is_some()
                        && g.input_col(ow + SLIDE_PIXELS - 1, K - 1).is_some()
                    {
                        prefetch_new_rows::<K, S>(x, g, oh, ow + PREFETCH_COLUMNS);
                        let mut cb = 0;
                        // Two vectors of channels per run where they fit: each input column then
                        // feeds up to 2 min(K, P) independent FMAs, enough to cover the FMA
                        // latency (with one vector the chain through each accumulator limited
                        // the loop to about 1.25 FMAs per cycle).
                        if V::LANES >= 16 {
                            while cb + 2 * V::LANES <= g.c_in {
                                forward_slide::<V, 2, K, S>(x, w, y, g, oh, ow, cb);
                                cb += 2 * V::LANES;
                            }
                        }
                        while cb + V::LANES <= g.c_in {
                            forward_slide::<V, 1, K, S>(x, w, y, g, oh, ow, cb);
                            cb += V::LANES;
                        }
                        if cb < g.c_in {
                            for p in 0..SLIDE_PIXELS {
                                forward_pixel::<V>(x, w, y, g, oh, ow + p, cb);
                            }
                        }
                        ow += SLIDE_PIXELS;
                        continue;
                    }
                    let interior = ow + PIXELS <= g.out_w
                        && g.input_col(ow, 0).is_some()
                        && g.input_col(ow + PIXELS - 1, g.k_w - 1).is_some();
                    if !interior {
                        forward_pixel::<V>(x, w, y, g, oh, ow, 0);
                        ow += 1;
                        continue;
                    }
                    let mut cb = 0;
                    while cb + 2 * V::LANES <= g.c_in {
                        forward_run::<V, 2>(x, w, y, g, oh, ow, cb);
                        cb += 2 * V::LANES;
                    }
                    if cb + V::LANES <= g.c_in {
                        forward_run::<V, 1>(x, w, y, g, oh, ow, cb);
                        cb += V::LANES;
                    }
                    if cb < g.c_in {
                        for p in 0..PIXELS {
                            forward_pixel::<V>(x, w, y, g, oh, ow + p, cb);
                        }
                    }
                    ow += PIXELS;
                }
            }
        }
    }

    /// PIXELS outputs (oh, ow..ow + PIXELS), channels cb..cb + VECS * LANES; every tap of
    /// these outputs is inside the image horizontally.
    #[inline(always)]
    pub(super) unsafe fn forward_run<V: F32Vec, const VECS: usize>(
        x: &[f32],
        w: &[f32],
        y: &mut [f32],
        g: &ConvGeometry,
        oh: usize,
        ow: usize,
        cb: usize,
    ) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            let c = g.c_in;
            let (xp, wp, yp) = (x.as_ptr(), w.as_ptr(), y.as_mut_ptr());
            let iw0 = ow * g.stride_w - g.pad_left; // input column of tap 0 of the first output
            let mut acc = [[V::splat(0.0); VECS]; PIXELS];
            for kh in 0..g.k_h {
                let Some(ih) = g.input_row(oh, kh) else { continue };
                let row = xp.add(ih * g.in_w * c + cb);
                for kw in 0..g.k_w {
                    let wb = wp.add((kh * g.k_w + kw) * c + cb);
                    let mut wv = [V::splat(0.0); VECS];
                    for (j, v) in wv.iter_mut().enumerate() {
                        *v = V::load(wb.add(j * V::LANES));
                    }
                    for (p, acc_p) in acc.iter_mut().enumerate() {
                        let xb = row.add((iw0 + p * g.stride_w + kw) * c);
                        for j in 0..VECS {
                            acc_p[j] = V::load(xb.add(j * V::LANES)).mul_add(wv[j], acc_p[j]);
                        }
                    }
                }
            }
            for (p, acc_p) in acc.iter().enumerate() {
                let yo = (oh * g.out_w + ow + p) * c + cb;
                for (j, a) in acc_p.iter().enumerate() {
                    a.store(yp.add(yo + j * V::LANES));
                }
            }
        }
    }

    /// SLIDE_PIXELS outputs (oh, ow..), channels cb..cb + VECS * LANES, kernel width K and
    /// stride S, every tap inside the image horizontally. Per kernel row: the K weight
    /// vectors are loaded once into registers; then input columns q = 0..(P-1)S + K are
    /// loaded one at a time, each feeding every output p with a tap kw = q - pS on it.
    /// That is (P-1)S + K + K loads for P K FMAs (0.65 per FMA at P = 4, K = 5, S = 1, against 1.25
    /// for a tap-by-tap run), so the loop is bound by FMAs, not loads. Each output still sums
    /// its taps in (kh, kw) order: for a fixed p, kw grows with q.
    #[inline(always)]
    pub(super) unsafe fn forward_slide<V: F32Vec, const VECS: usize, const K: usize, const S: usize>(
        x: &[f32],
        w: &[f32],
        y: &mut [f32],
        g: &ConvGeometry,
        oh: usize,
        ow: usize,
        cb: usize,
    ) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            const P: usize = SLIDE_PIXELS;
            let c = g.c_in;
            let (xp, wp, yp) = (x.as_ptr(), w.as_ptr(), y.as_mut_ptr());
            let iw0 = ow * S - g.pad_left; // input column of tap 0 of the first output
            let mut acc = [[V::splat(0.0); VECS]; P];
            for kh in 0..g.k_h {
                let Some(ih) = g.input_row(oh, kh) else { continue };
                let row = xp.add((ih * g.in_w + iw0) * c + cb);
                let mut wv = [[V::splat(0.0); VECS]; K];
                for (kw, wk) in wv.iter_mut().enumerate() {
                    for (j, v) in wk.iter_mut().enumerate() {
                        *v = V::load(wp.add((kh * K + kw) * c + cb + j * V::LANES));
                    }
                }
                // input columns q = 0..(P-1)S + K, spelled out so that every index is a constant
                // (as a loop the compiler kept the weights and accumulators in memory)
                macro_rules! columns {
                ($($q:literal)*) => {$(
                    if $q < (P - 1) * S + K {
                        slide_column::<V, VECS, K, S, $q>(row, c, &mut acc, &wv);
                    }
                )*};
            }
                columns!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18);
            }
            for (p, acc_p) in acc.iter().enumerate() {
                let yo = (oh * g.out_w + ow + p) * c + cb;
                for (j, a) in acc_p.iter().enumerate() {
                    a.store(yp.add(yo + j * V::LANES));
                }
            }
        }
    }

    /// Input column Q of a [`forward_slide`] run: loaded once, added into every output p
    /// that has a tap kw = Q - pS on it.
    #[inline(always)]
    pub(super) unsafe fn slide_column<V: F32Vec, const VECS: usize, const K: usize, const S: usize, const Q: usize>(
        row: *const f32,
        c: usize,
        acc: &mut [[V; VECS]; SLIDE_PIXELS],
        wv: &[[V; VECS]; K],
    ) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            let mut xq = [V::splat(0.0); VECS];
            for (j, v) in xq.iter_mut().enumerate() {
                *v = V::load(row.add(Q * c + j * V::LANES));
            }
            for (p, acc_p) in acc.iter_mut().enumerate() {
                if Q >= p * S && Q - p * S < K {
                    let kw = Q - p * S;
                    for j in 0..VECS {
                        acc_p[j] = xq[j].mul_add(wv[kw][j], acc_p[j]);
                    }
                }
            }
        }
    }

    /// One output pixel, channels from `c_start` on: blocks of up to 4 vectors, then scalars.
    #[inline(always)]
    pub(super) unsafe fn forward_pixel<V: F32Vec>(
        x: &[f32],
        w: &[f32],
        y: &mut [f32],
        g: &ConvGeometry,
        oh: usize,
        ow: usize,
        c_start: usize,
    ) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            let c = g.c_in;
            let (xp, wp, yp) = (x.as_ptr(), w.as_ptr(), y.as_mut_ptr());
            let yo = (oh * g.out_w + ow) * c;
            let mut cb = c_start;
            while cb < c {
                let width = (c - cb).min(4 * V::LANES);
                let vecs = width / V::LANES;
                if vecs == 0 {
                    // scalar tail
                    for ch in cb..c {
                        let mut acc = 0.0f32;
                        for kh in 0..g.k_h {
                            let Some(ih) = g.input_row(oh, kh) else { continue };
                            for kw in 0..g.k_w {
                                let Some(iw) = g.input_col(ow, kw) else { continue };
                                acc += *xp.add((ih * g.in_w + iw) * c + ch) * *wp.add((kh * g.k_w + kw) * c + ch);
                            }
                        }
                        *yp.add(yo + ch) = acc;
                    }
                    break;
                }
                let mut acc = [V::splat(0.0); 4];
                for kh in 0..g.k_h {
                    let Some(ih) = g.input_row(oh, kh) else { continue };
                    for kw in 0..g.k_w {
                        let Some(iw) = g.input_col(ow, kw) else { continue };
                        let xb = xp.add((ih * g.in_w + iw) * c + cb);
                        let wb = wp.add((kh * g.k_w + kw) * c + cb);
                        for (j, a) in acc.iter_mut().enumerate().take(vecs) {
                            *a = V::load(xb.add(j * V::LANES)).mul_add(V::load(wb.add(j * V::LANES)), *a);
                        }
                    }
                }
                for (j, a) in acc.iter().enumerate().take(vecs) {
                    a.store(yp.add(yo + cb + j * V::LANES));
                }
                cb += vecs * V::LANES;
            }
        }
    }

    /// Output row of `ih` under tap `kh`, if that tap of some output reads input row `ih`.
    #[inline(always)]
    pub(super) fn out_index(i: usize, k: usize, pad: usize, stride: usize, out: usize) -> Option<usize> {
        let t = (i + pad).checked_sub(k)?;
        if t % stride != 0 {
            return None;
        }
        let o = t / stride;
        (o < out).then_some(o)
    }

    /// Input gradient for one image, gathered per input pixel (overwrites dx). At stride 1,
    /// runs of PIXELS neighbouring input pixels whose taps all land inside dy are computed
    /// together, as in the forward (same tap order per element, so the same results).
    #[inline(always)]
    pub unsafe fn backward_input_image<V: F32Vec>(dy: &[f32], w: &[f32], dx: &mut [f32], g: &ConvGeometry) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            for ih in 0..g.in_h {
                let mut iw = 0;
                while iw < g.in_w {
                    let interior = g.stride_w == 1
                        && iw + PIXELS <= g.in_w
                        && out_index(iw, g.k_w - 1, g.pad_left, 1, g.out_w).is_some()
                        && out_index(iw + PIXELS - 1, 0, g.pad_left, 1, g.out_w).is_some();
                    if !interior {
                        backward_input_pixel::<V>(dy, w, dx, g, ih, iw, 0);
                        iw += 1;
                        continue;
                    }
                    let mut cb = 0;
                    while cb + 2 * V::LANES <= g.c_in {
                        backward_input_run::<V, 2>(dy, w, dx, g, ih, iw, cb);
                        cb += 2 * V::LANES;
                    }
                    if cb + V::LANES <= g.c_in {
                        backward_input_run::<V, 1>(dy, w, dx, g, ih, iw, cb);
                        cb += V::LANES;
                    }
                    if cb < g.c_in {
                        for p in 0..PIXELS {
                            backward_input_pixel::<V>(dy, w, dx, g, ih, iw + p, cb);
                        }
                    }
                    iw += PIXELS;
                }
            }
        }
    }

    /// PIXELS input pixels (ih, iw..iw + PIXELS) at stride 1, channels cb..cb + VECS * LANES.
    #[inline(always)]
    pub(super) unsafe fn backward_input_run<V: F32Vec, const VECS: usize>(
        dy: &[f32],
        w: &[f32],
        dx: &mut [f32],
        g: &ConvGeometry,
        ih: usize,
        iw: usize,
        cb: usize,
    ) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            let c = g.c_in;
            let (gp, wp, dp) = (dy.as_ptr(), w.as_ptr(), dx.as_mut_ptr());
            let mut acc = [[V::splat(0.0); VECS]; PIXELS];
            for kh in 0..g.k_h {
                let Some(oh) = out_index(ih, kh, g.pad_top, g.stride_h, g.out_h) else { continue };
                let row = gp.add(oh * g.out_w * c + cb);
                for kw in 0..g.k_w {
                    let wb = wp.add((kh * g.k_w + kw) * c + cb);
                    let mut wv = [V::splat(0.0); VECS];
                    for (j, v) in wv.iter_mut().enumerate() {
                        *v = V::load(wb.add(j * V::LANES));
                    }
                    let ow0 = iw + g.pad_left - kw; // output column this tap reads for the first pixel
                    for (p, acc_p) in acc.iter_mut().enumerate() {
                        let gb = row.add((ow0 + p) * c);
                        for j in 0..VECS {
                            acc_p[j] = V::load(gb.add(j * V::LANES)).mul_add(wv[j], acc_p[j]);
                        }
                    }
                }
            }
            for (p, acc_p) in acc.iter().enumerate() {
                let xo = (ih * g.in_w + iw + p) * c + cb;
                for (j, a) in acc_p.iter().enumerate() {
                    a.store(dp.add(xo + j * V::LANES));
                }
            }
        }
    }

    /// One input pixel's gradient, channels from `c_start` on.
    #[inline(always)]
    pub(super) unsafe fn backward_input_pixel<V: F32Vec>(
        dy: &[f32],
        w: &[f32],
        dx: &mut [f32],
        g: &ConvGeometry,
        ih: usize,
        iw: usize,
        c_start: usize,
    ) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            let c = g.c_in;
            let (gp, wp, dp) = (dy.as_ptr(), w.as_ptr(), dx.as_mut_ptr());
            let xo = (ih * g.in_w + iw) * c;
            let mut cb = c_start;
            while cb < c {
                let width = (c - cb).min(4 * V::LANES);
                let vecs = width / V::LANES;
                if vecs == 0 {
                    for ch in cb..c {
                        let mut acc = 0.0f32;
                        for kh in 0..g.k_h {
                            let Some(oh) = out_index(ih, kh, g.pad_top, g.stride_h, g.out_h) else { continue };
                            for kw in 0..g.k_w {
                                let Some(ow) = out_index(iw, kw, g.pad_left, g.stride_w, g.out_w) else { continue };
                                acc += *gp.add((oh * g.out_w + ow) * c + ch) * *wp.add((kh * g.k_w + kw) * c + ch);
                            }
                        }
                        *dp.add(xo + ch) = acc;
                    }
                    break;
                }
                let mut acc = [V::splat(0.0); 4];
                for kh in 0..g.k_h {
                    let Some(oh) = out_index(ih, kh, g.pad_top, g.stride_h, g.out_h) else { continue };
                    for kw in 0..g.k_w {
                        let Some(ow) = out_index(iw, kw, g.pad_left, g.stride_w, g.out_w) else { continue };
                        let gb = gp.add((oh * g.out_w + ow) * c + cb);
                        let wb = wp.add((kh * g.k_w + kw) * c + cb);
                        for (j, a) in acc.iter_mut().enumerate().take(vecs) {
                            *a = V::load(gb.add(j * V::LANES)).mul_add(V::load(wb.add(j * V::LANES)), *a);
                        }
                    }
                }
                for (j, a) in acc.iter().enumerate().take(vecs) {
                    a.store(dp.add(xo + cb + j * V::LANES));
                }
                cb += vecs * V::LANES;
            }
        }
    }

    /// One pass of the depthwise weight gradient over the image for channels
    /// cb..cb + VECS * LANES: every kernel row's KW taps accumulate in registers.
    #[inline(always)]
    pub(super) unsafe fn weight_pass<V: F32Vec, const VECS: usize>(
        xp: *const f32,
        gp: *const f32,
        dp: *mut f32,
        g: &ConvGeometry,
        cb: usize,
    ) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            match (g.k_w, g.stride_w) {
                (3, 1) => weight_pass_k::<V, VECS, 3, 1>(xp, gp, dp, g, cb),
                (3, 2) => weight_pass_k::<V, VECS, 3, 2>(xp, gp, dp, g, cb),
                (5, 1) => weight_pass_k::<V, VECS, 5, 1>(xp, gp, dp, g, cb),
                (5, 2) => weight_pass_k::<V, VECS, 5, 2>(xp, gp, dp, g, cb),
                _ => weight_pass_k::<V, VECS, 0, 0>(xp, gp, dp, g, cb),
            }
        }
    }

    /// [`weight_pass`] for kernel width K and stride S known at compile time (K = 0: any).
    /// With K known, runs of SLIDE_PIXELS outputs whose taps are all inside the image go
    /// through [`weight_slide_column`]: each input column is loaded once and feeds every
    /// (output, tap) pair on it, as in the forward's sliding window (0.6 loads per FMA at
    /// K = 5, S = 1, against 1.2 tap by tap), with the K tap accumulators in registers.
    #[inline(always)]
    pub(super) unsafe fn weight_pass_k<V: F32Vec, const VECS: usize, const K: usize, const S: usize>(
        xp: *const f32,
        gp: *const f32,
        dp: *mut f32,
        g: &ConvGeometry,
        cb: usize,
    ) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            const MAX_KW: usize = 8;
            const P: usize = SLIDE_PIXELS;
            let c = g.c_in;
            for kh in 0..g.k_h {
                let mut acc = [[V::splat(0.0); VECS]; MAX_KW];
                for oh in 0..g.out_h {
                    let Some(ih) = g.input_row(oh, kh) else { continue };
                    let mut ow = 0;
                    while ow < g.out_w {
                        if K > 0
                            && ow + P <= g.out_w
                            && g.input_col(ow, 0).is_some()
                            && g.input_col(ow + P - 1, K - 1).is_some()
                        {
                            let mut gv = [[V::splat(0.0); VECS]; P];
                            for (p, gp_) in gv.iter_mut().enumerate() {
                                for (j, v) in gp_.iter_mut().enumerate() {
                                    *v = V::load(gp.add((oh * g.out_w + ow + p) * c + cb + j * V::LANES));
                                }
                            }
                            let row = xp.add((ih * g.in_w + ow * S - g.pad_left) * c + cb);
                            let mut acc_k = [[V::splat(0.0); VECS]; K];
                            for (kw, a) in acc_k.iter_mut().enumerate() {
                                *a = acc[kw];
                            }
                            macro_rules! columns {
                            ($($q:literal)*) => {$(
                                if $q < (P - 1) * S + K {
                                    weight_slide_column::<V, VECS, K, S, $q>(row, c, &mut acc_k, &gv);
                                }
                            )*};
                        }
                            columns!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18);
                            for (kw, a) in acc_k.iter().enumerate() {
                                acc[kw] = *a;
                            }
                            ow += P;
                            continue;
                        }
                        let gb = gp.add((oh * g.out_w + ow) * c + cb);
                        let mut gv = [V::splat(0.0); VECS];
                        for (j, v) in gv.iter_mut().enumerate() {
                            *v = V::load(gb.add(j * V::LANES));
                        }
                        for (kw, a) in acc.iter_mut().enumerate().take(g.k_w) {
                            let Some(iw) = g.input_col(ow, kw) else { continue };
                            let xb = xp.add((ih * g.in_w + iw) * c + cb);
                            for j in 0..VECS {
                                a[j] = V::load(xb.add(j * V::LANES)).mul_add(gv[j], a[j]);
                            }
                        }
                        ow += 1;
                    }
                }
                for (kw, a) in acc.iter().enumerate().take(g.k_w) {
                    let d = dp.add((kh * g.k_w + kw) * c + cb);
                    for (j, v) in a.iter().enumerate() {
                        V::load(d.add(j * V::LANES)).add(*v).store(d.add(j * V::LANES));
                    }
                }
            }
        }
    }

    /// Input column Q of a weight-gradient sliding run: loaded once, multiplied by the
    /// output gradient of every output p with a tap kw = Q - pS on it, into tap kw's sum.
    #[inline(always)]
    pub(super) unsafe fn weight_slide_column<
        V: F32Vec,
        const VECS: usize,
        const K: usize,
        const S: usize,
        const Q: usize,
    >(
        row: *const f32,
        c: usize,
        acc: &mut [[V; VECS]; K],
        gv: &[[V; VECS]; SLIDE_PIXELS],
    ) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            let mut xq = [V::splat(0.0); VECS];
            for (j, v) in xq.iter_mut().enumerate() {
                *v = V::load(row.add(Q * c + j * V::LANES));
            }
            for (p, g_p) in gv.iter().enumerate() {
                if Q >= p * S && Q - p * S < K {
                    let kw = Q - p * S;
                    for j in 0..VECS {
                        acc[kw][j] = xq[j].mul_add(g_p[j], acc[kw][j]);
                    }
                }
            }
        }
    }

    /// Accumulates one image's weight gradient into dw: for each kernel row and each vector of
    /// channels, the KW taps accumulate in registers over every output pixel.
    #[inline(always)]
    pub unsafe fn backward_weight_image<V: F32Vec>(x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeometry) {
        // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
        // offset it reads and writes, and any CPU feature its callees need.
        unsafe {
            const MAX_KW: usize = 8;
            let c = g.c_in;
            let (xp, gp, dp) = (x.as_ptr(), dy.as_ptr(), dw.as_mut_ptr());
            let full = c / V::LANES * V::LANES;
            if g.k_w <= MAX_KW {
                // two vectors of channels per pass over the image where they fit: half the passes
                // over x and dy (which live in L2), 2 x KW accumulators
                let mut cb = 0;
                while cb + 2 * V::LANES <= full {
                    weight_pass::<V, 2>(xp, gp, dp, g, cb);
                    cb += 2 * V::LANES;
                }
                if cb < full {
                    weight_pass::<V, 1>(xp, gp, dp, g, cb);
                }
            }
            let start = if g.k_w <= MAX_KW { full } else { 0 };
            if start < c {
                for oh in 0..g.out_h {
                    for kh in 0..g.k_h {
                        let Some(ih) = g.input_row(oh, kh) else { continue };
                        for ow in 0..g.out_w {
                            for kw in 0..g.k_w {
                                let Some(iw) = g.input_col(ow, kw) else { continue };
                                for ch in start..c {
                                    *dp.add((kh * g.k_w + kw) * c + ch) +=
                                        *xp.add((ih * g.in_w + iw) * c + ch) * *gp.add((oh * g.out_w + ow) * c + ch);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Which per-image depthwise routine to run.
#[derive(Clone, Copy)]
pub(super) enum DwOp {
    Forward,
    BackwardInput,
    BackwardWeight,
}

pub(super) fn dw_image(isa: Isa, op: DwOp, a: &[f32], b: &[f32], out: &mut [f32], g: &ConvGeometry) {
    macro_rules! run {
        ($v:ty, $op:expr, $a:expr, $b:expr, $out:expr, $g:expr) => {
            match $op {
                DwOp::Forward => dw_generic::forward_image::<$v>($a, $b, $out, $g),
                DwOp::BackwardInput => dw_generic::backward_input_image::<$v>($a, $b, $out, $g),
                DwOp::BackwardWeight => dw_generic::backward_weight_image::<$v>($a, $b, $out, $g),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(op: DwOp, a: &[f32], b: &[f32], out: &mut [f32], g: &ConvGeometry) {
            // SAFETY: callers guarantee a CPU with avx512f (they dispatch on `Isa::supported()`)
            // and pointers valid for what this reads and writes.
            unsafe { run!(crate::vec::x86::Avx512, op, a, b, out, g) }
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(op: DwOp, a: &[f32], b: &[f32], out: &mut [f32], g: &ConvGeometry) {
            // SAFETY: callers guarantee a CPU with avx2,fma (they dispatch on `Isa::supported()`)
            // and pointers valid for what this reads and writes.
            unsafe { run!(crate::vec::x86::Avx2, op, a, b, out, g) }
        }
        match isa {
            // SAFETY: the dispatcher only passes instruction sets the CPU supports.
            Isa::Avx512 => return unsafe { avx512(op, a, b, out, g) },
            Isa::Avx2 => return unsafe { avx2(op, a, b, out, g) },
            Isa::Portable => {}
        }
    }
    let _ = isa;
    // Portable: the same loops through the scalar-lane vector type.
    // SAFETY: the scalar lane type needs no CPU feature; the loops index within the image
    // slices dw_over_images cut to this image's sizes.
    unsafe { run!(Scalar, op, a, b, out, g) }
}

/// Runs `op` for every image, images spread over the kernel threads.
#[allow(clippy::too_many_arguments)]
pub(super) fn dw_over_images(
    isa: Isa,
    op: DwOp,
    a: &[f32],
    a_img: usize,
    b: &[f32],
    b_img: usize,
    out: &mut [f32],
    out_img: usize,
    g: &ConvGeometry,
) {
    let isa = isa.supported();
    let threads = parallel::num_threads();
    if threads <= 1 || g.batch == 1 {
        for n in 0..g.batch {
            dw_image(
                isa,
                op,
                &a[n * a_img..(n + 1) * a_img],
                &b[n * b_img..n * b_img + b_img.max(g.k_h * g.k_w * g.c_in)],
                &mut out[n * out_img..(n + 1) * out_img],
                g,
            );
        }
        return;
    }
    parallel::install(|| {
        out[..g.batch * out_img].par_chunks_mut(out_img).enumerate().for_each(|(n, o)| {
            dw_image(
                isa,
                op,
                &a[n * a_img..(n + 1) * a_img],
                &b[n * b_img..n * b_img + b_img.max(g.k_h * g.k_w * g.c_in)],
                o,
                g,
            );
        });
    });
}

/// Depthwise forward: y (N, OH, OW, C) from x (N, H, W, C) and w (KH, KW, C).
pub fn depthwise_forward(x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry) {
    g.assert_valid();
    let (xi, yi) = (g.in_h * g.in_w * g.c_in, g.out_h * g.out_w * g.c_in);
    dw_over_images(Isa::best(), DwOp::Forward, x, xi, w, 0, y, yi, g);
}

/// Depthwise input gradient (overwrites dx).
pub fn depthwise_backward_input(dy: &[f32], w: &[f32], dx: &mut [f32], g: &ConvGeometry) {
    g.assert_valid();
    if g.stride_h == 1 && g.stride_w == 1 && g.pad_top < g.k_h && g.pad_left < g.k_w {
        // Stride 1: as for the dense conv, the input gradient is the forward convolution of
        // dy with the kernel turned 180 degrees, padded by K - 1 - pad before, so it runs on
        // the forward's register-blocked, sliding-window loops.
        let flipped = ConvGeometry {
            in_h: g.out_h,
            in_w: g.out_w,
            pad_top: g.k_h - 1 - g.pad_top,
            pad_left: g.k_w - 1 - g.pad_left,
            out_h: g.in_h,
            out_w: g.in_w,
            ..*g
        };
        let c = g.c_in;
        let mut w_flipped = vec![0.0f32; g.k_h * g.k_w * c];
        for kh in 0..g.k_h {
            for kw in 0..g.k_w {
                let src = ((g.k_h - 1 - kh) * g.k_w + (g.k_w - 1 - kw)) * c;
                w_flipped[(kh * g.k_w + kw) * c..][..c].copy_from_slice(&w[src..src + c]);
            }
        }
        return depthwise_forward(dy, &w_flipped, dx, &flipped);
    }
    let (xi, yi) = (g.in_h * g.in_w * g.c_in, g.out_h * g.out_w * g.c_in);
    dx[..g.input_len()].fill(0.0);
    dw_over_images(Isa::best(), DwOp::BackwardInput, dy, yi, w, 0, dx, xi, g);
}

/// Depthwise weight gradient (overwrites dw): per-thread partial sums over images, then added.
pub fn depthwise_backward_weight(x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeometry) {
    g.assert_valid();
    let isa = Isa::best().supported();
    let (xi, yi, wl) = (g.in_h * g.in_w * g.c_in, g.out_h * g.out_w * g.c_in, g.k_h * g.k_w * g.c_in);
    let threads = parallel::num_threads().min(g.batch).max(1);
    let chunk = g.batch.div_ceil(threads);
    let partials: Vec<Vec<f32>> = parallel::install(|| {
        (0..threads)
            .into_par_iter()
            .map(|t| {
                let mut acc = vec![0.0f32; wl];
                for n in t * chunk..((t + 1) * chunk).min(g.batch) {
                    dw_image(
                        isa,
                        DwOp::BackwardWeight,
                        &x[n * xi..(n + 1) * xi],
                        &dy[n * yi..(n + 1) * yi],
                        &mut acc,
                        g,
                    );
                }
                acc
            })
            .collect()
    });
    dw[..wl].fill(0.0);
    for p in partials {
        for (d, v) in dw.iter_mut().zip(p) {
            *d += v;
        }
    }
}
