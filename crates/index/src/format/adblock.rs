//! `adblock`: AdGuard DNS filter syntax, the subset real DNS lists use.
//!
//! A rule is `[@@]PATTERN[$MODIFIERS]`. The pattern is matched against the
//! query name only (a DNS resolver never sees a URL), which decides how each
//! part of the browser syntax translates:
//!
//! - `||a.com^` blocks `a.com` and its subdomains ([`Scope::Subtree`]);
//!   `|a.com^` blocks `a.com` alone ([`Scope::Exact`]). A missing `^` after a
//!   complete name changes nothing, because list authors (and the
//!   hostlist-compiler that produces most DNS lists) write `||a.com` to mean
//!   the domain, not "every name that starts with `a.com`".
//! - A bare name line `a.com` is a [`Scope::Subtree`] block: lists that mix
//!   hosts-style sources into adblock syntax carry such lines, and their
//!   authors mean the domain.
//! - Everything else with a wildcard, a trailing `.` (a TLD-less prefix such
//!   as `||ads.`), or no leading anchor (`a.com^` matches every name *ending*
//!   in `a.com`, as AdGuard does) becomes a [`RuleTarget::Pattern`].
//!   `||*.a.com^` is the exception: it matches exactly the names under
//!   `a.com`, so it is stored as the cheaper [`Scope::SubdomainsOnly`] name
//!   rule.
//! - `/regex/` rules are used as written, made case-insensitive.
//!
//! Only `$important` and `$badfilter` are implemented; every other modifier
//! rejects its line by name so an operator sees exactly what was not applied.

use std::collections::HashSet;

use super::for_each_line;
use crate::name::NameRejection;
use crate::rule::{LineRejection, Rule, RuleAction, RuleSink, RuleTarget, Scope, SkipReason};

pub(super) fn parse(text: &[u8], sink: &mut dyn RuleSink) {
    // `$badfilter` disables a rule wherever it appears in the list, before or
    // after the rule it names, so the keys must all be known before the
    // first rule is emitted.
    let disabled = collect_badfilter_keys(text);
    for_each_line(text, sink, |line, raw, sink| parse_line(line, raw, &disabled, sink));
}

/// A sink that drops everything, for the `$badfilter` pre-pass: that pass
/// must not report non-UTF-8 lines, which the real pass reports once.
#[derive(Debug)]
struct NullSink;

