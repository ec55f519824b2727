//! Listeners and lifecycle: binds every `server.listen` address over UDP and
//! TCP, serves until told to stop, then drains in-flight queries.
//!
//! UDP is served by the fast path's own threads and TCP by [`crate::tcp`];
//! both fall back to the one handler. The TCP connection cap is fitted to
//! the descriptor limit here, once, so that a full TCP side can never take
//! the descriptors upstream resolution needs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use shieldns_index::Snapshot;
use shieldns_metrics::Metrics;
use shieldns_querylog::QueryLog;
use socket2::{Domain, Protocol, Socket, Type};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::cache::{AnswerCache, Caches, FailureCache};
use crate::config::EncryptedProtocol;
use crate::config::{CacheConfig, ServerConfig, UpstreamConfig};
use crate::discard::Discards;
use crate::doq;
use crate::error::ResolverError;
use crate::fastpath::FastPath;
use crate::handler::{Clock, Reports, ShieldHandler};
use crate::packet_cache::{PacketCache, fill_channel};
use crate::proxy::TrustedProxies;
use crate::ratelimit::RateLimiter;
use crate::stream_cache::StreamCache;
use crate::tcp;
use crate::tls::{Certificate, Encrypted};
use crate::udp;
use crate::upstream::Upstream;

/// A running resolver.
///
/// Dropped without `shutdown`, it still stops its UDP threads and TCP
/// listeners.
pub struct RunningResolver {
    tcp_stop: watch::Sender<bool>,
    tcp_listeners: Vec<JoinHandle<()>>,
    handler: ShieldHandler,
    grace: Duration,
    udp_stop: Arc<AtomicBool>,
    udp_threads: Vec<std::thread::JoinHandle<()>>,
    /// The encrypted listeners' certificates, re-read on SIGHUP.
    certificates: Vec<Arc<Certificate>>,
}

impl std::fmt::Debug for RunningResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningResolver")
            .field("in_flight", &self.handler.in_flight())
            .finish()
    }
}

