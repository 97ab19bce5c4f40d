//! Winograd F(4x4, 3x3) convolution: the dense 3x3 stride-1 forward with 4x fewer
//! multiplications than the direct implicit GEMM (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", CVPR 2016; the minimal filtering that oneDNN's and
//! cuDNN's Winograd convolutions use).
//!
//! The idea in one dimension, in its smallest form F(2, 3): two outputs of a 3-tap
//! correlation y_i = sum_k d_(i+k) g_k come from four products instead of six,
//!   m0 = (d0 - d2) g0,   m1 = (d1 + d2) (g0 + g1 + g2) / 2,
//!   m2 = (d2 - d1) (g0 - g1 + g2) / 2,   m3 = (d1 - d3) g2,
//!   y0 = m0 + m1 + m2,   y1 = m1 - m2 - m3,
//! i.e. y = A^T [(G g) .* (B^T d)]. F(4, 3) does the same for four outputs from six inputs
//! with six products (instead of twelve), through the points 0, +-1, +-2 and infinity:
//!
//!   B^T = [4  0 -5  0 1 0;  0 -4 -4  1 1 0;  0  4 -4 -1 1 0;
//!          0 -2 -1  2 1 0;  0  2 -1 -2 1 0;  0  4  0 -5 0 1]
//!   G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
//!   A^T = [1 1 1 1 1 0;  0 1 -1 2 -2 0;  0 1 1 4 4 0;  0 1 -1 8 -8 1]
//!
//! Nested in two dimensions a 4x4 block of outputs ("tile") reads a 6x6 input patch d and
//! takes 36 products instead of 144: Y = A^T [(G g G^T) .* (B^T d B)] A. Summed over input
//! channels, the element-wise product at each of the 36 positions xi is a matrix product:
//!
//!   U[xi] (C_in, C_out)  = G g G^T at xi, per (ci, co)           (weight transform, once)
//!   V[xi] (tiles, C_in)  = B^T d B at xi, per (tile, ci)          (input transform)
//!   M[xi] (tiles, C_out) = V[xi] U[xi]                            (36 GEMMs)
//!   Y (4x4 per tile, C_out) = A^T M A over the 36 xi               (output transform)
//!
//! The transforms are additions (and multiplications by small constants) along channels,
//! vectorised like the depthwise kernels; the GEMMs run on the AVX-512 pair-broadcast
//! micro-kernel, which reads V where the input transform left it (no packed A panel).
//! Tiles go in groups of 12 (one micro-kernel tile of rows), group by group through the
//! three passes so V and M stay in cache; blocks of groups spread over the threads.
//! Layouts, per group:
//!   V: [6 pairs][36][C_in][2]: tiles in pairs, the pair's two values of each channel side
//!   by side, which the pair-broadcast micro-kernel loads with one `vbroadcastsd`;
//!   M: [12][36][C_out]: one tile's 36 positions side by side, so the output transform
//!   reads one contiguous run per tile.
//!
//! Accuracy: the transforms scale values by up to 8 before the products and sum them back,
//! so the result differs from the direct sum by a few times float rounding of the inputs'
//! scale: about 4e-6 on outputs of magnitude 2.5 in a float32 model of these transforms
//! (numpy, 32 input channels, inputs in [-0.5, 0.5]), well inside the 1e-4 the tests hold
//! every path to. F(2x2, 3x3) would be exact to a few ulp but saves only 2.25x; it measured
//! 1.1-1.3x faster than the direct path here, F(4x4, 3x3) 1.3-1.9x (benches/README.md).
//!
//! Used by `conv::conv2d_forward` for 3x3 stride-1 convolutions with enough channels on
//! AVX-512 (and so by the stride-1 input gradient, itself such a convolution);
//! `conv::conv2d_forward_direct` is the same convolution without it.

