//! `align serve`: the search index behind an HTTP server and a web page.
//!
//! One process loads the model and the memory-mapped index once and answers:
//! - `GET /`: the page (search box, image drop zone, "+" and "-" texts, a grid of thumbnails);
//! - `POST /api/search`: JSON `{"text", "image" (base64), "plus", "minus", "k"}` or the same
//!   fields as multipart/form-data (the image as a file); answers `{"results": [{"id", "score",
//!   "file", "caption"}], "took_ms"}`;
//! - `GET /api/image/{id}`: a JPEG thumbnail of index row `id`, found through the index only
//!   (never a path taken from the request);
//! - `GET /healthz` and `GET /metrics` (Prometheus text format).
//!
//! Threads: axum on a small tokio runtime parses requests and waits; one engine thread owns the
//! model. Requests enter a bounded queue (full: 503 with Retry-After); the engine takes every
//! query waiting (up to `max_batch`), embeds each one's texts and image on its own, and runs
//! one top-k pass over the index for all of them ([`crate::index::EmbeddingIndex::search_batch`]),
//! so concurrent clients share the one read of the index that dominates the cost, and a
//! query's results do not depend on what it was batched with. Bad requests get a 4xx JSON error
//! (`{"error", "status"}`); SIGINT and SIGTERM stop accepting, answer what is in flight, exit 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kernels::topk::Hit;
use serde::Deserialize;
use tensor::Device;

use crate::error::{AlignError, Result};
use crate::eval::{compose_query, QueryParts};
use crate::index::EmbeddingIndex;

/// The page, compiled in.
const PAGE: &str = include_str!("serve_page.html");
/// Longest text accepted in any query field, in characters.
const MAX_TEXT_CHARS: usize = 1000;
/// Most "+" or "-" terms in one query.
const MAX_TERMS: usize = 16;
/// Longer side of the thumbnails, in pixels.
const THUMBNAIL_SIDE: u32 = 256;
/// Thumbnails kept in memory (about 15 kB each).
const THUMBNAIL_CACHE: usize = 2048;

/// Settings of `align serve`.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to bind: 127.0.0.1 unless the user opens it up.
    pub host: String,
    /// Port; 0 picks a free one (printed on the "listening on" line).
    pub port: u16,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// How long a search may wait for its answer before a 504.
    pub timeout: Duration,
    /// Searches waiting beyond the running batch; more get 503 with Retry-After.
    pub queue: usize,
    /// Most queries in one pass over the index.
    pub max_batch: usize,
    /// Largest `k` a search may ask for.
    pub max_k: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            body_limit: 10 << 20,
            timeout: Duration::from_secs(30),
            queue: 64,
            max_batch: 32,
            max_k: 100,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Upper bounds of the latency histogram's buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct Latency {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Metrics {
    /// (endpoint, status) -> requests answered
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Latency>>,
    queue_depth: AtomicUsize,
    batches: AtomicU64,
    batched_queries: AtomicU64,
}

