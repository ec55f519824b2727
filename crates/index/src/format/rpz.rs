//! `rpz`: Response Policy Zone files, in master-file (zone-file) syntax.
//!
//! The zone-file layer handles what published RPZ files contain: `$TTL` and
//! `$ORIGIN` directives, `;` comments (whole-line and trailing), records
//! spread over several lines with parentheses (the SOA), optional TTL and
//! class fields, and an owner omitted by starting the line with whitespace.
//! `$TTL`, `$ORIGIN`, SOA and NS lines are zone plumbing, not policy, so they
//! make no sink call at all.
//!
//! Owner names are turned into triggers relative to the zone apex, which is
//! the SOA owner, or the first `$ORIGIN` when no SOA names one. A name that
//! is not under the apex (published files often have no `$ORIGIN` at all,
//! and some write `a.com.` with a trailing dot) is used as written.
//!
//! Triggers: a plain name is a QNAME trigger on that name alone, `*.name` on
//! the names under it, and `NAME.rpz-ip` a response-IP trigger. NSDNAME, NSIP
//! and client-IP triggers are refused by name. The CNAME target picks the
//! action: `.` NXDOMAIN (block), `*.` NODATA, `rpz-passthru.` allow,
//! `rpz-drop.` drop, any other name a CNAME rewrite; A and AAAA records are
//! rewrites with local data, one rule per record (the snapshot merges the
//! records of one owner). Local data is refused on response-IP triggers,
//! which the snapshot can only block, allow, drop or answer NODATA for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::for_each_line;
use crate::rule::{LineRejection, LocalData, Rule, RuleAction, RuleSink, RuleTarget, Scope};

pub(super) fn parse(text: &[u8], sink: &mut dyn RuleSink) {
    let mut zone = Zone::default();
    for_each_line(text, sink, |line, raw, sink| zone.line(line, raw, sink));
    if let Some(pending) = zone.pending.take() {
        sink.reject(pending.line, &pending.raw, LineRejection::Syntax("`(` never closed"));
    }
}

/// What the zone file has said so far that later lines depend on.
#[derive(Debug, Default)]
struct Zone {
    /// The current `$ORIGIN`, without its trailing dot; empty for the root
    /// (or no `$ORIGIN` yet), which leaves relative names as written.
    origin: String,
    /// The zone apex from the first SOA record.
    soa_apex: Option<String>,
    /// The first non-root `$ORIGIN`, the apex when no SOA names one.
    first_origin: Option<String>,
    /// The previous record's owner, fully resolved, for lines that omit it.
    last_owner: Option<String>,
    /// A record whose parentheses are still open.
    pending: Option<Pending>,
}

/// A record spread over several lines with parentheses.
#[derive(Debug)]
struct Pending {
    /// The line the record starts on, which is where it is reported.
    line: u32,
    /// That line's text, for rejections.
    raw: String,
    /// Whether that line started with whitespace (owner omitted).
    leading_space: bool,
    /// The tokens so far.
    tokens: Vec<String>,
    /// How many parentheses are open.
    depth: u32,
}

impl Zone {
    fn line(&mut self, line: u32, raw: &str, sink: &mut dyn RuleSink) {
        if let Some(mut pending) = self.pending.take() {
            let mut tokens = Vec::new();
            if let Err(why) = tokenize(raw, &mut pending.depth, &mut tokens) {
                sink.reject(pending.line, &pending.raw, LineRejection::Syntax(why));
                return;
            }
            pending.tokens.extend(tokens.into_iter().map(str::to_owned));
            if pending.depth > 0 {
                self.pending = Some(pending);
            } else {
                let tokens: Vec<&str> = pending.tokens.iter().map(String::as_str).collect();
                self.record(pending.line, &pending.raw, pending.leading_space, &tokens, sink);
            }
            return;
        }

        let mut depth = 0;
        let mut tokens = Vec::new();
        if let Err(why) = tokenize(raw, &mut depth, &mut tokens) {
            sink.reject(line, raw, LineRejection::Syntax(why));
            return;
        }
        let leading_space = raw.starts_with([' ', '\t']);
        if depth > 0 {
            self.pending = Some(Pending {
                line,
                raw: raw.to_owned(),
                leading_space,
                tokens: tokens.into_iter().map(str::to_owned).collect(),
                depth,
            });
            return;
        }
        self.record(line, raw, leading_space, &tokens, sink);
    }

