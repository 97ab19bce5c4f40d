//! Where training pairs come from: the built-in corpus or a user's data (a manifest of image
//! paths and alt-texts, or WebDataset shards), cleaned by the paper's frequency filters and
//! split into training pairs and a held-out set for retrieval; and the WordPiece vocabulary
//! trained on the kept alt-texts.
//!
//! Only captions, image sizes and where each image lies are kept in memory: a manifest's images
//! stay in their files and a shard's in the shard (`data::ShardSlice`), and both are read when
//! their batch is prepared. Every record can therefore be read in any order, so the trainer
//! shuffles whole epochs and resumes exactly from a saved order and cursor; a shuffle buffer
//! over a sequential stream would give neither a uniform shuffle nor a cheap exact resume.

use std::path::{Path, PathBuf};

use tokenizer::trainer::{train as train_vocab, write_vocab, TrainerOptions};
use tokenizer::{BertOptions, WordPiece};

use crate::data::{
    apply_filters, builtin_corpus, read_manifest, read_shards, FilterReport, Pair, ShardSlice, SkipReport,
};
use crate::error::{io_error, AlignError, Result};
use crate::train::TrainConfig;

/// The cleaned data of a run.
pub struct TrainingData {
    pub train: Vec<Pair>,
    /// Pairs never trained on, for held-out retrieval.
    pub held_out: Vec<Pair>,
    /// What each filter removed.
    pub filters: FilterReport,
    /// Records that could not be read, by reason.
    pub skipped: SkipReport,
}

impl TrainingData {
    /// Reads `cfg.data` (`builtin`, a manifest file, a `.tar` shard or a folder of shards) and
    /// applies the paper's filters. A user's data keeps its last tenth (at most
    /// `cfg.held_out` pairs) for retrieval; the built-in corpus draws its held-out pairs from
    /// a disjoint range of scenes.
    pub fn load(cfg: &TrainConfig) -> Result<TrainingData> {
        let data = if cfg.data == "builtin" {
            let (train, held_out, filters) = builtin_corpus(cfg.seed, cfg.train_pairs, cfg.held_out);
            TrainingData { train, held_out, filters, skipped: SkipReport::default() }
        } else {
            Self::load_user_data(Path::new(&cfg.data), cfg.held_out)?
        };
        if data.train.len() < 2 {
            return Err(AlignError::data(
                &cfg.data,
                format!("only {} pairs survive the filters; contrastive training needs at least 2", data.train.len()),
            ));
        }
        Ok(data)
    }

    fn load_user_data(source: &Path, held_out: usize) -> Result<TrainingData> {
        let shards = source.is_dir() || source.extension().is_some_and(|e| e == "tar");
        // (width, height, caption) for the filters, and where each image's bytes are
        type ImageRef = (Option<PathBuf>, Option<ShardSlice>);
        let (meta, images, skipped): (Vec<(u32, u32, String)>, Vec<ImageRef>, SkipReport) = if shards {
            let (records, skipped) = read_shards(source)?;
            let (meta, images) = records.into_iter().map(|(w, h, t, b)| ((w, h, t), (None, Some(b)))).unzip();
            (meta, images, skipped)
        } else {
            let (records, skipped) = read_manifest(source)?;
            let (meta, images) = records.into_iter().map(|(w, h, t, f)| ((w, h, t), (Some(f), None))).unzip();
            (meta, images, skipped)
        };
        // small sets (tests, toy data) cannot demand 5 sightings of every word
        let min_count = if meta.len() < 1000 { 1 } else { 5 };
        let (kept, filters) = apply_filters(&meta, 200_000, min_count);
        let mut train: Vec<Pair> = kept
            .into_iter()
            .map(|i| Pair {
                index: i as u64,
                file: images[i].0.clone(),
                member: images[i].1.clone(),
                text: meta[i].2.clone(),
            })
            .collect();
        let n_held = (train.len() / 10).min(held_out);
        let held_out = train.split_off(train.len() - n_held);
        Ok(TrainingData { train, held_out, filters, skipped })
    }

    /// Writes `filters.json` (what each filter removed, what could not be read) into the run.
    pub fn write_report(&self, out_dir: &Path) -> Result<()> {
        let path = out_dir.join("filters.json");
        let report = serde_json::json!({"filters": &self.filters, "skipped": &self.skipped});
        std::fs::write(&path, serde_json::to_string_pretty(&report).expect("json")).map_err(io_error(&path))
    }

    /// One line for the console.
    pub fn describe(&self) -> String {
        let f = &self.filters;
        format!(
            "data: {} alt-texts in, {} kept (small image {}, aspect {}, shared text {}, length {}, rare token {})",
            f.input,
            f.kept,
            f.image_too_small,
            f.image_aspect,
            f.text_shared_by_many,
            f.text_unigrams_out_of_range,
            f.text_rare_token
        )
    }
}

/// The run's WordPiece vocabulary: trained on the kept alt-texts and written to `vocab.txt`,
/// or read back from it when a run resumes (so the ids match the checkpoint). Only the writer
/// (rank 0 of a data-parallel job) writes the file; every rank trains the same vocabulary.
pub fn vocabulary(cfg: &TrainConfig, out_dir: &Path, train: &[Pair], resume: bool, write: bool) -> Result<WordPiece> {
    let path = out_dir.join("vocab.txt");
    let tokens: Vec<String> = if !cfg.text_init.is_empty() {
        // a pretrained text tower brings its vocabulary; the run keeps a copy
        let theirs = Path::new(&cfg.text_init).join("vocab.txt");
        let tokens: Vec<String> =
            std::fs::read_to_string(&theirs).map_err(io_error(&theirs))?.lines().map(String::from).collect();
        if write {
            write_vocab(&path, &tokens).map_err(io_error(&path))?;
        }
        tokens
    } else if resume && path.exists() {
        std::fs::read_to_string(&path).map_err(io_error(&path))?.lines().map(String::from).collect()
    } else {
        let tokens = train_vocab(
            train.iter().map(|p| p.text.as_str()),
            &TrainerOptions { vocab_size: cfg.vocab_size, ..Default::default() },
        );
        if write {
            write_vocab(&path, &tokens).map_err(io_error(&path))?;
        }
        tokens
    };
    WordPiece::from_tokens(tokens, BertOptions { do_lower_case: cfg.lowercase, ..Default::default() })
        .map_err(|e| AlignError::data(&path, e.to_string()))
}
