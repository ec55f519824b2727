//! Self-test of the fake DNS hierarchy in `support/hierarchy.rs`, queried with `dig` (and
//! `drill` for the DNSSEC chain) directly: no shieldns involved. Every test prints `SKIP:` and
//! passes when nsd or dig is missing or port 53 on 127.53.0.0/16 cannot be bound.
//!
//! Instances used here: 250 (shared by the read-only tests), 251 (`stop_server`).

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use shieldns_test_support::hierarchy::{BIG_TXT_COUNT, BIG_TXT_LEN, Hierarchy, Server};

/// One hierarchy for all read-only tests. Never dropped: the hierarchy's watchdog stops the
/// servers and removes the directory when the test process exits.
fn shared() -> Option<&'static Hierarchy> {
    static SHARED: OnceLock<Option<Hierarchy>> = OnceLock::new();
    if !have_dig() {
        return None;
    }
    SHARED.get_or_init(|| Hierarchy::start(250)).as_ref()
}

fn have_dig() -> bool {
    let found = shieldns_test_support::hierarchy::find_tool("dig").is_some();
    if !found {
        eprintln!("SKIP: dig is not installed (Debian package `bind9-dnsutils`)");
    }
    found
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rr {
    name: String,
    ttl: u32,
    rtype: String,
    rdata: String,
}

#[derive(Debug, Default)]
struct Reply {
    status: String,
    flags: Vec<String>,
    answer: Vec<Rr>,
    authority: Vec<Rr>,
    additional: Vec<Rr>,
    text: String,
}

impl Reply {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn has(section: &[Rr], name: &str, rtype: &str, rdata: &str) -> bool {
        section
            .iter()
            .any(|r| r.name == name && r.rtype == rtype && r.rdata == rdata)
    }

    fn rdatas(section: &[Rr], rtype: &str) -> Vec<String> {
        section
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.rdata.clone())
            .collect()
    }
}

/// Runs `dig +norecurse +time=2 +tries=1 @server <args>` and parses the output.
fn dig(server: IpAddr, args: &[&str]) -> Reply {
    let out = Command::new("dig")
        .args([
            "+norecurse",
            "+time=2",
            "+tries=1",
            "+nocookie",
            "+nosplit",
            "+nomultiline",
        ])
        .arg(format!("@{server}"))
        .args(args)
        .output()
        .expect("run dig");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dig @{server} {args:?} failed ({}):\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_dig(text)
}

fn parse_dig(text: String) -> Reply {
    let mut reply = Reply::default();
    let mut section = None;
    for line in text.lines() {
        if let Some(rest) = line.split_once("status: ").map(|(_, r)| r) {
            reply.status = rest.split(',').next().unwrap_or_default().to_owned();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            let flags = rest.split(';').next().unwrap_or_default();
            reply.flags = flags.split_whitespace().map(str::to_owned).collect();
        } else if line.starts_with(";; ANSWER SECTION") {
            section = Some(0);
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = Some(1);
        } else if line.starts_with(";; ADDITIONAL SECTION") {
            section = Some(2);
        } else if line.trim().is_empty() {
            section = None;
        } else if let (Some(idx), false) = (section, line.starts_with(';')) {
            let mut fields = line.split_whitespace();
            let (Some(name), Some(ttl), Some(_class), Some(rtype)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                panic!("unparsable dig record line {line:?}");
            };
            let rr = Rr {
                name: name.to_owned(),
                ttl: ttl.parse().unwrap_or_else(|_| panic!("bad TTL in {line:?}")),
                rtype: rtype.to_owned(),
                rdata: fields.collect::<Vec<_>>().join(" "),
            };
            match idx {
                0 => reply.answer.push(rr),
                1 => reply.authority.push(rr),
                _ => reply.additional.push(rr),
            }
        }
    }
    reply.text = text;
    reply
}

