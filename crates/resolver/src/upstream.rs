//! Upstream resolution behind one interface: libunbound (the default, in
//! [`crate::unbound`]) or hickory's recursor and forwarder.
//!
//! Every engine returns the upstream's answer as plain records; the handler
//! owns its answer cache, serve-stale and policy, so no engine's own quirks
//! are on the answer path.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hickory_proto::dnssec::{Proof, TrustAnchors};
use hickory_proto::op::{DnsRequest, DnsRequestOptions, Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::config::{NameServerConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::DnsHandle;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::recursor::{DnssecConfig, DnssecPolicy, Recursor, RecursorOptions};
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};

use crate::config::{CacheConfig, UpstreamConfig, UpstreamEngine, UpstreamMode};
use crate::error::ResolverError;
use crate::resolved::{UpstreamAnswer, UpstreamFailure};
use crate::unbound::UnboundEngine;

/// The IANA root server addresses (root hints as of 2024; stable for
/// decades), used when no `upstream.root_hints` file is configured.
const IANA_ROOTS: &[&str] = &[
    "198.41.0.4",
    "170.247.170.2",
    "192.33.4.12",
    "199.7.91.13",
    "192.203.230.10",
    "192.5.5.241",
    "192.112.36.4",
    "198.97.190.53",
    "192.36.148.17",
    "192.58.128.30",
    "193.0.14.129",
    "199.7.83.42",
    "202.12.27.33",
    "2001:503:ba3e::2:30",
    "2801:1b8:10::b",
    "2001:500:2::c",
    "2001:500:2d::d",
    "2001:500:a8::e",
    "2001:500:2f::f",
    "2001:500:12::d0d",
    "2001:500:1::53",
    "2001:7fe::53",
    "2001:503:c27::2:30",
    "2001:7fd::1",
    "2001:500:9f::42",
    "2001:dc3::35",
];

/// The upstream engine.
pub(crate) enum Upstream {
    Unbound(UnboundEngine),
    Recursive(Box<Recursor<TokioRuntimeProvider>>),
    Forward(NameServerPool<TokioRuntimeProvider>),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unbound(engine) => engine.fmt(f),
            Self::Recursive(_) => f.write_str("Upstream::Recursive"),
            Self::Forward(_) => f.write_str("Upstream::Forward"),
        }
    }
}

impl Upstream {
    /// Builds the upstream from configuration. Runs inside the Tokio runtime.
    pub(crate) fn new(config: &UpstreamConfig, cache: &CacheConfig) -> Result<Self, ResolverError> {
        require_forwarders(config)?;
        match config.engine {
            UpstreamEngine::Unbound => Ok(Self::Unbound(UnboundEngine::new(config, cache)?)),
            UpstreamEngine::Hickory => Self::hickory(config),
        }
    }

    /// Checks the configuration as [`Self::new`] would apply it, without
    /// starting anything (hickory's engines have nothing to check beyond it).
    pub(crate) fn check(config: &UpstreamConfig, cache: &CacheConfig) -> Result<(), ResolverError> {
        require_forwarders(config)?;
        match config.engine {
            UpstreamEngine::Unbound => UnboundEngine::check(config, cache),
            UpstreamEngine::Hickory => Ok(()),
        }
    }

