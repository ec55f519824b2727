//! A UDP thread's packet cache: encoded answers for allowed names, looked up
//! in steps so that a whole batch's lookups overlap their memory misses.
//!
//! Key design decision: a set-associative table rather than a general
//! cache crate. A cached answer costs little besides its lookup, and with
//! tens of thousands of cached names each lookup is a chain of cache misses
//! (table, entry, answer bytes). A general map hides where its entries sit,
//! so its lookups can only run one after another; here the set an answer
//! can sit in follows from the key's hash alone, so the fast path first
//! [`probes`](PacketCache::probe) every query of a batch (one line of tags
//! each), then [`touches`](PacketCache::touch) every probed entry, and only
//! then answers, with each step's misses in flight together. Each set holds
//! [`WAYS`] answers and evicts its least recently used one; expiry is checked
//! on use against the answer's TTL.

use std::time::Instant;

use smallvec::SmallVec;

use crate::wire::{EDE_OPTION, Query, TYPE_OPT};

/// Answers per set. Four tags fill half a cache line, and four candidates
/// keep the least-recently-used choice close to a global one.
const WAYS: usize = 4;

/// The most sets a cache has (16M answers): its two tables, 96 bytes a set,
/// are reserved whole up front, even though only the pages it fills count.
const MAX_SETS: usize = 1 << 22;

/// One cached answer, in a single allocation so that a hit reads one or
/// two adjacent cache lines: a [`Header`], the query name (as in
/// [`PacketKey`]), the TTL table (each record TTL's offset in the answer,
/// `u16`, and its value, `u32`), then the encoded answer.
type Entry = Box<[u8]>;

/// The fixed fields at the start of an [`Entry`], in native byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    generation: u64,
    /// When it was stored, in nanoseconds since the cache's `epoch`.
    inserted: u64,
    /// How long it may be served: its shortest TTL, in seconds.
    lifetime: u32,
    profile: u32,
    /// The cache's use counter when this entry last answered (or arrived):
    /// eviction takes the set's smallest.
    used: u64,
    qtype: u16,
    /// Bit 0: the query had EDNS; bit 1: DO.
    flags: u8,
    name_len: u8,
    question_end: u16,
    ttl_count: u8,
}

/// Bytes of an encoded [`Header`].
const HEADER: usize = 39;
/// Where `used` sits in an entry, rewritten on every hit.
const USED_AT: usize = 24;
/// Bytes of one TTL table row: offset `u16`, TTL `u32`.
const TTL_ROW: usize = 6;

impl Header {
    /// The `flags` byte of a key's EDNS and DO bits.
    fn flags(edns: bool, dnssec_ok: bool) -> u8 {
        u8::from(edns) | (u8::from(dnssec_ok) << 1)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.generation.to_ne_bytes());
        out.extend_from_slice(&self.inserted.to_ne_bytes());
        out.extend_from_slice(&self.lifetime.to_ne_bytes());
        out.extend_from_slice(&self.profile.to_ne_bytes());
        out.extend_from_slice(&self.used.to_ne_bytes());
        out.extend_from_slice(&self.qtype.to_ne_bytes());
        out.extend_from_slice(&[self.flags, self.name_len]);
        out.extend_from_slice(&self.question_end.to_ne_bytes());
        out.push(self.ttl_count);
    }

    fn decode(entry: &[u8]) -> Option<Self> {
        let header: &[u8; HEADER] = entry.get(..HEADER)?.try_into().ok()?;
        // Fixed offsets inside the fixed-size header (the round trip is
        // tested below), so every slice has the width it is read as.
        let u64_at = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[at..at + 8]);
            u64::from_ne_bytes(bytes)
        };
        let u32_at = |at: usize| {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(&header[at..at + 4]);
            u32::from_ne_bytes(bytes)
        };
        let u16_at = |at: usize| u16::from_ne_bytes([header[at], header[at + 1]]);
        Some(Self {
            generation: u64_at(0),
            inserted: u64_at(8),
            lifetime: u32_at(16),
            profile: u32_at(20),
            used: u64_at(USED_AT),
            qtype: u16_at(32),
            flags: header[34],
            name_len: header[35],
            question_end: u16_at(36),
            ttl_count: header[38],
        })
    }

    /// The query name, TTL table and answer of `entry`.
    fn parts<'a>(&self, entry: &'a [u8]) -> Option<(&'a [u8], &'a [u8], &'a [u8])> {
        let (name, rest) = entry.get(HEADER..)?.split_at_checked(usize::from(self.name_len))?;
        let (ttls, answer) = rest.split_at_checked(usize::from(self.ttl_count) * TTL_ROW)?;
        Some((name, ttls, answer))
    }

    fn expired(&self, age_nanos: u64) -> bool {
        age_nanos >= u64::from(self.lifetime) * 1_000_000_000
    }
}

