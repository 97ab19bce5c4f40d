//! 2-D convolutions on channels-last (NHWC) data, forward and backward (reference versions),
//! and global average pooling.
//!
//! Weight layouts (ours; PyTorch's OIHW is transposed once at load time):
//! - dense conv: (KH, KW, C_in, C_out), "HWIO": one output pixel is a dot product of the
//!   (KH*KW*C_in) input patch with a column of the weight seen as a (KH*KW*C_in, C_out) matrix,
//!   which is exactly the GEMM that the fast path runs;
//! - depthwise conv (channel multiplier 1): (KH, KW, C), so the inner loop runs along channels,
//!   contiguous in both input and weight.
//!
//! Padding: TF "SAME" (output = ceil(in / stride), the total padding split with the smaller
//! half before), "VALID", or explicit per-side amounts as PyTorch's `padding=`.
//!
//! Fast paths (below the references), in the order a reader meets them:
//! - 3x3 stride-1 dense forward with 16+ channels on AVX-512: Winograd F(4x4, 3x3)
//!   (`crate::winograd`), 4x fewer multiplications; `conv2d_forward_direct` skips it;
//! - dense forward: an implicit GEMM. On AVX-512 the micro-kernel broadcasts each patch
//!   element straight from the image: tiles inside the image through their 12 window
//!   corners plus one run per kernel row (`window_corners`, `tap_runs`), edge tiles through
//!   per-tap row pointers (`patch_segments`); elsewhere each 12-pixel A panel is packed from
//!   the image (`pack_patch_panel`). The stride-1 input gradient is the same forward on the
//!   kernel turned 180 degrees;
//! - dense weight gradient: on AVX-512, col^T read from the image by a column-gather kernel,
//!   one pointer per (tap, pixel) (`conv2d_backward_weight_gather`); elsewhere col^T packed
//!   into micro-kernel panels one pixel's patch row at a time; both tile against the packed
//!   output gradient;
//! - depthwise: vectorised along channels; sliding-window runs (`forward_slide`, the weight
//!   gradient's `weight_slide_column`) load each input column once for every output and tap
//!   on it, the forward prefetching the input rows it is first to read
//!   (`prefetch_new_rows`); the stride-1 input gradient is the forward on the flipped kernel.

/// How a convolution pads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// TensorFlow's SAME: out = ceil(in / stride); pad = max((out - 1) * stride + k - in, 0),
    /// floor(pad / 2) before and the rest after.
    Same,
    /// No padding.
    Valid,
    /// Explicit zeros on each side.
    Explicit { top: usize, bottom: usize, left: usize, right: usize },
}

/// Everything a conv kernel needs to know about its shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub k_h: usize,
    pub k_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

/// (output size, padding before) along one axis.
fn axis_geometry(
    input: usize,
    k: usize,
    stride: usize,
    before: usize,
    after: usize,
    same: bool,
) -> Result<(usize, usize), String> {
    if same {
        let out = input.div_ceil(stride);
        let total = ((out.max(1) - 1) * stride + k).saturating_sub(input);
        return Ok((out, total / 2));
    }
    let padded = input + before + after;
    if padded < k {
        return Err(format!("kernel {k} larger than padded input {padded}"));
    }
    Ok(((padded - k) / stride + 1, before))
}

impl ConvGeometry {
    /// Geometry of a conv over (batch, in_h, in_w, c_in) with a (k_h, k_w) kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        batch: usize,
        in_h: usize,
        in_w: usize,
        c_in: usize,
        c_out: usize,
        (k_h, k_w): (usize, usize),
        (stride_h, stride_w): (usize, usize),
        padding: Padding,
    ) -> Result<ConvGeometry, String> {
        if k_h == 0 || k_w == 0 || stride_h == 0 || stride_w == 0 {
            return Err(format!("kernel {k_h}x{k_w} and stride {stride_h}x{stride_w} must be positive"));
        }
        let (t, b, l, r, same) = match padding {
            Padding::Same => (0, 0, 0, 0, true),
            Padding::Valid => (0, 0, 0, 0, false),
            Padding::Explicit { top, bottom, left, right } => (top, bottom, left, right, false),
        };
        let (out_h, pad_top) = axis_geometry(in_h, k_h, stride_h, t, b, same)?;
        let (out_w, pad_left) = axis_geometry(in_w, k_w, stride_w, l, r, same)?;
        Ok(ConvGeometry {
            batch,
            in_h,
            in_w,
            c_in,
            c_out,
            k_h,
            k_w,
            stride_h,
            stride_w,
            pad_top,
            pad_left,
            out_h,
            out_w,
        })
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.in_h * self.in_w * self.c_in
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.out_h * self.out_w * self.c_out
    }

    /// Input row / column read by output position `o` and kernel tap `k`, if inside the image.
    #[inline]
    pub fn input_row(&self, oh: usize, kh: usize) -> Option<usize> {
        (oh * self.stride_h + kh).checked_sub(self.pad_top).filter(|&i| i < self.in_h)
    }

    #[inline]
    pub fn input_col(&self, ow: usize, kw: usize) -> Option<usize> {
        (ow * self.stride_w + kw).checked_sub(self.pad_left).filter(|&i| i < self.in_w)
    }
}