impl Metrics {
    fn observe(&self, endpoint: &str, status: u16, elapsed: Duration) {
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()).entry((endpoint.to_string(), status)).or_default() +=
            1;
        let mut latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let l = latency.entry(endpoint.to_string()).or_default();
        let s = elapsed.as_secs_f64();
        for (b, &le) in l.buckets.iter_mut().zip(&LATENCY_BUCKETS) {
            if s <= le {
                *b += 1;
            }
        }
        l.count += 1;
        l.sum += s;
    }

    fn render(&self, index_size: usize) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "# HELP align_http_requests_total HTTP requests answered, by endpoint and status.");
        let _ = writeln!(out, "# TYPE align_http_requests_total counter");
        for ((endpoint, status), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "align_http_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP align_http_request_duration_seconds Time from request to response, by endpoint.");
        let _ = writeln!(out, "# TYPE align_http_request_duration_seconds histogram");
        for (endpoint, l) in self.latency.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for (b, le) in l.buckets.iter().zip(LATENCY_BUCKETS) {
                let _ = writeln!(
                    out,
                    "align_http_request_duration_seconds_bucket{{endpoint=\"{endpoint}\",le=\"{le}\"}} {b}"
                );
            }
            let _ = writeln!(
                out,
                "align_http_request_duration_seconds_bucket{{endpoint=\"{endpoint}\",le=\"+Inf\"}} {}",
                l.count
            );
            let _ = writeln!(out, "align_http_request_duration_seconds_sum{{endpoint=\"{endpoint}\"}} {}", l.sum);
            let _ = writeln!(out, "align_http_request_duration_seconds_count{{endpoint=\"{endpoint}\"}} {}", l.count);
        }
        let gauges = [
            (
                "align_search_queue_depth",
                "gauge",
                "Searches waiting for the engine.",
                self.queue_depth.load(Ordering::Relaxed) as u64,
            ),
            ("align_index_entries", "gauge", "Rows in the search index.", index_size as u64),
            ("align_search_batches_total", "counter", "Passes over the index.", self.batches.load(Ordering::Relaxed)),
            (
                "align_search_batched_queries_total",
                "counter",
                "Queries answered by those passes.",
                self.batched_queries.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The engine: one thread owns the model and batches queries
// ---------------------------------------------------------------------------------------------

/// One search waiting for the engine.
struct Job {
    text: Option<String>,
    image: Option<image::RgbImage>,
    plus: Vec<String>,
    minus: Vec<String>,
    k: usize,
    deadline: Instant,
    reply: tokio::sync::oneshot::Sender<std::result::Result<Vec<Hit>, String>>,
}

/// Opens the model on its own thread and serves jobs until every sender is gone. Sends the
/// outcome of opening (Ok, or the error) through `ready` first.
fn spawn_engine(
    model: PathBuf,
    device: Device,
    index: Arc<EmbeddingIndex>,
    jobs: Receiver<Job>,
    max_batch: usize,
    metrics: Arc<Metrics>,
) -> Result<std::thread::JoinHandle<()>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let handle = std::thread::Builder::new()
        .name("align-serve-engine".into())
        .spawn(move || {
            let lm = match crate::cli::open_model(&model, device) {
                Ok(lm) if lm.dim() == index.dim => lm,
                Ok(lm) => {
                    let msg = format!("holds {}-d embeddings, the model makes {}-d", index.dim, lm.dim());
                    let _ = ready_tx.send(Err(AlignError::config("--index", msg)));
                    return;
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            while let Ok(first) = jobs.recv() {
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                metrics.queue_depth.fetch_sub(batch.len(), Ordering::Relaxed);
                let mut vectors = Vec::with_capacity(batch.len() * index.dim);
                let mut live = Vec::with_capacity(batch.len());
                for job in batch {
                    // the client gave up (timeout or disconnect): no work for it
                    if job.reply.is_closed() || Instant::now() > job.deadline {
                        continue;
                    }
                    let parts = QueryParts {
                        text: job.text.as_deref(),
                        image: job.image.as_ref(),
                        plus: &job.plus,
                        minus: &job.minus,
                    };
                    match compose_query(&lm, &parts) {
                        Ok(v) => {
                            vectors.extend(v);
                            live.push(job);
                        }
                        Err(e) => {
                            let _ = job.reply.send(Err(e.to_string()));
                        }
                    }
                }
                if live.is_empty() {
                    continue;
                }
                let k_max = live.iter().map(|j| j.k).max().unwrap_or(1);
                // the best k of a query are the first k of its best k_max (hits are totally ordered)
                match index.search_batch(&vectors, k_max) {
                    Ok(hits) => {
                        metrics.batches.fetch_add(1, Ordering::Relaxed);
                        metrics.batched_queries.fetch_add(live.len() as u64, Ordering::Relaxed);
                        for (job, mut h) in live.into_iter().zip(hits) {
                            h.truncate(job.k);
                            let _ = job.reply.send(Ok(h));
                        }
                    }
                    Err(e) => live.into_iter().for_each(|job| {
                        let _ = job.reply.send(Err(e.to_string()));
                    }),
                }
            }
        })
        .map_err(|e| AlignError::config("serve", format!("cannot start the engine thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(AlignError::config("serve", "the engine thread stopped while opening the model")),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

struct App {
    index: Arc<EmbeddingIndex>,
    jobs: SyncSender<Job>,
    metrics: Arc<Metrics>,
    options: ServeOptions,
    /// JPEG thumbnails by row (`Bytes` clones share the buffer)
    thumbnails: Mutex<std::collections::HashMap<usize, axum::body::Bytes>>,
}

/// A JSON error answer: `{"error": message, "status": code}`.
fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": msg.into(), "status": status.as_u16() });
    (status, Json(body)).into_response()
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn health(State(app): State<Arc<App>>) -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "index_size": app.index.len(),
        "dim": app.index.dim,
        "dtype": app.index.dtype().to_string(),
    }))
    .into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render(app.index.len())).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint (see GET / for the page, POST /api/search for the API)")
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
}

/// Counts every answer by endpoint and status and times it.
async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let endpoint =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "other".into());
    let start = Instant::now();
    let response = next.run(req).await;
    app.metrics.observe(&endpoint, response.status().as_u16(), start.elapsed());
    response
}

