//! A list publisher for tests: a real HTTPS server (hyper over rustls) on
//! 127.0.0.1, with a certificate issued by a test CA (rcgen) that clients
//! trust through `sync.ca_file`, and faults injected per path.
//!
//! It runs on its own thread and runtime, so both `#[tokio::test]` tests
//! and plain tests driving the real binary can use it. Shared by the sync
//! crate's tests and the binary's (`#[path]`-included there).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio_rustls::rustls;

/// How the publisher answers a path. Sticky: it applies to every request
/// (retries included) until changed.
#[derive(Clone, Debug)]
pub enum Mode {
    /// 200 with the file, ETag and Last-Modified; 304 when the client's
    /// If-None-Match matches; gzip when the client accepts it.
    Serve,
    /// This status, with a short text body.
    Status(u16),
    /// Accept the request and never answer.
    Hang,
    /// 200 and the file's first bytes, then one byte per `every`, forever.
    SlowDrip { every: Duration },
    /// 200 declaring the file's full length, then half the file and an
    /// aborted connection.
    Truncate,
    /// 200, chunked, with valid-looking lines forever.
    Endless,
}

type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Default, Debug)]
struct State {
    files: HashMap<String, Vec<u8>>,
    modes: HashMap<String, Mode>,
    /// Every request: path, If-None-Match, Accept-Encoding.
    log: Vec<(String, Option<String>, Option<String>)>,
    gzip: bool,
}