use super::ConvGeometry;
use crate::gemm::PanelGemm;
use crate::parallel;
use crate::parallel::SharedPtr;
use crate::simd::Isa;
use crate::vec::{F32Vec, Scalar};
use rayon::prelude::*;

/// Outputs per tile side.
const OUT: usize = 4;
/// Input pixels per tile side (OUT + 3 - 1).
const SIDE: usize = OUT + 2;
/// Positions of the transformed 6x6 tile: one GEMM each.
const POSITIONS: usize = SIDE * SIDE;

/// Whether the forward of `g` runs here: 3x3, stride 1, the pair-rows kernel available, and
/// channels enough that 36 GEMMs of K = C_in outweigh the transforms (at C_in = 3, an image
/// stem, the transforms would cost more than the multiplications saved).
pub(crate) fn applies(g: &ConvGeometry, gemm: &PanelGemm) -> bool {
    gemm.can_gather() && (g.k_h, g.k_w, g.stride_h, g.stride_w) == (3, 3, 1, 1) && g.c_in >= 16 && g.c_out >= 16
}

/// G applied to the three taps along one axis (scalar: the weight transform runs once).
fn weight_1d(g0: f32, g1: f32, g2: f32) -> [f32; SIDE] {
    [
        g0 / 4.0,
        -(g0 + g1 + g2) / 6.0,
        -(g0 - g1 + g2) / 6.0,
        g0 / 24.0 + g1 / 12.0 + g2 / 6.0,
        g0 / 24.0 - g1 / 12.0 + g2 / 6.0,
        g2,
    ]
}

/// The weight transform: U (36, C_in, C_out) from w (3, 3, C_in, C_out), HWIO. Per
/// (ci, co) the 3x3 kernel g becomes G g G^T.
pub fn transform_weights(w: &[f32], c_in: usize, c_out: usize) -> Vec<f32> {
    let plane = c_in * c_out;
    assert!(w.len() >= 9 * plane, "winograd: weight shorter than 3 x 3 x {c_in} x {c_out}");
    let mut u = vec![0.0f32; POSITIONS * plane];
    for at in 0..plane {
        let tap = |kh: usize, kw: usize| w[(kh * 3 + kw) * plane + at];
        // along kw for each kernel row, then along kh for each of the 6 columns
        let rows: [[f32; SIDE]; 3] = std::array::from_fn(|kh| weight_1d(tap(kh, 0), tap(kh, 1), tap(kh, 2)));
        for j in 0..SIDE {
            for (i, v) in weight_1d(rows[0][j], rows[1][j], rows[2][j]).into_iter().enumerate() {
                u[(i * SIDE + j) * plane + at] = v;
            }
        }
    }
    u
}

/// B^T applied to six values along one axis, in 12 operations (the rows of B^T share
/// d4 - 4 d2, d3 - 4 d1, d4 - d2 and d3 - d1).
#[inline(always)]
unsafe fn input_1d<V: F32Vec>(d: [V; SIDE]) -> [V; SIDE] {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let (four, minus_four, minus_five, two, minus_two) =
            (V::splat(4.0), V::splat(-4.0), V::splat(-5.0), V::splat(2.0), V::splat(-2.0));
        let a = d[2].mul_add(minus_four, d[4]); // d4 - 4 d2
        let b = d[1].mul_add(minus_four, d[3]); // d3 - 4 d1
        let c = d[4].sub(d[2]);
        let e = d[3].sub(d[1]);
        [
            d[0].mul_add(four, d[2].mul_add(minus_five, d[4])), // 4 d0 - 5 d2 + d4
            a.add(b),                                           // -4 d1 - 4 d2 + d3 + d4
            a.sub(b),                                           // 4 d1 - 4 d2 - d3 + d4
            e.mul_add(two, c),                                  // -2 d1 - d2 + 2 d3 + d4
            e.mul_add(minus_two, c),                            // 2 d1 - d2 - 2 d3 + d4
            d[1].mul_add(four, d[3].mul_add(minus_five, d[5])), // 4 d1 - 5 d3 + d5
        ]
    }
}

