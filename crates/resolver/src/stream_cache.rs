//! The stream transports' fast path: encoded answers for allowed names,
//! shared by every TCP, DoT, DoH and DoQ connection, and list blocks from
//! the wire bytes, both before the handler parses the query.
//!
//! Key design decision: the UDP threads' [`PacketCache`] table, in shards
//! each behind its own lock, in front of the whole handler. Without it a
//! stream query for an allowed name costs a round trip to the engine (for
//! libunbound a write and a read on its socket pair and a wake-up of its
//! thread, however fresh its cache), the answer checks and an encoding,
//! several times what the rest of the answer costs; a hit here costs one
//! parse, one decision-free lookup and one copy. It holds the handler's own
//! encoded answers, stored after the handler checked them, under the same
//! key (snapshot generation, profile, question, EDNS and DO) and the same
//! rule ([`packet_cacheable`]) as the UDP caches: an entry exists only for
//! an answer the lists let through under that very snapshot and profile, so
//! a hit is the handler's answer with the new ID, flags, question case and
//! aged TTLs. A miss goes on to the UDP threads' [`Judge`], so a list block
//! costs one parse, one `decide` and one `write_block`, as over UDP, instead
//! of a hickory parse and encode.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use shieldns_index::{ListId, ProfileId, Snapshot};

use crate::fastpath::{Judge, Verdict, packet_cacheable};
use crate::handler::ClientId;
use crate::packet_cache::{CacheLookup, PacketCache, PacketKey};
use crate::wire::{self, Query, Question};

/// The largest stream answer: a two-byte length prefix bounds it.
const MAX_STREAM_RESPONSE: usize = 65_535;

/// Shared by every stream connection; a shard is locked only for one
/// lookup's copy or one insert.
#[derive(Debug)]
pub(crate) struct StreamCache {
    shards: Box<[Mutex<PacketCache>]>,
    /// `shards.len() - 1`, a power of two minus one.
    shard_mask: usize,
    hasher: foldhash::fast::RandomState,
}

/// What [`StreamCache::lookup`] found for a query.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// The cached answer, for this profile.
    Hit { bytes: Vec<u8>, profile: ProfileId },
    /// A list's block, encoded from the wire bytes as the handler encodes
    /// it ([`Judge::verdict`]), with the list and EDE code for the metrics.
    Block {
        bytes: Vec<u8>,
        profile: ProfileId,
        block: (ListId, u16),
    },
    /// An allowed name not cached: the handler's answer may be stored under
    /// this key ([`StreamCache::offer`]).
    Miss(PacketKey),
    /// Not a query this cache answers or stores: the handler's alone.
    Pass,
}

