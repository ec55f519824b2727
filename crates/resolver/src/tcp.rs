//! DNS over TCP (RFC 7766) and over TLS (RFC 7858): accept, screen, read
//! length-prefixed queries, answer each through the handler as soon as it
//! is ready. DoH connections are admitted here too, then served by
//! [`crate::doh`].
//!
//! Key design decision: our own listener rather than hickory-server's, which
//! answers a connection's queries one at a time and has no connection caps.
//! The access list is applied at accept (a refused source's connection is
//! reset at once, before a byte is read); connections are capped in total
//! and per client address, the total cap lowered at start so that the
//! descriptors the upstream sockets need stay free; the idle timeout
//! shortens once three quarters of the cap are in use; and up to
//! `tcp_pipeline` queries of a connection are resolved concurrently, their
//! answers written in the order they complete (RFC 7766 §6.2.1.1).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use shieldns_index::Snapshot;
use shieldns_metrics::{Discard, Metrics, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::debug;

use crate::config::EncryptedProtocol;
use crate::discard::Discards;
use crate::handler::{ClientId, ShieldHandler};
use crate::listener_caps::{self, ListenerCaps};
use crate::proxy::{Origin, TrustedProxies};
use crate::tls::Encrypted;
use crate::wire::screen_header;

/// The TCP limits, from `[server]` (the total already fitted to the
/// descriptor limit).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) per_client: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) pipeline: usize,
}

impl Limits {
    /// The idle timeout with `open` connections: a tenth of the configured
    /// one (at least a second) once three quarters of the cap are open.
    fn idle_timeout(&self, open: usize) -> Duration {
        if open.saturating_mul(4) >= self.max_connections.saturating_mul(3) {
            (self.idle_timeout / 10)
                .max(Duration::from_secs(1))
                .min(self.idle_timeout)
        } else {
            self.idle_timeout
        }
    }
}

/// What every connection of every TCP listener shares.
pub(crate) struct Shared {
    pub(crate) limits: Limits,
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) handler: ShieldHandler,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) discards: Arc<Discards>,
    /// `server.trusted_proxies`.
    pub(crate) proxies: TrustedProxies,
    open: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl Shared {
    pub(crate) fn new(
        limits: Limits,
        snapshot: Arc<ArcSwap<Snapshot>>,
        handler: ShieldHandler,
        metrics: Arc<Metrics>,
        discards: Arc<Discards>,
        proxies: TrustedProxies,
    ) -> Self {
        Self {
            limits,
            snapshot,
            handler,
            metrics,
            discards,
            proxies,
            open: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a connection from `client`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Admitted, Discard> {
        if self.snapshot.load().client_policy(client).is_none() {
            return Err(Discard::TcpNotAllowed);
        }
        let mut per_client = self.per_client.lock().unwrap_or_else(PoisonError::into_inner);
        if self.open.load(Ordering::Acquire) >= self.limits.max_connections {
            return Err(Discard::TcpConnectionLimit);
        }
        let count = per_client.entry(client).or_insert(0);
        if *count >= self.limits.per_client {
            return Err(Discard::TcpClientLimit);
        }
        *count += 1;
        self.open.fetch_add(1, Ordering::AcqRel);
        self.metrics.tcp_connections(1);
        Ok(Admitted {
            shared: self.clone(),
            client,
            listener: None,
        })
    }

    /// Admits an encrypted connection from `client`: under the shared caps,
    /// then under its listener's own. The handshake's place is held until
    /// the caller drops it, once the handshake ended.
    pub(crate) fn admit_encrypted(
        self: &Arc<Self>,
        client: IpAddr,
        caps: &Arc<ListenerCaps>,
    ) -> Result<(Admitted, listener_caps::Handshake), Discard> {
        let mut admitted = self.admit(client)?;
        let (place, handshake) = caps.admit(client)?;
        admitted.listener = Some(place);
        Ok((admitted, handshake))
    }
}

/// An admitted connection's place under the caps, given back on drop.
pub(crate) struct Admitted {
    pub(crate) shared: Arc<Shared>,
    pub(crate) client: IpAddr,
    /// An encrypted connection's place under its listener's own caps.
    pub(crate) listener: Option<listener_caps::Connection>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_client = self.shared.per_client.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = per_client.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_client.remove(&self.client);
            }
        }
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
        self.shared.metrics.tcp_connections(-1);
    }
}

/// Accepts connections on `listener` until `stop` turns true: plain DNS
/// over TCP, or, with `encrypted`, DoT or DoH after the TLS handshake. All
/// share the caps of `shared`.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    encrypted: Option<Arc<Encrypted>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors (EMFILE/ENFILE) or a connection reset
                // before it was accepted: pause a little rather than spin.
                debug!(%error, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.proxies.is_enabled() {
            // The real client is known once the PROXY header (if any) is
            // read, off the accept loop.
            let (shared, encrypted, stop) = (shared.clone(), encrypted.clone(), stop.clone());
            tokio::spawn(async move {
                let mut stream = stream;
                let timeout = shared.limits.idle_timeout;
                match shared.proxies.stream(&mut stream, peer, timeout).await {
                    Ok(Origin::Direct { .. }) => begin(&shared, stream, peer, encrypted, stop).await,
                    Ok(Origin::Relayed { client, .. }) => begin(&shared, stream, client, encrypted, stop).await,
                    Err(reason) => reset(&shared, stream, reason, peer),
                }
            });
            continue;
        }
        begin(&shared, stream, peer, encrypted.clone(), stop.clone()).await;
    }
}

