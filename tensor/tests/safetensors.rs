//! safetensors: round trips in every dtype we write, a table of malformed files that must be
//! named errors, and a 10,000-input robustness run that must never panic.

use std::collections::BTreeMap;

use tensor::io::safetensors::{save, serialize, Dtype, SafeTensors, SaveData};
use tensor::{Rng, Tensor, TensorError};

/// A path in a folder of its own per test file name, so tests running in parallel never see
/// each other's temporary files.
fn tmp_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("align-st-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn round_trip_all_dtypes_with_metadata() {
    let a = Tensor::randn(&[3, 5], 0.0, 1.0, 1);
    let b = Tensor::randn(&[7], 0.0, 1.0, 2);
    let c = Tensor::arange(0.0, 24.0, 1.0).unwrap().reshape(&[2, 3, 4]).unwrap().permute(&[2, 0, 1]).unwrap();
    let ids: Vec<i64> = vec![0, -1, i64::MAX, i64::MIN, 42, 7];
    let empty = Tensor::zeros(&[0, 4]);
    // raw bf16 bits (1.0, -2.0, 0.5, 3.0) written as they are
    let raw: Vec<u8> = [0x3F80u16, 0xC000, 0x3F00, 0x4040].iter().flat_map(|b| b.to_le_bytes()).collect();
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("step".to_string(), "123".to_string());
    let path = tmp_path("round_trip.safetensors");
    save(
        &path,
        &[
            ("a.f32", SaveData::Float(&a, Dtype::F32)),
            ("b.f16", SaveData::Float(&b, Dtype::F16)),
            ("c.bf16", SaveData::Float(&c, Dtype::BF16)),
            ("ids", SaveData::I64 { shape: &[2, 3], values: &ids }),
            ("empty", SaveData::Float(&empty, Dtype::F32)),
            ("raw.bf16", SaveData::Raw { dtype: Dtype::BF16, shape: &[2, 2], bytes: &raw }),
        ],
        &meta,
    )
    .unwrap();
    let st = SafeTensors::open(&path).unwrap();
    assert_eq!(st.len(), 6);
    assert_eq!(st.raw_bytes("raw.bf16").unwrap(), raw.as_slice());
    assert_eq!(st.tensor("raw.bf16").unwrap().to_vec(), vec![1.0, -2.0, 0.5, 3.0]);
    assert_eq!(st.metadata(), &meta);
    let ra = st.tensor("a.f32").unwrap();
    assert_eq!(ra.shape(), &[3, 5]);
    assert_eq!(ra.to_vec(), a.to_vec());
    assert!(ra.storage().is_mapped(), "aligned F32 should load without a copy");
    assert_eq!(st.tensor("b.f16").unwrap().to_vec(), b.round_to_f16().to_vec());
    let rc = st.tensor("c.bf16").unwrap();
    assert_eq!(rc.shape(), &[4, 2, 3]);
    assert_eq!(rc.to_vec(), c.to_vec()); // small integers are exact in bf16
    assert_eq!(st.tensor_i64("ids").unwrap(), (vec![2, 3], ids.clone()));
    assert_eq!(st.tensor("ids").unwrap().to_vec()[4], 42.0);
    assert_eq!(st.tensor("empty").unwrap().shape(), &[0, 4]);
    assert!(st.tensor_i64("a.f32").is_err());
    assert!(matches!(st.tensor("nope"), Err(TensorError::Format { tensor: Some(t), .. }) if t == "nope"));
    // The memory-mapped tensor outlives the SafeTensors handle.
    drop(st);
    assert_eq!(ra.to_vec(), a.to_vec());
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn saving_rejects_bad_entries_and_leaves_old_file() {
    let path = tmp_path("keep.safetensors");
    let t = Tensor::ones(&[2]);
    save(&path, &[("x", SaveData::Float(&t, Dtype::F32))], &BTreeMap::new()).unwrap();
    let dup = save(
        &path,
        &[("x", SaveData::Float(&t, Dtype::F32)), ("x", SaveData::Float(&t, Dtype::F32))],
        &BTreeMap::new(),
    );
    assert!(dup.is_err());
    assert!(save(&path, &[("y", SaveData::I64 { shape: &[3], values: &[1, 2] })], &BTreeMap::new()).is_err());
    assert!(save(&path, &[("z", SaveData::Float(&t, Dtype::I64))], &BTreeMap::new()).is_err());
    let three_bytes = SaveData::Raw { dtype: Dtype::BF16, shape: &[2], bytes: &[0, 0, 0] };
    assert!(save(&path, &[("w", three_bytes)], &BTreeMap::new()).is_err(), "raw bytes must fill the shape");
    assert!(
        save("/nonexistent-dir/x.safetensors", &[("x", SaveData::Float(&t, Dtype::F32))], &BTreeMap::new()).is_err()
    );
    let st = SafeTensors::open(&path).unwrap();
    assert_eq!(st.tensor("x").unwrap().to_vec(), vec![1.0, 1.0]);
}

/// Builds a file from a header string and a data section.
fn file_with(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn malformed_files_are_named_errors() {
    let data = [0u8; 16];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("too short", vec![1, 2, 3], "too short"),
        (
            "header past end",
            {
                let mut v = 1000u64.to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            },
            "runs past the end",
        ),
        ("non-utf8", file_with("{\"aa\":1}", &[]), "not valid UTF-8"),
        ("invalid json", file_with("{not json", &data), "not valid JSON"),
        ("not object", file_with("[1,2]", &data), "not a JSON object"),
        (
            "unknown dtype",
            file_with(r#"{"w":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}"#, &data),
            "unknown dtype 'Q7'",
        ),
        (
            "byte mismatch",
            file_with(r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &data),
            "needs 12 bytes",
        ),
        ("past data", file_with(r#"{"w":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}"#, &data), "run past"),
        ("backwards", file_with(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#, &data), "backwards"),
        (
            "overlap",
            file_with(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                &data,
            ),
            "overlap",
        ),
        (
            "negative shape",
            file_with(r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, &data),
            "non-negative",
        ),
        (
            "overflowing shape",
            file_with(r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#, &data),
            "overflows",
        ),
        ("missing offsets", file_with(r#"{"w":{"dtype":"F32","shape":[1]}}"#, &data), "data_offsets"),
        ("bad metadata", file_with(r#"{"__metadata__":{"k":1}}"#, &data), "not a string"),
    ];
    for (what, bytes, needle) in cases {
        let mut bytes = bytes;
        if what == "non-utf8" {
            bytes[10] = 0xff; // inside the key: no longer UTF-8
        }
        let err = SafeTensors::from_bytes(bytes, what).expect_err(what).to_string();
        assert!(err.contains(needle), "{what}: {err}");
        assert!(err.starts_with(what), "{what}: error must name the file: {err}");
    }
    // errors about one entry name that entry
    let err = SafeTensors::from_bytes(
        file_with(r#"{"w.bias":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &data),
        "f",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("'w.bias'"), "{err}");
}

#[test]
fn ten_thousand_mutated_and_random_inputs_never_panic() {
    let mut rng = Rng::new(99);
    let a = Tensor::randn(&[4, 3], 0.0, 1.0, 1);
    let b = Tensor::randn(&[5], 0.0, 1.0, 2);
    let mut meta = BTreeMap::new();
    meta.insert("k".into(), "v".into());
    let valid = serialize(
        &[
            ("a", SaveData::Float(&a, Dtype::F32)),
            ("b", SaveData::Float(&b, Dtype::BF16)),
            ("i", SaveData::I64 { shape: &[2], values: &[3, 4] }),
        ],
        &meta,
    )
    .unwrap();
    let (mut ok, mut err) = (0, 0);
    for i in 0..12_000 {
        let bytes: Vec<u8> = match i % 4 {
            // flip a few random bytes of a valid file (header bytes most of the time)
            0 | 1 => {
                let mut v = valid.clone();
                for _ in 0..1 + rng.below(4) {
                    let pos = if rng.below(4) == 0 { rng.below(v.len()) } else { rng.below(v.len().min(200)) };
                    v[pos] = rng.below(256) as u8;
                }
                v
            }
            // truncate or extend a valid file
            2 => {
                let mut v = valid.clone();
                let cut = rng.below(v.len() + 1);
                v.truncate(cut);
                if rng.below(2) == 0 {
                    v.extend((0..rng.below(16)).map(|_| rng.below(256) as u8));
                }
                v
            }
            // pure random bytes, sometimes with a plausible length prefix
            _ => {
                let n = rng.below(64);
                let mut v: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
                if n >= 8 && rng.below(2) == 0 {
                    v[..8].copy_from_slice(&((n - 8) as u64).to_le_bytes());
                }
                v
            }
        };
        match SafeTensors::from_bytes(bytes, "fuzz") {
            Ok(st) => {
                ok += 1;
                let names: Vec<String> = st.names().map(String::from).collect();
                for n in names {
                    let _ = st.tensor(&n).map(|t| t.to_vec());
                    let _ = st.tensor_i64(&n);
                }
            }
            Err(_) => err += 1,
        }
    }
    assert!(ok > 100 && err > 1000, "mutations should produce both outcomes: ok {ok}, err {err}");
}
