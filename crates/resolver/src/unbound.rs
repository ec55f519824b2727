//! The libunbound engine: `[upstream]` and `[cache]` turned into libunbound
//! settings, and libunbound's wire answer turned into an [`UpstreamAnswer`]
//! for the policy path.
//!
//! Key design decision: the answer is the packet libunbound produced,
//! parsed once; nothing of the resolution is re-done here. What this module
//! adds is what a client expects and the library leaves to its caller
//! (`shared/notes/libunbound.md` §13): DNSSEC records only for DO clients,
//! AD only on data validated secure, bogus data never served without CD,
//! and an EDE naming the real cause of a failure.

use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType};
use shieldns_unbound::{Answer, Resolver, Settings};

use crate::config::{CacheConfig, UpstreamConfig, UpstreamMode};
use crate::error::ResolverError;
use crate::resolved::{UpstreamAnswer, UpstreamFailure};
use shieldns_index::ede;

/// The IANA root trust anchors (root-anchors.xml): KSK-2017 and KSK-2024.
pub(crate) const IANA_ROOT_ANCHORS: [&str; 2] = [
    ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D",
    ". IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16",
];

/// Name-server addresses never queried unless `allow_private_nameservers`:
/// RFC 1918, shared address space, link-local and unique-local ranges.
const PRIVATE_RANGES: [&str; 7] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
];

/// TTL of answers served stale (RFC 8767 §4 recommends 30 s).
const STALE_REPLY_TTL: u32 = 30;
/// How long a refresh of an expired answer may take before the stale copy
/// is served (RFC 8767 §5's client response timer: 1.8 s).
const STALE_CLIENT_TIMEOUT: Duration = Duration::from_millis(1800);

/// Recursion or forwarding through libunbound.
#[derive(Debug)]
pub(crate) struct UnboundEngine {
    resolver: Resolver,
    deadline: Duration,
    mode: UpstreamMode,
    /// Whether libunbound serves expired answers (`cache.serve_stale`).
    serve_stale: bool,
}

impl UnboundEngine {
    /// Builds the contexts. Runs inside the Tokio runtime.
    pub(crate) fn new(config: &UpstreamConfig, cache: &CacheConfig) -> Result<Self, ResolverError> {
        let contexts = config.context_count();
        let settings = settings(config, cache, contexts)?;
        let resolver =
            Resolver::new(&settings, contexts).map_err(|e| ResolverError::Upstream { reason: e.to_string() })?;
        tracing::info!(
            version = %shieldns_unbound::version(),
            contexts,
            mode = ?config.mode,
            "libunbound engine ready"
        );
        Ok(Self {
            resolver,
            deadline: Duration::from_millis(config.resolution_timeout_ms.max(100)),
            mode: config.mode,
            serve_stale: cache.serve_stale,
        })
    }

    /// Checks the configuration as [`Self::new`] would apply it, without
    /// starting anything.
    pub(crate) fn check(config: &UpstreamConfig, cache: &CacheConfig) -> Result<(), ResolverError> {
        let settings = settings(config, cache, 1)?;
        shieldns_unbound::check(&settings).map_err(|e| ResolverError::Upstream { reason: e.to_string() })
    }

