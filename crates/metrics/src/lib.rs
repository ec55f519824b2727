//! shieldns-metrics: metric definitions for the resolver and the daemon.
//!
//! Key design decision: every labelled counter child is resolved once, when
//! [`Metrics`] is built, and kept as a plain handle, so the hot path pays one
//! atomic add per event and never hashes a label set. Labels are bounded
//! (rcode, EDE code): never a client address or a query name.

use prometheus::{Encoder, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

/// Errors registering or rendering metrics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The prometheus registry refused a metric or could not encode.
    #[error("metrics: {reason}")]
    Prometheus {
        /// Why.
        reason: String,
    },
}

impl From<prometheus::Error> for MetricsError {
    fn from(error: prometheus::Error) -> Self {
        Self::Prometheus {
            reason: error.to_string(),
        }
    }
}

/// A policy action beyond list blocks, counted by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyAction {
    /// A safe-search rewrite.
    SafeSearch,
    /// A bypass defence answer (DoH canary, Private Relay, DDR).
    Bypass,
    /// A query type blocked by profile.
    QueryType,
    /// An answer blocked because a CNAME target is listed.
    CnameInspection,
    /// An answer blocked by an answer-IP rule.
    AnswerIp,
    /// An answer blocked by rebinding protection.
    Rebinding,
    /// An AAAA answer synthesized by DNS64.
    Dns64,
}

impl PolicyAction {
    const ALL: [Self; 7] = [
        Self::SafeSearch,
        Self::Bypass,
        Self::QueryType,
        Self::CnameInspection,
        Self::AnswerIp,
        Self::Rebinding,
        Self::Dns64,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::SafeSearch => "safe_search",
            Self::Bypass => "bypass_protection",
            Self::QueryType => "block_qtypes",
            Self::CnameInspection => "cname_inspection",
            Self::AnswerIp => "answer_ip",
            Self::Rebinding => "rebinding_protection",
            Self::Dns64 => "dns64",
        }
    }
}

/// The resolver's counters, with pre-resolved label children.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    answered_noerror: IntCounter,
    answered_nxdomain: IntCounter,
    answered_servfail: IntCounter,
    answered_other: IntCounter,
    refused: IntCounter,
    blocked_blocked: IntCounter,
    blocked_censored: IntCounter,
    blocked_filtered: IntCounter,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    policy_actions: [IntCounter; 7],
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let responses = IntCounterVec::new(
            Opts::new(
                "shieldns_resolver_responses_total",
                "Resolved (not blocked) responses by rcode.",
            ),
            &["rcode"],
        )?;
        let blocked = IntCounterVec::new(
            Opts::new("shieldns_policy_blocked_total", "Blocked queries by RFC 8914 EDE code."),
            &["ede"],
        )?;
        let refused = IntCounter::new("shieldns_acl_refused_total", "Queries refused by the access list.")?;
        let cache = IntCounterVec::new(
            Opts::new("shieldns_cache_lookups_total", "Cache lookups by result."),
            &["result"],
        )?;
        registry.register(Box::new(responses.clone()))?;
        registry.register(Box::new(blocked.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(cache.clone()))?;
        let policy = IntCounterVec::new(
            Opts::new(
                "shieldns_policy_actions_total",
                "Policy actions beyond list blocks, by action.",
            ),
            &["action"],
        )?;
        registry.register(Box::new(policy.clone()))?;
        let policy_actions = PolicyAction::ALL.map(|action| policy.with_label_values(&[action.label()]));
        Ok(Self {
            answered_noerror: responses.with_label_values(&["NOERROR"]),
            answered_nxdomain: responses.with_label_values(&["NXDOMAIN"]),
            answered_servfail: responses.with_label_values(&["SERVFAIL"]),
            answered_other: responses.with_label_values(&["other"]),
            blocked_blocked: blocked.with_label_values(&["15"]),
            blocked_censored: blocked.with_label_values(&["16"]),
            blocked_filtered: blocked.with_label_values(&["17"]),
            cache_hits: cache.with_label_values(&["hit"]),
            cache_misses: cache.with_label_values(&["miss"]),
            refused,
            policy_actions,
            registry,
        })
    }

    /// Counts a resolved response by its rcode (`u16` value).
    pub fn answered(&self, rcode: impl Into<u16>) {
        match rcode.into() {
            0 => self.answered_noerror.inc(),
            2 => self.answered_servfail.inc(),
            3 => self.answered_nxdomain.inc(),
            _ => self.answered_other.inc(),
        }
    }

    /// Counts a blocked query by EDE code.
    pub fn blocked(&self, ede: u16) {
        match ede {
            16 => self.blocked_censored.inc(),
            17 => self.blocked_filtered.inc(),
            _ => self.blocked_blocked.inc(),
        }
    }

    /// Counts a policy action.
    pub fn policy(&self, action: PolicyAction) {
        if let Some(counter) = PolicyAction::ALL
            .iter()
            .position(|a| *a == action)
            .and_then(|i| self.policy_actions.get(i))
        {
            counter.inc();
        }
    }

    /// Counts a query refused by the access list.
    pub fn refused(&self) {
        self.refused.inc();
    }

    /// Counts a cache hit.
    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    /// Counts a cache miss.
    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        String::from_utf8(buffer).map_err(|e| MetricsError::Prometheus { reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_with_bounded_labels() {
        let metrics = Metrics::new().unwrap();
        metrics.blocked(16);
        metrics.blocked(16);
        metrics.answered(3u16);
        metrics.cache_hit();
        let text = metrics.render().unwrap();
        assert!(text.contains("shieldns_policy_blocked_total{ede=\"16\"} 2"), "{text}");
        assert!(
            text.contains("shieldns_resolver_responses_total{rcode=\"NXDOMAIN\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("shieldns_cache_lookups_total{result=\"hit\"} 1"),
            "{text}"
        );
    }
}
