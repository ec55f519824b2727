//! The wire codec: every byte shieldns reads or writes itself.
//!
//! Parsing a standard query's header, question and OPT record; the
//! constants of the protocol; the stack name buffer; and the encoding of
//! every answer that is not made of upstream records: block answers (with
//! their SOA and the RFC 8914 EDE option), answers without records
//! (REFUSED, slip, FORMERR) and truncation. The UDP fast path and the full
//! handler both encode a block through [`write_block`], so a blocked name
//! gets the same bytes whichever path answers it; upstream records are
//! encoded by hickory-proto.
//!
//! Key design decision: nothing here allocates but the `Vec` it writes
//! into, and nothing trusts a length it has not checked, so the fast path
//! can run it on every datagram (the parsers are fuzzed in the tests).

use std::fmt;

use shieldns_index::{BlockResponse, Hit, Matched, Profile, RuleAction, Snapshot};
use shieldns_metrics::Discard;

/// Record types and classes used on the wire.
pub(crate) const TYPE_A: u16 = 1;
pub(crate) const TYPE_SOA: u16 = 6;
pub(crate) const TYPE_AAAA: u16 = 28;
pub(crate) const TYPE_OPT: u16 = 41;
pub(crate) const CLASS_IN: u16 = 1;
/// The RFC 8914 EDE option code.
pub(crate) const EDE_OPTION: u16 = 15;

/// The EDNS payload size an answer offers and is bounded by: the client's
/// (RFC 6891 §6.2.5: at least 512) capped by ours.
pub(crate) fn response_payload(client: u16, server: u16) -> u16 {
    client.clamp(512, server.max(512))
}

/// A query name in presentation form, lower case, without the trailing
/// dot, in a stack buffer: the policy check needs no heap allocation.
#[derive(Clone)]
pub(crate) struct NameBuf {
    bytes: [u8; 256],
    len: usize,
}

impl Default for NameBuf {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl NameBuf {
    pub(crate) const EMPTY: Self = Self {
        bytes: [0; 256],
        len: 0,
    };

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends an ASCII byte lowered; `None` when it is not ASCII or the
    /// buffer is full.
    pub(crate) fn push(&mut self, byte: u8) -> Option<()> {
        if !byte.is_ascii() {
            return None;
        }
        *self.bytes.get_mut(self.len)? = byte.to_ascii_lowercase();
        self.len += 1;
        Some(())
    }

    pub(crate) fn as_str(&self) -> &str {
        let bytes = self.bytes.get(..self.len).unwrap_or_default();
        // Only ASCII is ever written (`push` refuses the rest, and
        // `write_str` is all or nothing), so this is always UTF-8.
        let text = std::str::from_utf8(bytes).expect("a NameBuf holds ASCII only");
        text.strip_suffix('.').unwrap_or(text)
    }
}

impl fmt::Write for NameBuf {
    /// Writes all of `s` lowered, or nothing (a name too long for 255
    /// bytes, or not ASCII, cannot have come off the wire).
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        if !s.is_ascii() {
            return Err(fmt::Error);
        }
        for (to, from) in slot.iter_mut().zip(s.bytes()) {
            *to = from.to_ascii_lowercase();
        }
        self.len = end;
        Ok(())
    }
}

impl fmt::Debug for NameBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parts of a standard query the fast path needs, parsed from the
/// datagram. Each UDP thread keeps one per batch slot and parses into it in
/// place ([`parse_into`]): a batch moves no parsed names around.
#[derive(Clone, Debug)]
pub(crate) struct Question {
    /// End of the question section.
    pub(crate) question_end: usize,
    /// The query name, lower case, dotted, without the trailing dot.
    pub(crate) name: NameBuf,
    /// The number of labels in the name.
    pub(crate) labels: u8,
    pub(crate) qtype: u16,
    /// The client's EDNS payload size, when it sent an OPT record.
    pub(crate) edns_payload: Option<u16>,
    pub(crate) dnssec_ok: bool,
}

impl Question {
    pub(crate) const EMPTY: Self = Self {
        question_end: 0,
        name: NameBuf::EMPTY,
        labels: 0,
        qtype: 0,
        edns_payload: None,
        dnssec_ok: false,
    };

    /// The largest response this client accepts over UDP.
    pub(crate) fn max_response(&self, server_payload: u16) -> usize {
        usize::from(self.edns_payload.map_or(512, |p| response_payload(p, server_payload)))
    }
}