/// A string or a list of strings (`"plus": "blue"` or `"plus": ["blue", "sky"]`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Terms {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Terms::deserialize(d)? {
        Terms::One(s) => vec![s],
        Terms::Many(v) => v,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchJson {
    text: Option<String>,
    /// base64, optionally as a `data:` URL
    image: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    plus: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    minus: Vec<String>,
    k: Option<usize>,
}

/// A search request, parsed but not checked.
#[derive(Default)]
struct SearchRequest {
    text: Option<String>,
    image: Option<Vec<u8>>,
    plus: Vec<String>,
    minus: Vec<String>,
    k: Option<usize>,
}

fn decode_base64(s: &str) -> std::result::Result<Vec<u8>, Response> {
    use base64::Engine as _;
    let data = if s.starts_with("data:") { s.split_once(',').map_or("", |(_, d)| d) } else { s };
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("'image' is not base64: {e}")))
}

async fn read_request(app: &App, req: Request) -> std::result::Result<SearchRequest, Response> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > app.options.body_limit) {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the limit of {} bytes", app.options.body_limit),
        ));
    }
    if content_type.starts_with("multipart/form-data") {
        let mut form = axum::extract::Multipart::from_request(req, &())
            .await
            .map_err(|e| error(e.status(), format!("multipart: {}", e.body_text())))?;
        let mut out = SearchRequest::default();
        loop {
            let field = match form.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(error(e.status(), format!("multipart: {}", e.body_text()))),
            };
            let name = field.name().unwrap_or("").to_string();
            let bytes = field.bytes().await.map_err(|e| error(e.status(), format!("multipart: {}", e.body_text())))?;
            let text = || {
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| error(StatusCode::BAD_REQUEST, format!("field '{name}' is not UTF-8")))
            };
            match name.as_str() {
                "image" => out.image = Some(bytes.to_vec()),
                "text" => out.text = Some(text()?),
                "plus" => out.plus.push(text()?),
                "minus" => out.minus.push(text()?),
                "k" => {
                    let k = text()?
                        .trim()
                        .parse()
                        .map_err(|_| error(StatusCode::BAD_REQUEST, "'k' is not a whole number"))?;
                    out.k = Some(k);
                }
                other => return Err(error(StatusCode::BAD_REQUEST, format!("unknown field '{other}'"))),
            }
        }
        Ok(out)
    } else if content_type.is_empty() || content_type.starts_with("application/json") {
        let body = axum::body::to_bytes(req.into_body(), app.options.body_limit).await.map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over the limit of {} bytes", app.options.body_limit),
            )
        })?;
        let parsed: SearchJson = serde_json::from_slice(&body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
        Ok(SearchRequest {
            image: parsed.image.as_deref().map(decode_base64).transpose()?,
            text: parsed.text,
            plus: parsed.plus,
            minus: parsed.minus,
            k: parsed.k,
        })
    } else {
        Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type '{content_type}': send application/json or multipart/form-data"),
        ))
    }
}

