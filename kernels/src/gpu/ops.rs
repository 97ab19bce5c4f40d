//! The GPU kernels' host side: argument checks, parameter words and dispatch sizes for each
//! WGSL shader in `shaders/`. Every function here mirrors a CPU kernel of this crate (named in
//! its doc) and returns new buffers or updates the given ones in place, without reading
//! anything back.

use std::sync::Arc;

use super::{grid, GpuBuffer, GpuError, Result, Shader, WORKGROUP};
use crate::activation::Activation;

macro_rules! shader {
    ($name:literal) => {
        Shader {
            name: $name,
            source: concat!(include_str!("shaders/common.wgsl"), include_str!(concat!("shaders/", $name, ".wgsl"))),
        }
    };
}

const UNARY: Shader = shader!("unary");
const ACTIVATION_GRAD: Shader = shader!("activation_grad");
const BINARY: Shader = shader!("binary");
const DROPOUT: Shader = shader!("dropout");
const MATMUL: Shader = shader!("matmul");
const REDUCE: Shader = shader!("reduce");
const SOFTMAX: Shader = shader!("softmax");
const SOFTMAX_BACKWARD: Shader = shader!("softmax_backward");
const LAYER_NORM: Shader = shader!("layer_norm");
const LAYER_NORM_BACKWARD: Shader = shader!("layer_norm_backward");
const LAYER_NORM_PARAMS: Shader = shader!("layer_norm_params");
const EMBEDDING: Shader = shader!("embedding");
const EMBEDDING_BACKWARD: Shader = shader!("embedding_backward");
const ADAMW: Shader = shader!("adamw");
const LAMB: Shader = shader!("optim");
const LAMB_APPLY: Shader = shader!("lamb_apply");

/// Highest rank the strided elementwise shaders take (six size words and six strides each).
pub const MAX_RANK: usize = 6;

fn bits(x: f32) -> u32 {
    x.to_bits()
}

fn word(what: &str, x: usize) -> Result<u32> {
    u32::try_from(x).map_err(|_| GpuError::Limit(format!("{what} = {x} does not fit the shaders' 32-bit indices")))
}

fn shape_err(msg: String) -> GpuError {
    GpuError::Shape(msg)
}

fn check_len(what: &str, b: &GpuBuffer, needed: usize) -> Result<()> {
    if b.len() < needed {
        return Err(shape_err(format!("{what}: buffer of {} elements, {needed} needed", b.len())));
    }
    Ok(())
}

/// Workgroups for `n` threads of the 1-D kernels.
fn groups_1d(gpu: &super::Gpu, n: usize) -> (u32, u32, u32) {
    grid(gpu, n.div_ceil(WORKGROUP as usize))
}

/// Elements per dispatch of the elementwise kernels that split large buffers: the largest
/// multiple of the storage offset alignment that fits one binding.
fn chunk_elems(gpu: &super::Gpu) -> usize {
    let align = (gpu.limits.min_storage_buffer_offset_alignment as usize / 4).max(1);
    (gpu.max_binding_elems() / align * align).max(align)
}

// ---------------------------------------------------------------------------------------------
// Elementwise
// ---------------------------------------------------------------------------------------------

/// A strided view of a buffer: element (i_0, .., i_r) is at `offset + sum i_d strides[d]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub buffer: &'a GpuBuffer,
    pub offset: usize,
    pub shape: &'a [usize],
    pub strides: &'a [usize],
}

