//! Layer norm (last axis) and batch norm (channels-last), with fused backward passes.
//!
//! Layer norm saves only the per-row mean and reciprocal std besides the input it already
//! needs (llm.c's choice). Batch norm in training mode normalises with the batch statistics
//! and differentiates through them; in eval mode it uses fixed running statistics and is an
//! affine map per channel.
//!
//! Synchronised batch norm: under [`with_batch_stats_sync`], training-mode batch norm on this
//! thread takes its statistics over the batches of every data-parallel worker (the sync
//! function sums per-channel f64 vectors across workers), in forward and in backward.

use kernels::activation::Activation;
use kernels::batchnorm as bn;
use kernels::norm as kernel;
use tensor::{Result, Tensor, TensorError};

use super::maybe;
use crate::Var;

/// Replaces a vector of per-channel f64 sums by its sum over all data-parallel workers (every
/// worker calls it in the same order, with vectors of the same length).
pub type BatchStatsSync = std::sync::Arc<dyn Fn(&mut [f64]) + Send + Sync>;

thread_local! {
    static BATCH_STATS_SYNC: std::cell::RefCell<Option<BatchStatsSync>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with training-mode batch norm on this thread synchronised through `sync` (None:
/// per-worker statistics). The backward of a batch norm made inside `f` synchronises too.
pub fn with_batch_stats_sync<R>(sync: Option<BatchStatsSync>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<BatchStatsSync>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BATCH_STATS_SYNC.with(|s| *s.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(BATCH_STATS_SYNC.with(|s| std::mem::replace(&mut *s.borrow_mut(), sync)));
    f()
}

/// Global mean and biased variance from each worker's (rows, mean, variance): the parallel
/// variance formula in two rounds (global mean first), stable however large the mean.
fn synced_statistics(sync: &BatchStatsSync, rows: usize, mean: &mut [f32], var: &mut [f32]) -> usize {
    let c = mean.len();
    let n = rows as f64;
    let mut sums: Vec<f64> = mean.iter().map(|&m| n * m as f64).chain([n]).collect();
    sync(&mut sums);
    let total = sums[c];
    let global_mean: Vec<f64> = sums[..c].iter().map(|&s| s / total.max(1.0)).collect();
    let mut squares: Vec<f64> =
        (0..c).map(|j| n * (var[j] as f64 + (mean[j] as f64 - global_mean[j]).powi(2))).collect();
    sync(&mut squares);
    for j in 0..c {
        mean[j] = global_mean[j] as f32;
        var[j] = (squares[j] / total.max(1.0)) as f32;
    }
    total as usize
}

/// y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis of x; gamma, beta: (C,).
pub fn layer_norm(x: &Var, gamma: &Var, beta: &Var, eps: f32) -> Result<Var> {
    let xv = x.value().contiguous();
    let c =
        *xv.shape().last().ok_or_else(|| TensorError::Shape { op: "layer_norm", msg: "input has no axes".into() })?;
    let (gv, bv) = (gamma.value().contiguous(), beta.value().contiguous());
    if gv.shape() != [c] || bv.shape() != [c] {
        return Err(TensorError::Shape {
            op: "layer_norm",
            msg: format!("gamma {:?} / beta {:?} must be [{c}] for input {:?}", gv.shape(), bv.shape(), xv.shape()),
        });
    }
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[x, gamma, beta]) {
        return super::gpu::layer_norm(x, gamma, beta, eps);
    }
    let rows = xv.numel().checked_div(c).unwrap_or(0);
    let mut y = tensor::recycled_vec(xv.numel()); // written in full by the kernel
    let (mut mean, mut rstd) = (vec![0.0f32; rows], vec![0.0f32; rows]);
    let xs = xv.as_contiguous_slice().expect("contiguous");
    let (gs, bs) = (gv.as_contiguous_slice().expect("contiguous"), bv.as_contiguous_slice().expect("contiguous"));
    kernel::layer_norm_forward(xs, gs, bs, &mut y, &mut mean, &mut rstd, c, eps);
    let out = Tensor::from_vec(y, xv.shape())?;
    Ok(Var::from_fn(out, &[x, gamma, beta], "layer_norm", move |g, needs| {
        let gc = g.contiguous();
        let mut dx = tensor::recycled_vec(xv.numel());
        let mut dgamma = vec![0.0f32; c];
        let mut dbeta = vec![0.0f32; c];
        kernel::layer_norm_backward(
            xv.as_contiguous_slice().expect("contiguous"),
            gv.as_contiguous_slice().expect("contiguous"),
            &mean,
            &rstd,
            gc.as_contiguous_slice().expect("contiguous"),
            &mut dx,
            &mut dgamma,
            &mut dbeta,
            c,
        );
        Ok(vec![
            maybe(needs[0], || Tensor::from_vec(dx, xv.shape()))?,
            maybe(needs[1], || Tensor::from_vec(dgamma, &[c]))?,
            maybe(needs[2], || Tensor::from_vec(dbeta, &[c]))?,
        ])
    }))
}

/// Which statistics batch norm normalises with.
#[derive(Clone, Debug)]
pub enum BatchNormMode {
    /// Batch statistics over every axis but the last (the batch's mean and biased variance).
    Train { eps: f32 },
    /// Fixed running statistics, shape (C,).
    Eval { running_mean: Tensor, running_var: Tensor, eps: f32 },
}

/// Output of [`batch_norm`]; in training mode also the batch statistics, which the caller
/// folds into its running averages (biased variance: multiply by M / (M - 1) for PyTorch's
/// unbiased running variance).
pub struct BatchNormOutput {
    pub y: Var,
    pub batch_mean: Option<Tensor>,
    pub batch_var: Option<Tensor>,
    /// M: the values per channel the batch statistics cover (every worker's, when synchronised).
    pub count: usize,
}

/// Batch norm over channels-last input (..., C) with per-channel gamma and beta (C,).
pub fn batch_norm(x: &Var, gamma: &Var, beta: &Var, mode: &BatchNormMode) -> Result<BatchNormOutput> {
    batch_norm_act(x, gamma, beta, mode, None)
}

/// act(batch_norm(x)) as one op: the fused kernel writes only the activation's output, and the
/// backward recomputes the pre-activation from x instead of storing it (one tensor less held
/// per layer, two passes over memory fewer). `act` None is plain batch norm.
pub fn batch_norm_act(
    x: &Var,
    gamma: &Var,
    beta: &Var,
    mode: &BatchNormMode,
    act: Option<Activation>,
) -> Result<BatchNormOutput> {
    let xv = x.value().contiguous();
    let c =
        *xv.shape().last().ok_or_else(|| TensorError::Shape { op: "batch_norm", msg: "input has no axes".into() })?;
    let (gv, bv) = (gamma.value().contiguous(), beta.value().contiguous());
    if gv.shape() != [c] || bv.shape() != [c] {
        return Err(TensorError::Shape {
            op: "batch_norm",
            msg: format!("gamma {:?} / beta {:?} must be [{c}] for input {:?}", gv.shape(), bv.shape(), xv.shape()),
        });
    }
    if c == 0 {
        return Err(TensorError::Shape { op: "batch_norm", msg: "zero channels".into() });
    }
    let training = matches!(mode, BatchNormMode::Train { .. });
    let sync = if training { BATCH_STATS_SYNC.with(|s| s.borrow().clone()) } else { None };
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[x, gamma, beta]) {
        if sync.is_some() {
            return Err(TensorError::Shape {
                op: "batch_norm",
                msg: "synchronised batch norm runs on the CPU only".into(),
            });
        }
        if matches!(mode, BatchNormMode::Train { .. }) && xv.numel() == 0 {
            return Err(TensorError::Shape { op: "batch_norm", msg: "training mode needs a non-empty batch".into() });
        }
        return super::gpu::batch_norm_act(x, gamma, beta, mode, act);
    }
    let xs = xv.as_contiguous_slice().expect("contiguous");
    let (mut mean, mut var) = (vec![0.0f32; c], vec![0.0f32; c]);
    let mut count = xv.numel() / c;
    let eps = match mode {
        BatchNormMode::Train { eps } => {
            if xv.numel() == 0 {
                return Err(TensorError::Shape {
                    op: "batch_norm",
                    msg: "training mode needs a non-empty batch".into(),
                });
            }
            bn::batch_norm_stats(xs, c, &mut mean, &mut var);
            if let Some(sync) = &sync {
                count = synced_statistics(sync, count, &mut mean, &mut var);
            }
            *eps
        }
        BatchNormMode::Eval { running_mean, running_var, eps } => {
            if running_mean.shape() != [c] || running_var.shape() != [c] {
                return Err(TensorError::Shape { op: "batch_norm", msg: format!("running statistics must be [{c}]") });
            }
            mean = running_mean.to_vec();
            var = running_var.to_vec();
            *eps
        }
    };
    let rstd: Vec<f32> = var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect();
    let mut y = vec![0.0f32; xv.numel()];
    let (gs, bs) = (gv.as_contiguous_slice().expect("contiguous"), bv.as_contiguous_slice().expect("contiguous"));
    bn::batch_norm_forward(xs, &mean, &rstd, gs, bs, act, &mut y, c);
    let out = Tensor::from_vec(y, xv.shape())?;
    let (batch_mean, batch_var) = if training {
        (Some(Tensor::from_vec(mean.clone(), &[c])?), Some(Tensor::from_vec(var, &[c])?))
    } else {
        (None, None)
    };
    let name = match act {
        None => "batch_norm",
        Some(Activation::Silu) => "batch_norm_silu",
        Some(_) => "batch_norm_act",
    };
    let y = Var::from_fn(out, &[x, gamma, beta], name, move |g, needs| {
        let gc = g.contiguous();
        let mut dx = vec![0.0f32; xv.numel()];
        let (mut dgamma, mut dbeta) = (vec![0.0f32; c], vec![0.0f32; c]);
        bn::batch_norm_backward_synced_with(
            kernels::simd::Isa::best(),
            xv.as_contiguous_slice().expect("contiguous"),
            &mean,
            &rstd,
            gv.as_contiguous_slice().expect("contiguous"),
            bv.as_contiguous_slice().expect("contiguous"),
            act,
            gc.as_contiguous_slice().expect("contiguous"),
            &mut dx,
            &mut dgamma,
            &mut dbeta,
            c,
            training,
            &mut |sums| {
                if let Some(sync) = &sync {
                    sync(sums)
                }
            },
        );
        Ok(vec![
            maybe(needs[0], || Tensor::from_vec(dx, xv.shape()))?,
            maybe(needs[1], || Tensor::from_vec(dgamma, &[c]))?,
            maybe(needs[2], || Tensor::from_vec(dbeta, &[c]))?,
        ])
    });
    Ok(BatchNormOutput { y, batch_mean, batch_var, count })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};

    #[test]
    fn layer_norm_passes_gradcheck() {
        let o = GradcheckOptions::default();
        let x = Tensor::rand_uniform(&[2, 3, 6], -2.0, 2.0, 1);
        let g = Tensor::rand_uniform(&[6], 0.5, 1.5, 2);
        let b = Tensor::rand_uniform(&[6], -0.5, 0.5, 3);
        check_gradients(&[x.clone(), g.clone(), b.clone()], |v| layer_norm(&v[0], &v[1], &v[2], 1e-5), &o).unwrap();
        // strided input: the transposed view of a (6, 3) matrix
        let xt = Tensor::rand_uniform(&[6, 3], -2.0, 2.0, 4);
        let g6 = Tensor::rand_uniform(&[6], 0.5, 1.5, 5);
        check_gradients(
            &[xt, g6.clone(), g6],
            |v| layer_norm(&crate::ops::shape::transpose(&v[0], 0, 1)?, &v[1], &v[2], 1e-5),
            &o,
        )
        .unwrap();
    }

    #[test]
    fn batch_norm_passes_gradcheck_in_both_modes() {
        let o = GradcheckOptions::default();
        let x = Tensor::rand_uniform(&[2, 3, 3, 4], -2.0, 2.0, 1);
        let g = Tensor::rand_uniform(&[4], 0.5, 1.5, 2);
        let b = Tensor::rand_uniform(&[4], -0.5, 0.5, 3);
        let train = BatchNormMode::Train { eps: 1e-3 };
        check_gradients(&[x.clone(), g.clone(), b.clone()], |v| Ok(batch_norm(&v[0], &v[1], &v[2], &train)?.y), &o)
            .unwrap();
        let eval = BatchNormMode::Eval {
            running_mean: Tensor::rand_uniform(&[4], -0.5, 0.5, 4),
            running_var: Tensor::rand_uniform(&[4], 0.5, 1.5, 5),
            eps: 1e-3,
        };
        check_gradients(&[x.clone(), g.clone(), b.clone()], |v| Ok(batch_norm(&v[0], &v[1], &v[2], &eval)?.y), &o)
            .unwrap();
        // fused batch norm + SiLU, both modes
        for mode in [train, eval] {
            check_gradients(
                &[x.clone(), g.clone(), b.clone()],
                |v| Ok(batch_norm_act(&v[0], &v[1], &v[2], &mode, Some(Activation::Silu))?.y),
                &o,
            )
            .unwrap();
        }
    }

    /// Two workers holding halves of a batch, synchronised, match one worker holding all of it:
    /// outputs, input gradients (the global means), and the statistics count.
    #[test]
    fn synchronised_batch_norm_over_two_workers_equals_the_whole_batch() {
        use std::sync::{Arc, Barrier, Mutex};
        let (rows, c) = (10, 3);
        // a large mean: the two-round variance must not cancel
        let x = Tensor::rand_uniform(&[rows, c], 40.0, 44.0, 7).to_vec();
        let dy = Tensor::rand_uniform(&[rows, c], -1.0, 1.0, 8).to_vec();
        let gamma = Tensor::rand_uniform(&[c], 0.5, 1.5, 9);
        let beta = Tensor::rand_uniform(&[c], -0.5, 0.5, 10);
        let run = |x: &[f32], dy: &[f32]| {
            let n = x.len() / c;
            let xv = Var::parameter(Tensor::from_vec(x.to_vec(), &[n, c]).unwrap());
            let (g, b) = (Var::parameter(gamma.clone()), Var::parameter(beta.clone()));
            let out = batch_norm_act(&xv, &g, &b, &BatchNormMode::Train { eps: 1e-5 }, Some(Activation::Silu)).unwrap();
            out.y.backward_with(Tensor::from_vec(dy.to_vec(), &[n, c]).unwrap()).unwrap();
            (out.y.value().to_vec(), xv.grad().unwrap().to_vec(), out.count)
        };
        let whole = run(&x, &dy);
        // the sync: both workers add their vector into a shared slot, then read the total
        let slot = Arc::new(Mutex::new(Vec::<f64>::new()));
        let barrier = Arc::new(Barrier::new(2));
        let sync: BatchStatsSync = {
            let (slot, barrier) = (slot.clone(), barrier.clone());
            Arc::new(move |v: &mut [f64]| {
                if barrier.wait().is_leader() {
                    slot.lock().unwrap().clear();
                }
                barrier.wait();
                {
                    let mut s = slot.lock().unwrap();
                    if s.is_empty() {
                        s.resize(v.len(), 0.0);
                    }
                    s.iter_mut().zip(v.iter()).for_each(|(a, b)| *a += b);
                }
                barrier.wait();
                v.copy_from_slice(&slot.lock().unwrap());
            })
        };
        let split = 4 * c; // 4 rows and 6 rows
        let halves: Vec<_> = std::thread::scope(|s| {
            let workers: Vec<_> = [(&x[..split], &dy[..split]), (&x[split..], &dy[split..])]
                .into_iter()
                .map(|(xs, dys)| {
                    let sync = sync.clone();
                    s.spawn(move || with_batch_stats_sync(Some(sync), || run(xs, dys)))
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let y: Vec<f32> = halves.iter().flat_map(|h| h.0.clone()).collect();
        let dx: Vec<f32> = halves.iter().flat_map(|h| h.1.clone()).collect();
        for (a, b) in y.iter().zip(&whole.0).chain(dx.iter().zip(&whole.1)) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
        }
        assert_eq!((halves[0].2, halves[1].2, whole.2), (rows, rows, rows));
    }
}
