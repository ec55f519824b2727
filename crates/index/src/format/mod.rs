//! Line parsers, one module per list format.
//!
//! Every parser gets the whole file as bytes and walks it line by line: a
//! UTF-8 BOM and CRLF line ends are accepted, a line that is not UTF-8 is
//! rejected on its own, a line longer than [`MAX_LINE_BYTES`] is rejected
//! without being looked at (and, read from a file, without being held), and
//! nothing a line contains can make a parser panic (each parser has a
//! cargo-fuzz target under `fuzz/`).

mod adblock;
mod dnsmasq;
mod hosts;
mod plain;
mod rpz;

pub use crate::rule::MAX_LINE_BYTES;
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

/// Lines in a list's text: its newlines plus one (the piece after the
/// last). About one rule each, so it sizes the name index.
pub fn count_lines(text: &[u8]) -> usize {
    text.iter().filter(|&&byte| byte == b'\n').count() + 1
}

/// [`count_lines`] of what `reader` yields, read 64 KiB at a time without
/// holding the text; a read error ends the count where it stands (it only
/// sizes the index).
pub fn count_lines_in(mut reader: impl std::io::Read) -> usize {
    let mut chunk = vec![0u8; 1 << 16];
    let mut lines = 1;
    while let Ok(read @ 1..) = reader.read(&mut chunk) {
        lines += count_lines(chunk.get(..read).unwrap_or_default()) - 1;
    }
    lines
}

/// Bytes read per step by [`parse_chunked`]: small beside any index (a
/// reload's extra memory is the new index plus this), large enough that
/// the per-step work is noise.
const CHUNK: usize = 1 << 17;

/// Whether every line of `format` parses on its own, so the list can be
/// parsed in pieces. Adblock is not (`$badfilter` anywhere disables a rule
/// anywhere), nor is RPZ (`$ORIGIN`, `$TTL`, owner inheritance, brackets).
pub fn is_line_local(format: ListFormat) -> bool {
    !matches!(format, ListFormat::Adblock | ListFormat::Rpz)
}

