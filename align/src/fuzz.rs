//! Fuzzing every parser that reads a user's files, on stable Rust and without extra tools.
//!
//! Each [`Target`] is one parser fed bytes in memory: safetensors, the two `.pth` containers, a
//! WordPiece vocabulary, the `config.json` readers (BERT, AlignModel / EfficientNet and its image
//! processor), the three manifest layouts, WebDataset tar shards, image decoding, and the
//! training checkpoint loader. Each has a few valid seed files; a case takes one, applies one
//! to four structure-aware mutations ([`mutate`]: bit flips, interesting bytes, truncation,
//! insertions and deletions, chunks spliced in from the other seeds, little- and big-endian
//! length / offset fields overwritten with huge or edge values, decimal numbers in text replaced
//! by huge, negative or fractional ones) and runs the parser under `catch_unwind`. A parser may
//! return any error; a panic is a failure, reported with the case's seed, from which
//! `align-fuzz --target T --replay SEED` rebuilds the exact input.
//!
//! Aborts (stack overflow, a failed allocation) end the process, so the `align-fuzz` binary runs
//! each target in a child process of its own and reports how the child ended, with its peak
//! resident memory.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Instant;

use tensor::Rng;

/// One parser under test.
pub struct Target {
    pub name: &'static str,
    /// Valid inputs the mutations start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Parses the bytes; errors are fine, panics are failures.
    pub parse: fn(&[u8]),
}

/// What a target's run found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub cases: u64,
    /// (case seed, panic message) of each panicking case.
    pub panics: Vec<(u64, String)>,
    /// Cases the parser accepted (returned Ok): how much of the input space stays valid.
    pub accepted: u64,
    pub seconds: f64,
}

/// Every target, in the order `align-fuzz` runs them.
pub fn targets() -> Vec<Target> {
    vec![
        Target { name: "safetensors", seeds: seeds::safetensors, parse: parse::safetensors },
        Target { name: "pth-zip", seeds: seeds::pth_zip, parse: parse::pth },
        Target { name: "pth-legacy", seeds: seeds::pth_legacy, parse: parse::pth },
        Target { name: "vocab", seeds: seeds::vocab, parse: parse::vocab },
        Target { name: "bert-config", seeds: seeds::bert_config, parse: parse::bert_config },
        Target { name: "align-config", seeds: seeds::align_config, parse: parse::align_config },
        Target { name: "manifest-tsv", seeds: seeds::manifest_tsv, parse: parse::manifest_tsv },
        Target { name: "manifest-csv", seeds: seeds::manifest_csv, parse: parse::manifest_csv },
        Target { name: "manifest-jsonl", seeds: seeds::manifest_jsonl, parse: parse::manifest_jsonl },
        Target { name: "webdataset-tar", seeds: seeds::tar, parse: parse::tar },
        Target { name: "image", seeds: seeds::images, parse: parse::image },
        Target { name: "checkpoint", seeds: seeds::checkpoint, parse: parse::checkpoint },
    ]
}

