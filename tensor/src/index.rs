//! Joining and indexing: concat / stack, index_select (embedding lookup), gather, one_hot.

use crate::error::{Result, TensorError};
use crate::tensor::Tensor;

impl Tensor {
    /// Joins tensors along an existing `axis`; all other axes must agree.
    pub fn concat(tensors: &[Tensor], axis: usize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| TensorError::shape("concat", "no tensors given"))?;
        first.check_axis("concat", axis)?;
        for (i, t) in tensors.iter().enumerate() {
            let same_rank = t.rank() == first.rank();
            let others_agree = same_rank && (0..t.rank()).all(|d| d == axis || t.shape()[d] == first.shape()[d]);
            if !others_agree {
                return Err(TensorError::shape(
                    "concat",
                    format!(
                        "tensor {i} has shape {:?}, incompatible with {:?} along axis {axis}",
                        t.shape(),
                        first.shape()
                    ),
                ));
            }
        }
        if tensors.iter().any(|t| t.device().is_gpu()) {
            #[cfg(feature = "wgpu")]
            return crate::gpu::concat(tensors, axis);
            #[cfg(not(feature = "wgpu"))]
            unreachable!("no GPU tensors exist without the wgpu feature");
        }
        let outer: usize = first.shape()[..axis].iter().product();
        let inner: usize = first.shape()[axis + 1..].iter().product();
        let total_axis: usize = tensors.iter().map(|t| t.shape()[axis]).sum();
        let parts: Vec<Tensor> = tensors.iter().map(|t| t.contiguous()).collect();
        // every element is written below; a pooled buffer saves page faults on big concats
        let mut data = crate::storage::recycled_vec(outer * total_axis * inner);
        let mut at = 0;
        for o in 0..outer {
            for p in &parts {
                let run = p.shape()[axis] * inner;
                let src = p.as_contiguous_slice().expect("contiguous");
                data[at..at + run].copy_from_slice(&src[o * run..(o + 1) * run]);
                at += run;
            }
        }
        let mut shape = first.shape().to_vec();
        shape[axis] = total_axis;
        Ok(Tensor::from_contiguous(data, &shape))
    }

    /// Stacks same-shaped tensors along a new axis at position `axis`.
    pub fn stack(tensors: &[Tensor], axis: usize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| TensorError::shape("stack", "no tensors given"))?;
        if let Some((i, t)) = tensors.iter().enumerate().find(|(_, t)| t.shape() != first.shape()) {
            return Err(TensorError::shape(
                "stack",
                format!("tensor {i} has shape {:?}, expected {:?}", t.shape(), first.shape()),
            ));
        }
        let expanded = tensors.iter().map(|t| t.unsqueeze(axis)).collect::<Result<Vec<_>>>()?;
        Tensor::concat(&expanded, axis)
    }

    /// Picks entries `indices` along `axis` (an embedding lookup when `axis` is 0).
    pub fn index_select(&self, axis: usize, indices: &[usize]) -> Result<Tensor> {
        self.check_axis("index_select", axis)?;
        let n = self.shape()[axis];
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            return Err(TensorError::Index { op: "index_select", index: bad, size: n });
        }
        #[cfg(feature = "wgpu")]
        if self.device().is_gpu() {
            let moved = self.transpose(0, axis)?;
            return crate::gpu::index_select0(&moved, indices)?.transpose(0, axis)?.contiguous().reshape(&{
                let mut shape = self.shape().to_vec();
                shape[axis] = indices.len();
                shape
            });
        }
        let src = self.contiguous();
        let s = src.as_contiguous_slice().expect("contiguous");
        let outer: usize = self.shape()[..axis].iter().product();
        let inner: usize = self.shape()[axis + 1..].iter().product();
        let mut data = Vec::with_capacity(outer * indices.len() * inner);
        for o in 0..outer {
            for &i in indices {
                let start = (o * n + i) * inner;
                data.extend_from_slice(&s[start..start + inner]);
            }
        }
        let mut shape = self.shape().to_vec();
        shape[axis] = indices.len();
        Ok(Tensor::from_contiguous(data, &shape))
    }

    /// PyTorch's `gather`: `out[i][j][k] = self[index[i][j][k]][j][k]` for `axis` 0, and so on.
    /// `index` holds whole numbers, has the same rank, and is no larger on the other axes.
    pub fn gather(&self, axis: usize, index: &Tensor) -> Result<Tensor> {
        self.require_cpu("gather")?;
        index.require_cpu("gather")?;
        self.check_axis("gather", axis)?;
        if index.rank() != self.rank() || (0..self.rank()).any(|d| d != axis && index.shape()[d] > self.shape()[d]) {
            return Err(TensorError::shape(
                "gather",
                format!("index shape {:?} does not fit input shape {:?} on axis {axis}", index.shape(), self.shape()),
            ));
        }
        let idx = index.to_vec();
        let n = self.shape()[axis];
        let rank = self.rank();
        let ishape = index.shape();
        let src = self.storage_slice();
        let mut multi = vec![0usize; rank];
        let mut data = Vec::with_capacity(idx.len());
        for (flat, &v) in idx.iter().enumerate() {
            if !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < n) {
                return Err(TensorError::shape(
                    "gather",
                    format!("index value {v} invalid for axis {axis} of size {n}"),
                ));
            }
            let mut r = flat;
            for d in (0..rank).rev() {
                multi[d] = r % ishape[d];
                r /= ishape[d];
            }
            multi[axis] = v as usize;
            data.push(src[self.layout().offset_of(&multi)]);
        }
        Ok(Tensor::from_contiguous(data, ishape))
    }

    /// Adds the rows of `src` into a copy of `self` at `indices` along `axis` (repeated indices
    /// accumulate). The adjoint of [`Tensor::index_select`]: an embedding's gradient.
    pub fn index_add(&self, axis: usize, indices: &[usize], src: &Tensor) -> Result<Tensor> {
        if self.device().is_gpu() || src.device().is_gpu() {
            crate::device::same_device("index_add", &[self, src])?;
            if axis != 0 {
                return Err(TensorError::Device {
                    op: "index_add",
                    msg: format!("on {} runs along axis 0 only", self.device()),
                });
            }
            #[cfg(feature = "wgpu")]
            return crate::gpu::index_add0(self, indices, src);
        }
        let mut out = self.contiguous();
        out.index_add_in_place(axis, indices, src)?;
        Ok(out)
    }

    /// [`Tensor::index_add`] into `self` (copied first only if its buffer is shared, mapped or
    /// not contiguous). An embedding's gradient is built this way: a fresh zero table, then
    /// one scatter-add, instead of a zero table and a copy of it.
    pub fn index_add_in_place(&mut self, axis: usize, indices: &[usize], src: &Tensor) -> Result<()> {
        self.check_axis("index_add", axis)?;
        let mut want = self.shape().to_vec();
        want[axis] = indices.len();
        if src.shape() != want.as_slice() {
            return Err(TensorError::shape("index_add", format!("source shape {:?}, expected {want:?}", src.shape())));
        }
        let n = self.shape()[axis];
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            return Err(TensorError::Index { op: "index_add", index: bad, size: n });
        }
        if self.device().is_gpu() || src.device().is_gpu() {
            crate::device::same_device("index_add", &[self, src])?;
            *self = self.index_add(axis, indices, src)?;
            return Ok(());
        }
        let src = src.contiguous();
        let s = src.as_contiguous_slice().expect("contiguous");
        let outer: usize = self.shape()[..axis].iter().product();
        let inner: usize = self.shape()[axis + 1..].iter().product();
        let d = self.data_mut();
        for o in 0..outer {
            for (k, &i) in indices.iter().enumerate() {
                let dst = (o * n + i) * inner;
                let from = (o * indices.len() + k) * inner;
                for (a, &b) in d[dst..dst + inner].iter_mut().zip(&s[from..from + inner]) {
                    *a += b;
                }
            }
        }
        Ok(())
    }

    /// Adds `src` into a copy of `self` at the positions `index` names along `axis`
    /// (PyTorch's `scatter_add`, the adjoint of [`Tensor::gather`]).
    pub fn scatter_add(&self, axis: usize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        self.require_cpu("scatter_add")?;
        src.require_cpu("scatter_add")?;
        self.check_axis("scatter_add", axis)?;
        if index.shape() != src.shape()
            || index.rank() != self.rank()
            || (0..self.rank()).any(|d| d != axis && index.shape()[d] > self.shape()[d])
        {
            return Err(TensorError::shape(
                "scatter_add",
                format!(
                    "index {:?} / source {:?} do not fit {:?} on axis {axis}",
                    index.shape(),
                    src.shape(),
                    self.shape()
                ),
            ));
        }
        let idx = index.to_vec();
        let vals = src.to_vec();
        let n = self.shape()[axis];
        let mut out = self.contiguous();
        let strides = out.strides().to_vec();
        let ishape = index.shape().to_vec();
        let d = out.data_mut();
        for (flat, (&v, &x)) in idx.iter().zip(&vals).enumerate() {
            if !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < n) {
                return Err(TensorError::shape(
                    "scatter_add",
                    format!("index value {v} invalid for axis {axis} of size {n}"),
                ));
            }
            let mut r = flat;
            let mut off = 0;
            for dd in (0..ishape.len()).rev() {
                let i = if dd == axis { v as usize } else { r % ishape[dd] };
                off += i * strides[dd];
                r /= ishape[dd];
            }
            d[off] += x;
        }
        Ok(out)
    }

    /// Sums `self` down to `shape` over the axes that broadcasting expanded: leading extra axes,
    /// and axes where `shape` has 1. The single place where broadcast gradients are reduced.
    pub fn sum_to_shape(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let fail = || TensorError::shape("sum_to_shape", format!("cannot reduce {:?} to {shape:?}", self.shape()));
        if shape.len() > self.rank() {
            return Err(fail());
        }
        let lead = self.rank() - shape.len();
        let mut axes: Vec<usize> = (0..lead).collect();
        for (d, &n) in shape.iter().enumerate() {
            let have = self.shape()[lead + d];
            if n == 1 && have != 1 {
                axes.push(lead + d);
            } else if n != have {
                return Err(fail());
            }
        }
        self.sum(&axes, true)?.reshape(shape)
    }

    /// `(len, num_classes)` rows of zeros with a 1 at each class index.
    pub fn one_hot(indices: &[usize], num_classes: usize) -> Result<Tensor> {
        let mut data = vec![0.0f32; indices.len() * num_classes];
        for (row, &c) in indices.iter().enumerate() {
            if c >= num_classes {
                return Err(TensorError::Index { op: "one_hot", index: c, size: num_classes });
            }
            data[row * num_classes + c] = 1.0;
        }
        Ok(Tensor::from_contiguous(data, &[indices.len(), num_classes]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_stack_and_their_errors() {
        let a = Tensor::arange(0.0, 6.0, 1.0).unwrap().reshape(&[2, 3]).unwrap();
        let b = Tensor::arange(6.0, 8.0, 1.0).unwrap().reshape(&[2, 1]).unwrap();
        let c = Tensor::concat(&[a.clone(), b.clone()], 1).unwrap();
        assert_eq!(c.shape(), &[2, 4]);
        assert_eq!(c.to_vec(), vec![0.0, 1.0, 2.0, 6.0, 3.0, 4.0, 5.0, 7.0]);
        let at = a.t().unwrap(); // (3, 2) view
        let r = Tensor::concat(&[at.clone(), Tensor::ones(&[1, 2])], 0).unwrap();
        assert_eq!(r.to_vec(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0, 1.0, 1.0]);
        assert!(Tensor::concat(&[a.clone(), b.clone()], 0).is_err());
        assert!(Tensor::concat(&[], 0).is_err());
        let s = Tensor::stack(&[a.clone(), a.mul_scalar(10.0)], 1).unwrap();
        assert_eq!(s.shape(), &[2, 2, 3]);
        assert_eq!(s.get(&[1, 1, 2]).unwrap(), 50.0);
        assert!(Tensor::stack(&[a, b], 0).is_err());
    }

    #[test]
    fn index_select_gather_one_hot() {
        let table = Tensor::arange(0.0, 12.0, 1.0).unwrap().reshape(&[4, 3]).unwrap();
        let e = table.index_select(0, &[3, 0, 3]).unwrap();
        assert_eq!(e.to_vec(), vec![9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 9.0, 10.0, 11.0]);
        let cols = table.index_select(1, &[2]).unwrap();
        assert_eq!(cols.to_vec(), vec![2.0, 5.0, 8.0, 11.0]);
        assert!(matches!(table.index_select(0, &[4]), Err(TensorError::Index { index: 4, size: 4, .. })));
        let idx = Tensor::from_vec(vec![2.0, 0.0, 1.0, 1.0], &[4, 1]).unwrap();
        assert_eq!(table.gather(1, &idx).unwrap().to_vec(), vec![2.0, 3.0, 7.0, 10.0]);
        assert!(table.gather(1, &Tensor::from_vec(vec![3.0], &[1, 1]).unwrap()).is_err());
        assert!(table.gather(1, &Tensor::from_vec(vec![0.5], &[1, 1]).unwrap()).is_err());
        let oh = Tensor::one_hot(&[1, 0, 2], 3).unwrap();
        assert_eq!(oh.to_vec(), vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        assert!(Tensor::one_hot(&[3], 3).is_err());
    }

    #[test]
    fn adjoints_index_add_scatter_add_sum_to_shape() {
        let z = Tensor::zeros(&[4, 2]);
        let src = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2]).unwrap();
        let g = z.index_add(0, &[1, 3, 1], &src).unwrap();
        assert_eq!(g.to_vec(), vec![0.0, 0.0, 6.0, 8.0, 0.0, 0.0, 3.0, 4.0]);
        let idx = Tensor::from_vec(vec![1.0, 1.0, 0.0], &[3, 1]).unwrap();
        let s = Tensor::zeros(&[3, 2]).scatter_add(1, &idx, &Tensor::ones(&[3, 1])).unwrap();
        assert_eq!(s.to_vec(), vec![0.0, 1.0, 0.0, 1.0, 1.0, 0.0]);
        let b = Tensor::ones(&[2, 3, 4]).sum_to_shape(&[3, 1]).unwrap();
        assert_eq!(b.shape(), &[3, 1]);
        assert_eq!(b.to_vec(), vec![8.0; 3]);
        assert!(Tensor::ones(&[2, 3]).sum_to_shape(&[2]).is_err());
    }
}