/// Admits a connection from `client` under the caps and starts serving it
/// on a task of its own, or resets it.
async fn begin(
    shared: &Arc<Shared>,
    stream: TcpStream,
    client: SocketAddr,
    encrypted: Option<Arc<Encrypted>>,
    stop: watch::Receiver<bool>,
) {
    let ip = client.ip().to_canonical();
    match encrypted {
        None => match shared.admit(ip) {
            Ok(admitted) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, client, admitted, None, Transport::Tcp, stop));
            }
            Err(reason) => reset(shared, stream, reason, client),
        },
        Some(encrypted) => match shared.admit_encrypted(ip, &encrypted.caps) {
            Ok(admitted) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(encrypted_connection(stream, client, admitted, encrypted, stop));
            }
            Err(reason) => reset(shared, stream, reason, client),
        },
    }
}

/// Resets a connection refused for `reason` and counts it.
fn reset(shared: &Shared, stream: TcpStream, reason: Discard, client: SocketAddr) {
    // A reset, not a close: no TIME_WAIT state kept for it here. (A zero
    // linger never blocks the close.)
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
    shared.discards.note(reason, client.ip().to_canonical());
}

/// The TLS handshake of an admitted connection, then DoT (length-prefixed
/// messages, as over TCP) or DoH (HTTP/2 or HTTP/1.1).
async fn encrypted_connection(
    stream: TcpStream,
    peer: SocketAddr,
    (admitted, handshake): (Admitted, listener_caps::Handshake),
    encrypted: Arc<Encrypted>,
    stop: watch::Receiver<bool>,
) {
    let accepted = encrypted.accept(stream).await;
    drop(handshake);
    let Some(stream) = accepted else {
        admitted.shared.discards.note(Discard::TlsHandshake, admitted.client);
        return;
    };
    match encrypted.protocol {
        EncryptedProtocol::Dot => {
            let client_id = encrypted.client_id_of(&stream);
            connection(stream, peer, admitted, client_id, Transport::Dot, stop).await;
        }
        EncryptedProtocol::Doh => crate::doh::connection(stream, peer, admitted, encrypted, stop).await,
        // DoQ listeners are QUIC endpoints (`crate::doq`), never TCP ones.
        EncryptedProtocol::Doq => {}
    }
}

/// Serves one connection: reads queries until the client closes, the idle
/// timeout passes with nothing in flight, or the server stops; answers are
/// written by a task of their own as they complete.
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    admitted: Admitted,
    client_id: Option<ClientId>,
    transport: Transport,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let shared = admitted.shared.clone();
    let client_id = client_id.map(Arc::new);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let pipeline = shared.limits.pipeline.max(1);
    let (answers, mut outgoing) = mpsc::channel::<Vec<u8>>(pipeline);
    // A client that stops reading gets as long as an idle one to take each
    // answer.
    let write_timeout = shared.limits.idle_timeout;
    let writing = tokio::spawn(async move {
        while let Some(answer) = outgoing.recv().await {
            match tokio::time::timeout(write_timeout, writer.write_all(&answer)).await {
                Ok(Ok(())) => {}
                Err(_) | Ok(Err(_)) => return,
            }
        }
        let _ = writer.shutdown().await;
    });
    let in_flight = Arc::new(Semaphore::new(pipeline));
    loop {
        // Room for one more query first: reading pauses while the
        // connection has `pipeline` queries in flight.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let idle = shared.limits.idle_timeout(shared.open.load(Ordering::Acquire));
        let mut length = [0u8; 2];
        let read = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            read = tokio::time::timeout(idle, reader.read_exact(&mut length)) => read,
        };
        // The client closed, or sent nothing for the idle timeout: no more
        // reading; the answers still resolving are written before the
        // writer closes (it ends once every sender is gone).
        if !matches!(read, Ok(Ok(_))) {
            break;
        }
        let size = usize::from(u16::from_be_bytes(length));
        if size < 12 {
            shared.discards.note(Discard::Malformed, admitted.client);
            break;
        }
        let mut message = vec![0u8; size];
        // The message itself must follow promptly (a client dripping bytes
        // holds a connection and a descriptor).
        match tokio::time::timeout(idle, reader.read_exact(&mut message)).await {
            Ok(Ok(_)) => {}
            Err(_) | Ok(Err(_)) => break,
        }
        let (shared, answers, client_id) = (shared.clone(), answers.clone(), client_id.clone());
        tokio::spawn(async move {
            answer(&shared, message, peer, client_id.as_deref(), transport, answers).await;
            drop(permit);
        });
    }
    drop(answers);
    let _ = writing.await;
    drop(admitted);
}

/// Answers one query of a connection.
async fn answer(
    shared: &Shared,
    message: Vec<u8>,
    peer: SocketAddr,
    client_id: Option<&ClientId>,
    transport: Transport,
    answers: mpsc::Sender<Vec<u8>>,
) {
    if let Err(reason) = screen_header(&message) {
        shared.discards.note(reason, peer.ip().to_canonical());
        return;
    }
    let Some(message) = shared.handler.respond(message, peer, transport, client_id).await else {
        return;
    };
    // An answer is at most 65,535 bytes (the encoder stops there).
    let Ok(length) = u16::try_from(message.len()) else {
        debug!(%peer, "a TCP answer too large to frame");
        return;
    };
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(&message);
    if answers.send(framed).await.is_err() {
        debug!("a TCP answer was ready after its connection closed");
    }
}
