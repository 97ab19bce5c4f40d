//! The GPU side of the tensor ops (feature `wgpu`): each function takes tensors whose storage is
//! a `kernels::gpu::GpuBuffer`, checks shapes and devices as the CPU op does, and calls the
//! WGSL kernel through `kernels::gpu::ops`. Results stay on the GPU.
//!
//! The ops in `ops.rs`, `reduce.rs`, `linalg.rs`, `index.rs` call into here when their operands
//! are on a GPU; the functions that have no Tensor method on the CPU side (softmax rows, layer
//! norm, activations, dropout, embedding gradients) are public for the autograd ops.

use std::sync::Arc;

use kernels::activation::Activation;
use kernels::gpu::ops::{self as k, Binary, MatmulShape, Operand, RowReduce, Unary, View};
use kernels::gpu::{GpuBuffer, GpuError};

use crate::error::{Result, TensorError};
use crate::layout::{broadcast_shapes, Layout};
use crate::storage::Storage;
use crate::tensor::Tensor;

fn err(op: &'static str) -> impl Fn(GpuError) -> TensorError {
    move |e| TensorError::device(op, e.to_string())
}

/// A contiguous GPU tensor over `buffer`.
pub fn from_buffer(buffer: GpuBuffer, shape: &[usize]) -> Tensor {
    Tensor::from_storage(Arc::new(Storage::gpu(buffer)), Layout::contiguous(shape))
        .expect("a new buffer holds its own shape")
}

/// The device buffer behind a GPU tensor (an error naming `op` for a CPU tensor).
pub fn buffer<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a GpuBuffer> {
    t.storage()
        .gpu_buffer()
        .ok_or_else(|| TensorError::device(op, format!("expects a GPU tensor, got one on {}", t.device())))
}

fn view<'a>(t: &'a Tensor, layout: &'a Layout) -> Result<View<'a>> {
    Ok(View { buffer: buffer("view", t)?, offset: layout.offset, shape: &layout.shape, strides: &layout.strides })
}

/// The elements of a GPU tensor in a buffer of exactly its contiguous elements (the tensor's
/// own when it already is one, else a strided copy on the GPU).
pub fn contiguous(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() && t.layout().offset == 0 && buffer("contiguous", t)?.len() == t.numel() {
        return Ok(t.clone());
    }
    unary(t, Unary::Affine { alpha: 1.0, beta: 0.0 })
}

/// y = f(x) elementwise, y contiguous.
pub fn unary(t: &Tensor, op: Unary) -> Result<Tensor> {
    let y = k::unary(op, view(t, t.layout())?).map_err(err("unary"))?;
    Ok(from_buffer(y, t.shape()))
}

/// The same as [`unary`] for the infallible Tensor methods (exp, neg, add_scalar, ...): a
/// kernel failure here is a device failure (lost device, out of memory), reported as a panic.
pub(crate) fn unary_or_panic(t: &Tensor, op: Unary) -> Tensor {
    unary(t, op).unwrap_or_else(|e| panic!("{op:?} on {}: {e}", t.device()))
}

/// A tensor of `value`s on adapter `index`.
pub fn full(shape: &[usize], value: f32, index: usize) -> Result<Tensor> {
    let gpu = kernels::gpu::gpu(index).map_err(err("full"))?;
    let n = crate::tensor::checked_numel(shape)?;
    let b = gpu.uninit(n).map_err(err("full"))?;
    let y = k::unary(Unary::Fill(value), View { buffer: &b, offset: 0, shape: &[n], strides: &[1] })
        .map_err(err("full"))?;
    Ok(from_buffer(y, shape))
}