/// A parsed query: the datagram and what [`parse_into`] read from it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Query<'a> {
    pub(crate) packet: &'a [u8],
    pub(crate) question: &'a Question,
}

impl Query<'_> {
    pub(crate) fn id(&self) -> [u8; 2] {
        [self.packet[0], self.packet[1]]
    }

    /// What a block answer to this query echoes and offers.
    pub(crate) fn asked(&self, server_payload: u16) -> Asked<'_> {
        Asked {
            header: [self.packet[0], self.packet[1], self.packet[2], self.packet[3]],
            question: self.packet.get(12..self.question.question_end).unwrap_or_default(),
            labels: self.question.labels,
            qtype: self.question.qtype,
            edns: self
                .question
                .edns_payload
                .map(|payload| (response_payload(payload, server_payload), self.question.dnssec_ok)),
        }
    }
}

impl std::ops::Deref for Query<'_> {
    type Target = Question;

    fn deref(&self) -> &Question {
        self.question
    }
}

/// Parses a standard query into `question`, or returns `None` for anything
/// the fast path leaves to the full handler (`question` then holds garbage).
pub(crate) fn parse_into(packet: &[u8], question: &mut Question) -> Option<()> {
    let header = packet.get(..12)?;
    // QR=0, opcode QUERY, TC=0; one question, no answers or authorities, at
    // most one additional record (the OPT).
    if header[2] & 0xfa != 0 || header[4..8] != [0, 1, 0, 0] || header[8..10] != [0, 0] || header[10] != 0 {
        return None;
    }
    let additional = header[11];
    if additional > 1 {
        return None;
    }
    let name = &mut question.name;
    name.clear();
    let mut labels = 0u8;
    let mut at = 12;
    loop {
        let length = usize::from(*packet.get(at)?);
        at += 1;
        if length == 0 {
            break;
        }
        // Compression pointers and extended labels never appear in a
        // well-formed question; escapes are left to the full parser.
        if length > 63 {
            return None;
        }
        let label = packet.get(at..at + length)?;
        if !name.is_empty() {
            name.push(b'.')?;
        }
        for &byte in label {
            let lower = byte.to_ascii_lowercase();
            if !(lower.is_ascii_lowercase() || lower.is_ascii_digit() || lower == b'-' || lower == b'_') {
                return None;
            }
            name.push(lower)?;
        }
        labels = labels.checked_add(1)?;
        at += length;
    }
    let qtype = u16::from_be_bytes(packet.get(at..at + 2)?.try_into().ok()?);
    let qclass = u16::from_be_bytes(packet.get(at + 2..at + 4)?.try_into().ok()?);
    let question_end = at + 4;
    if qclass != CLASS_IN || name.is_empty() {
        return None;
    }
    let (edns_payload, dnssec_ok) = if additional == 1 {
        // The OPT record: root owner, TYPE 41, CLASS = payload size, TTL =
        // extended rcode, version, flags; its options are not needed here.
        let opt = packet.get(question_end..question_end + 11)?;
        if opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != TYPE_OPT || opt[6] != 0 {
            return None;
        }
        let rdlength = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
        if packet.len() != question_end + 11 + rdlength {
            return None;
        }
        (Some(u16::from_be_bytes([opt[3], opt[4]])), opt[7] & 0x80 != 0)
    } else {
        if packet.len() != question_end {
            return None;
        }
        (None, false)
    };
    question.question_end = question_end;
    question.labels = labels;
    question.qtype = qtype;
    question.edns_payload = edns_payload;
    question.dnssec_ok = dnssec_ok;
    Some(())
}

//------------ Block answers --------------------------------------------------

/// What an answer built here echoes of its query, however it arrived.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Asked<'a> {
    /// The query's first four header bytes: ID, then the flags (RD and CD
    /// are echoed).
    pub(crate) header: [u8; 4],
    /// The question section exactly as asked, uncompressed, in the
    /// client's case.
    pub(crate) question: &'a [u8],
    /// The number of labels in the question name.
    pub(crate) labels: u8,
    pub(crate) qtype: u16,
    /// With EDNS: the payload size to offer (already capped by ours) and DO.
    pub(crate) edns: Option<(u16, bool)>,
}

