//! Matrix products (batched, batch axes broadcast) and their gradients:
//! for C = A B, dA = dC B^T and dB = A^T dC, each summed back over broadcast batch axes.
//! Transposes are views: the GEMM reads them through strides.

use tensor::Result;

use super::maybe;
use crate::Var;

pub fn matmul(a: &Var, b: &Var) -> Result<Var> {
    let (av, bv) = (a.value(), b.value());
    let out = av.matmul(&bv)?;
    let (sa, sb) = (av.shape().to_vec(), bv.shape().to_vec());
    let keep_b = a.requires_grad().then(|| bv.clone());
    let keep_a = b.requires_grad().then(|| av.clone());
    Ok(Var::from_fn(out, &[a, b], "matmul", move |g, needs| {
        Ok(vec![
            maybe(needs[0], || g.matmul(&keep_b.as_ref().expect("saved").t()?)?.sum_to_shape(&sa))?,
            maybe(needs[1], || keep_a.as_ref().expect("saved").t()?.matmul(g)?.sum_to_shape(&sb))?,
        ])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};
    use tensor::Tensor;

    #[test]
    fn matmul_and_batched_matmul_pass_gradcheck() {
        let o = GradcheckOptions::default();
        let a = Tensor::rand_uniform(&[3, 5], -1.0, 1.0, 1);
        let b = Tensor::rand_uniform(&[5, 2], -1.0, 1.0, 2);
        check_gradients(&[a.clone(), b.clone()], |v| matmul(&v[0], &v[1]), &o).unwrap();
        // transposed operand (a view)
        let bt = Tensor::rand_uniform(&[2, 5], -1.0, 1.0, 3);
        check_gradients(&[a, bt], |v| matmul(&v[0], &crate::ops::shape::transpose(&v[1], 0, 1)?), &o).unwrap();
        // batch broadcast: (2, 1, 3, 4) x (3, 4, 2)
        let a = Tensor::rand_uniform(&[2, 1, 3, 4], -1.0, 1.0, 4);
        let b = Tensor::rand_uniform(&[3, 4, 2], -1.0, 1.0, 5);
        check_gradients(&[a, b], |v| matmul(&v[0], &v[1]), &o).unwrap();
    }
}
