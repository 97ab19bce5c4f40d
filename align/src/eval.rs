//! What people do with trained embeddings, measured the way the paper measures it (docs/paper.md,
//! "Evaluation protocols"): grouped image<->text retrieval, zero-shot classification with prompt
//! ensembling, KNN on image embeddings, an embedding index with text / image / image+text
//! search (the paper's Figure 5), and the colour-swap query benchmark on the built-in corpus.
//!
//! Every function here works from a trained run or a released model: [`LoadedModel::open`]
//! takes a run directory (or its `checkpoint.safetensors`) and restores the model, its
//! configuration and vocabulary, or a Hugging Face AlignModel directory (`kakaobrain/align-base`)
//! with its tokenizer and image processor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use autograd::no_grad;
use nn::Ctx;
use tensor::{Rng, Tensor};
use tokenizer::{BertOptions, WordPiece};

use crate::data::{image_batch_checked, read_manifest, Pair, Scene, SkipReport, COLOURS};
use crate::error::{io_error, AlignError, Result};
use crate::hf_align::{HfAlign, ImageProcessor};
use crate::model::{token_batch, DualEncoder};
use crate::retrieval::{retrieval_metrics, RetrievalMetrics};
use crate::train::TrainConfig;

/// CLIP's 80 ImageNet prompt templates (Radford et al. 2021), the default ensemble.
pub const CLIP_TEMPLATES: &str = include_str!("../data/clip_imagenet_templates.txt");

/// Embeds images and captions with a dual encoder at evaluation settings (centre crops, no
/// dropout, batch-norm running statistics). The trainer's held-out evaluation and every
/// `align eval` command go through it.
pub struct Embedder<'a> {
    pub model: &'a DualEncoder,
    pub tokenizer: &'a WordPiece,
    pub config: &'a TrainConfig,
    /// A released model's own image preprocessing; None: our runs' centre crop at
    /// `config.resolution`.
    pub processor: Option<&'a ImageProcessor>,
}

