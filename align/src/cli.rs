//! Bodies of the `align` subcommands that are thin wrappers over the library crates.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use tokenizer::{BertOptions, EncodeOptions, WordPiece};

/// `align tokenize`: stdin lines -> JSON arrays of ids on stdout.
pub fn tokenize(vocab: &Path, cased: bool, max_len: Option<usize>) -> Result<(), String> {
    let mut tok = if vocab.is_dir() { WordPiece::from_dir(vocab) } else { WordPiece::from_vocab_file(vocab, BertOptions::default()) }
        .map_err(|e| e.to_string())?;
    if cased {
        tok.options.do_lower_case = false;
        tok.options.strip_accents = Some(false);
    }
    let opts = EncodeOptions { max_len, ..Default::default() };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut buf = Vec::new();
    let mut reader = stdin.lock();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| format!("stdin: {e}"))?;
        if n == 0 {
            break;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        // Invalid UTF-8 is replaced (U+FFFD is then dropped by the tokenizer), never fatal.
        let line = String::from_utf8_lossy(&buf);
        let ids = tok.encode(&line, &opts).ids;
        let json = serde_json::to_string(&ids).expect("ids serialise");
        writeln!(out, "{json}").map_err(|e| format!("stdout: {e}"))?;
    }
    out.flush().map_err(|e| format!("stdout: {e}"))
}
