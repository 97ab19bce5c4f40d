//! `align report --run DIR`: one self-contained HTML file about a training run. Everything is
//! inline (SVG plots, PNG thumbnails as data: URIs, CSS), so it opens offline and can be mailed
//! as one file. Sections: loss, temperature, learning rate and throughput curves (from
//! `log.jsonl`), the filter and skip report (`filters.json`), held-out retrieval
//! (`summary.json`), and example text queries with their top images from a held-out gallery.
//!
//! `align report --model DIR` does the same for a released model (a Hugging Face AlignModel
//! directory) or a run's model alone: what the model is, and example queries over the
//! built-in scenes or the images of a manifest (`--data`).

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{io_error as io_err, Result};

use crate::data::{Pair, Scene};
use crate::eval::{html_escape, similarity, thumbnail_uri, top_k, LoadedModel, PAGE_CSS};

/// An inline SVG line plot of (x, y) points with min / max labels.
pub fn svg_line_plot(title: &str, points: &[(f64, f64)], log_y: bool) -> String {
    let (w, h, pad) = (420.0, 200.0, 40.0);
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
        .map(|&(x, y)| (x, if log_y { y.log10() } else { y }))
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <text x=\"{}\" y=\"14\" font-size=\"13\" text-anchor=\"middle\">{}</text>",
        w / 2.0,
        html_escape(title)
    );
    if pts.is_empty() {
        svg.push_str("<text x=\"20\" y=\"100\" font-size=\"12\">no data</text></svg>");
        return svg;
    }
    let (x0, x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (xs, ys) = ((x1 - x0).max(1e-12), (y1 - y0).max(1e-12));
    let px = |x: f64| pad + (x - x0) / xs * (w - 1.5 * pad);
    let py = |y: f64| h - pad + 10.0 - (y - y0) / ys * (h - 1.5 * pad - 10.0);
    let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
    let label = |v: f64| if log_y { format!("{:.3e}", 10f64.powf(v)) } else { format!("{v:.4}") };
    let _ = write!(
        svg,
        "<rect x=\"{pad}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#ccc\"/>\
         <polyline fill=\"none\" stroke=\"#1f6fb2\" stroke-width=\"1.5\" points=\"{}\"/>\
         <text x=\"2\" y=\"{:.1}\" font-size=\"10\">{}</text><text x=\"2\" y=\"{:.1}\" font-size=\"10\">{}</text>\
         <text x=\"{pad}\" y=\"{}\" font-size=\"10\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{}</text></svg>",
        py(y1),
        w - 1.5 * pad,
        py(y0) - py(y1),
        path.join(" "),
        py(y1) + 4.0,
        label(y1),
        py(y0),
        label(y0),
        h - 4.0,
        x0,
        w - pad / 2.0,
        h - 4.0,
        x1
    );
    svg
}

fn table(rows: &[(String, String)]) -> String {
    let mut t = String::from("<table>");
    for (k, v) in rows {
        let _ = write!(t, "<tr><th>{}</th><td>{}</td></tr>", html_escape(k), html_escape(v));
    }
    t.push_str("</table>");
    t
}

fn json_rows(v: &serde_json::Value) -> Vec<(String, String)> {
    match v.as_object() {
        Some(m) => m.iter().filter(|(_, x)| !x.is_object()).map(|(k, x)| (k.clone(), x.to_string())).collect(),
        None => vec![],
    }
}

/// Builds the report of run `run` into `out`.
pub fn write_report(run: &Path, out: &Path) -> Result<()> {
    let log_path = run.join("log.jsonl");
    let log = std::fs::read_to_string(&log_path).map_err(io_err(&log_path))?;
    let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let series = |key: &str| -> Vec<(f64, f64)> {
        lines.iter().filter_map(|v| Some((v["step"].as_f64()?, v[key].as_f64()?))).collect()
    };
    let mut body = String::new();
    let _ = write!(body, "<h1>ALIGN run: {}</h1>", html_escape(&run.display().to_string()));
    body.push_str("<h2>Training curves</h2><div class=\"grid\">");
    body.push_str(&svg_line_plot("loss (image->text + text->image)", &series("loss"), false));
    body.push_str(&svg_line_plot("temperature", &series("temperature"), true));
    body.push_str(&svg_line_plot("learning rate", &series("lr"), false));
    body.push_str(&svg_line_plot("throughput (pairs/s)", &series("pairs_per_s"), false));
    body.push_str("</div>");
    let read_json = |name: &str| -> Option<serde_json::Value> {
        std::fs::read_to_string(run.join(name)).ok().and_then(|s| serde_json::from_str(&s).ok())
    };
    if let Some(f) = read_json("filters.json") {
        body.push_str("<h2>Data filters and skipped records</h2><div class=\"grid\">");
        body.push_str(&table(&json_rows(&f["filters"])));
        body.push_str(&table(&json_rows(&f["skipped"])));
        body.push_str("</div>");
    }
    if let Some(s) = read_json("summary.json") {
        body.push_str("<h2>Held-out retrieval</h2>");
        body.push_str(&table(&json_rows(&s["held_out"])));
        body.push_str("<h2>Run summary</h2>");
        body.push_str(&table(&json_rows(&s)));
    }
    match LoadedModel::open(run) {
        Ok(lm) => {
            let data = lm.config.data.clone();
            body.push_str(&example_queries(&lm, Path::new(&data))?)
        }
        Err(e) => {
            let _ = write!(body, "<p>No example queries: {}</p>", html_escape(&e.to_string()));
        }
    }
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ALIGN report</title><style>{PAGE_CSS}</style></head><body>{body}</body></html>\n"
    );
    std::fs::write(out, page).map_err(io_err(out))
}

