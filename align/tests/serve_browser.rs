//! The page of `align serve` in a real browser: headless Chromium, driven through ChromeDriver's
//! WebDriver protocol (plain HTTP + JSON), loads the page, types a query with the keyboard,
//! presses Enter, waits until the result grid shows decoded thumbnails, and saves a screenshot
//! (`target/tmp/serve_page.png`).
//!
//! Needs Chromium and ChromeDriver (Debian: `apt-get install chromium chromium-driver`);
//! `ALIGN_CHROMIUM` and `ALIGN_CHROMEDRIVER` point elsewhere. `.ci/run` installs both and runs
//! `cargo test -p align --test serve_browser -- --ignored`.

mod serve_common;

use serde_json::{json, Value};
use serve_common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Driver {
    child: std::process::Child,
    base: String,
    agent: ureq::Agent,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let program = std::env::var("ALIGN_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let child = Command::new(&program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} ({e}): apt-get install chromium chromium-driver"));
        let driver = Driver { child, base: format!("http://127.0.0.1:{port}"), agent: agent() };
        let start = Instant::now();
        loop {
            if let Ok(mut r) = driver.agent.get(format!("{}/status", driver.base)).call() {
                let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                if v["value"]["ready"] == true {
                    return driver;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(30), "chromedriver did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A WebDriver command; the answer's `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let r = match body {
            Some(b) => self.agent.post(&url).header("Content-Type", "application/json").send(b.to_string().as_bytes()),
            None if method == "DELETE" => self.agent.delete(&url).call(),
            None => self.agent.get(&url).call(),
        };
        let mut r = r.unwrap();
        let status = r.status().as_u16();
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(status, 200, "{method} {path}: {v}");
        v["value"].clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs Chromium and ChromeDriver (apt-get install chromium chromium-driver); .ci/run installs them and runs this test"]
fn the_page_finds_images_in_headless_chromium() {
    let work = temp_dir("browser");
    let index = small_index(&work, "bf16");
    let server = Server::start(&index, &[]);
    let driver = Driver::start();
    let chromium = std::env::var("ALIGN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let session = driver.call(
        "POST",
        "/session",
        Some(json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,800"]
        }}}})),
    );
    let id = session["sessionId"].as_str().unwrap().to_string();
    let s = |path: &str| format!("/session/{id}{path}");
    driver.call("POST", &s("/url"), Some(json!({"url": server.url("/")})));
    assert_eq!(driver.call("GET", &s("/title"), None), "ALIGN search");
    // keyboard only: the search box takes the typed query and Enter submits the form
    let found = driver.call("POST", &s("/element"), Some(json!({"using": "css selector", "value": "#q"})));
    let element =
        found["element-6066-11e4-a52e-4f735466cecf"].as_str().unwrap_or_else(|| panic!("{found}")).to_string();
    // the drop zone is reachable with Tab (a focusable control, not a mouse-only area)
    let drop_tab = driver.call(
        "POST",
        &s("/execute/sync"),
        Some(json!({"script": "return document.getElementById('drop').tabIndex", "args": []})),
    );
    assert_eq!(drop_tab, 0);
    driver.call("POST", &s(&format!("/element/{element}/value")), Some(json!({"text": "a photo of a cat\u{E007}"})));
    // wait for the grid: three figures whose thumbnails decoded
    let count_loaded = json!({"script": "return Array.from(document.querySelectorAll('#results figure img')).filter(i => i.complete && i.naturalWidth > 0).length", "args": []});
    let start = Instant::now();
    let loaded = loop {
        let n = driver.call("POST", &s("/execute/sync"), Some(count_loaded.clone())).as_u64().unwrap();
        if n == 3 || start.elapsed() > Duration::from_secs(30) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let status = driver.call(
        "POST",
        &s("/execute/sync"),
        Some(json!({"script": "return document.getElementById('status').textContent", "args": []})),
    );
    assert_eq!(loaded, 3, "thumbnails shown; status line: {status}");
    assert!(status.as_str().is_some_and(|t| t.starts_with("3 results")), "status line: {status}");
    let captions = driver.call("POST", &s("/execute/sync"), Some(json!({"script": "return Array.from(document.querySelectorAll('#results figcaption')).map(c => c.textContent)", "args": []})));
    assert!(captions.as_array().unwrap().iter().all(|c| c.as_str().unwrap().contains(".png")), "{captions}");
    // the screenshot
    let png_b64 = driver.call("GET", &s("/screenshot"), None);
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD.decode(png_b64.as_str().unwrap()).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve_page.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());
    driver.call("DELETE", &s(""), None);
    drop(server);
    std::fs::remove_dir_all(&work).unwrap();
}
