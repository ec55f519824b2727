//! The per-query path: ACL → profile → verdict → block answer, or cache →
//! upstream → answer check → response.
//!
//! One `ArcSwap::load` per query gives the snapshot; the guard is dropped
//! before the first `.await`, so a reload never waits for in-flight queries
//! and a query never sees half of a reload.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::AAAA;
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::svcb::{Alpn, SVCB, SvcParamKey, SvcParamValue, Unknown};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use shieldns_index::{
    BypassDefence, Decision, Dns64, Hit, ProfileId, ProfilePolicy, Snapshot, Timestamp, Verdict, ede,
};
use shieldns_metrics::{Discard, Metrics, PolicyAction, Transport};
use shieldns_querylog::{LoggedBlock, QueryEvent, QueryLog};
use tracing::debug;

use crate::answer::{self, BlockAnswer, Ede};
use crate::cache::{AnswerCache, CacheKey, CachedAnswer, Caches, FailureCache};
use crate::config::{EncryptedProtocol, ListenerConfig, ServerConfig};
use crate::discard::Discards;
use crate::failure_log::{FailureKind, FailureLog};
use crate::fastpath::Judge;
use crate::packet_cache::PacketKey;
use crate::resolved::{UpstreamAnswer, UpstreamFailure};
use crate::stream_cache::{Lookup, StreamCache};
use crate::upstream::Upstream;
use crate::wire::{self, Asked, BlockForm, EDE_OPTION, EdeText, NameBuf};

/// TTL of answers served stale (RFC 8767 §4 recommends 30 s).
const STALE_ANSWER_TTL: u32 = 30;

/// The shieldns request handler.
#[derive(Clone, Debug)]
pub struct ShieldHandler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    snapshot: Arc<ArcSwap<Snapshot>>,
    upstream: Upstream,
    /// The answer cache: the hickory engine's only cache. None with
    /// libunbound, whose own byte-bounded cache holds the answers (and
    /// serves them stale), so no answer is held twice.
    cache: Option<AnswerCache>,
    /// Recent resolution failures, answered without asking again.
    failures: Option<FailureCache>,
    /// Encoded answers for allowed names asked over a stream transport.
    streams: StreamCache,
    udp_payload: u16,
    /// `server.chaos_identity` and `server.chaos_version`.
    chaos: Chaos,
    /// The encrypted listeners DDR advertises.
    ddr: Ddr,
    in_flight: AtomicUsize,
    metrics: Arc<Metrics>,
    /// The query log, when it is on.
    query_log: Option<QueryLog>,
    discards: Arc<Discards>,
    /// Upstream failures, logged at most once a minute per kind.
    failure_log: FailureLog,
    clock: Clock,
}

/// What a client on an encrypted listener says it is besides its
/// address: the ID of its DoH path or DoT server name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ClientId {
    pub(crate) id: String,
    /// An ID no profile lists is REFUSED (else: the address's profile).
    pub(crate) refuse_unknown: bool,
}

impl ClientId {
    /// The profile of `client` asking with `id` (or with none) under
    /// `snapshot`: the access list first, then the ID's profile, an unknown
    /// ID the address's or none (REFUSED), as the listener says.
    pub(crate) fn profile(id: Option<&Self>, snapshot: &Snapshot, client: IpAddr) -> Option<ProfileId> {
        let refuse_unknown = id.is_some_and(|c| c.refuse_unknown);
        snapshot.client_policy_with_id(client, id.map(|c| c.id.as_str()), refuse_unknown)
    }
}

/// Who asked, over what, under which snapshot (the query's one load),
/// since when: what [`ShieldHandler::respond`] and
/// [`ShieldHandler::respond_datagram`] hand their common body.
struct Asking<'a> {
    peer: SocketAddr,
    transport: Transport,
    client_id: Option<&'a ClientId>,
    snapshot: Arc<Snapshot>,
    started: Instant,
}

/// An encoded answer and whether it may fill a packet cache: nothing
/// blocked it (a block an answer check earned carries EDE only for a
/// client that sent EDNS, so its bytes alone cannot tell).
#[derive(Debug)]
pub(crate) struct Responded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) unblocked: bool,
}

/// What the query log needs besides the request.
struct Logged<'a> {
    transport: Transport,
    client_id: Option<&'a ClientId>,
    blocked: Option<Blocked>,
    rcode: u16,
    started: Instant,
}

/// Where the handler reports what it did.
#[derive(Debug)]
pub(crate) struct Reports {
    pub(crate) metrics: Arc<Metrics>,
    /// The query log, when it is on.
    pub(crate) query_log: Option<QueryLog>,
    pub(crate) discards: Arc<Discards>,
}

/// The CHAOS-class names shieldns answers when configured to.
#[derive(Debug)]
struct Chaos {
    identity: Option<String>,
    version: Option<String>,
}

impl Chaos {
    /// The text for a `CH TXT` (or `CH ANY`) query this answers.
    fn answer(&self, query: &hickory_proto::op::Query) -> Option<&str> {
        if query.query_class() != hickory_proto::rr::DNSClass::CH
            || !matches!(query.query_type(), RecordType::TXT | RecordType::ANY)
        {
            return None;
        }
        let name = query.name().to_ascii().to_ascii_lowercase();
        match name.as_str() {
            "id.server." | "hostname.bind." => self.identity.as_deref(),
            "version.bind." | "version.server." => self.version.as_deref(),
            _ => None,
        }
    }
}

/// Discovery of Designated Resolvers (RFC 9462): the SVCB records naming
/// the encrypted listeners that have a `name`.
#[derive(Debug)]
struct Ddr {
    /// `_dns.{name}` of each named listener, lower case, with the dot.
    own_names: Vec<String>,
    records: Vec<SVCB>,
}

