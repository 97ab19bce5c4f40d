//! Elementwise ops: unary maps, binary ops with NumPy broadcasting, scalar ops, comparisons
//! (which return 0.0 / 1.0 masks) and `where`.
//!
//! Binary ops broadcast both operands to the common shape by stride-0 views and walk them with
//! one odometer ([`for_each_offset_pair`]); the common case, two contiguous tensors of the same
//! shape, is a straight zip over slices, split across the kernel threads when large and
//! written into a recycled buffer (see `storage::recycled_vec`).

use crate::error::Result;
use crate::layout::{broadcast_shapes, for_each_offset_pair};
use crate::storage::recycled_vec;
use crate::tensor::Tensor;
use kernels::parallel::{for_each_chunk, for_each_row_block};

/// Elements per thread-chunk of an elementwise op: below about this, waking a second thread
/// costs more than the loop.
const ELEMENTWISE_CHUNK: usize = 32 * 1024;

/// Runs a unary op on the GPU when the tensor is there (`kernels::gpu::ops::Unary`).
macro_rules! on_gpu {
    ($t:expr, $op:expr) => {
        #[cfg(feature = "wgpu")]
        if $t.device().is_gpu() {
            #[allow(unused_imports)]
            use kernels::{activation::Activation, gpu::ops::Unary};
            return crate::gpu::unary_or_panic($t, $op);
        }
    };
}

impl Tensor {
    /// Applies `f` to every element, returning a new contiguous tensor.
    ///
    /// # Panics
    /// On a GPU tensor: a Rust closure cannot run there (use the named ops, which have GPU
    /// kernels, or move the tensor with `to_cpu`).
    pub fn map(&self, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
        assert!(
            !self.device().is_gpu(),
            "Tensor::map runs a Rust closure on the CPU; this tensor is on {}",
            self.device()
        );
        let data: Vec<f32> = match self.as_contiguous_slice() {
            Some(s) => {
                let mut out = recycled_vec(s.len());
                for_each_chunk(&mut out, ELEMENTWISE_CHUNK, |start, o| {
                    for (o, &x) in o.iter_mut().zip(&s[start..]) {
                        *o = f(x);
                    }
                });
                out
            }
            None => self.to_vec().into_iter().map(f).collect(),
        };
        Tensor::from_contiguous(data, self.shape())
    }

