//! Shared by the server tests: indexes to serve, the server process, and small HTTP helpers.
#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use align::index::{EmbeddingIndex, IndexDtype};

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("align-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").canonicalize().unwrap()
}

pub fn fixture_image(i: usize) -> PathBuf {
    fixtures().join(format!("align_tiny/images/{i}.png"))
}

/// The three fixture images embedded by the real `align embed`.
pub fn small_index(work: &Path, dtype: &str) -> PathBuf {
    let out = work.join("index.safetensors");
    let model = fixtures().join("align_tiny");
    let images = model.join("images");
    let status = Command::new(env!("CARGO_BIN_EXE_align"))
        .args(["embed", "--model", model.to_str().unwrap(), "--images", images.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--dtype", dtype, "--quiet"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    out
}

/// `rows` random unit rows of the fixture model's width (80), their images the fixture images
/// in turn, the fixture model recorded as the index's model.
pub fn large_index(work: &Path, rows: usize, dtype: &str) -> PathBuf {
    let dim = 80;
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut values: Vec<f32> = (0..rows * dim)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    for r in values.chunks_exact_mut(dim) {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        r.iter_mut().for_each(|x| *x /= n);
    }
    let paths = (0..rows).map(|i| fixture_image(i % 3)).collect();
    let index = EmbeddingIndex::from_embeddings(values, dim, paths, fixtures().join("align_tiny")).unwrap();
    let out = work.join(format!("index-{rows}.safetensors"));
    index.into_dtype(dtype.parse::<IndexDtype>().unwrap()).save(&out).unwrap();
    out
}

/// A running `align serve` on an ephemeral loopback port; killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    pub fn start(index: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_align"))
            .args(["serve", "--index", index.to_str().unwrap(), "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no 'listening on' line: {line:?}"))
            .parse()
            .unwrap();
        Server { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// The exit status, if the process ends within `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident memory of the server process (VmRSS), KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, String) {
    let mut r = r.unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

pub fn get(agent: &ureq::Agent, url: &str) -> (u16, String) {
    answer(agent.get(url).call())
}

pub fn get_bytes(agent: &ureq::Agent, url: &str) -> (u16, String, Vec<u8>) {
    let mut r = agent.get(url).call().unwrap();
    let content_type = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (r.status().as_u16(), content_type, r.body_mut().read_to_vec().unwrap())
}

pub fn post(agent: &ureq::Agent, url: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    answer(agent.post(url).header("Content-Type", content_type).send(body))
}

/// A multipart/form-data POST of (field, file name or "", bytes).
pub fn post_multipart(agent: &ureq::Agent, url: &str, fields: &[(&str, &str, &[u8])]) -> (u16, String) {
    let boundary = "align-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, file, bytes) in fields {
        write!(body, "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").unwrap();
        if !file.is_empty() {
            write!(body, "; filename=\"{file}\"\r\nContent-Type: application/octet-stream").unwrap();
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    post(agent, url, &format!("multipart/form-data; boundary={boundary}"), &body)
}

/// Sends `request` (request line and headers, plus any body bytes) as written, on its own
/// connection, and reads the answer: (status, body).
pub fn raw_request(server: &Server, request: &[u8]) -> (u16, String) {
    let mut conn = std::net::TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    conn.write_all(request).unwrap();
    let mut raw = Vec::new();
    let _ = conn.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A GET of `path` exactly as given (no client-side normalisation of `..`).
pub fn raw_get(server: &Server, path: &str) -> (u16, String) {
    raw_request(server, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
}

#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub id: u64,
    pub score: f64,
    pub file: String,
}

pub fn hits_of(body: &str) -> Vec<Hit> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {body}"))
        .iter()
        .map(|r| Hit {
            id: r["id"].as_u64().unwrap(),
            score: r["score"].as_f64().unwrap(),
            file: r["file"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// A JSON search that must succeed.
pub fn search(agent: &ureq::Agent, server: &Server, query: &serde_json::Value) -> Vec<Hit> {
    let (status, body) = post(agent, &server.url("/api/search"), "application/json", query.to_string().as_bytes());
    assert_eq!(status, 200, "{query}: {body}");
    hits_of(&body)
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The value of a metric line `name value` (name with its labels).
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}