impl RuleSink for NullSink {
    fn rule(&mut self, _rule: Rule<'_>) {}
    fn reject(&mut self, _line: u32, _text: &str, _reason: LineRejection) {}
    fn skip(&mut self, _line: u32, _reason: SkipReason) {}
}

/// Returns the keys (see [`badfilter_key`]) of every rule a `$badfilter` rule
/// in the list disables.
fn collect_badfilter_keys(text: &[u8]) -> HashSet<String> {
    let mut keys = HashSet::new();
    for_each_line(text, &mut NullSink, |_, raw, _| {
        // A cheap substring test first: almost no line carries the modifier.
        if !raw.contains("badfilter") {
            return;
        }
        let content = raw.trim();
        if is_comment(content) {
            return;
        }
        let Ok(rule) = split_rule(content) else {
            return;
        };
        if rule.modifiers().any(|m| m == "badfilter") {
            keys.insert(badfilter_key(&rule, true));
        }
    });
    keys
}

fn parse_line(line: u32, raw: &str, disabled: &HashSet<String>, sink: &mut dyn RuleSink) {
    let content = raw.trim();
    if content.is_empty() || is_comment(content) {
        return;
    }
    let rule = match split_rule(content) {
        Ok(rule) => rule,
        Err(reason) => {
            sink.reject(line, raw, reason);
            return;
        }
    };

    // A `$badfilter` rule is consumed by the pre-pass: it has done its work
    // by disabling its twin, and it matches nothing itself. It is counted as
    // skipped so that every rule line still ends in exactly one sink call.
    if rule.modifiers().any(|m| m == "badfilter") {
        sink.skip(line, SkipReason::DisabledByBadfilter);
        return;
    }
    // Checked before the modifiers, so that a rule the list itself disabled
    // is reported as disabled even if shieldns could not have applied it.
    if !disabled.is_empty() && disabled.contains(&badfilter_key(&rule, false)) {
        sink.skip(line, SkipReason::DisabledByBadfilter);
        return;
    }

    let mut important = false;
    for modifier in rule.modifiers() {
        match modifier {
            "important" => important = true,
            "" => {
                sink.reject(line, raw, LineRejection::Syntax("empty modifier after `$`"));
                return;
            }
            other => {
                // The name alone (`dnsrewrite`, not its value) is what an
                // operator looks up in the documentation.
                let name = other.split_once('=').map_or(other, |(name, _)| name);
                sink.reject(line, raw, LineRejection::UnsupportedModifier(name.to_owned()));
                return;
            }
        }
    }
    let action = match (rule.exception, important) {
        (false, false) => RuleAction::Block,
        (false, true) => RuleAction::BlockImportant,
        (true, false) => RuleAction::Allow,
        (true, true) => RuleAction::AllowImportant,
    };

    if rule.is_regex {
        emit_regex(line, raw, rule.pattern, action, sink);
    } else {
        emit_pattern(line, raw, rule.pattern, action, sink);
    }
}

/// Whether a trimmed, non-empty line is a comment or the list header.
fn is_comment(content: &str) -> bool {
    if content.starts_with('!') {
        return true;
    }
    // `[Adblock Plus 2.0]` and its variants open many lists.
    if content.starts_with("[Adblock") && content.ends_with(']') {
        return true;
    }
    // `#` comments come from hosts-format sources merged into adblock lists,
    // but `##…`, `#@#…` and friends at the start of a line are cosmetic rules
    // (for every site), which must be refused rather than ignored.
    content.starts_with('#') && cosmetic_marker(content) != Some(0)
}

/// Finds an element-hiding, CSS, scriptlet or HTML-filtering marker (`##`,
/// `#@#`, `#?#`, `#$#`, `#%#`, their `@` forms, `$$`, `$@$`), which makes a
/// line a cosmetic rule that has no meaning for DNS.
fn cosmetic_marker(content: &str) -> Option<usize> {
    let bytes = content.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let rest = &bytes[i + 1..];
        let rest = match b {
            b'#' => rest,
            b'$' => {
                if rest.starts_with(b"$") || rest.starts_with(b"@$") {
                    return Some(i);
                }
                continue;
            }
            _ => continue,
        };
        let rest = rest.strip_prefix(b"@").unwrap_or(rest);
        let rest = match rest.first() {
            Some(b'?' | b'$' | b'%') => &rest[1..],
            _ => rest,
        };
        if rest.starts_with(b"#") {
            return Some(i);
        }
    }
    None
}

/// A rule line split into its parts, before the pattern is interpreted.
#[derive(Debug)]
struct SplitRule<'a> {
    /// `@@`: an exception (allow) rule.
    exception: bool,
    /// The pattern without `@@` and modifiers; for a regex rule, the regex
    /// between the slashes.
    pattern: &'a str,
    /// Whether the pattern is a `/regex/`.
    is_regex: bool,
    /// The text after `$`, if any.
    modifiers: Option<&'a str>,
}

impl SplitRule<'_> {
    /// The modifiers, trimmed, in line order; none if the rule has no `$`.
    fn modifiers(&self) -> impl Iterator<Item = &str> {
        self.modifiers.into_iter().flat_map(|m| m.split(',')).map(str::trim)
    }
}

