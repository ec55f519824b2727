//! The three one-token-a-line formats: `domains`, `wildcard` and `sha256`.

use super::{emit_names, for_each_line, strip_hash_comment};
use crate::rule::{LineRejection, Rule, RuleAction, RuleSink, RuleTarget, Scope};

/// `domains`: one name a line, `#` comments. Each name blocks itself and its
/// subdomains.
pub(super) fn parse_domains(text: &[u8], sink: &mut dyn RuleSink) {
    for_each_line(text, sink, |line, raw, sink| {
        let token = strip_hash_comment(raw);
        if token.is_empty() {
            return;
        }
        if token.split_ascii_whitespace().nth(1).is_some() {
            sink.reject(line, raw, LineRejection::Syntax("more than one token on a line"));
            return;
        }
        emit_names(sink, line, raw, &[token], Scope::Subtree);
    });
}

/// `wildcard`: `*.a.com` a line. Publishers of wildcard lists (hagezi, the
/// urlhaus filter) ship the same set as their plain-domain lists in this
/// form, meaning "a.com and everything under it", so `*.a.com` is a
/// [`Scope::Subtree`] rule on `a.com`. A line without `*.` is accepted as a
/// plain name with the same scope.
pub(super) fn parse_wildcard(text: &[u8], sink: &mut dyn RuleSink) {
    for_each_line(text, sink, |line, raw, sink| {
        let token = strip_hash_comment(raw);
        if token.is_empty() {
            return;
        }
        let name = token.strip_prefix("*.").unwrap_or(token);
        if name.contains('*') {
            sink.reject(
                line,
                raw,
                LineRejection::Syntax("`*` allowed only as a leading `*.` label"),
            );
            return;
        }
        emit_names(sink, line, raw, &[name], Scope::Subtree);
    });
}

/// `sha256`: one hex SHA-256 digest of a normalized name a line (upper- or
/// lower-case hex), `#` comments.
pub(super) fn parse_sha256(text: &[u8], sink: &mut dyn RuleSink) {
    for_each_line(text, sink, |line, raw, sink| {
        let token = strip_hash_comment(raw);
        if token.is_empty() {
            return;
        }
        let mut digest = [0u8; 32];
        if token.len() != 64 || hex::decode_to_slice(token, &mut digest).is_err() {
            sink.reject(
                line,
                raw,
                LineRejection::Syntax("expected 64 hex digits (a SHA-256 digest)"),
            );
            return;
        }
        sink.rule(Rule {
            line,
            target: RuleTarget::NameDigest(digest),
            action: RuleAction::Block,
            local_data: Vec::new(),
        });
    });
}

/// `ip`: one IPv4/IPv6 address or CIDR prefix a line, `#` comments. The
/// rules block answers that contain a listed address (like RPZ `rpz-ip`).
pub(super) fn parse_ip(text: &[u8], sink: &mut dyn RuleSink) {
    for_each_line(text, sink, |line, raw, sink| {
        let token = strip_hash_comment(raw);
        if token.is_empty() {
            return;
        }
        let network = match token.parse::<ipnet::IpNet>() {
            Ok(network) if network.trunc() == network => network,
            Ok(_) => {
                sink.reject(
                    line,
                    raw,
                    LineRejection::Syntax("address bits set past the prefix length"),
                );
                return;
            }
            Err(_) => match token.parse::<std::net::IpAddr>() {
                Ok(address) => ipnet::IpNet::from(address),
                Err(_) => {
                    sink.reject(
                        line,
                        raw,
                        LineRejection::Syntax("expected an IP address or CIDR prefix"),
                    );
                    return;
                }
            },
        };
        sink.rule(Rule {
            line,
            target: RuleTarget::AnswerIp(network),
            action: RuleAction::Block,
            local_data: Vec::new(),
        });
    });
}

#[cfg(test)]
mod tests {
    use crate::format::{CollectingSink, OwnedTarget, parse};
    use crate::rule::{ListFormat, Scope};

    fn names(format: ListFormat, text: &str) -> (Vec<String>, usize) {
        let mut sink = CollectingSink::default();
        parse(format, text.as_bytes(), &mut sink);
        let names = sink
            .rules
            .iter()
            .map(|(_, _, t)| match t {
                OwnedTarget::Name(n, Scope::Subtree) => n.clone(),
                other => panic!("unexpected target {other:?}"),
            })
            .collect();
        (names, sink.rejected.len())
    }

    #[test]
    fn domains_with_bom_crlf_comments() {
        let (names, rejected) = names(
            ListFormat::Domains,
            "\u{feff}# header\r\nA.com\r\n\r\nb.com # why\n1.2.3.4\nx y\n",
        );
        assert_eq!(names, ["a.com", "b.com"]);
        assert_eq!(rejected, 2);
    }

    #[test]
    fn wildcard_covers_apex() {
        let (names, rejected) = names(ListFormat::Wildcard, "*.a.com\nb.com\n*.1.0.209.238\na.*.com\n");
        assert_eq!(names, ["a.com", "b.com"]);
        assert_eq!(rejected, 2);
    }

    #[test]
    fn ip_lines() {
        let mut sink = CollectingSink::default();
        parse(
            ListFormat::Ip,
            b"# c\n192.0.2.1\n198.51.100.0/24 # net\n2001:db8::/32\n10.0.0.1/8\nnope\n",
            &mut sink,
        );
        let nets: Vec<String> = sink
            .rules
            .iter()
            .map(|(_, _, t)| match t {
                OwnedTarget::AnswerIp(net) => net.to_string(),
                other => panic!("unexpected target {other:?}"),
            })
            .collect();
        assert_eq!(nets, ["192.0.2.1/32", "198.51.100.0/24", "2001:db8::/32"]);
        assert_eq!(sink.rejected.iter().map(|r| r.0).collect::<Vec<_>>(), [5, 6]);
    }

    #[test]
    fn sha256_lines() {
        let mut sink = CollectingSink::default();
        let digest = "a".repeat(64);
        parse(
            ListFormat::Sha256,
            format!("# c\n{digest}\nnothex\n").as_bytes(),
            &mut sink,
        );
        assert_eq!(sink.rules.len(), 1);
        assert_eq!(sink.rejected.len(), 1);
        assert_eq!(sink.rejected[0].0, 3);
    }
}
