//! What an engine answers, the same for every engine: an upstream answer,
//! or why the resolution failed (which picks the client's EDE).

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Record;

/// An upstream answer.
#[derive(Debug)]
pub(crate) struct UpstreamAnswer {
    pub(crate) rcode: ResponseCode,
    pub(crate) answers: Vec<Record>,
    pub(crate) authorities: Vec<Record>,
    pub(crate) authentic_data: bool,
    /// An EDE the engine attached (libunbound's serve-expired: Stale Answer).
    pub(crate) ede: Option<crate::answer::Ede>,
}

/// Why an upstream query failed.
#[derive(Debug)]
pub(crate) enum UpstreamFailure {
    /// DNSSEC validation failed: EDE `code` (6 Bogus, 9 DNSKEY Missing,
    /// 10 RRSIGs Missing) with the validator's reason. `answer` is the bogus
    /// data, served only to a client that set CD.
    Bogus {
        code: u16,
        reason: String,
        answer: Option<Box<UpstreamAnswer>>,
    },
    /// No authority (or forwarder) gave a usable answer in time (EDE 22).
    Unreachable(String),
    /// Anything else.
    Failed(String),
}

impl UpstreamFailure {
    /// Why, in words.
    pub(crate) fn reason(&self) -> &str {
        match self {
            Self::Bogus { reason, .. } | Self::Unreachable(reason) | Self::Failed(reason) => reason,
        }
    }

    /// The failure without any bogus data (what the failure cache keeps and
    /// hands out).
    pub(crate) fn clone_reason(&self) -> Self {
        match self {
            Self::Bogus { code, reason, .. } => Self::Bogus {
                code: *code,
                reason: reason.clone(),
                answer: None,
            },
            Self::Unreachable(reason) => Self::Unreachable(reason.clone()),
            Self::Failed(reason) => Self::Failed(reason.clone()),
        }
    }
}
