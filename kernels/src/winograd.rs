//! Winograd F(2x2, 3x3) convolution: the dense 3x3 stride-1 forward with 2.25x fewer
//! multiplications than the direct implicit GEMM (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", CVPR 2016; the same minimal filtering as oneDNN's and
//! cuDNN's Winograd convolutions).
//!
//! In one dimension, two outputs of a 3-tap correlation y_i = sum_k d_(i+k) g_k come from four
//! products instead of six:
//!   m0 = (d0 - d2) g0,   m1 = (d1 + d2) (g0 + g1 + g2) / 2,
//!   m2 = (d2 - d1) (g0 - g1 + g2) / 2,   m3 = (d1 - d3) g2,
//!   y0 = m0 + m1 + m2,   y1 = m1 - m2 - m3.
//! Nested in two dimensions a 2x2 block of outputs ("tile") reads a 4x4 input patch d and
//! takes 16 products instead of 36: Y = A^T [(G g G^T) .* (B^T d B)] A. Summed over input
//! channels, the element-wise product at each of the 16 positions xi is a matrix product:
//!
//!   U[xi] (C_in, C_out)  = G g G^T at xi, per (ci, co)           (weight transform, once)
//!   V[xi] (tiles, C_in)  = B^T d B at xi, per (tile, ci)          (input transform)
//!   M[xi] (tiles, C_out) = V[xi] U[xi]                            (16 GEMMs)
//!   Y (2x2 per tile, C_out) = A^T M A over the 16 xi               (output transform)
//!
//! The transforms are additions along channels, vectorised like the depthwise kernels; the
//! GEMMs run on the AVX-512 pair-broadcast micro-kernel, which reads V where the input
//! transform left it (no packed A panel). Tiles go in blocks whose V and M stay in L2;
//! blocks spread over the threads. Layouts, per block of T tiles:
//!   V: [T/2][16][C_in][2]: tiles in pairs, the pair's two values of each channel side by
//!   side, which the pair-broadcast micro-kernel loads with one `vbroadcastsd`;
//!   M: [T][16][C_out]: one tile's 16 positions side by side, so the output transform reads
//!   one contiguous run per tile.
//!
//! Accuracy: the transforms only add and halve, so results differ from the direct sum by a
//! few ulp of the inputs' scale (the tests hold the same 1e-4 as every other path).
//!
//! Used by `conv::conv2d_forward` for 3x3 stride-1 convolutions with enough channels on
//! AVX-512 (and so by the stride-1 input gradient, itself such a convolution);
//! `ALIGN_WINOGRAD=0` turns it off.

use crate::conv::ConvGeometry;
use crate::gemm::PanelGemm;
use crate::parallel;
use crate::simd::Isa;
use crate::vec::{F32Vec, Scalar};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Positions of the 4x4 transformed tile.
const POSITIONS: usize = 16;

/// Whether the forward of `g` runs here: 3x3, stride 1, the gather kernel available, and
/// channels enough that 16 GEMMs of K = C_in outweigh the transforms (at C_in = 3, an image
/// stem, the transforms would cost more than the multiplications saved).
pub(crate) fn applies(g: &ConvGeometry, gemm: &PanelGemm) -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    let enabled = *ENABLED.get_or_init(|| std::env::var("ALIGN_WINOGRAD").map(|v| v != "0").unwrap_or(true));
    enabled
        && gemm.can_gather()
        && (g.k_h, g.k_w, g.stride_h, g.stride_w) == (3, 3, 1, 1)
        && g.c_in >= 16
        && g.c_out >= 16
}

/// The weight transform, scalar: U (16, C_in, C_out) from w (3, 3, C_in, C_out), HWIO.
/// Per (ci, co) the 3x3 kernel g becomes G g G^T, G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1].
pub fn transform_weights(w: &[f32], c_in: usize, c_out: usize) -> Vec<f32> {
    let plane = c_in * c_out;
    assert!(w.len() >= 9 * plane, "winograd: weight shorter than 3 x 3 x {c_in} x {c_out}");
    // G applied to three values along one axis
    let g_rows = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    let mut u = vec![0.0f32; POSITIONS * plane];
    for at in 0..plane {
        let tap = |kh: usize, kw: usize| w[(kh * 3 + kw) * plane + at];
        // along kw for each kernel row, then along kh for each of the 4 columns
        let rows: [[f32; 4]; 3] = std::array::from_fn(|kh| g_rows(tap(kh, 0), tap(kh, 1), tap(kh, 2)));
        for j in 0..4 {
            let col = g_rows(rows[0][j], rows[1][j], rows[2][j]);
            for (i, v) in col.into_iter().enumerate() {
                u[(i * 4 + j) * plane + at] = v;
            }
        }
    }
    u
}

