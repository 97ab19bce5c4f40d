//! # tokenizer: BERT basic tokenization and WordPiece
//!
//! Depends on nothing else in the workspace. Follows google-research/bert `tokenization.py` and
//! Hugging Face's `BertTokenizer` rule for rule (see SPEC.md).

pub mod chars;