    /// Handles one logical record (or directive), given its tokens.
    fn record(&mut self, line: u32, raw: &str, leading_space: bool, tokens: &[&str], sink: &mut dyn RuleSink) {
        let Some((&first, rest)) = tokens.split_first() else {
            // A blank or comment-only line.
            return;
        };
        if !leading_space && first.starts_with('$') {
            self.directive(line, raw, first, rest, sink);
            return;
        }

        let (owner, fields) = if leading_space {
            let Some(owner) = self.last_owner.clone() else {
                sink.reject(line, raw, LineRejection::Syntax("record without an owner name"));
                return;
            };
            (owner, tokens)
        } else {
            let owner = self.resolve(first);
            self.last_owner = Some(owner.clone());
            (owner, rest)
        };

        // Optional TTL and class, in either order, then the type.
        let mut fields = fields.iter().copied();
        let rtype = loop {
            match fields.next() {
                Some(field) if is_ttl(field) || is_class(field) => {}
                Some(field) => break field,
                None => {
                    sink.reject(line, raw, LineRejection::Syntax("missing record type"));
                    return;
                }
            }
        };
        let rdata: Vec<&str> = fields.collect();

        if rtype.eq_ignore_ascii_case("SOA") {
            if self.soa_apex.is_none() && !owner.is_empty() {
                self.soa_apex = Some(owner.to_ascii_lowercase());
            }
            return;
        }
        if rtype.eq_ignore_ascii_case("NS") {
            return;
        }

        let trigger = self.relative_to_apex(&owner).to_ascii_lowercase();
        let target = match parse_trigger(&trigger) {
            Ok(target) => target,
            Err(reason) => {
                sink.reject(line, raw, reason);
                return;
            }
        };
        let (action, local_data) = match self.policy(&trigger, &target, rtype, &rdata) {
            Ok(policy) => policy,
            Err(reason) => {
                sink.reject(line, raw, reason);
                return;
            }
        };
        // The snapshot answers local data for names only: a response-IP
        // rewrite would be accepted and then answered without its records.
        if matches!(target, Trigger::AnswerIp(_)) && !local_data.is_empty() {
            sink.reject(
                line,
                raw,
                LineRejection::UnsupportedRpz("local data on an rpz-ip trigger"),
            );
            return;
        }
        let target = match target {
            Trigger::Name(ref name, scope) => match crate::name::normalize(name) {
                Ok(name) => {
                    sink.rule(Rule {
                        line,
                        target: RuleTarget::Name { name: &name, scope },
                        action,
                        local_data,
                    });
                    return;
                }
                Err(reason) => {
                    sink.reject(line, raw, reason.into());
                    return;
                }
            },
            Trigger::AnswerIp(net) => RuleTarget::AnswerIp(net),
        };
        sink.rule(Rule {
            line,
            target,
            action,
            local_data,
        });
    }

    /// Handles a `$` directive line.
    fn directive(&mut self, line: u32, raw: &str, name: &str, args: &[&str], sink: &mut dyn RuleSink) {
        if name.eq_ignore_ascii_case("$TTL") {
            return;
        }
        if name.eq_ignore_ascii_case("$ORIGIN") {
            let [origin] = args else {
                sink.reject(line, raw, LineRejection::Syntax("`$ORIGIN` takes one name"));
                return;
            };
            // A relative `$ORIGIN` is relative to the current one.
            self.origin = self.resolve(origin).to_ascii_lowercase();
            if self.first_origin.is_none() && !self.origin.is_empty() {
                self.first_origin = Some(self.origin.clone());
            }
            return;
        }
        // Silently skipping an included file would drop its rules.
        let reason = if name.eq_ignore_ascii_case("$INCLUDE") {
            LineRejection::UnsupportedRpz("$INCLUDE")
        } else if name.eq_ignore_ascii_case("$GENERATE") {
            LineRejection::UnsupportedRpz("$GENERATE")
        } else {
            LineRejection::Syntax("unknown `$` directive")
        };
        sink.reject(line, raw, reason);
    }