impl View<'_> {
    fn extent(&self) -> usize {
        if self.shape.contains(&0) {
            return 0;
        }
        self.offset + self.shape.iter().zip(self.strides).map(|(s, st)| (s - 1) * st).sum::<usize>() + 1
    }

    fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&s, &st) in self.shape.iter().zip(self.strides).rev() {
            if s != 1 && st != expected {
                return false;
            }
            expected *= s;
        }
        true
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.shape.len() != self.strides.len() || self.shape.len() > MAX_RANK {
            return Err(shape_err(format!(
                "{what}: shape {:?} with strides {:?} (rank at most {MAX_RANK})",
                self.shape, self.strides
            )));
        }
        check_len(what, self.buffer, self.extent())
    }

    /// [rank padded to 1, offset, shape[6], strides[6]] parameter words.
    fn words(&self) -> Result<(u32, u32, [u32; MAX_RANK], [u32; MAX_RANK])> {
        let mut shape = [1u32; MAX_RANK];
        let mut strides = [0u32; MAX_RANK];
        for d in 0..self.shape.len() {
            shape[d] = word("size", self.shape[d])?;
            strides[d] = word("stride", self.strides[d])?;
        }
        Ok((self.shape.len().max(1) as u32, word("offset", self.offset)?, shape, strides))
    }
}

/// The maps of the unary shader (`apply` in unary.wgsl; the CPU reference is the same formula
/// in `kernels::activation` / `vmath`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    /// alpha * x + beta (a strided copy when alpha = 1, beta = 0)
    Affine {
        alpha: f32,
        beta: f32,
    },
    Exp,
    Log,
    Sqrt,
    Abs,
    Relu,
    Activation(Activation),
    Tanh,
    Recip,
    Powf(f32),
    Fill(f32),
    Square,
    /// 1 where x > 0, else 0 (the derivative of relu)
    Step,
}

impl Unary {
    fn code(self) -> (u32, f32, f32) {
        match self {
            Unary::Affine { alpha, beta } => (0, alpha, beta),
            Unary::Exp | Unary::Activation(Activation::Exp) => (1, 0.0, 0.0),
            Unary::Log => (2, 0.0, 0.0),
            Unary::Sqrt => (3, 0.0, 0.0),
            Unary::Abs => (4, 0.0, 0.0),
            Unary::Relu => (5, 0.0, 0.0),
            Unary::Activation(a) => (activation_code(a), 0.0, 0.0),
            Unary::Tanh => (10, 0.0, 0.0),
            Unary::Recip => (11, 0.0, 0.0),
            Unary::Powf(p) => (12, p, 0.0),
            Unary::Fill(v) => (13, 0.0, v),
            Unary::Square => (14, 0.0, 0.0),
            Unary::Step => (15, 0.0, 0.0),
        }
    }
}

fn activation_code(a: Activation) -> u32 {
    match a {
        Activation::GeluErf => 6,
        Activation::GeluTanh => 7,
        Activation::Silu => 8,
        Activation::Sigmoid => 9,
        Activation::Exp => 1,
    }
}

/// y = f(x) for a strided view x; y is contiguous with x's shape. Contiguous inputs larger
/// than one storage binding are processed in binding-sized chunks.
pub fn unary(op: Unary, x: View) -> Result<GpuBuffer> {
    x.check("unary")?;
    let gpu = x.buffer.gpu();
    let n: usize = x.shape.iter().product();
    let y = gpu.uninit(n)?;
    let (code, alpha, beta) = op.code();
    if x.is_contiguous() && n > 0 {
        // As a flat vector, chunk by chunk.
        let align = (gpu.limits.min_storage_buffer_offset_alignment as usize / 4).max(1);
        // (less one alignment step: a window may start up to that far before its chunk)
        let chunk = chunk_elems(gpu).saturating_sub(align).max(align);
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            // The source window starts at an aligned element; the shader's x_offset covers the rest.
            let src_start = (x.offset + start) / align * align;
            let lead = x.offset + start - src_start;
            let src_len = (lead + len).min(x.buffer.len() - src_start);
            let mut p = vec![word("n", len)?, code, 1, bits(alpha), bits(beta), lead as u32];
            p.extend([len as u32, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
            gpu.dispatch(
                &UNARY,
                "unary",
                &p,
                &[x.buffer.range(src_start, src_len), y.range(start, len)],
                groups_1d(gpu, len),
            )?;
            start += len;
        }
        return Ok(y);
    }
    let (rank, offset, shape, strides) = x.words()?;
    let mut p = vec![word("n", n)?, code, rank, bits(alpha), bits(beta), offset];
    p.extend(shape);
    p.extend(strides);
    gpu.dispatch(&UNARY, "unary", &p, &[x.buffer.all(), y.all()], groups_1d(gpu, n))?;
    Ok(y)
}

/// dx = dy * act'(x), all contiguous of one length (`kernels::activation::activation_backward`).
pub fn activation_grad(act: Activation, x: &GpuBuffer, dy: &GpuBuffer) -> Result<GpuBuffer> {
    let n = x.len();
    check_len("activation_grad dy", dy, n)?;
    let gpu = x.gpu();
    let dx = gpu.uninit(n)?;
    let chunk = chunk_elems(gpu);
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let p = [len as u32, activation_code(act)];
        gpu.dispatch(
            &ACTIVATION_GRAD,
            "activation_grad",
            &p,
            &[x.range(start, len), dy.range(start, len), dx.range(start, len)],
            groups_1d(gpu, len),
        )?;
        start += len;
    }
    Ok(dx)
}