/// Splits a trimmed, non-comment rule line into exception flag, pattern and
/// modifiers, refusing lines that cannot be a DNS rule at all.
fn split_rule(content: &str) -> Result<SplitRule<'_>, LineRejection> {
    let (exception, body) = match content.strip_prefix("@@") {
        Some(body) => (true, body),
        None => (false, content),
    };
    // A regex rule is `/…/` or `/…/$modifiers`. Its text may contain `$`,
    // `#` and anything else, so it is recognised before those are looked at.
    if let Some(inner) = body.strip_prefix('/') {
        if let Some(regex) = inner.strip_suffix('/') {
            return regex_rule(exception, regex, None);
        }
        if let Some((regex, modifiers)) = inner.rsplit_once("/$") {
            return regex_rule(exception, regex, Some(modifiers));
        }
    }
    if cosmetic_marker(body).is_some() {
        return Err(LineRejection::Syntax("cosmetic rule, not DNS"));
    }
    let (pattern, modifiers) = match body.split_once('$') {
        Some((pattern, modifiers)) => (pattern, Some(modifiers)),
        None => (body, None),
    };
    if pattern.is_empty() {
        return Err(LineRejection::Syntax("empty pattern"));
    }
    Ok(SplitRule {
        exception,
        pattern,
        is_regex: false,
        modifiers,
    })
}

fn regex_rule<'a>(exception: bool, regex: &'a str, modifiers: Option<&'a str>) -> Result<SplitRule<'a>, LineRejection> {
    if regex.is_empty() {
        return Err(LineRejection::Syntax("empty regular expression"));
    }
    Ok(SplitRule {
        exception,
        pattern: regex,
        is_regex: true,
        modifiers,
    })
}

/// The text `$badfilter` compares: the rule with `badfilter` removed from its
/// modifiers and the rest sorted, so `$important,badfilter` disables
/// `$important`. Non-regex patterns are lower-cased because AdGuard matches
/// them without regard to case; a regex is kept as written (`\D` is not
/// `\d`). `drop_badfilter` is false when keying an ordinary rule, which has
/// no `badfilter` to drop.
fn badfilter_key(rule: &SplitRule<'_>, drop_badfilter: bool) -> String {
    let mut key = String::with_capacity(rule.pattern.len() + 8);
    if rule.exception {
        key.push_str("@@");
    }
    if rule.is_regex {
        key.push('/');
        key.push_str(rule.pattern);
        key.push('/');
    } else {
        key.push_str(&rule.pattern.to_ascii_lowercase());
    }
    let mut modifiers: Vec<&str> = rule
        .modifiers()
        .filter(|m| !(drop_badfilter && *m == "badfilter"))
        .collect();
    if !modifiers.is_empty() {
        modifiers.sort_unstable();
        key.push('$');
        key.push_str(&modifiers.join(","));
    }
    key
}

/// Emits a `/regex/` rule, made case-insensitive because query names are
/// matched in lower case while list authors write either.
fn emit_regex(line: u32, raw: &str, regex: &str, action: RuleAction, sink: &mut dyn RuleSink) {
    let regex = format!("(?i){regex}");
    if let Err(err) = regex::Regex::new(&regex) {
        sink.reject(line, raw, LineRejection::BadPattern(err.to_string()));
        return;
    }
    // Finding a literal every match must contain means parsing the regex;
    // the few regex rules real lists carry are cheap enough without one.
    sink.rule(Rule {
        line,
        target: RuleTarget::Pattern {
            regex,
            required_literal: None,
        },
        action,
        local_data: Vec::new(),
    });
}

/// Where a pattern is anchored at its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// `||`: at the start of the name or of any of its labels.
    Domain,
    /// `|`, or `://` (AdGuard matches a query as the URL `http://name/`):
    /// at the start of the name.
    Name,
    /// No anchor: anywhere in the name.
    Anywhere,
}

