//! EfficientNet against PyTorch (fixtures from `scripts/make_fixtures.py efficientnet`): the real
//! EfficientNet-lite0 weights, read from the legacy-format `.pth` without Python, reproduce
//! PyTorch's logits within 1e-3; a zip-format `.pth` reads back exactly; a torchvision-built
//! model (fixture group `efficientnet_torchvision`) loads under torchvision's names and matches.

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
fn torchvision_weights_load_by_name_and_reproduce_its_logits() {
    use align::efficientnet::{is_torchvision_naming, torchvision_to_ours};
    let tensors = load_state_dict(common::fixture("efficientnet_torchvision_tiny.pth")).unwrap();
    assert!(is_torchvision_naming(tensors.iter().map(|(n, _)| n.as_str())));
    let mut cfg = EfficientNetConfig::by_name("tiny").unwrap().torchvision();
    cfg.num_classes = 10;
    // spot checks of the mapping (tiny has stages of 1, 1, 1, 2, 2, 2, 1 blocks)
    let map = |n: &str| torchvision_to_ours(&cfg, n);
    assert_eq!(map("features.0.0.weight").as_deref(), Some("_conv_stem.weight"));
    assert_eq!(map("features.1.0.block.0.0.weight").as_deref(), Some("_blocks.0._depthwise_conv.weight"));
    assert_eq!(map("features.1.0.block.1.fc2.bias").as_deref(), Some("_blocks.0._se_expand.bias"));
    assert_eq!(map("features.5.1.block.3.1.running_var").as_deref(), Some("_blocks.6._bn2.running_var"));
    assert_eq!(map("features.8.1.weight").as_deref(), Some("_bn1.weight"));
    assert_eq!(map("classifier.1.bias").as_deref(), Some("_fc.bias"));
    assert_eq!(map("features.5.2.block.0.0.weight"), None, "stage 5 has two blocks");
    assert_eq!(map("features.2.0.block.4.0.weight"), None);

    let model = EfficientNet::new(cfg.clone(), &mut Rng::new(0));
    let report = model.load_pytorch(&tensors).unwrap();
    // the only leftovers are BN's step counters
    assert!(report.unexpected.iter().all(|n| n.ends_with("num_batches_tracked")), "{report}");
    let fx = SafeTensors::open(common::fixture("efficientnet_torchvision_tiny.safetensors")).unwrap();
    let x = Var::constant(fx.tensor("input_nhwc").unwrap());
    let (logits, pooled) = autograd::no_grad(|| -> tensor::Result<_> {
        let ctx = &mut Ctx::eval();
        let classifier = model.head.as_ref().expect("built with classes");
        let head = classifier.bn.forward_with(
            &classifier.conv.forward(&model.forward_blocks(&x, ctx)?, ctx)?,
            ctx,
            model.act,
        )?;
        Ok((model.logits(&x, ctx)?.value(), autograd::ops::conv::global_avg_pool(&head)?.value()))
    })
    .unwrap();
    let tol = Tolerance::new(1e-4, 1e-4);
    tol.assert("torchvision pooled head features", &pooled.to_vec(), &fx.tensor("head_pooled").unwrap().to_vec());
    tol.assert("torchvision logits", &logits.to_vec(), &fx.tensor("logits").unwrap().to_vec());

    // the TF-style model (SAME padding, eps 1e-3) loads the same names but computes other numbers
    let mut tf_cfg = EfficientNetConfig::by_name("tiny").unwrap();
    tf_cfg.num_classes = 10;
    let tf_model = EfficientNet::new(tf_cfg, &mut Rng::new(0));
    tf_model.load_pytorch(&tensors).unwrap();
    // (per position: global pooling would average a one-pixel shift away)
    let features =
        |m: &EfficientNet| autograd::no_grad(|| m.forward_blocks(&x, &mut Ctx::eval())).unwrap().value().to_vec();
    let (ours, tf) = (features(&model), features(&tf_model));
    let scale = ours.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = ours.iter().zip(&tf).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst > 0.05 * scale, "padding and eps should matter: max diff {worst}, scale {scale}");
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
    // the same state dict in the legacy container, recognised by content
    let legacy = common::fixture("small_legacy_state_dict.pth");
    assert_eq!(tensor::io::WeightFormat::of_file(&legacy).unwrap(), tensor::io::WeightFormat::TorchLegacy);
    let old = load_state_dict(&legacy).unwrap();
    assert_eq!(old.len(), 5);
    for ((n, a), (m, b)) in old.iter().zip(&got) {
        assert_eq!((n, a.shape(), a.to_vec()), (m, b.shape(), b.to_vec()));
    }
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
    let results =
        align::cli::classify_images(&common::lite0_pth(), "efficientnet-lite0", &images, 5, tensor::Device::Cpu)
            .unwrap();
    let names: Vec<&str> = align::cli::IMAGENET_CLASSES.lines().collect();
    assert_eq!(names.len(), 1000);
    let cat = results[0].as_ref().unwrap()[0].0;
    assert!((281..=285).contains(&cat), "chelsea: top class {} ({})", cat, names[cat]);
    let coffee = results[1].as_ref().unwrap()[0].0;
    assert!([967, 968, 504].contains(&coffee), "coffee: top class {} ({})", coffee, names[coffee]);
    assert!(results[2].as_ref().unwrap_err().contains("no-such-file.png"));
}

