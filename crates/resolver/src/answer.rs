//! Block answers behind the handler: a list hit or a policy block as a
//! [`BlockForm`] the wire codec encodes, or the records of a rewrite.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use shieldns_index::{Hit, LocalData, Profile, RuleAction, Snapshot};

use crate::wire::{BlockForm, EdeText};

/// An EDE info code and its EXTRA-TEXT.
pub(crate) type Ede = (u16, String);

/// What to send for a blocked or rewritten query.
#[derive(Debug)]
pub(crate) enum BlockAnswer {
    /// Send nothing (RPZ `rpz-drop.`).
    Drop,
    /// A block, encoded by [`crate::wire::write_block`] like the fast
    /// path's.
    Block { form: BlockForm, ede: Ede },
    /// Records to answer with: RPZ local data, or a CNAME (safe search)
    /// the handler follows.
    Records {
        rcode: ResponseCode,
        answers: Vec<Record>,
        authorities: Vec<Record>,
        ede: Option<Ede>,
    },
}

/// The answer for a list `hit` on `qname`/`qtype` for `profile`; a
/// negative answer's SOA is owned by the question name's last `soa_labels`
/// labels. `extra` is appended to the EDE text (`cname=…`, `ip=…`).
pub(crate) fn block_answer(
    snapshot: &Snapshot,
    profile: &Profile,
    hit: &Hit,
    qname: &Name,
    qtype: RecordType,
    soa_labels: u8,
    extra: Option<&str>,
) -> BlockAnswer {
    let ede = (snapshot.ede_code(hit), EdeText::list(snapshot, hit, extra).to_string());
    match BlockForm::for_rule(profile, hit.action, u16::from(qtype), soa_labels) {
        Some(form) => BlockAnswer::Block { form, ede },
        None if hit.action == RuleAction::Rewrite => {
            rewrite(snapshot.local_data(hit), qname, qtype, profile.block_ttl, ede)
        }
        None => BlockAnswer::Drop,
    }
}

/// A CNAME to `target`, which the handler then resolves and appends.
pub(crate) fn cname(qname: &Name, target: &str, ttl: u32) -> BlockAnswer {
    let answers = match Name::from_ascii(format!("{target}.")) {
        Ok(target) => vec![Record::from_rdata(qname.clone(), ttl, RData::CNAME(CNAME(target)))],
        Err(_) => vec![],
    };
    BlockAnswer::Records {
        rcode: ResponseCode::NoError,
        answers,
        authorities: vec![],
        ede: None,
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
    BlockAnswer::Records {
        rcode: ResponseCode::NoError,
        answers,
        authorities: vec![],
        ede: Some(ede),
    }
}
