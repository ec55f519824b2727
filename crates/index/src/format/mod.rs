//! Line parsers, one module per list format.
//!
//! Every parser gets the whole file as bytes and walks it line by line: a
//! UTF-8 BOM and CRLF line ends are accepted, a line that is not UTF-8 is
//! rejected on its own, and nothing a line contains can make a parser panic
//! (each parser has a cargo-fuzz target under `fuzz/`).

mod adblock;
mod dnsmasq;
mod hosts;
mod plain;
mod rpz;

use crate::rule::{LineCounts, LineRejection, ListFormat, Rule, RuleSink, SkipReason};

/// Parses a whole list in `format`, streaming its rules into `sink`.
pub fn parse(format: ListFormat, text: &[u8], sink: &mut dyn RuleSink) {
    match format {
        ListFormat::Hosts => hosts::parse(text, sink),
        ListFormat::Domains => plain::parse_domains(text, sink),
        ListFormat::Wildcard => plain::parse_wildcard(text, sink),
        ListFormat::Adblock => adblock::parse(text, sink),
        ListFormat::Dnsmasq => dnsmasq::parse(text, sink),
        ListFormat::Rpz => rpz::parse(text, sink),
        ListFormat::Sha256 => plain::parse_sha256(text, sink),
        ListFormat::Ip => plain::parse_ip(text, sink),
    }
}

/// Calls `f` with each line's 1-based number and text, without its line end.
///
/// Lines that are not UTF-8 are rejected into `sink` and not passed on.
pub(crate) fn for_each_line(text: &[u8], sink: &mut dyn RuleSink, mut f: impl FnMut(u32, &str, &mut dyn RuleSink)) {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        // Line numbers past u32::MAX would need a 4 GiB list of empty lines;
        // saturating keeps provenance wrong rather than panicking.
        let number = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        match std::str::from_utf8(raw) {
            Ok(line) => f(number, line, sink),
            Err(_) => {
                let lossy = String::from_utf8_lossy(raw);
                sink.reject(number, &lossy, LineRejection::NotUtf8);
            }
        }
    }
}

/// A sink that only counts, for `lists check` summaries and tests.
#[derive(Debug, Default)]
pub struct CountingSink {
    /// The counts so far.
    pub counts: LineCounts,
    last_accepted_line: Option<u32>,
}

impl RuleSink for CountingSink {
    fn rule(&mut self, rule: Rule<'_>) {
        self.counts.rules += 1;
        if self.last_accepted_line != Some(rule.line) {
            self.last_accepted_line = Some(rule.line);
            self.counts.accepted += 1;
        }
    }

    fn reject(&mut self, _line: u32, _text: &str, _reason: LineRejection) {
        self.counts.rejected += 1;
    }

    fn skip(&mut self, _line: u32, _reason: SkipReason) {
        self.counts.skipped += 1;
    }
}

/// A rule with owned strings, as collected by [`CollectingSink`].
pub type OwnedRule = Rule<'static>;

/// A sink that keeps every rule and rejection, for tests and small lists.
#[derive(Debug, Default)]
pub struct CollectingSink {
    /// Accepted rules, in file order, with their names leaked into owned
    /// strings through [`OwnedName`].
    pub rules: Vec<(u32, crate::rule::RuleAction, OwnedTarget)>,
    /// Rejected lines: line number, text, reason.
    pub rejected: Vec<(u32, String, LineRejection)>,
    /// Skipped lines: line number and reason.
    pub skipped: Vec<(u32, SkipReason)>,
}

/// An owned copy of a [`crate::rule::RuleTarget`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnedTarget {
    /// See [`crate::rule::RuleTarget::Name`].
    Name(String, crate::rule::Scope),
    /// See [`crate::rule::RuleTarget::Pattern`]: the regex.
    Pattern(String),
    /// See [`crate::rule::RuleTarget::AnswerIp`].
    AnswerIp(ipnet::IpNet),
    /// See [`crate::rule::RuleTarget::NameDigest`].
    NameDigest([u8; 32]),
}

impl RuleSink for CollectingSink {
    fn rule(&mut self, rule: Rule<'_>) {
        use crate::rule::RuleTarget;
        let target = match rule.target {
            RuleTarget::Name { name, scope } => OwnedTarget::Name(name.to_owned(), scope),
            RuleTarget::Pattern { regex, .. } => OwnedTarget::Pattern(regex),
            RuleTarget::AnswerIp(net) => OwnedTarget::AnswerIp(net),
            RuleTarget::NameDigest(d) => OwnedTarget::NameDigest(d),
        };
        self.rules.push((rule.line, rule.action, target));
    }

    fn reject(&mut self, line: u32, text: &str, reason: LineRejection) {
        self.rejected.push((line, text.to_owned(), reason));
    }

    fn skip(&mut self, line: u32, reason: SkipReason) {
        self.skipped.push((line, reason));
    }
}

/// Strips a `#` comment that starts the line or follows whitespace, and the
/// surrounding whitespace. `#` inside a token (never valid in names) is left
/// for the name check to refuse.
pub(crate) fn strip_hash_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return line[..i].trim();
        }
    }
    line.trim()
}

/// Emits a block rule for each name on a line, or, if any name is invalid,
/// rejects the whole line with that name's reason and emits nothing, so that
/// every line has exactly one outcome.
pub(crate) fn emit_names(
    sink: &mut dyn RuleSink,
    line: u32,
    text: &str,
    raw_names: &[&str],
    scope: crate::rule::Scope,
) {
    let mut names = Vec::with_capacity(raw_names.len());
    for raw_name in raw_names {
        match crate::name::normalize(raw_name) {
            Ok(name) => names.push(name),
            Err(reason) => {
                sink.reject(line, text, reason.into());
                return;
            }
        }
    }
    for name in &names {
        sink.rule(Rule {
            line,
            target: crate::rule::RuleTarget::Name { name, scope },
            action: crate::rule::RuleAction::Block,
            local_data: Vec::new(),
        });
    }
}
