//! Convolutions on NHWC input, global average pooling and the squeeze-excite channel scale.
//!
//! Weight layouts: dense conv (KH, KW, C_in, C_out); depthwise conv (KH, KW, C). See
//! `kernels::conv` for the geometry and padding rules (TF "SAME", "VALID", explicit).

use kernels::conv::{self as k, ConvGeometry, Padding};
use kernels::pooling;
use tensor::{Result, Tensor, TensorError};

use super::maybe;
use crate::Var;

fn geometry(
    op: &'static str,
    x: &Tensor,
    k_h: usize,
    k_w: usize,
    c_out: usize,
    stride: usize,
    padding: Padding,
) -> Result<ConvGeometry> {
    if x.rank() != 4 {
        return Err(TensorError::Shape { op, msg: format!("input must be NHWC (rank 4), got {:?}", x.shape()) });
    }
    let s = x.shape();
    ConvGeometry::new(s[0], s[1], s[2], s[3], c_out, (k_h, k_w), (stride, stride), padding)
        .map_err(|msg| TensorError::Shape { op, msg: format!("input {:?}: {msg}", x.shape()) })
}

fn slice_of(t: &Tensor) -> &[f32] {
    t.as_contiguous_slice().expect("contiguous")
}

/// y (N, OH, OW, C_out) = x (N, H, W, C_in) conv w (KH, KW, C_in, C_out).
pub fn conv2d(x: &Var, w: &Var, stride: usize, padding: Padding) -> Result<Var> {
    let (xv, wv) = (x.value().contiguous(), w.value().contiguous());
    if wv.rank() != 4 || xv.rank() != 4 || wv.shape()[2] != xv.shape()[3] {
        return Err(TensorError::Shape {
            op: "conv2d",
            msg: format!("weight {:?} must be (KH, KW, C_in, C_out) matching input {:?}", wv.shape(), xv.shape()),
        });
    }
    let ws = wv.shape().to_vec();
    let g = geometry("conv2d", &xv, ws[0], ws[1], ws[3], stride, padding)?;
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[x, w]) {
        return super::gpu::conv(x, w, false, g);
    }
    let mut y = vec![0.0f32; g.output_len()];
    k::conv2d_forward(slice_of(&xv), slice_of(&wv), &mut y, &g);
    let out = Tensor::from_vec(y, &[g.batch, g.out_h, g.out_w, g.c_out])?;
    Ok(Var::from_fn(out, &[x, w], "conv2d", move |dy, needs| {
        let dy = dy.contiguous();
        Ok(vec![
            maybe(needs[0], || {
                let mut dx = vec![0.0f32; g.input_len()];
                k::conv2d_backward_input(slice_of(&dy), slice_of(&wv), &mut dx, &g);
                Tensor::from_vec(dx, xv.shape())
            })?,
            maybe(needs[1], || {
                let mut dw = vec![0.0f32; wv.numel()];
                k::conv2d_backward_weight(slice_of(&xv), slice_of(&dy), &mut dw, &g);
                Tensor::from_vec(dw, &ws)
            })?,
        ])
    }))
}

/// Depthwise conv (one filter per channel): x (N, H, W, C), w (KH, KW, C).
pub fn depthwise_conv2d(x: &Var, w: &Var, stride: usize, padding: Padding) -> Result<Var> {
    let (xv, wv) = (x.value().contiguous(), w.value().contiguous());
    if wv.rank() != 3 || xv.rank() != 4 || wv.shape()[2] != xv.shape()[3] {
        return Err(TensorError::Shape {
            op: "depthwise_conv2d",
            msg: format!("weight {:?} must be (KH, KW, C) matching input {:?}", wv.shape(), xv.shape()),
        });
    }
    let ws = wv.shape().to_vec();
    let g = geometry("depthwise_conv2d", &xv, ws[0], ws[1], ws[2], stride, padding)?;
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[x, w]) {
        return super::gpu::conv(x, w, true, g);
    }
    let mut y = vec![0.0f32; g.output_len()];
    k::depthwise_forward(slice_of(&xv), slice_of(&wv), &mut y, &g);
    let out = Tensor::from_vec(y, &[g.batch, g.out_h, g.out_w, g.c_out])?;
    Ok(Var::from_fn(out, &[x, w], "depthwise_conv2d", move |dy, needs| {
        let dy = dy.contiguous();
        Ok(vec![
            maybe(needs[0], || {
                let mut dx = vec![0.0f32; g.input_len()];
                k::depthwise_backward_input(slice_of(&dy), slice_of(&wv), &mut dx, &g);
                Tensor::from_vec(dx, xv.shape())
            })?,
            maybe(needs[1], || {
                let mut dw = vec![0.0f32; wv.numel()];
                k::depthwise_backward_weight(slice_of(&xv), slice_of(&dy), &mut dw, &g);
                Tensor::from_vec(dw, &ws)
            })?,
        ])
    }))
}

/// Mean over the spatial axes: (N, H, W, C) -> (N, C).
pub fn global_avg_pool(x: &Var) -> Result<Var> {
    let xv = x.value().contiguous();
    if xv.rank() != 4 {
        return Err(TensorError::Shape {
            op: "global_avg_pool",
            msg: format!("input must be NHWC, got {:?}", xv.shape()),
        });
    }
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[x]) {
        return super::gpu::global_avg_pool(x);
    }
    let s = xv.shape().to_vec();
    let (n, pixels, c) = (s[0], s[1] * s[2], s[3]);
    let mut y = vec![0.0f32; n * c];
    pooling::global_avg_pool_forward(slice_of(&xv), &mut y, n, pixels, c);
    let out = Tensor::from_vec(y, &[n, c])?;
    Ok(Var::from_fn(out, &[x], "global_avg_pool", move |dy, _| {
        let dy = dy.contiguous();
        let mut dx = vec![0.0f32; n * pixels * c];
        pooling::global_avg_pool_backward(slice_of(&dy), &mut dx, n, pixels, c);
        Ok(vec![Some(Tensor::from_vec(dx, &s)?)])
    }))
}