/// What an encoded answer depends on: the policy that checked it, the
/// question, and the client's EDNS and DO bits.
#[derive(Clone, Debug)]
pub(crate) struct PacketKey {
    pub(crate) generation: u64,
    pub(crate) profile: usize,
    pub(crate) name: Vec<u8>,
    pub(crate) qtype: u16,
    pub(crate) edns: bool,
    pub(crate) dnssec_ok: bool,
}

/// Which policy a packet-cache lookup is for: the snapshot that checked
/// the answer and the client's profile in it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CacheLookup {
    pub(crate) generation: u64,
    pub(crate) profile: usize,
}

/// Where [`PacketCache::probe`] found an entry whose tag matches: its set
/// and way. The entry itself is checked when it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Probed {
    set: usize,
    way: usize,
}

/// Encoded answers for allowed names (see the module header for its
/// layout).
///
/// A UDP thread owns one, which it alone reads and writes: a hit takes no
/// lock and touches no reference count. Answers of the slow path arrive
/// through a [`PacketFiller`] (a bounded channel, [`fill_channel`]) and are
/// stored when the thread next wakes, before it answers its batch. The
/// stream transports share [`crate::stream_cache`]'s, each behind a lock.
#[derive(Debug)]
pub(crate) struct PacketCache {
    /// Each set's tags: the key hash of the entry in each way, with the low
    /// bit set so that 0 means an empty way.
    tags: Vec<[u64; WAYS]>,
    /// Each set's entries, beside `tags`. Both start as zeroed allocations,
    /// so a large cache costs memory only as it fills.
    entries: Vec<[Option<Entry>; WAYS]>,
    /// `tags.len() - 1`, a power of two minus one.
    set_mask: usize,
    /// Counts answers and arrivals, for least-recently-used eviction.
    uses: u64,
    /// The most bytes the stored answers may take, and what they take now
    /// (each entry's length plus [`ENTRY_OVERHEAD`]).
    max_bytes: usize,
    stored_bytes: usize,
    /// The zero of the entries' `inserted` times.
    epoch: Instant,
    /// Whether an answer in the last tenth of its lifetime misses, so that
    /// the handler answers it from the engine's cache, which then refreshes
    /// it (`cache.prefetch`, with an engine that prefetches).
    prefetch: bool,
    hasher: foldhash::fast::RandomState,
}

/// Hands the slow path's answers to a UDP thread's [`PacketCache`].
#[derive(Clone, Debug)]
pub(crate) struct PacketFiller {
    sender: std::sync::mpsc::SyncSender<Arrival>,
}

/// The UDP thread's end of its [`PacketFiller`]s.
#[derive(Debug)]
pub(crate) struct Arrivals {
    receiver: std::sync::mpsc::Receiver<Arrival>,
}

/// A UDP thread's fill channel: the slow path offers answers to the
/// filler, the thread stores them from the arrivals.
pub(crate) fn fill_channel() -> (PacketFiller, Arrivals) {
    let (sender, receiver) = std::sync::mpsc::sync_channel(ARRIVALS);
    (PacketFiller { sender }, Arrivals { receiver })
}

impl Arrivals {
    /// Stores in `cache` the answers that arrived since the last call.
    pub(crate) fn store(&self, cache: &mut PacketCache) {
        while let Ok(arrival) = self.receiver.try_recv() {
            cache.insert(arrival.key, &arrival.bytes, arrival.question_end);
        }
    }
}