/// Calls `f(n, oh, ow, ih, iw, kh, kw)` for every (output pixel, in-image kernel tap) pair.
fn for_each_tap(g: &ConvGeometry, mut f: impl FnMut(usize, usize, usize, usize, usize, usize, usize)) {
    for n in 0..g.batch {
        for oh in 0..g.out_h {
            for kh in 0..g.k_h {
                let Some(ih) = g.input_row(oh, kh) else { continue };
                for ow in 0..g.out_w {
                    for kw in 0..g.k_w {
                        let Some(iw) = g.input_col(ow, kw) else { continue };
                        f(n, oh, ow, ih, iw, kh, kw);
                    }
                }
            }
        }
    }
}

/// y (N, OH, OW, C_out) = conv(x (N, H, W, C_in), w (KH, KW, C_in, C_out)).
pub fn conv2d_forward_reference(x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry) {
    y[..g.output_len()].fill(0.0);
    for_each_tap(g, |n, oh, ow, ih, iw, kh, kw| {
        let xi = ((n * g.in_h + ih) * g.in_w + iw) * g.c_in;
        let yi = ((n * g.out_h + oh) * g.out_w + ow) * g.c_out;
        for ci in 0..g.c_in {
            let xv = x[xi + ci];
            let wi = ((kh * g.k_w + kw) * g.c_in + ci) * g.c_out;
            for co in 0..g.c_out {
                y[yi + co] += xv * w[wi + co];
            }
        }
    });
}

/// dx (N, H, W, C_in) from dy (N, OH, OW, C_out) and w. Overwrites dx.
pub fn conv2d_backward_input_reference(dy: &[f32], w: &[f32], dx: &mut [f32], g: &ConvGeometry) {
    dx[..g.input_len()].fill(0.0);
    for_each_tap(g, |n, oh, ow, ih, iw, kh, kw| {
        let xi = ((n * g.in_h + ih) * g.in_w + iw) * g.c_in;
        let yi = ((n * g.out_h + oh) * g.out_w + ow) * g.c_out;
        for ci in 0..g.c_in {
            let wi = ((kh * g.k_w + kw) * g.c_in + ci) * g.c_out;
            let mut acc = 0.0f32;
            for co in 0..g.c_out {
                acc += dy[yi + co] * w[wi + co];
            }
            dx[xi + ci] += acc;
        }
    });
}

/// dw (KH, KW, C_in, C_out) from x and dy. Overwrites dw.
pub fn conv2d_backward_weight_reference(x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeometry) {
    dw[..g.k_h * g.k_w * g.c_in * g.c_out].fill(0.0);
    for_each_tap(g, |n, oh, ow, ih, iw, kh, kw| {
        let xi = ((n * g.in_h + ih) * g.in_w + iw) * g.c_in;
        let yi = ((n * g.out_h + oh) * g.out_w + ow) * g.c_out;
        for ci in 0..g.c_in {
            let xv = x[xi + ci];
            let wi = ((kh * g.k_w + kw) * g.c_in + ci) * g.c_out;
            for co in 0..g.c_out {
                dw[wi + co] += xv * dy[yi + co];
            }
        }
    });
}

/// Depthwise conv (multiplier 1): y (N, OH, OW, C) from x (N, H, W, C), w (KH, KW, C).
/// `g.c_in == g.c_out == C`.
pub fn depthwise_forward_reference(x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry) {
    let c = g.c_in;
    y[..g.output_len()].fill(0.0);
    for_each_tap(g, |n, oh, ow, ih, iw, kh, kw| {
        let xi = ((n * g.in_h + ih) * g.in_w + iw) * c;
        let yi = ((n * g.out_h + oh) * g.out_w + ow) * c;
        let wi = (kh * g.k_w + kw) * c;
        for ch in 0..c {
            y[yi + ch] += x[xi + ch] * w[wi + ch];
        }
    });
}

/// Depthwise backward to the input. Overwrites dx.
pub fn depthwise_backward_input_reference(dy: &[f32], w: &[f32], dx: &mut [f32], g: &ConvGeometry) {
    let c = g.c_in;
    dx[..g.input_len()].fill(0.0);
    for_each_tap(g, |n, oh, ow, ih, iw, kh, kw| {
        let xi = ((n * g.in_h + ih) * g.in_w + iw) * c;
        let yi = ((n * g.out_h + oh) * g.out_w + ow) * c;
        let wi = (kh * g.k_w + kw) * c;
        for ch in 0..c {
            dx[xi + ch] += dy[yi + ch] * w[wi + ch];
        }
    });
}