/// B^T applied to four values along one axis.
#[inline(always)]
unsafe fn input_1d<V: F32Vec>(d: [V; 4]) -> [V; 4] {
    [d[0].sub(d[2]), d[1].add(d[2]), d[2].sub(d[1]), d[1].sub(d[3])]
}

/// A^T applied to four values along one axis.
#[inline(always)]
unsafe fn output_1d<V: F32Vec>(m: [V; 4]) -> [V; 2] {
    [m[0].add(m[1]).add(m[2]), m[1].sub(m[2]).sub(m[3])]
}

/// Where a tile's 4x4 input pixels are (each C_in floats). Inside the image a corner and two
/// strides say it in three registers; on the edge, 16 pointers (the padding's point at a row
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
struct EdgePatch([*const f32; 16]);

impl Patch for EdgePatch {
    #[inline(always)]
    fn pixel(&self, i: usize, j: usize) -> *const f32 {
        self.0[i * 4 + j]
    }
}

/// Where a tile's 2x2 outputs go (each C_out floats), the same two ways; on the edge, None
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
struct EdgeOutputs([Option<*mut f32>; 4]);

impl Outputs for EdgeOutputs {
    #[inline(always)]
    fn pixel(&self, a: usize, b: usize) -> Option<*mut f32> {
        self.0[a * 2 + b]
    }
}

/// V.LANES channels from `c` of one tile's input transform, B^T d B at the 16 positions.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // (i, j) index the 4x4 tile, as in the formulas
unsafe fn input_transform<V: F32Vec, P: Patch>(patch: P, c: usize) -> [V; 16] {
    // B^T d: along i for each column j
    let mut t = [[V::splat(0.0); 4]; 4];
    for j in 0..4 {
        // (no closures here: they would not inherit the caller's target features, and the
        // intrinsics inside them would become calls)
        let d = [
            V::load(patch.pixel(0, j).add(c)),
            V::load(patch.pixel(1, j).add(c)),
            V::load(patch.pixel(2, j).add(c)),
            V::load(patch.pixel(3, j).add(c)),
        ];
        let col = input_1d(d);
        for i in 0..4 {
            t[i][j] = col[i];
        }
    }
    // (B^T d) B: along j for each row i
    let mut v = [V::splat(0.0); 16];
    for (i, row) in t.iter().enumerate() {
        let r = input_1d(*row);
        v[i * 4..i * 4 + 4].copy_from_slice(&r);
    }
    v
}