    /// Combines two tensors elementwise after broadcasting them to a common shape.
    /// `op` names the operation in the error when the shapes do not broadcast.
    /// Operands on a GPU run the named op's kernel there (add, sub, mul, div, maximum,
    /// minimum, pow); other ops on GPU tensors are an error.
    pub fn zip_map(&self, other: &Tensor, op: &'static str, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
        if self.device().is_gpu() || other.device().is_gpu() {
            crate::device::same_device(op, &[self, other])?;
            #[cfg(feature = "wgpu")]
            {
                use kernels::gpu::ops::Binary;
                let kernel = match op {
                    "add" => Binary::Add,
                    "sub" => Binary::Sub,
                    "mul" => Binary::Mul,
                    "div" => Binary::Div,
                    "maximum" => Binary::Max,
                    "minimum" => Binary::Min,
                    "pow" => Binary::Pow,
                    _ => {
                        return Err(crate::TensorError::Device {
                            op,
                            msg: format!("has no GPU kernel; the operands are on {}", self.device()),
                        })
                    }
                };
                return crate::gpu::binary(self, other, kernel, op);
            }
        }
        if self.shape() == other.shape() {
            if let (Some(a), Some(b)) = (self.as_contiguous_slice(), other.as_contiguous_slice()) {
                let mut data = recycled_vec(a.len());
                for_each_chunk(&mut data, ELEMENTWISE_CHUNK, |start, o| {
                    for ((o, &x), &y) in o.iter_mut().zip(&a[start..]).zip(&b[start..]) {
                        *o = f(x, y);
                    }
                });
                return Ok(Tensor::from_contiguous(data, self.shape()));
            }
        }
        // Row broadcast (a bias added to every row): contiguous `self`, contiguous `other` whose
        // shape is a suffix of self's (after dropping leading 1s).
        let trimmed: &[usize] = {
            let o = other.shape();
            let lead = o.iter().take_while(|&&d| d == 1).count();
            &o[lead..]
        };
        if trimmed.len() <= self.rank()
            && self.shape().ends_with(trimmed)
            && other.numel() > 0
            && other.rank() <= self.rank()
        {
            if let (Some(a), Some(b)) = (self.as_contiguous_slice(), other.as_contiguous_slice()) {
                let n = b.len();
                let mut data = recycled_vec(a.len());
                // whole rows per chunk, so each row is one straight (vectorisable) zip with b
                for_each_row_block(&mut data, n, ELEMENTWISE_CHUNK, |start, o| {
                    for (orow, arow) in o.chunks_exact_mut(n).zip(a[start..].chunks_exact(n)) {
                        for ((o, &x), &y) in orow.iter_mut().zip(arow).zip(b) {
                            *o = f(x, y);
                        }
                    }
                });
                return Ok(Tensor::from_contiguous(data, self.shape()));
            }
        }
        let shape = broadcast_shapes(op, self.shape(), other.shape())?;
        let la = self.layout().broadcast_to(&shape)?;
        let lb = other.layout().broadcast_to(&shape)?;
        let (sa, sb) = (self.storage_slice(), other.storage_slice());
        let mut data = Vec::with_capacity(shape.iter().product());
        for_each_offset_pair(&shape, (&la.strides, la.offset), (&lb.strides, lb.offset), |oa, ob| {
            data.push(f(sa[oa], sb[ob]))
        });
        Ok(Tensor::from_contiguous(data, &shape))
    }

    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        self.zip_map(other, "add", |a, b| a + b)
    }
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        self.zip_map(other, "sub", |a, b| a - b)
    }
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        self.zip_map(other, "mul", |a, b| a * b)
    }
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        self.zip_map(other, "div", |a, b| a / b)
    }
    pub fn maximum(&self, other: &Tensor) -> Result<Tensor> {
        self.zip_map(other, "maximum", |a, b| if a.is_nan() || a >= b { a } else { b })
    }
    pub fn minimum(&self, other: &Tensor) -> Result<Tensor> {
        self.zip_map(other, "minimum", |a, b| if a.is_nan() || a <= b { a } else { b })
    }
    pub fn pow(&self, other: &Tensor) -> Result<Tensor> {
        self.zip_map(other, "pow", f32::powf)
    }

    // comparisons: 1.0 where true, 0.0 where false
    pub fn eq_t(&self, other: &Tensor) -> Result<Tensor> {
        self.zip_map(other, "eq", |a, b| (a == b) as u8 as f32)
    }
    pub fn ne_t(&self, other: &Tensor) -> Result<Tensor> {
        self.zip_map(other, "ne", |a, b| (a != b) as u8 as f32)
    }
    pub fn lt(&self, other: &Tensor) -> Result<Tensor> {
        self.zip_map(other, "lt", |a, b| (a < b) as u8 as f32)
    }
    pub fn le(&self, other: &Tensor) -> Result<Tensor> {
        self.zip_map(other, "le", |a, b| (a <= b) as u8 as f32)
    }
    pub fn gt(&self, other: &Tensor) -> Result<Tensor> {
        self.zip_map(other, "gt", |a, b| (a > b) as u8 as f32)
    }
    pub fn ge(&self, other: &Tensor) -> Result<Tensor> {
        self.zip_map(other, "ge", |a, b| (a >= b) as u8 as f32)
    }

    /// `cond != 0 ? on_true : on_false`, all three broadcast together.
    pub fn where_cond(cond: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        for t in [cond, on_true, on_false] {
            t.require_cpu("where")?;
        }
        let shape = broadcast_shapes("where", cond.shape(), on_true.shape())?;
        let shape = broadcast_shapes("where", &shape, on_false.shape())?;
        let c = cond.broadcast_to(&shape)?.to_vec();
        let t = on_true.broadcast_to(&shape)?.to_vec();
        let f = on_false.broadcast_to(&shape)?.to_vec();
        let data = c.iter().zip(t).zip(f).map(|((&m, x), y)| if m != 0.0 { x } else { y }).collect();
        Ok(Tensor::from_contiguous(data, &shape))
    }

    // unary maths
    pub fn neg(&self) -> Tensor {
        on_gpu!(self, Unary::Affine { alpha: -1.0, beta: 0.0 });
        self.map(|x| -x)
    }
    pub fn abs(&self) -> Tensor {
        on_gpu!(self, Unary::Abs);
        self.map(f32::abs)
    }
    pub fn exp(&self) -> Tensor {
        on_gpu!(self, Unary::Exp);
        self.map(f32::exp)
    }
    pub fn ln(&self) -> Tensor {
        on_gpu!(self, Unary::Log);
        self.map(f32::ln)
    }
    pub fn sqrt(&self) -> Tensor {
        on_gpu!(self, Unary::Sqrt);
        self.map(f32::sqrt)
    }
    pub fn rsqrt(&self) -> Tensor {
        on_gpu!(self, Unary::Powf(-0.5));
        self.map(|x| 1.0 / x.sqrt())
    }
    pub fn square(&self) -> Tensor {
        on_gpu!(self, Unary::Square);
        self.map(|x| x * x)
    }
    pub fn tanh(&self) -> Tensor {
        on_gpu!(self, Unary::Tanh);
        self.map(f32::tanh)
    }
    pub fn sigmoid(&self) -> Tensor {
        on_gpu!(self, Unary::Activation(Activation::Sigmoid));
        self.map(|x| 1.0 / (1.0 + (-x).exp()))
    }
    pub fn relu(&self) -> Tensor {
        on_gpu!(self, Unary::Relu);
        self.map(|x| if x > 0.0 { x } else { 0.0 })
    }

    // scalar ops
    pub fn add_scalar(&self, s: f32) -> Tensor {
        on_gpu!(self, Unary::Affine { alpha: 1.0, beta: s });
        self.map(|x| x + s)
    }
    pub fn sub_scalar(&self, s: f32) -> Tensor {
        on_gpu!(self, Unary::Affine { alpha: 1.0, beta: -s });
        self.map(|x| x - s)
    }
    pub fn mul_scalar(&self, s: f32) -> Tensor {
        on_gpu!(self, Unary::Affine { alpha: s, beta: 0.0 });
        self.map(|x| x * s)
    }
    pub fn div_scalar(&self, s: f32) -> Tensor {
        on_gpu!(self, Unary::Affine { alpha: 1.0 / s, beta: 0.0 });
        self.map(|x| x / s)
    }
    pub fn powf(&self, e: f32) -> Tensor {
        on_gpu!(self, Unary::Powf(e));
        self.map(|x| x.powf(e))
    }
    pub fn clamp(&self, lo: f32, hi: f32) -> Tensor {
        #[cfg(feature = "wgpu")]
        if self.device().is_gpu() {
            let bound = |v: f32| Tensor::full_on(&[], v, self.device()).expect("the tensor's device is open");
            return self.maximum(&bound(lo)).and_then(|t| t.minimum(&bound(hi))).expect("same device, scalar operand");
        }
        self.map(|x| x.max(lo).min(hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_binary_ops_against_index_arithmetic() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3], &[3]),
            (&[2, 1, 4], &[3, 1]),
            (&[1], &[5, 2]),
            (&[], &[2, 2]),
            (&[0, 3], &[3]),
            (&[4, 1], &[1, 5]),
        ];
        for (i, (sa, sb)) in cases.iter().enumerate() {
            let a = Tensor::rand_uniform(sa, -1.0, 1.0, i as u64);
            let b = Tensor::rand_uniform(sb, -1.0, 1.0, 100 + i as u64);
            let c = a.sub(&b).unwrap();
            let shape = c.shape().to_vec();
            let rank = shape.len();
            for flat in 0..c.numel() {
                // unravel the flat index, then map to each operand by NumPy's rule
                let mut idx = vec![0; rank];
                let mut r = flat;
                for d in (0..rank).rev() {
                    idx[d] = r % shape[d];
                    r /= shape[d];
                }
                let pick = |t: &Tensor| {
                    let lead = rank - t.rank();
                    let ti: Vec<usize> =
                        (0..t.rank()).map(|d| if t.shape()[d] == 1 { 0 } else { idx[lead + d] }).collect();
                    t.get(&ti).unwrap()
                };
                assert_eq!(c.get(&idx).unwrap(), pick(&a) - pick(&b));
            }
        }
    }

    #[test]
    fn broadcast_failure_names_both_shapes() {
        let a = Tensor::zeros(&[2, 3]);
        let b = Tensor::zeros(&[4]);
        let err = a.mul(&b).unwrap_err().to_string();
        assert!(err.contains("mul") && err.contains("[2, 3]") && err.contains("[4]"), "{err}");
    }

    #[test]
    fn comparisons_and_where() {
        let a = Tensor::from_vec(vec![1.0, 5.0, 3.0], &[3]).unwrap();
        let b = Tensor::from_vec(vec![2.0], &[1]).unwrap();
        assert_eq!(a.gt(&b).unwrap().to_vec(), vec![0.0, 1.0, 1.0]);
        assert_eq!(a.le(&b).unwrap().to_vec(), vec![1.0, 0.0, 0.0]);
        assert_eq!(a.eq_t(&a).unwrap().to_vec(), vec![1.0; 3]);
        let mask = a.gt(&b).unwrap();
        let w = Tensor::where_cond(&mask, &a, &Tensor::scalar(-1.0)).unwrap();
        assert_eq!(w.to_vec(), vec![-1.0, 5.0, 3.0]);
        // where keeps NaN values from the chosen branch
        let n = Tensor::from_vec(vec![f32::NAN, 0.0, 0.0], &[3]).unwrap();
        let w = Tensor::where_cond(&Tensor::from_vec(vec![0.0, 1.0, 0.0], &[3]).unwrap(), &a, &n).unwrap();
        let v = w.to_vec();
        assert!(v[0].is_nan() && v[1] == 5.0 && v[2] == 0.0);
    }

    #[test]
    fn unary_and_scalar_ops_on_a_strided_view() {
        let t = Tensor::arange(0.0, 6.0, 1.0).unwrap().reshape(&[2, 3]).unwrap().t().unwrap();
        assert_eq!(t.mul_scalar(2.0).add_scalar(1.0).to_vec(), vec![1.0, 7.0, 3.0, 9.0, 5.0, 11.0]);
        assert_eq!(t.relu().neg().to_vec(), vec![0.0, -3.0, -1.0, -4.0, -2.0, -5.0]);
        assert!((Tensor::scalar(0.0).sigmoid().item().unwrap() - 0.5).abs() < 1e-7);
    }
}
