//! Training from pretrained towers (LiT, Zhai et al. 2022): the real lite0 weights as a locked
//! image tower and all-MiniLM-L6-v2 as the text tower, with its own vocabulary. A few steps on
//! the built-in corpus: the image tower stays exactly the pretrained one and has no optimiser
//! state, the text tower moves, and the checkpoint reloads for evaluation with no extra flags.

mod common;

use std::collections::BTreeMap;

use align::train::{train, RunOptions, TrainConfig};
use nn::Module;

fn checkpoint_names(dir: &std::path::Path) -> Vec<String> {
    let st = tensor::io::safetensors::SafeTensors::open(dir.join("checkpoint.safetensors")).unwrap();
    st.names().map(String::from).collect()
}

#[test]
fn a_locked_lite0_and_minilm_train_and_reload() {
    let dir = std::env::temp_dir().join(format!("align-lit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = TrainConfig {
        image_arch: "lite0".into(),
        resolution: 32,
        max_tokens: 16,
        batch_size: 8,
        steps: 3,
        warmup: 1,
        train_pairs: 400,
        held_out: 20,
        checkpoint_every: 0,
        image_init: common::lite0_pth().display().to_string(),
        lock_image: true,
        ..TrainConfig::tiny()
    }
    .with_text_init(&common::minilm_dir())
    .unwrap();
    assert_eq!(cfg.text_bert.as_ref().unwrap().num_layers, 6);
    let summary = train(&cfg, &dir, &RunOptions { quiet: true, ..Default::default() }).unwrap();
    assert!(summary.final_loss.is_finite());
    // the locked tower's features were computed once, one row per training pair; a resumed run
    // reads the same file instead of computing them again
    let cache = dir.join("image_features.safetensors");
    let st = tensor::io::safetensors::SafeTensors::open(&cache).unwrap();
    let rows = st.tensor("features").unwrap();
    assert_eq!(rows.shape()[1], 320);
    let written = std::fs::metadata(&cache).unwrap().modified().unwrap();
    let more = TrainConfig { steps: 4, ..cfg.clone() };
    train(&more, &dir, &RunOptions { quiet: true, resume: true, ..Default::default() }).unwrap();
    assert_eq!(std::fs::metadata(&cache).unwrap().modified().unwrap(), written, "the cache was rebuilt");

    // the run's vocabulary is MiniLM's
    let ours = std::fs::read_to_string(dir.join("vocab.txt")).unwrap();
    let theirs = std::fs::read_to_string(common::minilm_dir().join("vocab.txt")).unwrap();
    assert_eq!(ours.lines().collect::<Vec<_>>(), theirs.lines().collect::<Vec<_>>());

    // reloads from the run directory alone (architecture and casing in the checkpoint)
    let lm = align::eval::LoadedModel::open(&dir).unwrap();
    assert_eq!(lm.config.image_init, cfg.image_init, "the checkpoint records where the towers came from");
    assert_eq!(lm.config.text_init, cfg.text_init);

    // the locked image tower is exactly lite0 (batch-norm statistics included) ...
    let pretrained = tensor::io::torch::load_state_dict(common::lite0_pth()).unwrap();
    let lite0 = align::efficientnet::EfficientNet::new(
        align::efficientnet::EfficientNetConfig {
            num_classes: 0,
            ..align::efficientnet::EfficientNetConfig::by_name("lite0").unwrap()
        },
        &mut tensor::Rng::new(1),
    );
    lite0.load_pytorch(&pretrained).unwrap();
    let want: BTreeMap<String, Vec<f32>> = lite0.state_dict().into_iter().map(|(n, t)| (n, t.to_vec())).collect();
    let got = lm.model.image.state_dict();
    assert_eq!(got.len(), want.len());
    for (name, t) in got {
        assert!(t.to_vec() == want[&name], "locked image tower changed: {name}");
    }
    // ... with no optimiser state, while the text tower has both moved and has state
    let names = checkpoint_names(&dir);
    assert!(!names.iter().any(|n| n.starts_with("optim.image_tower")), "optimiser state for a locked tower");
    assert!(names.iter().any(|n| n.starts_with("optim.text_tower.bert.")));
    let minilm = align::bert::Bert::new(cfg.text_bert.clone().unwrap(), &mut tensor::Rng::new(2));
    minilm.load_hf_safetensors(common::minilm_dir().join("model.safetensors")).unwrap();
    let start = minilm.state_dict();
    let now = lm.model.text.state_dict();
    let moved = start.iter().filter(|(n, t)| now[&format!("bert.{n}")].to_vec() != t.to_vec()).count();
    assert!(moved > start.len() / 2, "only {moved} of {} text tensors trained", start.len());

    // and it embeds captions with MiniLM's tokenizer
    let e = lm.embed_texts(&["a red circle", "Two BLUE squares"]).unwrap();
    assert_eq!((lm.dim(), e.len()), (320, 2 * 320), "lite0 pools its last block: 320-d");
    let _ = std::fs::remove_dir_all(&dir);
}