/// Binds the listeners and starts serving. `snapshot` is the one `ArcSwap`
/// the binary owns; the resolver only ever loads from it.
pub async fn start(
    server: &ServerConfig,
    upstream: &UpstreamConfig,
    cache: &CacheConfig,
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    query_log: Option<QueryLog>,
    clock: Clock,
) -> Result<RunningResolver, ResolverError> {
    if server.listen.is_empty() {
        return Err(ResolverError::Config {
            key: "server.listen",
            reason: "no listen address".into(),
        });
    }
    let tcp_limits = tcp::Limits {
        max_connections: fit_tcp_connections(server, upstream),
        per_client: server.tcp_max_connections_per_client.max(1),
        idle_timeout: Duration::from_secs(server.tcp_idle_timeout.max(1)),
        pipeline: server.tcp_pipeline.max(1),
    };
    let upstream = Upstream::new(upstream, cache)?;
    let upstream_cache = match upstream {
        Upstream::Unbound(_) => None,
        Upstream::Recursive(_) | Upstream::Forward(_) => Some(AnswerCache::new(cache.clone())),
    };
    let discards = Arc::new(Discards::new(metrics.clone()));
    let fast = Arc::new(FastPath {
        snapshot: snapshot.clone(),
        clock,
        udp_payload: server.udp_payload,
        metrics: metrics.clone(),
        query_log: query_log.clone(),
        in_flight: Arc::new(tokio::sync::Semaphore::new(server.max_in_flight.max(1))),
        discards: discards.clone(),
        rate_limit: server.rate_limit.as_ref().map(RateLimiter::new),
        proxies: TrustedProxies::new(&server.trusted_proxies),
        refusals: RateLimiter::for_refusals(),
    });
    // Every socket is bound before the first thread or task starts, so a
    // bind error returns with nothing left serving.
    let mut udp_sockets = Vec::new();
    let mut tcp_sockets = Vec::new();
    for &address in &server.listen {
        for _ in 0..server.udp_sockets.max(1) {
            udp_sockets.push((address, Arc::new(bind_udp(address, server.udp_sockets > 1)?)));
        }
        tcp_sockets.push((bind_tcp(address)?, None));
        info!(%address, "listening on UDP and TCP");
    }
    let mut certificates = Vec::new();
    let mut quic = Vec::new();
    for listener in &server.listeners {
        let encrypted = Arc::new(Encrypted::new(listener)?);
        certificates.push(encrypted.certificate.clone());
        match listener.protocol {
            EncryptedProtocol::Doq => quic.push((listener.address, encrypted)),
            EncryptedProtocol::Dot | EncryptedProtocol::Doh => {
                tcp_sockets.push((bind_tcp(listener.address)?, Some(encrypted)));
            }
        }
        info!(address = %listener.address, protocol = ?listener.protocol, "listening for encrypted DNS");
    }
    // `cache.max_entries` and `cache.max_bytes` bound the packet caches
    // together: the stream transports' shared cache and each UDP socket's
    // own get a share each.
    let shares = u64::try_from(udp_sockets.len()).unwrap_or(u64::MAX).saturating_add(1);
    let (share_entries, share_bytes) = ((cache.max_entries / shares).max(1), (cache.max_bytes / shares).max(1));
    // An answer the engine would prefetch is left to it near its expiry.
    let prefetch = upstream_cache.is_some() && cache.prefetch;
    let handler = ShieldHandler::new(
        snapshot.clone(),
        upstream,
        Caches {
            answers: upstream_cache,
            failures: FailureCache::new(cache),
            streams: StreamCache::new(share_entries, share_bytes, prefetch),
        },
        server,
        Reports {
            metrics: metrics.clone(),
            query_log,
            discards: discards.clone(),
        },
        clock,
    );
    let tcp_shared = Arc::new(tcp::Shared::new(
        tcp_limits,
        snapshot,
        handler.clone(),
        metrics,
        discards,
        TrustedProxies::new(&server.trusted_proxies),
    ));
    let (tcp_stop, stopped) = watch::channel(false);
    let mut tcp_listeners: Vec<JoinHandle<()>> = tcp_sockets
        .into_iter()
        .map(|(listener, encrypted)| tokio::spawn(tcp::serve(listener, tcp_shared.clone(), encrypted, stopped.clone())))
        .collect();
    for (address, encrypted) in quic {
        let endpoint = doq::endpoint(address, &encrypted, &tcp_shared)?;
        tcp_listeners.push(tokio::spawn(doq::serve(
            endpoint,
            tcp_shared.clone(),
            encrypted,
            stopped.clone(),
        )));
    }
    let udp_stop = Arc::new(AtomicBool::new(false));
    let mut udp_threads = Vec::new();
    let runtime = tokio::runtime::Handle::current();
    for (number, (address, socket)) in udp_sockets.into_iter().enumerate() {
        let (fast, handler, runtime, stop) = (fast.clone(), handler.clone(), runtime.clone(), udp_stop.clone());
        let packets = PacketCache::new(share_entries, share_bytes, prefetch);
        let thread = std::thread::Builder::new()
            .name(format!("shieldns-udp-{number}"))
            .spawn(move || udp::serve_thread(socket, packets, fill_channel(), fast, handler, runtime, stop));
        match thread {
            Ok(thread) => udp_threads.push(thread),
            Err(source) => {
                udp_stop.store(true, Ordering::Relaxed);
                let _ = tcp_stop.send(true);
                return Err(ResolverError::Bind {
                    address,
                    protocol: "udp",
                    cause: source,
                });
            }
        }
    }
    Ok(RunningResolver {
        tcp_stop,
        tcp_listeners,
        handler,
        grace: Duration::from_secs(server.shutdown_grace),
        udp_stop,
        udp_threads,
        certificates,
    })
}