impl<'a> Asked<'a> {
    /// What an answer echoes of a query with this `header` and `question`
    /// section (uncompressed, as hickory encodes a parsed question): `None`
    /// when the question does not read as one.
    pub(crate) fn new(header: [u8; 4], question: &'a [u8], edns: Option<(u16, bool)>) -> Option<Self> {
        let mut at = 0usize;
        let mut labels = 0u8;
        loop {
            let length = *question.get(at)?;
            if length > 63 {
                return None;
            }
            at += 1 + usize::from(length);
            if length == 0 {
                break;
            }
            labels = labels.checked_add(1)?;
        }
        let qtype = u16::from_be_bytes(question.get(at..at + 2)?.try_into().ok()?);
        Some(Self {
            header,
            question,
            labels,
            qtype,
            edns,
        })
    }
}

/// The form of a block answer, decided from the profile and the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockForm {
    rcode: u8,
    /// The address record of a null or sinkhole answer: its first
    /// `length` bytes.
    address: Option<([u8; 16], usize)>,
    /// The SOA's owner, as the number of the question name's last labels;
    /// none for an address answer or REFUSED.
    soa_labels: Option<u8>,
    ttl: u32,
}

impl BlockForm {
    /// The answer for a list rule of `action` on a query of `qtype`, or
    /// `None` for a drop or a rewrite (RPZ local data), which are not
    /// block answers. A negative answer's SOA is owned by the question
    /// name's last `soa_labels` labels (see [`matched_labels`]).
    pub(crate) fn for_rule(profile: &Profile, action: RuleAction, qtype: u16, soa_labels: u8) -> Option<Self> {
        match action {
            RuleAction::Drop | RuleAction::Rewrite => None,
            RuleAction::NoData => Some(Self::nodata(profile.block_ttl, soa_labels)),
            // An allow never gets here: `decide` lets its name through.
            RuleAction::Block | RuleAction::BlockImportant | RuleAction::Allow | RuleAction::AllowImportant => {
                Some(Self::for_profile(profile, qtype, soa_labels))
            }
        }
    }

    /// The profile's `block_response` with the SOA (when there is one)
    /// owned by the question name's last `soa_labels` labels.
    pub(crate) fn for_profile(profile: &Profile, qtype: u16, soa_labels: u8) -> Self {
        let ttl = profile.block_ttl;
        let address = match (profile.block_response, qtype) {
            (BlockResponse::Null, TYPE_A) => Some(([0; 16], 4)),
            (BlockResponse::Null, TYPE_AAAA) => Some(([0; 16], 16)),
            (BlockResponse::Sinkhole, TYPE_A) => profile.sinkhole_ipv4.map(|a| {
                let mut bytes = [0; 16];
                bytes[..4].copy_from_slice(&a.octets());
                (bytes, 4)
            }),
            (BlockResponse::Sinkhole, TYPE_AAAA) => profile.sinkhole_ipv6.map(|a| (a.octets(), 16)),
            _ => None,
        };
        match profile.block_response {
            _ if address.is_some() => Self {
                rcode: 0,
                address,
                soa_labels: None,
                ttl,
            },
            BlockResponse::Nxdomain => Self::nxdomain(ttl, soa_labels),
            BlockResponse::Refused => Self {
                rcode: 5,
                address: None,
                soa_labels: None,
                ttl,
            },
            // Other types (MX, HTTPS, TXT…) get NODATA, never an address of
            // the wrong type.
            BlockResponse::Nodata | BlockResponse::Null | BlockResponse::Sinkhole => Self::nodata(ttl, soa_labels),
        }
    }

    /// NOERROR without records, with the SOA that lets clients cache it.
    pub(crate) fn nodata(ttl: u32, soa_labels: u8) -> Self {
        Self {
            rcode: 0,
            address: None,
            soa_labels: Some(soa_labels),
            ttl,
        }
    }

    /// NXDOMAIN with the SOA that lets clients cache it.
    pub(crate) fn nxdomain(ttl: u32, soa_labels: u8) -> Self {
        Self {
            rcode: 3,
            address: None,
            soa_labels: Some(soa_labels),
            ttl,
        }
    }

    /// The answer's response code.
    pub(crate) fn rcode(&self) -> u8 {
        self.rcode
    }
}

