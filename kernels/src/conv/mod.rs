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
//!   (`winograd.rs`), 4x fewer multiplications; `conv2d_forward_direct` skips it;
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
//!
//! Files: this one holds the geometry, the padding rules and the scalar references;
//! `dense.rs`, `depthwise.rs` and `winograd.rs` the fast paths. Pooling is `crate::pooling`.

mod dense;
mod depthwise;
#[cfg(test)]
pub(crate) mod fast_tests;
#[cfg(test)]
mod tests;
pub mod winograd;

pub use dense::{conv2d_backward_input, conv2d_backward_weight, conv2d_forward, conv2d_forward_direct};
pub use depthwise::{depthwise_backward_input, depthwise_backward_weight, depthwise_forward};

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

    /// Panics unless the geometry is one the kernels can trust: positive kernel and stride, and
    /// every size they compute from it (buffer lengths, the last window's reach) representable.
    /// The fields are public, so a hand-built geometry reaches the kernels without
    /// [`ConvGeometry::new`]; every public convolution calls this first, and the fast paths'
    /// pointer arithmetic rests on it together with the buffer-length checks.
    pub fn assert_valid(&self) {
        assert!(
            self.k_h > 0 && self.k_w > 0 && self.stride_h > 0 && self.stride_w > 0,
            "conv: kernel {}x{} and stride {}x{} must be positive",
            self.k_h,
            self.k_w,
            self.stride_h,
            self.stride_w
        );
        let product = |xs: &[usize]| xs.iter().try_fold(1usize, |acc, &x| acc.checked_mul(x));
        let reach = |out: usize, stride: usize, k: usize| {
            out.checked_sub(1).map_or(Some(0), |o| o.checked_mul(stride)).and_then(|r| r.checked_add(k))
        };
        let sizes_fit = product(&[self.batch, self.in_h, self.in_w, self.c_in]).is_some()
            && product(&[self.batch, self.out_h, self.out_w, self.c_out.max(self.c_in)]).is_some()
            && product(&[self.k_h, self.k_w, self.c_in, self.c_out.max(1)]).is_some()
            && reach(self.out_h, self.stride_h, self.k_h).is_some()
            && reach(self.out_w, self.stride_w, self.k_w).is_some();
        assert!(sizes_fit, "conv: geometry {self:?} overflows the address space");
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