    /// Resolves a name as written in the zone file to a full name without
    /// the trailing dot (empty for the root): `@` is the origin, a name
    /// ending in `.` is absolute, any other is relative to the origin.
    fn resolve(&self, name: &str) -> String {
        if name == "@" {
            self.origin.clone()
        } else if let Some(absolute) = name.strip_suffix('.') {
            absolute.to_owned()
        } else if self.origin.is_empty() {
            name.to_owned()
        } else {
            format!("{name}.{}", self.origin)
        }
    }

    /// Strips the zone apex from a resolved name: RPZ triggers are relative
    /// to the zone. A name outside the zone is returned unchanged; the apex
    /// itself becomes empty.
    fn relative_to_apex<'n>(&self, name: &'n str) -> &'n str {
        let Some(apex) = self.soa_apex.as_deref().or(self.first_origin.as_deref()) else {
            return name;
        };
        if apex.is_empty() {
            return name;
        }
        if name.eq_ignore_ascii_case(apex) {
            return "";
        }
        // `name` is `label.….apex` when it is longer than the apex by a dot
        // and ends in it; `get` rather than indexing keeps a non-ASCII name
        // (not on a char boundary there) from panicking.
        let Some(cut) = name.len().checked_sub(apex.len() + 1) else {
            return name;
        };
        match (name.get(..cut), name.get(cut..cut + 1), name.get(cut + 1..)) {
            (Some(relative), Some("."), Some(suffix)) if suffix.eq_ignore_ascii_case(apex) => relative,
            _ => name,
        }
    }

    /// Works out the action and local data of a record on a trigger.
    fn policy(
        &self,
        trigger: &str,
        target: &Trigger,
        rtype: &str,
        rdata: &[&str],
    ) -> Result<(RuleAction, Vec<LocalData>), LineRejection> {
        if rtype.eq_ignore_ascii_case("CNAME") {
            let [cname] = rdata else {
                return Err(LineRejection::Syntax("CNAME needs exactly one target"));
            };
            let cname = self.resolve(cname).to_ascii_lowercase();
            return match cname.as_str() {
                "" => Ok((RuleAction::Block, Vec::new())),
                "*" => Ok((RuleAction::NoData, Vec::new())),
                "rpz-passthru" => Ok((RuleAction::Allow, Vec::new())),
                "rpz-drop" => Ok((RuleAction::Drop, Vec::new())),
                "rpz-tcp-only" => Err(LineRejection::UnsupportedRpz("rpz-tcp-only")),
                // The first RPZ version wrote passthru as a CNAME to the
                // trigger name itself, which as a rewrite would be a loop.
                name if matches!(target, Trigger::Name(_, Scope::Exact)) && name == trigger => {
                    Ok((RuleAction::Allow, Vec::new()))
                }
                name if name.starts_with("*.") => Err(LineRejection::UnsupportedRpz("wildcard CNAME target")),
                name => match crate::name::normalize(name) {
                    Ok(name) => Ok((RuleAction::Rewrite, vec![LocalData::Cname(name.into_owned())])),
                    Err(reason) => Err(reason.into()),
                },
            };
        }
        if rtype.eq_ignore_ascii_case("A") {
            return match rdata {
                [address] => match address.parse::<Ipv4Addr>() {
                    Ok(address) => Ok((RuleAction::Rewrite, vec![LocalData::A(address)])),
                    Err(_) => Err(LineRejection::Syntax("A record data is not an IPv4 address")),
                },
                _ => Err(LineRejection::Syntax("A record needs exactly one address")),
            };
        }
        if rtype.eq_ignore_ascii_case("AAAA") {
            return match rdata {
                [address] => match address.parse::<Ipv6Addr>() {
                    Ok(address) => Ok((RuleAction::Rewrite, vec![LocalData::Aaaa(address)])),
                    Err(_) => Err(LineRejection::Syntax("AAAA record data is not an IPv6 address")),
                },
                _ => Err(LineRejection::Syntax("AAAA record needs exactly one address")),
            };
        }
        Err(unsupported_type(rtype))
    }
}

