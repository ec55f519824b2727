//! The UDP listener: one OS thread per socket, batched receive and send.
//!
//! Each thread blocks in one `recvmmsg` for a batch, routes and answers
//! what the fast path can ([`crate::fastpath`]) into per-slot buffers,
//! sends those with one `sendmmsg`, and spawns the rest onto the Tokio
//! runtime, where the full handler answers them and the answer is sent
//! from the task.
//!
//! Key design decision: a thread of its own rather than a Tokio task. A
//! task must poll for readiness (`epoll_wait`), drain the socket until
//! `EAGAIN` and yield to the scheduler, three system calls and a scheduler
//! round per wake-up that a blocking `recvmmsg` does not pay. At moderate
//! load most wake-ups carry a single datagram, so that overhead was half
//! the CPU per answer.

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg, sendto};
use shieldns_metrics::{Discard, Metrics, Transport};
use smallvec::SmallVec;
use tracing::debug;

use crate::fastpath::{Answered, FastPath, Outcome, Route, screen};
use crate::handler::{Responded, ShieldHandler};
use crate::packet_cache::{Arrivals, PacketCache, PacketFiller, PacketKey};
use crate::proxy::Origin;
use crate::ratelimit::Limit;
use crate::tally::Tally;
use crate::wire::{self, Query, Question};

/// Datagrams moved per `recvmmsg`/`sendmmsg` call.
const BATCH: usize = 64;
/// Receive buffer per datagram: queries are small, and a longer one is
/// truncated by the kernel and then refused by the parser.
const DATAGRAM: usize = 4096;
/// How often a UDP thread blocked in `recvmmsg` wakes to see whether it
/// should stop (the socket's `SO_RCVTIMEO`).
pub(crate) const STOP_CHECK: Duration = Duration::from_millis(100);

/// Buffers and kernel message headers for batched receive and send, reused
/// for the thread's lifetime; the slices that borrow the buffers are built
/// on the stack per call, so a batch allocates nothing.
pub(crate) struct Batch {
    buffers: Box<[[u8; DATAGRAM]; BATCH]>,
    /// The question parsed from each received datagram (stale unless its
    /// route says it parsed), and where the datagram goes.
    questions: Vec<Question>,
    routes: [Route; BATCH],
    /// Where each received datagram's DNS message starts (after a PROXY
    /// header) and whose it is (the sender, or the client a trusted proxy
    /// names).
    origins: [(usize, SocketAddr); BATCH],
    received: Vec<(usize, SocketAddr)>,
    pub(crate) answers: Vec<(Vec<u8>, SocketAddr)>,
    /// What each answer in `answers` was, for the metrics; its length is
    /// the number of answers this batch holds.
    pub(crate) counts: Vec<Answered>,
    /// Destination addresses of the answers, in the kernel's form.
    destinations: Vec<Option<SockaddrStorage>>,
    /// How many datagrams the next receive offers room for: the kernel
    /// message headers of every offered slot are filled per call, so under
    /// light load (one datagram per wake-up) offering all [`BATCH`] would
    /// cost more than the datagram. Doubles while receives come back full,
    /// halves while they come back mostly empty.
    offered: usize,
    receive_headers: MultiHeaders<SockaddrStorage>,
    send_headers: MultiHeaders<SockaddrStorage>,
}

/// The fewest datagrams a receive offers room for.
const MIN_OFFERED: usize = 4;

impl Batch {
    fn new() -> Self {
        Self {
            buffers: Box::new([[0; DATAGRAM]; BATCH]),
            questions: vec![Question::EMPTY; BATCH],
            routes: [Route::Handler; BATCH],
            origins: [(0, SocketAddr::from(([0, 0, 0, 0], 0))); BATCH],
            received: Vec::with_capacity(BATCH),
            answers: (0..BATCH)
                .map(|_| (Vec::with_capacity(1232), SocketAddr::from(([0, 0, 0, 0], 0))))
                .collect(),
            counts: Vec::with_capacity(BATCH),
            destinations: Vec::with_capacity(BATCH),
            offered: MIN_OFFERED,
            receive_headers: MultiHeaders::preallocate(BATCH, None),
            send_headers: MultiHeaders::preallocate(BATCH, None),
        }
    }