/// The seed of case `i` of a run seeded with `seed` (splitmix64, so neighbours differ).
pub fn case_seed(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The input of the case with seed `case`: a seed file and 1-4 mutations, all drawn from `case`.
pub fn case_input(seeds: &[Vec<u8>], case: u64) -> Vec<u8> {
    let mut rng = Rng::new(case);
    let base = &seeds[rng.below(seeds.len())];
    let mut bytes = base.clone();
    for _ in 0..1 + rng.below(4) {
        bytes = mutate(&mut rng, &bytes, seeds);
    }
    bytes
}

/// Integers that break length and offset arithmetic.
const EDGE_INTS: [u64; 12] =
    [0, 1, 2, 0x7f, 0xff, 0x7fff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 1 << 32, 1 << 40, u64::MAX];
/// Decimal replacements for numbers found in text (JSON lengths, shapes, offsets, sizes).
const EDGE_NUMBERS: [&str; 10] =
    ["0", "-1", "1", "3.5", "1e308", "-0", "4294967296", "18446744073709551616", "99999999999999999999", "1e-9"];

/// One structure-aware mutation of `input`.
pub fn mutate(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = input.to_vec();
    let n = b.len();
    let pos = |rng: &mut Rng, n: usize| if n == 0 { 0 } else { rng.below(n) };
    match rng.below(10) {
        // one bit
        0 if n > 0 => {
            let i = pos(rng, n);
            b[i] ^= 1 << rng.below(8);
        }
        // an interesting byte
        1 if n > 0 => {
            const BYTES: [u8; 14] = [0, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'{', b'}', b'"', b'\n', b'\t', b',', b'.'];
            let i = pos(rng, n);
            b[i] = BYTES[rng.below(BYTES.len())];
        }
        // truncation
        2 => b.truncate(pos(rng, n + 1)),
        // random bytes inserted
        3 => {
            let at = pos(rng, n + 1);
            let extra: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.below(256) as u8).collect();
            b.splice(at..at, extra);
        }
        // a range deleted
        4 if n > 0 => {
            let at = pos(rng, n);
            let len = 1 + rng.below((n - at).min(64));
            b.drain(at..at + len);
        }
        // a range duplicated elsewhere
        5 if n > 0 => {
            let at = pos(rng, n);
            let len = 1 + rng.below((n - at).min(256));
            let chunk = b[at..at + len].to_vec();
            let to = pos(rng, n + 1);
            b.splice(to..to, chunk);
        }
        // a chunk of another seed spliced in (over a range of this one)
        6 => {
            let other = &seeds[rng.below(seeds.len())];
            if !other.is_empty() {
                let from = pos(rng, other.len());
                let len = 1 + rng.below((other.len() - from).min(512));
                let at = pos(rng, n + 1);
                let end = (at + rng.below(len + 1)).min(n);
                b.splice(at..end, other[from..from + len].iter().copied());
            }
        }
        // a length / offset field: 2, 4 or 8 bytes, little- or big-endian
        7 if n > 0 => {
            let width = [2, 4, 8][rng.below(3)];
            let at = pos(rng, n);
            let v = match rng.below(3) {
                0 => EDGE_INTS[rng.below(EDGE_INTS.len())],
                1 => (n as u64).wrapping_add(rng.below(3) as u64).wrapping_sub(1),
                _ => rng.next_u64(),
            };
            let bytes = if rng.below(2) == 0 { v.to_le_bytes() } else { v.to_be_bytes() };
            let src = if bytes[0] == 0 && width < 8 { &bytes[8 - width..] } else { &bytes[..width] };
            for (k, &x) in src.iter().enumerate() {
                if at + k < n {
                    b[at + k] = x;
                }
            }
        }
        // a decimal number in text replaced (JSON header fields, config values, shapes)
        8 => {
            let start = pos(rng, n);
            if let Some(d) = b[start..].iter().position(u8::is_ascii_digit).map(|d| start + d) {
                let mut end = d;
                while end < n && (b[end].is_ascii_digit() || b[end] == b'.') {
                    end += 1;
                }
                let with = EDGE_NUMBERS[rng.below(EDGE_NUMBERS.len())];
                b.splice(d..end, with.bytes());
            }
        }
        // a huge count: a 4-byte big-endian length (PNG chunks) or a long run of one byte
        _ => {
            if rng.below(2) == 0 && n >= 4 {
                let at = pos(rng, n - 3);
                b[at..at + 4].copy_from_slice(&(0x7fff_fff0u32 + rng.below(16) as u32).to_be_bytes());
            } else {
                let at = pos(rng, n + 1);
                let byte = if n > 0 { b[pos(rng, n)] } else { b'[' };
                b.splice(at..at, std::iter::repeat_n(byte, 1 + rng.below(4096)));
            }
        }
    }
    b
}