/// Refuses local data of a type shieldns does not answer with, naming the
/// type when it is a known one.
fn unsupported_type(rtype: &str) -> LineRejection {
    const KNOWN: &[(&str, &str)] = &[
        ("TXT", "TXT local data"),
        ("MX", "MX local data"),
        ("PTR", "PTR local data"),
        ("SRV", "SRV local data"),
        ("NAPTR", "NAPTR local data"),
        ("CAA", "CAA local data"),
        ("HTTPS", "HTTPS local data"),
        ("SVCB", "SVCB local data"),
        ("DNAME", "DNAME local data"),
        ("HINFO", "HINFO local data"),
        ("SSHFP", "SSHFP local data"),
        ("TLSA", "TLSA local data"),
        ("DS", "DS record"),
        ("DNSKEY", "DNSKEY record"),
        ("RRSIG", "RRSIG record"),
        ("NSEC", "NSEC record"),
        ("NSEC3", "NSEC3 record"),
        ("NSEC3PARAM", "NSEC3PARAM record"),
    ];
    match KNOWN.iter().find(|(name, _)| rtype.eq_ignore_ascii_case(name)) {
        Some((_, what)) => LineRejection::UnsupportedRpz(what),
        None => LineRejection::Syntax("unknown record type"),
    }
}

/// What a trigger owner name matches, before its name is normalized.
#[derive(Debug)]
enum Trigger {
    /// A QNAME trigger: the name (not yet normalized) and its scope.
    Name(String, Scope),
    /// A response-IP trigger.
    AnswerIp(IpNet),
}

/// Interprets a lower-case owner name relative to the zone apex.
fn parse_trigger(trigger: &str) -> Result<Trigger, LineRejection> {
    if trigger.is_empty() {
        return Err(LineRejection::Syntax("record at the zone apex is not a policy trigger"));
    }
    let (labels, kind) = match trigger.rsplit_once('.') {
        Some((labels, kind)) => (labels, kind),
        None => ("", trigger),
    };
    match kind {
        "rpz-ip" => return parse_ip_trigger(labels).map(Trigger::AnswerIp),
        "rpz-nsdname" => return Err(LineRejection::UnsupportedRpz("rpz-nsdname trigger")),
        "rpz-nsip" => return Err(LineRejection::UnsupportedRpz("rpz-nsip trigger")),
        "rpz-client-ip" => return Err(LineRejection::UnsupportedRpz("rpz-client-ip trigger")),
        _ => {}
    }
    let (name, scope) = match trigger.strip_prefix("*.") {
        Some(name) => (name, Scope::SubdomainsOnly),
        None => (trigger, Scope::Exact),
    };
    if name.contains('*') {
        return Err(LineRejection::Syntax("`*` allowed only as a leading `*.` label"));
    }
    Ok(Trigger::Name(name.to_owned(), scope))
}

