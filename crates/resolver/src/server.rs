//! Listeners and lifecycle: binds every `server.listen` address over UDP and
//! TCP, serves until told to stop, then drains in-flight queries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_server::Server;
use shieldns_index::Snapshot;
use shieldns_metrics::Metrics;
use socket2::{Domain, Protocol, Socket, Type};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::info;

use crate::cache::AnswerCache;
use crate::config::{CacheConfig, ServerConfig, UpstreamConfig};
use crate::error::ResolverError;
use crate::fastpath::{self, FastPath};
use crate::handler::{Clock, ShieldHandler};
use crate::packet_cache::PacketCache;
use crate::upstream::Upstream;

/// A running resolver.
pub struct RunningResolver {
    server: Server<ShieldHandler>,
    handler: ShieldHandler,
    grace: Duration,
    udp_stop: Arc<AtomicBool>,
    udp_threads: Vec<std::thread::JoinHandle<()>>,
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
    clock: Clock,
) -> Result<RunningResolver, ResolverError> {
    if server.listen.is_empty() {
        return Err(ResolverError::Config {
            key: "server.listen",
            reason: "no listen address".into(),
        });
    }
    let upstream = Upstream::new(upstream, cache)?;
    let upstream_cache = match upstream {
        Upstream::Unbound(_) => None,
        Upstream::Recursive(_) | Upstream::Forward(_) => Some(AnswerCache::new(cache.clone())),
    };
    let fast = Arc::new(FastPath {
        snapshot: snapshot.clone(),
        clock,
        udp_payload: server.udp_payload,
        metrics: metrics.clone(),
        in_flight: Arc::new(tokio::sync::Semaphore::new(server.max_in_flight.max(1))),
    });
    let handler = ShieldHandler::new(snapshot, upstream, upstream_cache, server.udp_payload, metrics, clock);
    // UDP is served by our own loops (the fast path, falling back to the
    // handler); TCP by hickory's listener, which calls the same handler.
    let mut hickory = Server::new(handler.clone());
    // Every socket is bound before the first UDP thread starts, so a bind
    // error returns with no thread left serving.
    let mut udp_sockets = Vec::new();
    for &address in &server.listen {
        for _ in 0..server.udp_sockets.max(1) {
            udp_sockets.push((address, Arc::new(bind_udp(address, server.udp_sockets > 1)?)));
        }
        let tcp = bind_tcp(address)?;
        hickory.register_listener(tcp, Duration::from_secs(server.tcp_idle_timeout.max(1)), 64);
        info!(%address, "listening on UDP and TCP");
    }
    let udp_stop = Arc::new(AtomicBool::new(false));
    let mut udp_threads = Vec::new();
    let runtime = tokio::runtime::Handle::current();
    // `cache.max_entries` bounds the packet caches together: each UDP
    // socket's own cache gets its share.
    let per_socket = (cache.max_entries / u64::try_from(udp_sockets.len()).unwrap_or(1).max(1)).max(1);
    for (number, (address, socket)) in udp_sockets.into_iter().enumerate() {
        let (fast, handler, runtime, stop) = (fast.clone(), handler.clone(), runtime.clone(), udp_stop.clone());
        let packets = PacketCache::new(per_socket);
        let thread = std::thread::Builder::new()
            .name(format!("shieldns-udp-{number}"))
            .spawn(move || fastpath::serve_thread(socket, packets, fast, handler, runtime, stop));
        match thread {
            Ok(thread) => udp_threads.push(thread),
            Err(source) => {
                udp_stop.store(true, Ordering::Relaxed);
                return Err(ResolverError::Bind {
                    address,
                    protocol: "udp",
                    source,
                });
            }
        }
    }
    Ok(RunningResolver {
        server: hickory,
        handler,
        grace: Duration::from_secs(server.shutdown_grace),
        udp_stop,
        udp_threads,
    })
}

impl RunningResolver {
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
        let deadline = tokio::time::Instant::now() + self.grace;
        while self.handler.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.server
            .shutdown_gracefully()
            .await
            .map_err(|e| ResolverError::Server { reason: e.to_string() })
    }

    /// Waits until the server stops on its own (a listener failed).
    pub async fn wait(&mut self) -> Result<(), ResolverError> {
        self.server
            .block_until_done()
            .await
            .map_err(|e| ResolverError::Server { reason: e.to_string() })
    }
}

impl Drop for RunningResolver {
    /// A resolver dropped without `shutdown` still stops its UDP threads
    /// (they would otherwise serve the socket for the life of the process).
    fn drop(&mut self) {
        self.udp_stop.store(true, Ordering::Relaxed);
    }
}

/// A blocking UDP socket for one fast-path thread, with a receive timeout so
/// the thread notices shutdown.
fn bind_udp(address: SocketAddr, reuse_port: bool) -> Result<std::net::UdpSocket, ResolverError> {
    let error = |source| ResolverError::Bind {
        address,
        protocol: "udp",
        source,
    };
    let socket = Socket::new(Domain::for_address(address), Type::DGRAM, Some(Protocol::UDP)).map_err(error)?;
    if address.is_ipv6() {
        socket.set_only_v6(true).map_err(error)?;
    }
    if reuse_port {
        socket.set_reuse_port(true).map_err(error)?;
    }
    socket.set_read_timeout(Some(fastpath::STOP_CHECK)).map_err(error)?;
    socket.bind(&address.into()).map_err(error)?;
    Ok(socket.into())
}

fn bind_tcp(address: SocketAddr) -> Result<tokio::net::TcpListener, ResolverError> {
    let error = |source| ResolverError::Bind {
        address,
        protocol: "tcp",
        source,
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