/// Depthwise backward to the weight (KH, KW, C). Overwrites dw.
pub fn depthwise_backward_weight_reference(x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeometry) {
    let c = g.c_in;
    dw[..g.k_h * g.k_w * c].fill(0.0);
    for_each_tap(g, |n, oh, ow, ih, iw, kh, kw| {
        let xi = ((n * g.in_h + ih) * g.in_w + iw) * c;
        let yi = ((n * g.out_h + oh) * g.out_w + ow) * c;
        let wi = (kh * g.k_w + kw) * c;
        for ch in 0..c {
            dw[wi + ch] += x[xi + ch] * dy[yi + ch];
        }
    });
}

/// Global average pooling, scalar reference: y (N, C) = mean over the `pixels` rows of x (N, pixels, C).
pub fn global_avg_pool_forward_reference(x: &[f32], y: &mut [f32], batch: usize, pixels: usize, c: usize) {
    let inv = 1.0 / pixels.max(1) as f32;
    for n in 0..batch {
        let yr = &mut y[n * c..(n + 1) * c];
        yr.fill(0.0);
        for p in 0..pixels {
            let xr = &x[(n * pixels + p) * c..(n * pixels + p + 1) * c];
            for ch in 0..c {
                yr[ch] += xr[ch];
            }
        }
        yr.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Pooling backward, scalar reference: every pixel of image n gets dy[n] / pixels.
pub fn global_avg_pool_backward_reference(dy: &[f32], dx: &mut [f32], batch: usize, pixels: usize, c: usize) {
    let inv = 1.0 / pixels.max(1) as f32;
    for n in 0..batch {
        for p in 0..pixels {
            for ch in 0..c {
                dx[(n * pixels + p) * c + ch] = dy[n * c + ch] * inv;
            }
        }
    }
}

/// Runs `f(image, out_block)` over per-image blocks of `out`, threaded over images.
fn per_image(out: &mut [f32], per: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if per == 0 {
        return;
    }
    if parallel::num_threads() <= 1 || out.len() < 1 << 14 {
        out.chunks_mut(per).enumerate().for_each(|(n, b)| f(n, b));
    } else {
        parallel::install(|| out.par_chunks_mut(per).enumerate().for_each(|(n, b)| f(n, b)));
    }
}

/// Global average pooling (N, pixels, C) -> (N, C), threaded over images.
pub fn global_avg_pool_forward(x: &[f32], y: &mut [f32], batch: usize, pixels: usize, c: usize) {
    let inv = 1.0 / pixels.max(1) as f32;
    assert!(x.len() == batch * pixels * c && y.len() == batch * c, "global_avg_pool: shapes");
    // threads split the (small) output by image; each reads its own image's rows
    per_image(y, c, |n, yr| {
        yr.fill(0.0);
        for xr in x[n * pixels * c..(n + 1) * pixels * c].chunks_exact(c.max(1)) {
            yr.iter_mut().zip(xr).for_each(|(a, &v)| *a += v);
        }
        yr.iter_mut().for_each(|v| *v *= inv);
    });
}

/// Pooling backward, threaded over images: dx[n, p, :] = dy[n, :] / pixels.
pub fn global_avg_pool_backward(dy: &[f32], dx: &mut [f32], batch: usize, pixels: usize, c: usize) {
    let inv = 1.0 / pixels.max(1) as f32;
    assert!(dx.len() == batch * pixels * c && dy.len() == batch * c, "global_avg_pool_backward: shapes");
    per_image(dx, pixels * c, |n, dxn| {
        let g = &dy[n * c..(n + 1) * c];
        for row in dxn.chunks_exact_mut(c.max(1)) {
            row.iter_mut().zip(g).for_each(|(o, &v)| *o = v * inv);
        }
    });
}

/// Squeeze-excite channel scale, scalar reference: y[n, p, c] = x[n, p, c] * s[n, c].
pub fn channel_scale_forward_reference(x: &[f32], s: &[f32], y: &mut [f32], batch: usize, pixels: usize, c: usize) {
    for n in 0..batch {
        for p in 0..pixels {
            for ch in 0..c {
                let i = (n * pixels + p) * c + ch;
                y[i] = x[i] * s[n * c + ch];
            }
        }
    }
}

/// Channel scale backward, scalar reference: dx = dy * s[n, c], ds[n, c] = sum_p dy * x.
#[allow(clippy::too_many_arguments)]
pub fn channel_scale_backward_reference(
    x: &[f32],
    s: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    ds: &mut [f32],
    batch: usize,
    pixels: usize,
    c: usize,
) {
    ds.fill(0.0);
    for n in 0..batch {
        for p in 0..pixels {
            for ch in 0..c {
                let i = (n * pixels + p) * c + ch;
                dx[i] = dy[i] * s[n * c + ch];
                ds[n * c + ch] += dy[i] * x[i];
            }
        }
    }
}

/// Channel scale, threaded over images.
pub fn channel_scale_forward(x: &[f32], s: &[f32], y: &mut [f32], batch: usize, pixels: usize, c: usize) {
    assert!(x.len() == batch * pixels * c && y.len() == x.len() && s.len() == batch * c, "channel_scale: shapes");
    per_image(y, pixels * c, |n, yn| {
        let sn = &s[n * c..(n + 1) * c];
        for (yr, xr) in yn.chunks_exact_mut(c.max(1)).zip(x[n * pixels * c..].chunks_exact(c.max(1))) {
            yr.iter_mut().zip(xr).zip(sn).for_each(|((o, &v), &k)| *o = v * k);
        }
    });
}

/// Channel scale backward, threaded over images (one pass: dx and ds together).
#[allow(clippy::too_many_arguments)]
pub fn channel_scale_backward(
    x: &[f32],
    s: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    ds: &mut [f32],
    batch: usize,
    pixels: usize,
    c: usize,
) {
    assert!(
        x.len() == batch * pixels * c && dy.len() == x.len() && dx.len() == x.len() && ds.len() == batch * c,
        "channel_scale_backward: shapes"
    );
    let per = pixels * c;
    if per == 0 {
        ds.fill(0.0);
        return;
    }
    let work = |(n, (dxn, dsn)): (usize, (&mut [f32], &mut [f32]))| {
        let sn = &s[n * c..(n + 1) * c];
        dsn.fill(0.0);
        let (xn, gn) = (&x[n * per..(n + 1) * per], &dy[n * per..(n + 1) * per]);
        for ((dr, xr), gr) in dxn.chunks_exact_mut(c).zip(xn.chunks_exact(c)).zip(gn.chunks_exact(c)) {
            for ((((o, &v), &g), &k), a) in dr.iter_mut().zip(xr).zip(gr).zip(sn).zip(dsn.iter_mut()) {
                *o = g * k;
                *a += g * v;
            }
        }
    };
    if parallel::num_threads() <= 1 || dx.len() < 1 << 14 {
        dx.chunks_mut(per).zip(ds.chunks_mut(c)).enumerate().for_each(work);
    } else {
        parallel::install(|| dx.par_chunks_mut(per).zip(ds.par_chunks_mut(c)).enumerate().for_each(work));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_and_channel_scale_match_their_references() {
        let vals = |n: usize, seed: usize| -> Vec<f32> {
            (0..n).map(|i| (((i + seed) * 7919) % 2003) as f32 / 1001.0 - 1.0).collect()
        };
        // odd sizes; the last case is big enough to take the threaded path
        for &(batch, pixels, c) in &[(1, 1, 1), (3, 7, 5), (2, 17, 33), (5, 63, 65), (16, 64, 96)] {
            let (x, s, dy4, dy2) =
                (vals(batch * pixels * c, 1), vals(batch * c, 2), vals(batch * pixels * c, 3), vals(batch * c, 4));
            let (mut a, mut b) = (vec![0.0; batch * c], vec![0.0; batch * c]);
            global_avg_pool_forward(&x, &mut a, batch, pixels, c);
            global_avg_pool_forward_reference(&x, &mut b, batch, pixels, c);
            assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5));
            // The fast forms overwrite their outputs (callers hand them recycled buffers): they
            // start from NaN here.
            let (mut a, mut b) = (vec![f32::NAN; x.len()], vec![0.0; x.len()]);
            global_avg_pool_backward(&dy2, &mut a, batch, pixels, c);
            global_avg_pool_backward_reference(&dy2, &mut b, batch, pixels, c);
            assert_eq!(a, b);
            a.fill(f32::NAN);
            channel_scale_forward(&x, &s, &mut a, batch, pixels, c);
            channel_scale_forward_reference(&x, &s, &mut b, batch, pixels, c);
            assert_eq!(a, b);
            a.fill(f32::NAN);
            let (mut da, mut db) = (vec![f32::NAN; batch * c], vec![2.0; batch * c]);
            channel_scale_backward(&x, &s, &dy4, &mut a, &mut da, batch, pixels, c);
            channel_scale_backward_reference(&x, &s, &dy4, &mut b, &mut db, batch, pixels, c);
            assert_eq!(a, b);
            assert!(da.iter().zip(&db).all(|(p, q)| (p - q).abs() < 1e-4), "{batch} {pixels} {c}");
        }
    }

    #[test]
    fn same_padding_follows_tf() {
        // in 7, k 3, s 2: out 4, pad total (3*2+3-7)=2 -> 1 before
        let g = ConvGeometry::new(1, 7, 8, 1, 1, (3, 3), (2, 2), Padding::Same).unwrap();
        assert_eq!((g.out_h, g.pad_top, g.out_w, g.pad_left), (4, 1, 4, 0));
        // in 8, k 5, s 1: out 8, total 4 -> 2 before
        let g = ConvGeometry::new(1, 8, 8, 1, 1, (5, 5), (1, 1), Padding::Same).unwrap();
        assert_eq!((g.out_h, g.pad_top), (8, 2));
        let g = ConvGeometry::new(
            1,
            5,
            5,
            1,
            1,
            (3, 3),
            (1, 1),
            Padding::Explicit { top: 1, bottom: 1, left: 0, right: 0 },
        )
        .unwrap();
        assert_eq!((g.out_h, g.out_w), (5, 3));
        assert!(ConvGeometry::new(1, 2, 2, 1, 1, (3, 3), (1, 1), Padding::Valid).is_err());
    }

    #[test]
    fn identity_kernel_copies_input() {
        let g = ConvGeometry::new(1, 3, 3, 2, 2, (3, 3), (1, 1), Padding::Same).unwrap();
        let x: Vec<f32> = (0..18).map(|i| i as f32).collect();
        let mut w = vec![0.0; 3 * 3 * 2 * 2];
        // centre tap, identity matrix over channels
        w[((3 + 1) * 2) * 2] = 1.0; // tap (1, 1), channel 0 -> 0
        w[((3 + 1) * 2 + 1) * 2 + 1] = 1.0; // tap (1, 1), channel 1 -> 1
        let mut y = vec![0.0; 18];
        conv2d_forward_reference(&x, &w, &mut y, &g);
        assert_eq!(y, x);
    }
}

// =============================================================================================
// Fast paths. Same contracts as the references above; tests compare the two.
// =============================================================================================

use crate::gemm::{pack_rows_transposed, sgemm, GemmStrides, PanelGemm, MAX_PANEL_WIDTH};
use crate::parallel::{self, SharedPtr};
use crate::simd::Isa;
use crate::vec::Scalar;
use rayon::prelude::*;

impl ConvGeometry {
    fn is_pointwise(&self) -> bool {
        self.k_h == 1
            && self.k_w == 1
            && self.stride_h == 1
            && self.stride_w == 1
            && self.pad_top == 0
            && self.pad_left == 0
    }
    /// Rows of the im2col matrix per image, and its width.
    fn patch_dims(&self) -> (usize, usize) {
        (self.out_h * self.out_w, self.k_h * self.k_w * self.c_in)
    }
}

/// Output pixels per im2col block: the block's patch rows (block x KH*KW*C_in) stay in L2
/// between being written and being packed by the GEMM.
const IM2COL_BLOCK: usize = 256;

/// Builds patch rows for output pixels [p0, p0 + rows) of one image.
fn im2col_rows(x_img: &[f32], g: &ConvGeometry, p0: usize, rows: usize, col: &mut [f32]) {
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
fn copy_floats(src: &[f32], dst: &mut [f32]) {
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
fn col2im_rows_add(col: &[f32], g: &ConvGeometry, p0: usize, rows: usize, dx_img: &mut [f32]) {
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
fn pixel_blocks(g: &ConvGeometry) -> Vec<(usize, usize, usize)> {
    pixel_blocks_of(g, IM2COL_BLOCK)
}

/// Work items (image, first pixel, pixels) of `block` output pixels (the last of an image
/// shorter).
fn pixel_blocks_of(g: &ConvGeometry, block: usize) -> Vec<(usize, usize, usize)> {
    let p = g.out_h * g.out_w;
    (0..g.batch).flat_map(|n| (0..p).step_by(block).map(move |p0| (n, p0, block.min(p - p0)))).collect()
}

/// Output pixels per work item of the gather forward: 22 tiles of 12. (With 256, the
/// blocked-im2col size, every block ended in a 4-pixel tile that cost a whole tile's
/// arithmetic and a bounds-checked segment build.)
const GATHER_BLOCK: usize = 22 * 12;

/// Packs columns [pc, pc + kcb) of the (implicit) im2col matrix, for output pixels
/// q0..q0 + rows of one image, into an MR-wide A panel: panel[k * MR + r] is input element
/// (tap, channel) = divmod(pc + k, C_in) under output pixel q0 + r, or 0 in the padding.
/// Each tap contributes a run of channels that is contiguous in NHWC, so a panel is a handful
/// of small transposes from up to MR row pointers; no patch matrix is ever written.
#[allow(clippy::too_many_arguments)]
fn pack_patch_panel(
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
struct RowSegment {
    rows: [*const f32; 12],
    len: usize,
}

/// The A operand of the implicit GEMM for output pixels q0..q0 + rows of one image and
/// columns [pc, pc + kcb) of the im2col matrix, as row-pointer segments for
/// `PanelGemm::gather_tile`: one segment per tap, each row pointing at that pixel's input
/// channels under the tap (or at `zeros` in the padding, and for rows past `rows`). For
/// tiles at the image's edges; the others take [`window_corners`] and [`tap_runs`].
#[allow(clippy::too_many_arguments)]
fn patch_segments(
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
struct TapRun {
    offset: usize,
    len: usize,
}

/// The taps of columns [pc, pc + kcb) of the im2col matrix as runs from a pixel's window
/// corner (its tap (0, 0) input pixel): tap (kh, kw), channels lo..hi, starts
/// (kh * W_in + kw) * C_in + lo floats further on. The same for every tile inside the image.
///
/// The taps of one kernel row read neighbouring input pixels, so their channel runs follow
/// one another in memory (and in the weight's (kh, kw, ci) order): they merge into one run
/// of up to K_W * C_in. A 3x3 tile then makes three calls of the segment loop, not nine,
/// each saving and restoring the 24 accumulators once.
fn tap_runs(g: &ConvGeometry, pc: usize, kcb: usize) -> Vec<TapRun> {
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
fn window_corner(g: &ConvGeometry, oh: usize, ow: usize) -> Option<usize> {
    let (ih, iw) = (g.input_row(oh, 0)?, g.input_col(ow, 0)?);
    g.input_row(oh, g.k_h - 1)?;
    g.input_col(ow, g.k_w - 1)?;
    Some((ih * g.in_w + iw) * g.c_in)
}

/// For the 12 output pixels q0.. of one image: when every one's window lies inside the
/// image, the offsets of their window corners in the image (and true); else false. (With the
/// bounds of every row and tap checked in the segment builder, a tile's pointers cost a
/// third as much as its arithmetic; inside the image they are 12 additions.)
fn window_corners(g: &ConvGeometry, q0: usize, corners: &mut [usize; 12]) -> bool {
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
    let gemm = PanelGemm::new(isa);
    if crate::winograd::applies(g, &gemm) {
        return crate::winograd::conv2d_forward_winograd(&gemm, x, w, y, g);
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
fn conv2d_forward_gather(gemm: &PanelGemm, x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry) {
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
fn conv1x1_forward_k_pairs(gemm: &PanelGemm, x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry) {
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
fn weight_gradient_over_blocks(
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
fn conv2d_backward_weight_gather(gemm: &PanelGemm, x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeometry) {
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
        match (g.k_w, g.stride_w) {
            (3, 1) => forward_image_k::<V, 3, 1>(x, w, y, g),
            (3, 2) => forward_image_k::<V, 3, 2>(x, w, y, g),
            (5, 1) => forward_image_k::<V, 5, 1>(x, w, y, g),
            (5, 2) => forward_image_k::<V, 5, 2>(x, w, y, g),
            _ => forward_image_k::<V, 0, 0>(x, w, y, g),
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
    fn prefetch_new_rows<const K: usize, const S: usize>(x: &[f32], g: &ConvGeometry, oh: usize, ow: usize) {
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
                    // SAFETY: a hint for floats inside x.
                    unsafe { crate::gemm::prefetch_span(x.as_ptr().add(start), len) };
                }
            }
        }
    }

    /// [`forward_image`] for kernel width K and stride S known at compile time (K = 0: any,
    /// without sliding-window runs).
    #[inline(always)]
    unsafe fn forward_image_k<V: F32Vec, const K: usize, const S: usize>(
        x: &[f32],
        w: &[f32],
        y: &mut [f32],
        g: &ConvGeometry,
    ) {
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

    /// PIXELS outputs (oh, ow..ow + PIXELS), channels cb..cb + VECS * LANES; every tap of
    /// these outputs is inside the image horizontally.
    #[inline(always)]
    unsafe fn forward_run<V: F32Vec, const VECS: usize>(
        x: &[f32],
        w: &[f32],
        y: &mut [f32],
        g: &ConvGeometry,
        oh: usize,
        ow: usize,
        cb: usize,
    ) {
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

    /// SLIDE_PIXELS outputs (oh, ow..), channels cb..cb + VECS * LANES, kernel width K and
    /// stride S, every tap inside the image horizontally. Per kernel row: the K weight
    /// vectors are loaded once into registers; then input columns q = 0..(P-1)S + K are
    /// loaded one at a time, each feeding every output p with a tap kw = q - pS on it.
    /// That is (P-1)S + K + K loads for P K FMAs (0.65 per FMA at P = 4, K = 5, S = 1, against 1.25
    /// for a tap-by-tap run), so the loop is bound by FMAs, not loads. Each output still sums
    /// its taps in (kh, kw) order: for a fixed p, kw grows with q.
    #[inline(always)]
    unsafe fn forward_slide<V: F32Vec, const VECS: usize, const K: usize, const S: usize>(
        x: &[f32],
        w: &[f32],
        y: &mut [f32],
        g: &ConvGeometry,
        oh: usize,
        ow: usize,
        cb: usize,
    ) {
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

    /// Input column Q of a [`forward_slide`] run: loaded once, added into every output p
    /// that has a tap kw = Q - pS on it.
    #[inline(always)]
    unsafe fn slide_column<V: F32Vec, const VECS: usize, const K: usize, const S: usize, const Q: usize>(
        row: *const f32,
        c: usize,
        acc: &mut [[V; VECS]; SLIDE_PIXELS],
        wv: &[[V; VECS]; K],
    ) {
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

    /// One output pixel, channels from `c_start` on: blocks of up to 4 vectors, then scalars.
    #[inline(always)]
    unsafe fn forward_pixel<V: F32Vec>(
        x: &[f32],
        w: &[f32],
        y: &mut [f32],
        g: &ConvGeometry,
        oh: usize,
        ow: usize,
        c_start: usize,
    ) {
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

    /// Output row of `ih` under tap `kh`, if that tap of some output reads input row `ih`.
    #[inline(always)]
    fn out_index(i: usize, k: usize, pad: usize, stride: usize, out: usize) -> Option<usize> {
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

    /// PIXELS input pixels (ih, iw..iw + PIXELS) at stride 1, channels cb..cb + VECS * LANES.
    #[inline(always)]
    unsafe fn backward_input_run<V: F32Vec, const VECS: usize>(
        dy: &[f32],
        w: &[f32],
        dx: &mut [f32],
        g: &ConvGeometry,
        ih: usize,
        iw: usize,
        cb: usize,
    ) {
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

    /// One input pixel's gradient, channels from `c_start` on.
    #[inline(always)]
    unsafe fn backward_input_pixel<V: F32Vec>(
        dy: &[f32],
        w: &[f32],
        dx: &mut [f32],
        g: &ConvGeometry,
        ih: usize,
        iw: usize,
        c_start: usize,
    ) {
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

    /// One pass of the depthwise weight gradient over the image for channels
    /// cb..cb + VECS * LANES: every kernel row's KW taps accumulate in registers.
    #[inline(always)]
    unsafe fn weight_pass<V: F32Vec, const VECS: usize>(
        xp: *const f32,
        gp: *const f32,
        dp: *mut f32,
        g: &ConvGeometry,
        cb: usize,
    ) {
        match (g.k_w, g.stride_w) {
            (3, 1) => weight_pass_k::<V, VECS, 3, 1>(xp, gp, dp, g, cb),
            (3, 2) => weight_pass_k::<V, VECS, 3, 2>(xp, gp, dp, g, cb),
            (5, 1) => weight_pass_k::<V, VECS, 5, 1>(xp, gp, dp, g, cb),
            (5, 2) => weight_pass_k::<V, VECS, 5, 2>(xp, gp, dp, g, cb),
            _ => weight_pass_k::<V, VECS, 0, 0>(xp, gp, dp, g, cb),
        }
    }

    /// [`weight_pass`] for kernel width K and stride S known at compile time (K = 0: any).
    /// With K known, runs of SLIDE_PIXELS outputs whose taps are all inside the image go
    /// through [`weight_slide_column`]: each input column is loaded once and feeds every
    /// (output, tap) pair on it, as in the forward's sliding window (0.6 loads per FMA at
    /// K = 5, S = 1, against 1.2 tap by tap), with the K tap accumulators in registers.
    #[inline(always)]
    unsafe fn weight_pass_k<V: F32Vec, const VECS: usize, const K: usize, const S: usize>(
        xp: *const f32,
        gp: *const f32,
        dp: *mut f32,
        g: &ConvGeometry,
        cb: usize,
    ) {
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

    /// Input column Q of a weight-gradient sliding run: loaded once, multiplied by the
    /// output gradient of every output p with a tap kw = Q - pS on it, into tap kw's sum.
    #[inline(always)]
    unsafe fn weight_slide_column<V: F32Vec, const VECS: usize, const K: usize, const S: usize, const Q: usize>(
        row: *const f32,
        c: usize,
        acc: &mut [[V; VECS]; K],
        gv: &[[V; VECS]; SLIDE_PIXELS],
    ) {
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

    /// Accumulates one image's weight gradient into dw: for each kernel row and each vector of
    /// channels, the KW taps accumulate in registers over every output pixel.
    #[inline(always)]
    pub unsafe fn backward_weight_image<V: F32Vec>(x: &[f32], dy: &[f32], dw: &mut [f32], g: &ConvGeometry) {
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

/// Which per-image depthwise routine to run.
#[derive(Clone, Copy)]
enum DwOp {
    Forward,
    BackwardInput,
    BackwardWeight,
}

fn dw_image(isa: Isa, op: DwOp, a: &[f32], b: &[f32], out: &mut [f32], g: &ConvGeometry) {
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
            run!(crate::vec::x86::Avx512, op, a, b, out, g)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(op: DwOp, a: &[f32], b: &[f32], out: &mut [f32], g: &ConvGeometry) {
            run!(crate::vec::x86::Avx2, op, a, b, out, g)
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
    unsafe { run!(Scalar, op, a, b, out, g) }
}

/// Runs `op` for every image, images spread over the kernel threads.
#[allow(clippy::too_many_arguments)]
fn dw_over_images(
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
    let (xi, yi) = (g.in_h * g.in_w * g.c_in, g.out_h * g.out_w * g.c_in);
    dw_over_images(Isa::best(), DwOp::Forward, x, xi, w, 0, y, yi, g);
}

/// Depthwise input gradient (overwrites dx).
pub fn depthwise_backward_input(dy: &[f32], w: &[f32], dx: &mut [f32], g: &ConvGeometry) {
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

#[cfg(test)]
pub(crate) mod fast_tests {
    use super::*;

    /// Deterministic test values in [-0.5, 0.5) (a multiplicative hash of the index).
    pub(crate) fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32) - 0.5)
            .collect()
    }

    fn close(what: &str, a: &[f32], b: &[f32]) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
        }
    }

    #[test]
    fn fast_convs_match_references_on_odd_sizes_strides_and_paddings() {
        let pads = [Padding::Same, Padding::Valid, Padding::Explicit { top: 1, bottom: 2, left: 0, right: 1 }];
        // (40 channels and 13 columns give the depthwise forward runs of 4 pixels with two-vector,
        // one-vector and scalar channel blocks at both strides; 20 x 17 pixels span two of the
        // dense conv's 256-pixel blocks; 17 and 40 channels at k = 5 split taps across K blocks;
        // 400 channels at k = 1 split one tap; 21 columns give the depthwise forward
        // sliding-window runs of 8 pixels at k = 3, and 13 columns at k = 5; 29 and 30 columns
        // give dense-conv tiles of 12 pixels inside one output row at stride 2 and at k = 5;
        // 24 and 32 channels take the weight gradient's column-gather path, 32 with a panel
        // of 8 rows that reads past the last pixel of x)
        for &(n, h, w, ci, co, k) in &[
            (2, 7, 5, 3, 4, 3),
            (1, 9, 8, 17, 33, 5),
            (3, 6, 6, 8, 5, 1),
            (2, 5, 7, 1, 2, 3),
            (1, 6, 13, 40, 7, 5),
            (2, 20, 17, 6, 9, 3),
            (1, 4, 5, 400, 40, 1),
            (1, 5, 21, 40, 3, 3),
            (1, 6, 29, 5, 6, 3),
            (1, 7, 30, 3, 33, 5),
            (2, 6, 14, 24, 7, 3),
            (1, 5, 13, 32, 40, 3),
            // 1x1 to 17..24 channels from an even count: the K-pair kernel (8-pixel tiles,
            // 2 x 5 x 7 = 70 pixels end in a partial tile; 17 columns mask the store)
            (2, 5, 7, 24, 24, 1),
            (1, 3, 11, 96, 17, 1),
        ] {
            for stride in [1, 2] {
                for pad in pads {
                    let Ok(g) = ConvGeometry::new(n, h, w, ci, co, (k, k), (stride, stride), pad) else { continue };
                    let x = data(g.input_len(), 1);
                    let wt = data(k * k * ci * co, 2);
                    let dy = data(g.output_len(), 3);
                    let what = format!("n{n} h{h} w{w} ci{ci} co{co} k{k} s{stride} {pad:?}");
                    let (mut y1, mut y2) = (vec![0.0; g.output_len()], vec![0.0; g.output_len()]);
                    conv2d_forward_reference(&x, &wt, &mut y1, &g);
                    for isa in Isa::available() {
                        y2.fill(f32::NAN);
                        conv2d_forward_with(isa, &x, &wt, &mut y2, &g);
                        close(&format!("fwd {isa:?} {what}"), &y2, &y1);
                        y2.fill(f32::NAN);
                        conv2d_forward_direct_with(isa, &x, &wt, &mut y2, &g);
                        close(&format!("direct fwd {isa:?} {what}"), &y2, &y1);
                    }
                    let (mut d1, mut d2) = (vec![0.0; g.input_len()], vec![1.0; g.input_len()]);
                    conv2d_backward_input_reference(&dy, &wt, &mut d1, &g);
                    conv2d_backward_input(&dy, &wt, &mut d2, &g);
                    close(&format!("dx {what}"), &d2, &d1);
                    let (mut w1, mut w2) = (vec![0.0; wt.len()], vec![1.0; wt.len()]);
                    conv2d_backward_weight_reference(&x, &dy, &mut w1, &g);
                    conv2d_backward_weight(&x, &dy, &mut w2, &g);
                    close(&format!("dw {what}"), &w2, &w1);
                    // depthwise on the same geometry with C = ci
                    let gd = ConvGeometry::new(n, h, w, ci, ci, (k, k), (stride, stride), pad).unwrap();
                    let wd = data(k * k * ci, 4);
                    let dyd = data(gd.output_len(), 5);
                    for isa in Isa::available() {
                        // (b starts as NaN: the forward overwrites y, which lets callers hand it
                        // recycled buffers)
                        let (mut a, mut b) = (vec![0.0; gd.output_len()], vec![f32::NAN; gd.output_len()]);
                        depthwise_forward_reference(&x, &wd, &mut a, &gd);
                        dw_over_images(
                            isa,
                            DwOp::Forward,
                            &x,
                            gd.in_h * gd.in_w * ci,
                            &wd,
                            0,
                            &mut b,
                            gd.out_h * gd.out_w * ci,
                            &gd,
                        );
                        close(&format!("dw fwd {isa:?} {what}"), &b, &a);
                    }
                    let (mut a, mut b) = (vec![0.0; gd.input_len()], vec![7.0; gd.input_len()]);
                    depthwise_backward_input_reference(&dyd, &wd, &mut a, &gd);
                    depthwise_backward_input(&dyd, &wd, &mut b, &gd);
                    close(&format!("dw dx {what}"), &b, &a);
                    let (mut a, mut b) = (vec![0.0; wd.len()], vec![7.0; wd.len()]);
                    depthwise_backward_weight_reference(&x, &dyd, &mut a, &gd);
                    depthwise_backward_weight(&x, &dyd, &mut b, &gd);
                    close(&format!("dw dw {what}"), &b, &a);
                }
            }
        }
    }
}