impl RunningResolver {
    /// Re-reads every encrypted listener's certificate and key: new
    /// handshakes use the new ones, open connections keep theirs. A file
    /// that cannot be used keeps its listener's certificate in use.
    pub fn reload_certificates(&self) -> Result<(), ResolverError> {
        let mut first_error = None;
        for certificate in &self.certificates {
            if let Err(error) = certificate.reload() {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stops serving: waits up to the grace period for in-flight queries to
    /// finish, then closes every listener.
    pub async fn shutdown(mut self) -> Result<(), ResolverError> {
        // Stop reading UDP first, so the in-flight count can only fall.
        self.udp_stop.store(true, Ordering::Relaxed);
        // Each thread sees the flag within one receive timeout.
        let threads = std::mem::take(&mut self.udp_threads);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
        // TCP listeners stop accepting and connections stop reading; the
        // queries they started finish within the grace period below.
        let _ = self.tcp_stop.send(true);
        for listener in std::mem::take(&mut self.tcp_listeners) {
            let _ = listener.await;
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        while self.handler.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Waits until a listener stops on its own, which only a panic in its
    /// accept loop can make happen (accept errors are retried).
    pub async fn wait(&mut self) -> Result<(), ResolverError> {
        if self.tcp_listeners.is_empty() {
            return std::future::pending::<Result<(), ResolverError>>().await;
        }
        let (ended, _, _) = futures_util::future::select_all(self.tcp_listeners.iter_mut()).await;
        Err(ResolverError::Server {
            reason: match ended {
                Ok(()) => "a TCP listener stopped".into(),
                Err(error) => format!("a TCP listener failed: {error}"),
            },
        })
    }
}

/// Descriptors kept free for everything but TCP clients besides the upstream
/// sockets: listeners, log and state files, the metrics endpoint.
const OTHER_DESCRIPTORS: u64 = 256;

/// `server.tcp_max_connections`, lowered if the descriptor limit (raised to
/// its hard limit first) would leave the upstream sockets too little room
/// once every TCP connection is open.
fn fit_tcp_connections(server: &ServerConfig, upstream: &UpstreamConfig) -> usize {
    let configured = server.tcp_max_connections.max(1);
    let limit = raise_descriptor_limit();
    // libunbound keeps up to `outgoing_range` sockets open per context;
    // hickory's engines are given the same room.
    let contexts = upstream.context_count();
    let upstream_sockets =
        u64::from(upstream.outgoing_range.max(16)).saturating_mul(u64::try_from(contexts).unwrap_or(u64::MAX));
    let udp_sockets = u64::try_from(server.listen.len().saturating_mul(server.udp_sockets.max(1))).unwrap_or(u64::MAX);
    let room = limit.saturating_sub(upstream_sockets + udp_sockets + OTHER_DESCRIPTORS);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if room >= configured {
        return configured;
    }
    let fitted = room.max(16);
    warn!(
        configured,
        fitted,
        descriptor_limit = limit,
        upstream_sockets,
        "server.tcp_max_connections lowered so the upstream sockets keep their descriptors (raise the hard RLIMIT_NOFILE, e.g. LimitNOFILE= in the systemd unit)"
    );
    fitted
}

/// Raises the soft descriptor limit to the hard one and returns it.
fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

impl Drop for RunningResolver {
    /// A resolver dropped without `shutdown` still stops its UDP threads
    /// (they would otherwise serve the socket for the life of the process).
    fn drop(&mut self) {
        self.udp_stop.store(true, Ordering::Relaxed);
        let _ = self.tcp_stop.send(true);
    }
}

/// A blocking UDP socket for one fast-path thread, with a receive timeout so
/// the thread notices shutdown.
fn bind_udp(address: SocketAddr, reuse_port: bool) -> Result<std::net::UdpSocket, ResolverError> {
    let error = |source| ResolverError::Bind {
        address,
        protocol: "udp",
        cause: source,
    };
    let socket = Socket::new(Domain::for_address(address), Type::DGRAM, Some(Protocol::UDP)).map_err(error)?;
    if address.is_ipv6() {
        socket.set_only_v6(true).map_err(error)?;
    }
    if reuse_port {
        socket.set_reuse_port(true).map_err(error)?;
    }
    socket.set_read_timeout(Some(udp::STOP_CHECK)).map_err(error)?;
    socket.bind(&address.into()).map_err(error)?;
    Ok(socket.into())
}

fn bind_tcp(address: SocketAddr) -> Result<tokio::net::TcpListener, ResolverError> {
    let error = |source| ResolverError::Bind {
        address,
        protocol: "tcp",
        cause: source,
    };
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP)).map_err(error)?;
    if address.is_ipv6() {
        socket.set_only_v6(true).map_err(error)?;
    }
    socket.set_reuse_address(true).map_err(error)?;
    socket.set_nonblocking(true).map_err(error)?;
    socket.bind(&address.into()).map_err(error)?;
    socket.listen(1024).map_err(error)?;
    tokio::net::TcpListener::from_std(socket.into()).map_err(error)
}
