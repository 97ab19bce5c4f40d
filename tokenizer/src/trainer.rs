//! WordPiece vocabulary trainer.
//!
//! Words come from the same basic tokenizer (cleaning, CJK splitting, optional lowercasing,
//! punctuation isolation). Each word starts as characters: the first plain, the rest "##"-prefixed.
//! Then, until the vocabulary is full, the adjacent pair (a, b) with the highest likelihood
//! score freq(ab) / (freq(a) * freq(b)) (among pairs seen at least `min_frequency` times) is
//! merged into a new piece everywhere. Ties break on the merged string, so the output depends
//! only on the input. The result is a `vocab.txt`: special tokens, the alphabet, then pieces in
//! merge order.

use std::collections::{BTreeMap, HashMap};

use crate::wordpiece::{BertOptions, WordPiece, SPECIAL_TOKENS};

#[derive(Clone, Debug)]
pub struct TrainerOptions {
    pub vocab_size: usize,
    pub min_frequency: u64,
    pub special_tokens: Vec<String>,
    pub bert: BertOptions,
}

impl Default for TrainerOptions {
    fn default() -> Self {
        TrainerOptions {
            vocab_size: 8000,
            min_frequency: 2,
            special_tokens: SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect(),
            bert: BertOptions::default(),
        }
    }
}

/// Words of a line as the basic tokenizer splits them (no vocabulary needed).
pub fn basic_words(text: &str, bert: &BertOptions) -> Vec<String> {
    let splitter = WordPiece::from_tokens(SPECIAL_TOKENS.iter().map(|t| t.to_string()).collect(), bert.clone())
        .expect("special tokens");
    splitter.basic_tokenize(text)
}

/// Trains a vocabulary from lines of text. Returns the tokens in id order.
pub fn train<'a>(lines: impl IntoIterator<Item = &'a str>, opts: &TrainerOptions) -> Vec<String> {
    let splitter = WordPiece::from_tokens(SPECIAL_TOKENS.iter().map(|t| t.to_string()).collect(), opts.bert.clone())
        .expect("special tokens");
    let mut word_counts: HashMap<String, u64> = HashMap::new();
    for line in lines {
        for w in splitter.basic_tokenize(line) {
            if !w.is_empty() {
                *word_counts.entry(w).or_insert(0) += 1;
            }
        }
    }
    // Deterministic order of words.
    let mut words: Vec<(String, u64)> = word_counts.into_iter().collect();
    words.sort();
    // Symbols: index into `symbols`.
    let mut symbols: Vec<String> = Vec::new();
    let mut symbol_id: HashMap<String, usize> = HashMap::new();
    let mut intern = |s: String, symbols: &mut Vec<String>| -> usize {
        *symbol_id.entry(s.clone()).or_insert_with(|| {
            symbols.push(s);
            symbols.len() - 1
        })
    };
    let mut seqs: Vec<(Vec<usize>, u64)> = Vec::with_capacity(words.len());
    let mut alphabet_freq: BTreeMap<String, u64> = BTreeMap::new();
    for (w, c) in &words {
        let mut seq = Vec::new();
        for (i, ch) in w.chars().enumerate() {
            let s = if i == 0 { ch.to_string() } else { format!("##{ch}") };
            *alphabet_freq.entry(s.clone()).or_insert(0) += c;
            seq.push(intern(s, &mut symbols));
        }
        seqs.push((seq, *c));
    }
    let mut vocab: Vec<String> = opts.special_tokens.clone();
    // The whole alphabet goes in (so text from the same alphabet never needs [UNK]).
    for s in alphabet_freq.keys() {
        if !vocab.contains(s) {
            vocab.push(s.clone());
        }
    }
    while vocab.len() < opts.vocab_size {
        let mut sym_freq: HashMap<usize, u64> = HashMap::new();
        let mut pair_freq: HashMap<(usize, usize), u64> = HashMap::new();
        for (seq, c) in &seqs {
            for (i, &s) in seq.iter().enumerate() {
                *sym_freq.entry(s).or_insert(0) += c;
                if i + 1 < seq.len() {
                    *pair_freq.entry((s, seq[i + 1])).or_insert(0) += c;
                }
            }
        }
        let merged = |a: usize, b: usize, symbols: &Vec<String>| -> String {
            format!("{}{}", symbols[a], symbols[b].strip_prefix("##").unwrap_or(&symbols[b]))
        };
        let best = pair_freq
            .iter()
            .filter(|(_, &f)| f >= opts.min_frequency)
            .map(|(&(a, b), &f)| {
                let score = f as f64 / (sym_freq[&a] as f64 * sym_freq[&b] as f64);
                (score, merged(a, b, &symbols), a, b)
            })
            .max_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal).then_with(|| y.1.cmp(&x.1)));
        let Some((_, new_piece, a, b)) = best else { break };
        let new_id = intern(new_piece.clone(), &mut symbols);
        for (seq, _) in &mut seqs {
            let mut i = 0;
            while i + 1 < seq.len() {
                if seq[i] == a && seq[i + 1] == b {
                    seq[i] = new_id;
                    seq.remove(i + 1);
                }
                i += 1;
            }
        }
        if !vocab.contains(&new_piece) {
            vocab.push(new_piece);
        }
    }
    vocab
}

/// Writes tokens as a `vocab.txt` (one per line).
pub fn write_vocab(path: impl AsRef<std::path::Path>, tokens: &[String]) -> std::io::Result<()> {
    let mut text = tokens.join("\n");
    text.push('\n');
    std::fs::write(path, text)
}