    /// Waits for at least one datagram (or the socket's receive timeout),
    /// then takes up to `offered` in the same system call.
    fn receive(&mut self, fd: RawFd) -> nix::Result<()> {
        self.received.clear();
        // Only the offered slices are built. A Vec, not a SmallVec: nix ties
        // the slices' borrow to the buffers' lifetime, which only Vec's
        // drop (it may dangle) accepts for a local.
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .buffers
            .iter_mut()
            .take(self.offered)
            .map(|buffer| [IoSliceMut::new(buffer)])
            .collect();
        let results = recvmmsg(
            fd,
            &mut self.receive_headers,
            slices.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        for message in results {
            if let Some(peer) = message.address.as_ref().and_then(socket_addr) {
                self.received.push((message.bytes, peer));
            }
        }
        self.offered = if self.received.len() >= self.offered {
            (self.offered * 2).min(BATCH)
        } else if self.received.len() * 4 <= self.offered {
            (self.offered / 2).max(MIN_OFFERED)
        } else {
            self.offered
        };
        Ok(())
    }

    /// Sends the answers gathered in this batch, looping while the kernel
    /// takes only part of them. The socket is blocking, so a full send
    /// buffer slows this thread down instead of dropping answers.
    fn send(&mut self, fd: RawFd) {
        let answered = self.counts.len();
        let answers = self.answers.get(..answered).unwrap_or_default();
        self.destinations.clear();
        self.destinations
            .extend(answers.iter().map(|(_, peer)| Some(SockaddrStorage::from(*peer))));
        // On the stack: only the answered slots are built.
        let slices: SmallVec<[[IoSlice<'_>; 1]; BATCH]> =
            answers.iter().map(|(bytes, _)| [IoSlice::new(bytes)]).collect();
        let mut sent = 0;
        while sent < answered {
            let (Some(slices), Some(destinations)) = (slices.get(sent..answered), self.destinations.get(sent..)) else {
                break;
            };
            match sendmmsg(fd, &mut self.send_headers, slices, destinations, [], MsgFlags::empty()) {
                Ok(results) => sent += results.count().max(1),
                Err(nix::errno::Errno::EINTR) => {}
                Err(error) => {
                    // An unreachable or refused peer fails its own datagram
                    // (and the call, when it comes first); skip it.
                    debug!(%error, "UDP send failed");
                    sent += 1;
                }
            }
        }
    }
}

fn socket_addr(storage: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::V4(std::net::SocketAddrV4::from(*v4)));
    }
    storage
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(std::net::SocketAddrV6::from(*v6)))
}

