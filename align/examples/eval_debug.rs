//! Diagnostic: retrieval of a finished run on its own training pairs and on held-out pairs, with
//! batch norm in evaluation mode (running statistics) and in training mode (batch statistics).
//!     cargo run --release -p align --example eval_debug -- RUN_DIR
use std::collections::BTreeMap;

use align::data::builtin_corpus;
use align::model::{token_batch, DualEncoder};
use align::retrieval::retrieval_metrics;
use align::train::TrainConfig;
use nn::{Ctx, Module};
use tensor::io::safetensors::SafeTensors;
use tensor::{Rng, Tensor};

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("RUN_DIR"));
    let cfg = TrainConfig::tiny();
    let vocab: Vec<String> =
        std::fs::read_to_string(dir.join("vocab.txt")).unwrap().lines().map(String::from).collect();
    let tok = tokenizer::WordPiece::from_tokens(vocab.clone(), tokenizer::BertOptions::default()).unwrap();
    let model = DualEncoder::new(&cfg, vocab.len(), &mut Rng::new(0)).unwrap();
    let st = SafeTensors::open(dir.join("checkpoint.safetensors")).unwrap();
    let sd: BTreeMap<String, Tensor> =
        st.names().filter_map(|n| n.strip_prefix("model.").map(|k| (k.to_string(), st.tensor(n).unwrap()))).collect();
    println!("{}", model.load_state_dict(&sd, false).unwrap());
    let (train, held, _) = builtin_corpus(cfg.seed, cfg.train_pairs, 200);
    for (name, pairs) in [("train", train[..200].to_vec()), ("held-out", held)] {
        for training_bn in [false, true] {
            let refs: Vec<&align::data::Pair> = pairs.iter().collect();
            let imgs = align::data::image_batch(cfg.seed, &refs, cfg.resolution, false, 0).unwrap();
            let mut ctx = if training_bn { Ctx::train(0) } else { Ctx::eval() };
            let a = autograd::no_grad(|| model.embed_images(&imgs, &mut ctx)).unwrap().value();
            let texts: Vec<&str> = pairs.iter().map(|p| p.text.as_str()).collect();
            let b = autograd::no_grad(|| {
                model.embed_texts(&token_batch(&tok, &texts, cfg.max_tokens).unwrap(), &mut Ctx::eval())
            })
            .unwrap()
            .value();
            let sim = a.matmul(&b.t().unwrap()).unwrap();
            let m = retrieval_metrics(&sim.to_vec(), 200, 200, &(0..200).collect::<Vec<_>>());
            let spread = a
                .to_vec()
                .iter()
                .zip(a.narrow(0, 1, 1).unwrap().broadcast_to(a.shape()).unwrap().to_vec())
                .map(|(x, y)| (x - y).abs())
                .sum::<f32>()
                / a.numel() as f32;
            println!("{name:9} bn-train={training_bn}: i2t R@1/5 {:.3}/{:.3} t2i {:.3}/{:.3}  image-embedding spread {spread:.4}", m.i2t_r1, m.i2t_r5, m.t2i_r1, m.t2i_r5);
        }
    }
}
