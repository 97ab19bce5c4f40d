//! Crash safety of `align train`, on the real binary with a tiny configuration:
//! - SIGKILL at 50 moments spread over every phase of a run (setup, data, step, log, checkpoint,
//!   evaluation): after each kill the run directory holds a loadable checkpoint whose step never
//!   goes back, and `--resume` continues; the phases the kills landed in are printed;
//! - a checkpoint write that fails (RLIMIT_FSIZE) is a clear error and the previous checkpoint
//!   stays byte for byte;
//! - a second trainer on the same `--out` is refused while the first runs, and the lock dies
//!   with its holder (`kill -9`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TINY: [&str; 16] = [
    "--image-tower",
    "tiny",
    "--text-tower",
    "tiny",
    "--resolution",
    "32",
    "--max-tokens",
    "16",
    "--train-pairs",
    "400",
    "--held-out",
    "16",
    "--batch-size",
    "16",
    "--warmup",
    "1",
];

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("align-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn train(out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_align"));
    c.arg("train").args(TINY).args(extra).arg("--out").arg(out);
    c
}

/// Runs to the end; panics with its output otherwise.
fn train_ok(out: &Path, extra: &[&str]) {
    let o = train(out, extra).output().unwrap();
    assert!(o.status.success(), "align train {extra:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// The step a checkpoint was written after, read the way `--resume` reads it.
fn checkpoint_step(out: &Path) -> u64 {
    let st = tensor::io::safetensors::SafeTensors::open(out.join("checkpoint.safetensors"))
        .unwrap_or_else(|e| panic!("checkpoint unreadable: {e}"));
    // the model part must load as evaluation loads it
    align::eval::LoadedModel::open(out).unwrap_or_else(|e| panic!("checkpoint does not load: {e}"));
    let (_, step) = st.tensor_i64("train.step").unwrap();
    step[0] as u64
}

/// Lines of the phase trace written so far.
fn phases(trace: &Path) -> Vec<String> {
    std::fs::read_to_string(trace).unwrap_or_default().lines().map(String::from).collect()
}

fn kill_9(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
}

#[test]
fn sigkill_at_any_moment_leaves_a_loadable_checkpoint_and_resume_continues() {
    let out = temp_dir("sigkill");
    let every = ["--checkpoint-every", "1", "--eval-every", "3"];
    let args = |steps: &str| -> Vec<String> {
        every.iter().map(|s| s.to_string()).chain(["--steps".into(), steps.into(), "--resume".into()]).collect()
    };
    let first: Vec<String> = args("2");
    train_ok(&out, &first.iter().map(String::as_str).collect::<Vec<_>>());
    let mut step = checkpoint_step(&out);
    assert_eq!(step, 2);

    // each trial resumes the run and is killed on entering a chosen phase (its k-th time),
    // after a jitter of 0-7 ms; the trace's last line says where the kill really landed
    let targets = ["setup", "data", "step", "log", "checkpoint", "evaluate"];
    let mut landed: BTreeMap<String, usize> = BTreeMap::new();
    let mut temporaries_left = 0;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let trials = 50;
    for trial in 0..trials {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let target = targets[trial % targets.len()];
        // setup happens once a run; evaluation every third step
        let k = if matches!(target, "setup" | "evaluate") { 1 } else { 1 + (rng % 2) as usize };
        let jitter = (rng >> 8) % 8;
        let trace = out.join(format!("trace-{trial}.txt"));
        let a = args("100000");
        let mut child = train(&out, &a.iter().map(String::as_str).collect::<Vec<_>>())
            .env("ALIGN_TRACE_PHASES", &trace)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while phases(&trace).iter().filter(|p| p.as_str() == target).count() < k
            && started.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_micros(300));
        }
        std::thread::sleep(Duration::from_millis(jitter));
        kill_9(&mut child);
        let at = phases(&trace).last().cloned().unwrap_or_else(|| "before setup".into());
        *landed.entry(at).or_default() += 1;
        temporaries_left += std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".safetensors.tmp-"))
            .count();
        let now = checkpoint_step(&out);
        assert!(now >= step, "trial {trial}: the checkpoint went back from step {step} to {now}");
        step = now;
        std::fs::remove_file(&trace).unwrap();
    }
    println!("{trials} SIGKILL trials landed in: {landed:?}; {temporaries_left} left a half-written temporary");
    assert!(landed.len() >= 4, "the kills hit too few phases: {landed:?}");

    // --resume continues from the last checkpoint and removes any leftover temporary
    let stop = (step + 2).to_string();
    let a: Vec<String> = args("100000").into_iter().chain(["--stop-at".into(), stop]).collect();
    train_ok(&out, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(checkpoint_step(&out), step + 2);
    assert!(!std::fs::read_dir(&out).unwrap().flatten().any(|e| e.file_name().to_string_lossy().contains(".tmp-")));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_failed_checkpoint_write_keeps_the_previous_checkpoint() {
    let out = temp_dir("fsize");
    train_ok(&out, &["--steps", "2"]);
    let before = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    // a file-size limit below the checkpoint's size; SIGXFSZ ignored so write() reports EFBIG
    let limit_kb = before.len() / 2048;
    let script = format!(
        "trap '' XFSZ; ulimit -f {limit_kb}; exec \"$0\" train {} --steps 4 --resume --out \"$1\"",
        TINY.join(" ")
    );
    let o = Command::new("bash").args(["-c", &script, env!("CARGO_BIN_EXE_align")]).arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("writing the checkpoint") && stderr.contains("the previous checkpoint is intact"),
        "{stderr}"
    );
    assert!(stderr.contains("File too large"), "{stderr}");
    assert!(std::fs::read(out.join("checkpoint.safetensors")).unwrap() == before, "the checkpoint changed");
    assert_eq!(checkpoint_step(&out), 2);
    // without the limit the run resumes from it
    train_ok(&out, &["--steps", "3", "--resume"]);
    assert_eq!(checkpoint_step(&out), 3);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_second_trainer_on_the_same_run_directory_is_refused_until_the_first_dies() {
    let out = temp_dir("lock");
    let trace = out.join("trace.txt");
    let mut first = train(&out, &["--steps", "100000"])
        .env("ALIGN_TRACE_PHASES", &trace)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !phases(&trace).iter().any(|p| p == "step") && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = train(&out, &["--steps", "2"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("in use by another `align train`"), "{stderr}");
    assert!(stderr.contains(&format!("process {}", first.id())), "{stderr}");
    // the operating system releases the lock of a killed trainer
    kill_9(&mut first);
    train_ok(&out, &["--steps", "2"]);
    let _ = std::fs::remove_dir_all(&out);
}