/// Emits a non-regex rule: a name rule where the pattern is a plain name,
/// otherwise a pattern rule.
fn emit_pattern(line: u32, raw: &str, pattern: &str, action: RuleAction, sink: &mut dyn RuleSink) {
    let (start, rest) = if let Some(rest) = pattern.strip_prefix("||") {
        (Start::Domain, rest)
    } else if let Some(rest) = pattern.strip_prefix('|') {
        (Start::Name, rest)
    } else if let Some(rest) = pattern.strip_prefix("://") {
        (Start::Name, rest)
    } else {
        (Start::Anywhere, pattern)
    };
    // `^` is a separator: the end of the host name in the URL AdGuard builds
    // from a query. Inside a name there is no separator, so `^` (or `|`,
    // which anchors at the end) may only end the pattern.
    let (body, anchored_end) = if let Some(body) = rest.strip_suffix("^|") {
        (body, true)
    } else if let Some(body) = rest.strip_suffix('^') {
        (body, true)
    } else if let Some(body) = rest.strip_suffix('|') {
        (body, true)
    } else {
        (rest, false)
    };

    if let Err(why) = check_pattern_body(body) {
        sink.reject(line, raw, LineRejection::Syntax(why));
        return;
    }

    let has_wildcard = body.contains('*');
    let complete_name = !has_wildcard && !body.starts_with(['.', '-']) && !body.ends_with(['.', '-']);

    // A full IP address can never be a query name, so a rule for one is
    // refused whatever its anchors. A prefix such as `||158.247.208.` stays
    // a pattern: it is not a complete address.
    if complete_name && body.parse::<std::net::IpAddr>().is_ok() {
        sink.reject(line, raw, NameRejection::IpLiteral.into());
        return;
    }

    let scope = match start {
        Start::Domain if complete_name => Some(Scope::Subtree),
        Start::Name if complete_name => Some(Scope::Exact),
        // A bare `a.com` line; `a.com^` keeps AdGuard's "ends with" meaning.
        Start::Anywhere if complete_name && !anchored_end && body.contains('.') => Some(Scope::Subtree),
        _ => None,
    };
    if let Some(scope) = scope {
        emit_name(line, raw, body, scope, action, sink);
        return;
    }

    // `||*.a.com^` matches exactly the names under `a.com`.
    if start == Start::Domain
        && anchored_end
        && let Some(parent) = body.strip_prefix("*.")
        && !parent.contains('*')
        && !parent.starts_with(['.', '-'])
        && !parent.ends_with(['.', '-'])
    {
        emit_name(line, raw, parent, Scope::SubdomainsOnly, action, sink);
        return;
    }

    // A pattern with no letter or digit (`*`, `||*^`, `.`) would match every
    // name, which no list means.
    if !body.bytes().any(|b| b.is_ascii_alphanumeric()) {
        sink.reject(line, raw, LineRejection::Syntax("pattern matches every name"));
        return;
    }
    // Query names are punycode; a Unicode label inside a wildcard pattern
    // could never match one.
    if !body.is_ascii() {
        sink.reject(
            line,
            raw,
            LineRejection::Syntax("non-ASCII character in a wildcard pattern"),
        );
        return;
    }
    // Every literal byte of the pattern must appear in a matching name, and
    // no name is longer than 253 bytes.
    if body.bytes().filter(|&b| b != b'*').count() > crate::name::MAX_NAME_LEN {
        sink.reject(line, raw, LineRejection::Syntax("pattern longer than any DNS name"));
        return;
    }
    let body = body.to_ascii_lowercase();
    // Not compiled here: `pattern_regex` only joins escaped literals with
    // `.*` between fixed anchors, which always compiles, and the length
    // check above keeps it far below the regex size limit (the unit tests
    // compile the worst case). Compiling every pattern twice, here and in
    // the index, would double the cost of loading a list.
    let regex = pattern_regex(start, &body, anchored_end);
    let required_literal = body
        .split('*')
        .max_by_key(|run| run.len())
        .filter(|run| run.len() >= 3)
        .map(str::to_owned);
    sink.rule(Rule {
        line,
        target: RuleTarget::Pattern {
            regex,
            required_literal,
        },
        action,
        local_data: Vec::new(),
    });
}

/// Checks that a pattern body (anchors removed) holds only characters a
/// query name can contain, plus `*`.
fn check_pattern_body(body: &str) -> Result<(), &'static str> {
    if body.is_empty() {
        return Err("empty pattern");
    }
    for c in body.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | '*' => {}
            '#' => return Err("`#` inside a rule (a comment must start its line)"),
            '^' | '|' => return Err("`^` or `|` inside a pattern (a host name has no separator)"),
            '/' | ':' | '?' | '=' | '&' => return Err("URL part in a rule (DNS rules match host names only)"),
            c if c.is_whitespace() => return Err("whitespace inside a rule"),
            // A non-ASCII complete name is converted by IDNA below; inside a
            // wildcard pattern it would need per-label conversion that
            // `*` makes ambiguous.
            c if !c.is_ascii() && !body.contains('*') => {}
            _ => return Err("character not allowed in a DNS filter rule"),
        }
    }
    Ok(())
}