/// Serves one UDP socket on the calling (dedicated) thread until `stop` is
/// set.
///
/// `packets` is this socket's own packet cache: the kernel hands a client
/// (its address and port) to the same `SO_REUSEPORT` socket every time, so
/// its repeated names hit there, and the thread owns it outright (see
/// [`PacketCache`]); the slow path's answers come back through `filler`
/// and `arrivals`, its fill channel.
pub(crate) fn serve_thread(
    socket: Arc<std::net::UdpSocket>,
    mut packets: PacketCache,
    (filler, arrivals): (PacketFiller, Arrivals),
    fast: Arc<FastPath>,
    handler: ShieldHandler,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) {
    let fd = socket.as_raw_fd();
    let mut snapshots = arc_swap::Cache::new(fast.snapshot.clone());
    let mut batch = Batch::new();
    let mut tally = Tally::new(&fast.metrics);
    while !stop.load(Ordering::Relaxed) {
        match batch.receive(fd) {
            Ok(()) => {}
            // The receive timeout: look at `stop` again, and let go of a
            // replaced snapshot, which the cache would otherwise keep alive
            // (a whole index) until the next datagram.
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                tally.flush(&fast.metrics, Instant::now());
                snapshots.load();
                arrivals.store(&mut packets);
                continue;
            }
            Err(error) => {
                // ICMP errors surface here on Linux; they concern an earlier
                // send, not this socket's health.
                debug!(%error, "UDP receive failed");
                continue;
            }
        }
        // One clock reading per batch: every datagram in it arrived by now.
        let received_at = Instant::now();
        batch.counts.clear();
        let snapshot = snapshots.load();
        // Answers the slow path sent since the last batch: this batch may
        // repeat their names.
        arrivals.store(&mut packets);
        // Passes over the batch, so that each pass's memory misses
        // (packet-cache tags; cached entries and index buckets; then the
        // answers) are in flight together rather than one query at a time.
        // First: parse each datagram once, into its slot, and route it.
        for ((&(length, peer), buffer), ((question, route), origin)) in
            batch.received.iter().zip(batch.buffers.iter()).zip(
                batch
                    .questions
                    .iter_mut()
                    .zip(batch.routes.iter_mut())
                    .zip(batch.origins.iter_mut()),
            )
        {
            *route = Route::Handler;
            *origin = (0, peer);
            let Some(datagram) = buffer.get(..length) else {
                continue;
            };
            // A trusted proxy's PROXY header names the client; anyone
            // else's is dropped.
            if fast.proxies.is_enabled() {
                match fast.proxies.datagram(datagram, peer) {
                    Ok(Origin::Direct { header }) => *origin = (header, peer),
                    Ok(Origin::Relayed { client, header }) => *origin = (header, client),
                    Err(reason) => {
                        *route = Route::Discard(reason);
                        continue;
                    }
                }
            }
            let (offset, client) = *origin;
            let Some(packet) = datagram.get(offset..) else {
                continue;
            };
            // Before anything is parsed: no answer to an answer or to a
            // datagram without a header, and nothing but REFUSED (or
            // nothing) for a source the access list refuses.
            let Some(profile) = screen(packet, client.ip(), snapshot).map_err(|r| *route = r).ok() else {
                if matches!(*route, Route::Refuse) && fast.refusals.check(client.ip(), received_at) != Limit::Pass {
                    *route = Route::Discard(Discard::RateLimited);
                }
                continue;
            };
            match fast
                .rate_limit
                .as_ref()
                .map(|limiter| limiter.check(client.ip(), received_at))
            {
                None | Some(Limit::Pass) => {}
                Some(Limit::Drop) => {
                    *route = Route::Discard(Discard::RateLimited);
                    continue;
                }
                Some(Limit::Slip) => {
                    *route = Route::Slip;
                    continue;
                }
            }
            if wire::parse_into(packet, question).is_some() {
                *route = fast.route(&packets, &Query { packet, question }, profile, snapshot);
            }
        }
        let slots = batch.received.len();
        // Then probe the packet cache for every cacheable query, in a loop
        // of nothing else, so that all the probes' reads overlap.
        for route in batch.routes.iter_mut().take(slots) {
            if let Route::Lists {
                cache_tag: Some(tag),
                cached,
                ..
            } = route
            {
                *cached = packets.probe(*tag);
            }
        }
        let routes = batch.routes.get(..slots).unwrap_or_default();
        if slots > 1 {
            // Next: touch the cached entries the probes found, and warm the
            // index for the other names (see `Snapshot::warmer`). With one
            // datagram there is nothing to overlap.
            let mut touched = 0u64;
            let mut warmer = snapshot.warmer();
            for (question, route) in batch.questions.iter().zip(routes) {
                match route {
                    Route::Handler | Route::Discard(_) | Route::Refuse | Route::Slip => {}
                    Route::Lists {
                        cached: Some(probed), ..
                    } => touched ^= packets.touch(*probed),
                    Route::Lists { cached: None, .. } => warmer.add(question.name.as_str()),
                }
            }
            std::hint::black_box(touched ^ warmer.load());
        }
        // Last: answer.
        for ((((&(length, peer), buffer), question), &route), &(offset, client)) in batch
            .received
            .iter()
            .zip(batch.buffers.iter())
            .zip(batch.questions.iter())
            .zip(routes)
            .zip(batch.origins.iter())
        {
            // The DNS message (after a PROXY header); answers go back to
            // the sender, the proxy if there is one.
            let packet = buffer.get(offset..length).unwrap_or_default();
            match route {
                Route::Discard(reason) => {
                    fast.discards.note(reason, client.ip());
                    continue;
                }
                Route::Refuse => {
                    refuse(fd, packet, peer, &fast.metrics, received_at);
                    continue;
                }
                Route::Slip => {
                    slip(fd, packet, peer, &fast.metrics);
                    continue;
                }
                Route::Handler | Route::Lists { .. } => {}
            }
            let Some((out, destination)) = batch.answers.get_mut(batch.counts.len()) else {
                break;
            };
            out.clear();
            let query = Query { packet, question };
            match fast.answer(&mut packets, &query, route, snapshot, received_at, out) {
                Outcome::Answered(answered) => {
                    *destination = peer;
                    batch.counts.push(answered);
                }
                Outcome::Slow(key) => {
                    let Ok(permit) = fast.in_flight.clone().try_acquire_owned() else {
                        fast.metrics.overload_drop();
                        continue;
                    };
                    let request = packet.to_vec();
                    let cache = key.map(|k| (k, filler.clone()));
                    let (handler, socket) = (handler.clone(), socket.clone());
                    runtime.spawn(async move {
                        answer_slowly(&handler, request, client, peer, &socket, cache).await;
                        drop(permit);
                    });
                }
            }
        }
        batch.send(fd);
        tally.count_batch(&fast.metrics, snapshot, &batch.counts, &batch.answers, received_at);
    }
    tally.flush(&fast.metrics, Instant::now());
}

