//! The UDP fast path: blocked names and cached answers straight from wire
//! bytes.
//!
//! Each UDP socket gets one OS thread that reads a batch of datagrams,
//! parses only each one's header, question and optional OPT record, and
//! asks the policy snapshot. A plain list block is encoded directly into a
//! reused buffer; an allowed name whose encoded answer sits in the thread's
//! own packet cache is copied out with its ID, flags, question case and TTLs
//! patched. Everything else (other opcodes, policy rewrites, cache misses,
//! malformed packets) goes to the full hickory handler, whose UDP answers for
//! allowed names fill that packet cache. The fast path therefore never
//! decides differently from the handler: it only serves the two answers
//! whose bytes it can produce exactly, and it does so without allocating.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use shieldns_index::{BlockResponse, Hit, ListId, Matched, Profile, ProfileId, RuleAction, Snapshot, Verdict};
use shieldns_metrics::{AnswerTally, Discard, Metrics};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg, sendto};
use smallvec::SmallVec;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::debug;

use crate::discard::Discards;
use crate::handler::{Clock, ShieldHandler};
use crate::packet_cache::{CacheLookup, PacketCache, PacketFiller, PacketKey, Probed};
use crate::ratelimit::{Limit, RateLimiter};

/// Record types and classes used on the wire.
const TYPE_A: u16 = 1;
const TYPE_SOA: u16 = 6;
const TYPE_AAAA: u16 = 28;
pub(crate) const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
pub(crate) const EDE_OPTION: u16 = 15;

/// The parts of a query the fast path needs, parsed from the datagram.
/// Each UDP thread keeps one per batch slot and parses into it in place
/// ([`parse_into`]): a batch moves no parsed names around.
#[derive(Clone, Debug)]
pub(crate) struct Question {
    /// End of the question section.
    pub(crate) question_end: usize,
    /// The query name, lower case, dotted, without the trailing dot.
    pub(crate) name: NameBytes,
    /// The number of labels in the name.
    labels: u8,
    pub(crate) qtype: u16,
    /// The client's EDNS payload size, when it sent an OPT record.
    pub(crate) edns_payload: Option<u16>,
    pub(crate) dnssec_ok: bool,
}

impl Question {
    const EMPTY: Self = Self {
        question_end: 0,
        name: NameBytes {
            bytes: [0; 256],
            len: 0,
        },
        labels: 0,
        qtype: 0,
        edns_payload: None,
        dnssec_ok: false,
    };

    /// The largest response this client accepts over UDP.
    fn max_response(&self, server_payload: u16) -> usize {
        usize::from(self.edns_payload.map_or(512, |p| p.clamp(512, server_payload.max(512))))
    }
}

/// A parsed query: the datagram and what [`parse_into`] read from it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Query<'a> {
    pub(crate) packet: &'a [u8],
    pub(crate) question: &'a Question,
}

impl Query<'_> {
    pub(crate) fn id(&self) -> [u8; 2] {
        [self.packet[0], self.packet[1]]
    }
}

impl std::ops::Deref for Query<'_> {
    type Target = Question;

    fn deref(&self) -> &Question {
        self.question
    }
}

/// A query name in presentation form.
#[derive(Clone, Debug)]
pub(crate) struct NameBytes {
    bytes: [u8; 256],
    len: usize,
}