async fn search(State(app): State<Arc<App>>, req: Request) -> Response {
    let started = Instant::now();
    let r = match read_request(&app, req).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    let text = r.text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
    let k = r.k.unwrap_or(10);
    if text.is_none() && r.image.is_none() {
        return error(StatusCode::BAD_REQUEST, "give 'text', 'image' or both");
    }
    if k == 0 || k > app.options.max_k {
        return error(StatusCode::BAD_REQUEST, format!("'k' must be between 1 and {}", app.options.max_k));
    }
    let all_texts = text.iter().chain(&r.plus).chain(&r.minus);
    if all_texts.clone().any(|t| t.chars().count() > MAX_TEXT_CHARS) {
        return error(StatusCode::BAD_REQUEST, format!("texts are limited to {MAX_TEXT_CHARS} characters"));
    }
    if r.plus.len() > MAX_TERMS || r.minus.len() > MAX_TERMS {
        return error(StatusCode::BAD_REQUEST, format!("at most {MAX_TERMS} '+' and {MAX_TERMS} '-' texts"));
    }
    let image = match r.image {
        None => None,
        Some(bytes) => {
            let decoded =
                tokio::task::spawn_blocking(move || crate::images::decode_rgb(&bytes, "uploaded image")).await;
            match decoded {
                Ok(Ok(img)) => Some(img),
                Ok(Err(e)) => {
                    return error(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        format!("'image' is not a readable PNG or JPEG: {e}"),
                    )
                }
                Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the image decoder failed"),
            }
        }
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = Job { text, image, plus: r.plus, minus: r.minus, k, deadline: started + app.options.timeout, reply };
    app.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = app.jobs.try_send(job) {
        app.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            match e {
                TrySendError::Full(_) => "the search queue is full; retry shortly",
                TrySendError::Disconnected(_) => "the search engine has stopped",
            },
        );
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let hits = match tokio::time::timeout(app.options.timeout.saturating_sub(started.elapsed()), answer).await {
        Ok(Ok(Ok(hits))) => hits,
        Ok(Ok(Err(msg))) => return error(StatusCode::UNPROCESSABLE_ENTITY, msg),
        Ok(Err(_)) => return error(StatusCode::SERVICE_UNAVAILABLE, "the search engine dropped the query"),
        Err(_) => return error(StatusCode::GATEWAY_TIMEOUT, format!("no answer within {:?}", app.options.timeout)),
    };
    let results: Vec<serde_json::Value> = hits
        .iter()
        .map(|h| {
            let file = app.index.paths[h.row].file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            let caption = app.index.captions.as_ref().map(|c| c[h.row].clone()).filter(|c| !c.is_empty());
            serde_json::json!({ "id": h.row, "score": h.score, "file": file, "caption": caption })
        })
        .collect();
    Json(serde_json::json!({ "results": results, "took_ms": started.elapsed().as_secs_f64() * 1e3 })).into_response()
}

/// A JPEG thumbnail (longer side [`THUMBNAIL_SIDE`]) of an image file.
fn thumbnail_jpeg(path: &Path) -> Result<Vec<u8>> {
    let img = crate::images::load_rgb(path)?;
    let (w, h) = img.dimensions();
    let scale = (THUMBNAIL_SIDE as f32 / w.max(h) as f32).min(1.0);
    let (tw, th) = (((w as f32 * scale).round() as u32).max(1), ((h as f32 * scale).round() as u32).max(1));
    let small = if (tw, th) == (w, h) { img } else { image::imageops::thumbnail(&img, tw, th) };
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
        .encode_image(&small)
        .map_err(|e| AlignError::data(path, format!("thumbnail: {e}")))?;
    Ok(jpeg)
}

async fn thumbnail(State(app): State<Arc<App>>, axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    let Ok(id) = id.parse::<usize>() else {
        return error(StatusCode::BAD_REQUEST, "an image id is a row number of the index");
    };
    if id >= app.index.len() {
        return error(StatusCode::NOT_FOUND, format!("no image {id}: the index has {} rows", app.index.len()));
    }
    let cached = app.thumbnails.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
    let jpeg = match cached {
        Some(j) => j,
        None => {
            let path = app.index.paths[id].clone();
            let made =
                tokio::time::timeout(app.options.timeout, tokio::task::spawn_blocking(move || thumbnail_jpeg(&path)))
                    .await;
            match made {
                Ok(Ok(Ok(j))) => {
                    let j = axum::body::Bytes::from(j);
                    let mut cache = app.thumbnails.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() >= THUMBNAIL_CACHE {
                        cache.clear(); // a simple bound: the page's working set refills it quickly
                    }
                    cache.insert(id, j.clone());
                    j
                }
                Ok(Ok(Err(_))) => return error(StatusCode::NOT_FOUND, format!("image {id} is no longer readable")),
                Ok(Err(_)) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the thumbnail worker failed"),
                Err(_) => return error(StatusCode::GATEWAY_TIMEOUT, "the thumbnail took too long"),
            }
        }
    };
    let headers = [(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "max-age=3600")];
    (headers, jpeg).into_response()
}

fn router(app: Arc<App>) -> Router {
    let limit = app.options.body_limit;
    Router::new()
        .route("/", get(page))
        .route("/api/search", post(search))
        .route("/api/image/{id}", get(thumbnail))
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), track))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    eprintln!("align serve: stopping; answering the requests in flight");
}