#[test]
fn root_refers_test_to_the_tld_server() {
    let Some(h) = shared() else { return };
    let r = dig(h.root, &["www.example.test", "A"]);
    assert_eq!(r.status, "NOERROR", "{}", r.text);
    assert!(
        !r.has_flag("aa") && r.answer.is_empty(),
        "expected a referral:\n{}",
        r.text
    );
    assert!(Reply::has(&r.authority, "test.", "NS", "ns1.nic.test."), "{}", r.text);
    let tld = h.addr(Server::Tld).to_string();
    assert!(Reply::has(&r.additional, "ns1.nic.test.", "A", &tld), "{}", r.text);

    // The root answers for itself, with the name server from the hints file.
    let r = dig(h.root, &[".", "NS"]);
    assert!(
        r.has_flag("aa") && Reply::has(&r.answer, ".", "NS", "ns1.root."),
        "{}",
        r.text
    );
    let hints = std::fs::read_to_string(h.root_hints_file()).expect("read root hints");
    assert!(
        hints.contains("ns1.root.") && hints.contains(&h.root.to_string()),
        "{hints}"
    );
}

#[test]
fn tld_refers_example_other_signed_bogus() {
    let Some(h) = shared() else { return };
    let tld = h.addr(Server::Tld);
    for (zone, ns, server) in [
        ("example.test.", "ns1.example.test.", Server::Example),
        ("other.test.", "ns1.example.test.", Server::Example),
        ("signed.test.", "ns1.signed.test.", Server::Signed),
        ("bogus.test.", "ns1.bogus.test.", Server::Bogus),
    ] {
        let r = dig(tld, &[&format!("www.{zone}"), "A"]);
        assert_eq!(r.status, "NOERROR", "{}", r.text);
        assert!(
            !r.has_flag("aa") && r.answer.is_empty(),
            "expected a referral:\n{}",
            r.text
        );
        assert!(Reply::has(&r.authority, zone, "NS", ns), "{}", r.text);
        let glue = h.addr(server).to_string();
        assert!(
            Reply::has(&r.additional, ns, "A", &glue),
            "glue for {zone}:\n{}",
            r.text
        );
    }
    assert_eq!(dig(tld, &["nope.test", "A"]).status, "NXDOMAIN");
}

#[test]
fn authoritative_answers() {
    let Some(h) = shared() else { return };
    let ex = h.addr(Server::Example);
    let cases = [
        ("www.example.test.", "A", "192.0.2.10"),
        ("www.example.test.", "AAAA", "2001:db8::10"),
        ("alias.example.test.", "CNAME", "www.other.test."),
        ("blocked.example.test.", "A", "192.0.2.66"),
        ("sub.blocked.example.test.", "A", "192.0.2.67"),
        ("ads.example.test.", "A", "192.0.2.70"),
        ("cname-to-blocked.example.test.", "CNAME", "blocked.example.test."),
        ("rebind.example.test.", "A", "10.0.0.1"),
        ("ttl1.example.test.", "A", "192.0.2.11"),
        ("mx.example.test.", "MX", "10 mail.example.test."),
        ("mail.example.test.", "A", "192.0.2.25"),
        ("www.other.test.", "A", "192.0.2.20"),
    ];
    for (name, rtype, rdata) in cases {
        let r = dig(ex, &[name, rtype]);
        assert_eq!(r.status, "NOERROR", "{name} {rtype}:\n{}", r.text);
        assert!(r.has_flag("aa"), "{name}: not authoritative:\n{}", r.text);
        assert!(Reply::has(&r.answer, name, rtype, rdata), "{name} {rtype}:\n{}", r.text);
    }
    let r = dig(ex, &["ttl1.example.test", "A"]);
    assert_eq!(r.answer[0].ttl, 60, "{}", r.text);
    let r = dig(ex, &["www.example.test", "A"]);
    assert_eq!(r.answer[0].ttl, 3600, "{}", r.text);

    let s = dig(h.addr(Server::Signed), &["www.signed.test", "A"]);
    assert!(
        Reply::has(&s.answer, "www.signed.test.", "A", "192.0.2.30"),
        "{}",
        s.text
    );
    let b = dig(h.addr(Server::Bogus), &["www.bogus.test", "A"]);
    assert!(
        Reply::has(&b.answer, "www.bogus.test.", "A", "192.0.2.40"),
        "{}",
        b.text
    );
}

