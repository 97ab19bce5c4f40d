//! Character classes of the BERT basic tokenizer (google-research/bert `tokenization.py`,
//! Hugging Face `BertTokenizer`). SPEC.md lists the rules; each predicate here is one of them.

/// Whitespace: space, tab, CR, LF, and Unicode category Zs.
pub fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r') || is_space_separator(c)
}

/// Unicode category Zs (space separators).
fn is_space_separator(c: char) -> bool {
    matches!(c, '\u{00A0}' | '\u{1680}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}' | ' ')
}

/// CJK ideographs of the blocks BERT treats as one token per character. Hangul and Kana are
/// deliberately not in these ranges (they are tokenized like Latin words).
pub fn is_cjk_ideograph(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F |
        0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_and_cjk_classes() {
        for c in [' ', '\t', '\n', '\r', '\u{00A0}', '\u{3000}', '\u{2009}'] {
            assert!(is_whitespace(c), "{c:?}");
        }
        for c in ['a', '\u{200B}', '\u{0000}', '-'] {
            assert!(!is_whitespace(c), "{c:?}");
        }
        assert!(is_cjk_ideograph('中') && is_cjk_ideograph('\u{20000}') && is_cjk_ideograph('\u{F900}'));
        assert!(!is_cjk_ideograph('한') && !is_cjk_ideograph('カ') && !is_cjk_ideograph('a'));
    }
}