/// An answer on its way into a packet cache.
#[derive(Debug)]
struct Arrival {
    key: PacketKey,
    bytes: Vec<u8>,
    question_end: usize,
}

/// Answers waiting for their thread at most: past this the slow path drops
/// the fill (the next miss of that name fills it again).
const ARRIVALS: usize = 4096;

impl PacketFiller {
    /// Offers an answer to the cache; dropped when the thread is behind.
    pub(crate) fn offer(&self, key: PacketKey, bytes: Vec<u8>, question_end: usize) {
        let _ = self.sender.try_send(Arrival {
            key,
            bytes,
            question_end,
        });
    }
}

impl PacketCache {
    /// A cache of at least `max_entries` answers (rounded up to whole sets,
    /// a power of two of them, at most [`MAX_SETS`] sets) holding at most
    /// `max_bytes` of them; with `prefetch`, an answer in the last tenth of
    /// its lifetime is left to the handler (see the field).
    pub(crate) fn new(max_entries: u64, max_bytes: u64, prefetch: bool) -> Self {
        let sets = usize::try_from(max_entries.max(1))
            .unwrap_or(usize::MAX)
            .div_ceil(WAYS)
            .min(MAX_SETS)
            .next_power_of_two();
        Self {
            // `vec![zero; n]` of plain integers and null pointers allocates
            // zeroed memory without writing it.
            tags: vec![[0; WAYS]; sets],
            entries: vec![[const { None }; WAYS]; sets],
            set_mask: sets - 1,
            uses: 0,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            stored_bytes: 0,
            epoch: Instant::now(),
            prefetch,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The tag of a key: its hash with the low bit set (0 marks an empty way).
    fn tag(&self, generation: u64, profile: usize, name: &[u8], qtype: u16, edns: bool, dnssec_ok: bool) -> u64 {
        use std::hash::BuildHasher;
        self.hasher
            .hash_one((generation, profile, name, qtype, edns, dnssec_ok))
            | 1
    }

    fn set_of(&self, tag: u64) -> usize {
        // The high bits pick the set; the low bit is always set.
        usize::try_from(tag >> 32).unwrap_or(0) & self.set_mask
    }

    /// The tag of `query`'s key under `at`, computed before any of the
    /// table is read.
    pub(crate) fn tag_of(&self, query: &Query<'_>, at: CacheLookup) -> u64 {
        self.tag(
            at.generation,
            at.profile,
            query.name.as_str().as_bytes(),
            query.qtype,
            query.edns_payload.is_some(),
            query.dnssec_ok,
        )
    }

    /// The first step of a lookup: finds the filled way whose tag is `tag`,
    /// reading the set's line of tags and its line of entry pointers.
    pub(crate) fn probe(&self, tag: u64) -> Option<Probed> {
        let set = self.set_of(tag);
        let way = self.tags.get(set)?.iter().position(|&stored| stored == tag)?;
        let probed = Probed { set, way };
        self.entry(probed).is_some().then_some(probed)
    }

    /// The second step: reads the probed entry's first and last bytes (it
    /// spans one or two cache lines), so that the answer finds them in the
    /// CPU cache. Returns a value derived from the reads, to be passed to
    /// [`std::hint::black_box`].
    pub(crate) fn touch(&self, probed: Probed) -> u64 {
        self.entry(probed).map_or(0, |entry| {
            u64::from(entry.first().copied().unwrap_or(0) ^ entry.last().copied().unwrap_or(0))
        })
    }

    fn entry(&self, probed: Probed) -> Option<&[u8]> {
        self.entries.get(probed.set)?.get(probed.way)?.as_deref()
    }

    /// Nanoseconds from the cache's epoch to `now`.
    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Copies the probed answer for `query` into `out` if it is the answer
    /// to this very question and still fresh at `now` (the batch's receive
    /// time: one clock reading per batch).
    pub(crate) fn answer_probed(
        &mut self,
        probed: Probed,
        query: &Query<'_>,
        at: CacheLookup,
        max_response: usize,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> bool {
        let now = self.nanos(now);
        self.uses += 1;
        let uses = self.uses;
        let Some(entry) = self
            .entries
            .get_mut(probed.set)
            .and_then(|set| set.get_mut(probed.way))
            .and_then(|slot| slot.as_deref_mut())
        else {
            return false;
        };
        let Some(header) = Header::decode(entry) else {
            return false;
        };
        let Some((name, ttls, bytes)) = header.parts(entry) else {
            return false;
        };
        let flags = Header::flags(query.edns_payload.is_some(), query.dnssec_ok);
        let age = now.saturating_sub(header.inserted);
        if header.generation != at.generation
            || usize::try_from(header.profile).ok() != Some(at.profile)
            || header.qtype != query.qtype
            || header.flags != flags
            || usize::from(header.question_end) != query.question_end
            || name != query.name.as_str().as_bytes()
            || bytes.len() > max_response
            || header.expired(age)
            || (self.prefetch && header.expired(age.saturating_mul(10) / 9))
        {
            return false;
        }
        let age = u32::try_from(age / 1_000_000_000).unwrap_or(u32::MAX);
        out.extend_from_slice(bytes);
        out[..2].copy_from_slice(&query.id());
        out[2] = (out[2] & !0x01) | (query.packet[2] & 0x01);
        out[3] = (out[3] & !0x10) | (query.packet[3] & 0x10);
        out[12..query.question_end].copy_from_slice(&query.packet[12..query.question_end]);
        for row in ttls.chunks_exact(TTL_ROW) {
            let offset = usize::from(u16::from_ne_bytes([row[0], row[1]]));
            let ttl = u32::from_ne_bytes([row[2], row[3], row[4], row[5]]);
            if let Some(slot) = out.get_mut(offset..offset + 4) {
                slot.copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
            }
        }
        if let Some(used) = entry.get_mut(USED_AT..USED_AT + 8) {
            used.copy_from_slice(&uses.to_ne_bytes());
        }
        true
    }

    /// Both steps for one query (where there is no batch to overlap).
    pub(crate) fn answer(
        &mut self,
        query: &Query<'_>,
        at: CacheLookup,
        max_response: usize,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> bool {
        self.probe(self.tag_of(query, at))
            .is_some_and(|probed| self.answer_probed(probed, query, at, max_response, now, out))
    }

    /// Stores an encoded NOERROR or NXDOMAIN answer without EDE, for as
    /// long as its shortest TTL, in place of the same key's answer, else in
    /// an empty or expired way, else in place of the set's least recently
    /// used answer.
    pub(crate) fn insert(&mut self, key: PacketKey, bytes: &[u8], question_end: usize) {
        let Some((ttls, has_ede)) = record_ttls(bytes, question_end) else {
            return;
        };
        let rcode = bytes.get(3).map_or(2, |b| b & 0x0f);
        let truncated = bytes.get(2).is_some_and(|b| b & 0x02 != 0);
        let Some(lifetime) = ttls.iter().map(|&(_, ttl)| ttl).min() else {
            return;
        };
        if has_ede || truncated || !(rcode == 0 || rcode == 3) || lifetime == 0 {
            return;
        }
        let tag = self.tag(
            key.generation,
            key.profile,
            &key.name,
            key.qtype,
            key.edns,
            key.dnssec_ok,
        );
        let set = self.set_of(tag);
        let now = self.nanos(Instant::now());
        self.uses += 1;
        let header = Header {
            generation: key.generation,
            inserted: now,
            lifetime,
            profile: match u32::try_from(key.profile) {
                Ok(profile) => profile,
                Err(_) => return,
            },
            used: self.uses,
            qtype: key.qtype,
            flags: Header::flags(key.edns, key.dnssec_ok),
            // A question name is at most 255 bytes in wire form, so shorter
            // dotted; an answer is at most 65,535 bytes.
            name_len: match u8::try_from(key.name.len()) {
                Ok(length) => length,
                Err(_) => return,
            },
            question_end: match u16::try_from(question_end) {
                Ok(end) => end,
                Err(_) => return,
            },
            ttl_count: match u8::try_from(ttls.len()) {
                Ok(count) => count,
                Err(_) => return,
            },
        };
        let mut entry = Vec::with_capacity(HEADER + key.name.len() + ttls.len() * TTL_ROW + bytes.len());
        header.encode(&mut entry);
        entry.extend_from_slice(&key.name);
        for &(offset, ttl) in &ttls {
            let Ok(offset) = u16::try_from(offset) else {
                return;
            };
            entry.extend_from_slice(&offset.to_ne_bytes());
            entry.extend_from_slice(&ttl.to_ne_bytes());
        }
        entry.extend_from_slice(bytes);
        let (Some(tags), Some(entries)) = (self.tags.get_mut(set), self.entries.get_mut(set)) else {
            return;
        };
        // The way to fill, by preference: the same key, an empty way, then
        // the smallest `used` (an expired answer counts as never used).
        let rank = |way: usize| -> (u8, u64) {
            let stored = entries
                .get(way)
                .and_then(|slot| slot.as_deref())
                .and_then(Header::decode);
            match stored {
                _ if tags.get(way) == Some(&tag) => (0, 0),
                None => (1, 0),
                Some(stored) if stored.expired(now.saturating_sub(stored.inserted)) => (2, 0),
                Some(stored) => (3, stored.used),
            }
        };
        let mut ways: SmallVec<[usize; WAYS]> = (0..WAYS).collect();
        ways.sort_by_key(|&way| rank(way));
        let Some(&way) = ways.first() else {
            return;
        };
        // Within the byte budget: the way's old answer goes, then, while the
        // new one still does not fit, the set's other answers, least
        // valuable first; an answer that fits no way is not cached.
        let weight = |slot: &Option<Entry>| slot.as_ref().map_or(0, |entry| entry.len() + ENTRY_OVERHEAD);
        let incoming = entry.len() + ENTRY_OVERHEAD;
        let mut freeable = entries.get(way).map_or(0, weight);
        let mut victims: SmallVec<[usize; WAYS]> = SmallVec::new();
        for &other in ways.iter().skip(1) {
            if self.stored_bytes - freeable + incoming <= self.max_bytes {
                break;
            }
            let Some(bytes) = entries.get(other).map(weight).filter(|&b| b > 0) else {
                continue;
            };
            freeable += bytes;
            victims.push(other);
        }
        if self.stored_bytes - freeable + incoming > self.max_bytes {
            return;
        }
        for victim in victims.into_iter().chain(std::iter::once(way)) {
            if let (Some(stored_tag), Some(slot)) = (tags.get_mut(victim), entries.get_mut(victim)) {
                self.stored_bytes -= weight(slot);
                *slot = None;
                *stored_tag = 0;
            }
        }
        if let (Some(stored_tag), Some(slot)) = (tags.get_mut(way), entries.get_mut(way)) {
            *stored_tag = tag;
            *slot = Some(entry.into_boxed_slice());
            self.stored_bytes += incoming;
        }
    }

    /// Bytes the stored answers take (entry lengths plus overhead).
    #[cfg(test)]
    pub(crate) fn stored_bytes(&self) -> usize {
        self.stored_bytes
    }
}

/// [`record_ttls`] for the wire-parser property test.
#[cfg(test)]
pub(crate) fn record_ttls_for_tests(bytes: &[u8], question_end: usize) -> Option<usize> {
    record_ttls(bytes, question_end).map(|(ttls, _)| ttls.len())
}

/// What one stored answer costs beyond its bytes: the allocator's
/// bookkeeping and rounding.
const ENTRY_OVERHEAD: usize = 32;

/// Where each record TTL of an encoded answer sits, and its value; inline
/// for the usual handful of records.
type TtlOffsets = SmallVec<[(usize, u32); 4]>;

/// The offset and value of every record TTL after the question (the OPT's
/// TTL field carries flags, not a TTL, and is skipped), and whether the OPT
/// carries an EDE option. `None` for anything it cannot walk.
fn record_ttls(bytes: &[u8], question_end: usize) -> Option<(TtlOffsets, bool)> {
    let count = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let records = count(6)? + count(8)? + count(10)?;
    let mut ttls = SmallVec::with_capacity(records);
    let mut has_ede = false;
    let mut at = question_end;
    for _ in 0..records {
        // Skip the owner name: labels ending in a zero or a pointer.
        loop {
            let length = *bytes.get(at)?;
            if length & 0xc0 == 0xc0 {
                at += 2;
                break;
            }
            at += 1 + usize::from(length);
            if length == 0 {
                break;
            }
        }
        let rtype = u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?);
        let ttl = u32::from_be_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?);
        let rdlength = usize::from(u16::from_be_bytes(bytes.get(at + 8..at + 10)?.try_into().ok()?));
        if rtype == TYPE_OPT {
            let options = bytes.get(at + 10..at + 10 + rdlength)?;
            let mut option_at = 0;
            while let Some(code) = options.get(option_at..option_at + 4) {
                has_ede |= u16::from_be_bytes([code[0], code[1]]) == EDE_OPTION;
                option_at += 4 + usize::from(u16::from_be_bytes([code[2], code[3]]));
            }
        } else {
            ttls.push((at + 4, ttl));
        }
        at += 10 + rdlength;
    }
    (at == bytes.len()).then_some((ttls, has_ede))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hickory_proto::op::Message;
    use hickory_proto::rr::{Name, RecordType};

    use super::*;
    use crate::wire::test_support::{parse, query_bytes};

    #[test]
    fn a_header_reads_back_as_written_in_its_fixed_size() {
        let header = Header {
            generation: 0x0102_0304_0506_0708,
            inserted: u64::MAX - 1,
            lifetime: 86_400,
            profile: 7,
            used: 0x1122_3344_5566_7788,
            qtype: 28,
            flags: 3,
            name_len: 253,
            question_end: 271,
            ttl_count: 9,
        };
        let mut bytes = Vec::new();
        header.encode(&mut bytes);
        assert_eq!(bytes.len(), HEADER);
        assert_eq!(bytes[USED_AT..USED_AT + 8], header.used.to_ne_bytes());
        assert_eq!(Header::decode(&bytes), Some(header));
        assert_eq!(Header::decode(&bytes[..HEADER - 1]), None);
        assert!(header.expired(86_400 * 1_000_000_000) && !header.expired(86_400 * 1_000_000_000 - 1));
    }

    #[test]
    fn cached_packets_get_the_new_id_case_and_aged_ttls() {
        let mut cache = PacketCache::new(100, 1 << 20, false);
        let (filler, arrivals) = fill_channel();
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
        filler.offer(key, bytes, query.question_end);
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
        arrivals.store(&mut cache);
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
        let mut cache = PacketCache::new(4, 1 << 20, false);
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
            cache.insert(key, &bytes, question_end);
        }
        assert!(names[..4].iter().all(|name| hit(&mut cache, name)));
        assert!(!hit(&mut cache, names[4]));
        // `a` answered last, so `b` is now the least recently used.
        assert!(hit(&mut cache, names[0]));
        let (key, bytes, question_end) = answer_for(names[4]);
        cache.insert(key, &bytes, question_end);
        assert!(hit(&mut cache, names[4]), "the new answer is stored");
        assert!(!hit(&mut cache, names[1]), "the least recently used answer made room");
        assert!(hit(&mut cache, names[0]) && hit(&mut cache, names[2]) && hit(&mut cache, names[3]));
        // The same key replaces its own answer rather than another's.
        let (key, bytes, question_end) = answer_for(names[0]);
        cache.insert(key, &bytes, question_end);
        assert!(names.iter().filter(|name| hit(&mut cache, name)).count() == 4);
    }

    #[test]
    fn the_packet_cache_stays_within_its_byte_budget() {
        let (_, bytes, _) = answer_for("n0.example.");
        // Room for about three answers, in a cache with slots for 4096.
        let budget = 3 * (bytes.len() + 39 + 16 + 64);
        let mut cache = PacketCache::new(4096, u64::try_from(budget).unwrap(), false);
        for i in 0..200 {
            let (key, bytes, question_end) = answer_for(&format!("n{i}.example."));
            cache.insert(key, &bytes, question_end);
            assert!(
                cache.stored_bytes() <= budget,
                "{} > {budget} after {i}",
                cache.stored_bytes()
            );
        }
        assert!(cache.stored_bytes() > 0, "answers are still cached");
    }
}