impl Embedder<'_> {
    /// Images per forward pass.
    const IMAGE_CHUNK: usize = 64;
    /// Captions per forward pass.
    const TEXT_CHUNK: usize = 256;

    /// L2-normalised text embeddings, (texts.len(), dim) row-major.
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(texts.len() * self.model.embed_dim());
        no_grad(|| -> Result<()> {
            for chunk in texts.chunks(Self::TEXT_CHUNK) {
                let tokens = token_batch(self.tokenizer, chunk, self.config.max_tokens)?;
                out.extend(self.model.embed_texts(&tokens, &mut Ctx::eval())?.value().to_vec());
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// L2-normalised embeddings of image files or built-in scenes (centre crop). Returns the
    /// embeddings of the images that decoded, (kept.len(), dim), and the kept indices.
    pub fn embed_pairs(&self, pairs: &[Pair]) -> Result<(Vec<f32>, Vec<usize>)> {
        let (mut emb, mut kept) = (vec![], vec![]);
        no_grad(|| -> Result<()> {
            for (c, chunk) in pairs.chunks(Self::IMAGE_CHUNK).enumerate() {
                let refs: Vec<&Pair> = chunk.iter().collect();
                let (images, ok) = match self.processor {
                    None => {
                        let (images, ok, _) =
                            image_batch_checked(self.config.seed, &refs, self.config.resolution, false, 0)?;
                        (images, ok)
                    }
                    Some(processor) => processed_batch(processor, self.config.seed, &refs)?,
                };
                if ok.is_empty() {
                    continue;
                }
                emb.extend(self.model.embed_images(&images, &mut Ctx::eval())?.value().to_vec());
                kept.extend(ok.iter().map(|&i| c * Self::IMAGE_CHUNK + i));
            }
            Ok(())
        })?;
        Ok((emb, kept))
    }

    /// L2-normalised embeddings of decoded images (the same preprocessing as
    /// [`Embedder::embed_pairs`]), (images.len(), dim). Empty images are an error.
    pub fn embed_images(&self, images: &[image::RgbImage]) -> Result<Vec<f32>> {
        let mut pixels = Vec::new();
        let mut shape = None;
        for img in images {
            let t = match self.processor {
                Some(processor) => processor.preprocess(img)?,
                None => {
                    let res = self.config.resolution;
                    let data = crate::data::eval_pixels(img, res)
                        .ok_or_else(|| AlignError::config("image", "the image is empty"))?;
                    Tensor::from_vec(data, &[res, res, 3])?
                }
            };
            if *shape.get_or_insert_with(|| t.shape().to_vec()) != t.shape() {
                return Err(AlignError::config("image processor", "gives images of different sizes"));
            }
            pixels.extend(t.to_vec());
        }
        let Some(shape) = shape else { return Ok(vec![]) };
        let batch = Tensor::from_vec(pixels, &[images.len(), shape[0], shape[1], shape[2]])?;
        no_grad(|| Ok(self.model.embed_images(&batch, &mut Ctx::eval())?.value().to_vec()))
    }

    /// Retrieval over pairs whose captions each describe their own image. Pairs whose image
    /// does not decode are left out, never scored: the metrics rank the returned count of
    /// pairs, and with none readable there are no metrics at all.
    pub fn retrieval(&self, pairs: &[Pair]) -> Result<(Option<RetrievalMetrics>, usize)> {
        let (img, kept) = self.embed_pairs(pairs)?;
        if kept.is_empty() {
            return Ok((None, 0));
        }
        let texts: Vec<&str> = kept.iter().map(|&i| pairs[i].text.as_str()).collect();
        let txt = self.embed_texts(&texts)?;
        let sim = similarity(&img, &txt, self.model.embed_dim())?;
        let owners: Vec<usize> = (0..kept.len()).collect();
        Ok((Some(retrieval_metrics(&sim, kept.len(), kept.len(), &owners)), kept.len()))
    }
}

/// Decodes `pairs` and applies a released model's image processor: (N', H, W, 3) of the
/// images that decoded, and their indices. The processor must give every image one size (a
/// fixed resize or a centre crop), as AlignProcessor's does.
fn processed_batch(processor: &ImageProcessor, seed: u64, pairs: &[&Pair]) -> Result<(Tensor, Vec<usize>)> {
    use rayon::prelude::*;
    let per: Vec<Option<Tensor>> = pairs
        .par_iter()
        .map(|p| crate::data::decode_pair(seed, p).and_then(|img| processor.preprocess(&img).ok()))
        .collect();
    let kept: Vec<usize> = (0..per.len()).filter(|&i| per[i].is_some()).collect();
    let tensors: Vec<Tensor> = per.into_iter().flatten().collect();
    let Some(first) = tensors.first() else {
        return Ok((Tensor::zeros(&[0, 1, 1, 3]), kept));
    };
    let shape = first.shape().to_vec();
    if tensors.iter().any(|t| t.shape() != shape.as_slice()) {
        return Err(AlignError::config(
            "image processor",
            "keeps each image's size (no fixed resize or crop), so images cannot be batched",
        ));
    }
    let data: Vec<f32> = tensors.iter().flat_map(|t| t.to_vec()).collect();
    Ok((Tensor::from_vec(data, &[tensors.len(), shape[0], shape[1], 3])?, kept))
}

/// A dual encoder with everything needed to embed new inputs: a trained run, or a released
/// Hugging Face AlignModel.
pub struct LoadedModel {
    pub model: DualEncoder,
    pub tokenizer: WordPiece,
    /// A run's configuration; for a released model, defaults with its token limit and image size.
    pub config: TrainConfig,
    /// The run's checkpoint file, or the released model's directory.
    pub checkpoint: PathBuf,
    /// A released model's image processor (None for our runs).
    pub processor: Option<ImageProcessor>,
}

/// True when `dir` holds a transformers AlignModel (a `config.json` with vision and text configs).
pub fn is_hf_align_dir(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else { return false };
    serde_json::from_str::<serde_json::Value>(&text)
        .is_ok_and(|v| v.get("vision_config").is_some() && v.get("text_config").is_some())
}

impl LoadedModel {
    /// Opens a run directory (or the checkpoint file inside one): the configuration comes from
    /// the checkpoint's metadata, the vocabulary from `vocab.txt` beside it. A Hugging Face
    /// AlignModel directory opens as [`LoadedModel::from_hf`] of [`HfAlign::open`].
    pub fn open(path: &Path) -> Result<LoadedModel> {
        if path.is_dir() && !path.join("checkpoint.safetensors").exists() && is_hf_align_dir(path) {
            return Ok(LoadedModel::from_hf(HfAlign::open(path)?));
        }
        let checkpoint = if path.is_dir() { path.join("checkpoint.safetensors") } else { path.to_path_buf() };
        let dir = checkpoint.parent().unwrap_or(Path::new(".")).to_path_buf();
        let meta = tensor::io::safetensors::SafeTensors::open(&checkpoint)?.metadata().clone();
        let config: TrainConfig = meta
            .get("config")
            .and_then(|c| serde_json::from_str(c).ok())
            .ok_or_else(|| AlignError::data(&checkpoint, "no training configuration in the metadata"))?;
        let vocab_path = dir.join("vocab.txt");
        let vocab: Vec<String> =
            std::fs::read_to_string(&vocab_path).map_err(io_error(&vocab_path))?.lines().map(String::from).collect();
        let tokenizer =
            WordPiece::from_tokens(vocab, BertOptions { do_lower_case: config.lowercase, ..Default::default() })
                .map_err(|e| AlignError::data(&vocab_path, e.to_string()))?;
        let model = DualEncoder::new(&config, tokenizer.vocab_size(), &mut Rng::new(0))?;
        nn::checkpoint::load_model(&checkpoint, &model)?;
        Ok(LoadedModel { model, tokenizer, config, checkpoint, processor: None })
    }

    /// A released model as a loaded one: its token limit and image size go into a default
    /// configuration (evaluation on `builtin` data then uses the built-in corpus's defaults).
    pub fn from_hf(hf: HfAlign) -> LoadedModel {
        let mut config = TrainConfig { max_tokens: hf.max_tokens, ..TrainConfig::default() };
        if let Some((w, h)) = hf.images.center_crop.or(hf.images.resize) {
            config.resolution = w.max(h) as usize;
        }
        config.lowercase = hf.tokenizer.options.do_lower_case;
        LoadedModel { model: hf.model, tokenizer: hf.tokenizer, config, checkpoint: hf.dir, processor: Some(hf.images) }
    }

    pub fn embedder(&self) -> Embedder<'_> {
        Embedder {
            model: &self.model,
            tokenizer: &self.tokenizer,
            config: &self.config,
            processor: self.processor.as_ref(),
        }
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.model.embed_dim()
    }

    /// See [`Embedder::embed_texts`].
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<f32>> {
        self.embedder().embed_texts(texts)
    }

    /// See [`Embedder::embed_pairs`].
    pub fn embed_pairs(&self, pairs: &[Pair]) -> Result<(Vec<f32>, Vec<usize>)> {
        self.embedder().embed_pairs(pairs)
    }

    /// Embeddings of image files (see [`Embedder::embed_pairs`]).
    pub fn embed_files(&self, files: &[PathBuf]) -> Result<(Vec<f32>, Vec<usize>)> {
        let pairs: Vec<Pair> =
            files.iter().map(|f| Pair { index: 0, file: Some(f.clone()), member: None, text: String::new() }).collect();
        self.embed_pairs(&pairs)
    }
}

/// Rows of `a` (n, d) times rows of `b` (m, d): (n, m) cosine similarities for unit rows.
pub fn similarity(a: &[f32], b: &[f32], d: usize) -> Result<Vec<f32>> {
    let (n, m) = (a.len() / d.max(1), b.len() / d.max(1));
    if n == 0 || m == 0 {
        return Ok(vec![]);
    }
    let ta = Tensor::from_vec(a.to_vec(), &[n, d])?;
    let tb = Tensor::from_vec(b.to_vec(), &[m, d])?;
    Ok(ta.matmul(&tb.t()?)?.to_vec())
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// Indices of the `k` largest scores, best first (ties by index).
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

// ---------------------------------------------------------------------------------------------
// Retrieval (Flickr30K / MSCOCO protocol)
// ---------------------------------------------------------------------------------------------

/// Retrieval report: the metrics plus what was evaluated.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RetrievalReport {
    pub images: usize,
    pub captions: usize,
    #[serde(flatten)]
    pub metrics: RetrievalMetrics,
    pub skipped: SkipReport,
}

/// Image<->text retrieval over a manifest of (image, caption) records; records that share an
/// image path are that image's several captions (an image query is a hit when any of them is in
/// the top K; a caption query when its image is).
pub fn eval_retrieval(lm: &LoadedModel, manifest: &Path) -> Result<RetrievalReport> {
    if manifest == Path::new("builtin") {
        return eval_retrieval_builtin(lm, lm.config.held_out);
    }
    let (records, mut skipped) = read_manifest(manifest)?;
    let mut image_of: HashMap<PathBuf, usize> = HashMap::new();
    let mut files: Vec<PathBuf> = vec![];
    let mut captions: Vec<(usize, String)> = vec![];
    for (_, _, caption, file) in records {
        let next = files.len();
        let i = *image_of.entry(file.clone()).or_insert_with(|| {
            files.push(file);
            next
        });
        captions.push((i, caption));
    }
    let (img, kept) = lm.embed_files(&files)?;
    skipped.corrupt_image += files.len() - kept.len();
    // renumber images to the decoded ones; captions of undecodable images are dropped
    let mut new_index = vec![usize::MAX; files.len()];
    for (k, &i) in kept.iter().enumerate() {
        new_index[i] = k;
    }
    let captions: Vec<(usize, &str)> = captions
        .iter()
        .filter(|(i, _)| new_index[*i] != usize::MAX)
        .map(|(i, t)| (new_index[*i], t.as_str()))
        .collect();
    let texts: Vec<&str> = captions.iter().map(|(_, t)| *t).collect();
    let owners: Vec<usize> = captions.iter().map(|(i, _)| *i).collect();
    let txt = lm.embed_texts(&texts)?;
    let sim = similarity(&img, &txt, lm.dim())?;
    let metrics = if kept.is_empty() || texts.is_empty() {
        RetrievalMetrics::default()
    } else {
        retrieval_metrics(&sim, kept.len(), texts.len(), &owners)
    };
    Ok(RetrievalReport { images: kept.len(), captions: texts.len(), metrics, skipped })
}

/// Retrieval on the built-in corpus's held-out pairs (the same `n` pairs training evaluates).
pub fn eval_retrieval_builtin(lm: &LoadedModel, n: usize) -> Result<RetrievalReport> {
    let (_, held, _) = crate::data::builtin_corpus(lm.config.seed, 0, n);
    let (metrics, scored) = lm.embedder().retrieval(&held)?;
    let skipped = SkipReport { corrupt_image: held.len() - scored, ..SkipReport::default() };
    Ok(RetrievalReport { images: scored, captions: scored, metrics: metrics.unwrap_or_default(), skipped })
}

// ---------------------------------------------------------------------------------------------
// Zero-shot classification and KNN
// ---------------------------------------------------------------------------------------------

/// A labelled image set: a manifest whose second column is a class (its name, or its index in
/// the class list).
pub struct Labelled {
    pub files: Vec<PathBuf>,
    pub labels: Vec<usize>,
    pub skipped: SkipReport,
}

/// Reads a labelled manifest against a class list (names compared case-insensitively).
pub fn read_labelled(path: &Path, classes: &[String]) -> Result<Labelled> {
    let (records, skipped) = read_manifest(path)?;
    label_records(path, records, skipped, classes)
}

/// Maps read manifest records to class indices (see [`read_labelled`]).
fn label_records(
    path: &Path,
    records: Vec<crate::data::ManifestRecord>,
    skipped: SkipReport,
    classes: &[String],
) -> Result<Labelled> {
    let by_name: HashMap<String, usize> = classes.iter().enumerate().map(|(i, c)| (c.to_lowercase(), i)).collect();
    let (mut files, mut labels) = (vec![], vec![]);
    for (_, _, label, file) in records {
        let l = label.trim();
        let class =
            by_name.get(&l.to_lowercase()).copied().or_else(|| l.parse::<usize>().ok().filter(|&i| i < classes.len()));
        match class {
            Some(c) => {
                files.push(file);
                labels.push(c);
            }
            None => {
                return Err(AlignError::Data {
                    file: path.to_path_buf(),
                    record: Some(format!("label '{l}'")),
                    msg: "not one of the classes".into(),
                })
            }
        }
    }
    Ok(Labelled { files, labels, skipped })
}

/// Reads a class or template list: one per line, blank lines and `#` comments ignored.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    Ok(parse_lines(&text))
}

