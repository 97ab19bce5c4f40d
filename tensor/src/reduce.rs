//! Reductions over any set of axes (sum, mean, max, min), arg-reductions over one axis
//! (argmax, argmin) and top-k.
//!
//! Strategy: permute so the kept axes come first and the reduced axes last, make that
//! contiguous, and reduce each trailing run. One code path for every axis set; the permute is a
//! view and the copy only happens when the reduced axes are not already innermost.
//!
//! Index results (argmax, top-k indices) are returned as f32 tensors holding whole numbers,
//! exact up to 2^24, which covers every axis this project reduces over.

use crate::error::{Result, TensorError};
use crate::tensor::Tensor;

impl Tensor {
    /// Validated, sorted, de-duplicated axes. An empty list reduces nothing.
    fn normalise_axes(&self, op: &'static str, axes: &[usize]) -> Result<Vec<usize>> {
        let mut sorted = axes.to_vec();
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            if w[0] == w[1] {
                return Err(TensorError::shape(op, format!("axis {} given twice", w[0])));
            }
        }
        for &a in &sorted {
            self.check_axis(op, a)?;
        }
        Ok(sorted)
    }

    /// Applies `reduce` to each run of elements that `axes` collapses. Returns the output.
    fn reduce_runs(
        &self,
        op: &'static str,
        axes: &[usize],
        keepdim: bool,
        reduce: impl Fn(&[f32]) -> f32,
    ) -> Result<Tensor> {
        let axes = self.normalise_axes(op, axes)?;
        self.require_cpu(op)?;
        let kept: Vec<usize> = (0..self.rank()).filter(|d| !axes.contains(d)).collect();
        let perm: Vec<usize> = kept.iter().chain(axes.iter()).copied().collect();
        let arranged = self.permute(&perm)?.contiguous();
        let run: usize = axes.iter().map(|&a| self.shape()[a]).product();
        let outer: usize = kept.iter().map(|&a| self.shape()[a]).product();
        let src = arranged.as_contiguous_slice().expect("contiguous");
        let data: Vec<f32> = (0..outer).map(|i| reduce(&src[i * run..(i + 1) * run])).collect();
        let shape: Vec<usize> = if keepdim {
            (0..self.rank()).map(|d| if axes.contains(&d) { 1 } else { self.shape()[d] }).collect()
        } else {
            kept.iter().map(|&d| self.shape()[d]).collect()
        };
        Ok(Tensor::from_contiguous(data, &shape))
    }

    /// Sum over `axes` (accumulated in f64).
    pub fn sum(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        // Fast path: leading axes of a contiguous tensor (bias gradients): add rows together.
        let sorted = self.normalise_axes("sum", axes)?;
        #[cfg(feature = "wgpu")]
        if self.device().is_gpu() {
            return crate::gpu::reduce(self, "sum", &sorted, keepdim);
        }
        if !sorted.is_empty()
            && self.is_contiguous()
            && sorted.iter().enumerate().all(|(i, &a)| i == a)
            && sorted.len() < self.rank()
        {
            let lead: usize = sorted.iter().map(|&a| self.shape()[a]).product();
            let row: usize = self.shape()[sorted.len()..].iter().product();
            let src = self.as_contiguous_slice().expect("contiguous");
            // f64 column sums over row blocks on the kernel threads; the same for any thread count.
            let data: Vec<f32> = if lead > 0 { kernels::reduce::column_sums(src, row) } else { vec![0.0; row] };
            let shape: Vec<usize> = if keepdim {
                (0..self.rank()).map(|d| if sorted.contains(&d) { 1 } else { self.shape()[d] }).collect()
            } else {
                self.shape()[sorted.len()..].to_vec()
            };
            return Ok(Tensor::from_contiguous(data, &shape));
        }
        self.reduce_runs("sum", axes, keepdim, |r| r.iter().map(|&x| x as f64).sum::<f64>() as f32)
    }

    /// Mean over `axes`; NaN for an empty run, as in NumPy.
    pub fn mean(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        #[cfg(feature = "wgpu")]
        if self.device().is_gpu() {
            let sorted = self.normalise_axes("mean", axes)?;
            return crate::gpu::reduce(self, "mean", &sorted, keepdim);
        }
        self.reduce_runs("mean", axes, keepdim, |r| (r.iter().map(|&x| x as f64).sum::<f64>() / r.len() as f64) as f32)
    }

    /// Maximum over `axes`; NaN propagates. Errors on an empty run.
    pub fn max(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        self.check_nonempty_runs("max", axes)?;
        #[cfg(feature = "wgpu")]
        if self.device().is_gpu() {
            let sorted = self.normalise_axes("max", axes)?;
            return crate::gpu::reduce(self, "max", &sorted, keepdim);
        }
        self.reduce_runs("max", axes, keepdim, |r| r.iter().copied().fold(f32::NEG_INFINITY, nan_max))
    }

    /// Minimum over `axes`; NaN propagates. Errors on an empty run.
    pub fn min(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        self.check_nonempty_runs("min", axes)?;
        self.reduce_runs("min", axes, keepdim, |r| r.iter().copied().fold(f32::INFINITY, nan_min))
    }

    /// The sum of every element (a GPU tensor is summed there and the one value read back).
    pub fn sum_all(&self) -> f32 {
        #[cfg(feature = "wgpu")]
        if self.device().is_gpu() {
            let axes: Vec<usize> = (0..self.rank()).collect();
            return crate::gpu::reduce(self, "sum", &axes, false)
                .and_then(|t| t.item())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        self.to_vec().iter().map(|&x| x as f64).sum::<f64>() as f32
    }

    pub fn mean_all(&self) -> f32 {
        if self.device().is_gpu() {
            return self.sum_all() / self.numel() as f32;
        }
        (self.to_vec().iter().map(|&x| x as f64).sum::<f64>() / self.numel() as f64) as f32
    }

    fn check_nonempty_runs(&self, op: &'static str, axes: &[usize]) -> Result<()> {
        for &a in axes {
            if self.dim(a)? == 0 {
                return Err(TensorError::shape(op, format!("reduces over empty axis {a} of shape {:?}", self.shape())));
            }
        }
        Ok(())
    }

    /// Index of the largest value along `axis` (first one on ties; a NaN counts as largest).
    pub fn argmax(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        self.check_nonempty_runs("argmax", &[axis])?;
        self.reduce_runs("argmax", &[axis], keepdim, |r| {
            let mut best = 0;
            for (i, &x) in r.iter().enumerate() {
                if r[best].is_nan() {
                    break;
                }
                if x > r[best] || x.is_nan() {
                    best = i;
                }
            }
            best as f32
        })
    }

    /// Index of the smallest value along `axis` (first one on ties; a NaN counts as smallest).
    pub fn argmin(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        self.neg().argmax(axis, keepdim)
    }

    /// The `k` largest (or smallest) values along `axis`, sorted, and their indices.
    /// Ties keep the lower index first. NaN sorts as largest.
    pub fn topk(&self, k: usize, axis: usize, largest: bool) -> Result<(Tensor, Tensor)> {
        self.require_cpu("topk")?;
        self.check_axis("topk", axis)?;
        let n = self.shape()[axis];
        if k > n {
            return Err(TensorError::shape("topk", format!("k = {k} exceeds size {n} of axis {axis}")));
        }
        let last = self.rank() - 1;
        let moved = self.transpose(axis, last)?.contiguous();
        let rows = moved.numel().checked_div(n).unwrap_or(0);
        let src = moved.as_contiguous_slice().expect("contiguous");
        let mut values = Vec::with_capacity(rows * k);
        let mut indices = Vec::with_capacity(rows * k);
        let mut order: Vec<usize> = Vec::with_capacity(n);
        for r in 0..rows {
            let row = &src[r * n..(r + 1) * n];
            order.clear();
            order.extend(0..n);
            let key = |i: usize| if largest { row[i] } else { -row[i] };
            // stable sort, descending by key, NaN first
            order.sort_by(|&a, &b| {
                let (x, y) = (key(a), key(b));
                y.partial_cmp(&x).unwrap_or_else(|| x.is_nan().cmp(&y.is_nan()).reverse())
            });
            for &i in &order[..k] {
                values.push(row[i]);
                indices.push(i as f32);
            }
        }
        let mut shape = moved.shape().to_vec();
        shape[last] = k;
        let v = Tensor::from_contiguous(values, &shape).transpose(axis, last)?.contiguous();
        let i = Tensor::from_contiguous(indices, &shape).transpose(axis, last)?.contiguous();
        Ok((v, i))
    }
}

fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

fn nan_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.min(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_over_axis_sets_match_loops() {
        let t = Tensor::rand_uniform(&[3, 4, 5], -1.0, 1.0, 3);
        let s = t.sum(&[0, 2], false).unwrap();
        assert_eq!(s.shape(), &[4]);
        for j in 0..4 {
            let mut want = 0.0f64;
            for i in 0..3 {
                for k in 0..5 {
                    want += t.get(&[i, j, k]).unwrap() as f64;
                }
            }
            assert!((s.get(&[j]).unwrap() as f64 - want).abs() < 1e-5);
        }
        let m = t.max(&[1], true).unwrap();
        assert_eq!(m.shape(), &[3, 1, 5]);
        for i in 0..3 {
            for k in 0..5 {
                let want = (0..4).map(|j| t.get(&[i, j, k]).unwrap()).fold(f32::MIN, f32::max);
                assert_eq!(m.get(&[i, 0, k]).unwrap(), want);
            }
        }
        let mean = t.mean(&[0, 1, 2], false).unwrap();
        assert_eq!(mean.shape(), &[] as &[usize]);
        assert!((mean.item().unwrap() - t.sum_all() / 60.0).abs() < 1e-6);
        assert_eq!(t.sum(&[], false).unwrap().to_vec(), t.to_vec());
        assert!(t.sum(&[1, 1], false).is_err());
        assert!(t.sum(&[3], false).is_err());
        assert_eq!(Tensor::zeros(&[0, 3]).sum(&[0], false).unwrap().to_vec(), vec![0.0; 3]);
        assert!(Tensor::zeros(&[0, 3]).max(&[0], false).is_err());
    }

    #[test]
    fn argmax_min_and_topk() {
        let t = Tensor::from_vec(vec![1.0, 3.0, 3.0, 0.0, -1.0, 2.0], &[2, 3]).unwrap();
        assert_eq!(t.argmax(1, false).unwrap().to_vec(), vec![1.0, 2.0]);
        assert_eq!(t.argmin(1, false).unwrap().to_vec(), vec![0.0, 1.0]);
        assert_eq!(t.argmax(0, true).unwrap().shape(), &[1, 3]);
        assert_eq!(t.min(&[0, 1], false).unwrap().item().unwrap(), -1.0);
        let (v, i) = t.topk(2, 1, true).unwrap();
        assert_eq!(v.to_vec(), vec![3.0, 3.0, 2.0, 0.0]);
        assert_eq!(i.to_vec(), vec![1.0, 2.0, 2.0, 0.0]);
        let (v, i) = t.topk(1, 0, false).unwrap();
        assert_eq!(v.to_vec(), vec![0.0, -1.0, 2.0]);
        assert_eq!(i.to_vec(), vec![1.0, 1.0, 1.0]);
        assert!(t.topk(4, 1, true).is_err());
    }
}
