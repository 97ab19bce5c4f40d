//! Every `unsafe` block in the engine's sources states why it is sound: a `// SAFETY:` comment
//! on the lines just above it (or on its line). Also every `unsafe impl` (Send / Sync of raw
//! pointer wrappers). The test lists the blocks that lack one and prints the counts.

mod common;

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `line` opens an unsafe block or implements an unsafe trait (not an `unsafe fn`
/// signature, which states its contract in its `# Safety` docs instead).
fn opens_unsafe(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or("");
    code.contains("unsafe {") || code.trim_end().ends_with("unsafe") || code.contains("unsafe impl")
}

#[test]
fn every_unsafe_block_has_a_safety_comment() {
    let root = common::repo_root();
    let mut files = vec![];
    for krate in ["kernels", "tensor", "autograd", "nn", "tokenizer", "align"] {
        rust_files(&root.join(krate).join("src"), &mut files);
    }
    let (mut blocks, mut missing) = (0, vec![]);
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !opens_unsafe(line) {
                continue;
            }
            blocks += 1;
            // the comment may sit up to 6 lines above (a multi-line SAFETY paragraph, or
            // attributes between it and the block), never across a blank line
            let mut justified = line.contains("SAFETY:");
            for above in lines[..i].iter().rev().take(6) {
                if above.trim().is_empty() {
                    break;
                }
                if above.contains("SAFETY:") {
                    justified = true;
                    break;
                }
            }
            if !justified {
                missing.push(format!("{}:{}: {}", file.strip_prefix(&root).unwrap().display(), i + 1, line.trim()));
            }
        }
    }
    println!("{blocks} unsafe blocks and impls, {} without a SAFETY comment", missing.len());
    assert!(missing.is_empty(), "unsafe without a SAFETY comment:\n{}", missing.join("\n"));
}