/// The five scikit-image photos of the `resize` and `lite0_photos` fixtures.
const PHOTOS: [&str; 5] = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png"];

/// Pillow's bilinear and bicubic shrinks of real photos, to the grey level (the fixture group
/// `resize`; the synthetic edge cases are in `align::resample`'s own tests).
#[test]
fn photo_resizes_equal_pillows() {
    use align::resample::{fixture_image, max_difference, resize, Filter};
    let fx = SafeTensors::open(common::fixture("resize.safetensors")).unwrap();
    for photo in PHOTOS {
        let img = align::images::load_rgb(&common::skimage_data().join(photo)).unwrap();
        let key = photo.split('.').next().unwrap();
        for (name, filter) in [("bilinear", Filter::Bilinear), ("bicubic", Filter::Bicubic)] {
            let pillow = fixture_image(&fx, &format!("photo.{key}.{name}")).unwrap();
            let ours = resize(&img, pillow.width(), pillow.height(), filter);
            let worst = max_difference(&ours, &pillow);
            assert!(worst <= 1, "{photo} {name}: {worst} grey levels from Pillow");
        }
    }
}

/// `align classify`'s preprocessing is torchvision's Resize(256) + CenterCrop(224) on PIL images,
/// so lite0's probabilities on real photos are PyTorch's (fixture group `lite0_photos`): the
/// same top-1 on each photo and every probability within 0.005.
#[test]
fn lite0_on_photos_gives_pytorchs_probabilities() {
    let fx = SafeTensors::open(common::fixture("lite0_photos.safetensors")).unwrap();
    let data = common::skimage_data();
    let images: Vec<_> = PHOTOS.iter().map(|p| data.join(p)).collect();
    let results =
        align::cli::classify_images(&common::lite0_pth(), "efficientnet-lite0", &images, 1000, tensor::Device::Cpu)
            .unwrap();
    for (photo, result) in PHOTOS.iter().zip(results) {
        let want = fx.tensor(photo.split('.').next().unwrap()).unwrap().to_vec();
        let mut ours = vec![0.0f32; 1000];
        let top = result.unwrap();
        for &(class, p) in &top {
            ours[class] = p;
        }
        let want_top = want.iter().enumerate().fold((0, f32::MIN), |b, (i, &p)| if p > b.1 { (i, p) } else { b }).0;
        assert_eq!(top[0].0, want_top, "{photo}: top-1");
        let worst = ours.iter().zip(&want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 0.005, "{photo}: probabilities differ by up to {worst}");
    }
}

/// `align classify --precision bf16` (the matrix products on bf16-rounded operands) keeps
/// lite0's top-1 on every photo, with every probability within 0.01 of the f32 run.
#[test]
fn lite0_top1_on_photos_is_the_same_in_bf16() {
    use kernels::bf16::{with_matmul_precision, MatmulPrecision};
    let data = common::skimage_data();
    let images: Vec<_> = PHOTOS.iter().map(|p| data.join(p)).collect();
    let run = |p: MatmulPrecision| {
        with_matmul_precision(p, || {
            align::cli::classify_images(&common::lite0_pth(), "efficientnet-lite0", &images, 1000, tensor::Device::Cpu)
                .unwrap()
        })
    };
    let (f32_results, bf16_results) = (run(MatmulPrecision::F32), run(MatmulPrecision::Bf16));
    let mut largest = 0.0f32;
    for ((photo, full), half) in PHOTOS.iter().zip(f32_results).zip(bf16_results) {
        let (full, half) = (full.unwrap(), half.unwrap());
        assert_eq!(full[0].0, half[0].0, "{photo}: top-1 differs in bf16");
        let mut probs = vec![0.0f32; 1000];
        for &(class, p) in &full {
            probs[class] = p;
        }
        let worst = half.iter().fold(0.0f32, |m, &(class, p)| m.max((p - probs[class]).abs()));
        assert!(worst <= 0.01, "{photo}: bf16 probabilities differ by up to {worst}");
        largest = largest.max(worst);
    }
    // the bf16 products really ran (results not bitwise those of f32)
    assert!(largest > 0.0, "bf16 run gave the f32 probabilities bit for bit");
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
    // Each gradient within 1e-4 of its own tensor's scale. Some are zero in exact arithmetic
    // (the bias of a BN whose output feeds a 1x1 conv and another training-mode BN: a constant
    // shift per channel is normalised away); the float64 reference holds ~1e-17 there and
    // float32 a cancelling sum over batch x pixels, rounding noise of order 1e-8. Those are
    // judged at 1e-4 of the largest gradient in the model instead of at 1e-4 of nothing.
    let tol = Tolerance::scaled(1e-4, 1e-8);
    let wants: Vec<(String, Vec<f32>)> = model
        .named_parameters()
        .iter()
        .map(|(n, _)| (n.clone(), fx.tensor(&format!("grad.{n}")).unwrap().to_vec()))
        .collect();
    let largest = wants.iter().flat_map(|(_, w)| w.iter()).fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    let mut checked = 0;
    for ((name, p), (_, want)) in model.named_parameters().iter().zip(&wants) {
        let got = p.grad().unwrap().to_vec();
        if want.iter().all(|v| v.abs() < 1e-12) {
            Tolerance::new(0.0, 1e-4 * largest).assert(&format!("grad.{name} (zero)"), &got, want);
        } else {
            tol.assert(&format!("grad.{name}"), &got, want);
        }
        checked += 1;
    }
    assert_eq!(checked, sd.len());
}