/// a (op) b with broadcasting.
pub fn binary(a: &Tensor, b: &Tensor, op: Binary, name: &'static str) -> Result<Tensor> {
    crate::device::same_device(name, &[a, b])?;
    let shape = broadcast_shapes(name, a.shape(), b.shape())?;
    let (la, lb) = (a.layout().broadcast_to(&shape)?, b.layout().broadcast_to(&shape)?);
    if shape.len() > k::MAX_RANK {
        return Err(TensorError::device(
            name,
            format!("GPU elementwise ops take rank <= {}, got {shape:?}", k::MAX_RANK),
        ));
    }
    let y = k::binary(op, view(a, &la)?, view(b, &lb)?).map_err(err(name))?;
    Ok(from_buffer(y, &shape))
}

/// Matrix product over the last two axes with broadcast batch axes (`Tensor::matmul`).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    crate::device::same_device("matmul", &[a, b])?;
    let (ra, rb) = (a.rank(), b.rank());
    let (m, kk, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 1]);
    let batch = broadcast_shapes("matmul", &a.shape()[..ra - 2], &b.shape()[..rb - 2])?;
    let mut a_shape = batch.clone();
    a_shape.extend([m, kk]);
    let mut b_shape = batch.clone();
    b_shape.extend([kk, n]);
    let (la, lb) = (a.layout().broadcast_to(&a_shape)?, b.layout().broadcast_to(&b_shape)?);
    let nb = batch.len();
    // The shader walks two batch axes: merge neighbouring batch axes that both operands step
    // through uniformly, and copy an operand that still needs more.
    let (dims, sa, sb) = merge_batch_axes(&batch, &la.strides[..nb], &lb.strides[..nb]);
    if dims.len() > 2 {
        let (ac, bc) = (contiguous(&a.broadcast_to(&a_shape)?)?, contiguous(&b.broadcast_to(&b_shape)?)?);
        let count: usize = batch.iter().product();
        let (a3, b3) = (ac.reshape(&[count, m, kk])?, bc.reshape(&[count, kk, n])?);
        let mut shape = batch;
        shape.extend([m, n]);
        return matmul(&a3, &b3)?.reshape(&shape);
    }
    let pad = |d: &[usize]| -> [usize; 2] {
        match d.len() {
            0 => [0, 0],
            1 => [0, d[0]],
            _ => [d[0], d[1]],
        }
    };
    let batch2 = match dims.len() {
        0 => [1, 1],
        1 => [1, dims[0]],
        _ => [dims[0], dims[1]],
    };
    let oa = Operand {
        buffer: buffer("matmul", a)?,
        offset: la.offset,
        row_stride: la.strides[nb],
        col_stride: la.strides[nb + 1],
        batch_strides: pad(&sa),
    };
    let ob = Operand {
        buffer: buffer("matmul", b)?,
        offset: lb.offset,
        row_stride: lb.strides[nb],
        col_stride: lb.strides[nb + 1],
        batch_strides: pad(&sb),
    };
    let c =
        k::matmul(MatmulShape { m, n, k: kk, batch: batch2, alpha: 1.0 }, oa, ob, None, None).map_err(err("matmul"))?;
    let mut shape = batch;
    shape.extend([m, n]);
    Ok(from_buffer(c, &shape))
}

/// y = x W^T + b for x (rows, in), W (out, in): the matmul with W read transposed in place and
/// the bias added in the store.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let mut all = vec![x, w];
    all.extend(b);
    crate::device::same_device("linear", &all)?;
    let (x, w) = (contiguous(x)?, contiguous(w)?);
    let (rows, inp, out) = (x.shape()[0], x.shape()[1], w.shape()[0]);
    let bias = b.map(contiguous).transpose()?;
    let bias_buffer = bias.as_ref().map(|b| buffer("linear", b)).transpose()?;
    let c = k::matmul(
        MatmulShape { m: rows, n: out, k: inp, batch: [1, 1], alpha: 1.0 },
        Operand::dense(buffer("linear", &x)?, rows, inp),
        Operand::transposed(buffer("linear", &w)?, inp, out),
        bias_buffer,
        None,
    )
    .map_err(err("linear"))?;
    Ok(from_buffer(c, &[rows, out]))
}

