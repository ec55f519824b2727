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
//!
//! On an HTTP/2 connection no TLS record carries more than one response
//! ([`ResponseRecords`]): hyper coalesces every frame it has ready into one
//! write, and clients that take one record and one response per read
//! (dnsperf 2.x) leave the rest unread in their buffer until more bytes
//! arrive, so under load they time out on answers already delivered.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use shieldns_metrics::{Discard, Transport};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
    let stream = ResponseRecords::new(stream);
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

/// A DoH connection's TLS stream, its writes cut after each frame that
/// ends an HTTP/2 response (`END_STREAM` on DATA or HEADERS), so each write
/// (and so each TLS record: tokio-rustls seals every write into its own)
/// holds at most one response. HTTP/1.1 connections are passed through.
struct ResponseRecords {
    inner: TlsStream<TcpStream>,
    /// Where the server's HTTP/2 output stands; `None` unless ALPN chose h2.
    frames: Option<FrameCursor>,
}

impl ResponseRecords {
    fn new(inner: TlsStream<TcpStream>) -> Self {
        let h2 = inner.get_ref().1.alpn_protocol() == Some(b"h2");
        Self {
            inner,
            frames: h2.then(FrameCursor::default),
        }
    }
}

impl AsyncRead for ResponseRecords {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResponseRecords {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(frames) = this.frames.as_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        let span = frames.clone().advance(buf);
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..span]))?;
        // `written <= span`, and `advance` stops only after the last byte
        // of `span`: the cursor moves over all of them.
        frames.advance(&buf[..written]);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A position in a stream of HTTP/2 frames (RFC 9113 §4.1: a 9-byte
/// header whose first 3 bytes are the payload length, then type, flags).
#[derive(Clone, Debug, Default)]
struct FrameCursor {
    header: [u8; FRAME_HEADER],
    /// How much of the current frame's header has been seen.
    header_seen: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// The current frame ends a response.
    ends_response: bool,
}

const FRAME_HEADER: usize = 9;
const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;

impl FrameCursor {
    /// Moves over `bytes`, which continue the stream where the cursor
    /// stands, stopping just after the first frame that ends a response;
    /// returns how many bytes it moved over.
    fn advance(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        while at < bytes.len() {
            if self.header_seen < FRAME_HEADER {
                let take = (FRAME_HEADER - self.header_seen).min(bytes.len() - at);
                self.header[self.header_seen..self.header_seen + take].copy_from_slice(&bytes[at..at + take]);
                self.header_seen += take;
                at += take;
                if self.header_seen < FRAME_HEADER {
                    break;
                }
                let [l0, l1, l2, kind, flags, ..] = self.header;
                self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                self.ends_response = flags & FLAG_END_STREAM != 0 && (kind == FRAME_DATA || kind == FRAME_HEADERS);
            }
            let take = self.payload_left.min(bytes.len() - at);
            self.payload_left -= take;
            at += take;
            if self.payload_left == 0 {
                self.header_seen = 0;
                if std::mem::take(&mut self.ends_response) {
                    break;
                }
            }
        }
        at
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let mut frame = vec![0, (payload >> 8) as u8, payload as u8, kind, flags, 0, 0, 0, 1];
        frame.resize(FRAME_HEADER + payload, 0xab);
        frame
    }

    /// The spans `FrameCursor` cuts `bytes` into when the stream under it
    /// takes at most `piece` bytes per write (partial writes).
    fn cuts(bytes: &[u8], piece: usize) -> Vec<usize> {
        let mut cursor = FrameCursor::default();
        let (mut cuts, mut since, mut rest) = (Vec::new(), 0, bytes);
        while !rest.is_empty() {
            let span = cursor.clone().advance(rest);
            let written = span.min(piece);
            assert_eq!(cursor.advance(&rest[..written]), written);
            since += written;
            rest = &rest[written..];
            if written == span {
                cuts.push(std::mem::take(&mut since));
            }
        }
        cuts
    }

    #[test]
    fn each_response_ends_a_write() {
        let settings = frame(0x4, 0, 6);
        let response = [frame(FRAME_HEADERS, 0x4, 20), frame(FRAME_DATA, FLAG_END_STREAM, 120)].concat();
        let bodiless = frame(FRAME_HEADERS, 0x4 | FLAG_END_STREAM, 10);
        let output = [
            settings.clone(),
            response.clone(),
            response.clone(),
            bodiless.clone(),
            frame(0x8, 0, 4),
        ]
        .concat();
        let expected = vec![settings.len() + response.len(), response.len(), bodiless.len(), 13];
        for piece in [output.len(), 1, 5, 9, 64] {
            assert_eq!(cuts(&output, piece), expected, "written {piece} bytes at a time");
        }
    }

    #[test]
    fn frames_without_end_stream_are_not_cut() {
        let output = [
            frame(FRAME_DATA, 0, 100),
            frame(FRAME_HEADERS, 0x4, 0),
            frame(0x6, 0, 8),
        ]
        .concat();
        assert_eq!(cuts(&output, output.len()), vec![output.len()]);
    }
}
