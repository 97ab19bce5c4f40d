//! Model inputs from text: [CLS] tokens [SEP], truncation, padding, attention masks, offsets,
//! and batch encoding over all cores.

use rayon::prelude::*;

use crate::wordpiece::WordPiece;

/// How to pad a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    None,
    /// To the longest sequence of the batch.
    Longest,
    /// To exactly this length (sequences are truncated to it too).
    Fixed(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    pub add_special_tokens: bool,
    /// Maximum length including [CLS] and [SEP]; longer inputs are truncated (then [SEP] added).
    pub max_len: Option<usize>,
    pub padding: Padding,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions { add_special_tokens: true, max_len: None, padding: Padding::None }
    }
}

/// One encoded sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    pub ids: Vec<u32>,
    pub tokens: Vec<String>,
    /// 1 for real tokens (including [CLS] / [SEP]), 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Character offsets into the original text; (0, 0) for special and padding tokens.
    pub offsets: Vec<(usize, usize)>,
}

impl WordPiece {
    /// Encodes one string.
    pub fn encode(&self, text: &str, opts: &EncodeOptions) -> Encoding {
        let pieces = self.tokenize(text);
        let max_len = match opts.padding {
            Padding::Fixed(n) => Some(opts.max_len.map_or(n, |m| m.min(n))),
            _ => opts.max_len,
        };
        let reserve = if opts.add_special_tokens { 2 } else { 0 };
        let keep = max_len.map_or(pieces.len(), |m| pieces.len().min(m.saturating_sub(reserve)));
        let mut ids = Vec::with_capacity(keep + reserve);
        let mut offsets = Vec::with_capacity(keep + reserve);
        if opts.add_special_tokens && max_len.is_none_or(|m| m >= 1) {
            ids.push(self.cls_id);
            offsets.push((0, 0));
        }
        for t in &pieces[..keep] {
            ids.push(t.id);
            offsets.push(t.offsets);
        }
        if opts.add_special_tokens && max_len.is_none_or(|m| m >= 2) {
            ids.push(self.sep_id);
            offsets.push((0, 0));
        }
        let mut enc = Encoding {
            tokens: ids.iter().map(|&id| self.id_to_token(id).unwrap_or("[UNK]").to_string()).collect(),
            attention_mask: vec![1; ids.len()],
            ids,
            offsets,
        };
        if let Padding::Fixed(n) = opts.padding {
            self.pad_to(&mut enc, n);
        }
        enc
    }

    fn pad_to(&self, enc: &mut Encoding, n: usize) {
        let pad_tok = self.id_to_token(self.pad_id).unwrap_or("[PAD]").to_string();
        while enc.ids.len() < n {
            enc.ids.push(self.pad_id);
            enc.tokens.push(pad_tok.clone());
            enc.attention_mask.push(0);
            enc.offsets.push((0, 0));
        }
    }

    /// Encodes many strings in parallel (rayon's global pool), then pads as asked.
    pub fn encode_batch(&self, texts: &[&str], opts: &EncodeOptions) -> Vec<Encoding> {
        let mut out: Vec<Encoding> = texts.par_iter().map(|t| self.encode(t, opts)).collect();
        if opts.padding == Padding::Longest {
            let longest = out.iter().map(|e| e.ids.len()).max().unwrap_or(0);
            for e in &mut out {
                self.pad_to(e, longest);
            }
        }
        out
    }
}