/// Merges batch axes where both stride lists step uniformly (stride[i] = stride[i+1] size[i+1])
/// and drops axes of size 1.
fn merge_batch_axes(shape: &[usize], sa: &[usize], sb: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let (mut dims, mut a, mut b): (Vec<usize>, Vec<usize>, Vec<usize>) = (vec![], vec![], vec![]);
    for i in 0..shape.len() {
        if shape[i] == 1 {
            continue;
        }
        if let (Some(&last_n), Some(&last_a), Some(&last_b)) = (dims.last(), a.last(), b.last()) {
            if last_a == sa[i] * shape[i] && last_b == sb[i] * shape[i] {
                let at = dims.len() - 1;
                dims[at] = last_n * shape[i];
                a[at] = sa[i];
                b[at] = sb[i];
                continue;
            }
        }
        dims.push(shape[i]);
        a.push(sa[i]);
        b.push(sb[i]);
    }
    (dims, a, b)
}

/// Sum / mean / max over `axes` (`Tensor::sum` and friends): the reduced axes are moved last
/// (a view), made contiguous, and each row reduced by one workgroup.
pub fn reduce(t: &Tensor, op: &'static str, axes: &[usize], keepdim: bool) -> Result<Tensor> {
    let mut sorted = axes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let kept: Vec<usize> = (0..t.rank()).filter(|d| !sorted.contains(d)).collect();
    let run: usize = sorted.iter().map(|&a| t.shape()[a]).product();
    let outer: usize = kept.iter().map(|&a| t.shape()[a]).product();
    let shape: Vec<usize> = if keepdim {
        (0..t.rank()).map(|d| if sorted.contains(&d) { 1 } else { t.shape()[d] }).collect()
    } else {
        kept.iter().map(|&d| t.shape()[d]).collect()
    };
    let (reduce_op, scale) = match op {
        "sum" => (RowReduce::Sum, 1.0),
        "mean" => (RowReduce::Sum, 1.0 / run as f32),
        "max" => (RowReduce::Max, 1.0),
        _ => return Err(TensorError::device(op, "has no GPU kernel: move the tensor with to_cpu")),
    };
    // Leading axes of a contiguous tensor (bias gradients): column sums, no copy.
    let leading = sorted.iter().enumerate().all(|(i, &a)| i == a);
    if leading && reduce_op == RowReduce::Sum && t.is_contiguous() && !kept.is_empty() {
        let c = contiguous(t)?;
        let y = k::reduce_cols(buffer(op, &c)?, run, outer, scale, None).map_err(err(op))?;
        return Ok(from_buffer(y, &shape));
    }
    let perm: Vec<usize> = kept.iter().chain(sorted.iter()).copied().collect();
    let arranged = contiguous(&t.permute(&perm)?)?;
    let y = k::reduce_rows(buffer(op, &arranged)?, outer, run, reduce_op, scale).map_err(err(op))?;
    Ok(from_buffer(y, &shape))
}

/// Rows `indices` of axis 0 (an embedding lookup).
pub fn index_select0(t: &Tensor, indices: &[usize]) -> Result<Tensor> {
    let c = contiguous(t)?;
    let rows = t.shape()[0];
    let dim: usize = t.shape()[1..].iter().product();
    let ids: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    let y = k::gather_rows(buffer("index_select", &c)?, rows, dim, &ids).map_err(err("index_select"))?;
    let mut shape = t.shape().to_vec();
    shape[0] = indices.len();
    Ok(from_buffer(y, &shape))
}

/// dtable[indices[i]] += dy[i] for a GPU table gradient (the backward of [`index_select0`]):
/// returns a new tensor holding `base + scatter`.
pub fn index_add0(base: &Tensor, indices: &[usize], src: &Tensor) -> Result<Tensor> {
    crate::device::same_device("index_add", &[base, src])?;
    let out = unary(base, Unary::Affine { alpha: 1.0, beta: 0.0 })?;
    let (rows, dim) = (base.shape()[0], base.shape()[1..].iter().product::<usize>());
    let src = contiguous(src)?;
    let ids: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    k::scatter_add_rows(buffer("index_add", &src)?, buffer("index_add", &out)?, rows, dim, &ids)
        .map_err(err("index_add"))?;
    Ok(out)
}