/// The operators of the binary shader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

/// y = a (op) b, where `a` and `b` are views already broadcast to the output's shape (stride 0
/// on broadcast axes, as `tensor::Layout::broadcast_to` gives); y is contiguous.
pub fn binary(op: Binary, a: View, b: View) -> Result<GpuBuffer> {
    a.check("binary a")?;
    b.check("binary b")?;
    if a.shape != b.shape {
        return Err(shape_err(format!(
            "binary: operand shapes {:?} and {:?} (broadcast them first)",
            a.shape, b.shape
        )));
    }
    if !Arc::ptr_eq(a.buffer.gpu(), b.buffer.gpu()) {
        return Err(shape_err(format!("binary: operands on {:?} and {:?}", a.buffer.gpu(), b.buffer.gpu())));
    }
    let gpu = a.buffer.gpu();
    let n: usize = a.shape.iter().product();
    let y = gpu.uninit(n)?;
    let (rank, a_off, shape, a_strides) = a.words()?;
    let (_, b_off, _, b_strides) = b.words()?;
    let mut p = vec![word("n", n)?, op as u32, rank, a_off, b_off];
    p.extend(shape);
    p.extend(a_strides);
    p.extend(b_strides);
    gpu.dispatch(&BINARY, "binary", &p, &[a.buffer.all(), b.buffer.all(), y.all()], groups_1d(gpu, n))?;
    Ok(y)
}

/// The dropout mask's generator on the host: element `i` of a dropout with `seed` and drop
/// probability `p` is kept when this returns true (the reference for dropout.wgsl).
pub fn dropout_keeps(seed: u64, i: u32, p: f32) -> bool {
    fn pcg(v: u32) -> u32 {
        let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
        let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
        (word >> 22) ^ word
    }
    let r = pcg(i ^ pcg(seed as u32 ^ pcg((seed >> 32) as u32))) >> 8;
    r >= dropout_threshold(p)
}

fn dropout_threshold(p: f32) -> u32 {
    ((p.clamp(0.0, 1.0) as f64) * (1u64 << 24) as f64) as u32
}

/// Inverted dropout of a contiguous buffer: kept elements scaled by 1 / (1 - p). Calling it on
/// the output gradient with the same seed is the backward.
pub fn dropout(x: &GpuBuffer, p: f32, seed: u64) -> Result<GpuBuffer> {
    if !(0.0..1.0).contains(&p) {
        return Err(shape_err(format!("dropout probability {p} must be in [0, 1)")));
    }
    let gpu = x.gpu();
    let y = gpu.uninit(x.len())?;
    let params = [word("n", x.len())?, seed as u32, (seed >> 32) as u32, dropout_threshold(p), bits(1.0 / (1.0 - p))];
    gpu.dispatch(&DROPOUT, "dropout", &params, &[x.all(), y.all()], groups_1d(gpu, x.len()))?;
    Ok(y)
}

// ---------------------------------------------------------------------------------------------
// Matrix products
// ---------------------------------------------------------------------------------------------