/// Translates a checked, lower-cased pattern body into a regex over the
/// query name.
fn pattern_regex(start: Start, body: &str, anchored_end: bool) -> String {
    let mut regex = String::with_capacity(body.len() * 2 + 12);
    regex.push_str(match start {
        Start::Domain => r"(?:^|\.)",
        Start::Name => "^",
        Start::Anywhere => "",
    });
    for (i, literal) in body.split('*').enumerate() {
        // `**` means the same as `*`; one `.*` keeps the regex small.
        if i > 0 && !regex.ends_with(".*") {
            regex.push_str(".*");
        }
        regex.push_str(&regex::escape(literal));
    }
    if anchored_end {
        regex.push('$');
    }
    regex
}

/// Emits a name rule, or rejects the line with the name's reason.
fn emit_name(line: u32, raw: &str, name: &str, scope: Scope, action: RuleAction, sink: &mut dyn RuleSink) {
    match crate::name::normalize(name) {
        Ok(name) => sink.rule(Rule {
            line,
            target: RuleTarget::Name { name: &name, scope },
            action,
            local_data: Vec::new(),
        }),
        Err(reason) => sink.reject(line, raw, reason.into()),
    }
}

#[cfg(test)]
mod tests {
    use crate::format::{CollectingSink, CountingSink, OwnedTarget, parse};
    use crate::name::NameRejection;
    use crate::rule::{LineRejection, ListFormat, Rule, RuleAction, RuleSink, RuleTarget, Scope, SkipReason};

    fn collect(text: &str) -> CollectingSink {
        let mut sink = CollectingSink::default();
        parse(ListFormat::Adblock, text.as_bytes(), &mut sink);
        sink
    }

    /// Parses one rule line and returns its single rule.
    fn one(text: &str) -> (RuleAction, OwnedTarget) {
        let sink = collect(text);
        assert!(sink.rejected.is_empty(), "{text}: rejected {:?}", sink.rejected);
        assert_eq!(sink.rules.len(), 1, "{text}");
        let (_, action, target) = sink.rules[0].clone();
        (action, target)
    }

    fn name(n: &str, scope: Scope) -> OwnedTarget {
        OwnedTarget::Name(n.to_owned(), scope)
    }

    fn pattern(regex: &str) -> OwnedTarget {
        OwnedTarget::Pattern(regex.to_owned())
    }

    fn rejection(text: &str) -> LineRejection {
        let sink = collect(text);
        assert!(sink.rules.is_empty(), "{text}: {:?}", sink.rules);
        assert_eq!(sink.rejected.len(), 1, "{text}");
        sink.rejected[0].2.clone()
    }

    /// A sink that keeps whole rules, for checking required literals.
    #[derive(Default)]
    struct Literals(Vec<Option<String>>);

    impl RuleSink for Literals {
        fn rule(&mut self, rule: Rule<'_>) {
            if let RuleTarget::Pattern { required_literal, .. } = rule.target {
                self.0.push(required_literal);
            }
        }
        fn reject(&mut self, _: u32, _: &str, _: LineRejection) {}
        fn skip(&mut self, _: u32, _: SkipReason) {}
    }

    #[test]
    fn comments_headers_and_blanks_make_no_calls() {
        let text = "[Adblock Plus 2.0]\n! Title: x\n# hosts-style comment\n#\n# see a.com##x\n\n   \n\t! indented\n";
        let mut sink = CountingSink::default();
        parse(ListFormat::Adblock, text.as_bytes(), &mut sink);
        assert_eq!(sink.counts.rule_lines(), 0);
    }

    #[test]
    fn cosmetic_rules_are_refused() {
        for text in [
            "##.banner",
            "#@#.banner",
            "example.com##.ad",
            "example.com#?#div",
            "#$#body",
            "a.com$$script",
        ] {
            assert_eq!(
                rejection(text),
                LineRejection::Syntax("cosmetic rule, not DNS"),
                "{text}"
            );
        }
    }