/// Concatenation along `axis`: each input is brought to axis-first order, copied into one
/// buffer back to back, and the result permuted back.
pub fn concat(tensors: &[Tensor], axis: usize) -> Result<Tensor> {
    let refs: Vec<&Tensor> = tensors.iter().collect();
    crate::device::same_device("concat", &refs)?;
    let first = &tensors[0];
    let total: usize = tensors.iter().map(|t| t.numel()).sum();
    let gpu = buffer("concat", first)?.gpu().clone();
    let out = gpu.uninit(total).map_err(err("concat"))?;
    let mut at = 0;
    for t in tensors {
        let moved = contiguous(&t.transpose(0, axis)?)?;
        gpu.copy(buffer("concat", &moved)?, 0, &out, at, moved.numel());
        at += moved.numel();
    }
    let mut moved_shape = first.transpose(0, axis)?.shape().to_vec();
    moved_shape[0] = tensors.iter().map(|t| t.shape()[axis]).sum();
    contiguous(&from_buffer(out, &moved_shape).transpose(0, axis)?)
}

// ---------------------------------------------------------------------------------------------
// Row kernels for the autograd ops
// ---------------------------------------------------------------------------------------------

/// softmax(scale * x + mask) (or its log) over the last axis; the mask (rows / rows_per_mask,
/// cols) is shared by groups of rows.
pub fn softmax_rows(x: &Tensor, scale: f32, mask: Option<(&Tensor, usize)>, log: bool) -> Result<Tensor> {
    let cols = *x.shape().last().unwrap_or(&1);
    let rows = x.numel() / cols.max(1);
    let x = contiguous(x)?;
    let mask = mask.map(|(m, per)| contiguous(m).map(|m| (m, per))).transpose()?;
    let mask_arg = match &mask {
        Some((m, per)) => Some((buffer("softmax", m)?, *per)),
        None => None,
    };
    let y = k::softmax(buffer("softmax", &x)?, rows, cols, scale, mask_arg, log).map_err(err("softmax"))?;
    Ok(from_buffer(y, x.shape()))
}

/// The gradient of [`softmax_rows`] from its output.
pub fn softmax_rows_backward(y: &Tensor, dy: &Tensor, scale: f32, log: bool) -> Result<Tensor> {
    let cols = *y.shape().last().unwrap_or(&1);
    let rows = y.numel() / cols.max(1);
    let (y, dy) = (contiguous(y)?, contiguous(dy)?);
    let dx = k::softmax_backward(buffer("softmax", &y)?, buffer("softmax", &dy)?, rows, cols, scale, log)
        .map_err(err("softmax"))?;
    Ok(from_buffer(dx, y.shape()))
}

/// Layer norm over the last axis: (y, stats) with stats = [mean; rows] ++ [rstd; rows].
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    crate::device::same_device("layer_norm", &[x, gamma, beta])?;
    let cols = *x.shape().last().unwrap_or(&1);
    let rows = x.numel() / cols.max(1);
    let (x, g, b) = (contiguous(x)?, contiguous(gamma)?, contiguous(beta)?);
    let (y, stats) =
        k::layer_norm(buffer("layer_norm", &x)?, buffer("layer_norm", &g)?, buffer("layer_norm", &b)?, rows, cols, eps)
            .map_err(err("layer_norm"))?;
    Ok((from_buffer(y, x.shape()), from_buffer(stats, &[2, rows])))
}