/// One operand of [`matmul`]: element (z0, z1, row, col) at
/// `offset + z0 batch_strides[0] + z1 batch_strides[1] + row row_stride + col col_stride`.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    pub buffer: &'a GpuBuffer,
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
    pub batch_strides: [usize; 2],
}

impl<'a> Operand<'a> {
    /// A row-major (rows, cols) matrix repeated every rows * cols elements along batch axis 1.
    pub fn dense(buffer: &'a GpuBuffer, rows: usize, cols: usize) -> Operand<'a> {
        Operand { buffer, offset: 0, row_stride: cols, col_stride: 1, batch_strides: [0, rows * cols] }
    }

    /// The transpose of a row-major (cols, rows) matrix, read as (rows, cols).
    pub fn transposed(buffer: &'a GpuBuffer, rows: usize, cols: usize) -> Operand<'a> {
        Operand { buffer, offset: 0, row_stride: 1, col_stride: rows, batch_strides: [0, rows * cols] }
    }
}

/// The sizes and options of [`matmul`].
#[derive(Clone, Copy, Debug)]
pub struct MatmulShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// batch axes (z0, z1); (1, 1) for one product
    pub batch: [usize; 2],
    pub alpha: f32,
}

/// C[z] = alpha A[z] B[z] (+ bias) for every batch index, with C contiguous (batch, m, n).
/// `accumulate_into` adds the product to an existing C instead of allocating one
/// (`kernels::gemm::gemm_reference` with beta 1 or 0 is the CPU reference).
pub fn matmul(
    s: MatmulShape,
    a: Operand,
    b: Operand,
    bias: Option<&GpuBuffer>,
    accumulate_into: Option<GpuBuffer>,
) -> Result<GpuBuffer> {
    let gpu = a.buffer.gpu().clone();
    let batches = s.batch[0] * s.batch[1];
    let extent = |o: &Operand, rows: usize, cols: usize| {
        if rows == 0 || cols == 0 || batches == 0 {
            return 0;
        }
        o.offset
            + (s.batch[0] - 1) * o.batch_strides[0]
            + (s.batch[1] - 1) * o.batch_strides[1]
            + (rows - 1) * o.row_stride
            + (cols - 1) * o.col_stride
            + 1
    };
    check_len("matmul A", a.buffer, extent(&a, s.m, s.k))?;
    check_len("matmul B", b.buffer, extent(&b, s.k, s.n))?;
    if let Some(bias) = bias {
        check_len("matmul bias", bias, s.n)?;
    }
    let c_len = batches * s.m * s.n;
    let accumulating = accumulate_into.is_some();
    let c = match accumulate_into {
        Some(c) => {
            check_len("matmul C", &c, c_len)?;
            c
        }
        None => gpu.uninit(c_len)?,
    };
    let flags = u32::from(bias.is_some()) | (u32::from(accumulating) << 1);
    let words = |o: &Operand| -> Result<[u32; 5]> {
        Ok([
            word("offset", o.offset)?,
            word("row stride", o.row_stride)?,
            word("col stride", o.col_stride)?,
            word("batch stride", o.batch_strides[0])?,
            word("batch stride", o.batch_strides[1])?,
        ])
    };
    let mut p = vec![
        word("m", s.m)?,
        word("n", s.n)?,
        word("k", s.k)?,
        word("batch", s.batch[1].max(1))?,
        flags,
        bits(s.alpha),
    ];
    p.extend(words(&a)?);
    p.extend(words(&b)?);
    // C: offset, row stride, batch strides
    p.extend([0, word("n", s.n)?, word("c batch", s.batch[1] * s.m * s.n)?, word("c batch", s.m * s.n)?]);
    let groups = (s.n.div_ceil(64) as u32, s.m.div_ceil(64) as u32, word("batches", batches)?);
    // An absent bias binds A in its place (read-only, never read).
    let bias_binding = bias.map(|b| b.all()).unwrap_or_else(|| a.buffer.all());
    gpu.dispatch(&MATMUL, "matmul", &p, &[a.buffer.all(), b.buffer.all(), bias_binding, c.all()], groups)?;
    Ok(c)
}

// ---------------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------------

/// What [`reduce_rows`] computes per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowReduce {
    Sum = 0,
    Max = 1,
    SumSquares = 2,
}

