//! The per-query path: ACL → profile → verdict → block answer, or cache →
//! upstream → answer check → response.
//!
//! One `ArcSwap::load` per query gives the snapshot; the guard is dropped
//! before the first `.await`, so a reload never waits for in-flight queries
//! and a query never sees half of a reload.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use shieldns_index::{ProfileId, Snapshot, Verdict};
use shieldns_metrics::Metrics;
use tracing::{debug, warn};

use crate::answer::{self, BlockAnswer, EDE_DNSSEC_BOGUS, EDE_OPTION, EDE_STALE_ANSWER};
use crate::cache::{AnswerCache, CacheKey, CachedAnswer};
use crate::upstream::{Upstream, UpstreamAnswer, UpstreamFailure};

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
    cache: AnswerCache,
    udp_payload: u16,
    in_flight: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// Counts a query as in flight until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the policy path decided, computed synchronously under one snapshot
/// load.
enum Decision {
    Refuse,
    Block(BlockAnswer),
    Resolve { profile: ProfileId },
}

impl ShieldHandler {
    pub(crate) fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        upstream: Upstream,
        cache: AnswerCache,
        udp_payload: u16,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                snapshot,
                upstream,
                cache,
                udp_payload,
                in_flight: AtomicUsize::new(0),
                metrics,
            }),
        }
    }

    /// Queries being answered right now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    fn decide(&self, client: IpAddr, qname: &Name, qtype: RecordType) -> Decision {
        let snapshot = self.inner.snapshot.load();
        if !snapshot.client_allowed(client) {
            return Decision::Refuse;
        }
        let profile_id = snapshot.profile_for(client);
        let mut name = NameBuf::default();
        if write!(name, "{qname}").is_err() {
            // A name that does not fit in 255 bytes cannot have come off the
            // wire; resolve it unfiltered rather than fail.
            return Decision::Resolve { profile: profile_id };
        }
        match snapshot.decide(name.as_str(), profile_id) {
            Verdict::Block(hit) => {
                let profile = snapshot.profile(profile_id);
                let list = snapshot.list(hit.list).map_or("?", |l| l.policy.name.as_str());
                debug!(%client, name = name.as_str(), list, line = hit.line, "blocked");
                self.inner.metrics.blocked(snapshot.ede_code(&hit));
                Decision::Block(answer::block_answer(&snapshot, profile, &hit, qname, qtype))
            }
            Verdict::Allow(_) | Verdict::Pass => Decision::Resolve { profile: profile_id },
        }
    }

    /// Checks addresses in an answer against answer-IP rules (RPZ rpz-ip).
    fn check_answer(
        &self,
        client: IpAddr,
        profile: ProfileId,
        qname: &Name,
        qtype: RecordType,
        answers: &[Record],
    ) -> Option<BlockAnswer> {
        let snapshot = self.inner.snapshot.load();
        for record in answers {
            let address = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            if let Verdict::Block(hit) = snapshot.decide_answer_ip(address, profile) {
                debug!(%client, %qname, %address, line = hit.line, "answer address blocked");
                self.inner.metrics.blocked(snapshot.ede_code(&hit));
                let profile = snapshot.profile(profile);
                return Some(answer::block_answer(&snapshot, profile, &hit, qname, qtype));
            }
        }
        None
    }

    /// Resolves through the cache and the upstream. Returns the answer and
    /// an EDE to attach (stale answer, bogus).
    async fn resolve(&self, key: CacheKey, qname: &Name, qtype: RecordType) -> (UpstreamAnswer, Option<(u16, String)>) {
        let now = Instant::now();
        let cached = self.inner.cache.get(&key);
        if let Some(entry) = &cached
            && entry.is_fresh(now)
        {
            self.inner.metrics.cache_hit();
            if self.inner.cache.config().prefetch && entry.should_prefetch(now) {
                self.spawn_prefetch(key.clone(), qname.clone(), qtype);
            }
            let remaining = entry.remaining(now);
            return (aged(entry, remaining, false), None);
        }
        self.inner.metrics.cache_miss();
        match self.inner.upstream.resolve(qname, qtype, key.dnssec_ok).await {
            Ok(answer) => {
                self.inner.cache.insert(
                    key,
                    answer.rcode,
                    answer.answers.clone(),
                    answer.authorities.clone(),
                    answer.authentic_data,
                );
                (answer, None)
            }
            Err(failure) => {
                if let (Some(entry), true) = (&cached, self.inner.cache.config().serve_stale) {
                    warn!(%qname, ?failure, "upstream failed; serving stale answer");
                    return (
                        aged(entry, STALE_ANSWER_TTL, true),
                        Some((EDE_STALE_ANSWER, String::from("upstream unreachable"))),
                    );
                }
                let ede = match failure {
                    UpstreamFailure::Bogus => Some((EDE_DNSSEC_BOGUS, String::from("DNSSEC validation failed"))),
                    UpstreamFailure::Failed(reason) => {
                        debug!(%qname, reason, "upstream failed");
                        None
                    }
                };
                let answer = UpstreamAnswer {
                    rcode: ResponseCode::ServFail,
                    answers: vec![],
                    authorities: vec![],
                    authentic_data: false,
                };
                (answer, ede)
            }
        }
    }

    /// An RPZ CNAME rewrite (e.g. to a safe-search host) is answered like a
    /// real CNAME: the target is resolved and its records follow, because
    /// stub resolvers do not chase CNAMEs themselves.
    async fn follow_rewrite_cname(&self, block: BlockAnswer, qtype: RecordType, dnssec_ok: bool) -> BlockAnswer {
        let BlockAnswer::Respond {
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
                return BlockAnswer::Respond {
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
        let (resolved, _) = self.resolve(key, &target, qtype).await;
        answers.extend(resolved.answers);
        BlockAnswer::Respond {
            rcode: resolved.rcode,
            answers,
            authorities,
            ede,
        }
    }

    fn spawn_prefetch(&self, key: CacheKey, qname: Name, qtype: RecordType) {
        let handler = self.clone();
        tokio::spawn(async move {
            if let Ok(answer) = handler.inner.upstream.resolve(&qname, qtype, key.dnssec_ok).await {
                handler.inner.cache.insert(
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

#[async_trait::async_trait]
impl RequestHandler for ShieldHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        let _in_flight = InFlight(&self.inner.in_flight);
        let client = request.src().ip();

        // Answer with EDNS only when asked with EDNS (RFC 6891 §7), with our
        // payload limit, which also bounds the UDP response size.
        let mut response_edns = request.edns.as_ref().map(|edns| {
            let mut ours = Edns::new();
            ours.set_max_payload(edns.max_payload().clamp(512, self.inner.udp_payload.max(512)));
            ours.set_dnssec_ok(edns.flags().dnssec_ok);
            ours
        });
        let dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);

        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            // RFC 6891 §6.1.3: BADVERS is rcode 16, split between the header
            // and the OPT record's extended rcode.
            let mut edns = Edns::new();
            edns.set_rcode_high(ResponseCode::BADVERS.high());
            edns.set_max_payload(self.inner.udp_payload);
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::BADVERS;
            let response = MessageResponseBuilder::new(&request.queries, Some(&edns)).build_no_records(metadata);
            return send(&mut response_handle, response, request).await;
        }
        let query = match request.request_info() {
            Ok(info) if request.metadata.op_code == OpCode::Query => info.query.original().clone(),
            Ok(_) => {
                let response = MessageResponseBuilder::new(&request.queries, response_edns.as_ref())
                    .error_msg(&request.metadata, ResponseCode::NotImp);
                return send(&mut response_handle, response, request).await;
            }
            Err(_) => {
                let response = MessageResponseBuilder::new(&request.queries, response_edns.as_ref())
                    .error_msg(&request.metadata, ResponseCode::FormErr);
                return send(&mut response_handle, response, request).await;
            }
        };
        let qname = query.name().clone();
        let qtype = query.query_type();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;

        let profile = match self.decide(client, &qname, qtype) {
            Decision::Refuse => {
                self.inner.metrics.refused();
                let response = MessageResponseBuilder::new(&request.queries, response_edns.as_ref())
                    .error_msg(&request.metadata, ResponseCode::Refused);
                return send(&mut response_handle, response, request).await;
            }
            Decision::Block(block) => {
                let block = self.follow_rewrite_cname(block, qtype, dnssec_ok).await;
                return self
                    .send_block(block, metadata, response_edns.as_mut(), request, &mut response_handle)
                    .await;
            }
            Decision::Resolve { profile } => profile,
        };

        let key = CacheKey {
            name: LowerName::new(&qname),
            qtype,
            dnssec_ok,
        };
        let (answer, ede) = self.resolve(key, &qname, qtype).await;
        if let Some(block) = self.check_answer(client, profile, &qname, qtype, &answer.answers) {
            return self
                .send_block(block, metadata, response_edns.as_mut(), request, &mut response_handle)
                .await;
        }
        metadata.response_code = answer.rcode;
        metadata.authentic_data = answer.authentic_data && dnssec_ok;
        if let (Some((code, text)), Some(edns)) = (&ede, response_edns.as_mut()) {
            edns.options_mut().insert(ede_option(*code, text));
        }
        self.inner.metrics.answered(answer.rcode);
        let response = MessageResponseBuilder::new(&request.queries, response_edns.as_ref()).build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        send(&mut response_handle, response, request).await
    }
}

impl ShieldHandler {
    async fn send_block<R: ResponseHandler>(
        &self,
        block: BlockAnswer,
        mut metadata: Metadata,
        edns: Option<&mut Edns>,
        request: &Request,
        response_handle: &mut R,
    ) -> ResponseInfo {
        match block {
            BlockAnswer::Drop => {
                // Nothing is sent; the info describes the dropped query.
                metadata.response_code = ResponseCode::Refused;
                ResponseInfo::from(hickory_proto::op::Header {
                    metadata,
                    counts: Default::default(),
                })
            }
            BlockAnswer::Respond {
                rcode,
                answers,
                authorities,
                ede,
            } => {
                metadata.response_code = rcode;
                let edns = edns.map(|edns| {
                    edns.options_mut().insert(ede_option(ede.0, &ede.1));
                    &*edns
                });
                let response = MessageResponseBuilder::new(&request.queries, edns).build(
                    metadata,
                    answers.iter(),
                    std::iter::empty(),
                    authorities.iter(),
                    std::iter::empty(),
                );
                send(response_handle, response, request).await
            }
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    response_handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            debug!(%error, client = %request.src(), "failed to send response");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_proto::op::Header {
                metadata,
                counts: Default::default(),
            })
        }
    }
}

/// A stack buffer for a query name in presentation form, lower case and
/// without the trailing dot, so the policy check needs no heap allocation.
struct NameBuf {
    bytes: [u8; 256],
    len: usize,
}

impl Default for NameBuf {
    fn default() -> Self {
        Self {
            bytes: [0; 256],
            len: 0,
        }
    }
}

impl NameBuf {
    fn as_str(&self) -> &str {
        let bytes = self.bytes.get(..self.len).unwrap_or_default();
        let text = std::str::from_utf8(bytes).unwrap_or_default();
        text.strip_suffix('.').unwrap_or(text)
    }
}

impl std::fmt::Write for NameBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        for (to, from) in slot.iter_mut().zip(s.bytes()) {
            *to = from.to_ascii_lowercase();
        }
        self.len = end;
        Ok(())
    }
}
