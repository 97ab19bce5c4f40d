//! A Hugging Face `AlignModel` directory read into our dual encoder, against transformers
//! (fixture group `align_tiny` of `scripts/make_fixtures.py`: a small random AlignModel saved
//! by transformers, three images and three captions of different lengths): the processor's
//! pixels, the token ids, the image and text embeddings and `logits_per_image`.
//!
//! The same comparison on the released model runs when a user has it:
//!   ALIGN_BASE_DIR=/path/to/align-base cargo test --release --test hf_align_parity -- --ignored

mod common;

use align::hf_align::HfAlign;
use tensor::io::safetensors::SafeTensors;
use tensor::Tolerance;

const TEXTS: [&str; 3] = ["a photo of a cat", "a red car on the road, parked", "dog"];

fn images(dir: &std::path::Path) -> Vec<align::images::RgbImage> {
    (0..3).map(|i| align::images::load_rgb(&dir.join("images").join(format!("{i}.png"))).unwrap()).collect()
}

#[test]
fn a_transformers_align_model_gives_transformers_embeddings_and_logits() {
    let dir = common::fixture("align_tiny");
    let hf = HfAlign::open(&dir).unwrap();
    let fx = SafeTensors::open(common::fixture("align_tiny_reference.safetensors")).unwrap();
    let pictures = images(&dir);

    // the image processor: Pillow's bicubic to 33 x 33, x / 127.5 - 1
    let pixels: Vec<f32> = pictures.iter().flat_map(|p| hf.images.preprocess(p).unwrap().to_vec()).collect();
    Tolerance::new(0.0, 1e-6).assert("pixel values", &pixels, &fx.tensor("pixel_values_nhwc").unwrap().to_vec());

    // the tokenizer, padded to the longest caption
    let tokens = align::model::token_batch(&hf.tokenizer, &TEXTS, hf.max_tokens).unwrap();
    let (_, want_ids) = fx.tensor_i64("input_ids").unwrap();
    assert_eq!(tokens.ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), want_ids);
    let (_, want_mask) = fx.tensor_i64("attention_mask").unwrap();
    assert_eq!(tokens.mask.to_vec().iter().map(|&m| m as i64).collect::<Vec<_>>(), want_mask);

    let image_embeds = hf.embed_images(&pictures).unwrap();
    let text_embeds = hf.embed_texts(&TEXTS).unwrap();
    let tol = Tolerance::new(0.0, 1e-4);
    tol.assert("image embeddings", &image_embeds, &fx.tensor("image_embeds").unwrap().to_vec());
    tol.assert("text embeddings", &text_embeds, &fx.tensor("text_embeds").unwrap().to_vec());
    // logits_per_image = image . text / temperature
    let d = image_embeds.len() / 3;
    let sim = align::eval::similarity(&image_embeds, &text_embeds, d).unwrap();
    let logits: Vec<f32> = sim.iter().map(|s| s / hf.temperature()).collect();
    assert!((hf.temperature() - 0.37).abs() < 1e-6);
    tol.assert("logits_per_image", &logits, &fx.tensor("logits_per_image").unwrap().to_vec());
}