/// A^T applied to six values along one axis, in 10 operations.
#[inline(always)]
unsafe fn output_1d<V: F32Vec>(m: [V; SIDE]) -> [V; OUT] {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        let (s12, d12) = (m[1].add(m[2]), m[1].sub(m[2]));
        let (s34, d34) = (m[3].add(m[4]), m[3].sub(m[4]));
        [
            m[0].add(s12).add(s34),
            d34.mul_add(V::splat(2.0), d12),
            s34.mul_add(V::splat(4.0), s12),
            d34.mul_add(V::splat(8.0), d12).add(m[5]),
        ]
    }
}

/// Where a tile's 6x6 input pixels are (each C_in floats). Inside the image a corner and two
/// strides say it in three registers; on the edge, 36 pointers (the padding's point at a row
/// of zeros). The transforms are generic over both, so the common case carries no pointer
/// array.
trait Patch: Copy {
    fn pixel(&self, i: usize, j: usize) -> *const f32;
}

#[derive(Clone, Copy)]
struct InsidePatch {
    corner: *const f32,
    /// floats from one image row to the next
    row: usize,
    /// floats from one pixel to the next (C_in)
    pixel: usize,
}

impl Patch for InsidePatch {
    #[inline(always)]
    fn pixel(&self, i: usize, j: usize) -> *const f32 {
        self.corner.wrapping_add(i * self.row + j * self.pixel)
    }
}

#[derive(Clone, Copy)]
struct EdgePatch([*const f32; SIDE * SIDE]);

impl Patch for EdgePatch {
    #[inline(always)]
    fn pixel(&self, i: usize, j: usize) -> *const f32 {
        self.0[i * SIDE + j]
    }
}

/// Where a tile's 4x4 outputs go (each C_out floats), the same two ways; on the edge, None
/// for the pixels past an odd border.
trait Outputs: Copy {
    fn pixel(&self, a: usize, b: usize) -> Option<*mut f32>;
}

#[derive(Clone, Copy)]
struct InsideOutputs {
    corner: *mut f32,
    row: usize,
    pixel: usize,
}

impl Outputs for InsideOutputs {
    #[inline(always)]
    fn pixel(&self, a: usize, b: usize) -> Option<*mut f32> {
        Some(self.corner.wrapping_add(a * self.row + b * self.pixel))
    }
}

#[derive(Clone, Copy)]
struct EdgeOutputs([Option<*mut f32>; OUT * OUT]);

impl Outputs for EdgeOutputs {
    #[inline(always)]
    fn pixel(&self, a: usize, b: usize) -> Option<*mut f32> {
        self.0[a * OUT + b]
    }
}

/// V.LANES channels from `c` of one tile's input transform, B^T d B at the 36 positions.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // (i, j) index the 6x6 tile, as in the formulas
unsafe fn input_transform<V: F32Vec, P: Patch>(patch: P, c: usize) -> [V; POSITIONS] {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        // B^T d: along i for each column j
        let mut t = [[V::splat(0.0); SIDE]; SIDE];
        for j in 0..SIDE {
            // (no closures here: they would not inherit the caller's target features, and the
            // intrinsics inside them would become calls)
            let mut d = [V::splat(0.0); SIDE];
            for i in 0..SIDE {
                d[i] = V::load(patch.pixel(i, j).add(c));
            }
            let col = input_1d(d);
            for i in 0..SIDE {
                t[i][j] = col[i];
            }
        }
        // (B^T d) B: along j for each row i
        let mut v = [V::splat(0.0); POSITIONS];
        for (i, row) in t.iter().enumerate() {
            let r = input_1d(*row);
            v[i * SIDE..(i + 1) * SIDE].copy_from_slice(&r);
        }
        v
    }
}