/// An MBConv block with its skip connection and drop-connect against PyTorch (fixture
/// `efficientnet_residual`): the second block (16 -> 16, stride 1) adds its branch, dropped for
/// sample 1 and scaled by 1 / 0.75 for the others, to its input. Features, loss and every
/// parameter gradient in training mode.
#[test]
fn mbconv_with_skip_and_drop_connect_matches_pytorch() {
    use align::efficientnet::StageArgs;
    use nn::layers::DropPath;
    use nn::Module;
    use std::collections::BTreeMap;
    let fx = SafeTensors::open(common::fixture("efficientnet_residual.safetensors")).unwrap();
    let mut cfg = EfficientNetConfig::by_name("b0").unwrap();
    cfg.stages = vec![
        StageArgs { repeats: 1, kernel: 3, stride: 1, expand: 1, in_ch: 32, out_ch: 16 },
        StageArgs { repeats: 1, kernel: 3, stride: 1, expand: 6, in_ch: 16, out_ch: 16 },
    ];
    cfg.num_classes = 0;
    cfg.drop_connect = 0.5; // block i of 2 drops at 0.5 * i / 2: the second at 0.25
    let model = EfficientNet::new(cfg, &mut Rng::new(0));
    assert!(!model.blocks[0].residual && model.blocks[1].residual);
    assert_eq!(model.blocks[1].drop_path.p, 0.25);
    let sd: BTreeMap<String, tensor::Tensor> =
        fx.names().filter_map(|n| n.strip_prefix("param.").map(|p| (p.to_string(), fx.tensor(n).unwrap()))).collect();
    let report = model.load_state_dict(&sd, false).unwrap();
    assert!(
        report.unexpected.is_empty()
            && report.missing.iter().all(|n| n.contains("running_") || n.contains("num_batches")),
        "{report}"
    );
    // The fixture's keep mask is [1, 0, 1, 1]. The block's drop path is the only random draw
    // of this forward, so the seed whose first draw is that mask reproduces it.
    let want_scales = [1.0 / 0.75, 0.0, 1.0 / 0.75, 1.0 / 0.75];
    let seed = (0..10_000u64)
        .find(|&s| DropPath { p: 0.25 }.sample_scales(4, &mut Ctx::train(s)) == want_scales)
        .expect("a seed that draws the fixture's mask");
    let images = Var::constant(fx.tensor("images").unwrap());
    let features = model.features(&images, &mut Ctx::train(seed)).unwrap();
    Tolerance::scaled(1e-5, 0.0).assert(
        "features",
        &features.value().to_vec(),
        &fx.tensor("features").unwrap().to_vec(),
    );
    let readout = Var::constant(fx.tensor("readout").unwrap());
    let loss = autograd::ops::reduce::sum_all(&autograd::ops::elementwise::mul(&features, &readout).unwrap()).unwrap();
    Tolerance::new(1e-5, 1e-6).assert("loss", &[loss.value().item().unwrap()], &fx.tensor("loss").unwrap().to_vec());
    loss.backward().unwrap();
    let largest = model
        .named_parameters()
        .iter()
        .flat_map(|(n, _)| fx.tensor(&format!("grad.{n}")).unwrap().to_vec())
        .fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    for (name, p) in model.named_parameters() {
        let want = fx.tensor(&format!("grad.{name}")).unwrap().to_vec();
        // as in the test above: zero-in-exact-arithmetic gradients judged against the model's scale
        let tol = if want.iter().all(|v| v.abs() < 1e-12) {
            Tolerance::new(0.0, 1e-4 * largest)
        } else {
            Tolerance::scaled(1e-4, 1e-8)
        };
        tol.assert(&format!("grad.{name}"), &p.grad().unwrap().to_vec(), &want);
    }
}
