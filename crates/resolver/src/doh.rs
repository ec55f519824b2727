//! DNS over HTTPS (RFC 8484): GET (`?dns=` base64url) and POST
//! (`application/dns-message`) on the listener's path, over HTTP/2 or
//! HTTP/1.1, each request answered through the same handler as UDP and
//! TCP. A path `{path}/{id}` carries a client ID.
//!
//! Key design decision: hyper (already in the tree for the tests'
//! publisher) with hyper-util's protocol-detecting builder, rather than
//! hickory's DoH listener, which is POST-only, serves a connection's
//! streams through one handler without client IDs, and has no stream caps.
//! A connection is closed once it has been idle (no request in flight) for
//! the TCP idle timeout, like a DoT one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use shieldns_metrics::{Discard, Transport};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use crate::tcp::{Admitted, Shared};
use crate::tls::Encrypted;
use crate::wire::screen_header;

/// RFC 8484's media type.
const MEDIA_TYPE: &str = "application/dns-message";

/// A DNS message is at most this long.
const MAX_MESSAGE: usize = 65_535;

/// Serves one admitted DoH connection until the client closes it, it has
/// been idle for the idle timeout, or the server stops.
pub(crate) async fn connection(
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
    admitted: Admitted,
    encrypted: Arc<Encrypted>,
    mut stop: watch::Receiver<bool>,
) {
    let shared = admitted.shared.clone();
    let idle = shared.limits.idle_timeout;
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last_end: AtomicU64::new(0),
        started: Instant::now(),
    });
    let service = {
        let (shared, encrypted, activity) = (shared.clone(), encrypted.clone(), activity.clone());
        hyper::service::service_fn(move |request| {
            let (shared, encrypted, activity) = (shared.clone(), encrypted.clone(), activity.clone());
            async move {
                let _busy = activity.begin();
                Ok::<_, std::convert::Infallible>(answer(&shared, &encrypted, request, peer).await)
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(encrypted.http2_max_streams);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    loop {
        let close = tokio::select! {
            _ = connection.as_mut() => break,
            _ = stop.wait_for(|stop| *stop) => true,
            () = tokio::time::sleep(idle / 4) => activity.idle_for() >= idle,
        };
        if close {
            connection.as_mut().graceful_shutdown();
            let _ = connection.as_mut().await;
            break;
        }
    }
    drop(admitted);
}

/// A connection's requests in flight and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// When the last request ended, in milliseconds after `started`.
    last_end: AtomicU64,
    started: Instant,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// How long nothing has been in flight (zero while something is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_end.load(Ordering::Acquire));
        self.started.elapsed().saturating_sub(last)
    }
}

/// A request in flight, until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let now = u64::try_from(self.0.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_end.fetch_max(now, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers one HTTP request: the DNS answer, or the HTTP error that says
/// why it is not a DNS query.
async fn answer(
    shared: &Shared,
    encrypted: &Encrypted,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let client = peer.ip().to_canonical();
    let refuse = |status: StatusCode| {
        shared.discards.note(Discard::BadHttpRequest, client);
        status_only(status)
    };
    let Some(rest) = request.uri().path().strip_prefix(encrypted.path.as_str()) else {
        return refuse(StatusCode::NOT_FOUND);
    };
    let client_id = match rest {
        "" | "/" => None,
        _ => match rest.strip_prefix('/') {
            Some(id) if !id.contains('/') => Some(encrypted.client_id(id)),
            _ => return refuse(StatusCode::NOT_FOUND),
        },
    };
    let message = match *request.method() {
        Method::GET => {
            let encoded = request
                .uri()
                .query()
                .and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("dns=")));
            // RFC 8484 §6: base64url without padding (padding tolerated).
            match encoded.and_then(|e| {
                data_encoding::BASE64URL_NOPAD
                    .decode(e.trim_end_matches('=').as_bytes())
                    .ok()
            }) {
                Some(message) => message,
                None => return refuse(StatusCode::BAD_REQUEST),
            }
        }
        Method::POST => {
            let media_type = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok());
            if media_type.is_none_or(|t| !t.eq_ignore_ascii_case(MEDIA_TYPE)) {
                return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE);
            }
            match Limited::new(request.into_body(), MAX_MESSAGE).collect().await {
                Ok(body) => body.to_bytes().to_vec(),
                Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE),
            }
        }
        _ => return refuse(StatusCode::METHOD_NOT_ALLOWED),
    };
    if let Err(reason) = screen_header(&message) {
        shared.discards.note(reason, client);
        return status_only(StatusCode::BAD_REQUEST);
    }
    match shared
        .handler
        .respond(message, peer, Transport::Doh, client_id.as_ref())
        .await
    {
        Some(answer) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, MEDIA_TYPE)
            .body(Full::new(Bytes::from(answer)))
            .unwrap_or_else(|_| status_only(StatusCode::INTERNAL_SERVER_ERROR)),
        // The policy sends nothing (RPZ drop): HTTP must say something.
        None => status_only(StatusCode::FORBIDDEN),
    }
}

/// A response with a status and no body.
fn status_only(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
