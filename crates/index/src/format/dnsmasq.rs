//! `dnsmasq`: `address=/a.com/…`, `local=/a.com/` and `server=/a.com/`.
//!
//! dnsmasq applies each of these to the domain and all its subdomains, and
//! blocklists publish them to mean "block", so each domain between the
//! slashes becomes a [`Scope::Subtree`] block rule whatever the address.

use super::{emit_names, for_each_line};
use crate::rule::{LineRejection, RuleSink, Scope};

pub(super) fn parse(text: &[u8], sink: &mut dyn RuleSink) {
    for_each_line(text, sink, |line, raw, sink| {
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            return;
        }
        let Some((key, value)) = content.split_once('=') else {
            sink.reject(
                line,
                raw,
                LineRejection::Syntax("expected `address=`, `local=` or `server=`"),
            );
            return;
        };
        if !matches!(key.trim(), "address" | "local" | "server") {
            sink.reject(
                line,
                raw,
                LineRejection::Syntax("expected `address=`, `local=` or `server=`"),
            );
            return;
        }
        // `/a.com/b.com/0.0.0.0`: every field between the first and the last
        // slash is a domain; what follows the last slash is the answer.
        let Some(rest) = value.trim().strip_prefix('/') else {
            sink.reject(line, raw, LineRejection::Syntax("value must start with `/`"));
            return;
        };
        let Some((domains, _answer)) = rest.rsplit_once('/') else {
            sink.reject(line, raw, LineRejection::Syntax("missing closing `/`"));
            return;
        };
        let domains: Vec<&str> = domains.split('/').collect();
        // `#` is dnsmasq's match-everything domain; as a blocklist rule it
        // would block every name, so it is refused.
        if domains.iter().any(|d| d.is_empty() || d.contains('#')) {
            sink.reject(
                line,
                raw,
                LineRejection::Syntax("empty or match-all (`#`) domain between slashes"),
            );
            return;
        }
        emit_names(sink, line, raw, &domains, Scope::Subtree);
    });
}

#[cfg(test)]
mod tests {
    use crate::format::{CollectingSink, OwnedTarget, parse};
    use crate::rule::ListFormat;

    #[test]
    fn dnsmasq_forms() {
        let text = "# c\naddress=/a.com/0.0.0.0\nlocal=/b.com/\nserver=/c.com/\naddress=/d.com/e.com/::\n\
                    address=//0.0.0.0\nfoo=/x.com/\nlocal=/1.2.3.4/\n";
        let mut sink = CollectingSink::default();
        parse(ListFormat::Dnsmasq, text.as_bytes(), &mut sink);
        let names: Vec<_> = sink
            .rules
            .iter()
            .map(|(_, _, t)| match t {
                OwnedTarget::Name(n, _) => n.as_str(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(names, ["a.com", "b.com", "c.com", "d.com", "e.com"]);
        assert_eq!(sink.rejected.len(), 3);
    }
}