impl Ddr {
    fn new(listeners: &[ListenerConfig]) -> Self {
        let mut own_names = Vec::new();
        let mut records = Vec::new();
        for (priority, listener) in (1u16..).zip(listeners) {
            let Some(target) = listener
                .name
                .as_deref()
                .and_then(|n| Name::from_ascii(format!("{}.", n.trim_end_matches('.'))).ok())
            else {
                continue;
            };
            own_names.push(format!("_dns.{}", target.to_ascii().to_ascii_lowercase()));
            let alpn = match listener.protocol {
                EncryptedProtocol::Dot => vec!["dot".to_owned()],
                EncryptedProtocol::Doh => vec!["h2".to_owned(), "http/1.1".to_owned()],
                EncryptedProtocol::Doq => vec!["doq".to_owned()],
            };
            let mut params = vec![
                (SvcParamKey::Alpn, SvcParamValue::Alpn(Alpn(alpn))),
                (SvcParamKey::Port, SvcParamValue::Port(listener.address.port())),
            ];
            if listener.protocol == EncryptedProtocol::Doh {
                // RFC 9461 §5: the URI template, key 7.
                let template = format!("{}{{?dns}}", listener.path.trim_end_matches('/'));
                params.push((
                    SvcParamKey::Unknown(7),
                    SvcParamValue::Unknown(Unknown(template.into_bytes())),
                ));
            }
            records.push(SVCB::new(priority, target, params));
        }
        Self { own_names, records }
    }

    /// The SVCB answer to `name` (`_dns.resolver.arpa.` or a listener's
    /// `_dns.{name}.`), if it is a DDR query and a listener is named.
    fn answer(&self, qname: &Name, qtype: RecordType) -> Option<BlockAnswer> {
        if qtype != RecordType::SVCB || self.records.is_empty() {
            return None;
        }
        let asked = qname.to_ascii().to_ascii_lowercase();
        if asked != "_dns.resolver.arpa." && !self.own_names.contains(&asked) {
            return None;
        }
        let answers = self
            .records
            .iter()
            .map(|svcb| Record::from_rdata(qname.clone(), DDR_TTL, RData::SVCB(svcb.clone())))
            .collect();
        Some(BlockAnswer::Records {
            rcode: ResponseCode::NoError,
            answers,
            authorities: vec![],
            ede: None,
        })
    }
}

/// TTL of DDR answers: the listeners change only with the configuration.
const DDR_TTL: u32 = 300;

/// What one query's policy checks share: one snapshot (loaded once per
/// query and held for the whole query, so a reload never shows a query half
/// of each policy), the client's profile, its name in presentation form and
/// the policy time.
struct QueryContext<'a> {
    snapshot: Arc<Snapshot>,
    client: IpAddr,
    profile: ProfileId,
    qname: &'a Name,
    name: NameBuf,
    /// The labels of the question name, which a block's SOA counts from.
    labels: u8,
    now: Timestamp,
    observed: &'a Observed,
}

/// What the metrics and the query log need to know about a query once it
/// is answered. Set-once cells, because the policy checks only borrow the
/// query context.
#[derive(Default)]
struct Observed {
    /// The query's snapshot and profile, once the client passed the ACL.
    query: OnceLock<(Arc<Snapshot>, ProfileId)>,
    /// Why the answer was a block, if it was (the first block wins; a
    /// query is answered once).
    blocked: OnceLock<Blocked>,
}

#[derive(Clone, Copy)]
enum Blocked {
    List { list: shieldns_index::ListId, ede: u16 },
    Policy(PolicyAction),
}

/// What the client wants of the resolution besides the question.
#[derive(Clone, Copy, Debug)]
struct Wanted {
    /// CD: bogus data is wanted rather than SERVFAIL.
    checking_disabled: bool,
    /// RD: without it, the cache only.
    recursion_desired: bool,
}

/// Counts a query as in flight until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A question the policy decides: what [`ShieldHandler::screen`] let
/// through.
struct Screened {
    /// The query's snapshot (its one load) and the client's profile.
    snapshot: Arc<Snapshot>,
    profile: ProfileId,
    query: hickory_proto::op::Query,
    /// The question section as hickory encodes it (uncompressed).
    wire: Vec<u8>,
    /// The response's OPT, when the query had one.
    edns: Option<Edns>,
}

/// An encoded answer and its response code (for the metrics and the log);
/// no bytes when nothing is sent (a drop).
struct Replied {
    bytes: Option<Vec<u8>>,
    rcode: u16,
}

impl Replied {
    fn nothing(rcode: ResponseCode) -> Self {
        Self {
            bytes: None,
            rcode: u16::from(rcode),
        }
    }
}

/// The clock policy decisions use: real time, optionally shifted so that
/// tests can put the daemon at a schedule edge without waiting for it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    offset: jiff::SignedDuration,
}

impl Clock {
    /// A clock that reads `now` at the moment of this call and runs on
    /// from there in real time.
    pub fn starting_at(now: Timestamp) -> Self {
        Self {
            offset: now.duration_since(Timestamp::now()),
        }
    }

    /// The current policy time.
    pub fn now(&self) -> Timestamp {
        Timestamp::now()
            .checked_add(self.offset)
            .unwrap_or_else(|_| Timestamp::now())
    }
}