/// Every channel of two tiles' input transforms, written interleaved for the pair-rows
/// GEMM: out[xi * 2 C_in + 2 c] = the first tile's, out[.. + 1] = the second's. Whole
/// vectors, then single channels.
#[inline(always)]
unsafe fn input_pair<V: F32Vec, P: Patch>(first: P, second: P, out: *mut f32, c_in: usize) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        #[inline(always)]
        unsafe fn channels<V: F32Vec, P: Patch>(first: P, second: P, c: usize, out: *mut f32, c_in: usize) {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                let even = input_transform::<V, P>(first, c);
                let odd = input_transform::<V, P>(second, c);
                for xi in 0..POSITIONS {
                    even[xi].store_interleaved(odd[xi], out.add(xi * 2 * c_in + 2 * c));
                }
            }
        }
        let whole = c_in - c_in % V::LANES;
        for c in (0..whole).step_by(V::LANES) {
            channels::<V, P>(first, second, c, out, c_in);
        }
        for c in whole..c_in {
            channels::<Scalar, P>(first, second, c, out, c_in);
        }
    }
}

/// Every channel of one tile's output transform, A^T M A: m[xi * C_out + c] in, the 4x4
/// pixels out. Whole vectors, then single channels.
#[inline(always)]
unsafe fn output_tile<V: F32Vec, O: Outputs>(m: *const f32, c_out: usize, outputs: O) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        #[inline(always)]
        #[allow(clippy::needless_range_loop)] // (i, j) index the 6x6 tile, as in the formulas
        unsafe fn channels<V: F32Vec, O: Outputs>(m: *const f32, c_out: usize, c: usize, outputs: O) {
            // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
            // offset it reads and writes, and any CPU feature its callees need.
            unsafe {
                // A^T M: along i for each column j
                let mut s = [[V::splat(0.0); SIDE]; OUT];
                for j in 0..SIDE {
                    let mut col = [V::splat(0.0); SIDE];
                    for i in 0..SIDE {
                        col[i] = V::load(m.add((i * SIDE + j) * c_out + c));
                    }
                    let y = output_1d(col);
                    for a in 0..OUT {
                        s[a][j] = y[a];
                    }
                }
                // (A^T M) A: along j for each row a
                for (a, row) in s.iter().enumerate() {
                    for (b, v) in output_1d(*row).into_iter().enumerate() {
                        if let Some(p) = outputs.pixel(a, b) {
                            v.store(p.add(c));
                        }
                    }
                }
            }
        }
        let whole = c_out - c_out % V::LANES;
        for c in (0..whole).step_by(V::LANES) {
            channels::<V, O>(m, c_out, c, outputs);
        }
        for c in whole..c_out {
            channels::<Scalar, O>(m, c_out, c, outputs);
        }
    }
}

/// [`input_pair`] on the best vector width of `isa`.
unsafe fn input_pair_dispatch<P: Patch>(isa: Isa, first: P, second: P, out: *mut f32, c_in: usize) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512<P: Patch>(first: P, second: P, out: *mut f32, c_in: usize) {
                // SAFETY: callers guarantee a CPU with avx512f (they dispatch on `Isa::supported()`)
                // and pointers valid for what this reads and writes.
                unsafe { input_pair::<crate::vec::x86::Avx512, P>(first, second, out, c_in) }
            }
            if isa == Isa::Avx512 {
                return avx512(first, second, out, c_in);
            }
        }
        let _ = isa;
        input_pair::<Scalar, P>(first, second, out, c_in)
    }
}

/// [`output_tile`] on the best vector width of `isa`.
unsafe fn output_tile_dispatch<O: Outputs>(isa: Isa, m: *const f32, c_out: usize, outputs: O) {
    // SAFETY: this unsafe fn's callers guarantee that its pointers are valid for every
    // offset it reads and writes, and any CPU feature its callees need.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512<O: Outputs>(m: *const f32, c_out: usize, outputs: O) {
                // SAFETY: callers guarantee a CPU with avx512f (they dispatch on `Isa::supported()`)
                // and pointers valid for what this reads and writes.
                unsafe { output_tile::<crate::vec::x86::Avx512, O>(m, c_out, outputs) }
            }
            if isa == Isa::Avx512 {
                return avx512(m, c_out, outputs);
            }
        }
        let _ = isa;
        output_tile::<Scalar, O>(m, c_out, outputs)
    }
}