/// Runs `cases` cases of `target` from `seed`, with panics caught and counted.
pub fn run(target: &Target, cases: u64, seed: u64, mut progress: impl FnMut(u64)) -> Outcome {
    let seeds = (target.seeds)();
    assert!(!seeds.is_empty(), "{}: no seed inputs", target.name);
    let started = Instant::now();
    let mut outcome = Outcome::default();
    let accepted_before = accepted();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // the message is taken from the payload below
    for i in 0..cases {
        let case = case_seed(seed, i);
        let input = case_input(&seeds, case);
        if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| (target.parse)(&input))) {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            outcome.panics.push((case, msg));
        }
        outcome.cases += 1;
        if i % 4096 == 0 {
            progress(i);
        }
    }
    std::panic::set_hook(hook);
    outcome.accepted = accepted() - accepted_before;
    outcome.seconds = started.elapsed().as_secs_f64();
    outcome
}

/// Counts accepted inputs: set by the parse functions when a parser returned Ok.
static ACCEPTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Inputs the parsers have accepted so far in this process.
pub fn accepted() -> u64 {
    ACCEPTED.load(std::sync::atomic::Ordering::Relaxed)
}

fn accept<T, E>(r: std::result::Result<T, E>) -> Option<T> {
    if r.is_ok() {
        ACCEPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    r.ok()
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fuzz seed {}: {e}", path.display()))
}

/// The parsers, as each command reaches them, on bytes.
mod parse {
    use super::accept;

    pub fn safetensors(b: &[u8]) {
        if let Some(st) = accept(tensor::io::safetensors::SafeTensors::from_bytes(b.to_vec(), "fuzz")) {
            let names: Vec<String> = st.names().map(String::from).collect();
            for n in names {
                let _ = st.tensor(&n);
                let _ = st.tensor_i64(&n);
            }
            let _ = st.metadata().len();
        }
    }

    pub fn pth(b: &[u8]) {
        accept(tensor::io::torch::parse_state_dict(b, "fuzz.pth"));
    }

    pub fn vocab(b: &[u8]) {
        let lines: Vec<String> = String::from_utf8_lossy(b).lines().map(String::from).collect();
        let opts = tokenizer::BertOptions::default();
        if let Some(wp) = accept(tokenizer::WordPiece::from_tokens(lines, opts)) {
            let _ = wp.tokenize("A photo of a cat, naïve café! 中文 ##s [UNK] unaffable");
            let ids: Vec<u32> = (0..wp.vocab_size() as u32 + 2).collect();
            let _ = wp.decode(&ids, false);
        }
    }

    fn json(b: &[u8]) -> Option<serde_json::Value> {
        serde_json::from_slice(b).ok()
    }

    pub fn bert_config(b: &[u8]) {
        if let Some(v) = json(b) {
            accept(crate::bert::BertConfig::from_hf(&v));
        }
    }

    pub fn align_config(b: &[u8]) {
        let Some(v) = json(b) else { return };
        let f = std::path::Path::new("config.json");
        let empty = serde_json::Value::Object(Default::default());
        accept(crate::hf_align::vision_config(v.get("vision_config").unwrap_or(&v), f));
        accept(crate::hf_align::text_config(v.get("text_config").unwrap_or(&empty), f));
        let processor = v.get("image_processor").unwrap_or(&v);
        if let Some(p) = accept(crate::hf_align::ImageProcessor::from_json(processor, f)) {
            // a processor from the file preprocesses a small image (outputs over 65,536 pixels
            // are legal, only slow, and the allocator keeps their memory: skipped)
            let pixels = |s: Option<(u32, u32)>| s.map_or(0, |(w, h)| w as u64 * h as u64);
            if pixels(p.resize).max(pixels(p.center_crop)) <= 1 << 16 {
                let _ = p.preprocess(&image::RgbImage::new(5, 3));
            }
        }
    }

    pub fn manifest_tsv(b: &[u8]) {
        let _ = crate::data::parse_manifest(b, "tsv");
        super::ACCEPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn manifest_csv(b: &[u8]) {
        let _ = crate::data::parse_manifest(b, "csv");
        super::ACCEPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn manifest_jsonl(b: &[u8]) {
        let _ = crate::data::parse_manifest(b, "jsonl");
        super::ACCEPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn tar(b: &[u8]) {
        let (mut records, mut skips) = (vec![], crate::data::SkipReport::default());
        let shard = std::sync::Arc::new(std::path::PathBuf::from("fuzz.tar"));
        crate::data::index_shard(std::io::Cursor::new(b), shard, &mut records, &mut skips);
        if !records.is_empty() {
            super::ACCEPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn image(b: &[u8]) {
        accept(crate::images::decode_rgb(b, "fuzz"));
    }

    pub fn checkpoint(b: &[u8]) {
        let Ok(st) = tensor::io::safetensors::SafeTensors::from_bytes(b.to_vec(), "fuzz") else { return };
        let (model, mut opt) = super::seeds::checkpoint_model();
        accept(nn::checkpoint::load_checkpoint_from(&st, &model, &mut opt));
    }
}

/// Valid inputs of each format.
mod seeds {
    use super::*;
    use tensor::io::safetensors::{serialize, Dtype, SaveData};
    use tensor::Tensor;

    pub fn safetensors() -> Vec<Vec<u8>> {
        let a = Tensor::from_vec((0..6).map(|i| i as f32 * 0.5 - 1.0).collect(), &[2, 3]).unwrap();
        let b = Tensor::from_vec(vec![1.5, -2.25, 1e-3, 7.0], &[4]).unwrap();
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        let mut out = vec![];
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            let entries = [
                ("layer.weight", SaveData::Float(&a, dtype)),
                ("layer.bias", SaveData::Float(&b, dtype)),
                ("step", SaveData::I64 { shape: &[], values: &[42] }),
            ];
            out.push(serialize(&entries, &meta).expect("seed"));
        }
        out.push(serialize(&[], &BTreeMap::new()).expect("seed"));
        out
    }

    pub fn pth_zip() -> Vec<Vec<u8>> {
        vec![fixture("small_zip_state_dict.pth")]
    }

    pub fn pth_legacy() -> Vec<Vec<u8>> {
        vec![fixture("small_legacy_state_dict.pth")]
    }

    pub fn vocab() -> Vec<Vec<u8>> {
        let small = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\ncat\n##s\nthe\n,\n.\nCat\n中\n##文\n";
        vec![fixture("align_tiny/vocab.txt"), small.as_bytes().to_vec()]
    }

    pub fn bert_config() -> Vec<Vec<u8>> {
        let minilm = r#"{"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": 384, "initializer_range": 0.02, "intermediate_size": 1536,
            "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
            "num_hidden_layers": 6, "pad_token_id": 0, "position_embedding_type": "absolute", "type_vocab_size": 2,
            "vocab_size": 30522}"#;
        let config: serde_json::Value = serde_json::from_slice(&fixture("align_tiny/config.json")).expect("seed");
        vec![minilm.as_bytes().to_vec(), serde_json::to_vec_pretty(&config["text_config"]).expect("seed")]
    }

    pub fn align_config() -> Vec<Vec<u8>> {
        vec![fixture("align_tiny/config.json"), fixture("align_tiny/processor_config.json")]
    }

    fn manifest_rows() -> Vec<(String, String)> {
        vec![
            ("images/0.png".into(), "a red circle on a blue background".into()),
            ("/abs/path/cat.jpg".into(), "Two dogs, running on the beach".into()),
            ("images/naïve café.png".into(), "中文句子 with \"quotes\"".into()),
        ]
    }

    pub fn manifest_tsv() -> Vec<Vec<u8>> {
        let rows: Vec<String> = manifest_rows().iter().map(|(p, c)| format!("{p}\t{c}")).collect();
        vec![rows.join("\n").into_bytes(), format!("{}\r\n\r\n", rows.join("\r\n")).into_bytes()]
    }

    pub fn manifest_csv() -> Vec<Vec<u8>> {
        let rows: Vec<String> = manifest_rows().iter().map(|(p, c)| format!("{p},\"{c}\"")).collect();
        vec![rows.join("\n").into_bytes()]
    }

    pub fn manifest_jsonl() -> Vec<Vec<u8>> {
        let rows: Vec<String> = manifest_rows()
            .iter()
            .enumerate()
            .map(|(i, (p, c))| {
                let (ki, kc) = if i % 2 == 0 { ("image", "caption") } else { ("url", "text") };
                serde_json::json!({ ki: p, kc: c }).to_string()
            })
            .collect();
        vec![rows.join("\n").into_bytes()]
    }

    pub fn tar() -> Vec<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        let png = &images()[0];
        for (i, caption) in ["a red circle", "a blue square", "中文"].iter().enumerate() {
            let mut add = |name: String, data: &[u8]| {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                builder.append_data(&mut header, name, data).expect("seed");
            };
            add(format!("{i:05}.png"), png);
            add(format!("{i:05}.txt"), caption.as_bytes());
        }
        vec![builder.into_inner().expect("seed")]
    }

    pub fn images() -> Vec<Vec<u8>> {
        let img = image::RgbImage::from_fn(9, 7, |x, y| image::Rgb([(x * 28) as u8, (y * 36) as u8, 128]));
        let mut out = vec![];
        for format in [image::ImageFormat::Png, image::ImageFormat::Jpeg] {
            let mut bytes = std::io::Cursor::new(Vec::new());
            img.write_to(&mut bytes, format).expect("seed");
            out.push(bytes.into_inner());
        }
        let gray = image::GrayImage::from_fn(5, 4, |x, y| image::Luma([(x * 40 + y) as u8]));
        let mut bytes = std::io::Cursor::new(Vec::new());
        gray.write_to(&mut bytes, image::ImageFormat::Png).expect("seed");
        out.push(bytes.into_inner());
        out
    }

    /// A small model and its LAMB optimiser, both with state to restore.
    pub fn checkpoint_model() -> (nn::layers::Linear, nn::optim::Lamb) {
        let mut rng = Rng::new(7);
        let model = nn::layers::Linear::new(4, 3, true, &mut rng);
        let opt = nn::optim::Lamb::new(nn::optim::decay_groups(nn::Module::named_parameters(&model), 0.01, 0.01));
        (model, opt)
    }

    pub fn checkpoint() -> Vec<Vec<u8>> {
        use nn::optim::Optimizer;
        let (model, mut opt) = checkpoint_model();
        let x = autograd::Var::constant(Tensor::randn(&[2, 4], 0.0, 1.0, 3));
        let y = model.forward(&x, &mut nn::Ctx::train(0)).expect("seed");
        autograd::ops::reduce::sum(&y, &[0, 1], false).expect("seed").backward().expect("seed");
        opt.step().expect("seed");
        let state = nn::checkpoint::TrainState {
            step: 1,
            rng: Rng::new(5),
            data: BTreeMap::from([("order".to_string(), vec![2, 0, 1])]),
        };
        let dir = std::env::temp_dir().join(format!("align-fuzz-seed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("seed");
        let path = dir.join("checkpoint.safetensors");
        let meta = BTreeMap::from([("config".to_string(), "{}".to_string())]);
        nn::checkpoint::save_checkpoint(&path, &model, &opt, &state, &meta).expect("seed");
        let bytes = std::fs::read(&path).expect("seed");
        let _ = std::fs::remove_dir_all(&dir);
        vec![bytes]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target's seeds parse (the mutations start from valid files), and a case is a pure
    /// function of its seed (so a printed seed reproduces it).
    #[test]
    fn seeds_are_valid_and_cases_reproduce() {
        for t in targets() {
            let seeds = (t.seeds)();
            let before = accepted();
            for s in &seeds {
                (t.parse)(s);
            }
            assert!(accepted() > before, "{}: no seed was accepted", t.name);
            assert_eq!(case_input(&seeds, 12345), case_input(&seeds, 12345), "{}", t.name);
        }
    }

    /// A short run of every target: no panics (the full runs are `align-fuzz`'s, in CI).
    #[test]
    fn a_thousand_cases_per_parser_do_not_panic() {
        for t in targets() {
            let o = run(&t, 1000, 1, |_| {});
            assert!(o.panics.is_empty(), "{}: {:?}", t.name, &o.panics[..o.panics.len().min(3)]);
        }
    }
}
