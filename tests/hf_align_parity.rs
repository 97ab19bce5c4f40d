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
