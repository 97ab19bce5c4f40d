//! `align serve` as a user meets it: the real binary on an ephemeral loopback port, driven over
//! HTTP. Every endpoint with good and bad input (the server answers the next request after each
//! bad one), 16 concurrent clients against the same queries one by one, a SIGTERM while a
//! request is in flight, and a bounded load run (2,000 text queries from 16 clients over a
//! 100,000-entry index) that prints its latency percentiles and throughput.
//!
//! The model is the small random AlignModel of `fixtures/align_tiny` (80-d embeddings).

mod serve_common;

use serve_common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[test]
fn every_endpoint_answers_good_and_bad_requests() {
    let work = temp_dir("endpoints");
    let index = small_index(&work, "f32");
    let server = Server::start(&index, &["--body-limit", "200000"]);
    let agent = agent();

    // the page
    let (status, page) = get(&agent, &server.url("/"));
    assert_eq!(status, 200);
    assert!(
        page.contains("<form")
            && page.contains("id=\"drop\"")
            && !page.contains("http://")
            && !page.contains("https://"),
        "self-contained page"
    );
    // health and metrics
    let (status, health) = get(&agent, &server.url("/healthz"));
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["index_size"], 3);
    // a text search, an image search (JSON base64 and multipart), image + plus/minus texts
    let text = search(&agent, &server, &serde_json::json!({"text": "a photo of a cat", "k": 2}));
    assert_eq!(text.len(), 2);
    assert!(text[0].score >= text[1].score);
    let png = std::fs::read(fixture_image(1)).unwrap();
    let by_json = search(&agent, &server, &serde_json::json!({"image": b64(&png), "k": 3}));
    assert_eq!(by_json[0].id, 1, "an indexed image finds itself first");
    assert!((by_json[0].score - 1.0).abs() < 1e-3, "{:?}", by_json[0]);
    let (status, body) =
        post_multipart(&agent, &server.url("/api/search"), &[("image", "1.png", &png), ("k", "", b"3")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(hits_of(&body), by_json, "multipart and JSON uploads give the same results");
    let arithmetic =
        search(&agent, &server, &serde_json::json!({"image": b64(&png), "plus": "blue", "minus": ["red"], "k": 3}));
    assert_eq!(arithmetic.len(), 3);
    assert_ne!(arithmetic, by_json, "plus and minus texts move the query");
    // a thumbnail, looked up by row id
    let (status, content_type, jpeg) = get_bytes(&agent, &server.url("/api/image/2"));
    assert_eq!((status, content_type.as_str()), (200, "image/jpeg"));
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "a JPEG");

    // bad requests: the right 4xx, a JSON error, and the server answers the next request
    let json = |body: &str| post(&agent, &server.url("/api/search"), "application/json", body.as_bytes());
    let text_file = b"this is a text file, not a picture\n".to_vec();
    // declares a body over the limit and starts sending it: refused from the headers alone
    let over = "POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 300000\r\nConnection: close\r\n\r\n{\"text\": \"";
    let cases: Vec<(&str, (u16, String))> = vec![
        ("malformed JSON", json("{\"text\": \"a cat\"")),
        ("JSON that is not an object", json("[1, 2, 3]")),
        ("an unknown field", json("{\"txt\": \"a cat\"}")),
        ("neither text nor image", json("{\"k\": 3}")),
        ("k = 0", json("{\"text\": \"a cat\", \"k\": 0}")),
        ("k too large", json("{\"text\": \"a cat\", \"k\": 100000}")),
        ("a text too long", json(&format!("{{\"text\": \"{}\"}}", "y".repeat(5000)))),
        ("an image that is not base64", json("{\"image\": \"@@@not base64@@@\"}")),
        ("a text file as a JSON image", json(&format!("{{\"image\": \"{}\"}}", b64(&text_file)))),
        (
            "a text file as an uploaded image",
            post_multipart(&agent, &server.url("/api/search"), &[("image", "notes.png", &text_file)]),
        ),
        ("an unknown multipart field", post_multipart(&agent, &server.url("/api/search"), &[("colour", "", b"red")])),
        ("a body over the limit", raw_request(&server, over.as_bytes())),
        ("a form body", post(&agent, &server.url("/api/search"), "application/x-www-form-urlencoded", b"text=cat")),
        ("GET on the search endpoint", get(&agent, &server.url("/api/search"))),
        ("an unknown endpoint", get(&agent, &server.url("/api/nothing-here"))),
        ("an id past the index", get(&agent, &server.url("/api/image/3"))),
        ("a huge id", get(&agent, &server.url("/api/image/99999999999999999999999"))),
        ("a negative id", get(&agent, &server.url("/api/image/-1"))),
        ("a word as id", get(&agent, &server.url("/api/image/cat"))),
        ("an encoded path as id", get(&agent, &server.url("/api/image/..%2F..%2Fetc%2Fpasswd"))),
        ("a path as id", raw_get(&server, "/api/image/../../etc/passwd")),
    ];
    let expected =
        [400, 400, 400, 400, 400, 400, 400, 400, 415, 415, 400, 413, 415, 405, 404, 404, 400, 400, 400, 400, 404];
    for ((what, (status, body)), want) in cases.iter().zip(expected) {
        assert_eq!(*status, want, "{what}: {body}");
        let e: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: not JSON: {body}"));
        assert_eq!(e["status"], want, "{what}");
        assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
        assert!(!body.contains("root:"), "{what}: leaked a file");
        // and the next request is served
        assert_eq!(search(&agent, &server, &serde_json::json!({"text": "a cat", "k": 1})).len(), 1, "after {what}");
    }
    // the metrics counted all of it
    let (status, metrics) = get(&agent, &server.url("/metrics"));
    assert_eq!(status, 200);
    for line in [
        "align_http_requests_total{endpoint=\"/api/search\",status=\"200\"}",
        "align_http_requests_total{endpoint=\"/api/search\",status=\"413\"}",
        "align_http_requests_total{endpoint=\"/api/image/{id}\",status=\"404\"}",
        "align_http_request_duration_seconds_bucket{endpoint=\"/api/search\",le=\"+Inf\"}",
        "align_search_queue_depth 0",
        "align_index_entries 3",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    let searches_ok: u64 = metric(&metrics, "align_http_requests_total{endpoint=\"/api/search\",status=\"200\"}");
    assert_eq!(searches_ok, 4 + cases.len() as u64);
    drop(server);
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn sixteen_concurrent_clients_get_the_results_of_one_by_one_queries() {
    let work = temp_dir("concurrent");
    let index = large_index(&work, 20_000, "bf16");
    let server = Server::start(&index, &[]);
    let png = std::fs::read(fixture_image(0)).unwrap();
    let words = ["cat", "dog", "red car", "a photo of a bird", "blue sky", "green field", "a small boat", "snow"];
    let mut queries: Vec<serde_json::Value> = words.iter().map(|w| serde_json::json!({"text": w, "k": 20})).collect();
    queries.push(serde_json::json!({"image": b64(&png), "plus": "blue", "minus": "red", "k": 15}));
    queries.push(serde_json::json!({"text": "cat", "plus": ["snow"], "k": 7}));
    let agent = agent();
    let one_by_one: Vec<Vec<Hit>> = queries.iter().map(|q| search(&agent, &server, q)).collect();
    let together: Vec<Vec<Vec<Hit>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|client| {
                let (server, queries) = (&server, &queries);
                s.spawn(move || {
                    let agent = serve_common::agent();
                    // every client asks every query, each starting at a different one
                    (0..queries.len())
                        .map(|i| {
                            let q = (i + client) % queries.len();
                            (q, search(&agent, server, &queries[q]))
                        })
                        .fold(vec![vec![]; queries.len()], |mut acc, (q, hits)| {
                            acc[q] = hits;
                            acc
                        })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (client, results) in together.iter().enumerate() {
        assert_eq!(results, &one_by_one, "client {client}");
    }
    let (_, metrics) = get(&agent, &server.url("/metrics"));
    let (batches, queries_done) =
        (metric(&metrics, "align_search_batches_total"), metric(&metrics, "align_search_batched_queries_total"));
    eprintln!("{queries_done} queries in {batches} passes over the index");
    assert!(batches < queries_done, "concurrent queries share passes over the index");
    drop(server);
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_and_exits_zero() {
    let work = temp_dir("sigterm");
    let index = small_index(&work, "f32");
    let mut server = Server::start(&index, &[]);
    // a request whose headers are in and whose body is half sent
    let body = br#"{"text": "a photo of a cat", "k": 2}"#;
    let mut conn = std::net::TcpStream::connect(server.addr).unwrap();
    write!(
        conn,
        "POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    conn.write_all(&body[10..]).unwrap();
    let mut answer = String::new();
    conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = conn.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "the in-flight request is answered: {answer}");
    assert!(answer.contains("\"results\""), "{answer}");
    let status = server.wait(Duration::from_secs(20)).expect("the server exits after draining");
    assert!(status.success(), "exit status {status:?}");
    assert!(std::net::TcpStream::connect(server.addr).is_err(), "no longer listening");
    std::fs::remove_dir_all(&work).unwrap();
}

/// 2,000 text queries from 16 clients over a 100,000-entry index on the loopback address:
/// no errors, latency percentiles and throughput printed, resident memory flat after warm-up.
/// Figures for the README: `cargo test --release -p align --test serve -- load --nocapture`.
#[test]
fn load_of_two_thousand_queries_from_sixteen_clients() {
    const CLIENTS: usize = 16;
    const QUERIES: usize = 2000;
    const WARM_UP: usize = 320;
    let work = temp_dir("load");
    let index = large_index(&work, 100_000, "f32");
    let server = Server::start(&index, &[]);
    let words = ["cat", "dog", "car", "bird", "boat", "tree", "house", "snow", "beach", "city", "red", "blue"];
    let query = |i: usize| serde_json::json!({"text": format!("a photo of a {} {}", words[i % 12], words[(i / 12) % 12]), "k": 10});
    let run = |range: std::ops::Range<usize>| -> (Vec<f64>, usize, f64) {
        let next = std::sync::atomic::AtomicUsize::new(range.start);
        let started = Instant::now();
        let per_client: Vec<(Vec<f64>, usize)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    let (next, server, end) = (&next, &server, range.end);
                    s.spawn(move || {
                        let agent = agent();
                        let (mut latencies, mut errors) = (vec![], 0);
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if i >= end {
                                break;
                            }
                            let t = Instant::now();
                            let (status, body) = post(
                                &agent,
                                &server.url("/api/search"),
                                "application/json",
                                query(i).to_string().as_bytes(),
                            );
                            latencies.push(t.elapsed().as_secs_f64() * 1e3);
                            if status != 200 || hits_of(&body).len() != 10 {
                                errors += 1;
                            }
                        }
                        (latencies, errors)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let seconds = started.elapsed().as_secs_f64();
        let errors = per_client.iter().map(|c| c.1).sum();
        let mut latencies: Vec<f64> = per_client.into_iter().flat_map(|c| c.0).collect();
        latencies.sort_by(f64::total_cmp);
        (latencies, errors, seconds)
    };
    let (_, warm_errors, _) = run(0..WARM_UP);
    let rss_warm = server.rss_kib();
    let (latencies, errors, seconds) = run(WARM_UP..QUERIES);
    let rss_end = server.rss_kib();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "load: {} text queries ({} after {WARM_UP} of warm-up) from {CLIENTS} clients over {} entries: p50 {:.1} ms, p99 {:.1} ms, {:.0} queries/s, {} errors; resident {} -> {} MiB",
        QUERIES,
        latencies.len(),
        100_000,
        pct(0.50),
        pct(0.99),
        latencies.len() as f64 / seconds,
        warm_errors + errors,
        rss_warm / 1024,
        rss_end / 1024
    );
    assert_eq!(warm_errors + errors, 0);
    assert_eq!(latencies.len(), QUERIES - WARM_UP);
    assert!(rss_end <= rss_warm + 16 * 1024, "resident memory grew from {rss_warm} to {rss_end} KiB");
    drop(server);
    std::fs::remove_dir_all(&work).unwrap();
}

#[test]
fn an_index_built_from_a_manifest_answers_with_its_captions() {
    let work = temp_dir("captions");
    let captions = ["a noisy red square", "a blue stripe, slanted", "green and pink blur"];
    let manifest = work.join("pairs.tsv");
    let lines: Vec<String> = (0..3).map(|i| format!("{}\t{}", fixture_image(i).display(), captions[i])).collect();
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    let index = work.join("index.safetensors");
    let model = fixtures().join("align_tiny");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_align"))
        .args(["embed", "--model", model.to_str().unwrap(), "--images", manifest.to_str().unwrap()])
        .args(["--out", index.to_str().unwrap(), "--quiet"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let server = Server::start(&index, &[]);
    let agent = agent();
    let (status, body) =
        post(&agent, &server.url("/api/search"), "application/json", br#"{"text": "a photo of a cat", "k": 3}"#);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for r in v["results"].as_array().unwrap() {
        let id = r["id"].as_u64().unwrap() as usize;
        assert_eq!(r["caption"], captions[id], "{body}");
        assert_eq!(r["file"], format!("{id}.png"));
    }
    drop(server);
    std::fs::remove_dir_all(&work).unwrap();
}

/// `align embed` killed (SIGKILL) after its first batches were recorded, then run again with
/// the same arguments: it says it resumes, and the index is byte for byte the one an
/// uninterrupted run writes.
#[test]
fn an_interrupted_embed_resumes_and_writes_the_uninterrupted_index() {
    let work = temp_dir("embed-resume");
    let images = work.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..2048u32 {
        let img =
            image::RgbImage::from_fn(40, 36, |x, y| image::Rgb([(x * 6 + i) as u8, (y * 7) as u8, (i % 251) as u8]));
        img.save(images.join(format!("{i:05}.png"))).unwrap();
    }
    let model = fixtures().join("align_tiny");
    let embed = |out: &std::path::Path| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_align"));
        c.args(["embed", "--model", model.to_str().unwrap(), "--images", images.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap(), "--dtype", "bf16"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let whole = work.join("whole.safetensors");
    assert!(embed(&whole).status().unwrap().success());

    let resumed = work.join("resumed.safetensors");
    let progress = work.join("resumed.safetensors.partial.json");
    let mut child = embed(&resumed).spawn().unwrap();
    let start = Instant::now();
    while !progress.exists() {
        assert!(child.try_wait().unwrap().is_none(), "finished before a kill could land");
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!resumed.exists(), "killed before the index was written");
    let out = embed(&resumed).output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    let done: usize = log
        .split("resuming: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'resuming' line: {log}"));
    assert!(done > 0 && done < 2048 && done.is_multiple_of(256), "resumed after {done} images");
    assert_eq!(std::fs::read(&resumed).unwrap(), std::fs::read(&whole).unwrap(), "the same index, byte for byte");
    assert!(!progress.exists() && !work.join("resumed.safetensors.partial").exists(), "partial files removed");
    std::fs::remove_dir_all(&work).unwrap();
}