    #[test]
    fn domain_and_exact_anchors() {
        assert_eq!(one("||a.com^"), (RuleAction::Block, name("a.com", Scope::Subtree)));
        assert_eq!(one("||a.com"), (RuleAction::Block, name("a.com", Scope::Subtree)));
        assert_eq!(one("||a.com^|"), (RuleAction::Block, name("a.com", Scope::Subtree)));
        assert_eq!(one("|a.com^"), (RuleAction::Block, name("a.com", Scope::Exact)));
        assert_eq!(one("|a.com^|"), (RuleAction::Block, name("a.com", Scope::Exact)));
        assert_eq!(one("://a.com^"), (RuleAction::Block, name("a.com", Scope::Exact)));
        assert_eq!(one("a.com"), (RuleAction::Block, name("a.com", Scope::Subtree)));
        assert_eq!(
            one("||wvOntgd.pqmg.bid^"),
            (RuleAction::Block, name("wvontgd.pqmg.bid", Scope::Subtree))
        );
        assert_eq!(
            one("||bücher.de^"),
            (RuleAction::Block, name("xn--bcher-kva.de", Scope::Subtree))
        );
        assert_eq!(
            one("||*.a.com^"),
            (RuleAction::Block, name("a.com", Scope::SubdomainsOnly))
        );
    }

    #[test]
    fn exceptions_and_important() {
        assert_eq!(one("@@||a.com^"), (RuleAction::Allow, name("a.com", Scope::Subtree)));
        assert_eq!(one("@@|a.com^|"), (RuleAction::Allow, name("a.com", Scope::Exact)));
        assert_eq!(
            one("||a.com^$important"),
            (RuleAction::BlockImportant, name("a.com", Scope::Subtree))
        );
        assert_eq!(
            one("@@||a.com^$important"),
            (RuleAction::AllowImportant, name("a.com", Scope::Subtree))
        );
        assert_eq!(one("@@/^ads\\./"), (RuleAction::Allow, pattern("(?i)^ads\\.")));
    }

    #[test]
    fn unsupported_modifiers_are_named() {
        for (text, modifier) in [
            ("||a.com^$third-party", "third-party"),
            ("||a.com^$important,client=127.0.0.1", "client"),
            ("||a.com^$dnsrewrite=NOERROR;CNAME;b.com", "dnsrewrite"),
            ("||a.com^$dnstype=AAAA", "dnstype"),
            ("||a.com^$ctag=device_pc", "ctag"),
            ("||a.com^$denyallow=b.com", "denyallow"),
            ("/ads/$frobnicate", "frobnicate"),
        ] {
            assert_eq!(
                rejection(text),
                LineRejection::UnsupportedModifier(modifier.to_owned()),
                "{text}"
            );
        }
        assert_eq!(
            rejection("||a.com^$"),
            LineRejection::Syntax("empty modifier after `$`")
        );
    }

    #[test]
    fn badfilter_disables_its_twin_in_either_order() {
        let text = "||a.com^\n||a.com^$badfilter\nwykop.pl$badfilter\nwykop.pl\n\
                    ||B.com^$important\n||b.com^$badfilter,important\n||c.com^$badfilter\n||c.com^$important\n\
                    @@||d.com^$badfilter\n||d.com^\n";
        let sink = collect(text);
        let skipped: Vec<u32> = sink.skipped.iter().map(|(l, _)| *l).collect();
        assert_eq!(skipped, [1, 2, 3, 4, 5, 6, 7, 9]);
        assert!(sink.skipped.iter().all(|(_, r)| *r == SkipReason::DisabledByBadfilter));
        let kept: Vec<_> = sink.rules.iter().map(|(l, a, t)| (*l, *a, t.clone())).collect();
        assert_eq!(
            kept,
            [
                (8, RuleAction::BlockImportant, name("c.com", Scope::Subtree)),
                (10, RuleAction::Block, name("d.com", Scope::Subtree)),
            ]
        );
        assert!(sink.rejected.is_empty());
    }