impl NameBytes {
    pub(crate) fn as_str(&self) -> &str {
        // Only `[a-z0-9_-]` and dots are ever written (see `parse`).
        std::str::from_utf8(self.bytes.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

/// Parses a standard query into `question`, or returns `None` for anything
/// the fast path leaves to the full handler (`question` then holds garbage).
fn parse_into(packet: &[u8], question: &mut Question) -> Option<()> {
    let header = packet.get(..12)?;
    // QR=0, opcode QUERY, TC=0; one question, no answers or authorities, at
    // most one additional record (the OPT).
    if header[2] & 0xfa != 0 || header[4..8] != [0, 1, 0, 0] || header[8..10] != [0, 0] || header[10] != 0 {
        return None;
    }
    let additional = header[11];
    if additional > 1 {
        return None;
    }
    let name = &mut question.name;
    name.len = 0;
    let mut labels = 0u8;
    let mut at = 12;
    loop {
        let length = usize::from(*packet.get(at)?);
        at += 1;
        if length == 0 {
            break;
        }
        // Compression pointers and extended labels never appear in a
        // well-formed question; escapes are left to the full parser.
        if length > 63 {
            return None;
        }
        let label = packet.get(at..at + length)?;
        if name.len > 0 {
            *name.bytes.get_mut(name.len)? = b'.';
            name.len += 1;
        }
        for &byte in label {
            let lower = byte.to_ascii_lowercase();
            if !(lower.is_ascii_lowercase() || lower.is_ascii_digit() || lower == b'-' || lower == b'_') {
                return None;
            }
            *name.bytes.get_mut(name.len)? = lower;
            name.len += 1;
        }
        labels = labels.checked_add(1)?;
        at += length;
    }
    let qtype = u16::from_be_bytes(packet.get(at..at + 2)?.try_into().ok()?);
    let qclass = u16::from_be_bytes(packet.get(at + 2..at + 4)?.try_into().ok()?);
    let question_end = at + 4;
    if qclass != CLASS_IN || name.len == 0 {
        return None;
    }
    let (edns_payload, dnssec_ok) = if additional == 1 {
        // The OPT record: root owner, TYPE 41, CLASS = payload size, TTL =
        // extended rcode, version, flags; its options are not needed here.
        let opt = packet.get(question_end..question_end + 11)?;
        if opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != TYPE_OPT || opt[6] != 0 {
            return None;
        }
        let rdlength = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
        if packet.len() != question_end + 11 + rdlength {
            return None;
        }
        (Some(u16::from_be_bytes([opt[3], opt[4]])), opt[7] & 0x80 != 0)
    } else {
        if packet.len() != question_end {
            return None;
        }
        (None, false)
    };
    question.question_end = question_end;
    question.labels = labels;
    question.qtype = qtype;
    question.edns_payload = edns_payload;
    question.dnssec_ok = dnssec_ok;
    Some(())
}

//------------ Block answers --------------------------------------------------

/// Writes the answer for a list block, or returns `false` when the hit needs
/// the full handler (RPZ local data, drop).
fn write_block(
    out: &mut Vec<u8>,
    query: &Query<'_>,
    snapshot: &Snapshot,
    profile: &Profile,
    hit: &Hit,
    payload: u16,
) -> bool {
    let nodata = match hit.action {
        RuleAction::Block | RuleAction::BlockImportant => false,
        RuleAction::NoData => true,
        _ => return false,
    };
    let ttl = profile.block_ttl.to_be_bytes();
    // The address of a NULL or sinkhole answer, in a fixed buffer (no
    // allocation): its first `length` bytes.
    let address: Option<([u8; 16], usize)> = if nodata {
        None
    } else {
        match (profile.block_response, query.qtype) {
            (BlockResponse::Null, TYPE_A) => Some(([0; 16], 4)),
            (BlockResponse::Null, TYPE_AAAA) => Some(([0; 16], 16)),
            (BlockResponse::Sinkhole, TYPE_A) => profile.sinkhole_ipv4.map(|a| {
                let mut bytes = [0; 16];
                bytes[..4].copy_from_slice(&a.octets());
                (bytes, 4)
            }),
            (BlockResponse::Sinkhole, TYPE_AAAA) => profile.sinkhole_ipv6.map(|a| (a.octets(), 16)),
            _ => None,
        }
    };
    let rcode = match profile.block_response {
        _ if nodata || address.is_some() => 0,
        BlockResponse::Nxdomain => 3,
        BlockResponse::Refused => 5,
        BlockResponse::Nodata | BlockResponse::Null | BlockResponse::Sinkhole => 0,
    };
    let with_soa = address.is_none() && rcode != 5;
    write_header(out, query, rcode, u16::from(address.is_some()), u16::from(with_soa));
    if let Some((bytes, length)) = &address {
        // The owner is the question name: a pointer to offset 12.
        let [type_high, type_low] = query.qtype.to_be_bytes();
        let [ttl0, ttl1, ttl2, ttl3] = ttl;
        #[allow(clippy::cast_possible_truncation)] // 4 or 16
        let rdlength = *length as u8;
        out.extend_from_slice(&[
            0xc0, 0x0c, type_high, type_low, 0, 1, ttl0, ttl1, ttl2, ttl3, 0, rdlength,
        ]);
        out.extend_from_slice(bytes.get(..*length).unwrap_or_default());
    }
    if with_soa {
        // The SOA is owned by the blocked name that matched: a pointer to
        // that suffix inside the question. The rest is the constant record
        // with the profile's TTL (record TTL and SOA minimum) patched in.
        let labels = match hit.matched {
            Matched::Name { labels, .. } | Matched::Digest { labels } => labels,
            Matched::Pattern | Matched::AnswerIp { .. } => query.labels,
        };
        out.extend_from_slice(&suffix_pointer(query, labels));
        let mut record = BLOCK_SOA_RECORD;
        if let Some(field) = record.get_mut(4..8) {
            field.copy_from_slice(&ttl);
        }
        if let Some(field) = record.get_mut(BLOCK_SOA_RECORD.len() - 4..) {
            field.copy_from_slice(&ttl);
        }
        out.extend_from_slice(&record);
    }
    if query.edns_payload.is_some() {
        write_opt_with_ede(out, query, snapshot, hit, payload);
    }
    true
}

/// The response header: ID and the RD and CD bits from the query, QR and RA
/// set, one question.
fn write_header(out: &mut Vec<u8>, query: &Query<'_>, rcode: u8, answers: u16, authorities: u16) {
    let [id0, id1] = query.id();
    let [an0, an1] = answers.to_be_bytes();
    let [ns0, ns1] = authorities.to_be_bytes();
    let additional = u8::from(query.edns_payload.is_some());
    let flags0 = 0x80 | (query.packet[2] & 0x01);
    let flags1 = 0x80 | (query.packet[3] & 0x10) | rcode;
    out.extend_from_slice(&[id0, id1, flags0, flags1, 0, 1, an0, an1, ns0, ns1, 0, additional]);
    // The question exactly as asked, in the client's case.
    out.extend_from_slice(&query.packet[12..query.question_end]);
}

/// A compression pointer to the question name's last `labels` labels.
fn suffix_pointer(query: &Query<'_>, labels: u8) -> [u8; 2] {
    let mut at = 12usize;
    for _ in 0..query.labels.saturating_sub(labels) {
        at += 1 + usize::from(query.packet.get(at).copied().unwrap_or(0));
    }
    let pointer = 0xc000 | u16::try_from(at).unwrap_or(12);
    pointer.to_be_bytes()
}

/// MNAME and RNAME of the block answer's SOA, `blocked.shieldns.invalid.`
/// and `hostmaster.shieldns.invalid.`, in wire form (the handler builds the
/// same names; the tests compare both answers).
const BLOCK_SOA_NAMES: &[u8] = b"\x07blocked\x08shieldns\x07invalid\x00\x0ahostmaster\x08shieldns\x07invalid\x00";

/// SERIAL, REFRESH, RETRY, EXPIRE of the block SOA; MINIMUM is the TTL.
const BLOCK_SOA_TIMERS: [u32; 4] = [1, 3600, 600, 86_400];

/// The block SOA record after its owner name, with a TTL of 0 in the record
/// and in MINIMUM (the last four bytes), which `write_block` patches: TYPE,
/// CLASS, TTL, RDLENGTH, then RDATA (the names and five 32-bit fields).
const BLOCK_SOA_RECORD: [u8; 10 + BLOCK_SOA_NAMES.len() + 20] = {
    let mut record = [0u8; 10 + BLOCK_SOA_NAMES.len() + 20];
    let [type_high, type_low] = TYPE_SOA.to_be_bytes();
    record[0] = type_high;
    record[1] = type_low;
    record[3] = 1; // CLASS IN
    let rdlength = (BLOCK_SOA_NAMES.len() + 20) as u16;
    let [rd_high, rd_low] = rdlength.to_be_bytes();
    record[8] = rd_high;
    record[9] = rd_low;
    let mut at = 0;
    while at < BLOCK_SOA_NAMES.len() {
        record[10 + at] = BLOCK_SOA_NAMES[at];
        at += 1;
    }
    let mut timer = 0;
    while timer < BLOCK_SOA_TIMERS.len() {
        let bytes = BLOCK_SOA_TIMERS[timer].to_be_bytes();
        let mut byte = 0;
        while byte < 4 {
            record[10 + BLOCK_SOA_NAMES.len() + timer * 4 + byte] = bytes[byte];
            byte += 1;
        }
        timer += 1;
    }
    record
};

/// The OPT record with the EDE option: `list=NAME category=CATEGORY`.
fn write_opt_with_ede(out: &mut Vec<u8>, query: &Query<'_>, snapshot: &Snapshot, hit: &Hit, payload: u16) {
    let [payload_high, payload_low] = u16::try_from(query.max_response(payload))
        .unwrap_or(u16::MAX)
        .to_be_bytes();
    let do_bit = if query.dnssec_ok { 0x80 } else { 0 };
    let [code_high, code_low] = snapshot.ede_code(hit).to_be_bytes();
    // Root owner, TYPE OPT, CLASS = payload, TTL = extended rcode, version,
    // DO; RDLENGTH and the option length are patched below.
    let [opt_high, opt_low] = TYPE_OPT.to_be_bytes();
    let [ede_high, ede_low] = EDE_OPTION.to_be_bytes();
    let rdlength_at = out.len() + 9;
    out.extend_from_slice(&[
        0,
        opt_high,
        opt_low,
        payload_high,
        payload_low,
        0,
        0,
        do_bit,
        0,
        0,
        0,
        ede_high,
        ede_low,
        0,
        0,
    ]);
    out.extend_from_slice(&[code_high, code_low]);
    match snapshot.list(hit.list) {
        Some(list) => {
            out.extend_from_slice(b"list=");
            out.extend_from_slice(list.policy.name.as_bytes());
            if let Some(category) = &list.policy.category {
                out.extend_from_slice(b" category=");
                out.extend_from_slice(category.as_bytes());
            }
        }
        None => out.extend_from_slice(b"blocked by policy"),
    }
    let rdlength = u16::try_from(out.len() - rdlength_at - 2).unwrap_or(0);
    let option_length = rdlength.saturating_sub(4);
    if let Some(lengths) = out.get_mut(rdlength_at..rdlength_at + 6) {
        lengths[..2].copy_from_slice(&rdlength.to_be_bytes());
        lengths[4..].copy_from_slice(&option_length.to_be_bytes());
    }
}

//------------ The UDP loop ---------------------------------------------------

/// What the fast path did with a datagram.
enum Outcome {
    /// `out` holds the answer.
    Answered(Answered),
    /// The full handler answers; an allowed name's answer may be cached
    /// under this key.
    Slow(Option<PacketKey>),
}

/// What the metrics need of a fast-path answer, counted once the batch is
/// sent.
#[derive(Clone, Copy, Debug)]
struct Answered {
    profile: ProfileId,
    /// The list and EDE code of a block; `None` for a packet-cache hit.
    block: Option<(ListId, u16)>,
}

/// Shared state of every UDP worker.
#[derive(Debug)]
pub(crate) struct FastPath {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) clock: Clock,
    pub(crate) udp_payload: u16,
    pub(crate) metrics: Arc<Metrics>,
    /// Bounds the UDP queries the full handler works on at once.
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
    pub(crate) discards: Arc<Discards>,
    /// `[server.rate_limit]`, for allowed clients.
    pub(crate) rate_limit: Option<RateLimiter>,
    /// The budget of REFUSED answers for refused sources (always on).
    pub(crate) refusals: RateLimiter,
}

impl FastPath {
    /// What the policy says about `query` from `client` before the lists
    /// are asked, and (for a cacheable query) where its answer may sit in
    /// the packet cache: the first step of a batch.
    fn route(&self, packets: &PacketCache, query: &Query<'_>, profile_id: ProfileId, snapshot: &Snapshot) -> Route {
        let profile = snapshot.profile(profile_id);
        // Policy beyond lists (bypass, query types, safe search, DNS64,
        // rewrites) is the handler's: its answers are not plain bytes.
        if profile.bypass_protection
            || !profile.blocked_qtypes.is_empty()
            || profile.safe_search.is_enabled()
            || (profile.dns64.is_some() && query.qtype == TYPE_AAAA)
        {
            return Route::Handler;
        }
        // With schedules, the answer checks (CNAME targets against the
        // lists) depend on the time, so a cached answer checked in one window
        // must not be served in another; and queries the query log wants go
        // through the handler, which builds the log event.
        // A CD query may be answered with data that failed validation, which
        // must never reach the packet cache a non-CD query is answered from.
        let checking_disabled = query.packet.get(3).is_some_and(|flags| flags & 0x10 != 0);
        let cacheable = profile.schedules.is_empty() && !self.metrics.logs(false) && !checking_disabled;
        let lookup = CacheLookup {
            generation: snapshot.generation(),
            profile: profile_id.index(),
        };
        Route::Lists {
            profile: profile_id,
            cache_tag: cacheable.then(|| packets.tag_of(query, lookup)),
            cached: None,
        }
    }

    /// Answers `query`, routed by [`Self::route`], into `out`, or says why
    /// the handler must.
    fn answer(
        &self,
        packets: &mut PacketCache,
        query: &Query<'_>,
        route: Route,
        snapshot: &Snapshot,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let Route::Lists {
            profile: profile_id,
            cache_tag,
            cached,
        } = route
        else {
            return Outcome::Slow(None);
        };
        let profile = snapshot.profile(profile_id);
        let lookup = CacheLookup {
            generation: snapshot.generation(),
            profile: profile_id.index(),
        };
        // Cached answers before the index. An entry exists only for an
        // answer to a query this thread let through under this very snapshot
        // and profile (both are in its key), that is one `decide_at` allowed;
        // without schedules that verdict cannot have changed since, so the
        // lookup stands in for the index walk and its cache misses.
        if let Some(probed) = cached
            && packets.answer_probed(probed, query, lookup, query.max_response(self.udp_payload), now, out)
        {
            return Outcome::Answered(Answered {
                profile: profile_id,
                block: None,
            });
        }
        // Only schedules make a verdict depend on the time; reading the clock
        // for every query would cost more than the rest of a block answer.
        let at = if profile.schedules.is_empty() {
            jiff::Timestamp::UNIX_EPOCH
        } else {
            self.clock.now()
        };
        match snapshot.decide_at(query.name.as_str(), profile_id, at) {
            // Queries the query log wants go through the handler, which
            // builds the log event.
            Verdict::Block(_) if self.metrics.logs(true) => Outcome::Slow(None),
            Verdict::Block(hit) => {
                if write_block(out, query, snapshot, profile, &hit, self.udp_payload) {
                    Outcome::Answered(Answered {
                        profile: profile_id,
                        block: Some((hit.list, snapshot.ede_code(&hit))),
                    })
                } else {
                    out.clear();
                    Outcome::Slow(None)
                }
            }
            Verdict::Allow(_) | Verdict::Pass if cache_tag.is_none() => Outcome::Slow(None),
            // A packet-cache miss wrote nothing into `out`.
            Verdict::Allow(_) | Verdict::Pass => Outcome::Slow(Some(PacketKey {
                generation: lookup.generation,
                profile: lookup.profile,
                name: query.name.as_str().as_bytes().to_vec(),
                qtype: query.qtype,
                edns: query.edns_payload.is_some(),
                dnssec_ok: query.dnssec_ok,
            })),
        }
    }
}

/// Where a received datagram goes, decided for the whole batch before any
/// of it is answered.
#[derive(Clone, Copy, Debug)]
enum Route {
    /// No answer: a response, no header, or unparsable from a refused source.
    Discard(Discard),
    /// REFUSED, answered here: a query from a source the access list refuses.
    Refuse,
    /// An empty TC=1 answer, here: over the rate limit, but slipped through
    /// so that a real client retries over TCP.
    Slip,
    /// The full handler: not a standard query, or policy beyond lists.
    Handler,
    /// The lists decide for this profile. When the answer may be cached,
    /// `cache_tag` is its packet-cache tag, and `cached` where the probe
    /// found that tag; an allowed name's answer missing there is offered to
    /// the cache.
    Lists {
        profile: ProfileId,
        cache_tag: Option<u64>,
        cached: Option<Probed>,
    },
}

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
struct Batch {
    buffers: Box<[[u8; DATAGRAM]; BATCH]>,
    /// The question parsed from each received datagram (stale unless its
    /// route says it parsed), and where the datagram goes.
    questions: Vec<Question>,
    routes: [Route; BATCH],
    received: Vec<(usize, SocketAddr)>,
    answers: Vec<(Vec<u8>, SocketAddr)>,
    /// What each answer in `answers` was, for the metrics; its length is
    /// the number of answers this batch holds.
    counts: Vec<Answered>,
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
/// set: blocks in one `recvmmsg` for a batch, answers what the fast path can
/// into per-slot buffers, sends those with one `sendmmsg`, and spawns the
/// rest onto the Tokio runtime, where the full handler answers them.
///
/// A thread of its own rather than a Tokio task: a task must poll for
/// readiness (`epoll_wait`), drain the socket until `EAGAIN` and yield to the
/// scheduler, three system calls and a scheduler round per wake-up that a
/// blocking `recvmmsg` does not pay. At moderate load most wake-ups carry a
/// single datagram, so that overhead was half the CPU per answer.
///
/// `packets` is this socket's own packet cache: the kernel hands a client
/// (its address and port) to the same `SO_REUSEPORT` socket every time, so
/// its repeated names hit there, and the thread owns it outright (see
/// [`PacketCache`]).
pub(crate) fn serve_thread(
    socket: Arc<std::net::UdpSocket>,
    mut packets: PacketCache,
    fast: Arc<FastPath>,
    handler: ShieldHandler,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) {
    let fd = socket.as_raw_fd();
    let mut snapshots = arc_swap::Cache::new(fast.snapshot.clone());
    let mut batch = Batch::new();
    let mut tally = Tally {
        answers: fast.metrics.answer_tally(),
        snapshot: None,
        flushed_at: Instant::now(),
    };
    while !stop.load(Ordering::Relaxed) {
        match batch.receive(fd) {
            Ok(()) => {}
            // The receive timeout: look at `stop` again, and let go of a
            // replaced snapshot, which the cache would otherwise keep alive
            // (a whole index) until the next datagram.
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                tally.flush(&fast.metrics, Instant::now());
                snapshots.load();
                packets.store_arrivals();
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
        packets.store_arrivals();
        // Passes over the batch, so that each pass's memory misses
        // (packet-cache tags; cached entries and index buckets; then the
        // answers) are in flight together rather than one query at a time.
        // First: parse each datagram once, into its slot, and route it.
        for ((&(length, peer), buffer), (question, route)) in batch
            .received
            .iter()
            .zip(batch.buffers.iter())
            .zip(batch.questions.iter_mut().zip(batch.routes.iter_mut()))
        {
            *route = Route::Handler;
            let Some(packet) = buffer.get(..length) else {
                continue;
            };
            // Before anything is parsed: no answer to an answer or to a
            // datagram without a header, and nothing but REFUSED (or
            // nothing) for a source the access list refuses.
            let Some(profile) = screen(packet, peer.ip(), snapshot).map_err(|r| *route = r).ok() else {
                if matches!(*route, Route::Refuse) && fast.refusals.check(peer.ip(), received_at) != Limit::Pass {
                    *route = Route::Discard(Discard::RateLimited);
                }
                continue;
            };
            match fast
                .rate_limit
                .as_ref()
                .map(|limiter| limiter.check(peer.ip(), received_at))
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
            if parse_into(packet, question).is_some() {
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
        for (((&(length, peer), buffer), question), &route) in batch
            .received
            .iter()
            .zip(batch.buffers.iter())
            .zip(batch.questions.iter())
            .zip(routes)
        {
            let packet = buffer.get(..length).unwrap_or_default();
            match route {
                Route::Discard(reason) => {
                    fast.discards.note(reason, peer.ip());
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
                    let responder = UdpResponder {
                        socket: socket.clone(),
                        peer,
                        cache: key.map(|k| (k, packets.filler.clone())),
                    };
                    let (handler, fast) = (handler.clone(), fast.clone());
                    runtime.spawn(async move {
                        answer_slowly(handler, request, peer, responder, &fast.discards).await;
                        drop(permit);
                    });
                }
            }
        }
        batch.send(fd);
        tally.count_batch(&fast.metrics, snapshot, &batch, received_at);
    }
    tally.flush(&fast.metrics, Instant::now());
}

/// How often a busy UDP thread adds its answers to the shared metrics. A
/// batch after a quiet spell is flushed at once, and an idle thread flushes
/// at its receive timeout, so a scrape lags the answers by at most this
/// under load and by [`STOP_CHECK`] after a burst.
const TALLY_FLUSH: Duration = Duration::from_millis(1);

/// A UDP thread's unflushed answers and the snapshot they were decided
/// under (held until the flush, so its profile and list positions still
/// name the right series after a reload).
struct Tally {
    answers: AnswerTally,
    snapshot: Option<Arc<Snapshot>>,
    flushed_at: Instant,
}

impl Tally {
    /// Counts the answers `batch` sent (decided under `snapshot`, received
    /// at `received_at`), flushing first when they belong to a newer
    /// snapshot than the tally's and after them when [`TALLY_FLUSH`] has
    /// passed since the last flush.
    fn count_batch(&mut self, metrics: &Metrics, snapshot: &Arc<Snapshot>, batch: &Batch, received_at: Instant) {
        if batch.counts.is_empty() {
            return;
        }
        let elapsed = received_at.elapsed();
        // The tally names profiles and lists by their positions in one
        // snapshot: answers decided under a newer one start a new tally.
        if self
            .snapshot
            .as_ref()
            .is_some_and(|held| held.generation() != snapshot.generation())
        {
            self.flush(metrics, received_at);
        }
        for (count, (bytes, _)) in batch.counts.iter().zip(&batch.answers) {
            let rcode = u16::from(bytes.get(3).map_or(0, |b| b & 0x0f));
            self.answers.add(count.profile, count.block, rcode);
        }
        self.answers.took(elapsed, batch.counts.len());
        if self.snapshot.is_none() {
            self.snapshot = Some(Arc::clone(snapshot));
        }
        if received_at.saturating_duration_since(self.flushed_at) >= TALLY_FLUSH {
            self.flush(metrics, received_at);
        }
    }

    fn flush(&mut self, metrics: &Metrics, now: Instant) {
        if let Some(snapshot) = self.snapshot.take() {
            metrics.flush_answers(&snapshot, &mut self.answers);
        }
        self.flushed_at = now;
    }
}

/// The check every transport makes of a message before parsing it: a
/// header there, and QR=0 (an answer is never answered, so two resolvers
/// cannot be made to answer each other).
pub(crate) fn screen_header(message: &[u8]) -> Result<(), Discard> {
    match message.get(2) {
        Some(_) if message.len() < 12 => Err(Discard::Malformed),
        Some(flags) if flags & 0x80 != 0 => Err(Discard::Response),
        Some(_) => Ok(()),
        None => Err(Discard::Malformed),
    }
}

/// The UDP checks that come before any parsing: [`screen_header`], then
/// the access list: a refused source is refused when its query is a
/// readable question and discarded otherwise. `Ok` holds the client's
/// profile.
fn screen(packet: &[u8], client: IpAddr, snapshot: &Snapshot) -> Result<ProfileId, Route> {
    screen_header(packet).map_err(Route::Discard)?;
    snapshot.client_policy(client).ok_or_else(|| {
        if bare_question(packet).is_some() {
            Route::Refuse
        } else {
            Route::Discard(Discard::NotAllowed)
        }
    })
}

/// Where the question of `query` ends, if it is a readable question: QR=0,
/// opcode QUERY, one question.
fn bare_question(query: &[u8]) -> Option<usize> {
    let header = query.get(..12)?;
    if header[2] & 0xf8 != 0 || header[4..6] != [0, 1] {
        return None;
    }
    question_end(query)
}

/// `message`'s header and question alone, its other section counts zeroed:
/// the start of every answer built here without records (REFUSED, slip,
/// truncation), never larger than what it came from.
fn header_and_question(message: &[u8], question_end: usize) -> Option<Vec<u8>> {
    let mut out = message.get(..question_end)?.to_vec();
    out.get_mut(6..12)?.fill(0);
    Some(out)
}

/// An answer to `query` without records: QR set, RD kept, `tc`, and
/// `flags_low` as the header's fourth byte (RA and the rcode). `None` when
/// it is not a readable question (see [`bare_question`]).
fn bare_answer(query: &[u8], tc: bool, flags_low: u8) -> Option<Vec<u8>> {
    let mut answer = header_and_question(query, bare_question(query)?)?;
    answer[2] = 0x80 | (query[2] & 0x01) | if tc { 0x02 } else { 0 };
    answer[3] = flags_low;
    Some(answer)
}

/// Sends [`bare_answer`] straight from the UDP thread: REFUSED and slips are
/// rare and small, and never reach the runtime. `None` when there is none
/// or the send failed.
fn send_bare(fd: RawFd, query: &[u8], peer: SocketAddr, tc: bool, flags_low: u8) -> Option<()> {
    let answer = bare_answer(query, tc, flags_low)?;
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
        metrics.query(None, true, 5, received_at.elapsed());
    }
}

/// Sends the slip answer for `packet`: its header and question, with QR,
/// TC and RA set and no records, no larger than the query.
fn slip(fd: RawFd, packet: &[u8], peer: SocketAddr, metrics: &Metrics) {
    metrics.rate_limit_slip();
    let _ = send_bare(fd, packet, peer, true, 0x80);
}

/// FORMERR for a message whose header is readable but whose rest is not:
/// the header alone, its ID and opcode and RD kept.
pub(crate) fn formerr(header: [u8; 3]) -> [u8; 12] {
    let [id0, id1, flags] = header;
    [id0, id1, 0x80 | (flags & 0x79), 0x01, 0, 0, 0, 0, 0, 0, 0, 0]
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

/// Hands a datagram to the full handler. Packets hickory cannot parse get
/// FORMERR when their header is readable, and nothing otherwise.
///
/// Only datagrams [`screen`] let through get here: a header with QR=0 from
/// a client the access list allows.
async fn answer_slowly(
    handler: ShieldHandler,
    packet: Vec<u8>,
    peer: SocketAddr,
    responder: UdpResponder,
    discards: &Discards,
) {
    let header = packet.get(..12).map(|h| [h[0], h[1], h[2]]);
    match Request::from_bytes(packet, peer, Protocol::Udp) {
        Ok(request) => {
            handler.handle_request::<_, TokioTime>(&request, responder).await;
        }
        Err(error) => {
            debug!(%error, %peer, "malformed query");
            discards.note(Discard::Malformed, peer.ip());
            if let Some(header) = header {
                let _ = send_datagram(&responder.socket, &formerr(header), peer).await;
            }
        }
    }
}

/// Sends the handler's answer on the UDP socket, truncated to the client's
/// payload size, and caches answers for allowed names.
#[derive(Clone)]
struct UdpResponder {
    socket: Arc<std::net::UdpSocket>,
    peer: SocketAddr,
    /// Where the answer goes once sent: the packet cache of the thread
    /// that received the query.
    cache: Option<(PacketKey, PacketFiller)>,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        // RFC 1035 §4.2.1: 512 bytes without EDNS, else the payload size the
        // handler put in its response OPT (already capped by our own).
        let max_size = response.edns().map_or(512, |edns| edns.max_payload());
        let opt = response.edns().map(|edns| {
            let ttl_high = [
                edns.rcode_high(),
                edns.version(),
                if edns.flags().dnssec_ok { 0x80 } else { 0 },
                0,
            ];
            (edns.max_payload(), ttl_high)
        });
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut bytes);
        encoder.set_max_size(u16::MAX);
        let info = response.destructive_emit(&mut encoder)?;
        if bytes.len() > usize::from(max_size) {
            // Too large for the client: TC with the question alone (and the
            // OPT), never a part of an RRset (RFC 2181 §9); it asks again
            // over TCP.
            bytes = truncated(&bytes, opt).unwrap_or_default();
        }
        send_datagram(&self.socket, &bytes, self.peer)
            .await
            .map_err(hickory_server::net::NetError::from)?;
        if let Some((key, filler)) = self.cache.take()
            && let Some(question_end) = question_end(&bytes)
        {
            filler.offer(key, bytes, question_end);
        }
        Ok(info)
    }
}

impl std::fmt::Debug for UdpResponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpResponder").field("peer", &self.peer).finish()
    }
}

/// The TC=1 form of `answer`: its header and question, no records but the
/// OPT `opt` describes (payload size and the TTL field's bytes).
fn truncated(answer: &[u8], opt: Option<(u16, [u8; 4])>) -> Option<Vec<u8>> {
    let mut out = header_and_question(answer, question_end(answer)?)?;
    out[2] |= 0x02;
    if let Some((payload, ttl)) = opt {
        out[11] = 1;
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&payload.to_be_bytes());
        out.extend_from_slice(&ttl);
        out.extend_from_slice(&[0, 0]);
    }
    Some(out)
}

/// Where the (single) question of a message ends.
fn question_end(message: &[u8]) -> Option<usize> {
    let mut at = 12;
    loop {
        let length = *message.get(at)?;
        if length > 63 {
            return None;
        }
        at += 1 + usize::from(length);
        if length == 0 {
            break;
        }
    }
    (message.len() >= at + 4).then_some(at + 4)
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, Query as HickoryQuery, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    use shieldns_index::{ListAction, ListFormat, ListPolicy, ProfileConfig, SnapshotBuilder};

    use super::*;

    /// Parses into a fresh question.
    fn parse(packet: &[u8]) -> Option<Question> {
        let mut question = Question::EMPTY;
        parse_into(packet, &mut question).map(|()| question)
    }

    fn query_bytes(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 0x1234;
        message.metadata.recursion_desired = true;
        message.add_query(HickoryQuery::query(Name::from_ascii(name).unwrap(), qtype));
        if edns {
            let mut opt = hickory_proto::op::Edns::new();
            opt.set_max_payload(1232);
            message.set_edns(opt);
        }
        message.to_vec().unwrap()
    }

    fn snapshot(response: BlockResponse) -> Snapshot {
        let mut builder = SnapshotBuilder::new();
        builder.set_access(vec!["0.0.0.0/0".parse().unwrap()]);
        let policy = ListPolicy {
            name: "adult".into(),
            category: Some("adult".into()),
            format: ListFormat::Domains,
            action: ListAction::Block,
            mandatory: false,
            allow_empty: false,
            allow_tld_rules: false,
        };
        builder.add_list(policy, b"bad.example.com\n").unwrap();
        builder.add_profile(ProfileConfig {
            block: vec!["adult".into()],
            block_response: response,
            block_ttl: 42,
            sinkhole_ipv4: Some("192.0.2.80".parse().unwrap()),
            ..ProfileConfig::new("p", vec!["0.0.0.0/0".parse().unwrap()])
        });
        builder.build().unwrap()
    }

    fn fast_answer(snapshot: &Snapshot, packet: &[u8]) -> Option<Message> {
        let question = parse(packet)?;
        let query = Query {
            packet,
            question: &question,
        };
        let profile_id = snapshot.profile_for("192.0.2.1".parse().unwrap());
        let Verdict::Block(hit) = snapshot.decide(query.name.as_str(), profile_id) else {
            return None;
        };
        let mut out = Vec::new();
        assert!(write_block(
            &mut out,
            &query,
            snapshot,
            snapshot.profile(profile_id),
            &hit,
            1232
        ));
        Some(Message::from_vec(&out).unwrap())
    }

    #[test]
    fn parses_standard_queries_and_refuses_the_rest() {
        let packet = query_bytes("WWW.Example.COM.", RecordType::AAAA, true);
        let query = parse(&packet).unwrap();
        assert_eq!(query.name.as_str(), "www.example.com");
        assert_eq!((query.qtype, query.labels, query.edns_payload), (28, 3, Some(1232)));
        assert!(parse(&packet[..packet.len() - 1]).is_none());
        // A byte that needs escaping in presentation form goes to hickory.
        let mut odd = query_bytes("ab.example.com.", RecordType::A, false);
        odd[13] = b' ';
        assert!(parse(&odd).is_none());
        let mut response = packet.clone();
        response[2] |= 0x80;
        assert!(parse(&response).is_none());
    }

    #[test]
    fn block_answers_decode_like_the_handlers() {
        let nxdomain = snapshot(BlockResponse::Nxdomain);
        let message = fast_answer(&nxdomain, &query_bytes("www.bad.example.com.", RecordType::A, true)).unwrap();
        assert_eq!(message.metadata.id, 0x1234);
        assert_eq!(message.metadata.response_code, ResponseCode::NXDomain);
        assert!(message.metadata.recursion_desired && message.metadata.recursion_available);
        let soa = &message.authorities[0];
        assert_eq!((soa.name.to_ascii().as_str(), soa.ttl), ("bad.example.com.", 42));
        let hickory_proto::rr::RData::SOA(soa) = &soa.data else {
            panic!("not an SOA: {soa:?}")
        };
        assert_eq!(
            (
                soa.mname.to_ascii().as_str(),
                soa.rname.to_ascii().as_str(),
                soa.minimum
            ),
            ("blocked.shieldns.invalid.", "hostmaster.shieldns.invalid.", 42)
        );
        let edns = message.edns.unwrap();
        let ede = edns
            .option(hickory_proto::rr::rdata::opt::EdnsCode::Unknown(15))
            .unwrap();
        let hickory_proto::rr::rdata::opt::EdnsOption::Unknown(15, data) = ede else {
            panic!()
        };
        assert_eq!(&data[..2], &17u16.to_be_bytes());
        assert_eq!(&data[2..], b"list=adult category=adult");

        let sinkhole = snapshot(BlockResponse::Sinkhole);
        let message = fast_answer(&sinkhole, &query_bytes("bad.example.com.", RecordType::A, false)).unwrap();
        assert_eq!(message.answers[0].data.ip_addr(), Some("192.0.2.80".parse().unwrap()));
        assert!(message.edns.is_none());
        let message = fast_answer(&sinkhole, &query_bytes("bad.example.com.", RecordType::MX, false)).unwrap();
        assert_eq!(
            (message.metadata.response_code, message.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(message.authorities.len(), 1);
    }

    #[test]
    fn cached_packets_get_the_new_id_case_and_aged_ttls() {
        let mut cache = PacketCache::new(100, 1 << 20);
        let query_packet = query_bytes("www.example.com.", RecordType::A, false);
        let mut response = Message::from_vec(&query_packet).unwrap();
        response.metadata.message_type = hickory_proto::op::MessageType::Response;
        response.add_answer(hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("www.example.com.").unwrap(),
            300,
            hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 1)),
        ));
        let bytes = response.to_vec().unwrap();
        let query = parse(&query_packet).unwrap();
        let key = PacketKey {
            generation: 7,
            profile: 0,
            name: b"www.example.com".to_vec(),
            qtype: 1,
            edns: false,
            dnssec_ok: false,
        };
        // The slow path offers the answer; the thread stores it when it next
        // wakes, before answering.
        cache.filler.clone().offer(key, bytes, query.question_end);
        let mut again = query_bytes("WWW.example.com.", RecordType::A, false);
        again[0] = 0x99;
        let question = parse(&again).unwrap();
        let query = Query {
            packet: &again,
            question: &question,
        };
        let mut out = Vec::new();
        let lookup = |generation| CacheLookup { generation, profile: 0 };
        let later = |seconds| Instant::now() + Duration::from_secs(seconds);
        assert!(
            !cache.answer(&query, lookup(7), 1232, later(0), &mut out),
            "not stored before the thread takes the arrivals"
        );
        cache.store_arrivals();
        assert!(
            !cache.answer(&query, lookup(8), 1232, later(0), &mut out),
            "another snapshot generation misses"
        );
        assert!(cache.answer(&query, lookup(7), 1232, later(100), &mut out));
        let message = Message::from_vec(&out).unwrap();
        assert_eq!(message.metadata.id, 0x9934);
        assert_eq!(message.queries[0].name().to_ascii(), "WWW.example.com.");
        assert_eq!(message.answers[0].ttl, 200, "aged by the 100 s since it was stored");
        out.clear();
        assert!(
            !cache.answer(&query, lookup(7), 1232, later(300), &mut out),
            "expired with its TTL"
        );
    }

