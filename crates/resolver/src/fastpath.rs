//! The UDP fast path's decision: which datagrams it answers from wire
//! bytes, and the answer.
//!
//! A UDP thread ([`crate::udp`]) parses each datagram's header, question
//! and optional OPT record ([`crate::wire`]), screens the source, and asks
//! [`FastPath`] where it goes. A list block is encoded straight into the
//! thread's reused buffer; an allowed name whose encoded answer sits in the
//! thread's own packet cache is copied out with its ID, flags, question
//! case and TTLs patched. Everything else (other opcodes, profile policy,
//! rewrites, cache misses, malformed packets) goes to the full handler,
//! whose UDP answers for allowed names fill that packet cache.
//!
//! Key design decision: the fast path never decides differently from the
//! handler. Both call the one [`Snapshot::decide`] and encode a block with
//! the one [`wire::write_block`], here in one [`Judge`] that the stream
//! transports ask too; the fast path only serves the two answers whose
//! bytes it can produce exactly, and it does so without allocating.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use shieldns_index::{Decision, ListId, Profile, ProfileId, Snapshot};
use shieldns_metrics::{Discard, Metrics};
use shieldns_querylog::QueryLog;

use crate::discard::Discards;
use crate::handler::Clock;
use crate::packet_cache::{CacheLookup, PacketCache, PacketKey, Probed};
use crate::proxy::TrustedProxies;
use crate::ratelimit::RateLimiter;
use crate::wire::{self, BlockForm, EdeText, Query, TYPE_AAAA};

/// What the fast path did with a datagram.
pub(crate) enum Outcome {
    /// `out` holds the answer.
    Answered(Answered),
    /// The full handler answers; an allowed name's answer may be cached
    /// under this key.
    Slow(Option<PacketKey>),
}

/// What the metrics need of a fast-path answer, counted once the batch is
/// sent.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Answered {
    pub(crate) profile: ProfileId,
    /// The list and EDE code of a block; `None` for a packet-cache hit.
    pub(crate) block: Option<(ListId, u16)>,
}

/// Shared state of every UDP worker.
#[derive(Debug)]
pub(crate) struct FastPath {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) clock: Clock,
    pub(crate) udp_payload: u16,
    pub(crate) metrics: Arc<Metrics>,
    /// The query log, when it is on: queries it wants go to the handler,
    /// which builds the event.
    pub(crate) query_log: Option<QueryLog>,
    /// Bounds the UDP queries the full handler works on at once.
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
    pub(crate) discards: Arc<Discards>,
    /// `[server.rate_limit]`, for allowed clients.
    pub(crate) rate_limit: Option<RateLimiter>,
    /// The budget of REFUSED answers for refused sources (always on).
    pub(crate) refusals: RateLimiter,
    /// `server.trusted_proxies`: whose PROXY headers name the client.
    pub(crate) proxies: TrustedProxies,
}

