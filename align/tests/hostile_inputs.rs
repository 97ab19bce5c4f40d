//! What a new user's bad inputs do to the real `align` binary: a training set whose every image
//! is a decompression bomb, and weight files handed to the wrong command or in the wrong
//! container. Each must end in a clear error and a non-zero exit, never a silent success.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_align")).args(args).output().unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("align-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A PNG whose header claims `w` x `h` pixels, with almost no data behind it.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let body: Vec<u8> = kind.iter().chain(data).copied().collect();
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]); // empty zlib stream
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn training_on_images_that_never_decode_fails_with_the_skip_counts() {
    let dir = temp_dir("bombs");
    let mut lines = vec![];
    for i in 0..40 {
        std::fs::write(dir.join(format!("b{i}.png")), png_bomb(60_000, 60_000)).unwrap();
        lines.push(format!("b{i}.png\ta photo of a red circle number {i} on a blue background"));
    }
    let manifest = dir.join("pairs.tsv");
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    let out_dir = dir.join("run");
    let out = run(&["train", "--data", manifest.to_str().unwrap(), "--steps", "5", "--out", out_dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a run that cannot train exited 0:\n{stderr}");
    assert!(stderr.contains("0 training steps ran") && stderr.contains("corrupt image 36"), "{stderr}");
    // no checkpoint of an untrained model, and no retrieval figures for unread images
    assert!(!out_dir.join("checkpoint.safetensors").exists());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("R@1"));
    // evaluating on the same images scores nothing, and says so instead of printing zeros
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/align_tiny");
    let out = run(&["eval", "retrieval", "--model", model.to_str().unwrap(), "--data", manifest.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no image could be read"), "{stderr}");
    assert!(stderr.contains("corrupt image 40"), "{stderr}");
}

#[test]
fn weight_files_are_read_by_content_or_refused_with_what_they_are() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let dir = temp_dir("weights");
    // lite0's weights as safetensors under a .pth name, and as the original .pth: the two
    // classify identically (the reader follows the bytes, not the extension)
    let pth = common::lite0_pth();
    let tensors = tensor::io::torch::load_state_dict(&pth).unwrap();
    let disguised = dir.join("weights.pth");
    let refs: Vec<(&str, &tensor::Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tensor::io::safetensors::save_f32(&disguised, &refs, &Default::default()).unwrap();
    let image = fixtures.join("align_tiny/images/0.png");
    let classify = |weights: &Path| {
        let out = run(&["classify", "--weights", weights.to_str().unwrap(), image.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(classify(&disguised), classify(&pth));
    // an image or a text file given as weights: refused, naming what was found
    for (file, found) in [(image.clone(), "a PNG image"), (fixtures.join("align_tiny/vocab.txt"), "text")] {
        let out = run(&["classify", "--weights", file.to_str().unwrap(), image.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("not safetensors, a zip .pth or a pickled .pth") && stderr.contains(found), "{stderr}");
    }
}