#[test]
fn a_directory_without_weights_or_with_a_wrong_projection_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("align-hf-broken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = common::fixture("align_tiny");
    for f in ["config.json", "vocab.txt", "tokenizer_config.json", "processor_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let e = HfAlign::open(&dir).err().unwrap().to_string();
    assert!(e.contains("no model.safetensors or pytorch_model.bin"), "{e}");
    let config = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"projection_dim\": 80", "\"projection_dim\": 81");
    std::fs::write(dir.join("config.json"), config).unwrap();
    let e = HfAlign::open(&dir).err().unwrap().to_string();
    assert!(e.contains("projection_dim 81 differs from the image features' width 80"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The released ALIGN (`kakaobrain/align-base`, EfficientNet-B7 + BERT-base), when a user has
/// its directory: embeddings and logits for two photos and the three captions against
/// transformers run on the spot (needs torch, transformers and pillow):
///   ALIGN_BASE_DIR=/path/to/align-base cargo test --release --test hf_align_parity -- --ignored
#[test]
#[ignore = "needs a downloaded align-base directory (ALIGN_BASE_DIR) and transformers"]
fn the_released_align_base_matches_transformers() {
    let dir = std::path::PathBuf::from(std::env::var("ALIGN_BASE_DIR").expect("set ALIGN_BASE_DIR"));
    let photos = [common::skimage_data().join("chelsea.png"), common::skimage_data().join("coffee.png")];
    let reference = std::env::temp_dir().join(format!("align-base-reference-{}.safetensors", std::process::id()));
    let status = std::process::Command::new("python3")
        .arg(common::repo_root().join("scripts/make_fixtures.py"))
        .arg("align_reference")
        .arg(&dir)
        .arg(&reference)
        .args(&photos)
        .status()
        .unwrap();
    assert!(status.success(), "transformers reference failed");
    let fx = SafeTensors::open(&reference).unwrap();
    let hf = HfAlign::open(&dir).unwrap();
    let pictures: Vec<_> = photos.iter().map(|p| align::images::load_rgb(p).unwrap()).collect();
    let image_embeds = hf.embed_images(&pictures).unwrap();
    let text_embeds = hf.embed_texts(&TEXTS).unwrap();
    let tol = Tolerance::new(0.0, 1e-4);
    tol.assert("image embeddings", &image_embeds, &fx.tensor("image_embeds").unwrap().to_vec());
    tol.assert("text embeddings", &text_embeds, &fx.tensor("text_embeds").unwrap().to_vec());
    let d = image_embeds.len() / photos.len();
    let sim = align::eval::similarity(&image_embeds, &text_embeds, d).unwrap();
    let logits: Vec<f32> = sim.iter().map(|s| s / hf.temperature()).collect();
    // cosines within 5e-4 (logits are cosines over the temperature, about 0.01 for align-base)
    Tolerance::new(0.0, 5e-4 / hf.temperature() as f64).assert(
        "logits_per_image",
        &logits,
        &fx.tensor("logits_per_image").unwrap().to_vec(),
    );
    let _ = std::fs::remove_file(&reference);
}

/// `--image-init` with an AlignModel directory (its vision tower, built from its
/// `vision_config`) and with torchvision-named weights (built with torchvision's padding and
/// eps): after a few locked steps the run's image tower computes exactly what the source model
/// computes, and the checkpoint rebuilds that architecture without the source.
#[test]
fn pretrained_image_towers_from_an_align_model_and_torchvision_weights() {
    use align::efficientnet::{EfficientNet, EfficientNetConfig, PaddingStyle};
    use align::train::{train, RunOptions, TrainConfig};
    use autograd::Var;
    use nn::Ctx;

    let features = |lm: &align::eval::LoadedModel, x: &tensor::Tensor| -> Vec<f32> {
        autograd::no_grad(|| lm.model.image.features(&Var::constant(x.clone()), &mut Ctx::eval()))
            .unwrap()
            .value()
            .to_vec()
    };
    let x = tensor::Tensor::randn(&[2, 33, 33, 3], 0.0, 0.5, 3);
    let small = |init: &std::path::Path, arch: &str| {
        TrainConfig {
            image_arch: arch.into(),
            resolution: 33,
            batch_size: 8,
            steps: 2,
            warmup: 1,
            train_pairs: 200,
            held_out: 16,
            checkpoint_every: 0,
            lock_image: true,
            ..TrainConfig::tiny()
        }
        .with_image_init(init)
        .unwrap()
    };

    // an AlignModel's vision tower
    let source = common::fixture("align_tiny");
    let cfg = small(&source, "b0");
    let vision = cfg.image_efficientnet.clone().expect("the AlignVision architecture is kept");
    assert_eq!((vision.padding, vision.first_block_residual), (PaddingStyle::HuggingFace, false));
    let run = std::env::temp_dir().join(format!("align-init-hf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    train(&cfg, &run, &RunOptions { quiet: true, ..Default::default() }).unwrap();
    let ours = align::eval::LoadedModel::open(&run).unwrap();
    let theirs = align::eval::LoadedModel::open(&source).unwrap();
    Tolerance::new(0.0, 0.0).assert("AlignVision features", &features(&ours, &x), &features(&theirs, &x));
    std::fs::remove_dir_all(&run).unwrap();

    // torchvision's naming: the tower is built as torchvision builds it
    let pth = common::fixture("efficientnet_torchvision_tiny.pth");
    let cfg = small(&pth, "tiny");
    let tv = cfg.image_efficientnet.clone().unwrap();
    assert_eq!((tv.padding, tv.bn_eps), (PaddingStyle::Symmetric, 1e-5));
    let run = std::env::temp_dir().join(format!("align-init-tv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    train(&cfg, &run, &RunOptions { quiet: true, ..Default::default() }).unwrap();
    let ours = align::eval::LoadedModel::open(&run).unwrap();
    let reference = EfficientNet::new(
        EfficientNetConfig { num_classes: 0, ..EfficientNetConfig::by_name("tiny").unwrap().torchvision() },
        &mut tensor::Rng::new(0),
    );
    reference.load_pytorch(&tensor::io::torch::load_state_dict(&pth).unwrap()).unwrap();
    let want = autograd::no_grad(|| reference.features(&Var::constant(x.clone()), &mut Ctx::eval())).unwrap();
    Tolerance::new(0.0, 0.0).assert("torchvision features", &features(&ours, &x), &want.value().to_vec());
    std::fs::remove_dir_all(&run).unwrap();

    // a directory that is not an AlignModel, and a file that is no weight file, are refused by name
    let e = TrainConfig::tiny().with_image_init(&common::minilm_dir()).unwrap_err().to_string();
    assert!(e.contains("not a Hugging Face AlignModel"), "{e}");
    let e = TrainConfig::tiny().with_image_init(&source.join("vocab.txt")).unwrap_err().to_string();
    assert!(e.contains("looks like text"), "{e}");
}
