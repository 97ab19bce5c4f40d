//! The tool subcommands through the real `align` binary: `tokenize` (known ids from a
//! hand-made vocabulary), `bert-features` (all-MiniLM-L6-v2's [CLS] and mean features against
//! the transformers fixture) and `demo`.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `align args` with `stdin`; returns stdout, failing the test on a non-zero exit.
fn align_with_input(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_align"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "align {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("align-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ids_of(out: &str) -> Vec<Vec<u64>> {
    out.lines().map(|l| serde_json::from_str::<Vec<u64>>(l).unwrap()).collect()
}

#[test]
fn tokenize_prints_the_wordpiece_ids_of_each_line() {
    let dir = temp_dir("tokenize");
    let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "##s", "the", ",", ".", "Cat"];
    let path = dir.join("vocab.txt");
    std::fs::write(&path, vocab.join("\n")).unwrap();
    let p = path.to_str().unwrap();
    // uncased: "The" -> the; "cats" -> cat ##s; "." its own token; an empty line -> [CLS] [SEP]
    let out = align_with_input(&["tokenize", "--vocab", p], "The cats.\n\nA Cat, a dog\n");
    assert_eq!(ids_of(&out), vec![vec![2, 8, 6, 7, 10, 3], vec![2, 3], vec![2, 5, 6, 9, 5, 1, 3]]);
    // cased: "The" is unknown, "Cat" is its own entry
    let out = align_with_input(&["tokenize", "--vocab", p, "--cased"], "The cats.\nA Cat\n");
    assert_eq!(ids_of(&out), vec![vec![2, 1, 6, 7, 10, 3], vec![2, 1, 11, 3]]);
    // truncation keeps [CLS] ... [SEP] within the limit
    let out = align_with_input(&["tokenize", "--vocab", p, "--max-len", "4"], "the cats the cats\n");
    assert_eq!(ids_of(&out), vec![vec![2, 8, 6, 3]]);
    // a missing vocabulary is an error naming it
    let out =
        Command::new(env!("CARGO_BIN_EXE_align")).args(["tokenize", "--vocab", "/nonexistent/vocab.txt"]).output();
    let out = out.unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("/nonexistent/vocab.txt"));
}

/// The sentences of the transformers fixture (`scripts/make_fixtures.py`, BERT_SENTENCES).
const SENTENCES: [&str; 9] = [
    "A photo of a cat.",
    "Two dogs are running on the beach at sunset, chasing a red ball.",
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "An espresso in a white cup on a wooden table, next to a croissant and a newspaper.",
    "Zürich, naïve café!",
    "中文句子",
    "A very long caption that keeps going and going so that it is clearly the longest sentence in this little batch of examples.",
    "",
];

