//! Matrix multiplication of tensors: `(.., m, k) x (.., k, n) -> (.., m, n)` with the leading
//! (batch) axes broadcast by NumPy rules. Operands are handed to the GEMM kernel with their
//! strides, so transposed or permuted views are multiplied without a copy.

use kernels::gemm::sgemm_offsets;
use kernels::GemmStrides;

use crate::error::{Result, TensorError};
use crate::layout::{broadcast_shapes, for_each_offset_pair};
use crate::tensor::Tensor;

impl Tensor {
    /// Matrix product over the last two axes, batch axes broadcast. Both operands need rank >= 2.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        let (ra, rb) = (self.rank(), other.rank());
        if ra < 2 || rb < 2 {
            return Err(TensorError::shape(
                "matmul",
                format!("operands need rank >= 2, got {:?} and {:?}", self.shape(), other.shape()),
            ));
        }
        let (m, k) = (self.shape()[ra - 2], self.shape()[ra - 1]);
        let (k2, n) = (other.shape()[rb - 2], other.shape()[rb - 1]);
        if k != k2 {
            return Err(TensorError::shape(
                "matmul",
                format!("inner sizes differ: {:?} x {:?}", self.shape(), other.shape()),
            ));
        }
        let batch = broadcast_shapes("matmul", &self.shape()[..ra - 2], &other.shape()[..rb - 2])?;
        if self.device().is_gpu() || other.device().is_gpu() {
            crate::device::same_device("matmul", &[self, other])?;
            #[cfg(feature = "wgpu")]
            return crate::gpu::matmul(self, other);
        }
        let mut a_shape = batch.clone();
        a_shape.extend([m, k]);
        let mut b_shape = batch.clone();
        b_shape.extend([k, n]);
        let la = self.layout().broadcast_to(&a_shape)?;
        let lb = other.layout().broadcast_to(&b_shape)?;
        let nb = batch.len();
        let strides = GemmStrides {
            a_row: la.strides[nb],
            a_col: la.strides[nb + 1],
            b_row: lb.strides[nb],
            b_col: lb.strides[nb + 1],
            c_row: n,
            c_col: 1,
        };
        let batch_count: usize = batch.iter().product();
        let mut out = crate::storage::recycled_vec(batch_count * m * n); // every element written (beta = 0)
        if m * n > 0 {
            if k == 0 {
                out.fill(0.0);
            } else {
                let (mut a_offs, mut b_offs) = (Vec::with_capacity(batch_count), Vec::with_capacity(batch_count));
                for_each_offset_pair(
                    &batch,
                    (&la.strides[..nb], la.offset),
                    (&lb.strides[..nb], lb.offset),
                    |oa, ob| {
                        a_offs.push(oa);
                        b_offs.push(ob);
                    },
                );
                let c_offs: Vec<usize> = (0..batch_count).map(|i| i * m * n).collect();
                sgemm_offsets(
                    m,
                    k,
                    n,
                    1.0,
                    self.storage_slice(),
                    &a_offs,
                    other.storage_slice(),
                    &b_offs,
                    0.0,
                    &mut out,
                    &c_offs,
                    strides,
                );
            }
        }
        let mut shape = batch;
        shape.extend([m, n]);
        Ok(Tensor::from_contiguous(out, &shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &Tensor, b: &Tensor) -> Vec<f32> {
        let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] =
                    (0..k).map(|p| a.get(&[i, p]).unwrap() as f64 * b.get(&[p, j]).unwrap() as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn matmul_on_views_and_batches() {
        let a = Tensor::rand_uniform(&[5, 7], -1.0, 1.0, 1);
        let b = Tensor::rand_uniform(&[3, 7], -1.0, 1.0, 2).t().unwrap(); // (7, 3) transposed view
        let c = a.matmul(&b).unwrap();
        assert_eq!(c.shape(), &[5, 3]);
        for (x, y) in c.to_vec().iter().zip(naive(&a, &b)) {
            assert!((x - y).abs() < 1e-5);
        }
        // batch broadcast: (2, 1, 5, 7) x (4, 7, 3) -> (2, 4, 5, 3)
        let ab = Tensor::rand_uniform(&[2, 1, 5, 7], -1.0, 1.0, 3);
        let bb = Tensor::rand_uniform(&[4, 7, 3], -1.0, 1.0, 4);
        let cb = ab.matmul(&bb).unwrap();
        assert_eq!(cb.shape(), &[2, 4, 5, 3]);
        for i in 0..2 {
            for j in 0..4 {
                let a2 = ab.narrow(0, i, 1).unwrap().reshape(&[5, 7]).unwrap();
                let b2 = bb.narrow(0, j, 1).unwrap().reshape(&[7, 3]).unwrap();
                let want = naive(&a2, &b2);
                let got = cb.narrow(0, i, 1).unwrap().narrow(1, j, 1).unwrap().to_vec();
                for (x, y) in got.iter().zip(want) {
                    assert!((x - y).abs() < 1e-5);
                }
            }
        }
        assert!(a.matmul(&a).is_err());
        assert!(Tensor::zeros(&[3]).matmul(&a).is_err());
        assert_eq!(Tensor::zeros(&[2, 0]).matmul(&Tensor::zeros(&[0, 3])).unwrap().to_vec(), vec![0.0; 6]);
    }
}