impl StreamCache {
    /// A cache of about `max_entries` answers in at most `max_bytes`,
    /// split among shards: four per thread that may look up at once
    /// (`prefetch` as for [`PacketCache::new`]).
    pub(crate) fn new(max_entries: u64, max_bytes: u64, prefetch: bool) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let shards = (threads * 4).clamp(4, 256).next_power_of_two();
        let count = u64::try_from(shards).unwrap_or(1);
        Self {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(PacketCache::new(
                        (max_entries / count).max(1),
                        (max_bytes / count).max(1),
                        prefetch,
                    ))
                })
                .collect(),
            shard_mask: shards - 1,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn shard(&self, name: &[u8], qtype: u16) -> Option<&Mutex<PacketCache>> {
        let hash = self.hasher.hash_one((name, qtype));
        self.shards.get(usize::try_from(hash).unwrap_or(0) & self.shard_mask)
    }

    /// Looks `packet` (one query, its header screened: QR=0) from `client`
    /// up under `snapshot`, the client's profile taken as the handler takes
    /// it (address, then client ID): a cached answer for an allowed name,
    /// else the lists' verdict, a block answered from the wire bytes as the
    /// UDP threads answer it. Only standard queries the fast path's parser
    /// reads are looked up; everything else, and every name the lists
    /// neither block nor simply let through, passes to the handler.
    pub(crate) fn lookup(
        &self,
        packet: &[u8],
        (client, client_id): (IpAddr, Option<&ClientId>),
        snapshot: &Snapshot,
        judge: &Judge<'_>,
        now: Instant,
    ) -> Lookup {
        let mut question = Question::EMPTY;
        if wire::parse_into(packet, &mut question).is_none() {
            return Lookup::Pass;
        }
        let query = Query {
            packet,
            question: &question,
        };
        let Some(profile) = ClientId::profile(client_id, snapshot, client) else {
            return Lookup::Pass;
        };
        let cacheable = packet_cacheable(snapshot.profile(profile), &query, judge.query_log);
        let name = question.name.as_str().as_bytes();
        let at = CacheLookup {
            generation: snapshot.generation(),
            profile: profile.index(),
        };
        // A poisoned shard (a panic while it was held, which its code cannot
        // raise) serves and stores nothing more; its queries go on to the
        // handler.
        if cacheable
            && let Some(shard) = self.shard(name, question.qtype)
            && let Ok(mut packets) = shard.lock()
        {
            let mut bytes = Vec::new();
            if packets.answer(&query, at, MAX_STREAM_RESPONSE, now, &mut bytes) {
                return Lookup::Hit { bytes, profile };
            }
        }
        let mut bytes = Vec::new();
        match judge.verdict(snapshot, profile, &query, &mut bytes) {
            Verdict::Blocked(block) => Lookup::Block { bytes, profile, block },
            Verdict::Allowed if cacheable => Lookup::Miss(PacketKey {
                generation: at.generation,
                profile: at.profile,
                name: name.to_vec(),
                qtype: question.qtype,
                edns: question.edns_payload.is_some(),
                dnssec_ok: question.dnssec_ok,
            }),
            Verdict::Allowed | Verdict::Handler => Lookup::Pass,
        }
    }

    /// Stores the handler's answer to a query [`Self::lookup`] missed
    /// (only NOERROR and NXDOMAIN answers without EDE and with a TTL are
    /// kept: a block the answer checks earned carries its EDE).
    pub(crate) fn offer(&self, key: PacketKey, bytes: &[u8]) {
        let (Some(question_end), Some(shard)) = (wire::question_end(bytes), self.shard(&key.name, key.qtype)) else {
            return;
        };
        if let Ok(mut packets) = shard.lock() {
            packets.insert(key, bytes, question_end);
        }
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Message;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record, RecordType};
    use shieldns_index::{ListFormat, ListPolicy, ProfileConfig, SnapshotBuilder};

    use super::*;
    use crate::handler::Clock;
    use crate::wire::test_support::query_bytes;

    /// One profile for 127.0.0.0/8 (the access list's range) that blocks
    /// `ads.example` and its subdomains.
    fn snapshot() -> Snapshot {
        let mut builder = SnapshotBuilder::new();
        builder.set_access(vec!["127.0.0.0/8".parse().unwrap()]);
        builder
            .add_list(
                ListPolicy::block("ads", Some("ads"), ListFormat::Domains),
                b"ads.example\n",
            )
            .unwrap();
        let mut profile = ProfileConfig::new("kids", vec!["127.0.0.0/8".parse().unwrap()]);
        profile.block = vec!["ads".into()];
        builder.add_profile(profile);
        builder.build().unwrap()
    }

    /// The handler's answer to `query`: one A record, TTL 300.
    fn answer_to(query: &[u8]) -> Vec<u8> {
        let mut response = Message::from_vec(query).unwrap();
        response.metadata.message_type = hickory_proto::op::MessageType::Response;
        let name = response.queries[0].name().clone();
        response.add_answer(Record::from_rdata(name, 300, RData::A(A::new(192, 0, 2, 1))));
        response.to_vec().unwrap()
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// The handler's judge, with no query log.
    fn judge(clock: &Clock) -> Judge<'_> {
        Judge {
            clock,
            server_payload: 1232,
            query_log: None,
        }
    }

    #[test]
    fn an_allowed_name_misses_then_hits_with_the_new_id_and_case() {
        let clock = Clock::starting_at(jiff::Timestamp::now());
        let (cache, snapshot) = (StreamCache::new(1000, 1 << 20, false), snapshot());
        let query = query_bytes("www.example.", RecordType::A, true);
        let lookup = |packet: &[u8]| cache.lookup(packet, (CLIENT, None), &snapshot, &judge(&clock), Instant::now());
        let Lookup::Miss(key) = lookup(&query) else {
            panic!("an allowed name is a miss to fill");
        };
        assert_eq!(key.name, b"www.example");
        cache.offer(key, &answer_to(&query));
        let mut again = query_bytes("WWW.Example.", RecordType::A, true);
        again[..2].copy_from_slice(&[0xab, 0xcd]);
        let Lookup::Hit { bytes, profile } = lookup(&again) else {
            panic!("the stored answer is served");
        };
        assert_eq!(profile, snapshot.client_policy(CLIENT).unwrap());
        let message = Message::from_vec(&bytes).unwrap();
        assert_eq!(message.metadata.id, 0xabcd);
        assert_eq!(message.queries[0].name().to_ascii(), "WWW.Example.");
        assert_eq!(message.answers[0].data, RData::A(A::new(192, 0, 2, 1)));
        // Without EDNS the key differs (the answer would carry an OPT).
        let plain = query_bytes("www.example.", RecordType::A, false);
        assert!(matches!(lookup(&plain), Lookup::Miss(_)));
    }

    #[test]
    fn a_blocked_name_is_answered_from_the_wire_bytes_with_its_ede() {
        let clock = Clock::starting_at(jiff::Timestamp::now());
        let (cache, snapshot) = (StreamCache::new(1000, 1 << 20, false), snapshot());
        let mut blocked = query_bytes("Tracker.ADS.example.", RecordType::A, true);
        blocked[..2].copy_from_slice(&[0x12, 0x34]);
        let Lookup::Block { bytes, profile, block } =
            cache.lookup(&blocked, (CLIENT, None), &snapshot, &judge(&clock), Instant::now())
        else {
            panic!("a listed name is blocked here");
        };
        assert_eq!(profile, snapshot.client_policy(CLIENT).unwrap());
        assert_eq!(snapshot.list(block.0).unwrap().policy.name, "ads");
        // The UDP fast path's very bytes (one encoder), and a real answer.
        let mut udp = Vec::new();
        let question = {
            let mut question = Question::EMPTY;
            wire::parse_into(&blocked, &mut question).unwrap();
            question
        };
        let query = Query {
            packet: &blocked,
            question: &question,
        };
        assert_eq!(
            judge(&clock).verdict(&snapshot, profile, &query, &mut udp),
            Verdict::Blocked(block)
        );
        assert_eq!(bytes, udp);
        let message = Message::from_vec(&bytes).unwrap();
        assert_eq!(message.metadata.id, 0x1234);
        assert_eq!(
            message.metadata.response_code,
            hickory_proto::op::ResponseCode::NXDomain
        );
        assert_eq!(message.queries[0].name().to_ascii(), "Tracker.ADS.example.");
        let edns = message.edns.as_ref().expect("an EDNS query gets an OPT");
        assert_eq!(edns.max_payload(), 1232);
        // EDE (option 15): info code 17 (Filtered), the list named.
        let ede = edns
            .options()
            .as_ref()
            .iter()
            .find_map(|(_, option)| match option {
                hickory_proto::rr::rdata::opt::EdnsOption::Unknown(15, data) => Some(data.clone()),
                _ => None,
            })
            .expect("the block carries an EDE option");
        assert_eq!(ede[..2], [0, 17]);
        assert_eq!(std::str::from_utf8(&ede[2..]).unwrap(), "list=ads category=ads");
        // Nothing is stored for a block: asked again, it is decided again.
        assert!(matches!(
            cache.lookup(&blocked, (CLIENT, None), &snapshot, &judge(&clock), Instant::now()),
            Lookup::Block { .. }
        ));
    }

    #[test]
    fn refused_clients_and_cd_queries_pass_to_the_handler() {
        let clock = Clock::starting_at(jiff::Timestamp::now());
        let (cache, snapshot) = (StreamCache::new(1000, 1 << 20, false), snapshot());
        let now = Instant::now();
        // Stored by a client allowed to ask, then asked from outside the
        // access list: the handler refuses it, never the cache.
        let query = query_bytes("www.example.", RecordType::A, true);
        let Lookup::Miss(key) = cache.lookup(&query, (CLIENT, None), &snapshot, &judge(&clock), now) else {
            panic!("an allowed name is a miss to fill");
        };
        cache.offer(key, &answer_to(&query));
        let outsider = IpAddr::from([192, 0, 2, 7]);
        assert!(matches!(
            cache.lookup(&query, (outsider, None), &snapshot, &judge(&clock), now),
            Lookup::Pass
        ));
        // An unknown client ID on a listener that refuses them.
        let nobody = ClientId {
            id: "nobody".into(),
            refuse_unknown: true,
        };
        assert!(matches!(
            cache.lookup(&query, (CLIENT, Some(&nobody)), &snapshot, &judge(&clock), now),
            Lookup::Pass
        ));
        let mut checking_disabled = query.clone();
        checking_disabled[3] |= 0x10;
        assert!(matches!(
            cache.lookup(&checking_disabled, (CLIENT, None), &snapshot, &judge(&clock), now),
            Lookup::Pass
        ));
        assert!(matches!(
            cache.lookup(&query, (CLIENT, None), &snapshot, &judge(&clock), now),
            Lookup::Hit { .. }
        ));
    }

    #[test]
    fn with_prefetch_an_answer_in_its_last_tenth_is_left_to_the_handler() {
        let clock = Clock::starting_at(jiff::Timestamp::now());
        let (cache, snapshot) = (StreamCache::new(1000, 1 << 20, true), snapshot());
        let query = query_bytes("www.example.", RecordType::A, true);
        let at = |seconds| Instant::now() + std::time::Duration::from_secs(seconds);
        let Lookup::Miss(key) = cache.lookup(&query, (CLIENT, None), &snapshot, &judge(&clock), at(0)) else {
            panic!("an allowed name is a miss to fill");
        };
        cache.offer(key, &answer_to(&query));
        assert!(matches!(
            cache.lookup(&query, (CLIENT, None), &snapshot, &judge(&clock), at(260)),
            Lookup::Hit { .. }
        ));
        // 300 s × 0.9 = 270 s.
        assert!(matches!(
            cache.lookup(&query, (CLIENT, None), &snapshot, &judge(&clock), at(275)),
            Lookup::Miss(_)
        ));
    }
}