#[test]
fn bert_features_match_transformers_on_minilm() {
    let fx = tensor::io::safetensors::SafeTensors::open(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/bert_minilm.safetensors"),
    )
    .unwrap();
    let (shape, ids) = fx.tensor_i64("ids").unwrap();
    let (_, mask) = fx.tensor_i64("mask").unwrap();
    let hidden = fx.tensor("last_hidden").unwrap().to_vec(); // (9, T, 384)
    let (t, h) = (shape[1], 384);
    let model = common::minilm_dir();
    let input: String = SENTENCES.iter().map(|s| format!("{s}\n")).collect();
    // batches of 4: the padding differs from the fixture's single batch, the features must not
    let out = align_with_input(&["bert-features", "--model", model.to_str().unwrap(), "--batch-size", "4"], &input);
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 9);
    let mut worst = 0.0f32;
    for (i, row) in rows.iter().enumerate() {
        let real = (0..t).filter(|&p| mask[i * t + p] == 1).count();
        let want_ids: Vec<u64> = ids[i * t..i * t + real].iter().map(|&x| x as u64).collect();
        let got_ids: Vec<u64> = row["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(got_ids, want_ids, "ids of sentence {i}");
        let cls: Vec<f32> = row["cls"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let mean: Vec<f32> = row["mean"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        for j in 0..h {
            let want_cls = hidden[(i * t) * h + j];
            let want_mean = (0..real).map(|p| hidden[(i * t + p) * h + j]).sum::<f32>() / real as f32;
            worst = worst.max((cls[j] - want_cls).abs()).max((mean[j] - want_mean).abs());
        }
    }
    assert!(worst <= 1e-4, "max |diff| against transformers: {worst:e}");
}

#[test]
fn demo_tours_tensors_and_writes_a_checkpoint() {
    let dir = temp_dir("demo");
    let out =
        Command::new(env!("CARGO_BIN_EXE_align")).args(["demo", "--out", dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in ["shares data  = true", "x @ w", "zero-copy=true"] {
        assert!(stdout.contains(needle), "demo output lacks '{needle}':\n{stdout}");
    }
    let file = dir.join("demo.safetensors");
    let st = tensor::io::safetensors::SafeTensors::open(&file).unwrap();
    assert!(!st.is_empty());
}

/// Started by an MPI launcher with two ranks, an `align` built without MPI refuses to train
/// (two independent runs writing one directory would be worse than an error) and says how to
/// build the one that can; the plan of the paper's configuration prints without any MPI.
#[cfg(not(feature = "mpi"))]
#[test]
fn train_under_a_launcher_without_mpi_says_how_to_build_it_and_the_plan_prints() {
    let dir = temp_dir("no-mpi");
    let out = Command::new(env!("CARGO_BIN_EXE_align"))
        .args(["train", "--steps", "1", "--out"])
        .arg(&dir)
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 ranks") && err.contains("--features mpi"), "{err}");
    assert!(!dir.join("log.jsonl").exists());
    let plan = align_with_input(&["train", "--config", "paper", "--plan-replicas", "1024", "--link-gbps", "100"], "");
    assert!(plan.contains("1024 ranks x 16 pairs = global batch 16384"), "{plan}");
    assert!(plan.contains("gradient all-reduce") && plan.contains("link time at 100 Gbit/s"), "{plan}");
}

/// `features` and `zeroshot` on the random AlignModel of the `align_tiny` fixture: the text
/// and image embeddings printed are transformers' (within 1e-4), and each image's labels come
/// ranked with probabilities that sum to 1.
#[test]
fn features_and_zeroshot_read_a_transformers_align_model() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let dir = fixtures.join("align_tiny");
    let model = dir.to_str().unwrap();
    let fx = tensor::io::safetensors::SafeTensors::open(fixtures.join("align_tiny_reference.safetensors")).unwrap();
    let rows =
        |out: &str| -> Vec<f32> { out.lines().flat_map(|l| serde_json::from_str::<Vec<f32>>(l).unwrap()).collect() };
    let texts = "a photo of a cat\na red car on the road, parked\ndog\n";
    let got = rows(&align_with_input(&["features", "--model", model, "--text"], texts));
    tensor::Tolerance::new(0.0, 1e-4).assert("text", &got, &fx.tensor("text_embeds").unwrap().to_vec());
    let images: Vec<String> = (0..3).map(|i| dir.join(format!("images/{i}.png")).display().to_string()).collect();
    let mut args = vec!["features", "--model", model, "--image"];
    args.extend(images.iter().map(String::as_str));
    let got = rows(&align_with_input(&args, ""));
    tensor::Tolerance::new(0.0, 1e-4).assert("image", &got, &fx.tensor("image_embeds").unwrap().to_vec());

    let mut args = vec!["zeroshot", "--model", model, "--labels", "cat, dog,car"];
    args.extend(images.iter().map(String::as_str));
    let out = align_with_input(&args, "");
    let mut per_image: Vec<Vec<(String, f32)>> = vec![];
    for line in out.lines() {
        if !line.starts_with("  ") {
            per_image.push(vec![]);
            continue;
        }
        let mut parts = line.split_whitespace();
        let (label, p) = (parts.next().unwrap().to_string(), parts.next().unwrap().parse::<f32>().unwrap());
        per_image.last_mut().unwrap().push((label, p));
    }
    assert_eq!(per_image.len(), 3, "{out}");
    for ranked in &per_image {
        let mut labels: Vec<&str> = ranked.iter().map(|r| r.0.as_str()).collect();
        labels.sort();
        assert_eq!(labels, ["car", "cat", "dog"]);
        assert!(ranked.windows(2).all(|w| w[0].1 >= w[1].1), "{ranked:?}");
        assert!((ranked.iter().map(|r| r.1).sum::<f32>() - 1.0).abs() < 2e-3, "{ranked:?}");
    }
    // neither --text nor images: a clear error
    let out = Command::new(env!("CARGO_BIN_EXE_align")).args(["features", "--model", model]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("either --text"));
}

/// `embed`, `search`, `eval` and `report` take a Hugging Face AlignModel directory as `--model`
/// wherever they take a run: an index built with the `align_tiny` fixture scores a text query
/// with transformers' embeddings (image . text within 1e-4), and evaluation and the report run
/// on the model with its own image processor.
#[test]
fn embed_search_eval_and_report_take_an_align_model_directory() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let dir = fixtures.join("align_tiny");
    let model = dir.to_str().unwrap();
    let fx = tensor::io::safetensors::SafeTensors::open(fixtures.join("align_tiny_reference.safetensors")).unwrap();
    let (image_embeds, text_embeds) =
        (fx.tensor("image_embeds").unwrap().to_vec(), fx.tensor("text_embeds").unwrap().to_vec());
    let d = image_embeds.len() / 3;
    let work = temp_dir("hf-model");
    let index = work.join("index.safetensors");
    let out = align_with_input(
        &[
            "embed",
            "--model",
            model,
            "--images",
            dir.join("images").to_str().unwrap(),
            "--out",
            index.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.contains("3 images embedded (80-d, f32)"), "{out}");
    // the index remembers the model: search needs no --model
    let out = align_with_input(&["search", "--index", index.to_str().unwrap(), "--text", "a photo of a cat"], "");
    let hits: Vec<(f32, String)> = out
        .lines()
        .map(|l| {
            let (score, path) = l.split_once('\t').unwrap();
            (score.parse().unwrap(), path.to_string())
        })
        .collect();
    assert_eq!(hits.len(), 3, "{out}");
    for (score, path) in &hits {
        let i: usize = Path::new(path).file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let expected: f32 = (0..d).map(|k| image_embeds[i * d + k] * text_embeds[k]).sum();
        assert!((score - expected).abs() < 1e-4, "{path}: {score} vs transformers' {expected}");
    }

    let captions: Vec<String> = ["a photo of a cat", "a red car on the road, parked", "dog"]
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}\t{c}", dir.join(format!("images/{i}.png")).display()))
        .collect();
    let manifest = work.join("captions.tsv");
    std::fs::write(&manifest, captions.join("\n")).unwrap();
    let out =
        align_with_input(&["eval", "retrieval", "--model", model, "--data", manifest.to_str().unwrap(), "--json"], "");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((r["images"].as_u64(), r["captions"].as_u64()), (Some(3), Some(3)), "{out}");
    // with 3 images every caption's image is in the top 5
    assert_eq!(r["i2t_r5"].as_f64(), Some(1.0), "{out}");

    let report = work.join("report.html");
    align_with_input(
        &["report", "--model", model, "--data", manifest.to_str().unwrap(), "--out", report.to_str().unwrap()],
        "",
    );
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("<th>embedding width</th><td>80</td>"), "model table missing");
    assert!(html.contains("Example text queries (3 held-out images)"), "example queries missing");
    // --run and --model together are refused
    let out =
        Command::new(env!("CARGO_BIN_EXE_align")).args(["report", "--run", "x", "--model", model]).output().unwrap();
    assert!(!out.status.success());
}