/// The labels of the blocked name a `hit` on the question name (of
/// `labels` labels) matched: the owner of the block's SOA.
pub(crate) fn matched_labels(hit: &Hit, labels: u8) -> u8 {
    match hit.matched {
        Matched::Name { labels: matched, .. } | Matched::Digest { labels: matched } => matched.min(labels),
        Matched::Pattern | Matched::AnswerIp { .. } => labels,
    }
}

/// The EXTRA-TEXT of an EDE option, in parts written one after another
/// (so the fast path builds it without allocating).
#[derive(Clone, Copy, Debug)]
pub(crate) struct EdeText<'a> {
    parts: [&'a str; 6],
}

impl<'a> EdeText<'a> {
    /// `list=NAME category=CATEGORY` for a list hit, then ` EXTRA` (e.g.
    /// `cname=…`) when there is one.
    pub(crate) fn list(snapshot: &'a Snapshot, hit: &Hit, extra: Option<&'a str>) -> Self {
        let mut parts = [""; 6];
        match snapshot.list(hit.list) {
            Some(list) => {
                parts[0] = "list=";
                parts[1] = &list.policy.name;
                if let Some(category) = &list.policy.category {
                    parts[2] = " category=";
                    parts[3] = category;
                }
            }
            None => parts[0] = "blocked by policy",
        }
        if let Some(extra) = extra {
            parts[4] = " ";
            parts[5] = extra;
        }
        Self { parts }
    }

    /// A text of one piece.
    pub(crate) fn plain(text: &'a str) -> Self {
        let mut parts = [""; 6];
        parts[0] = text;
        Self { parts }
    }
}

impl fmt::Display for EdeText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.parts.iter().try_for_each(|part| f.write_str(part))
    }
}

/// Writes the block answer of `form` to `asked` into `out`, with an EDE
/// option when the client sent EDNS.
pub(crate) fn write_block(out: &mut Vec<u8>, asked: &Asked<'_>, form: &BlockForm, ede: (u16, EdeText<'_>)) {
    let ttl = form.ttl.to_be_bytes();
    let answers = u16::from(form.address.is_some());
    let authorities = u16::from(form.soa_labels.is_some());
    write_header(out, asked, form.rcode, answers, authorities);
    if let Some((bytes, length)) = &form.address {
        // The owner is the question name: a pointer to offset 12.
        let [type_high, type_low] = asked.qtype.to_be_bytes();
        let [ttl0, ttl1, ttl2, ttl3] = ttl;
        #[allow(clippy::cast_possible_truncation)] // 4 or 16
        let rdlength = *length as u8;
        out.extend_from_slice(&[
            0xc0, 0x0c, type_high, type_low, 0, 1, ttl0, ttl1, ttl2, ttl3, 0, rdlength,
        ]);
        out.extend_from_slice(bytes.get(..*length).unwrap_or_default());
    }
    if let Some(labels) = form.soa_labels {
        // The SOA's owner: a pointer to that suffix inside the question.
        // The rest is the constant record with the TTL (record TTL and SOA
        // minimum) patched in.
        out.extend_from_slice(&suffix_pointer(asked, labels));
        let mut record = BLOCK_SOA_RECORD;
        if let Some(field) = record.get_mut(4..8) {
            field.copy_from_slice(&ttl);
        }
        if let Some(field) = record.get_mut(BLOCK_SOA_RECORD.len() - 4..) {
            field.copy_from_slice(&ttl);
        }
        out.extend_from_slice(&record);
    }
    if let Some((payload, dnssec_ok)) = asked.edns {
        write_opt_with_ede(out, payload, dnssec_ok, ede);
    }
}

/// The response header: ID and the RD and CD bits from the query, QR and RA
/// set, one question (exactly as asked), an OPT when the query had one.
fn write_header(out: &mut Vec<u8>, asked: &Asked<'_>, rcode: u8, answers: u16, authorities: u16) {
    let [id0, id1, flags0, flags1] = asked.header;
    let [an0, an1] = answers.to_be_bytes();
    let [ns0, ns1] = authorities.to_be_bytes();
    let additional = u8::from(asked.edns.is_some());
    let flags0 = 0x80 | (flags0 & 0x01);
    let flags1 = 0x80 | (flags1 & 0x10) | rcode;
    out.extend_from_slice(&[id0, id1, flags0, flags1, 0, 1, an0, an1, ns0, ns1, 0, additional]);
    out.extend_from_slice(asked.question);
}