    #[test]
    fn badfilter_disables_an_otherwise_unsupported_rule() {
        let sink = collect("||a.com^$third-party\n||a.com^$third-party,badfilter\n");
        assert_eq!(sink.skipped.len(), 2);
        assert!(sink.rejected.is_empty());
    }

    #[test]
    fn wildcard_and_prefix_patterns() {
        assert_eq!(
            one("||*-go.example.net^"),
            (RuleAction::Block, pattern(r"(?:^|\.).*\-go\.example\.net$"))
        );
        assert_eq!(
            one("*ad.durasite.net^"),
            (RuleAction::Block, pattern(r".*ad\.durasite\.net$"))
        );
        assert_eq!(
            one("||fxhpaoxqyajvmdg."),
            (RuleAction::Block, pattern(r"(?:^|\.)fxhpaoxqyajvmdg\."))
        );
        assert_eq!(
            one("||iphone-caviar.ru*entranceId"),
            (RuleAction::Block, pattern(r"(?:^|\.)iphone\-caviar\.ru.*entranceid"))
        );
        assert_eq!(
            one("||158.247.208."),
            (RuleAction::Block, pattern(r"(?:^|\.)158\.247\.208\."))
        );
        assert_eq!(one("a.com^"), (RuleAction::Block, pattern(r"a\.com$")));
        assert_eq!(
            one(".bbelements.com^"),
            (RuleAction::Block, pattern(r"\.bbelements\.com$"))
        );
        assert_eq!(one("-ad123-"), (RuleAction::Block, pattern(r"\-ad123\-")));
        assert_eq!(one("|ads*.a.com"), (RuleAction::Block, pattern(r"^ads.*\.a\.com")));
        assert_eq!(
            one("@@||*cdn.exponea.com^"),
            (RuleAction::Allow, pattern(r"(?:^|\.).*cdn\.exponea\.com$"))
        );
        assert_eq!(rejection("||*^"), LineRejection::Syntax("pattern matches every name"));
        assert_eq!(rejection("*"), LineRejection::Syntax("pattern matches every name"));
    }

    #[test]
    fn patterns_match_what_adguard_matches() {
        let cases = [
            ("||*-go.example.net^", "x-go.example.net", true),
            ("||*-go.example.net^", "go.example.net", false),
            ("a.com^", "xa.com", true),
            ("a.com^", "a.com.evil", false),
            ("||ads.", "ads.example.org", true),
            ("||ads.", "myads.example.org", false),
            ("||ads.", "cdn.ads.example.org", true),
            ("|ads*.a.com", "ads1.a.com", true),
        ];
        for (rule, query, expected) in cases {
            let (_, OwnedTarget::Pattern(regex)) = one(rule) else {
                panic!("{rule} is not a pattern");
            };
            let re = regex::Regex::new(&regex).expect("emitted patterns compile");
            assert_eq!(re.is_match(query), expected, "{rule} on {query}");
        }
    }

    #[test]
    fn longest_patterns_compile() {
        let literal_max = "a".repeat(crate::name::MAX_NAME_LEN);
        let star_max = format!("||{}^", "a*".repeat(crate::name::MAX_NAME_LEN));
        for text in [
            format!("||{literal_max}*"),
            format!("*{literal_max}"),
            star_max,
            "||a****b^".to_owned(),
        ] {
            let (_, OwnedTarget::Pattern(regex)) = one(&text) else {
                panic!("{text} is not a pattern");
            };
            assert!(!regex.contains(".*.*"), "{regex}");
            regex::Regex::new(&regex).expect("emitted patterns compile");
        }
        assert_eq!(
            rejection(&format!("||{}a*", "a".repeat(crate::name::MAX_NAME_LEN))),
            LineRejection::Syntax("pattern longer than any DNS name")
        );
        assert_eq!(
            rejection("||bücher*.de^"),
            LineRejection::Syntax("character not allowed in a DNS filter rule")
        );
        assert_eq!(
            rejection("||bücher."),
            LineRejection::Syntax("non-ASCII character in a wildcard pattern")
        );
    }

