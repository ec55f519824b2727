//! End-to-end tests of `shieldns run` in recursive mode, resolving through a
//! fake DNS hierarchy (root, TLD, authoritative servers, a signed and a
//! bogus zone) served by nsd on loopback, queried with the real `dig`.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod support;

use support::daemon::{Daemon, answers, ede, require, status};
use support::hierarchy::Hierarchy;

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:@PORT@"]

[upstream]
mode = "recursive"
root_hints = "@HINTS@"
dnssec = true
@ANCHOR@
allow_private_nameservers = true
timeout_ms = 1000

[[list]]
name = "adult"
category = "adult"
format = "domains"
path = "@DIR@/adult.txt"

[[profile]]
name = "default"
clients = ["0.0.0.0/0", "::/0"]
block = ["adult"]
"#;

fn start(instance: u8) -> Option<(Hierarchy, Daemon)> {
    if !require(&[("dig", "bind9-dnsutils")]) {
        return None;
    }
    let hierarchy = Hierarchy::start(instance)?;
    let anchor = hierarchy
        .trust_anchor_file()
        .map(|path| format!("trust_anchor_files = [\"{}\"]", path.display()))
        .unwrap_or_default();
    let config = CONFIG
        .replace("@HINTS@", &hierarchy.root_hints_file().display().to_string())
        .replace("@ANCHOR@", &anchor);
    let daemon = Daemon::start(&config, &[("adult.txt", "blocked.example.test\n")]);
    Some((hierarchy, daemon))
}

#[test]
fn resolves_through_the_hierarchy_and_filters() {
    let Some((_hierarchy, daemon)) = start(31) else { return };

    let out = daemon.dig(&["www.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}\n{}", daemon.log_text());
    assert_eq!(answers(&out), ["www.example.test. 3600 IN A 192.0.2.10"], "{out}");

    let out = daemon.dig(&["www.example.test", "AAAA"]);
    assert_eq!(answers(&out), ["www.example.test. 3600 IN AAAA 2001:db8::10"], "{out}");

    // A CNAME into another zone is followed.
    let out = daemon.dig(&["alias.example.test", "A"]);
    let records = answers(&out);
    assert!(
        records.contains(&"alias.example.test. 3600 IN CNAME www.other.test.".to_owned()),
        "{out}"
    );
    assert!(
        records.contains(&"www.other.test. 3600 IN A 192.0.2.20".to_owned()),
        "{out}"
    );

    // NXDOMAIN from the authority comes back with its SOA.
    let out = daemon.dig(&["nonexistent.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(out.contains("IN\tSOA"), "{out}");

    // Blocked names never leave the resolver.
    let out = daemon.dig(&["sub.blocked.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(ede(&out).is_some_and(|e| e.contains("list=adult")), "{out}");

    // Large answers: TC over UDP, complete over TCP.
    let out = daemon.dig(&["+tcp", "big.example.test", "TXT"]);
    assert_eq!(answers(&out).len(), 10, "{out}");
}

#[test]
fn validates_dnssec() {
    let Some((hierarchy, daemon)) = start(32) else { return };
    if hierarchy.trust_anchor_file().is_none() {
        eprintln!("SKIP: zone signing tools missing (apt-get install ldnsutils)");
        return;
    }
    let out = daemon.dig(&["+dnssec", "www.signed.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}\n{}", daemon.log_text());
    assert!(out.contains("192.0.2.30"), "{out}");
    assert!(
        out.contains(" ad;") || out.contains(" ad "),
        "a secure answer carries AD: {out}"
    );

    let out = daemon.dig(&["www.bogus.test", "A"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}\n{}", daemon.log_text());
    assert!(
        ede(&out).is_some_and(|e| e.starts_with("; EDE: 6 (DNSSEC Bogus)")),
        "{out}"
    );

    // Insecure delegations still resolve with validation on.
    let out = daemon.dig(&["www.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
}

#[test]
fn policy_checks_apply_to_recursive_answers() {
    if !require(&[("dig", "bind9-dnsutils")]) {
        return;
    }
    let Some(hierarchy) = Hierarchy::start(33) else { return };
    let config = CONFIG
        .replace("@HINTS@", &hierarchy.root_hints_file().display().to_string())
        .replace("@ANCHOR@", "")
        .replace("dnssec = true", "dnssec = false")
        .replace(
            "block = [\"adult\"]",
            "block = [\"adult\"]\nrebinding_protection = true\ndns64 = true",
        );
    let daemon = Daemon::start(&config, &[("adult.txt", "blocked.example.test\n")]);

    // CNAME cloaking: the alias is not listed, its target is.
    let out = daemon.dig(&["cname-to-blocked.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}\n{}", daemon.log_text());
    assert!(
        ede(&out).is_some_and(|e| e.contains("cname=blocked.example.test")),
        "{out}"
    );
    // A public name answering with a private address.
    let out = daemon.dig(&["rebind.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(ede(&out).is_some_and(|e| e.contains("rebinding")), "{out}");
    // DNS64 for an IPv4-only name, through the cross-zone CNAME.
    let out = daemon.dig(&["alias.example.test", "AAAA"]);
    assert_eq!(
        answers(&out),
        [
            "alias.example.test. 3600 IN CNAME www.other.test.",
            "www.other.test. 3600 IN AAAA 64:ff9b::c000:214"
        ],
        "{out}"
    );
    // Real AAAA records are kept.
    let out = daemon.dig(&["www.example.test", "AAAA"]);
    assert_eq!(answers(&out), ["www.example.test. 3600 IN AAAA 2001:db8::10"], "{out}");
}