impl ShieldHandler {
    pub(crate) fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        upstream: Upstream,
        caches: Caches,
        server: &ServerConfig,
        reports: Reports,
        clock: Clock,
    ) -> Self {
        let Reports {
            metrics,
            query_log,
            discards,
        } = reports;
        Self {
            inner: Arc::new(Inner {
                snapshot,
                upstream,
                cache: caches.answers,
                failures: caches.failures,
                streams: caches.streams,
                udp_payload: server.udp_payload,
                chaos: Chaos {
                    identity: server.chaos_identity.clone(),
                    version: server.chaos_version.clone(),
                },
                ddr: Ddr::new(&server.listeners),
                in_flight: AtomicUsize::new(0),
                metrics,
                query_log,
                discards,
                failure_log: FailureLog::new(),
                clock,
            }),
        }
    }

    /// Queries being answered right now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// The answer [`Snapshot::decide`] gives instead of resolving, if any:
    /// a list block or the profile's own policy, counted and marked for the
    /// log.
    fn decide(&self, query: &QueryContext<'_>, qtype: RecordType) -> Option<BlockAnswer> {
        // The resolver's own encrypted endpoints come before any list: a
        // client that asks is upgraded to the same filter.
        if let Some(ddr) = self.inner.ddr.answer(query.qname, qtype) {
            return Some(ddr);
        }
        let snapshot = &*query.snapshot;
        let profile = snapshot.profile(query.profile);
        let name = query.name.as_str();
        let qname = query.qname;
        let (ttl, labels) = (profile.block_ttl, query.labels);
        let policy = match snapshot.decide(query.profile, name, u16::from(qtype), query.now) {
            Decision::Resolve(_) => return None,
            Decision::List(hit) => {
                let list = snapshot.list(hit.list).map_or("?", |l| l.policy.name.as_str());
                debug!(client = %query.client, name, list, line = hit.line, "blocked");
                self.count_list_block(query, &hit);
                let soa_labels = wire::matched_labels(&hit, labels);
                return Some(answer::block_answer(
                    snapshot, profile, &hit, qname, qtype, soa_labels, None,
                ));
            }
            Decision::Policy(policy) => policy,
        };
        let ede = (ede::FILTERED, Decision::policy_text(policy, &qtype));
        let (action, answer) = match policy {
            ProfilePolicy::Bypass(BypassDefence::Nxdomain(_)) => (
                PolicyAction::Bypass,
                BlockAnswer::Block {
                    form: BlockForm::nxdomain(ttl, labels),
                    ede,
                },
            ),
            ProfilePolicy::Bypass(BypassDefence::Nodata(_)) => (
                PolicyAction::Bypass,
                BlockAnswer::Block {
                    form: BlockForm::nodata(ttl, labels),
                    ede,
                },
            ),
            ProfilePolicy::BlockedQueryType => (
                PolicyAction::QueryType,
                BlockAnswer::Block {
                    form: BlockForm::nodata(ttl, labels),
                    ede,
                },
            ),
            ProfilePolicy::SafeSearch(rewrite) => {
                self.inner.metrics.policy(PolicyAction::SafeSearch);
                return Some(answer::cname(qname, rewrite.target, ttl));
            }
        };
        let _ = query.observed.blocked.set(Blocked::Policy(action));
        self.inner.metrics.policy(action);
        Some(answer)
    }

    /// Checks an upstream answer for this client: every name in its CNAME
    /// chain against the lists (CNAME cloaking), every address against
    /// answer-IP rules, and private addresses against rebinding protection.
    fn check_answer(&self, query: &QueryContext<'_>, qtype: RecordType, answers: &[Record]) -> Option<BlockAnswer> {
        let snapshot = &*query.snapshot;
        let profile = snapshot.profile(query.profile);
        let qname = query.qname;
        for record in answers {
            let address = match &record.data {
                RData::CNAME(target) if profile.inspect_cnames => {
                    let mut name = NameBuf::default();
                    if write!(name, "{}", target.0).is_err() {
                        continue;
                    }
                    if let Verdict::Block(hit) = snapshot.decide_at(name.as_str(), query.profile, query.now) {
                        debug!(client = %query.client, %qname, cname = name.as_str(), "CNAME target blocked");
                        let extra = format!("cname={}", name.as_str());
                        return Some(self.answer_block(query, qtype, &hit, PolicyAction::CnameInspection, &extra));
                    }
                    continue;
                }
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            if let Verdict::Block(hit) = snapshot.decide_answer_ip(address, query.profile) {
                debug!(client = %query.client, %qname, %address, line = hit.line, "answer address blocked");
                let extra = format!("ip={address}");
                return Some(self.answer_block(query, qtype, &hit, PolicyAction::AnswerIp, &extra));
            }
            if let Some(rebinding) = &profile.rebinding
                && rebinding.blocks(query.name.as_str(), address)
            {
                debug!(client = %query.client, %qname, %address, "rebinding answer blocked");
                self.inner.metrics.policy(PolicyAction::Rebinding);
                let _ = query.observed.blocked.set(Blocked::Policy(PolicyAction::Rebinding));
                let ede = (ede::BLOCKED, format!("policy=rebinding-protection ip={address}"));
                let form = BlockForm::for_profile(profile, u16::from(qtype), query.labels);
                return Some(BlockAnswer::Block { form, ede });
            }
        }
        None
    }

    /// The block for a list `hit` on something in the answer (a CNAME
    /// target, an address), counted under the list and `action`; `extra`
    /// names what matched in the EDE text. The SOA is owned by the question
    /// name, not by what matched.
    fn answer_block(
        &self,
        query: &QueryContext<'_>,
        qtype: RecordType,
        hit: &Hit,
        action: PolicyAction,
        extra: &str,
    ) -> BlockAnswer {
        self.count_list_block(query, hit);
        self.inner.metrics.policy(action);
        let snapshot = &*query.snapshot;
        let profile = snapshot.profile(query.profile);
        answer::block_answer(snapshot, profile, hit, query.qname, qtype, query.labels, Some(extra))
    }

    /// Resolves an AAAA query with DNS64 (RFC 6147): the real AAAA answer
    /// when there is one; otherwise AAAA records synthesized from the A
    /// answer, which is checked against answer-IP and rebinding rules first.
    async fn resolve_dns64(
        &self,
        query: &QueryContext<'_>,
        dns64: Dns64,
        dnssec_ok: bool,
        wanted: Wanted,
    ) -> Result<(UpstreamAnswer, Option<Ede>), BlockAnswer> {
        let qname = query.qname;
        let key = CacheKey {
            name: LowerName::new(qname),
            qtype: RecordType::AAAA,
            dnssec_ok,
        };
        let (answer, ede) = self.resolve(key, qname, RecordType::AAAA, wanted).await;
        let has_aaaa = answer
            .answers
            .iter()
            .any(|r| matches!(&r.data, RData::AAAA(a) if !Dns64::ignores_aaaa(a.0)));
        if answer.rcode != ResponseCode::NoError || has_aaaa {
            return Ok((answer, ede));
        }
        let key = CacheKey {
            name: LowerName::new(qname),
            qtype: RecordType::A,
            dnssec_ok,
        };
        let (a_answer, a_ede) = self.resolve(key, qname, RecordType::A, wanted).await;
        if a_answer.rcode != ResponseCode::NoError {
            return Ok((answer, ede));
        }
        if let Some(block) = self.check_answer(query, RecordType::AAAA, &a_answer.answers) {
            return Err(block);
        }
        let mut synthesized = Vec::with_capacity(a_answer.answers.len());
        for record in &a_answer.answers {
            match &record.data {
                RData::A(a) => {
                    if let Some(v6) = dns64.synthesize(a.0) {
                        synthesized.push(Record::from_rdata(
                            record.name.clone(),
                            record.ttl,
                            RData::AAAA(AAAA(v6)),
                        ));
                    }
                }
                RData::CNAME(_) => synthesized.push(record.clone()),
                _ => {}
            }
        }
        if synthesized.iter().any(|r| matches!(r.data, RData::AAAA(_))) {
            self.inner.metrics.policy(PolicyAction::Dns64);
            let answer = UpstreamAnswer {
                rcode: ResponseCode::NoError,
                answers: synthesized,
                authorities: vec![],
                // Synthesized records are never DNSSEC-secure.
                authentic_data: false,
                ede: None,
            };
            return Ok((answer, a_ede));
        }
        Ok((answer, ede))
    }

    /// Resolves through the cache and the upstream. Returns the answer and
    /// an EDE to attach (stale answer, bogus, unreachable). A bogus answer
    /// is SERVFAIL, unless the client set CD (`checking_disabled`): then it
    /// gets the data, without AD, and it is not cached.
    async fn resolve(
        &self,
        key: CacheKey,
        qname: &Name,
        qtype: RecordType,
        wanted: Wanted,
    ) -> (UpstreamAnswer, Option<Ede>) {
        let now = Instant::now();
        let cache = self.inner.cache.as_ref();
        let cached = cache.and_then(|cache| cache.get(&key));
        if let (Some(entry), Some(cache)) = (&cached, cache)
            && entry.is_fresh(now)
        {
            self.inner.metrics.cache_hit();
            if cache.config().prefetch && entry.should_prefetch(now) {
                self.spawn_prefetch(key.clone(), qname.clone(), qtype);
            }
            let remaining = entry.remaining(now);
            return (aged(entry, remaining, false), None);
        }
        self.inner.metrics.cache_miss();
        if !wanted.recursion_desired {
            // RD=0: answers come from the cache only (RFC 1034 §4.3.1); the
            // resolver is authoritative for nothing, hence EDE 20.
            let answer = UpstreamAnswer {
                rcode: ResponseCode::Refused,
                answers: vec![],
                authorities: vec![],
                authentic_data: false,
                ede: None,
            };
            return (
                answer,
                Some((
                    ede::NOT_AUTHORITATIVE,
                    String::from("recursion not desired; not cached"),
                )),
            );
        }
        // A CD client may be owed the data of a bogus answer, so it always
        // asks; everyone else gets a recent failure at once.
        let failures = self.inner.failures.as_ref().filter(|_| !wanted.checking_disabled);
        let remembered = failures.and_then(|failures| failures.get(&key));
        let resolved = match remembered {
            Some(failure) => Err(UpstreamFailure::clone_reason(&failure)),
            None => {
                let sent = Instant::now();
                let resolved = self.inner.upstream.resolve(qname, qtype, key.dnssec_ok).await;
                self.inner.metrics.upstream(sent.elapsed());
                if let (Err(failure), Some(failures)) = (&resolved, failures) {
                    failures.insert(key.clone(), failure);
                }
                resolved
            }
        };
        match resolved {
            Ok(answer) => {
                if let Some(cache) = cache {
                    cache.insert(
                        key,
                        answer.rcode,
                        answer.answers.clone(),
                        answer.authorities.clone(),
                        answer.authentic_data,
                    );
                }
                let ede = answer.ede.clone();
                (answer, ede)
            }
            Err(UpstreamFailure::Bogus {
                answer: Some(answer), ..
            }) if wanted.checking_disabled => (*answer, None),
            Err(failure) => {
                if let (Some(entry), Some(true)) = (&cached, cache.map(|c| c.config().serve_stale)) {
                    self.inner
                        .failure_log
                        .note(FailureKind::ServedStale, qname, failure.reason());
                    return (
                        aged(entry, STALE_ANSWER_TTL, true),
                        Some((ede::STALE_ANSWER, String::from("upstream unreachable"))),
                    );
                }
                let (kind, ede) = match failure {
                    UpstreamFailure::Bogus { code, reason, .. } => (FailureKind::Bogus, (code, reason)),
                    UpstreamFailure::Unreachable(reason) => {
                        (FailureKind::Unreachable, (ede::NO_REACHABLE_AUTHORITY, reason))
                    }
                    UpstreamFailure::Failed(reason) => (FailureKind::Failed, (ede::OTHER, reason)),
                };
                self.inner.failure_log.note(kind, qname, &ede.1);
                let ede = Some(ede);
                let answer = UpstreamAnswer {
                    rcode: ResponseCode::ServFail,
                    answers: vec![],
                    authorities: vec![],
                    authentic_data: false,
                    ede: None,
                };
                (answer, ede)
            }
        }
    }

    /// An RPZ CNAME rewrite (e.g. to a safe-search host) is answered like a
    /// real CNAME: the target is resolved and its records follow, because
    /// stub resolvers do not chase CNAMEs themselves.
    async fn follow_rewrite_cname(
        &self,
        block: BlockAnswer,
        qtype: RecordType,
        dnssec_ok: bool,
        wanted: Wanted,
    ) -> BlockAnswer {
        let BlockAnswer::Records {
            rcode,
            mut answers,
            authorities,
            ede,
        } = block
        else {
            return block;
        };
        let target = match answers.last().map(|r| &r.data) {
            Some(RData::CNAME(cname)) if qtype != RecordType::CNAME => cname.0.clone(),
            _ => {
                return BlockAnswer::Records {
                    rcode,
                    answers,
                    authorities,
                    ede,
                };
            }
        };
        let key = CacheKey {
            name: LowerName::new(&target),
            qtype,
            dnssec_ok,
        };
        let (resolved, _) = self.resolve(key, &target, qtype, wanted).await;
        answers.extend(resolved.answers);
        BlockAnswer::Records {
            rcode: resolved.rcode,
            answers,
            authorities,
            ede,
        }
    }

    fn spawn_prefetch(&self, key: CacheKey, qname: Name, qtype: RecordType) {
        let handler = self.clone();
        tokio::spawn(async move {
            if let (Ok(answer), Some(cache)) = (
                handler.inner.upstream.resolve(&qname, qtype, key.dnssec_ok).await,
                handler.inner.cache.as_ref(),
            ) {
                cache.insert(
                    key,
                    answer.rcode,
                    answer.answers,
                    answer.authorities,
                    answer.authentic_data,
                );
            }
        });
    }
}