/// Parses the labels before `.rpz-ip`: the prefix length, then the address
/// in reverse order, bytes for IPv4 (`32.4.3.2.1`) and 16-bit groups for IPv6
/// (`128.1.zz.db8.2001`, with `zz` standing for the `::` run).
fn parse_ip_trigger(labels: &str) -> Result<IpNet, LineRejection> {
    let mut parts = labels.split('.');
    let prefix = parts.next().unwrap_or_default();
    let prefix: u8 = if !prefix.is_empty() && prefix.len() <= 3 && prefix.bytes().all(|b| b.is_ascii_digit()) {
        prefix
            .parse()
            .map_err(|_| LineRejection::Syntax("rpz-ip prefix length out of range"))?
    } else {
        return Err(LineRejection::Syntax("rpz-ip trigger must start with a prefix length"));
    };
    let mut address: Vec<&str> = parts.collect();
    address.reverse();

    let is_ipv4 = address.len() == 4
        && address
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let (address, max_prefix) = if is_ipv4 {
        let mut octets = [0u8; 4];
        for (octet, text) in octets.iter_mut().zip(&address) {
            *octet = text
                .parse()
                .map_err(|_| LineRejection::Syntax("rpz-ip IPv4 byte out of range"))?;
        }
        (IpAddr::V4(Ipv4Addr::from(octets)), 32)
    } else {
        (IpAddr::V6(parse_ipv6_groups(&address)?), 128)
    };
    // BIND refuses a prefix of 0 (it would match every address) and longer
    // than the address.
    if prefix == 0 || prefix > max_prefix {
        return Err(LineRejection::Syntax("rpz-ip prefix length out of range"));
    }
    let net = IpNet::new(address, prefix).map_err(|_| LineRejection::Syntax("rpz-ip prefix length out of range"))?;
    // Like BIND, refuse an address with bits set past its prefix: the
    // publisher's intent (which bits were meant?) is unclear.
    if net.trunc() != net {
        return Err(LineRejection::Syntax(
            "rpz-ip address has bits set past its prefix length",
        ));
    }
    Ok(net)
}

/// Parses IPv6 groups in forward order, `zz` standing for `::`.
fn parse_ipv6_groups(groups: &[&str]) -> Result<Ipv6Addr, LineRejection> {
    const BAD: LineRejection = LineRejection::Syntax("rpz-ip address is neither IPv4 nor IPv6");
    let mut text = String::with_capacity(40);
    let mut previous_zz = true;
    for (i, group) in groups.iter().enumerate() {
        if *group == "zz" {
            text.push_str("::");
            previous_zz = true;
            continue;
        }
        if group.is_empty() || group.len() > 4 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BAD);
        }
        if i > 0 && !previous_zz {
            text.push(':');
        }
        text.push_str(group);
        previous_zz = false;
    }
    // `Ipv6Addr` parsing checks the group count and that `::` appears once.
    text.parse().map_err(|_| BAD)
}

/// Whether a field is a TTL: digits, optionally with BIND's `1h30m` units.
fn is_ttl(field: &str) -> bool {
    field.starts_with(|c: char| c.is_ascii_digit())
        && field
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b.to_ascii_lowercase(), b's' | b'm' | b'h' | b'd' | b'w'))
}

/// Whether a field is a DNS class.
fn is_class(field: &str) -> bool {
    ["IN", "CH", "HS", "CS"]
        .iter()
        .any(|class| field.eq_ignore_ascii_case(class))
}