    /// Resolves one question; `dnssec_ok` keeps the DNSSEC records.
    pub(crate) async fn resolve(
        &self,
        name: &Name,
        qtype: RecordType,
        dnssec_ok: bool,
    ) -> Result<UpstreamAnswer, UpstreamFailure> {
        // Lower case, so that concurrent queries libunbound merges never
        // hand one client another's spelling; the handler answers with the
        // client's own question.
        let text = name.to_ascii().to_ascii_lowercase();
        let started = std::time::Instant::now();
        let asked = self.resolver.resolve(&text, u16::from(qtype), 1);
        let answer = match tokio::time::timeout(self.deadline, asked).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => return Err(UpstreamFailure::Failed(error.to_string())),
            Err(_) => {
                return Err(UpstreamFailure::Unreachable(format!(
                    "no answer from any {} within {} ms",
                    self.authority(),
                    self.deadline.as_millis()
                )));
            }
        };
        self.convert(answer, qtype, dnssec_ok, started.elapsed())
    }

    fn authority(&self) -> &'static str {
        match self.mode {
            UpstreamMode::Recursive => "authoritative server",
            UpstreamMode::Forward => "forwarder",
        }
    }

    fn convert(
        &self,
        answer: Answer,
        qtype: RecordType,
        dnssec_ok: bool,
        elapsed: Duration,
    ) -> Result<UpstreamAnswer, UpstreamFailure> {
        if answer.bogus {
            let reason = answer.why_bogus.clone().unwrap_or_else(|| "validation failed".into());
            let code = bogus_code(&reason);
            let data = parse(&answer.packet, qtype, dnssec_ok, false).ok();
            return Err(UpstreamFailure::Bogus {
                code,
                reason,
                answer: data.map(Box::new),
            });
        }
        if answer.rcode == u16::from(ResponseCode::ServFail) {
            return Err(UpstreamFailure::Unreachable(format!(
                "no {} gave a usable answer",
                self.authority()
            )));
        }
        let mut parsed = parse(&answer.packet, qtype, dnssec_ok, answer.secure).map_err(UpstreamFailure::Failed)?;
        // The library marks a stale answer (serve-expired) nowhere: its EDE 3
        // does not reach the packet in library builds (measured with
        // `ede: yes`) and the result's TTL is the reply TTL. It is the answer
        // that came only once the client timer ran out, with every TTL at the
        // stale reply TTL.
        let stale = self.serve_stale
            && answer.havedata
            // The library's timer has millisecond granularity and may fire
            // a little early.
            && elapsed + Duration::from_millis(50) >= STALE_CLIENT_TIMEOUT
            && parsed.answers.iter().all(|record| record.ttl == STALE_REPLY_TTL);
        if stale {
            parsed.ede = Some((ede::STALE_ANSWER, String::from("upstream unreachable")));
        }
        Ok(parsed)
    }
}

/// The EDE for a validation failure, from libunbound's reason.
fn bogus_code(reason: &str) -> u16 {
    let reason = reason.to_ascii_lowercase();
    if reason.contains("no signatures") || reason.contains("no dnssec records") || reason.contains("missing rrsig") {
        ede::RRSIGS_MISSING
    } else if reason.contains("dnskey") && (reason.contains("no keys") || reason.contains("could not fetch")) {
        ede::DNSKEY_MISSING
    } else {
        ede::DNSSEC_BOGUS
    }
}

/// Parses libunbound's reply; without `dnssec_ok`, drops the DNSSEC records
/// the client did not ask for.
fn parse(packet: &[u8], qtype: RecordType, dnssec_ok: bool, secure: bool) -> Result<UpstreamAnswer, String> {
    let message = Message::from_vec(packet).map_err(|e| format!("libunbound's answer does not parse: {e}"))?;
    let keep = |record: &Record| dnssec_ok || record.record_type() == qtype || !is_dnssec(record.record_type());
    Ok(UpstreamAnswer {
        rcode: message.metadata.response_code,
        answers: message.answers.into_iter().filter(keep).collect(),
        authorities: message.authorities.into_iter().filter(keep).collect(),
        authentic_data: secure,
        ede: None,
    })
}

fn is_dnssec(rtype: RecordType) -> bool {
    matches!(rtype, RecordType::RRSIG | RecordType::NSEC | RecordType::NSEC3)
}

fn yes_no(value: bool) -> String {
    String::from(if value { "yes" } else { "no" })
}