fn aged(entry: &CachedAnswer, remaining: u32, exact: bool) -> UpstreamAnswer {
    UpstreamAnswer {
        rcode: entry.rcode,
        answers: CachedAnswer::records_aged(&entry.answers, remaining, exact),
        authorities: CachedAnswer::records_aged(&entry.authorities, remaining, exact),
        authentic_data: entry.authentic_data,
        ede: None,
    }
}

/// The EDE option: INFO-CODE then EXTRA-TEXT (RFC 8914 §2). hickory has no
/// typed EDE option, so it is sent as raw option data.
fn ede_option(info_code: u16, extra_text: &str) -> EdnsOption {
    let mut data = Vec::with_capacity(2 + extra_text.len());
    data.extend_from_slice(&info_code.to_be_bytes());
    data.extend_from_slice(extra_text.as_bytes());
    EdnsOption::Unknown(EDE_OPTION, data)
}

impl ShieldHandler {
    /// Answers one query that a stream transport (TCP, DoT, DoH, DoQ)
    /// screened ([`wire::screen_header`]: a header with QR=0): the encoded
    /// answer to send, or `None` when nothing is sent. An allowed name's
    /// answer comes from the stream cache when it is there, and fills it
    /// when it is not. Counts the query and logs it.
    pub(crate) async fn respond(
        &self,
        packet: Vec<u8>,
        peer: SocketAddr,
        transport: Transport,
        client_id: Option<&ClientId>,
    ) -> Option<Vec<u8>> {
        let started = Instant::now();
        // The query's one snapshot load: the cache lookup's, then the
        // handler's.
        let snapshot = self.inner.snapshot.load();
        let key = match self.stream_lookup(&packet, peer, transport, client_id, &snapshot, started) {
            Ok(cached) => return Some(cached),
            Err(key) => key,
        };
        let snapshot = arc_swap::Guard::into_inner(snapshot);
        let asked = Asking {
            peer,
            transport,
            client_id,
            snapshot,
            started,
        };
        let responded = self.respond_uncached(packet, asked).await?;
        if let Some(key) = key
            && responded.unblocked
        {
            self.inner.streams.offer(key, &responded.bytes);
        }
        Some(responded.bytes)
    }

