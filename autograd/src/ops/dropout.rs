//! Dropout with a seeded mask: each element is kept with probability 1 - p and scaled by
//! 1 / (1 - p), so the expected value is unchanged. The mask is saved for backward.

use tensor::{Result, Rng, Tensor, TensorError};

use crate::Var;

pub fn dropout(x: &Var, p: f32, rng: &mut Rng) -> Result<Var> {
    if !(0.0..1.0).contains(&p) {
        return Err(TensorError::Shape { op: "dropout", msg: format!("drop probability {p} outside [0, 1)") });
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    #[cfg(feature = "wgpu")]
    if super::gpu::on_gpu(&[x]) {
        return super::gpu::dropout(x, p, rng);
    }
    let xv = x.value();
    let scale = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..xv.numel()).map(|_| if rng.next_f32() >= p { scale } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, xv.shape())?;
    let out = xv.mul(&mask)?;
    Ok(Var::from_fn(out, &[x], "dropout", move |g, _| Ok(vec![Some(g.mul(&mask)?)])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradcheckOptions};

    #[test]
    fn dropout_is_seeded_unbiased_and_differentiable() {
        let x = Tensor::ones(&[100_000]);
        let y = dropout(&Var::constant(x.clone()), 0.3, &mut Rng::new(1)).unwrap().value();
        let kept = y.to_vec().iter().filter(|&&v| v != 0.0).count() as f64 / 1e5;
        assert!((kept - 0.7).abs() < 0.01);
        assert!((y.mean_all() - 1.0).abs() < 0.02);
        let y2 = dropout(&Var::constant(x), 0.3, &mut Rng::new(1)).unwrap().value();
        assert_eq!(y.to_vec(), y2.to_vec());
        let t = Tensor::rand_uniform(&[3, 4], -1.0, 1.0, 2);
        check_gradients(&[t], |v| dropout(&v[0], 0.5, &mut Rng::new(9)), &GradcheckOptions::default()).unwrap();
        assert!(dropout(&Var::constant(Tensor::ones(&[2])), 1.0, &mut Rng::new(0)).is_err());
    }
}