/// Every channel of two tiles' input transforms, written interleaved for the pair-rows
/// GEMM: out[xi * 2 C_in + 2 c] = the first tile's, out[.. + 1] = the second's. Whole
/// vectors, then single channels.
#[inline(always)]
unsafe fn input_pair<V: F32Vec, P: Patch>(first: P, second: P, out: *mut f32, c_in: usize) {
    #[inline(always)]
    unsafe fn channels<V: F32Vec, P: Patch>(first: P, second: P, c: usize, out: *mut f32, c_in: usize) {
        let even = input_transform::<V, P>(first, c);
        let odd = input_transform::<V, P>(second, c);
        for xi in 0..POSITIONS {
            even[xi].store_interleaved(odd[xi], out.add(xi * 2 * c_in + 2 * c));
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

/// Every channel of one tile's output transform, A^T M A: m[xi * C_out + c] in, the 2x2
/// pixels out. Whole vectors, then single channels.
#[inline(always)]
unsafe fn output_tile<V: F32Vec, O: Outputs>(m: *const f32, c_out: usize, outputs: O) {
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // (i, j) index the 4x4 tile, as in the formulas
    unsafe fn channels<V: F32Vec, O: Outputs>(m: *const f32, c_out: usize, c: usize, outputs: O) {
        // A^T M: along i for each column j
        let mut s = [[V::splat(0.0); 4]; 2];
        for j in 0..4 {
            let col = output_1d([
                V::load(m.add(j * c_out + c)),
                V::load(m.add((4 + j) * c_out + c)),
                V::load(m.add((8 + j) * c_out + c)),
                V::load(m.add((12 + j) * c_out + c)),
            ]);
            s[0][j] = col[0];
            s[1][j] = col[1];
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
    let whole = c_out - c_out % V::LANES;
    for c in (0..whole).step_by(V::LANES) {
        channels::<V, O>(m, c_out, c, outputs);
    }
    for c in whole..c_out {
        channels::<Scalar, O>(m, c_out, c, outputs);
    }
}

/// [`input_pair`] on the best vector width of `isa`.
unsafe fn input_pair_dispatch<P: Patch>(isa: Isa, first: P, second: P, out: *mut f32, c_in: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<P: Patch>(first: P, second: P, out: *mut f32, c_in: usize) {
            input_pair::<crate::vec::x86::Avx512, P>(first, second, out, c_in)
        }
        if isa == Isa::Avx512 {
            return avx512(first, second, out, c_in);
        }
    }
    let _ = isa;
    input_pair::<Scalar, P>(first, second, out, c_in)
}

/// [`output_tile`] on the best vector width of `isa`.
unsafe fn output_tile_dispatch<O: Outputs>(isa: Isa, m: *const f32, c_out: usize, outputs: O) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<O: Outputs>(m: *const f32, c_out: usize, outputs: O) {
            output_tile::<crate::vec::x86::Avx512, O>(m, c_out, outputs)
        }
        if isa == Isa::Avx512 {
            return avx512(m, c_out, outputs);
        }
    }
    let _ = isa;
    output_tile::<Scalar, O>(m, c_out, outputs)
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
        let ih = (2 * ty).checked_sub(g.pad_top).filter(|&ih| ih + 4 <= g.in_h)?;
        let iw = (2 * tx).checked_sub(g.pad_left).filter(|&iw| iw + 4 <= g.in_w)?;
        Some(InsidePatch {
            corner: self.x_img[(ih * g.in_w + iw) * g.c_in..].as_ptr(),
            row: g.in_w * g.c_in,
            pixel: g.c_in,
        })
    }

    /// The patch of the tile at (ty, tx) as 16 pointers, the padding's at the zero row.
    fn edge_patch(&self, (ty, tx): (usize, usize)) -> EdgePatch {
        let g = self.g;
        EdgePatch(std::array::from_fn(|ij| {
            let ih = (2 * ty + ij / 4).checked_sub(g.pad_top).filter(|&ih| ih < g.in_h);
            let iw = (2 * tx + ij % 4).checked_sub(g.pad_left).filter(|&iw| iw < g.in_w);
            match (ih, iw) {
                (Some(ih), Some(iw)) => self.x_img[(ih * g.in_w + iw) * g.c_in..].as_ptr(),
                _ => self.zeros.as_ptr(),
            }
        }))
    }

    /// Hints a tile's input patch into the caches (four rows of four pixels), and the lines
    /// its outputs will go to into L1 for writing.
    fn prefetch(&self, at: (usize, usize)) {
        let g = self.g;
        if let Some(p) = self.inside_patch(at) {
            for i in 0..4 {
                // SAFETY: a hint, inside the image
                unsafe { crate::gemm::prefetch_span(p.pixel(i, 0), 4 * g.c_in) };
            }
        }
        // (edge tiles are a few per row: not worth their 16 pointers here)
        if let Some(o) = self.inside_outputs(at) {
            for a in 0..2 {
                // SAFETY: a hint, inside the output; the row's two pixels are adjacent
                unsafe { prefetch_for_write(o.corner.wrapping_add(a * o.row), 2 * g.c_out) };
            }
        }
    }

    /// The outputs of the tile at (ty, tx) when all four lie inside the output.
    #[inline]
    fn inside_outputs(&self, (ty, tx): (usize, usize)) -> Option<InsideOutputs> {
        let g = self.g;
        let (oh, ow) = (2 * ty, 2 * tx);
        (oh + 2 <= g.out_h && ow + 2 <= g.out_w).then(|| InsideOutputs {
            corner: self.y_img.wrapping_add((oh * g.out_w + ow) * g.c_out),
            row: g.out_w * g.c_out,
            pixel: g.c_out,
        })
    }

    /// The outputs of the tile at (ty, tx), None past an odd edge.
    fn edge_outputs(&self, (ty, tx): (usize, usize)) -> EdgeOutputs {
        let g = self.g;
        EdgeOutputs(std::array::from_fn(|ab| {
            let (oh, ow) = (2 * ty + ab / 2, 2 * tx + ab % 2);
            (oh < g.out_h && ow < g.out_w).then(|| self.y_img.wrapping_add((oh * g.out_w + ow) * g.c_out))
        }))
    }
}

/// y (N, OH, OW, C_out) = conv(x, w HWIO) for a 3x3 stride-1 geometry, by F(2x2, 3x3).
///
/// # Panics
/// When the geometry is not 3x3 stride 1, when the gather kernel is not available, or when
/// a buffer is shorter than the geometry says.
pub(crate) fn conv2d_forward_winograd(gemm: &PanelGemm, x: &[f32], w: &[f32], y: &mut [f32], g: &ConvGeometry) {
    assert!((g.k_h, g.k_w, g.stride_h, g.stride_w) == (3, 3, 1, 1), "winograd F(2x2, 3x3) needs 3x3 stride 1");
    assert!(gemm.can_gather(), "winograd: the pair-rows micro-kernel is AVX-512 only");
    assert!(x.len() >= g.input_len() && y.len() >= g.output_len() && w.len() >= 9 * g.c_in * g.c_out);
    let (ci, co) = (g.c_in, g.c_out);
    let tiles_w = g.out_w.div_ceil(2);
    let tiles = g.out_h.div_ceil(2) * tiles_w;
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
    let yp = SendPtr(y.as_mut_ptr());
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
                    y_img: unsafe { yp.ptr().add(n * img_out) },
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
                                        EdgePatch([zeros.as_ptr(); 16])
                                    };
                                    input_pair_dispatch(gemm.isa, grid.edge_patch(first), b, out, ci)
                                }
                            }
                        }
                    }
                    // 2. the 16 products M[xi] = V[xi] U[xi], 12 tiles by 32 outputs a call
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
                                // tile (group x cols, row stride 16 C_out) lies in M.
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
                        // SAFETY: M holds this tile's 16 x C_out; each output pixel C_out floats.
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
/// (`prefetchw`), so the stores that follow find them owned.
#[inline(always)]
unsafe fn prefetch_for_write(p: *mut f32, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
        let bytes = p as *const i8;
        let mut off = 0;
        while off < len * 4 {
            _mm_prefetch::<_MM_HINT_ET0>(bytes.add(off));
            off += 64;
        }
        _mm_prefetch::<_MM_HINT_ET0>(bytes.add(len * 4 - 1));
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// The output pointer, shared by blocks that write disjoint tiles.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: each block writes only its own tiles' output pixels.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the Sync wrapper, not its raw-pointer field.
    fn ptr(&self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::{conv2d_forward_reference, Padding};

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32) - 0.5)
            .collect()
    }

    /// The weight transform, checked on one kernel against G g G^T written out by hand.
    #[test]
    fn weight_transform_is_g_g_gt() {
        let g = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
        let u = transform_weights(&g, 1, 1);
        let gm = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
        for i in 0..4 {
            for j in 0..4 {
                let mut want = 0.0f32;
                for a in 0..3 {
                    for b in 0..3 {
                        want += gm[i][a] * g[a * 3 + b] * gm[j][b];
                    }
                }
                assert!((u[i * 4 + j] - want).abs() < 1e-6, "U[{i}][{j}] = {} vs {want}", u[i * 4 + j]);
            }
        }
    }

    /// Against the direct reference: odd and even output sizes (partial tiles on both
    /// edges), SAME / VALID / asymmetric explicit padding, channel counts with vector tails,
    /// more tiles than one block, and C_in above the GEMM's K block.
    #[test]
    fn winograd_matches_the_direct_reference() {
        let gemm = PanelGemm::new(Isa::best());
        if !gemm.can_gather() {
            return; // the path needs AVX-512; `applies` keeps other CPUs off it
        }
        let pads = [Padding::Same, Padding::Valid, Padding::Explicit { top: 2, bottom: 0, left: 1, right: 2 }];
        for &(n, h, w, ci, co) in &[
            (1, 5, 7, 16, 16),
            (2, 9, 6, 19, 37),
            (1, 3, 3, 1, 1),
            (1, 30, 31, 17, 33),
            (1, 8, 11, 400, 20),
            (3, 1, 4, 32, 32),
        ] {
            for pad in pads {
                let Ok(geo) = ConvGeometry::new(n, h, w, ci, co, (3, 3), (1, 1), pad) else { continue };
                let x = data(geo.input_len(), 1);
                let wt = data(9 * ci * co, 2);
                let (mut want, mut got) = (vec![0.0; geo.output_len()], vec![f32::NAN; geo.output_len()]);
                conv2d_forward_reference(&x, &wt, &mut want, &geo);
                conv2d_forward_winograd(&gemm, &x, &wt, &mut got, &geo);
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