/// Runs the server until SIGINT or SIGTERM. Prints `listening on http://ADDR` once the model
/// and the index are loaded and the port is bound.
pub fn serve(model: Option<&Path>, index_path: &Path, options: &ServeOptions, device: Device) -> Result<()> {
    let index = Arc::new(EmbeddingIndex::load(index_path)?);
    if index.is_empty() {
        return Err(AlignError::data(index_path, "the index is empty"));
    }
    let model = model.map(Path::to_path_buf).unwrap_or_else(|| index.checkpoint.clone());
    let metrics = Arc::new(Metrics::default());
    let (jobs, queue) = sync_channel(options.queue.max(1));
    let engine = spawn_engine(model.clone(), device, index.clone(), queue, options.max_batch.max(1), metrics.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("align-serve-http")
        .enable_all()
        .build()
        .map_err(|e| AlignError::config("serve", format!("cannot start the HTTP runtime: {e}")))?;
    let app = Arc::new(App {
        index: index.clone(),
        jobs,
        metrics,
        options: options.clone(),
        thumbnails: Mutex::new(Default::default()),
    });
    // an IPv6 address (`::1`) needs brackets before the port
    let address = if options.host.contains(':') && !options.host.starts_with('[') {
        format!("[{}]:{}", options.host, options.port)
    } else {
        format!("{}:{}", options.host, options.port)
    };
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|e| AlignError::config("--host / --port", format!("cannot listen on {address}: {e}")))?;
        let bound: SocketAddr = listener.local_addr().map_err(|e| AlignError::config("--port", e.to_string()))?;
        println!(
            "align serve: listening on http://{bound} ({} entries, {}-d {}, model {})",
            index.len(),
            index.dim,
            index.dtype(),
            model.display()
        );
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        axum::serve(listener, router(app))
            .with_graceful_shutdown(stop_signal())
            .await
            .map_err(|e| AlignError::config("serve", format!("the server failed: {e}")))
    })?;
    // every request has been answered and the router (with the queue's sender) dropped: the
    // engine drains and ends
    drop(runtime);
    let _ = engine.join();
    eprintln!("align serve: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An app whose queue nobody serves (no engine thread): searches wait until their timeout,
    /// and once the queue is full the next one is turned away at once.
    fn app_without_engine(queue: usize) -> (Arc<App>, Receiver<Job>) {
        let index = EmbeddingIndex::from_embeddings(
            vec![1.0, 0.0, 0.0, 1.0],
            2,
            vec!["a.png".into(), "b.png".into()],
            "m".into(),
        )
        .unwrap();
        let (jobs, waiting) = sync_channel(queue);
        let options = ServeOptions { timeout: Duration::from_millis(100), ..ServeOptions::default() };
        let app = App {
            index: Arc::new(index),
            jobs,
            metrics: Arc::new(Metrics::default()),
            options,
            thumbnails: Mutex::new(Default::default()),
        };
        (Arc::new(app), waiting)
    }

    fn text_search() -> Request {
        axum::http::Request::post("/api/search")
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(r#"{"text": "a cat"}"#))
            .unwrap()
    }

    #[test]
    fn a_full_queue_answers_503_with_retry_after_and_a_slow_engine_504() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let (app, waiting) = app_without_engine(1);
        // the first search takes the only queue slot and times out waiting for an answer
        let first = runtime.block_on(search(State(app.clone()), text_search()));
        assert_eq!(first.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(app.metrics.queue_depth.load(Ordering::Relaxed), 1, "its job still waits in the queue");
        // the queue is full: the next is refused at once, with a time to retry
        let started = Instant::now();
        let second = runtime.block_on(search(State(app.clone()), text_search()));
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(second.headers()[header::RETRY_AFTER], "1");
        assert!(started.elapsed() < Duration::from_millis(100), "refused without waiting");
        assert_eq!(app.metrics.queue_depth.load(Ordering::Relaxed), 1, "the refused job is not counted");
        // the queued job's client is gone: an engine would skip it
        assert!(waiting.try_recv().unwrap().reply.is_closed());
    }
}