/// y[r] = scale * op(x[r, ..]) over a contiguous (rows, cols) buffer (`kernels::reduce`).
pub fn reduce_rows(x: &GpuBuffer, rows: usize, cols: usize, op: RowReduce, scale: f32) -> Result<GpuBuffer> {
    check_len("reduce_rows", x, rows * cols)?;
    let gpu = x.gpu();
    let y = gpu.uninit(rows)?;
    let p = [word("rows", rows)?, word("cols", cols)?, op as u32, bits(scale), 0];
    gpu.dispatch(&REDUCE, "reduce_rows", &p, &[x.all(), y.all()], grid(gpu, rows))?;
    Ok(y)
}

/// y[c] = scale * sum_r x[r, c] over a contiguous (rows, cols) buffer, added to `into` when
/// given (`kernels::reduce::column_sums_reference`).
pub fn reduce_cols(x: &GpuBuffer, rows: usize, cols: usize, scale: f32, into: Option<GpuBuffer>) -> Result<GpuBuffer> {
    check_len("reduce_cols", x, rows * cols)?;
    let gpu = x.gpu();
    let accumulate = into.is_some();
    let y = match into {
        Some(y) => {
            check_len("reduce_cols output", &y, cols)?;
            y
        }
        None => gpu.uninit(cols)?,
    };
    let p = [word("rows", rows)?, word("cols", cols)?, 0, bits(scale), u32::from(accumulate)];
    gpu.dispatch(&REDUCE, "reduce_cols", &p, &[x.all(), y.all()], (word("groups", cols.div_ceil(16))?, 1, 1))?;
    Ok(y)
}

/// The sum (or sum of squares) of a whole buffer as a one-element buffer, in two fixed passes:
/// 4096-element partial sums, then one row.
pub fn sum_all(x: &GpuBuffer, op: RowReduce) -> Result<GpuBuffer> {
    let gpu = x.gpu();
    let n = x.len();
    let parts = n.div_ceil(4096).max(1);
    let partial = gpu.uninit(parts)?;
    if n == 0 {
        return gpu.zeros(1);
    }
    let p = [0, word("n", n)?, op as u32, bits(1.0), 0];
    gpu.dispatch(&REDUCE, "partial_sums", &p, &[x.all(), partial.all()], grid(gpu, parts))?;
    reduce_rows(&partial, 1, parts, RowReduce::Sum, 1.0)
}

// ---------------------------------------------------------------------------------------------
// Softmax and layer norm
// ---------------------------------------------------------------------------------------------

/// y = softmax(scale * x + mask) (or its log) over rows of `cols`; the mask row for row r is
/// `r / rows_per_mask` (`kernels::softmax::softmax_forward`).
pub fn softmax(
    x: &GpuBuffer,
    rows: usize,
    cols: usize,
    scale: f32,
    mask: Option<(&GpuBuffer, usize)>,
    log: bool,
) -> Result<GpuBuffer> {
    check_len("softmax", x, rows * cols)?;
    if let Some((m, per)) = mask {
        if per == 0 {
            return Err(shape_err("softmax: rows_per_mask must be at least 1".into()));
        }
        check_len("softmax mask", m, rows.div_ceil(per) * cols)?;
    }
    let gpu = x.gpu();
    let y = gpu.uninit(rows * cols)?;
    let flags = u32::from(mask.is_some()) | (u32::from(log) << 1);
    let p =
        [word("rows", rows)?, word("cols", cols)?, bits(scale), flags, word("rows per mask", mask.map_or(1, |m| m.1))?];
    let mask_binding = mask.map(|m| m.0.all()).unwrap_or_else(|| x.all());
    gpu.dispatch(&SOFTMAX, "softmax_rows", &p, &[x.all(), mask_binding, y.all()], grid(gpu, rows))?;
    Ok(y)
}