/// The libunbound settings for `[upstream]` and `[cache]`.
fn settings(config: &UpstreamConfig, cache: &CacheConfig, contexts: usize) -> Result<Settings, ResolverError> {
    let mut options: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: String| options.push((name.to_owned(), value));
    set(
        "module-config",
        String::from(if config.dnssec {
            "validator iterator"
        } else {
            "iterator"
        }),
    );
    set("qname-minimisation", yes_no(config.qname_minimisation));
    set("harden-glue", yes_no(config.harden_glue));
    set("do-ip4", yes_no(config.do_ip4));
    set("do-ip6", yes_no(config.do_ip6));
    // Forwarders are the operator's own choice (often a local dnsdist or a
    // resolver on the LAN): only delegations found while recursing are held
    // to the loopback and private-range rules.
    let forward = config.mode == UpstreamMode::Forward;
    let loopback_forwarder = forward && config.forward.iter().any(|a| a.ip().is_loopback());
    set(
        "do-not-query-localhost",
        yes_no(!(config.allow_loopback_nameservers || loopback_forwarder)),
    );
    if !config.allow_private_nameservers && !forward {
        for range in PRIVATE_RANGES {
            set("do-not-query-address", range.to_owned());
        }
    }
    for address in &config.outgoing_interfaces {
        set("outgoing-interface", address.to_string());
    }
    set("outgoing-range", config.outgoing_range.max(16).to_string());
    // The library's defaults are 1 MiB caches, which evict at ~40k names.
    let per_context = (config.cache_bytes / contexts.max(1) as u64).max(1 << 20);
    set("msg-cache-size", (per_context / 3).to_string());
    set("rrset-cache-size", (per_context / 3 * 2).to_string());
    set("minimal-responses", yes_no(true));
    // Process-wide in libunbound: every context gets the same values.
    set("cache-max-ttl", cache.max_ttl.to_string());
    set("cache-min-ttl", cache.min_ttl.to_string());
    set("cache-max-negative-ttl", cache.negative_max_ttl.to_string());
    // RFC 8767 serve-stale, the library's way: an expired answer is kept
    // for `stale_window` and served (TTL 30) when a refresh has not
    // answered within 1.8 s, the RFC's client response timer.
    if cache.serve_stale {
        set("serve-expired", yes_no(true));
        set("serve-expired-ttl", cache.stale_window.to_string());
        set("serve-expired-reply-ttl", STALE_REPLY_TTL.to_string());
        set(
            "serve-expired-client-timeout",
            STALE_CLIENT_TIMEOUT.as_millis().to_string(),
        );
    }
    if let Some(hints) = &config.root_hints {
        if !hints.is_file() {
            return Err(ResolverError::Config {
                key: "upstream.root_hints",
                reason: format!("{}: not a readable file", hints.display()),
            });
        }
        set("root-hints", hints.display().to_string());
    }
    for zone in &config.negative_trust_anchors {
        set("domain-insecure", zone.clone());
    }
    for (name, value) in &config.unbound_options {
        set(name, value.clone());
    }
    for file in &config.trust_anchor_files {
        if !file.is_file() {
            return Err(ResolverError::Config {
                key: "upstream.trust_anchor_files",
                reason: format!("{}: not a readable file", file.display()),
            });
        }
    }
    // An empty list in forward mode was refused by `Upstream`.
    let forwarders = match config.mode {
        UpstreamMode::Recursive => Vec::new(),
        UpstreamMode::Forward => config
            .forward
            .iter()
            .map(|address| format!("{}@{}", address.ip(), address.port()))
            .collect(),
    };
    let explicit = config.trust_anchors.is_some()
        || !config.trust_anchor_files.is_empty()
        || config.auto_trust_anchor_file.is_some();
    let trust_anchors = match &config.trust_anchors {
        _ if !config.dnssec => Vec::new(),
        Some(anchors) => anchors.clone(),
        None if explicit => Vec::new(),
        None => IANA_ROOT_ANCHORS.iter().map(|&a| a.to_owned()).collect(),
    };
    Ok(Settings {
        options,
        trust_anchors,
        trust_anchor_files: if config.dnssec {
            config.trust_anchor_files.clone()
        } else {
            Vec::new()
        },
        auto_trust_anchor_files: config
            .auto_trust_anchor_file
            .iter()
            .filter(|_| config.dnssec)
            .cloned()
            .collect(),
        forwarders,
        removed_local_zones: config.resolve_local_zones.clone(),
        verbosity: 0,
    })
}
