//! WordPiece parity with Hugging Face `tokenizers` (BertWordPieceTokenizer) on the committed
//! 2,400-line multilingual corpus, for the uncased MiniLM vocabulary and the cased Chinese BERT
//! vocabulary of cn-clip; then robustness on 100,000 random strings, and the trainer.

mod common;

use tensor::Rng;
use tokenizer::trainer::{train, TrainerOptions};
use tokenizer::{BertOptions, EncodeOptions, WordPiece};

fn corpus() -> Vec<String> {
    let text = std::fs::read_to_string(common::fixture("tokenizer_corpus.txt")).unwrap();
    text.split('\n').map(String::from).collect()
}

fn check_parity(tok: &WordPiece, fixture: &str) {
    let lines = corpus();
    let want: Vec<Vec<u32>> = std::fs::read_to_string(common::fixture(fixture))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), want.len());
    assert!(lines.len() >= 2000);
    let mut mismatches = vec![];
    for (i, (line, ids)) in lines.iter().zip(&want).enumerate() {
        let got = tok.encode(line, &EncodeOptions::default()).ids;
        if &got != ids {
            mismatches.push(format!("line {i} {line:?}:\n  got  {got:?}\n  want {ids:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} lines differ, first:\n{}",
        mismatches.len(),
        lines.len(),
        mismatches[..mismatches.len().min(5)].join("\n")
    );
}

#[test]
fn uncased_minilm_vocab_matches_hugging_face_on_every_line() {
    let tok = WordPiece::from_dir(common::minilm_dir()).unwrap();
    assert!(tok.options.do_lower_case);
    check_parity(&tok, "tokenizer_ids_minilm_uncased.jsonl");
}

#[test]
fn cased_chinese_vocab_matches_hugging_face_on_every_line() {
    let tok = WordPiece::from_vocab_file(common::cnclip_vocab(), BertOptions::cased()).unwrap();
    check_parity(&tok, "tokenizer_ids_cnclip_cased.jsonl");
}

#[test]
fn random_strings_never_panic_and_decode_is_stable() {
    let tok = WordPiece::from_dir(common::minilm_dir()).unwrap();
    let mut rng = Rng::new(31337);
    for i in 0..100_000 {
        let s: String = if i % 2 == 0 {
            (0..rng.below(24))
                .map(|_| loop {
                    // mostly BMP, sometimes astral; skip surrogates
                    let cp = if rng.below(4) == 0 { rng.below(0x110000) } else { rng.below(0x3000) } as u32;
                    if let Some(c) = char::from_u32(cp) {
                        break c;
                    }
                })
                .collect()
        } else {
            let bytes: Vec<u8> = (0..rng.below(32)).map(|_| rng.below(256) as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let enc = tok.encode(&s, &EncodeOptions { max_len: Some(64), ..Default::default() });
        assert!(enc.ids.len() <= 64);
        for &(a, b) in &enc.offsets {
            assert!(a <= b && b <= s.chars().count(), "offsets {a}..{b} outside {s:?}");
        }
        let once = tok.decode(&tok.encode(&s, &EncodeOptions::default()).ids, true);
        let twice = tok.decode(&tok.encode(&once, &EncodeOptions::default()).ids, true);
        assert_eq!(once, twice, "decode(encode(x)) not stable for {s:?}");
    }
}

#[test]
fn trained_vocabulary_beats_characters_and_is_deterministic() {
    // Training text: the corpus' Latin-script lines repeated with variations.
    let words = [
        "the", "cat", "sat", "on", "mat", "red", "square", "circle", "blue", "green", "triangle", "photo", "of", "a",
        "small", "large",
    ];
    let mut rng = Rng::new(5);
    let lines: Vec<String> =
        (0..3000).map(|_| (0..8).map(|_| words[rng.below(words.len())]).collect::<Vec<_>>().join(" ")).collect();
    let opts = TrainerOptions { vocab_size: 120, min_frequency: 2, ..Default::default() };
    let vocab = train(lines.iter().map(String::as_str), &opts);
    let again = train(lines.iter().map(String::as_str), &opts);
    assert_eq!(vocab, again, "training twice must give identical vocabularies");
    assert!(vocab.len() <= 120 && vocab.len() > 40);
    let trained = WordPiece::from_tokens(vocab.clone(), BertOptions::default()).unwrap();
    // character-level vocabulary of the same alphabet
    let chars: Vec<String> = vocab
        .iter()
        .filter(|t| t.starts_with('[') || t.trim_start_matches("##").chars().count() == 1)
        .cloned()
        .collect();
    let char_level = WordPiece::from_tokens(chars, BertOptions::default()).unwrap();
    let held_out: Vec<String> =
        (0..200).map(|_| (0..8).map(|_| words[rng.below(words.len())]).collect::<Vec<_>>().join(" ")).collect();
    let (mut n_trained, mut n_chars, mut n_words) = (0, 0, 0);
    for line in &held_out {
        let t = trained.tokenize(line);
        assert!(t.iter().all(|t| t.id != trained.unk_id), "no [UNK] on text from the same alphabet");
        n_trained += t.len();
        n_chars += char_level.tokenize(line).len();
        n_words += line.split(' ').count();
    }
    assert!(
        (n_trained as f64 / n_words as f64) < (n_chars as f64 / n_words as f64) / 2.0,
        "{n_trained} vs {n_chars} tokens"
    );
    // the file round trip loads
    let path = std::env::temp_dir().join(format!("align-vocab-{}.txt", std::process::id()));
    tokenizer::trainer::write_vocab(&path, &vocab).unwrap();
    assert_eq!(WordPiece::from_vocab_file(&path, BertOptions::default()).unwrap().vocab_size(), vocab.len());
}
