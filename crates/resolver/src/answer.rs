//! Block answers: the records, response code and EDE for a blocked query.

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use shieldns_index::{BlockResponse, Hit, LocalData, Matched, Profile, RuleAction, Snapshot};

/// The RFC 8914 EDE option code.
pub(crate) const EDE_OPTION: u16 = 15;
/// EDE info code 3: Stale Answer.
pub(crate) const EDE_STALE_ANSWER: u16 = 3;
/// EDE info code 0: Other (the text says what).
pub(crate) const EDE_OTHER: u16 = 0;
/// EDE info code 6: DNSSEC Bogus.
pub(crate) const EDE_DNSSEC_BOGUS: u16 = 6;
/// EDE info code 9: DNSKEY Missing.
pub(crate) const EDE_DNSKEY_MISSING: u16 = 9;
/// EDE info code 10: RRSIGs Missing.
pub(crate) const EDE_RRSIGS_MISSING: u16 = 10;
/// EDE info code 20: Not Authoritative.
pub(crate) const EDE_NOT_AUTHORITATIVE: u16 = 20;
/// EDE info code 22: No Reachable Authority.
pub(crate) const EDE_NO_REACHABLE_AUTHORITY: u16 = 22;
/// EDE info code 15: Blocked.
pub(crate) const EDE_BLOCKED: u16 = 15;
/// EDE info code 17: Filtered.
pub(crate) const EDE_FILTERED: u16 = 17;

/// An EDE info code and its EXTRA-TEXT.
pub(crate) type Ede = (u16, String);

/// What to send for a blocked or rewritten query.
#[derive(Debug)]
pub(crate) enum BlockAnswer {
    /// Send nothing (RPZ `rpz-drop.`).
    Drop,
    /// Send this response.
    Respond {
        rcode: ResponseCode,
        answers: Vec<Record>,
        authorities: Vec<Record>,
        ede: Option<Ede>,
    },
}

/// Builds the answer for a list `hit` on `qname`/`qtype` for `profile`.
pub(crate) fn block_answer(
    snapshot: &Snapshot,
    profile: &Profile,
    hit: &Hit,
    qname: &Name,
    qtype: RecordType,
    extra: Option<&str>,
) -> BlockAnswer {
    let mut text = ede_text(snapshot, hit);
    if let Some(extra) = extra {
        text.push(' ');
        text.push_str(extra);
    }
    let ede = (snapshot.ede_code(hit), text);
    let owner = match hit.matched {
        Matched::Name { labels, .. } | Matched::Digest { labels } => trim_to_labels(qname, labels),
        Matched::Pattern | Matched::AnswerIp { .. } => qname.clone(),
    };
    match hit.action {
        RuleAction::Drop => BlockAnswer::Drop,
        RuleAction::NoData => nodata(&owner, profile.block_ttl, ede),
        RuleAction::Rewrite => rewrite(snapshot.local_data(hit), qname, qtype, profile.block_ttl, ede),
        _ => profile_block(profile, &owner, qname, qtype, ede),
    }
}

/// A block for a policy reason rather than a list rule (rebinding, answer
/// checks), answered the way the profile answers blocks.
pub(crate) fn policy_block(profile: &Profile, qname: &Name, qtype: RecordType, ede: Ede) -> BlockAnswer {
    profile_block(profile, qname, qname, qtype, ede)
}

/// NOERROR without records, with the SOA that lets clients cache it.
pub(crate) fn nodata(owner: &Name, ttl: u32, ede: Ede) -> BlockAnswer {
    BlockAnswer::Respond {
        rcode: ResponseCode::NoError,
        answers: vec![],
        authorities: vec![block_soa(owner, ttl)],
        ede: Some(ede),
    }
}

/// NXDOMAIN with the SOA that lets clients cache it.
pub(crate) fn nxdomain(owner: &Name, ttl: u32, ede: Ede) -> BlockAnswer {
    BlockAnswer::Respond {
        rcode: ResponseCode::NXDomain,
        answers: vec![],
        authorities: vec![block_soa(owner, ttl)],
        ede: Some(ede),
    }
}