/// A compression pointer to the question name's last `labels` labels (the
/// whole name when it has fewer).
fn suffix_pointer(asked: &Asked<'_>, labels: u8) -> [u8; 2] {
    let mut at = 0usize;
    for _ in 0..asked.labels.saturating_sub(labels) {
        at += 1 + usize::from(asked.question.get(at).copied().unwrap_or(0));
    }
    // A question name is at most 255 bytes, so the offset fits.
    let pointer = 0xc000 | u16::try_from(12 + at).unwrap_or(12);
    pointer.to_be_bytes()
}

/// MNAME and RNAME of the block answer's SOA, `blocked.shieldns.invalid.`
/// and `hostmaster.shieldns.invalid.`, in wire form (the handler builds the
/// same names; the tests compare both answers).
const BLOCK_SOA_NAMES: &[u8] = b"\x07blocked\x08shieldns\x07invalid\x00\x0ahostmaster\x08shieldns\x07invalid\x00";

/// SERIAL, REFRESH, RETRY, EXPIRE of the block SOA; MINIMUM is the TTL.
const BLOCK_SOA_TIMERS: [u32; 4] = [1, 3600, 600, 86_400];

/// The block SOA record after its owner name, with a TTL of 0 in the record
/// and in MINIMUM (the last four bytes), which `write_block` patches: TYPE,
/// CLASS, TTL, RDLENGTH, then RDATA (the names and five 32-bit fields).
const BLOCK_SOA_RECORD: [u8; 10 + BLOCK_SOA_NAMES.len() + 20] = {
    let mut record = [0u8; 10 + BLOCK_SOA_NAMES.len() + 20];
    let [type_high, type_low] = TYPE_SOA.to_be_bytes();
    record[0] = type_high;
    record[1] = type_low;
    record[3] = 1; // CLASS IN
    let rdlength = (BLOCK_SOA_NAMES.len() + 20) as u16;
    let [rd_high, rd_low] = rdlength.to_be_bytes();
    record[8] = rd_high;
    record[9] = rd_low;
    let mut at = 0;
    while at < BLOCK_SOA_NAMES.len() {
        record[10 + at] = BLOCK_SOA_NAMES[at];
        at += 1;
    }
    let mut timer = 0;
    while timer < BLOCK_SOA_TIMERS.len() {
        let bytes = BLOCK_SOA_TIMERS[timer].to_be_bytes();
        let mut byte = 0;
        while byte < 4 {
            record[10 + BLOCK_SOA_NAMES.len() + timer * 4 + byte] = bytes[byte];
            byte += 1;
        }
        timer += 1;
    }
    record
};