impl FastPath {
    /// What the policy says about `query` from `client` before the lists
    /// are asked, and (for a cacheable query) where its answer may sit in
    /// the packet cache: the first step of a batch.
    pub(crate) fn route(
        &self,
        packets: &PacketCache,
        query: &Query<'_>,
        profile_id: ProfileId,
        snapshot: &Snapshot,
    ) -> Route {
        let profile = snapshot.profile(profile_id);
        // DNS64 synthesis is the handler's: its answers are not one
        // upstream answer.
        if profile.dns64.is_some() && query.qtype == TYPE_AAAA {
            return Route::Handler;
        }
        let cacheable = packet_cacheable(profile, query, self.query_log.as_ref());
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
    pub(crate) fn answer(
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
        let judge = Judge {
            clock: &self.clock,
            server_payload: self.udp_payload,
            query_log: self.query_log.as_ref(),
        };
        match judge.verdict(snapshot, profile_id, query, out) {
            Verdict::Blocked(block) => Outcome::Answered(Answered {
                profile: profile_id,
                block: Some(block),
            }),
            Verdict::Handler => Outcome::Slow(None),
            Verdict::Allowed if cache_tag.is_none() => Outcome::Slow(None),
            // A packet-cache miss wrote nothing into `out`.
            Verdict::Allowed => Outcome::Slow(Some(PacketKey {
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

/// What the lists make of a query read from wire bytes ([`Judge::verdict`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A list blocks it; the answer is written. The list and EDE code, for
    /// the metrics.
    Blocked((ListId, u16)),
    /// The lists let it through: the engine's answer, or a cached one.
    Allowed,
    /// Only the handler answers it: DNS64 synthesis, profile policy (bypass
    /// defences, query types, safe search), RPZ local data and drops, and
    /// every block the query log wants, whose event the handler builds.
    Handler,
}

/// The one place a transport answers a list block from wire bytes, without
/// the handler: the UDP threads and the stream transports both ask it, so
/// that neither decides or encodes differently from the handler.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Judge<'a> {
    pub(crate) clock: &'a Clock,
    /// `server.udp_payload`, the bound of the block's advertised payload,
    /// as the handler advertises it.
    pub(crate) server_payload: u16,
    pub(crate) query_log: Option<&'a QueryLog>,
}

impl Judge<'_> {
    /// Decides `query` under `profile_id` with [`Snapshot::decide`] and, for
    /// a block, writes the handler's very answer into `out` with
    /// [`wire::write_block`].
    pub(crate) fn verdict(
        &self,
        snapshot: &Snapshot,
        profile_id: ProfileId,
        query: &Query<'_>,
        out: &mut Vec<u8>,
    ) -> Verdict {
        let profile = snapshot.profile(profile_id);
        // DNS64 synthesis is the handler's: its answers are not one
        // upstream answer.
        if profile.dns64.is_some() && query.qtype == TYPE_AAAA {
            return Verdict::Handler;
        }
        // Only schedules make a verdict depend on the time; reading the clock
        // for every query would cost more than the rest of a block answer.
        let at = if profile.schedules.is_empty() {
            jiff::Timestamp::UNIX_EPOCH
        } else {
            self.clock.now()
        };
        match snapshot.decide(profile_id, query.name.as_str(), query.qtype, at) {
            Decision::List(_) if QueryLog::logs(self.query_log, true) => Verdict::Handler,
            Decision::List(hit) => {
                let soa_labels = wire::matched_labels(&hit, query.labels);
                match BlockForm::for_rule(profile, hit.action, query.qtype, soa_labels) {
                    Some(form) => {
                        let ede = snapshot.ede_code(&hit);
                        let asked = query.asked(self.server_payload);
                        wire::write_block(out, &asked, &form, (ede, EdeText::list(snapshot, &hit, None)));
                        Verdict::Blocked((hit.list, ede))
                    }
                    None => Verdict::Handler,
                }
            }
            Decision::Policy(_) => Verdict::Handler,
            Decision::Resolve(_) => Verdict::Allowed,
        }
    }
}

/// Whether an allowed name's answer to `query` under `profile` may be
/// served from (and stored in) a packet cache: the one rule of the UDP
/// threads' caches and the stream transports' one.
///
/// Not with DNS64 for AAAA, whose synthesis is not one upstream answer;
/// not with schedules, under which the answer checks (CNAME targets
/// against the lists) depend on the time, so that an answer checked in one
/// window must not be served in another; not when the query log wants
/// allowed queries, whose events the handler builds; and not with CD, whose
/// answer may hold data that failed validation, which must never reach a
/// cache a non-CD query is answered from.
pub(crate) fn packet_cacheable(profile: &Profile, query: &Query<'_>, query_log: Option<&QueryLog>) -> bool {
    let checking_disabled = query.packet.get(3).is_some_and(|flags| flags & 0x10 != 0);
    let dns64 = profile.dns64.is_some() && query.qtype == TYPE_AAAA;
    !dns64 && profile.schedules.is_empty() && !QueryLog::logs(query_log, false) && !checking_disabled
}

/// Where a received datagram goes, decided for the whole batch before any
/// of it is answered.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Route {
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

/// The UDP checks that come before any parsing: [`screen_header`], then
/// the access list: a refused source is refused when its query is a
/// readable question and discarded otherwise. `Ok` holds the client's
/// profile.
pub(crate) fn screen(packet: &[u8], client: IpAddr, snapshot: &Snapshot) -> Result<ProfileId, Route> {
    wire::screen_header(packet).map_err(Route::Discard)?;
    snapshot.client_policy(client).ok_or_else(|| {
        if wire::bare_question(packet).is_some() {
            Route::Refuse
        } else {
            Route::Discard(Discard::NotAllowed)
        }
    })
}

#[cfg(test)]
mod tests {
    use hickory_server::net::xfer::Protocol;
    use hickory_server::server::Request;
    use shieldns_index::{ProfileConfig, SnapshotBuilder};

    use super::*;
    use crate::wire::{Question, bare_answer, parse_into, question_end, truncated};

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
                proptest::prop_assert!(question.name.as_str().len() <= 255);
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