/// The gradient of [`softmax`] from its output y and dy (`kernels::softmax::softmax_backward`).
pub fn softmax_backward(
    y: &GpuBuffer,
    dy: &GpuBuffer,
    rows: usize,
    cols: usize,
    scale: f32,
    log: bool,
) -> Result<GpuBuffer> {
    check_len("softmax_backward y", y, rows * cols)?;
    check_len("softmax_backward dy", dy, rows * cols)?;
    let gpu = y.gpu();
    let dx = gpu.uninit(rows * cols)?;
    let p = [word("rows", rows)?, word("cols", cols)?, bits(scale), u32::from(log) << 1];
    gpu.dispatch(&SOFTMAX_BACKWARD, "softmax_backward", &p, &[y.all(), dy.all(), dx.all()], grid(gpu, rows))?;
    Ok(dx)
}

/// Layer norm over rows of `cols`: (y, stats) with stats = [mean; rows] ++ [rstd; rows]
/// (`kernels::norm::layer_norm_forward`).
pub fn layer_norm(
    x: &GpuBuffer,
    gamma: &GpuBuffer,
    beta: &GpuBuffer,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<(GpuBuffer, GpuBuffer)> {
    check_len("layer_norm x", x, rows * cols)?;
    check_len("layer_norm gamma", gamma, cols)?;
    check_len("layer_norm beta", beta, cols)?;
    let gpu = x.gpu();
    let y = gpu.uninit(rows * cols)?;
    let stats = gpu.uninit(2 * rows)?;
    let p = [word("rows", rows)?, word("cols", cols)?, bits(eps)];
    gpu.dispatch(
        &LAYER_NORM,
        "layer_norm",
        &p,
        &[x.all(), gamma.all(), beta.all(), y.all(), stats.all()],
        grid(gpu, rows),
    )?;
    Ok((y, stats))
}

/// Layer-norm backward: returns dx and adds the parameter gradients into dgamma and dbeta
/// (`kernels::norm::layer_norm_backward`).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    x: &GpuBuffer,
    gamma: &GpuBuffer,
    stats: &GpuBuffer,
    dy: &GpuBuffer,
    dgamma: &GpuBuffer,
    dbeta: &GpuBuffer,
    rows: usize,
    cols: usize,
) -> Result<GpuBuffer> {
    check_len("layer_norm_backward x", x, rows * cols)?;
    check_len("layer_norm_backward dy", dy, rows * cols)?;
    check_len("layer_norm_backward stats", stats, 2 * rows)?;
    for (what, b) in [("gamma", gamma), ("dgamma", dgamma), ("dbeta", dbeta)] {
        check_len(what, b, cols)?;
    }
    let gpu = x.gpu();
    let dx = gpu.uninit(rows * cols)?;
    let p = [word("rows", rows)?, word("cols", cols)?];
    gpu.dispatch(
        &LAYER_NORM_BACKWARD,
        "layer_norm_backward",
        &p,
        &[x.all(), gamma.all(), stats.all(), dy.all(), dx.all()],
        grid(gpu, rows),
    )?;
    gpu.dispatch(
        &LAYER_NORM_PARAMS,
        "layer_norm_params",
        &p,
        &[x.all(), stats.all(), dy.all(), dgamma.all(), dbeta.all()],
        (word("groups", cols.div_ceil(16))?, 1, 1),
    )?;
    Ok(dx)
}

// ---------------------------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------------------------

fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(shape_err(format!("embedding id {bad} out of range for a table of {vocab} rows")));
    }
    Ok(())
}