#[test]
fn nxdomain_and_nodata() {
    let Some(h) = shared() else { return };
    let ex = h.addr(Server::Example);
    for name in [
        "missing.example.test",
        "deep.missing.example.test",
        "missing.other.test",
    ] {
        let r = dig(ex, &[name, "A"]);
        assert_eq!(r.status, "NXDOMAIN", "{name}:\n{}", r.text);
        assert!(r.has_flag("aa") && r.answer.is_empty(), "{}", r.text);
        assert!(!Reply::rdatas(&r.authority, "SOA").is_empty(), "no SOA:\n{}", r.text);
    }
    // An existing name without the type: NODATA.
    let r = dig(ex, &["ads.example.test", "AAAA"]);
    assert_eq!(r.status, "NOERROR", "{}", r.text);
    assert!(r.answer.is_empty(), "{}", r.text);
}

#[test]
fn big_txt_is_truncated_over_udp_and_complete_over_tcp() {
    let Some(h) = shared() else { return };
    let ex = h.addr(Server::Example);
    let udp = dig(ex, &["+ignore", "+bufsize=1232", "big.example.test", "TXT"]);
    assert!(udp.has_flag("tc"), "expected TC over UDP:\n{}", udp.text);
    let tcp = dig(ex, &["+tcp", "+bufsize=1232", "big.example.test", "TXT"]);
    assert!(!tcp.has_flag("tc"), "{}", tcp.text);
    let txts = Reply::rdatas(&tcp.answer, "TXT");
    assert_eq!(txts.len(), BIG_TXT_COUNT, "{}", tcp.text);
    assert!(txts.iter().all(|t| t.len() == BIG_TXT_LEN + 2), "{txts:?}"); // quotes included
}

#[test]
fn signed_zones_carry_signatures_and_the_anchor_matches_the_root() {
    let Some(h) = shared() else { return };
    if !h.is_signed() {
        eprintln!("SKIP: hierarchy is unsigned (ldnsutils missing or SHIELDNS_HIERARCHY_UNSIGNED set)");
        return;
    }
    let anchor = h.trust_anchor_file().expect("signed hierarchy has a trust anchor");
    let text = std::fs::read_to_string(&anchor).expect("read the trust anchor");
    assert!(text.starts_with(". 3600 IN DNSKEY 257 3 13 "), "{text}");
    let dnskey = h.root_dnskey().expect("root DNSKEY");
    assert_eq!(text.trim(), dnskey);
    let ds = h.root_ds().expect("root DS");
    assert!(ds.starts_with(". IN DS ") && ds.contains(" 13 2 "), "{ds}");
    // hickory reads it (the format of RecursiveConfig / DnssecConfig trust anchors).
    let anchors = hickory_proto::dnssec::TrustAnchors::from_file(&anchor).expect("hickory parses the anchor");
    assert_eq!(anchors.len(), 1);

    // The root publishes that very key, signed.
    let key = dnskey.rsplit(' ').next().expect("base64 key");
    let r = dig(h.root, &["+dnssec", ".", "DNSKEY"]);
    let keys = Reply::rdatas(&r.answer, "DNSKEY");
    assert!(
        keys.iter().any(|k| k.ends_with(key)),
        "anchor not in root DNSKEY set:\n{}",
        r.text
    );
    assert!(!Reply::rdatas(&r.answer, "RRSIG").is_empty(), "{}", r.text);

    // Secure delegations carry a signed DS; insecure ones a signed NSEC proving no DS.
    let r = dig(h.root, &["+dnssec", "test.", "DS"]);
    assert!(
        r.has_flag("aa") && !Reply::rdatas(&r.answer, "DS").is_empty(),
        "{}",
        r.text
    );
    for zone in ["signed.test.", "bogus.test."] {
        let r = dig(h.addr(Server::Tld), &["+dnssec", zone, "DS"]);
        assert_eq!(Reply::rdatas(&r.answer, "DS").len(), 1, "{}", r.text);
        assert!(!Reply::rdatas(&r.answer, "RRSIG").is_empty(), "{}", r.text);
    }
    for zone in ["example.test.", "other.test."] {
        let r = dig(h.addr(Server::Tld), &["+dnssec", zone, "DS"]);
        assert!(r.status == "NOERROR" && r.answer.is_empty(), "{}", r.text);
        assert!(!Reply::rdatas(&r.authority, "NSEC").is_empty(), "no NSEC:\n{}", r.text);
    }

    // Answers from the signed zones carry RRSIGs; the unsigned zone's do not.
    let r = dig(h.addr(Server::Signed), &["+dnssec", "www.signed.test", "A"]);
    assert!(!Reply::rdatas(&r.answer, "RRSIG").is_empty(), "{}", r.text);
    let r = dig(h.addr(Server::Bogus), &["+dnssec", "www.bogus.test", "A"]);
    assert!(!Reply::rdatas(&r.answer, "RRSIG").is_empty(), "{}", r.text);
    let r = dig(h.addr(Server::Example), &["+dnssec", "www.example.test", "A"]);
    assert!(Reply::rdatas(&r.answer, "RRSIG").is_empty(), "{}", r.text);
}

