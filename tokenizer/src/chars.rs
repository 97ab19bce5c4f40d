//! Character classes of the BERT basic tokenizer, as Hugging Face `tokenizers` implements them
//! (which our parity tests compare against), with the rules of docs/paper.md:
//! - whitespace: tab, LF, CR, or Unicode White_Space (Rust's `char::is_whitespace`);
//! - control (dropped): any "Other" category (Cc, Cf, Cn, Co) except tab, LF, CR. HF uses the
//!   `unicode_categories` tables, so we do too: characters newer than those tables count as
//!   unassigned and are dropped exactly as HF drops them;
//! - punctuation: ASCII 33-47, 58-64, 91-96, 123-126, or any Unicode P* category;
//! - CJK ideographs: the blocks of docs/paper.md (Hangul and Kana are not among them).

use unicode_categories::UnicodeCategories;

pub fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

pub fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

pub fn is_bert_ascii_punctuation(c: char) -> bool {
    matches!(c as u32, 33..=47 | 58..=64 | 91..=96 | 123..=126)
}

pub fn is_punctuation(c: char) -> bool {
    is_bert_ascii_punctuation(c) || c.is_punctuation()
}

pub fn is_nonspacing_mark(c: char) -> bool {
    c.is_mark_nonspacing()
}

/// CJK ideographs of the blocks BERT treats as one token per character.
pub fn is_cjk_ideograph(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F |
        0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn character_classes() {
        for c in [' ', '\t', '\n', '\r', '\u{00A0}', '\u{3000}', '\u{2009}', '\u{2028}'] {
            assert!(is_whitespace(c), "{c:?}");
        }
        for c in ['a', '\u{200B}', '-'] {
            assert!(!is_whitespace(c), "{c:?}");
        }
        for c in ['\u{0}', '\u{1}', '\u{7f}', '\u{200B}', '\u{200D}', '\u{FEFF}', '\u{AD}', '\u{E000}'] {
            assert!(is_control(c), "{c:?}");
        }
        for c in ['\t', 'a', ' ', '中'] {
            assert!(!is_control(c), "{c:?}");
        }
        for c in ['!', '/', '@', '[', '`', '{', '~', '$', '^', '«', '。', '、', '¿', '—'] {
            assert!(is_punctuation(c), "{c:?}");
        }
        assert!(!is_punctuation('a') && !is_punctuation('中'));
        assert!(is_cjk_ideograph('中') && is_cjk_ideograph('\u{20000}') && is_cjk_ideograph('\u{F900}'));
        assert!(!is_cjk_ideograph('한') && !is_cjk_ideograph('カ') && !is_cjk_ideograph('a'));
    }
}