/// Splits a zone-file line into fields, appending them to `tokens`.
///
/// `;` starts a comment, `"…"` is one field (kept with its quotes), `\`
/// escapes the next character, and `(` / `)` group lines, tracked in
/// `depth`.
fn tokenize<'a>(line: &'a str, depth: &mut u32, tokens: &mut Vec<&'a str>) -> Result<(), &'static str> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b';' => break,
            b if b.is_ascii_whitespace() => i += 1,
            b'(' => {
                *depth = depth.saturating_add(1);
                i += 1;
            }
            b')' => {
                *depth = depth.checked_sub(1).ok_or("`)` without `(`")?;
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err("unterminated quoted string"),
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                // `i` is just past an ASCII quote, so on a char boundary.
                tokens.push(line.get(start..i).ok_or("unterminated quoted string")?);
            }
            _ => {
                let start = i;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b';' | b'(' | b')' | b'"' => break,
                        b if b.is_ascii_whitespace() => break,
                        _ => i += 1,
                    }
                }
                // An escape at the very end steps past the line; `get`
                // refuses that (and a cut inside a UTF-8 sequence) instead
                // of panicking.
                let end = i.min(bytes.len());
                tokens.push(
                    line.get(start..end)
                        .ok_or("`\\` escape inside a multi-byte character")?,
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use crate::format::{CollectingSink, CountingSink, OwnedTarget, parse};
    use crate::rule::{LineRejection, ListFormat, LocalData, Rule, RuleAction, RuleSink, Scope, SkipReason};

    fn collect(text: &str) -> CollectingSink {
        let mut sink = CollectingSink::default();
        parse(ListFormat::Rpz, text.as_bytes(), &mut sink);
        sink
    }

    /// A sink that keeps local data, which `CollectingSink` drops.
    #[derive(Default)]
    struct Local(Vec<(u32, RuleAction, Vec<LocalData>)>);

    impl RuleSink for Local {
        fn rule(&mut self, rule: Rule<'_>) {
            self.0.push((rule.line, rule.action, rule.local_data));
        }
        fn reject(&mut self, _: u32, _: &str, _: LineRejection) {}
        fn skip(&mut self, _: u32, _: SkipReason) {}
    }

    fn name(n: &str, scope: Scope) -> OwnedTarget {
        OwnedTarget::Name(n.to_owned(), scope)
    }

    fn net(text: &str) -> OwnedTarget {
        OwnedTarget::AnswerIp(text.parse().expect("valid network"))
    }

    const HEADER: &str = "$TTL 3600\n@ SOA localhost. root.localhost. 1 43200 3600 259200 3600\n  NS  localhost.\n;\n";

    #[test]
    fn control_lines_make_no_calls() {
        let text = format!(
            "{HEADER}$ORIGIN rpz.example.\n@ IN SOA ns. admin. (\n  1 ; serial\n  3600 )\n NS localhost.\n\n  ; c\n"
        );
        let mut sink = CountingSink::default();
        parse(ListFormat::Rpz, text.as_bytes(), &mut sink);
        assert_eq!(sink.counts.rule_lines(), 0);
    }

    #[test]
    fn qname_triggers_and_actions() {
        let text = format!(
            "{HEADER}a.com CNAME .\n*.a.com CNAME .\nb.com CNAME *.\nc.com CNAME rpz-passthru.\n\
             d.com CNAME rpz-drop.\nE.com 300 IN CNAME . ; trailing\nf.com IN 300 CNAME f.com.\n"
        );
        let sink = collect(&text);
        assert!(sink.rejected.is_empty(), "{:?}", sink.rejected);
        let rules: Vec<_> = sink.rules.iter().map(|(l, a, t)| (*l, *a, t.clone())).collect();
        assert_eq!(
            rules,
            [
                (5, RuleAction::Block, name("a.com", Scope::Exact)),
                (6, RuleAction::Block, name("a.com", Scope::SubdomainsOnly)),
                (7, RuleAction::NoData, name("b.com", Scope::Exact)),
                (8, RuleAction::Allow, name("c.com", Scope::Exact)),
                (9, RuleAction::Drop, name("d.com", Scope::Exact)),
                (10, RuleAction::Block, name("e.com", Scope::Exact)),
                (11, RuleAction::Allow, name("f.com", Scope::Exact)),
            ]
        );
    }

    #[test]
    fn local_data_rewrites() {
        let text = "a.com CNAME Safe.Example.\na.com A 1.2.3.4\n  AAAA ::1\n*.b.com A 10.0.0.1\n";
        let mut sink = Local::default();
        parse(ListFormat::Rpz, text.as_bytes(), &mut sink);
        assert_eq!(
            sink.0,
            [
                (
                    1,
                    RuleAction::Rewrite,
                    vec![LocalData::Cname("safe.example".to_owned())]
                ),
                (2, RuleAction::Rewrite, vec![LocalData::A(Ipv4Addr::new(1, 2, 3, 4))]),
                (3, RuleAction::Rewrite, vec![LocalData::Aaaa(Ipv6Addr::LOCALHOST)]),
                (4, RuleAction::Rewrite, vec![LocalData::A(Ipv4Addr::new(10, 0, 0, 1))]),
            ]
        );
        let sink = collect(text);
        let targets: Vec<_> = sink.rules.iter().map(|(_, _, t)| t.clone()).collect();
        assert_eq!(
            targets,
            [
                name("a.com", Scope::Exact),
                name("a.com", Scope::Exact),
                name("a.com", Scope::Exact),
                name("b.com", Scope::SubdomainsOnly)
            ]
        );
    }

    #[test]
    fn origin_and_absolute_names() {
        let text = "$ORIGIN rpz.example.\n@ SOA ns. admin. 1 2 3 4 5\n@ NS ns.\na.com CNAME .\n\
                    b.com.rpz.example. CNAME .\nc.com. CNAME .\n$ORIGIN com.rpz.example.\nd CNAME .\n\
                    x CNAME rpz-passthru\n";
        let sink = collect(text);
        let rules: Vec<_> = sink.rules.iter().map(|(l, a, t)| (*l, *a, t.clone())).collect();
        assert_eq!(
            rules,
            [
                (4, RuleAction::Block, name("a.com", Scope::Exact)),
                (5, RuleAction::Block, name("b.com", Scope::Exact)),
                (6, RuleAction::Block, name("c.com", Scope::Exact)),
                (8, RuleAction::Block, name("d.com", Scope::Exact)),
                // A relative `rpz-passthru` is a name in the zone, not the
                // special target: a rewrite, as BIND reads it.
                (9, RuleAction::Rewrite, name("x.com", Scope::Exact)),
            ]
        );
    }

    #[test]
    fn explicit_soa_owner_is_the_apex() {
        let text =
            "rpz.local. 3600 IN SOA ns. admin. 1 2 3 4 5\nrpz.local. NS ns.\na.com.rpz.local. CNAME .\nb.com CNAME .\n";
        let sink = collect(text);
        let names: Vec<_> = sink.rules.iter().map(|(_, _, t)| t.clone()).collect();
        assert_eq!(names, [name("a.com", Scope::Exact), name("b.com", Scope::Exact)]);
    }

    #[test]
    fn response_ip_triggers() {
        let text = "32.165.164.0.1.rpz-ip CNAME .\n24.0.2.0.192.rpz-ip CNAME *.\n128.1.zz.db8.2001.rpz-ip CNAME rpz-passthru.\n\
                    48.zz.db8.2001.rpz-ip CNAME rpz-drop.\n128.8.7.6.5.4.3.2.1.rpz-ip CNAME .\n";
        let sink = collect(text);
        assert!(sink.rejected.is_empty(), "{:?}", sink.rejected);
        let rules: Vec<_> = sink.rules.iter().map(|(_, a, t)| (*a, t.clone())).collect();
        assert_eq!(
            rules,
            [
                (RuleAction::Block, net("1.0.164.165/32")),
                (RuleAction::NoData, net("192.0.2.0/24")),
                (RuleAction::Allow, net("2001:db8::1/128")),
                (RuleAction::Drop, net("2001:db8::/48")),
                (RuleAction::Block, net("1:2:3:4:5:6:7:8/128")),
            ]
        );
    }

    #[test]
    fn bad_response_ip_triggers() {
        for owner in [
            "33.1.0.0.10",
            "0.0.0.0.0",
            "24.1.2.0.192",
            "32.256.0.0.10",
            "x.1.0.0.10",
            "32.1.0.10",
            "129.1.zz.db8.2001",
            "64.zz.zz.2001",
            "128.1.2.3.4.5.6.7",
            "64.12345.zz.2001",
            "",
        ] {
            let sink = collect(&format!("{owner}.rpz-ip CNAME .\n"));
            assert!(sink.rules.is_empty(), "{owner}: {:?}", sink.rules);
            assert!(
                matches!(sink.rejected.as_slice(), [(1, _, LineRejection::Syntax(_))]),
                "{owner}: {:?}",
                sink.rejected
            );
        }
    }

    #[test]
    fn unsupported_features_are_named() {
        for (text, what) in [
            ("a.com CNAME rpz-tcp-only.\n", "rpz-tcp-only"),
            ("a.com TXT \"x; y\"\n", "TXT local data"),
            ("a.com MX 10 mail.a.com.\n", "MX local data"),
            ("ns.a.com.rpz-nsdname CNAME .\n", "rpz-nsdname trigger"),
            ("32.1.0.0.10.rpz-nsip CNAME .\n", "rpz-nsip trigger"),
            ("32.1.0.0.10.rpz-client-ip CNAME .\n", "rpz-client-ip trigger"),
            ("$INCLUDE other.zone\n", "$INCLUDE"),
            ("32.1.0.0.10.rpz-ip A 192.0.2.1\n", "local data on an rpz-ip trigger"),
            (
                "32.1.0.0.10.rpz-ip CNAME walled.example.\n",
                "local data on an rpz-ip trigger",
            ),
            ("a.com CNAME *.b.com.\n", "wildcard CNAME target"),
        ] {
            let sink = collect(text);
            assert_eq!(sink.rejected.len(), 1, "{text}");
            assert_eq!(sink.rejected[0].2, LineRejection::UnsupportedRpz(what), "{text}");
        }
    }

    #[test]
    fn junk_is_refused() {
        for text in [
            "a.com\n",
            "a.com 300 IN\n",
            "a.com FOO bar\n",
            "a.com CNAME\n",
            "a.com CNAME a. b.\n",
            "a.com A 1.2.3\n",
            "a.com AAAA 1.2.3.4\n",
            "  CNAME .\n",
            "a.*.com CNAME .\n",
            "* CNAME .\n",
            "a..com CNAME .\n",
            "1.2.3.4 CNAME .\n",
            "a.com CNAME ) .\n",
            "a.com TXT \"open\n",
            "$FOO 1\n",
            "$ORIGIN\n",
            "a.com CNAME bad_target..com.\n",
        ] {
            let sink = collect(text);
            assert!(sink.rules.is_empty(), "{text}: {:?}", sink.rules);
            assert_eq!(sink.rejected.len(), 1, "{text}: {:?}", sink.rejected);
        }
    }

    #[test]
    fn apex_records_and_unclosed_parentheses() {
        let sink = collect("$ORIGIN rpz.\n@ SOA ns. a. 1 2 3 4 5\n@ A 1.2.3.4\n");
        assert_eq!(
            sink.rejected[0].2,
            LineRejection::Syntax("record at the zone apex is not a policy trigger")
        );
        let sink = collect("@ SOA ns. a. ( 1 2\n3 4 5\n");
        assert_eq!(sink.rejected.len(), 1);
        assert_eq!(sink.rejected[0].0, 1);
    }

    #[test]
    fn omitted_owner_inherits_the_previous_one() {
        let sink = collect("a.com CNAME .\n\t300 IN A 1.2.3.4\n");
        let names: Vec<_> = sink.rules.iter().map(|(l, _, t)| (*l, t.clone())).collect();
        assert_eq!(
            names,
            [(1, name("a.com", Scope::Exact)), (2, name("a.com", Scope::Exact))]
        );
    }

    #[test]
    fn crlf_bom_and_non_ascii_never_panic() {
        let text = "\u{feff}$TTL 30\r\na.com CNAME .\r\nbücher.de CNAME .\r\né\\\n\\é CNAME .\nx\\";
        let sink = collect(text);
        let names: Vec<_> = sink.rules.iter().map(|(_, _, t)| t.clone()).collect();
        assert_eq!(
            names,
            [name("a.com", Scope::Exact), name("xn--bcher-kva.de", Scope::Exact)]
        );
        let mut counting = CountingSink::default();
        parse(
            ListFormat::Rpz,
            "$ORIGIN ü.\n@ SOA a. b. 1 2 3 4 5\nxü CNAME .\n".as_bytes(),
            &mut counting,
        );
        assert_eq!(counting.counts.rule_lines(), 1);
    }
}