/// The OPT record with the EDE option: INFO-CODE then EXTRA-TEXT (RFC
/// 8914 §2).
fn write_opt_with_ede(out: &mut Vec<u8>, payload: u16, dnssec_ok: bool, (code, text): (u16, EdeText<'_>)) {
    let [payload_high, payload_low] = payload.to_be_bytes();
    let do_bit = if dnssec_ok { 0x80 } else { 0 };
    let [code_high, code_low] = code.to_be_bytes();
    // Root owner, TYPE OPT, CLASS = payload, TTL = extended rcode, version,
    // DO; RDLENGTH and the option length are patched below.
    let [opt_high, opt_low] = TYPE_OPT.to_be_bytes();
    let [ede_high, ede_low] = EDE_OPTION.to_be_bytes();
    let rdlength_at = out.len() + 9;
    out.extend_from_slice(&[
        0,
        opt_high,
        opt_low,
        payload_high,
        payload_low,
        0,
        0,
        do_bit,
        0,
        0,
        0,
        ede_high,
        ede_low,
        0,
        0,
    ]);
    out.extend_from_slice(&[code_high, code_low]);
    for part in text.parts {
        out.extend_from_slice(part.as_bytes());
    }
    let rdlength = u16::try_from(out.len() - rdlength_at - 2).unwrap_or(0);
    let option_length = rdlength.saturating_sub(4);
    if let Some(lengths) = out.get_mut(rdlength_at..rdlength_at + 6) {
        lengths[..2].copy_from_slice(&rdlength.to_be_bytes());
        lengths[4..].copy_from_slice(&option_length.to_be_bytes());
    }
}

//------------ Answers without records ----------------------------------------

/// The check every transport makes of a message before parsing it: a
/// header there, and QR=0 (an answer is never answered, so two resolvers
/// cannot be made to answer each other).
pub(crate) fn screen_header(message: &[u8]) -> Result<(), Discard> {
    match message.get(2) {
        Some(_) if message.len() < 12 => Err(Discard::Malformed),
        Some(flags) if flags & 0x80 != 0 => Err(Discard::Response),
        Some(_) => Ok(()),
        None => Err(Discard::Malformed),
    }
}

/// Where the question of `query` ends, if it is a readable question: QR=0,
/// opcode QUERY, one question.
pub(crate) fn bare_question(query: &[u8]) -> Option<usize> {
    let header = query.get(..12)?;
    if header[2] & 0xf8 != 0 || header[4..6] != [0, 1] {
        return None;
    }
    question_end(query)
}

/// `message`'s header and question alone, its other section counts zeroed:
/// the start of every answer built here without records (REFUSED, slip,
/// truncation), never larger than what it came from.
fn header_and_question(message: &[u8], question_end: usize) -> Option<Vec<u8>> {
    let mut out = message.get(..question_end)?.to_vec();
    out.get_mut(6..12)?.fill(0);
    Some(out)
}

/// An answer to `query` without records: QR set, RD kept, `tc`, and
/// `flags_low` as the header's fourth byte (RA and the rcode). `None` when
/// it is not a readable question (see [`bare_question`]).
pub(crate) fn bare_answer(query: &[u8], tc: bool, flags_low: u8) -> Option<Vec<u8>> {
    let mut answer = header_and_question(query, bare_question(query)?)?;
    answer[2] = 0x80 | (query[2] & 0x01) | if tc { 0x02 } else { 0 };
    answer[3] = flags_low;
    Some(answer)
}

/// FORMERR for a message whose header is readable but whose rest is not:
/// the header alone, its ID and opcode and RD kept.
pub(crate) fn formerr(header: [u8; 3]) -> [u8; 12] {
    let [id0, id1, flags] = header;
    [id0, id1, 0x80 | (flags & 0x79), 0x01, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// The TC=1 form of `answer`: its header and question, no records but the
/// OPT `opt` describes (payload size and the TTL field's bytes).
pub(crate) fn truncated(answer: &[u8], opt: Option<(u16, [u8; 4])>) -> Option<Vec<u8>> {
    let mut out = header_and_question(answer, question_end(answer)?)?;
    out[2] |= 0x02;
    if let Some((payload, ttl)) = opt {
        out[11] = 1;
        let [type_high, type_low] = TYPE_OPT.to_be_bytes();
        out.extend_from_slice(&[0, type_high, type_low]);
        out.extend_from_slice(&payload.to_be_bytes());
        out.extend_from_slice(&ttl);
        out.extend_from_slice(&[0, 0]);
    }
    Some(out)
}

/// Where the (single) question of a message ends.
pub(crate) fn question_end(message: &[u8]) -> Option<usize> {
    let mut at = 12;
    loop {
        let length = *message.get(at)?;
        if length > 63 {
            return None;
        }
        at += 1 + usize::from(length);
        if length == 0 {
            break;
        }
    }
    (message.len() >= at + 4).then_some(at + 4)
}

/// Queries built with hickory and parsed back, for this crate's tests.
#[cfg(test)]
pub(crate) mod test_support {
    use hickory_proto::op::{Message, Query as HickoryQuery};
    use hickory_proto::rr::{Name, RecordType};

    use super::{Question, parse_into};

    /// Parses into a fresh question.
    pub(crate) fn parse(packet: &[u8]) -> Option<Question> {
        let mut question = Question::EMPTY;
        parse_into(packet, &mut question).map(|()| question)
    }

    pub(crate) fn query_bytes(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 0x1234;
        message.metadata.recursion_desired = true;
        message.add_query(HickoryQuery::query(Name::from_ascii(name).unwrap(), qtype));
        if edns {
            let mut opt = hickory_proto::op::Edns::new();
            opt.set_max_payload(1232);
            message.set_edns(opt);
        }
        message.to_vec().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RecordType;
    use shieldns_index::{ListFormat, ListPolicy, ProfileConfig, SnapshotBuilder, Verdict};

    use super::test_support::{parse, query_bytes};
    use super::*;

    fn snapshot(response: BlockResponse) -> Snapshot {
        let mut builder = SnapshotBuilder::new();
        builder.set_access(vec!["0.0.0.0/0".parse().unwrap()]);
        let policy = ListPolicy::block("adult", Some("adult"), ListFormat::Domains);
        builder.add_list(policy, b"bad.example.com\n").unwrap();
        builder.add_profile(ProfileConfig {
            block: vec!["adult".into()],
            block_response: response,
            block_ttl: 42,
            sinkhole_ipv4: Some("192.0.2.80".parse().unwrap()),
            ..ProfileConfig::new("p", vec!["0.0.0.0/0".parse().unwrap()])
        });
        builder.build().unwrap()
    }

    fn fast_answer(snapshot: &Snapshot, packet: &[u8]) -> Option<Message> {
        let question = parse(packet)?;
        let query = Query {
            packet,
            question: &question,
        };
        let profile_id = snapshot.profile_for("192.0.2.1".parse().unwrap());
        let Verdict::Block(hit) = snapshot.verdict(query.name.as_str(), profile_id) else {
            return None;
        };
        let form = BlockForm::for_rule(
            snapshot.profile(profile_id),
            hit.action,
            query.qtype,
            matched_labels(&hit, query.labels),
        )
        .unwrap();
        let mut out = Vec::new();
        let ede = (snapshot.ede_code(&hit), EdeText::list(snapshot, &hit, None));
        write_block(&mut out, &query.asked(1232), &form, ede);
        Some(Message::from_vec(&out).unwrap())
    }

    #[test]
    fn parses_standard_queries_and_refuses_the_rest() {
        let packet = query_bytes("WWW.Example.COM.", RecordType::AAAA, true);
        let query = parse(&packet).unwrap();
        assert_eq!(query.name.as_str(), "www.example.com");
        assert_eq!((query.qtype, query.labels, query.edns_payload), (28, 3, Some(1232)));
        assert!(parse(&packet[..packet.len() - 1]).is_none());
        // A byte that needs escaping in presentation form goes to hickory.
        let mut odd = query_bytes("ab.example.com.", RecordType::A, false);
        odd[13] = b' ';
        assert!(parse(&odd).is_none());
        let mut response = packet.clone();
        response[2] |= 0x80;
        assert!(parse(&response).is_none());
    }

    #[test]
    fn block_answers_decode_like_the_handlers() {
        let nxdomain = snapshot(BlockResponse::Nxdomain);
        let message = fast_answer(&nxdomain, &query_bytes("www.bad.example.com.", RecordType::A, true)).unwrap();
        assert_eq!(message.metadata.id, 0x1234);
        assert_eq!(message.metadata.response_code, ResponseCode::NXDomain);
        assert!(message.metadata.recursion_desired && message.metadata.recursion_available);
        let soa = &message.authorities[0];
        assert_eq!((soa.name.to_ascii().as_str(), soa.ttl), ("bad.example.com.", 42));
        let hickory_proto::rr::RData::SOA(soa) = &soa.data else {
            panic!("not an SOA: {soa:?}")
        };
        assert_eq!(
            (
                soa.mname.to_ascii().as_str(),
                soa.rname.to_ascii().as_str(),
                soa.minimum
            ),
            ("blocked.shieldns.invalid.", "hostmaster.shieldns.invalid.", 42)
        );
        let edns = message.edns.unwrap();
        let ede = edns
            .option(hickory_proto::rr::rdata::opt::EdnsCode::Unknown(15))
            .unwrap();
        let hickory_proto::rr::rdata::opt::EdnsOption::Unknown(15, data) = ede else {
            panic!()
        };
        assert_eq!(&data[..2], &17u16.to_be_bytes());
        assert_eq!(&data[2..], b"list=adult category=adult");

        let sinkhole = snapshot(BlockResponse::Sinkhole);
        let message = fast_answer(&sinkhole, &query_bytes("bad.example.com.", RecordType::A, false)).unwrap();
        assert_eq!(message.answers[0].data.ip_addr(), Some("192.0.2.80".parse().unwrap()));
        assert!(message.edns.is_none());
        let message = fast_answer(&sinkhole, &query_bytes("bad.example.com.", RecordType::MX, false)).unwrap();
        assert_eq!(
            (message.metadata.response_code, message.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(message.authorities.len(), 1);
    }
}