/// Builds the report of a model alone (a run or a Hugging Face AlignModel directory) into
/// `out`: its towers, sizes, temperature and preprocessing, and example queries over `data`
/// (`builtin` or a manifest).
pub fn write_model_report(model: &Path, data: &Path, out: &Path) -> Result<()> {
    let lm = LoadedModel::open(model)?;
    let mut body = String::new();
    let _ = write!(body, "<h1>ALIGN model: {}</h1>", html_escape(&model.display().to_string()));
    let count = |params: Vec<(String, autograd::Var)>| params.iter().map(|(_, v)| v.value().numel()).sum::<usize>();
    let preprocessing = match &lm.processor {
        Some(p) => p.to_string(),
        None => format!("centre crop {0}x{0}, x / 127.5 - 1", lm.config.resolution),
    };
    let rows = [
        ("embedding width".to_string(), lm.dim().to_string()),
        ("image tower parameters".into(), count(lm.model.image.named_parameters()).to_string()),
        ("text tower parameters".into(), count(lm.model.text.named_parameters()).to_string()),
        ("vocabulary".into(), lm.tokenizer.vocab_size().to_string()),
        ("tokens per caption".into(), lm.config.max_tokens.to_string()),
        ("lowercase".into(), lm.config.lowercase.to_string()),
        ("temperature".into(), format!("{:.5}", lm.model.temperature())),
        ("image preprocessing".into(), preprocessing),
    ];
    body.push_str("<h2>Model</h2>");
    body.push_str(&table(&rows));
    body.push_str(&example_queries(&lm, data)?);
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ALIGN model</title><style>{PAGE_CSS}</style></head><body>{body}</body></html>\n"
    );
    std::fs::write(out, page).map_err(io_err(out))
}

/// Example text queries and their top-5 images from a held-out gallery: built-in scenes for
/// `builtin`, otherwise the last images of the manifest `data`.
fn example_queries(lm: &LoadedModel, data: &Path) -> Result<String> {
    let gallery_size = 300;
    let (pairs, queries): (Vec<Pair>, Vec<String>) = if data == Path::new("builtin") {
        let base = 3u64 << 40;
        let pairs: Vec<Pair> = (0..gallery_size as u64)
            .map(|i| Pair { index: base + i, file: None, member: None, text: String::new() })
            .collect();
        let queries = [
            "a red circle",
            "a large blue square",
            "a green star on a striped background",
            "a yellow triangle next to a purple ring",
        ]
        .map(String::from)
        .to_vec();
        (pairs, queries)
    } else {
        let (records, _) = crate::data::read_manifest(data).unwrap_or_default();
        let pairs: Vec<Pair> = records
            .iter()
            .rev()
            .take(gallery_size)
            .map(|r| Pair { index: 0, file: Some(r.3.clone()), member: None, text: r.2.clone() })
            .collect();
        let queries = pairs.iter().step_by(pairs.len().max(4) / 4).take(4).map(|p| p.text.clone()).collect();
        (pairs, queries)
    };
    let (emb, kept) = lm.embed_pairs(&pairs)?;
    let refs: Vec<&str> = queries.iter().map(String::as_str).collect();
    let q = lm.embed_texts(&refs)?;
    let sim = similarity(&q, &emb, lm.dim())?;
    let mut html = format!("<h2>Example text queries ({} held-out images)</h2>", kept.len());
    for (qi, text) in queries.iter().enumerate() {
        let _ = write!(html, "<h3>\"{}\"</h3><div class=\"grid\">", html_escape(text));
        let row = &sim[qi * kept.len()..(qi + 1) * kept.len()];
        for j in top_k(row, 5) {
            let p = &pairs[kept[j]];
            let img = match &p.file {
                Some(f) => crate::images::load_rgb(f).ok(),
                None => Some(Scene::generate(lm.config.seed, p.index).render()),
            };
            let uri = img.map(|i| thumbnail_uri(&i, 120)).unwrap_or_default();
            let _ = write!(html, "<figure><img src=\"{uri}\" alt=\"\"><figcaption>{:.3}</figcaption></figure>", row[j]);
        }
        html.push_str("</div>");
    }
    Ok(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_plots_are_inline_and_survive_empty_or_bad_data() {
        let s = svg_line_plot("loss", &[(1.0, 8.0), (2.0, 7.5), (3.0, f64::NAN)], false);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>") && s.contains("polyline"));
        assert!(svg_line_plot("empty", &[], true).contains("no data"));
        // log scale drops non-positive values instead of producing NaN coordinates
        let s = svg_line_plot("lr", &[(1.0, 0.0), (2.0, 1e-3), (3.0, 1e-4)], true);
        assert!(!s.contains("NaN"));
    }
}
