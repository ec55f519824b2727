//! `hosts`: `ADDRESS name [name …] [# comment]`.
//!
//! The address is checked to be an IP address (any: `0.0.0.0`, `127.0.0.1`,
//! `::`, even `fe80::1%lo0`) and otherwise ignored: a blocklist in hosts form
//! means "block these names", and shieldns answers blocks the way the
//! client's profile says, not with the file's address.

use std::net::IpAddr;

use super::{emit_names, for_each_line, strip_hash_comment};
use crate::rule::{LineRejection, RuleSink, Scope, SkipReason};

/// Names every hosts file maps for the local machine; never blocked.
const LOCAL_HOST_NAMES: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "0.0.0.0",
];

pub(super) fn parse(text: &[u8], sink: &mut dyn RuleSink) {
    for_each_line(text, sink, |line, raw, sink| {
        let content = strip_hash_comment(raw);
        if content.is_empty() {
            return;
        }
        let mut tokens = content.split_ascii_whitespace();
        let Some(address) = tokens.next() else {
            return;
        };
        // A zone index (`fe80::1%lo0`) is legal in hosts files but not in
        // `IpAddr`'s syntax.
        let address_only = address.split('%').next().unwrap_or(address);
        if address_only.parse::<IpAddr>().is_err() {
            sink.reject(line, raw, LineRejection::Syntax("first token is not an IP address"));
            return;
        }
        let names: Vec<&str> = tokens.collect();
        if names.is_empty() {
            sink.reject(line, raw, LineRejection::Syntax("address without a name"));
            return;
        }
        if names
            .iter()
            .all(|n| LOCAL_HOST_NAMES.contains(&n.to_ascii_lowercase().as_str()))
        {
            sink.skip(line, SkipReason::LocalHostEntry);
            return;
        }
        // A stray token (`xxx.to en` in one published list) is reported
        // without costing the line's good names (see `emit_names`).
        let mut blocked = Vec::with_capacity(names.len());
        for name in names {
            if LOCAL_HOST_NAMES.contains(&name.to_ascii_lowercase().as_str()) {
                continue;
            }
            blocked.push(name);
        }
        emit_names(sink, line, raw, &blocked, Scope::Subtree);
    });
}

#[cfg(test)]
mod tests {
    use crate::format::{CollectingSink, OwnedTarget, parse};
    use crate::rule::ListFormat;

    #[test]
    fn hosts_lines() {
        let text = "127.0.0.1 localhost\n::1 ip6-localhost ip6-loopback\nfe80::1%lo0 localhost\n\
                    0.0.0.0 0.0.0.0\n0.0.0.0 A.com b.com # c\n:: c.com\nnot-an-ip d.com\n0.0.0.0 e.com en\n\
                    \t# indented comment\n";
        let mut sink = CollectingSink::default();
        parse(ListFormat::Hosts, text.as_bytes(), &mut sink);
        let names: Vec<_> = sink
            .rules
            .iter()
            .map(|(l, _, t)| match t {
                OwnedTarget::Name(n, _) => (*l, n.as_str()),
                _ => unreachable!(),
            })
            .collect();
        // Line 8 carries a stray single-label token: the parser passes it
        // on, and the loading rules (`check_list`, the builder) refuse it
        // alone, keeping `e.com`.
        assert_eq!(
            names,
            [(5, "a.com"), (5, "b.com"), (6, "c.com"), (8, "e.com"), (8, "en")]
        );
        assert_eq!(sink.skipped.len(), 4);
        assert_eq!(sink.rejected.iter().map(|r| r.0).collect::<Vec<_>>(), [7]);
    }
}