/// Layer-norm backward: (dx, dgamma, dbeta).
pub fn layer_norm_backward(
    x: &Tensor,
    gamma: &Tensor,
    stats: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let cols = *x.shape().last().unwrap_or(&1);
    let rows = x.numel() / cols.max(1);
    let (x, g, dy) = (contiguous(x)?, contiguous(gamma)?, contiguous(dy)?);
    let gpu = buffer("layer_norm", &x)?.gpu().clone();
    let dgamma = gpu.zeros(cols).map_err(err("layer_norm"))?;
    let dbeta = gpu.zeros(cols).map_err(err("layer_norm"))?;
    let dx = k::layer_norm_backward(
        buffer("layer_norm", &x)?,
        buffer("layer_norm", &g)?,
        buffer("layer_norm", stats)?,
        buffer("layer_norm", &dy)?,
        &dgamma,
        &dbeta,
        rows,
        cols,
    )
    .map_err(err("layer_norm"))?;
    Ok((from_buffer(dx, x.shape()), from_buffer(dgamma, &[cols]), from_buffer(dbeta, &[cols])))
}

/// act(x) elementwise.
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    unary(x, Unary::Activation(act))
}

/// dy * act'(x).
pub fn activation_grad(x: &Tensor, dy: &Tensor, act: Activation) -> Result<Tensor> {
    crate::device::same_device("activation", &[x, dy])?;
    let (x, dy) = (contiguous(x)?, contiguous(dy)?);
    let dx =
        k::activation_grad(act, buffer("activation", &x)?, buffer("activation", &dy)?).map_err(err("activation"))?;
    Ok(from_buffer(dx, x.shape()))
}

/// One pass of an NHWC convolution (`kernels::gpu::ops::conv`): `a`, `b` as the pass takes them,
/// the result shaped `out_shape`.
pub fn conv(
    pass: k::ConvPass,
    depthwise: bool,
    g: &kernels::conv::ConvGeometry,
    a: &Tensor,
    b: &Tensor,
    out_shape: &[usize],
) -> Result<Tensor> {
    crate::device::same_device("conv", &[a, b])?;
    let (a, b) = (contiguous(a)?, contiguous(b)?);
    let y = k::conv(pass, depthwise, g, buffer("conv", &a)?, buffer("conv", &b)?).map_err(err("conv"))?;
    Ok(from_buffer(y, out_shape))
}

/// Inverted dropout with the counter-based mask of (seed, element index).
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    let x = contiguous(x)?;
    let y = k::dropout(buffer("dropout", &x)?, p, seed).map_err(err("dropout"))?;
    Ok(from_buffer(y, x.shape()))
}

#[cfg(test)]
mod tests {
    //! Tensor ops on the GPU device against the same ops on the CPU: views (transposes,
    //! slices, broadcasts) as operands, odd sizes, and the device rules (explicit moves, mixed
    //! operands refused with both devices named).

    use crate::{Device, Tensor};

    const GPU: Device = Device::Gpu(0);

    fn t(shape: &[usize], seed: u64) -> Tensor {
        Tensor::randn(shape, 0.0, 1.0, seed)
    }

    fn close(what: &str, gpu: &Tensor, cpu: &Tensor) {
        assert_eq!(gpu.device(), GPU, "{what}: result left the GPU");
        assert_eq!(gpu.shape(), cpu.shape(), "{what}: shape");
        let (g, c) = (gpu.to_cpu().unwrap().to_vec(), cpu.to_vec());
        let scale = c.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
        for (i, (a, b)) in g.iter().zip(&c).enumerate() {
            assert!((a - b).abs() <= 1e-4 * scale, "{what}[{i}]: {a} vs {b}");
        }
    }

    #[test]
    fn moves_are_explicit_and_round_trip_exactly() {
        let x = t(&[3, 5], 1);
        let g = x.to_device(GPU).unwrap();
        assert_eq!(g.device(), GPU);
        assert_eq!(g.to_cpu().unwrap().to_vec(), x.to_vec());
        // A strided view moves as its own elements.
        let v = x.t().unwrap();
        assert_eq!(v.to_device(GPU).unwrap().to_cpu().unwrap().to_vec(), v.to_vec());
        assert_eq!(g.t().unwrap().contiguous().to_cpu().unwrap().to_vec(), v.to_vec());
    }