/// Squeeze-excite's channel scale: x (N, H, W, C) times s (N, C), broadcast over H and W.
pub fn channel_scale(x: &Var, s: &Var) -> Result<Var> {
    let (xs, ss) = (x.shape(), s.shape());
    if xs.len() != 4 || ss != [xs[0], xs[3]] {
        return Err(TensorError::Shape {
            op: "channel_scale",
            msg: format!("scale {ss:?} must be (N, C) for input {xs:?}"),
        });
    }
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[x, s]) {
        return super::gpu::channel_scale(x, s);
    }
    let (n, pixels, c) = (xs[0], xs[1] * xs[2], xs[3]);
    let (xv, sv) = (x.value().contiguous(), s.value().contiguous());
    let mut y = vec![0.0f32; xv.numel()];
    pooling::channel_scale_forward(slice_of(&xv), slice_of(&sv), &mut y, n, pixels, c);
    let out = Tensor::from_vec(y, xv.shape())?;
    Ok(Var::from_fn(out, &[x, s], "channel_scale", move |g, needs| {
        let g = g.contiguous();
        let (mut dx, mut ds) = (vec![0.0f32; xv.numel()], vec![0.0f32; n * c]);
        pooling::channel_scale_backward(slice_of(&xv), slice_of(&sv), slice_of(&g), &mut dx, &mut ds, n, pixels, c);
        Ok(vec![
            maybe(needs[0], || Tensor::from_vec(dx, xv.shape()))?,
            maybe(needs[1], || Tensor::from_vec(ds, &[n, c]))?,
        ])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};
    use crate::ops::shape;

    #[test]
    fn conv2d_passes_gradcheck_for_strides_and_paddings() {
        let o = GradcheckOptions::default();
        let cases = [
            (5, 5, 3, 1, Padding::Same),
            (7, 6, 3, 2, Padding::Same), // odd size, stride 2, asymmetric SAME padding
            (6, 7, 5, 2, Padding::Same),
            (5, 4, 3, 1, Padding::Explicit { top: 1, bottom: 0, left: 2, right: 1 }),
            (4, 4, 1, 1, Padding::Valid),
        ];
        for (i, &(h, w, kk, stride, pad)) in cases.iter().enumerate() {
            let x = Tensor::rand_uniform(&[2, h, w, 3], -1.0, 1.0, i as u64);
            let wt = Tensor::rand_uniform(&[kk, kk, 3, 2], -0.5, 0.5, 100 + i as u64);
            check_gradients(&[x.clone(), wt], |v| conv2d(&v[0], &v[1], stride, pad), &o)
                .unwrap_or_else(|e| panic!("conv2d case {i}: {e}"));
            let dw = Tensor::rand_uniform(&[kk, kk, 3], -0.5, 0.5, 200 + i as u64);
            check_gradients(&[x, dw], |v| depthwise_conv2d(&v[0], &v[1], stride, pad), &o)
                .unwrap_or_else(|e| panic!("depthwise case {i}: {e}"));
        }
        // Non-contiguous input: an NCHW tensor permuted to NHWC.
        let nchw = Tensor::rand_uniform(&[1, 3, 5, 4], -1.0, 1.0, 9);
        let wt = Tensor::rand_uniform(&[3, 3, 3, 2], -0.5, 0.5, 10);
        check_gradients(&[nchw, wt], |v| conv2d(&shape::permute(&v[0], &[0, 2, 3, 1])?, &v[1], 2, Padding::Same), &o)
            .unwrap();
    }

    #[test]
    fn pooling_and_channel_scale_pass_gradcheck() {
        let o = GradcheckOptions::default();
        let x = Tensor::rand_uniform(&[2, 3, 2, 4], -1.0, 1.0, 1);
        check_gradients(&[x.clone()], |v| global_avg_pool(&v[0]), &o).unwrap();
        let s = Tensor::rand_uniform(&[2, 4], -1.0, 1.0, 2);
        check_gradients(&[x, s], |v| channel_scale(&v[0], &v[1]), &o).unwrap();
    }

    #[test]
    fn bad_conv_shapes_are_errors() {
        let x = Var::constant(Tensor::zeros(&[1, 4, 4, 3]));
        assert!(conv2d(&x, &Var::constant(Tensor::zeros(&[3, 3, 2, 1])), 1, Padding::Same).is_err());
        assert!(conv2d(&x, &Var::constant(Tensor::zeros(&[3, 3, 3, 1])), 0, Padding::Same).is_err());
        assert!(conv2d(&x, &Var::constant(Tensor::zeros(&[5, 5, 3, 1])), 1, Padding::Valid).is_err());
        assert!(depthwise_conv2d(
            &Var::constant(Tensor::zeros(&[4, 4, 3])),
            &Var::constant(Tensor::zeros(&[3, 3, 3])),
            1,
            Padding::Same
        )
        .is_err());
        assert!(channel_scale(&x, &Var::constant(Tensor::zeros(&[1, 2]))).is_err());
    }
}