/// Sends [`bare_answer`] straight from the UDP thread: REFUSED and slips are
/// rare and small, and never reach the runtime. `None` when there is none
/// or the send failed.
fn send_bare(fd: RawFd, query: &[u8], peer: SocketAddr, tc: bool, flags_low: u8) -> Option<()> {
    let answer = wire::bare_answer(query, tc, flags_low)?;
    match sendto(fd, &answer, &SockaddrStorage::from(peer), MsgFlags::MSG_DONTWAIT) {
        Ok(_) => Some(()),
        Err(error) => {
            debug!(%error, %peer, "cannot send an answer without records");
            None
        }
    }
}

/// Sends REFUSED (RFC 1035 §4.1.1) for `packet`: its header and question,
/// never larger than the query.
fn refuse(fd: RawFd, packet: &[u8], peer: SocketAddr, metrics: &Metrics, received_at: Instant) {
    metrics.refused();
    if send_bare(fd, packet, peer, false, 0x05).is_some() {
        metrics.query(None, Transport::Udp, 5, received_at.elapsed());
    }
}

/// Sends the slip answer for `packet`: its header and question, with QR,
/// TC and RA set and no records, no larger than the query.
fn slip(fd: RawFd, packet: &[u8], peer: SocketAddr, metrics: &Metrics) {
    metrics.rate_limit_slip();
    let _ = send_bare(fd, packet, peer, true, 0x80);
}

/// Sends one datagram from an async task on the (blocking) UDP socket
/// without blocking the runtime: `MSG_DONTWAIT`, and a short sleep and retry
/// while the send buffer is full. Gives up after about 50 ms; the client
/// retries an unanswered UDP query.
async fn send_datagram(socket: &std::net::UdpSocket, bytes: &[u8], peer: SocketAddr) -> std::io::Result<()> {
    let address = SockaddrStorage::from(peer);
    for _ in 0..50 {
        match sendto(socket.as_raw_fd(), bytes, &address, MsgFlags::MSG_DONTWAIT) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(std::io::ErrorKind::WouldBlock.into())
}

/// Hands a datagram to the full handler and sends its answer to `peer`
/// (the client, or the proxy that relayed it for `client`), offering an
/// allowed name's answer to the packet cache of the thread that received
/// the query.
///
/// Only datagrams [`screen`] let through get here: a header with QR=0 from
/// a client the access list allows.
async fn answer_slowly(
    handler: &ShieldHandler,
    packet: Vec<u8>,
    client: SocketAddr,
    peer: SocketAddr,
    socket: &std::net::UdpSocket,
    cache: Option<(PacketKey, PacketFiller)>,
) {
    let Some(Responded { bytes, unblocked }) = handler.respond_datagram(packet, client).await else {
        return;
    };
    if let Err(error) = send_datagram(socket, &bytes, peer).await {
        debug!(%error, %peer, "cannot send an answer");
        return;
    }
    if let Some((key, filler)) = cache
        && unblocked
        && let Some(question_end) = wire::question_end(&bytes)
    {
        filler.offer(key, bytes, question_end);
    }
}