/// out[i, :] = table[ids[i], :] for a (vocab, dim) table.
pub fn gather_rows(table: &GpuBuffer, vocab: usize, dim: usize, ids: &[u32]) -> Result<GpuBuffer> {
    check_len("gather_rows table", table, vocab * dim)?;
    check_ids(ids, vocab)?;
    let gpu = table.gpu();
    let out = gpu.uninit(ids.len() * dim)?;
    if ids.is_empty() {
        return Ok(out);
    }
    let id_buffer = gpu.upload_u32(ids)?;
    let p = [word("ids", ids.len())?, word("dim", dim)?];
    gpu.dispatch(
        &EMBEDDING,
        "gather_rows",
        &p,
        &[table.all(), id_buffer.all(), out.all()],
        groups_1d(gpu, ids.len() * dim),
    )?;
    Ok(out)
}

/// dtable[ids[i], :] += dy[i, :], deterministically (positions of each id summed in order).
pub fn scatter_add_rows(dy: &GpuBuffer, dtable: &GpuBuffer, vocab: usize, dim: usize, ids: &[u32]) -> Result<()> {
    check_len("scatter_add_rows dy", dy, ids.len() * dim)?;
    check_len("scatter_add_rows table", dtable, vocab * dim)?;
    check_ids(ids, vocab)?;
    if ids.is_empty() {
        return Ok(());
    }
    // CSR on the host: distinct ids, where each one's positions start, the positions.
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&p| (ids[p as usize], p));
    let mut unique: Vec<u32> = Vec::new();
    let mut starts: Vec<u32> = Vec::new();
    for (k, &p) in order.iter().enumerate() {
        let id = ids[p as usize];
        if unique.last() != Some(&id) {
            unique.push(id);
            starts.push(k as u32);
        }
    }
    starts.push(order.len() as u32);
    let n_unique = unique.len();
    let starts_at = n_unique;
    let positions_at = starts_at + starts.len();
    let mut csr = unique;
    csr.extend(starts);
    csr.extend(order);
    let gpu = dy.gpu();
    let csr_buffer = gpu.upload_u32(&csr)?;
    let p = [word("unique", n_unique)?, word("dim", dim)?, starts_at as u32, positions_at as u32];
    gpu.dispatch(
        &EMBEDDING_BACKWARD,
        "scatter_add_rows",
        &p,
        &[dy.all(), csr_buffer.all(), dtable.all()],
        groups_1d(gpu, n_unique * dim),
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Optimisers
// ---------------------------------------------------------------------------------------------

/// One AdamW step in place on (w, m, v) at step `t` (1-based), as torch.optim.AdamW.
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    grad: &GpuBuffer,
    w: &GpuBuffer,
    m: &GpuBuffer,
    v: &GpuBuffer,
    lr: f32,
    weight_decay: f32,
    (beta1, beta2, eps): (f32, f32, f32),
    t: u64,
) -> Result<()> {
    let n = w.len();
    for (what, b) in [("grad", grad), ("m", m), ("v", v)] {
        check_len(what, b, n)?;
    }
    let t = t.clamp(1, i32::MAX as u64) as i32;
    let bc1 = 1.0 - beta1.powi(t);
    let bc2_sqrt = (1.0 - beta2.powi(t)).sqrt();
    let gpu = w.gpu();
    let chunk = chunk_elems(gpu);
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let p =
            [len as u32, bits(lr), bits(weight_decay), bits(beta1), bits(beta2), bits(bc1), bits(bc2_sqrt), bits(eps)];
        gpu.dispatch(
            &ADAMW,
            "adamw",
            &p,
            &[grad.range(start, len), w.range(start, len), m.range(start, len), v.range(start, len)],
            groups_1d(gpu, len),
        )?;
        start += len;
    }
    Ok(())
}

