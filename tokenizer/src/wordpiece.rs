//! BERT basic tokenization + greedy longest-match-first WordPiece, with character offsets.
//!
//! Pipeline for one string (each step keeps, for every character, the index of the original
//! character it came from, so offsets survive normalisation):
//! 1. special tokens written literally in the text ("[CLS]", "[UNK]", ...) are kept whole;
//! 2. clean: drop NUL, U+FFFD and control characters; map whitespace to a space;
//! 3. put spaces around CJK ideographs;
//! 4. strip accents (NFD, drop non-spacing marks) when `strip_accents` (default: follows lowercasing);
//! 5. lowercase;
//! 6. split on whitespace and isolate every punctuation character;
//! 7. WordPiece each word: a word longer than `max_input_chars_per_word` is [UNK]; otherwise
//!    repeatedly take the longest vocabulary piece from the current position ("##"-prefixed
//!    after the first); if some position has no piece, the whole word is [UNK].
//!
//! The order of 4 and 5 follows Hugging Face `tokenizers` (google-research/bert lowercases first;
//! the two agree except for characters whose lowercase form decomposes differently).

use std::collections::HashMap;
use std::path::Path;

use unicode_normalization::char::decompose_canonical;

use crate::chars;
use crate::TokenizerError;

pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Options of Hugging Face's `BertTokenizer` that change tokenization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BertOptions {
    pub do_lower_case: bool,
    /// `None` follows `do_lower_case`.
    pub strip_accents: Option<bool>,
    pub tokenize_chinese_chars: bool,
    pub max_input_chars_per_word: usize,
}

impl Default for BertOptions {
    fn default() -> Self {
        BertOptions {
            do_lower_case: true,
            strip_accents: None,
            tokenize_chinese_chars: true,
            max_input_chars_per_word: 100,
        }
    }
}

impl BertOptions {
    /// Cased: no lowercasing and no accent stripping.
    pub fn cased() -> Self {
        BertOptions { do_lower_case: false, ..Default::default() }
    }
}

/// One token of a tokenized string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub id: u32,
    /// [start, end) in characters of the original string.
    pub offsets: (usize, usize),
}

/// A WordPiece vocabulary with the BERT basic tokenizer in front of it.
#[derive(Clone, Debug)]
pub struct WordPiece {
    pub options: BertOptions,
    tokens: Vec<String>,
    /// word-initial pieces
    initial: HashMap<String, u32>,
    /// continuation pieces, keyed without their "##"
    continuation: HashMap<String, u32>,
    /// longest piece in characters (bounds the greedy search)
    max_piece_chars: usize,
    pub unk_id: u32,
    pub cls_id: u32,
    pub sep_id: u32,
    pub pad_id: u32,
    special: Vec<(String, u32)>,
}

impl WordPiece {
    /// Builds from the lines of a `vocab.txt` (one token per line, id = line number).
    pub fn from_tokens(tokens: Vec<String>, options: BertOptions) -> Result<WordPiece, TokenizerError> {
        let mut initial = HashMap::with_capacity(tokens.len());
        let mut continuation = HashMap::new();
        let mut max_piece_chars = 1;
        for (id, t) in tokens.iter().enumerate() {
            let id = id as u32;
            match t.strip_prefix("##") {
                Some(rest) if !rest.is_empty() => {
                    continuation.entry(rest.to_string()).or_insert(id);
                    max_piece_chars = max_piece_chars.max(rest.chars().count());
                }
                _ => {
                    initial.entry(t.clone()).or_insert(id);
                    max_piece_chars = max_piece_chars.max(t.chars().count());
                }
            }
        }
        let find = |name: &str| {
            initial.get(name).copied().ok_or_else(|| TokenizerError::Vocab(format!("vocabulary has no {name} token")))
        };
        let unk_id = find("[UNK]")?;
        let cls_id = find("[CLS]")?;
        let sep_id = find("[SEP]")?;
        let pad_id = find("[PAD]")?;
        let special = SPECIAL_TOKENS.iter().filter_map(|s| initial.get(*s).map(|&id| (s.to_string(), id))).collect();
        Ok(WordPiece {
            options,
            tokens,
            initial,
            continuation,
            max_piece_chars,
            unk_id,
            cls_id,
            sep_id,
            pad_id,
            special,
        })
    }