    /// Answers one datagram the UDP fast path left to the handler (from
    /// `client`, the PROXY header's if there was one), truncated to the
    /// client's payload size: the answer, and whether it may fill the
    /// thread's packet cache (nothing blocked it). Counts the query and
    /// logs it.
    pub(crate) async fn respond_datagram(&self, packet: Vec<u8>, client: SocketAddr) -> Option<Responded> {
        let asked = Asking {
            peer: client,
            transport: Transport::Udp,
            client_id: None,
            snapshot: self.inner.snapshot.load_full(),
            started: Instant::now(),
        };
        self.respond_uncached(packet, asked).await
    }

    /// The body of [`Self::respond`] and [`Self::respond_datagram`].
    async fn respond_uncached(&self, packet: Vec<u8>, asked: Asking<'_>) -> Option<Responded> {
        let Asking {
            peer,
            transport,
            client_id,
            snapshot,
            started,
        } = asked;
        // hickory parses the message; only UDP answers are datagrams.
        let protocol = if transport.is_datagram() {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        let header = match packet.get(..4) {
            Some(&[id0, id1, flags0, flags1]) => [id0, id1, flags0, flags1],
            _ => return None,
        };
        let request = match Request::from_bytes(packet, peer, protocol) {
            Ok(request) => request,
            Err(error) => {
                // The header is readable, the rest is not: FORMERR.
                debug!(%error, %peer, "malformed query");
                self.inner.discards.note(Discard::Malformed, peer.ip().to_canonical());
                return Some(Responded {
                    bytes: wire::formerr([header[0], header[1], header[2]]).to_vec(),
                    unblocked: false,
                });
            }
        };
        let observed = Observed::default();
        let replied = self.answer(&request, header, client_id, snapshot, &observed).await;
        let query = observed.query.get().map(|(snapshot, profile)| (&**snapshot, *profile));
        self.inner
            .metrics
            .query(query, transport, replied.rcode, started.elapsed());
        let blocked = observed.blocked.get().copied();
        if QueryLog::logs(self.inner.query_log.as_ref(), blocked.is_some()) {
            let asked = Logged {
                transport,
                client_id,
                blocked,
                rcode: replied.rcode,
                started,
            };
            self.log(&request, &observed, &asked);
        }
        replied.bytes.map(|bytes| Responded {
            bytes,
            unblocked: blocked.is_none(),
        })
    }

    /// A stream query's answer from the stream cache (counted as a cache
    /// hit) or its list block from the wire bytes (counted as a block);
    /// else the key its answer may be stored under, if any.
    fn stream_lookup(
        &self,
        packet: &[u8],
        peer: SocketAddr,
        transport: Transport,
        client_id: Option<&ClientId>,
        snapshot: &Snapshot,
        started: Instant,
    ) -> Result<Vec<u8>, Option<PacketKey>> {
        let judge = Judge {
            clock: &self.inner.clock,
            server_payload: self.inner.udp_payload,
            query_log: self.inner.query_log.as_ref(),
        };
        let found = self
            .inner
            .streams
            .lookup(packet, (peer.ip().to_canonical(), client_id), snapshot, &judge, started);
        let (bytes, profile, block) = match found {
            Lookup::Hit { bytes, profile } => (bytes, profile, None),
            Lookup::Block { bytes, profile, block } => (bytes, profile, Some(block)),
            Lookup::Miss(key) => return Err(Some(key)),
            Lookup::Pass => return Err(None),
        };
        let rcode = u16::from(bytes.get(3).map_or(0, |b| b & 0x0f));
        match block {
            // Counted as the handler counts a list block.
            Some((list, ede)) => self.inner.metrics.list_blocked(snapshot, profile, list, ede),
            None => {
                self.inner.metrics.cache_hit();
                self.inner.metrics.answered(rcode);
            }
        }
        self.inner
            .metrics
            .query(Some((snapshot, profile)), transport, rcode, started.elapsed());
        Ok(bytes)
    }

    /// Answers one request (the body of [`Self::respond`], which counts and
    /// logs what this records in `observed`), in one line: screen the
    /// message → decide → block, or resolve and check the answer → encode.
    /// `header` is the query's first four bytes, which a block echoes.
    async fn answer(
        &self,
        request: &Request,
        header: [u8; 4],
        client_id: Option<&ClientId>,
        snapshot: Arc<Snapshot>,
        observed: &Observed,
    ) -> Replied {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        let _in_flight = InFlight(&self.inner.in_flight);
        let mut question = match self.screen(request, client_id, snapshot) {
            Ok(question) => question,
            Err(replied) => return replied,
        };
        let response_edns = question.edns.as_ref().map(|e| (e.max_payload(), e.flags().dnssec_ok));
        let Some(asked) = Asked::new(header, &question.wire, response_edns) else {
            return refuse(request, question.edns.as_ref(), ResponseCode::FormErr);
        };
        let qname = question.query.name().clone();
        let qtype = question.query.query_type();
        let mut name = NameBuf::default();
        // A name that does not fit in 255 bytes cannot have come off the
        // wire; it stays empty and matches no list.
        let _ = write!(name, "{qname}");
        let _ = observed.query.set((question.snapshot.clone(), question.profile));
        let query = QueryContext {
            profile: question.profile,
            snapshot: question.snapshot.clone(),
            client: request.src().ip(),
            qname: &qname,
            name,
            labels: asked.labels,
            now: self.inner.clock.now(),
            observed,
        };
        let wanted = Wanted {
            checking_disabled: request.metadata.checking_disabled,
            recursion_desired: request.metadata.recursion_desired,
        };
        // Our OPT echoes the query's DO bit.
        let dnssec_ok = question.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let resolved = match self.decide(&query, qtype) {
            Some(block) => Err(self.follow_rewrite_cname(block, qtype, dnssec_ok, wanted).await),
            None => self.resolve_checked(&query, qtype, dnssec_ok, wanted).await,
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        match resolved {
            Err(block) => send_block(block, metadata, question.edns.as_mut(), request, &asked),
            Ok((mut answer, ede)) => {
                // Owner names in the case the client asked (the engine was
                // asked in lower case); the encoder then points them at the
                // question.
                for record in answer.answers.iter_mut().filter(|record| record.name == qname) {
                    record.name = qname.clone();
                }
                metadata.response_code = answer.rcode;
                // RFC 6840 §5.8: AD for a client that asked with DO or AD;
                // not for one that set CD, which asked for no validation and
                // gets none vouched.
                metadata.authentic_data = answer.authentic_data
                    && (dnssec_ok || request.metadata.authentic_data)
                    && !request.metadata.checking_disabled;
                if let (Some((code, text)), Some(edns)) = (&ede, question.edns.as_mut()) {
                    edns.options_mut().insert(ede_option(*code, text));
                }
                self.inner.metrics.answered(answer.rcode);
                let response = MessageResponseBuilder::new(&request.queries, question.edns.as_ref()).build(
                    metadata,
                    answer.answers.iter(),
                    answer.authorities.iter(),
                    std::iter::empty(),
                    std::iter::empty(),
                );
                encode(response, request.protocol().is_datagram())
            }
        }
    }

    /// What is decided before the lists: the answer that ends a message
    /// here (a response, a refused client, BADVERS, another opcode, an
    /// unreadable question, another class or a zone transfer, a CHAOS
    /// name), or the question to decide with the query's snapshot and
    /// profile (the one snapshot load of this query: a refused source
    /// learns nothing, REFUSED with no EDNS and no larger than the query).
    fn screen(
        &self,
        request: &Request,
        client_id: Option<&ClientId>,
        snapshot: Arc<Snapshot>,
    ) -> Result<Screened, Replied> {
        let client = request.src().ip();
        if request.metadata.message_type == hickory_proto::op::MessageType::Response {
            // Never answer an answer. Every transport screens them out
            // before parsing (`wire::screen_header`); this is the backstop
            // for one that did not.
            self.inner.discards.note(Discard::Response, client);
            return Err(Replied::nothing(ResponseCode::Refused));
        }
        let Some(profile) = ClientId::profile(client_id, &snapshot, client) else {
            self.inner.metrics.refused();
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::Refused;
            metadata.recursion_desired = request.metadata.recursion_desired;
            let response = MessageResponseBuilder::new(&request.queries, None).build_no_records(metadata);
            return Err(encode(response, request.protocol().is_datagram()));
        };
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            // RFC 6891 §6.1.3: BADVERS is rcode 16, split between the header
            // and the OPT record's extended rcode.
            let mut edns = Edns::new();
            edns.set_rcode_high(ResponseCode::BADVERS.high());
            edns.set_max_payload(self.inner.udp_payload);
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::BADVERS;
            let response = MessageResponseBuilder::new(&request.queries, Some(&edns)).build_no_records(metadata);
            return Err(encode(response, request.protocol().is_datagram()));
        }
        // Answer with EDNS only when asked with EDNS (RFC 6891 §7), with our
        // payload limit, which also bounds the UDP response size.
        let edns = request.edns.as_ref().map(|edns| {
            let mut ours = Edns::new();
            ours.set_max_payload(wire::response_payload(edns.max_payload(), self.inner.udp_payload));
            ours.set_dnssec_ok(edns.flags().dnssec_ok);
            ours
        });
        if request.metadata.op_code != OpCode::Query {
            // Any other opcode (NOTIFY, UPDATE, ...): NOTIMP, echoing no flag
            // of the query's but RD, whether or not its sections parse.
            let mut metadata = Metadata::new(
                request.metadata.id,
                hickory_proto::op::MessageType::Response,
                request.metadata.op_code,
            );
            metadata.recursion_desired = request.metadata.recursion_desired;
            metadata.response_code = ResponseCode::NotImp;
            let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build_no_records(metadata);
            return Err(encode(response, request.protocol().is_datagram()));
        }
        let Ok(info) = request.request_info() else {
            return Err(refuse(request, edns.as_ref(), ResponseCode::FormErr));
        };
        let query = info.query.original().clone();
        let qtype = query.query_type();
        if let Some(text) = self.inner.chaos.answer(&query) {
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.authoritative = true;
            let mut record = Record::from_rdata(
                query.name().clone(),
                0,
                RData::TXT(hickory_proto::rr::rdata::TXT::new(vec![text.to_owned()])),
            );
            record.dns_class = hickory_proto::rr::DNSClass::CH;
            let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
                metadata,
                std::iter::once(&record),
                std::iter::empty(),
                std::iter::empty(),
                std::iter::empty(),
            );
            return Err(encode(response, request.protocol().is_datagram()));
        }
        // Questions a filtering resolver does not resolve: other classes
        // and zone transfers (REFUSED); meta types and a query with TC set
        // cannot be a well-formed question (FORMERR).
        if query.query_class() != hickory_proto::rr::DNSClass::IN
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
        {
            return Err(refuse(request, edns.as_ref(), ResponseCode::Refused));
        }
        if matches!(qtype, RecordType::OPT | RecordType::TSIG) || request.metadata.truncation {
            return Err(refuse(request, edns.as_ref(), ResponseCode::FormErr));
        }
        // The question as a block answer echoes it: hickory's encoding of
        // the parsed question, uncompressed and in the client's case.
        let mut wire = Vec::with_capacity(64);
        if query.emit(&mut BinEncoder::new(&mut wire)).is_err() {
            return Err(refuse(request, edns.as_ref(), ResponseCode::FormErr));
        }
        Ok(Screened {
            snapshot,
            profile,
            query,
            wire,
            edns,
        })
    }