pub fn parse_lines(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

/// Class embeddings by prompt ensembling: for each class, the mean of the L2-normalised text
/// embeddings of every template filled with the class name, normalised again. (classes, dim)
pub fn class_embeddings(lm: &LoadedModel, classes: &[String], templates: &[String]) -> Result<Vec<f32>> {
    ensemble_prompts(&|texts| lm.embed_texts(texts), lm.dim(), classes, templates)
}

/// Prompt ensembling with any text encoder: for each class, the mean of the unit embeddings
/// `embed_texts` gives every template filled with the class name (`{}`, or the name appended),
/// normalised again. (classes, dim)
pub fn ensemble_prompts(
    embed_texts: &dyn Fn(&[&str]) -> Result<Vec<f32>>,
    d: usize,
    classes: &[String],
    templates: &[String],
) -> Result<Vec<f32>> {
    if templates.is_empty() {
        return Err(AlignError::config("templates", "no prompt templates"));
    }
    let mut out = vec![0.0f32; classes.len() * d];
    for (c, name) in classes.iter().enumerate() {
        let prompts: Vec<String> = templates
            .iter()
            .map(|t| if t.contains("{}") { t.replace("{}", name) } else { format!("{t} {name}") })
            .collect();
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let e = embed_texts(&refs)?;
        let row = &mut out[c * d..(c + 1) * d];
        for p in e.chunks_exact(d) {
            row.iter_mut().zip(p).for_each(|(a, &v)| *a += v);
        }
        normalise(row);
    }
    Ok(out)
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Accuracy {
    pub images: usize,
    pub top1: f32,
    /// Top-5 accuracy (zero-shot only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top5: Option<f32>,
    pub skipped: SkipReport,
}

/// Top-1 / top-5 accuracy of score rows (n, classes) against labels.
pub fn accuracy(scores: &[f32], classes: usize, labels: &[usize]) -> (f32, f32) {
    let (mut t1, mut t5) = (0usize, 0usize);
    for (row, &l) in scores.chunks_exact(classes.max(1)).zip(labels) {
        let top = top_k(row, 5);
        t1 += (top[0] == l) as usize;
        t5 += top.contains(&l) as usize;
    }
    let n = labels.len().max(1) as f32;
    (t1 as f32 / n, t5 as f32 / n)
}

/// Zero-shot classification of a labelled set.
pub fn eval_zeroshot(lm: &LoadedModel, data: &Path, classes: &[String], templates: &[String]) -> Result<Accuracy> {
    let set = read_labelled(data, classes)?;
    let class_emb = class_embeddings(lm, classes, templates)?;
    let (img, kept) = lm.embed_files(&set.files)?;
    let labels: Vec<usize> = kept.iter().map(|&i| set.labels[i]).collect();
    let scores = similarity(&img, &class_emb, lm.dim())?;
    let (top1, top5) = accuracy(&scores, classes.len(), &labels);
    let mut skipped = set.skipped;
    skipped.corrupt_image += set.files.len() - kept.len();
    Ok(Accuracy { images: labels.len(), top1, top5: Some(top5), skipped })
}

/// KNN predictions: for each query row, the class with the largest sum of similarities over its
/// `k` nearest gallery rows (cosine; similarity-weighted votes; ties to the smaller class).
pub fn knn_predict(query: &[f32], gallery: &[f32], gallery_labels: &[usize], d: usize, k: usize) -> Result<Vec<usize>> {
    let sim = similarity(query, gallery, d)?;
    let m = gallery_labels.len();
    let classes = gallery_labels.iter().max().map_or(0, |&c| c + 1);
    Ok(sim
        .chunks_exact(m.max(1))
        .map(|row| {
            let mut votes = vec![0.0f32; classes];
            for j in top_k(row, k) {
                votes[gallery_labels[j]] += row[j];
            }
            (0..classes).max_by(|&a, &b| votes[a].total_cmp(&votes[b]).then(b.cmp(&a))).unwrap_or(0)
        })
        .collect())
}

/// KNN accuracy on image embeddings: the train set is the gallery, the test set the queries.
/// Labels are the manifests' second column (any strings: the classes are their union).
pub fn eval_knn(lm: &LoadedModel, train: &Path, test: &Path, k: usize) -> Result<Accuracy> {
    // each manifest is read once (reading opens every image header)
    let ((train_records, train_skips), (test_records, test_skips)) = (read_manifest(train)?, read_manifest(test)?);
    let mut classes: Vec<String> = train_records.iter().chain(&test_records).map(|r| r.2.trim().to_string()).collect();
    classes.sort();
    classes.dedup();
    let tr = label_records(train, train_records, train_skips, &classes)?;
    let te = label_records(test, test_records, test_skips, &classes)?;
    let (g, gk) = lm.embed_files(&tr.files)?;
    let (q, qk) = lm.embed_files(&te.files)?;
    let gl: Vec<usize> = gk.iter().map(|&i| tr.labels[i]).collect();
    let ql: Vec<usize> = qk.iter().map(|&i| te.labels[i]).collect();
    let pred = knn_predict(&q, &g, &gl, lm.dim(), k.max(1))?;
    let top1 = pred.iter().zip(&ql).filter(|(p, l)| p == l).count() as f32 / ql.len().max(1) as f32;
    let mut skipped = te.skipped;
    skipped.corrupt_image += te.files.len() - qk.len() + tr.files.len() - gk.len();
    Ok(Accuracy { images: ql.len(), top1, top5: None, skipped })
}

// ---------------------------------------------------------------------------------------------
// Embedding index and search
// ---------------------------------------------------------------------------------------------

pub use crate::index::EmbeddingIndex;

/// Image files of a folder (jpg / jpeg / png, recursively, sorted) or of a manifest.
pub fn list_images(source: &Path) -> Result<Vec<PathBuf>> {
    Ok(list_images_with_captions(source)?.0)
}

/// [`list_images`], and for a manifest each file's first caption (None for a folder). The
/// manifest is read once.
pub fn list_images_with_captions(source: &Path) -> Result<(Vec<PathBuf>, Option<Vec<String>>)> {
    if source.is_dir() {
        let mut out = vec![];
        let mut stack = vec![source.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).map_err(io_error(&dir))?.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p
                    .extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| matches!(x.to_lowercase().as_str(), "jpg" | "jpeg" | "png"))
                {
                    out.push(p);
                }
            }
        }
        out.sort();
        Ok((out, None))
    } else {
        let mut seen = std::collections::HashSet::new();
        let (files, captions) =
            read_manifest(source)?.0.into_iter().filter(|r| seen.insert(r.3.clone())).map(|r| (r.3, r.2)).unzip();
        Ok((files, Some(captions)))
    }
}

