//! Ctrl-C mid-run writes a checkpoint and exits cleanly; `--resume` continues the same run
//! (step count and log carry on). Drives the real `align` binary with SIGINT.

#![cfg(unix)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn log_steps(dir: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .collect()
}

#[test]
fn sigint_checkpoints_and_resume_continues() {
    let dir = std::env::temp_dir().join(format!("align-sigint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = ["train", "--train-pairs", "600", "--batch-size", "4", "--out"];
    let child = Command::new(env!("CARGO_BIN_EXE_align"))
        .args(args)
        .arg(&dir)
        .args(["--steps", "10000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while log_steps(&dir).len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(300), "training did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "interrupted run must exit cleanly: {:?}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("stopped at step"), "{stdout}");
    let done = log_steps(&dir);
    let last = *done.last().unwrap();
    assert!(dir.join("checkpoint.safetensors").exists());
    // resume for two more steps: the log continues without a gap or a restart
    let out = Command::new(env!("CARGO_BIN_EXE_align"))
        .args(args)
        .arg(&dir)
        .args(["--steps", &(last + 2).to_string(), "--resume"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let steps = log_steps(&dir);
    let expected: Vec<u64> = (1..=last + 2).collect();
    assert_eq!(steps, expected, "the resumed run must continue the step count");
}