    fn hickory(config: &UpstreamConfig) -> Result<Self, ResolverError> {
        let timeout = Duration::from_millis(config.timeout_ms.max(100));
        match config.mode {
            UpstreamMode::Forward => {
                let servers = config.forward.iter().map(|address| {
                    let mut server = NameServerConfig::udp_and_tcp(address.ip());
                    for connection in &mut server.connections {
                        connection.port = address.port();
                    }
                    server
                });
                let mut options = ResolverOpts::default();
                options.timeout = timeout;
                options.attempts = 2;
                options.cache_size = 0;
                let tls = TlsConfig::new().map_err(|e| ResolverError::Upstream { reason: e.to_string() })?;
                let context = Arc::new(PoolContext::new(options, tls));
                Ok(Self::Forward(NameServerPool::from_config(
                    servers,
                    context,
                    TokioRuntimeProvider::default(),
                )))
            }
            UpstreamMode::Recursive => {
                let roots = match &config.root_hints {
                    Some(path) => read_root_hints(path)?,
                    None => IANA_ROOTS.iter().filter_map(|a| a.parse().ok()).collect(),
                };
                let mut options = RecursorOptions::default();
                if config.allow_private_nameservers {
                    options.deny_server = Vec::new();
                }
                options.case_randomization = true;
                let policy = if config.dnssec {
                    let mut dnssec = DnssecConfig::default();
                    if let Some(path) = config.trust_anchor_files.first() {
                        let anchors = TrustAnchors::from_file(path).map_err(|e| ResolverError::Config {
                            key: "upstream.trust_anchor_files",
                            reason: format!("{}: {e}", path.display()),
                        })?;
                        dnssec.trust_anchor = Some(Arc::new(anchors));
                    }
                    DnssecPolicy::ValidateWithStaticKey(dnssec)
                } else {
                    DnssecPolicy::SecurityUnaware
                };
                let recursor = Recursor::new(&roots, policy, None, options, TokioRuntimeProvider::default())
                    .map_err(|e| ResolverError::Upstream { reason: e.to_string() })?;
                Ok(Self::Recursive(Box::new(recursor)))
            }
        }
    }

    /// Resolves one question.
    pub(crate) async fn resolve(
        &self,
        name: &Name,
        qtype: RecordType,
        dnssec_ok: bool,
    ) -> Result<UpstreamAnswer, UpstreamFailure> {
        match self {
            Self::Unbound(engine) => engine.resolve(name, qtype, dnssec_ok).await,
            Self::Recursive(recursor) => {
                let query = Query::query(name.clone(), qtype);
                match recursor.resolve(query, Instant::now(), dnssec_ok).await {
                    Ok(message) => from_recursor(message, name),
                    Err(error) if error.is_nx_domain() || error.is_no_records_found() => {
                        let rcode = if error.is_nx_domain() {
                            ResponseCode::NXDomain
                        } else {
                            ResponseCode::NoError
                        };
                        let authorities = error
                            .into_soa()
                            .map(|soa| vec![soa.into_record_of_rdata()])
                            .unwrap_or_default();
                        Ok(UpstreamAnswer {
                            rcode,
                            answers: vec![],
                            authorities,
                            authentic_data: false,
                            ede: None,
                        })
                    }
                    Err(error) => {
                        let text = error.to_string();
                        if text.to_ascii_lowercase().contains("bogus") {
                            Err(UpstreamFailure::Bogus {
                                code: shieldns_index::ede::DNSSEC_BOGUS,
                                reason: text,
                                answer: None,
                            })
                        } else {
                            Err(UpstreamFailure::Failed(text))
                        }
                    }
                }
            }
            Self::Forward(pool) => {
                let mut message = Message::query();
                message.metadata.id = rand::random();
                message.metadata.op_code = OpCode::Query;
                message.metadata.recursion_desired = true;
                message.add_query(Query::query(name.clone(), qtype));
                let mut edns = Edns::new();
                edns.set_max_payload(1232);
                edns.set_dnssec_ok(dnssec_ok);
                message.set_edns(edns);
                let mut options = DnsRequestOptions::default();
                options.recursion_desired = true;
                let request = DnsRequest::new(message, options);
                match pool.send(request).next().await {
                    Some(Ok(response)) => {
                        let message = response.into_message();
                        if message.metadata.response_code == ResponseCode::ServFail {
                            return Err(UpstreamFailure::Failed("upstream answered SERVFAIL".into()));
                        }
                        Ok(from_message(message))
                    }
                    // The pool reports NXDOMAIN and NODATA as errors; they
                    // are answers, with the SOA for negative caching.
                    Some(Err(NetError::Dns(DnsError::NoRecordsFound(no_records)))) => {
                        let authorities = match (no_records.authorities, no_records.soa) {
                            (Some(authorities), _) => authorities.to_vec(),
                            (None, Some(soa)) => vec![soa.into_record_of_rdata()],
                            (None, None) => Vec::new(),
                        };
                        Ok(UpstreamAnswer {
                            rcode: no_records.response_code,
                            answers: vec![],
                            authorities,
                            authentic_data: false,
                            ede: None,
                        })
                    }
                    Some(Err(error)) => Err(UpstreamFailure::Failed(error.to_string())),
                    None => Err(UpstreamFailure::Failed("no response from any upstream".into())),
                }
            }
        }
    }
}