/// Runs a DNSSEC trace from the fake root with drill; returns the line drill printed for the
/// final answer (`[T]` trusted, `[S]` signed without a chain, `[U]` unsigned, `[B]` bogus).
fn drill_trace(h: &Hierarchy, anchor: &Path, name: &str) -> String {
    let out = Command::new("drill")
        .args(["-TD", "-k"])
        .arg(anchor)
        .arg("-r")
        .arg(h.root_hints_file())
        .arg(name)
        .arg("A")
        .output()
        .expect("run drill");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "drill {name}: {}\n{text}", out.status);
    let needle = format!("] {name}.\t");
    text.lines()
        .rev()
        .find(|l| l.starts_with('[') && l.contains(&needle))
        .unwrap_or_else(|| panic!("no final answer line for {name} in drill output:\n{text}"))
        .to_owned()
}

#[test]
fn dnssec_chain_from_the_fake_root() {
    let Some(h) = shared() else { return };
    let Some(anchor) = h.trust_anchor_file() else {
        eprintln!("SKIP: hierarchy is unsigned (ldnsutils missing or SHIELDNS_HIERARCHY_UNSIGNED set)");
        return;
    };
    if shieldns_test_support::hierarchy::find_tool("drill").is_none() {
        eprintln!("SKIP: drill is not installed (Debian package `ldnsutils`)");
        return;
    }
    let line = drill_trace(h, &anchor, "www.signed.test");
    assert!(line.starts_with("[T]"), "www.signed.test should be secure: {line}");
    // Self-signed but the DS in test. names an unpublished key: no chain (a validator: bogus).
    let line = drill_trace(h, &anchor, "www.bogus.test");
    assert!(!line.starts_with("[T]"), "www.bogus.test must not validate: {line}");
    assert!(line.starts_with("[S]") || line.starts_with("[B]"), "{line}");
    let line = drill_trace(h, &anchor, "www.example.test");
    assert!(line.starts_with("[U]"), "www.example.test should be insecure: {line}");
}

#[test]
fn stop_server_takes_one_server_down() {
    if !have_dig() {
        return;
    }
    let Some(mut h) = Hierarchy::start(251) else { return };
    let ex = h.server_addr("example");
    assert!(dig(ex, &["www.example.test", "A"]).has_flag("aa"));
    h.stop_server("example");
    let out = Command::new("dig")
        .args([
            "+norecurse",
            "+time=1",
            "+tries=1",
            &format!("@{ex}"),
            "www.example.test",
            "A",
        ])
        .output()
        .expect("run dig");
    assert!(!out.status.success(), "example server still answers after stop_server");
    h.stop(Server::Example); // idempotent
    // The others are unaffected.
    let r = dig(h.addr(Server::Tld), &["www.example.test", "A"]);
    assert!(
        Reply::has(&r.authority, "example.test.", "NS", "ns1.example.test."),
        "{}",
        r.text
    );
    let dir = h.dir().to_path_buf();
    drop(h);
    assert!(!dir.exists(), "{} left behind", dir.display());
}