    /// Resolves a question the policy let through (DNS64 for AAAA when the
    /// profile asks), then checks the answer: `Err` is the block it earned.
    async fn resolve_checked(
        &self,
        query: &QueryContext<'_>,
        qtype: RecordType,
        dnssec_ok: bool,
        wanted: Wanted,
    ) -> Result<(UpstreamAnswer, Option<Ede>), BlockAnswer> {
        let qname = query.qname;
        let dns64 = query
            .snapshot
            .profile(query.profile)
            .dns64
            .filter(|_| qtype == RecordType::AAAA);
        let (answer, ede) = match dns64 {
            Some(dns64) => self.resolve_dns64(query, dns64, dnssec_ok, wanted).await?,
            None => {
                let key = CacheKey {
                    name: LowerName::new(qname),
                    qtype,
                    dnssec_ok,
                };
                self.resolve(key, qname, qtype, wanted).await
            }
        };
        match self.check_answer(query, qtype, &answer.answers) {
            Some(block) => Err(block),
            None => Ok((answer, ede)),
        }
    }
}

impl ShieldHandler {
    /// Counts a list block under the query's profile and list, and marks
    /// the query blocked for the log.
    fn count_list_block(&self, query: &QueryContext<'_>, hit: &Hit) {
        let ede = query.snapshot.ede_code(hit);
        self.inner
            .metrics
            .list_blocked(&query.snapshot, query.profile, hit.list, ede);
        let _ = query.observed.blocked.set(Blocked::List { list: hit.list, ede });
    }

