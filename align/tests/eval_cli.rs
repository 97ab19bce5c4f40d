//! The evaluation, search and report commands end to end, through the real `align` binary, on a
//! run trained for a few steps (the numbers are not the point here; the plumbing is: grouped
//! captions, labelled manifests, an index that finds its own images, an offline HTML report).

use std::path::{Path, PathBuf};
use std::process::Command;

fn align(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_align")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "align {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny run plus a folder of rendered scenes with manifests.
fn setup() -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("align-eval-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = dir.join("run");
    align(&["train", "--train-pairs", "600", "--batch-size", "4", "--steps", "2", "--out", s(&run)]);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let (mut captions, mut labels) = (vec![], vec![]);
    for i in 0..12u64 {
        let mut scene = align::data::Scene::generate(9, i);
        scene.width = 220;
        scene.height = 240;
        let name = format!("{i:02}.png");
        scene.render().save(images.join(&name)).unwrap();
        // two captions per image (the Flickr / COCO layout)
        captions.push(format!("images/{name}\t{}", scene.clean_caption(0)));
        captions.push(format!("images/{name}\t{}", scene.clean_caption(1)));
        labels.push(format!("images/{name}\t{}", align::data::COLOURS[scene.objects[0].colour].0));
    }
    // one caption whose image is missing: counted, not fatal
    captions.push("images/missing.png\ta red circle".into());
    std::fs::write(dir.join("captions.tsv"), captions.join("\n")).unwrap();
    std::fs::write(dir.join("labels.tsv"), labels.join("\n")).unwrap();
    let classes: Vec<&str> = align::data::COLOURS.iter().map(|c| c.0).collect();
    std::fs::write(dir.join("classes.txt"), classes.join("\n")).unwrap();
    (dir, run)
}

#[test]
fn eval_embed_search_and_report_work_on_a_trained_run() {
    let (dir, run) = setup();
    // retrieval: 12 images with 2 captions each; the missing image is skipped
    let r: serde_json::Value = serde_json::from_str(&align(&[
        "eval",
        "retrieval",
        "--checkpoint",
        s(&run),
        "--data",
        s(&dir.join("captions.tsv")),
        "--json",
    ]))
    .unwrap();
    assert_eq!((r["images"].as_u64(), r["captions"].as_u64()), (Some(12), Some(24)), "{r}");
    assert_eq!(r["skipped"]["missing_image"].as_u64(), Some(1));
    let r10 = r["i2t_r10"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&r10));

    // zero-shot with the default CLIP templates and with a given template file
    let z: serde_json::Value = serde_json::from_str(&align(&[
        "eval",
        "zeroshot",
        "--checkpoint",
        s(&run),
        "--data",
        s(&dir.join("labels.tsv")),
        "--classes",
        s(&dir.join("classes.txt")),
        "--json",
    ]))
    .unwrap();
    assert_eq!(z["images"].as_u64(), Some(12));
    assert!(z["top5"].as_f64().unwrap() >= z["top1"].as_f64().unwrap());
    std::fs::write(dir.join("templates.txt"), "a {} shape\nsomething {}\n").unwrap();
    align(&[
        "eval",
        "zeroshot",
        "--checkpoint",
        s(&run),
        "--data",
        s(&dir.join("labels.tsv")),
        "--classes",
        s(&dir.join("classes.txt")),
        "--templates",
        s(&dir.join("templates.txt")),
    ]);

    // KNN (the model is barely trained, so only the plumbing is checked)
    let k: serde_json::Value = serde_json::from_str(&align(&[
        "eval",
        "knn",
        "--checkpoint",
        s(&run),
        "--train",
        s(&dir.join("labels.tsv")),
        "--test",
        s(&dir.join("labels.tsv")),
        "--k",
        "1",
        "--json",
    ]))
    .unwrap();
    assert_eq!(k["images"].as_u64(), Some(12), "{k}");
    assert!((0.0..=1.0).contains(&k["top1"].as_f64().unwrap()), "{k}");

    // index + search: an image query finds itself with similarity 1, as high as any hit (a
    // barely trained tower maps many scenes close together, so ties at the top are possible)
    let index = dir.join("index.safetensors");
    align(&["embed", "--checkpoint", s(&run), "--images", s(&dir.join("images")), "--out", s(&index)]);
    let query = dir.join("images").join("05.png");
    let html = dir.join("search.html");
    let out = align(&["search", "--index", s(&index), "--image", s(&query), "--top", "12", "--html", s(&html)]);
    let hits: Vec<(f32, &str)> = out
        .lines()
        .map(|l| {
            let (score, path) = l.split_once('\t').unwrap();
            (score.parse().unwrap(), path)
        })
        .collect();
    assert_eq!(hits.len(), 12);
    assert!(hits.windows(2).all(|w| w[0].0 >= w[1].0), "best first: {out}");
    let own = hits.iter().find(|(_, p)| p.ends_with("05.png")).expect("the query image is in the index");
    assert!((own.0 - 1.0).abs() < 1e-4 && own.0 >= hits[0].0 - 1e-4, "{out}");
    assert_eq!(align(&["search", "--index", s(&index), "--image", s(&query), "--top", "3"]).lines().count(), 3);
    // text and image+text queries run and return the requested number of hits
    let out = align(&["search", "--index", s(&index), "--text", "a red circle", "--top", "20"]);
    assert_eq!(out.lines().count(), 12, "K larger than the index returns the whole index");
    let out = align(&["search", "--index", s(&index), "--image", s(&query), "--plus", "blue", "--minus", "red"]);
    assert_eq!(out.lines().count(), 10);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("data:image/png;base64,") && !page.contains("src=\"http"));

    // the colour-swap benchmark and the report
    let a: serde_json::Value = serde_json::from_str(&align(&[
        "eval",
        "arithmetic",
        "--checkpoint",
        s(&run),
        "--gallery",
        "60",
        "--queries",
        "10",
        "--json",
    ]))
    .unwrap();
    assert_eq!(a["queries"].as_u64(), Some(10));
    let report = dir.join("report.html");
    align(&["report", "--run", s(&run), "--out", s(&report)]);
    let page = std::fs::read_to_string(&report).unwrap();
    for needle in ["<svg", "temperature", "Held-out retrieval", "data:image/png;base64,", "Data filters"] {
        assert!(page.contains(needle), "report lacks {needle}");
    }
    // self-contained: nothing is loaded from elsewhere (the SVG namespace is an identifier)
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http") && !page.contains("url(http"));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_align"))
        .args(["eval", "retrieval", "--checkpoint", "/nonexistent/run", "--data", "x.tsv"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/run"));
    let out =
        Command::new(env!("CARGO_BIN_EXE_align")).args(["search", "--index", "/nonexistent.idx"]).output().unwrap();
    assert!(!out.status.success());
}
