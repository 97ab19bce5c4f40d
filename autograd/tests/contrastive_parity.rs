//! ALIGN's contrastive loss against PyTorch (fixture from `scripts/make_fixtures.py contrastive`,
//! float64): the loss and the gradients of both embeddings and of ln(sigma) within 1e-5 relative.

use autograd::ops::contrastive::{contrastive_loss, l2_normalize};
use autograd::Var;
use tensor::io::safetensors::SafeTensors;
use tensor::Tolerance;

#[test]
fn contrastive_loss_and_gradients_match_pytorch() {
    let fx = SafeTensors::open(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/contrastive.safetensors")).unwrap();
    let x = Var::parameter(fx.tensor("image").unwrap());
    let y = Var::parameter(fx.tensor("text").unwrap());
    let t = Var::parameter(fx.tensor("log_temperature").unwrap());
    let loss = contrastive_loss(&l2_normalize(&x, 0.0).unwrap(), &l2_normalize(&y, 0.0).unwrap(), &t, 0.1).unwrap();
    let tol = Tolerance::new(1e-5, 0.0);
    tol.assert("loss", &[loss.value().item().unwrap()], &fx.tensor("loss").unwrap().to_vec());
    loss.backward().unwrap();
    let scaled = Tolerance::scaled(1e-5, 1e-8);
    scaled.assert("grad.image", &x.grad().unwrap().to_vec(), &fx.tensor("grad.image").unwrap().to_vec());
    scaled.assert("grad.text", &y.grad().unwrap().to_vec(), &fx.tensor("grad.text").unwrap().to_vec());
    tol.assert(
        "grad.log_temperature",
        &t.grad().unwrap().to_vec(),
        &fx.tensor("grad.log_temperature").unwrap().to_vec(),
    );
}