/// A CNAME to `target`, which the handler then resolves and appends.
pub(crate) fn cname(qname: &Name, target: &str, ttl: u32) -> BlockAnswer {
    let answers = match Name::from_ascii(format!("{target}.")) {
        Ok(target) => vec![Record::from_rdata(qname.clone(), ttl, RData::CNAME(CNAME(target)))],
        Err(_) => vec![],
    };
    BlockAnswer::Respond {
        rcode: ResponseCode::NoError,
        answers,
        authorities: vec![],
        ede: None,
    }
}

/// The profile's `block_response`, with the SOA owned by `owner` (the
/// blocked name that matched).
fn profile_block(profile: &Profile, owner: &Name, qname: &Name, qtype: RecordType, ede: Ede) -> BlockAnswer {
    let ttl = profile.block_ttl;
    let address = |v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>, ede: Ede| {
        let rdata = match qtype {
            RecordType::A => v4.map(|a| RData::A(A(a))),
            RecordType::AAAA => v6.map(|a| RData::AAAA(AAAA(a))),
            _ => None,
        };
        match rdata {
            Some(rdata) => BlockAnswer::Respond {
                rcode: ResponseCode::NoError,
                answers: vec![Record::from_rdata(qname.clone(), ttl, rdata)],
                authorities: vec![],
                ede: Some(ede),
            },
            // Other types (MX, HTTPS, TXT…) get NODATA, never an A record
            // of the wrong type.
            None => nodata(owner, ttl, ede),
        }
    };
    match profile.block_response {
        BlockResponse::Nxdomain => nxdomain(owner, ttl, ede),
        BlockResponse::Nodata => nodata(owner, ttl, ede),
        BlockResponse::Null => address(Some(Ipv4Addr::UNSPECIFIED), Some(Ipv6Addr::UNSPECIFIED), ede),
        BlockResponse::Sinkhole => address(profile.sinkhole_ipv4, profile.sinkhole_ipv6, ede),
        BlockResponse::Refused => BlockAnswer::Respond {
            rcode: ResponseCode::Refused,
            answers: vec![],
            authorities: vec![],
            ede: Some(ede),
        },
    }
}

/// RPZ local data: records of the query's type, or a CNAME for any type.
fn rewrite(data: &[LocalData], qname: &Name, qtype: RecordType, ttl: u32, ede: Ede) -> BlockAnswer {
    let mut answers = Vec::new();
    for item in data {
        let rdata = match item {
            LocalData::A(a) if qtype == RecordType::A => RData::A(A(*a)),
            LocalData::Aaaa(a) if qtype == RecordType::AAAA => RData::AAAA(AAAA(*a)),
            LocalData::Cname(target) => match Name::from_ascii(format!("{target}.")) {
                Ok(name) => RData::CNAME(CNAME(name)),
                Err(_) => continue,
            },
            _ => continue,
        };
        answers.push(Record::from_rdata(qname.clone(), ttl, rdata));
    }
    BlockAnswer::Respond {
        rcode: ResponseCode::NoError,
        answers,
        authorities: vec![],
        ede: Some(ede),
    }
}

/// EXTRA-TEXT naming the list and category, e.g.
/// `list=national-csam category=csam`.
pub(crate) fn ede_text(snapshot: &Snapshot, hit: &Hit) -> String {
    match snapshot.list(hit.list) {
        Some(list) => match &list.policy.category {
            Some(category) => format!("list={} category={}", list.policy.name, category),
            None => format!("list={}", list.policy.name),
        },
        None => String::from("blocked by policy"),
    }
}

/// The SOA that negative block answers carry, so clients cache the block
/// for `ttl` seconds (RFC 2308 takes the minimum of the SOA TTL and its
/// MINIMUM field).
fn block_soa(owner: &Name, ttl: u32) -> Record {
    let mname = Name::from_ascii("blocked.shieldns.invalid.").unwrap_or_else(|_| Name::root());
    let rname = Name::from_ascii("hostmaster.shieldns.invalid.").unwrap_or_else(|_| Name::root());
    Record::from_rdata(
        owner.clone(),
        ttl,
        RData::SOA(SOA::new(mname, rname, 1, 3600, 600, 86_400, ttl)),
    )
}

/// The last `labels` labels of `name`.
fn trim_to_labels(name: &Name, labels: u8) -> Name {
    if labels >= name.num_labels() {
        return name.clone();
    }
    name.trim_to(usize::from(labels))
}
