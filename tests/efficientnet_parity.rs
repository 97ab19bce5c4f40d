//! EfficientNet against PyTorch (fixtures from `scripts/make_fixtures.py efficientnet`): the real
//! EfficientNet-lite0 weights, read from the legacy-format `.pth` without Python, reproduce
//! PyTorch's logits within 1e-3; a zip-format `.pth` reads back exactly.

mod common;

use align::efficientnet::{EfficientNet, EfficientNetConfig};
use autograd::Var;
use nn::Ctx;
use tensor::io::safetensors::SafeTensors;
use tensor::io::torch::load_state_dict;
use tensor::{Rng, Tolerance};

#[test]
fn lite0_real_weights_reproduce_pytorch_logits() {
    let tensors = load_state_dict(common::lite0_pth()).unwrap();
    assert_eq!(tensors.len(), 296);
    let model = EfficientNet::new(EfficientNetConfig::by_name("lite0").unwrap(), &mut Rng::new(0));
    let report = model.load_pytorch(&tensors).unwrap();
    assert!(report.unexpected.is_empty(), "{report}");
    let fx = SafeTensors::open(common::fixture("efficientnet_lite0.safetensors")).unwrap();
    let x = Var::constant(fx.tensor("input_nhwc").unwrap());
    let logits = autograd::no_grad(|| model.logits(&x, &mut Ctx::eval())).unwrap().value();
    let want = fx.tensor("logits").unwrap();
    assert_eq!(logits.shape(), want.shape());
    Tolerance::new(0.0, 1e-3).assert("lite0 logits", &logits.to_vec(), &want.to_vec());
    assert_eq!(logits.argmax(1, false).unwrap().to_vec(), want.argmax(1, false).unwrap().to_vec());
}

#[test]
fn zip_format_pth_reads_back_exactly() {
    let got = load_state_dict(common::fixture("small_zip_state_dict.pth")).unwrap();
    let want = SafeTensors::open(common::fixture("small_zip_state_dict_values.safetensors")).unwrap();
    assert_eq!(got.len(), 5);
    for (name, t) in &got {
        let w = want.tensor(name).unwrap();
        assert_eq!(t.shape(), w.shape(), "{name}");
        assert_eq!(t.to_vec(), w.to_vec(), "{name}");
    }
    // names keep file order
    assert_eq!(got[0].0, "conv.weight");
}

#[test]
fn damaged_pth_files_are_errors() {
    let bytes = std::fs::read(common::fixture("small_zip_state_dict.pth")).unwrap();
    let dir = std::env::temp_dir().join(format!("align-pth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for cut in [10, bytes.len() / 2, bytes.len() - 30] {
        let p = dir.join(format!("cut{cut}.pth"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert!(load_state_dict(&p).is_err(), "truncated at {cut}");
    }
    let p = dir.join("garbage.pth");
    std::fs::write(&p, b"\x80\x02not a pickle at all").unwrap();
    assert!(load_state_dict(&p).is_err());
    let lite = std::fs::read(common::lite0_pth()).unwrap();
    let p = dir.join("lite_cut.pth");
    std::fs::write(&p, &lite[..lite.len() - 1000]).unwrap();
    let e = load_state_dict(&p).unwrap_err().to_string();
    assert!(e.contains("lite_cut.pth"), "{e}");
}

#[test]
fn classify_puts_a_cat_first_for_chelsea_and_espresso_for_coffee() {
    let data = common::skimage_data();
    let images = vec![data.join("chelsea.png"), data.join("coffee.png"), data.join("no-such-file.png")];
    let results = align::cli::classify_images(&common::lite0_pth(), "efficientnet-lite0", &images, 5).unwrap();
    let names: Vec<&str> = align::cli::IMAGENET_CLASSES.lines().collect();
    assert_eq!(names.len(), 1000);
    let cat = results[0].as_ref().unwrap()[0].0;
    assert!((281..=285).contains(&cat), "chelsea: top class {} ({})", cat, names[cat]);
    let coffee = results[1].as_ref().unwrap()[0].0;
    assert!([967, 968, 504].contains(&coffee), "coffee: top class {} ({})", coffee, names[coffee]);
    assert!(results[2].as_ref().unwrap_err().contains("no-such-file.png"));
}

#[test]
fn small_efficientnet_training_loss_and_gradients_match_pytorch() {
    use align::efficientnet::StageArgs;
    use nn::Module;
    use std::collections::BTreeMap;
    let fx = SafeTensors::open(common::fixture("efficientnet_train.safetensors")).unwrap();
    let mut cfg = EfficientNetConfig::by_name("b0").unwrap();
    cfg.stages = vec![
        StageArgs { repeats: 1, kernel: 3, stride: 1, expand: 1, in_ch: 32, out_ch: 16 },
        StageArgs { repeats: 1, kernel: 5, stride: 2, expand: 6, in_ch: 16, out_ch: 24 },
    ];
    cfg.num_classes = 10;
    cfg.drop_connect = 0.0;
    cfg.dropout = 0.0;
    let model = EfficientNet::new(cfg, &mut Rng::new(0));
    let sd: BTreeMap<String, tensor::Tensor> =
        fx.names().filter_map(|n| n.strip_prefix("param.").map(|p| (p.to_string(), fx.tensor(n).unwrap()))).collect();
    let report = model.load_state_dict(&sd, false).unwrap();
    assert!(
        report.unexpected.is_empty()
            && report.missing.iter().all(|n| n.contains("running_") || n.contains("num_batches")),
        "{report}"
    );
    let (_, targets) = fx.tensor_i64("targets").unwrap();
    let targets: Vec<usize> = targets.iter().map(|&t| t as usize).collect();
    let images = Var::constant(fx.tensor("images").unwrap());
    let logits = model.logits(&images, &mut Ctx::train(0)).unwrap();
    let loss = autograd::ops::softmax::cross_entropy(&logits, &targets, 0.1).unwrap();
    Tolerance::new(1e-5, 0.0).assert("loss", &[loss.value().item().unwrap()], &fx.tensor("loss").unwrap().to_vec());
    loss.backward().unwrap();
    let tol = Tolerance::scaled(1e-4, 1e-8);
    let mut checked = 0;
    for (name, p) in model.named_parameters() {
        let want = fx.tensor(&format!("grad.{name}")).unwrap();
        tol.assert(&format!("grad.{name}"), &p.grad().unwrap().to_vec(), &want.to_vec());
        checked += 1;
    }
    assert_eq!(checked, sd.len());
}