    /// An encoded answer to `name` (A, 192.0.2.1, TTL 300) and its key.
    fn answer_for(name: &str) -> (PacketKey, Vec<u8>, usize) {
        let query_packet = query_bytes(name, RecordType::A, false);
        let mut response = Message::from_vec(&query_packet).unwrap();
        response.metadata.message_type = hickory_proto::op::MessageType::Response;
        response.add_answer(hickory_proto::rr::Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            300,
            hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 1)),
        ));
        let key = PacketKey {
            generation: 1,
            profile: 0,
            name: name.trim_end_matches('.').as_bytes().to_vec(),
            qtype: 1,
            edns: false,
            dnssec_ok: false,
        };
        (
            key,
            response.to_vec().unwrap(),
            parse(&query_packet).unwrap().question_end,
        )
    }

    #[test]
    fn a_full_set_evicts_its_least_recently_used_answer() {
        // Four answers make one set: every name shares it.
        let mut cache = PacketCache::new(4, 1 << 20);
        let names = ["a.example.", "b.example.", "c.example.", "d.example.", "e.example."];
        let hit = |cache: &mut PacketCache, name: &str| {
            let packet = query_bytes(name, RecordType::A, false);
            let question = parse(&packet).unwrap();
            let query = Query {
                packet: &packet,
                question: &question,
            };
            let lookup = CacheLookup {
                generation: 1,
                profile: 0,
            };
            cache.answer(&query, lookup, 512, Instant::now(), &mut Vec::new())
        };
        for name in &names[..4] {
            let (key, bytes, question_end) = answer_for(name);
            cache.filler.offer(key, bytes, question_end);
        }
        cache.store_arrivals();
        assert!(names[..4].iter().all(|name| hit(&mut cache, name)));
        assert!(!hit(&mut cache, names[4]));
        // `a` answered last, so `b` is now the least recently used.
        assert!(hit(&mut cache, names[0]));
        let (key, bytes, question_end) = answer_for(names[4]);
        cache.filler.offer(key, bytes, question_end);
        cache.store_arrivals();
        assert!(hit(&mut cache, names[4]), "the new answer is stored");
        assert!(!hit(&mut cache, names[1]), "the least recently used answer made room");
        assert!(hit(&mut cache, names[0]) && hit(&mut cache, names[2]) && hit(&mut cache, names[3]));
        // The same key replaces its own answer rather than another's.
        let (key, bytes, question_end) = answer_for(names[0]);
        cache.filler.offer(key, bytes, question_end);
        cache.store_arrivals();
        assert!(names.iter().filter(|name| hit(&mut cache, name)).count() == 4);
    }

    #[test]
    fn the_packet_cache_stays_within_its_byte_budget() {
        let (_, bytes, _) = answer_for("n0.example.");
        // Room for about three answers, in a cache with slots for 4096.
        let budget = 3 * (bytes.len() + 39 + 16 + 64);
        let mut cache = PacketCache::new(4096, u64::try_from(budget).unwrap());
        for i in 0..200 {
            let (key, bytes, question_end) = answer_for(&format!("n{i}.example."));
            cache.filler.offer(key, bytes, question_end);
            cache.store_arrivals();
            assert!(
                cache.stored_bytes() <= budget,
                "{} > {budget} after {i}",
                cache.stored_bytes()
            );
        }
        assert!(cache.stored_bytes() > 0, "answers are still cached");
    }

    /// The seed corpus of real queries (dig and kdig variants), in
    /// `fuzz/seeds/queries/`.
    fn seeds() -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/queries");
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
            .collect();
        seeds.sort();
        assert!(seeds.len() >= 10, "seed corpus in {}", dir.display());
        seeds
    }

    /// A mutated seed: bytes overwritten, truncated, or extended.
    fn mutated() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let seeds = seeds();
        (
            0..seeds.len(),
            proptest::collection::vec((any::<u16>(), any::<u8>()), 0..6),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(move |(seed, writes, cut, tail)| {
                let mut packet = seeds[seed].clone();
                for (at, byte) in writes {
                    if !packet.is_empty() {
                        let at = usize::from(at) % packet.len();
                        packet[at] = byte;
                    }
                }
                if cut % 3 == 0 {
                    packet.truncate(usize::from(cut) % (packet.len() + 1));
                } else if cut % 3 == 1 {
                    packet.extend_from_slice(&tail);
                }
                packet
            })
    }

    fn fuzz_snapshot() -> Snapshot {
        let mut builder = SnapshotBuilder::new();
        builder.set_access(vec!["127.0.0.0/25".parse().unwrap()]);
        builder.add_profile(ProfileConfig::new("all", vec!["0.0.0.0/0".parse().unwrap()]));
        builder.build().unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(20_000))]

        /// The wire parsers take any bytes (mutated real queries and plain
        /// noise): no panic, and what they build stays within bounds.
        #[test]
        fn wire_parsers_take_any_bytes(
            packet in proptest::prop_oneof![mutated(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)]
        ) {
            let snapshot = fuzz_snapshot();
            let mut question = Question::EMPTY;
            let parsed = parse_into(&packet, &mut question).is_some();
            if parsed {
                proptest::prop_assert!(question.question_end <= packet.len());
                proptest::prop_assert!(question.name.len <= 255);
            }
            for client in [IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 200])] {
                match screen(&packet, client, &snapshot) {
                    Ok(_) => proptest::prop_assert!(packet.len() >= 12 && packet[2] & 0x80 == 0),
                    Err(Route::Refuse) => {
                        let answer = bare_answer(&packet, false, 0x05).unwrap();
                        proptest::prop_assert!(answer.len() <= packet.len());
                        proptest::prop_assert_eq!(answer[2] & 0x80, 0x80);
                        proptest::prop_assert_eq!(answer[3] & 0x0f, 5);
                    }
                    Err(_) => {}
                }
            }
            if let Some(end) = question_end(&packet) {
                proptest::prop_assert!(end <= packet.len());
                let cut = truncated(&packet, Some((1232, [0, 0, 0x80, 0]))).unwrap();
                proptest::prop_assert_eq!(cut.len(), end + 11);
                proptest::prop_assert_eq!(cut[2] & 0x02, 0x02);
            }
            // The slow path's parser (hickory) and the packet cache's record
            // walker.
            let _ = Request::from_bytes(packet.clone(), "127.0.0.1:5353".parse().unwrap(), Protocol::Udp);
            if let Some(end) = question_end(&packet) {
                let _ = crate::packet_cache::record_ttls_for_tests(&packet, end);
            }
        }
    }
}