    /// Queues a query-log event. Only reached when the log is on; the
    /// event's strings are built here, never when it is off.
    fn log(&self, request: &Request, observed: &Observed, logged: &Logged<'_>) {
        let Logged {
            transport,
            client_id,
            blocked,
            rcode,
            started,
        } = *logged;
        let Some(query_log) = &self.inner.query_log else {
            return;
        };
        let response_time = SystemTime::now();
        let (name, qtype) = match request.request_info() {
            Ok(info) => {
                let mut name = NameBuf::default();
                let _ = write!(name, "{}", info.query.name());
                (name.as_str().to_owned(), u16::from(info.query.query_type()))
            }
            Err(_) => (String::new(), 0),
        };
        let (profile, blocked) = match observed.query.get() {
            Some((snapshot, profile)) => {
                let blocked = blocked.map(|b| match b {
                    Blocked::List { list, ede } => {
                        let policy = snapshot.list(list).map(|l| &l.policy);
                        LoggedBlock::List {
                            list: Arc::from(policy.map_or("?", |p| p.name.as_str())),
                            category: policy.and_then(|p| p.category.as_deref()).map(Arc::from),
                            ede,
                        }
                    }
                    Blocked::Policy(action) => LoggedBlock::Policy(action.label()),
                });
                (Arc::from(Metrics::profile_name(snapshot, *profile)), blocked)
            }
            None => (Arc::from(shieldns_metrics::NO_PROFILE), None),
        };
        query_log.submit(QueryEvent {
            time: response_time.checked_sub(started.elapsed()).unwrap_or(response_time),
            response_time,
            client: request.src(),
            server: None,
            protocol: transport.label(),
            client_id: client_id.map(|c| Arc::from(c.id.as_str())),
            name,
            qtype,
            id: request.metadata.id,
            rcode,
            profile,
            blocked,
        });
    }
}

