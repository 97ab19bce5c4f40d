//! # tokenizer: BERT basic tokenization and WordPiece
//!
//! Depends on nothing else in the workspace. Follows Hugging Face `tokenizers`'
//! BertWordPieceTokenizer rule for rule (the parity tests compare every id of a 2,400-line
//! multilingual corpus) and docs/paper.md.
//!
//! ```
//! use tokenizer::{WordPiece, BertOptions, EncodeOptions, Padding};
//! let vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "!"]
//!     .iter().map(|s| s.to_string()).collect();
//! let tok = WordPiece::from_tokens(vocab, BertOptions::default())?;
//! let enc = tok.encode("UnAffable!", &EncodeOptions { padding: Padding::Fixed(7), ..Default::default() });
//! assert_eq!(enc.tokens, ["[CLS]", "un", "##aff", "##able", "!", "[SEP]", "[PAD]"]);
//! assert_eq!(enc.offsets[2], (2, 5));            // "Aff" in the original string
//! assert_eq!(tok.decode(&enc.ids, true), "unaffable !");
//! # Ok::<(), tokenizer::TokenizerError>(())
//! ```

pub mod chars;
mod encode;
pub mod trainer;
mod wordpiece;

pub use encode::{EncodeOptions, Encoding, Padding};
pub use wordpiece::{BertOptions, Token, WordPiece, SPECIAL_TOKENS};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("vocabulary: {0}")]
    Vocab(String),
}