/// A search query: text, or an image plus and minus texts (Figure 5 of the paper).
pub enum Query<'a> {
    Text(&'a str),
    Image { path: &'a Path, plus: &'a [String], minus: &'a [String] },
}

/// The unit query vector: a text embedding, or normalise(image + sum(plus) - sum(minus)).
pub fn query_vector(lm: &LoadedModel, q: &Query) -> Result<Vec<f32>> {
    match q {
        Query::Text(t) => compose_query(lm, &QueryParts { text: Some(t), ..QueryParts::default() }),
        Query::Image { path, plus, minus } => {
            let image = crate::images::load_rgb(path)
                .map_err(|e| AlignError::data(path, format!("the image could not be decoded: {e}")))?;
            compose_query(lm, &QueryParts { image: Some(&image), plus, minus, ..QueryParts::default() })
        }
    }
}

/// The parts of a composed query: any of a text and an image, plus and minus texts.
#[derive(Default)]
pub struct QueryParts<'a> {
    pub text: Option<&'a str>,
    pub image: Option<&'a image::RgbImage>,
    pub plus: &'a [String],
    pub minus: &'a [String],
}

/// normalise(image + text + sum(plus) - sum(minus)) over the parts given. All texts of one
/// query go through the text tower as one batch, so a query's vector does not depend on what
/// other queries run beside it.
pub fn compose_query(lm: &LoadedModel, parts: &QueryParts) -> Result<Vec<f32>> {
    if parts.text.is_none() && parts.image.is_none() {
        return Err(AlignError::config("query", "give a text, an image, or both"));
    }
    let dim = lm.dim();
    let mut v = vec![0.0f32; dim];
    if let Some(img) = parts.image {
        v.iter_mut().zip(lm.embedder().embed_images(std::slice::from_ref(img))?).for_each(|(a, b)| *a += b);
    }
    let texts: Vec<&str> = parts
        .text
        .into_iter()
        .chain(parts.plus.iter().map(String::as_str))
        .chain(parts.minus.iter().map(String::as_str))
        .collect();
    if !texts.is_empty() {
        let emb = lm.embed_texts(&texts)?;
        let positive = texts.len() - parts.minus.len();
        for (k, e) in emb.chunks_exact(dim).enumerate() {
            let sign = if k < positive { 1.0 } else { -1.0 };
            v.iter_mut().zip(e).for_each(|(a, &b)| *a += sign * b);
        }
    }
    normalise(&mut v);
    Ok(v)
}