    /// Loads a `vocab.txt`.
    pub fn from_vocab_file(path: impl AsRef<Path>, options: BertOptions) -> Result<WordPiece, TokenizerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| TokenizerError::Io(path.display().to_string(), e))?;
        let tokens: Vec<String> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l).to_string()).collect();
        // a trailing newline leaves one empty entry; an empty token is never a real piece
        let tokens =
            if tokens.last().is_some_and(|t| t.is_empty()) { tokens[..tokens.len() - 1].to_vec() } else { tokens };
        WordPiece::from_tokens(tokens, options).map_err(|e| match e {
            TokenizerError::Vocab(m) => TokenizerError::Vocab(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Loads `vocab.txt` from a model directory, with the options of its `tokenizer_config.json`
    /// when present (`do_lower_case`, `strip_accents`, `tokenize_chinese_chars`).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<WordPiece, TokenizerError> {
        let dir = dir.as_ref();
        let mut options = BertOptions::default();
        let cfg_path = dir.join("tokenizer_config.json");
        if let Ok(text) = std::fs::read_to_string(&cfg_path) {
            let cfg: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| TokenizerError::Vocab(format!("{}: {e}", cfg_path.display())))?;
            if let Some(v) = cfg.get("do_lower_case").and_then(|v| v.as_bool()) {
                options.do_lower_case = v;
            }
            if let Some(v) = cfg.get("strip_accents") {
                options.strip_accents = v.as_bool();
            }
            if let Some(v) = cfg.get("tokenize_chinese_chars").and_then(|v| v.as_bool()) {
                options.tokenize_chinese_chars = v;
            }
        }
        WordPiece::from_vocab_file(dir.join("vocab.txt"), options)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match token.strip_prefix("##") {
            Some(rest) if !rest.is_empty() => self.continuation.get(rest).copied(),
            _ => self.initial.get(token).copied(),
        }
    }

    fn is_special_id(&self, id: u32) -> bool {
        self.special.iter().any(|(_, s)| *s == id)
    }

    /// Tokens of `text` without [CLS] / [SEP].
    pub fn tokenize(&self, text: &str) -> Vec<Token> {
        let mut out = Vec::new();
        let mut chars: Vec<(char, usize)> = Vec::with_capacity(text.len());
        // Split out literal special tokens first.
        let mut rest = text;
        let mut char_base = 0;
        loop {
            let next = self
                .special
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|p| (p, s, *id)))
                .min_by_key(|(p, _, _)| *p);
            match next {
                Some((pos, s, id)) => {
                    let before = &rest[..pos];
                    self.tokenize_plain(before, char_base, &mut chars, &mut out);
                    let start = char_base + before.chars().count();
                    let len = s.chars().count();
                    out.push(Token { id, offsets: (start, start + len) });
                    char_base = start + len;
                    rest = &rest[pos + s.len()..];
                }
                None => {
                    self.tokenize_plain(rest, char_base, &mut chars, &mut out);
                    return out;
                }
            }
        }
    }

    fn tokenize_plain(&self, text: &str, char_base: usize, chars: &mut Vec<(char, usize)>, out: &mut Vec<Token>) {
        if text.is_empty() {
            return;
        }
        self.normalise(text, char_base, chars);
        for (s, e) in split_words(chars) {
            self.wordpiece(&chars[s..e], out);
        }
    }

    /// The words of the basic tokenizer (normalised and split; before WordPiece).
    pub fn basic_tokenize(&self, text: &str) -> Vec<String> {
        let mut chars = Vec::new();
        self.normalise(text, 0, &mut chars);
        split_words(&chars).into_iter().map(|(s, e)| chars[s..e].iter().map(|&(c, _)| c).collect()).collect()
    }

    /// Steps 2-5 of the pipeline into `out` as (char, original char index).
    fn normalise(&self, text: &str, char_base: usize, out: &mut Vec<(char, usize)>) {
        out.clear();
        let strip = self.options.strip_accents.unwrap_or(self.options.do_lower_case);
        let lower = self.options.do_lower_case;
        for (i, c) in text.chars().enumerate() {
            let orig = char_base + i;
            if c == '\0' || c == '\u{FFFD}' || chars::is_control(c) {
                continue;
            }
            if chars::is_whitespace(c) {
                out.push((' ', orig));
                continue;
            }
            let cjk = self.options.tokenize_chinese_chars && chars::is_cjk_ideograph(c);
            if cjk {
                out.push((' ', orig));
            }
            if c.is_ascii() {
                out.push((if lower { c.to_ascii_lowercase() } else { c }, orig));
            } else if strip {
                decompose_canonical(c, |d| {
                    if !chars::is_nonspacing_mark(d) {
                        push_cased(out, d, orig, lower);
                    }
                });
            } else {
                push_cased(out, c, orig, lower);
            }
            if cjk {
                out.push((' ', orig));
            }
        }
    }

    /// WordPiece of one word given as (char, original index) pairs.
    fn wordpiece(&self, word: &[(char, usize)], out: &mut Vec<Token>) {
        let n = word.len();
        let whole = (word[0].1, word[n - 1].1 + 1);
        if n > self.options.max_input_chars_per_word {
            out.push(Token { id: self.unk_id, offsets: whole });
            return;
        }
        let text: String = word.iter().map(|&(c, _)| c).collect();
        // byte position of each char boundary
        let mut bounds: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        bounds.push(text.len());
        let first = out.len();
        let mut start = 0;
        while start < n {
            let mut end = n.min(start + self.max_piece_chars);
            let mut found = None;
            while end > start {
                let piece = &text[bounds[start]..bounds[end]];
                let id = if start == 0 { self.initial.get(piece) } else { self.continuation.get(piece) };
                if let Some(&id) = id {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => {
                    out.push(Token { id, offsets: (word[start].1, word[end - 1].1 + 1) });
                    start = end;
                }
                None => {
                    out.truncate(first);
                    out.push(Token { id: self.unk_id, offsets: whole });
                    return;
                }
            }
        }
    }

    /// Joins tokens back into text: "##" pieces attach to the previous token, others are
    /// separated by a space; special tokens are skipped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut s = String::new();
        for &id in ids {
            if skip_special && self.is_special_id(id) && id != self.unk_id {
                continue;
            }
            let Some(tok) = self.id_to_token(id) else { continue };
            match tok.strip_prefix("##") {
                Some(rest) if !rest.is_empty() && !s.is_empty() => s.push_str(rest),
                _ => {
                    if !s.is_empty() {
                        s.push(' ');
                    }
                    s.push_str(tok);
                }
            }
        }
        s
    }
}

/// Word spans: split on whitespace, every punctuation character its own word.
fn split_words(chars: &[(char, usize)]) -> Vec<(usize, usize)> {
    let mut words = Vec::new();
    let mut start = None;
    for (i, &(c, _)) in chars.iter().enumerate() {
        if chars::is_whitespace(c) {
            if let Some(s) = start.take() {
                words.push((s, i));
            }
        } else if chars::is_punctuation(c) {
            if let Some(s) = start.take() {
                words.push((s, i));
            }
            words.push((i, i + 1));
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        words.push((s, chars.len()));
    }
    words
}

fn push_cased(out: &mut Vec<(char, usize)>, c: char, orig: usize, lower: bool) {
    if lower {
        for l in c.to_lowercase() {
            out.push((l, orig));
        }
    } else {
        out.push((c, orig));
    }
}