    proptest::proptest! {
        /// Every pattern the parser emits compiles, which is why it does not
        /// compile them itself.
        #[test]
        fn emitted_patterns_compile(line in "(@@)?(\\|\\||\\||://)?[a-zA-Z0-9.*_-]{1,300}(\\^|\\||\\^\\|)?") {
            let sink = collect(&line);
            for (_, _, target) in &sink.rules {
                if let OwnedTarget::Pattern(regex) = target {
                    proptest::prop_assert!(regex::Regex::new(regex).is_ok(), "{line} -> {regex}");
                }
            }
        }
    }

    #[test]
    fn required_literals() {
        let mut sink = Literals::default();
        let text = "||*-go.example.net^\n||a*b^\n||ad*.x.co^\n/ads/\n";
        parse(ListFormat::Adblock, text.as_bytes(), &mut sink);
        assert_eq!(
            sink.0,
            [Some("-go.example.net".to_owned()), None, Some(".x.co".to_owned()), None]
        );
    }

    #[test]
    fn regex_rules() {
        assert_eq!(
            one(r"/^(a|c)\.[0-9a-f]{56}\.com$/"),
            (RuleAction::Block, pattern(r"(?i)^(a|c)\.[0-9a-f]{56}\.com$"))
        );
        assert_eq!(
            one(r"/ads\d+/$important"),
            (RuleAction::BlockImportant, pattern(r"(?i)ads\d+"))
        );
        // The `#` inside a regex is part of the regex, not a comment.
        assert_eq!(
            one(r"@@/\.(gif|png)#x/"),
            (RuleAction::Allow, pattern(r"(?i)\.(gif|png)#x"))
        );
        assert!(matches!(rejection("/a(b/"), LineRejection::BadPattern(_)));
        assert_eq!(rejection("//"), LineRejection::Syntax("empty regular expression"));
    }

    #[test]
    fn ip_literals_are_refused() {
        for text in [
            "188.72.219.36^",
            "||1.2.3.4^",
            "|167.206.10.148^",
            "||::1^",
            "@@1.2.3.4",
        ] {
            let reason = rejection(text);
            assert!(
                reason == LineRejection::Name(NameRejection::IpLiteral) || matches!(reason, LineRejection::Syntax(_)),
                "{text}: {reason:?}"
            );
        }
        assert_eq!(
            rejection("188.72.219.36^"),
            LineRejection::Name(NameRejection::IpLiteral)
        );
        assert_eq!(rejection("||1.2.3.4^"), LineRejection::Name(NameRejection::IpLiteral));
    }

    #[test]
    fn junk_is_refused_with_a_syntax_reason() {
        for text in [
            "||a.com^ # comment",
            "||a#b.com^",
            "||a.com/path^",
            "||a.com^x",
            "|",
            "||",
            "@@",
            "[Something else]",
            "||a..com^",
            "||a.com^$",
        ] {
            let reason = rejection(text);
            assert!(
                matches!(reason, LineRejection::Syntax(_) | LineRejection::Name(_)),
                "{text}: {reason:?}"
            );
        }
    }

    #[test]
    fn crlf_bom_and_missing_final_newline() {
        let sink = collect("\u{feff}[Adblock Plus]\r\n||a.com^\r\n||b.com^");
        let names: Vec<_> = sink.rules.iter().map(|(l, _, t)| (*l, t.clone())).collect();
        assert_eq!(
            names,
            [(2, name("a.com", Scope::Subtree)), (3, name("b.com", Scope::Subtree))]
        );
    }

    #[test]
    fn every_rule_line_makes_exactly_one_call() {
        let text = b"||a.com^\n||a.com^$badfilter\n##x\n/(/\n||1.2.3.4^\n||x*.y^\n||a.com^$client=1\n\xff\n";
        let mut sink = CountingSink::default();
        parse(ListFormat::Adblock, text, &mut sink);
        assert_eq!(sink.counts.rule_lines(), 8);
        assert_eq!(sink.counts.accepted, 1);
        assert_eq!(sink.counts.skipped, 2);
        assert_eq!(sink.counts.rejected, 5);
    }
}