/// A thumbnail as a `data:` URI (PNG, longer side `size`), so pages need no other files.
pub fn thumbnail_uri(img: &image::RgbImage, size: u32) -> String {
    use base64::Engine as _;
    let (w, h) = img.dimensions();
    let scale = size as f32 / w.max(h).max(1) as f32;
    let (tw, th) = (((w as f32 * scale) as u32).max(1), ((h as f32 * scale) as u32).max(1));
    let small = image::imageops::resize(img, tw, th, image::imageops::FilterType::Triangle);
    let mut png = Vec::new();
    small.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("PNG encoding to memory");
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png))
}

/// Escapes text for HTML.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A self-contained HTML page of search results (thumbnails embedded).
pub fn results_html(title: &str, results: &[(PathBuf, f32)]) -> String {
    let mut cells = String::new();
    for (p, s) in results {
        let thumb = crate::images::load_rgb(p).map(|img| thumbnail_uri(&img, 160)).unwrap_or_default();
        cells.push_str(&format!(
            "<figure><img src=\"{thumb}\" alt=\"\"><figcaption>{:.3}<br>{}</figcaption></figure>\n",
            s,
            html_escape(&p.display().to_string())
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>{css}</style></head>\
         <body><h1>{t}</h1><div class=\"grid\">{cells}</div></body></html>\n",
        t = html_escape(title),
        css = PAGE_CSS
    )
}

pub const PAGE_CSS: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
    .grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:170px;font-size:12px;word-break:break-all}\
    img{max-width:160px;max-height:160px;display:block;border:1px solid #ccc}\
    table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}";

// ---------------------------------------------------------------------------------------------
// Image + text queries on the built-in corpus
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, serde::Serialize)]
pub struct ArithmeticReport {
    /// Queries made (held-out single-object images, each with a different target colour).
    pub queries: usize,
    /// Fraction whose top `k` contains an image with an object of the target colour.
    pub hit_rate: f32,
    /// The same for the image alone (no text added): how often the target colour turns up
    /// anyway, the baseline the arithmetic must beat.
    pub baseline_hit_rate: f32,
    pub k: usize,
}