/// One LAMB step of one tensor in place on (w, m, v) (nn::optim::Lamb's two passes): the
/// direction u, the two norms on the device, then w -= lr r u. `use_trust_ratio` false gives r = 1.
#[allow(clippy::too_many_arguments)]
pub fn lamb(
    grad: &GpuBuffer,
    w: &GpuBuffer,
    m: &GpuBuffer,
    v: &GpuBuffer,
    lr: f32,
    step: &crate::optim::AdamStep,
    use_trust_ratio: bool,
) -> Result<()> {
    let n = w.len();
    for (what, b) in [("grad", grad), ("m", m), ("v", v)] {
        check_len(what, b, n)?;
    }
    let gpu = w.gpu();
    let u = gpu.uninit(n)?;
    let chunk = chunk_elems(gpu);
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let p = [
            len as u32,
            bits(step.beta1),
            bits(step.beta2),
            bits(step.inv_bias1),
            bits(step.inv_bias2),
            bits(step.eps),
            bits(step.weight_decay),
        ];
        gpu.dispatch(
            &LAMB,
            "lamb_direction",
            &p,
            &[
                grad.range(start, len),
                w.range(start, len),
                m.range(start, len),
                v.range(start, len),
                u.range(start, len),
            ],
            groups_1d(gpu, len),
        )?;
        start += len;
    }
    let norms = gpu.uninit(2)?;
    gpu.copy(&sum_all(w, RowReduce::SumSquares)?, 0, &norms, 0, 1);
    gpu.copy(&sum_all(&u, RowReduce::SumSquares)?, 0, &norms, 1, 1);
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let p = [len as u32, bits(lr), u32::from(use_trust_ratio)];
        gpu.dispatch(
            &LAMB_APPLY,
            "lamb_apply",
            &p,
            &[u.range(start, len), norms.all(), w.range(start, len)],
            groups_1d(gpu, len),
        )?;
        start += len;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Convolutions (NHWC)
// ---------------------------------------------------------------------------------------------

const CONV: Shader = shader!("conv");

/// Which pass of which convolution [`conv`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPass {
    /// (x, w) -> y
    Forward,
    /// (dy, w) -> dx
    BackwardInput,
    /// (x, dy) -> dw
    BackwardWeight,
}

/// One pass of a dense (w: KH, KW, C_in, C_out) or depthwise (w: KH, KW, C) NHWC convolution
/// with the geometry's strides and padding (`kernels::conv` is the CPU reference). Dense 1x1
/// convolutions with stride 1 and no padding are matrix products: use [`matmul`] for them.
pub fn conv(
    pass: ConvPass,
    depthwise: bool,
    g: &crate::conv::ConvGeometry,
    a: &GpuBuffer,
    b: &GpuBuffer,
) -> Result<GpuBuffer> {
    let (x_len, y_len) = (g.input_len(), g.output_len());
    let w_len = if depthwise { g.k_h * g.k_w * g.c_in } else { g.k_h * g.k_w * g.c_in * g.c_out };
    let (a_len, b_len, out_len) = match pass {
        ConvPass::Forward => (x_len, w_len, y_len),
        ConvPass::BackwardInput => (y_len, w_len, x_len),
        ConvPass::BackwardWeight => (x_len, y_len, w_len),
    };
    check_len("conv operand", a, a_len)?;
    check_len("conv operand", b, b_len)?;
    let gpu = a.gpu();
    let out = gpu.uninit(out_len)?;
    let mut p = Vec::with_capacity(14);
    for v in [
        g.batch, g.in_h, g.in_w, g.c_in, g.c_out, g.k_h, g.k_w, g.stride_h, g.stride_w, g.pad_top, g.pad_left, g.out_h,
        g.out_w, out_len,
    ] {
        p.push(word("conv size", v)?);
    }
    let entry = match (depthwise, pass) {
        (false, ConvPass::Forward) => "conv_forward",
        (false, ConvPass::BackwardInput) => "conv_backward_input",
        (false, ConvPass::BackwardWeight) => "conv_backward_weight",
        (true, ConvPass::Forward) => "depthwise_forward",
        (true, ConvPass::BackwardInput) => "depthwise_backward_input",
        (true, ConvPass::BackwardWeight) => "depthwise_backward_weight",
    };
    gpu.dispatch(&CONV, entry, &p, &[a.all(), b.all(), out.all()], grid(gpu, out_len.div_ceil(64)))?;
    Ok(out)
}