/// Parses a list of a line-local format (see [`is_line_local`]) from
/// `reader` [`CHUNK`] bytes at a time, so the list's text is never held
/// whole: each step parses the complete lines read so far and keeps the
/// unfinished last one. Outcomes and line numbers are exactly those of
/// [`parse`] over the whole text. Returns the bytes read.
pub(crate) fn parse_chunked(
    format: ListFormat,
    reader: &mut dyn std::io::Read,
    sink: &mut dyn RuleSink,
) -> std::io::Result<u64> {
    let mut buffer: Vec<u8> = Vec::with_capacity(CHUNK + 4096);
    // Lines before the buffer's first byte; after the first step the buffer
    // starts with the previous step's last line end, an empty line that
    // stands for that finished line (empty lines have no outcome), so a
    // byte-order mark can only be stripped at the very start of the list.
    let mut lines_done: u32 = 0;
    let mut total = 0u64;
    // Set while the rest of an over-long line is being dropped: the buffer
    // keeps its first MAX_LINE_BYTES + 1 bytes, enough for the parser to
    // reject it as too long (with its number) and show its start.
    let mut dropping = false;
    loop {
        let filled = buffer.len();
        buffer.resize(filled + CHUNK, 0);
        let read = loop {
            match reader.read(buffer.get_mut(filled..).unwrap_or_default()) {
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        let read = read?;
        buffer.truncate(filled + read);
        total += read as u64;
        if dropping && read > 0 {
            match buffer
                .get(filled..)
                .and_then(|new| new.iter().position(|&byte| byte == b'\n'))
            {
                None => {
                    buffer.truncate(filled);
                    continue;
                }
                Some(end) => {
                    buffer.drain(filled..filled + end);
                    dropping = false;
                }
            }
        }
        let offset = lines_done.saturating_sub(u32::from(lines_done > 0));
        if read == 0 {
            // The end: whatever is left is the last line (no final newline).
            parse(format, &buffer, &mut OffsetSink { inner: sink, offset });
            return Ok(total);
        }
        let Some(last_newline) = buffer.iter().rposition(|&byte| byte == b'\n') else {
            // A line longer than a chunk: read on, holding no more of it
            // than the parser needs to reject it. (The buffer starts with
            // the previous step's newline after the first step.)
            let keep = usize::from(lines_done > 0) + MAX_LINE_BYTES + 1;
            if buffer.len() > keep {
                buffer.truncate(keep);
                dropping = true;
            }
            continue;
        };
        let complete = buffer.get(..=last_newline).unwrap_or_default();
        let newlines = complete.iter().filter(|&&byte| byte == b'\n').count();
        // `split` yields one more piece after the final newline: drop it, it
        // is the start of the next step.
        let lines = complete.get(..last_newline).unwrap_or_default();
        parse(format, lines, &mut OffsetSink { inner: sink, offset });
        lines_done = lines_done
            .saturating_add(u32::try_from(newlines).unwrap_or(u32::MAX))
            .saturating_sub(u32::from(lines_done > 0));
        buffer.drain(..last_newline);
    }
}

/// Shifts the line numbers of a chunk's outcomes to the whole list's.
struct OffsetSink<'a> {
    inner: &'a mut dyn RuleSink,
    offset: u32,
}

impl RuleSink for OffsetSink<'_> {
    fn rule(&mut self, mut rule: Rule<'_>) {
        rule.line = rule.line.saturating_add(self.offset);
        self.inner.rule(rule);
    }

    fn reject(&mut self, line: u32, text: &str, reason: LineRejection) {
        self.inner.reject(line.saturating_add(self.offset), text, reason);
    }

    fn skip(&mut self, line: u32, reason: SkipReason) {
        self.inner.skip(line.saturating_add(self.offset), reason);
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
        if raw.len() > MAX_LINE_BYTES {
            let start = String::from_utf8_lossy(raw.get(..MAX_LINE_BYTES).unwrap_or(raw));
            sink.reject(number, &start, LineRejection::TooLong);
            continue;
        }
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

/// Whether a normalized name is a single label (a rule for it would match
/// a whole TLD; the snapshot builder refuses it unless the list allows it).
pub(crate) fn is_single_label(name: &str) -> bool {
    !name.contains('.')
}

/// Emits a block rule for each valid name on a line; the first invalid
/// name, if any, then rejects the line with its reason, so a stray token
/// (`0.0.0.0 xxx.to en`) never costs the line's good names and is still
/// reported.
pub(crate) fn emit_names(
    sink: &mut dyn RuleSink,
    line: u32,
    text: &str,
    raw_names: &[&str],
    scope: crate::rule::Scope,
) {
    let mut invalid = None;
    for raw_name in raw_names {
        match crate::name::normalize(raw_name) {
            Ok(name) => sink.rule(Rule {
                line,
                target: crate::rule::RuleTarget::Name { name: &name, scope },
                action: crate::rule::RuleAction::Block,
                local_data: Vec::new(),
            }),
            Err(reason) => {
                invalid.get_or_insert(reason);
            }
        }
    }
    if let Some(reason) = invalid {
        sink.reject(line, text, reason.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block list's policy, all flags off.
    fn test_policy(name: &str, format: ListFormat) -> crate::ListPolicy {
        crate::ListPolicy::block(name, None, format)
    }

    /// Every outcome, as text, in order.
    #[derive(Default)]
    struct Recording(Vec<String>);

    impl RuleSink for Recording {
        fn rule(&mut self, rule: Rule<'_>) {
            self.0
                .push(format!("rule {} {:?} {:?}", rule.line, rule.target, rule.action));
        }
        fn reject(&mut self, line: u32, text: &str, reason: LineRejection) {
            self.0.push(format!("reject {line} {text:?} {reason:?}"));
        }
        fn skip(&mut self, line: u32, reason: SkipReason) {
            self.0.push(format!("skip {line} {reason:?}"));
        }
    }

    #[test]
    fn chunked_parsing_matches_whole_parsing() {
        // Over two chunks of text with a BOM, CRLF lines, bad lines, a line
        // longer than a chunk straddling the boundaries, a mid-list BOM and
        // no final newline.
        let mut text = String::from("\u{feff}first.example\r\n");
        for i in 0..120_000 {
            match i % 1000 {
                7 => text.push_str("not a domain\n"),
                9 => text.push_str("\u{feff}bom-inside.example\n"),
                _ => text.push_str(&format!("name{i}.example\r\n")),
            }
            if i == 60_000 {
                text.push_str(&"x".repeat(CHUNK + 10));
                text.push('\n');
            }
        }
        text.push_str("last.example");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"\nbad\xffutf8.example\n\n");
        for format in [ListFormat::Domains, ListFormat::Hosts] {
            let mut whole = Recording::default();
            parse(format, &bytes, &mut whole);
            let mut chunked = Recording::default();
            let read = parse_chunked(format, &mut bytes.as_slice(), &mut chunked).unwrap();
            assert_eq!(count_lines_in(bytes.as_slice()), count_lines(&bytes));
            assert_eq!(read, bytes.len() as u64);
            assert_eq!(whole.0.len(), chunked.0.len(), "{format:?}");
            for (a, b) in whole.0.iter().zip(&chunked.0) {
                assert_eq!(a, b, "{format:?}");
            }
            assert!(whole.0.iter().any(|o| o.starts_with("reject")));
        }
    }

    #[test]
    fn no_format_lets_a_single_label_block_a_whole_tld_unless_the_list_allows_it() {
        let good = "a.example\nb.example\nc.example\nd.example\n";
        for (format, bad, good) in [
            (ListFormat::Domains, "com\nvn.\nexample\n", good.to_owned()),
            (ListFormat::Wildcard, "*.com\nvn\nexample\n", good.to_owned()),
            (
                ListFormat::Hosts,
                "0.0.0.0 com\n0.0.0.0 vn\n0.0.0.0 example\n",
                good.lines().map(|l| format!("0.0.0.0 {l}\n")).collect(),
            ),
            (
                ListFormat::Adblock,
                "||com^\n||vn^\n@@||example^\n",
                good.lines().map(|l| format!("||{l}^\n")).collect(),
            ),
            (
                ListFormat::Dnsmasq,
                "address=/com/0.0.0.0\nserver=/vn/\naddress=/example/#\n",
                good.lines().map(|l| format!("address=/{l}/#\n")).collect(),
            ),
            (
                ListFormat::Rpz,
                "$ORIGIN rpz.\ncom CNAME .\nvn CNAME .\nexample CNAME .\n",
                good.lines().map(|l| format!("{l} CNAME .\n")).collect(),
            ),
        ] {
            let text = format!("{bad}{good}");
            let mut policy = test_policy("l", format);
            let info = crate::check_list(policy.clone(), text.as_bytes()).unwrap();
            assert_eq!((info.counts.accepted, info.counts.rejected), (4, 3), "{format:?}");
            assert!(
                info.rejected_examples
                    .iter()
                    .all(|r| r.reason.contains("whole TLD") && r.reason.contains("allow_tld_rules")),
                "{format:?}: {:?}",
                info.rejected_examples
            );
            policy.allow_tld_rules = true;
            let info = crate::check_list(policy, text.as_bytes()).unwrap();
            assert_eq!((info.counts.accepted, info.counts.rejected), (7, 0), "{format:?}");
        }
    }

    #[test]
    fn a_hosts_line_keeps_its_valid_names_and_reports_the_stray_token() {
        let policy = test_policy("l", ListFormat::Hosts);
        let info = crate::check_list(policy, b"0.0.0.0 xxxhindi.to en\n0.0.0.0 a.example bad_name!\n").unwrap();
        assert_eq!(info.counts.rules, 2);
        assert_eq!(info.counts.rejected, 2);
        assert_eq!(info.rejected_examples[0].line, 1);
        assert_eq!(info.rejected_examples[1].line, 2);
    }

    #[test]
    fn an_over_long_line_is_rejected_in_linear_time_without_being_held() {
        // 8 MiB without a newline between two good lines, read in chunks:
        // rejected as too long with its number, and the rest still parsed.
        let mut text = b"first.example\n".to_vec();
        text.extend(std::iter::repeat_n(b'\0', 8 << 20));
        text.extend_from_slice(b"\nlast.example\n");
        let mut sink = CollectingSink::default();
        parse_chunked(ListFormat::Domains, &mut text.as_slice(), &mut sink).unwrap();
        assert_eq!(sink.rules.len(), 2);
        assert_eq!(sink.rejected.len(), 1);
        assert_eq!(sink.rejected[0].0, 2);
        assert_eq!(sink.rejected[0].2, LineRejection::TooLong);
        assert!(sink.rejected[0].1.len() <= MAX_LINE_BYTES);
        let mut whole = CollectingSink::default();
        parse(ListFormat::Domains, &text, &mut whole);
        assert_eq!(whole.rejected.len(), 1);
        assert_eq!(whole.rules.len(), 2);
    }

    #[test]
    fn binary_garbage_is_refused_and_its_lines_are_printable() {
        // A megabyte of pseudo-random bytes, a few of whose "lines" happen
        // to look like names: refused as a whole, not a list of 5 rules.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut garbage: Vec<u8> = (0..1 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        garbage.extend_from_slice(b"\nlooks-like.example\n\x1b[31mred.example\x07 \n");
        for format in [
            ListFormat::Domains,
            ListFormat::Hosts,
            ListFormat::Adblock,
            ListFormat::Rpz,
        ] {
            let policy = test_policy("junk", format);
            let error = crate::check_list(policy, &garbage).unwrap_err().to_string();
            assert!(
                error.contains("are not") || error.contains("none of its"),
                "{format:?}: {error}"
            );
            assert!(!error.chars().any(char::is_control), "{format:?}: {error:?}");
        }
        let policy = test_policy("few", ListFormat::Domains);
        let info = crate::check_list(policy, b"a.example\nb.example\n\x1b[2Jbad\x07\xff.example\n").unwrap();
        let shown = &info.rejected_examples[0].text;
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("\\u{1b}"), "{shown:?}");
    }
}