/// The paper's Figure 5 on held-out built-in scenes: for a single-object image of colour A,
/// the query image + "B" - "A" should retrieve an object of colour B among the top `k` of a
/// gallery of held-out scenes. B is drawn at random per query (seeded).
pub fn eval_arithmetic(lm: &LoadedModel, gallery_size: usize, queries: usize, k: usize) -> Result<ArithmeticReport> {
    let seed = lm.config.seed;
    // a range disjoint from training (0..) and from the training-time held-out set (2^40..)
    let base = 3u64 << 40;
    let scenes: Vec<Scene> = (0..gallery_size as u64).map(|i| Scene::generate(seed, base + i)).collect();
    let pairs: Vec<Pair> = (0..gallery_size as u64)
        .map(|i| Pair { index: base + i, file: None, member: None, text: String::new() })
        .collect();
    let (emb, kept) = lm.embed_pairs(&pairs)?;
    let d = lm.dim();
    let colour_words: Vec<&str> = COLOURS.iter().map(|c| c.0).collect();
    let words = lm.embed_texts(&colour_words)?;
    let mut rng = Rng::new(seed ^ 0xF165);
    let (mut hits, mut base_hits, mut n) = (0usize, 0usize, 0usize);
    for (row, &i) in kept.iter().enumerate() {
        if n == queries {
            break;
        }
        let scene = &scenes[i];
        if scene.objects.len() != 1 {
            continue;
        }
        let a = scene.objects[0].colour;
        let b = (a + 1 + rng.below(COLOURS.len() - 1)) % COLOURS.len();
        let img = &emb[row * d..(row + 1) * d];
        let mut q: Vec<f32> = (0..d).map(|j| img[j] + words[b * d + j] - words[a * d + j]).collect();
        normalise(&mut q);
        let has_b = |r: usize| r != row && scenes[kept[r]].objects.iter().any(|o| o.colour == b);
        let found = |v: &[f32]| -> Result<bool> {
            let scores = similarity(v, &emb, d)?;
            // the query image itself is excluded from its results
            let mut order = top_k(&scores, k + 1);
            order.retain(|&r| r != row);
            order.truncate(k);
            Ok(order.into_iter().any(has_b))
        };
        hits += found(&q)? as usize;
        base_hits += found(img)? as usize;
        n += 1;
    }
    let frac = |h: usize| h as f32 / n.max(1) as f32;
    Ok(ArithmeticReport { queries: n, hit_rate: frac(hits), baseline_hit_rate: frac(base_hits), k })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_and_accuracy_hand_computed() {
        assert_eq!(top_k(&[0.1, 0.9, 0.5, 0.9], 3), vec![1, 3, 2]); // ties keep index order
        assert_eq!(top_k(&[0.3], 5), vec![0]); // k larger than the list
                                               // 2 images x 6 classes: image 0 scores its class (2) second -> top-1 miss, top-5 hit
        let scores = [0.1, 0.2, 0.8, 0.9, 0.0, 0.0, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1];
        assert_eq!(accuracy(&scores, 6, &[2, 0]), (0.5, 1.0));
    }

    #[test]
    fn knn_votes_are_similarity_weighted() {
        // 2-d unit vectors; gallery: two weak class-0 neighbours, one strong class-1 neighbour
        let g = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        let labels = [1, 0, 0];
        let q = [0.8, 0.6]; // sims: 0.8 (class 1), 0.6, 0.96 (class 0) -> class 0 by sum 1.56
        assert_eq!(knn_predict(&q, &g, &labels, 2, 3).unwrap(), vec![0]);
        // k = 1: only the nearest (0.96, class 0)
        assert_eq!(knn_predict(&q, &g, &labels, 2, 1).unwrap(), vec![0]);
        let q2 = [1.0, 0.0]; // nearest is class 1 (1.0)
        assert_eq!(knn_predict(&q2, &g, &labels, 2, 1).unwrap(), vec![1]);
    }

    #[test]
    fn clip_templates_ship_eighty_prompts() {
        let t = parse_lines(CLIP_TEMPLATES);
        assert_eq!(t.len(), 80);
        assert!(t.iter().all(|l| l.contains("{}")));
    }
}