/// Encodes a block (or sends nothing for a drop): a [`BlockForm`] through
/// the wire codec, the records of a rewrite through hickory.
fn send_block(
    block: BlockAnswer,
    mut metadata: Metadata,
    edns: Option<&mut Edns>,
    request: &Request,
    asked: &Asked<'_>,
) -> Replied {
    let datagram = request.protocol().is_datagram();
    match block {
        // Nothing is sent; the query counts as refused.
        BlockAnswer::Drop => Replied::nothing(ResponseCode::Refused),
        BlockAnswer::Block {
            form,
            ede: (code, text),
        } => {
            let mut bytes = Vec::with_capacity(128);
            wire::write_block(&mut bytes, asked, &form, (code, EdeText::plain(&text)));
            let opt = asked
                .edns
                .map(|(payload, dnssec_ok)| (payload, [0, 0, if dnssec_ok { 0x80 } else { 0 }, 0]));
            Replied {
                bytes: fit(bytes, datagram, opt),
                rcode: u16::from(form.rcode()),
            }
        }
        BlockAnswer::Records {
            rcode,
            answers,
            authorities,
            ede,
        } => {
            metadata.response_code = rcode;
            let edns = edns.map(|edns| {
                if let Some((code, text)) = &ede {
                    edns.options_mut().insert(ede_option(*code, text));
                }
                &*edns
            });
            let response = MessageResponseBuilder::new(&request.queries, edns).build(
                metadata,
                answers.iter(),
                std::iter::empty(),
                authorities.iter(),
                std::iter::empty(),
            );
            encode(response, datagram)
        }
    }
}

/// An answer without records: `rcode` for the question as asked.
fn refuse(request: &Request, edns: Option<&Edns>, rcode: ResponseCode) -> Replied {
    let response = MessageResponseBuilder::new(&request.queries, edns).error_msg(&request.metadata, rcode);
    encode(response, request.protocol().is_datagram())
}

/// Encodes a response built with hickory; over UDP it is fitted to the
/// client's payload size ([`fit`]).
fn encode<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    datagram: bool,
) -> Replied {
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
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(u16::MAX);
    match response.destructive_emit(&mut encoder) {
        Ok(info) => Replied {
            bytes: fit(bytes, datagram, opt),
            rcode: u16::from(info.response_code),
        },
        Err(error) => {
            debug!(%error, "cannot encode a response");
            Replied::nothing(ResponseCode::ServFail)
        }
    }
}

/// An answer as sent: over UDP, when it is larger than the client takes
/// (RFC 1035 §4.2.1: 512 bytes without EDNS, else the payload size of the
/// answer's OPT, `opt`), TC with the question alone and the OPT, never a
/// part of an RRset (RFC 2181 §9); the client asks again over TCP.
fn fit(bytes: Vec<u8>, datagram: bool, opt: Option<(u16, [u8; 4])>) -> Option<Vec<u8>> {
    let limit = opt.map_or(512, |(payload, _)| usize::from(payload));
    if !datagram || bytes.len() <= limit {
        return Some(bytes);
    }
    wire::truncated(&bytes, opt)
}