/// A running publisher; stops when dropped.
#[derive(Debug)]
pub struct Publisher {
    pub addr: SocketAddr,
    /// The test CA's certificate (PEM), for `sync.ca_file`.
    pub ca_pem: String,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Publisher {
    /// Starts on a free port of 127.0.0.1.
    pub fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts on `addr` (to come back on the same port after a stop).
    pub fn start_on(addr: SocketAddr) -> Self {
        let (ca_pem, server_config) = certificates();
        let state = Arc::new(Mutex::new(State {
            gzip: true,
            ..State::default()
        }));
        let listener = std::net::TcpListener::bind(addr).expect("bind publisher");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("publisher address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread_state = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("publisher runtime");
            runtime.block_on(serve(listener, server_config, thread_state, stopped));
            // Hanging and dripping responses are still running: drop them.
            runtime.shutdown_background();
        });
        Self {
            addr,
            ca_pem,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `https://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Publishes `body` at `path` (and serves it normally).
    pub fn put(&self, path: &str, body: impl Into<Vec<u8>>) {
        let mut state = self.state.lock().expect("publisher state");
        state.files.insert(path.trim_start_matches('/').to_owned(), body.into());
        state.modes.remove(path.trim_start_matches('/'));
    }

    /// Sets how `path` is answered.
    pub fn mode(&self, path: &str, mode: Mode) {
        let mut state = self.state.lock().expect("publisher state");
        state.modes.insert(path.trim_start_matches('/').to_owned(), mode);
    }

    /// Whether bodies are gzip-encoded for clients that accept it.
    pub fn set_gzip(&self, on: bool) {
        self.state.lock().expect("publisher state").gzip = on;
    }

    /// Requests for `path` so far, each with its If-None-Match and
    /// Accept-Encoding headers.
    pub fn requests(&self, path: &str) -> Vec<(Option<String>, Option<String>)> {
        let state = self.state.lock().expect("publisher state");
        let path = path.trim_start_matches('/');
        state
            .log
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, inm, ae)| (inm.clone(), ae.clone()))
            .collect()
    }

    /// Writes the CA certificate to `dir/ca.pem` and returns its path.
    pub fn write_ca(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write ca.pem");
        path
    }

    /// Stops serving: the port refuses connections afterwards.
    pub fn stop(mut self) -> SocketAddr {
        self.shutdown();
        self.addr
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A CA, and a leaf for 127.0.0.1 and localhost issued by it.
fn certificates() -> (String, rustls::ServerConfig) {
    let ca = crate::tls::TestCa::new("shieldns test CA");
    let leaf = ca.leaf(&["127.0.0.1", "localhost"]);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)
        .expect("server certificate");
    (ca.pem, config)
}

async fn serve(
    listener: std::net::TcpListener,
    config: rustls::ServerConfig,
    state: Arc<Mutex<State>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else { return };
            let service = hyper::service::service_fn(move |request| handle(request, state.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

fn stream_body(
    stream: impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Sync + 'static,
) -> Body {
    StreamBody::new(stream).boxed()
}

fn etag_of(body: &[u8]) -> String {
    use sha2::Digest as _;
    format!("\"{}\"", hex::encode(&sha2::Sha256::digest(body)[..8]))
}

async fn handle(request: Request<Incoming>, state: Arc<Mutex<State>>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().trim_start_matches('/').to_owned();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let if_none_match = header("if-none-match");
    let accept_encoding = header("accept-encoding");
    let (file, mode, gzip) = {
        let mut state = state.lock().expect("publisher state");
        state
            .log
            .push((path.clone(), if_none_match.clone(), accept_encoding.clone()));
        (
            state.files.get(&path).cloned(),
            state.modes.get(&path).cloned().unwrap_or(Mode::Serve),
            state.gzip,
        )
    };
    let response = Response::builder();
    let Some(file) = file else {
        return Ok(response
            .status(StatusCode::NOT_FOUND)
            .body(full("not found\n"))
            .expect("response"));
    };
    Ok(match mode {
        Mode::Serve => {
            let etag = etag_of(&file);
            if if_none_match.as_deref() == Some(etag.as_str()) {
                response
                    .status(StatusCode::NOT_MODIFIED)
                    .header("etag", etag)
                    .body(full(Bytes::new()))
                    .expect("response")
            } else {
                let response = response
                    .header("etag", etag)
                    .header("last-modified", "Sat, 28 Nov 2026 12:00:00 GMT");
                if gzip && accept_encoding.is_some_and(|a| a.contains("gzip")) {
                    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    encoder.write_all(&file).expect("gzip");
                    let encoded = encoder.finish().expect("gzip");
                    response
                        .header("content-encoding", "gzip")
                        .body(full(encoded))
                        .expect("response")
                } else {
                    response.body(full(file)).expect("response")
                }
            }
        }
        Mode::Status(status) => response
            .status(status)
            .body(full(format!("<html><body>error {status}</body></html>\n")))
            .expect("response"),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            response.body(full(file)).expect("response")
        }
        Mode::SlowDrip { every } => {
            let first = Bytes::copy_from_slice(&file[..file.len().min(16)]);
            let drip = futures_util::stream::unfold(Some(first), move |next| async move {
                match next {
                    Some(first) => Some((Ok(Frame::data(first)), None)),
                    None => {
                        tokio::time::sleep(every).await;
                        Some((Ok(Frame::data(Bytes::from_static(b"a"))), None))
                    }
                }
            });
            response.body(stream_body(drip)).expect("response")
        }
        Mode::Truncate => {
            let half = Bytes::copy_from_slice(&file[..file.len() / 2]);
            let length = file.len();
            let parts = futures_util::stream::iter(vec![
                Ok(Frame::data(half)),
                Err(std::io::Error::other("publisher aborts the body")),
            ]);
            response
                .header("content-length", length)
                .body(stream_body(parts))
                .expect("response")
        }
        Mode::Endless => {
            let endless = futures_util::stream::unfold(0u64, |n| async move {
                let chunk: String = (n..n + 1000).map(|i| format!("endless-{i}.example.test\n")).collect();
                Some((Ok(Frame::data(Bytes::from(chunk))), n + 1000))
            });
            response.body(stream_body(endless)).expect("response")
        }
    })
}

/// A minisign key pair for a test publisher.
#[derive(Debug)]
pub struct Signer {
    keys: minisign::KeyPair,
}

impl Default for Signer {
    fn default() -> Self {
        Self::new()
    }
}

impl Signer {
    pub fn new() -> Self {
        Self {
            keys: minisign::KeyPair::generate_unencrypted_keypair().expect("minisign keys"),
        }
    }

    /// The public key as `minisign = "…"` takes it.
    pub fn public_key(&self) -> String {
        self.keys.pk.to_base64()
    }

    /// A detached signature of `body`, as `minisign -S` writes it.
    pub fn sign(&self, body: &[u8]) -> String {
        minisign::sign(
            Some(&self.keys.pk),
            &self.keys.sk,
            std::io::Cursor::new(body),
            None,
            None,
        )
        .expect("sign")
        .into_string()
    }
}

/// `count` list lines `name-N.example.test`.
pub fn names(prefix: &str, count: usize) -> String {
    (0..count).map(|i| format!("{prefix}-{i}.example.test\n")).collect()
}
