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

/// `align args` with `--json` among them, parsed.
fn align_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&align(args)).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny run plus a folder of rendered scenes with manifests.
fn setup(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("align-eval-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = dir.join("run");
    align(&[
        "train",
        "--image-tower",
        "tiny",
        "--text-tower",
        "tiny",
        "--resolution",
        "32",
        "--max-tokens",
        "16",
        "--train-pairs",
        "600",
        "--batch-size",
        "16",
        "--steps",
        "200",
        "--warmup",
        "10",
        "--out",
        s(&run),
    ]);
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
    let (dir, run) = setup("plumbing");
    // retrieval: 12 images with 2 captions each; the missing image is skipped
    let r =
        align_json(&["eval", "retrieval", "--checkpoint", s(&run), "--data", s(&dir.join("captions.tsv")), "--json"]);
    assert_eq!((r["images"].as_u64(), r["captions"].as_u64()), (Some(12), Some(24)), "{r}");
    assert_eq!(r["skipped"]["missing_image"].as_u64(), Some(1));
    let r10 = r["i2t_r10"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&r10));

    // zero-shot with the default CLIP templates and with a given template file
    let z = align_json(&[
        "eval",
        "zeroshot",
        "--checkpoint",
        s(&run),
        "--data",
        s(&dir.join("labels.tsv")),
        "--classes",
        s(&dir.join("classes.txt")),
        "--json",
    ]);
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
    let k = align_json(&[
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
    ]);
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
    let a =
        align_json(&["eval", "arithmetic", "--checkpoint", s(&run), "--gallery", "60", "--queries", "10", "--json"]);
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

/// Recall@1/5/10 both ways computed here from the model's embeddings, independently of the
/// library's metric code: an image query hits when any of its captions ranks within K, ties
/// counted against the query.
fn recall_by_hand(img: &[f32], txt: &[f32], d: usize, owner: &[usize]) -> [f64; 6] {
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let (n_img, n_txt) = (img.len() / d, txt.len() / d);
    let sim = |i: usize, t: usize| dot(&img[i * d..(i + 1) * d], &txt[t * d..(t + 1) * d]);
    let mut i2t = vec![];
    for i in 0..n_img {
        let best = (0..n_txt).filter(|&t| owner[t] == i).map(|t| sim(i, t)).fold(f32::NEG_INFINITY, f32::max);
        i2t.push(1 + (0..n_txt).filter(|&t| owner[t] != i && sim(i, t) >= best).count());
    }
    let mut t2i = vec![];
    for (t, &own) in owner.iter().enumerate() {
        let best = sim(own, t);
        t2i.push(1 + (0..n_img).filter(|&i| i != own && sim(i, t) >= best).count());
    }
    let at = |ranks: &[usize], k: usize| ranks.iter().filter(|&&r| r <= k).count() as f64 / ranks.len() as f64;
    [at(&i2t, 1), at(&i2t, 5), at(&i2t, 10), at(&t2i, 1), at(&t2i, 5), at(&t2i, 10)]
}

#[test]
fn eval_commands_give_the_answers_computed_by_hand() {
    let (dir, run) = setup("known-answers");
    let lm = align::eval::LoadedModel::open(&run).unwrap();
    let d = lm.dim();
    let images: Vec<PathBuf> = (0..12).map(|i| dir.join("images").join(format!("{i:02}.png"))).collect();
    let (img, kept) = lm.embed_files(&images).unwrap();
    assert_eq!(kept.len(), 12);
    let manifest = std::fs::read_to_string(dir.join("captions.tsv")).unwrap();
    let (mut texts, mut owner) = (vec![], vec![]);
    for line in manifest.lines().filter(|l| !l.contains("missing.png")) {
        let (path, caption) = line.split_once('\t').unwrap();
        owner.push(path.trim_start_matches("images/")[..2].parse::<usize>().unwrap());
        texts.push(caption.to_string());
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let txt = lm.embed_texts(&refs).unwrap();

    // retrieval, grouped captions
    let r =
        align_json(&["eval", "retrieval", "--checkpoint", s(&run), "--data", s(&dir.join("captions.tsv")), "--json"]);
    let want = recall_by_hand(&img, &txt, d, &owner);
    for (key, w) in ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"].iter().zip(want) {
        let got = r[key].as_f64().unwrap();
        assert!((got - w).abs() < 1e-6, "{key}: cli {got}, by hand {w}");
    }

    // zero-shot with two templates: class embedding = normalised mean of normalised prompts
    std::fs::write(dir.join("two_templates.txt"), "a {} shape\na photo of something {}\n").unwrap();
    let classes: Vec<&str> = align::data::COLOURS.iter().map(|c| c.0).collect();
    let mut class_emb = vec![];
    for c in &classes {
        let prompts = [format!("a {c} shape"), format!("a photo of something {c}")];
        let e = lm.embed_texts(&[prompts[0].as_str(), prompts[1].as_str()]).unwrap();
        let mean: Vec<f32> = (0..d).map(|j| e[j] + e[d + j]).collect();
        let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
        class_emb.extend(mean.iter().map(|x| x / norm));
    }
    let labels: Vec<usize> = std::fs::read_to_string(dir.join("labels.tsv"))
        .unwrap()
        .lines()
        .map(|l| classes.iter().position(|c| *c == l.split_once('\t').unwrap().1).unwrap())
        .collect();
    let (mut top1, mut top5) = (0, 0);
    for (i, &label) in labels.iter().enumerate() {
        let scores: Vec<f32> = (0..classes.len())
            .map(|c| img[i * d..(i + 1) * d].iter().zip(&class_emb[c * d..(c + 1) * d]).map(|(a, b)| a * b).sum())
            .collect();
        // rank of the true class, ties against it
        let rank = 1 + scores.iter().enumerate().filter(|&(c, &v)| c != label && v > scores[label]).count();
        top1 += (rank == 1) as usize;
        top5 += (rank <= 5) as usize;
    }
    let z = align_json(&[
        "eval",
        "zeroshot",
        "--checkpoint",
        s(&run),
        "--data",
        s(&dir.join("labels.tsv")),
        "--classes",
        s(&dir.join("classes.txt")),
        "--templates",
        s(&dir.join("two_templates.txt")),
        "--json",
    ]);
    assert!((z["top1"].as_f64().unwrap() - top1 as f64 / 12.0).abs() < 1e-6, "{z} vs {top1}/12");
    assert!((z["top5"].as_f64().unwrap() - top5 as f64 / 12.0).abs() < 1e-6, "{z} vs {top5}/12");

    // KNN of the labelled images against themselves: with k = 1 each image finds itself
    // (100%); larger k mix in similarity-weighted votes of the others (equal scores rank by
    // gallery order, equal votes go to the lower class)
    let sims = align::eval::similarity(&img, &img, d).unwrap(); // (12, 12)
    let correct = |k: usize| -> usize {
        (0..12)
            .filter(|&q| {
                let row = &sims[q * 12..(q + 1) * 12];
                let mut order: Vec<usize> = (0..12).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                let mut votes = vec![0.0f32; classes.len()];
                for &g in &order[..k] {
                    votes[labels[g]] += row[g];
                }
                (0..classes.len()).fold(0, |b, c| if votes[c] > votes[b] { c } else { b }) == labels[q]
            })
            .count()
    };
    assert_eq!(correct(1), 12);
    // a k whose accuracy differs from k = 1's, so that an ignored k cannot pass
    let other_k = (2..=12).find(|&k| correct(k) != 12).expect("every k scores 100%; pick other images");
    for k in [1usize, other_k] {
        let got = align_json(&[
            "eval",
            "knn",
            "--checkpoint",
            s(&run),
            "--train",
            s(&dir.join("labels.tsv")),
            "--test",
            s(&dir.join("labels.tsv")),
            "--k",
            &k.to_string(),
            "--json",
        ]);
        let want = correct(k) as f64 / 12.0;
        assert!((got["top1"].as_f64().unwrap() - want).abs() < 1e-6, "k {k}: {got} vs {want}");
    }

    // arithmetic, by hand: the first `queries` single-object gallery scenes (colour a) are the
    // queries, each with a target colour b drawn as the command documents (seeded stream,
    // b != a); a query normalise(image + text(b) - text(a)) hits when an object of colour b is
    // among its top K other scenes; the baseline asks the same of the image alone
    let (gallery, queries, k) = (40u64, 8usize, 3usize);
    let base = 3u64 << 40;
    let scenes: Vec<align::data::Scene> =
        (0..gallery).map(|i| align::data::Scene::generate(lm.config.seed, base + i)).collect();
    let pairs: Vec<align::data::Pair> = (0..gallery)
        .map(|i| align::data::Pair { index: base + i, file: None, member: None, text: String::new() })
        .collect();
    let (emb, decoded) = lm.embed_pairs(&pairs).unwrap();
    assert_eq!(decoded.len(), gallery as usize);
    let words = lm.embed_texts(&classes).unwrap();
    let unit = |v: Vec<f32>| -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    };
    let hit = |query: &[f32], own: usize, b: usize| -> bool {
        let mut order: Vec<(f32, usize)> = (0..gallery as usize)
            .filter(|&r| r != own)
            .map(|r| (query.iter().zip(&emb[r * d..(r + 1) * d]).map(|(x, y)| x * y).sum::<f32>(), r))
            .collect();
        order.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
        order[..k].iter().any(|&(_, r)| scenes[r].objects.iter().any(|o| o.colour == b))
    };
    let mut rng = tensor::Rng::new(lm.config.seed ^ 0xF165);
    let (mut hits, mut base_hits, mut n) = (0, 0, 0);
    for (row, scene) in scenes.iter().enumerate() {
        if n == queries {
            break;
        }
        if scene.objects.len() != 1 {
            continue;
        }
        let a = scene.objects[0].colour;
        let b = (a + 1 + rng.below(classes.len() - 1)) % classes.len();
        let image = &emb[row * d..(row + 1) * d];
        let query = unit((0..d).map(|j| image[j] + words[b * d + j] - words[a * d + j]).collect());
        hits += hit(&query, row, b) as usize;
        base_hits += hit(image, row, b) as usize;
        n += 1;
    }
    assert_eq!(n, queries);
    let a = align_json(&[
        "eval",
        "arithmetic",
        "--checkpoint",
        s(&run),
        "--gallery",
        &gallery.to_string(),
        "--queries",
        &queries.to_string(),
        "--k",
        &k.to_string(),
        "--json",
    ]);
    let rate = |h: usize| h as f64 / queries as f64;
    assert!((a["hit_rate"].as_f64().unwrap() - rate(hits)).abs() < 1e-6, "{a} vs {hits}/{queries}");
    assert!((a["baseline_hit_rate"].as_f64().unwrap() - rate(base_hits)).abs() < 1e-6, "{a} vs {base_hits}/{queries}");
}