/// Tiles per work item handed to a thread (8 micro-kernel groups of 12).
const BLOCK_TILES: usize = 96;

/// The tiles of one image: where each reads its 4x4 input patch and writes its 2x2 outputs.
struct TileGrid<'a> {
    g: &'a ConvGeometry,
    tiles_w: usize,
    x_img: &'a [f32],
    /// C_in zeros, read for patch pixels in the padding
    zeros: &'a [f32],
    /// the image's output, (OH, OW, C_out)
    y_img: *mut f32,
}

impl TileGrid<'_> {
    /// (row, column) in the tile grid of tiles `first..` (one division for the run, not
    /// one per tile: a 64-bit division costs as much as a few hundred FMAs' issue slots).
    fn coordinates<const N: usize>(&self, first: usize) -> [(usize, usize); N] {
        let (mut ty, mut tx) = (first / self.tiles_w, first % self.tiles_w);
        std::array::from_fn(|_| {
            let at = (ty, tx);
            tx += 1;
            if tx == self.tiles_w {
                (ty, tx) = (ty + 1, 0);
            }
            at
        })
    }

    /// The patch of the tile at (ty, tx) when it lies wholly inside the image.
    #[inline]
    fn inside_patch(&self, (ty, tx): (usize, usize)) -> Option<InsidePatch> {
        let g = self.g;
        let ih = (OUT * ty).checked_sub(g.pad_top).filter(|&ih| ih + SIDE <= g.in_h)?;
        let iw = (OUT * tx).checked_sub(g.pad_left).filter(|&iw| iw + SIDE <= g.in_w)?;
        Some(InsidePatch {
            corner: self.x_img[(ih * g.in_w + iw) * g.c_in..].as_ptr(),
            row: g.in_w * g.c_in,
            pixel: g.c_in,
        })
    }

    /// The patch of the tile at (ty, tx) as 36 pointers, the padding's at the zero row.
    fn edge_patch(&self, (ty, tx): (usize, usize)) -> EdgePatch {
        let g = self.g;
        EdgePatch(std::array::from_fn(|ij| {
            let ih = (OUT * ty + ij / SIDE).checked_sub(g.pad_top).filter(|&ih| ih < g.in_h);
            let iw = (OUT * tx + ij % SIDE).checked_sub(g.pad_left).filter(|&iw| iw < g.in_w);
            match (ih, iw) {
                (Some(ih), Some(iw)) => self.x_img[(ih * g.in_w + iw) * g.c_in..].as_ptr(),
                _ => self.zeros.as_ptr(),
            }
        }))
    }

    /// Hints a tile's input patch into the caches (six rows of six pixels), and the lines
    /// its outputs will go to into L1 for writing.
    fn prefetch(&self, at: (usize, usize)) {
        let g = self.g;
        if let Some(p) = self.inside_patch(at) {
            for i in 0..SIDE {
                crate::gemm::prefetch_span(p.pixel(i, 0), SIDE * g.c_in);
            }
        }
        // (edge tiles are a few per row: not worth their 36 pointers here)
        if let Some(o) = self.inside_outputs(at) {
            for a in 0..OUT {
                prefetch_for_write(o.corner.wrapping_add(a * o.row), OUT * g.c_out);
            }
        }
    }

    /// The outputs of the tile at (ty, tx) when all four lie inside the output.
    #[inline]
    fn inside_outputs(&self, (ty, tx): (usize, usize)) -> Option<InsideOutputs> {
        let g = self.g;
        let (oh, ow) = (OUT * ty, OUT * tx);
        (oh + OUT <= g.out_h && ow + OUT <= g.out_w).then(|| InsideOutputs {
            corner: self.y_img.wrapping_add((oh * g.out_w + ow) * g.c_out),
            row: g.out_w * g.c_out,
            pixel: g.c_out,
        })
    }

    /// The outputs of the tile at (ty, tx), None past an odd edge.
    fn edge_outputs(&self, (ty, tx): (usize, usize)) -> EdgeOutputs {
        let g = self.g;
        EdgeOutputs(std::array::from_fn(|ab| {
            let (oh, ow) = (OUT * ty + ab / OUT, OUT * tx + ab % OUT);
            (oh < g.out_h && ow < g.out_w).then(|| self.y_img.wrapping_add((oh * g.out_w + ow) * g.c_out))
        }))
    }
}