    #[test]
    fn mixing_devices_is_an_error_naming_both() {
        let (a, b) = (t(&[2, 3], 2), t(&[2, 3], 3));
        let g = b.to_device(GPU).unwrap();
        for result in [a.add(&g), g.mul(&a), a.matmul(&g.t().unwrap())] {
            let msg = result.unwrap_err().to_string();
            assert!(msg.contains("cpu") && msg.contains("gpu:0"), "{msg}");
        }
        let msg = g.gather(0, &Tensor::zeros(&[1, 3])).unwrap_err().to_string();
        assert!(msg.contains("CPU only") && msg.contains("gpu:0"), "{msg}");
    }

    #[test]
    fn elementwise_ops_with_broadcasting_and_views() {
        let a = t(&[4, 1, 7], 4);
        let b = t(&[5, 1], 5);
        let (ga, gb) = (a.to_device(GPU).unwrap(), b.to_device(GPU).unwrap());
        close("add", &ga.add(&gb).unwrap(), &a.add(&b).unwrap());
        close("sub", &ga.sub(&gb).unwrap(), &a.sub(&b).unwrap());
        close("mul", &ga.mul(&gb).unwrap(), &a.mul(&b).unwrap());
        let bp = b.abs().add_scalar(0.5);
        close("div", &ga.div(&bp.to_device(GPU).unwrap()).unwrap(), &a.div(&bp).unwrap());
        close("maximum", &ga.maximum(&gb).unwrap(), &a.maximum(&b).unwrap());
        // a transposed operand
        let (m, gm) = (t(&[7, 4], 6), t(&[7, 4], 6).to_device(GPU).unwrap());
        close(
            "transposed add",
            &gm.t().unwrap().add(&gm.t().unwrap()).unwrap(),
            &m.t().unwrap().add(&m.t().unwrap()).unwrap(),
        );
        let pos = a.abs().add_scalar(0.1);
        let gp = pos.to_device(GPU).unwrap();
        close("neg", &ga.neg(), &a.neg());
        close("exp", &ga.exp(), &a.exp());
        close("ln", &gp.ln(), &pos.ln());
        close("sqrt", &gp.sqrt(), &pos.sqrt());
        close("rsqrt", &gp.rsqrt(), &pos.rsqrt());
        close("square", &ga.square(), &a.square());
        close("tanh", &ga.tanh(), &a.tanh());
        close("sigmoid", &ga.sigmoid(), &a.sigmoid());
        close("relu", &ga.relu(), &a.relu());
        close("add_scalar", &ga.add_scalar(2.5), &a.add_scalar(2.5));
        close("mul_scalar", &ga.mul_scalar(-3.0), &a.mul_scalar(-3.0));
        close("div_scalar", &ga.div_scalar(4.0), &a.div_scalar(4.0));
        close("powf", &gp.powf(1.7), &pos.powf(1.7));
        close("clamp", &ga.clamp(-0.5, 0.25), &a.clamp(-0.5, 0.25));
    }

    #[test]
    fn matmul_with_batches_broadcast_and_transposed_views() {
        for (sa, sb) in [
            (vec![1, 1], vec![1, 1]),
            (vec![5, 3], vec![3, 70]),
            (vec![2, 3, 65, 9], vec![3, 9, 4]),
            (vec![2, 1, 4, 6], vec![1, 3, 6, 5]),
            (vec![2, 2, 2, 3, 4], vec![4, 2]),
        ] {
            let (a, b) = (t(&sa, 7), t(&sb, 8));
            let (ga, gb) = (a.to_device(GPU).unwrap(), b.to_device(GPU).unwrap());
            close(&format!("matmul {sa:?} {sb:?}"), &ga.matmul(&gb).unwrap(), &a.matmul(&b).unwrap());
        }
        // A^T B^T through views (the backward's shapes)
        let (a, b) = (t(&[9, 13], 9), t(&[11, 9], 10));
        let (ga, gb) = (a.to_device(GPU).unwrap(), b.to_device(GPU).unwrap());
        let want = a.t().unwrap().matmul(&b.t().unwrap()).unwrap();
        close("transposed matmul", &ga.t().unwrap().matmul(&gb.t().unwrap()).unwrap(), &want);
        // heads split by permute: (B, T, H, D) -> (B, H, T, D) times its transpose
        let x = t(&[2, 5, 3, 4], 11);
        let q = x.permute(&[0, 2, 1, 3]).unwrap();
        let gq = x.to_device(GPU).unwrap().permute(&[0, 2, 1, 3]).unwrap();
        let want = q.matmul(&q.transpose(2, 3).unwrap()).unwrap();
        close("attention scores", &gq.matmul(&gq.transpose(2, 3).unwrap()).unwrap(), &want);
    }