/// Forward mode needs a forwarder, whichever engine forwards.
fn require_forwarders(config: &UpstreamConfig) -> Result<(), ResolverError> {
    if config.mode == UpstreamMode::Forward && config.forward.is_empty() {
        return Err(ResolverError::Config {
            key: "upstream.forward",
            reason: "mode = \"forward\" needs at least one server".into(),
        });
    }
    Ok(())
}

/// Converts the recursor's answer: a bogus RRset fails the query (SERVFAIL
/// with EDE 6), an all-secure answer gets AD, names lose the 0x20 case
/// randomization the recursor used towards the authorities, and a CNAME
/// chain is put in order from the query name (the recursor may return the
/// target's records first, which stub resolvers do not expect).
fn from_recursor(message: Message, qname: &Name) -> Result<UpstreamAnswer, UpstreamFailure> {
    let mut answer = from_message(message);
    let records = || answer.answers.iter().chain(&answer.authorities);
    if records().any(|r| r.proof == Proof::Bogus) {
        return Err(UpstreamFailure::Bogus {
            code: shieldns_index::ede::DNSSEC_BOGUS,
            reason: "DNSSEC validation failed".into(),
            answer: None,
        });
    }
    answer.authentic_data = records().next().is_some() && records().all(|r| r.proof == Proof::Secure);
    for record in answer.answers.iter_mut().chain(answer.authorities.iter_mut()) {
        record.name = record.name.to_lowercase();
        if let RData::CNAME(target) = &mut record.data {
            target.0 = target.0.to_lowercase();
        }
    }
    order_cname_chain(&mut answer.answers, qname);
    Ok(answer)
}

/// Sorts answer records by their owner's position in the CNAME chain that
/// starts at `qname`; records off the chain keep their order at the end.
fn order_cname_chain(answers: &mut [Record], qname: &Name) {
    let mut chain = vec![qname.to_lowercase()];
    while chain.len() <= answers.len() {
        let Some(current) = chain.last() else { break };
        let next = answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.name == *current => Some(target.0.clone()),
            _ => None,
        });
        match next {
            Some(target) if !chain.contains(&target) => chain.push(target),
            _ => break,
        }
    }
    answers.sort_by_key(|r| chain.iter().position(|n| *n == r.name).unwrap_or(chain.len()));
}

fn from_message(message: Message) -> UpstreamAnswer {
    let authentic_data = message.metadata.authentic_data;
    UpstreamAnswer {
        rcode: message.metadata.response_code,
        answers: message.answers,
        authorities: message.authorities,
        authentic_data,
        ede: None,
    }
}

/// Reads the addresses out of a root hints zone file.
fn read_root_hints(path: &std::path::Path) -> Result<Vec<IpAddr>, ResolverError> {
    let text = std::fs::read_to_string(path).map_err(|e| ResolverError::Config {
        key: "upstream.root_hints",
        reason: format!("{}: {e}", path.display()),
    })?;
    let mut roots = Vec::new();
    for line in text.lines() {
        let line = line.split(';').next().unwrap_or("");
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let Some(position) = fields
            .iter()
            .position(|f| f.eq_ignore_ascii_case("A") || f.eq_ignore_ascii_case("AAAA"))
            && let Some(address) = fields.get(position + 1).and_then(|a| a.parse().ok())
        {
            roots.push(address);
        }
    }
    if roots.is_empty() {
        return Err(ResolverError::Config {
            key: "upstream.root_hints",
            reason: format!("{}: no A or AAAA records found", path.display()),
        });
    }
    Ok(roots)
}