/// y (N, OH, OW, C_out) = conv(x, w HWIO) for a 3x3 stride-1 geometry, by F(4x4, 3x3).
///
/// # Panics
/// When the geometry is not 3x3 stride 1, when the pair-rows kernel is not available, or when
/// a buffer is shorter than the geometry says.
pub(crate) fn conv2d_forward_winograd(gemm: &PanelGemm, x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry) {
    assert!((g.k_h, g.k_w, g.stride_h, g.stride_w) == (3, 3, 1, 1), "winograd F(4x4, 3x3) needs 3x3 stride 1");
    assert!(gemm.can_gather(), "winograd: the pair-rows micro-kernel is AVX-512 only");
    assert!(x.len() >= g.input_len() && y.len() >= g.output_len() && w.len() >= 9 * g.c_in * g.c_out);
    let (ci, co) = (g.c_in, g.c_out);
    let tiles_w = g.out_w.div_ceil(OUT);
    let tiles = g.out_h.div_ceil(OUT) * tiles_w;
    if g.batch == 0 || tiles == 0 || co == 0 {
        return;
    }
    // U[xi] packed as the GEMM's B, (C_in, C_out) in NR-wide panels per block of K
    let u = transform_weights(w, ci, co);
    let padded = gemm.padded_cols(co);
    let mut packed_u = Vec::with_capacity(POSITIONS * ci * padded);
    let mut panel = Vec::new();
    for xi in 0..POSITIONS {
        gemm.pack_b_into(ci, co, &u[xi * ci * co..], co, &mut panel);
        packed_u.extend_from_slice(&panel[..ci * padded]);
    }
    // the products' blocks of K and panels of columns, listed once (a `step_by` in the loop
    // divides on every entry)
    let k_blocks: Vec<(usize, usize)> = (0..ci).step_by(gemm.kc).map(|pc| (pc, gemm.kc.min(ci - pc))).collect();
    let column_panels: Vec<usize> = (0..co).step_by(gemm.nr).collect();
    let work: Vec<(usize, usize)> =
        (0..g.batch).flat_map(|n| (0..tiles).step_by(BLOCK_TILES).map(move |t0| (n, t0))).collect();
    let img_in = g.in_h * g.in_w * ci;
    let img_out = g.out_h * g.out_w * co;
    let yp = SharedPtr(y.as_mut_ptr());
    parallel::install(|| {
        work.par_iter().for_each_init(
            // one 12-tile group's V and M, and a zero row for the padding
            || (vec![0.0f32; 12 * POSITIONS * ci], vec![0.0f32; 12 * POSITIONS * co], vec![0.0f32; ci]),
            |(v, m, zeros), &(n, t0)| {
                let grid = TileGrid {
                    g,
                    tiles_w,
                    x_img: &x[n * img_in..(n + 1) * img_in],
                    zeros,
                    // SAFETY: image n's output, inside y (asserted above); this block's tiles
                    // write only their own pixels of it
                    y_img: unsafe { yp.get().add(n * img_out) },
                };
                let end = tiles.min(t0 + BLOCK_TILES);
                // Group by group, so V and M stay in L1 / L2 from one pass to the next.
                for g0 in (t0..end).step_by(12) {
                    let group = 12.min(end - g0);
                    let at: [(usize, usize); 12] = grid.coordinates(g0);
                    let next_at: [(usize, usize); 12] = grid.coordinates(g0 + 12);
                    // 1. input transform, two tiles at a time (a lone last tile pairs with zeros)
                    for pair in 0..group.div_ceil(2) {
                        let out = v[pair * 2 * POSITIONS * ci..].as_mut_ptr();
                        let (first, second) = (at[2 * pair], at[2 * pair + 1]);
                        let second_real = 2 * pair + 1 < group;
                        // SAFETY: every patch pixel has C_in floats; V has room for 12 tiles.
                        unsafe {
                            match (grid.inside_patch(first), grid.inside_patch(second).filter(|_| second_real)) {
                                (Some(a), Some(b)) => input_pair_dispatch(gemm.isa, a, b, out, ci),
                                _ => {
                                    let b = if second_real {
                                        grid.edge_patch(second)
                                    } else {
                                        EdgePatch([zeros.as_ptr(); SIDE * SIDE])
                                    };
                                    input_pair_dispatch(gemm.isa, grid.edge_patch(first), b, out, ci)
                                }
                            }
                        }
                    }
                    // 2. the 36 products M[xi] = V[xi] U[xi], 12 tiles by 32 outputs a call
                    for xi in 0..POSITIONS {
                        // Meanwhile the next group's input is fetched, a tile per product: the
                        // input transform is otherwise a stream of cache misses (x is read from
                        // memory once), which the products' arithmetic can hide.
                        if xi < 12 && g0 + 12 + xi < end {
                            grid.prefetch(next_at[xi]);
                        }
                        for &(pc, kcb) in &k_blocks {
                            for &jr in &column_panels {
                                // SAFETY: V's 6 pairs are all readable (those past `group`
                                // stale, their rows dropped); the B panel is kcb x 32; the C
                                // tile (group x cols, row stride 36 C_out) lies in M.
                                unsafe {
                                    gemm.pair_rows_tile(
                                        kcb,
                                        v.as_ptr().add(xi * 2 * ci + 2 * pc),
                                        2 * POSITIONS * ci,
                                        packed_u[(xi * ci + pc) * padded + jr * kcb..].as_ptr(),
                                        m.as_mut_ptr().add(xi * co + jr),
                                        POSITIONS * co,
                                        if pc == 0 { 0.0 } else { 1.0 },
                                        group,
                                        (co - jr).min(gemm.nr),
                                    );
                                }
                            }
                        }
                    }
                    // 3. output transform into y, dropping the pixels past an odd edge
                    for (t, &tile) in at.iter().enumerate().take(group) {
                        let m_tile = m[t * POSITIONS * co..].as_ptr();
                        // SAFETY: M holds this tile's 36 x C_out; each output pixel C_out floats.
                        unsafe {
                            match grid.inside_outputs(tile) {
                                Some(o) => output_tile_dispatch(gemm.isa, m_tile, co, o),
                                None => output_tile_dispatch(gemm.isa, m_tile, co, grid.edge_outputs(tile)),
                            }
                        }
                    }
                }
            },
        );
    });
}