    #[test]
    fn reductions_concat_and_indexing() {
        let x = t(&[3, 4, 5], 12);
        let g = x.to_device(GPU).unwrap();
        for axes in [vec![0], vec![1], vec![2], vec![0, 2], vec![0, 1, 2]] {
            for keep in [false, true] {
                close(&format!("sum {axes:?}"), &g.sum(&axes, keep).unwrap(), &x.sum(&axes, keep).unwrap());
                close(&format!("mean {axes:?}"), &g.mean(&axes, keep).unwrap(), &x.mean(&axes, keep).unwrap());
                close(&format!("max {axes:?}"), &g.max(&axes, keep).unwrap(), &x.max(&axes, keep).unwrap());
            }
        }
        assert!((g.sum_all() - x.sum_all()).abs() < 1e-4);
        close("sum_to_shape", &g.sum_to_shape(&[4, 1]).unwrap(), &x.sum_to_shape(&[4, 1]).unwrap());
        let y = t(&[3, 2, 5], 13);
        let gy = y.to_device(GPU).unwrap();
        close(
            "concat axis 1",
            &Tensor::concat(&[g.clone(), gy.clone()], 1).unwrap(),
            &Tensor::concat(&[x.clone(), y.clone()], 1).unwrap(),
        );
        close(
            "concat axis 0",
            &Tensor::concat(&[g.clone(), g.clone()], 0).unwrap(),
            &Tensor::concat(&[x.clone(), x.clone()], 0).unwrap(),
        );
        let table = t(&[10, 6], 14);
        let gt = table.to_device(GPU).unwrap();
        let ids = [3, 0, 9, 3];
        close("index_select", &gt.index_select(0, &ids).unwrap(), &table.index_select(0, &ids).unwrap());
        let src = t(&[4, 6], 15);
        let want = table.index_add(0, &ids, &src).unwrap();
        close("index_add", &gt.index_add(0, &ids, &src.to_device(GPU).unwrap()).unwrap(), &want);
        assert!(gt.index_select(0, &[10]).is_err());
        close("reshape of a view", &g.t().unwrap().reshape(&[60]).unwrap(), &x.t().unwrap().reshape(&[60]).unwrap());
    }

    #[test]
    fn row_kernels_match_the_cpu_kernels() {
        use kernels::activation::Activation;
        let x = t(&[6, 33], 16);
        let g = x.to_device(GPU).unwrap();
        let mut want = vec![0.0; x.numel()];
        kernels::softmax::softmax_forward(&x.to_vec(), &mut want, 33, 0.5, None);
        let want = Tensor::from_vec(want, &[6, 33]).unwrap();
        close("softmax", &super::softmax_rows(&g, 0.5, None, false).unwrap(), &want);
        let gelu = {
            let mut y = vec![0.0; x.numel()];
            kernels::activation::activation_forward(Activation::GeluErf, &x.to_vec(), &mut y);
            Tensor::from_vec(y, x.shape()).unwrap()
        };
        close("gelu", &super::activation(&g, Activation::GeluErf).unwrap(), &gelu);
        let full = Tensor::full_on(&[2, 3], 1.5, GPU).unwrap();
        assert_eq!(full.to_vec(), vec![1.5; 6]);
    }
}