/// Hints the cache lines of `len` floats at `p` into L1 in the exclusive state
/// (`prefetchw`), so the stores that follow find them owned. Safe for any pointer: a prefetch
/// never faults and the addresses use wrapping arithmetic.
#[inline(always)]
fn prefetch_for_write(p: *mut f32, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
        if len == 0 {
            return;
        }
        let bytes = p as *const i8;
        let mut off = 0;
        while off < len * 4 {
            // SAFETY: a prefetch is a hint: it never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_ET0>(bytes.wrapping_add(off)) };
            off += 64;
        }
        // SAFETY: as above.
        unsafe { _mm_prefetch::<_MM_HINT_ET0>(bytes.wrapping_add(len * 4 - 1)) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::fast_tests::data;
    use crate::conv::{conv2d_forward_reference, Padding};

    /// The weight transform, checked on one kernel against G g G^T with G written out.
    #[test]
    fn weight_transform_is_g_g_gt() {
        let g = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
        let u = transform_weights(&g, 1, 1);
        let gm: [[f32; 3]; 6] = [
            [0.25, 0.0, 0.0],
            [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
            [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
            [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
            [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
            [0.0, 0.0, 1.0],
        ];
        for i in 0..6 {
            for j in 0..6 {
                let mut want = 0.0f32;
                for a in 0..3 {
                    for b in 0..3 {
                        want += gm[i][a] * g[a * 3 + b] * gm[j][b];
                    }
                }
                assert!((u[i * 6 + j] - want).abs() < 1e-5, "U[{i}][{j}] = {} vs {want}", u[i * 6 + j]);
            }
        }
    }

    /// The 1-D transforms nest to a correlation: A^T [(G g) .* (B^T d)] = the four outputs
    /// of the 3-tap correlation of six inputs (scalar lanes, so it runs on every CPU).
    #[test]
    fn one_dimensional_transforms_correlate() {
        let d = [0.3f32, -1.2, 2.5, 0.7, -0.4, 1.9];
        let g = [0.5f32, -1.5, 2.0];
        // SAFETY: scalar lanes need no CPU feature
        let (v, u) = unsafe { (input_1d(d.map(Scalar)), weight_1d(g[0], g[1], g[2])) };
        let m: [Scalar; SIDE] = std::array::from_fn(|i| Scalar(v[i].0 * u[i]));
        let y = unsafe { output_1d(m) };
        for i in 0..OUT {
            let want = d[i] * g[0] + d[i + 1] * g[1] + d[i + 2] * g[2];
            assert!((y[i].0 - want).abs() < 1e-5, "y[{i}] = {} vs {want}", y[i].0);
        }
    }

    /// Against the direct reference: odd and even output sizes (partial tiles on both
    /// edges), SAME / VALID / asymmetric explicit padding, channel counts with vector tails,
    /// more tiles than one block, and C_in above the GEMM's K block.
    #[test]
    fn winograd_matches_the_direct_reference() {
        // The transform path needs AVX-512's pair-rows kernel; on other CPUs `applies` sends
        // these convolutions to the implicit GEMM, and that is the path checked here instead.
        let gemm = PanelGemm::new(Isa::best());
        let forward = |x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry| {
            if gemm.can_gather() {
                conv2d_forward_winograd(&gemm, x, w, y, g)
            } else {
                crate::conv::conv2d_forward(x, w, y, g)
            }
        };
        let pads = [Padding::Same, Padding::Valid, Padding::Explicit { top: 2, bottom: 0, left: 1, right: 2 }];
        for &(n, h, w, ci, co) in &[
            (1, 5, 7, 16, 16),
            (2, 9, 6, 19, 37),
            (1, 3, 3, 1, 1),
            (1, 30, 31, 17, 33),
            (1, 8, 11, 400, 20),
            (3, 1, 4, 32, 32),
            (2, 14, 13, 32, 32),
        ] {
            for pad in pads {
                let Ok(geo) = ConvGeometry::new(n, h, w, ci, co, (3, 3), (1, 1), pad) else { continue };
                let x = data(geo.input_len(), 1);
                let wt = data(9 * ci * co, 2);
                let (mut want, mut got) = (vec![0.0; geo.output_len()], vec![f32::NAN; geo.output_len()]);
                conv2d_forward_reference(&x, &wt, &mut want, &geo);
                forward(&x, &wt, &mut got, &geo);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "n{n} h{h} w{w} ci{ci} co{co} {pad:?} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
